//! The live half of the audit pipeline: inotify watches over the configured trees, turned into
//! [`FsChange`] values and [`AgentEvent`]s on a bounded output channel.
//!
//! Why nix's inotify and not notify's inotify backend: notify keeps its own watch-descriptor →
//! path map and does not rewrite it for the subtree of a renamed directory (its `MOVE_SELF`
//! branch is a TODO), pairs only the most recent `IN_MOVED_FROM`, walks with `metadata` (follows
//! symlinks) and watches `IN_OPEN` too (twice the queue use). Here we need the overflow event, the
//! rename cookies, `ENOSPC` per directory and path bookkeeping across renames, so we read the
//! inotify fd ourselves.
//!
//! Threads: the *reader* blocks in `read(2)` on the inotify fd and only `try_send`s each event into
//! a bounded channel; when it is full the event is counted as lost and its watch descriptor
//! remembered, and the *processor* rescans the affected trees. The processor owns all state (the
//! in-memory tree, the watch map, pending writes and renames), does the `lstat`s and scans, and
//! blocks on the output channel when the consumer is slow (the kernel queue and our channel then
//! overflow, which is recorded, never silent).
//!
//! What is emitted (all `Source::Live` unless said otherwise):
//! - new regular file: one `Create` when the writer closes it (`IN_CLOSE_WRITE`), or `write_settle`
//!   after `IN_CREATE` if it stays open (later writes then give `Update` at close). So
//!   create + write + close is exactly one `Create` carrying the final size.
//! - new directory, symlink, FIFO, socket: `Create` at once; a new directory is watched first and
//!   then scanned, and every entry found in it not yet known gets its own `Create`.
//! - writes to an existing file: one `Update` at `IN_CLOSE_WRITE` (several `IN_MODIFY` coalesce), or
//!   `write_settle` after the first unflushed `IN_MODIFY` for a writer that keeps the file open.
//! - `chmod`/`chown` (and `utimes` on non-directories): `SetAttributes` when mode, uid, gid (or a
//!   file's mtime) differ from what was known; a hard-link count change alone emits nothing.
//! - delete: `Delete` with the last known facts. Moving out of the tree is a `Delete` (one per
//!   known path of a moved directory, children first); moving in is a `Create` (+ scan).
//! - rename inside the tree: one `Rename { from }` for the moved path only (children follow
//!   implicitly; watched paths of the subtree are rewritten). Renaming onto an existing file is one
//!   `Rename` (the replaced file is implied).
//! - `IN_Q_OVERFLOW` / a full channel: the affected trees are rescanned against the in-memory state;
//!   the differences are emitted with `Source::Rescan`, then one `AgentEvent::Rescan` per tree.
//! - watch limit (`ENOSPC`, or `WatchConfig::max_watches`): `AgentEvent::WatchLimit` and the
//!   unwatched subtrees are scanned every `scan_interval` (`Source::Rescan`, plus an
//!   `AgentEvent::Rescan` when something changed). `EMFILE` at `inotify_init` degrades everything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use nix::sys::stat::{FileStat, Mode, SFlag};

use super::change::{now_ms, AgentEvent, ChangeKind, FileFacts, FileKind, FsChange, Source};
use super::queue::{self, Receiver, Sender};
use super::snapshot::{diff, Snapshot};

/// Excluded path components unless configured otherwise.
pub fn default_excludes() -> Vec<String> {
    vec![".ipynb_checkpoints".to_string(), ".Trash-*".to_string()]
}

const SYSCTL_WATCHES: &str = "fs.inotify.max_user_watches";
const SYSCTL_INSTANCES: &str = "fs.inotify.max_user_instances";
const SYSCTL_QUEUE: &str = "fs.inotify.max_queued_events";
/// Deeper trees are recorded down to here and not descended further (one open fd per level).
const MAX_DEPTH: usize = 512;

/// How the watcher runs. `Default` gives the daemon's values; tests shrink the capacities/intervals.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// Absolute paths to watch recursively.
    pub roots: Vec<PathBuf>,
    /// Glob patterns matched against every path component below a root (`*` does not cross `/`).
    pub exclude_globs: Vec<String>,
    /// Absolute paths never watched or reported, with everything below them.
    pub exclude_paths: Vec<PathBuf>,
    /// The agent's own directories inside the tree (the spool): never watched or reported, found
    /// by inode wherever they are moved, and every rename, move or removal of one is reported as
    /// `AgentEvent::SpoolTamper`. A path that does not exist at start is excluded by path.
    pub guarded: Vec<PathBuf>,
    /// Capacity of the reader → processor channel, in inotify events.
    pub queue_capacity: usize,
    /// Capacity of the output channel.
    pub output_capacity: usize,
    /// Simulated `max_user_watches`: adding watch number N+1 fails with `ENOSPC`.
    pub max_watches: Option<usize>,
    /// Period of the scan of trees that could not be watched (and of missing roots).
    pub scan_interval: Duration,
    /// How long an open, written file may go without `IN_CLOSE_WRITE` before its event is emitted.
    pub write_settle: Duration,
    /// How long an `IN_MOVED_FROM` waits for its `IN_MOVED_TO` before it counts as a move out.
    pub rename_wait: Duration,
    /// Tests only: the reader waits this long before its first read, so the kernel queue
    /// (`fs.inotify.max_queued_events`) really overflows.
    #[doc(hidden)]
    pub stall_reader: Option<Duration>,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            roots: vec![PathBuf::from("/home/ec2-user/SageMaker")],
            exclude_globs: default_excludes(),
            exclude_paths: Vec::new(),
            guarded: Vec::new(),
            queue_capacity: 65_536,
            output_capacity: 65_536,
            max_watches: None,
            scan_interval: Duration::from_secs(60),
            write_settle: Duration::from_millis(500),
            rename_wait: Duration::from_millis(20),
            stall_reader: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("watch path {0} is not absolute")]
    NotAbsolute(PathBuf),
    #[error("invalid exclude pattern {pattern:?}: {error}")]
    BadGlob { pattern: String, error: String },
    #[error("cannot start the watcher thread: {0}")]
    Thread(std::io::Error),
    #[error("inotify: {0}")]
    Inotify(Errno),
    #[error("watcher stopped during startup")]
    Startup,
}

