//! The ImageNet-shaped volume (issue 14). Run through `benches/scale.sh`, which mounts a fresh
//! journaled ext4 image at `SCALE_BENCH_DIR` and finds the peers.
//!
//! One tree of `SCALE_DIRS` × `SCALE_FILES` empty files (default 1,000 × 1,000, ImageNet's
//! shape), then on that same tree, one contender at a time:
//! - `inotifywait -r` and a watchdog `Observer` (recursive): time from start to "watches
//!   established", and VmRSS after 3 s idle;
//! - the static release binary, `notebook-agent watch --root R` (spool and tree state in the
//!   volume, CloudWatch a closed loopback port so everything stays in the spool), through these
//!   phases, each followed by "idle" (the daemon's CPU time still for 1.5 s):
//!   1. first start: start → daemon.json written (the Started record is synced), VmRSS idle;
//!   2. SIGTERM, 3 × `SCALE_CHANGES`/3 creates, deletes and rewrites made while stopped, restart:
//!      start → daemon.json, and the catch-up records counted;
//!   3. the same mix live: bytes the daemon wrote (`/proc/PID/io` write_bytes) per 1,000 changes;
//!   4. a burst of `SCALE_BURST` creates in a new directory (overflows the kernel queue);
//!   5. a rename of that directory; 6. `rm -r` of it.
//!
//!   VmHWM is read after every phase. At the end the spool is read back and every change of every
//!   phase is accounted for: each expected path exactly once (`dup` and `missing` are printed).
//!
//! Environment: `SCALE_BENCH_DIR` (required), `SCALE_BENCH_BIN` (required), `SCALE_BENCH_PY` (a
//! Python with watchdog; its row is skipped, and says so, when unset), `SCALE_DIRS`,
//! `SCALE_FILES`, `SCALE_CHANGES` (default 3,000), `SCALE_BURST` (default 100,000).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashMap;
use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use notebook_agent::audit::daemon::{self, DaemonReport};
use notebook_agent::audit::spool::{self, SpoolOptions};
use serde::Deserialize;

type Res<T> = Result<T, Box<dyn Error>>;

const SM: &str = "home/ec2-user/SageMaker";
/// `/proc/PID/stat` counts in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
const TICKS_PER_S: f64 = 100.0;
const BENCH_CONFIG: &str = r#"{"audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1, "log_stream": "bench/audit", "region": "us-east-1", "spool_max_bytes": 4294967296}}"#;
const TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "x"),
    ("AWS_SECRET_ACCESS_KEY", "x"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
    ("LC_ALL", "C"),
];
const WATCHDOG: &str = r#"
import sys, time
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer
o = Observer()
o.schedule(FileSystemEventHandler(), sys.argv[1], recursive=True)
o.start()
print("READY", flush=True)
time.sleep(3600)
"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
        .unwrap_or(default)
}

fn mem_kb(pid: u32) -> Res<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Res<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or(name.to_string())?;
        Ok(line.split_whitespace().nth(1).ok_or("value")?.parse()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn cpu_ticks(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &s[s.rfind(')').ok_or("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn write_bytes(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let line = s
        .lines()
        .find(|l| l.starts_with("write_bytes:"))
        .ok_or("io")?;
    Ok(line.split_whitespace().nth(1).ok_or("value")?.parse()?)
}

/// Waits until the daemon's CPU time has not moved for 1.5 s; returns how long that took.
fn wait_idle(pid: u32) -> Res<f64> {
    let start = Instant::now();
    let mut last = cpu_ticks(pid)?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = cpu_ticks(pid)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= Duration::from_millis(1500) {
            return Ok((since - start).as_secs_f64());
        }
        if start.elapsed() > Duration::from_secs(900) {
            return Err("daemon did not go idle within 900 s".into());
        }
    }
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

fn build_tree(sm: &Path, dirs: usize, files: usize) -> Res<PathBuf> {
    let top = sm.join("imagenet");
    for d in 0..dirs {
        let dir = top.join(format!("n{d:05}"));
        std::fs::create_dir_all(&dir)?;
        for f in 0..files {
            std::fs::File::create(dir.join(format!("img{f:05}.jpg")))?;
        }
    }
    Ok(top)
}

/// Start a peer, wait for its "ready" line on `stderr` or `stdout`; (seconds, VmRSS after 3 s).
fn peer(mut cmd: Command, ready: &str, on_stderr: bool) -> Res<(f64, u64)> {
    let t0 = Instant::now();
    if on_stderr {
        cmd.stderr(Stdio::piped()).stdout(Stdio::null());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    }
    let mut child = cmd.stdin(Stdio::null()).spawn()?;
    let out: Box<dyn std::io::Read + Send> = if on_stderr {
        Box::new(child.stderr.take().ok_or("stderr")?)
    } else {
        Box::new(child.stdout.take().ok_or("stdout")?)
    };
    let ready = ready.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.contains(&ready) {
                let _ = tx.send(());
            }
        }
    });
    let res = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(()) => {
            let setup = t0.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_secs(3));
            Ok((setup, mem_kb(child.id())?.0))
        }
        Err(_) => Err("peer not ready within 300 s".into()),
    };
    let _ = child.kill();
    let _ = child.wait();
    res
}

