//! What the watcher and the catch-up scan hand to the rest of the pipeline: one file-system change,
//! with the facts about the file as the agent saw them. Paths are raw bytes (`PathBuf`): the notebook
//! user controls this tree, names need not be UTF-8 and are encoded losslessly only by `ocsf`.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

/// The OCSF File System Activity `activity_id` values the agent emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    /// activity_id 1.
    Create,
    /// activity_id 3: contents written.
    Update,
    /// activity_id 4.
    Delete,
    /// activity_id 5: `path` is the new name, `from` the old one.
    Rename { from: PathBuf },
    /// activity_id 6: mode or owner changed.
    SetAttributes,
}

impl ChangeKind {
    pub fn activity_id(&self) -> u8 {
        match self {
            ChangeKind::Create => 1,
            ChangeKind::Update => 3,
            ChangeKind::Delete => 4,
            ChangeKind::Rename { .. } => 5,
            ChangeKind::SetAttributes => 6,
        }
    }
}

/// How the change was noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An inotify event while the agent was running.
    Live,
    /// The startup scan against the persisted snapshot (the change happened while the agent was down).
    CatchUp,
    /// A rescan after an inotify queue overflow, a full channel or a watch-limit error.
    Rescan,
}

/// OCSF `file.type_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Regular = 1,
    Directory = 2,
    CharDevice = 3,
    BlockDevice = 4,
    LocalSocket = 5,
    NamedPipe = 6,
    SymbolicLink = 7,
    Unknown = 0,
}

impl FileKind {
    pub fn of(ft: std::fs::FileType) -> Self {
        if ft.is_file() {
            FileKind::Regular
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_symlink() {
            FileKind::SymbolicLink
        } else if ft.is_fifo() {
            FileKind::NamedPipe
        } else if ft.is_socket() {
            FileKind::LocalSocket
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else if ft.is_block_device() {
            FileKind::BlockDevice
        } else {
            FileKind::Unknown
        }
    }
}

/// A sha256 digest, kept as its 32 bytes; the hex form is made only when a record is written.
/// (As a hex `String` it was a heap block of 64 bytes plus the allocator's header per cached
/// directory entry and per queued change: the largest part of a cached entry.)
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// From 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (o, pair) in out.iter_mut().zip(b.chunks(2)) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            *o = (hi * 16 + lo) as u8;
        }
        Some(Self(out))
    }

    /// The 32 bytes of `b`; `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(Self)
    }

    /// Lowercase hex, as the records carry it.
    pub fn hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(DIGITS[usize::from(b >> 4)] as char);
            s.push(DIGITS[usize::from(b & 15)] as char);
        }
        s
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Facts about a file from one `lstat` (never following a symlink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub kind: FileKind,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub inode: u64,
    pub mtime_ms: i64,
    /// sha256 of the contents, for regular files up to `audit.hash_max_bytes`.
    pub sha256: Option<Digest>,
    /// Why there is no hash although the file is regular ("over hash_max_bytes", "vanished", …).
    pub hash_note: Option<String>,
    /// The target of a symbolic link, as stored in the link (never followed).
    pub link_target: Option<PathBuf>,
}

impl FileFacts {
    /// Facts from `symlink_metadata` (lstat). No hash; `hash` fills it later, off the notify thread.
    pub fn from_metadata(md: &std::fs::Metadata) -> Self {
        Self {
            kind: FileKind::of(md.file_type()),
            size: md.size(),
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
            inode: md.ino(),
            mtime_ms: md.mtime() * 1000 + md.mtime_nsec() / 1_000_000,
            sha256: None,
            hash_note: None,
            link_target: None,
        }
    }
}

/// One change to the audited tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsChange {
    pub kind: ChangeKind,
    /// Absolute path as seen on the host (under `--root` when one is given).
    pub path: PathBuf,
    /// The file as it is after the change; for a delete, as it was last known (snapshot), if known.
    pub facts: Option<FileFacts>,
    /// When the change was observed, ms since the epoch.
    pub time_ms: i64,
    pub source: Source,
    /// The process that made the change, as the event source reported it (fanotify's live
    /// events); `None` for inotify, catch-up and rescans, which cannot say.
    pub pid: Option<u32>,
}