/// What the watcher produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Boxed, as is `Agent`: a burst can fill the output queue, and a queued item is then one
    /// pointer rather than a whole change.
    Change(Box<FsChange>),
    Agent(Box<AgentEvent>),
    /// The in-memory tree encoded ([`Snapshot::encode`]), in order with the changes: every change
    /// it reflects was sent before it. Sent on [`Watcher::request_snapshot`] and as the last output
    /// at stop (after pending writes and moves are flushed), so the daemon can persist it once
    /// everything before it is durable.
    Snapshot(Vec<u8>),
}

/// Counters for `status` and the `Started` event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Live inotify watches.
    pub watches: u64,
    /// Entries in the in-memory tree.
    pub known_paths: u64,
    /// Notifications dropped because the channel was full (all rescanned).
    pub lost_notifications: u64,
    /// `IN_Q_OVERFLOW` events seen.
    pub overflows: u64,
    /// Rescans done (overflow, full channel, periodic).
    pub rescans: u64,
    /// Directories scanned periodically because they could not be watched.
    pub unwatched_dirs: u64,
}

/// What `start` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfo {
    pub watches: u64,
    pub known_paths: u64,
    /// `CatchUp` changes emitted against the baseline snapshot.
    pub catch_up_changes: u64,
}

enum Msg {
    Event(InotifyEvent),
    Snapshot(mpsc::Sender<Snapshot>),
    SnapshotInline,
    Stats(mpsc::Sender<WatchStats>),
    Stop,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    lost: AtomicU64,
    lost_total: AtomicU64,
    lost_wds: Mutex<HashSet<i32>>,
}

/// A running watcher. Dropping it stops it (as [`Watcher::stop`]).
pub struct Watcher {
    /// The inotify descriptor, for the daemon's live watch count (`/proc/self/fdinfo`).
    inotify_fd: Option<i32>,
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    processor: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Watch `config.roots`. Returns once every reachable directory is watched (or recorded as
    /// unwatched) and the in-memory tree is built; if `baseline` is given, the differences to it are
    /// then sent as `Source::CatchUp` changes ahead of any live change.
    pub fn start(
        config: WatchConfig,
        baseline: Option<Snapshot>,
    ) -> Result<(Watcher, Receiver<Output>, StartInfo), WatchError> {
        for r in &config.roots {
            if !r.is_absolute() {
                return Err(WatchError::NotAbsolute(r.clone()));
            }
        }
        let excludes = build_globs(&config.exclude_globs)?;
        let shared = Arc::new(Shared::default());
        let (tx, rx) = queue::bounded::<Msg>(config.queue_capacity);
        let (out_tx, out_rx) = queue::bounded::<Output>(config.output_capacity);

        let mut init_error = None;
        let inotify = match Inotify::init(InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(Arc::new(i)),
            Err(e) => {
                init_error = Some(e);
                None
            }
        };
        let inotify_fd = inotify.as_ref().map(|i| {
            use std::os::fd::{AsFd, AsRawFd};
            i.as_fd().as_raw_fd()
        });
        let reader = match &inotify {
            Some(ino) => {
                let ino = Arc::clone(ino);
                let tx = tx.clone();
                let shared = Arc::clone(&shared);
                let stall = config.stall_reader;
                Some(
                    std::thread::Builder::new()
                        .name("watch-reader".into())
                        .spawn(move || {
                            if let Some(d) = stall {
                                std::thread::sleep(d);
                            }
                            read_loop(&ino, &tx, &shared)
                        })
                        .map_err(WatchError::Thread)?,
                )
            }
            None => None,
        };

        let (ready_tx, ready_rx) = mpsc::channel::<StartInfo>();
        let proc_shared = Arc::clone(&shared);
        let processor = std::thread::Builder::new()
            .name("watch-processor".into())
            .stack_size(8 << 20)
            .spawn(move || {
                let mut p = Processor::new(config, excludes, inotify, proc_shared, out_tx);
                if let Some(e) = init_error {
                    p.inotify_init_failed(e);
                }
                p.initial(baseline, &ready_tx);
                p.run(&rx);
                p.shutdown();
            })
            .map_err(WatchError::Thread)?;
        let info = ready_rx.recv().map_err(|_| WatchError::Startup)?;
        let watcher = Watcher {
            inotify_fd,
            tx,
            shared,
            processor: Some(processor),
            reader,
        };
        Ok((watcher, out_rx, info))
    }

    /// The inotify descriptor (None when inotify could not be initialised): the kernel's own
    /// count of live watches is in `/proc/self/fdinfo/<fd>`.
    pub fn inotify_fd(&self) -> Option<i32> {
        self.inotify_fd
    }

    /// A copy of the in-memory tree, for the daemon to persist with [`Snapshot::save`].
    pub fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Snapshot(tx)).ok()?;
        rx.recv().ok()
    }

    /// Ask for an [`Output::Snapshot`] in the output stream. Never blocks: false when the
    /// watcher's queue is full (ask again later) or it has stopped.
    pub fn request_snapshot(&self) -> bool {
        self.tx.try_send(Msg::SnapshotInline).is_ok()
    }

    pub fn stats(&self) -> Option<WatchStats> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Stats(tx)).ok()?;
        rx.recv().ok()
    }

    /// Stop both threads; the output channel then ends. Pending writes and moves are flushed.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.tx.send(Msg::Stop);
        if let Some(p) = self.processor.take() {
            let _ = p.join();
        }
        // The processor removed every watch, which queues IN_IGNORED and wakes the reader. With no
        // watch ever added the reader stays blocked in read(2): leave it detached, it holds only
        // the inotify fd.
        if let Some(r) = self.reader.take() {
            let until = Instant::now() + Duration::from_millis(200);
            while !r.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(2));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The reader: nothing but `read(2)` and `try_send`.
