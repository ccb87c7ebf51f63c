//! The resident half of the agent: `notebook-agent watch` runs the pipeline
//! watcher → hash → OCSF → spool (or stdout), keeps the watch snapshot on the persistent volume for
//! catch-up, and stops cleanly on SIGTERM.
//!
//! Ordering and durability: one thread (this one) owns the spool writer. Changes go through the
//! hasher, which returns them in submission order; agent events and snapshots wait in the same
//! queue behind the changes received before them, so the spool holds everything in the order the
//! watcher produced it. A snapshot is saved only after every change before it was written *and*
//! the spool synced: a crash can make the next start report a change twice (catch-up against an
//! older snapshot), never lose one.
//!
//! Signals: SIGTERM, SIGINT and SIGHUP are blocked in every thread and taken by one thread with
//! `sigwait`, which sets the stop flag; the loop below polls it at least every 100 ms.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

use super::change::{now_ms, AgentEvent, FsChange};
use super::hash::{HashConfig, HashInput, HashOutput, Hasher, TrySubmitError};
use super::ocsf::{self, Context as OcsfContext};
use super::queue;
use super::snapshot::{Loaded, Snapshot};
use super::spool::{self, Appended, SpoolOptions, SpoolReader, SpoolWriter};
use super::watcher::{Output, WatchConfig, Watcher};
use crate::config::ValidConfig;
use crate::host::metadata::NotebookIdentity;
use crate::host::{Root, UserDb};

/// File in the state directory where the daemon reports on itself (read by `status`).
pub const DAEMON_STATE: &str = "daemon.json";
/// Name of the spool directory under the first audited path when none is configured.
pub const DEFAULT_SPOOL_NAME: &str = ".notebook-agent";

/// Everything the daemon needs, resolved from the config and `--root`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Print OCSF records on stdout instead of spooling; nothing is persisted.
    pub stdout: bool,
    pub watch: WatchConfig,
    pub hash: HashConfig,
    pub spool: SpoolOptions,
    pub spool_dir: PathBuf,
    pub state_dir: PathBuf,
    /// How often the watch snapshot is persisted (and at stop).
    pub snapshot_every: Duration,
    /// How often `daemon.json` is rewritten.
    pub report_every: Duration,
}

impl Options {
    pub fn from_config(root: &Root, config: &ValidConfig, stdout: bool) -> Self {
        let paths = config.audit_paths();
        let roots: Vec<PathBuf> = paths.iter().map(|p| root.path(p)).collect();
        let spool_dir = match &config.audit.spool_dir {
            Some(d) => root.path(d),
            None => root
                .path(paths.first().cloned().unwrap_or_else(|| config.home()))
                .join(DEFAULT_SPOOL_NAME),
        };
        let watch = WatchConfig {
            roots: roots.clone(),
            exclude_globs: config.audit.excludes.clone(),
            guarded: vec![spool_dir.clone()],
            ..WatchConfig::default()
        };
        let hash = HashConfig {
            max_bytes: config.audit.hash_max_bytes,
            trees: roots,
            ..HashConfig::default()
        };
        let spool = SpoolOptions {
            max_bytes: config.audit.spool_max_bytes,
            // The watch snapshot lives beside the spool, on the same persistent volume.
            companions: vec![super::snapshot::SNAPSHOT_FILE.to_string()],
            ..SpoolOptions::default()
        };
        Self {
            stdout,
            watch,
            hash,
            spool,
            spool_dir,
            state_dir: root.state_dir(),
            snapshot_every: Duration::from_secs(30),
            report_every: Duration::from_secs(5),
        }
    }
}

/// What `daemon.json` holds: the daemon's own account of itself, for `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonReport {
    pub pid: u32,
    pub version: String,
    pub started_ms: i64,
    pub updated_ms: i64,
    pub stopped_ms: Option<i64>,
    pub paths: Vec<PathBuf>,
    pub spool_dir: PathBuf,
    pub watches: u64,
    pub events_written: u64,
    pub events_dropped: u64,
    pub last_event_ms: Option<i64>,
    pub lost_notifications: u64,
    pub rescans: u64,
    /// Watch-limit episodes: trees scanned periodically because they could not be watched.
    pub unwatched_dirs: u64,
}

