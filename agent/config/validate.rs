//! Validation of a parsed [`Config`]: every problem is collected with its JSON path before
//! anything is touched. Shapes follow the AWS documentation for each identifier.

use std::fmt;
use std::path::{Path, PathBuf};

use super::secret::looks_like_credential_url;
use super::{Config, SecretUrl, RESERVED_NAMES};

/// One thing wrong with the config, e.g. `proxy.https: not a URL: relative URL without a base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// JSON path of the offending value (`environment.subnets[1]`).
    pub path: String,
    pub message: String,
}

impl Problem {
    /// The problem with every quoted value that looks like a URL with credentials replaced, and
    /// the whole message replaced if one is left unquoted: a value pasted into the wrong field
    /// (`proxy.no_proxy[0]: "http://u:pw@p:3128"`) is never echoed, and on-start's output is
    /// shipped to CloudWatch.
    pub fn hidden(self) -> Problem {
        if !looks_like_credential_url(&self.message) && !looks_like_credential_url(&self.path) {
            return self;
        }
        let hide = |text: &str| -> String {
            let mut out = String::with_capacity(text.len());
            let mut rest = text;
            while let Some(start) = rest.find('"') {
                out.push_str(&rest[..start]);
                let body = &rest[start + 1..];
                // The end of a Debug-quoted string: the first '"' not escaped by a backslash.
                let mut end = None;
                let mut escaped = false;
                for (i, c) in body.char_indices() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => {
                            end = Some(i);
                            break;
                        }
                        _ => escaped = false,
                    }
                }
                let Some(end) = end else {
                    out.push_str(&rest[start..]);
                    rest = "";
                    break;
                };
                let quoted = &body[..end];
                if looks_like_credential_url(quoted) {
                    out.push_str("<a URL with credentials, not shown>");
                } else {
                    out.push('"');
                    out.push_str(quoted);
                    out.push('"');
                }
                rest = &body[end + 1..];
            }
            out.push_str(rest);
            out
        };
        let mut path = hide(&self.path);
        let mut message = hide(&self.message);
        if looks_like_credential_url(&path) {
            path = "(a key shaped like a URL with credentials, not shown)".to_string();
        }
        if looks_like_credential_url(&message) {
            message = "holds a value shaped like a URL with credentials (not shown)".to_string();
        }
        Problem { path, message }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// CloudWatch Logs' allowed `retentionInDays` values (PutRetentionPolicy).
pub const RETENTION_DAYS: &[u32] = &[
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
    fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(m) = result {
            self.push(path, m);
        }
    }
}

