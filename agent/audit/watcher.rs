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
//! known tree, an on-disk [`Tree`] with a bounded cache; the watch map, pending writes and
//! renames), does the `lstat`s and scans, and
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
//! - `IN_Q_OVERFLOW` / a full channel: the affected trees are rescanned against the known tree,
//!   directory by directory (each listing merged with its stored record: memory is one directory
//!   plus the differences, never two trees); the differences are emitted with `Source::Rescan`,
//!   then one `AgentEvent::Rescan` per tree. Catch-up at start is the same walk (`Source::CatchUp`).
//! - the known tree is checkpointed ([`Output::Checkpoint`]) every 500 ms while it changes and
//!   when the watcher goes idle; the consumer acknowledges a checkpoint
//!   ([`CheckpointAcks::ack`]) once every change before it is durable, and only then is it
//!   committed to disk. Without a consumer taking [`Watcher::checkpoint_acks`] the processor
//!   commits at once.
//! - watch limit (`ENOSPC`, or `WatchConfig::max_watches`): `AgentEvent::WatchLimit` and the
//!   unwatched subtrees are scanned every `scan_interval` (`Source::Rescan`, plus an
//!   `AgentEvent::Rescan` when something changed). `EMFILE` at `inotify_init` degrades everything.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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
use super::snapshot::Snapshot;
use super::tree::{Merged, Tree, TreeOptions};

/// Excluded path components unless configured otherwise.
pub fn default_excludes() -> Vec<String> {
    vec![".ipynb_checkpoints".to_string(), ".Trash-*".to_string()]
}

const SYSCTL_WATCHES: &str = "fs.inotify.max_user_watches";
const SYSCTL_INSTANCES: &str = "fs.inotify.max_user_instances";
const SYSCTL_QUEUE: &str = "fs.inotify.max_queued_events";
/// Deeper trees are recorded down to here and not descended further (one open fd per level).
const MAX_DEPTH: usize = 512;
/// A dirty tree is checkpointed at least this often (and whenever the watcher goes idle).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// At stop, how long the processor waits for the last checkpoint to be acknowledged.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(10);

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
    #[error("watch tree: {0}")]
    Tree(String),
}

/// The known tree the watcher starts from.
pub struct Baseline {
    pub tree: Tree,
    /// Compare the live tree with it and report the differences as `Source::CatchUp` (false: take
    /// the live tree as it is, e.g. on the very first start).
    pub catch_up: bool,
}

impl Baseline {
    /// A baseline from an in-memory snapshot (an old `watch.snapshot`, or a test's), in an
    /// anonymous tree.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Baseline, WatchError> {
        let mut tree =
            Tree::anonymous(TreeOptions::default()).map_err(|e| WatchError::Tree(e.to_string()))?;
        fill_tree(&mut tree, snapshot).map_err(|e| WatchError::Tree(e.to_string()))?;
        Ok(Baseline {
            tree,
            catch_up: true,
        })
    }
}

/// Puts every entry of `snapshot` into `tree` and commits it (checkpointing as it goes, so the
/// dirty part stays within the cache budget).
pub fn fill_tree(tree: &mut Tree, snapshot: &Snapshot) -> Result<(), super::tree::log::LogError> {
    for (p, f) in &snapshot.entries {
        tree.upsert(p, f.clone());
        if tree.wants_checkpoint() {
            if let Some(n) = tree.checkpoint()? {
                tree.commit(n)?;
            }
        }
    }
    if let Some(n) = tree.checkpoint()? {
        tree.commit(n)?;
    }
    Ok(())
}

/// What the watcher produces.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Boxed, as is `Agent`: a burst can fill the output queue, and a queued item is then one
    /// pointer rather than a whole change.
    Change(Box<FsChange>),
    Agent(Box<AgentEvent>),
    /// The known tree's changes up to here were written to its log as checkpoint `n`, in order
    /// with the changes: every change it reflects was sent before it. The consumer acknowledges it
    /// ([`CheckpointAcks::ack`]) once everything before it is durable; only then is it committed.
    /// Sent every 500 ms while the tree changes, when the watcher goes idle and as the last output
    /// at stop (after pending writes and moves are flushed).
    Checkpoint(u64),
}

