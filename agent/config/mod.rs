//! The agent's configuration: serde types (their doc comments are the user documentation),
//! defaults, and [`load`] = read → parse → validate. Nothing here changes the host.
//!
//! Every section is optional. An absent section leaves its control unmanaged, except removal of
//! root rights and the audit of the SageMaker directory, which are on unless disabled: `{}` is a
//! secure configuration on a standard notebook.

pub mod codeartifact;
pub mod secret;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use codeartifact::CodeArtifactConfig;
pub use secret::{Redactor, SecretUrl};
pub use validate::Problem;

/// Where `--config` points when it is not given (under `--root`).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/notebook-agent/config.json";

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The notebook user: the one whose root rights are removed and whose tools are configured.
    #[serde(default)]
    pub user: UserConfig,
    /// Removal of the notebook user's root rights. On unless `enabled` is false.
    #[serde(default)]
    pub root_access: RootAccessConfig,
    /// The package mirror pip and conda use. Absent: pip and conda are left as they are.
    #[serde(default)]
    pub pip: Option<PipConfig>,
    /// The HTTP(S) proxy every tool uses. Absent: no proxy is configured.
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// The values written to `sagemaker_environment.py`. Absent: the module is not written.
    #[serde(default)]
    pub environment: Option<EnvironmentConfig>,
    /// The file-activity audit of the notebook's persistent volume. On unless `enabled` is false.
    #[serde(default)]
    pub audit: AuditConfig,
    /// What the daemon does when a hardened file changes behind its back.
    #[serde(default)]
    pub drift: DriftConfig,
}

/// The notebook user.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name of the notebook user. Default `ec2-user`.
    #[serde(default = "default_user_name")]
    pub name: String,
    /// Home directory. Default: the user's entry in `/etc/passwd`, else `/home/<name>`.
    #[serde(default)]
    pub home: Option<PathBuf>,
}

impl Default for UserConfig {
    fn default() -> Self {
        Self {
            name: default_user_name(),
            home: None,
        }
    }
}

fn default_user_name() -> String {
    "ec2-user".to_string()
}

/// Removal of the notebook user's root rights.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RootAccessConfig {
    /// Remove every sudo rule that applies to the user and take the user out of `groups`.
    /// Default true; set false only for notebooks whose users are trusted with root.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Root-equivalent groups the user is taken out of. Default `["wheel", "docker"]`
    /// (membership of `docker` is root: `docker run -v /:/host`).
    #[serde(default = "default_root_groups")]
    pub groups: Vec<String>,
}

impl Default for RootAccessConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            groups: default_root_groups(),
        }
    }
}

fn default_root_groups() -> Vec<String> {
    vec!["wheel".to_string(), "docker".to_string()]
}

fn default_true() -> bool {
    true
}

/// The package mirror.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipConfig {
    /// The mirror's simple index, e.g. `https://pypi.corp.example/simple`. May carry a token;
    /// it is written to pip.conf but never printed. Exactly one of this and `codeartifact`.
    #[serde(default)]
    pub index_url: Option<SecretUrl>,
    /// AWS CodeArtifact as the mirror: the agent writes the repository's index URL with a token
    /// it obtains with the notebook's role and refreshes in `watch`. Exactly one of this and
    /// `index_url`.
    #[serde(default)]
    pub codeartifact: Option<CodeArtifactConfig>,
    /// Further indexes pip also searches.
    #[serde(default)]
    pub extra_index_urls: Vec<SecretUrl>,
    /// Hosts pip trusts without TLS verification (`host` or `host:port`). Prefer `cert`.
    #[serde(default)]
    pub trusted_hosts: Vec<String>,
    /// Absolute path of a PEM CA bundle for the mirror (e.g. the corporate root CA).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// pip's network timeout in seconds (1–600).
    #[serde(default)]
    pub timeout_secs: Option<u32>,
    /// conda channels (names or URLs). Empty: conda is left as it is.
    #[serde(default)]
    pub conda_channels: Vec<String>,
}

/// The proxy.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Proxy for plain HTTP, e.g. `http://proxy.corp:3128`. May carry credentials (redacted).
    #[serde(default)]
    pub http: Option<SecretUrl>,
    /// Proxy for HTTPS. Usually the same URL as `http`.
    #[serde(default)]
    pub https: Option<SecretUrl>,
    /// Hosts, domain suffixes (`.amazonaws.com`, VPC endpoints), IPs or CIDRs that bypass the
    /// proxy. `127.0.0.1`, `localhost` and `169.254.169.254` are always added.
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