fn read_loop(ino: &Inotify, tx: &Sender<Msg>, shared: &Shared) {
    loop {
        let events = match ino.read_events() {
            Ok(ev) => ev,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "Reading inotify failed; watcher reader stops.");
                return;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        for ev in events {
            match tx.try_send(Msg::Event(ev)) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Event(ev))) => {
                    shared.lost.fetch_add(1, Ordering::SeqCst);
                    shared.lost_total.fetch_add(1, Ordering::SeqCst);
                    let wd = if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                        -1
                    } else {
                        ev.wd.as_raw()
                    };
                    if let Ok(mut set) = shared.lost_wds.lock() {
                        set.insert(wd);
                    }
                }
                Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

fn build_globs(patterns: &[String]) -> Result<GlobSet, WatchError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| WatchError::BadGlob {
                pattern: p.clone(),
                error: e.to_string(),
            })?;
        b.add(g);
    }
    b.build().map_err(|e| WatchError::BadGlob {
        pattern: patterns.join(","),
        error: e.to_string(),
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PendKind {
    Create,
    Update,
}

struct PendingMove {
    from: PathBuf,
    deadline: Instant,
}

/// Per-walk bookkeeping of watch failures.
#[derive(Default)]
struct WalkCtx {
    /// Stop trying to add watches for the rest of this walk (limit reached).
    limit_hit: bool,
    limit_error: Option<String>,
    newly_unwatched: Vec<PathBuf>,
}

struct Processor {
    cfg: WatchConfig,
    excludes: GlobSet,
    inotify: Option<Arc<Inotify>>,
    shared: Arc<Shared>,
    out: Sender<Output>,
    out_closed: bool,
    proc_fd: bool,
    /// The known tree: every path (roots included) with its last seen facts.
    state: BTreeMap<PathBuf, FileFacts>,
    wd_path: HashMap<WatchDescriptor, PathBuf>,
    path_wd: BTreeMap<PathBuf, WatchDescriptor>,
    pending: HashMap<PathBuf, (PendKind, Instant)>,
    moves: HashMap<u32, PendingMove>,
    /// Paths created and gone before their `lstat`: reported as Create (no facts) then Delete.
    ghosts: HashSet<PathBuf>,
    /// Directories (with their subtrees) scanned periodically instead of watched.
    unwatched: BTreeSet<PathBuf>,
    missing_roots: BTreeSet<PathBuf>,
    next_scan: Instant,
    overflows: u64,
    rescans: u64,
    guarded: Vec<Guarded>,
    /// `IN_MOVED_FROM` cookie of a guarded directory → its index, until the `IN_MOVED_TO`.
    guarded_moves: HashMap<u32, usize>,
}

/// A directory of the agent's own (`WatchConfig::guarded`), known by its inode.
struct Guarded {
    /// Where it is now, as far as the watcher saw (empty once it left the tree).
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Processor {
    fn new(
        cfg: WatchConfig,
        excludes: GlobSet,
        inotify: Option<Arc<Inotify>>,
        shared: Arc<Shared>,
        out: Sender<Output>,
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
            inotify,
            shared,
            out,
            out_closed: false,
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            state: BTreeMap::new(),
            wd_path: HashMap::new(),
            path_wd: BTreeMap::new(),
            pending: HashMap::new(),
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

    // ---- the agent's own directories ----

    fn guarded_by_stat(&self, st: &FileStat) -> Option<usize> {
        self.guarded
            .iter()
            .position(|g| g.ino == st.st_ino && g.dev == st.st_dev)
    }

    /// A guarded directory found at `path` during a scan: not reported; a new place is recorded.
    fn guarded_found(&mut self, i: usize, path: &Path) {
        if self.guarded[i].path != path {
            let was = std::mem::replace(&mut self.guarded[i].path, path.to_path_buf());
            self.tamper(
                path,
                format!(
                    "the agent's spool directory is now at this path (was {})",
                    was.display()
                ),
            );
        }
    }

    fn tamper(&mut self, path: &Path, what: String) {
        tracing::warn!(path = %path.display(), what, "The agent's spool directory was tampered with.");
        self.emit(Output::Agent(Box::new(AgentEvent::SpoolTamper {
            path: path.to_path_buf(),
            what,
        })));
    }

    /// Events about a guarded directory's own entry; true when the event was one.
    fn guarded_event(&mut self, path: &Path, m: AddWatchFlags, cookie: u32) -> bool {
        if m.contains(AddWatchFlags::IN_MOVED_TO) {
            if let Some(i) = self.guarded_moves.remove(&cookie) {
                self.guarded_found(i, path);
                return true;
            }
        }
        let Some(i) = self.guarded.iter().position(|g| g.path == path) else {
            return false;
        };
        if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            self.guarded_moves.insert(cookie, i);
            self.tamper(
                path,
                "the agent's spool directory was renamed or moved away".into(),
            );
            return true;
        }
        if m.contains(AddWatchFlags::IN_DELETE) {
            self.guarded[i].path = PathBuf::new();
            self.tamper(path, "the agent's spool directory was deleted".into());
            return true;
        }
        if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
            // Something else now has its name (it left without a rename we could pair): that is
            // audited like any other file.
            self.guarded[i].path = PathBuf::new();
            return false;
        }
        true
    }

    fn emit(&mut self, o: Output) {
        if self.out_closed {
            return;
        }
        if self.out.send(o).is_err() {
            self.out_closed = true;
        }
    }

    fn change(&mut self, kind: ChangeKind, path: PathBuf, facts: Option<FileFacts>) {
        self.emit(Output::Change(Box::new(FsChange {
            kind,
            path,
            facts,
            time_ms: now_ms(),
            source: Source::Live,
        })));
    }

    fn inotify_init_failed(&mut self, e: Errno) {
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

    fn initial(&mut self, baseline: Option<Snapshot>, ready: &mpsc::Sender<StartInfo>) {
        let mut found = BTreeMap::new();
        for root in self.cfg.roots.clone() {
            if self.is_excluded_abs(&root) {
                continue;
            }
            let mut ctx = WalkCtx::default();
            if !self.walk(&root, &mut found, &mut ctx) {
                tracing::warn!(path = %root.display(), "Watch root does not exist; checking for it every scan interval.");
                self.missing_roots.insert(root.clone());
            }
            self.report_limit(&root, ctx);
        }
        self.state = found;
        let changes = baseline
            .map(|b| diff(&b.entries, &self.state, Source::CatchUp))
            .unwrap_or_default();
        let info = StartInfo {
            watches: self.wd_path.len() as u64,
            known_paths: self.state.len() as u64,
            catch_up_changes: changes.len() as u64,
        };
        let _ = ready.send(info);
        for c in changes {
            self.emit(Output::Change(Box::new(c)));
        }
    }

    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut since_check = 0usize;
        loop {
            if self.out_closed {
                return;
            }
            let timeout = self
                .next_deadline()
                .saturating_duration_since(Instant::now());
            match rx.recv_timeout(timeout) {
                Ok(Msg::Event(ev)) => {
                    self.handle(ev);
                    since_check += 1;
                    if since_check >= 4096 {
                        since_check = 0;
                        self.check_lost();
                    }
                }
                Ok(Msg::Snapshot(tx)) => {
                    let _ = tx.send(Snapshot {
                        entries: self.state.clone(),
                    });
                }
                Ok(Msg::Stats(tx)) => {
                    let _ = tx.send(self.stats());
                }
                Ok(Msg::SnapshotInline) => {
                    let bytes = self.encode_state();
                    self.emit(Output::Snapshot(bytes));
                }
                Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    since_check = 0;
                    self.check_lost();
                }
            }
            self.expire(Instant::now());
        }
    }

    /// The tree encoded as a snapshot, without copying it.
    fn encode_state(&mut self) -> Vec<u8> {
        let snap = Snapshot {
            entries: std::mem::take(&mut self.state),
        };
        let bytes = snap.encode();
        self.state = snap.entries;
        bytes
    }

    fn stats(&self) -> WatchStats {
        WatchStats {
            watches: self.wd_path.len() as u64,
            known_paths: self.state.len() as u64,
            lost_notifications: self.shared.lost_total.load(Ordering::SeqCst),
            overflows: self.overflows,
            rescans: self.rescans,
            unwatched_dirs: self.unwatched.len() as u64,
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = Instant::now() + Duration::from_millis(250);
        for (_, t) in self.pending.values() {
            d = d.min(*t);
        }
        for m in self.moves.values() {
            d = d.min(m.deadline);
        }
        if !self.unwatched.is_empty() || !self.missing_roots.is_empty() {
            d = d.min(self.next_scan);
        }
        d
    }

    fn shutdown(&mut self) {
        let pend: Vec<PathBuf> = self.pending.keys().cloned().collect();
        for p in pend {
            self.flush(&p);
        }
        let moves: Vec<PendingMove> = self.moves.drain().map(|(_, m)| m).collect();
        for m in moves {
            self.moved_out(&m.from);
        }
        let bytes = self.encode_state();
        self.emit(Output::Snapshot(bytes));
        if let Some(ino) = &self.inotify {
            for wd in self.wd_path.keys() {
                let _ = ino.rm_watch(*wd);
            }
        }
        self.wd_path.clear();
        self.path_wd.clear();
    }

    /// Flush pending writes and unmatched moves whose time has come; run the periodic scan.
    fn expire(&mut self, now: Instant) {
        let due: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, (_, t))| *t <= now)
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

    fn periodic(&mut self) {
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

    fn check_lost(&mut self) {
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
        let mut tops: BTreeSet<PathBuf> = BTreeSet::new();
        let mut all = wds.contains(&-1);
        let mut matched = 0;
        for (wd, p) in &self.wd_path {
            if wds.contains(&wd.as_raw()) {
                matched += 1;
                tops.insert(p.clone());
            }
        }
        if matched < wds.len() {
            all = true;
        }
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

    fn rescan_all(&mut self, reason: &str, lost: u64) {
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
    fn rescan(&mut self, top: &Path, reason: &str, lost: u64, always: bool) {
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
        let mut found = BTreeMap::new();
        let mut ctx = WalkCtx::default();
        let exists = self.walk(top, &mut found, &mut ctx);
        if !exists && self.cfg.roots.iter().any(|r| r == top) {
            self.missing_roots.insert(top.to_path_buf());
        }
        // The subtree's old entries are moved out of the state, not copied: a rescan of a root
        // after an overflow in a burst would otherwise hold the whole tree three times.
        let old = take_subtree(&mut self.state, top);
        let changes = diff(&old, &found, Source::Rescan);
        for p in old.keys() {
            if !found.contains_key(p) {
                self.forget_watch(p);
            }
        }
        drop(old);
        self.state.append(&mut found);
        let n = changes.len() as u64;
        for c in changes {
            self.emit(Output::Change(Box::new(c)));
        }
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

    fn report_limit(&mut self, top: &Path, ctx: WalkCtx) {
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

    fn is_excluded_name(&self, name: &std::ffi::OsStr) -> bool {
        self.excludes.is_match(Path::new(name))
    }

    fn is_excluded_path(&self, path: &Path) -> bool {
        self.cfg.exclude_paths.iter().any(|x| path.starts_with(x))
    }

    /// A full check for a path below (or equal to) a root.
    fn is_excluded_abs(&self, path: &Path) -> bool {
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

    // ---- scanning ----

    /// Record `top` and everything below it into `out`, adding watches to directories (first the
    /// watch, then the listing, so nothing created in between is missed). Never follows a symlink:
    /// every directory is opened `O_NOFOLLOW|O_DIRECTORY` relative to its parent's fd and checked to
    /// be the inode `fstatat` saw. Returns false when `top` does not exist.
    fn walk(
        &mut self,
        top: &Path,
        out: &mut BTreeMap<PathBuf, FileFacts>,
        ctx: &mut WalkCtx,
    ) -> bool {
        let facts = match lstat_facts(top) {
            Ok(f) => f,
            Err(e) => {
                if e.raw_os_error() != Some(libc_enoent()) {
                    tracing::warn!(path = %top.display(), error = %e, "Cannot stat path to scan.");
                }
                return false;
            }
        };
        let is_dir = facts.kind == FileKind::Directory;
        let inode = facts.inode;
        out.insert(top.to_path_buf(), facts);
        if !is_dir {
            return true;
        }
        let fd = match open_dir_path(top) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(path = %top.display(), error = %e, "Cannot open directory to scan (swapped for a symlink or unreadable).");
                return true;
            }
        };
        if nix::sys::stat::fstat(&fd).map(|s| s.st_ino) != Ok(inode) {
            return true;
        }
        let watch = !self.unwatched.iter().any(|u| top.starts_with(u));
        self.scan_dir(fd.as_fd(), top, watch, 0, out, ctx);
        true
    }

    fn scan_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        watch: bool,
        depth: usize,
        out: &mut BTreeMap<PathBuf, FileFacts>,
        ctx: &mut WalkCtx,
    ) {
        let mut watch_children = watch;
        if watch {
            if let Err(e) = self.add_watch(fd, dir, ctx) {
                watch_children = false;
                if ctx.limit_error.is_none() {
                    ctx.limit_error = Some(e);
                }
                ctx.newly_unwatched.push(dir.to_path_buf());
            }
        }
        let names = match self.list(fd, dir) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "Cannot list directory.");
                return;
            }
        };
        for name in names {
            if self.is_excluded_name(&name) {
                continue;
            }
            let path = dir.join(&name);
            if self.is_excluded_path(&path) {
                continue;
            }
            let st = match nix::sys::stat::fstatat(
                fd,
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Cannot stat entry during scan.");
                    continue;
                }
            };
            let mut facts = facts_from_stat(&st);
            if facts.kind == FileKind::Directory {
                if let Some(i) = self.guarded_by_stat(&st) {
                    self.guarded_found(i, &path);
                    continue;
                }
            }
            if facts.kind == FileKind::SymbolicLink {
                facts.link_target = nix::fcntl::readlinkat(fd, name.as_os_str())
                    .ok()
                    .map(PathBuf::from);
            }
            let is_dir = facts.kind == FileKind::Directory;
            out.insert(path.clone(), facts);
            if !is_dir {
                continue;
            }
            if depth + 1 >= MAX_DEPTH {
                tracing::warn!(path = %path.display(), max_depth = MAX_DEPTH, "Directory tree too deep; not descending further.");
                continue;
            }
            let child = match nix::fcntl::openat(fd, name.as_os_str(), dir_flags(), Mode::empty()) {
                Ok(c) => c,
                // ELOOP/ENOTDIR: swapped for a symlink or a file since the fstatat.
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "Directory changed during scan; not descending.");
                    continue;
                }
            };
            if nix::sys::stat::fstat(&child).map(|s| s.st_ino) != Ok(st.st_ino) {
                continue;
            }
            self.scan_dir(
                child.as_fd(),
                &path,
                watch_children && !ctx.limit_hit,
                depth + 1,
                out,
                ctx,
            );
            if watch_children
                && ctx.limit_hit
                && !self.path_wd.contains_key(&path)
                && !ctx.newly_unwatched.iter().any(|u| path.starts_with(u))
            {
                ctx.newly_unwatched.push(path.clone());
            }
        }
    }

    fn list(&self, fd: BorrowedFd<'_>, dir: &Path) -> std::io::Result<Vec<OsString>> {
        // std's read_dir through the fd's /proc magic link reads exactly the directory we opened
        // with O_NOFOLLOW, whatever happened to its path since (and works past PATH_MAX).
        let p = if self.proc_fd {
            PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        } else {
            dir.to_path_buf()
        };
        let mut names = Vec::new();
        for e in std::fs::read_dir(p)? {
            names.push(e?.file_name());
        }
        Ok(names)
    }

    fn add_watch(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        ctx: &mut WalkCtx,
    ) -> Result<(), String> {
        if ctx.limit_hit {
            if self.path_wd.contains_key(dir) {
                return Ok(());
            }
            return Err(ctx.limit_error.clone().unwrap_or_else(|| "ENOSPC".into()));
        }
        let Some(ino) = self.inotify.clone() else {
            return Err("no inotify instance".into());
        };
        if let Some(max) = self.cfg.max_watches {
            if self.wd_path.len() >= max && !self.path_wd.contains_key(dir) {
                ctx.limit_hit = true;
                return Err(format!(
                    "ENOSPC: No space left on device (simulated limit of {max} watches)"
                ));
            }
        }
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR
            // IN_EXCL_UNLINK (not named by nix): no events from files already unlinked.
            | AddWatchFlags::from_bits_retain(0x0400_0000);
        // Through /proc/self/fd the watch lands on the inode we opened with O_NOFOLLOW, and
        // paths beyond PATH_MAX work; without /proc, the path itself and IN_DONT_FOLLOW.
        let res = if self.proc_fd {
            ino.add_watch(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(), mask)
        } else {
            ino.add_watch(dir, mask | AddWatchFlags::IN_DONT_FOLLOW)
        };
        match res {
            Ok(wd) => {
                if let Some(old) = self.wd_path.insert(wd, dir.to_path_buf()) {
                    if old != dir {
                        self.path_wd.remove(&old);
                    }
                }
                if let Some(prev) = self.path_wd.insert(dir.to_path_buf(), wd) {
                    if prev != wd && self.wd_path.get(&prev).is_some_and(|p| p == dir) {
                        self.wd_path.remove(&prev);
                    }
                }
                Ok(())
            }
            Err(Errno::ENOSPC) => {
                ctx.limit_hit = true;
                Err(format!(
                    "ENOSPC: {} (raise {SYSCTL_WATCHES})",
                    Errno::ENOSPC.desc()
                ))
            }
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "Cannot watch directory; scanning it periodically.");
                Err(format!("{e}"))
            }
        }
    }

    fn forget_watch(&mut self, path: &Path) {
        if let Some(wd) = self.path_wd.remove(path) {
            if self.wd_path.get(&wd).is_some_and(|p| p == path) {
                self.wd_path.remove(&wd);
                if let Some(ino) = &self.inotify {
                    let _ = ino.rm_watch(wd);
                }
            }
        }
    }

    // ---- live events ----

    fn handle(&mut self, ev: InotifyEvent) {
        let m = ev.mask;
        if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            self.overflows += 1;
            let q = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
            let reason = format!("inotify queue overflow ({SYSCTL_QUEUE}={q})");
            let lost = self.shared.lost.swap(0, Ordering::SeqCst);
            if let Ok(mut s) = self.shared.lost_wds.lock() {
                s.clear();
            }
            self.rescan_all(&reason, lost);
            return;
        }
        if m.contains(AddWatchFlags::IN_IGNORED) {
            if let Some(p) = self.wd_path.remove(&ev.wd) {
                if self.path_wd.get(&p) == Some(&ev.wd) {
                    self.path_wd.remove(&p);
                }
            }
            return;
        }
        let Some(dir) = self.wd_path.get(&ev.wd).cloned() else {
            return;
        };
        let Some(name) = ev.name else {
            self.handle_self(&dir, m);
            return;
        };
        if self.is_excluded_name(&name) {
            return;
        }
        let path = dir.join(&name);
        if self.is_excluded_path(&path) {
            return;
        }
        if !self.guarded.is_empty() && self.guarded_event(&path, m, ev.cookie) {
            return;
        }
        if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            self.flush_subtree(&path);
            if self.state.contains_key(&path) {
                let deadline = Instant::now() + self.cfg.rename_wait;
                self.moves.insert(
                    ev.cookie,
                    PendingMove {
                        from: path,
                        deadline,
                    },
                );
            }
        } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
            match self.moves.remove(&ev.cookie) {
                Some(mv) => self.renamed(&mv.from, &path),
                None => self.appeared(&path),
            }
        } else if m.contains(AddWatchFlags::IN_CREATE) {
            self.appeared(&path);
        } else if m.contains(AddWatchFlags::IN_DELETE) {
            self.deleted(&path);
        } else if m.contains(AddWatchFlags::IN_MODIFY) {
            if self.state.contains_key(&path) {
                let deadline = Instant::now() + self.cfg.write_settle;
                self.pending
                    .entry(path)
                    .or_insert((PendKind::Update, deadline));
            }
        } else if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
            if self.pending.contains_key(&path) {
                self.flush(&path);
            }
        } else if m.contains(AddWatchFlags::IN_ATTRIB) {
            self.attrib(&path);
        }
    }

    /// Events about a watched directory itself: only roots matter (others are reported by their
    /// parent's watch).
    fn handle_self(&mut self, dir: &Path, m: AddWatchFlags) {
        if !self.cfg.roots.iter().any(|r| r == dir) {
            return;
        }
        if m.contains(AddWatchFlags::IN_ATTRIB) {
            self.attrib(dir);
        } else if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF) {
            tracing::warn!(path = %dir.display(), "Watch root removed or moved away.");
            self.remove_subtree(dir);
            self.missing_roots.insert(dir.to_path_buf());
        }
    }

    /// A path appeared (created, or moved in from outside).
    fn appeared(&mut self, path: &Path) {
        let facts = match lstat_facts(path) {
            Ok(f) => f,
            Err(e) => {
                if e.raw_os_error() != Some(libc_enoent()) {
                    tracing::warn!(path = %path.display(), error = %e, "Cannot stat new path.");
                }
                // Already known: a rescan (after lost notifications) found it before this queued
                // IN_CREATE was read, and reported it; its IN_DELETE follows.
                if self.state.contains_key(path) {
                    return;
                }
                if self.ghosts.insert(path.to_path_buf()) {
                    self.change(ChangeKind::Create, path.to_path_buf(), None);
                }
                return;
            }
        };
        if self
            .state
            .get(path)
            .is_some_and(|k| k.inode == facts.inode && k.kind == facts.kind)
        {
            return;
        }
        // Only a directory with a guarded inode number costs a second lstat (for its device).
        if facts.kind == FileKind::Directory && self.guarded.iter().any(|g| g.ino == facts.inode) {
            if let Some(i) = nix::sys::stat::lstat(path)
                .ok()
                .and_then(|st| self.guarded_by_stat(&st))
            {
                self.guarded_found(i, path);
                return;
            }
        }
        if let Some(old) = self.state.get(path).cloned() {
            // A different file now has this name (our earlier scan saw a predecessor).
            self.remove_subtree_known(path, old.kind == FileKind::Directory);
        }
        match facts.kind {
            FileKind::Directory => {
                let mut found = BTreeMap::new();
                let mut ctx = WalkCtx::default();
                self.walk(path, &mut found, &mut ctx);
                for (p, f) in found {
                    if self.state.get(&p).is_some_and(|k| k.inode == f.inode) {
                        continue;
                    }
                    self.state.insert(p.clone(), f.clone());
                    self.change(ChangeKind::Create, p, Some(f));
                }
                self.report_limit(path, ctx);
            }
            FileKind::Regular => {
                self.state.insert(path.to_path_buf(), facts);
                let deadline = Instant::now() + self.cfg.write_settle;
                self.pending
                    .insert(path.to_path_buf(), (PendKind::Create, deadline));
            }
            _ => {
                self.state.insert(path.to_path_buf(), facts.clone());
                self.change(ChangeKind::Create, path.to_path_buf(), Some(facts));
            }
        }
    }

    fn deleted(&mut self, path: &Path) {
        if self
            .pending
            .get(path)
            .is_some_and(|(k, _)| *k == PendKind::Create)
        {
            self.flush(path);
        }
        self.pending.remove(path);
        if self.ghosts.remove(path) {
            self.change(ChangeKind::Delete, path.to_path_buf(), None);
            return;
        }
        let is_dir = self.state.get(path).map(|f| f.kind == FileKind::Directory);
        if let Some(is_dir) = is_dir {
            self.remove_subtree_known(path, is_dir);
        }
    }

    /// Emit Delete for `path` and whatever is still known below it (children first); forget them.
    fn remove_subtree_known(&mut self, path: &Path, is_dir: bool) {
        let paths: Vec<PathBuf> = if is_dir {
            subtree(&self.state, path).map(|(p, _)| p.clone()).collect()
        } else {
            vec![path.to_path_buf()]
        };
        for p in paths.into_iter().rev() {
            self.pending.remove(&p);
            if let Some(f) = self.state.remove(&p) {
                if f.kind == FileKind::Directory {
                    self.forget_watch(&p);
                }
                self.change(ChangeKind::Delete, p, Some(f));
            }
        }
    }

    fn remove_subtree(&mut self, path: &Path) {
        self.remove_subtree_known(path, true);
    }

    fn moved_out(&mut self, from: &Path) {
        let is_dir = self
            .state
            .get(from)
            .map(|f| f.kind == FileKind::Directory)
            .unwrap_or(false);
        self.remove_subtree_known(from, is_dir);
    }

    fn renamed(&mut self, from: &Path, to: &Path) {
        if from == to {
            return;
        }
        if self.is_excluded_abs(to) {
            return self.moved_out(from);
        }
        // Whatever `to` named before is replaced (only an empty directory or a non-directory can be).
        if let Some(old) = self.state.get(to).cloned() {
            let keys: Vec<PathBuf> = if old.kind == FileKind::Directory {
                subtree(&self.state, to).map(|(p, _)| p.clone()).collect()
            } else {
                vec![to.to_path_buf()]
            };
            for k in keys {
                self.state.remove(&k);
                self.pending.remove(&k);
                self.forget_watch(&k);
            }
        }
        let moved = take_subtree(&mut self.state, from);
        for (p, f) in moved {
            if let Ok(rel) = p.strip_prefix(from) {
                let np = if rel.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rel)
                };
                self.state.insert(np, f);
            }
        }
        let watched: Vec<(PathBuf, WatchDescriptor)> = self
            .path_wd
            .range(from.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(from))
            .map(|(p, w)| (p.clone(), *w))
            .collect();
        for (p, wd) in watched {
            self.path_wd.remove(&p);
            if let Ok(rel) = p.strip_prefix(from) {
                let np = if rel.as_os_str().is_empty() {
                    to.to_path_buf()
                } else {
                    to.join(rel)
                };
                self.wd_path.insert(wd, np.clone());
                self.path_wd.insert(np, wd);
            }
        }
        let facts = match lstat_facts(to) {
            Ok(f) => {
                self.state.insert(to.to_path_buf(), f.clone());
                Some(f)
            }
            Err(_) => self.state.get(to).cloned(),
        };
        self.change(
            ChangeKind::Rename {
                from: from.to_path_buf(),
            },
            to.to_path_buf(),
            facts,
        );
    }

    fn attrib(&mut self, path: &Path) {
        let Some(known) = self.state.get(path).cloned() else {
            return;
        };
        let Ok(now) = lstat_facts(path) else {
            return;
        };
        if now.inode != known.inode {
            return;
        }
        let owner_mode = now.mode != known.mode || now.uid != known.uid || now.gid != known.gid;
        let pending = self.pending.contains_key(path);
        let times = now.kind != FileKind::Directory && now.mtime_ms != known.mtime_ms && !pending;
        if owner_mode || times {
            self.state.insert(path.to_path_buf(), now.clone());
            self.change(ChangeKind::SetAttributes, path.to_path_buf(), Some(now));
        }
    }

    fn flush_subtree(&mut self, path: &Path) {
        let keys: Vec<PathBuf> = self
            .pending
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for k in keys {
            self.flush(&k);
        }
    }

    fn flush(&mut self, path: &Path) {
        let Some((kind, _)) = self.pending.remove(path) else {
            return;
        };
        let known = self.state.get(path).cloned();
        let facts = match lstat_facts(path) {
            Ok(f) if self.state.get(path).is_none_or(|k| k.inode == f.inode) => {
                self.state.insert(path.to_path_buf(), f.clone());
                Some(f)
            }
            _ => self.state.get(path).cloned(),
        };
        let kind = match kind {
            PendKind::Create => ChangeKind::Create,
            PendKind::Update => ChangeKind::Update,
        };
        // A write already reported: a rescan (after an overflow) saw the file as it is now and
        // reported it; the queued IN_MODIFY/IN_CLOSE_WRITE of that same write must not add an
        // Update. Same inode, size and mtime as last reported = nothing new to report.
        if kind == ChangeKind::Update {
            if let (Some(k), Some(f)) = (&known, &facts) {
                if k.inode == f.inode && k.size == f.size && k.mtime_ms == f.mtime_ms {
                    return;
                }
            }
        }
        self.change(kind, path.to_path_buf(), facts);
    }
}