/// Every problem in `c`, in document order. Empty means valid.
pub fn validate(c: &Config) -> Vec<Problem> {
    let mut p = Problems::default();

    p.check("user.name", user_or_group_name(&c.user.name));
    if c.user.name == "root" {
        p.push("user.name", "\"root\" (uid 0) is not a notebook user; name the user whose root rights are removed (e.g. ec2-user)");
    }
    if let Some(home) = &c.user.home {
        p.check(
            "user.home",
            absolute_path(home).and_then(|()| not_system_dir(home)),
        );
    }

    for (i, g) in c.root_access.groups.iter().enumerate() {
        p.check(format!("root_access.groups[{i}]"), user_or_group_name(g));
    }

    if let Some(pip) = &c.pip {
        if let Some(u) = &pip.index_url {
            p.check("pip.index_url", web_url(u));
        }
        p.0.extend(super::codeartifact::problems(pip));
        for (i, u) in pip.extra_index_urls.iter().enumerate() {
            p.check(format!("pip.extra_index_urls[{i}]"), web_url(u));
        }
        for (i, h) in pip.trusted_hosts.iter().enumerate() {
            p.check(format!("pip.trusted_hosts[{i}]"), host_and_port(h));
        }
        if let Some(cert) = &pip.cert {
            p.check("pip.cert", absolute_path(cert));
        }
        if let Some(t) = pip.timeout_secs {
            if !(1..=600).contains(&t) {
                p.push("pip.timeout_secs", format!("{t} is not between 1 and 600"));
            }
        }
        for (i, ch) in pip.conda_channels.iter().enumerate() {
            p.check(format!("pip.conda_channels[{i}]"), conda_channel(ch));
        }
    }

    if let Some(proxy) = &c.proxy {
        if proxy.http.is_none() && proxy.https.is_none() {
            p.push("proxy", "set at least one of http, https");
        }
        if let Some(u) = &proxy.http {
            p.check("proxy.http", proxy_url(u));
        }
        if let Some(u) = &proxy.https {
            p.check("proxy.https", proxy_url(u));
        }
        for (i, h) in proxy.no_proxy.iter().enumerate() {
            p.check(format!("proxy.no_proxy[{i}]"), no_proxy_entry(h));
        }
        for (name, u) in [("proxy.http", &proxy.http), ("proxy.https", &proxy.https)] {
            if let Some(u) = u {
                if u.expose().len() > MAX_PROXY_URL_BYTES {
                    p.push(
                        name,
                        format!(
                            "is {} bytes long; at most {MAX_PROXY_URL_BYTES} (each systemd Environment= line stays under 2048 bytes)",
                            u.expose().len()
                        ),
                    );
                }
            }
        }
        let joined = no_proxy_len(&proxy.no_proxy);
        if joined > MAX_NO_PROXY_BYTES {
            p.push(
                "proxy.no_proxy",
                format!(
                    "exports a {joined}-byte no_proxy; at most {MAX_NO_PROXY_BYTES} (it is exported to every login shell and written on one systemd line); use domain suffixes (.example.com) or CIDRs"
                ),
            );
        }
    }

    if let Some(env) = &c.environment {
        if let Some(v) = &env.vpc {
            p.check("environment.vpc", aws_id(v, "vpc"));
        }
        for (i, s) in env.subnets.iter().enumerate() {
            p.check(format!("environment.subnets[{i}]"), aws_id(s, "subnet"));
        }
        for (i, s) in env.security_groups.iter().enumerate() {
            p.check(format!("environment.security_groups[{i}]"), aws_id(s, "sg"));
        }
        if let Some(k) = &env.kms_key_id {
            p.check("environment.kms_key_id", kms_key(k));
        }
        if let Some(b) = &env.data_bucket {
            p.check("environment.data_bucket", bucket_name(b));
        }
        if let Some(b) = &env.model_bucket {
            p.check("environment.model_bucket", bucket_name(b));
        }
        for (k, v) in &env.extra {
            p.check(format!("environment.extra.{k}"), python_identifier(k));
            if RESERVED_NAMES.contains(&k.as_str()) {
                p.push(
                    format!("environment.extra.{k}"),
                    "is a name the module defines itself; choose another",
                );
            }
            if v.contains('\0') {
                p.push(format!("environment.extra.{k}"), "contains a NUL character");
            }
        }
        if let Some(u) = &env.imds_endpoint {
            p.check("environment.imds_endpoint", web_url(u));
        }
    }

    let a = &c.audit;
    if let Some(paths) = &a.paths {
        if paths.is_empty() && a.enabled {
            p.push(
                "audit.paths",
                "is empty; set audit.enabled to false to turn the audit off",
            );
        }
        for (i, path) in paths.iter().enumerate() {
            p.check(format!("audit.paths[{i}]"), absolute_path(path));
        }
    }
    for (i, g) in a.excludes.iter().enumerate() {
        if g.is_empty() || g.contains('/') {
            p.push(
                format!("audit.excludes[{i}]"),
                "must be a non-empty glob for one path component (no '/')",
            );
        }
    }
    if let Some(r) = &a.reads {
        p.0.extend(super::reads::problems(r));
    }
    p.check("audit.log_group", log_group_template(&a.log_group));
    p.check("audit.log_stream", log_stream_template(&a.log_stream));
    if let Some(r) = &a.region {
        p.check("audit.region", region(r));
    }
    if let Some(u) = &a.endpoint_url {
        p.check("audit.endpoint_url", web_url(u));
    }
    if let Some(d) = a.retention_days {
        if !RETENTION_DAYS.contains(&d) {
            p.push(
                "audit.retention_days",
                format!("{d} is not a CloudWatch Logs retention; use one of {RETENTION_DAYS:?}"),
            );
        }
    }
    if let Some(k) = &a.kms_key_id {
        // CreateLogGroup takes a key ARN only.
        if !k.starts_with("arn:") {
            p.push(
                "audit.kms_key_id",
                "must be a KMS key ARN (CreateLogGroup takes no alias or bare id)",
            );
        } else {
            p.check("audit.kms_key_id", kms_key(k));
        }
    }
    if let Some(dir) = &a.spool_dir {
        p.check("audit.spool_dir", absolute_path(dir));
    }
    if a.drain_secs > 25 {
        p.push(
            "audit.drain_secs",
            "must be at most 25 (the unit's TimeoutStopSec is 30)",
        );
    }
    if a.spool_max_bytes < 1024 * 1024 {
        p.push("audit.spool_max_bytes", "must be at least 1048576 (1 MiB)");
    }
    if a.heartbeat_secs < 10 {
        p.push("audit.heartbeat_secs", "must be at least 10");
    }
    if !(10..=60_000).contains(&a.flush_ms) {
        p.push("audit.flush_ms", "must be between 10 and 60000");
    }
    p.0
}

