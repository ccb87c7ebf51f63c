//! The fanotify event source: one filesystem mark per audited filesystem, events that name the
//! acting process, no watch per directory.
//!
//! Setup: `fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC | FAN_REPORT_DFID_NAME)` (Linux 5.9+), then
//! `fanotify_mark(FAN_MARK_ADD | FAN_MARK_FILESYSTEM)` on the filesystem of every root (of its
//! nearest existing ancestor when the root does not exist yet: a filesystem mark covers a root
//! created later on the same filesystem) for create, delete, rename, modify, close-write and
//! attribute events on files and directories (`FAN_ONDIR`), plus close-no-write when the read
//! audit is on. `FAN_RENAME` (5.17+) is asked for first; a kernel that refuses it (`EINVAL`) gets
//! `FAN_MOVED_FROM | FAN_MOVED_TO` instead.
//!
//! Each event carries a directory file handle and a name (`FAN_EVENT_INFO_TYPE_DFID_NAME`, or the
//! `OLD_`/`NEW_` pair of a `FAN_RENAME`). A handle becomes a path with `open_by_handle_at(mount
//! fd, handle, O_PATH)` and `readlink(/proc/self/fd/N)`, cached by handle (bounded, first in first
//! out). A renamed directory drops the cached paths at and below its old name; an overflow drops
//! them all. A directory that was removed before its events are read cannot be opened by handle
//! any more (`ESTALE`, or a link count of 0): such an event is counted in
//! [`FanotifyStats::unresolved`] and not yielded (its directory's own delete follows, and the
//! processor forgets the subtree then).
//!
//! What the kernel does not give: a timestamp (events carry the read time), a rename cookie
//! (with `MOVED_*` pairs the source pairs a `MovedFrom` with the next `MovedTo` *of the same
//! pid*, under a cookie it makes up; anything else is unpaired and reads as a move out and a move
//! in), and the order of merged events (the kernel merges events on the same name by the same
//! process into one mask; they are yielded in the order delete, create, modify, attrib, close, so
//! the processor's `lstat` sees the final state).
//!
//! Why our own parser and not nix's: nix 0.31's `Fanotify::read_events` reads into a 4 KiB buffer
//! and keeps only the fixed `fanotify_event_metadata`; the info records (directory handle, name,
//! old/new names of a rename) after it are skipped, and its `InitFlags` has no `FAN_REPORT_*FID*`
//! flags. We use nix for `fanotify_init`/`fanotify_mark` (with `from_bits_retain` for the FID
//! flags), `poll`, `read` and `fstatfs`, and parse the records from the byte buffer ourselves
//! (plain safe slice reads). The two things nix does not wrap need `unsafe`: `open_by_handle_at`
//! and reading the two ints of `fsid_t` (its fields are private in libc) — hence the allow below.
#![allow(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use nix::sys::stat::{fstat, Mode};

use super::{Op, RawEvent, Scope, Source, SourceKind};
use crate::audit::change::now_ms;

/// How the source is set up. `Default` is what the daemon uses.
#[derive(Debug, Clone)]
pub struct FanotifyConfig {
    /// Also report files closed after reading (`FAN_CLOSE_NOWRITE`) as [`Op::CloseNoWrite`].
    pub reads: bool,
    /// Do not ask for `FAN_RENAME` even when the kernel has it (tests of the `MOVED_*` pairing
    /// that older kernels get).
    pub no_rename_event: bool,
    /// Directory handles whose paths are kept.
    pub cache_capacity: usize,
    /// Bytes read per `read(2)`.
    pub buffer_bytes: usize,
}

impl Default for FanotifyConfig {
    fn default() -> Self {
        Self {
            reads: false,
            no_rename_event: false,
            cache_capacity: 16_384,
            buffer_bytes: 64 << 10,
        }
    }
}

