//! The durable on-disk queue between the watcher and the CloudWatch shipper.
//!
//! # Layout
//! One root-owned `0700` directory (a symlink there is refused; wrong mode or owner is fixed and
//! reported) holding append-only **segment files** `seg-<first seq, 20 digits>.log` and `ack.json`.
//! A segment is a run of frames, each
//!
//! ```text
//! magic F7 'S' 'P' | version 1 | u32 LE payload len | u32 LE crc32(len ‖ seq ‖ time_ms ‖ payload)
//! | u64 LE seq | i64 LE time_ms | payload (the OCSF JSON)
//! ```
//!
//! Sequence numbers are per host, start at 1, increase by one per stored record and continue across
//! restarts: on open the next one is the largest of the last good frame + 1, the name of an empty
//! last segment and the `next_seq` high-water mark kept in `ack.json`, so a number is never reused
//! even after every segment was acknowledged and deleted. A frame numbered 0 or above [`MAX_SEQ`]
//! is damage like a bad checksum. A segment rolls once it would exceed
//! [`SpoolOptions::segment_bytes`].
//!
//! # Durability contract
//! [`SpoolWriter::append`] only buffers. [`SpoolWriter::sync`] writes the buffer, `fdatasync`s the
//! current segment (the directory is `fsync`ed whenever a segment is created) and only then makes
//! the records visible to the reader. **Nothing appended before the last successful `sync()` is
//! lost** by a crash; records appended after it may be. `append` syncs by itself when the oldest
//! unsynced record is [`SpoolOptions::sync_interval`] (100 ms) old; the daemon calls `sync()` from a
//! timer ([`SpoolWriter::sync_deadline`]) and after each batch so the bound holds when appends stop.
//! Because the reader only sees synced records, a sequence number that reached CloudWatch can never
//! be handed out again after a crash.
//!
//! # Acknowledgement
//! Only the shipper ([`SpoolReader`]) advances the ack position: `ack.json` is written to a temp
//! file, `fsync`ed, renamed over and the directory `fsync`ed. Segments whose records are all
//! acknowledged are then deleted (the segment being written never is). Delivery is at-least-once:
//! a crash between CloudWatch accepting a batch and `ack()` resends it.
//!
//! # Size cap
//! When the unacknowledged bytes (written, buffered or not) reach [`SpoolOptions::max_bytes`], new
//! records are not stored but counted; the cap is checked before a record is built, so one record
//! may exceed it by its own size. The first drop of an episode logs a warning;
//! [`SpoolWriter::take_drops`] hands the count over once the backlog is below 7/8 of the cap, so
//! the daemon can store one "spool full" agent event carrying it.
//!
//! # Damage
//! [`open`] checks every frame. A torn or corrupt tail (crash mid-write, flipped bits, garbage) is
//! truncated at the last good frame, never fatal; missing records, renamed segments, a missing or
//! corrupt `ack.json` and foreign files are listed in the [`OpenReport`] so the daemon can record
//! tampering as an agent event. A segment the agent did not write (another owner, or more than one
//! link: the directory was someone else's before the agent took it over) is never read, shipped or
//! appended to; it is renamed `foreign-<name>` and kept as evidence.
//!
//! # Threads
//! [`open`] returns a [`SpoolWriter`] (the watcher daemon) and a [`SpoolReader`] (the shipper), both
//! `Send`, sharing a small mutex-protected index; no file I/O happens under the lock except one
//! header read when the reader acknowledges.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open as nix_open, openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fdatasync, fsync, ftruncate, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Default segment size before rolling to a new file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 8 << 20;
/// Default cap on unacknowledged bytes (`audit.spool_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;
/// Group commit interval: no record waits longer than this for its fsync while appends flow.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Largest payload a frame may carry; anything longer in a header is corruption.
pub const MAX_PAYLOAD: usize = 4 << 20;
/// Bytes of a frame before its payload.
pub const HEADER_LEN: usize = 28;
/// Highest sequence number a frame may carry. A frame numbered 0 or above this is damage: a spool
/// counting one by one never gets there, and the arithmetic on `seq ± 1` stays in range.
pub const MAX_SEQ: u64 = i64::MAX as u64;

const MAGIC: [u8; 3] = [0xF7, b'S', b'P'];
const VERSION: u8 = 1;
const ACK_FILE: &str = "ack.json";
const ACK_TMP: &str = "ack.json.tmp";
/// The writer hands its buffer to the kernel once it holds this much, sync or not.
const FLUSH_BYTES: usize = 256 << 10;
/// The reader reads segments in chunks of at least this size.
const READ_CHUNK: usize = 256 << 10;
/// Positions of read-but-unacknowledged records kept to avoid rescans on `ack`.
const MAX_POSITIONS: usize = 200_000;

/// Tunables of one spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolOptions {
    /// Unacknowledged bytes beyond which new records are dropped (counted).
    pub max_bytes: u64,
    /// A segment rolls once the next frame would take it beyond this size.
    pub segment_bytes: u64,
    /// `append` syncs by itself once the oldest unsynced record is this old.
    pub sync_interval: Duration,
    /// Files the directory's owner keeps beside the spool (and their temp files `.NAME.*`); any
    /// other foreign entry is reported as an anomaly.
    pub companions: Vec<String>,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            companions: Vec::new(),
        }
    }
}

/// What can go wrong; every variant names the path concerned.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{}: is a symlink; refusing to use it as the spool directory", .0.display())]
    Symlink(PathBuf),
    #[error("{}: exists and is not a directory; move it away or set audit.spool_dir elsewhere", .0.display())]
    NotDirectory(PathBuf),
    #[error("{}: {}: {}", .path.display(), .op, .source)]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error("{}: owned by uid {}; could not take it over (run the agent as root): {}", .path.display(), .uid, .source)]
    Owner {
        path: PathBuf,
        uid: u32,
        source: io::Error,
    },
    #[error("record of {len} bytes exceeds the {MAX_PAYLOAD}-byte frame limit; it was not stored")]
    TooLarge { len: usize },
    #[error("ack of sequence {seq} beyond the last durable record {last}")]
    AckBeyondEnd { seq: u64, last: u64 },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

fn errno_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> SpoolError + 'a {
    move |e| SpoolError::Io {
        path: path.to_path_buf(),
        op,
        source: io::Error::from(e),
    }
}

/// Outcome of [`SpoolWriter::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored {
        seq: u64,
    },
    /// The spool is full; the record was counted, not stored, and no sequence was used.
    Dropped,
}

/// One drop episode, handed over by [`SpoolWriter::take_drops`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Drops {
    pub count: u64,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// One stored record as the reader returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_ms: i64,
    pub payload: Vec<u8>,
}

/// Why a segment was cut short on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Damage {
    /// The file ends inside a frame: the usual trace of a crash mid-write.
    Incomplete,
    /// Bytes where a frame should start are not a frame header (garbage, zero fill).
    BadMagic,
    /// A header announces an impossible length.
    BadLength,
    /// A frame's checksum does not match its contents.
    BadCrc,
    /// A well-formed frame whose sequence does not follow the previous one.
    BadSequence,
}

/// Something [`open`] found that the daemon should record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Anomaly {
    /// The directory had other permission bits; they were set to 0700.
    DirPermissions { was_mode: u32 },
    /// The directory belonged to someone else; it was given to the agent's user.
    DirOwner { was_uid: u32 },
    /// A segment was truncated at its last good frame.
    Truncated {
        segment: String,
        offset: u64,
        bytes: u64,
        damage: Damage,
    },
    /// Records that must have been stored are not on disk (deleted segment, cut file).
    MissingRecords { from: u64, to: u64 },
    /// A segment's name does not match the first record in it.
    SegmentRenamed { segment: String, first_seq: u64 },
    /// A segment repeats sequence numbers of an earlier one; it is ignored (left in place).
    SegmentOverlap { segment: String },
    /// Segments exist but `ack.json` does not: everything on disk will be shipped again.
    AckMissing,
    /// `ack.json` could not be read or parsed: everything on disk will be shipped again.
    AckCorrupt { reason: String },
    /// A file the spool did not write.
    UnexpectedEntry { name: String },
    /// A segment owned by another user or with more than one link: not the agent's, so its
    /// records are not shipped. Renamed `foreign-<segment>` and left in place.
    ForeignSegment {
        segment: String,
        uid: u32,
        links: u64,
    },
}