/// Longest proxy URL, in bytes: its systemd `Environment="HTTPS_PROXY=…"` line, where escaping can
/// double it, stays under systemd 219's 2048-byte line limit (AL2).
pub const MAX_PROXY_URL_BYTES: usize = 1000;
/// Longest `no_proxy` value, in bytes, the always-added entries and commas included: one systemd
/// line (as above), and with the proxy URLs about 8 KiB of environment in every login shell —
/// well under the kernel's 128 KiB per string and the ~2 MiB for all of a command's arguments
/// and environment, which a 1.9 MB `no_proxy` exhausted (every command failed with E2BIG).
pub const MAX_NO_PROXY_BYTES: usize = 2000;

/// The length of the `no_proxy` value the proxy control exports for these entries.
pub fn no_proxy_len(entries: &[String]) -> usize {
    const ALWAYS: &[&str] = &["127.0.0.1", "localhost", "169.254.169.254"];
    let mut seen: Vec<&str> = ALWAYS.to_vec();
    for e in entries {
        if !seen.contains(&e.as_str()) {
            seen.push(e);
        }
    }
    seen.iter().map(|s| s.len()).sum::<usize>() + seen.len().saturating_sub(1)
}

/// Directories that belong to the system: a notebook user's home is never one of them or inside
/// one (the agent creates directories owned by the user there).
pub const SYSTEM_DIRS: &[&str] = &[
    "/root", "/etc", "/usr", "/var", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/boot", "/dev", "/proc", "/sys", "/run", "/tmp", "/opt", "/srv", "/mnt", "/media", "/snap",
];

fn not_system_dir(home: &Path) -> Result<(), String> {
    if home == Path::new("/") {
        return Err("\"/\" is not a home directory".to_string());
    }
    if let Some(d) = SYSTEM_DIRS.iter().find(|d| home.starts_with(d)) {
        return Err(format!(
            "{:?} lies in the system directory {d}; a notebook user's home is their own directory (e.g. /home/ec2-user)",
            home.display().to_string()
        ));
    }
    Ok(())
}

/// What the host says about the configured user, for [`user_problems`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    /// The user's uid and home in `/etc/passwd`; `None` when there is no entry.
    pub entry: Option<(u32, PathBuf)>,
    /// The login UID range of `/etc/login.defs` (`UID_MIN`, `UID_MAX`; default 1000, 60000).
    pub uid_min: u32,
    pub uid_max: u32,
}

/// The checks that need the host's user database: the notebook user is a login user (not root,
/// not a system account such as `nobody` or `daemon`, whose "root rights removal" would leave the
/// real notebook user's untouched), and `user.home` is that user's own home.
pub fn user_problems(c: &Config, facts: &UserFacts) -> Vec<Problem> {
    let mut p = Problems::default();
    if let Some((uid, home)) = &facts.entry {
        if *uid == 0 {
            p.push(
                "user.name",
                format!(
                    "{:?} has uid 0 (root); name the notebook user (e.g. ec2-user)",
                    c.user.name
                ),
            );
        } else if *uid < facts.uid_min || *uid > facts.uid_max {
            p.push(
                "user.name",
                format!(
                    "{:?} has uid {uid}, a system account (login users have {}-{} in /etc/login.defs); name the notebook user (e.g. ec2-user)",
                    c.user.name, facts.uid_min, facts.uid_max
                ),
            );
        }
        if let Some(configured) = &c.user.home {
            if configured != home {
                p.push(
                    "user.home",
                    format!(
                        "{:?} is not {:?}'s home ({:?} in /etc/passwd)",
                        configured.display().to_string(),
                        c.user.name,
                        home.display().to_string()
                    ),
                );
            }
        } else if let Err(e) = not_system_dir(home) {
            p.push("user.name", format!("the home in /etc/passwd: {e}"));
        }
    }
    p.0
}

fn absolute_path(path: &Path) -> Result<(), String> {
    let s = path.to_string_lossy();
    if !path.is_absolute() {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if s.contains('\n') || s.contains('\0') {
        return Err("contains a newline or NUL".to_string());
    }
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!("{s:?} contains '..'"));
    }
    Ok(())
}