/// Why fanotify cannot run here; the caller falls back to inotify and says this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fanotify unavailable ({kind}): {reason}")]
pub struct Unavailable {
    pub kind: UnavailableKind,
    /// What failed, on what, and what would make it work.
    pub reason: String,
    pub errno: Option<Errno>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnavailableKind {
    /// `EPERM`: the agent lacks `CAP_SYS_ADMIN` (or a seccomp filter refuses the call).
    Permission,
    /// The kernel lacks fanotify or FID reporting (`ENOSYS`, `EINVAL` at init).
    Kernel,
    /// A filesystem refuses a filesystem mark with file handles (`ENODEV`, `EXDEV`,
    /// `EOPNOTSUPP`, `EINVAL` at mark).
    Filesystem,
    /// Anything else (limits, a root that cannot be opened).
    Other,
}

impl std::fmt::Display for UnavailableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnavailableKind::Permission => "permission",
            UnavailableKind::Kernel => "kernel",
            UnavailableKind::Filesystem => "filesystem",
            UnavailableKind::Other => "other",
        })
    }
}

fn unavailable(kind: UnavailableKind, errno: Errno, reason: String) -> Unavailable {
    Unavailable {
        kind,
        reason,
        errno: Some(errno),
    }
}

/// Counters for `status`, logs and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanotifyStats {
    /// Kernel events read (one event may carry several merged operations).
    pub events: u64,
    /// RawEvents yielded.
    pub yielded: u64,
    /// Events about paths outside the scope (other directories of a marked filesystem).
    pub out_of_scope: u64,
    /// Events whose directory could no longer be opened by its handle (removed since).
    pub unresolved: u64,
    /// `FAN_Q_OVERFLOW` events.
    pub overflows: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Time spent turning handles into paths on a cache miss, in nanoseconds.
    pub resolve_ns: u64,
}

/// One marked filesystem.
#[derive(Debug)]
struct MountRef {
    fsid: [u8; 8],
    /// A directory on the filesystem: `open_by_handle_at`'s mount fd.
    fd: OwnedFd,
    /// The path it was opened by (for messages).
    path: PathBuf,
}

/// The reader. `Send`: it is owned by one reader thread.
#[derive(Debug)]
pub struct FanotifySource {
    group: Fanotify,
    scope: Scope,
    cfg: FanotifyConfig,
    mounts: Vec<MountRef>,
    cache: DirCache,
    buf: Vec<u8>,
    rename_event: bool,
    /// The last `MovedFrom` not yet paired: (pid, cookie).
    pending_from: Option<(i32, u32)>,
    next_cookie: u32,
    own_pid: i32,
    stats: FanotifyStats,
}

const METADATA_LEN: usize = 24;
const FAN_NOFD: i32 = -1;
const INFO_DFID_NAME: u8 = 2;
const INFO_DFID: u8 = 3;
const INFO_OLD_DFID_NAME: u8 = 10;
const INFO_NEW_DFID_NAME: u8 = 12;

