//! URLs that may carry secrets (proxy passwords, index tokens). The raw text is kept for the files
//! the controls write; every way of *printing* one goes through redaction.

use std::fmt;

use serde::{Deserialize, Serialize};
use url::Url;

/// What replaces credentials wherever a URL is printed, logged or shipped.
pub const REDACTED: &str = "REDACTED";

/// A URL as written in the config. `Display` and `Debug` never show its user-info or
/// secret-looking query parameters; `expose()` is for the files that need the real value.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

/// Serialising (state files, `status --json`) writes the redacted form: nothing the agent
/// prints or records carries the credentials.
impl Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// Query parameters whose values are treated as secrets (case-insensitive substring match).
const SECRET_QUERY_KEYS: &[&str] = &["token", "password", "secret", "key", "sig", "auth"];

impl SecretUrl {
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The URL exactly as configured, credentials included. Only for file contents the
    /// notebook's tools read; never for output.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn parse(&self) -> Result<Url, url::ParseError> {
        Url::parse(&self.0)
    }

    /// The substrings of the raw URL that must never be printed: the user-info segment, the
    /// password and tokens on their own, secret query values. Used to scrub anything that may echo
    /// file contents (dry-run diffs). Very short fragments are only scrubbed as part of the
    /// user-info segment, so that e.g. a user name "ec2" does not mangle unrelated text.
    pub fn secrets(&self) -> Vec<String> {
        const MIN_STANDALONE: usize = 4;
        let mut out = Vec::new();
        let Ok(url) = self.parse() else {
            // An unparsable URL is rejected by validation; until then print nothing of it.
            if !self.0.is_empty() {
                out.push(self.0.clone());
            }
            return out;
        };
        let user = url.username();
        let password = url.password().unwrap_or("");
        if !user.is_empty() || !password.is_empty() {
            // With the scheme's "//" and the "@" so that the replacement keeps the URL's shape.
            let userinfo = if password.is_empty() {
                format!("//{user}@")
            } else {
                format!("//{user}:{password}@")
            };
            out.push(userinfo);
        }
        if password.len() >= MIN_STANDALONE {
            out.push(password.to_string());
        }
        if password.is_empty() && user.len() >= 2 * MIN_STANDALONE {
            // A user name with no password is usually a token (https://TOKEN@host/).
            out.push(user.to_string());
        }
        for (k, v) in url.query_pairs() {
            let k = k.to_ascii_lowercase();
            if v.len() >= MIN_STANDALONE && SECRET_QUERY_KEYS.iter().any(|s| k.contains(s)) {
                out.push(v.into_owned());
            }
        }
        out
    }

    /// The URL with credentials replaced by [`REDACTED`].
    pub fn redacted(&self) -> String {
        match self.parse() {
            Ok(mut url) => {
                if !url.username().is_empty() {
                    let _ = url.set_username(REDACTED);
                }
                if url.password().is_some() {
                    let _ = url.set_password(Some(REDACTED));
                }
                if url.query().is_some() {
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(k, v)| {
                            let lower = k.to_ascii_lowercase();
                            let v = if SECRET_QUERY_KEYS.iter().any(|s| lower.contains(s)) {
                                REDACTED.to_string()
                            } else {
                                v.into_owned()
                            };
                            (k.into_owned(), v)
                        })
                        .collect();
                    url.query_pairs_mut().clear().extend_pairs(pairs);
                }
                let mut shown = url.to_string();
                // `url` adds a "/" path to a bare origin; show it as the admin wrote it.
                if url.path() == "/"
                    && url.query().is_none()
                    && url.fragment().is_none()
                    && !self.0.ends_with('/')
                    && shown.ends_with('/')
                {
                    shown.pop();
                }
                shown
            }
            // Not a URL at all: it may still be a secret pasted in the wrong place.
            Err(_) => format!("<unparsable URL, {REDACTED}>"),
        }
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

/// Scrubs known secret substrings from text that may echo file contents.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    secrets: Vec<String>,
}

/// Secrets the agent learns at run time rather than from the config (a CodeArtifact token):
/// every [`Redactor`] made afterwards in this process scrubs them too.
static RUNTIME_SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Shortest runtime secret accepted: anything shorter would mangle unrelated text.
const MIN_RUNTIME_SECRET: usize = 8;

/// Registers a secret obtained at run time so that every redactor made from now on scrubs it
/// (raw and percent-encoded forms are both registered by the caller when they differ).
pub fn register_runtime_secret(secret: &str) {
    if secret.len() < MIN_RUNTIME_SECRET {
        return;
    }
    if let Ok(mut v) = RUNTIME_SECRETS.lock() {
        if !v.iter().any(|s| s == secret) {
            v.push(secret.to_string());
        }
    }
}

impl Redactor {
    pub fn new<'a>(urls: impl IntoIterator<Item = &'a SecretUrl>) -> Self {
        let mut secrets: Vec<String> = urls.into_iter().flat_map(SecretUrl::secrets).collect();
        if let Ok(v) = RUNTIME_SECRETS.lock() {
            secrets.extend(v.iter().cloned());
        }
        // Longest first so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if let Some(info) = s.strip_prefix("//").and_then(|x| x.strip_suffix('@')) {
                if !info.is_empty() {
                    out = out.replace(s.as_str(), &format!("//{REDACTED}@"));
                    continue;
                }
            }
            out = out.replace(s.as_str(), REDACTED);
            // Tools may write the percent-decoded form.
            if let Ok(decoded) = percent_decode(s) {
                if decoded != *s && !decoded.is_empty() {
                    out = out.replace(decoded.as_str(), REDACTED);
                }
            }
        }
        out
    }
}

/// `s` with its `%XX` escapes decoded; an error when the result is not UTF-8.
pub fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_debug_hide_userinfo_and_tokens() {
        let u = SecretUrl::new("http://alice:s3cr%40t@proxy.corp:3128/?token=abc&x=1");
        for shown in [format!("{u}"), format!("{u:?}")] {
            assert!(!shown.contains("alice"), "{shown}");
            assert!(!shown.contains("s3cr"), "{shown}");
            assert!(!shown.contains("abc"), "{shown}");
            assert!(shown.contains("proxy.corp:3128"), "{shown}");
            assert!(shown.contains("x=1"), "{shown}");
        }
        assert_eq!(
            u.expose(),
            "http://alice:s3cr%40t@proxy.corp:3128/?token=abc&x=1"
        );
    }

    #[test]
    fn runtime_secrets_are_scrubbed_by_later_redactors() {
        register_runtime_secret("eyJ2ZXIiOjEsInRlc3QiOiJydW50aW1lIn0");
        register_runtime_secret("short");
        let out = Redactor::new([]).scrub("pw eyJ2ZXIiOjEsInRlc3QiOiJydW50aW1lIn0 short");
        assert_eq!(out, "pw REDACTED short");
    }

    #[test]
    fn unparsable_url_is_not_echoed() {
        let u = SecretUrl::new("not a url with hunter2");
        assert!(!u.to_string().contains("hunter2"));
    }

    #[test]
    fn redactor_scrubs_raw_and_decoded_forms() {
        let u = SecretUrl::new("https://user:p%40ss@mirror.corp/simple");
        let r = Redactor::new([&u]);
        let text = "index-url = https://user:p%40ss@mirror.corp/simple\npassword p@ss";
        let out = r.scrub(text);
        assert!(!out.contains("p%40ss") && !out.contains("p@ss"), "{out}");
        assert!(!out.contains("user:"), "{out}");
    }
}
