//! The command line: the argument types and one module per subcommand, each with its own `Args`
//! and `run`. Errors are mapped to the documented exit codes here and nowhere else.

pub mod apply;
pub mod audit;
pub mod revert;
pub mod status;
pub mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{self, ConfigError, ValidConfig, DEFAULT_CONFIG_PATH};
use crate::exit::{Exit, EXIT_CODES_HELP};
use crate::host::Root;

#[derive(Debug, Parser)]
#[command(
    name = "notebook-agent",
    version,
    about = "Hardens a SageMaker notebook instance at boot and audits its file activity to CloudWatch Logs.",
    long_about = "Hardens a SageMaker notebook instance while its lifecycle configuration runs \
(removes the notebook user's root rights; points pip, conda, git, shells and kernels at the \
company's mirror and proxy; writes sagemaker_environment.py), then stays resident (watch) to ship \
every file change under /home/ec2-user/SageMaker to CloudWatch Logs as an OCSF audit event.",
    after_help = EXIT_CODES_HELP,
    after_long_help = EXIT_CODES_HELP
)]
pub struct Cli {
    /// Config file (JSON). Default /etc/notebook-agent/config.json under --root; a missing
    /// default file means the built-in defaults, a missing explicit file is an error.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Prefix for every host path (tests run on a temp tree). Host commands run chrooted into it.
    #[arg(long, global = true, value_name = "PATH", default_value = "/")]
    pub root: PathBuf,

    /// More log output (-v debug, -vv trace). Without it RUST_LOG applies (default info).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan every control, validate, apply, check, and record the result.
    Apply(apply::Args),
    /// Check every control and the audit daemon; print the evidence.
    Status(status::Args),
    /// Run the resident audit daemon.
    Watch(watch::Args),
    /// Restore every file and group membership apply changed.
    Revert(revert::Args),
    /// Operator actions on the audit's delivery (clear-rejected).
    Audit(audit::Args),
}

impl Command {
    /// The daemon logs to journald only (when it exists); one-shot commands also to stderr.
    pub fn is_daemon(&self) -> bool {
        matches!(self, Command::Watch(_))
    }
}

/// A failure, carrying its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage: exit 2.
    Usage(String),
    /// Bad config: exit 2.
    Config(ConfigError),
    /// Runtime failure: exit 1.
    Runtime(String),
}

impl Failure {
    pub fn exit(&self) -> Exit {
        match self {
            Failure::Usage(_) | Failure::Config(_) => Exit::Usage,
            Failure::Runtime(_) => Exit::Failure,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Runtime(m) => f.write_str(m),
            Failure::Config(e) => write!(f, "{e}"),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

/// What every subcommand starts from: the root and the validated config.
pub struct Globals {
    pub root: Root,
    pub config: ValidConfig,
}

impl Globals {
    pub fn load(cli: &Cli) -> Result<Self, Failure> {
        let root = Root::new(&cli.root).map_err(Failure::Usage)?;
        let config = match &cli.config {
            Some(path) => config::load(path, true)?,
            None => config::load(&root.path(DEFAULT_CONFIG_PATH), false)?,
        };
        // The checks that need the root's user database (uid range, the user's own home).
        let users = crate::host::users::UserDb::load(&root).map_err(Failure::Runtime)?;
        let defs = crate::host::users::LoginDefs::load(&root);
        let facts = config::validate::UserFacts {
            entry: users
                .user(&config.user.name)
                .map(|u| (u.uid.as_raw(), u.home.clone())),
            uid_min: defs.uid_min,
            uid_max: defs.uid_max,
        };
        let problems = config::validate::user_problems(&config, &facts);
        if !problems.is_empty() {
            return Err(Failure::Config(ConfigError::Invalid {
                file: config.source().to_path_buf(),
                problems,
            }));
        }
        Ok(Self { root, config })
    }
}

/// Runs the parsed command line and returns its exit code. Errors are printed once, here.
pub fn run(cli: Cli) -> Exit {
    let result = match &cli.command {
        Command::Apply(a) => apply::run(&cli, a),
        Command::Status(a) => status::run(&cli, a),
        Command::Watch(a) => watch::run(&cli, a),
        Command::Revert(a) => revert::run(&cli, a),
        Command::Audit(a) => audit::run(&cli, a),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            // Errors may quote a file or a command line: scrubbed of every secret the config
            // registered.
            eprintln!("notebook-agent: {}", config::secret::scrub(&f.to_string()));
            f.exit()
        }
    }
}
