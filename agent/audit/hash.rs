//! sha256 of audited files, off the notify thread. The notebook user controls the tree, so a file
//! is opened component by component below its audited tree with `O_NOFOLLOW` (a symlink, at the
//! end or in the middle, is never followed out of the tree) and `O_NONBLOCK` (a FIFO cannot block
//! a worker); anything but a regular file is rejected after `fstat`. A token bucket in bytes/s
//! shared by all workers keeps a 10 GB copy from starving the rest of the pipeline.
//!
//! [`Hasher`] runs N worker threads behind a bounded queue and hands changes back **in the order
//! they were submitted**.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fstatat, Mode, SFlag};
use sha2::{Digest as _, Sha256};

use super::change::{ChangeKind, Digest, FileKind, FsChange};

/// Default read rate of all hash workers together: 200 MiB/s.
pub const DEFAULT_BYTES_PER_SEC: u64 = 200 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

pub const NOTE_VANISHED: &str = "vanished";
pub const NOTE_CHANGED: &str = "changed while hashing";
pub const NOTE_SYMLINK: &str = "symbolic link, not followed";
pub const NOTE_SYMLINK_IN_PATH: &str = "symlink in path, not followed";
pub const NOTE_NOT_REGULAR: &str = "not a regular file";
pub const NOTE_OUTSIDE: &str = "outside the audited trees";

#[derive(Debug, Clone)]
pub struct HashConfig {
    /// Larger files get `hash_note` "over hash_max_bytes" instead of a hash.
    pub max_bytes: u64,
    /// Read rate shared by all workers; 0 = unlimited.
    pub bytes_per_sec: u64,
    /// Worker threads (at least 1).
    pub workers: usize,
    /// Capacity of the input queue and of the output queue.
    pub queue: usize,
    /// The audited trees. Below a tree no symlink is followed; the tree path itself is trusted
    /// (configured by the operator). Empty: `/` is the tree. A path under no tree is not hashed.
    pub trees: Vec<PathBuf>,
}

impl Default for HashConfig {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            bytes_per_sec: DEFAULT_BYTES_PER_SEC,
            workers: 1,
            queue: 1024,
            trees: Vec::new(),
        }
    }
}