impl FanotifySource {
    /// Sets up the group and one mark per filesystem holding a root of `scope`.
    pub fn open(scope: Scope, cfg: FanotifyConfig) -> Result<Self, Unavailable> {
        use UnavailableKind::*;
        let init = InitFlags::FAN_CLASS_NOTIF
            | InitFlags::FAN_CLOEXEC
            | InitFlags::from_bits_retain(libc::FAN_REPORT_DFID_NAME);
        let group = Fanotify::init(init, EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE)
            .map_err(|e| match e {
                Errno::EPERM => unavailable(
                    Permission,
                    e,
                    "fanotify_init: EPERM: needs CAP_SYS_ADMIN (and fanotify_init/fanotify_mark allowed by the seccomp filter)".into(),
                ),
                Errno::ENOSYS => unavailable(
                    Kernel,
                    e,
                    "fanotify_init: ENOSYS: the kernel has no fanotify".into(),
                ),
                Errno::EINVAL => unavailable(
                    Kernel,
                    e,
                    "fanotify_init: EINVAL: the kernel has no FAN_REPORT_DFID_NAME (needs Linux 5.9)".into(),
                ),
                Errno::EMFILE => unavailable(
                    Other,
                    e,
                    "fanotify_init: EMFILE: too many fanotify groups (fs.fanotify.max_user_groups)".into(),
                ),
                e => unavailable(Other, e, format!("fanotify_init: {e}")),
            })?;

        let mut mask = MaskFlags::FAN_CREATE
            | MaskFlags::FAN_DELETE
            | MaskFlags::FAN_MODIFY
            | MaskFlags::FAN_CLOSE_WRITE
            | MaskFlags::FAN_ATTRIB
            | MaskFlags::FAN_ONDIR;
        if cfg.reads {
            mask |= MaskFlags::FAN_CLOSE_NOWRITE;
        }
        let mut rename_event = !cfg.no_rename_event;
        let mut mounts: Vec<MountRef> = Vec::new();
        for root in scope.roots() {
            let at = existing_ancestor(root);
            let fd = open(
                &at,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| unavailable(Other, e, format!("open {}: {e}", at.display())))?;
            let fsid = fsid_of(&fd)
                .map_err(|e| unavailable(Other, e, format!("fstatfs {}: {e}", at.display())))?;
            if mounts.iter().any(|m| m.fsid == fsid) {
                continue;
            }
            let flags = MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM;
            let mut r = Err(Errno::EINVAL);
            if rename_event {
                r = group.mark(flags, mask | MaskFlags::FAN_RENAME, &fd, None::<&Path>);
                if r == Err(Errno::EINVAL) {
                    // Before 5.17 the kernel does not know FAN_RENAME.
                    rename_event = false;
                }
            }
            if !rename_event {
                r = group.mark(flags, mask | MaskFlags::FAN_MOVE, &fd, None::<&Path>);
            }
            r.map_err(|e| mark_error(e, root, &at))?;
            mounts.push(MountRef { fsid, fd, path: at });
        }
        Ok(Self {
            group,
            scope,
            cache: DirCache::new(cfg.cache_capacity),
            buf: vec![0; cfg.buffer_bytes.max(4096)],
            cfg,
            mounts,
            rename_event,
            pending_from: None,
            next_cookie: 1,
            own_pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            stats: FanotifyStats::default(),
        })
    }

    /// Whether renames arrive as one [`Op::Rename`] (`FAN_RENAME`) rather than `MovedFrom`/`MovedTo`.
    pub fn has_rename_event(&self) -> bool {
        self.rename_event
    }

    /// The directories through which each marked filesystem was marked.
    pub fn marked(&self) -> Vec<&Path> {
        self.mounts.iter().map(|m| m.path.as_path()).collect()
    }

    pub fn stats(&self) -> &FanotifyStats {
        &self.stats
    }

