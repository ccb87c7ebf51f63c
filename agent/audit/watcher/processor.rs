//! The processor: it owns the state (the known tree on disk with a bounded cache, the pending
//! writes and moves, the source's watches) and turns the source's [`RawEvent`]s into
//! [`FsChange`]s, rescans after lost events, and keeps the tree durable in step with the
//! consumer. Its work is spread over sibling modules by concern: `walk` (scans, catch-up and
//! rescans), `live` (one event at a time), `guard` (the agent's own directories), `durable`
//! (checkpoints). This file holds the state and the loop.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::GlobSet;
use nix::errno::Errno;
use nix::sys::stat::SFlag;

use super::backend::Backend;
use super::reader::{Msg, Shared};
use super::recon::{Pending, PendingMove, Recon, Walk, WalkCtx};
use super::{Output, StartInfo, WatchConfig, WatchStats, CHECKPOINT_EVERY, FINAL_ACK_WAIT};
use crate::audit::change::{now_ms, AgentEvent, ChangeKind, FileFacts, FsChange, Source};
use crate::audit::queue::{Receiver, Sender};
use crate::audit::snapshot::Snapshot;
use crate::audit::source::inotify::{SYSCTL_INSTANCES, SYSCTL_WATCHES};
use crate::audit::tree::Tree;

pub(super) struct Processor {
    pub(super) cfg: WatchConfig,
    pub(super) excludes: GlobSet,
    /// The source's processor half (inotify's watches), or nothing (fanotify).
    pub(super) backend: Backend,
    pub(super) shared: Arc<Shared>,
    pub(super) out: Sender<Output>,
    pub(super) out_closed: bool,
    pub(super) proc_fd: bool,
    /// The known tree: every path (roots included) with its last seen facts, on disk.
    pub(super) tree: Tree,
    /// When the tree was last checkpointed.
    pub(super) last_checkpoint: Instant,
    /// A reconcile is under way: checkpoints are written but announced only after its changes
    /// were sent (`held`), so no checkpoint ever covers a change not yet sent.
    pub(super) holding: bool,
    pub(super) held: Option<u64>,
    pub(super) pending: HashMap<PathBuf, Pending>,
    /// The process behind the event being handled (fanotify), named by the changes it yields.
    pub(super) actor: Option<u32>,
    pub(super) moves: HashMap<u32, PendingMove>,
    /// Paths created and gone before their `lstat`: reported as Create (no facts) then Delete.
    pub(super) ghosts: HashSet<PathBuf>,
    /// Directories (with their subtrees) scanned periodically instead of watched.
    pub(super) unwatched: BTreeSet<PathBuf>,
    pub(super) missing_roots: BTreeSet<PathBuf>,
    pub(super) next_scan: Instant,
    pub(super) overflows: u64,
    pub(super) rescans: u64,
    pub(super) guarded: Vec<Guarded>,
    /// `IN_MOVED_FROM` cookie of a guarded directory → its index, until the `IN_MOVED_TO`.
    pub(super) guarded_moves: HashMap<u32, usize>,
}

/// A directory of the agent's own (`WatchConfig::guarded`), known by its inode.
pub(super) struct Guarded {
    /// Where it is now, as far as the watcher saw (empty once it left the tree).
    pub(super) path: PathBuf,
    pub(super) dev: u64,
    pub(super) ino: u64,
}

impl Processor {
    pub(super) fn new(
        cfg: WatchConfig,
        excludes: GlobSet,
        backend: Backend,
        shared: Arc<Shared>,
        out: Sender<Output>,
        tree: Tree,
    ) -> Self {
        let mut cfg = cfg;
        let next_scan = Instant::now() + cfg.scan_interval;
        let mut guarded = Vec::new();
        for p in std::mem::take(&mut cfg.guarded) {
            match nix::sys::stat::lstat(&p) {
                Ok(st) if SFlag::from_bits_truncate(st.st_mode).contains(SFlag::S_IFDIR) => guarded
                    .push(Guarded {
                        path: p,
                        dev: st.st_dev,
                        ino: st.st_ino,
                    }),
                _ => cfg.exclude_paths.push(p),
            }
        }
        Self {
            cfg,
            excludes,
            backend,
            shared,
            out,
            out_closed: false,
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            tree,
            last_checkpoint: Instant::now(),
            holding: false,
            held: None,
            pending: HashMap::new(),
            actor: None,
            moves: HashMap::new(),
            ghosts: HashSet::new(),
            unwatched: BTreeSet::new(),
            missing_roots: BTreeSet::new(),
            next_scan,
            overflows: 0,
            rescans: 0,
            guarded,
            guarded_moves: HashMap::new(),
        }
    }

