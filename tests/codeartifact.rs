//! `pip.codeartifact` end to end through the binary, with the real AWS SDK as client and a fake
//! CodeArtifact API (`codeartifact_fixtures/fake_codeartifact.rs`) handing out short-lived tokens:
//! apply writes the repository's URL with a token; a role without permission or an API out of
//! reach fails apply closed with one line naming what is missing; `watch` refreshes the token
//! before it expires, rewrites every pip.conf, and records it; `status` says when the token
//! expires and fails once it has; the token appears nowhere but in pip.conf.

mod common;

#[path = "codeartifact_fixtures/fake_codeartifact.rs"]
mod fake_codeartifact;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent, stderr, stdout, TempRoot, TEST_ENV};
use fake_codeartifact::{FakeCodeArtifact, Mode};
use serde_json::Value;

const PIP_CONFS: &[&str] = &[
    "etc/pip.conf",
    "home/ec2-user/.config/pip/pip.conf",
    "home/ec2-user/.pip/pip.conf",
    "home/ec2-user/anaconda3/pip.conf",
    "home/ec2-user/anaconda3/envs/python3/pip.conf",
    "home/ec2-user/anaconda3/envs/JupyterSystemEnv/pip.conf",
];

/// A notebook root with a config that uses the fake as the CodeArtifact API. The region is
/// left to default to the notebook's (us-east-1, from its ARN).
fn notebook(fake: &FakeCodeArtifact) -> TempRoot {
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/notebook-agent/config.json",
        &format!(
            r#"{{"root_access": {{"enabled": false}},
  "audit": {{"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}},
  "pip": {{"codeartifact": {{"domain": "corp", "domain_owner": "111122223333",
    "repository": "pypi-mirror", "endpoint_url": "{}", "duration_secs": 900}}}}}}"#,
            fake.url
        ),
        0o600,
    );
    t
}

fn r(t: &TempRoot) -> &str {
    t.path().to_str().expect("utf-8")
}

/// The index URL `/etc/pip.conf` holds.
fn index_url(t: &TempRoot) -> String {
    t.read("etc/pip.conf")
        .lines()
        .find_map(|l| l.strip_prefix("index-url = "))
        .unwrap_or_else(|| panic!("no index-url in {}", t.read("etc/pip.conf")))
        .to_string()
}

/// The token inside the index URL.
fn token_in_files(t: &TempRoot) -> String {
    let u = url::Url::parse(&index_url(t)).expect("index-url is a URL");
    assert_eq!(u.username(), "aws");
    u.password().expect("a token as password").to_string()
}

/// The pip finding of `status --json`, and the exit code.
fn pip_status(t: &TempRoot) -> (Value, Option<i32>, String) {
    let out = agent(&["status", "--json", "--root", r(t)]);
    let text = stdout(&out);
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status --json is JSON ({e}): {text} {}", stderr(&out)));
    let pip = v["controls"]
        .as_array()
        .expect("controls")
        .iter()
        .find(|f| f["control"] == "pip")
        .expect("a pip row")
        .clone();
    (pip, out.status.code(), format!("{text}{}", stderr(&out)))
}

/// Every file below the root except the pip.conf files, as text.
fn everything_but_pip_conf(t: &TempRoot) -> String {
    t.snapshot()
        .into_iter()
        .filter(|(k, _)| !k.ends_with("pip.conf"))
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect()
}

/// Fails when any token the fake handed out occurs in `text`.
fn assert_no_token(fake: &FakeCodeArtifact, what: &str, text: &str) {
    for tok in fake.tokens() {
        // The distinctive middle of the token catches partial and re-encoded echoes too.
        let middle = tok.split('.').nth(1).expect("token shape");
        assert!(
            !text.contains(&tok) && !text.contains(middle),
            "a CodeArtifact token appears in {what}: {text}"
        );
    }
}

