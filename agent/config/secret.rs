//! Secrets: URLs that may carry credentials (proxy passwords, index tokens, conda channel tokens)
//! and any other value registered as a secret (e.g. a CodeArtifact token), and the one place
//! that hides them: [`Redactor::scrub`].
//!
//! Redaction is by value. A secret is found in the raw config text (the user-info of a URL, a
//! `/t/<token>/` path segment, a secret-looking query value) and then hidden in every form the
//! agent ever writes or prints it: as written, percent-decoded and percent-encoded, and each of
//! those as the generated files escape it — shell single quotes (`'\''`), systemd `Environment=`
//! (`\\`, `\"`, `%%`), JSON / Python / YAML double-quoted strings and git (`\\`, `\"`), YAML single
//! quotes (`''`), Python `repr` (`\'`), JSON inside JSON, INI (as is). A dry-run diff, a status
//! evidence, an error or a log line shows the file's text, so it shows the escaped form: matching
//! only the form the admin wrote is not enough.
//!
//! Values registered with [`register`] (process-wide) join every [`Redactor`] built afterwards,
//! and [`scrub`] applies them to text that has no config at hand (errors printed by `main`, the
//! stderr log).

use std::fmt;
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use url::Url;

/// What replaces credentials wherever a URL is printed, logged or shipped.
pub const REDACTED: &str = "REDACTED";

