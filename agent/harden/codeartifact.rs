//! AWS CodeArtifact as pip's mirror (`pip.codeartifact`): the agent owns the repository's
//! authorization token so that `pip install` keeps working on a notebook that runs longer than
//! one token lives.
//!
//! - `apply` (the pip control's plan) calls `GetAuthorizationToken` and `GetRepositoryEndpoint`
//!   (format pypi) with the notebook's role through the AWS SDK (the shipper's single rustls+ring
//!   client stack) and plans `https://aws:<token>@<endpoint>simple/` as pip's index URL in every
//!   pip.conf. Any failure fails the plan with one line that names what is missing: the IAM
//!   actions or the VPC endpoints. Nothing is written then.
//! - `watch` runs the [`Refresher`]: at half a token's life it obtains the next one (retrying
//!   with backoff; the old token stays valid meanwhile), makes it the current token and rewrites
//!   the pip.conf files through the pip control's own plan, under [`WRITE_LOCK`] — the lock the
//!   pip check takes too, so drift repair never sees a half-done refresh and the plan is always
//!   the current token. Each attempt is an agent event (`TokenRefreshed`, `TokenRefreshFailed`).
//! - `status` (another process) reads the token from `/etc/pip.conf` and its expiry from
//!   [`STATE_FILE`], which records a fingerprint (sha256) and the expiry of every token the agent
//!   obtained, never the token.
//!
//! The token is a secret everywhere the agent reports: every token obtained or read is
//! registered with the redaction (`config::secret::register`), and the index URL
//! is a [`SecretUrl`], whose every printed form is redacted.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::change::{now_ms, AgentEvent};
use crate::config::{CodeArtifactConfig, Config, SecretUrl, ValidConfig};
use crate::control::{Context, Control};
use crate::host::Root;

/// The agent's record of the tokens it obtained (in the state directory).
pub const STATE_FILE: &str = "codeartifact.json";
/// How many token records are kept: the one in the files and a few newer ones (a dry run
/// obtains a token that never reaches the files).
const RECORDS_KEPT: usize = 6;
/// `status` fails this long before expiry when the last refresh failed.
pub const EXPIRY_WARNING_MS: i64 = 15 * 60 * 1000;
/// First retry delay after a failed refresh; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the notebook's role needs, named in every access-denied error.
pub const IAM_ACTIONS: &str = "codeartifact:GetAuthorizationToken, codeartifact:GetRepositoryEndpoint, codeartifact:ReadFromRepository and sts:GetServiceBearerToken (condition sts:AWSServiceName = codeartifact.amazonaws.com)";

/// The VPC endpoints a notebook without internet access needs, named in every network error.
pub fn vpc_endpoints(region: &str) -> String {
    format!(
        "com.amazonaws.{region}.codeartifact.api, com.amazonaws.{region}.codeartifact.repositories and com.amazonaws.{region}.sts"
    )
}

/// One authorization token, as pip's index URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `https://aws:<token>@<endpoint>simple/`; printed forms are redacted.
    pub index_url: SecretUrl,
    pub obtained_ms: i64,
    pub expires_ms: i64,
}

impl Token {
    /// When the refresher asks for the next token: half-way through this one's life.
    pub fn refresh_at_ms(&self) -> i64 {
        self.obtained_ms + (self.expires_ms - self.obtained_ms).max(0) / 2
    }
}

/// The repository a config names, as recorded (`owner/domain/repository@region`).
fn repository_key(ca: &CodeArtifactConfig, region: &str) -> String {
    format!(
        "{}/{}/{}@{region}",
        ca.domain_owner, ca.domain, ca.repository
    )
}