/// Values for `sagemaker_environment.py`. The names match the secure data science reference
/// architecture.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentConfig {
    /// `SAGEMAKER_VPC`: `vpc-` + 8 or 17 hex digits.
    #[serde(default)]
    pub vpc: Option<String>,
    /// `SAGEMAKER_SUBNETS`: `subnet-` + 8 or 17 hex digits each.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// `SAGEMAKER_SECURITY_GROUPS`: `sg-` + 8 or 17 hex digits each.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// `SAGEMAKER_KMS_KEY_ID`: key id, key ARN, alias name (`alias/…`) or alias ARN.
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// `SAGEMAKER_DATA_BUCKET`: an S3 bucket name.
    #[serde(default)]
    pub data_bucket: Option<String>,
    /// `SAGEMAKER_MODEL_BUCKET`: an S3 bucket name.
    #[serde(default)]
    pub model_bucket: Option<String>,
    /// Further module-level string constants: keys are Python identifiers, values any text.
    #[serde(default)]
    pub extra: std::collections::BTreeMap<String, String>,
    /// Fill values that are not configured from the instance metadata service (IMDSv2).
    #[serde(default)]
    pub discover: bool,
    /// The instance metadata endpoint. Default `http://169.254.169.254`; tests point it at a
    /// local fake.
    #[serde(default)]
    pub imds_endpoint: Option<SecretUrl>,
}

/// The audit of file activity.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Watch and ship file activity. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Absolute directories watched recursively. Default `["<home>/SageMaker"]`.
    #[serde(default)]
    pub paths: Option<Vec<PathBuf>>,
    /// Glob patterns (matched against each path component) that are not audited.
    /// Default `[".ipynb_checkpoints", ".Trash-*"]`; the spool is always excluded.
    #[serde(default = "default_excludes")]
    pub excludes: Vec<String>,
    /// Files up to this size get a sha256 in their event. Default 104857600 (100 MiB).
    #[serde(default = "default_hash_max_bytes")]
    pub hash_max_bytes: u64,
    /// CloudWatch Logs group. Placeholders `{notebook}`, `{region}`, `{account}`.
    /// Default `/aws/sagemaker/NotebookInstances` (writable by the standard SageMaker role).
    #[serde(default = "default_log_group")]
    pub log_group: String,
    /// CloudWatch Logs stream, same placeholders. Default `{notebook}/audit`.
    #[serde(default = "default_log_stream")]
    pub log_stream: String,
    /// AWS region. Default: the region in the notebook's ARN.
    #[serde(default)]
    pub region: Option<String>,
    /// CloudWatch Logs endpoint (VPC endpoint, tests). Default: the SDK's regional endpoint.
    #[serde(default)]
    pub endpoint_url: Option<SecretUrl>,
    /// Retention of a log group the agent creates, in days; one of CloudWatch's allowed values.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// KMS key for a log group the agent creates (key ARN).
    #[serde(default)]
    pub kms_key_id: Option<String>,
    /// Spool directory; must survive a stop/start. Default `<first audit path>/.notebook-agent`.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Spool size cap in bytes; beyond it new events are counted as dropped. Default 536870912.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Seconds between heartbeats (status shipped as an event). Default 300.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    /// Longest wait before a partial batch is shipped, in milliseconds. Default 1000.
    #[serde(default = "default_flush_ms")]
    pub flush_ms: u64,
    /// At stop (SIGTERM), how long the shipper keeps sending what the spool holds, in seconds;
    /// the rest waits in the spool for the next start. Default 20; at most 25 (the unit's
    /// `TimeoutStopSec` is 30).
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            paths: None,
            excludes: default_excludes(),
            hash_max_bytes: default_hash_max_bytes(),
            log_group: default_log_group(),
            log_stream: default_log_stream(),
            region: None,
            endpoint_url: None,
            retention_days: None,
            kms_key_id: None,
            spool_dir: None,
            spool_max_bytes: default_spool_max_bytes(),
            heartbeat_secs: default_heartbeat_secs(),
            flush_ms: default_flush_ms(),
            drain_secs: default_drain_secs(),
        }
    }
}

fn default_excludes() -> Vec<String> {
    vec![".ipynb_checkpoints".to_string(), ".Trash-*".to_string()]
}
fn default_drain_secs() -> u64 {
    20
}
fn default_hash_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_log_group() -> String {
    "/aws/sagemaker/NotebookInstances".to_string()
}
fn default_log_stream() -> String {
    "{notebook}/audit".to_string()
}
fn default_spool_max_bytes() -> u64 {
    512 * 1024 * 1024
}
fn default_heartbeat_secs() -> u64 {
    300
}
fn default_flush_ms() -> u64 {
    1000
}

/// Drift handling in the daemon.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Re-apply a control whose check fails after one of its files changed. Default true.
    #[serde(default = "default_true")]
    pub reapply: bool,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self { reapply: true }
    }
}

