//! Delivery end to end (issue 5's acceptance): the real `notebook-agent watch` binary in spool
//! mode on a temp root, real inotify and files, shipping through the real SDK to a real
//! moto_server (optionally behind the fault-layer fixture). Nothing leaves 127.0.0.1: the daemon
//! gets env credentials only, IMDS is off, `audit.endpoint_url` is always loopback.
//!
//! - 100,000 events: every spool record arrives once (read back paginated with the SDK, in-process);
//! - outage: moto killed for 60 s while files keep coming, restarted on the same port: everything
//!   not acknowledged before the kill arrives, in order;
//! - crash: `kill -9` mid-burst, restart: everything arrives, duplicates ≤ one batch, identical;
//! - fault layer: throttling and 5xx storms: all delivered, backoff in the log, no
//!   DescribeLogStreams;
//! - unreachable endpoint, bad credentials, KMS errors: one clear log line each, counters in
//!   `shipper.json`, no crash loop, exit 0 on SIGTERM.
//!
//! Each test prints its counts (`cargo test --test delivery -- --nocapture`).

mod common;
#[path = "shipper_fixtures/fault_proxy.rs"]
mod fault_proxy;
#[path = "shipper_fixtures/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TempRoot, TEST_ENV};
use fault_proxy::{Fault, FaultProxy};
use moto::Moto;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use notebook_agent::audit::spool::{self, SpoolOptions};
use serde_json::Value;

const SM: &str = "home/ec2-user/SageMaker";
const GROUP: &str = "/aws/sagemaker/NotebookInstances";
/// `{notebook}/audit` for the temp root's resource-metadata.json (`test-nb`).
const STREAM: &str = "test-nb/audit";
/// The state directory inside the temp root.
const STATE: &str = "var/lib/notebook-agent";

/// Writes the agent config: shipping to `endpoint` (loopback) in moto's region, flush 200 ms,
/// plus `extra` members of `audit` (e.g. `"drain_secs": 2`).
fn configure(t: &TempRoot, endpoint: &str, extra: &str) {
    assert!(
        endpoint.starts_with("http://127.0.0.1:"),
        "loopback only: {endpoint}"
    );
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    t.write(
        "etc/notebook-agent/config.json",
        &format!(
            r#"{{"audit": {{"endpoint_url": "{endpoint}", "region": "{}", "flush_ms": 200{extra}}}}}"#,
            moto::REGION
        ),
        0o600,
    );
}

/// The binary running `watch` (spool mode), its stderr (the log) collected line by line.
struct Daemon {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    done: bool,
}

impl Drop for Daemon {
    /// A failing test must not leave a daemon behind.
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    /// `rust_log`: the `RUST_LOG` filter (the daemon logs to stderr where journald is absent).
    fn start(t: &TempRoot, rust_log: &str) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_notebook-agent"));
        cmd.args(["watch", "--root", t.path().to_str().expect("utf-8")])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in TEST_ENV {
            cmd.env(k, v);
        }
        // The SDK's chain reads these; a proxy must never be picked up from the outside.
        cmd.env("AWS_REGION", moto::REGION)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("NO_PROXY", "127.0.0.1,localhost");
        let mut child = cmd.spawn().expect("spawn notebook-agent watch");
        let err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        Self {
            child,
            log,
            done: false,
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("lock").clone()
    }

    fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.log
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| f(l))
            .count()
    }

    /// SIGTERM; returns the exit code (the drain is bounded by `audit.drain_secs`).
    fn stop(mut self) -> (Option<i32>, Vec<String>) {
        kill(self.pid(), Signal::SIGTERM).expect("SIGTERM");
        let until = Instant::now() + Duration::from_secs(40);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < until, "no exit 40 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.done = true;
        std::thread::sleep(Duration::from_millis(100)); // the log reader's last lines
        (status.code(), self.log())
    }

    fn kill_9(mut self) -> Vec<String> {
        kill(self.pid(), Signal::SIGKILL).expect("SIGKILL");
        let _ = self.child.wait();
        self.done = true;
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

fn json_file(path: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn shipper_json(t: &TempRoot) -> Option<Value> {
    json_file(&t.join(&format!("{STATE}/shipper.json")))
}

/// Waits (up to `secs`) until `shipper.json` satisfies `f`; returns it.
fn wait_shipper(t: &TempRoot, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = shipper_json(t);
        if let Some(s) = s.as_ref().filter(|s| f(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < until,
            "shipper.json: not {what} within {secs} s: {s:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The spool is empty (everything acknowledged) and `daemon.json` reports the last ack.
fn all_acked(t: &TempRoot, at_least: u64) -> bool {
    let (Some(s), Some(d)) = (
        shipper_json(t),
        json_file(&t.join(&format!("{STATE}/daemon.json"))),
    ) else {
        return false;
    };
    let acked = s["acked_seq"].as_u64().unwrap_or(0);
    acked >= at_least
        && s["spool_bytes"].as_u64() == Some(0)
        && d["events_written"].as_u64().is_some_and(|w| w <= acked)
}

/// Waits (up to `secs`) until everything spooled so far, at least `at_least`, is acknowledged.
fn wait_all_acked(t: &TempRoot, secs: u64, at_least: u64) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut next_print = Instant::now();
    while !all_acked(t, at_least) {
        let s = shipper_json(t).unwrap_or_default();
        assert!(
            Instant::now() < until,
            "not everything (≥ {at_least}) acknowledged within {secs} s: {s:#}"
        );
        if Instant::now() >= next_print {
            println!(
                "  … acked {} shipped {} retried {} unshipped bytes {}",
                s["acked_seq"], s["shipped"], s["retried"], s["spool_bytes"]
            );
            next_print = Instant::now() + Duration::from_secs(10);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the spool says after the daemon stopped: the last sequence number it ever wrote (they
/// run 1..=last without gaps) and the records it still holds (acknowledged segments are deleted,
/// so only the tail is left to compare byte for byte).
struct SpoolView {
    last_seq: u64,
    acked_seq: u64,
    retained: Vec<(u64, String)>,
}

fn read_spool(t: &TempRoot) -> SpoolView {
    let dir = t.join(&format!("{SM}/.notebook-agent"));
    let (_w, mut reader, report) = spool::open(&dir, SpoolOptions::default()).expect("spool");
    let mut retained = Vec::new();
    let mut after = 0;
    loop {
        let batch = reader.read_from(after, 10_000, 64 << 20).expect("read");
        let Some(last) = batch.last() else { break };
        after = last.seq;
        retained.extend(
            batch
                .into_iter()
                .map(|r| (r.seq, String::from_utf8(r.payload).expect("UTF-8"))),
        );
    }
    SpoolView {
        last_seq: report.next_seq - 1,
        acked_seq: report.acked_seq,
        retained,
    }
}

/// Every event in moto's stream (the SDK in-process, bounded), or empty while the group or stream
/// does not exist yet.
fn moto_events(port: u16) -> Vec<(i64, String)> {
    moto::try_read_back(port, GROUP, STREAM).unwrap_or_default()
}

fn uid_and_seq(message: &str) -> (String, u64) {
    let v: Value = serde_json::from_str(message).expect("message is JSON");
    (
        v["metadata"]["uid"].as_str().expect("uid").to_string(),
        v["metadata"]["sequence"].as_u64().expect("sequence"),
    )
}

/// How the read-back compares with the spool.
#[derive(Debug, Default)]
struct Tally {
    /// Sequences expected (`from..=last`).
    expected: u64,
    cloudwatch: usize,
    distinct: usize,
    /// Extra copies beyond the first.
    duplicates: usize,
    /// The sequences that have more than one copy.
    duplicated_seqs: Vec<u64>,
    /// Spool records still on disk compared byte for byte.
    compared: usize,
}

/// `events` hold every sequence `from..=spool.last_seq` and nothing else; an extra copy is
/// byte-identical to the first (same `metadata.uid` and `metadata.sequence`); the records the
/// spool still holds arrived unaltered.
fn tally(spool: &SpoolView, from: u64, events: &[(i64, String)]) -> Tally {
    let mut by_seq: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (_, m) in events {
        by_seq.entry(uid_and_seq(m).1).or_default().push(m);
    }
    let range = from..=spool.last_seq;
    let missing: Vec<u64> = range.clone().filter(|s| !by_seq.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "{} of {from}..={} missing in CloudWatch (first {:?}, last {:?})",
        missing.len(),
        spool.last_seq,
        missing.first(),
        missing.last()
    );
    let unknown: Vec<u64> = by_seq
        .keys()
        .copied()
        .filter(|s| !range.contains(s))
        .collect();
    assert!(
        unknown.is_empty(),
        "{} sequences in CloudWatch outside {from}..={} (first {:?}, last {:?})",
        unknown.len(),
        spool.last_seq,
        unknown.first(),
        unknown.last()
    );
    let mut t = Tally {
        expected: spool.last_seq + 1 - from,
        cloudwatch: events.len(),
        distinct: by_seq.len(),
        ..Tally::default()
    };
    for (seq, copies) in &by_seq {
        assert!(
            copies.iter().all(|c| c == &copies[0]),
            "copies of record {seq} differ: {copies:#?}"
        );
        if copies.len() > 1 {
            t.duplicates += copies.len() - 1;
            t.duplicated_seqs.push(*seq);
        }
    }
    for (seq, payload) in spool.retained.iter().filter(|(s, _)| range.contains(s)) {
        assert_eq!(by_seq[seq][0], payload, "record {seq} arrived altered");
        t.compared += 1;
    }
    t
}

/// `seqs` is exactly `from..=to`, in order, each once.
fn assert_run(seqs: &[u64], from: u64, to: u64, what: &str) {
    let bad = seqs
        .iter()
        .zip(from..)
        .position(|(s, want)| *s != want)
        .map(|i| (i, seqs[i]));
    assert!(
        bad.is_none() && seqs.len() as u64 == to + 1 - from,
        "{what}: not {from}..={to} in order, each once: {} events, first wrong at {bad:?}",
        seqs.len()
    );
}

/// Creates `n` empty files `<prefix>1 … <prefix>n` in `dir` (a fresh subdirectory of SageMaker).
fn burst(t: &TempRoot, dir: &str, prefix: &str, n: u64) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir {dir} && cd {dir} && seq 1 {n} | sed 's/^/{prefix}/' | xargs touch"
        ))
        .current_dir(t.join(SM))
        .status()
        .expect("sh");
    assert!(st.success(), "burst of {n} files");
}

/// Creates a file every `every` in `dir` until stopped; returns how many.
struct Trickle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Trickle {
    fn start(dir: PathBuf, every: Duration) -> Self {
        std::fs::create_dir_all(&dir).expect("mkdir");
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut next = Instant::now();
            while !s.load(Ordering::SeqCst) {
                n += 1;
                std::fs::write(dir.join(format!("t{n}")), n.to_string()).expect("write");
                next += every;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            n
        });
        Self { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("trickle")
    }
}

fn started(t: &TempRoot) {
    wait_shipper(t, 15, "written", |_| true);
}

#[test]
fn one_hundred_thousand_events_arrive_once_each() {
    let moto = Moto::start();
    let t = TempRoot::amazon_linux();
    configure(&t, &moto.endpoint(), r#""drain_secs": 20"#);
    let d = Daemon::start(&t, "info");
    started(&t);
    let t0 = Instant::now();
    let n = 100_000;
    burst(&t, "burst", "f", n);
    println!(
        "100k: {n} files created in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    wait_all_acked(&t, 240, n);
    let shipped_in = t0.elapsed();
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", log.join("\n"));

    let spool = read_spool(&t);
    assert!(
        spool.last_seq > n,
        "Started + {n} creates spooled: {}",
        spool.last_seq
    );
    let r0 = Instant::now();
    let events = moto::read_back(moto.port, GROUP, STREAM);
    let read_in = r0.elapsed();
    assert_eq!(spool.acked_seq, spool.last_seq, "all acknowledged");
    let tally = tally(&spool, 1, &events);
    // Every file's create event, once.
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    for (_, m) in &events {
        let v: Value = serde_json::from_str(m).expect("JSON");
        if v["class_uid"] == 1001 && v["activity_id"] == 1 {
            if let Some(name) = v["file"]["path"]
                .as_str()
                .and_then(|p| p.rsplit_once("/burst/"))
                .map(|(_, f)| f.to_string())
            {
                *files.entry(name).or_default() += 1;
            }
        }
    }
    let once = files.values().filter(|c| **c == 1).count();
    println!(
        "100k: spool 1..={} ({} still on disk, compared byte for byte); CloudWatch {} events, {} distinct sequences, {} duplicates; {} burst files with a create event in CloudWatch ({once} exactly once); all acked {:.1} s after the burst began; read back (SDK, in-process) in {:.1} s",
        spool.last_seq,
        tally.compared,
        tally.cloudwatch,
        tally.distinct,
        tally.duplicates,
        files.len(),
        shipped_in.as_secs_f64(),
        read_in.as_secs_f64()
    );
    assert_eq!(
        (files.len() as u64, once as u64),
        (n, n),
        "every file's create event, once"
    );
    // CloudWatch returns a stream ordered by event time, then by arrival: (time, sequence) must
    // be sorted. The sequence alone need not be: a Rescan record is stamped when the rescan ends,
    // later than the changes it found and spooled after it.
    let keys: Vec<(i64, u64)> = events
        .iter()
        .zip(moto::sequences(&events))
        .map(|((ts, _), seq)| (*ts, seq))
        .collect();
    if let Some(i) = keys.windows(2).position(|w| w[0] > w[1]) {
        panic!(
            "not in (time, sequence) order at {i}:\n{}\n{}",
            events[i].1,
            events[i + 1].1
        );
    }
    let inversions = keys.windows(2).filter(|w| w[0].1 > w[1].1).count();
    println!("100k: {inversions} places where CloudWatch's time order differs from the sequence");
    assert_eq!(
        tally.duplicates, 0,
        "no retry happened, so no duplicate: {:?}",
        tally.duplicated_seqs
    );
}

#[test]
fn a_60_second_outage_loses_nothing_and_keeps_the_order() {
    let mut moto = Moto::start();
    let port = moto.port;
    let t = TempRoot::amazon_linux();
    configure(&t, &moto.endpoint(), r#""drain_secs": 20"#);
    let d = Daemon::start(&t, "info");
    started(&t);
    let trickle = Trickle::start(t.join(&format!("{SM}/trickle")), Duration::from_millis(50));
    let until = Instant::now() + Duration::from_secs(20);
    while moto_events(port).len() < 20 {
        assert!(Instant::now() < until, "nothing arrived in moto");
        std::thread::sleep(Duration::from_millis(300));
    }
    // Freeze the daemon so that what moto holds is exactly what it acknowledged (or will, from a
    // reply already in its socket), read that, kill moto, let the daemon go on.
    kill(d.pid(), Signal::SIGSTOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(300));
    let before = moto_events(port);
    moto.kill();
    kill(d.pid(), Signal::SIGCONT).expect("SIGCONT");
    let before_seqs = moto::sequences(&before);
    let last_before = *before_seqs.last().expect("some before the outage");
    assert_run(&before_seqs, 1, last_before, "before the outage");
    println!("outage: moto killed with 1..={last_before} delivered; down for 60 s");
    let outage = Instant::now();
    std::thread::sleep(Duration::from_secs(60));
    let retried_during = shipper_json(&t).map(|s| s["retried"].clone());
    let moto = Moto::start_on(port);
    let restarted = Instant::now();
    // Keep producing for a moment after the restart, then wait for the backlog to clear (the
    // backoff may be at its 30 s cap).
    std::thread::sleep(Duration::from_secs(3));
    let created = trickle.stop();
    wait_all_acked(&t, 90, last_before + 1);
    let caught_up = restarted.elapsed();
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", log.join("\n"));

    let spool = read_spool(&t);
    let after = moto::read_back(moto.port, GROUP, STREAM);
    let after_seqs = moto::sequences(&after);
    let last = spool.last_seq;
    let first_after = *after_seqs.first().expect("events after the restart");
    // The new moto starts empty: it must hold everything from the first unacknowledged record on.
    assert!(
        first_after <= last_before + 1,
        "a gap between {last_before} (old moto) and {first_after} (new moto)"
    );
    assert_run(&after_seqs, first_after, last, "after the outage");
    let overlap = (last_before + 1).saturating_sub(first_after);
    let tally = tally(&spool, first_after, &after);
    let conn_warnings = log
        .iter()
        .filter(|l| l.contains("CloudWatch Logs call failed"))
        .count();
    let backoffs = log.iter().filter(|l| l.contains("Backing off.")).count();
    println!(
        "outage: {created} files created at 20/s; spool 1..={last}; old moto had 1..={last_before}, new moto {}..={last} ({} events, {overlap} re-sent across the kill); retried during the outage {}; {conn_warnings} warning line(s), {backoffs} backoff lines; caught up {:.1} s after moto came back ({:.1} s after the kill)",
        first_after,
        tally.cloudwatch,
        retried_during.unwrap_or_default(),
        caught_up.as_secs_f64(),
        outage.elapsed().as_secs_f64()
    );
    assert!(last > last_before + 1000, "events kept coming: {last}");
    assert!(
        conn_warnings <= 3,
        "one warning per distinct cause, not one per retry: {conn_warnings}"
    );
}

/// The runtime the fault proxy (`shipper_fixtures::fault_proxy`) serves from while a test waits.
fn fault_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn kill_9_mid_flight_then_restart_delivers_everything_with_at_most_one_batch_twice() {
    let moto = Moto::start();
    let rt = fault_runtime();
    // The fault layer forwards everything; one PutLogEvents has its answer held back, and the
    // daemon is killed then: moto has that batch, the spool has not acknowledged it.
    let proxy = rt.block_on(FaultProxy::start(moto.port));
    let t = TempRoot::amazon_linux();
    configure(&t, &proxy.endpoint(), r#""drain_secs": 20"#);
    // Each accepted batch logs at debug.
    let log_filter = "info,notebook_agent::audit::shipper=debug";
    let d = Daemon::start(&t, log_filter);
    started(&t);
    burst(&t, "burst", "f", 30_000);
    let accepted = |l: &str| l.contains("Batch accepted.");
    let until = Instant::now() + Duration::from_secs(60);
    while d.count(accepted) < 3 {
        assert!(Instant::now() < until, "3 batches accepted within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    proxy.push(Fault::HoldReply(Duration::from_secs(10)), 1);
    let until = Instant::now() + Duration::from_secs(30);
    while !proxy.log().iter().any(|(_, what)| what == "held") {
        assert!(Instant::now() < until, "no PutLogEvents held");
        std::thread::sleep(Duration::from_millis(5));
    }
    let log1 = d.kill_9();
    let batches: Vec<&String> = log1.iter().filter(|l| accepted(l)).collect();
    println!(
        "crash: kill -9 with a delivered batch unanswered, after {} accepted batches, the last: {}",
        batches.len(),
        batches.last().map(|s| s.as_str()).unwrap_or_default()
    );
    let d = Daemon::start(&t, log_filter);
    wait_all_acked(&t, 180, 30_000);
    let (code, log2) = d.stop();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", log2.join("\n"));

    let spool = read_spool(&t);
    let events = moto::read_back(moto.port, GROUP, STREAM);
    assert_eq!(spool.acked_seq, spool.last_seq, "all acknowledged");
    let tally = tally(&spool, 1, &events);
    // The batch sizes the shipper logged: a duplicate run can be no longer than the largest.
    let sizes: Vec<usize> = log1
        .iter()
        .chain(&log2)
        .filter(|l| accepted(l))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("events="))
                .and_then(|v| v.parse().ok())
        })
        .collect();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let dup_bytes: usize = events
        .iter()
        .filter(|(_, m)| {
            tally
                .duplicated_seqs
                .binary_search(&uid_and_seq(m).1)
                .is_ok()
        })
        .map(|(_, m)| m.len() + 26)
        .sum::<usize>()
        / 2;
    println!(
        "crash: spool 1..={} ({} compared byte for byte), CloudWatch {} events, {} distinct, {} duplicates (sequences {:?}, identical copies, {dup_bytes} bytes); largest batch {largest} events; fault layer: {} PutLogEvents, {} DescribeLogStreams",
        spool.last_seq,
        tally.compared,
        tally.cloudwatch,
        tally.distinct,
        tally.duplicates,
        tally.duplicated_seqs.first().zip(tally.duplicated_seqs.last()),
        proxy.count("PutLogEvents"),
        proxy.count("DescribeLogStreams"),
    );
    assert_eq!(tally.distinct as u64, tally.expected, "everything arrived");
    assert!(tally.duplicates > 0, "the held batch was delivered twice");
    assert!(
        tally.duplicates <= largest.min(10_000) && dup_bytes <= 1_048_576,
        "duplicates ({}, {dup_bytes} bytes) within one batch ({largest})",
        tally.duplicates
    );
    // One contiguous run, each re-sent once: the batch in flight at the kill.
    if let (Some(a), Some(b)) = (tally.duplicated_seqs.first(), tally.duplicated_seqs.last()) {
        assert_run(
            &tally.duplicated_seqs,
            *a,
            *b,
            "the duplicates: one contiguous batch",
        );
        assert_eq!(
            tally.duplicates,
            tally.duplicated_seqs.len(),
            "sent twice at most"
        );
    }
}

#[test]
fn throttling_and_5xx_storms_deliver_everything_with_backoff_and_no_describe_calls() {
    let moto = Moto::start();
    let rt = fault_runtime();
    let proxy = rt.block_on(FaultProxy::start(moto.port));
    let t = TempRoot::amazon_linux();
    configure(&t, &proxy.endpoint(), r#""drain_secs": 20"#);
    let d = Daemon::start(&t, "info");
    started(&t);
    let trickle = Trickle::start(t.join(&format!("{SM}/trickle")), Duration::from_millis(20));
    wait_shipper(&t, 20, "shipping", |s| s["shipped"].as_u64() > Some(0));
    // Storm 1: throttling. Storm 2: 5xx of every kind and a reset connection.
    let storms: [&[(Fault, usize)]; 2] = [
        &[(Fault::Throttle, 5)],
        &[
            (Fault::Unavailable, 2),
            (Fault::Internal, 2),
            (Fault::Reset, 1),
        ],
    ];
    let mut injected = 0;
    let recovered = |l: &str| l.contains("CloudWatch Logs accepts events again.");
    for storm in storms {
        let before = d.count(recovered);
        for (f, n) in storm {
            proxy.push(*f, *n);
            injected += n;
        }
        let until = Instant::now() + Duration::from_secs(60);
        while d.count(recovered) <= before {
            assert!(
                Instant::now() < until,
                "no recovery within 60 s:\n{}",
                d.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A few clean batches between storms.
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_secs(1));
    let created = trickle.stop();
    wait_all_acked(&t, 60, created);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", log.join("\n"));

    let spool = read_spool(&t);
    let events = moto::read_back(moto.port, GROUP, STREAM);
    let tally = tally(&spool, 1, &events);
    let backoffs: Vec<&String> = log.iter().filter(|l| l.contains("Backing off.")).collect();
    let has = |code: &str| backoffs.iter().any(|l| l.contains(code));
    let shipper = shipper_json(&t).expect("shipper.json");
    let ops: Vec<(&str, u64)> = [
        "PutLogEvents",
        "CreateLogGroup",
        "CreateLogStream",
        "DescribeLogStreams",
        "DescribeLogGroups",
    ]
    .into_iter()
    .map(|op| (op, proxy.count(op)))
    .collect();
    println!(
        "faults: {injected} faults injected; {} backoff log lines; spool 1..={}, CloudWatch {} events, {} duplicates; calls at the fault layer {ops:?}; shipper.json retried {}",
        backoffs.len(),
        spool.last_seq,
        tally.cloudwatch,
        tally.duplicates,
        shipper["retried"]
    );
    for l in backoffs.iter().take(3) {
        println!("  {l}");
    }
    assert_eq!(tally.distinct as u64, tally.expected, "everything arrived");
    assert_eq!(tally.duplicates, 0, "a fault answer is never a delivery");
    assert!(
        backoffs.len() >= injected,
        "one backoff per fault: {backoffs:#?}"
    );
    assert!(has("code=ThrottlingException"), "{backoffs:#?}");
    assert!(has("code=ServiceUnavailableException"), "{backoffs:#?}");
    assert!(has("code=http_500"), "{backoffs:#?}");
    assert_eq!(
        proxy.count("DescribeLogStreams"),
        0,
        "no DescribeLogStreams"
    );
    assert_eq!(
        (
            proxy.count("CreateLogGroup"),
            proxy.count("CreateLogStream")
        ),
        (1, 2),
        "the group created once; CreateLogStream first finds no group, then succeeds"
    );
    assert!(
        shipper["retried"].as_u64() >= Some(injected as u64),
        "{shipper:#}"
    );
}

/// One failure scenario: a daemon that cannot ship, for the reason `expect` names.
struct Failing {
    name: &'static str,
    t: TempRoot,
    d: Daemon,
    /// In the one clear log line and in `shipper.json`'s `last_error`.
    expect: &'static str,
}

#[test]
fn unreachable_endpoint_bad_credentials_and_kms_errors_log_once_count_and_keep_running() {
    let moto = Moto::start();
    let rt = fault_runtime();
    let proxy_for = |op: Option<&str>, status: u16, code: &'static str| {
        let p = rt.block_on(FaultProxy::start(moto.port));
        p.set_sticky(op, Some(Fault::Error { status, code }));
        p
    };
    let closed = moto::free_port();
    let creds = proxy_for(None, 403, "UnrecognizedClientException");
    let denied = proxy_for(None, 400, "AccessDeniedException");
    let kms_put = proxy_for(Some("PutLogEvents"), 400, "KMSInvalidStateException");
    // A group created with a KMS key moto cannot use: PutLogEvents and CreateLogStream find no
    // group (moto), CreateLogGroup fails (fault layer).
    let kms_create = proxy_for(Some("CreateLogGroup"), 400, "KMSNotFoundException");
    let scenarios = [
        (
            "unreachable",
            format!("http://127.0.0.1:{closed}"),
            "",
            "cannot reach CloudWatch Logs",
        ),
        (
            "bad credentials",
            creds.endpoint(),
            "",
            "UnrecognizedClientException",
        ),
        (
            "access denied",
            denied.endpoint(),
            "",
            "AccessDeniedException",
        ),
        (
            "KMS on PutLogEvents",
            kms_put.endpoint(),
            "",
            "KMSInvalidStateException",
        ),
        (
            "KMS on CreateLogGroup",
            kms_create.endpoint(),
            r#""kms_key_id": "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000""#,
            "KMSNotFoundException",
        ),
    ];
    let mut running: Vec<Failing> = Vec::new();
    for (name, endpoint, extra, expect) in scenarios {
        let t = TempRoot::amazon_linux();
        let extra = if extra.is_empty() {
            r#""drain_secs": 2"#.to_string()
        } else {
            format!(r#""drain_secs": 2, {extra}"#)
        };
        configure(&t, &endpoint, &extra);
        t.write(
            "etc/systemd/system/notebook-agent.service",
            "[Service]\n",
            0o644,
        );
        let d = Daemon::start(&t, "info");
        running.push(Failing { name, t, d, expect });
    }
    // Something to ship in each.
    std::thread::sleep(Duration::from_millis(500));
    for f in &running {
        for i in 0..20 {
            std::fs::write(f.t.join(&format!("{SM}/nb{i}.ipynb")), "{}").expect("write");
        }
    }
    // The counters show the error within a few seconds (the file is rewritten every 5 s).
    let t0 = Instant::now();
    let shows = |f: &Failing| {
        shipper_json(&f.t).is_some_and(|s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(f.expect))
        })
    };
    while t0.elapsed() < Duration::from_secs(12) && !running.iter().all(shows) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for f in &running {
        let s = shipper_json(&f.t).expect("shipper.json");
        assert!(
            shows(f),
            "{}: shipper.json does not show {:?} after {:.1} s: {s:#}\n{}",
            f.name,
            f.expect,
            t0.elapsed().as_secs_f64(),
            f.d.log().join("\n")
        );
        assert_eq!(s["shipped"], 0, "{}: {s:#}", f.name);
        assert!(s["retried"].as_u64() >= Some(1), "{}: {s:#}", f.name);
    }
    // ~5 s of failing, then: alive, the log.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(t0.elapsed()));
    let root_arg = |f: &Failing| f.t.path().to_str().expect("utf-8").to_string();
    for f in &mut running {
        assert!(f.d.alive(), "{}: the daemon keeps running", f.name);
        let s = common::agent(&["status", "--root", &root_arg(f)]);
        let out = common::stdout(&s);
        let row = out
            .lines()
            .find(|l| l.starts_with("Shipping"))
            .unwrap_or_default()
            .to_string();
        let sj = shipper_json(&f.t).expect("shipper.json");
        let log = f.d.log();
        let problem =
            |l: &&String| (l.contains(" WARN ") || l.contains("ERROR")) && l.contains(f.expect);
        let clear: Vec<&String> = log.iter().filter(problem).collect();
        let warn_or_error = log
            .iter()
            .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
            .count();
        let backoffs = log.iter().filter(|l| l.contains("Backing off.")).count();
        println!(
            "failure [{}] after {:.1} s: {} clear line(s), {warn_or_error} warn/error lines in all, {backoffs} backoff lines; shipper.json retried {} last_error {}; status: {row}",
            f.name,
            t0.elapsed().as_secs_f64(),
            clear.len(),
            sj["retried"],
            sj["last_error"]
        );
        if let Some(l) = clear.first() {
            println!("  {l}");
        }
        assert_eq!(
            clear.len(),
            1,
            "{}: one clear line:\n{}",
            f.name,
            log.join("\n")
        );
        assert!(
            warn_or_error <= 2,
            "{}: no line per retry:\n{}",
            f.name,
            log.join("\n")
        );
        assert!(
            row.contains("no PutLogEvents accepted yet"),
            "{}: {out}",
            f.name
        );
    }
    for f in running {
        let name = f.name;
        let (code, log) = f.d.stop();
        assert_eq!(
            code,
            Some(0),
            "{name}: exit 0 on SIGTERM:\n{}",
            log.join("\n")
        );
    }
    for (p, name) in [
        (&creds, "creds"),
        (&denied, "denied"),
        (&kms_put, "kms_put"),
        (&kms_create, "kms_create"),
    ] {
        assert_eq!(p.count("DescribeLogStreams"), 0, "{name}");
    }
    println!(
        "failure: CreateLogGroup calls behind the KMS fault {}, PutLogEvents {}",
        kms_create.count("CreateLogGroup"),
        kms_create.count("PutLogEvents")
    );
}

/// `status --json` on the temp root: the parsed object and the exit code.
fn status_json(t: &TempRoot) -> (Value, Option<i32>) {
    let out = common::agent(&[
        "status",
        "--json",
        "--root",
        t.path().to_str().expect("utf-8"),
    ]);
    let doc: Value = serde_json::from_str(&common::stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "status --json printed no JSON ({e}): {}\n{}",
            common::stdout(&out),
            common::stderr(&out)
        )
    });
    (doc, out.status.code())
}

/// The audit row `id` (`audit_daemon`, `shipping`) of a status object: (status, evidence).
fn audit_row(doc: &Value, id: &str) -> (String, String) {
    let row = doc["audit"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["control"] == id))
        .unwrap_or_else(|| panic!("no audit row {id}: {doc:#}"));
    (
        row["status"].as_str().unwrap_or_default().to_string(),
        row["evidence"].as_str().unwrap_or_default().to_string(),
    )
}

/// Polls `status --json` (up to `secs`) until `f` holds; returns that object.
fn wait_status(t: &TempRoot, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let (doc, _) = status_json(t);
        if f(&doc) {
            return doc;
        }
        assert!(
            Instant::now() < until,
            "status: not {what} within {secs} s: {:#}",
            doc["audit"]
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn problems(doc: &Value) -> Vec<String> {
    doc["audit_problems"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Regression (issue 13, "degraded states reported as PASS" and "audit gaps"): with CloudWatch
/// answering AccessDenied, the 1 MiB spool fills and drops events. `status` must say FAIL for
/// both rows (Shipping: the operator must act; Audit daemon: events are being dropped), PASS
/// again only once the "Spool full" record is in CloudWatch, with the loss still named; and every
/// file whose change was dropped is in CloudWatch by its path (a Rescan record).
#[test]
fn status_fails_while_shipping_is_denied_and_the_spool_drops_then_passes_once_the_loss_is_on_record(
) {
    let moto = Moto::start();
    let rt = fault_runtime();
    let proxy = rt.block_on(FaultProxy::start(moto.port));
    proxy.set_sticky(
        None,
        Some(Fault::Error {
            status: 400,
            code: "AccessDeniedException",
        }),
    );
    let t = TempRoot::amazon_linux();
    configure(
        &t,
        &proxy.endpoint(),
        r#""drain_secs": 5, "spool_max_bytes": 1048576"#,
    );
    let d = Daemon::start(&t, "info");
    started(&t);
    wait_shipper(&t, 30, "waiting for the operator", |s| {
        s["waiting_for_operator"]["code"] == "AccessDeniedException"
    });
    let doc = wait_status(&t, 20, "Shipping FAIL (denied)", |doc| {
        audit_row(doc, "shipping").0 == "FAIL"
    });
    let (_, shipping) = audit_row(&doc, "shipping");
    assert!(
        shipping.contains("AccessDeniedException") && shipping.contains("refuses the agent"),
        "{shipping}"
    );
    assert_eq!(doc["audit_healthy"], false);
    assert!(
        problems(&doc).contains(&"waiting_for_operator".to_string()),
        "{doc:#}"
    );

    // Fill the spool: ~700 bytes a record, 1 MiB holds ~1,500.
    burst(&t, "flood", "f", 4000);
    let doc = wait_status(&t, 60, "Audit daemon FAIL (dropping)", |doc| {
        audit_row(doc, "audit_daemon").1.contains("DROPPING")
    });
    let (daemon_status, daemon_evidence) = audit_row(&doc, "audit_daemon");
    println!("spool full: {daemon_status} {daemon_evidence}");
    assert_eq!(daemon_status, "FAIL", "{daemon_evidence}");
    assert!(
        problems(&doc).contains(&"spool_dropping".to_string()),
        "{doc:#}"
    );

    // The operator fixes the role: everything drains, the loss is recorded and shipped.
    proxy.set_sticky(None, None);
    let doc = wait_status(&t, 150, "both rows PASS again", |doc| {
        audit_row(doc, "audit_daemon").0 == "PASS" && audit_row(doc, "shipping").0 == "PASS"
    });
    let (_, daemon_evidence) = audit_row(&doc, "audit_daemon");
    println!("recovered: {daemon_evidence}");
    assert!(
        daemon_evidence.contains("dropped") && daemon_evidence.contains("recorded"),
        "the loss stays named: {daemon_evidence}"
    );
    assert!(problems(&doc).is_empty(), "{doc:#}");
    assert_eq!(doc["audit_healthy"], true);
    let dropped = json_file(&t.join(&format!("{STATE}/daemon.json"))).expect("daemon.json")
        ["events_dropped"]
        .as_u64()
        .expect("events_dropped");
    // The replay of the dropped paths is paced by the room in the spool: let it finish.
    let until = Instant::now() + Duration::from_secs(90);
    while json_file(&t.join(&format!("{STATE}/daemon.json")))
        .is_none_or(|d| d["dropped_paths_pending"].as_u64() != Some(0))
    {
        assert!(
            Instant::now() < until,
            "dropped paths not all recorded within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_all_acked(&t, 60, 1);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", log.join("\n"));

    // Every flood file is in CloudWatch by its path: live, or recorded again after the drop.
    let events = moto::read_back(moto.port, GROUP, STREAM);
    let mut named = std::collections::BTreeSet::new();
    let mut rescans = 0;
    let mut drop_records = 0;
    for (_, m) in &events {
        let v: Value = serde_json::from_str(m).expect("JSON");
        if v["class_uid"] == 1008 && m.contains("Spool full") {
            drop_records += 1;
        }
        if let Some(name) = v["file"]["path"]
            .as_str()
            .and_then(|p| p.rsplit_once("/flood/"))
            .map(|(_, f)| f.to_string())
        {
            if v["unmapped"]["source"] == "rescan" {
                rescans += 1;
            }
            named.insert(name);
        }
    }
    println!(
        "spool full: {dropped} events dropped; CloudWatch has {} of 4000 flood files by path ({rescans} recorded again after the drop), {drop_records} 'Spool full' record(s)",
        named.len()
    );
    assert!(dropped > 0, "the spool dropped events");
    assert!(drop_records >= 1, "the loss is on record");
    assert!(rescans > 0, "dropped changes recorded again by path");
    assert_eq!(named.len(), 4000, "every flood file named in CloudWatch");
}

/// Regression (issue 13): a batch CloudWatch refused (dead-lettered) left Shipping PASS with
/// "742 rejected"; its Delivery record said "InvalidParameterException: InvalidParameterException: …".
#[test]
fn a_dead_lettered_batch_fails_shipping_until_the_operator_clears_it() {
    let moto = Moto::start();
    let rt = fault_runtime();
    let proxy = rt.block_on(FaultProxy::start(moto.port));
    let t = TempRoot::amazon_linux();
    configure(&t, &proxy.endpoint(), r#""drain_secs": 5"#);
    let d = Daemon::start(&t, "info");
    started(&t);
    wait_shipper(&t, 30, "shipping", |s| s["shipped"].as_u64() > Some(0));
    proxy.push(
        Fault::Error {
            status: 400,
            code: "InvalidParameterException",
        },
        1,
    );
    for i in 0..20 {
        std::fs::write(t.join(&format!("{SM}/nb{i}.ipynb")), "{}").expect("write");
    }
    wait_shipper(&t, 30, "a rejected batch", |s| {
        s["rejected"].as_u64() > Some(0)
    });
    let doc = wait_status(&t, 20, "Shipping FAIL (dead letter)", |doc| {
        audit_row(doc, "shipping").0 == "FAIL"
    });
    let (_, evidence) = audit_row(&doc, "shipping");
    println!("dead letter: {evidence}");
    assert!(
        evidence.contains("shipper-rejected.jsonl") && evidence.contains("audit clear-rejected"),
        "{evidence}"
    );
    assert!(
        problems(&doc).contains(&"dead_letter".to_string()),
        "{doc:#}"
    );

    let out = common::agent(&[
        "audit",
        "clear-rejected",
        "--root",
        t.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", common::stderr(&out));
    println!("{}", common::stdout(&out).trim());
    let (doc, _) = status_json(&t);
    assert_eq!(audit_row(&doc, "shipping").0, "PASS", "{:#}", doc["audit"]);
    let kept = std::fs::read_dir(t.join(STATE))
        .expect("ls state")
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("shipper-rejected.cleared-")
        });
    assert!(kept, "the cleared records are kept, not deleted");
    wait_all_acked(&t, 60, 1);
    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "exit 0 on SIGTERM:\n{}", log.join("\n"));
    let delivery: Vec<String> = moto::read_back(moto.port, GROUP, STREAM)
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| m.contains("batch_rejected") || m.contains("InvalidParameterException"))
        .collect();
    assert!(!delivery.is_empty(), "the rejection is on record");
    for m in &delivery {
        assert!(
            // (The fault layer's own message is "InvalidParameterException (fault layer)".)
            !m.contains("InvalidParameterException: InvalidParameterException: "),
            "the code repeated: {m}"
        );
    }
}

/// Regression (issue 13): without /opt/ml/metadata/resource-metadata.json shipping was off even
/// with a fixed stream name and `audit.region`, and `status` still said the audit was healthy.
#[test]
fn shipping_works_from_config_alone_and_when_it_cannot_start_status_says_why() {
    let moto = Moto::start();
    // A plain VM: no notebook identity, a fixed stream.
    let t = TempRoot::amazon_linux();
    std::fs::remove_file(t.join("opt/ml/metadata/resource-metadata.json")).expect("rm metadata");
    configure(
        &t,
        &moto.endpoint(),
        r#""drain_secs": 5, "log_stream": "lab-vm/audit""#,
    );
    let d = Daemon::start(&t, "info");
    started(&t);
    std::fs::write(t.join(&format!("{SM}/plain-vm.txt")), "x").expect("write");
    let until = Instant::now() + Duration::from_secs(30);
    while !moto::try_read_back(moto.port, GROUP, "lab-vm/audit")
        .unwrap_or_default()
        .iter()
        .any(|(_, m)| m.contains("plain-vm.txt"))
    {
        assert!(
            Instant::now() < until,
            "nothing in lab-vm/audit within 30 s:\n{}",
            d.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));

    // The default stream name needs the identity: shipping cannot start, status says FAIL, why.
    let t = TempRoot::amazon_linux();
    std::fs::remove_file(t.join("opt/ml/metadata/resource-metadata.json")).expect("rm metadata");
    configure(&t, &moto.endpoint(), r#""drain_secs": 5"#);
    let d = Daemon::start(&t, "info");
    let doc = wait_status(&t, 20, "Shipping FAIL (not started)", |doc| {
        audit_row(doc, "shipping").0 == "FAIL"
    });
    let (_, evidence) = audit_row(&doc, "shipping");
    println!("not started: {evidence}");
    assert!(
        evidence.contains("NOT SHIPPING") && evidence.contains("resource-metadata.json"),
        "{evidence}"
    );
    assert!(
        problems(&doc).contains(&"shipping_not_started".to_string()),
        "{doc:#}"
    );
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
}

/// Regression (issue 13): the watch count in daemon.json (and status) stayed at its start value.
#[test]
fn the_watch_count_follows_the_kernel() {
    let moto = Moto::start();
    let t = TempRoot::amazon_linux();
    configure(&t, &moto.endpoint(), r#""drain_secs": 2"#);
    let d = Daemon::start(&t, "info");
    started(&t);
    let daemon_json = || json_file(&t.join(&format!("{STATE}/daemon.json"))).unwrap_or_default();
    let at_start = daemon_json()["watches"].as_u64().expect("watches");
    for i in 0..3 {
        std::fs::create_dir(t.join(&format!("{SM}/dir{i}"))).expect("mkdir");
    }
    // fanotify's filesystem mark needs no watches: the count stays 0 and the source says why.
    if daemon_json()["source"].as_str() == Some("fanotify") {
        std::thread::sleep(Duration::from_secs(6));
        assert_eq!(
            daemon_json()["watches"].as_u64(),
            Some(0),
            "{:#}",
            daemon_json()
        );
        println!(
            "source fanotify: no watches to count ({})",
            daemon_json()["source_reason"]
        );
        let (code, _) = d.stop();
        assert_eq!(code, Some(0));
        return;
    }
    // daemon.json is rewritten every 5 s.
    let until = Instant::now() + Duration::from_secs(20);
    while daemon_json()["watches"].as_u64() != Some(at_start + 3) {
        assert!(
            Instant::now() < until,
            "watches not {} within 20 s: {:#}",
            at_start + 3,
            daemon_json()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "watches: {at_start} at start, {} after 3 mkdirs",
        at_start + 3
    );
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
}

/// Regression (issue 13): a SIGTERM while a PutLogEvents call was in flight to an endpoint that
/// never answers waited for the SDK's 30 s read timeout before the drain window even began
/// (`drain_secs` 20 took 47 s, past the unit's TimeoutStopSec=30). The stop is bounded by
/// `drain_secs` plus a small margin, whatever is in flight; the spool keeps the batch.
#[test]
fn sigterm_during_a_call_that_never_answers_exits_within_drain_secs() {
    // An endpoint that accepts connections and reads requests but never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let requests = Arc::new(AtomicBool::new(false));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            seen.store(true, Ordering::SeqCst);
            held.push(s); // never answered, never closed
        }
    });
    let t = TempRoot::amazon_linux();
    let drain_secs = 2;
    configure(
        &t,
        &format!("http://127.0.0.1:{port}"),
        &format!(r#""drain_secs": {drain_secs}"#),
    );
    let d = Daemon::start(&t, "info");
    started(&t);
    std::fs::write(t.join(&format!("{SM}/in-flight.txt")), "x").expect("write");
    let until = Instant::now() + Duration::from_secs(20);
    while !requests.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < until,
            "no call reached the endpoint in 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let (code, log) = d.stop();
    let took = t0.elapsed();
    println!(
        "stop with a call in flight: exit {code:?} {:.1} s after SIGTERM (drain_secs {drain_secs})",
        took.as_secs_f64()
    );
    assert_eq!(code, Some(0), "{}", log.join("\n"));
    // drain_secs + the shipper's stop margin (5 s) + the daemon's own stop: far below the SDK's
    // 30 s read timeout that held it before.
    assert!(
        took < Duration::from_secs(drain_secs + 10),
        "exit {:.1} s after SIGTERM with drain_secs {drain_secs}:\n{}",
        took.as_secs_f64(),
        log.join("\n")
    );
    let spool = read_spool(&t);
    assert!(
        spool
            .retained
            .iter()
            .any(|(_, m)| m.contains("in-flight.txt")),
        "the spool keeps the batch that was in flight"
    );
}
