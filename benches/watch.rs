//! The watch daemon end to end. Run through `benches/watch.sh`, which sets `WATCH_BENCH_DIR` to a
//! fresh journaled ext4 image (DESIGN.md: the root fs here has no journal); without it a tempdir
//! is used and the figures are not representative.
//!
//! 1. Throughput, file change → fsynced spool: `daemon::run` in this process on a temp root shaped
//!    like an Amazon Linux notebook; N small files are created in `SageMaker/` by one thread as
//!    fast as it can while this thread reads the spool (the reader only sees *synced* records)
//!    until all N Create records are there. events/s = N / (first create → last Create synced).
//! 2. RSS and 3. CPU of the real binary (`WATCH_BENCH_BIN`, the static release build):
//!    `notebook-agent watch --root R` over a tree of 1,000 files (then a burst of 50,000) and one of
//!    10,000 dirs / 100,000 files (then a burst of 100,000): VmRSS after 3 s idle; then the burst of
//!    creates and an `rm -r` of them: VmHWM, and utime+stime
//!    (`/proc/PID/stat`) per phase. SIGTERM, exit status 0 required; the spool is then read back
//!    to account for every file.
//!
//! Environment: `WATCH_BENCH_DIR`, `WATCH_BENCH_N` (comma list, default `100000,10000`),
//! `WATCH_BENCH_REPS` (default 3), `WATCH_BENCH_BIN` (the RSS/CPU part runs only when set),
//! `WATCH_BENCH_PARTS` (`throughput,rss`; default both).
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::error::Error;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use notebook_agent::audit::daemon::{self, DaemonReport, Options};
use notebook_agent::audit::spool::{self, SpoolOptions, SpoolReader};
use notebook_agent::host::Root;
use serde::Deserialize;

type Res<T> = Result<T, Box<dyn Error>>;

const SM: &str = "home/ec2-user/SageMaker";
const CONTENT: &[u8] = b"a,b,c\n1,2,3\n";
/// A tree for the RSS part: `top` directories of `sub` directories with `files` files each, and a
/// burst of `burst` creates followed by an `rm -r` of them.
#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    top: usize,
    sub: usize,
    files: usize,
    burst: usize,
}

const SHAPES: [Shape; 2] = [
    // The issue's figures: a notebook of 1,000 files, and the 50,000-file burst of tests/watch.rs.
    Shape {
        name: "1,000 files (10 dirs × 100)",
        top: 10,
        sub: 0,
        files: 100,
        burst: 50_000,
    },
    // The watch-setup tree: 1 + 100 + 100*100 directories, 10 files in each leaf.
    Shape {
        name: "10,101 dirs / 100,000 files",
        top: 100,
        sub: 100,
        files: 10,
        burst: 100_000,
    },
];
/// `/proc/PID/stat` counts in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
const TICKS_PER_S: f64 = 100.0;
const TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "x"),
    ("AWS_SECRET_ACCESS_KEY", "x"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
    ("LC_ALL", "C"),
];

/// The two fields needed to classify a record (serde skips the rest without building it).
#[derive(Deserialize)]
struct Head {
    class_uid: u32,
    activity_id: u32,
}

const BENCH_CONFIG: &str = r#"{"audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}}"#;