/// Token bucket in bytes. Debt model: a caller takes what it read and sleeps off any deficit,
/// so a chunk larger than the bucket still passes, at the configured rate.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `bytes_per_sec` 0 = unlimited. The bucket holds 100 ms worth (at least one chunk).
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec as f64;
        let burst = (rate / 10.0).max(CHUNK as f64);
        Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    pub fn unlimited() -> Self {
        Self::new(0)
    }

    /// Accounts for `n` bytes, sleeping as long as the rate requires.
    pub fn acquire(&self, n: u64) {
        if self.rate <= 0.0 {
            return;
        }
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
            s.0 = (s.0 + refill).min(self.burst) - n as f64;
            s.1 = now;
            if s.0 < 0.0 {
                Duration::from_secs_f64(-s.0 / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

fn open_err(e: Errno, last: bool) -> String {
    match e {
        Errno::ENOENT => NOTE_VANISHED.to_string(),
        Errno::ELOOP if last => NOTE_SYMLINK.to_string(),
        Errno::ELOOP => NOTE_SYMLINK_IN_PATH.to_string(),
        // A directory in the path was replaced by something else.
        Errno::ENOTDIR => NOTE_CHANGED.to_string(),
        // open(2) of a socket.
        Errno::ENXIO => NOTE_NOT_REGULAR.to_string(),
        e => format!("open failed: {}", e.desc()),
    }
}

/// Opens `path` below `tree` without following any symlink below the tree.
fn open_below(tree: &Path, path: &Path) -> Result<OwnedFd, String> {
    let rel = path
        .strip_prefix(tree)
        .map_err(|_| NOTE_OUTSIDE.to_string())?;
    let comps: Vec<_> = rel.components().collect();
    let Some((last, dirs)) = comps.split_last() else {
        return Err(NOTE_NOT_REGULAR.to_string());
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = open(tree, dir_flags, Mode::empty()).map_err(|e| open_err(e, false))?;
    for c in dirs {
        let Component::Normal(name) = c else {
            return Err(NOTE_OUTSIDE.to_string());
        };
        dir = match openat(
            dir.as_fd(),
            *name,
            dir_flags | OFlag::O_NOFOLLOW,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR: say which it was.
            Err(Errno::ENOTDIR) => {
                let st = fstatat(dir.as_fd(), *name, AtFlags::AT_SYMLINK_NOFOLLOW);
                let is_link = st.is_ok_and(|st| {
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                });
                return Err(if is_link {
                    NOTE_SYMLINK_IN_PATH
                } else {
                    NOTE_CHANGED
                }
                .to_string());
            }
            Err(e) => return Err(open_err(e, false)),
        };
    }
    let Component::Normal(name) = last else {
        return Err(NOTE_OUTSIDE.to_string());
    };
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    openat(dir.as_fd(), *name, flags, Mode::empty()).map_err(|e| open_err(e, true))
}

/// The sha256 of the regular file `path` below `tree`, or the note saying why not.
/// `expect_inode` (from the watcher's lstat) guards against a file swapped in meanwhile.
pub fn hash_file(
    tree: &Path,
    path: &Path,
    expect_inode: Option<u64>,
    max_bytes: u64,
    limiter: &RateLimiter,
) -> Result<Digest, String> {
    let mut file = File::from(open_below(tree, path)?);
    let before = file.metadata().map_err(|e| format!("fstat failed: {e}"))?;
    if !before.file_type().is_file() {
        return Err(NOTE_NOT_REGULAR.to_string());
    }
    if expect_inode.is_some_and(|i| i != before.ino()) {
        return Err(NOTE_CHANGED.to_string());
    }
    if before.len() > max_bytes {
        return Err(over(before.len(), max_bytes));
    }
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read failed: {e}")),
        };
        total += n as u64;
        if total > max_bytes {
            return Err(over(total, max_bytes));
        }
        limiter.acquire(n as u64);
        sha.update(&buf[..n]);
    }
    let after = file.metadata().map_err(|e| format!("fstat failed: {e}"))?;
    if after.len() != total
        || after.mtime() != before.mtime()
        || after.mtime_nsec() != before.mtime_nsec()
    {
        return Err(NOTE_CHANGED.to_string());
    }
    Ok(Digest(sha.finalize().into()))
}

fn over(size: u64, max: u64) -> String {
    format!("over hash_max_bytes ({size} > {max})")
}

/// The tree `path` is hashed below: the longest configured tree containing it.
fn tree_of<'a>(trees: &'a [PathBuf], path: &Path) -> Option<&'a Path> {
    if trees.is_empty() {
        return Some(Path::new("/"));
    }
    trees
        .iter()
        .filter(|t| path.starts_with(t))
        .max_by_key(|t| t.as_os_str().len())
        .map(PathBuf::as_path)
}

/// sha256 of no bytes, as the records carry it and as [`settle`] stores it (no parsing per file).
pub const EMPTY_DIGEST: Digest = Digest([
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
]);
/// sha256 of no bytes.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Settles a change that needs no read, and says whether it did: deletes, changes without facts,
/// non-regular files and already-hashed changes as they are; a file over `max_bytes` gets its
/// note; a zero-length file (as the watcher's `lstat` saw it) the digest of nothing, without
/// being opened (a later write is a change of its own). The daemon writes these at once instead
/// of passing them through the hash workers.
pub fn settle(ch: &mut FsChange, max_bytes: u64) -> bool {
    if ch.kind == ChangeKind::Delete {
        return true;
    }
    let Some(facts) = ch.facts.as_mut() else {
        return true;
    };
    if facts.kind != FileKind::Regular || facts.sha256.is_some() || facts.hash_note.is_some() {
        return true;
    }
    if facts.size > max_bytes {
        facts.hash_note = Some(over(facts.size, max_bytes));
        return true;
    }
    if facts.size == 0 {
        facts.sha256 = Some(EMPTY_DIGEST);
        return true;
    }
    false
}

/// Fills `facts.sha256` (or `facts.hash_note`) of a change to a regular file ([`settle`] first).
pub fn fill(ch: &mut FsChange, cfg: &HashConfig, limiter: &RateLimiter) {
    if settle(ch, cfg.max_bytes) {
        return;
    }
    let Some(facts) = ch.facts.as_mut() else {
        return;
    };
    let result = match tree_of(&cfg.trees, &ch.path) {
        Some(tree) => hash_file(tree, &ch.path, Some(facts.inode), cfg.max_bytes, limiter),
        None => Err(NOTE_OUTSIDE.to_string()),
    };
    match result {
        Ok(h) => facts.sha256 = Some(h),
        Err(note) => facts.hash_note = Some(note),
    }
}