fn user_or_group_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid user or group name ([a-z_][a-z0-9_-]*, at most 32)"
        ))
    }
}

/// An http(s) URL with a host. The message never contains the URL (it may hold credentials).
fn web_url(u: &SecretUrl) -> Result<(), String> {
    let url = u.parse().map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_string());
    }
    if u.expose().chars().any(char::is_whitespace) {
        return Err("contains white space".to_string());
    }
    Ok(())
}

fn proxy_url(u: &SecretUrl) -> Result<(), String> {
    web_url(u)?;
    let url = u.parse().map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.path(), "" | "/") || url.query().is_some() {
        return Err(
            "a proxy URL has no path or query (scheme://[user:pass@]host:port)".to_string(),
        );
    }
    Ok(())
}

fn is_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn host_and_port(h: &str) -> Result<(), String> {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (h, None),
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{h:?}: port is not 1-65535"));
        }
    }
    if is_hostname(host) || host.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(format!("{h:?} is not a host or host:port"))
    }
}

fn no_proxy_entry(h: &str) -> Result<(), String> {
    let bare = h
        .strip_prefix('.')
        .or_else(|| h.strip_prefix("*."))
        .unwrap_or(h);
    if let Some((ip, bits)) = bare.split_once('/') {
        let max = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(_)) => 32,
            Ok(std::net::IpAddr::V6(_)) => 128,
            Err(_) => return Err(format!("{h:?} is not a CIDR")),
        };
        return match bits.parse::<u8>() {
            Ok(b) if b <= max => Ok(()),
            _ => Err(format!("{h:?}: prefix length is not 0-{max}")),
        };
    }
    host_and_port(bare)
        .map_err(|_| format!("{h:?} is not a host, domain suffix (.example.com), IP or CIDR"))
}

fn conda_channel(ch: &str) -> Result<(), String> {
    if ch.contains("://") {
        return web_url(&SecretUrl::new(ch));
    }
    let ok = !ch.is_empty()
        && ch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!("{ch:?} is not a conda channel name or URL"))
    }
}

fn is_hex(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// `prefix-` followed by 8 or 17 lower-case hex digits (vpc, subnet, sg).
pub(crate) fn aws_id(v: &str, prefix: &str) -> Result<(), String> {
    let ok = v
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|hex| (hex.len() == 8 || hex.len() == 17) && is_hex(hex));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a {prefix} id ({prefix}- and 8 or 17 hex digits)"
        ))
    }
}

fn is_key_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    (parts.len() == 5
        && parts
            .iter()
            .zip(lens)
            .all(|(p, n)| p.len() == n && is_hex(p)))
        || s.strip_prefix("mrk-")
            .is_some_and(|h| h.len() == 32 && is_hex(h))
}

fn is_alias_name(s: &str) -> bool {
    s.strip_prefix("alias/").is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 250
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-'))
    })
}

pub(crate) fn region(r: &str) -> Result<(), String> {
    // e.g. us-east-1, eu-central-2, us-gov-west-1, cn-north-1, ap-southeast-5.
    let parts: Vec<&str> = r.split('-').collect();
    let ok = parts.len() >= 3
        && parts
            .first()
            .is_some_and(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()));
    if ok {
        Ok(())
    } else {
        Err(format!("{r:?} is not an AWS region (e.g. us-east-1)"))
    }
}

pub(crate) fn kms_key(k: &str) -> Result<(), String> {
    if is_key_uuid(k) || is_alias_name(k) {
        return Ok(());
    }
    let err = || {
        Err(format!(
            "{k:?} is not a KMS key id, key ARN, alias/NAME or alias ARN"
        ))
    };
    // arn:PARTITION:kms:REGION:ACCOUNT:key/ID or :alias/NAME
    let parts: Vec<&str> = k.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !parts[1].starts_with("aws") || parts[2] != "kms" {
        return err();
    }
    if region(parts[3]).is_err()
        || parts[4].len() != 12
        || !parts[4].chars().all(|c| c.is_ascii_digit())
    {
        return err();
    }
    let resource = parts[5];
    let ok = resource.strip_prefix("key/").is_some_and(is_key_uuid) || is_alias_name(resource);
    if ok {
        Ok(())
    } else {
        err()
    }
}