/// Something the agent itself reports (not a file change). Encoded by `ocsf` with the class that
/// fits; documented in docs/EVENTS.md.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    Started {
        version: String,
        paths: Vec<PathBuf>,
        watches: u64,
        catch_up_changes: u64,
        /// The event source that runs (`fanotify` or `inotify`), and why this one.
        source: String,
        source_reason: String,
        /// How the process behind each change is known: `process-events connector`, `/proc at
        /// event time only (…why…)`, or `none: …` (the inotify source names no process).
        actors: String,
    },
    Stopped {
        reason: String,
        /// Records written to the spool by this run of the daemon (not what is still unshipped).
        spooled: u64,
    },
    /// A tree was rescanned: after `IN_Q_OVERFLOW`, a full channel, or at a degraded periodic scan.
    Rescan {
        path: PathBuf,
        reason: String,
        changes: u64,
        lost_notifications: u64,
    },
    /// inotify limits hit; the named sysctl should be raised; the listed tree is scanned periodically.
    WatchLimit {
        path: PathBuf,
        sysctl: String,
        error: String,
        scan_interval_secs: u64,
    },
    /// The spool was full: this many events were dropped between the two times.
    SpoolDrop {
        dropped: u64,
        first_ms: i64,
        last_ms: i64,
    },
    /// Records the shipper could not deliver to CloudWatch Logs as they are (kept in the dead-letter
    /// file `shipper-rejected.jsonl` in the state directory), or a delivery fact worth an audit
    /// trail (log group or stream created). `what`: `rejected_locally`, `rejected_by_service`,
    /// `batch_rejected`, `truncated`, `destination_created`.
    Delivery {
        what: String,
        detail: String,
        count: u64,
        first_seq: u64,
        last_seq: u64,
    },
    /// The spool or snapshot was tampered with (renamed, deleted, truncated, corrupt frames).
    SpoolTamper { path: PathBuf, what: String },
    /// `apply` finished. Control ids (`root_access`, …) in each list.
    ApplyResult {
        changed: Vec<String>,
        unchanged: Vec<String>,
        failed: Vec<ControlFailure>,
    },
    /// A control is no longer compliant (found by `watch` or `status`). `changed`: the watched
    /// files whose change led to the check (empty when the periodic check found it).
    DriftFound {
        control: String,
        title: String,
        evidence: String,
        changed: Vec<PathBuf>,
    },
    /// A drifted control was put back (`evidence`: what the re-apply changed and the check now).
    DriftRepaired {
        control: String,
        title: String,
        evidence: String,
    },
    /// The re-apply of a drifted control failed, or left it failing; it stays drifted.
    DriftRepairFailed {
        control: String,
        title: String,
        error: String,
    },
    /// `watch` obtained a new CodeArtifact token (`pip.codeartifact`) and rewrote every pip.conf
    /// with it. `repository`: `domain/repository`; expiry times in ms since the epoch; never the
    /// token.
    TokenRefreshed {
        repository: String,
        expires_ms: i64,
        previous_expires_ms: Option<i64>,
    },
    /// A CodeArtifact token refresh failed and is retried in `retry_secs`; the token in the files
    /// (expiring at `expires_ms`, when known) stays in use. `error` names the missing IAM actions
    /// or VPC endpoints when that is the cause.
    TokenRefreshFailed {
        repository: String,
        error: String,
        attempt: u32,
        expires_ms: Option<i64>,
        retry_secs: u64,
    },
    /// Periodic status of the `watch` daemon (and one at every change of compliance);
    /// `drifted` lists non-compliant control ids. `status` is the `status --json` object
    /// (docs/STATUS.md), secrets redacted; `null` when it could not be made. The daemon fills
    /// `uptime_secs`, `spool_pending`, `spool_dropped` and `watches` as it spools the event.
    Heartbeat {
        uptime_secs: u64,
        drifted: Vec<String>,
        spool_pending: u64,
        spool_dropped: u64,
        watches: u64,
        status: serde_json::Value,
    },
}

/// One control that `apply` could not bring into compliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlFailure {
    pub control: String,
    pub error: String,
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