/// The hash workers. Build with [`Hasher::spawn`].
pub struct Hasher;

impl Hasher {
    /// Starts `cfg.workers` workers and a reorder thread. Dropping the [`HashInput`] lets them
    /// finish what was queued; [`HashOutput::recv`] then returns `None`.
    pub fn spawn(cfg: HashConfig) -> std::io::Result<(HashInput, HashOutput)> {
        let queue = cfg.queue.max(1);
        let workers = cfg.workers.max(1);
        let (in_tx, in_rx) = mpsc::sync_channel::<(u64, FsChange)>(queue);
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, FsChange)>(queue);
        let (out_tx, out_rx) = mpsc::sync_channel::<FsChange>(queue);
        let in_rx = Arc::new(Mutex::new(in_rx));
        let limiter = Arc::new(RateLimiter::new(cfg.bytes_per_sec));
        let cfg = Arc::new(cfg);
        let mut threads = Vec::with_capacity(workers + 1);
        for i in 0..workers {
            let (in_rx, done_tx) = (Arc::clone(&in_rx), done_tx.clone());
            let (cfg, limiter) = (Arc::clone(&cfg), Arc::clone(&limiter));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("hash-{i}"))
                    .spawn(move || loop {
                        let job = in_rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((seq, mut ch)) = job else { break };
                        fill(&mut ch, &cfg, &limiter);
                        if done_tx.send((seq, ch)).is_err() {
                            break;
                        }
                    })?,
            );
        }
        drop(done_tx);
        threads.push(
            std::thread::Builder::new()
                .name("hash-order".into())
                .spawn(move || reorder(done_rx, out_tx))?,
        );
        Ok((
            HashInput { tx: in_tx, next: 0 },
            HashOutput {
                rx: out_rx,
                threads,
            },
        ))
    }
}

/// Emits results in submission order. Holds at most what is in flight (queue + workers).
fn reorder(done: Receiver<(u64, FsChange)>, out: SyncSender<FsChange>) {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    for (seq, ch) in done {
        pending.insert(seq, ch);
        while let Some(ch) = pending.remove(&next) {
            if out.send(ch).is_err() {
                return;
            }
            next += 1;
        }
    }
}

/// The submitting side (one producer: submission order is output order).
pub struct HashInput {
    tx: SyncSender<(u64, FsChange)>,
    next: u64,
}

#[derive(Debug)]
pub enum TrySubmitError {
    /// The queue is full; the change is handed back.
    Full(Box<FsChange>),
    /// The workers are gone.
    Closed(Box<FsChange>),
}

impl HashInput {
    /// Queues a change, blocking while the queue is full. `Err` hands the change back when the
    /// workers are gone.
    pub fn submit(&mut self, ch: FsChange) -> Result<(), Box<FsChange>> {
        match self.tx.send((self.next, ch)) {
            Ok(()) => {
                self.next += 1;
                Ok(())
            }
            Err(e) => Err(Box::new(e.0 .1)),
        }
    }

    /// Queues a change without blocking.
    pub fn try_submit(&mut self, ch: FsChange) -> Result<(), TrySubmitError> {
        match self.tx.try_send((self.next, ch)) {
            Ok(()) => {
                self.next += 1;
                Ok(())
            }
            Err(TrySendError::Full((_, ch))) => Err(TrySubmitError::Full(Box::new(ch))),
            Err(TrySendError::Disconnected((_, ch))) => Err(TrySubmitError::Closed(Box::new(ch))),
        }
    }
}

/// The receiving side: changes with their hashes, in submission order.
pub struct HashOutput {
    rx: Receiver<FsChange>,
    threads: Vec<JoinHandle<()>>,
}

impl HashOutput {
    /// The next change; `None` once the input is dropped and everything is out.
    pub fn recv(&self) -> Option<FsChange> {
        self.rx.recv().ok()
    }

    pub fn recv_timeout(&self, d: Duration) -> Result<FsChange, RecvTimeoutError> {
        self.rx.recv_timeout(d)
    }

