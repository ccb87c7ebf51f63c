//! The live half of the audit pipeline: the events of one source (fanotify's filesystem mark,
//! or inotify's watches as the fallback; `select`) over the configured trees, turned into
//! [`FsChange`] values and [`AgentEvent`]s on a bounded output channel.
//!
//! Threads: the *reader* (`reader`) blocks on the source and only `try_send`s each event into a
//! bounded channel; when it is full the event is counted as lost and where it happened
//! remembered, and the *processor* (`processor`, with `walk`, `live`, `guard`, `durable`)
//! rescans the affected trees. The processor owns all state (the known tree, an on-disk
//! [`Tree`] with a bounded cache; inotify's watch map, pending writes and renames), does the
//! `lstat`s and scans, and blocks on the output channel when the consumer is slow (the kernel
//! queue and our channel then overflow, which is recorded, never silent). Both sources yield the
//! same [`RawEvent`](crate::audit::source::RawEvent)s, so everything below holds for both; what
//! differs: fanotify needs no watch per directory (no watch limit), names the acting process,
//! and sees the agent's own directories (filtered by inode, `guard`).
//!
//! What is emitted (all `Source::Live` unless said otherwise):
//! - new regular file: one `Create` when the writer closes it (close-write), or `write_settle`
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

mod backend;
mod durable;
mod facts;
mod guard;
mod live;
mod processor;
mod reader;
mod recon;
mod select;
mod walk;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

pub use facts::lstat_facts;
pub use select::{SourceChoice, SOURCE_ENV};

use super::change::{AgentEvent, FsChange};
use super::queue::{self, Receiver, Sender};
use super::snapshot::Snapshot;
use super::source::SourceKind;
use super::tree::{Tree, TreeOptions};
use crate::config::reads::ReadMatcher;
use processor::Processor;
use reader::{Msg, Shared};

/// Excluded path components unless configured otherwise.
pub fn default_excludes() -> Vec<String> {
    vec![".ipynb_checkpoints".to_string(), ".Trash-*".to_string()]
}

/// Deeper trees are recorded down to here and not descended further (one open fd per level).
pub(crate) const MAX_DEPTH: usize = 512;
/// A dirty tree is checkpointed at least this often (and whenever the watcher goes idle).
pub(crate) const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// At stop, how long the processor waits for the last checkpoint to be acknowledged.
pub(crate) const FINAL_ACK_WAIT: Duration = Duration::from_secs(10);

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
    /// Capacity of the reader → processor channel, in events.
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
    /// Which event source runs (default: `NOTEBOOK_AGENT_SOURCE`, else fanotify with inotify as
    /// the fallback).
    pub source: SourceChoice,
    /// The opt-in read audit's globs (`audit.reads`): reads of matching files become
    /// [`Output::Read`]. Needs the fanotify source; inotify ignores it.
    pub reads: Option<ReadMatcher>,
    /// Called on the reader thread with each acting pid as soon as its events are read (once
    /// per run of events by one process), so the daemon's process table can read `/proc/<pid>`
    /// before a short-lived process is gone. fanotify only.
    pub pid_seen: Option<PidHook>,
    /// Tests only: the reader waits this long before its first read, so the kernel queue
    /// (`fs.inotify.max_queued_events`, fanotify's 16,384 events) really overflows.
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
            source: SourceChoice::default(),
            reads: None,
            pid_seen: None,
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
    #[error("watcher stopped during startup")]
    Startup,
    #[error("watch tree: {0}")]
    Tree(String),
    #[error("event source: {0}")]
    BadSource(String),
    #[error("event source: fanotify was forced but is refused: {0}")]
    Fanotify(String),
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
    /// A file that `WatchConfig::reads` matches was read (closed by a reader that did not
    /// write; fanotify only). Not a change: the tree does not move, no checkpoint covers it.
    Read(Box<ReadEvent>),
}

/// See [`WatchConfig::pid_seen`].
#[derive(Clone)]
pub struct PidHook(pub Arc<dyn Fn(u32) + Send + Sync>);

impl std::fmt::Debug for PidHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PidHook")
    }
}

/// One read of a sensitive file (`audit.reads`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEvent {
    pub path: PathBuf,
    pub pid: Option<u32>,
    pub time_ms: i64,
}

/// Counters for `status` and the `Started` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchStats {
    /// Live inotify watches (0 with fanotify: it needs none).
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
    /// The event source that runs.
    pub source: SourceKind,
}

/// What `start` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfo {
    pub watches: u64,
    pub known_paths: u64,
    /// `CatchUp` changes emitted against the baseline snapshot.
    pub catch_up_changes: u64,
    /// The event source that runs, and why this one (what fanotify refused, or what it marked).
    pub source: SourceKind,
    pub source_reason: String,
}

/// A running watcher's counters, read from any thread ([`Watcher::counters`]).
#[derive(Clone)]
pub struct Counters(Arc<Shared>);

impl Counters {
    /// fanotify events that could not be named: their directory was gone (or deeper than
    /// PATH_MAX) when the event was read. A removed directory's own deletion is still reported.
    /// Counted over the whole filesystem mark (an unnamed event cannot be matched to
    /// `audit.paths`), since this daemon started.
    pub fn unresolved(&self) -> u64 {
        self.0.unresolved.load(Ordering::Relaxed)
    }
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

        let opened = select::open(&config)?;
        let inotify_fd = opened.backend.inotify_fd();
        let source_reason = opened.reason;
        let init_error = opened.init_error;
        let reader = match opened.reader {
            Some(half) => {
                let tx = tx.clone();
                let shared = Arc::clone(&shared);
                let stall = config.stall_reader;
                let hook = config.pid_seen.clone();
                Some(
                    std::thread::Builder::new()
                        .name("watch-reader".into())
                        .spawn(move || {
                            if let Some(d) = stall {
                                std::thread::sleep(d);
                            }
                            reader::read_loop(half, &tx, &shared, hook.as_ref())
                        })
                        .map_err(WatchError::Thread)?,
                )
            }
            None => None,
        };
        let backend = opened.backend;
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
                    backend,
                    proc_shared,
                    out_tx,
                    baseline.tree,
                );
                if let Some(e) = init_error {
                    p.inotify_init_failed(e);
                }
                p.initial(catch_up, source_reason, &ready_tx);
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

    /// The inotify descriptor (None when inotify could not be initialised or fanotify runs): the
    /// kernel's own count of live watches is in `/proc/self/fdinfo/<fd>`.
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

    /// Counters the daemon reads without a round trip to the processor.
    pub fn counters(&self) -> Counters {
        Counters(Arc::clone(&self.shared))
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
        // watch ever added the inotify reader stays blocked in read(2): leave it detached, it
        // holds only the inotify fd. The fanotify reader wakes every 200 ms to see the stop.
        if let Some(r) = self.reader.take() {
            let until = Instant::now() + Duration::from_millis(400);
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