    /// Parses what one `read(2)` returned.
    fn parse(&mut self, buf: &[u8], out: &mut Vec<RawEvent>) -> std::io::Result<()> {
        let time_ms = now_ms();
        let len = buf.len();
        let mut off = 0;
        while len - off >= METADATA_LEN {
            let b = &buf[off..len];
            let event_len = u32_at(b, 0) as usize;
            let vers = b[4];
            let meta_len = usize::from(u16_at(b, 6));
            let mask = u64_at(b, 8);
            let fd = i32_at(b, 16);
            let pid = i32_at(b, 20);
            if vers != libc::FANOTIFY_METADATA_VERSION {
                return Err(std::io::Error::other(format!(
                    "fanotify: metadata version {vers}, this build reads {}",
                    libc::FANOTIFY_METADATA_VERSION
                )));
            }
            if event_len < meta_len || meta_len < METADATA_LEN || event_len > b.len() {
                return Err(std::io::Error::other(format!(
                    "fanotify: malformed event (length {event_len}, metadata {meta_len}, {} bytes left)",
                    b.len()
                )));
            }
            if fd != FAN_NOFD && fd >= 0 {
                // Not in FID mode; never expected. Close it rather than leak it.
                // SAFETY: the kernel opened this fd for us and nothing else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let infos = parse_infos(&b[meta_len..event_len]);
            off += event_len;
            self.stats.events += 1;
            self.event(mask, pid, &infos, time_ms, out);
        }
        Ok(())
    }

    fn event(
        &mut self,
        mask: u64,
        pid: i32,
        infos: &[Info<'_>],
        time_ms: i64,
        out: &mut Vec<RawEvent>,
    ) {
        let m = MaskFlags::from_bits_retain(mask);
        if m.contains(MaskFlags::FAN_Q_OVERFLOW) {
            self.stats.overflows += 1;
            self.cache.clear();
            self.pending_from = None;
            out.push(RawEvent {
                dir: PathBuf::new(),
                name: OsString::new(),
                op: Op::Overflow,
                is_dir: false,
                pid: None,
                time_ms,
            });
            self.stats.yielded += 1;
            return;
        }
        let is_dir = m.contains(MaskFlags::FAN_ONDIR);
        let pid_opt = u32::try_from(pid).ok().filter(|p| *p != 0);
        let mk = |dir: PathBuf, name: OsString, op: Op| RawEvent {
            dir,
            name,
            op,
            is_dir,
            pid: pid_opt,
            time_ms,
        };

        if m.contains(MaskFlags::FAN_RENAME) {
            let old = infos.iter().find(|i| i.kind == INFO_OLD_DFID_NAME);
            let new = infos.iter().find(|i| i.kind == INFO_NEW_DFID_NAME);
            let old = old.and_then(|i| self.resolve(i).map(|d| (d, i.name())));
            let new = new.and_then(|i| self.resolve(i).map(|d| (d, i.name())));
            if is_dir {
                match &old {
                    Some((d, n)) => self.cache.forget_below(&join(d, n)),
                    // We cannot tell which cached paths moved: trust none.
                    None => self.cache.clear(),
                }
            }
            if old.is_none() || new.is_none() {
                // An end whose directory is gone since: the other end is all that is left.
                self.stats.unresolved += 1;
            }
            let old_in = old
                .as_ref()
                .filter(|(d, n)| self.scope.contains(&join(d, n)));
            let new_in = new
                .as_ref()
                .filter(|(d, n)| self.scope.contains(&join(d, n)));
            match (old_in, new_in) {
                (Some((fd, fnm)), Some((td, tn))) => out.push(mk(
                    td.clone(),
                    tn.clone(),
                    Op::Rename {
                        from_dir: fd.clone(),
                        from_name: fnm.clone(),
                    },
                )),
                (Some((fd, fnm)), None) => out.push(mk(fd.clone(), fnm.clone(), Op::Delete)),
                (None, Some((td, tn))) => out.push(mk(td.clone(), tn.clone(), Op::Create)),
                (None, None) => {
                    if old.is_some() && new.is_some() {
                        self.stats.out_of_scope += 1;
                    }
                    return;
                }
            }
            self.stats.yielded += 1;
            return;
        }

        // Every other event has one directory record (DFID_NAME, or DFID for an event on a
        // directory itself when the kernel reports no name).
        let Some(info) = infos
            .iter()
            .find(|i| i.kind == INFO_DFID_NAME || i.kind == INFO_DFID)
        else {
            self.stats.unresolved += 1;
            return;
        };
        let resolved = self.resolve(info);
        let mut name = info.name();
        if name.as_bytes() == b"." {
            name = OsString::new();
        }

        // Cookies are made before filtering, so a pair split by the scope stays consistent.
        let mut from_cookie = None;
        let mut to_cookie = None;
        if m.contains(MaskFlags::FAN_MOVED_FROM) {
            let c = self.cookie();
            self.pending_from = Some((pid, c));
            from_cookie = Some(c);
            if is_dir {
                match &resolved {
                    Some(d) => self.cache.forget_below(&join(d, &name)),
                    None => self.cache.clear(),
                }
            }
        }
        if m.contains(MaskFlags::FAN_MOVED_TO) {
            to_cookie = Some(match self.pending_from.take() {
                Some((p, c)) if p == pid => c,
                other => {
                    self.pending_from = other;
                    self.cookie()
                }
            });
        }

        let Some(dir) = resolved else {
            self.stats.unresolved += 1;
            return;
        };
        if !self.scope.contains(&join(&dir, &name)) {
            self.stats.out_of_scope += 1;
            return;
        }
        let before = out.len();
        if let Some(cookie) = from_cookie {
            out.push(mk(dir.clone(), name.clone(), Op::MovedFrom { cookie }));
        }
        if m.contains(MaskFlags::FAN_DELETE) {
            out.push(mk(dir.clone(), name.clone(), Op::Delete));
        }
        if m.contains(MaskFlags::FAN_CREATE) {
            out.push(mk(dir.clone(), name.clone(), Op::Create));
        }
        if let Some(cookie) = to_cookie {
            out.push(mk(dir.clone(), name.clone(), Op::MovedTo { cookie }));
        }
        if m.contains(MaskFlags::FAN_MODIFY) {
            out.push(mk(dir.clone(), name.clone(), Op::Modify));
        }
        if m.contains(MaskFlags::FAN_ATTRIB) {
            out.push(mk(dir.clone(), name.clone(), Op::Attrib));
        }
        if m.contains(MaskFlags::FAN_CLOSE_WRITE) {
            out.push(mk(dir.clone(), name.clone(), Op::CloseWrite));
        }
        // Reads: files only, and never the agent's own (hashing would report itself).
        if self.cfg.reads
            && m.contains(MaskFlags::FAN_CLOSE_NOWRITE)
            && !is_dir
            && pid != self.own_pid
        {
            out.push(mk(dir, name, Op::CloseNoWrite));
        }
        self.stats.yielded += (out.len() - before) as u64;
    }

    fn cookie(&mut self) -> u32 {
        let c = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1).max(1);
        c
    }

    /// The path of the directory a record names, from the cache or the kernel.
    fn resolve(&mut self, info: &Info<'_>) -> Option<PathBuf> {
        let key = info.key();
        if let Some(p) = self.cache.get(&key) {
            self.stats.cache_hits += 1;
            return Some(p.clone());
        }
        self.stats.cache_misses += 1;
        let started = Instant::now();
        let mount = self.mounts.iter().find(|m| m.fsid == info.fsid)?;
        let path = open_handle_path(&mount.fd, info.handle);
        self.stats.resolve_ns += u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let path = path?;
        self.cache.insert(key, path.clone());
        Some(path)
    }
}

impl Source for FanotifySource {
    fn kind(&self) -> SourceKind {
        SourceKind::Fanotify
    }