impl DaemonReport {
    pub fn load(state_dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(state_dir.join(DAEMON_STATE)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// Where records go.
enum Sink {
    Spool(SpoolWriter),
    Stdout {
        seq: u64,
        out: std::io::BufWriter<std::io::Stdout>,
    },
}

impl Sink {
    fn write(&mut self, time_ms: i64, build: impl FnOnce(u64) -> Vec<u8>) -> Result<bool, String> {
        match self {
            Sink::Spool(w) => match w.append(time_ms, build) {
                Ok(Appended::Stored { .. }) => Ok(true),
                Ok(Appended::Dropped) => Ok(false),
                Err(e) => Err(format!("spool: {e}")),
            },
            Sink::Stdout { seq, out } => {
                *seq += 1;
                let mut line = build(*seq);
                line.push(b'\n');
                out.write_all(&line)
                    .map_err(|e| format!("stdout: {e}"))
                    .map(|_| true)
            }
        }
    }

    fn sync(&mut self) -> Result<(), String> {
        match self {
            Sink::Spool(w) => w.sync().map_err(|e| format!("spool sync: {e}")),
            Sink::Stdout { out, .. } => out.flush().map_err(|e| format!("stdout: {e}")),
        }
    }

    fn is_dirty(&self) -> bool {
        match self {
            Sink::Spool(w) => w.is_dirty(),
            Sink::Stdout { .. } => true,
        }
    }
}

/// What waits to be written, in watcher order.
enum Item {
    /// The next change out of the hasher.
    Hashed,
    Agent(AgentEvent, i64),
    Snapshot(Vec<u8>),
}

/// The running pipeline's state on this thread.
struct Pipeline {
    sink: Sink,
    ctx: OcsfContext,
    order: VecDeque<Item>,
    hashed: VecDeque<FsChange>,
    hash_in: Option<HashInput>,
    hash_out: HashOutput,
    persist_dir: Option<PathBuf>,
    state_dir: PathBuf,
    report: DaemonReport,
    /// `events_written` when the last snapshot was requested, and what saving one costs: the
    /// snapshot follows the tree closely (a change made after it and undone while the agent is
    /// down cannot be seen by catch-up) without costing more than a tenth of the time.
    written_at_snapshot: u64,
    snapshot_cost: Duration,
}

impl Pipeline {
    fn agent(&mut self, mut ev: AgentEvent) {
        match &mut ev {
            // The drift monitor sends the status; the pipeline knows its own numbers.
            AgentEvent::Heartbeat {
                uptime_secs,
                spool_pending,
                spool_dropped,
                watches,
                ..
            } => {
                *uptime_secs = ((now_ms() - self.report.started_ms).max(0) / 1000) as u64;
                *watches = self.report.watches;
                *spool_dropped = self.report.events_dropped;
                *spool_pending = self.unshipped();
            }
            AgentEvent::Rescan {
                lost_notifications, ..
            } => {
                self.report.rescans += 1;
                self.report.lost_notifications += *lost_notifications;
            }
            AgentEvent::WatchLimit { .. } => self.report.unwatched_dirs += 1,
            _ => {}
        }
        self.order.push_back(Item::Agent(ev, now_ms()));
    }

    /// Records in the spool the shipper has not had acknowledged (by its persisted counters).
    fn unshipped(&self) -> u64 {
        let Sink::Spool(w) = &self.sink else {
            return 0;
        };
        let acked = super::shipper::Stats::load(&self.state_dir)
            .ok()
            .flatten()
            .and_then(|s| s.acked_seq)
            .unwrap_or(0);
        w.next_seq().saturating_sub(1).saturating_sub(acked)
    }

    /// Hand a change to the hasher without ever blocking while its output is full.
    fn submit(&mut self, mut ch: FsChange) -> Result<(), String> {
        loop {
            let Some(input) = self.hash_in.as_mut() else {
                return Err("hasher already closed".to_string());
            };
            match input.try_submit(ch) {
                Ok(()) => {
                    self.order.push_back(Item::Hashed);
                    return Ok(());
                }
                Err(TrySubmitError::Full(back)) => {
                    ch = *back;
                    // Make room: take one result (blocking) and write what is ready.
                    match self.hash_out.recv() {
                        Some(done) => self.hashed.push_back(done),
                        None => return Err("hasher stopped".to_string()),
                    }
                    self.write_ready()?;
                }
                Err(TrySubmitError::Closed(_)) => return Err("hasher stopped".to_string()),
            }
        }
    }

    /// Collect finished hashes without blocking.
    fn collect(&mut self) {
        while let Ok(done) = self.hash_out.recv_timeout(Duration::ZERO) {
            self.hashed.push_back(done);
        }
    }

    /// Write everything at the front of the queue that is ready.
    fn write_ready(&mut self) -> Result<(), String> {
        loop {
            match self.order.front() {
                None => return Ok(()),
                Some(Item::Hashed) => {
                    let Some(ch) = self.hashed.pop_front() else {
                        return Ok(());
                    };
                    self.order.pop_front();
                    let ctx = &self.ctx;
                    let stored = self.sink.write(ch.time_ms, |seq| {
                        ocsf::to_line(&ocsf::file_activity(&ch, ctx, seq))
                    })?;
                    self.count(stored, ch.time_ms);
                }
                Some(Item::Agent(..)) => {
                    if let Some(Item::Agent(ev, t)) = self.order.pop_front() {
                        self.write_agent(&ev, t)?;
                    }
                }
                Some(Item::Snapshot(_)) => {
                    if let Some(Item::Snapshot(snap)) = self.order.pop_front() {
                        self.persist(&snap)?;
                    }
                }
            }
        }
    }

    fn write_agent(&mut self, ev: &AgentEvent, time_ms: i64) -> Result<(), String> {
        let ctx = &self.ctx;
        let stored = self.sink.write(time_ms, |seq| {
            ocsf::to_line(&ocsf::agent_event(ev, ctx, seq, time_ms))
        })?;
        self.count(stored, time_ms);
        Ok(())
    }

    fn count(&mut self, stored: bool, time_ms: i64) {
        if stored {
            self.report.events_written += 1;
            self.report.last_event_ms = Some(time_ms);
        } else {
            self.report.events_dropped += 1;
        }
    }

    /// Sync, then save the snapshot: it never gets ahead of the spool.
    fn persist(&mut self, snap: &[u8]) -> Result<(), String> {
        let Some(dir) = self.persist_dir.clone() else {
            return Ok(());
        };
        self.sink.sync()?;
        let started = Instant::now();
        let saved = super::snapshot::save_encoded(snap, &dir);
        self.snapshot_cost = started.elapsed();
        match saved {
            Ok(path) => {
                tracing::debug!(path = %path.display(), bytes = snap.len(), "Saved the watch snapshot.")
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "Cannot save the watch snapshot; the next start may report changes twice.")
            }
        }
        Ok(())
    }

    /// A drop episode that ended becomes one "spool full" event.
    fn drops(&mut self) -> Result<(), String> {
        if let Sink::Spool(w) = &mut self.sink {
            if let Some(d) = w.take_drops() {
                let ev = AgentEvent::SpoolDrop {
                    dropped: d.count,
                    first_ms: d.first_ms,
                    last_ms: d.last_ms,
                };
                self.write_agent(&ev, now_ms())?;
            }
        }
        Ok(())
    }

    fn save_report(&mut self, state_dir: &Path) {
        self.report.updated_ms = now_ms();
        if self.persist_dir.is_none() {
            return;
        }
        match serde_json::to_vec_pretty(&self.report) {
            Ok(bytes) => {
                if let Err(e) =
                    crate::host::safe_write::write_private(&state_dir.join(DAEMON_STATE), &bytes)
                {
                    tracing::warn!(error = %e, "Cannot write the daemon report.");
                }
            }
            Err(e) => tracing::warn!(error = %e, "Cannot encode the daemon report."),
        }
    }
}

/// Blocks SIGTERM/SIGINT/SIGHUP in this thread (and every thread started after) and starts the
/// thread that waits for them.
pub fn install_signal_thread(stop: Arc<AtomicBool>) -> Result<(), String> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                tracing::info!(signal = %sig, "Stopping.");
                stop.store(true, Ordering::SeqCst);
            }
        })
        .map(|_| ())
        .map_err(|e| format!("signal thread: {e}"))
}