/// sha256 of the index URL: identifies a token without holding it.
fn fingerprint(index_url: &SecretUrl) -> String {
    let digest = Sha256::digest(index_url.expose().as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Every token obtained is scrubbed from everything printed from now on, in each form a tool
/// may print it (`secret::register` adds the encodings).
fn register(index_url: &SecretUrl) {
    for s in index_url.secrets() {
        crate::config::secret::register(&s);
    }
}

// ---------------------------------------------------------------------------------------------
// The state file.

/// One token the agent obtained, without the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub repository: String,
    /// sha256 of the index URL written to pip.conf.
    pub fingerprint: String,
    pub obtained_ms: i64,
    pub expires_ms: i64,
}

/// The outcome of the latest refresh attempt in `watch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshOutcome {
    pub at_ms: i64,
    pub ok: bool,
    /// Why it failed (redacted; names the IAM actions or VPC endpoints when that is the cause).
    #[serde(default)]
    pub error: Option<String>,
}

/// [`STATE_FILE`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenState {
    pub version: u32,
    /// Newest last.
    pub tokens: Vec<TokenRecord>,
    #[serde(default)]
    pub last_refresh: Option<RefreshOutcome>,
}

/// Serialises read-modify-write of the state file within this process.
static STATE_LOCK: Mutex<()> = Mutex::new(());

impl TokenState {
    pub fn load(root: &Root) -> Self {
        std::fs::read(root.state_dir().join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn update(root: &Root, f: impl FnOnce(&mut TokenState)) -> Result<(), String> {
        let _guard = STATE_LOCK.lock().map_err(|_| "state lock poisoned")?;
        let mut s = Self::load(root);
        s.version = 1;
        f(&mut s);
        let bytes = serde_json::to_vec_pretty(&s).map_err(|e| e.to_string())?;
        crate::host::safe_write::write_private(&root.state_dir().join(STATE_FILE), &bytes)
    }

    fn record(&self, repository: &str, index_url: &SecretUrl) -> Option<&TokenRecord> {
        let fp = fingerprint(index_url);
        self.tokens
            .iter()
            .rev()
            .find(|t| t.fingerprint == fp && t.repository == repository)
    }
}

fn remember(root: &Root, repository: &str, token: &Token) -> Result<(), String> {
    TokenState::update(root, |s| {
        s.tokens.push(TokenRecord {
            repository: repository.to_string(),
            fingerprint: fingerprint(&token.index_url),
            obtained_ms: token.obtained_ms,
            expires_ms: token.expires_ms,
        });
        let excess = s.tokens.len().saturating_sub(RECORDS_KEPT);
        s.tokens.drain(..excess);
    })
}

fn record_outcome(root: &Root, outcome: RefreshOutcome) {
    if let Err(e) = TokenState::update(root, |s| s.last_refresh = Some(outcome)) {
        tracing::warn!(error = %e, "Cannot record the token refresh outcome.");
    }
}

// ---------------------------------------------------------------------------------------------
// The current token of this process.

/// The token this process plans with (set by `apply`'s fetch or the refresher).
static CURRENT: Mutex<Option<Token>> = Mutex::new(None);
/// Set while `watch` runs the refresher: plans then never fetch (the refresher does).
static REFRESHER_RUNS: AtomicBool = AtomicBool::new(false);
/// Held by the refresher while it replaces the token and rewrites the files, and by the pip
/// check while it compares plan and files: the check never sees half a refresh.
pub static WRITE_LOCK: Mutex<()> = Mutex::new(());

fn current() -> Option<Token> {
    CURRENT.lock().ok().and_then(|c| c.clone())
}

fn set_current(t: Token) {
    register(&t.index_url);
    if let Ok(mut c) = CURRENT.lock() {
        *c = Some(t);
    }
}

/// The region the repository is in: configured, else the notebook's.
fn region(root: &Root, ca: &CodeArtifactConfig) -> Result<String, String> {
    if let Some(r) = &ca.region {
        return Ok(r.clone());
    }
    match crate::host::metadata::NotebookIdentity::load(root) {
        Ok(Some(id)) => Ok(id.region),
        Ok(None) => Err("pip.codeartifact.region: not set and the notebook's ARN is unknown (no /opt/ml/metadata/resource-metadata.json); set pip.codeartifact.region".to_string()),
        Err(e) => Err(format!("pip.codeartifact.region: not set and the notebook's region is unknown: {e}")),
    }
}

/// The token found in the files: the index URL of `/etc/pip.conf`.
fn from_files(ctx: &Context<'_>) -> Option<SecretUrl> {
    let bytes = ctx
        .reader()
        .read(std::path::Path::new(super::pip::GLOBAL_PIP_CONF))
        .ok()??;
    let text = String::from_utf8(bytes).ok()?;
    let url = text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == "index-url").then(|| SecretUrl::new(v.trim()))
    })?;
    register(&url);
    Some(url)
}