    pub(super) fn emit(&mut self, o: Output) {
        if self.out_closed {
            return;
        }
        if self.out.send(o).is_err() {
            self.out_closed = true;
        }
    }

    pub(super) fn change(&mut self, kind: ChangeKind, path: PathBuf, facts: Option<FileFacts>) {
        self.emit(Output::Change(Box::new(FsChange {
            kind,
            path,
            facts,
            time_ms: now_ms(),
            source: Source::Live,
            pid: self.actor,
        })));
    }

    pub(super) fn inotify_init_failed(&mut self, e: Errno) {
        let sysctl = if e == Errno::EMFILE {
            SYSCTL_INSTANCES
        } else {
            SYSCTL_WATCHES
        };
        for root in self.cfg.roots.clone() {
            tracing::error!(path = %root.display(), error = %e, sysctl, "Cannot create an inotify instance; raise the sysctl. Scanning this tree periodically instead.");
            self.unwatched.insert(root.clone());
            let ev = AgentEvent::WatchLimit {
                path: root,
                sysctl: sysctl.to_string(),
                error: format!("inotify_init: {e}"),
                scan_interval_secs: self.cfg.scan_interval.as_millis().div_ceil(1000) as u64,
            };
            self.emit(Output::Agent(Box::new(ev)));
        }
    }

    pub(super) fn initial(
        &mut self,
        catch_up: bool,
        source_reason: String,
        ready: &mpsc::Sender<StartInfo>,
    ) {
        self.holding = true;
        let mut mode = Walk::Reconcile(Recon::new(Source::CatchUp, catch_up));
        for root in self.cfg.roots.clone() {
            if self.is_excluded_abs(&root) {
                continue;
            }
            let mut ctx = WalkCtx::default();
            if !self.walk(&root, &mut mode, &mut ctx) {
                tracing::warn!(path = %root.display(), "Watch root does not exist; checking for it every scan interval.");
                self.missing_roots.insert(root.clone());
            }
            self.report_limit(&root, ctx);
        }
        let Walk::Reconcile(rec) = mode else {
            return;
        };
        let changes = self.finish(rec);
        let info = StartInfo {
            watches: self.backend.watches(),
            known_paths: self.tree.len(),
            catch_up_changes: changes.len() as u64,
            source: self.backend.kind(),
            source_reason,
        };
        let _ = ready.send(info);
        for c in changes {
            self.emit(Output::Change(Box::new(c)));
        }
        self.release_checkpoints();
        self.checkpoint();
    }