/// Entries at or below `top` in a path-ordered map (a contiguous range: `Path` orders by component).
fn subtree<'a>(
    m: &'a BTreeMap<PathBuf, FileFacts>,
    top: &'a Path,
) -> impl Iterator<Item = (&'a PathBuf, &'a FileFacts)> + 'a {
    m.range(top.to_path_buf()..)
        .take_while(move |(p, _)| p.starts_with(top))
}

/// Removes `top` and everything below it from `m` and returns them. Below-`top` paths are one
/// contiguous range in `Path` order (components compare one by one).
/// A small subtree is moved out entry by entry; a large one (a root after an overflow) by splitting
/// the map, which costs a pass over the entries after it instead of a lookup per entry.
fn take_subtree(m: &mut BTreeMap<PathBuf, FileFacts>, top: &Path) -> BTreeMap<PathBuf, FileFacts> {
    let n = subtree(m, top).count();
    if n.saturating_mul(4) < m.len() {
        let keys: Vec<PathBuf> = subtree(m, top).map(|(p, _)| p.clone()).collect();
        return keys.iter().filter_map(|k| m.remove_entry(k)).collect();
    }
    let mut sub = m.split_off(top);
    if let Some(k) = sub.keys().nth(n).cloned() {
        let mut rest = sub.split_off(&k);
        m.append(&mut rest);
    }
    sub
}