/// What the pip control plans with and checks against.
#[derive(Debug, Clone)]
pub struct Current {
    pub index_url: SecretUrl,
    /// Expiry, when the agent obtained this token (from memory or [`STATE_FILE`]).
    pub expires_ms: Option<i64>,
}

/// The index URL the pip control plans: this process's current token; without one, a new token
/// in `apply` (one GetAuthorizationToken per run), or the token in the files while `watch`'s
/// refresher owns fetching.
pub fn for_plan(ctx: &Context<'_>, ca: &CodeArtifactConfig) -> Result<SecretUrl, String> {
    // The token in the files is registered with the redaction too: a dry run's diff shows it.
    let in_files = from_files(ctx);
    if let Some(t) = current() {
        return Ok(t.index_url);
    }
    if REFRESHER_RUNS.load(Ordering::SeqCst) {
        return in_files.ok_or_else(|| {
            "no CodeArtifact token yet: the refresher is still trying to obtain one".to_string()
        });
    }
    let region = region(ctx.root, ca)?;
    let token = fetch(ctx.config, ca, &region)?;
    if let Err(e) = remember(ctx.root, &repository_key(ca, &region), &token) {
        tracing::warn!(error = %e, "Cannot record the CodeArtifact token's expiry; status will not know it.");
    }
    set_current(token.clone());
    Ok(token.index_url)
}

/// The index URL the pip check compares the files with, and its expiry. Never calls AWS: in
/// `status` the token is the one in the files.
pub fn for_check(ctx: &Context<'_>, ca: &CodeArtifactConfig) -> Result<Current, String> {
    let region = region(ctx.root, ca)?;
    let key = repository_key(ca, &region);
    let url = match current() {
        Some(t) => {
            return Ok(Current {
                index_url: t.index_url,
                expires_ms: Some(t.expires_ms),
            })
        }
        None => from_files(ctx)
            .ok_or_else(|| format!("no index-url in {}: run apply", super::pip::GLOBAL_PIP_CONF))?,
    };
    let expires_ms = TokenState::load(ctx.root)
        .record(&key, &url)
        .map(|r| r.expires_ms);
    Ok(Current {
        index_url: url,
        expires_ms,
    })
}

/// The token part of the pip check's evidence, and whether it fails.
pub fn judge(root: &Root, expires_ms: Option<i64>, now_ms: i64) -> (bool, String) {
    let Some(exp) = expires_ms else {
        return (
            false,
            "CodeArtifact token in pip.conf was not obtained by this agent (no expiry on record); run apply".to_string(),
        );
    };
    let when = format_ms(exp);
    let left = exp - now_ms;
    if left <= 0 {
        // No relative time in a failure: the daemon reports a drift once per distinct evidence.
        return (false, format!("CodeArtifact token expired at {when}"));
    }
    let last = TokenState::load(root).last_refresh;
    if let Some(RefreshOutcome {
        ok: false, error, ..
    }) = &last
    {
        if left <= EXPIRY_WARNING_MS {
            return (
                false,
                format!(
                    "CodeArtifact token expires at {when} and the last refresh failed: {}",
                    error.as_deref().unwrap_or("unknown error")
                ),
            );
        }
        return (
            true,
            format!(
                "CodeArtifact token expires at {when} (in {}); the last refresh failed and is retried",
                human(left)
            ),
        );
    }
    (
        true,
        format!("CodeArtifact token expires at {when} (in {})", human(left)),
    )
}

/// RFC 3339 UTC.
pub fn format_ms(ms: i64) -> String {
    aws_smithy_types::DateTime::from_millis(ms)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| format!("{ms} ms"))
}