    fn read(&mut self, out: &mut Vec<RawEvent>, timeout: Option<Duration>) -> std::io::Result<()> {
        let t = match timeout {
            None => PollTimeout::NONE,
            Some(d) => PollTimeout::try_from(d).unwrap_or(PollTimeout::MAX),
        };
        let ready = {
            let mut fds = [PollFd::new(self.group.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, t) {
                Ok(n) => n > 0,
                Err(Errno::EINTR) => false,
                Err(e) => return Err(std::io::Error::other(format!("fanotify: poll: {e}"))),
            }
        };
        if !ready {
            return Ok(());
        }
        // The buffer leaves `self` while its records are parsed (they borrow it).
        let mut buf = std::mem::take(&mut self.buf);
        let r = match nix::unistd::read(&self.group, &mut buf) {
            Ok(n) => self.parse(&buf[..n], out),
            Err(Errno::EINTR | Errno::EAGAIN) => Ok(()),
            Err(e) => Err(std::io::Error::other(format!("fanotify: read: {e}"))),
        };
        self.buf = buf;
        r
    }
}

/// An info record: its type, fsid, the `struct file_handle` bytes and the name after it.
#[derive(Debug)]
struct Info<'a> {
    kind: u8,
    fsid: [u8; 8],
    /// `handle_bytes` (u32), `handle_type` (i32), then `f_handle`.
    handle: &'a [u8],
    name: &'a [u8],
}

impl Info<'_> {
    fn name(&self) -> OsString {
        OsString::from_vec(self.name.to_vec())
    }

    fn key(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(8 + self.handle.len());
        k.extend_from_slice(&self.fsid);
        k.extend_from_slice(self.handle);
        k
    }
}

