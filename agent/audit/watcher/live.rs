//! Live events, one at a time: a [`RawEvent`] from whichever source runs becomes at most a few
//! changes, checked with `lstat` (the event says where to look; the file system says what is
//! there now).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::backend::Backend;
use super::facts::{libc_enoent, lstat_facts};
use super::processor::Processor;
use super::reader::Wire;
use super::recon::{PendKind, Pending, PendingMove, Walk, WalkCtx};
use super::{Output, ReadEvent};
use crate::audit::change::{now_ms, ChangeKind, FileFacts, FileKind, FsChange, Source};
use crate::audit::source::{Op, RawEvent, SourceKind};

impl Processor {
    /// One event from the reader: inotify's are decoded here, in order (see `source::inotify`).
    pub(super) fn wire(&mut self, w: Wire) {
        let ev = match w {
            Wire::Raw(ev) => Some(ev),
            Wire::Inotify(ev) => match &mut self.backend {
                Backend::Inotify(watches) => watches.decode(ev),
                Backend::Fanotify => None,
            },
        };
        if let Some(ev) = ev {
            self.handle(ev);
        }
    }

    pub(super) fn handle(&mut self, ev: RawEvent) {
        if ev.op == Op::Overflow {
            return self.overflowed();
        }
        let path = ev.path();
        if ev.name.is_empty() {
            return self.handle_dir_itself(&path, &ev.op);
        }
        if self.is_excluded_name(&ev.name) || self.is_excluded_path(&path) {
            return;
        }
        if self.backend.kind() == SourceKind::Fanotify && self.in_guarded(&ev.dir) {
            return;
        }
        if !self.guarded.is_empty() && self.guarded_event(&path, &ev.op) {
            return;
        }
        self.actor = ev.pid;
        self.dispatch(path, ev.op);
        self.actor = None;
    }

    fn dispatch(&mut self, path: PathBuf, op: Op) {
        // A file found by a directory's scan waits for its writer's close: its own events name
        // the writer.
        if let (Some(pid), Some(p)) = (self.actor, self.pending.get_mut(&path)) {
            p.pid.get_or_insert(pid);
        }
        match op {
            Op::MovedFrom { cookie } => {
                self.flush_subtree(&path);
                if self.tree.contains(&path) || self.ghosts.contains(&path) {
                    let deadline = Instant::now() + self.cfg.rename_wait;
                    self.moves.insert(
                        cookie,
                        PendingMove {
                            from: path,
                            deadline,
                        },
                    );
                }
            }
            Op::MovedTo { cookie } => match self.moves.remove(&cookie) {
                Some(mv) => self.renamed(&mv.from, &path),
                None => self.appeared(&path),
            },
            Op::Rename {
                from_dir,
                from_name,
            } => {
                let from = from_dir.join(from_name);
                self.flush_subtree(&from);
                if self.tree.contains(&from) || self.ghosts.contains(&from) {
                    self.renamed(&from, &path);
                } else {
                    self.appeared(&path);
                }
            }
            Op::Create => self.appeared(&path),
            Op::Delete => self.deleted(&path),
            Op::Modify => {
                if self.tree.contains(&path) {
                    let deadline = Instant::now() + self.cfg.write_settle;
                    let pid = self.actor;
                    self.pending.entry(path).or_insert(Pending {
                        kind: PendKind::Update,
                        deadline,
                        pid,
                    });
                }
            }
            Op::CloseWrite => {
                if self.pending.contains_key(&path) {
                    self.flush(&path);
                }
            }
            Op::Attrib => self.attrib(&path),
            Op::CloseNoWrite => self.read(path),
            Op::Overflow => {}
        }
    }

    /// A reader closed `path`: an [`Output::Read`] when the read audit's globs match it (relative
    /// to its root). The agent's own reads (the hasher's) are not the user's.
    fn read(&mut self, path: PathBuf) {
        let Some(m) = &self.cfg.reads else { return };
        if self.actor == Some(std::process::id()) {
            return;
        }
        let rel = self
            .cfg
            .roots
            .iter()
            .find_map(|r| path.strip_prefix(r).ok());
        if rel.is_some_and(|rel| m.is_match(rel)) {
            let ev = ReadEvent {
                path,
                pid: self.actor,
                time_ms: now_ms(),
            };
            self.emit(Output::Read(Box::new(ev)));
        }
    }