impl Config {
    /// The user's home directory as configured, else `/home/<name>` (controls that can read
    /// `/etc/passwd` prefer the entry there).
    pub fn home(&self) -> PathBuf {
        self.user
            .home
            .clone()
            .unwrap_or_else(|| Path::new("/home").join(&self.user.name))
    }

    /// The audited directories.
    pub fn audit_paths(&self) -> Vec<PathBuf> {
        self.audit
            .paths
            .clone()
            .unwrap_or_else(|| vec![self.home().join("SageMaker")])
    }

    /// Every URL in the config, for redaction.
    pub fn urls(&self) -> Vec<&SecretUrl> {
        let mut out = Vec::new();
        if let Some(pip) = &self.pip {
            out.extend(pip.index_url.iter());
            out.extend(pip.extra_index_urls.iter());
            out.extend(pip.codeartifact.iter().flat_map(|c| c.endpoint_url.iter()));
        }
        if let Some(proxy) = &self.proxy {
            out.extend(proxy.http.iter());
            out.extend(proxy.https.iter());
        }
        if let Some(env) = &self.environment {
            out.extend(env.imds_endpoint.iter());
        }
        out.extend(self.audit.endpoint_url.iter());
        out
    }

    /// A scrubber for every secret this config holds.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.urls())
    }
}

/// A configuration that parsed and passed validation. Only this type reaches the controls.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    source: PathBuf,
}

impl ValidConfig {
    pub fn get(&self) -> &Config {
        &self.config
    }
    /// The file it came from (`<defaults>` when no file existed at the default path).
    pub fn source(&self) -> &Path {
        &self.source
    }
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

/// Why a configuration was refused. Every variant maps to exit code 2.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Read { file: PathBuf, err: std::io::Error },
    /// Not JSON, or not the schema (unknown key, wrong type); `path` is the JSON path.
    Parse {
        file: PathBuf,
        path: String,
        message: String,
    },
    /// Parsed, but values are wrong. Every problem is listed.
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { file, err } => {
                write!(f, "cannot read config {}: {err}", file.display())
            }
            ConfigError::Parse {
                file,
                path,
                message,
            } => write!(f, "config {}: {path}: {message}", file.display()),
            ConfigError::Invalid { file, problems } => {
                write!(
                    f,
                    "config {}: {} problem{}:",
                    file.display(),
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                )?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates config text. `file` only names the source in messages.
pub fn parse(text: &str, file: &Path) -> Result<ValidConfig, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ConfigError::Parse {
            file: file.to_path_buf(),
            path: if path == "." {
                "(document)".to_string()
            } else {
                path
            },
            message: scrub_serde_message(&inner),
        }
    })?;
    let problems = validate::validate(&config);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            problems,
        });
    }
    Ok(ValidConfig {
        config,
        source: file.to_path_buf(),
    })
}

/// serde's messages quote the offending value (`invalid type: string "http://u:p@…"`), which
/// may be a secret; keep the shape of the message and drop quoted values.
fn scrub_serde_message(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let mut out = String::with_capacity(msg.len());
    let mut in_quote = false;
    for c in msg.chars() {
        if c == '"' {
            if in_quote {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            in_quote = !in_quote;
        } else if !in_quote {
            out.push(c);
        }
    }
    out
}

/// Reads the config at `file`. A missing file is an error when `explicit` (the operator named
/// it); at the default location it means "use the defaults", which are secure.
pub fn load(file: &Path, explicit: bool) -> Result<ValidConfig, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(&text, file),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
            tracing::warn!(path = %file.display(), "No config file; using the defaults.");
            parse("{}", Path::new("<defaults>"))
        }
        Err(err) => Err(ConfigError::Read {
            file: file.to_path_buf(),
            err,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_is_a_secure_default() {
        let c = parse("{}", Path::new("t.json")).expect("valid");
        assert!(c.root_access.enabled);
        assert_eq!(c.root_access.groups, ["wheel", "docker"]);
        assert!(c.audit.enabled);
        assert_eq!(c.audit_paths(), [PathBuf::from("/home/ec2-user/SageMaker")]);
        assert!(c.pip.is_none() && c.proxy.is_none() && c.environment.is_none());
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = parse(r#"{"proxy": {"htps": "x"}}"#, Path::new("t.json")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("proxy"), "{s}");
        assert!(s.contains("htps"), "{s}");
    }

    #[test]
    fn type_error_does_not_echo_secret_values() {
        let e = parse(
            r#"{"proxy": {"no_proxy": "http://u:hunter2@p"}}"#,
            Path::new("t.json"),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("proxy.no_proxy"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
    }

    #[test]
    fn debug_of_config_redacts_urls() {
        let c = parse(
            r#"{"proxy": {"https": "http://bob:hunter2@proxy.corp:3128"}}"#,
            Path::new("t.json"),
        )
        .expect("valid");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2") && !dbg.contains("bob"), "{dbg}");
    }
}
