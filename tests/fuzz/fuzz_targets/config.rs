//! The config parser and validator (`config::parse`, what `load` runs on the file's text) on
//! arbitrary bytes.
//!
//! Invariants: never a panic; an error is the normal `ConfigError` (`Parse` or `Invalid` with at
//! least one problem, never `Read`) and renders; a valid config serialises (the form `status` and
//! the state files use), parses and validates again, and serialises to the same text; and no
//! credential of a URL in the input (proxy, pip index, IMDS endpoint, conda channels) appears in
//! an error message, the serialised config or its `Debug` form. Since issue 13 also: no credential
//! URL put in *any* field is echoed by an error; a valid config is exactly one JSON object (no
//! trailing data, every section an object) and none of its strings holds a control character;
//! and each URL secret, rendered with every escaping the generated files use (shell, systemd,
//! JSON/Python/YAML, git, JSON in JSON) and passed through the config's redaction, is gone.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use notebook_agent::config::schema::forbidden_char;
use notebook_agent::config::secret::percent_decode;
use notebook_agent::config::{self, ConfigError, SecretUrl};
use notebook_agent::harden::render::{git_value, py_str, systemd_env};
use serde_json::Value;

/// JSON pointers of the fields that hold a `SecretUrl` (arrays: every element).
const URL_FIELDS: &[&str] = &[
    "/pip/index_url",
    "/pip/extra_index_urls",
    "/proxy/http",
    "/proxy/https",
    "/environment/imds_endpoint",
    "/pip/conda_channels",
];

/// Every string value in `v` that holds "://": a credential URL pasted into any field must not be
/// echoed by an error.
fn any_urls(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m.values().for_each(|x| any_urls(x, out)),
        Value::Array(a) => a.iter().for_each(|x| any_urls(x, out)),
        Value::String(s) if s.contains("://") => out.push(s.clone()),
        _ => {}
    }
}

/// Every string and key in `v`.
fn all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                all_strings(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| all_strings(x, out)),
        Value::String(s) => out.push(s.clone()),
        _ => {}
    }
}

/// The URL strings of the input, read independently of the agent's parser.
fn input_urls(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for f in URL_FIELDS {
        match v.pointer(f) {
            Some(Value::String(s)) => out.push(s.clone()),
            Some(Value::Array(a)) => {
                out.extend(a.iter().filter_map(|x| x.as_str()).map(String::from))
            }
            _ => {}
        }
    }
    out
}

/// Whether `s` is in a key, or in a string that is not a URL field, anywhere in `v` (`at` is the
/// JSON pointer of `v`): there it is no secret and may rightly be shown.
fn elsewhere(v: &Value, s: &str, at: &str) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, x)| k.contains(s) || elsewhere(x, s, &format!("{at}/{k}"))),
        Value::Array(a) => a.iter().any(|x| elsewhere(x, s, at)),
        Value::String(x) => !URL_FIELDS.contains(&at) && x.contains(s),
        _ => false,
    }
}

/// The secrets that must never be printed, kept only where the check cannot be fooled: the
/// user-info segment (`//user:password@`), or a longer standalone secret, that occurs exactly once
/// in the URLs (not also in a path or host) and nowhere else in the document.
fn secrets(text: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let urls = input_urls(&doc);
    let mut out = Vec::new();
    for u in &urls {
        for s in SecretUrl::new(u.clone()).secrets() {
            let userinfo = s.starts_with("//") && s.ends_with('@') && s.contains(':');
            if !(userinfo || s.len() >= 16) || s == *u {
                continue;
            }
            // `url` gives the password percent-encoded: the raw URL may hold it decoded in its
            // user-info and the encoded form elsewhere (a path), where it may rightly be shown.
            let count =
                |needle: &str| -> usize { urls.iter().map(|x| x.matches(needle).count()).sum() };
            let in_urls = count(&s)
                + match percent_decode(&s) {
                    Ok(decoded) if decoded != s => count(&decoded),
                    _ => 0,
                };
            if in_urls == 1 && !elsewhere(&doc, &s, "") {
                out.push(s);
            }
        }
    }
    out
}