    /// The source's queue overflowed: everything is rescanned, and that is said.
    fn overflowed(&mut self) {
        self.overflows += 1;
        let reason = self.backend.overflow_reason();
        let lost = self.shared.lost.swap(0, Ordering::SeqCst);
        if let Ok(mut s) = self.shared.lost_wds.lock() {
            s.clear();
        }
        if let Ok(mut s) = self.shared.lost_dirs.lock() {
            s.clear();
        }
        self.rescan_all(&reason, lost);
    }

    /// An event about a directory itself (no name): its attributes, or a root's removal
    /// (inotify reports a root's own removal this way; fanotify as a delete in its parent).
    fn handle_dir_itself(&mut self, dir: &Path, op: &Op) {
        match op {
            Op::Attrib => self.attrib(dir),
            Op::Delete if self.is_root(dir) => self.root_gone(dir),
            _ => {}
        }
    }

    fn is_root(&self, path: &Path) -> bool {
        self.cfg.roots.iter().any(|r| r == path)
    }

    fn root_gone(&mut self, dir: &Path) {
        tracing::warn!(path = %dir.display(), "Watch root removed or moved away.");
        self.remove_subtree(dir);
        self.missing_roots.insert(dir.to_path_buf());
    }

    /// A path appeared (created, or moved in from outside).
    pub(super) fn appeared(&mut self, path: &Path) {
        let facts = match lstat_facts(path) {
            Ok(f) => f,
            Err(e) => {
                if e.raw_os_error() != Some(libc_enoent()) {
                    tracing::warn!(path = %path.display(), error = %e, "Cannot stat new path.");
                }
                // Already known: a rescan (after lost notifications) found it before this queued
                // IN_CREATE was read, and reported it; its IN_DELETE follows.
                if self.tree.contains(path) {
                    return;
                }
                if self.ghosts.insert(path.to_path_buf()) {
                    self.change(ChangeKind::Create, path.to_path_buf(), None);
                }
                return;
            }
        };
        if self.is_root(path) {
            self.missing_roots.remove(path);
        }
        let known = self.tree.lookup(path);
        if known
            .as_ref()
            .is_some_and(|k| k.inode == facts.inode && k.kind == facts.kind)
        {
            return;
        }
        // Only a directory with a guarded inode number costs a second lstat (for its device).
        if facts.kind == FileKind::Directory && self.guarded.iter().any(|g| g.ino == facts.inode) {
            if let Some(i) = nix::sys::stat::lstat(path)
                .ok()
                .and_then(|st| self.guarded_by_stat(&st))
            {
                self.guarded_found(i, path);
                return;
            }
        }
        if let Some(old) = known {
            // A different file now has this name (our earlier scan saw a predecessor).
            self.remove_subtree_known(path, old.kind == FileKind::Directory);
        }
        match facts.kind {
            FileKind::Directory => {
                let mut ctx = WalkCtx::default();
                self.walk(path, &mut Walk::Appeared, &mut ctx);
                self.report_limit(path, ctx);
            }
            FileKind::Regular => {
                self.tree.upsert(path, facts);
                let deadline = Instant::now() + self.cfg.write_settle;
                let pend = Pending {
                    kind: PendKind::Create,
                    deadline,
                    pid: self.actor,
                };
                self.pending.insert(path.to_path_buf(), pend);
            }
            _ => {
                self.tree.upsert(path, facts.clone());
                self.change(ChangeKind::Create, path.to_path_buf(), Some(facts));
            }
        }
    }

    pub(super) fn deleted(&mut self, path: &Path) {
        if self.is_root(path) {
            return self.root_gone(path);
        }
        if self
            .pending
            .get(path)
            .is_some_and(|p| p.kind == PendKind::Create)
        {
            self.flush(path);
        }
        self.pending.remove(path);
        if self.ghosts.remove(path) {
            self.change(ChangeKind::Delete, path.to_path_buf(), None);
            return;
        }
        let is_dir = self
            .tree
            .lookup(path)
            .map(|f| f.kind == FileKind::Directory);
        if let Some(is_dir) = is_dir {
            self.remove_subtree_known(path, is_dir);
        }
    }