/// The info records of one event; malformed records end the list (never read out of bounds).
fn parse_infos(mut b: &[u8]) -> Vec<Info<'_>> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let kind = b[0];
        let len = usize::from(u16_at(b, 2));
        if len < 4 || len > b.len() {
            break;
        }
        let rec = &b[..len];
        b = &b[len..];
        if !matches!(
            kind,
            INFO_DFID_NAME | INFO_DFID | INFO_OLD_DFID_NAME | INFO_NEW_DFID_NAME
        ) || rec.len() < 4 + 8 + 8
        {
            continue;
        }
        let mut fsid = [0u8; 8];
        fsid.copy_from_slice(&rec[4..12]);
        let hb = u32_at(rec, 12) as usize;
        let hend = 12 + 8 + hb;
        if hend > rec.len() {
            continue;
        }
        let handle = &rec[12..hend];
        let name = if kind == INFO_DFID {
            &rec[hend..hend]
        } else {
            let rest = &rec[hend..];
            let nul = rest.iter().position(|c| *c == 0).unwrap_or(rest.len());
            &rest[..nul]
        };
        out.push(Info {
            kind,
            fsid,
            handle,
            name,
        });
    }
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

fn join(dir: &Path, name: &std::ffi::OsStr) -> PathBuf {
    if name.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(name)
    }
}

/// The path of the directory a handle names, now; `None` when it is gone.
fn open_handle_path(mount: &OwnedFd, handle: &[u8]) -> Option<PathBuf> {
    // `struct file_handle` needs 4-byte alignment; the record's bytes have no guaranteed one.
    let mut aligned = vec![0u32; handle.len().div_ceil(4)];
    for (i, chunk) in handle.chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        aligned[i] = u32::from_ne_bytes(w);
    }
    // SAFETY: `aligned` holds a complete `struct file_handle` (handle_bytes, handle_type and
    // handle_bytes bytes of f_handle, as checked by parse_infos) and outlives the call; the
    // kernel only reads it. The returned fd, if any, is ours alone.
    let raw = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            aligned.as_mut_ptr().cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a new fd returned by the kernel, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // A removed directory may still open (it is cached) but has no links and a "(deleted)" path.
    match fstat(&fd) {
        Ok(st) if st.st_nlink > 0 => {}
        _ => return None,
    }
    let link = fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    link.is_absolute().then_some(link)
}

/// `root`, or the nearest ancestor of it that exists.
fn existing_ancestor(root: &Path) -> PathBuf {
    let mut p = root;
    loop {
        if p.is_dir() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(up) => p = up,
            None => return PathBuf::from("/"),
        }
    }
}

/// The filesystem id as the kernel puts it in info records (`__kernel_fsid_t`, two ints).
fn fsid_of(fd: &OwnedFd) -> Result<[u8; 8], Errno> {
    let st = nix::sys::statfs::fstatfs(fd)?;
    let fsid = st.filesystem_id();
    // SAFETY: `fsid_t` is `#[repr(C)] struct { __val: [c_int; 2] }` (8 bytes, no padding); its
    // field is private in libc, so it is read as the bytes the kernel also writes in events.
    let ints: [i32; 2] = unsafe { std::mem::transmute::<libc::fsid_t, [i32; 2]>(fsid) };
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&ints[0].to_ne_bytes());
    out[4..].copy_from_slice(&ints[1].to_ne_bytes());
    Ok(out)
}

fn mark_error(e: Errno, root: &Path, at: &Path) -> Unavailable {
    use UnavailableKind::*;
    let on = if root == at {
        format!("the filesystem of {}", root.display())
    } else {
        format!(
            "the filesystem of {} (via {}, as {} does not exist yet)",
            root.display(),
            at.display(),
            root.display()
        )
    };
    match e {
        Errno::EPERM => unavailable(
            Permission,
            e,
            format!("fanotify_mark on {on}: EPERM: a filesystem mark needs CAP_SYS_ADMIN"),
        ),
        Errno::ENODEV | Errno::EOPNOTSUPP => unavailable(
            Filesystem,
            e,
            format!("fanotify_mark on {on}: {e}: the filesystem cannot report file handles"),
        ),
        Errno::EXDEV => unavailable(
            Filesystem,
            e,
            format!(
                "fanotify_mark on {on}: EXDEV: the filesystem has no usable fsid for a filesystem mark (a btrfs subvolume, overlayfs, or a filesystem without its own fsid)"
            ),
        ),
        Errno::EINVAL => unavailable(
            Filesystem,
            e,
            format!("fanotify_mark on {on}: EINVAL: the kernel or filesystem refuses a filesystem mark with these events"),
        ),
        Errno::ENOSPC => unavailable(
            Other,
            e,
            format!("fanotify_mark on {on}: ENOSPC: too many marks (fs.fanotify.max_user_marks)"),
        ),
        e => unavailable(Other, e, format!("fanotify_mark on {on}: {e}")),
    }
}