fn human(ms: i64) -> String {
    let s = ms / 1000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

// ---------------------------------------------------------------------------------------------
// The AWS calls.

/// Obtains a token and the repository's PyPI endpoint. Blocking (its own small runtime). The
/// error is one line naming the missing IAM actions or VPC endpoints when that is the cause.
pub fn fetch(config: &Config, ca: &CodeArtifactConfig, region: &str) -> Result<Token, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("pip.codeartifact: runtime: {e}"))?;
    rt.block_on(fetch_async(config, ca, region))
}

async fn fetch_async(
    config: &Config,
    ca: &CodeArtifactConfig,
    region: &str,
) -> Result<Token, String> {
    use aws_sdk_codeartifact::types::PackageFormat;

    let client = client(config, ca, region).await?;
    let api = ca
        .endpoint_url
        .as_ref()
        .map(SecretUrl::redacted)
        .unwrap_or_else(|| format!("https://codeartifact.{region}.amazonaws.com"));
    let what = format!(
        "domain {} (owner {}) in {region}",
        ca.domain, ca.domain_owner
    );
    let obtained_ms = now_ms();
    let tok = client
        .get_authorization_token()
        .domain(&ca.domain)
        .domain_owner(&ca.domain_owner)
        .duration_seconds(i64::try_from(ca.duration_secs).unwrap_or(i64::MAX))
        .send()
        .await
        .map_err(|e| explain("GetAuthorizationToken", &what, &api, region, &e))?;
    let ep = client
        .get_repository_endpoint()
        .domain(&ca.domain)
        .domain_owner(&ca.domain_owner)
        .repository(&ca.repository)
        .format(PackageFormat::Pypi)
        .send()
        .await
        .map_err(|e| {
            explain(
                "GetRepositoryEndpoint",
                &format!("repository {} in {what}", ca.repository),
                &api,
                region,
                &e,
            )
        })?;
    let secret = tok
        .authorization_token()
        .filter(|t| !t.is_empty())
        .ok_or("pip.codeartifact: GetAuthorizationToken answered without a token")?;
    let expires_ms = tok
        .expiration()
        .and_then(|d| d.to_millis().ok())
        .unwrap_or(obtained_ms + (ca.duration_secs as i64) * 1000);
    let endpoint = ep
        .repository_endpoint()
        .ok_or("pip.codeartifact: GetRepositoryEndpoint answered without an endpoint")?;
    let index_url = index_url(endpoint, secret)?;
    let token = Token {
        index_url,
        obtained_ms,
        expires_ms,
    };
    register(&token.index_url);
    tracing::info!(
        repository = %ca.repository,
        expires = %format_ms(expires_ms),
        "Obtained a CodeArtifact token."
    );
    Ok(token)
}

/// `https://aws:<token>@<endpoint>simple/`, as `aws codeartifact login --tool pip` writes it.
pub fn index_url(endpoint: &str, token: &str) -> Result<SecretUrl, String> {
    let mut url = url::Url::parse(endpoint).map_err(|e| {
        format!(
            "pip.codeartifact: GetRepositoryEndpoint returned an endpoint that is not a URL: {e}"
        )
    })?;
    if !url.path().ends_with('/') {
        let p = format!("{}/", url.path());
        url.set_path(&p);
    }
    url = url
        .join("simple/")
        .map_err(|e| format!("pip.codeartifact: endpoint: {e}"))?;
    url.set_username("aws")
        .and_then(|_| url.set_password(Some(token)))
        .map_err(|_| "pip.codeartifact: the repository endpoint cannot carry credentials")?;
    Ok(SecretUrl::new(url.to_string()))
}

