//! Walks: the initial scan and catch-up, rescans after lost events, and the scan of a
//! directory that appeared. Each directory is listed once, its entries compared with the
//! stored record (a sorted merge), so memory is one directory plus the differences.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;

use super::backend::WatchFailure;
use super::facts::{dir_flags, facts_from_stat, libc_enoent, lstat_facts, open_dir_path};
use super::processor::Processor;
use super::recon::{
    content_and_attrs, same_file, worth_storing, PendKind, Pending, Recon, Walk, WalkCtx,
};
use super::MAX_DEPTH;
use crate::audit::change::{now_ms, ChangeKind, FileFacts, FileKind, FsChange, Source};
use crate::audit::source::SourceKind;
use crate::audit::tree::Merged;

impl Processor {
    /// Scan `top` and everything below it directory by directory, adding watches to directories
    /// (first the watch, then the listing, so nothing created in between is missed), and hand each
    /// directory's listing to `mode`. Never follows a symlink: every directory is opened
    /// `O_NOFOLLOW|O_DIRECTORY` relative to its parent's fd and checked to be the inode `fstatat`
    /// saw. Returns false when `top` does not exist.
    pub(super) fn walk(&mut self, top: &Path, mode: &mut Walk, ctx: &mut WalkCtx) -> bool {
        let facts = match lstat_facts(top) {
            Ok(f) => f,
            Err(e) => {
                if e.raw_os_error() != Some(libc_enoent()) {
                    tracing::warn!(path = %top.display(), error = %e, "Cannot stat path to scan.");
                }
                if let Walk::Reconcile(rec) = mode {
                    self.reconcile_entry(top, None, rec);
                }
                return false;
            }
        };
        let is_dir = facts.kind == FileKind::Directory;
        let inode = facts.inode;
        self.visit_entry(top, facts, mode);
        if !is_dir {
            return true;
        }
        let fd = match open_dir_path(top) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(path = %top.display(), error = %e, "Cannot open directory to scan (swapped for a symlink or unreadable).");
                return true;
            }
        };
        if nix::sys::stat::fstat(&fd).map(|s| s.st_ino) != Ok(inode) {
            return true;
        }
        let watch = !self.unwatched.iter().any(|u| top.starts_with(u));
        self.scan_dir(fd.as_fd(), top, watch, 0, mode, ctx);
        true
    }

    pub(super) fn scan_dir(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        watch: bool,
        depth: usize,
        mode: &mut Walk,
        ctx: &mut WalkCtx,
    ) {
        let mut watch_children = watch;
        if watch {
            if let Err(e) = self.add_watch(fd, dir, ctx) {
                watch_children = false;
                if ctx.limit_error.is_none() {
                    ctx.limit_error = Some(e);
                }
                ctx.newly_unwatched.push(dir.to_path_buf());
            }
        }
        let names = match self.list(fd, dir) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(path = %dir.display(), error = %e, "Cannot list directory.");
                return;
            }
        };
        // This directory's entries with their facts, then its subdirectories: memory is one
        // directory (plus the names of the subdirectories still to visit on the way down).
        let mut listing: Vec<(OsString, FileFacts)> = Vec::with_capacity(names.len());
        let mut subdirs: Vec<(OsString, u64)> = Vec::new();
        for name in names {
            if self.is_excluded_name(&name) {
                continue;
            }
            let path = dir.join(&name);
            if self.is_excluded_path(&path) {
                continue;
            }
            let st = match nix::sys::stat::fstatat(
                fd,
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Cannot stat entry during scan.");
                    continue;
                }
            };
            let mut facts = facts_from_stat(&st);
            if facts.kind == FileKind::Directory {
                if let Some(i) = self.guarded_by_stat(&st) {
                    self.guarded_found(i, &path);
                    continue;
                }
                subdirs.push((name.clone(), st.st_ino));
            }
            if facts.kind == FileKind::SymbolicLink {
                facts.link_target = nix::fcntl::readlinkat(fd, name.as_os_str())
                    .ok()
                    .map(PathBuf::from);
            }
            listing.push((name, facts));
        }
        listing.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        self.visit_listing(dir, listing, mode);
        subdirs.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, ino) in subdirs {
            let path = dir.join(&name);
            if depth + 1 >= MAX_DEPTH {
                tracing::warn!(path = %path.display(), max_depth = MAX_DEPTH, "Directory tree too deep; not descending further.");
                continue;
            }
            let child = match nix::fcntl::openat(fd, name.as_os_str(), dir_flags(), Mode::empty()) {
                Ok(c) => c,
                // ELOOP/ENOTDIR: swapped for a symlink or a file since the fstatat.
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "Directory changed during scan; not descending.");
                    continue;
                }
            };
            if nix::sys::stat::fstat(&child).map(|s| s.st_ino) != Ok(ino) {
                continue;
            }
            self.scan_dir(
                child.as_fd(),
                &path,
                watch_children && !ctx.limit_hit,
                depth + 1,
                mode,
                ctx,
            );
            if watch_children
                && ctx.limit_hit
                && !self.backend.is_watched(&path)
                && !ctx.newly_unwatched.iter().any(|u| path.starts_with(u))
            {
                ctx.newly_unwatched.push(path.clone());
            }
        }
    }

    // ---- what a walk does with what it finds ----

    /// One entry found by a walk (its top).
    pub(super) fn visit_entry(&mut self, path: &Path, facts: FileFacts, mode: &mut Walk) {
        match mode {
            Walk::Appeared => self.appeared_entry(path, facts),
            Walk::Reconcile(rec) => match self.tree.lookup(path) {
                Some(o) => self.reconcile_entry(path, Some((o, facts)), rec),
                None => self.reconcile_new(path, facts, rec),
            },
        }
    }

    /// One directory's listing (sorted by name bytes).
    pub(super) fn visit_listing(
        &mut self,
        dir: &Path,
        listing: Vec<(OsString, FileFacts)>,
        mode: &mut Walk,
    ) {
        match mode {
            Walk::Appeared => {
                // What a new directory already holds was not necessarily made by the process
                // whose event led here: no actor (a file's own later event names its writer).
                let actor = self.actor.take();
                for (name, facts) in listing {
                    self.appeared_entry(&dir.join(name), facts);
                }
                self.actor = actor;
            }
            Walk::Reconcile(rec) => self.reconcile_listing(dir, listing, rec),
        }
        if self.checkpoint_for_memory() {
            // Free the dirty directories; in a reconcile the checkpoint is announced only after
            // its changes were sent (see `finish`).
            self.checkpoint();
        }
    }

    /// The differences of this directory, then the tree is brought up to date. A new or changed
    /// entry is kept as its position in `listing`, whose facts are then moved out rather than
    /// cloned: a rescan of a directory of 100,000 new files held them three times (stored, listed,
    /// and a copy per difference) at the peak of a burst.
    fn reconcile_listing(
        &mut self,
        dir: &Path,
        listing: Vec<(OsString, FileFacts)>,
        rec: &mut Recon,
    ) {
        let mut diffs: Vec<Diff> = Vec::new();
        let mut at = 0usize;
        self.tree.merge_dir(dir, &listing, |m| match m {
            Merged::Stored(n, o) => diffs.push(Diff::Gone(Box::new((n.to_os_string(), o.clone())))),
            Merged::Live(..) => {
                diffs.push(Diff::New(at));
                at += 1;
            }
            Merged::Both(_, o, f) => {
                if worth_storing(o, f) {
                    diffs.push(Diff::Changed(at, Box::new(o.clone())));
                }
                at += 1;
            }
        });
        // Positions only grow: each entry is taken once, and those before it are freed.
        let mut live = listing.into_iter().enumerate();
        let mut take = |i: usize| live.find(|(j, _)| *j == i).map(|(_, e)| e);
        for d in diffs {
            match d {
                Diff::Gone(b) => {
                    let (name, o) = *b;
                    rec.vanished.push((dir.join(name), o));
                }
                Diff::New(i) => {
                    if let Some((name, f)) = take(i) {
                        self.reconcile_new(&dir.join(name), f, rec);
                    }
                }
                Diff::Changed(i, o) => {
                    if let Some((name, f)) = take(i) {
                        self.reconcile_entry(&dir.join(name), Some((*o, f)), rec);
                    }
                }
            }
        }
    }

    /// A new directory's entry (or the directory itself): reported unless already known.
    pub(super) fn appeared_entry(&mut self, path: &Path, facts: FileFacts) {
        if self
            .tree
            .lookup(path)
            .is_some_and(|k| k.inode == facts.inode)
        {
            return;
        }
        // fanotify: the file's own events are delivered whatever the walk saw (the mark covers
        // every directory), so a regular file is reported as a live create is: at its writer's
        // close (or `write_settle`), once, with its final size. inotify may have missed them (the
        // watch came after the file): it reports at once, as before.
        if facts.kind == FileKind::Regular && self.backend.kind() == SourceKind::Fanotify {
            self.tree.upsert(path, facts);
            let deadline = std::time::Instant::now() + self.cfg.write_settle;
            let pend = Pending {
                kind: PendKind::Create,
                deadline,
                pid: self.actor,
            };
            self.pending.entry(path.to_path_buf()).or_insert(pend);
            return;
        }
        self.tree.upsert(path, facts.clone());
        self.change(ChangeKind::Create, path.to_path_buf(), Some(facts));
    }

    /// A path the tree does not know: stored, and a Create unless a rename explains it.
    pub(super) fn reconcile_new(&mut self, path: &Path, facts: FileFacts, rec: &mut Recon) {
        self.tree.upsert(path, facts.clone());
        if rec.emit {
            rec.creates.push((path.to_path_buf(), facts, None));
        }
    }

    /// A known path as stored (`(old, new)` with `old` from the tree) or gone (`None`).
    pub(super) fn reconcile_entry(
        &mut self,
        path: &Path,
        pair: Option<(FileFacts, FileFacts)>,
        rec: &mut Recon,
    ) {
        let Some((o, f)) = pair else {
            if let Some(o) = self.tree.lookup(path) {
                rec.vanished.push((path.to_path_buf(), o));
            }
            return;
        };
        if !worth_storing(&o, &f) {
            return;
        }
        if o.kind != f.kind {
            // Another kind of file under the same name: the old one (and what was below it) is
            // deleted, the new one created.
            let mut gone = Vec::new();
            self.remove_known(path, &mut gone);
            if rec.emit {
                rec.deletes.extend(gone);
            }
            self.reconcile_new(path, f, rec);
            return;
        }
        self.tree.upsert(path, f.clone());
        if !rec.emit {
            return;
        }
        if o.inode != f.inode {
            // Replaced: a rename onto it if the inode vanished elsewhere, else an update.
            rec.creates.push((path.to_path_buf(), f, Some(o)));
        } else {
            rec.updates
                .extend(content_and_attrs(path, &o, &f, rec.source, rec.time_ms));
        }
    }

    /// Removes `path` and what is stored below it from the tree, forgetting their watches and
    /// pending writes; their Deletes (children first) are appended to `out`.
    pub(super) fn remove_known(&mut self, path: &Path, out: &mut Vec<FsChange>) {
        let time_ms = now_ms();
        let Processor {
            tree,
            pending,
            backend,
            ..
        } = self;
        tree.remove_subtree(path, &mut |p, f| {
            pending.remove(p);
            if f.kind == FileKind::Directory {
                backend.forget(p);
            }
            out.push(FsChange {
                kind: ChangeKind::Delete,
                path: p.to_path_buf(),
                facts: Some(f),
                time_ms,
                source: Source::Rescan,
                pid: None,
            });
        });
    }

    /// The end of a reconcile: renames paired by inode, vanished paths removed from the tree, and
    /// every change in the order renames, creates (parents first), updates, deletes (children
    /// first). Memory: the differences, never the tree.
    pub(super) fn finish(&mut self, rec: Recon) -> Vec<FsChange> {
        let Recon {
            source,
            emit,
            time_ms,
            creates,
            updates,
            mut deletes,
            vanished,
        } = rec;
        let ev = |kind: ChangeKind, path: &Path, facts: &FileFacts| FsChange {
            kind,
            path: path.to_path_buf(),
            facts: Some(facts.clone()),
            time_ms,
            source,
            pid: None,
        };
        let mut out = Vec::new();
        // new top of a renamed directory -> old top
        let mut renamed_dirs: HashMap<PathBuf, PathBuf> = HashMap::new();
        let mut renamed_from: HashSet<usize> = HashSet::new();
        let mut kept = Vec::new();
        if emit {
            let mut by_inode: HashMap<u64, usize> = HashMap::new();
            for (i, (_, o)) in vanished.iter().enumerate() {
                by_inode.insert(o.inode, i);
            }
            let mut renames = Vec::new();
            let mut plain = Vec::new();
            for (path, f, replaced) in creates {
                let hit = by_inode
                    .get(&f.inode)
                    .copied()
                    .filter(|i| !renamed_from.contains(i) && same_file(&vanished[*i].1, &f));
                match hit {
                    Some(i) => {
                        renamed_from.insert(i);
                        let from = vanished[i].0.clone();
                        if f.kind == FileKind::Directory {
                            renamed_dirs.insert(path.clone(), from.clone());
                        }
                        renames.push((path, f, from));
                    }
                    None => plain.push((path, f, replaced)),
                }
            }
            // Inside a renamed directory, an entry that is the same file under the same relative
            // name is implied by the directory's rename.
            for (path, f, from) in renames {
                if self.implied(&path, &f, &renamed_dirs) {
                    continue;
                }
                out.push(ev(ChangeKind::Rename { from }, &path, &f));
            }
            for (path, f, replaced) in plain {
                if self.implied(&path, &f, &renamed_dirs) {
                    continue;
                }
                match replaced {
                    None => out.push(ev(ChangeKind::Create, &path, &f)),
                    Some(o) => kept.extend(content_and_attrs(&path, &o, &f, source, time_ms)),
                }
            }
        }
        out.extend(kept);
        out.extend(updates);
        // Vanished paths leave the tree; below a renamed directory only what has no same file at
        // the new place is a Delete.
        let old_to_new: HashMap<PathBuf, PathBuf> = renamed_dirs
            .iter()
            .map(|(n, o)| (o.clone(), n.clone()))
            .collect();
        for (i, (path, _)) in vanished.iter().enumerate().rev() {
            let mut gone = Vec::new();
            self.remove_known(path, &mut gone);
            if self.tree.wants_checkpoint() {
                // Each removal dirties its directory: free them (a catch-up with a deletion in
                // each of 1,000 directories of 1,000 files held them all). No rate limit as in
                // the walk: vanished paths come grouped by directory, so none is re-encoded often.
                self.checkpoint();
            }
            if !emit {
                continue;
            }
            let moved = renamed_from.contains(&i);
            for mut c in gone {
                if moved && c.path == *path {
                    continue;
                }
                if let Some(f) = &c.facts {
                    if self.implied(&c.path, f, &old_to_new) {
                        continue;
                    }
                }
                c.source = source;
                c.time_ms = time_ms;
                deletes.push(c);
            }
        }
        for d in &mut deletes {
            d.source = source;
        }
        out.extend(deletes);
        out
    }

    /// `path` lies in a directory that `moved` maps to its other end (new → old while creates are
    /// matched, old → new while removals are), and the same file is at the same relative name at
    /// that other end (still in the tree). `same_file` is symmetric, so one function serves both.
    pub(super) fn implied(
        &mut self,
        path: &Path,
        f: &FileFacts,
        moved: &HashMap<PathBuf, PathBuf>,
    ) -> bool {
        for a in path.ancestors().skip(1) {
            if let Some(other) = moved.get(a) {
                let Ok(rel) = path.strip_prefix(a) else {
                    return false;
                };
                return self
                    .tree
                    .lookup(&other.join(rel))
                    .is_some_and(|o| same_file(&o, f));
            }
        }
        false
    }

    pub(super) fn list(&self, fd: BorrowedFd<'_>, dir: &Path) -> std::io::Result<Vec<OsString>> {
        // std's read_dir through the fd's /proc magic link reads exactly the directory we opened
        // with O_NOFOLLOW, whatever happened to its path since (and works past PATH_MAX).
        let p = if self.proc_fd {
            PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        } else {
            dir.to_path_buf()
        };
        let mut names = Vec::new();
        for e in std::fs::read_dir(p)? {
            names.push(e?.file_name());
        }
        Ok(names)
    }

    pub(super) fn add_watch(
        &mut self,
        fd: BorrowedFd<'_>,
        dir: &Path,
        ctx: &mut WalkCtx,
    ) -> Result<(), String> {
        if ctx.limit_hit {
            if self.backend.is_watched(dir) {
                return Ok(());
            }
            return Err(ctx.limit_error.clone().unwrap_or_else(|| "ENOSPC".into()));
        }
        match self.backend.watch(fd, dir, self.cfg.max_watches) {
            Ok(()) => Ok(()),
            Err(WatchFailure::Limit(e)) => {
                ctx.limit_hit = true;
                Err(e)
            }
            Err(WatchFailure::Other(e)) => Err(e),
        }
    }
}

/// One difference between a directory's stored entries and its listing (`reconcile_listing`):
/// 24 bytes each, whatever the facts.
enum Diff {
    /// Stored, not listed: its name and last known facts.
    Gone(Box<(OsString, FileFacts)>),
    /// Listed, not stored: its position in the listing.
    New(usize),
    /// Both, and worth a record: its position in the listing and its stored facts.
    Changed(usize, Box<FileFacts>),
}
