//! TEST FIXTURE: a real `moto_server` (the CloudWatch Logs emulator) on a free loopback port, from
//! the pinned venv that `tests/moto.sh` installs, and the AWS CLI to read events back. A test that
//! cannot get moto FAILS with the install command; it never skips.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const REGION: &str = "eu-west-1";

/// The credentials every test uses: env only, IMDS off, so nothing leaves 127.0.0.1.
pub fn test_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_SESSION_TOKEN", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
        ("NO_PROXY", "127.0.0.1,localhost"),
    ]
}

/// Puts [`test_env`] into this process's environment (the SDK's default chain reads it).
pub fn set_test_env() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for (k, v) in test_env() {
            std::env::set_var(k, v);
        }
        for k in [
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
            "ALL_PROXY",
        ] {
            std::env::remove_var(k);
        }
    });
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's bin directory (installs it on first use).
pub fn venv_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo().join("tests/moto.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        if !out.status.success() {
            panic!(
                "moto_server is not installed and could not be installed.\n\
                 Install it with: bash {} (needs python3-venv and PyPI access)",
                script.display()
            );
        }
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            bin.join("moto_server").exists(),
            "{} has no moto_server: run bash {}",
            bin.display(),
            script.display()
        );
        bin
    })
    .clone()
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A running moto_server; killed on drop.
pub struct Moto {
    pub port: u16,
    child: Option<Child>,
}

impl Moto {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let bin = venv_bin();
        let child = Command::new(bin.join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(test_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}/moto_server: {e}", bin.display()));
        let m = Self {
            port,
            child: Some(child),
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not listen on 127.0.0.1:{port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Stops it (moto keeps everything in memory: its state is gone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `aws --endpoint-url … logs ARGS --output json`, parsed.
pub fn aws_logs(port: u16, args: &[&str]) -> serde_json::Value {
    let out = Command::new(venv_bin().join("aws"))
        .arg("--endpoint-url")
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("logs")
        .args(args)
        .args(["--output", "json"])
        .envs(test_env())
        .output()
        .expect("run aws");
    assert!(
        out.status.success(),
        "aws logs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null; // create-* print nothing
    }
    serde_json::from_slice(&out.stdout).expect("aws printed JSON")
}

/// Every event of a stream, oldest first, paginated with `get-log-events --start-from-head`.
pub fn read_back(port: u16, group: &str, stream: &str) -> Vec<(i64, String)> {
    read_back_with(port, group, stream, "timestamp")
}

/// [`read_back`] pairing each message with another of the event's times (`ingestionTime`).
pub fn read_back_with(port: u16, group: &str, stream: &str, time: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut args = vec![
            "get-log-events",
            "--log-group-name",
            group,
            "--log-stream-name",
            stream,
            "--start-from-head",
        ];
        if let Some(t) = &token {
            args.push("--next-token");
            args.push(t);
        }
        let v = aws_logs(port, &args);
        let events = v["events"].as_array().cloned().unwrap_or_default();
        let next = v["nextForwardToken"].as_str().map(str::to_string);
        let done = events.is_empty() || next.is_none() || next == token;
        for e in events {
            out.push((
                e[time].as_i64().expect("event time"),
                e["message"].as_str().expect("message").to_string(),
            ));
        }
        if done {
            return out;
        }
        token = next;
    }
}

/// The `metadata.sequence` of each read-back message (or the truncation wrapper's `sequence`).
pub fn sequences(events: &[(i64, String)]) -> Vec<u64> {
    events
        .iter()
        .map(|(_, m)| {
            let v: serde_json::Value = serde_json::from_str(m).expect("message is JSON");
            v.pointer("/metadata/sequence")
                .or_else(|| v.get("sequence"))
                .and_then(|s| s.as_u64())
                .expect("sequence")
        })
        .collect()
}

/// An OCSF-shaped record carrying its spool sequence and a uid, `pad` bytes of filler.
pub fn record(seq: u64, pad: usize) -> Vec<u8> {
    serde_json::json!({
        "class_uid": 1001,
        "activity_id": 1,
        "time": 0,
        "metadata": {"uid": format!("uid-{seq}"), "sequence": seq},
        "file": {"path": format!("/home/ec2-user/SageMaker/f{seq}.txt")},
        "pad": "x".repeat(pad),
    })
    .to_string()
    .into_bytes()
}

pub fn script_path() -> PathBuf {
    repo().join("tests/moto.sh")
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
