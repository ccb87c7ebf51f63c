//! The inotify event source (the fallback when fanotify is refused): one watch per directory,
//! added by the processor as it walks, and the watch-descriptor → path bookkeeping.
//!
//! Why nix's inotify and not notify's inotify backend: notify keeps its own watch-descriptor →
//! path map and does not rewrite it for the subtree of a renamed directory (its `MOVE_SELF`
//! branch is a TODO), pairs only the most recent `IN_MOVED_FROM`, walks with `metadata` (follows
//! symlinks) and watches `IN_OPEN` too (twice the queue use). Here we need the overflow event, the
//! rename cookies, `ENOSPC` per directory and path bookkeeping across renames, so we read the
//! inotify fd ourselves.
//!
//! Two halves, because a watch descriptor must be named by the path it has *when the processor
//! reaches the event*, not when it was read (the processor applies renames in order; a reader
//! that resolved ahead of it would name a file in a just-renamed directory by the old path):
//! - [`InotifyReader`] (the reader thread): `read(2)` only; yields [`InotifyEvent`]s as read.
//! - [`InotifyWatches`] (owned by the processor): adds and forgets watches, rewrites the paths of
//!   a renamed subtree, and [`decode`](InotifyWatches::decode)s each event into a [`RawEvent`]
//!   in order. So the processor itself only ever sees [`RawEvent`]s.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};

use super::{Op, RawEvent};
use crate::audit::change::now_ms;

pub const SYSCTL_WATCHES: &str = "fs.inotify.max_user_watches";
pub const SYSCTL_INSTANCES: &str = "fs.inotify.max_user_instances";
pub const SYSCTL_QUEUE: &str = "fs.inotify.max_queued_events";

/// An inotify instance: the reader half and the watches half share it.
pub fn init() -> Result<Arc<Inotify>, Errno> {
    Inotify::init(InitFlags::IN_CLOEXEC).map(Arc::new)
}

/// The reader half: nothing but `read(2)`.
pub struct InotifyReader {
    ino: Arc<Inotify>,
}

impl InotifyReader {
    pub fn new(ino: Arc<Inotify>) -> Self {
        Self { ino }
    }

    /// Blocks until events arrive (`EINTR` gives an empty list).
    pub fn read(&mut self) -> Result<Vec<InotifyEvent>, Errno> {
        match self.ino.read_events() {
            Ok(ev) => Ok(ev),
            Err(Errno::EINTR) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }
}

/// The watch-descriptor of an event, for the processor's lost-event bookkeeping (`-1` for the
/// queue overflow, which concerns every watch).
pub fn lost_key(ev: &InotifyEvent) -> i32 {
    if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
        -1
    } else {
        ev.wd.as_raw()
    }
}

/// The processor's half: the watches and the paths they stand for.
pub struct InotifyWatches {
    ino: Option<Arc<Inotify>>,
    /// `/proc/self/fd` exists: watches are added through the opened directory's magic link.
    proc_fd: bool,
    roots: Vec<PathBuf>,
    wd_path: HashMap<WatchDescriptor, PathBuf>,
    path_wd: BTreeMap<PathBuf, WatchDescriptor>,
}

impl InotifyWatches {
    /// `ino` is None when `inotify_init` failed (every tree is then scanned periodically).
    pub fn new(ino: Option<Arc<Inotify>>, roots: Vec<PathBuf>) -> Self {
        Self {
            ino,
            proc_fd: Path::new("/proc/self/fd").is_dir(),
            roots,
            wd_path: HashMap::new(),
            path_wd: BTreeMap::new(),
        }
    }

    /// The inotify descriptor (the kernel's count of live watches is in its fdinfo).
    pub fn fd(&self) -> Option<i32> {
        use std::os::fd::AsFd;
        self.ino.as_ref().map(|i| i.as_fd().as_raw_fd())
    }

    pub fn count(&self) -> usize {
        self.wd_path.len()
    }

    pub fn is_watched(&self, dir: &Path) -> bool {
        self.path_wd.contains_key(dir)
    }

