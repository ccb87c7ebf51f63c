//! Benchmark: the whole pipeline, file change → PutLogEvents accepted, through the real
//! `notebook-agent watch` binary (spool mode) and a real moto_server on loopback.
//!
//! 1. Latency: files created at a steady rate, each name carrying its creation time (ms); the
//!    latency of each is moto's `ingestionTime` of its create event minus that time (same clock).
//!    p50/p99/max; targets (issue 5) p50 ≤ 2 s, p99 ≤ 5 s, with the default `audit.flush_ms`.
//! 2. Sustained events/s: a burst of files (`xargs touch`); events of the burst in moto divided
//!    by the time from the burst's start to the last one's ingestion.
//!
//! Uses the release musl binary when built (`cargo build --release --target
//! x86_64-unknown-linux-musl`), else the debug one; it says which. `cargo bench --bench delivery`;
//! `DELIVERY_BENCH_RATE` (files/s, default 100), `DELIVERY_BENCH_SECS` (default 20),
//! `DELIVERY_BENCH_BURST` (default 50000), `DELIVERY_BENCH_FLUSH_MS` (default: the config default).
//! Under `cargo test --all-targets` it runs as a small smoke test.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/shipper_fixtures/moto.rs"]
mod moto;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempRoot, TEST_ENV};
use serde_json::Value;

const SM: &str = "home/ec2-user/SageMaker";
const GROUP: &str = "/aws/sagemaker/NotebookInstances";
const STREAM: &str = "test-nb/audit";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The release musl binary if it was built, else the one cargo built for this bench.
fn binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let release = target.join("x86_64-unknown-linux-musl/release/notebook-agent");
    if release.exists() {
        release
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_notebook-agent"))
    }
}

/// Every event of the stream with moto's ingestion time: (ingestionTime, message).
fn read_back(port: u16) -> Vec<(i64, String)> {
    moto::read_back_with(port, GROUP, STREAM, "ingestionTime")
}

fn shipper_json(t: &TempRoot) -> Value {
    std::fs::read(t.join("var/lib/notebook-agent/shipper.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Waits until the spool is empty and the daemon wrote at most what was acknowledged.
fn wait_acked(t: &TempRoot, at_least: u64, secs: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = shipper_json(t);
        let d: Value = std::fs::read(t.join("var/lib/notebook-agent/daemon.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let acked = s["acked_seq"].as_u64().unwrap_or(0);
        if acked >= at_least
            && s["spool_bytes"].as_u64() == Some(0)
            && d["events_written"].as_u64().is_some_and(|w| w <= acked)
        {
            return;
        }
        assert!(Instant::now() < until, "not all shipped: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pct(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let rate = env_u64("DELIVERY_BENCH_RATE", if benching { 100 } else { 50 }).max(1);
    let secs = env_u64("DELIVERY_BENCH_SECS", if benching { 20 } else { 3 });
    let burst = env_u64(
        "DELIVERY_BENCH_BURST",
        if benching { 50_000 } else { 2_000 },
    );
    let flush = std::env::var("DELIVERY_BENCH_FLUSH_MS").ok();
    let bin = binary();
    let server = moto::Moto::start();
    let t = TempRoot::amazon_linux();
    let flush_member = flush
        .as_deref()
        .map(|f| format!(r#", "flush_ms": {f}"#))
        .unwrap_or_default();
    t.write(
        "etc/notebook-agent/config.json",
        &format!(
            r#"{{"audit": {{"endpoint_url": "{}", "region": "{}", "drain_secs": 20{flush_member}}}}}"#,
            server.endpoint(),
            moto::REGION
        ),
        0o600,
    );
    let mut cmd = Command::new(&bin);
    cmd.args(["watch", "--root", t.path().to_str().expect("utf-8")])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "warn")
        .envs(TEST_ENV.iter().copied())
        .env("AWS_REGION", moto::REGION)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child: Child = cmd.spawn().expect("spawn notebook-agent watch");
    let sm = t.join(SM);
    let until = Instant::now() + Duration::from_secs(15);
    while shipper_json(&t).is_null() {
        assert!(Instant::now() < until, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));

    // 1. Latency at a steady rate.
    let lat = sm.join("lat");
    std::fs::create_dir(&lat).expect("mkdir");
    let n = rate * secs;
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for i in 0..n {
        let due = start + every * i as u32;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        std::fs::write(lat.join(format!("{}-{i}", now_ms())), b"x").expect("write");
    }
    let written = now_ms();

    // 2. A burst.
    let burst_start = now_ms();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir burst && cd burst && seq 1 {burst} | sed 's/^/f/' | xargs touch"
        ))
        .current_dir(&sm)
        .status()
        .expect("sh");
    assert!(st.success());
    wait_acked(&t, n + burst, 600);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "watch exits 0");

    let events = read_back(server.port);
    let mut latencies = Vec::new();
    let mut burst_ingest = Vec::new();
    for (ingest, m) in &events {
        let v: Value = serde_json::from_str(m).expect("JSON");
        if v["class_uid"] != 1001 || v["activity_id"] != 1 {
            continue;
        }
        let path = v["file"]["path"].as_str().unwrap_or_default();
        if let Some((_, name)) = path.rsplit_once("/lat/") {
            let created: i64 = name
                .split('-')
                .next()
                .and_then(|c| c.parse().ok())
                .expect("name carries its creation time");
            latencies.push(ingest - created);
        } else if path.contains("/burst/f") {
            burst_ingest.push(*ingest);
        }
    }
    latencies.sort_unstable();
    assert_eq!(latencies.len() as u64, n, "every steady-rate file in moto");
    let last = burst_ingest.iter().copied().max().unwrap_or(burst_start);
    let burst_secs = (last - burst_start) as f64 / 1000.0;
    println!(
        "delivery: binary {} ({}), flush_ms {}",
        bin.display(),
        if bin.to_string_lossy().contains("/release/") {
            "release"
        } else {
            "debug"
        },
        flush.as_deref().unwrap_or("default (1000)")
    );
    println!(
        "delivery: latency file created -> PutLogEvents accepted (moto ingestionTime), {n} files at {rate}/s: p50 {} ms, p99 {} ms, max {} ms, min {} ms (targets p50 <= 2000, p99 <= 5000)",
        pct(&latencies, 0.5),
        pct(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
        latencies.first().copied().unwrap_or(0),
    );
    println!(
        "delivery: burst of {burst} files: {} create events in moto, last ingested {burst_secs:.2} s after the burst began = {:.0} events/s sustained end to end (steady phase ended {} ms before the burst)",
        burst_ingest.len(),
        burst_ingest.len() as f64 / burst_secs.max(0.001),
        burst_start - written
    );
    assert_eq!(burst_ingest.len() as u64, burst, "every burst file in moto");
}