impl Anomaly {
    /// Whether this points at tampering or damage rather than an ordinary crash.
    pub fn suspicious(&self) -> bool {
        !matches!(
            self,
            Anomaly::Truncated {
                damage: Damage::Incomplete,
                ..
            }
        )
    }
}

/// What [`open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenReport {
    /// The directory did not exist and was created.
    pub created: bool,
    pub segments_found: usize,
    /// Fully acknowledged segments left by a crash between ack and delete, removed now.
    pub segments_deleted: usize,
    pub truncated_bytes: u64,
    pub acked_seq: u64,
    pub next_seq: u64,
    pub anomalies: Vec<Anomaly>,
}

/// Numbers for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpoolStats {
    /// Bytes of frames appended (synced or not) and not yet acknowledged.
    pub unacked_bytes: u64,
    pub unacked_records: u64,
    pub acked_seq: u64,
    /// The sequence the next stored record gets.
    pub next_seq: u64,
    /// `time_ms` of the first unacknowledged synced record.
    pub oldest_unacked_ms: Option<i64>,
    /// Records dropped because the spool was full, since this process opened it.
    pub dropped_total: u64,
    pub segments: usize,
    /// Corrupt frames the reader met after open and skipped.
    pub corrupt_skips: u64,
}

// ---------------------------------------------------------------------------------------------
// Frames