async fn client(
    config: &Config,
    ca: &CodeArtifactConfig,
    region: &str,
) -> Result<aws_sdk_codeartifact::Client, String> {
    use aws_config::BehaviorVersion;
    use aws_sdk_codeartifact::config::retry::RetryConfig;
    use aws_sdk_codeartifact::config::timeout::TimeoutConfig;
    use aws_sdk_codeartifact::config::Region;

    // The shipper's client settings: one rustls+ring stack, the configured proxy and no_proxy,
    // the mirror's CA bundle (a TLS-inspecting proxy's root is usually the same).
    let mut settings = crate::audit::shipper::client::ClientSettings::new(region);
    if let Some(p) = &config.proxy {
        settings.http_proxy = p.http.clone();
        settings.https_proxy = p.https.clone();
        settings.no_proxy = p.no_proxy.clone();
    }
    settings.endpoint_url = ca.endpoint_url.clone();
    settings.ca_bundle = config.pip.as_ref().and_then(|p| p.cert.clone());
    settings.read_timeout = Duration::from_secs(20);
    settings.attempt_timeout = Duration::from_secs(30);
    let http_client = settings
        .http_client()
        .map_err(|e| format!("pip.codeartifact: {e}"))?;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .operation_attempt_timeout(settings.attempt_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http_client)
        .timeout_config(timeouts)
        // One retry for a blip; the refresher has its own backoff, and apply must fail fast.
        .retry_config(RetryConfig::standard().with_max_attempts(2));
    if let Some(url) = &ca.endpoint_url {
        loader = loader.endpoint_url(url.expose());
    }
    let sdk_config = loader.load().await;
    Ok(aws_sdk_codeartifact::Client::new(&sdk_config))
}

/// One line for an SDK error: access denied → the IAM actions; the API unreachable → the VPC
/// endpoints; anything else → the service's code and message.
fn explain<E, R>(
    op: &str,
    what: &str,
    api: &str,
    region: &str,
    err: &aws_sdk_codeartifact::error::SdkError<E, R>,
) -> String
where
    E: aws_sdk_codeartifact::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_codeartifact::error::SdkError;
    let detail = one_line(&aws_sdk_codeartifact::error::DisplayErrorContext(err).to_string());
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown");
            let message = one_line(se.err().message().unwrap_or(""));
            if code == "AccessDeniedException" || code == "AccessDenied" || code == "UnauthorizedException" {
                format!(
                    "pip.codeartifact: {op} on {what} was denied ({code}): the notebook's execution role needs {IAM_ACTIONS}"
                )
            } else if code == "ResourceNotFoundException" {
                format!("pip.codeartifact: {op}: {what} not found ({message}); check pip.codeartifact")
            } else {
                format!("pip.codeartifact: {op} on {what} failed: {code}: {message}")
            }
        }
        _ if detail.contains("credentials") => format!(
            "pip.codeartifact: {op}: no AWS credentials for the notebook's execution role ({detail})"
        ),
        // Refused, reset, closed unanswered, no DNS name: the endpoint is not there for us.
        SdkError::DispatchFailure(d) if !d.is_user() => format!(
            "pip.codeartifact: {op}: the CodeArtifact API at {api} is unreachable ({detail}): without internet access the notebook's VPC needs the endpoints {}",
            vpc_endpoints(region)
        ),
        SdkError::TimeoutError(_) => format!(
            "pip.codeartifact: {op}: the CodeArtifact API at {api} did not answer in time: without internet access the notebook's VPC needs the endpoints {}",
            vpc_endpoints(region)
        ),
        _ => format!("pip.codeartifact: {op} on {what} failed: {detail}"),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// The refresher in `watch`.

/// Keeps the CodeArtifact token fresh while `watch` runs.
pub struct Refresher {
    thread: JoinHandle<()>,
}

impl Refresher {
    /// Starts the refresher when the config uses CodeArtifact. Before it returns, the token in
    /// the files becomes this process's current token when the agent obtained it for the same
    /// repository and it has not expired, so drift repair plans with it from the start.
    pub fn start(
        root: Root,
        config: ValidConfig,
        stop: Arc<AtomicBool>,
        events: Sender<AgentEvent>,
    ) -> Result<Option<Self>, String> {
        let Some(ca) = config.pip.as_ref().and_then(|p| p.codeartifact.clone()) else {
            return Ok(None);
        };
        REFRESHER_RUNS.store(true, Ordering::SeqCst);
        let adopted = adopt(&root, &config, &ca);
        let thread = std::thread::Builder::new()
            .name("codeartifact".into())
            .spawn(move || refresh_loop(&root, &config, &ca, &stop, &events, adopted))
            .map_err(|e| format!("codeartifact refresher thread: {e}"))?;
        Ok(Some(Self { thread }))
    }

