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

use super::attribution::Attributor;
use super::change::{now_ms, AgentEvent, ChangeKind, FileFacts, FsChange, Source};
use super::hash::{self, HashConfig, HashInput, HashOutput, Hasher, TrySubmitError};
use super::ocsf::{self, Context as OcsfContext};
use super::process::table::UserLookup;
use super::queue;
use super::reads::{encode as read_record, ReadAudit, ReadRecord};
use super::snapshot::{Loaded, Snapshot};
use super::source::SourceKind;
use super::spool::{self, Appended, OpenReport, SpoolOptions, SpoolReader, SpoolWriter};
use super::tree::{Tree, TreeOptions};
use super::watcher::{Baseline, CheckpointAcks, Counters, Output, ReadEvent, WatchConfig, Watcher};
use crate::config::reads::ReadMatcher;
use crate::config::{ReadsConfig, ValidConfig};
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
    /// The opt-in read audit (`audit.reads`; needs the fanotify source).
    pub reads: Option<ReadsConfig>,
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
            // Validated with the config: the globs compile.
            reads: config
                .audit
                .reads
                .as_ref()
                .and_then(|r| ReadMatcher::new(&r.globs).ok()),
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
            // watch snapshot until it was migrated), with the paths of changes the full spool dropped.
            companions: vec![
                super::tree::FILE.to_string(),
                super::snapshot::SNAPSHOT_FILE.to_string(),
                DROPPED_PATHS_FILE.to_string(),
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
            reads: config.audit.reads.clone(),
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
    /// The event source that runs (`fanotify`, `inotify`; empty from an older daemon) and why.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub source_reason: String,
    /// How the process behind each change is known (see `AgentEvent::Started::actors`).
    #[serde(default)]
    pub actors: String,
    pub events_written: u64,
    pub events_dropped: u64,
    pub last_event_ms: Option<i64>,
    pub lost_notifications: u64,
    pub rescans: u64,
    /// Watch-limit episodes: trees scanned periodically because they could not be watched.
    pub unwatched_dirs: u64,
    /// The last spool-full episodes (at most [`DROP_HISTORY`]), carried over restarts: `status`
    /// names them until CloudWatch has their record.
    #[serde(default)]
    pub drop_episodes: Vec<DropEpisode>,
    /// The episode in progress: the spool is full and events are being dropped right now.
    #[serde(default)]
    pub dropping: Option<DropEpisode>,
    /// Changes that could not be spooled whose paths wait in `dropped-paths` beside the spool, to
    /// be re-examined and recorded when room returns (or at the next start).
    #[serde(default)]
    pub dropped_paths_pending: u64,
    /// Of those, the ones beyond the list's cap: counted, not named.
    #[serde(default)]
    pub dropped_paths_unnamed: u64,
    /// fanotify events that could not be named (see `watcher::Counters::unresolved`).
    #[serde(default)]
    pub unresolved_events: u64,
}

/// How many drop episodes `daemon.json` keeps.
pub const DROP_HISTORY: usize = 8;