/// Directory handle → path, bounded; the oldest entry goes first.
#[derive(Debug)]
struct DirCache {
    map: HashMap<Vec<u8>, PathBuf>,
    order: VecDeque<Vec<u8>>,
    capacity: usize,
}

impl DirCache {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &[u8]) -> Option<&PathBuf> {
        self.map.get(key)
    }

    fn insert(&mut self, key: Vec<u8>, path: PathBuf) {
        while self.map.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        if self.map.insert(key.clone(), path).is_none() {
            self.order.push_back(key);
        }
    }

    /// Drops `top` and every cached path below it (a renamed directory).
    fn forget_below(&mut self, top: &Path) {
        let t = top.as_os_str().as_bytes();
        let below = |p: &PathBuf| {
            let b = p.as_os_str().as_bytes();
            b.starts_with(t) && (b.len() == t.len() || b[t.len()] == b'/' || t == b"/")
        };
        self.map.retain(|_, p| !below(p));
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, fsid: [u8; 8], fh: &[u8], name: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid);
        body.extend_from_slice(&(fh.len() as u32).to_ne_bytes());
        body.extend_from_slice(&1i32.to_ne_bytes());
        body.extend_from_slice(fh);
        body.extend_from_slice(name);
        body.push(0);
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut r = vec![kind, 0];
        r.extend_from_slice(&((body.len() + 4) as u16).to_ne_bytes());
        r.extend_from_slice(&body);
        r
    }

    #[test]
    fn info_records_parse_and_malformed_ones_stop_the_list() {
        let mut b = record(
            INFO_OLD_DFID_NAME,
            [1; 8],
            &[9, 9, 9, 9, 9, 9, 9, 9],
            b"old\n\xff",
        );
        b.extend(record(INFO_NEW_DFID_NAME, [1; 8], &[7; 8], b"new"));
        let infos = parse_infos(&b);
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].kind, INFO_OLD_DFID_NAME);
        assert_eq!(infos[0].name, b"old\n\xff");
        assert_eq!(infos[0].handle.len(), 16);
        assert_eq!(infos[1].name, b"new");
        // A length past the end, a zero length, a handle longer than its record: no panic.
        let mut bad = b.clone();
        bad[2] = 0xff;
        bad[3] = 0x7f;
        assert!(parse_infos(&bad).is_empty());
        let mut zero = b.clone();
        zero[2] = 0;
        zero[3] = 0;
        assert!(parse_infos(&zero).is_empty());
        let mut long = record(INFO_DFID_NAME, [1; 8], &[1; 8], b"x");
        long[12..16].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse_infos(&long).is_empty());
        for cut in 0..b.len() {
            let _ = parse_infos(&b[..cut]);
        }
    }

    #[test]
    fn cache_is_bounded_and_forgets_a_renamed_subtree() {
        let mut c = DirCache::new(3);
        c.insert(vec![1], "/r/a".into());
        c.insert(vec![2], "/r/a/b".into());
        c.insert(vec![3], "/r/ab".into());
        c.forget_below(Path::new("/r/a"));
        assert!(c.get(&[1]).is_none() && c.get(&[2]).is_none());
        assert_eq!(c.get(&[3]), Some(&PathBuf::from("/r/ab")));
        for i in 10..20u8 {
            c.insert(vec![i], format!("/r/{i}").into());
        }
        assert_eq!(c.map.len(), 3);
        assert_eq!(c.order.len(), 3);
        assert!(c.get(&[19]).is_some() && c.get(&[16]).is_none());
    }
}