    /// Waits for the threads (call after the input is dropped and the output drained).
    pub fn join(self) {
        drop(self.rx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::change::{FileFacts, Source};
    use std::os::unix::fs::symlink;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn unlimited() -> RateLimiter {
        RateLimiter::unlimited()
    }

    #[test]
    fn an_empty_file_is_settled_without_a_read_and_others_are_not() {
        assert_eq!(Digest(Sha256::digest(b"").into()).hex(), EMPTY_SHA256);
        assert_eq!(EMPTY_DIGEST.hex(), EMPTY_SHA256);
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let mut ch = change(&empty);
        // Unreadable now: were it opened, the hash would be a note, not the digest.
        std::fs::remove_file(&empty).unwrap();
        assert!(settle(&mut ch, 10));
        assert_eq!(ch.facts.unwrap().sha256, Digest::from_hex(EMPTY_SHA256));
        let abc = d.path().join("abc");
        std::fs::write(&abc, b"abc").unwrap();
        let mut ch = change(&abc);
        assert!(!settle(&mut ch, 10), "a file with bytes is read");
        assert!(settle(&mut ch, 2), "over max_bytes: a note");
        let mut del = change(&abc);
        del.kind = ChangeKind::Delete;
        assert!(settle(&mut del, 10));
        assert!(
            del.facts.unwrap().sha256.is_none(),
            "a delete is left as it is"
        );
    }

    fn change(path: &Path) -> FsChange {
        let md = std::fs::symlink_metadata(path).unwrap();
        FsChange {
            kind: ChangeKind::Create,
            path: path.to_path_buf(),
            facts: Some(FileFacts::from_metadata(&md)),
            time_ms: 0,
            source: Source::Live,
            pid: None,
        }
    }

    fn cfg(tree: &Path) -> HashConfig {
        HashConfig {
            trees: vec![tree.to_path_buf()],
            ..HashConfig::default()
        }
    }

    #[test]
    fn digest_of_a_known_string() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/abc");
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(&p, "abc").unwrap();
        assert_eq!(
            hash_file(d.path(), &p, None, 10, &unlimited()),
            Ok(Digest::from_hex(ABC).unwrap())
        );
        let mut ch = change(&p);
        fill(&mut ch, &cfg(d.path()), &unlimited());
        let f = ch.facts.unwrap();
        assert_eq!(f.sha256, Digest::from_hex(ABC));
        assert_eq!(f.hash_note, None);
    }

    #[test]
    fn symlink_to_shadow_is_not_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("shadow");
        symlink("/etc/shadow", &p).unwrap();
        let r = hash_file(d.path(), &p, None, 1 << 20, &unlimited());
        assert_eq!(r, Err(NOTE_SYMLINK.to_string()));
        // The watcher saw a regular file; it was swapped for a symlink before hashing.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, "x").unwrap();
        let mut ch = change(&p);
        std::fs::remove_file(&p).unwrap();
        symlink("/etc/shadow", &p).unwrap();
        fill(&mut ch, &cfg(d.path()), &unlimited());
        let f = ch.facts.unwrap();
        assert_eq!(f.sha256, None);
        assert!(f.hash_note.unwrap().contains("symbolic link"));
    }

