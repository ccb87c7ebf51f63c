//! The one helper that writes every system file.
//!
//! A write walks to the target's directory from the root with `openat(O_NOFOLLOW|O_DIRECTORY)`, so
//! no symlinked path component (which the notebook user may have planted in their home) is ever
//! followed; refuses a target that is a symlink, not a regular file, or hard-linked; creates a
//! temp file beside it (`O_CREAT|O_EXCL|O_NOFOLLOW`), writes it, sets owner then mode on the fd,
//! `fsync`s, optionally validates it (e.g. `visudo -cf`), renames it over the target and `fsync`s
//! the directory. The target is therefore always either the old or the new content. Before the
//! first replacement of a file, the original is kept under the state directory so `revert` can
//! restore it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fsync, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::{Deserialize, Serialize};

use super::root::Root;

/// Owner of a file the agent writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    pub const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

/// The complete desired state of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub contents: Vec<u8>,
    /// Permission bits (e.g. `0o644`).
    pub mode: u32,
    pub owner: Owner,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteOutcome {
    Created,
    Replaced,
    Unchanged,
}

/// What can go wrong touching a host file. Every variant names the host path.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}: is a symlink; refusing to write through it", .0.display())]
    Symlink(PathBuf),
    #[error("{}: has {} hard links; refusing to replace a hard-linked file", .0.display(), .1)]
    HardLink(PathBuf, u64),
    #[error("{}: is not a regular file", .0.display())]
    NotRegular(PathBuf),
    #[error("{}: path component {:?} is a symlink or not a directory; refusing to follow it", .0.display(), .1)]
    UnsafeComponent(PathBuf, String),
    #[error("{}: parent directory {:?} does not exist", .0.display(), .1)]
    MissingParent(PathBuf, String),
    #[error("{}: {}: {}", .0.display(), .1, .2)]
    Io(PathBuf, &'static str, io::Error),
    #[error("{}: refused by validation, nothing installed: {}", .0.display(), .1)]
    Invalid(PathBuf, String),
    #[error("{}: backup: {}", .0.display(), .1)]
    Backup(PathBuf, String),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(Errno) -> WriteError + 'a {
    move |e| WriteError::Io(path.to_path_buf(), op, io::Error::from(e))
}

/// Test-only fault injection: fail (or "crash", leaving the temp file) after writing this many
/// bytes. Used to prove the target is never truncated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Return an error after `n` bytes; the temp file is cleaned up.
    FailAfter(usize),
    /// Stop after `n` bytes as if the process died: the temp file is left behind.
    CrashAfter(usize),
}

/// A validator runs on the fully written temp file before it replaces the target. It receives the
/// temp file's *host* path (inside the root), so a chrooted `visudo -cf` can read it.
pub type Validator<'a> = &'a dyn Fn(&Path) -> Result<(), String>;

const TMP_MARK: &str = ".nbagent-tmp.";
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes files under a [`Root`], keeping backups of what it replaces.
pub struct SafeWriter<'a> {
    root: &'a Root,
    backups: Option<&'a Backups>,
    fault: Option<Fault>,
}

impl<'a> SafeWriter<'a> {
    pub fn new(root: &'a Root, backups: Option<&'a Backups>) -> Self {
        Self {
            root,
            backups,
            fault: None,
        }
    }