/// Shorter values are hidden only as part of a URL's whole user-info segment (`//u:pw@`), so that
/// e.g. a password "ec2" does not mangle unrelated text.
pub const MIN_STANDALONE: usize = 4;

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

    /// The substrings of the raw URL that must never be printed: the user-info segment
    /// (`//user:password@`), the password and tokens on their own, secret query values, a
    /// `/t/<token>/` path segment. An unparsable URL is a secret as a whole.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = url_secrets(&self.0);
        if self.parse().is_err() && !self.0.is_empty() && !out.contains(&self.0) {
            // Rejected by validation; until then print nothing of it.
            out.push(self.0.clone());
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
                if let Some(segments) = url.path_segments() {
                    let segs: Vec<String> = segments.map(str::to_string).collect();
                    if let Some(i) = token_segment(&segs) {
                        let mut segs = segs;
                        segs[i] = REDACTED.to_string();
                        url.set_path(&segs.join("/"));
                    }
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

/// The index of a conda token segment: `…/t/<token>/…` (anaconda.org and mirrors of it).
fn token_segment(segments: &[String]) -> Option<usize> {
    segments
        .windows(2)
        .position(|w| w[0] == "t" && !w[1].is_empty())
        .map(|i| i + 1)
}

/// Whether `text` holds something shaped like a URL with credentials: `scheme://…@…` or a
/// `/t/<token>/` path. Validation messages never echo such a value, whatever the field.
pub fn looks_like_credential_url(text: &str) -> bool {
    text.match_indices("://").any(|(i, _)| {
        let rest = &text[i + 3..];
        rest.contains('@') || rest.contains("/t/")
    })
}

/// The secrets of one URL as written (not as the `url` crate normalises it: the files get the raw
/// text). The user-info is read the way WHATWG parsers do — the authority ends at the first `/`,
/// `?`, `#` or `\`, and its last `@` ends the user-info — and, when it parses, also the way `url`
/// hands it back (percent-encoded).
pub fn url_secrets(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let push = |s: String, out: &mut Vec<String>| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    let mut userinfo_pairs: Vec<(String, Option<String>)> = Vec::new();
    if let Some(i) = raw.find("://") {
        let after = &raw[i + 3..];
        let end = after.find(['/', '?', '#', '\\']).unwrap_or(after.len());
        let authority = &after[..end];
        if let Some(at) = authority.rfind('@') {
            let info = &authority[..at];
            match info.split_once(':') {
                Some((u, p)) => userinfo_pairs.push((u.to_string(), Some(p.to_string()))),
                None => userinfo_pairs.push((info.to_string(), None)),
            }
        }
        // Query values and token path segments, raw.
        let tail = &after[end..];
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let segs: Vec<String> = path.split('/').map(str::to_string).collect();
        if let Some(t) = token_segment(&segs) {
            if segs[t].len() >= MIN_STANDALONE {
                push(segs[t].clone(), &mut out);
            }
        }
        if let Some(q) = query {
            let q = q.split('#').next().unwrap_or("");
            for pair in q.split('&') {
                if let Some((k, v)) = pair.split_once('=') {
                    let k = k.to_ascii_lowercase();
                    if v.len() >= MIN_STANDALONE && SECRET_QUERY_KEYS.iter().any(|s| k.contains(s))
                    {
                        push(v.to_string(), &mut out);
                    }
                }
            }
        }
    }
    if let Ok(url) = Url::parse(raw) {
        if !url.username().is_empty() || url.password().is_some() {
            userinfo_pairs.push((
                url.username().to_string(),
                url.password().map(str::to_string),
            ));
        }
        for (k, v) in url.query_pairs() {
            let k = k.to_ascii_lowercase();
            if v.len() >= MIN_STANDALONE && SECRET_QUERY_KEYS.iter().any(|s| k.contains(s)) {
                push(v.into_owned(), &mut out);
            }
        }
    }
    for (user, password) in userinfo_pairs {
        // With the scheme's "//" and the "@" so that the replacement keeps the URL's shape.
        match &password {
            Some(p) => push(format!("//{user}:{p}@"), &mut out),
            None => push(format!("//{user}@"), &mut out),
        }
        match password {
            Some(p) if p.len() >= MIN_STANDALONE => push(p, &mut out),
            // A user name with no password is usually a token (https://TOKEN@host/).
            Some(p) if p.is_empty() && user.len() >= 2 * MIN_STANDALONE => push(user, &mut out),
            None if user.len() >= 2 * MIN_STANDALONE => push(user, &mut out),
            _ => {}
        }
    }
    out
}

/// Every form in which the agent may write or print `s`: the bases (as written, percent-decoded,
/// percent-encoded) each through every escaping a generated file or an output channel applies.
pub fn encodings(s: &str) -> Vec<String> {
    let mut bases = vec![s.to_string()];
    if let Ok(d) = percent_decode(s) {
        bases.push(d);
    }
    let decoded = bases.last().cloned().unwrap_or_default();
    bases.push(percent_encode(&decoded));
    let mut out: Vec<String> = Vec::new();
    for b in &bases {
        let json = json_inner(b);
        for v in [
            b.clone(),
            // POSIX shell single quotes (profile.d).
            b.replace('\'', r"'\''"),
            // systemd Environment="…" (drop-ins): \ and " escaped, % doubled.
            b.replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('%', "%%"),
            // % doubled alone (systemd unquoted, configparser interpolation).
            b.replace('%', "%%"),
            // JSON, Python and YAML double-quoted strings, git config values.
            json.clone(),
            b.replace('\\', r"\\").replace('"', "\\\""),
            // YAML single-quoted.
            b.replace('\'', "''"),
            // Python repr (single quotes).
            b.replace('\\', r"\\").replace('\'', r"\'"),
            // JSON text inside JSON (status --json evidence that quotes a file).
            json_inner(&json),
        ] {
            if !v.is_empty() && !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

fn json_inner(s: &str) -> String {
    let q = serde_json::to_string(s).unwrap_or_default();
    q.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(&q)
        .to_string()
}

/// Every byte outside RFC 3986's unreserved set as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Scrubs known secret values, in every encoding, from text that may echo them.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// (what to find, what to put instead), longest first so that a secret containing another,
    /// or an escaped form containing the plain one, is replaced whole.
    pairs: Vec<(String, String)>,
}

impl Redactor {
    /// A redactor for these URLs' secrets and every value registered with [`register`].
    pub fn new<'a>(urls: impl IntoIterator<Item = &'a SecretUrl>) -> Self {
        let mut r = Self::default();
        for u in urls {
            for s in u.secrets() {
                r.add_value(&s);
            }
        }
        if let Ok(g) = GLOBAL.read() {
            r.merge(&g);
        }
        r
    }

    /// Registers one secret by value (a URL's user-info segment `//u:p@` keeps its shape when
    /// replaced). Values shorter than [`MIN_STANDALONE`] are ignored unless user-info.
    pub fn add_value(&mut self, secret: &str) {
        let userinfo = secret
            .strip_prefix("//")
            .and_then(|x| x.strip_suffix('@'))
            .filter(|x| !x.is_empty());
        let found = match userinfo {
            Some(info) => encodings(info)
                .into_iter()
                .map(|e| (format!("//{e}@"), format!("//{REDACTED}@")))
                .collect::<Vec<_>>(),
            None if secret.chars().count() >= MIN_STANDALONE => encodings(secret)
                .into_iter()
                .filter(|e| e.chars().count() >= MIN_STANDALONE)
                .map(|e| (e, REDACTED.to_string()))
                .collect(),
            None => Vec::new(),
        };
        for pair in found {
            if !self.pairs.iter().any(|(f, _)| *f == pair.0) {
                self.pairs.push(pair);
            }
        }
        self.pairs
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    }

    /// Adds every secret of `other`.
    pub fn merge(&mut self, other: &Redactor) {
        for pair in &other.pairs {
            if !self.pairs.iter().any(|(f, _)| *f == pair.0) {
                self.pairs.push(pair.clone());
            }
        }
        self.pairs
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// `text` with every encoding of every secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (find, put) in &self.pairs {
            if out.contains(find.as_str()) {
                out = out.replace(find.as_str(), put);
            }
        }
        out
    }
}

/// Secrets known to the whole process (the loaded config's, and any a later step registers by
/// value, e.g. a CodeArtifact token fetched at apply time).
static GLOBAL: RwLock<Redactor> = RwLock::new(Redactor { pairs: Vec::new() });

/// Makes `secret` (a value, or a `//user:pw@` user-info segment) unprintable everywhere in this
/// process: every [`Redactor`] built afterwards and [`scrub`] hide it.
pub fn register(secret: &str) {
    if let Ok(mut g) = GLOBAL.write() {
        g.add_value(secret);
    }
}

/// Registers every secret of `r` process-wide.
pub fn register_all(r: &Redactor) {
    if let Ok(mut g) = GLOBAL.write() {
        g.merge(r);
    }
}

/// `text` scrubbed of every secret registered in this process (errors printed by `main`, logs).
pub fn scrub(text: &str) -> String {
    match GLOBAL.read() {
        Ok(g) if !g.is_empty() => g.scrub(text),
        _ => text.to_string(),
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
        register("eyJ2ZXIiOjEsInRlc3QiOiJydW50aW1lIn0");
        register("abc");
        let out = Redactor::new([]).scrub("pw eyJ2ZXIiOjEsInRlc3QiOiJydW50aW1lIn0 abc");
        assert_eq!(out, "pw REDACTED abc");
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

    #[test]
    fn conda_channel_credentials_and_token_paths_are_secrets() {
        let tok = "ab-1234567-cdef";
        let u = SecretUrl::new(format!("https://conda.corp/t/{tok}/main"));
        assert!(u.secrets().contains(&tok.to_string()));
        assert!(!u.to_string().contains(tok), "{u}");
        let r = Redactor::new([&u]);
        assert_eq!(
            r.scrub(&format!("- \"x/t/{tok}/y\"")),
            "- \"x/t/REDACTED/y\""
        );
        let u = SecretUrl::new("https://u:pw@conda.corp/main");
        assert!(!Redactor::new([&u])
            .scrub("https://u:pw@conda.corp")
            .contains("pw@"));
    }

    #[test]
    fn a_value_registered_by_value_is_scrubbed_in_its_encodings() {
        let mut r = Redactor::default();
        r.add_value("tok'en\"value");
        let out = r.scrub("a 'tok'\\''en\"value' b \"tok'en\\\"value\"");
        assert!(!out.contains("value"), "{out}");
    }

    #[test]
    fn credential_url_shape() {
        assert!(looks_like_credential_url("x http://u:p@h:1 y"));
        assert!(looks_like_credential_url("https://c.corp/t/abcd/main"));
        assert!(!looks_like_credential_url("https://c.corp/main"));
        assert!(!looks_like_credential_url("10.0.0.0/8"));
    }
}
