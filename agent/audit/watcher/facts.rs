//! Facts about a path from one `lstat`/`fstatat` (never following a symlink), and opening a
//! directory without following one; both work past PATH_MAX.

use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use crate::audit::change::{FileFacts, FileKind};

pub(super) fn libc_enoent() -> i32 {
    Errno::ENOENT as i32
}

pub(super) fn dir_flags() -> OFlag {
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
pub(super) fn open_dir_path(path: &Path) -> std::io::Result<OwnedFd> {
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

pub(super) fn facts_from_stat(st: &FileStat) -> FileFacts {
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