    #[test]
    fn symlinked_directory_in_the_path_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        symlink("/etc", d.path().join("etc")).unwrap();
        let r = hash_file(
            d.path(),
            &d.path().join("etc/passwd"),
            None,
            1 << 20,
            &unlimited(),
        );
        assert_eq!(r, Err(NOTE_SYMLINK_IN_PATH.to_string()));
        let r = hash_file(d.path(), &d.path().join("../x"), None, 10, &unlimited());
        assert_eq!(r, Err(NOTE_OUTSIDE.to_string()));
    }

    #[test]
    fn fifo_does_not_block() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fifo");
        nix::unistd::mkfifo(&p, Mode::from_bits_truncate(0o644)).unwrap();
        let (tx, rx) = mpsc::channel();
        let tree = d.path().to_path_buf();
        let p2 = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(hash_file(
                &tree,
                &p2,
                None,
                1 << 20,
                &RateLimiter::unlimited(),
            ));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("hash_file blocked on a FIFO");
        assert_eq!(r, Err(NOTE_NOT_REGULAR.to_string()));
        // fill leaves non-regular files alone.
        let mut ch = change(&p);
        fill(&mut ch, &cfg(d.path()), &unlimited());
        assert_eq!(ch.facts.unwrap().hash_note, None);
    }

    #[test]
    fn over_limit_gets_a_note() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        std::fs::write(&p, "12345").unwrap();
        let r = hash_file(d.path(), &p, None, 4, &unlimited());
        assert_eq!(r, Err("over hash_max_bytes (5 > 4)".to_string()));
        let mut ch = change(&p);
        let c = HashConfig {
            max_bytes: 4,
            ..cfg(d.path())
        };
        fill(&mut ch, &c, &unlimited());
        assert!(ch
            .facts
            .unwrap()
            .hash_note
            .unwrap()
            .starts_with("over hash_max_bytes"));
    }

    #[test]
    fn vanished_and_swapped_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("gone");
        std::fs::write(&p, "x").unwrap();
        let mut ch = change(&p);
        std::fs::remove_file(&p).unwrap();
        fill(&mut ch, &cfg(d.path()), &unlimited());
        assert_eq!(ch.facts.unwrap().hash_note.as_deref(), Some(NOTE_VANISHED));

        let r = hash_file(d.path(), &d.path().join("no/such"), None, 9, &unlimited());
        assert_eq!(r, Err(NOTE_VANISHED.to_string()));

        std::fs::write(&p, "x").unwrap();
        let ino = std::fs::metadata(&p).unwrap().ino();
        let r = hash_file(d.path(), &p, Some(ino + 1), 9, &unlimited());
        assert_eq!(r, Err(NOTE_CHANGED.to_string()));
    }

    #[test]
    fn path_outside_the_trees_is_not_hashed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, "abc").unwrap();
        let mut ch = change(&p);
        fill(&mut ch, &cfg(Path::new("/nonexistent-tree")), &unlimited());
        assert_eq!(ch.facts.unwrap().hash_note.as_deref(), Some(NOTE_OUTSIDE));
    }

    #[test]
    fn limiter_limits() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, vec![7u8; 768 * 1024]).unwrap();
        let limiter = RateLimiter::new(512 * 1024);
        let t = Instant::now();
        assert!(hash_file(d.path(), &p, None, 1 << 30, &limiter).is_ok());
        let el = t.elapsed();
        // 768 KiB at 512 KiB/s with a 51 KiB bucket: about 1.4 s.
        assert!(el >= Duration::from_millis(1000), "too fast: {el:?}");
        assert!(el < Duration::from_secs(10), "too slow: {el:?}");

        let t = Instant::now();
        assert!(hash_file(d.path(), &p, None, 1 << 30, &unlimited()).is_ok());
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn hasher_keeps_order_and_ends() {
        let d = tempfile::tempdir().unwrap();
        let mut expected = Vec::new();
        let c = HashConfig {
            workers: 3,
            queue: 4,
            ..cfg(d.path())
        };
        let (mut input, output) = Hasher::spawn(c).unwrap();
        let feeder = {
            let root = d.path().to_path_buf();
            let mut changes = Vec::new();
            for i in 0..40 {
                let p = root.join(format!("f{i}"));
                if i % 5 == 0 {
                    std::fs::create_dir(&p).unwrap();
                } else {
                    // Uneven sizes so workers finish out of order.
                    std::fs::write(&p, vec![b'a'; (i % 7) * 50_000]).unwrap();
                }
                changes.push(change(&p));
                expected.push(p);
            }
            std::thread::spawn(move || {
                for ch in changes {
                    input.submit(ch).unwrap();
                }
            })
        };
        let mut got = Vec::new();
        while let Some(ch) = output.recv() {
            let f = ch.facts.as_ref().unwrap();
            assert_eq!(f.sha256.is_some(), f.kind == FileKind::Regular, "{ch:?}");
            got.push(ch.path);
        }
        feeder.join().unwrap();
        output.join();
        assert_eq!(got, expected);
    }

    #[test]
    fn try_submit_reports_a_full_queue() {
        let c = HashConfig {
            queue: 1,
            bytes_per_sec: 0,
            ..HashConfig::default()
        };
        let (mut input, output) = Hasher::spawn(c).unwrap();
        let ch = FsChange {
            kind: ChangeKind::Delete,
            path: "/x".into(),
            facts: None,
            time_ms: 0,
            source: Source::Live,
            pid: None,
        };
        // Nobody reads the output: in, worker, reorder and out fill up, then Full.
        let mut full = false;
        for _ in 0..20 {
            if let Err(TrySubmitError::Full(_)) = input.try_submit(ch.clone()) {
                full = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(full);
        drop(input);
        let mut n = 0;
        while output.recv().is_some() {
            n += 1;
        }
        assert!(n >= 1);
    }
}
