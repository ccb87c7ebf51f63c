//! The config parser and validator (`config::parse`, what `load` runs on the file's text) on
//! arbitrary bytes.
//!
//! Invariants: never a panic; an error is the normal `ConfigError` (`Parse` or `Invalid` with at
//! least one problem, never `Read`) and renders; a valid config serialises (the form `status` and
//! the state files use), parses and validates again, and serialises to the same text; and no
//! credential of a URL in the input (proxy, pip index, IMDS endpoint) appears in an error message,
//! the serialised config or its `Debug` form.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use notebook_agent::config::secret::percent_decode;
use notebook_agent::config::{self, ConfigError, SecretUrl};
use serde_json::Value;

/// JSON pointers of the fields that hold a `SecretUrl` (arrays: every element).
const URL_FIELDS: &[&str] = &[
    "/pip/index_url",
    "/pip/extra_index_urls",
    "/proxy/http",
    "/proxy/https",
    "/environment/imds_endpoint",
];

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
        }
        Ok(valid) => {
            let cfg = valid.get();
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