struct Agent {
    child: Child,
    pid: u32,
    state: PathBuf,
}

fn start_agent(bin: &Path, root: &Path) -> Res<(Agent, f64)> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("daemon.stderr"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["watch", "--root"])
        .arg(root)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in TEST_ENV {
        cmd.env(k, v);
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let state = root.join("var/lib/notebook-agent");
    loop {
        if DaemonReport::load(&state).is_some_and(|r| r.pid == pid) {
            break;
        }
        if let Some(st) = child.try_wait()? {
            return Err(format!("daemon exited early: {st}").into());
        }
        if t0.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            return Err("daemon did not start within 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let setup = t0.elapsed().as_secs_f64();
    Ok((Agent { child, pid, state }, setup))
}

fn stop_agent(mut a: Agent) -> Res<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let t0 = Instant::now();
    loop {
        if let Some(st) = a.child.try_wait()? {
            if st.code() != Some(0) {
                return Err(format!("daemon exit status after SIGTERM: {st}").into());
            }
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = a.child.kill();
            return Err("daemon did not stop within 120 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The changes of phases 2 and 3: in each of `n / 3` directories one new file, one deleted and
/// one rewritten. Returns (path, activity_id) expected for each.
fn mixed_changes(top: &Path, n: usize, tag: &str, first_file: usize) -> Res<Vec<(PathBuf, u32)>> {
    let mut expect = Vec::new();
    for d in 0..n / 3 {
        let dir = top.join(format!("n{d:05}"));
        let new = dir.join(format!("{tag}-new.jpg"));
        std::fs::write(&new, b"new")?;
        expect.push((new, 1));
        let gone = dir.join(format!("img{:05}.jpg", first_file));
        std::fs::remove_file(&gone)?;
        expect.push((gone, 4));
        let rewritten = dir.join(format!("img{:05}.jpg", first_file + 1));
        std::fs::write(&rewritten, b"rewritten")?;
        expect.push((rewritten, 3));
    }
    Ok(expect)
}

#[derive(Deserialize)]
struct Rec {
    class_uid: u32,
    activity_id: u32,
    #[serde(default)]
    file: Option<FileRef>,
    /// A rename's new path (OCSF 1001: `file` is the old one).
    #[serde(default)]
    file_result: Option<FileRef>,
}

#[derive(Deserialize)]
struct FileRef {
    path: String,
}

/// (path, activity_id) → how many records say so.
type Seen = HashMap<(String, u32), u32>;

/// Every file record in the spool, and the number of agent records.
fn tally_spool(spool_dir: &Path) -> Res<(Seen, u64)> {
    let (w, mut reader, _) = spool::open(spool_dir, SpoolOptions::default())?;
    let mut seen = Seen::new();
    let mut agent = 0;
    let mut after = 0;
    loop {
        let batch = reader.read_from(after, 65_536, 256 << 20)?;
        if batch.is_empty() {
            break;
        }
        for rec in &batch {
            let r: Rec = serde_json::from_slice(&rec.payload)?;
            let file = if r.activity_id == 5 {
                r.file_result
            } else {
                r.file
            };
            match (r.class_uid, file) {
                (1001, Some(f)) => *seen.entry((f.path, r.activity_id)).or_default() += 1,
                _ => agent += 1,
            }
            after = rec.seq;
        }
    }
    drop(w);
    Ok((seen, agent))
}

/// (expected, found exactly once, duplicated, missing) for one phase.
fn account(
    seen: &HashMap<(String, u32), u32>,
    expect: &[(PathBuf, u32)],
) -> (usize, usize, usize, usize) {
    let (mut once, mut dup, mut missing) = (0, 0, 0);
    for (p, a) in expect {
        match seen.get(&(p.to_string_lossy().into_owned(), *a)) {
            Some(1) => once += 1,
            Some(_) => dup += 1,
            None => missing += 1,
        }
    }
    (expect.len(), once, dup, missing)
}

fn main() -> Res<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let Ok(base) = std::env::var("SCALE_BENCH_DIR") else {
        println!("scale: SCALE_BENCH_DIR is not set; run benches/scale.sh");
        return Ok(());
    };
    let bin =
        PathBuf::from(std::env::var("SCALE_BENCH_BIN").map_err(|_| "SCALE_BENCH_BIN is not set")?);
    let (dirs, files) = (
        env_usize("SCALE_DIRS", 1000),
        env_usize("SCALE_FILES", 1000),
    );
    let (changes, burst) = (
        env_usize("SCALE_CHANGES", 3000),
        env_usize("SCALE_BURST", 100_000),
    );
    let root = PathBuf::from(&base).join("root");
    let sm = root.join(SM);
    for (rel, text) in [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nec2-user:x:1000:1000::/home/ec2-user:/bin/bash\n",
        ),
        ("etc/group", "root:x:0:\nec2-user:x:1000:\n"),
        ("etc/notebook-agent/config.json", BENCH_CONFIG),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().ok_or("parent")?)?;
        std::fs::write(p, text)?;
    }
    std::fs::create_dir_all(&sm)?;
    let t0 = Instant::now();
    let top = build_tree(&sm, dirs, files)?;
    println!(
        "tree: {dirs} dirs × {files} files built in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    // Drop the page cache's dentries so every contender starts from the same cold-ish state.
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");

    let mut rows = Vec::new();
    // Without -q, inotifywait says "Watches established." on stderr once every watch is set.
    let mut iw = Command::new("inotifywait");
    iw.args([
        "-r",
        "-m",
        "-e",
        "create,delete,modify,move,attrib,close_write",
    ])
    .arg(&top);
    match peer(iw, "Watches established", true) {
        Ok((s, rss)) => rows.push(format!(
            "| inotifywait -r | setup {s:.2} s | idle VmRSS {} |",
            mb(rss)
        )),
        Err(e) => rows.push(format!("| inotifywait -r | failed: {e} | |")),
    }
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
    match std::env::var("SCALE_BENCH_PY") {
        Ok(py) => {
            let mut c = Command::new(py);
            c.args(["-c", WATCHDOG]).arg(&top);
            match peer(c, "READY", false) {
                Ok((s, rss)) => rows.push(format!(
                    "| watchdog Observer | setup {s:.2} s | idle VmRSS {} |",
                    mb(rss)
                )),
                Err(e) => rows.push(format!("| watchdog Observer | failed: {e} | |")),
            }
        }
        Err(_) => rows.push("| watchdog Observer | not run: SCALE_BENCH_PY unset | |".into()),
    }
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");

    // 1. First start.
    let (a, setup) = start_agent(&bin, &root)?;
    let idle = wait_idle(a.pid)?;
    std::thread::sleep(Duration::from_secs(3));
    let (rss, hwm) = mem_kb(a.pid)?;
    rows.push(format!(
        "| notebook-agent: first start | setup {setup:.2} s (+{idle:.1} s to idle) | idle VmRSS {} | VmHWM {} |",
        mb(rss),
        mb(hwm)
    ));
    stop_agent(a)?;

    // 2. Changes while stopped, restart with catch-up.
    let mut expect_all = Vec::new();
    let down = mixed_changes(&top, changes, "down", 0)?;
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "2");
    let (a, setup) = start_agent(&bin, &root)?;
    let idle = wait_idle(a.pid)?;
    let (rss, hwm) = mem_kb(a.pid)?;
    rows.push(format!(
        "| notebook-agent: restart after {} changes | setup {setup:.2} s (+{idle:.1} s to idle) | VmRSS {} | VmHWM {} |",
        down.len(),
        mb(rss),
        mb(hwm)
    ));
    expect_all.push(("catch-up", down));

    // 3. The same mix live: bytes written per 1,000 changes.
    let (w0, c0) = (write_bytes(a.pid)?, cpu_ticks(a.pid)?);
    let live = mixed_changes(&top, changes, "live", 2)?;
    let idle = wait_idle(a.pid)?;
    let (w1, c1) = (write_bytes(a.pid)?, cpu_ticks(a.pid)?);
    rows.push(format!(
        "| notebook-agent: {} live changes | written {:.0} kB per 1,000 changes | CPU {:.2} s | idle after {idle:.1} s |",
        live.len(),
        (w1 - w0) as f64 / 1024.0 / (live.len() as f64 / 1000.0),
        (c1 - c0) as f64 / TICKS_PER_S
    ));
    expect_all.push(("live", live));

    // 4. Burst, 5. rename, 6. rm -r.
    let bdir = sm.join("burst");
    std::fs::create_dir(&bdir)?;
    let c0 = cpu_ticks(a.pid)?;
    let mut burst_expect = vec![(bdir.clone(), 1)];
    for i in 0..burst {
        let p = bdir.join(format!("f{i:06}"));
        std::fs::File::create(&p)?;
        burst_expect.push((p, 1));
    }
    let idle = wait_idle(a.pid)?;
    let (rss, hwm) = mem_kb(a.pid)?;
    rows.push(format!(
        "| notebook-agent: burst of {burst} creates | CPU {:.2} s, idle {idle:.1} s after | VmRSS {} | VmHWM {} |",
        (cpu_ticks(a.pid)? - c0) as f64 / TICKS_PER_S,
        mb(rss),
        mb(hwm)
    ));
    expect_all.push(("burst", burst_expect));
    let moved = sm.join("burst-renamed");
    std::fs::rename(&bdir, &moved)?;
    let idle = wait_idle(a.pid)?;
    let (_, hwm) = mem_kb(a.pid)?;
    rows.push(format!(
        "| notebook-agent: rename of that directory | idle {idle:.1} s after | | VmHWM {} |",
        mb(hwm)
    ));
    expect_all.push(("rename", vec![(moved.clone(), 5)]));
    let c0 = cpu_ticks(a.pid)?;
    let st = Command::new("rm").arg("-r").arg(&moved).status()?;
    if !st.success() {
        return Err(format!("rm -r: {st}").into());
    }
    let idle = wait_idle(a.pid)?;
    let (rss, hwm) = mem_kb(a.pid)?;
    rows.push(format!(
        "| notebook-agent: rm -r of {burst} files | CPU {:.2} s, idle {idle:.1} s after | VmRSS {} | VmHWM {} |",
        (cpu_ticks(a.pid)? - c0) as f64 / TICKS_PER_S,
        mb(rss),
        mb(hwm)
    ));
    let rm_expect: Vec<(PathBuf, u32)> = std::iter::once((moved.clone(), 4))
        .chain((0..burst).map(|i| (moved.join(format!("f{i:06}")), 4)))
        .collect();
    expect_all.push(("rm -r", rm_expect));
    let report = DaemonReport::load(&a.state);
    stop_agent(a)?;

    // State on disk.
    let spool_dir = sm.join(daemon::DEFAULT_SPOOL_NAME);
    for e in std::fs::read_dir(&spool_dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("watch.") {
            let len = e.metadata()?.len();
            rows.push(format!(
                "| state file {name} | {len} bytes | {:.1} bytes per entry ({} entries) | |",
                len as f64 / (dirs * files + dirs) as f64,
                dirs * files + dirs
            ));
        }
    }
    let (seen, agent) = tally_spool(&spool_dir)?;
    for (phase, expect) in &expect_all {
        let (n, once, dup, missing) = account(&seen, expect);
        rows.push(format!("| accounted: {phase} | {n} expected | {once} exactly once | {dup} duplicated, {missing} missing |"));
    }
    rows.push(format!(
        "| spool | {} file records | {agent} agent records | |",
        seen.values().sum::<u32>()
    ));
    if let Some(r) = report {
        rows.push(format!(
            "| daemon.json | watches {} | events written {} | dropped {} |",
            r.watches, r.events_written, r.events_dropped
        ));
    }
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
