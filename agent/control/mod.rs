//! The core mechanism: every hardening step is a [`Control`] that plans the exact host changes it
//! wants (pure: it only reads the host), has them executed by the shared executor, and checks
//! whether the host complies. `apply`, `apply --dry-run`, `status`, drift repair and `revert` are
//! all built from these three operations; a new control is one new file in `harden/`.

pub mod apply;
pub mod diff;
pub mod revert;
pub mod state;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

use crate::config::ValidConfig;
use crate::host::imds::Network;
use crate::host::{CommandRunner, FileSpec, HostCommand, Owner, Root, SafeWriter, UserDb};

/// What a control sees of the world.
pub struct Context<'a> {
    pub root: &'a Root,
    pub config: &'a ValidConfig,
    pub runner: &'a dyn CommandRunner,
    /// `etc/passwd` and `etc/group` as read when the context was made.
    pub users: UserDb,
    /// What IMDS said about the network, once asked in this run (plan, then the check after the
    /// writes): the notebook's ENI does not change within one `apply`.
    discovered: OnceLock<Network>,
}

impl<'a> Context<'a> {
    pub fn new(
        root: &'a Root,
        config: &'a ValidConfig,
        runner: &'a dyn CommandRunner,
    ) -> Result<Self, String> {
        Ok(Self {
            root,
            config,
            runner,
            users: UserDb::load(root)?,
            discovered: OnceLock::new(),
        })
    }

    /// The same run after its writes: users read again, what was discovered kept.
    pub fn refreshed(&self) -> Result<Self, String> {
        let mut after = Self::new(self.root, self.config, self.runner)?;
        if let Some(n) = self.discovered.get() {
            after.discovered = OnceLock::from(n.clone());
        }
        Ok(after)
    }

    /// The network IMDS describes, fetched by `fetch` the first time in this run.
    pub fn discovered_network(
        &self,
        fetch: impl FnOnce() -> Result<Network, String>,
    ) -> Result<Network, String> {
        if let Some(n) = self.discovered.get() {
            return Ok(n.clone());
        }
        let n = fetch()?;
        Ok(self.discovered.get_or_init(|| n).clone())
    }

    /// A writer without backups, for reading files the way the executor would.
    pub fn reader(&self) -> SafeWriter<'_> {
        SafeWriter::new(self.root, None)
    }

    /// The notebook user's home: passwd, else config, else `/home/<name>`.
    pub fn home(&self) -> PathBuf {
        match &self.config.user.home {
            Some(h) => h.clone(),
            None => self
                .users
                .home_of(&self.config.user.name, &self.config.home()),
        }
    }
}

/// How a file must be checked before it may replace the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// `visudo -cf FILE` must accept it.
    Sudoers,
}

impl Validation {
    /// Runs the validation on a file at `host_path` (inside the root).
    pub fn run(self, runner: &dyn CommandRunner, host_path: &Path) -> Result<(), String> {
        match self {
            Validation::Sudoers => {
                let cmd = HostCommand::new(
                    "visudo",
                    [
                        "-c".to_string(),
                        "-f".to_string(),
                        host_path.display().to_string(),
                    ],
                );
                let out = runner.run(&cmd).map_err(|e| e.to_string())?;
                if out.success() {
                    Ok(())
                } else {
                    Err(format!("visudo -cf: {}", out.message()))
                }
            }
        }
    }
}

/// One host change. Paths are host paths (as on the notebook), resolved under the root by the
/// executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The directory exists (missing parents are created with the same mode and owner).
    EnsureDir {
        path: PathBuf,
        mode: u32,
        owner: Owner,
    },
    /// The file has exactly these contents, mode and owner.
    Write {
        path: PathBuf,
        spec: FileSpec,
        validation: Option<Validation>,
    },
    /// The file does not exist.
    Remove { path: PathBuf },
    /// Run a command. With `when_changed` non-empty, only when one of those paths changed in this
    /// apply (e.g. restart jupyter-server when the proxy settings changed).
    Run {
        command: HostCommand,
        reason: String,
        when_changed: Vec<PathBuf>,
        must_succeed: bool,
    },
}

impl Action {
    pub fn path(&self) -> Option<&Path> {
        match self {
            Action::EnsureDir { path, .. }
            | Action::Write { path, .. }
            | Action::Remove { path } => Some(path),
            Action::Run { .. } => None,
        }
    }
}

/// What a control wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The config does not manage this concern; nothing is touched and status says so.
    Unmanaged,
    Actions(Vec<Action>),
}

impl Plan {
    pub fn actions(&self) -> &[Action] {
        match self {
            Plan::Unmanaged => &[],
            Plan::Actions(a) => a,
        }
    }

    /// Every planned file that differs from the host, with why. Empty means the host matches.
    pub fn drift(&self, ctx: &Context<'_>) -> Vec<String> {
        let reader = ctx.reader();
        let mut out = Vec::new();
        for a in self.actions() {
            match a {
                Action::Write { path, spec, .. } => match (reader.read(path), reader.stat(path)) {
                    (Ok(Some(contents)), Ok(Some((mode, owner)))) => {
                        if contents != spec.contents {
                            out.push(format!("{}: contents differ", path.display()));
                        } else if mode != spec.mode || owner != spec.owner {
                            out.push(format!(
                                "{}: mode {mode:04o} owner {}:{} (want {:04o} {}:{})",
                                path.display(),
                                owner.uid,
                                owner.gid,
                                spec.mode,
                                spec.owner.uid,
                                spec.owner.gid
                            ));
                        }
                    }
                    (Ok(None), _) | (_, Ok(None)) => {
                        out.push(format!("{}: missing", path.display()))
                    }
                    (Err(e), _) | (_, Err(e)) => out.push(e.to_string()),
                },
                Action::Remove { path } => {
                    if !matches!(reader.stat(path), Ok(None)) {
                        out.push(format!("{}: present", path.display()));
                    }
                }
                Action::EnsureDir { path, .. } => {
                    if !ctx.root.path(path).is_dir() {
                        out.push(format!("{}: directory missing", path.display()));
                    }
                }
                Action::Run { .. } => {}
            }
        }
        out
    }
}

/// The result of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pass,
    Fail,
    NotConfigured,
    /// The check could not run (e.g. needs root, a tool is missing).
    Unknown,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::NotConfigured => "NOT CONFIGURED",
            Status::Unknown => "UNKNOWN",
        })
    }
}

/// One control's compliance, with one line of evidence an auditor can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub control: &'static str,
    pub title: &'static str,
    pub status: Status,
    pub evidence: String,
}

/// A control failed to plan or execute. Names the control and what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub control: &'static str,
    pub message: String,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.control, self.message)
    }
}

impl std::error::Error for ControlError {}

/// One hardening concern.
pub trait Control: Send + Sync {
    /// Stable identifier (`root_access`), used in JSON, state and events.
    fn id(&self) -> &'static str;
    /// Human title (`Root rights`).
    fn title(&self) -> &'static str;
    /// The exact changes wanted. Pure: reads the host, changes nothing.
    fn plan(&self, ctx: &Context<'_>) -> Result<Plan, String>;
    /// Is the host compliant now, and the evidence.
    fn check(&self, ctx: &Context<'_>) -> Finding;

    fn finding(&self, status: Status, evidence: impl Into<String>) -> Finding
    where
        Self: Sized,
    {
        Finding {
            control: self.id(),
            title: self.title(),
            status,
            evidence: evidence.into(),
        }
    }
}