fn libc_enoent() -> i32 {
    Errno::ENOENT as i32
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Facts of `path` without following a symlink; paths beyond PATH_MAX are resolved component by
/// component from `/` (also without following symlinks).
pub fn lstat_facts(path: &Path) -> std::io::Result<FileFacts> {
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            let mut f = FileFacts::from_metadata(&md);
            if f.kind == FileKind::SymbolicLink {
                f.link_target = std::fs::read_link(path).ok();
            }
            Ok(f)
        }
        Err(e) if e.raw_os_error() == Some(Errno::ENAMETOOLONG as i32) => {
            let (parent, name) = match (path.parent(), path.file_name()) {
                (Some(p), Some(n)) => (p, n),
                _ => return Err(e),
            };
            let fd = open_dir_path(parent)?;
            let st = nix::sys::stat::fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
            let mut f = facts_from_stat(&st);
            if f.kind == FileKind::SymbolicLink {
                f.link_target = nix::fcntl::readlinkat(&fd, name).ok().map(PathBuf::from);
            }
            Ok(f)
        }
        Err(e) => Err(e),
    }
}

/// Open a directory `O_NOFOLLOW`; past PATH_MAX, walk it from `/` one component at a time.
fn open_dir_path(path: &Path) -> std::io::Result<OwnedFd> {
    match nix::fcntl::open(path, dir_flags(), Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENAMETOOLONG) => {
            let mut fd = nix::fcntl::open("/", dir_flags(), Mode::empty())?;
            for c in path.components() {
                if let Component::Normal(n) = c {
                    fd = nix::fcntl::openat(&fd, n, dir_flags(), Mode::empty())?;
                }
            }
            Ok(fd)
        }
        Err(e) => Err(e.into()),
    }
}

