//! The `notebook-agent watch` binary as the daemon tests run it, and the spool read back.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use notebook_agent::audit::spool::{self, SpoolOptions};
use serde_json::Value;

use super::{TempRoot, TEST_ENV};

/// The binary running `watch`, its stdout collected line by line.
pub struct Daemon {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub stopped: bool,
}

impl Drop for Daemon {
    /// A failing test must not leave a daemon behind.
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    pub fn start(root: &TempRoot, stdout_mode: bool) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_notebook-agent"));
        cmd.args(["watch", "--root", root.path().to_str().expect("utf-8")]);
        if stdout_mode {
            cmd.arg("--stdout");
        }
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in TEST_ENV {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn notebook-agent watch");
        let out = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line);
            }
        });
        Self {
            child,
            lines,
            stopped: false,
        }
    }

    pub fn records(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lock")
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits (up to `secs`) until a record satisfies `f`; only new lines are parsed each time.
    pub fn wait_for_within(&self, secs: u64, what: &str, f: impl Fn(&Value) -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut seen = 0;
        while Instant::now() < until {
            let new: Vec<String> = {
                let lines = self.lines.lock().expect("lock");
                let new = lines[seen..].to_vec();
                seen = lines.len();
                new
            };
            if new
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .any(|r| f(&r))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let n = self.lines.lock().expect("lock").len();
        panic!("no record for {what} within {secs} s ({n} records)");
    }

    pub fn wait_for(&self, what: &str, f: impl Fn(&Value) -> bool) {
        self.wait_for_within(10, what, f)
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("kill");
    }

    pub fn stop(mut self) -> Vec<Value> {
        self.signal(Signal::SIGTERM);
        // Bounded: the drain is 20 s at most (and nothing to ship here); a daemon that ignores
        // SIGTERM fails the test (Drop kills it) instead of hanging the suite.
        let until = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                Instant::now() < until,
                "watch did not exit within 60 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stopped = true;
        assert_eq!(status.code(), Some(0), "watch exits 0 on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
        self.records()
    }
}

/// All records in the spool, in order.
pub fn read_spool(dir: &Path) -> Vec<(u64, Value)> {
    let (_w, mut reader, _report) = spool::open(dir, SpoolOptions::default()).expect("spool");
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let batch = reader.read_from(after, 10_000, 64 << 20).expect("read");
        let Some(last) = batch.last() else { break };
        after = last.seq;
        out.extend(
            batch
                .iter()
                .map(|r| (r.seq, serde_json::from_slice(&r.payload).expect("JSON"))),
        );
    }
    out
}
