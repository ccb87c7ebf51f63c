//! The agent's own directories inside the tree (the spool): never audited, found by inode
//! wherever they are moved, and every rename, move or removal of one is a `SpoolTamper`.

use std::path::{Path, PathBuf};

use nix::sys::stat::FileStat;

use super::processor::Processor;
use super::Output;
use crate::audit::change::{AgentEvent, FileKind};
use crate::audit::source::Op;

impl Processor {
    pub(super) fn guarded_by_stat(&self, st: &FileStat) -> Option<usize> {
        self.guarded
            .iter()
            .position(|g| g.ino == st.st_ino && g.dev == st.st_dev)
    }

    /// A guarded directory found at `path` during a scan: not reported; a new place is recorded.
    pub(super) fn guarded_found(&mut self, i: usize, path: &Path) {
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

    pub(super) fn tamper(&mut self, path: &Path, what: String) {
        tracing::warn!(path = %path.display(), what, "The agent's spool directory was tampered with.");
        self.emit(Output::Agent(Box::new(AgentEvent::SpoolTamper {
            path: path.to_path_buf(),
            what,
        })));
    }

    /// Events about a guarded directory's own entry; true when the event was one.
    pub(super) fn guarded_event(&mut self, path: &Path, op: &Op) -> bool {
        if let Op::MovedTo { cookie } = op {
            if let Some(i) = self.guarded_moves.remove(cookie) {
                self.guarded_found(i, path);
                return true;
            }
        }
        if let Op::Rename {
            from_dir,
            from_name,
        } = op
        {
            // fanotify's whole rename: both halves at once.
            let from = from_dir.join(from_name);
            if let Some(i) = self.guarded.iter().position(|g| g.path == from) {
                self.tamper(
                    &from,
                    "the agent's spool directory was renamed or moved away".into(),
                );
                self.guarded_found(i, path);
                return true;
            }
        }
        let Some(i) = self.guarded.iter().position(|g| g.path == path) else {
            return false;
        };
        match op {
            Op::MovedFrom { cookie } => {
                self.guarded_moves.insert(*cookie, i);
                self.tamper(
                    path,
                    "the agent's spool directory was renamed or moved away".into(),
                );
                true
            }
            Op::Delete => {
                self.guarded[i].path = PathBuf::new();
                self.tamper(path, "the agent's spool directory was deleted".into());
                true
            }
            Op::Create | Op::MovedTo { .. } | Op::Rename { .. } => {
                // Something else now has its name (it left without a rename we could pair):
                // that is audited like any other file.
                self.guarded[i].path = PathBuf::new();
                false
            }
            _ => true,
        }
    }

    /// fanotify sees inside the agent's own directories too (inotify never watches them): is
    /// `dir` one of them or below one? By path where the watcher last saw them, else by inode
    /// up to the nearest directory the tree knows (a guarded directory is never in the tree;
    /// its event may be named by a path it was renamed to after the event).
    pub(super) fn in_guarded(&mut self, dir: &Path) -> bool {
        if self.guarded.is_empty() {
            return false;
        }
        for a in dir.ancestors() {
            if self
                .guarded
                .iter()
                .any(|g| !g.path.as_os_str().is_empty() && g.path == a)
            {
                return true;
            }
            if self
                .tree
                .lookup(a)
                .is_some_and(|f| f.kind == FileKind::Directory)
                || self.cfg.roots.iter().any(|r| r == a)
            {
                return false;
            }
            if let Ok(st) = nix::sys::stat::lstat(a) {
                if self.guarded_by_stat(&st).is_some() {
                    return true;
                }
            }
        }
        false
    }
}