/// The notebook's identity for every record: hostname, name, ARN, region, account, user names.
pub fn ocsf_context(root: &Root) -> OcsfContext {
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_string());
    let id = match NotebookIdentity::load(root) {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(error = %e, "Notebook identity unknown; events carry the hostname only.");
            None
        }
    };
    let ctx = OcsfContext::new(
        hostname,
        id.as_ref().map(|i| i.name.clone()),
        id.as_ref().map(|i| i.arn.clone()),
        id.as_ref().map(|i| i.region.clone()),
        id.as_ref().map(|i| i.account.clone()),
    );
    match UserDb::load(root) {
        Ok(db) => ctx.with_users(db),
        Err(e) => {
            tracing::warn!(error = %e, "No user database; events carry uids only.");
            ctx
        }
    }
}

/// Runs until `stop` is set (by a signal or the caller). The spool reader, for the shipper, is
/// handed to `ship` once the spool is open; agent events it sends back (delivery problems) are
/// recorded in the spool in the order they arrive.
pub fn run(
    root: &Root,
    opts: Options,
    stop: Arc<AtomicBool>,
    ship: impl FnOnce(SpoolReader) -> Option<Receiver<AgentEvent>>,
) -> Result<DaemonReport, String> {
    let started = now_ms();
    let ctx = ocsf_context(root);
    let mut startup_events = Vec::new();

    let mut extra = None;
    let (sink, baseline, persist_dir) = if opts.stdout {
        let out = std::io::BufWriter::new(std::io::stdout());
        (Sink::Stdout { seq: 0, out }, None, None)
    } else {
        let (writer, reader, report) = spool::open(&opts.spool_dir, opts.spool.clone())
            .map_err(|e| format!("spool {}: {e}", opts.spool_dir.display()))?;
        if report.truncated_bytes > 0 {
            tracing::warn!(
                bytes = report.truncated_bytes,
                "Spool tail truncated at the last good frame."
            );
        }
        for a in &report.anomalies {
            if a.suspicious() {
                startup_events.push(AgentEvent::SpoolTamper {
                    path: opts.spool_dir.clone(),
                    what: format!("{a:?}"),
                });
            }
        }
        extra = ship(reader);
        // The snapshot: a missing one on the very first start (nothing spooled yet) means no
        // baseline; missing afterwards, or corrupt, is tampering and everything is reported.
        let (baseline, tamper) = match Snapshot::load(&opts.spool_dir) {
            Loaded::Missing if report.created || report.next_seq <= 1 => (None, None),
            Loaded::Missing => (
                Some(Snapshot::default()),
                Some(AgentEvent::SpoolTamper {
                    path: opts.spool_dir.join(super::snapshot::SNAPSHOT_FILE),
                    what: "watch snapshot missing although the spool has records; every file is reported as created".to_string(),
                }),
            ),
            other => {
                let (s, t) = other.into_parts();
                (Some(s), t)
            }
        };
        startup_events.extend(tamper);
        (Sink::Spool(writer), baseline, Some(opts.spool_dir.clone()))
    };

    let (watcher, out_rx, info) =
        Watcher::start(opts.watch.clone(), baseline).map_err(|e| format!("watch: {e}"))?;
    let (hash_in, hash_out) =
        Hasher::spawn(opts.hash.clone()).map_err(|e| format!("hasher thread: {e}"))?;
    tracing::info!(
        watches = info.watches,
        paths = info.known_paths,
        catch_up = info.catch_up_changes,
        "Watching."
    );

    let mut p = Pipeline {
        sink,
        ctx,
        order: VecDeque::new(),
        hashed: VecDeque::new(),
        hash_in: Some(hash_in),
        hash_out,
        persist_dir,
        state_dir: opts.state_dir.clone(),
        report: DaemonReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: started,
            paths: opts.watch.roots.clone(),
            spool_dir: opts.spool_dir.clone(),
            watches: info.watches,
            ..DaemonReport::default()
        },
        written_at_snapshot: 0,
        snapshot_cost: Duration::ZERO,
    };
    p.agent(AgentEvent::Started {
        version: env!("CARGO_PKG_VERSION").to_string(),
        paths: opts.watch.roots.clone(),
        watches: info.watches,
        catch_up_changes: info.catch_up_changes,
    });
    for ev in startup_events {
        p.agent(ev);
    }
    p.write_ready()?;
    p.sink.sync()?;
    p.save_report(&opts.state_dir);

    let stopper = pump(&mut p, watcher, &out_rx, extra.as_ref(), &stop, &opts)?;
    if let Some(rx) = &extra {
        while let Ok(ev) = rx.try_recv() {
            p.agent(ev);
        }
    }

    // The watcher has flushed and sent its last snapshot; finish the hashes and write everything.
    p.hash_in = None;
    while !p.order.is_empty() {
        p.collect();
        let before = p.order.len();
        p.write_ready()?;
        if p.order.len() == before {
            match p.hash_out.recv() {
                Some(done) => p.hashed.push_back(done),
                None => break,
            }
        }
    }
    p.drops()?;
    let spooled = p.report.events_written;
    p.write_agent(
        &AgentEvent::Stopped {
            reason: "signal".to_string(),
            spooled,
        },
        now_ms(),
    )?;
    p.sink.sync()?;
    if let Sink::Spool(w) = &p.sink {
        if let Some(d) = w.pending_drops() {
            tracing::error!(
                dropped = d.count,
                "Spool full at stop: events were dropped and could not be recorded in the spool."
            );
        }
    }
    p.report.stopped_ms = Some(now_ms());
    p.save_report(&opts.state_dir);
    if let Some(s) = stopper {
        let _ = s.join();
    }
    Ok(p.report)
}