/// Like [`secrets`] for the user-info of a URL in any string of the document (an error must not
/// echo it, whatever the field), kept only where it occurs once among all strings and keys.
fn secrets_anywhere(text: &str) -> Vec<String> {
    let Ok(doc) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut urls = Vec::new();
    any_urls(&doc, &mut urls);
    let mut strings = Vec::new();
    all_strings(&doc, &mut strings);
    let count = |needle: &str| -> usize { strings.iter().map(|x| x.matches(needle).count()).sum() };
    let mut out = Vec::new();
    for u in &urls {
        for s in SecretUrl::new(u.clone()).secrets() {
            let userinfo = s.starts_with("//") && s.ends_with('@') && s.contains(':');
            if !userinfo || s == *u || s.len() < 8 {
                continue;
            }
            // As in `secrets`: `url` gives the user-info percent-encoded, and that form may also
            // be written elsewhere (a key), where it is no secret.
            let decoded = match percent_decode(&s) {
                Ok(d) if d != s => count(&d),
                _ => 0,
            };
            if count(&s) + decoded == 1 && !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

/// The forms in which the generated files write `s`, each as it appears inside the rendered value.
fn rendered_forms(s: &str) -> Vec<String> {
    let inner = |q: String| -> String {
        q.strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(&q)
            .to_string()
    };
    let json = inner(py_str(s));
    vec![
        s.to_string(),
        s.replace('\'', r"'\''"),
        {
            let line = systemd_env("K", s);
            line.strip_prefix("Environment=\"K=")
                .and_then(|x| x.strip_suffix('"'))
                .unwrap_or(&line)
                .to_string()
        },
        json.clone(),
        inner(git_value(s)),
        inner(serde_json::to_string(&json).unwrap_or_default()),
    ]
}

fn assert_no_secret(what: &str, printed: &str, secrets: &[String]) {
    for s in secrets {
        assert!(
            !printed.contains(s.as_str()),
            "{what} shows the secret {s:?}: {printed}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        // `load` reads with read_to_string: not UTF-8 is an I/O error before the parser.
        return;
    };
    let file = Path::new("/etc/notebook-agent/config.json");
    let secrets = secrets(text);
    let anywhere = secrets_anywhere(text);
    match config::parse(text, file) {
        Err(e) => {
            match &e {
                // `path` may be empty: for a key "" serde has no location to show.
                ConfigError::Parse { message, .. } => {
                    assert!(!message.is_empty(), "a parse error with no message");
                }
                ConfigError::Invalid { problems, .. } => {
                    assert!(!problems.is_empty(), "Invalid with no problem");
                }
                ConfigError::Read { .. } => panic!("parse returned a read error"),
            }
            assert_no_secret("the error", &e.to_string(), &secrets);
            assert_no_secret("the error's Debug", &format!("{e:?}"), &secrets);
            assert_no_secret("the error (any field)", &e.to_string(), &anywhere);
        }
        Ok(valid) => {
            let cfg = valid.get();
            // Exactly one JSON object, every section an object, no control character anywhere.
            let doc: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("a valid config is not one JSON value: {e}"));
            let Value::Object(top) = &doc else {
                panic!("a valid config is not an object: {text}");
            };
            for (k, v) in top {
                assert!(
                    v.is_object() || v.is_null(),
                    "section {k} is accepted as {v}"
                );
            }
            let mut strings = Vec::new();
            all_strings(&doc, &mut strings);
            for s in &strings {
                assert!(
                    !s.chars().any(forbidden_char),
                    "a valid config holds a control character: {s:?}"
                );
            }
            // Every secret, as each generated file writes it, is gone after the redaction.
            let redactor = cfg.redactor();
            let mut urls: Vec<String> = cfg.urls().iter().map(|u| u.expose().to_string()).collect();
            urls.extend(cfg.channel_urls().iter().map(|u| u.expose().to_string()));
            for u in &urls {
                for form in rendered_forms(u) {
                    let scrubbed = redactor.scrub(&form);
                    for sec in &secrets {
                        let gone = rendered_forms(sec)
                            .into_iter()
                            .all(|f| f.len() < 8 || !scrubbed.contains(&f));
                        assert!(gone, "the secret {sec:?} survives redaction in {scrubbed:?}");
                    }
                }
            }
            let shown = serde_json::to_string(cfg).expect("a valid config serialises");
            assert_no_secret("the serialised config", &shown, &secrets);
            assert_no_secret("the config's Debug", &format!("{cfg:?}"), &secrets);
            let again = config::parse(&shown, file)
                .unwrap_or_else(|e| panic!("the serialised config is refused: {e}\n{shown}"));
            let shown_again = serde_json::to_string(again.get()).expect("serialises");
            assert_eq!(shown, shown_again, "serialising is not stable");
        }
    }
});