#[test]
fn apply_writes_the_repository_url_with_a_token_everywhere_pip_reads() {
    let fake = FakeCodeArtifact::start(3600);
    let t = notebook(&fake);
    let out = agent(&["apply", "--root", r(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let tokens = fake.tokens();
    assert_eq!(
        tokens.len(),
        1,
        "one token per apply: {:?}",
        fake.requests()
    );
    let want = format!(
        "http://aws:{}@{}/pypi/pypi-mirror/simple/",
        tokens[0],
        fake.url.trim_start_matches("http://")
    );
    for f in PIP_CONFS {
        assert!(
            t.read(f).contains(&format!("index-url = {want}\n")),
            "{f}: {}",
            t.read(f)
        );
    }
    assert!(fake.valid(&token_in_files(&t)));
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .any(|q| q.starts_with("POST /v1/authorization-token?")
                && q.contains("domain=corp")
                && q.contains("domain-owner=111122223333")
                && q.contains("duration=900")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|q| q.starts_with("GET /v1/repository/endpoint?")
                && q.contains("format=pypi")
                && q.contains("repository=pypi-mirror")),
        "{requests:?}"
    );

    let (pip, code, text) = pip_status(&t);
    assert_eq!(pip["status"], "PASS", "{text}");
    let evidence = pip["evidence"].as_str().expect("evidence");
    assert!(
        evidence.contains("CodeArtifact token expires at"),
        "{evidence}"
    );
    assert!(evidence.contains("REDACTED"), "{evidence}");
    let human = agent(&["status", "--root", r(&t)]);

    // A second apply keeps nothing stale: a new token, the files follow, status still passes.
    let again = agent(&["apply", "--root", r(&t)]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(fake.tokens().len(), 2);
    assert_eq!(token_in_files(&t), fake.tokens()[1]);
    let dry = agent(&["apply", "--dry-run", "--root", r(&t)]);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(stdout(&dry).contains("REDACTED"), "{}", stdout(&dry));
    let (pip, _, _) = pip_status(&t);
    assert_eq!(
        pip["status"], "PASS",
        "a dry run's token never reaches the files: {pip}"
    );

    for (what, o) in [
        ("apply", &out),
        ("status", &human),
        ("second apply", &again),
        ("dry run", &dry),
    ] {
        assert_no_token(&fake, what, &format!("{}{}", stdout(o), stderr(o)));
    }
    assert_no_token(&fake, "status --json", &text);
    assert_no_token(
        &fake,
        "the state and every other file",
        &everything_but_pip_conf(&t),
    );
    let _ = code;
}

#[test]
fn access_denied_fails_apply_closed_naming_the_iam_actions() {
    let fake = FakeCodeArtifact::start(3600);
    fake.set_mode(Mode::AccessDenied);
    let t = notebook(&fake);
    let before = t.snapshot();
    let out = agent(&["apply", "--root", r(&t)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("GetAuthorizationToken"))
        .unwrap_or_else(|| panic!("no line names the call: {err}"));
    for action in [
        "codeartifact:GetAuthorizationToken",
        "codeartifact:GetRepositoryEndpoint",
        "codeartifact:ReadFromRepository",
        "sts:GetServiceBearerToken",
    ] {
        assert!(
            line.contains(action),
            "{action} not named in one line: {line}"
        );
    }
    assert_eq!(before, t.snapshot(), "a failed apply changed the host");
}

#[test]
fn an_unreachable_api_fails_apply_closed_naming_the_vpc_endpoints() {
    let fake = FakeCodeArtifact::start(3600);
    fake.set_mode(Mode::Unreachable);
    let t = notebook(&fake);
    let before = t.snapshot();
    let out = agent(&["apply", "--root", r(&t)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("unreachable") || l.contains("did not answer"))
        .unwrap_or_else(|| panic!("no line says the API is out of reach: {err}"));
    for ep in [
        "com.amazonaws.us-east-1.codeartifact.api",
        "com.amazonaws.us-east-1.codeartifact.repositories",
        "com.amazonaws.us-east-1.sts",
    ] {
        assert!(line.contains(ep), "{ep} not named in one line: {line}");
    }
    assert_eq!(before, t.snapshot(), "a failed apply changed the host");
}

#[test]
fn invalid_codeartifact_config_is_exit_2_with_every_path() {
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/notebook-agent/config.json",
        r#"{"pip": {"index_url": "https://m.corp/simple", "codeartifact": {"domain": "Corp",
            "domain_owner": "12345", "repository": "r", "duration_secs": 50000}}}"#,
        0o600,
    );
    let before = t.snapshot();
    let out = agent(&["apply", "--root", r(&t)]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for path in [
        "pip.codeartifact:",
        "pip.codeartifact.domain:",
        "pip.codeartifact.domain_owner:",
        "pip.codeartifact.repository:",
        "pip.codeartifact.duration_secs:",
    ] {
        assert!(err.contains(path), "{path} missing: {err}");
    }
    assert_eq!(before, t.snapshot());
}

/// `watch` (spooling; CloudWatch is a closed loopback port) with its output kept for the
/// secret sweep.
struct Watch {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

const SPOOL: &str = "home/ec2-user/SageMaker/.notebook-agent";

impl Watch {
    fn start(t: &TempRoot) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_notebook-agent"));
        cmd.args(["watch", "--root", r(t)])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in TEST_ENV {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn notebook-agent watch");
        let collect = |mut s: Box<dyn Read + Send>| {
            let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let sink = std::sync::Arc::clone(&buf);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("lock")
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
            buf
        };
        let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
        let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn text(&self) -> String {
        format!(
            "{}{}",
            self.stdout.lock().expect("lock"),
            self.stderr.lock().expect("lock")
        )
    }

    fn stop(mut self) -> String {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = self.child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "watch exits 0 on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
        self.text()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to `secs` for `f`, failing with `what`.
fn wait(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {secs} s");
}

/// The outcome of the refresher's last attempt, from its state file.
fn last_refresh_ok(t: &TempRoot) -> Option<bool> {
    let text = std::fs::read_to_string(t.join("var/lib/notebook-agent/codeartifact.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["last_refresh"]["ok"].as_bool()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[test]
fn watch_refreshes_the_token_before_it_expires_and_status_follows_an_outage() {
    // Tokens live 6 s (the fake grants less than the 900 s asked for, as a role session ending
    // first would): the refresher follows the granted expiry and refreshes at 3 s.
    let fake = FakeCodeArtifact::start(6);
    let t = notebook(&fake);
    let out = agent(&["apply", "--root", r(&t)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let first = token_in_files(&t);
    let w = Watch::start(&t);

    // Refreshed before the first token expired, every pip.conf rewritten.
    wait(20, "pip.conf carries a new token", || {
        token_in_files(&t) != first
    });
    assert!(
        fake.valid(&first),
        "the refresh came only after the first token expired"
    );
    let second = token_in_files(&t);
    wait(5, "every pip.conf rewritten", || {
        PIP_CONFS.iter().all(|f| t.read(f).contains(&second))
    });
    assert!(fake.valid(&second));

    // Past the first token's life: pip's URL still works and status passes.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        !fake.valid(&first),
        "the first token should have expired by now"
    );
    assert!(
        fake.valid(&token_in_files(&t)),
        "the token in pip.conf is not valid"
    );
    let (pip, _, text) = pip_status(&t);
    assert_eq!(pip["status"], "PASS", "{text}");
    assert!(
        pip["evidence"]
            .as_str()
            .unwrap_or_default()
            .contains("expires at"),
        "{pip}"
    );
    assert_no_token(&fake, "status", &text);

    // The API goes away: the refresher retries and records failures; status fails once the
    // token in the files is about to expire after a failed refresh, or has expired.
    let outage = now_ms();
    fake.set_mode(Mode::Unreachable);
    wait(20, "a failed refresh recorded", || {
        last_refresh_ok(&t) == Some(false)
    });
    wait(20, "status FAIL for the pip row", || {
        pip_status(&t).0["status"] == "FAIL"
    });
    let (pip, code, _) = pip_status(&t);
    assert_eq!(code, Some(3), "{pip}");
    let evidence = pip["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("expired") || evidence.contains("last refresh failed"),
        "{evidence}"
    );

    // Recovery: the next retry succeeds, the files carry a valid token, status passes again.
    fake.set_mode(Mode::Normal);
    wait(70, "a successful refresh after the outage", || {
        last_refresh_ok(&t) == Some(true) && fake.valid(&token_in_files(&t))
    });
    wait(10, "status PASS after recovery", || {
        pip_status(&t).0["status"] == "PASS"
    });

    let text = w.stop();
    let records: Vec<Value> = common::watch::read_spool(&t.join(SPOOL))
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    let detail =
        |d: &str| -> Vec<&Value> { records.iter().filter(|r| r["status_detail"] == d).collect() };
    let refreshed = detail("token_refreshed");
    assert!(refreshed.len() >= 2, "{refreshed:?}");
    assert_eq!(refreshed[0]["unmapped"]["repository"], "corp/pypi-mirror");
    assert!(refreshed[0]["unmapped"]["expires_ms"].as_i64().is_some());
    let failed = detail("token_refresh_failed");
    assert!(!failed.is_empty(), "no TokenRefreshFailed event");
    let error = failed[0]["unmapped"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("codeartifact.api"), "{error}");
    // Drift repair and the refresh never fought over pip.conf while the token was valid.
    let pip_drift: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["finding_info"]["uid"]
                .as_str()
                .is_some_and(|u| u.ends_with("/drift/pip"))
                && r["time"].as_i64().is_some_and(|t| t < outage)
        })
        .collect();
    assert!(pip_drift.is_empty(), "pip drift events: {pip_drift:?}");

    assert_no_token(&fake, "watch's output", &text);
    let spooled: String = records.iter().map(|r| format!("{r}\n")).collect();
    assert_no_token(&fake, "the spooled events", &spooled);
    assert_no_token(
        &fake,
        "the state and every other file",
        &everything_but_pip_conf(&t),
    );
}

#[test]
fn render_lifecycle_config_writes_a_valid_codeartifact_section_and_names_the_permissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("lc");
    let conf = dir.path().join("config.json");
    std::fs::write(
        &conf,
        r#"{"pip": {"index_url": "https://old.mirror/simple", "timeout_secs": 30}}"#,
    )
    .expect("write config");
    let sha = "0".repeat(64);
    let render = |spec: &str| {
        Command::new(common::repo().join("packaging/render-lifecycle-config"))
            .args([
                "--artifact-url",
                "https://releases.example/notebook-agent.tar.gz",
            ])
            .args(["--sha256", &sha, "--codeartifact", spec, "--config"])
            .arg(&conf)
            .arg("--out")
            .arg(&out_dir)
            .output()
            .expect("run render-lifecycle-config")
    };
    let out = render("111122223333/corp/pypi-mirror");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needed in [
        "codeartifact:GetAuthorizationToken",
        "codeartifact:ReadFromRepository",
        "sts:GetServiceBearerToken",
        "codeartifact.repositories",
        "CodeArtifactDomain=corp",
    ] {
        assert!(text.contains(needed), "{needed}: {text}");
    }
    let script = std::fs::read_to_string(out_dir.join("on-start.sh")).expect("on-start.sh");
    let json = script
        .split_once("<<'NOTEBOOK_AGENT_CONFIG_JSON'\n")
        .and_then(|(_, rest)| rest.split_once("\nNOTEBOOK_AGENT_CONFIG_JSON"))
        .map(|(json, _)| json)
        .expect("the config heredoc in on-start.sh");
    let config = notebook_agent::config::parse(json, std::path::Path::new("on-start.sh"))
        .unwrap_or_else(|e| panic!("the rendered config is not valid: {e}\n{json}"));
    let pip = config.pip.as_ref().expect("pip");
    assert!(pip.index_url.is_none(), "index_url replaced");
    assert_eq!(pip.timeout_secs, Some(30), "the rest of pip kept");
    let ca = pip.codeartifact.as_ref().expect("codeartifact");
    assert_eq!(
        (
            ca.domain.as_str(),
            ca.domain_owner.as_str(),
            ca.repository.as_str()
        ),
        ("corp", "111122223333", "pypi-mirror")
    );
    assert_eq!(render("corp/pypi-mirror").status.code(), Some(2));
}