/// Counters for `status` and the `Started` event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Live inotify watches.
    pub watches: u64,
    /// Entries in the known tree (a counter: the tree itself is on disk).
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
    Stats(mpsc::Sender<WatchStats>),
    /// Every change up to checkpoint n is durable downstream: commit it.
    Commit(u64),
    Stop,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Someone acknowledges checkpoints ([`Watcher::checkpoint_acks`]): commit only on their word.
    acks: AtomicBool,
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
    /// unwatched) and the known tree is brought up to date; with a `baseline` whose `catch_up` is
    /// set, the differences to it are then sent as `Source::CatchUp` changes ahead of any live
    /// change. Without a baseline the known tree lives in an anonymous temp file.
    pub fn start(
        config: WatchConfig,
        baseline: Option<Baseline>,
    ) -> Result<(Watcher, Receiver<Output>, StartInfo), WatchError> {
        for r in &config.roots {
            if !r.is_absolute() {
                return Err(WatchError::NotAbsolute(r.clone()));
            }
        }
        let baseline = match baseline {
            Some(b) => b,
            None => Baseline {
                tree: Tree::anonymous(TreeOptions::default())
                    .map_err(|e| WatchError::Tree(e.to_string()))?,
                catch_up: false,
            },
        };
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
                let catch_up = baseline.catch_up;
                let mut p = Processor::new(
                    config,
                    excludes,
                    inotify,
                    proc_shared,
                    out_tx,
                    baseline.tree,
                );
                if let Some(e) = init_error {
                    p.inotify_init_failed(e);
                }
                p.initial(catch_up, &ready_tx);
                p.run(&rx);
                p.shutdown(&rx);
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

    /// The whole known tree read into memory (tests and benches: it costs what the tree weighs).
    pub fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = mpsc::channel();
        self.tx.send(Msg::Snapshot(tx)).ok()?;
        rx.recv().ok()
    }

    /// The handle that acknowledges [`Output::Checkpoint`]s. Once taken, checkpoints are
    /// committed only when acknowledged (and the watcher waits for the last one at stop).
    pub fn checkpoint_acks(&self) -> CheckpointAcks {
        self.shared.acks.store(true, Ordering::SeqCst);
        CheckpointAcks {
            tx: self.tx.clone(),
        }
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

/// Acknowledges checkpoints to the watcher (see [`Output::Checkpoint`]); usable after the
/// [`Watcher`] itself was handed to another thread to stop it.
#[derive(Clone)]
pub struct CheckpointAcks {
    tx: Sender<Msg>,
}

impl CheckpointAcks {
    /// Every change before checkpoint `n` is durable. Never blocks: false when the watcher's
    /// queue is full (acknowledge again later; a later number covers the earlier ones) or it has
    /// stopped.
    pub fn ack(&self, n: u64) -> bool {
        self.tx.try_send(Msg::Commit(n)).is_ok()
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

/// What a walk does with each directory it lists.
enum Walk {
    /// A directory that appeared live: every entry not yet known is stored and reported at once.
    Appeared,
    /// Catch-up or rescan: each listing is merged with the stored record.
    Reconcile(Recon),
}

/// The differences a reconcile found so far (the tree itself is updated as it goes).
struct Recon {
    source: Source,
    /// Report (false: the first start takes the tree as it is).
    emit: bool,
    time_ms: i64,
    /// New paths, with what they replaced (another inode under the same name and kind).
    creates: Vec<(PathBuf, FileFacts, Option<FileFacts>)>,
    updates: Vec<FsChange>,
    deletes: Vec<FsChange>,
    /// Stored paths no longer there; removed from the tree (with what is below) at the end.
    vanished: Vec<(PathBuf, FileFacts)>,
}

impl Recon {
    fn new(source: Source, emit: bool) -> Self {
        Recon {
            source,
            emit,
            time_ms: now_ms(),
            creates: Vec::new(),
            updates: Vec::new(),
            deletes: Vec::new(),
            vanished: Vec::new(),
        }
    }
}

/// The same file, moved: rename keeps inode, kind, size and mtime.
fn same_file(a: &FileFacts, b: &FileFacts) -> bool {
    a.inode == b.inode
        && a.kind == b.kind
        && (a.kind == FileKind::Directory || (a.size == b.size && a.mtime_ms == b.mtime_ms))
}

/// A difference between stored and live facts that is reported, or that later comparisons need
/// (a directory's own size and mtime follow its children and are neither).
fn worth_storing(o: &FileFacts, f: &FileFacts) -> bool {
    o.inode != f.inode
        || o.kind != f.kind
        || o.mode != f.mode
        || o.uid != f.uid
        || o.gid != f.gid
        || (f.kind != FileKind::Directory
            && (o.size != f.size || o.mtime_ms != f.mtime_ms || o.link_target != f.link_target))
}

/// `Update` when the contents changed (a non-directory), `SetAttributes` when mode or owner did.
fn content_and_attrs(
    path: &Path,
    o: &FileFacts,
    f: &FileFacts,
    source: Source,
    time_ms: i64,
) -> Vec<FsChange> {
    let is_dir = f.kind == FileKind::Directory;
    let content = !is_dir
        && (o.inode != f.inode
            || o.size != f.size
            || o.mtime_ms != f.mtime_ms
            || o.link_target != f.link_target
            || matches!((&o.sha256, &f.sha256), (Some(a), Some(b)) if a != b));
    let attrs = o.mode != f.mode || o.uid != f.uid || o.gid != f.gid;
    let mut out = Vec::new();
    for (yes, kind) in [
        (content, ChangeKind::Update),
        (attrs, ChangeKind::SetAttributes),
    ] {
        if yes {
            out.push(FsChange {
                kind,
                path: path.to_path_buf(),
                facts: Some(f.clone()),
                time_ms,
                source,
            });
        }
    }
    out
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
    /// The known tree: every path (roots included) with its last seen facts, on disk.
    tree: Tree,
    /// When the tree was last checkpointed.
    last_checkpoint: Instant,
    /// A reconcile is under way: checkpoints are written but announced only after its changes
    /// were sent (`held`), so no checkpoint ever covers a change not yet sent.
    holding: bool,
    held: Option<u64>,
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
            inotify,
            shared,
            out,
            out_closed: false,
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            tree,
            last_checkpoint: Instant::now(),
            holding: false,
            held: None,
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

    // ---- durability of the known tree ----

    /// Checkpoint the tree when it changed and the time has come (a pause in the events is the
    /// other moment, see `next_msg`).
    fn maybe_checkpoint(&mut self) {
        if !self.tree.is_dirty() {
            return;
        }
        if self.checkpoint_for_memory() || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY {
            self.checkpoint();
        }
    }

    /// Dirty directories exceed the cache budget: checkpoint to free them, but not more often
    /// than every `CHECKPOINT_EVERY / 5` (a single directory larger than the budget stays dirty
    /// whatever we do, and re-encoding it after every event would make a burst quadratic).
    fn checkpoint_for_memory(&self) -> bool {
        self.tree.wants_checkpoint() && self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY / 5
    }

    fn checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        match self.tree.checkpoint() {
            Ok(Some(n)) if self.holding => self.held = Some(n),
            Ok(Some(n)) => self.announce(n),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "Cannot write the watch tree; the next start may report changes twice.")
            }
        }
        if !self.holding {
            self.tree_faults();
        }
    }

    fn announce(&mut self, n: u64) {
        if self.shared.acks.load(Ordering::SeqCst) {
            self.emit(Output::Checkpoint(n));
        } else {
            self.commit(n);
        }
    }

    /// The changes of a reconcile were sent: checkpoints it wrote may be announced now.
    fn release_checkpoints(&mut self) {
        self.holding = false;
        if let Some(n) = self.held.take() {
            self.announce(n);
        }
    }

    fn commit(&mut self, n: u64) {
        if let Err(e) = self.tree.commit(n) {
            tracing::error!(error = %e, "Cannot commit the watch tree; the next start may report changes twice.");
        }
    }

    /// Records of the tree that no longer check when read back: reported, and their directories
    /// rescanned (they were taken as empty).
    fn tree_faults(&mut self) {
        let (faults, dirs) = self.tree.take_faults();
        if faults.is_empty() {
            return;
        }
        let path = self.tree_path();
        for f in faults {
            self.tamper(&path, format!("watch tree record unusable: {f}"));
        }
        for d in dirs {
            if !self.is_excluded_abs(&d) {
                self.rescan(&d, "watch tree record unusable", 0, true);
            }
        }
    }

    fn tree_path(&self) -> PathBuf {
        PathBuf::from(format!("{:?}", self.tree))
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

    fn initial(&mut self, catch_up: bool, ready: &mpsc::Sender<StartInfo>) {
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
            watches: self.wd_path.len() as u64,
            known_paths: self.tree.len(),
            catch_up_changes: changes.len() as u64,
        };
        let _ = ready.send(info);
        for c in changes {
            self.emit(Output::Change(Box::new(c)));
        }
        self.release_checkpoints();
        self.checkpoint();
    }

    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut since_check = 0usize;
        loop {
            if self.out_closed {
                return;
            }
            match self.next_msg(rx) {
                Ok(Msg::Event(ev)) => {
                    self.handle(ev);
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
    fn next_msg(&mut self, rx: &Receiver<Msg>) -> Result<Msg, RecvTimeoutError> {
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
    fn dump(&mut self) -> Snapshot {
        let mut entries = BTreeMap::new();
        self.tree.visit(Path::new("/"), &mut |p, f| {
            entries.insert(p.to_path_buf(), f.clone());
        });
        Snapshot { entries }
    }

    fn stats(&self) -> WatchStats {
        WatchStats {
            watches: self.wd_path.len() as u64,
            known_paths: self.tree.len(),
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
        if self.tree.is_dirty() {
            d = d.min(self.last_checkpoint + CHECKPOINT_EVERY);
        }
        d
    }

    fn shutdown(&mut self, rx: &Receiver<Msg>) {
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
        if let Some(ino) = &self.inotify {
            for wd in self.wd_path.keys() {
                let _ = ino.rm_watch(*wd);
            }
        }
        self.wd_path.clear();
        self.path_wd.clear();
    }

    /// At stop: wait (bounded) until the consumer acknowledged every checkpoint, and commit.
    fn await_last_ack(&mut self, rx: &Receiver<Msg>) {
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

    /// Scan `top` and everything below it directory by directory, adding watches to directories
    /// (first the watch, then the listing, so nothing created in between is missed), and hand each
    /// directory's listing to `mode`. Never follows a symlink: every directory is opened
    /// `O_NOFOLLOW|O_DIRECTORY` relative to its parent's fd and checked to be the inode `fstatat`
    /// saw. Returns false when `top` does not exist.
    fn walk(&mut self, top: &Path, mode: &mut Walk, ctx: &mut WalkCtx) -> bool {
        let facts = match lstat_facts(top) {
            Ok(f) => f,
            Err(e) => {
                if e.raw_os_error() != Some(libc_enoent()) {
                    tracing::warn!(path = %top.display(), error = %e, "Cannot stat path to scan.");
                }
                if let Walk::Reconcile(rec) = mode {
                    self.reconcile_entry(top, None, rec);
                }
                return false;
            }
        };
        let is_dir = facts.kind == FileKind::Directory;
        let inode = facts.inode;
        self.visit_entry(top, facts, mode);
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
        self.scan_dir(fd.as_fd(), top, watch, 0, mode, ctx);
        true
    }

    fn scan_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        watch: bool,
        depth: usize,
        mode: &mut Walk,
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
        // This directory's entries with their facts, then its subdirectories: memory is one
        // directory (plus the names of the subdirectories still to visit on the way down).
        let mut listing: Vec<(OsString, FileFacts)> = Vec::with_capacity(names.len());
        let mut subdirs: Vec<(OsString, u64)> = Vec::new();
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
                subdirs.push((name.clone(), st.st_ino));
            }
            if facts.kind == FileKind::SymbolicLink {
                facts.link_target = nix::fcntl::readlinkat(fd, name.as_os_str())
                    .ok()
                    .map(PathBuf::from);
            }
            listing.push((name, facts));
        }
        listing.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        self.visit_listing(dir, listing, mode);
        subdirs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, ino) in subdirs {
            let path = dir.join(&name);
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
            if nix::sys::stat::fstat(&child).map(|s| s.st_ino) != Ok(ino) {
                continue;
            }
            self.scan_dir(
                child.as_fd(),
                &path,
                watch_children && !ctx.limit_hit,
                depth + 1,
                mode,
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

    // ---- what a walk does with what it finds ----

    /// One entry found by a walk (its top).
    fn visit_entry(&mut self, path: &Path, facts: FileFacts, mode: &mut Walk) {
        match mode {
            Walk::Appeared => self.appeared_entry(path, facts),
            Walk::Reconcile(rec) => match self.tree.lookup(path) {
                Some(o) => self.reconcile_entry(path, Some((o, facts)), rec),
                None => self.reconcile_new(path, facts, rec),
            },
        }
    }

    /// One directory's listing (sorted by name bytes).
    fn visit_listing(&mut self, dir: &Path, listing: Vec<(OsString, FileFacts)>, mode: &mut Walk) {
        match mode {
            Walk::Appeared => {
                for (name, facts) in listing {
                    self.appeared_entry(&dir.join(name), facts);
                }
            }
            Walk::Reconcile(rec) => {
                // The differences of this directory, then the tree is brought up to date.
                let mut ops: Vec<(OsString, Option<FileFacts>, Option<FileFacts>)> = Vec::new();
                self.tree.merge_dir(dir, &listing, |m| match m {
                    Merged::Stored(n, o) => ops.push((n.to_os_string(), Some(o.clone()), None)),
                    Merged::Live(n, f) => ops.push((n.to_os_string(), None, Some(f.clone()))),
                    Merged::Both(n, o, f) => {
                        if worth_storing(o, f) {
                            ops.push((n.to_os_string(), Some(o.clone()), Some(f.clone())));
                        }
                    }
                });
                drop(listing);
                for (name, old, new) in ops {
                    let path = dir.join(name);
                    match (old, new) {
                        (Some(o), Some(f)) => self.reconcile_entry(&path, Some((o, f)), rec),
                        (Some(o), None) => rec.vanished.push((path, o)),
                        (None, Some(f)) => self.reconcile_new(&path, f, rec),
                        (None, None) => {}
                    }
                }
            }
        }
        if self.checkpoint_for_memory() {
            // Free the dirty directories; in a reconcile the checkpoint is announced only after
            // its changes were sent (see `finish`).
            self.checkpoint();
        }
    }

    /// A new directory's entry (or the directory itself): reported unless already known.
    fn appeared_entry(&mut self, path: &Path, facts: FileFacts) {
        if self
            .tree
            .lookup(path)
            .is_some_and(|k| k.inode == facts.inode)
        {
            return;
        }
        self.tree.upsert(path, facts.clone());
        self.change(ChangeKind::Create, path.to_path_buf(), Some(facts));
    }

    /// A path the tree does not know: stored, and a Create unless a rename explains it.
    fn reconcile_new(&mut self, path: &Path, facts: FileFacts, rec: &mut Recon) {
        self.tree.upsert(path, facts.clone());
        if rec.emit {
            rec.creates.push((path.to_path_buf(), facts, None));
        }
    }

    /// A known path as stored (`(old, new)` with `old` from the tree) or gone (`None`).
    fn reconcile_entry(
        &mut self,
        path: &Path,
        pair: Option<(FileFacts, FileFacts)>,
        rec: &mut Recon,
    ) {
        let Some((o, f)) = pair else {
            if let Some(o) = self.tree.lookup(path) {
                rec.vanished.push((path.to_path_buf(), o));
            }
            return;
        };
        if !worth_storing(&o, &f) {
            return;
        }
        if o.kind != f.kind {
            // Another kind of file under the same name: the old one (and what was below it) is
            // deleted, the new one created.
            let mut gone = Vec::new();
            self.remove_known(path, &mut gone);
            if rec.emit {
                rec.deletes.extend(gone);
            }
            self.reconcile_new(path, f, rec);
            return;
        }
        self.tree.upsert(path, f.clone());
        if !rec.emit {
            return;
        }
        if o.inode != f.inode {
            // Replaced: a rename onto it if the inode vanished elsewhere, else an update.
            rec.creates.push((path.to_path_buf(), f, Some(o)));
        } else {
            rec.updates
                .extend(content_and_attrs(path, &o, &f, rec.source, rec.time_ms));
        }
    }

    /// Removes `path` and what is stored below it from the tree, forgetting their watches and
    /// pending writes; their Deletes (children first) are appended to `out`.
    fn remove_known(&mut self, path: &Path, out: &mut Vec<FsChange>) {
        let time_ms = now_ms();
        let Processor {
            tree,
            pending,
            path_wd,
            wd_path,
            inotify,
            ..
        } = self;
        tree.remove_subtree(path, &mut |p, f| {
            pending.remove(p);
            if f.kind == FileKind::Directory {
                forget_watch_in(path_wd, wd_path, inotify.as_deref(), p);
            }
            out.push(FsChange {
                kind: ChangeKind::Delete,
                path: p.to_path_buf(),
                facts: Some(f),
                time_ms,
                source: Source::Rescan,
            });
        });
    }

    /// The end of a reconcile: renames paired by inode, vanished paths removed from the tree, and
    /// every change in the order renames, creates (parents first), updates, deletes (children
    /// first). Memory: the differences, never the tree.
    fn finish(&mut self, rec: Recon) -> Vec<FsChange> {
        let Recon {
            source,
            emit,
            time_ms,
            creates,
            updates,
            mut deletes,
            vanished,
        } = rec;
        let ev = |kind: ChangeKind, path: &Path, facts: &FileFacts| FsChange {
            kind,
            path: path.to_path_buf(),
            facts: Some(facts.clone()),
            time_ms,
            source,
        };
        let mut out = Vec::new();
        // new top of a renamed directory -> old top
        let mut renamed_dirs: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut renamed_from: HashSet<usize> = HashSet::new();
        let mut kept = Vec::new();
        if emit {
            let mut by_inode: HashMap<u64, usize> = HashMap::new();
            for (i, (_, o)) in vanished.iter().enumerate() {
                by_inode.insert(o.inode, i);
            }
            let mut renames = Vec::new();
            let mut plain = Vec::new();
            for (path, f, replaced) in creates {
                let hit = by_inode
                    .get(&f.inode)
                    .copied()
                    .filter(|i| !renamed_from.contains(i) && same_file(&vanished[*i].1, &f));
                match hit {
                    Some(i) => {
                        renamed_from.insert(i);
                        let from = vanished[i].0.clone();
                        if f.kind == FileKind::Directory {
                            renamed_dirs.insert(path.clone(), from.clone());
                        }
                        renames.push((path, f, from));
                    }
                    None => plain.push((path, f, replaced)),
                }
            }
            // Inside a renamed directory, an entry that is the same file under the same relative
            // name is implied by the directory's rename.
            for (path, f, from) in renames {
                if self.implied(&path, &f, &renamed_dirs) {
                    continue;
                }
                out.push(ev(ChangeKind::Rename { from }, &path, &f));
            }
            for (path, f, replaced) in plain {
                if self.implied(&path, &f, &renamed_dirs) {
                    continue;
                }
                match replaced {
                    None => out.push(ev(ChangeKind::Create, &path, &f)),
                    Some(o) => kept.extend(content_and_attrs(&path, &o, &f, source, time_ms)),
                }
            }
        }
        out.extend(kept);
        out.extend(updates);
        // Vanished paths leave the tree; below a renamed directory only what has no same file at
        // the new place is a Delete.
        let old_to_new: HashMap<PathBuf, PathBuf> = renamed_dirs
            .iter()
            .map(|(n, o)| (o.clone(), n.clone()))
            .collect();
        for (i, (path, _)) in vanished.iter().enumerate().rev() {
            let mut gone = Vec::new();
            self.remove_known(path, &mut gone);
            if !emit {
                continue;
            }
            let moved = renamed_from.contains(&i);
            for mut c in gone {
                if moved && c.path == *path {
                    continue;
                }
                if let Some(f) = &c.facts {
                    if self.implied_old(&c.path, f, &old_to_new) {
                        continue;
                    }
                }
                c.source = source;
                c.time_ms = time_ms;
                deletes.push(c);
            }
        }
        for d in &mut deletes {
            d.source = source;
        }
        out.extend(deletes);
        out
    }

    /// `path` (new) lies in a renamed directory and the same file is at the same relative name
    /// in the old one (still in the tree).
    fn implied(
        &mut self,
        path: &Path,
        f: &FileFacts,
        renamed_dirs: &HashMap<PathBuf, PathBuf>,
    ) -> bool {
        for a in path.ancestors().skip(1) {
            if let Some(old) = renamed_dirs.get(a) {
                let Ok(rel) = path.strip_prefix(a) else {
                    return false;
                };
                return self
                    .tree
                    .lookup(&old.join(rel))
                    .is_some_and(|o| same_file(&o, f));
            }
        }
        false
    }

    /// `path` (old, being removed) lies in a renamed directory and the same file is at the same
    /// relative name in the new one.
    fn implied_old(
        &mut self,
        path: &Path,
        f: &FileFacts,
        old_to_new: &HashMap<PathBuf, PathBuf>,
    ) -> bool {
        for a in path.ancestors().skip(1) {
            if let Some(new) = old_to_new.get(a) {
                let Ok(rel) = path.strip_prefix(a) else {
                    return false;
                };
                return self
                    .tree
                    .lookup(&new.join(rel))
                    .is_some_and(|n| same_file(f, &n));
            }
        }
        false
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
            if self.tree.contains(&path) {
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
            if self.tree.contains(&path) {
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
                if self.tree.contains(path) {
                    return;
                }
                if self.ghosts.insert(path.to_path_buf()) {
                    self.change(ChangeKind::Create, path.to_path_buf(), None);
                }
                return;
            }
        };
        let known = self.tree.lookup(path);
        if known
            .as_ref()
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
        if let Some(old) = known {
            // A different file now has this name (our earlier scan saw a predecessor).
            self.remove_subtree_known(path, old.kind == FileKind::Directory);
        }
        match facts.kind {
            FileKind::Directory => {
                let mut ctx = WalkCtx::default();
                self.walk(path, &mut Walk::Appeared, &mut ctx);
                self.report_limit(path, ctx);
            }
            FileKind::Regular => {
                self.tree.upsert(path, facts);
                let deadline = Instant::now() + self.cfg.write_settle;
                self.pending
                    .insert(path.to_path_buf(), (PendKind::Create, deadline));
            }
            _ => {
                self.tree.upsert(path, facts.clone());
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
        let is_dir = self
            .tree
            .lookup(path)
            .map(|f| f.kind == FileKind::Directory);
        if let Some(is_dir) = is_dir {
            self.remove_subtree_known(path, is_dir);
        }
    }

    /// Emit Delete for `path` and whatever is still known below it (children first); forget them.
    fn remove_subtree_known(&mut self, path: &Path, is_dir: bool) {
        let Processor {
            tree,
            pending,
            path_wd,
            wd_path,
            inotify,
            out,
            out_closed,
            ..
        } = self;
        let mut gone = |p: &Path, f: FileFacts| {
            pending.remove(p);
            if f.kind == FileKind::Directory {
                forget_watch_in(path_wd, wd_path, inotify.as_deref(), p);
            }
            let o = Output::Change(Box::new(FsChange {
                kind: ChangeKind::Delete,
                path: p.to_path_buf(),
                facts: Some(f),
                time_ms: now_ms(),
                source: Source::Live,
            }));
            if !*out_closed && out.send(o).is_err() {
                *out_closed = true;
            }
        };
        if is_dir {
            tree.remove_subtree(path, &mut gone);
        } else if let Some(f) = tree.remove(path) {
            gone(path, f);
        }
    }

    fn remove_subtree(&mut self, path: &Path) {
        self.remove_subtree_known(path, true);
    }

    fn moved_out(&mut self, from: &Path) {
        let is_dir = self
            .tree
            .lookup(from)
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
        {
            let Processor {
                tree,
                pending,
                path_wd,
                wd_path,
                inotify,
                ..
            } = self;
            tree.remove_subtree(to, &mut |p, _| {
                pending.remove(p);
                forget_watch_in(path_wd, wd_path, inotify.as_deref(), p);
            });
        }
        // The directory keeps its node: one record moves, whatever the size of the subtree.
        self.tree.rename(from, to);
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
                self.tree.upsert(to, f.clone());
                Some(f)
            }
            Err(_) => self.tree.lookup(to),
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
        let Some(known) = self.tree.lookup(path) else {
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
            self.tree.upsert(path, now.clone());
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
        let known = self.tree.lookup(path);
        let facts = match lstat_facts(path) {
            Ok(f) if known.as_ref().is_none_or(|k| k.inode == f.inode) => {
                self.tree.upsert(path, f.clone());
                Some(f)
            }
            _ => known.clone(),
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

/// Forget the watch of `path`, on the fields it needs (callable while the tree is borrowed).
fn forget_watch_in(
    path_wd: &mut BTreeMap<PathBuf, WatchDescriptor>,
    wd_path: &mut HashMap<WatchDescriptor, PathBuf>,
    inotify: Option<&Inotify>,
    path: &Path,
) {
    if let Some(wd) = path_wd.remove(path) {
        if wd_path.get(&wd).is_some_and(|p| p == path) {
            wd_path.remove(&wd);
            if let Some(ino) = inotify {
                let _ = ino.rm_watch(wd);
            }
        }
    }
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
