//! TEST FIXTURE: a real `moto_server` (the CloudWatch Logs emulator) on a free loopback port, from
//! the pinned venv that `tests/moto.sh` installs; events are read back with the AWS SDK in-process
//! (the AWS CLI of the venv only creates things where a test needs that). A test that
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
        // Bounded: the CLI's defaults wait 60 s per read and retry.
        .args([
            "--output",
            "json",
            "--cli-connect-timeout",
            "5",
            "--cli-read-timeout",
            "30",
        ])
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

/// How long one whole read-back may take before the test fails (moto sorts the stream on every
/// page, so 100,000 events take a few seconds; a minute is far beyond any healthy read).
pub const READ_BACK_DEADLINE: Duration = Duration::from_secs(120);

/// Events per page asked for (GetLogEvents' maximum; moto honours it and no byte limit).
const PAGE: i32 = 10_000;

/// Every event of a stream, oldest first. Panics (with what it read so far) when the group or
/// stream does not exist, or when the read does not finish within [`READ_BACK_DEADLINE`].
pub fn read_back(port: u16, group: &str, stream: &str) -> Vec<(i64, String)> {
    read_back_with(port, group, stream, "timestamp")
}

/// [`read_back`] pairing each message with another of the event's times (`ingestionTime`).
pub fn read_back_with(port: u16, group: &str, stream: &str, time: &str) -> Vec<(i64, String)> {
    try_read_back_with(port, group, stream, time)
        .unwrap_or_else(|e| panic!("read-back of {group} / {stream} from moto on port {port}: {e}"))
}

/// [`read_back`], with a missing group or stream (and any other service error) as `Err`, e.g.
/// for a test polling for the first arrivals. The deadline still panics.
pub fn try_read_back(port: u16, group: &str, stream: &str) -> Result<Vec<(i64, String)>, String> {
    try_read_back_with(port, group, stream, "timestamp")
}

/// The read-back: GetLogEvents through the AWS SDK in this process (one HTTP call per page, no
/// process per page), `startFromHead`, following `nextForwardToken`.
///
/// It ends at the end of the stream *as of the call that found it*: a page shorter than
/// [`PAGE`] (moto never cuts a page for size) or a forward token equal to the one sent. Events a
/// writer adds after that are not waited for, so a trickle that keeps writing cannot keep the
/// read going for ever (the livelock of the per-page `aws` process this replaced). A whole read
/// has [`READ_BACK_DEADLINE`].
pub fn try_read_back_with(
    port: u16,
    group: &str,
    stream: &str,
    time: &str,
) -> Result<Vec<(i64, String)>, String> {
    let (group, stream, time) = (group.to_string(), stream.to_string(), time.to_string());
    // Its own thread and runtime: callers are plain tests and tokio tests alike.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("read-back runtime");
        rt.block_on(read_back_async(port, &group, &stream, &time))
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// An SDK client for moto on `port`: static test credentials, no proxy, bounded connect and
/// attempt. Calls need a tokio runtime.
pub fn sdk_client(port: u16) -> aws_sdk_cloudwatchlogs::Client {
    use aws_sdk_cloudwatchlogs::config::{BehaviorVersion, Credentials, Region};
    let http = notebook_agent::audit::shipper::ClientSettings::new(REGION)
        .http_client()
        .expect("HTTP client");
    let timeouts = aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(60))
        .build();
    let conf = aws_sdk_cloudwatchlogs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .http_client(http)
        .timeout_config(timeouts)
        .build();
    aws_sdk_cloudwatchlogs::Client::from_conf(conf)
}

async fn read_back_async(
    port: u16,
    group: &str,
    stream: &str,
    time: &str,
) -> Result<Vec<(i64, String)>, String> {
    let client = sdk_client(port);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + READ_BACK_DEADLINE;
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    let mut page = 0u32;
    loop {
        page += 1;
        let call = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .limit(PAGE)
            .set_next_token(token.clone())
            .send();
        let resp = match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return Err(format!(
                    "GetLogEvents page {page} failed: {}",
                    aws_sdk_cloudwatchlogs::error::DisplayErrorContext(&e)
                ))
            }
            Err(_) => panic!(
                "read-back of {group} / {stream} (moto on port {port}) not finished within {READ_BACK_DEADLINE:?}: {} events in {} pages so far",
                out.len(),
                page - 1
            ),
        };
        let events = resp.events();
        let n = events.len();
        for e in events {
            let t = if time == "ingestionTime" {
                e.ingestion_time()
            } else {
                e.timestamp()
            };
            out.push((
                t.expect("event time"),
                e.message().expect("message").to_string(),
            ));
        }
        let next = resp.next_forward_token().map(str::to_string);
        if n < PAGE as usize || next.is_none() || next == token {
            return Ok(out);
        }
        assert!(
            started.elapsed() < READ_BACK_DEADLINE,
            "read-back of {group} / {stream} (moto on port {port}) not finished within {READ_BACK_DEADLINE:?}: {} events in {page} pages so far",
            out.len()
        );
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