fn frame_crc(len: u32, seq: u64, time_ms: i64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&time_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_frame(out: &mut Vec<u8>, seq: u64, time_ms: i64, payload: &[u8]) {
    // Callers check MAX_PAYLOAD first, so the length fits a u32.
    let len = payload.len() as u32;
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&frame_crc(len, seq, time_ms, payload).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ms.to_le_bytes());
    out.extend_from_slice(payload);
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed<'a> {
    Frame {
        seq: u64,
        time_ms: i64,
        payload: &'a [u8],
        len: usize,
    },
    Bad(Damage),
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The header fields `(payload len, crc, seq, time_ms)`, or why `b` does not start a frame.
/// `b` may be longer than a header; a short `b` is `Incomplete`.
fn parse_header(b: &[u8]) -> Result<(usize, u32, u64, i64), Damage> {
    let magic_len = b.len().min(4);
    if b[..magic_len] != [MAGIC[0], MAGIC[1], MAGIC[2], VERSION][..magic_len] {
        return Err(Damage::BadMagic);
    }
    if b.len() < HEADER_LEN {
        return Err(Damage::Incomplete);
    }
    let len = le_u32(&b[4..]) as usize;
    if len > MAX_PAYLOAD {
        return Err(Damage::BadLength);
    }
    Ok((
        len,
        le_u32(&b[8..]),
        le_u64(&b[12..]),
        le_u64(&b[20..]) as i64,
    ))
}

/// Parses the frame at the start of `b`.
fn parse_frame(b: &[u8]) -> Parsed<'_> {
    let (len, crc, seq, time_ms) = match parse_header(b) {
        Ok(h) => h,
        Err(d) => return Parsed::Bad(d),
    };
    if b.len() < HEADER_LEN + len {
        return Parsed::Bad(Damage::Incomplete);
    }
    let payload = &b[HEADER_LEN..HEADER_LEN + len];
    if frame_crc(len as u32, seq, time_ms, payload) != crc {
        return Parsed::Bad(Damage::BadCrc);
    }
    Parsed::Frame {
        seq,
        time_ms,
        payload,
        len: HEADER_LEN + len,
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The directory

/// The spool directory, held open so every later operation is relative to the directory that was
/// checked, whatever happens to its path in the notebook user's tree.
#[derive(Debug)]
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    fn open(path: &Path, anomalies: &mut Vec<Anomaly>) -> Result<(Dir, bool), SpoolError> {
        let mut created = false;
        match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(SpoolError::Symlink(path.to_path_buf()))
            }
            Ok(md) if !md.is_dir() => return Err(SpoolError::NotDirectory(path.to_path_buf())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let parent = match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                let name = path
                    .file_name()
                    .ok_or_else(|| SpoolError::NotDirectory(path.into()))?;
                let pfd = nix_open(
                    parent,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_err(parent, "open parent directory"))?;
                match mkdirat(&pfd, name, Mode::S_IRWXU) {
                    Ok(()) => created = true,
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(errno_err(path, "create directory")(e)),
                }
                fsync(&pfd).map_err(errno_err(parent, "fsync parent directory"))?;
            }
            Err(e) => return Err(io_err(path, "lstat")(e)),
        }
        let fd = match nix_open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(SpoolError::Symlink(path.to_path_buf())),
            Err(Errno::ENOTDIR) => {
                let link =
                    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                return Err(if link {
                    SpoolError::Symlink(path.to_path_buf())
                } else {
                    SpoolError::NotDirectory(path.to_path_buf())
                });
            }
            Err(e) => return Err(errno_err(path, "open directory")(e)),
        };
        let st = fstat(&fd).map_err(errno_err(path, "fstat directory"))?;
        let euid = Uid::effective();
        if st.st_uid != euid.as_raw() {
            fchown(&fd, Some(euid), Some(Gid::effective())).map_err(|e| SpoolError::Owner {
                path: path.to_path_buf(),
                uid: st.st_uid,
                source: io::Error::from(e),
            })?;
            anomalies.push(Anomaly::DirOwner { was_uid: st.st_uid });
        }
        let mode = st.st_mode & 0o7777;
        if mode != 0o700 {
            fchmod(&fd, Mode::S_IRWXU).map_err(errno_err(path, "chmod directory"))?;
            if !created {
                anomalies.push(Anomaly::DirPermissions { was_mode: mode });
            }
        }
        Ok((
            Dir {
                fd,
                path: path.to_path_buf(),
            },
            created,
        ))
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    fn open_file(&self, name: &str, flags: OFlag, op: &'static str) -> Result<File, SpoolError> {
        let fd = openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .map_err(errno_err(&self.file_path(name), op))?;
        Ok(File::from(fd))
    }

    fn sync(&self) -> Result<(), SpoolError> {
        fsync(&self.fd).map_err(errno_err(&self.path, "fsync directory"))
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), SpoolError> {
        renameat(&self.fd, from, &self.fd, to).map_err(errno_err(&self.file_path(from), "rename"))
    }

    fn unlink(&self, name: &str) -> Result<bool, SpoolError> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno_err(&self.file_path(name), "unlink")(e)),
        }
    }

    /// Names in the directory, read through the held descriptor.
    fn list(&self) -> Result<Vec<String>, SpoolError> {
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&proc_path).map_err(io_err(&self.path, "list directory"))? {
            let entry = entry.map_err(io_err(&self.path, "list directory"))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// temp file → write → fsync → rename over `name` → fsync the directory.
    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
        self.unlink(ACK_TMP)?;
        let tmp_path = self.file_path(ACK_TMP);
        let mut f = self.open_file(
            ACK_TMP,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            "create",
        )?;
        f.write_all(bytes).map_err(io_err(&tmp_path, "write"))?;
        f.sync_all().map_err(io_err(&tmp_path, "fsync"))?;
        renameat(&self.fd, ACK_TMP, &self.fd, name)
            .map_err(errno_err(&self.file_path(name), "rename"))?;
        self.sync()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckState {
    version: u32,
    /// Every record up to and including this one reached CloudWatch (0: none yet).
    acked_seq: u64,
    /// High-water mark of durable sequence numbers, so none is reused after all are deleted.
    next_seq: u64,
}

fn write_ack(dir: &Dir, acked_seq: u64, next_seq: u64) -> Result<(), SpoolError> {
    let state = AckState {
        version: 1,
        acked_seq,
        next_seq,
    };
    let mut bytes = serde_json::to_vec(&state).map_err(|e| SpoolError::Io {
        path: dir.file_path(ACK_FILE),
        op: "encode",
        source: io::Error::other(e),
    })?;
    bytes.push(b'\n');
    dir.write_atomic(ACK_FILE, &bytes)
}

// ---------------------------------------------------------------------------------------------
// Shared index

#[derive(Debug, Clone)]
struct SegInfo {
    first_seq: u64,
    name: String,
    /// Global byte position of the segment's start (sum of earlier segments' lengths).
    base: u64,
    /// Bytes of synced, whole frames.
    durable_len: u64,
}

#[derive(Debug)]
struct Shared {
    /// Sorted by `first_seq`; the last one is the writer's.
    segments: Vec<SegInfo>,
    /// Sequence the next appended record gets.
    next_seq: u64,
    /// Every record below this is synced (or was lost before open).
    durable_next_seq: u64,
    acked_seq: u64,
    /// Global position just after the acknowledged frames.
    ack_end: u64,
    /// Global position after the last appended frame, buffered or not.
    write_end: u64,
    durable_end: u64,
    oldest_unacked_ms: Option<i64>,
    dropped_total: u64,
    corrupt_skips: u64,
}

impl Shared {
    fn stats(&self) -> SpoolStats {
        SpoolStats {
            unacked_bytes: self.write_end.saturating_sub(self.ack_end),
            unacked_records: self
                .next_seq
                .saturating_sub(1)
                .saturating_sub(self.acked_seq),
            acked_seq: self.acked_seq,
            next_seq: self.next_seq,
            oldest_unacked_ms: self.oldest_unacked_ms,
            dropped_total: self.dropped_total,
            segments: self.segments.len(),
            corrupt_skips: self.corrupt_skips,
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic elsewhere cannot leave the index half-updated in a way that matters more than
    // stopping the audit trail, so keep going with the data.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Open

/// (seq, end offset, time_ms) of one good frame found on open.
type FrameMark = (u64, u64, i64);

struct ScannedSegment {
    first_seq: u64,
    name: String,
    len: u64,
    /// (first, last) sequence of the good frames.
    seqs: Option<(u64, u64)>,
    /// Offset just after the last frame with seq ≤ the ack (0 if none).
    acked_end: u64,
    /// time_ms of the first frame with seq > the ack.
    first_unacked_ms: Option<i64>,
}

/// Opens (creating if needed) the spool in `dir`, repairs what a crash left and reports what it
/// found.
pub fn open(
    dir: &Path,
    opts: SpoolOptions,
) -> Result<(SpoolWriter, SpoolReader, OpenReport), SpoolError> {
    let mut anomalies = Vec::new();
    let (dir, created) = Dir::open(dir, &mut anomalies)?;
    let dir = Arc::new(dir);

    let mut seg_names = BTreeMap::new();
    let mut ack_present = false;
    for name in dir.list()? {
        if let Some(first) = parse_segment_name(&name) {
            seg_names.insert(first, name);
        } else if name == ACK_FILE {
            ack_present = true;
        } else if name == ACK_TMP {
            dir.unlink(ACK_TMP)?;
        } else if opts
            .companions
            .iter()
            .any(|c| name == *c || name.starts_with(&format!(".{c}.")))
        {
        } else {
            anomalies.push(Anomaly::UnexpectedEntry { name });
        }
    }

    let ack_state = if ack_present {
        match read_ack(&dir) {
            Ok(s) => Some(s),
            Err(reason) => {
                anomalies.push(Anomaly::AckCorrupt { reason });
                None
            }
        }
    } else {
        None
    };

    // Scan every segment; the ack is applied afterwards because it may be missing.
    let mut truncated_bytes = 0;
    let mut scanned: Vec<(ScannedSegment, Vec<FrameMark>)> = Vec::new();
    let mut prev_last: Option<u64> = None;
    for (&first, name) in &seg_names {
        let path = dir.file_path(name);
        let file = dir.open_file(name, OFlag::O_RDWR, "open segment")?;
        let st = fstat(&file).map_err(errno_err(&path, "fstat"))?;
        if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
            anomalies.push(Anomaly::UnexpectedEntry { name: name.clone() });
            continue;
        }
        // Every segment the agent writes is its own and has one link. Anything else was put here
        // by whoever had the directory before (see `Dir::open`), or can be reached by another
        // path: its frames may be forged, and must not be shipped as the agent's.
        if st.st_uid != Uid::effective().as_raw() || st.st_nlink != 1 {
            anomalies.push(Anomaly::ForeignSegment {
                segment: name.clone(),
                uid: st.st_uid,
                links: st.st_nlink,
            });
            drop(file);
            dir.rename(name, &format!("foreign-{name}"))?;
            continue;
        }
        // Scanned through a window of READ_CHUNK (or one frame, when larger), not read whole:
        // every segment is scanned at start and the daemon's memory must not follow the backlog.
        let mut frames: Vec<FrameMark> = Vec::new();
        let mut damage = None;
        let mut window: Vec<u8> = Vec::new();
        let mut base = 0u64;
        let mut pos = 0usize;
        let mut eof = false;
        loop {
            match parse_frame(&window[pos..]) {
                Parsed::Frame {
                    seq, time_ms, len, ..
                } => {
                    let expect_above = frames.last().map(|f| f.0).or(prev_last);
                    if seq == 0 || seq > MAX_SEQ || expect_above.is_some_and(|p| seq <= p) {
                        damage = Some(Damage::BadSequence);
                        break;
                    }
                    pos += len;
                    frames.push((seq, base + pos as u64, time_ms));
                }
                Parsed::Bad(Damage::Incomplete) if !eof => {
                    window.drain(..pos);
                    base += pos as u64;
                    pos = 0;
                    let n = (&file)
                        .take(READ_CHUNK as u64)
                        .read_to_end(&mut window)
                        .map_err(io_err(&path, "read"))?;
                    eof = n == 0;
                }
                // The end of the file at a frame boundary.
                Parsed::Bad(Damage::Incomplete) if pos == window.len() => break,
                Parsed::Bad(d) => {
                    damage = Some(d);
                    break;
                }
            }
        }
        let off = base + pos as u64;
        let file_len = u64::try_from(st.st_size).unwrap_or(0).max(off);
        if frames.is_empty() && prev_last.is_some() && damage == Some(Damage::BadSequence) {
            // A whole segment of already-seen sequence numbers: copied or renamed, not ours to cut.
            anomalies.push(Anomaly::SegmentOverlap {
                segment: name.clone(),
            });
            continue;
        }
        if let Some(damage) = damage {
            let cut = file_len - off;
            warn!(segment = %path.display(), offset = off, bytes = cut, ?damage,
                "Truncating spool segment at its last good frame.");
            ftruncate(&file, off as i64).map_err(errno_err(&path, "truncate"))?;
            file.sync_all().map_err(io_err(&path, "fsync"))?;
            truncated_bytes += cut;
            anomalies.push(Anomaly::Truncated {
                segment: name.clone(),
                offset: off,
                bytes: cut,
                damage,
            });
        }
        let seqs = match (frames.first(), frames.last()) {
            (Some(f), Some(l)) => Some((f.0, l.0)),
            _ => None,
        };
        if let Some((f, _)) = seqs {
            if f != first {
                anomalies.push(Anomaly::SegmentRenamed {
                    segment: name.clone(),
                    first_seq: f,
                });
            }
        }
        if let Some((_, l)) = seqs {
            prev_last = Some(l);
        }
        scanned.push((
            ScannedSegment {
                first_seq: first,
                name: name.clone(),
                len: off,
                seqs,
                acked_end: 0,
                first_unacked_ms: None,
            },
            frames,
        ));
    }

    let first_on_disk = scanned.iter().find_map(|(s, _)| s.seqs.map(|q| q.0));
    let last_on_disk = scanned.iter().rev().find_map(|(s, _)| s.seqs.map(|q| q.1));
    let acked_seq = match ack_state {
        Some(s) => s.acked_seq,
        None => {
            if !ack_present && !scanned.is_empty() {
                anomalies.push(Anomaly::AckMissing);
            }
            first_on_disk.map_or(0, |f| f - 1)
        }
    };
    let ack_next = ack_state.map_or(0, |s| s.next_seq);

    // Gaps: between the ack and the first record, between segments and within them, and after the
    // last record up to the high-water mark of `ack.json`.
    let mut expect = acked_seq + 1;
    for (_, frames) in &scanned {
        for &(seq, _, _) in frames {
            if seq > expect {
                anomalies.push(Anomaly::MissingRecords {
                    from: expect,
                    to: seq - 1,
                });
            }
            expect = expect.max(seq + 1);
        }
    }
    if ack_next > expect {
        anomalies.push(Anomaly::MissingRecords {
            from: expect,
            to: ack_next - 1,
        });
    }

    for (seg, frames) in &mut scanned {
        seg.acked_end = frames
            .iter()
            .take_while(|f| f.0 <= acked_seq)
            .last()
            .map_or(0, |f| f.1);
        seg.first_unacked_ms = frames.iter().find(|f| f.0 > acked_seq).map(|f| f.2);
    }
    let mut scanned: Vec<ScannedSegment> = scanned.into_iter().map(|(s, _)| s).collect();

    // Fully acknowledged segments (left by a crash between ack and delete), except the last.
    let mut segments_deleted = 0;
    while scanned.len() > 1 && scanned[0].seqs.is_none_or(|(_, l)| l <= acked_seq) {
        let seg = scanned.remove(0);
        dir.unlink(&seg.name)?;
        segments_deleted += 1;
    }
    if segments_deleted > 0 {
        dir.sync()?;
    }

    let mut next_seq = [
        1,
        acked_seq + 1,
        ack_next,
        last_on_disk.map_or(0, |l| l + 1),
        scanned
            .last()
            .filter(|s| s.seqs.is_none())
            .map_or(0, |s| s.first_seq),
    ]
    .into_iter()
    .max()
    .unwrap_or(1);

    // Continue the last segment only if the next record follows on from it.
    let continue_last = scanned.last().is_some_and(|s| match s.seqs {
        Some((_, l)) => l + 1 == next_seq,
        None => s.first_seq == next_seq,
    });
    if !continue_last {
        // A renamed segment may already carry the name the new one needs: skip numbers rather
        // than reuse or overwrite anything.
        while seg_names.values().any(|n| *n == segment_name(next_seq)) {
            next_seq += 1;
        }
    }

    let mut segments = Vec::new();
    let mut base = 0;
    let mut ack_end = 0;
    let mut oldest_unacked_ms = None;
    let mut ack_found = false;
    for s in &scanned {
        if !ack_found {
            if s.seqs.is_some_and(|(_, l)| l > acked_seq) {
                ack_end = base + s.acked_end;
                ack_found = true;
            } else {
                ack_end = base + s.len;
            }
        }
        if oldest_unacked_ms.is_none() {
            oldest_unacked_ms = s.first_unacked_ms;
        }
        segments.push(SegInfo {
            first_seq: s.first_seq,
            name: s.name.clone(),
            base,
            durable_len: s.len,
        });
        base += s.len;
    }
    let end = base;

    let (file, seg_base, seg_len, seg_first) = match segments.last().filter(|_| continue_last) {
        Some(last) => {
            let file = dir.open_file(&last.name, OFlag::O_RDWR, "open segment")?;
            (file, last.base, last.durable_len, last.first_seq)
        }
        None => {
            let info = create_segment(&dir, next_seq, end)?;
            let file = dir.open_file(&info.name, OFlag::O_RDWR, "open segment")?;
            segments.push(info);
            (file, end, 0, next_seq)
        }
    };

    if ack_state.is_none() || ack_state.is_some_and(|s| s.next_seq < next_seq) {
        write_ack(&dir, acked_seq, next_seq)?;
    }

    let shared = Arc::new(Mutex::new(Shared {
        segments,
        next_seq,
        durable_next_seq: next_seq,
        acked_seq,
        ack_end,
        write_end: end,
        durable_end: end,
        oldest_unacked_ms,
        dropped_total: 0,
        corrupt_skips: 0,
    }));
    let report = OpenReport {
        created,
        segments_found: seg_names.len(),
        segments_deleted,
        truncated_bytes,
        acked_seq,
        next_seq,
        anomalies,
    };
    for a in report.anomalies.iter().filter(|a| a.suspicious()) {
        warn!(dir = %dir.path.display(), anomaly = ?a, "Spool anomaly found on open.");
    }
    let writer = SpoolWriter {
        dir: Arc::clone(&dir),
        shared: Arc::clone(&shared),
        opts,
        file,
        seg_first,
        seg_base,
        seg_written: seg_len,
        buf: Vec::with_capacity(FLUSH_BYTES + MAX_PAYLOAD.min(1 << 20)),
        next_seq,
        unsynced_since: None,
        batch_first_ms: None,
        drops: None,
    };
    let reader = SpoolReader {
        dir,
        shared,
        cursor: None,
        file: None,
        chunk: Vec::new(),
        chunk_at: (0, 0),
        positions: BTreeMap::new(),
    };
    Ok((writer, reader, report))
}

fn read_ack(dir: &Dir) -> Result<AckState, String> {
    let mut f = dir
        .open_file(ACK_FILE, OFlag::O_RDONLY, "open")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(|e| e.to_string())?;
    let state: AckState = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if state.version != 1 {
        return Err(format!("unknown version {}", state.version));
    }
    Ok(state)
}

/// Creates `seg-<first_seq>.log` (exclusively, 0600) and makes its name durable.
fn create_segment(dir: &Dir, first_seq: u64, base: u64) -> Result<SegInfo, SpoolError> {
    let name = segment_name(first_seq);
    dir.open_file(
        &name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        "create segment",
    )?;
    dir.sync()?;
    Ok(SegInfo {
        first_seq,
        name,
        base,
        durable_len: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Writer

/// The appending half, owned by the watcher daemon.
#[derive(Debug)]
pub struct SpoolWriter {
    dir: Arc<Dir>,
    shared: Arc<Mutex<Shared>>,
    opts: SpoolOptions,
    file: File,
    seg_first: u64,
    seg_base: u64,
    /// Bytes of the current segment handed to the kernel.
    seg_written: u64,
    /// Frames not yet handed to the kernel.
    buf: Vec<u8>,
    next_seq: u64,
    unsynced_since: Option<Instant>,
    batch_first_ms: Option<i64>,
    drops: Option<Drops>,
}

impl SpoolWriter {
    /// Stores one record: `build` receives the sequence assigned to it and returns the payload.
    /// When the spool is full, `build` is not called and the record is counted as dropped.
    pub fn append(
        &mut self,
        time_ms: i64,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Appended, SpoolError> {
        let now = Instant::now();
        let full = {
            let mut sh = lock(&self.shared);
            let full = sh.write_end.saturating_sub(sh.ack_end) >= self.opts.max_bytes;
            if full {
                sh.dropped_total += 1;
            }
            full
        };
        if full {
            match &mut self.drops {
                Some(d) => {
                    d.count += 1;
                    d.last_ms = time_ms;
                }
                None => {
                    warn!(
                        max_bytes = self.opts.max_bytes,
                        "Spool full; dropping audit events until the shipper catches up."
                    );
                    self.drops = Some(Drops {
                        count: 1,
                        first_ms: time_ms,
                        last_ms: time_ms,
                    });
                }
            }
            if self.needs_sync(now) {
                self.sync()?;
            }
            return Ok(Appended::Dropped);
        }

        let seq = self.next_seq;
        let payload = build(seq);
        if payload.len() > MAX_PAYLOAD {
            return Err(SpoolError::TooLarge { len: payload.len() });
        }
        let frame_len = (HEADER_LEN + payload.len()) as u64;
        let seg_len = self.seg_written + self.buf.len() as u64;
        if seg_len > 0 && seg_len + frame_len > self.opts.segment_bytes {
            self.roll()?;
        }
        encode_frame(&mut self.buf, seq, time_ms, &payload);
        self.next_seq += 1;
        self.batch_first_ms.get_or_insert(time_ms);
        self.unsynced_since.get_or_insert(now);
        {
            let mut sh = lock(&self.shared);
            sh.next_seq = self.next_seq;
            sh.write_end += frame_len;
        }
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        if self.needs_sync(now) {
            self.sync()?;
        }
        Ok(Appended::Stored { seq })
    }

    /// Whether records were appended since the last [`sync`](Self::sync).
    pub fn is_dirty(&self) -> bool {
        self.unsynced_since.is_some()
    }

    /// When the oldest unsynced record reaches the sync interval (None: nothing to sync).
    pub fn sync_deadline(&self) -> Option<Instant> {
        self.unsynced_since.map(|t| t + self.opts.sync_interval)
    }

    /// Whether a sync is due at `now`.
    pub fn needs_sync(&self, now: Instant) -> bool {
        self.sync_deadline().is_some_and(|d| now >= d)
    }

    /// Makes everything appended so far durable, then visible to the reader.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.unsynced_since.is_none() {
            return Ok(());
        }
        self.flush()?;
        let path = self.dir.file_path(&segment_name(self.seg_first));
        fdatasync(&self.file).map_err(errno_err(&path, "fdatasync"))?;
        self.publish();
        self.unsynced_since = None;
        self.batch_first_ms = None;
        Ok(())
    }

    /// Hands the count of a drop episode over once the backlog is below 7/8 of the cap (None
    /// while still full or when nothing was dropped).
    pub fn take_drops(&mut self) -> Option<Drops> {
        self.drops?;
        let unacked = {
            let sh = lock(&self.shared);
            sh.write_end.saturating_sub(sh.ack_end)
        };
        if unacked > self.opts.max_bytes - self.opts.max_bytes / 8 {
            return None;
        }
        let d = self.drops.take();
        if let Some(d) = d {
            info!(dropped = d.count, "Spool has room again.");
        }
        d
    }

    /// The drop episode in progress, without ending it (e.g. to record it on shutdown).
    pub fn pending_drops(&self) -> Option<Drops> {
        self.drops
    }

    /// The sequence the next stored record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn stats(&self) -> SpoolStats {
        lock(&self.shared).stats()
    }

    /// Writes the buffer to the segment (no sync). On failure the segment is cut back to its
    /// last whole frame and the buffer kept, so a retry neither loses nor tears records.
    fn flush(&mut self) -> Result<(), SpoolError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.seg_written) {
            let _ = ftruncate(&self.file, self.seg_written as i64);
            let path = self.dir.file_path(&segment_name(self.seg_first));
            return Err(io_err(&path, "write")(e));
        }
        self.seg_written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    fn publish(&self) {
        let mut sh = lock(&self.shared);
        let len = self.seg_written;
        let end = self.seg_base + len;
        if let Some(seg) = sh
            .segments
            .iter_mut()
            .rev()
            .find(|s| s.first_seq == self.seg_first)
        {
            seg.durable_len = len;
        }
        sh.durable_next_seq = self.next_seq;
        sh.durable_end = end;
        if sh.oldest_unacked_ms.is_none() && sh.ack_end < end {
            sh.oldest_unacked_ms = self.batch_first_ms;
        }
    }

    /// Seals the current segment (synced) and starts the next one at `next_seq`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.flush()?;
        let path = self.dir.file_path(&segment_name(self.seg_first));
        fdatasync(&self.file).map_err(errno_err(&path, "fdatasync"))?;
        self.publish();
        let base = self.seg_base + self.seg_written;
        let info = create_segment(&self.dir, self.next_seq, base)?;
        self.file = self
            .dir
            .open_file(&info.name, OFlag::O_RDWR, "open segment")?;
        self.seg_first = info.first_seq;
        self.seg_base = base;
        self.seg_written = 0;
        lock(&self.shared).segments.push(info);
        Ok(())
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            warn!(error = %e, "Spool sync on shutdown failed; unsynced records may be lost.");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reader

#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// Last sequence returned (or the `after_seq` asked for).
    seq: u64,
    seg_first: u64,
    offset: u64,
}

/// The shipping half: reads synced records and advances the ack position.
#[derive(Debug)]
pub struct SpoolReader {
    dir: Arc<Dir>,
    shared: Arc<Mutex<Shared>>,
    cursor: Option<Cursor>,
    file: Option<(u64, File)>,
    chunk: Vec<u8>,
    /// (segment first_seq, offset) of `chunk[0]`.
    chunk_at: (u64, u64),
    /// seq → (segment first_seq, offset after the frame), for records read and not yet acked.
    positions: BTreeMap<u64, (u64, u64)>,
}

impl SpoolReader {
    /// Up to `max_records` synced records with `seq > after_seq`, in order, whose payloads total at
    /// most `max_bytes` (but always at least one record if there is one).
    pub fn read_from(
        &mut self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        self.read_sized(after_seq, max_records, max_bytes, 0)
    }

    /// [`read_from`](Self::read_from) where each record also costs `per_record` bytes against
    /// `max_bytes`: the shipper passes CloudWatch's 26-byte per-event overhead, so that a read
    /// sized for one PutLogEvents call fits one call (sized on payloads alone it overflows the
    /// call, and the remainder went out as a call of a few events).
    pub fn read_sized(
        &mut self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
        per_record: usize,
    ) -> Result<Vec<Record>, SpoolError> {
        let segs = lock(&self.shared).segments.clone();
        let Some((mut idx, mut off)) = self.locate(&segs, after_seq)? else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        let mut last_seq = after_seq;
        while out.len() < max_records {
            let seg = &segs[idx];
            if off >= seg.durable_len {
                if idx + 1 < segs.len() {
                    idx += 1;
                    off = 0;
                    continue;
                }
                break;
            }
            let avail = (seg.durable_len - off) as usize;
            let head = self.bytes_at(seg, off, HEADER_LEN.min(avail))?;
            let parsed = parse_header(head).map(|(len, ..)| len);
            let frame = match parsed {
                Ok(len) if HEADER_LEN + len <= avail => {
                    if !out.is_empty() && bytes + len + per_record > max_bytes {
                        break;
                    }
                    let b = self.bytes_at(seg, off, HEADER_LEN + len)?;
                    match parse_frame(b) {
                        Parsed::Frame {
                            seq,
                            time_ms,
                            payload,
                            len,
                        } => Ok((seq, time_ms, payload.to_vec(), len)),
                        Parsed::Bad(d) => Err(d),
                    }
                }
                Ok(_) => Err(Damage::Incomplete),
                Err(d) => Err(d),
            };
            match frame {
                Ok((seq, time_ms, payload, len)) => {
                    off += len as u64;
                    if seq <= last_seq {
                        continue;
                    }
                    bytes += payload.len() + per_record;
                    last_seq = seq;
                    if self.positions.len() >= MAX_POSITIONS {
                        self.positions.pop_first();
                    }
                    self.positions.insert(seq, (seg.first_seq, off));
                    out.push(Record {
                        seq,
                        time_ms,
                        payload,
                    });
                }
                Err(damage) => {
                    warn!(segment = %self.dir.file_path(&seg.name).display(), offset = off,
                        skipped = seg.durable_len - off, ?damage,
                        "Corrupt spool frame; skipping the rest of the segment.");
                    lock(&self.shared).corrupt_skips += 1;
                    off = seg.durable_len;
                }
            }
        }
        self.cursor = Some(Cursor {
            seq: last_seq,
            seg_first: segs[idx].first_seq,
            offset: off,
        });
        Ok(out)
    }

    /// Records that every record up to and including `seq` reached CloudWatch: persists the ack
    /// position and deletes segments that hold nothing unacknowledged. Returns how many segments
    /// were deleted.
    pub fn ack(&mut self, seq: u64) -> Result<usize, SpoolError> {
        let (acked, durable_next, segs) = {
            let sh = lock(&self.shared);
            (sh.acked_seq, sh.durable_next_seq, sh.segments.clone())
        };
        if seq <= acked {
            return Ok(0);
        }
        if seq >= durable_next {
            return Err(SpoolError::AckBeyondEnd {
                seq,
                last: durable_next.saturating_sub(1),
            });
        }
        let pos = match self.positions.get(&seq) {
            Some(&p) => Some(p),
            None => self
                .locate(&segs, seq)?
                .map(|(i, off)| (segs[i].first_seq, off)),
        };
        let ack_end = pos
            .and_then(|(first, off)| {
                segs.iter()
                    .find(|s| s.first_seq == first)
                    .map(|s| s.base + off)
            })
            .unwrap_or(0);
        write_ack(&self.dir, seq, durable_next)?;
        self.positions = self.positions.split_off(&(seq + 1));

        let doomed: Vec<String> = {
            let mut sh = lock(&self.shared);
            sh.acked_seq = seq;
            sh.ack_end = sh.ack_end.max(ack_end);
            let ack_end = sh.ack_end;
            let last = sh.segments.len().saturating_sub(1);
            let mut doomed = Vec::new();
            let mut keep = Vec::with_capacity(sh.segments.len());
            for (i, s) in sh.segments.drain(..).enumerate() {
                if i < last && s.base + s.durable_len <= ack_end {
                    doomed.push(s.name);
                } else {
                    keep.push(s);
                }
            }
            sh.segments = keep;
            sh.oldest_unacked_ms = if ack_end < sh.write_end {
                self.peek_time(&sh.segments, ack_end)
            } else {
                None
            };
            doomed
        };
        for name in &doomed {
            if matches!(&self.file, Some((first, _)) if segment_name(*first) == *name) {
                self.file = None;
            }
            self.dir.unlink(name)?;
        }
        Ok(doomed.len())
    }

    /// The acknowledged sequence.
    pub fn acked_seq(&self) -> u64 {
        lock(&self.shared).acked_seq
    }

    pub fn stats(&self) -> SpoolStats {
        lock(&self.shared).stats()
    }

    /// `time_ms` of the frame at global position `pos`, if synced there.
    fn peek_time(&self, segs: &[SegInfo], pos: u64) -> Option<i64> {
        let seg = segs
            .iter()
            .find(|s| pos >= s.base && pos < s.base + s.durable_len)?;
        let f = self
            .dir
            .open_file(&seg.name, OFlag::O_RDONLY, "open segment")
            .ok()?;
        let mut head = [0u8; HEADER_LEN];
        f.read_exact_at(&mut head, pos - seg.base).ok()?;
        parse_header(&head).ok().map(|h| h.3)
    }

    /// Index of the segment and offset of the first frame with `seq > after_seq` (or the synced end).
    fn locate(
        &mut self,
        segs: &[SegInfo],
        after_seq: u64,
    ) -> Result<Option<(usize, u64)>, SpoolError> {
        if segs.is_empty() {
            return Ok(None);
        }
        if let Some(c) = self.cursor.filter(|c| c.seq == after_seq) {
            if let Some(i) = segs.iter().position(|s| s.first_seq == c.seg_first) {
                return Ok(Some((i, c.offset)));
            }
        }
        if let Some(&(first, off)) = self.positions.get(&after_seq) {
            if let Some(i) = segs.iter().position(|s| s.first_seq == first) {
                return Ok(Some((i, off)));
            }
        }
        let mut idx = segs
            .iter()
            .rposition(|s| s.first_seq <= after_seq.saturating_add(1))
            .unwrap_or(0);
        let mut off = 0;
        loop {
            let seg = &segs[idx];
            if off >= seg.durable_len {
                if idx + 1 < segs.len() {
                    idx += 1;
                    off = 0;
                    continue;
                }
                return Ok(Some((idx, off)));
            }
            let avail = (seg.durable_len - off) as usize;
            let head = self.bytes_at(seg, off, HEADER_LEN.min(avail))?;
            match parse_header(head) {
                Ok((len, _, seq, _)) if seq <= after_seq && HEADER_LEN + len <= avail => {
                    off += (HEADER_LEN + len) as u64;
                }
                // The frame to start at (a damaged one is reported by read_from).
                _ => return Ok(Some((idx, off))),
            }
        }
    }

    /// `n` bytes of `seg` at `off` (the caller keeps within the synced length).
    fn bytes_at(&mut self, seg: &SegInfo, off: u64, n: usize) -> Result<&[u8], SpoolError> {
        let (cf, co) = self.chunk_at;
        if cf == seg.first_seq && off >= co && off + n as u64 <= co + self.chunk.len() as u64 {
            let s = (off - co) as usize;
            return Ok(&self.chunk[s..s + n]);
        }
        if !matches!(&self.file, Some((f, _)) if *f == seg.first_seq) {
            let file = self
                .dir
                .open_file(&seg.name, OFlag::O_RDONLY, "open segment")?;
            self.file = Some((seg.first_seq, file));
        }
        let want = n
            .max(READ_CHUNK)
            .min((seg.durable_len - off) as usize)
            .max(n);
        self.chunk.resize(want, 0);
        let path = self.dir.file_path(&seg.name);
        if let Some((_, file)) = &self.file {
            file.read_exact_at(&mut self.chunk, off)
                .map_err(io_err(&path, "read"))?;
        }
        self.chunk_at = (seg.first_seq, off);
        Ok(&self.chunk[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts() -> SpoolOptions {
        SpoolOptions {
            max_bytes: 1 << 30,
            segment_bytes: 4096,
            sync_interval: Duration::from_secs(3600),
            ..SpoolOptions::default()
        }
    }

    fn payload(seq: u64) -> Vec<u8> {
        format!(
            "{{\"metadata\":{{\"sequence\":{seq:08}}},\"pad\":\"{}\"}}",
            "x".repeat(100)
        )
        .into_bytes()
    }

    fn seqs(r: &[Record]) -> Vec<u64> {
        r.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn frame_round_trip_and_damage() {
        let mut b = Vec::new();
        encode_frame(&mut b, 7, 1234, b"hello");
        assert_eq!(b.len(), HEADER_LEN + 5);
        assert_eq!(
            parse_frame(&b),
            Parsed::Frame {
                seq: 7,
                time_ms: 1234,
                payload: b"hello",
                len: HEADER_LEN + 5
            }
        );
        assert_eq!(
            parse_frame(&b[..b.len() - 1]),
            Parsed::Bad(Damage::Incomplete)
        );
        assert_eq!(parse_frame(&b[..10]), Parsed::Bad(Damage::Incomplete));
        assert_eq!(parse_frame(&b[..2]), Parsed::Bad(Damage::Incomplete));
        let mut flipped = b.clone();
        flipped[HEADER_LEN + 1] ^= 1;
        assert_eq!(parse_frame(&flipped), Parsed::Bad(Damage::BadCrc));
        let mut seq_flipped = b.clone();
        seq_flipped[12] ^= 1;
        assert_eq!(parse_frame(&seq_flipped), Parsed::Bad(Damage::BadCrc));
        assert_eq!(parse_frame(&[0u8; 40]), Parsed::Bad(Damage::BadMagic));
        let mut huge = b.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_frame(&huge), Parsed::Bad(Damage::BadLength));
    }

    /// Found by the spool_frame fuzz target: a frame with a valid checksum numbered u64::MAX
    /// overflowed `last + 1` on open (a panic with overflow checks, a wrapped next_seq of 0
    /// without), and one numbered 0 made the missing ack `first - 1` wrap to u64::MAX, so every
    /// later record counted as acknowledged and was never shipped.
    #[test]
    fn frames_numbered_zero_or_beyond_max_seq_are_damage() {
        for (bad, first_seq) in [(u64::MAX, 1), (MAX_SEQ + 1, 1), (0, 0)] {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("spool");
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            let mut seg = Vec::new();
            if first_seq == 1 {
                encode_frame(&mut seg, 1, 10, b"one");
            }
            let good = seg.len() as u64;
            encode_frame(&mut seg, bad, 10, b"bad");
            std::fs::write(dir.join(segment_name(1)), &seg).unwrap();

            let (mut w, mut r, rep) = open(&dir, opts()).unwrap();
            assert_eq!(rep.truncated_bytes, seg.len() as u64 - good, "seq {bad}");
            assert!(rep.anomalies.contains(&Anomaly::Truncated {
                segment: segment_name(1),
                offset: good,
                bytes: seg.len() as u64 - good,
                damage: Damage::BadSequence,
            }));
            assert_eq!(r.acked_seq(), 0, "seq {bad}");
            assert_eq!(rep.next_seq, first_seq + 1, "seq {bad}");
            w.append(11, payload).unwrap();
            w.sync().unwrap();
            assert_eq!(
                seqs(&r.read_from(0, 10, 1 << 20).unwrap()),
                (1..=first_seq + 1).collect::<Vec<_>>(),
                "seq {bad}"
            );
        }
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(42), "seg-00000000000000000042.log");
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("seg-42.log"), None);
        assert_eq!(parse_segment_name("seg-0000000000000000004x.log"), None);
    }

    #[test]
    fn reader_sees_only_synced_records() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, mut r, rep) = open(&t.path().join("spool"), opts()).unwrap();
        assert!(rep.created);
        assert_eq!(rep.next_seq, 1);
        for _ in 0..3 {
            w.append(10, payload).unwrap();
        }
        assert!(w.is_dirty());
        assert!(r.read_from(0, 100, 1 << 20).unwrap().is_empty());
        w.sync().unwrap();
        assert!(!w.is_dirty());
        assert_eq!(seqs(&r.read_from(0, 100, 1 << 20).unwrap()), vec![1, 2, 3]);
        assert!(matches!(
            r.ack(4),
            Err(SpoolError::AckBeyondEnd { seq: 4, last: 3 })
        ));
    }

    #[test]
    fn sync_due_after_interval() {
        let t = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.sync_interval = Duration::from_millis(100);
        let (mut w, _r, _) = open(&t.path().join("spool"), o).unwrap();
        assert_eq!(w.sync_deadline(), None);
        w.append(1, payload).unwrap();
        let d = w.sync_deadline().unwrap();
        assert!(!w.needs_sync(d - Duration::from_millis(1)));
        assert!(w.needs_sync(d));
        // append syncs by itself once the interval has passed.
        std::thread::sleep(Duration::from_millis(110));
        w.append(2, payload).unwrap();
        assert!(!w.is_dirty());
    }

    #[test]
    fn batches_respect_limits_and_resume_from_cursor() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, mut r, _) = open(&t.path().join("spool"), opts()).unwrap();
        for i in 0..100 {
            w.append(i, payload).unwrap();
        }
        w.sync().unwrap();
        let len = payload(1).len();
        let b = r.read_from(0, 10, usize::MAX).unwrap();
        assert_eq!(seqs(&b), (1..=10).collect::<Vec<_>>());
        let b = r.read_from(10, 1000, len * 3).unwrap();
        assert_eq!(seqs(&b), vec![11, 12, 13]);
        // Smaller than one record: still one.
        let b = r.read_from(13, 1000, 1).unwrap();
        assert_eq!(seqs(&b), vec![14]);
        // Random access (not the cursor) across segment boundaries.
        let b = r.read_from(57, 5, usize::MAX).unwrap();
        assert_eq!(seqs(&b), vec![58, 59, 60, 61, 62]);
        assert_eq!(b[0].time_ms, 57);
        assert_eq!(b[0].payload, payload(58));
        let b = r.read_from(95, 100, usize::MAX).unwrap();
        assert_eq!(seqs(&b), vec![96, 97, 98, 99, 100]);
    }

    /// Regression (issue 14): the shipper's read was sized on payloads alone, so a read meant for
    /// one PutLogEvents call overflowed it once CloudWatch's 26 bytes per event were added, and
    /// the remainder went out as a call of a few events.
    #[test]
    fn a_sized_read_counts_the_per_record_overhead() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, mut r, _) = open(&t.path().join("spool"), opts()).unwrap();
        for i in 0..100 {
            w.append(i, payload).unwrap();
        }
        w.sync().unwrap();
        let len = payload(1).len();
        // Room for exactly 4 records with their overhead, and for 5 on payloads alone.
        let room = 5 * len;
        assert!(
            4 * (len + 26) <= room && room < 5 * (len + 26),
            "the test needs payloads that tell the two apart"
        );
        assert_eq!(
            seqs(&r.read_sized(0, 1000, room, 26).unwrap()),
            vec![1, 2, 3, 4]
        );
        let plain = r.read_from(0, 1000, room).unwrap();
        assert!(plain.len() >= 5, "read_from keeps counting payloads only");
        // Smaller than one record with its overhead: still one.
        assert_eq!(seqs(&r.read_sized(4, 1000, len, 26).unwrap()), vec![5]);
    }

    #[test]
    fn stats_follow_appends_and_acks() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, mut r, _) = open(&t.path().join("spool"), opts()).unwrap();
        for i in 0..50 {
            w.append(1000 + i, payload).unwrap();
        }
        w.sync().unwrap();
        let s = w.stats();
        let frame = (HEADER_LEN + payload(1).len()) as u64;
        assert_eq!(s.unacked_records, 50);
        assert_eq!(s.unacked_bytes, 50 * frame);
        assert_eq!(s.oldest_unacked_ms, Some(1000));
        assert!(s.segments > 1);
        r.read_from(0, 20, usize::MAX).unwrap();
        r.ack(20).unwrap();
        let s = r.stats();
        assert_eq!(s.acked_seq, 20);
        assert_eq!(s.unacked_records, 30);
        assert_eq!(s.unacked_bytes, 30 * frame);
        assert_eq!(s.oldest_unacked_ms, Some(1020));
        // An ack of records never read (found by scanning).
        r.ack(33).unwrap();
        assert_eq!(r.stats().unacked_bytes, 17 * frame);
        assert_eq!(r.stats().oldest_unacked_ms, Some(1033));
        r.ack(50).unwrap();
        let s = r.stats();
        assert_eq!(
            (s.unacked_bytes, s.unacked_records, s.oldest_unacked_ms),
            (0, 0, None)
        );
        assert_eq!(s.segments, 1);
    }

    #[test]
    fn open_scans_a_segment_larger_than_its_window_and_cuts_only_the_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        let mut o = opts();
        o.segment_bytes = 64 << 20;
        let big = |seq: u64| {
            let mut p = payload(seq);
            p.resize(READ_CHUNK + READ_CHUNK / 2, b' ');
            p
        };
        {
            let (mut w, _r, _) = open(&d, o.clone()).unwrap();
            for i in 0..4000u64 {
                // One record larger than the scan window, and two straddling window boundaries.
                if i == 1500 || i == 1501 || i == 3000 {
                    w.append(1, big).unwrap();
                } else {
                    w.append(1, payload).unwrap();
                }
            }
            w.sync().unwrap();
        }
        let seg = std::fs::read_dir(&d)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.to_string_lossy().ends_with(".log"))
            .unwrap();
        let good_len = std::fs::metadata(&seg).unwrap().len();
        assert!(
            good_len > 4 * READ_CHUNK as u64,
            "the segment must span many windows"
        );
        // A torn frame: the header and part of the payload of record 4001.
        let mut torn = Vec::new();
        encode_frame(&mut torn, 4001, 1, &payload(4001));
        torn.truncate(HEADER_LEN + 20);
        let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&torn).unwrap();
        drop(f);

        let (_w, mut r, rep) = open(&d, o).unwrap();
        assert_eq!(rep.next_seq, 4001);
        assert_eq!(rep.truncated_bytes, torn.len() as u64);
        assert!(rep.anomalies.contains(&Anomaly::Truncated {
            segment: seg.file_name().unwrap().to_string_lossy().into_owned(),
            offset: good_len,
            bytes: torn.len() as u64,
            damage: Damage::Incomplete,
        }));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
        let mut all = Vec::new();
        while all.len() < 4000 {
            let batch = r.read_from(all.len() as u64, 1000, 8 << 20).unwrap();
            assert!(!batch.is_empty(), "records missing after {}", all.len());
            all.extend(batch.into_iter().map(|rec| rec.seq));
        }
        assert_eq!(all, (1..=4000).collect::<Vec<u64>>());
    }

    #[test]
    fn too_large_record_uses_no_sequence() {
        let t = tempfile::tempdir().unwrap();
        let (mut w, _r, _) = open(&t.path().join("spool"), opts()).unwrap();
        let e = w.append(1, |_| vec![b'x'; MAX_PAYLOAD + 1]).unwrap_err();
        assert!(matches!(e, SpoolError::TooLarge { .. }));
        assert_eq!(w.append(1, payload).unwrap(), Appended::Stored { seq: 1 });
    }

    #[test]
    fn wrong_permissions_are_fixed_and_reported() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_w, _r, rep) = open(&d, opts()).unwrap();
        assert!(!rep.created);
        assert!(rep
            .anomalies
            .contains(&Anomaly::DirPermissions { was_mode: 0o755 }));
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn created_directory_is_0700() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        let (_w, _r, rep) = open(&d, opts()).unwrap();
        assert!(rep.anomalies.is_empty(), "{:?}", rep.anomalies);
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn foreign_files_and_missing_ack_are_reported() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        {
            let (mut w, _r, _) = open(&d, opts()).unwrap();
            w.append(1, payload).unwrap();
            w.sync().unwrap();
        }
        std::fs::write(d.join("notes.txt"), "hi").unwrap();
        std::fs::remove_file(d.join(ACK_FILE)).unwrap();
        let (_w, _r, rep) = open(&d, opts()).unwrap();
        assert!(rep.anomalies.contains(&Anomaly::AckMissing));
        assert!(rep.anomalies.contains(&Anomaly::UnexpectedEntry {
            name: "notes.txt".into()
        }));
        assert_eq!(rep.acked_seq, 0);
        assert_eq!(rep.next_seq, 2);
    }

    /// Regression (hostile-user suite, docs/THREAT-MODEL.md G2): a spool directory made by the
    /// notebook user was taken over with their segment in it, and its forged frames were shipped.
    /// A second link is what such a user keeps to write the segment after the take-over.
    #[test]
    fn a_segment_with_another_link_is_foreign_and_never_read() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        {
            let (mut w, _r, _) = open(&d, opts()).unwrap();
            w.append(1, payload).unwrap();
            w.sync().unwrap();
        }
        let seg = segment_name(1);
        std::fs::hard_link(d.join(&seg), t.path().join("kept-by-the-user")).unwrap();
        let (mut w, mut r, rep) = open(&d, opts()).unwrap();
        assert!(rep.anomalies.contains(&Anomaly::ForeignSegment {
            segment: seg.clone(),
            uid: Uid::effective().as_raw(),
            links: 2,
        }));
        assert!(rep.anomalies.iter().all(Anomaly::suspicious));
        assert!(!d.join(&seg).exists());
        assert!(d.join(format!("foreign-{seg}")).exists());
        // Nothing of it is read; new records go to a new segment of the agent's own.
        assert!(r.read_from(0, 100, 1 << 20).unwrap().is_empty());
        let Appended::Stored { seq } = w.append(2, payload).unwrap() else {
            panic!("not stored")
        };
        w.sync().unwrap();
        assert_eq!(seqs(&r.read_from(0, 100, 1 << 20).unwrap()), vec![seq]);
        let kept = std::fs::metadata(t.path().join("kept-by-the-user")).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::nlink(&kept),
            2,
            "the foreign segment is kept, not deleted"
        );
    }

    #[test]
    fn corrupt_ack_file_resends_everything() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        {
            let (mut w, mut r, _) = open(&d, opts()).unwrap();
            for i in 0..5 {
                w.append(i, payload).unwrap();
            }
            w.sync().unwrap();
            r.ack(3).unwrap();
        }
        std::fs::write(d.join(ACK_FILE), "{not json").unwrap();
        let (_w, mut r, rep) = open(&d, opts()).unwrap();
        assert!(rep
            .anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::AckCorrupt { .. })));
        assert_eq!(rep.next_seq, 6);
        // Everything still on disk is read again (at-least-once).
        assert_eq!(
            seqs(&r.read_from(rep.acked_seq, 100, usize::MAX).unwrap()),
            vec![1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn deleted_middle_segment_is_missing_records() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        {
            let (mut w, _r, _) = open(&d, opts()).unwrap();
            for i in 0..100 {
                w.append(i, payload).unwrap();
            }
            w.sync().unwrap();
        }
        let mut segs: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("seg-"))
            .collect();
        segs.sort();
        assert!(segs.len() >= 3);
        let victim = &segs[1];
        let from = parse_segment_name(victim).unwrap();
        let to = parse_segment_name(&segs[2]).unwrap() - 1;
        std::fs::remove_file(d.join(victim)).unwrap();
        let (_w, mut r, rep) = open(&d, opts()).unwrap();
        assert!(
            rep.anomalies
                .contains(&Anomaly::MissingRecords { from, to }),
            "{:?}",
            rep.anomalies
        );
        let all = seqs(&r.read_from(0, 1000, usize::MAX).unwrap());
        assert_eq!(all.len() as u64, 100 - (to - from + 1));
        assert_eq!(rep.next_seq, 101);
    }

    #[test]
    fn renamed_segment_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        {
            let (mut w, _r, _) = open(&d, opts()).unwrap();
            w.append(1, payload).unwrap();
            w.sync().unwrap();
        }
        std::fs::rename(d.join(segment_name(1)), d.join(segment_name(5))).unwrap();
        let (_w, _r, rep) = open(&d, opts()).unwrap();
        assert!(rep.anomalies.contains(&Anomaly::SegmentRenamed {
            segment: segment_name(5),
            first_seq: 1
        }));
        assert_eq!(rep.next_seq, 2);
        drop(_w);
        let (mut w, mut r, _) = open(&d, opts()).unwrap();
        assert_eq!(w.append(2, payload).unwrap(), Appended::Stored { seq: 2 });
        w.sync().unwrap();
        assert_eq!(seqs(&r.read_from(0, 10, usize::MAX).unwrap()), vec![1, 2]);
    }

    #[test]
    fn deleted_tail_after_ack_is_missing_records() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("spool");
        {
            let (mut w, mut r, _) = open(&d, opts()).unwrap();
            for i in 0..10 {
                w.append(i, payload).unwrap();
            }
            w.sync().unwrap();
            r.ack(2).unwrap();
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            if n.starts_with("seg-") {
                std::fs::remove_file(d.join(n)).unwrap();
            }
        }
        let (mut w, _r, rep) = open(&d, opts()).unwrap();
        assert!(
            rep.anomalies
                .contains(&Anomaly::MissingRecords { from: 3, to: 10 }),
            "{:?}",
            rep.anomalies
        );
        assert_eq!(rep.next_seq, 11);
        assert_eq!(w.append(1, payload).unwrap(), Appended::Stored { seq: 11 });
    }
}
