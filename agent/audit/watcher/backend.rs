//! What the processor needs from the source that runs, beyond its events: watches to add while
//! walking (inotify) or none at all (fanotify's filesystem mark covers every directory), and how
//! an overflow of its queue is explained.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::audit::source::inotify::{InotifyWatches, SYSCTL_QUEUE, SYSCTL_WATCHES};
use crate::audit::source::SourceKind;

pub(super) enum Backend {
    Inotify(InotifyWatches),
    /// The marks are set; nothing to do per directory.
    Fanotify,
}

impl Backend {
    pub(super) fn kind(&self) -> SourceKind {
        match self {
            Backend::Inotify(_) => SourceKind::Inotify,
            Backend::Fanotify => SourceKind::Fanotify,
        }
    }

    /// Live watches (0 with fanotify: it needs none).
    pub(super) fn watches(&self) -> u64 {
        match self {
            Backend::Inotify(w) => w.count() as u64,
            Backend::Fanotify => 0,
        }
    }

    pub(super) fn inotify_fd(&self) -> Option<i32> {
        match self {
            Backend::Inotify(w) => w.fd(),
            Backend::Fanotify => None,
        }
    }

    pub(super) fn is_watched(&self, dir: &Path) -> bool {
        match self {
            Backend::Inotify(w) => w.is_watched(dir),
            Backend::Fanotify => true,
        }
    }

    /// Watch the directory open at `fd`; `Err` is the message for a `WatchLimit` (starting with
    /// `ENOSPC` when the watch budget is spent). `max` simulates `max_user_watches` (tests).
    pub(super) fn watch(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        max: Option<usize>,
    ) -> Result<(), WatchFailure> {
        let Backend::Inotify(w) = self else {
            return Ok(());
        };
        if let Some(max) = max {
            if w.count() >= max && !w.is_watched(dir) {
                return Err(WatchFailure::Limit(format!(
                    "ENOSPC: No space left on device (simulated limit of {max} watches)"
                )));
            }
        }
        match w.add(fd, dir) {
            Ok(()) => Ok(()),
            Err(None) => Err(WatchFailure::Other("no inotify instance".into())),
            Err(Some(Errno::ENOSPC)) => Err(WatchFailure::Limit(format!(
                "ENOSPC: {} (raise {SYSCTL_WATCHES})",
                Errno::ENOSPC.desc()
            ))),
            Err(Some(e)) => {
                tracing::warn!(path = %dir.display(), error = %e, "Cannot watch directory; scanning it periodically.");
                Err(WatchFailure::Other(e.to_string()))
            }
        }
    }

    pub(super) fn forget(&mut self, dir: &Path) {
        if let Backend::Inotify(w) = self {
            w.forget(dir);
        }
    }

    pub(super) fn renamed(&mut self, from: &Path, to: &Path) {
        if let Backend::Inotify(w) = self {
            w.renamed(from, to);
        }
    }

    pub(super) fn remove_all(&mut self) {
        if let Backend::Inotify(w) = self {
            w.remove_all();
        }
    }

    /// Why an overflow happened, for the `Rescan` record.
    pub(super) fn overflow_reason(&self) -> String {
        match self {
            Backend::Inotify(_) => {
                let q = std::fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default();
                format!("inotify queue overflow ({SYSCTL_QUEUE}={q})")
            }
            Backend::Fanotify => "fanotify queue overflow (16384 events)".to_string(),
        }
    }

    /// The directories of lost events (inotify: by watch descriptor) and whether to rescan all.
    pub(super) fn lost_dirs(
        &self,
        wds: &std::collections::HashSet<i32>,
        dirs: Vec<PathBuf>,
    ) -> (Vec<PathBuf>, bool) {
        match self {
            Backend::Inotify(w) => w.lost_dirs(wds),
            Backend::Fanotify => (dirs, wds.contains(&-1)),
        }
    }
}

pub(super) enum WatchFailure {
    /// The watch budget is spent: stop adding watches for the rest of the walk.
    Limit(String),
    Other(String),
}
