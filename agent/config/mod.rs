//! The agent's configuration: serde types (their doc comments are the user documentation),
//! defaults, and [`load`] = read → parse → validate. Nothing here changes the host.
//!
//! Every section is optional. An absent section leaves its control unmanaged, except removal of
//! root rights and the audit of the SageMaker directory, which are on unless disabled: `{}` is a
//! secure configuration on a standard notebook.

pub mod codeartifact;
pub mod reads;
pub mod schema;
pub mod secret;
pub mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use codeartifact::CodeArtifactConfig;
pub use reads::ReadsConfig;
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
#[derive(Clone, PartialEq, Deserialize, Serialize)]
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
    /// conda channels (names or URLs). Empty: conda is left as it is. A URL may carry
    /// credentials (`https://u:pw@host/…`) or a token path (`…/t/<token>/…`): written to the
    /// condarc, never printed.
    #[serde(default, serialize_with = "redacted_channels")]
    pub conda_channels: Vec<String>,
}

/// `Debug` shows conda channel URLs redacted (the URL fields redact themselves).
impl fmt::Debug for PipConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels: Vec<String> = self
            .conda_channels
            .iter()
            .map(|c| {
                if c.contains("://") {
                    SecretUrl::new(c.clone()).redacted()
                } else {
                    c.clone()
                }
            })
            .collect();
        f.debug_struct("PipConfig")
            .field("index_url", &self.index_url)
            .field("extra_index_urls", &self.extra_index_urls)
            .field("trusted_hosts", &self.trusted_hosts)
            .field("cert", &self.cert)
            .field("timeout_secs", &self.timeout_secs)
            .field("conda_channels", &channels)
            .finish()
    }
}

/// conda channels as status and state files show them: URLs redacted like every [`SecretUrl`].
fn redacted_channels<S: serde::Serializer>(channels: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(channels.len()))?;
    for c in channels {
        if c.contains("://") {
            seq.serialize_element(&SecretUrl::new(c.clone()).redacted())?;
        } else {
            seq.serialize_element(c)?;
        }
    }
    seq.end()
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

