//! The resident half of the agent: `notebook-agent watch` runs the pipeline
//! watcher → hash → OCSF → spool (or stdout), keeps the watch tree on the persistent volume for
//! catch-up, and stops cleanly on SIGTERM.
//!
//! Ordering and durability: one thread (this one) owns the spool writer. Changes go through the
//! hasher, which returns them in submission order; agent events and tree checkpoints wait in the
//! same queue behind the changes received before them, so the spool holds everything in the order
//! the watcher produced it. A checkpoint of the watch tree is acknowledged (and only then committed
//! by the watcher) after every change before it was written *and* the spool synced: a crash can
//! make the next start report a change twice (catch-up against an older tree), never lose one.
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
use super::spool::{self, Appended, OpenReport, SpoolOptions, SpoolReader, SpoolWriter};
use super::tree::{Tree, TreeOptions};
use super::watcher::{Baseline, CheckpointAcks, Output, WatchConfig, Watcher};
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
            // The watch tree lives beside the spool, on the same persistent volume (and an old
            // watch snapshot until it was migrated).
            companions: vec![
                super::tree::FILE.to_string(),
                super::snapshot::SNAPSHOT_FILE.to_string(),
            ],
            ..SpoolOptions::default()
        };
        Self {
            stdout,
            watch,
            hash,
            spool,
            spool_dir,
            state_dir: root.state_dir(),
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
    /// A checkpoint of the watch tree: acknowledged once everything before it is durable.
    Checkpoint(u64),
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
    /// Acknowledges watch tree checkpoints (none on stdout: nothing is persisted).
    acks: Option<CheckpointAcks>,
    /// The highest checkpoint durable here but not yet taken by the watcher (its queue was full).
    unacked: Option<u64>,
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
                Some(Item::Checkpoint(_)) => {
                    if let Some(Item::Checkpoint(n)) = self.order.pop_front() {
                        self.persist(n)?;
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

    /// Sync, then acknowledge the checkpoint: the watch tree never gets ahead of the spool.
    fn persist(&mut self, n: u64) -> Result<(), String> {
        if self.persist_dir.is_none() || self.acks.is_none() {
            return Ok(());
        }
        self.sink.sync()?;
        self.unacked = Some(self.unacked.map_or(n, |u| u.max(n)));
        self.retry_ack();
        Ok(())
    }

    /// Hand the watcher the acknowledgement it could not take yet (never blocks: the watcher may
    /// itself be waiting for this thread to drain its output).
    fn retry_ack(&mut self) {
        if let (Some(n), Some(acks)) = (self.unacked, &self.acks) {
            if acks.ack(n) {
                tracing::trace!(checkpoint = n, "Acknowledged a watch tree checkpoint.");
                self.unacked = None;
            }
        }
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
        let (baseline, tamper) = open_tree(&opts.spool_dir, &report)?;
        startup_events.extend(tamper);
        (Sink::Spool(writer), baseline, Some(opts.spool_dir.clone()))
    };

    let (watcher, out_rx, info) =
        Watcher::start(opts.watch.clone(), baseline).map_err(|e| format!("watch: {e}"))?;
    // On stdout nothing is persisted: the watcher commits its (anonymous) tree by itself.
    let acks = persist_dir.as_ref().map(|_| watcher.checkpoint_acks());
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
        acks,
        unacked: None,
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

    // The watcher has flushed and its last checkpoint was acknowledged; finish the hashes and
    // write everything.
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
                        Output::Checkpoint(n) => p.order.push_back(Item::Checkpoint(n)),
                    }
                    next = out_rx.try_recv().ok();
                }
                if let Some(o) = next {
                    match o {
                        Output::Change(ch) => p.submit(*ch)?,
                        Output::Agent(ev) => p.agent(*ev),
                        Output::Checkpoint(n) => p.order.push_back(Item::Checkpoint(n)),
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
        p.retry_ack();
        let now = Instant::now();
        if now >= next_report {
            // (Not `Watcher::stats`: it waits for the watcher thread, which may itself be waiting
            // for this one to drain its output.)
            p.save_report(&opts.state_dir);
            next_report = now + opts.report_every;
        }
    }
    Ok(stopper)
}

/// The watch tree beside the spool, and what to report about it. A missing tree on the very first
/// start (nothing spooled yet) means no catch-up; an old `watch.snapshot` is read once as the
/// catch-up baseline, converted into the tree and removed; a tree missing afterwards, or damaged,
/// is tampering, and what it no longer knows is reported as created.
fn open_tree(
    dir: &Path,
    spool: &OpenReport,
) -> Result<(Option<Baseline>, Vec<AgentEvent>), String> {
    let path = dir.join(super::tree::FILE);
    let (mut tree, report) = Tree::open(dir, TreeOptions::default())
        .map_err(|e| format!("watch tree {}: {e}", path.display()))?;
    let mut events = Vec::new();
    if let Some(why) = &report.unusable {
        events.push(AgentEvent::SpoolTamper {
            path: path.clone(),
            what: format!("watch tree unusable ({why}); kept as watch.tree.bad"),
        });
    }
    for d in &report.damaged {
        events.push(AgentEvent::SpoolTamper {
            path: path.clone(),
            what: format!("watch tree damaged: {d}"),
        });
    }
    if report.truncated_bytes > 0 {
        tracing::info!(
            bytes = report.truncated_bytes,
            "Watch tree tail past its last commit cut (a stop before the last checkpoint)."
        );
    }
    if !report.created {
        return Ok((
            Some(Baseline {
                tree,
                catch_up: true,
            }),
            events,
        ));
    }
    let first_start = spool.created || spool.next_seq <= 1;
    let catch_up = match Snapshot::load(dir) {
        Loaded::Found(snap) => {
            super::watcher::fill_tree(&mut tree, &snap)
                .map_err(|e| format!("watch tree {}: {e}", path.display()))?;
            drop(snap);
            let old = dir.join(super::snapshot::SNAPSHOT_FILE);
            if let Err(e) = std::fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), error = %e, "Cannot remove the migrated watch snapshot.");
            }
            tracing::info!(
                entries = tree.len(),
                "Migrated the watch snapshot into the watch tree."
            );
            true
        }
        Loaded::Missing if first_start || report.unusable.is_some() => !first_start,
        Loaded::Missing => {
            events.push(AgentEvent::SpoolTamper {
                path: path.clone(),
                what: "watch tree missing although the spool has records; every file is reported as created".to_string(),
            });
            true
        }
        corrupt @ Loaded::Corrupt { .. } => {
            events.extend(corrupt.into_parts().1);
            true
        }
    };
    Ok((Some(Baseline { tree, catch_up }), events))
}