/// One spool-full episode: how many events, when, and the spool sequence of its "Spool full"
/// record (None until that record is stored). It is on record in CloudWatch once the shipper
/// acknowledged that sequence.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DropEpisode {
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    pub recorded_seq: Option<u64>,
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
    /// The record's sequence, or None when the spool was full and it was dropped.
    fn write(
        &mut self,
        time_ms: i64,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Option<u64>, String> {
        match self {
            Sink::Spool(w) => match w.append(time_ms, build) {
                Ok(Appended::Stored { seq }) => Ok(Some(seq)),
                Ok(Appended::Dropped) => Ok(None),
                Err(e) => Err(format!("spool: {e}")),
            },
            Sink::Stdout { seq, out } => {
                *seq += 1;
                let mut line = build(*seq);
                line.push(b'\n');
                out.write_all(&line)
                    .map_err(|e| format!("stdout: {e}"))
                    .map(|_| Some(*seq))
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
    /// A change that needed no hashing (`hash::settle`): written when it reaches the front.
    Ready(Box<FsChange>),
    Agent(AgentEvent, i64),
    /// A checkpoint of the watch tree: acknowledged once everything before it is durable.
    Checkpoint(u64),
}

/// The running pipeline's state on this thread.
struct Pipeline {
    sink: Sink,
    ctx: OcsfContext,
    /// Names the process behind each change (fanotify only).
    attribution: Option<Attributor>,
    /// `audit.hash_max_bytes`: changes [`hash::settle`] settles skip the hash workers.
    hash_max_bytes: u64,
    /// The opt-in read audit (with `attribution` only).
    reads: Option<ReadAudit>,
    order: VecDeque<Item>,
    hashed: VecDeque<FsChange>,
    hash_in: Option<HashInput>,
    hash_out: HashOutput,
    persist_dir: Option<PathBuf>,
    state_dir: PathBuf,
    report: DaemonReport,
    /// The paths of changes the full spool dropped (None in stdout mode).
    dropped: Option<DroppedPaths>,
    /// Paths wait in `dropped` to be recorded (set when room returns and at start).
    replay_due: bool,
    /// `audit.spool_max_bytes`: paces the replay.
    spool_cap: u64,
    /// The watcher's inotify descriptor, for the live watch count.
    inotify_fd: Option<i32>,
    counters: Counters,
    /// Acknowledges watch tree checkpoints (none on stdout: nothing is persisted).
    acks: Option<CheckpointAcks>,
    /// The highest checkpoint durable here but not yet taken by the watcher (its queue was full).
    unacked: Option<u64>,
}

impl Pipeline {
    /// What the kernel holds now (the count at start goes stale as directories come and go),
    /// and the episode in progress.
    fn refresh_live_counts(&mut self) {
        if let Some(n) = self.inotify_fd.and_then(live_watches) {
            self.report.watches = n;
        }
        self.report.unresolved_events = self.counters.unresolved();
        self.report.dropping = match &self.sink {
            Sink::Spool(w) => w.pending_drops().map(|d| DropEpisode {
                count: d.count,
                first_ms: d.first_ms,
                last_ms: d.last_ms,
                recorded_seq: None,
            }),
            Sink::Stdout { .. } => None,
        };
    }

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
                if let Some(n) = self.inotify_fd.and_then(live_watches) {
                    self.report.watches = n;
                }
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
        if hash::settle(&mut ch, self.hash_max_bytes) {
            self.order.push_back(Item::Ready(Box::new(ch)));
            return Ok(());
        }
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
                    self.write_change(&ch)?;
                }
                Some(Item::Ready(_)) => {
                    if let Some(Item::Ready(ch)) = self.order.pop_front() {
                        self.write_change(&ch)?;
                    }
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

    fn read(&mut self, r: &ReadEvent) {
        if let (Some(reads), Some(who)) = (&mut self.reads, &self.attribution) {
            reads.read(&r.path, r.pid, r.time_ms, who, &self.ctx);
        }
    }

    /// The read audit's records once its window has ended (every one left when `all`).
    fn write_reads(&mut self, all: bool) -> Result<(), String> {
        let Some(reads) = &mut self.reads else {
            return Ok(());
        };
        if !all && !reads.due(now_ms()) {
            return Ok(());
        }
        for (rec, (actor, extra)) in reads.take() {
            let time_ms = match &rec {
                ReadRecord::File { last_ms, .. } | ReadRecord::Dir { last_ms, .. } => *last_ms,
            };
            let ctx = &self.ctx;
            let uid = uuid::Uuid::new_v4().to_string();
            let stored = self.sink.write(time_ms, |seq| {
                ocsf::to_line(&read_record(&rec, actor, extra, ctx, seq, &uid))
            })?;
            self.count(stored.is_some(), time_ms);
        }
        Ok(())
    }

    /// One file record, with the process behind it when the source named one.
    fn write_change(&mut self, ch: &FsChange) -> Result<(), String> {
        let (ctx, attribution) = (&self.ctx, &self.attribution);
        let stored = self.sink.write(ch.time_ms, |seq| {
            let mut r = ocsf::file_activity(ch, ctx, seq);
            if let Some(a) = attribution {
                a.apply(&mut r, ch, ctx);
            }
            ocsf::to_line(&r)
        })?;
        self.count(stored.is_some(), ch.time_ms);
        if stored.is_none() {
            self.remember_dropped(ch);
        }
        Ok(())
    }

    fn write_agent(&mut self, ev: &AgentEvent, time_ms: i64) -> Result<Option<u64>, String> {
        let ctx = &self.ctx;
        let stored = self.sink.write(time_ms, |seq| {
            ocsf::to_line(&ocsf::agent_event(ev, ctx, seq, time_ms))
        })?;
        self.count(stored.is_some(), time_ms);
        Ok(stored)
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
        if let Some(list) = &mut self.dropped {
            list.commit();
        }
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

    /// A drop episode that ended becomes one "spool full" event, kept in `daemon.json` with the
    /// record's sequence (status follows it to CloudWatch); then the changes that were dropped
    /// are looked at again and recorded with their paths.
    fn drops(&mut self) -> Result<(), String> {
        let ended = match &mut self.sink {
            Sink::Spool(w) => w.take_drops(),
            Sink::Stdout { .. } => None,
        };
        if let Some(d) = ended {
            self.record_drop_episode(DropEpisode {
                count: d.count,
                first_ms: d.first_ms,
                last_ms: d.last_ms,
                recorded_seq: None,
            })?;
            self.replay_due = true;
        }
        Ok(())
    }

    /// Writes the "Spool full" record of an episode and keeps the episode (with the record's
    /// sequence, or None when the spool had no room for the record either: then it is written
    /// again at the next start).
    fn record_drop_episode(&mut self, mut e: DropEpisode) -> Result<(), String> {
        let ev = AgentEvent::SpoolDrop {
            dropped: e.count,
            first_ms: e.first_ms,
            last_ms: e.last_ms,
        };
        e.recorded_seq = self.write_agent(&ev, now_ms())?;
        self.keep_episode(e);
        Ok(())
    }

    fn keep_episode(&mut self, e: DropEpisode) {
        let h = &mut self.report.drop_episodes;
        h.push(e);
        if h.len() > DROP_HISTORY {
            let extra = h.len() - DROP_HISTORY;
            h.drain(..extra);
        }
    }

    /// At start: the episodes of earlier runs, and the record of any that never got one (the
    /// daemon stopped or crashed while the spool was full, or the record was dropped too).
    fn carry_over_drops(&mut self, previous: Option<DaemonReport>) -> Result<(), String> {
        let Some(prev) = previous else {
            return Ok(());
        };
        let mut unrecorded = Vec::new();
        for e in prev.drop_episodes.into_iter().chain(prev.dropping) {
            if e.recorded_seq.is_some() {
                self.keep_episode(e);
            } else {
                unrecorded.push(e);
            }
        }
        for e in unrecorded {
            self.record_drop_episode(e)?;
        }
        Ok(())
    }

    /// A change the spool had no room for: its path goes to the list beside the spool.
    fn remember_dropped(&mut self, ch: &FsChange) {
        let Some(list) = &mut self.dropped else {
            return;
        };
        match list.push(ch) {
            Ok(true) => self.report.dropped_paths_pending += 1,
            Ok(false) => self.report.dropped_paths_unnamed += 1,
            Err(e) => {
                self.report.dropped_paths_unnamed += 1;
                tracing::warn!(error = %e, "Cannot keep the path of a dropped change.");
            }
        }
    }

    /// Each path whose change was dropped is looked at now and recorded as it is (present:
    /// Create when that was the dropped change, else Update; gone: Delete), as a Rescan change:
    /// the snapshot already holds the file, so without this nothing would ever name it.
    ///
    /// Paced by the room in the spool: only while no drop episode runs and the spool is under
    /// half full, and only as many paths as fit in the room left below half (at ~2 KiB a
    /// record), one chunk at a time, so the replay itself cannot fill the spool again. The rest waits for the next
    /// turn of the loop (or the next start).
    fn replay_dropped_paths(&mut self) -> Result<(), String> {
        // The previous chunk must be written first: until then the spool does not show it.
        if !self.replay_due || !self.order.is_empty() {
            return Ok(());
        }
        let room = match &self.sink {
            Sink::Spool(w) => {
                if w.pending_drops().is_some() {
                    return Ok(());
                }
                let half = self.spool_cap / 2;
                half.saturating_sub(w.stats().unacked_bytes)
            }
            Sink::Stdout { .. } => return Ok(()),
        };
        // ~2 KiB a record, generously (a hash, an owner, a long path).
        if room < 2048 {
            return Ok(());
        }
        let chunk = (room / 2048).min(2_000) as usize;
        let Some(list) = &mut self.dropped else {
            self.replay_due = false;
            return Ok(());
        };
        let (entries, left) = match list.take(chunk) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read the paths of dropped changes.");
                self.replay_due = false;
                return Ok(());
            }
        };
        self.replay_due = left > 0;
        self.report.dropped_paths_pending = left as u64;
        if entries.is_empty() {
            return Ok(());
        }
        tracing::info!(
            paths = entries.len(),
            left,
            "Recording changes the full spool dropped, as they are now."
        );
        for (created, path) in entries {
            let now = now_ms();
            let ch = match std::fs::symlink_metadata(&path) {
                Ok(md) => FsChange {
                    kind: if created {
                        ChangeKind::Create
                    } else {
                        ChangeKind::Update
                    },
                    path,
                    facts: Some(FileFacts::from_metadata(&md)),
                    time_ms: now,
                    source: Source::Rescan,
                    pid: None,
                },
                Err(_) => FsChange {
                    kind: ChangeKind::Delete,
                    path,
                    facts: None,
                    time_ms: now,
                    source: Source::Rescan,
                    pid: None,
                },
            };
            self.submit(ch)?;
        }
        Ok(())
    }

    fn save_report(&mut self, state_dir: &Path) {
        self.report.updated_ms = now_ms();
        self.refresh_live_counts();
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

/// uid → user name from the root's `etc/passwd`, for the process table.
fn users(root: &Root) -> UserLookup {
    match UserDb::load(root) {
        Ok(db) => Box::new(move |uid| {
            db.user_by_uid(nix::unistd::Uid::from_raw(uid))
                .map(|u| u.name.clone())
        }),
        Err(_) => Box::new(|_| None),
    }
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
    // Read before this run overwrites it: drop episodes carry over.
    let previous = DaemonReport::load(&opts.state_dir);
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

    // Who acted: only fanotify names a process. The table starts first, so the watcher's reader
    // can have it read each new process at once; it is dropped again if inotify runs.
    let mut attribution = opts
        .watch
        .source
        .may_be_fanotify()
        .then(|| Attributor::start(users(root)));
    let mut watch = opts.watch.clone();
    watch.pid_seen = attribution.as_ref().map(Attributor::hook);
    let (watcher, out_rx, info) =
        Watcher::start(watch, baseline).map_err(|e| format!("watch: {e}"))?;
    if info.source != SourceKind::Fanotify {
        attribution = None;
    }
    // On stdout nothing is persisted: the watcher commits its (anonymous) tree by itself.
    let acks = persist_dir.as_ref().map(|_| watcher.checkpoint_acks());
    let (hash_in, hash_out) =
        Hasher::spawn(opts.hash.clone()).map_err(|e| format!("hasher thread: {e}"))?;
    let mut actors = attribution.as_ref().map_or_else(
        || format!("none: the {} source names no process", info.source),
        |a| a.feed().to_string(),
    );
    let reads = match (&opts.reads, &attribution) {
        (Some(r), Some(_)) => Some(ReadAudit::new(r, opts.watch.roots[0].clone())),
        (Some(_), None) => {
            actors.push_str("; audit.reads is off: only the fanotify source sees reads");
            tracing::warn!(
                "audit.reads is set but the {} source cannot see reads; reads are not audited.",
                info.source
            );
            None
        }
        (None, _) => None,
    };
    tracing::info!(
        source = %info.source,
        source_reason = %info.source_reason,
        actors = %actors,
        watches = info.watches,
        paths = info.known_paths,
        catch_up = info.catch_up_changes,
        "Watching."
    );

    let mut p = Pipeline {
        sink,
        ctx,
        attribution,
        hash_max_bytes: opts.hash.max_bytes,
        reads,
        order: VecDeque::new(),
        hashed: VecDeque::new(),
        hash_in: Some(hash_in),
        hash_out,
        persist_dir: persist_dir.clone(),
        state_dir: opts.state_dir.clone(),
        report: DaemonReport {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: started,
            paths: opts.watch.roots.clone(),
            spool_dir: opts.spool_dir.clone(),
            watches: info.watches,
            source: info.source.to_string(),
            source_reason: info.source_reason.clone(),
            actors: actors.clone(),
            ..DaemonReport::default()
        },
        dropped: persist_dir.as_ref().map(|d| DroppedPaths::new(d)),
        // Paths left by an earlier run (a stop or crash while the spool was full).
        replay_due: persist_dir
            .as_ref()
            .is_some_and(|d| DroppedPaths::new(d).exists()),
        spool_cap: opts.spool.max_bytes,
        inotify_fd: watcher.inotify_fd(),
        counters: watcher.counters(),
        acks,
        unacked: None,
    };
    p.agent(AgentEvent::Started {
        version: env!("CARGO_PKG_VERSION").to_string(),
        paths: opts.watch.roots.clone(),
        watches: info.watches,
        catch_up_changes: info.catch_up_changes,
        source: info.source.to_string(),
        source_reason: info.source_reason.clone(),
        actors,
    });
    for ev in startup_events {
        p.agent(ev);
    }
    p.write_ready()?;
    p.carry_over_drops(previous)?;
    // Changes a full spool dropped before a stop or crash: recorded now at the latest.
    p.replay_dropped_paths()?;
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
    // write everything (the read audit's open window too).
    p.write_reads(true)?;
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
                        Output::Read(r) => p.read(&r),
                    }
                    next = out_rx.try_recv().ok();
                }
                if let Some(o) = next {
                    match o {
                        Output::Change(ch) => p.submit(*ch)?,
                        Output::Agent(ev) => p.agent(*ev),
                        Output::Checkpoint(n) => p.order.push_back(Item::Checkpoint(n)),
                        Output::Read(r) => p.read(&r),
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
        p.write_reads(false)?;
        p.drops()?;
        p.replay_dropped_paths()?;
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

/// The kernel's count of watches on an inotify descriptor of this process (`inotify wd:` lines
/// of `/proc/self/fdinfo/FD`), or None when it cannot be read.
fn live_watches(fd: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("inotify wd:"))
            .count() as u64,
    )
}

/// Name of the list of dropped changes' paths in the spool directory.
pub const DROPPED_PATHS_FILE: &str = "dropped-paths";
/// The list's cap; changes beyond it are counted (`dropped_paths_unnamed`), not named.
pub const DROPPED_PATHS_MAX: u64 = 50_000;

/// The paths of changes the full spool dropped: an append-only file beside the spool (one line
/// per change: `C` for a create, `U` for anything else, a space, the path's bytes in hex so that
/// any name fits on one line), capped at [`DROPPED_PATHS_MAX`] lines. The replay takes paths
/// from an in-memory copy; the file loses them only at [`DroppedPaths::commit`], once the
/// changes made from them are in the spool and synced (a crash before that replays them again).
struct DroppedPaths {
    path: PathBuf,
    /// Lines in the file (counted at the first use after a start).
    lines: Option<u64>,
    /// The file's paths not yet taken, loaded at the first take.
    queue: Option<std::collections::VecDeque<(bool, PathBuf)>>,
    /// Paths were taken since the last commit.
    taken: bool,
}

impl DroppedPaths {
    fn new(spool_dir: &Path) -> Self {
        Self {
            path: spool_dir.join(DROPPED_PATHS_FILE),
            lines: None,
            queue: None,
            taken: false,
        }
    }

    /// Whether an earlier run left paths to record.
    fn exists(&self) -> bool {
        self.path.exists()
    }

    fn line((created, p): &(bool, PathBuf)) -> String {
        use std::os::unix::ffi::OsStrExt;
        let mut line = String::with_capacity(p.as_os_str().len() * 2 + 3);
        line.push(if *created { 'C' } else { 'U' });
        line.push(' ');
        for b in p.as_os_str().as_bytes() {
            line.push_str(&format!("{b:02x}"));
        }
        line.push('\n');
        line
    }

    /// Appends one path; Ok(false) when the list is at its cap.
    fn push(&mut self, ch: &FsChange) -> Result<bool, String> {
        let lines = match self.lines {
            Some(n) => n,
            None => Self::read(&self.path)?.len() as u64,
        };
        if lines >= DROPPED_PATHS_MAX {
            self.lines = Some(lines);
            return Ok(false);
        }
        let created = matches!(ch.kind, ChangeKind::Create | ChangeKind::Rename { .. });
        let entry = (created, ch.path.clone());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        f.write_all(Self::line(&entry).as_bytes())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.lines = Some(lines + 1);
        if let Some(q) = &mut self.queue {
            q.push_back(entry);
        }
        Ok(true)
    }

    /// Up to `n` paths (`true` when a create was dropped), each path once, and how many are left.
    fn take(&mut self, n: usize) -> Result<(Vec<(bool, PathBuf)>, usize), String> {
        if self.queue.is_none() {
            let mut seen = std::collections::HashSet::new();
            let q = Self::read(&self.path)?
                .into_iter()
                .filter(|(_, p)| seen.insert(p.clone()))
                .collect();
            self.queue = Some(q);
        }
        let Some(q) = &mut self.queue else {
            return Ok((Vec::new(), 0));
        };
        let out: Vec<(bool, PathBuf)> = q.drain(..n.min(q.len())).collect();
        if !out.is_empty() {
            self.taken = true;
        }
        Ok((out, q.len()))
    }

    /// After the spool synced: the file keeps only the paths not yet taken (temp file, rename).
    fn commit(&mut self) {
        if !self.taken {
            return;
        }
        let Some(q) = &self.queue else { return };
        let result = if q.is_empty() {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            }
        } else {
            let text: String = q.iter().map(Self::line).collect();
            crate::host::safe_write::write_private(&self.path, text.as_bytes())
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => {
                self.lines = Some(q.len() as u64);
                self.taken = false;
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "Cannot shorten the list of dropped paths; they may be recorded twice.")
            }
        }
    }

    fn read(path: &Path) -> Result<Vec<(bool, PathBuf)>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        use std::os::unix::ffi::OsStringExt;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (kind, hex) = l.split_once(' ')?;
                let bytes: Option<Vec<u8>> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                    .collect();
                Some((
                    kind == "C",
                    PathBuf::from(std::ffi::OsString::from_vec(bytes?)),
                ))
            })
            .collect())
    }
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
