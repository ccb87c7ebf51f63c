//! `pip.codeartifact`: AWS CodeArtifact as the package mirror. The agent obtains the repository's
//! authorization token with the notebook's role and keeps it fresh (`harden::codeartifact`); the
//! config only names the repository. Its validation lives here, self-contained: [`problems`]
//! returns every problem of the pip section that concerns the choice of index, with JSON paths.

use serde::{Deserialize, Serialize};

use super::validate::Problem;
use super::{PipConfig, SecretUrl};

/// Shortest token life CodeArtifact grants (`durationSeconds`), in seconds.
pub const MIN_DURATION_SECS: u64 = 900;
/// Longest token life CodeArtifact grants, and the default, in seconds (12 hours).
pub const MAX_DURATION_SECS: u64 = 43_200;

/// An AWS CodeArtifact repository used as pip's index instead of `pip.index_url`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CodeArtifactConfig {
    /// The CodeArtifact domain, e.g. `corp`.
    pub domain: String,
    /// The 12-digit AWS account that owns the domain.
    pub domain_owner: String,
    /// The repository in the domain pip reads from, e.g. `pypi-mirror`.
    pub repository: String,
    /// The repository's region. Default: the notebook's region (from its ARN).
    #[serde(default)]
    pub region: Option<String>,
    /// CodeArtifact API endpoint (an interface VPC endpoint's DNS name, tests). Default: the
    /// SDK's regional endpoint.
    #[serde(default)]
    pub endpoint_url: Option<SecretUrl>,
    /// Lifetime asked for each authorization token, in seconds (900–43200). Default 43200.
    /// The agent refreshes the token at half its life; CodeArtifact may grant less (never more
    /// than the role session's remaining life), and the refresh follows what was granted.
    #[serde(default = "default_duration_secs")]
    pub duration_secs: u64,
}

fn default_duration_secs() -> u64 {
    MAX_DURATION_SECS
}

/// Every problem with the index choice of `pip`: exactly one of `index_url` and `codeartifact`,
/// and the fields of `codeartifact`.
pub fn problems(pip: &PipConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |path: &str, message: String| {
        out.push(Problem {
            path: path.to_string(),
            message,
        })
    };
    match (&pip.index_url, &pip.codeartifact) {
        (None, None) => push(
            "pip",
            "set one of index_url and codeartifact (the mirror pip reads from)".to_string(),
        ),
        (Some(_), Some(_)) => push(
            "pip.codeartifact",
            "set only one of index_url and codeartifact: the CodeArtifact token is the index URL"
                .to_string(),
        ),
        _ => {}
    }
    let Some(ca) = &pip.codeartifact else {
        return out;
    };
    if !is_domain_name(&ca.domain) {
        push(
            "pip.codeartifact.domain",
            format!(
                "{:?} is not a CodeArtifact domain name (2-50 of a-z, 0-9, '-'; starts with a letter)",
                ca.domain
            ),
        );
    }
    if !(ca.domain_owner.len() == 12 && ca.domain_owner.chars().all(|c| c.is_ascii_digit())) {
        push(
            "pip.codeartifact.domain_owner",
            format!("{:?} is not a 12-digit AWS account id", ca.domain_owner),
        );
    }
    if !is_repository_name(&ca.repository) {
        push(
            "pip.codeartifact.repository",
            format!(
                "{:?} is not a CodeArtifact repository name (2-100 of A-Z, a-z, 0-9, '.', '_', '-'; starts with a letter or digit)",
                ca.repository
            ),
        );
    }
    if let Some(r) = &ca.region {
        if let Err(m) = super::validate::region(r) {
            push("pip.codeartifact.region", m);
        }
    }
    if let Some(u) = &ca.endpoint_url {
        if let Err(m) = endpoint(u) {
            push("pip.codeartifact.endpoint_url", m);
        }
    }
    if !(MIN_DURATION_SECS..=MAX_DURATION_SECS).contains(&ca.duration_secs) {
        push(
            "pip.codeartifact.duration_secs",
            format!(
                "{} is not between {MIN_DURATION_SECS} and {MAX_DURATION_SECS} (what CodeArtifact grants)",
                ca.duration_secs
            ),
        );
    }
    out
}

/// CodeArtifact's domain name rule: `[a-z][a-z0-9\-]{0,48}[a-z0-9]`.
fn is_domain_name(d: &str) -> bool {
    (2..=50).contains(&d.len())
        && d.starts_with(|c: char| c.is_ascii_lowercase())
        && d.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && d.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// CodeArtifact's repository name rule: `[A-Za-z0-9][A-Za-z0-9._\-]{1,99}`.
fn is_repository_name(r: &str) -> bool {
    (2..=100).contains(&r.len())
        && r.starts_with(|c: char| c.is_ascii_alphanumeric())
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// An http(s) URL with a host; the message never repeats the URL.
fn endpoint(u: &SecretUrl) -> Result<(), String> {
    let url = u.parse().map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pip(json: &str) -> PipConfig {
        serde_json::from_str(json).expect("pip section parses")
    }

    fn paths(p: &PipConfig) -> Vec<String> {
        problems(p).into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn a_complete_repository_is_valid_and_defaults_to_twelve_hours() {
        let p = pip(
            r#"{"codeartifact": {"domain": "corp", "domain_owner": "111122223333",
            "repository": "pypi-mirror"}}"#,
        );
        assert!(problems(&p).is_empty(), "{:?}", problems(&p));
        assert_eq!(p.codeartifact.map(|c| c.duration_secs), Some(43_200));
    }

    #[test]
    fn exactly_one_index() {
        assert_eq!(paths(&pip("{}")), ["pip"]);
        let both = pip(
            r#"{"index_url": "https://m.corp/simple", "codeartifact": {"domain": "corp",
            "domain_owner": "111122223333", "repository": "r1"}}"#,
        );
        assert_eq!(paths(&both), ["pip.codeartifact"]);
    }

    #[test]
    fn every_field_problem_is_listed() {
        let p = pip(
            r#"{"codeartifact": {"domain": "Corp_", "domain_owner": "1111",
            "repository": "-r", "region": "mars", "endpoint_url": "ftp://x",
            "duration_secs": 60}}"#,
        );
        assert_eq!(
            paths(&p),
            [
                "pip.codeartifact.domain",
                "pip.codeartifact.domain_owner",
                "pip.codeartifact.repository",
                "pip.codeartifact.region",
                "pip.codeartifact.endpoint_url",
                "pip.codeartifact.duration_secs",
            ]
        );
    }
}