    pub(super) fn run(&mut self, rx: &Receiver<Msg>) {
        let mut since_check = 0usize;
        loop {
            if self.out_closed {
                return;
            }
            match self.next_msg(rx) {
                Ok(Msg::Event(ev)) => {
                    self.wire(ev);
                    since_check += 1;
                    if since_check >= 4096 {
                        since_check = 0;
                        self.check_lost();
                    }
                }
                Ok(Msg::Snapshot(tx)) => {
                    let _ = tx.send(self.dump());
                }
                Ok(Msg::Stats(tx)) => {
                    let _ = tx.send(self.stats());
                }
                Ok(Msg::Commit(n)) => self.commit(n),
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    since_check = 0;
                    self.check_lost();
                }
            }
            self.expire(Instant::now());
            self.maybe_checkpoint();
        }
    }

    /// The next message; while the tree is dirty, a pause of `IDLE` in the events is the moment
    /// to checkpoint it.
    pub(super) fn next_msg(&mut self, rx: &Receiver<Msg>) -> Result<Msg, RecvTimeoutError> {
        const IDLE: Duration = Duration::from_millis(50);
        match rx.try_recv() {
            Ok(m) => return Ok(m),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(RecvTimeoutError::Disconnected)
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        let timeout = self
            .next_deadline()
            .saturating_duration_since(Instant::now());
        if !self.tree.is_dirty() || timeout <= IDLE {
            return rx.recv_timeout(timeout);
        }
        match rx.recv_timeout(IDLE) {
            Err(RecvTimeoutError::Timeout) => {
                self.checkpoint();
                let timeout = self
                    .next_deadline()
                    .saturating_duration_since(Instant::now());
                rx.recv_timeout(timeout)
            }
            other => other,
        }
    }

    /// The whole known tree in memory (tests and benches).
    pub(super) fn dump(&mut self) -> Snapshot {
        let mut entries = BTreeMap::new();
        self.tree.visit(Path::new("/"), &mut |p, f| {
            entries.insert(p.to_path_buf(), f.clone());
        });
        Snapshot { entries }
    }

    pub(super) fn stats(&self) -> WatchStats {
        WatchStats {
            watches: self.backend.watches(),
            known_paths: self.tree.len(),
            lost_notifications: self.shared.lost_total.load(Ordering::SeqCst),
            overflows: self.overflows,
            rescans: self.rescans,
            unwatched_dirs: self.unwatched.len() as u64,
            source: self.backend.kind(),
        }
    }

    pub(super) fn next_deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_millis(250);
        for p in self.pending.values() {
            d = d.min(p.deadline);
        }
        for m in self.moves.values() {
            d = d.min(m.deadline);
        }
        if !self.unwatched.is_empty() || !self.missing_roots.is_empty() {
            d = d.min(self.next_scan);
        }
        if self.tree.is_dirty() {
            d = d.min(self.last_checkpoint + CHECKPOINT_EVERY);
        }
        d
    }

    pub(super) fn shutdown(&mut self, rx: &Receiver<Msg>) {
        let pend: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for p in pend {
            self.flush(&p);
        }
        let moves: Vec<PendingMove> = self.moves.drain().map(|(_, m)| m).collect();
        for m in moves {
            self.moved_out(&m.from);
        }
        self.checkpoint();
        self.await_last_ack(rx);
        self.backend.remove_all();
    }

    /// At stop: wait (bounded) until the consumer acknowledged every checkpoint, and commit.
    pub(super) fn await_last_ack(&mut self, rx: &Receiver<Msg>) {
        let last = self.tree.last_checkpoint();
        let until = Instant::now() + FINAL_ACK_WAIT;
        while self.tree.committed() < last && !self.out_closed {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    checkpoint = last,
                    "The last watch tree checkpoint was not acknowledged in time; the next start may report recent changes again."
                );
                return;
            }
            match rx.recv_timeout(left) {
                Ok(Msg::Commit(n)) => self.commit(n),
                Ok(Msg::Snapshot(tx)) => {
                    let _ = tx.send(self.dump());
                }
                Ok(Msg::Stats(tx)) => {
                    let _ = tx.send(self.stats());
                }
                Ok(Msg::Event(_) | Msg::Stop) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Flush pending writes and unmatched moves whose time has come; run the periodic scan.
    pub(super) fn expire(&mut self, now: Instant) {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for p in due {
            self.flush(&p);
        }
        let gone: Vec<u32> = self
            .moves
            .iter()
            .filter(|(_, m)| m.deadline <= now)
            .map(|(c, _)| *c)
            .collect();
        for cookie in gone {
            if let Some(m) = self.moves.remove(&cookie) {
                self.moved_out(&m.from);
            }
        }
        if (!self.unwatched.is_empty() || !self.missing_roots.is_empty()) && self.next_scan <= now {
            self.next_scan = Instant::now() + self.cfg.scan_interval;
            self.periodic();
        }
    }

    pub(super) fn periodic(&mut self) {
        for root in self.missing_roots.clone() {
            if std::fs::symlink_metadata(&root).is_ok() {
                self.missing_roots.remove(&root);
                self.rescan(&root, "watch root appeared", 0, true);
            }
        }
        let tops: Vec<PathBuf> = self.unwatched.iter().cloned().collect();
        for top in tops {
            // Still unwatched (`walk` sees it in `unwatched`): a plain scan, no new WatchLimit.
            self.rescan(
                &top,
                "periodic scan of a tree that could not be watched",
                0,
                false,
            );
        }
    }

    pub(super) fn check_lost(&mut self) {
        let lost = self.shared.lost.swap(0, Ordering::SeqCst);
        if lost == 0 {
            return;
        }
        let wds: HashSet<i32> = self
            .shared
            .lost_wds
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        let reason = format!(
            "event channel full (capacity {}): notifications dropped",
            self.cfg.queue_capacity
        );
        let dirs: Vec<PathBuf> = self
            .shared
            .lost_dirs
            .lock()
            .map(|mut s| s.drain().collect())
            .unwrap_or_default();
        let (dirs, all) = self.backend.lost_dirs(&wds, dirs);
        let tops: BTreeSet<PathBuf> = dirs.into_iter().collect();
        if all || tops.len() > 64 {
            self.rescan_all(&reason, lost);
        } else {
            let minimal: Vec<PathBuf> = tops
                .iter()
                .filter(|p| !tops.iter().any(|q| q != *p && p.starts_with(q)))
                .cloned()
                .collect();
            for (i, t) in minimal.iter().enumerate() {
                self.rescan(t, &reason, if i == 0 { lost } else { 0 }, true);
            }
        }
    }

    pub(super) fn rescan_all(&mut self, reason: &str, lost: u64) {
        // Unpaired moves are resolved by the rescan's own rename detection.
        self.moves.clear();
        for (i, root) in self.cfg.roots.clone().iter().enumerate() {
            if self.is_excluded_abs(root) {
                continue;
            }
            self.rescan(root, reason, if i == 0 { lost } else { 0 }, true);
        }
    }

    /// Compare the tree under `top` with the in-memory state, emit the differences as
    /// `Source::Rescan`, and report an `AgentEvent::Rescan` (always when `always`, else when
    /// something changed).
    pub(super) fn rescan(&mut self, top: &Path, reason: &str, lost: u64, always: bool) {
        let pend: Vec<PathBuf> = self
            .pending
            .keys()
            .filter(|p| p.starts_with(top))
            .cloned()
            .collect();
        for p in pend {
            self.flush(&p);
        }
        self.rescans += 1;
        self.holding = true;
        let mut mode = Walk::Reconcile(Recon::new(Source::Rescan, true));
        let mut ctx = WalkCtx::default();
        let exists = self.walk(top, &mut mode, &mut ctx);
        if !exists && self.cfg.roots.iter().any(|r| r == top) {
            self.missing_roots.insert(top.to_path_buf());
        }
        let changes = match mode {
            Walk::Reconcile(rec) => self.finish(rec),
            Walk::Appeared => Vec::new(),
        };
        let n = changes.len() as u64;
        for c in changes {
            self.emit(Output::Change(Box::new(c)));
        }
        self.release_checkpoints();
        if always || n > 0 {
            tracing::warn!(path = %top.display(), reason, changes = n, lost_notifications = lost, "Rescanned watched tree.");
            self.emit(Output::Agent(Box::new(AgentEvent::Rescan {
                path: top.to_path_buf(),
                reason: reason.to_string(),
                changes: n,
                lost_notifications: lost,
            })));
        }
        self.report_limit(top, ctx);
    }

    pub(super) fn report_limit(&mut self, top: &Path, ctx: WalkCtx) {
        if ctx.newly_unwatched.is_empty() {
            return;
        }
        let err = ctx.limit_error.unwrap_or_default();
        let n = ctx.newly_unwatched.len();
        let first = ctx.newly_unwatched[0].display().to_string();
        let sysctl = if err.contains("ENOSPC") {
            SYSCTL_WATCHES
        } else {
            ""
        };
        tracing::error!(
            path = %top.display(),
            unwatched_dirs = n,
            first = %first,
            error = %err,
            sysctl,
            scan_interval_secs = self.cfg.scan_interval.as_millis().div_ceil(1000) as u64,
            "Could not watch every directory (raise sysctl {SYSCTL_WATCHES} if ENOSPC); scanning those trees periodically instead."
        );
        for d in ctx.newly_unwatched {
            if !self.unwatched.iter().any(|u| d.starts_with(u)) {
                self.unwatched.insert(d);
            }
        }
        self.emit(Output::Agent(Box::new(AgentEvent::WatchLimit {
            path: top.to_path_buf(),
            sysctl: if sysctl.is_empty() {
                SYSCTL_WATCHES.to_string()
            } else {
                sysctl.to_string()
            },
            error: format!("{err}: {n} directories not watched (first: {first})"),
            scan_interval_secs: self.cfg.scan_interval.as_millis().div_ceil(1000) as u64,
        })));
    }

    // ---- exclusion ----

    pub(super) fn is_excluded_name(&self, name: &std::ffi::OsStr) -> bool {
        self.excludes.is_match(Path::new(name))
    }

    pub(super) fn is_excluded_path(&self, path: &Path) -> bool {
        self.cfg.exclude_paths.iter().any(|x| path.starts_with(x))
    }

    /// A full check for a path below (or equal to) a root.
    pub(super) fn is_excluded_abs(&self, path: &Path) -> bool {
        if self.is_excluded_path(path) {
            return true;
        }
        let Some(root) = self
            .cfg
            .roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
        else {
            return true;
        };
        path.strip_prefix(root)
            .map(|rel| {
                rel.components()
                    .any(|c| matches!(c, Component::Normal(n) if self.is_excluded_name(n)))
            })
            .unwrap_or(true)
    }
}