    /// [`start`](Self::start), logging why it could not (watch goes on without it).
    pub fn spawn(
        root: &Root,
        config: &ValidConfig,
        stop: &Arc<AtomicBool>,
        events: Sender<AgentEvent>,
    ) -> Option<Self> {
        Self::start(root.clone(), config.clone(), Arc::clone(stop), events).unwrap_or_else(|e| {
            tracing::error!(error = %e, "The CodeArtifact token is not refreshed.");
            None
        })
    }

    /// Waits for the thread briefly: a refresh in flight (up to a minute of timeouts) must not
    /// hold up the daemon's stop; every file it writes is renamed into place, so leaving it is
    /// safe.
    pub fn join(self) {
        let until = Instant::now() + Duration::from_secs(2);
        while !self.thread.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        } else {
            tracing::debug!("CodeArtifact refresh still in flight at stop; not waiting for it.");
        }
    }
}

/// The token in the files, when the agent obtained it for this repository and it still lives.
fn adopt(root: &Root, config: &ValidConfig, ca: &CodeArtifactConfig) -> Option<Token> {
    let region = region(root, ca).ok()?;
    let runner = crate::host::RealRunner::new(root.clone());
    let ctx = Context::new(root, config, &runner).ok()?;
    let url = from_files(&ctx)?;
    let state = TokenState::load(root);
    let rec = state.record(&repository_key(ca, &region), &url)?;
    if rec.expires_ms <= now_ms() {
        return None;
    }
    let t = Token {
        index_url: url,
        obtained_ms: rec.obtained_ms,
        expires_ms: rec.expires_ms,
    };
    set_current(t.clone());
    tracing::info!(expires = %format_ms(t.expires_ms), "Using the CodeArtifact token in pip.conf.");
    Some(t)
}

fn refresh_loop(
    root: &Root,
    config: &ValidConfig,
    ca: &CodeArtifactConfig,
    stop: &AtomicBool,
    events: &Sender<AgentEvent>,
    adopted: Option<Token>,
) {
    let mut next = match &adopted {
        Some(t) => instant_at(t.refresh_at_ms()),
        None => Instant::now(),
    };
    let mut failures: u32 = 0;
    let repository = format!("{}/{}", ca.domain, ca.repository);
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() < next {
            std::thread::sleep(Duration::from_millis(200).min(next - Instant::now()));
            continue;
        }
        let before = current().map(|t| t.expires_ms);
        match refresh_once(root, config, ca) {
            Ok(t) => {
                failures = 0;
                next = instant_at(t.refresh_at_ms());
                record_outcome(
                    root,
                    RefreshOutcome {
                        at_ms: now_ms(),
                        ok: true,
                        error: None,
                    },
                );
                tracing::info!(expires = %format_ms(t.expires_ms), "Refreshed the CodeArtifact token.");
                let _ = events.send(AgentEvent::TokenRefreshed {
                    repository: repository.clone(),
                    expires_ms: t.expires_ms,
                    previous_expires_ms: before,
                });
            }
            Err(e) => {
                // A fresh redactor: it knows every token registered so far.
                let e = config.redactor().scrub(&e);
                failures += 1;
                let wait = FIRST_BACKOFF
                    .saturating_mul(1 << (failures - 1).min(6))
                    .min(MAX_BACKOFF);
                next = Instant::now() + wait;
                record_outcome(
                    root,
                    RefreshOutcome {
                        at_ms: now_ms(),
                        ok: false,
                        error: Some(e.clone()),
                    },
                );
                tracing::warn!(error = %e, attempt = failures, retry_secs = wait.as_secs(), "Cannot refresh the CodeArtifact token; retrying.");
                let _ = events.send(AgentEvent::TokenRefreshFailed {
                    repository: repository.clone(),
                    error: e,
                    attempt: failures,
                    expires_ms: before,
                    retry_secs: wait.as_secs(),
                });
            }
        }
    }
    REFRESHER_RUNS.store(false, Ordering::SeqCst);
}