fn facts_from_stat(st: &FileStat) -> FileFacts {
    let fmt = st.st_mode & 0o170000;
    let kind = match fmt {
        0o100000 => FileKind::Regular,
        0o040000 => FileKind::Directory,
        0o120000 => FileKind::SymbolicLink,
        0o010000 => FileKind::NamedPipe,
        0o140000 => FileKind::LocalSocket,
        0o020000 => FileKind::CharDevice,
        0o060000 => FileKind::BlockDevice,
        _ => FileKind::Unknown,
    };
    FileFacts {
        kind,
        size: st.st_size as u64,
        uid: st.st_uid,
        gid: st.st_gid,
        mode: st.st_mode & 0o7777,
        inode: st.st_ino,
        mtime_ms: st.st_mtime * 1000 + st.st_mtime_nsec / 1_000_000,
        sha256: None,
        hash_note: None,
        link_target: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(inode: u64) -> FileFacts {
        FileFacts {
            kind: FileKind::Regular,
            size: 0,
            uid: 0,
            gid: 0,
            mode: 0o644,
            inode,
            mtime_ms: 0,
            sha256: None,
            hash_note: None,
            link_target: None,
        }
    }

    fn map(paths: &[&str]) -> BTreeMap<PathBuf, FileFacts> {
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| (PathBuf::from(p), facts(i as u64)))
            .collect()
    }

    #[test]
    fn take_subtree_moves_exactly_the_subtree_out_small_or_large() {
        let all = [
            "/r", "/r/a", "/r/a/x", "/r/a/y/z", "/r/a-b", "/r/a.txt", "/r/ab", "/r/b", "/r/b/c",
        ];
        // "/r/a" is small next to the rest when the map is padded, large when it is not.
        for pad in [0usize, 100] {
            let mut m = map(&all);
            for i in 0..pad {
                m.insert(PathBuf::from(format!("/r/z{i:03}")), facts(1000 + i as u64));
            }
            let before = m.len();
            let sub = take_subtree(&mut m, Path::new("/r/a"));
            let got: Vec<&str> = sub.keys().filter_map(|p| p.to_str()).collect();
            assert_eq!(got, ["/r/a", "/r/a/x", "/r/a/y/z"], "pad {pad}");
            assert_eq!(m.len() + sub.len(), before);
            for k in ["/r", "/r/a-b", "/r/a.txt", "/r/ab", "/r/b", "/r/b/c"] {
                assert!(m.contains_key(Path::new(k)), "{k} must stay (pad {pad})");
            }
        }
        let mut m = map(&all);
        assert_eq!(take_subtree(&mut m, Path::new("/r")).len(), all.len());
        assert!(m.is_empty());
        assert!(take_subtree(&mut m, Path::new("/nothing")).is_empty());
    }
}
