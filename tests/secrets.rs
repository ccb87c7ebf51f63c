//! Secrets in every form: proxy passwords, index tokens and conda channel credentials that hold
//! the characters generated files escape (`'` `"` `%` `\` `$`) are written where the tools need
//! them and appear in no output channel — `apply --dry-run`, `apply`, `status`, `status --json`,
//! their stderr, the state files — in any encoding (issue 13).
//!
//! Every secret holds a marker (`KRIT`) that no escaping changes, so one search for the marker
//! finds the secret however it was encoded; the named encodings are listed in the failure.

mod common;

use std::fs;
use std::path::Path;

use common::{agent, stderr, stdout, TempRoot};

/// One nasty character per run, as it must be written in a URL's user-info: `\` cannot be
/// written raw there (URL parsers end the authority at it), so it is `%5C` in the config and
/// `\` once decoded.
const NASTY: &[(&str, &str)] = &[
    ("quote", "'"),
    ("double quote", "\""),
    ("percent", "%"),
    ("backslash", "%5C"),
    ("dollar", "$"),
    ("all of them", "'\"%%5C$"),
];

fn root_arg(t: &TempRoot) -> &str {
    t.path().to_str().expect("utf-8")
}

/// The config for one nasty character `c`: every secret-bearing field holds a distinct secret
/// with `c` in it and the marker.
fn config(c: &str) -> (String, Vec<String>) {
    let pw = |n: u32| format!("pw{c}KRIT{n}{c}x");
    let secrets = vec![pw(1), pw(2), pw(3), pw(4), format!("tok{c}KRIT5{c}tok")];
    let proxy = format!("http://bob:{}@proxy.corp:3128", secrets[0]);
    let text = serde_json::json!({
        "proxy": {"http": proxy, "https": proxy, "no_proxy": [".corp"]},
        "pip": {
            "index_url": format!("https://tok:{}@mirror.corp/simple", secrets[1]),
            "extra_index_urls": [format!("https://x:{}@extra.corp/simple", secrets[2])],
            "conda_channels": [
                format!("https://cu:{}@conda.corp/main", secrets[3]),
                format!("https://conda.corp/t/{}/main", secrets[4]),
                "conda-forge",
            ],
        },
    })
    .to_string();
    (text, secrets)
}

/// The forms a secret may take in output (for the failure message: the marker catches them all).
fn encodings(s: &str) -> Vec<String> {
    let decoded = s.replace("%5C", "\\");
    let mut out = Vec::new();
    for b in [s.to_string(), decoded] {
        out.push(b.replace('\'', r"'\''"));
        out.push(
            b.replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('%', "%%"),
        );
        out.push(serde_json::to_string(&b).expect("json"));
        out.push(b.clone());
    }
    out
}

fn assert_no_secret(channel: &str, text: &str, secrets: &[String]) {
    if let Some(i) = text.find("KRIT") {
        let around = &text[i.saturating_sub(60)..(i + 40).min(text.len())];
        let all: Vec<String> = secrets.iter().flat_map(|s| encodings(s)).collect();
        let forms: Vec<&String> = all.iter().filter(|e| text.contains(e.as_str())).collect();
        panic!("{channel} shows a secret (forms found: {forms:?}) near: …{around}…");
    }
}

fn files_under(dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else if let Ok(bytes) = fs::read(&p) {
            out.push((
                p.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
}

#[test]
fn nasty_passwords_and_conda_tokens_are_in_no_output_in_any_encoding() {
    for (what, c) in NASTY {
        let (text, secrets) = config(c);
        let t = TempRoot::amazon_linux();
        t.install_visudo();
        t.write("etc/notebook-agent/config.json", &text, 0o600);
        t.mkdir("etc/systemd/system");
        t.write("etc/bashrc", "# bashrc\n", 0o644);

        let dry = agent(&["apply", "--dry-run", "--root", root_arg(&t)]);
        assert_eq!(dry.status.code(), Some(0), "{what}: {}", stderr(&dry));
        assert!(
            stdout(&dry).contains("REDACTED"),
            "{what}: the dry run shows no redaction: {}",
            stdout(&dry)
        );
        let apply = agent(&["apply", "--root", root_arg(&t)]);
        assert_eq!(apply.status.code(), Some(0), "{what}: {}", stderr(&apply));
        let status = agent(&["status", "--root", root_arg(&t)]);
        let json = agent(&["status", "--json", "--root", root_arg(&t)]);
        let verbose = agent(&["apply", "--dry-run", "-vv", "--root", root_arg(&t)]);
        for (name, out) in [
            ("apply --dry-run", &dry),
            ("apply", &apply),
            ("status", &status),
            ("status --json", &json),
            ("apply --dry-run -vv", &verbose),
        ] {
            assert_no_secret(&format!("{what}: {name} stdout"), &stdout(out), &secrets);
            assert_no_secret(&format!("{what}: {name} stderr"), &stderr(out), &secrets);
        }
        let mut state = Vec::new();
        files_under(&t.join("var/lib/notebook-agent"), &mut state);
        assert!(!state.is_empty(), "{what}: apply left no state files");
        for (path, body) in &state {
            assert_no_secret(&format!("{what}: {path}"), body, &secrets);
        }

        // The tools still get the real values (the test is not vacuous).
        let profile = t.read("etc/profile.d/notebook-agent-proxy.sh");
        assert!(profile.contains("KRIT1"), "{what}: {profile}");
        let condarc = t.read("etc/conda/condarc.d/notebook-agent-channels.yml");
        assert!(
            condarc.contains("KRIT4") && condarc.contains("KRIT5"),
            "{what}: {condarc}"
        );
        assert!(t.read("etc/pip.conf").contains("KRIT2"), "{what}");
    }
}