/// A temp root shaped like `tests/common` `TempRoot::amazon_linux()` (the parts the daemon reads).
fn make_root(base: &Path) -> Res<tempfile::TempDir> {
    let t = tempfile::Builder::new().prefix("root.").tempdir_in(base)?;
    let w = |rel: &str, text: &str, mode: u32| -> Res<()> {
        let p = t.path().join(rel);
        std::fs::create_dir_all(p.parent().ok_or("parent")?)?;
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    w(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n\
         ec2-user:x:1000:1000:EC2 Default User:/home/ec2-user:/bin/bash\n",
        0o644,
    )?;
    w(
        "etc/group",
        "root:x:0:\nwheel:x:10:ec2-user\ndocker:x:992:ec2-user\nec2-user:x:1000:\nadm:x:4:\n",
        0o644,
    )?;
    w(
        "opt/ml/metadata/resource-metadata.json",
        r#"{"ResourceArn":"arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/test-nb","ResourceName":"test-nb"}"#,
        0o644,
    )?;
    // CloudWatch is a closed loopback port: the shipper never resolves or contacts anything else
    // (benchmarks talk only to 127.0.0.1), and the stop drain is 1 s.
    w("etc/notebook-agent/config.json", BENCH_CONFIG, 0o600)?;
    std::fs::create_dir_all(t.path().join(SM))?;
    std::fs::create_dir_all(t.path().join("tmp"))?;
    std::fs::create_dir_all(t.path().join("run"))?;
    Ok(t)
}

/// Records read back from the spool, by class (1001 File System Activity) and activity.
#[derive(Default, Debug, Clone, Copy)]
struct Tally {
    records: u64,
    creates: u64,
    deletes: u64,
    /// activity 3: contents written.
    updates: u64,
    /// Renames, attribute changes.
    other_file: u64,
    agent: u64,
}

/// Reads every newly synced record after `*after` into `t`; returns how many.
fn drain(r: &mut SpoolReader, after: &mut u64, t: &mut Tally) -> Res<usize> {
    let batch = r.read_from(*after, 65_536, 256 << 20)?;
    for rec in &batch {
        let h: Head = serde_json::from_slice(&rec.payload)?;
        t.records += 1;
        match (h.class_uid, h.activity_id) {
            (1001, 1) => t.creates += 1,
            (1001, 3) => t.updates += 1,
            (1001, 4) => t.deletes += 1,
            (1001, _) => t.other_file += 1,
            _ => t.agent += 1,
        }
        *after = rec.seq;
    }
    Ok(batch.len())
}

struct Throughput {
    create_s: f64,
    total_s: f64,
    lag_s: f64,
    tally: Tally,
    report: DaemonReport,
    cpu_s: f64,
}

/// utime + stime of this whole process (all threads), seconds.
fn process_cpu_s() -> f64 {
    cpu_ticks(std::process::id()).map_or(f64::NAN, |t| t as f64 / TICKS_PER_S)
}

fn throughput(base: &Path, n: usize) -> Res<Throughput> {
    let t = make_root(base)?;
    let root = Root::new(t.path())?;
    let cfg = notebook_agent::config::parse(BENCH_CONFIG, Path::new("bench.json"))?;
    let opts = Options::from_config(&root, &cfg, false);
    let sm = t.path().join(SM);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<SpoolReader>();
    let stop2 = Arc::clone(&stop);
    let daemon = std::thread::Builder::new()
        .name("daemon".into())
        .spawn(move || {
            daemon::run(&root, opts, stop2, move |r| {
                let _ = tx.send(r);
                None
            })
        })?;
    let mut reader = rx.recv_timeout(Duration::from_secs(30))?;
    // Wait for the Started record: the watches are in place.
    let mut after = 0;
    let mut tally = Tally::default();
    let until = Instant::now() + Duration::from_secs(30);
    while tally.agent == 0 {
        if Instant::now() > until {
            return Err("no Started record within 30 s".into());
        }
        if drain(&mut reader, &mut after, &mut tally)? == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let base_tally = tally;
    let cpu0 = process_cpu_s();

    let start = Instant::now();
    let dir = sm.clone();
    let creator = std::thread::Builder::new().name("creator".into()).spawn(
        move || -> std::io::Result<Duration> {
            let t0 = Instant::now();
            for i in 0..n {
                std::fs::write(dir.join(format!("f{i:06}.csv")), CONTENT)?;
            }
            Ok(t0.elapsed())
        },
    )?;
    let deadline = start + Duration::from_secs(300);
    while tally.creates < n as u64 {
        if Instant::now() > deadline {
            break;
        }
        if drain(&mut reader, &mut after, &mut tally)? == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let total = start.elapsed();
    let create = creator.join().map_err(|_| "creator panicked")??;
    let cpu1 = process_cpu_s();
    stop.store(true, Ordering::SeqCst);
    let report = daemon.join().map_err(|_| "daemon panicked")??;
    drain(&mut reader, &mut after, &mut tally)?;
    if tally.creates < n as u64 {
        return Err(format!(
            "only {} of {n} Create records synced within 300 s: {tally:?}, {report:?}",
            tally.creates
        )
        .into());
    }
    let tally = Tally {
        records: tally.records - base_tally.records,
        agent: tally.agent - base_tally.agent,
        ..tally
    };
    Ok(Throughput {
        create_s: create.as_secs_f64(),
        total_s: total.as_secs_f64(),
        lag_s: (total.saturating_sub(create)).as_secs_f64(),
        tally,
        report,
        cpu_s: cpu1 - cpu0,
    })
}

// ---------------------------------------------------------------------------------------------
// The real binary

/// (VmRSS kB, VmHWM kB).
fn mem_kb(pid: u32) -> Res<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Res<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("{name} missing"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .ok_or("value")?
            .parse::<u64>()?)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime in clock ticks, all threads.
fn cpu_ticks(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = &s[s.rfind(')').ok_or("stat")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Waits until the daemon's CPU time has not moved for `quiet` (it has caught up); returns the
/// time that took.
fn wait_idle(pid: u32, quiet: Duration, limit: Duration) -> Res<Duration> {
    let start = Instant::now();
    let mut last = cpu_ticks(pid)?;
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = cpu_ticks(pid)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return Ok(since - start);
        }
        if start.elapsed() > limit {
            return Err("daemon did not go idle".into());
        }
    }
}

struct Rss {
    setup_s: f64,
    idle_rss_kb: u64,
    idle_hwm_kb: u64,
    create_s: f64,
    create_cpu_s: f64,
    create_catchup_s: f64,
    rm_s: f64,
    rm_cpu_s: f64,
    rm_catchup_s: f64,
    burst_rss_kb: u64,
    burst_hwm_kb: u64,
    stop_s: f64,
    tally: Tally,
    report: Option<DaemonReport>,
}

fn rss(base: &Path, bin: &Path, shape: Shape) -> Res<Rss> {
    let t = make_root(base)?;
    let sm = t.path().join(SM);
    for a in 0..shape.top {
        let leaves: Vec<PathBuf> = if shape.sub == 0 {
            vec![sm.join(format!("project{a:03}"))]
        } else {
            (0..shape.sub)
                .map(|b| {
                    sm.join(format!("project{a:03}"))
                        .join(format!("data{b:03}"))
                })
                .collect()
        };
        for d in leaves {
            std::fs::create_dir_all(&d)?;
            for f in 0..shape.files {
                std::fs::write(d.join(format!("part-{f:02}.csv")), CONTENT)?;
            }
        }
    }
    let stderr = std::fs::File::create(t.path().join("daemon.stderr"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["watch", "--root"])
        .arg(t.path())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    for (k, v) in TEST_ENV {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id();
    let state = t.path().join("var/lib/notebook-agent");
    let result = (|| -> Res<Rss> {
        // Started: the first daemon.json is written after the watches are set and the Started
        // record is synced.
        loop {
            if let Some(r) = DaemonReport::load(&state) {
                if r.pid == pid {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err("daemon did not start within 60 s".into());
            }
            if let Some(st) = child.try_wait()? {
                return Err(format!("daemon exited early: {st}").into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let setup_s = started.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(3));
        let (idle_rss_kb, idle_hwm_kb) = mem_kb(pid)?;

        let c0 = cpu_ticks(pid)?;
        let t0 = Instant::now();
        let burst = sm.join("burst");
        std::fs::create_dir(&burst)?;
        for i in 0..shape.burst {
            std::fs::write(burst.join(format!("f{i:06}")), CONTENT)?;
        }
        let create_s = t0.elapsed().as_secs_f64();
        let create_catchup_s =
            wait_idle(pid, Duration::from_millis(1500), Duration::from_secs(300))?.as_secs_f64();
        let c1 = cpu_ticks(pid)?;

        let t1 = Instant::now();
        let st = Command::new("rm").arg("-r").arg(&burst).status()?;
        if !st.success() {
            return Err(format!("rm -r: {st}").into());
        }
        let rm_s = t1.elapsed().as_secs_f64();
        let rm_catchup_s =
            wait_idle(pid, Duration::from_millis(1500), Duration::from_secs(300))?.as_secs_f64();
        let c2 = cpu_ticks(pid)?;
        let (burst_rss_kb, burst_hwm_kb) = mem_kb(pid)?;

        let t2 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = child.wait()?;
        let stop_s = t2.elapsed().as_secs_f64();
        if status.code() != Some(0) {
            return Err(format!("daemon exit status after SIGTERM: {status}").into());
        }
        Ok(Rss {
            setup_s,
            idle_rss_kb,
            idle_hwm_kb,
            create_s,
            create_cpu_s: (c1 - c0) as f64 / TICKS_PER_S,
            create_catchup_s,
            rm_s,
            rm_cpu_s: (c2 - c1) as f64 / TICKS_PER_S,
            rm_catchup_s,
            burst_rss_kb,
            burst_hwm_kb,
            stop_s,
            tally: Tally::default(),
            report: None,
        })
    })();
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let err = std::fs::read_to_string(t.path().join("daemon.stderr")).unwrap_or_default();
        eprintln!("daemon stderr:\n{err}");
    }
    let mut r = result?;
    // Account for the burst from the spool the daemon left.
    let spool_dir = t.path().join(SM).join(daemon::DEFAULT_SPOOL_NAME);
    let (w, mut reader, _) = spool::open(&spool_dir, SpoolOptions::default())?;
    let mut after = 0;
    while drain(&mut reader, &mut after, &mut r.tally)? > 0 {}
    drop(w);
    r.report = DaemonReport::load(&state);
    let err = std::fs::read_to_string(t.path().join("daemon.stderr")).unwrap_or_default();
    if !err.trim().is_empty() {
        println!("  daemon stderr: {}", err.trim().replace('\n', "\n  "));
    }
    Ok(r)
}

// ---------------------------------------------------------------------------------------------

/// "median (min–max)".
fn stat(mut v: Vec<f64>, digits: usize) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!(
        "{med:.digits$} ({:.digits$}–{:.digits$})",
        v[0],
        v[v.len() - 1]
    )
}

/// The RSS/CPU rows of one tree shape, `reps` runs of the binary.
fn rss_rows(base: &Path, bin: &Path, shape: Shape, reps: usize, rows: &mut Vec<String>) -> Res<()> {
    let (name, burst) = (shape.name, shape.burst);
    let mut v: Vec<Rss> = Vec::new();
    for rep in 1..=reps {
        let r = rss(base, bin, shape)?;
        println!(
            "binary {name} rep {rep}: start+watch setup {:.2} s; idle VmRSS {} kB (VmHWM {} kB); burst: {burst} creates in {:.2} s, daemon idle {:.2} s later, CPU {:.2} s; rm -r in {:.2} s, idle {:.2} s later, CPU {:.2} s; after burst VmRSS {} kB VmHWM {} kB; SIGTERM -> exit 0 in {:.2} s; spool {:?}; report {:?}",
            r.setup_s, r.idle_rss_kb, r.idle_hwm_kb, r.create_s, r.create_catchup_s,
            r.create_cpu_s, r.rm_s, r.rm_catchup_s, r.rm_cpu_s, r.burst_rss_kb,
            r.burst_hwm_kb, r.stop_s, r.tally,
            r.report.as_ref().map(|x| (x.events_written, x.events_dropped, x.rescans, x.lost_notifications)),
        );
        v.push(r);
    }
    let mb = |kb: u64| kb as f64 / 1024.0;
    let col = |f: &dyn Fn(&Rss) -> f64, d: usize| stat(v.iter().map(f).collect(), d);
    rows.push(format!(
        "| {name}: RSS idle (release binary) | VmRSS {} MB | VmHWM (startup) {} MB | start → watching {} s |",
        col(&|r| mb(r.idle_rss_kb), 1),
        col(&|r| mb(r.idle_hwm_kb), 1),
        col(&|r| r.setup_s, 2)
    ));
    rows.push(format!(
        "| {name}: peak RSS, burst of {burst} creates + `rm -r` | VmHWM {} MB | VmRSS after {} MB |",
        col(&|r| mb(r.burst_hwm_kb), 1),
        col(&|r| mb(r.burst_rss_kb), 1)
    ));
    rows.push(format!(
        "| {name}: daemon CPU (utime+stime), {burst} creates | {} s | creation took {} s; daemon idle {} s after |",
        col(&|r| r.create_cpu_s, 2),
        col(&|r| r.create_s, 2),
        col(&|r| r.create_catchup_s, 2)
    ));
    rows.push(format!(
        "| {name}: daemon CPU (utime+stime), `rm -r` of them | {} s | rm took {} s; daemon idle {} s after |",
        col(&|r| r.rm_cpu_s, 2),
        col(&|r| r.rm_s, 2),
        col(&|r| r.rm_catchup_s, 2)
    ));
    rows.push(format!(
        "| {name}: SIGTERM → exit 0 | {} s |",
        col(&|r| r.stop_s, 2)
    ));
    Ok(())
}

fn main() -> Res<()> {
    let _tmp;
    let base = match std::env::var_os("WATCH_BENCH_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            _tmp = tempfile::tempdir()?;
            println!(
                "WATCH_BENCH_DIR not set: using {} (not representative)",
                _tmp.path().display()
            );
            _tmp.path().to_path_buf()
        }
    };
    let reps: usize = std::env::var("WATCH_BENCH_REPS")
        .ok()
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(3);
    let ns: Vec<usize> = std::env::var("WATCH_BENCH_N")
        .unwrap_or_else(|_| "100000,10000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let parts = std::env::var("WATCH_BENCH_PARTS").unwrap_or_else(|_| "throughput,rss".into());
    let queued =
        std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap_or_default();
    println!(
        "base {}; fs.inotify.max_queued_events = {}; {reps} repetitions",
        base.display(),
        queued.trim()
    );

    let mut rows: Vec<String> = Vec::new();
    if parts.contains("throughput") {
        for &n in &ns {
            let mut eps = Vec::new();
            let mut create = Vec::new();
            let mut lag = Vec::new();
            let mut cpu = Vec::new();
            for rep in 1..=reps {
                let r = throughput(&base, n)?;
                println!(
                    "throughput n={n} rep {rep}: created in {:.2} s ({:.0} files/s); last Create synced {:.2} s after the first create, {:.3} s after the last -> {:.0} events/s; process CPU {:.2} s; records {:?}; daemon: written {} dropped {} rescans {} lost_notifications {}",
                    r.create_s,
                    n as f64 / r.create_s,
                    r.total_s,
                    r.lag_s,
                    n as f64 / r.total_s,
                    r.cpu_s,
                    r.tally,
                    r.report.events_written,
                    r.report.events_dropped,
                    r.report.rescans,
                    r.report.lost_notifications,
                );
                eps.push(n as f64 / r.total_s);
                create.push(r.create_s);
                lag.push(r.lag_s * 1000.0);
                cpu.push(r.cpu_s);
            }
            rows.push(format!(
                "| {n} files → fsynced spool (in-process `daemon::run`) | events/s {} | creation {} s | last record synced {} ms after the last create | process CPU {} s |",
                stat(eps, 0),
                stat(create, 2),
                stat(lag, 0),
                stat(cpu, 2)
            ));
        }
    }
    if parts.contains("rss") {
        match std::env::var_os("WATCH_BENCH_BIN") {
            None => println!("WATCH_BENCH_BIN not set: RSS/CPU part skipped"),
            Some(bin) => {
                let bin = PathBuf::from(bin);
                for shape in SHAPES {
                    rss_rows(&base, &bin, shape, reps, &mut rows)?;
                }
            }
        }
    }
    println!("\nmedian (min–max) of {reps}:");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