    /// See [`Fault`]. For tests.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// Opens the directory that holds `host_path`, component by component, never following a
    /// symlink. Returns the directory fd and the final file name.
    fn open_parent(&self, host_path: &Path) -> Result<(OwnedFd, String), WriteError> {
        let rel = Root::relative(host_path);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| WriteError::NotRegular(host_path.to_path_buf()))?;
        let mut dir = open_dir_path(self.root.prefix()).map_err(io_err(host_path, "open root"))?;
        if let Some(parent) = rel.parent() {
            for comp in parent.components() {
                let comp = comp.as_os_str();
                dir = match openat(
                    &dir,
                    comp,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::ELOOP | Errno::ENOTDIR) => {
                        return Err(WriteError::UnsafeComponent(
                            host_path.to_path_buf(),
                            comp.to_string_lossy().into_owned(),
                        ))
                    }
                    Err(Errno::ENOENT) => {
                        return Err(WriteError::MissingParent(
                            host_path.to_path_buf(),
                            comp.to_string_lossy().into_owned(),
                        ))
                    }
                    Err(e) => return Err(io_err(host_path, "open directory")(e)),
                };
            }
        }
        Ok((dir, name))
    }

    /// The current state of the target, refusing symlinks, non-regular and hard-linked files.
    fn existing(
        &self,
        dir: &OwnedFd,
        name: &str,
        host_path: &Path,
    ) -> Result<Option<(FileStat, Vec<u8>)>, WriteError> {
        let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io_err(host_path, "stat")(e)),
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFLNK {
            return Err(WriteError::Symlink(host_path.to_path_buf()));
        }
        if kind != SFlag::S_IFREG {
            return Err(WriteError::NotRegular(host_path.to_path_buf()));
        }
        if st.st_nlink > 1 {
            return Err(WriteError::HardLink(host_path.to_path_buf(), st.st_nlink));
        }
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )
        .map_err(io_err(host_path, "open"))?;
        let mut contents = Vec::new();
        File::from(fd)
            .read_to_end(&mut contents)
            .map_err(|e| WriteError::Io(host_path.to_path_buf(), "read", e))?;
        Ok(Some((st, contents)))
    }

    /// Reads the target as the writer sees it (same refusals). `None` when absent.
    pub fn read(&self, host_path: &Path) -> Result<Option<Vec<u8>>, WriteError> {
        let (dir, name) = match self.open_parent(host_path) {
            Ok(x) => x,
            Err(WriteError::MissingParent(..)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.existing(&dir, &name, host_path)?.map(|(_, c)| c))
    }

    /// Installs `spec` at `host_path`. See the module docs for the sequence.
    pub fn write(&self, host_path: &Path, spec: &FileSpec) -> Result<WriteOutcome, WriteError> {
        self.write_validated(host_path, spec, None)
    }

    /// Like [`write`](Self::write), running `validate` on the complete temp file first; a
    /// refused file is never installed.
    pub fn write_validated(
        &self,
        host_path: &Path,
        spec: &FileSpec,
        validate: Option<Validator<'_>>,
    ) -> Result<WriteOutcome, WriteError> {
        let (dir, name) = self.open_parent(host_path)?;
        let existing = self.existing(&dir, &name, host_path)?;
        if let Some((st, contents)) = &existing {
            if contents == &spec.contents
                && st.st_mode & 0o7777 == spec.mode
                && st.st_uid == spec.owner.uid
                && st.st_gid == spec.owner.gid
            {
                return Ok(WriteOutcome::Unchanged);
            }
        }
        self.remove_stale_temps(host_path, &dir, &name);

        let tmp = format!(
            ".{name}{TMP_MARK}{}.{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fd = openat(
            &dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(io_err(host_path, "create temp file"))?;
        let result = self.fill_and_install(&dir, &tmp, &name, fd, host_path, spec, validate);
        match result {
            Ok(()) => {}
            Err(e) => {
                if !matches!(self.fault, Some(Fault::CrashAfter(_))) {
                    let _ = unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
                }
                return Err(e);
            }
        }
        Ok(if existing.is_some() {
            WriteOutcome::Replaced
        } else {
            WriteOutcome::Created
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_and_install(
        &self,
        dir: &OwnedFd,
        tmp: &str,
        name: &str,
        fd: OwnedFd,
        host_path: &Path,
        spec: &FileSpec,
        validate: Option<Validator<'_>>,
    ) -> Result<(), WriteError> {
        let mut file = File::from(fd);
        let data = &spec.contents;
        let cut = match self.fault {
            Some(Fault::FailAfter(n) | Fault::CrashAfter(n)) => Some(n.min(data.len())),
            None => None,
        };
        file.write_all(&data[..cut.unwrap_or(data.len())])
            .map_err(|e| WriteError::Io(host_path.to_path_buf(), "write", e))?;
        if cut.is_some() {
            return Err(WriteError::Io(
                host_path.to_path_buf(),
                "write",
                io::Error::other("injected fault"),
            ));
        }
        // Owner first: chown clears set-id bits, so the mode must come after it.
        fchown(
            file.as_fd(),
            Some(Uid::from_raw(spec.owner.uid)),
            Some(Gid::from_raw(spec.owner.gid)),
        )
        .map_err(io_err(host_path, "chown"))?;
        fchmod(file.as_fd(), Mode::from_bits_truncate(spec.mode))
            .map_err(io_err(host_path, "chmod"))?;
        file.sync_all()
            .map_err(|e| WriteError::Io(host_path.to_path_buf(), "fsync", e))?;
        drop(file);

        if let Some(validate) = validate {
            let tmp_host = host_path.with_file_name(tmp);
            validate(&tmp_host).map_err(|m| WriteError::Invalid(host_path.to_path_buf(), m))?;
        }
        if let Some(b) = self.backups {
            b.record_before_change(self, host_path)
                .map_err(|m| WriteError::Backup(host_path.to_path_buf(), m))?;
        }
        renameat(dir, tmp, dir, name).map_err(io_err(host_path, "rename"))?;
        fsync(dir).map_err(io_err(host_path, "fsync directory"))?;
        Ok(())
    }

    /// Temp files left by a crashed writer for this target are removed before a new write.
    fn remove_stale_temps(&self, host_path: &Path, dir: &OwnedFd, name: &str) {
        let prefix = format!(".{name}{TMP_MARK}");
        let real_dir = self
            .root
            .path(host_path.parent().unwrap_or_else(|| Path::new("/")));
        let Ok(entries) = std::fs::read_dir(&real_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let fname = entry.file_name();
            let fname = fname.to_string_lossy();
            if fname.starts_with(&prefix) {
                tracing::debug!(path = %real_dir.join(&*fname).display(), "Removed a stale temp file.");
                let _ = unlinkat(dir, fname.as_ref(), UnlinkatFlags::NoRemoveDir);
            }
        }
    }

    /// Removes a regular file (keeping a backup). `Ok(false)` when it did not exist.
    pub fn remove(&self, host_path: &Path) -> Result<bool, WriteError> {
        let (dir, name) = match self.open_parent(host_path) {
            Ok(x) => x,
            Err(WriteError::MissingParent(..)) => return Ok(false),
            Err(e) => return Err(e),
        };
        if self.existing(&dir, &name, host_path)?.is_none() {
            return Ok(false);
        }
        if let Some(b) = self.backups {
            b.record_before_change(self, host_path)
                .map_err(|m| WriteError::Backup(host_path.to_path_buf(), m))?;
        }
        unlinkat(&dir, name.as_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(io_err(host_path, "unlink"))?;
        fsync(&dir).map_err(io_err(host_path, "fsync directory"))?;
        Ok(true)
    }

    /// Creates `host_path` and any missing parents with `mode`/`owner` (never following a
    /// symlink). Returns true when something was created.
    pub fn ensure_dir(
        &self,
        host_path: &Path,
        mode: u32,
        owner: Owner,
    ) -> Result<bool, WriteError> {
        let rel = Root::relative(host_path);
        let mut dir = open_dir_path(self.root.prefix()).map_err(io_err(host_path, "open root"))?;
        let mut created = false;
        let mut so_far = PathBuf::from("/");
        for comp in rel.components() {
            let comp = comp.as_os_str();
            so_far.push(comp);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            dir = match openat(&dir, comp, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    if let Some(b) = self.backups {
                        b.record_created_dir(&so_far)
                            .map_err(|m| WriteError::Backup(host_path.to_path_buf(), m))?;
                    }
                    mkdirat(&dir, comp, Mode::from_bits_truncate(0o700))
                        .map_err(io_err(host_path, "mkdir"))?;
                    let fd = openat(&dir, comp, flags, Mode::empty())
                        .map_err(io_err(host_path, "open directory"))?;
                    fchown(
                        fd.as_fd(),
                        Some(Uid::from_raw(owner.uid)),
                        Some(Gid::from_raw(owner.gid)),
                    )
                    .map_err(io_err(host_path, "chown"))?;
                    fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                        .map_err(io_err(host_path, "chmod"))?;
                    fsync(&dir).map_err(io_err(host_path, "fsync directory"))?;
                    created = true;
                    fd
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(WriteError::UnsafeComponent(
                        host_path.to_path_buf(),
                        comp.to_string_lossy().into_owned(),
                    ))
                }
                Err(e) => return Err(io_err(host_path, "open directory")(e)),
            };
        }
        Ok(created)
    }

    /// Removes an empty directory; `Ok(false)` when absent or not empty.
    pub fn remove_empty_dir(&self, host_path: &Path) -> Result<bool, WriteError> {
        let (dir, name) = match self.open_parent(host_path) {
            Ok(x) => x,
            Err(WriteError::MissingParent(..)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match unlinkat(&dir, name.as_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => Ok(false),
            Err(e) => Err(io_err(host_path, "rmdir")(e)),
        }
    }

    /// Mode and owner of an existing regular file (refusing links), for checks.
    pub fn stat(&self, host_path: &Path) -> Result<Option<(u32, Owner)>, WriteError> {
        let (dir, name) = match self.open_parent(host_path) {
            Ok(x) => x,
            Err(WriteError::MissingParent(..)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.existing(&dir, &name, host_path)?.map(|(st, _)| {
            (
                st.st_mode & 0o7777,
                Owner {
                    uid: st.st_uid,
                    gid: st.st_gid,
                },
            )
        }))
    }
}

fn open_dir_path(path: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// What `apply` changed, so `revert` can undo it: the original bytes, mode and owner of every
/// file it replaced or removed, and every file and directory it created. Only the first record
/// for a path is kept: revert returns to the state before the first apply.
pub struct Backups {
    dir: PathBuf,
    manifest: Mutex<Manifest>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    /// Keyed by host path.
    pub entries: BTreeMap<PathBuf, BackupEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackupEntry {
    /// A file existed; its bytes are under `files/`.
    File { mode: u32, owner: Owner },
    /// The file did not exist before.
    CreatedFile,
    /// The directory did not exist before.
    CreatedDir,
}

const MANIFEST: &str = "manifest.json";

impl Backups {
    /// Opens (or starts) the backup store under `<state dir>/backup`.
    pub fn open(root: &Root) -> Result<Self, String> {
        let dir = root.state_dir().join("backup");
        let manifest = match std::fs::read(dir.join(MANIFEST)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e}", dir.join(MANIFEST).display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Manifest {
                version: 1,
                entries: BTreeMap::new(),
            },
            Err(e) => return Err(format!("{}: {e}", dir.join(MANIFEST).display())),
        };
        Ok(Self {
            dir,
            manifest: Mutex::new(manifest),
        })
    }

    pub fn manifest(&self) -> Manifest {
        self.manifest.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// The saved original bytes of `host_path`.
    pub fn original(&self, host_path: &Path) -> Result<Vec<u8>, String> {
        let p = self.dir.join("files").join(Root::relative(host_path));
        std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    }

    fn record_before_change(
        &self,
        writer: &SafeWriter<'_>,
        host_path: &Path,
    ) -> Result<(), String> {
        let mut m = self
            .manifest
            .lock()
            .map_err(|_| "lock poisoned".to_string())?;
        if m.entries.contains_key(host_path) {
            return Ok(());
        }
        let entry = match writer.stat(host_path).map_err(|e| e.to_string())? {
            None => BackupEntry::CreatedFile,
            Some((mode, owner)) => {
                let bytes = writer
                    .read(host_path)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let dest = self.dir.join("files").join(Root::relative(host_path));
                write_private(&dest, &bytes)?;
                BackupEntry::File { mode, owner }
            }
        };
        m.entries.insert(host_path.to_path_buf(), entry);
        self.persist(&m)
    }

    fn record_created_dir(&self, host_path: &Path) -> Result<(), String> {
        let mut m = self
            .manifest
            .lock()
            .map_err(|_| "lock poisoned".to_string())?;
        if m.entries.contains_key(host_path) {
            return Ok(());
        }
        m.entries
            .insert(host_path.to_path_buf(), BackupEntry::CreatedDir);
        self.persist(&m)
    }

    /// Forgets `host_path` (after revert restored it).
    pub fn forget(&self, host_path: &Path) -> Result<(), String> {
        let mut m = self
            .manifest
            .lock()
            .map_err(|_| "lock poisoned".to_string())?;
        m.entries.remove(host_path);
        let _ = std::fs::remove_file(self.dir.join("files").join(Root::relative(host_path)));
        self.persist(&m)
    }

    fn persist(&self, m: &Manifest) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(m).map_err(|e| e.to_string())?;
        write_private(&self.dir.join(MANIFEST), &bytes)
    }
}

/// Atomic write of the agent's own root-only state (0700 directories, 0600 files).
pub fn write_private(dest: &Path, bytes: &[u8]) -> Result<(), String> {
    let parent = dest
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", dest.display()))?;
    create_private_dirs(parent)?;
    let tmp = parent.join(format!(
        ".{}{TMP_MARK}{}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        File::open(parent)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", dest.display())
    })
}

/// Creates `dir` and its missing parents, root-only.
pub fn create_private_dirs(dir: &Path) -> Result<(), String> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", dir.display()))
}