/// Names `sagemaker_environment.py` defines itself; `environment.extra` may not reuse them. Here
/// (not in the control that renders the module) because validation needs it and the config is the
/// lower layer: `harden` imports `config`, never the reverse.
pub const RESERVED_NAMES: &[&str] = &[
    "SAGEMAKER_NOTEBOOK_NAME",
    "SAGEMAKER_NOTEBOOK_ARN",
    "SAGEMAKER_REGION",
    "SAGEMAKER_ACCOUNT_ID",
    "SAGEMAKER_VPC",
    "SAGEMAKER_SUBNETS",
    "SAGEMAKER_SECURITY_GROUPS",
    "SAGEMAKER_KMS_KEY_ID",
    "SAGEMAKER_DATA_BUCKET",
    "SAGEMAKER_MODEL_BUCKET",
    "network_kwargs",
    "vpc_config",
];

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
    /// The opt-in read audit: reads of sensitive files as OCSF Read records. Off when absent.
    #[serde(default)]
    pub reads: Option<ReadsConfig>,
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
            reads: None,
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

    /// conda channels given as URLs (they may carry `u:pw@` or a `/t/<token>/` path).
    pub fn channel_urls(&self) -> Vec<SecretUrl> {
        self.pip
            .iter()
            .flat_map(|p| p.conda_channels.iter())
            .filter(|c| c.contains("://"))
            .map(|c| SecretUrl::new(c.clone()))
            .collect()
    }

    /// A scrubber for every secret this config holds (and every value registered process-wide
    /// with [`secret::register`]), in every encoding the agent writes: the one redaction.
    pub fn redactor(&self) -> Redactor {
        let channels = self.channel_urls();
        Redactor::new(self.urls().into_iter().chain(channels.iter()))
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

/// Largest config file read, in bytes. The lifecycle script that writes it holds at most ~12 KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// A JSON value read with duplicate keys refused (`serde_json::Value` keeps the last silently;
/// a second `"audit"` must not quietly turn the first one off).
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate key {k:?} (each key may appear once)"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses and validates config text. `file` only names the source in messages.
///
/// One pass collects every problem: the text must be exactly one JSON object (no trailing data,
/// no duplicate key); its shape is checked on the JSON value ([`schema`]: unknown keys, types,
/// control characters, sizes), the parts with the right shape are read into the serde types and
/// their values validated ([`validate`]). No message echoes a value shaped like a URL with
/// credentials.
pub fn parse(text: &str, file: &Path) -> Result<ValidConfig, ConfigError> {
    let parse_error = |e: serde_json::Error| ConfigError::Parse {
        file: file.to_path_buf(),
        path: "(document)".to_string(),
        message: scrub_serde_message(&e),
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let StrictValue(mut doc) = StrictValue::deserialize(&mut de).map_err(parse_error)?;
    de.end().map_err(parse_error)?;

    let mut problems = Vec::new();
    schema::check(&mut doc, &mut problems);
    let config = if doc.is_object() {
        match serde_path_to_error::deserialize::<_, Config>(doc) {
            Ok(c) => Some(c),
            Err(e) => {
                // The schema check should have caught it; report it rather than pass it by.
                if problems.is_empty() {
                    let path = e.path().to_string();
                    problems.push(Problem {
                        path: if path == "." {
                            "(document)".to_string()
                        } else {
                            path
                        },
                        message: scrub_serde_message(&e.into_inner()),
                    });
                }
                None
            }
        }
    } else {
        None
    };
    if let Some(c) = &config {
        problems.extend(validate::validate(c));
    }
    match config {
        Some(config) if problems.is_empty() => Ok(ValidConfig {
            config,
            source: file.to_path_buf(),
        }),
        _ => Err(ConfigError::Invalid {
            file: file.to_path_buf(),
            problems: problems
                .into_iter()
                .map(validate::Problem::hidden)
                .collect(),
        }),
    }
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

/// What `file` is, when it is not a regular file (a symbolic link to one is fine).
fn not_regular(meta: &std::fs::Metadata) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    }
}

/// Reads the config file: only a regular file, at most [`MAX_CONFIG_BYTES`]. A FIFO or device is
/// refused before it is opened (opening a FIFO blocks until a writer comes), and the open is
/// non-blocking with the type checked again on the descriptor, so a file swapped for a FIFO in
/// between cannot hang the agent either.
fn read_config(file: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| ConfigError::Read {
        file: file.to_path_buf(),
        err: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    };
    let not_a_file = |what: &str| refuse(format!("is {what}; the config must be a regular file"));
    let too_big = || {
        refuse(format!(
            "is larger than {MAX_CONFIG_BYTES} bytes, the most a config may have"
        ))
    };
    let io = |err| ConfigError::Read {
        file: file.to_path_buf(),
        err,
    };
    let meta = std::fs::metadata(file).map_err(io)?;
    if let Some(what) = not_regular(&meta) {
        return Err(not_a_file(what));
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY).bits())
        .open(file)
        .map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    if let Some(what) = not_regular(&meta) {
        return Err(not_a_file(what));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

/// Reads the config at `file`. A missing file is an error when `explicit` (the operator named
/// it); at the default location it means "use the defaults", which are secure. The secrets of a
/// valid config are registered process-wide ([`secret::register_all`]) so that errors and logs
/// printed without the config at hand are scrubbed too.
pub fn load(file: &Path, explicit: bool) -> Result<ValidConfig, ConfigError> {
    let valid = match read_config(file) {
        Ok(text) => parse(&text, file),
        Err(ConfigError::Read { err, .. })
            if err.kind() == std::io::ErrorKind::NotFound && !explicit =>
        {
            tracing::warn!(path = %file.display(), "No config file; using the defaults.");
            parse("{}", Path::new("<defaults>"))
        }
        Err(e) => Err(e),
    }?;
    secret::register_all(&valid.redactor());
    Ok(valid)
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