/// S3 general purpose bucket naming rules.
pub(crate) fn bucket_name(b: &str) -> Result<(), String> {
    let err = |why: &str| Err(format!("{b:?} is not an S3 bucket name: {why}"));
    if !(3..=63).contains(&b.len()) {
        return err("length must be 3-63");
    }
    if !b
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
    {
        return err("only lower-case letters, digits, '.' and '-'");
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(b.chars().next()) || !edge_ok(b.chars().last()) {
        return err("must begin and end with a letter or digit");
    }
    if b.contains("..") {
        return err("no two adjacent periods");
    }
    if b.parse::<std::net::Ipv4Addr>().is_ok() {
        return err("must not be formatted as an IP address");
    }
    if b.starts_with("xn--")
        || b.starts_with("sthree-")
        || b.ends_with("-s3alias")
        || b.ends_with("--ol-s3")
    {
        return err("reserved prefix or suffix");
    }
    Ok(())
}

const PYTHON_KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

fn python_identifier(k: &str) -> Result<(), String> {
    let ok = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !PYTHON_KEYWORDS.contains(&k)
        && !k.starts_with("__");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key {k:?} is not a Python identifier (ASCII letters, digits, _; not a keyword or dunder)"
        ))
    }
}

const PLACEHOLDERS: &[&str] = &["{notebook}", "{region}", "{account}"];

/// Checks placeholders, and the name with each placeholder replaced by a valid sample.
fn template(t: &str, allowed: impl Fn(char) -> bool, what: &str) -> Result<(), String> {
    let mut sample = t.to_string();
    for ph in PLACEHOLDERS {
        sample = sample.replace(ph, "x");
    }
    if sample.contains('{') || sample.contains('}') {
        return Err(format!(
            "{t:?}: unknown placeholder; use {}",
            PLACEHOLDERS.join(", ")
        ));
    }
    if sample.is_empty() || t.len() > 512 {
        return Err(format!("{what} must be 1-512 characters"));
    }
    if let Some(c) = sample.chars().find(|c| !allowed(*c)) {
        return Err(format!("{t:?}: {c:?} is not allowed in a {what}"));
    }
    Ok(())
}

fn log_group_template(t: &str) -> Result<(), String> {
    template(
        t,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#'),
        "log group name",
    )
}

fn log_stream_template(t: &str) -> Result<(), String> {
    template(
        t,
        |c| !matches!(c, ':' | '*') && !c.is_control(),
        "log stream name",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_ids() {
        assert!(aws_id("vpc-0123abcd", "vpc").is_ok());
        assert!(aws_id("subnet-0123456789abcdef0", "subnet").is_ok());
        assert!(aws_id("sg-0123abc", "sg").is_err());
        assert!(aws_id("sg-0123ABCD", "sg").is_err());
        assert!(aws_id("subnet-1'; import os #", "subnet").is_err());
    }

    #[test]
    fn kms_keys() {
        for ok in [
            "1234abcd-12ab-34cd-56ef-1234567890ab",
            "mrk-1234abcd12ab34cd56ef1234567890ab",
            "alias/notebooks",
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:alias/notebooks",
        ] {
            assert!(kms_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "alias/", "1234", "arn:aws:s3:::bucket", "alias/a b"] {
            assert!(kms_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets() {
        assert!(bucket_name("my-data.bucket-01").is_ok());
        for bad in [
            "ab",
            "My-Bucket",
            "-abc",
            "a..b",
            "192.168.5.4",
            "xn--abc",
            "a_b",
        ] {
            assert!(bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn regions() {
        for ok in [
            "us-east-1",
            "us-gov-west-1",
            "ap-southeast-5",
            "eu-central-2",
        ] {
            assert!(region(ok).is_ok(), "{ok}");
        }
        for bad in ["useast1", "US-EAST-1", "us-east", "us-east-1a"] {
            assert!(region(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_proxy_entries() {
        for ok in [
            ".amazonaws.com",
            "10.0.0.0/8",
            "localhost",
            "s3.us-east-1.amazonaws.com",
            "127.0.0.1",
            "*.corp",
        ] {
            assert!(no_proxy_entry(ok).is_ok(), "{ok}");
        }
        for bad in ["a b", "10.0.0.0/33", "", "x,y"] {
            assert!(no_proxy_entry(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates() {
        assert!(log_group_template("/aws/sagemaker/NotebookInstances").is_ok());
        assert!(log_stream_template("{notebook}/audit").is_ok());
        assert!(log_stream_template("{nb}/audit").is_err());
        assert!(log_stream_template("a:b").is_err());
        assert!(log_group_template("bad group").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(python_identifier("COST_CENTER").is_ok());
        for bad in ["1x", "import", "__class__", "a-b", "é"] {
            assert!(python_identifier(bad).is_err(), "{bad}");
        }
    }
}