/// The main loop: watcher outputs into the pipeline until `stop`, then the watcher is stopped (on
/// its own thread, while this one keeps draining) until its channel ends.
fn pump(
    p: &mut Pipeline,
    watcher: Watcher,
    out_rx: &queue::Receiver<Output>,
    extra: Option<&Receiver<AgentEvent>>,
    stop: &AtomicBool,
    opts: &Options,
) -> Result<Option<std::thread::JoinHandle<()>>, String> {
    let mut watcher = Some(watcher);
    let mut stopper = None;
    // The first snapshot right away: the tree as this start found it, so a crash before the
    // first periodic save still has a baseline for the next catch-up.
    let mut next_snapshot = Instant::now();
    let mut last_snapshot = Instant::now();
    let mut next_report = Instant::now() + opts.report_every;
    loop {
        if stopper.is_none() && stop.load(Ordering::SeqCst) {
            if let Some(w) = watcher.take() {
                stopper = Some(
                    std::thread::Builder::new()
                        .name("watch-stop".into())
                        .spawn(move || w.stop())
                        .map_err(|e| format!("stop thread: {e}"))?,
                );
            }
        }
        let wait = if p.order.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(2)
        };
        match out_rx.recv_timeout(wait) {
            Ok(first) => {
                let mut next = Some(first);
                // Take a batch without blocking, then write what is ready: group commit.
                for _ in 0..4096 {
                    let Some(o) = next.take() else { break };
                    match o {
                        Output::Change(ch) => p.submit(*ch)?,
                        Output::Agent(ev) => p.agent(*ev),
                        Output::Snapshot(s) => p.order.push_back(Item::Snapshot(s)),
                    }
                    next = out_rx.try_recv().ok();
                }
                if let Some(o) = next {
                    match o {
                        Output::Change(ch) => p.submit(*ch)?,
                        Output::Agent(ev) => p.agent(*ev),
                        Output::Snapshot(s) => p.order.push_back(Item::Snapshot(s)),
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(rx) = extra {
            while let Ok(ev) = rx.try_recv() {
                p.agent(ev);
            }
        }
        p.collect();
        p.write_ready()?;
        p.drops()?;
        if p.sink.is_dirty() {
            p.sink.sync()?;
        }
        let now = Instant::now();
        // Every `snapshot_every` in any case; after 2 s (or ten times what saving costs) when
        // something was written since the last one.
        let changed = p.report.events_written != p.written_at_snapshot;
        let soon = (p.snapshot_cost * 10).max(Duration::from_secs(2));
        if now >= next_snapshot || (changed && now >= last_snapshot + soon) {
            if let Some(w) = &watcher {
                if w.request_snapshot() {
                    next_snapshot = now + opts.snapshot_every;
                    last_snapshot = now;
                    p.written_at_snapshot = p.report.events_written;
                }
            }
        }
        if now >= next_report {
            // (Not `Watcher::stats`: it waits for the watcher thread, which may itself be waiting
            // for this one to drain its output.)
            p.save_report(&opts.state_dir);
            next_report = now + opts.report_every;
        }
    }
    Ok(stopper)
}