    /// Emit Delete for `path` and whatever is still known below it (children first); forget them.
    pub(super) fn remove_subtree_known(&mut self, path: &Path, is_dir: bool) {
        let Processor {
            tree,
            pending,
            backend,
            out,
            out_closed,
            actor,
            ..
        } = self;
        let mut gone = |p: &Path, f: FileFacts| {
            pending.remove(p);
            if f.kind == FileKind::Directory {
                backend.forget(p);
            }
            let o = Output::Change(Box::new(FsChange {
                kind: ChangeKind::Delete,
                path: p.to_path_buf(),
                facts: Some(f),
                time_ms: now_ms(),
                source: Source::Live,
                pid: *actor,
            }));
            if !*out_closed && out.send(o).is_err() {
                *out_closed = true;
            }
        };
        if is_dir {
            tree.remove_subtree(path, &mut gone);
        } else if let Some(f) = tree.remove(path) {
            gone(path, f);
        }
    }

    pub(super) fn remove_subtree(&mut self, path: &Path) {
        self.remove_subtree_known(path, true);
    }

    pub(super) fn moved_out(&mut self, from: &Path) {
        let is_dir = self
            .tree
            .lookup(from)
            .map(|f| f.kind == FileKind::Directory)
            .unwrap_or(false);
        self.remove_subtree_known(from, is_dir);
    }

    pub(super) fn renamed(&mut self, from: &Path, to: &Path) {
        if from == to {
            return;
        }
        // A file renamed before its creation was read was reported as a Create without facts
        // (a ghost): its rename is reported too, so the investigator sees where it went.
        let ghost = self.ghosts.remove(from);
        if self.is_excluded_abs(to) {
            if ghost {
                self.change(ChangeKind::Delete, from.to_path_buf(), None);
            }
            return self.moved_out(from);
        }
        // Whatever `to` named before is replaced (only an empty directory or a non-directory can be).
        {
            let Processor {
                tree,
                pending,
                backend,
                ..
            } = self;
            tree.remove_subtree(to, &mut |p, _| {
                pending.remove(p);
                backend.forget(p);
            });
        }
        // The directory keeps its node: one record moves, whatever the size of the subtree.
        self.tree.rename(from, to);
        self.backend.renamed(from, to);
        let facts = match lstat_facts(to) {
            Ok(f) => {
                self.tree.upsert(to, f.clone());
                Some(f)
            }
            Err(_) => self.tree.lookup(to),
        };
        self.change(
            ChangeKind::Rename {
                from: from.to_path_buf(),
            },
            to.to_path_buf(),
            facts,
        );
    }

    pub(super) fn attrib(&mut self, path: &Path) {
        let Some(known) = self.tree.lookup(path) else {
            return;
        };
        let Ok(now) = lstat_facts(path) else {
            return;
        };
        if now.inode != known.inode {
            return;
        }
        let owner_mode = now.mode != known.mode || now.uid != known.uid || now.gid != known.gid;
        let pending = self.pending.contains_key(path);
        let times = now.kind != FileKind::Directory && now.mtime_ms != known.mtime_ms && !pending;
        if owner_mode || times {
            self.tree.upsert(path, now.clone());
            self.change(ChangeKind::SetAttributes, path.to_path_buf(), Some(now));
        }
    }

    pub(super) fn flush_subtree(&mut self, path: &Path) {
        let keys: Vec<PathBuf> = self
            .pending
            .keys()
            .filter(|p| p.starts_with(path))
            .cloned()
            .collect();
        for k in keys {
            self.flush(&k);
        }
    }

    pub(super) fn flush(&mut self, path: &Path) {
        let Some(Pending { kind, pid, .. }) = self.pending.remove(path) else {
            return;
        };
        let known = self.tree.lookup(path);
        let facts = match lstat_facts(path) {
            Ok(f) if known.as_ref().is_none_or(|k| k.inode == f.inode) => {
                self.tree.upsert(path, f.clone());
                Some(f)
            }
            _ => known.clone(),
        };
        let kind = match kind {
            PendKind::Create => ChangeKind::Create,
            PendKind::Update => ChangeKind::Update,
        };
        // A write already reported: a rescan (after an overflow) saw the file as it is now and
        // reported it; the queued IN_MODIFY/IN_CLOSE_WRITE of that same write must not add an
        // Update. Same inode, size and mtime as last reported = nothing new to report.
        if kind == ChangeKind::Update {
            if let (Some(k), Some(f)) = (&known, &facts) {
                if k.inode == f.inode && k.size == f.size && k.mtime_ms == f.mtime_ms {
                    return;
                }
            }
        }
        // The change names the process that wrote, not whichever event flushed it.
        let current = self.actor;
        self.actor = pid.or(current);
        self.change(kind, path.to_path_buf(), facts);
        self.actor = current;
    }
}