    /// Watches the directory open at `fd` (named `dir`). Through `/proc/self/fd` the watch lands
    /// on the inode opened with `O_NOFOLLOW`, and paths beyond PATH_MAX work; without `/proc`,
    /// the path itself and `IN_DONT_FOLLOW`. `Err(None)`: there is no inotify instance.
    pub fn add(&mut self, fd: BorrowedFd<'_>, dir: &Path) -> Result<(), Option<Errno>> {
        let Some(ino) = self.ino.clone() else {
            return Err(None);
        };
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
        let res = if self.proc_fd {
            ino.add_watch(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(), mask)
        } else {
            ino.add_watch(dir, mask | AddWatchFlags::IN_DONT_FOLLOW)
        };
        let wd = res.map_err(Some)?;
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

    /// Forgets (and removes) the watch of `path`, if it has one.
    pub fn forget(&mut self, path: &Path) {
        if let Some(wd) = self.path_wd.remove(path) {
            if self.wd_path.get(&wd).is_some_and(|p| p == path) {
                self.wd_path.remove(&wd);
                if let Some(ino) = &self.ino {
                    let _ = ino.rm_watch(wd);
                }
            }
        }
    }

    /// The watched paths at and below `from` are now below `to`.
    pub fn renamed(&mut self, from: &Path, to: &Path) {
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
    }

    /// Removes every watch (at stop).
    pub fn remove_all(&mut self) {
        if let Some(ino) = &self.ino {
            for wd in self.wd_path.keys() {
                let _ = ino.rm_watch(*wd);
            }
        }
        self.wd_path.clear();
        self.path_wd.clear();
    }

    /// The directories of the watches among `keys` (see [`lost_key`]), and whether some key
    /// names no live watch (or the overflow): then everything must be rescanned.
    pub fn lost_dirs(&self, keys: &HashSet<i32>) -> (Vec<PathBuf>, bool) {
        let mut dirs = Vec::new();
        for (wd, p) in &self.wd_path {
            if keys.contains(&wd.as_raw()) {
                dirs.push(p.clone());
            }
        }
        let all = keys.contains(&-1) || dirs.len() < keys.len();
        (dirs, all)
    }

    /// The event as a [`RawEvent`], named by the watch's path now. None for what the processor
    /// does not need: `IN_IGNORED` (the watch is forgotten), an unknown watch, and events about
    /// a watched directory itself other than a root's (its parent's watch reports them).
    pub fn decode(&mut self, ev: InotifyEvent) -> Option<RawEvent> {
        let m = ev.mask;
        let time_ms = now_ms();
        let is_dir = m.contains(AddWatchFlags::IN_ISDIR);
        if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            return Some(RawEvent {
                dir: PathBuf::new(),
                name: Default::default(),
                op: Op::Overflow,
                is_dir: false,
                pid: None,
                time_ms,
            });
        }
        if m.contains(AddWatchFlags::IN_IGNORED) {
            if let Some(p) = self.wd_path.remove(&ev.wd) {
                if self.path_wd.get(&p) == Some(&ev.wd) {
                    self.path_wd.remove(&p);
                }
            }
            return None;
        }
        let dir = self.wd_path.get(&ev.wd)?.clone();
        let mk = |dir: PathBuf, name, op, is_dir| {
            Some(RawEvent {
                dir,
                name,
                op,
                is_dir,
                pid: None,
                time_ms,
            })
        };
        let Some(name) = ev.name else {
            if !self.roots.contains(&dir) {
                return None;
            }
            if m.contains(AddWatchFlags::IN_ATTRIB) {
                return mk(dir, Default::default(), Op::Attrib, true);
            }
            if m.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF) {
                return mk(dir, Default::default(), Op::Delete, true);
            }
            return None;
        };
        let op = if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            Op::MovedFrom { cookie: ev.cookie }
        } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
            Op::MovedTo { cookie: ev.cookie }
        } else if m.contains(AddWatchFlags::IN_CREATE) {
            Op::Create
        } else if m.contains(AddWatchFlags::IN_DELETE) {
            Op::Delete
        } else if m.contains(AddWatchFlags::IN_MODIFY) {
            Op::Modify
        } else if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
            Op::CloseWrite
        } else if m.contains(AddWatchFlags::IN_ATTRIB) {
            Op::Attrib
        } else {
            return None;
        };
        mk(dir, name, op, is_dir)
    }
}