/// The `Instant` at epoch milliseconds `ms` (now when it has passed).
fn instant_at(ms: i64) -> Instant {
    let ahead = u64::try_from(ms - now_ms()).unwrap_or(0);
    Instant::now() + Duration::from_millis(ahead)
}

/// One refresh: a new token, made current and written to every pip.conf through the pip
/// control's plan (only where `apply` ran: the daemon never hardens a host nobody hardened).
fn refresh_once(
    root: &Root,
    config: &ValidConfig,
    ca: &CodeArtifactConfig,
) -> Result<Token, String> {
    let region = region(root, ca)?;
    let token = fetch(config, ca, &region)?;
    remember(root, &repository_key(ca, &region), &token)?;
    let _guard = WRITE_LOCK.lock().map_err(|_| "pip write lock poisoned")?;
    set_current(token.clone());
    if root
        .state_dir()
        .join(crate::control::state::STATE_FILE)
        .exists()
    {
        rewrite(root, config)?;
    }
    Ok(token)
}

/// Writes the pip control's plan (the current token) with the shared executor: atomic renames.
fn rewrite(root: &Root, config: &ValidConfig) -> Result<Vec<PathBuf>, String> {
    let runner = crate::host::RealRunner::new(root.clone());
    let ctx = Context::new(root, config, &runner)?;
    let pip = super::pip::Pip;
    let plan = pip.plan(&ctx)?;
    let backups = crate::host::Backups::open(root)?;
    let mut progress = crate::control::apply::Progress::default();
    let changes = crate::control::apply::execute(&ctx, &pip, &plan, &backups, &mut progress)
        .map_err(|e| format!("rewriting pip.conf: {e}"))?;
    Ok(changes
        .into_iter()
        .map(|c| PathBuf::from(c.target))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_url_has_the_token_as_password_and_simple() {
        let u = index_url(
            "https://corp-111122223333.d.codeartifact.us-east-1.amazonaws.com/pypi/mirror/",
            "eyJ2ZXIiOjEsImlzdSI6MTcwMDAwMDAwMH0.abc-_x",
        )
        .expect("url");
        assert_eq!(
            u.expose(),
            "https://aws:eyJ2ZXIiOjEsImlzdSI6MTcwMDAwMDAwMH0.abc-_x@corp-111122223333.d.codeartifact.us-east-1.amazonaws.com/pypi/mirror/simple/"
        );
        assert!(!u.to_string().contains("eyJ2"), "{u}");
        let no_slash = index_url("http://127.0.0.1:9/pypi/r", "tok12345678").expect("url");
        assert_eq!(
            no_slash.expose(),
            "http://aws:tok12345678@127.0.0.1:9/pypi/r/simple/"
        );
    }

    #[test]
    fn judge_fails_expired_and_soon_after_a_failed_refresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::new(dir.path()).expect("root");
        let now = 1_800_000_000_000;
        assert!(!judge(&root, None, now).0);
        assert!(!judge(&root, Some(now - 1), now).0);
        let (ok, ev) = judge(&root, Some(now + 600_000), now);
        assert!(ok, "{ev}");
        assert!(ev.contains("in 10m00s"), "{ev}");
        record_outcome(
            &root,
            RefreshOutcome {
                at_ms: now,
                ok: false,
                error: Some("unreachable".into()),
            },
        );
        let (ok, ev) = judge(&root, Some(now + 600_000), now);
        assert!(
            !ok && ev.contains("last refresh failed: unreachable"),
            "{ev}"
        );
        assert!(judge(&root, Some(now + 3_600_000), now).0);
    }

    #[test]
    fn refresh_is_at_half_life() {
        let t = Token {
            index_url: SecretUrl::new("https://aws:x@h/simple/"),
            obtained_ms: 1000,
            expires_ms: 121_000,
        };
        assert_eq!(t.refresh_at_ms(), 61_000);
    }
}
