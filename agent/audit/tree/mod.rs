//! The watched tree on disk: what the watcher knows about every file, kept in a log beside the
//! spool (`watch.tree`) instead of the heap (docs/WATCHER-DESIGN.md, "per-file facts leave the
//! heap"). It behaves as a map from absolute path to [`FileFacts`] (the map the processor used to
//! hold), with directory-shaped operations on top.
//!
//! In memory: one [`Node`] per directory that has entries or subdirectories with entries (its id,
//! parent id, name, child directories, entry count and where its latest records are), plus a cache
//! of directory contents bounded by [`TreeOptions::cache_bytes`]: a directory's entries are loaded
//! from its latest record when needed and dropped again when the budget is exceeded, unless they
//! are dirty (changed since the last checkpoint). Nothing is kept per file outside the cache.
//!
//! On disk ([`log`], [`record`]): per directory a `Node` record (id, parent, name) and an `Entries`
//! record (the sorted entries with their facts); `Drop` for a removed directory. Changes stay in
//! the cache until [`Tree::checkpoint`] appends the dirty records (no fsync) under a new number;
//! [`Tree::commit`] appends a `Commit` frame for that number and fsyncs. Opening applies only the
//! records a commit covers: a crash at any point leaves the state of the last commit, never a part
//! of a checkpoint. The daemon commits a checkpoint only once every change before it is durable in
//! the spool, so the tree never runs ahead of the spool.
//!
//! A renamed directory keeps its id: the rename writes its `Node` record and the entries of the two
//! parents, whatever the size of the subtree. When the log holds more than twice the live records
//! (and more than [`TreeOptions::compact_min_bytes`]) it is rewritten with only those.
//!
//! Paths are absolute with at least one component below `/` (the watched roots); `/` itself and
//! relative paths are never stored.

pub mod log;
pub mod record;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::audit::change::FileFacts;
use log::{Loc, Log, LogError};
use record::Head;

pub use log::FILE;

/// Limits of the in-memory part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeOptions {
    /// Budget for cached directory contents that are not dirty (estimated heap bytes).
    pub cache_bytes: usize,
    /// The log is not rewritten while it is smaller than this.
    pub compact_min_bytes: u64,
}

impl Default for TreeOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 2 << 20,
            compact_min_bytes: 4 << 20,
        }
    }
}

/// What [`Tree::open`] found besides the state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The log did not exist (or was replaced, see `unusable`).
    pub created: bool,
    /// The log's header was wrong: it was kept as `watch.tree.bad` and the tree starts empty.
    pub unusable: Option<String>,
    /// Bytes cut from the end: a torn frame or records of a checkpoint that was never committed
    /// (a crash before the daemon acknowledged it). Expected after a crash, not tampering.
    pub truncated_bytes: u64,
    /// Damage inside the committed part: `(offset, bytes)` runs that were not intact frames, and
    /// directories whose records could not be placed (orphans). Never trusted; worth a
    /// `SpoolTamper` event.
    pub damaged: Vec<String>,
    /// Directories and entries opened.
    pub dirs: u64,
    pub entries: u64,
}

impl OpenReport {
    pub fn suspicious(&self) -> bool {
        self.unusable.is_some() || !self.damaged.is_empty()
    }
}

/// One side of [`Tree::merge_dir`]: a name with its stored and/or live facts.
#[derive(Debug, PartialEq)]
pub enum Merged<'a> {
    Stored(&'a OsStr, &'a FileFacts),
    Live(&'a OsStr, &'a FileFacts),
    Both(&'a OsStr, &'a FileFacts, &'a FileFacts),
}

/// A directory of the tree.
#[derive(Debug)]
struct Node {
    parent: u64,
    name: Box<[u8]>,
    children: BTreeMap<Box<[u8]>, u64>,
    /// Entries of this directory (as cached when dirty, else as in the latest record).
    count: u64,
    /// The latest written `Node` record (never for the root).
    node_loc: Option<Loc>,
    /// The latest written `Entries` record; none = no entries.
    entries_loc: Option<Loc>,
    /// Parent or name changed since the last checkpoint.
    node_dirty: bool,
}

#[derive(Debug)]
struct Cached {
    entries: BTreeMap<Box<[u8]>, FileFacts>,
    dirty: bool,
    bytes: usize,
    used: u64,
}

/// A directory written by a checkpoint: its id and the (offset in the delta, payload length) of
/// its `Node` and `Entries` records.
type Placed = (u64, Option<(usize, u32)>, Option<(usize, u32)>);

/// Cached directories used within this many tree operations are never evicted.
const RECENT_OPS: u64 = 4;

/// The root of every path: `/`, id 0, never stored as a `Node` record.
const ROOT: u64 = 0;

/// See the module docs.
pub struct Tree {
    log: Log,
    opts: TreeOptions,
    nodes: HashMap<u64, Node>,
    next_id: u64,
    cache: HashMap<u64, Cached>,
    cache_bytes: usize,
    dirty_bytes: usize,
    tick: u64,
    len: u64,
    /// Directories whose node or entries changed since the last checkpoint.
    dirty: HashSet<u64>,
    /// Removed directories whose records are still live in the log: `Drop` at the next checkpoint.
    dropped: Vec<(u64, Option<Loc>, Option<Loc>)>,
    /// `Drop` records written but not yet committed: their directories' records stay live on disk.
    dropped_written: Vec<(u64, Option<Loc>, Option<Loc>)>,
    checkpoint: u64,
    committed: u64,
    /// Problems met after open (a record that no longer checks): for the caller to report.
    faults: Vec<String>,
    /// Directories found damaged since the last [`Tree::take_faults`], for a rescan.
    damaged_dirs: Vec<PathBuf>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("log", &self.log.path())
            .field("dirs", &self.nodes.len())
            .field("entries", &self.len)
            .finish()
    }
}

fn entry_cost(name: &[u8], f: &FileFacts) -> usize {
    std::mem::size_of::<FileFacts>()
        + name.len()
        + 48
        + f.hash_note.as_ref().map_or(0, |s| s.len())
        + f.link_target.as_ref().map_or(0, |s| s.as_os_str().len())
}

/// `path` as its names below `/`, or `None` for `/`, a relative path or one with `..`.
fn names(path: &Path) -> Option<Vec<&[u8]>> {
    let mut it = path.components();
    if it.next() != Some(Component::RootDir) {
        return None;
    }
    let mut out = Vec::new();
    for c in it {
        match c {
            Component::Normal(n) => out.push(n.as_bytes()),
            _ => return None,
        }
    }
    (!out.is_empty()).then_some(out)
}

impl Tree {
    /// Opens (or creates) `dir/watch.tree`: the state of its last commit. A torn or uncommitted
    /// tail is cut; damage inside is reported and not trusted, and the log is then rewritten
    /// clean.
    pub fn open(dir: &Path, opts: TreeOptions) -> Result<(Tree, OpenReport), LogError> {
        let (log, created, unusable) = Log::open(dir)?;
        let mut report = OpenReport {
            created,
            unusable,
            ..OpenReport::default()
        };
        let mut tree = Self::empty(log, opts);
        if !created {
            tree.load(&mut report)?;
        }
        report.dirs = tree.nodes.len() as u64 - 1;
        report.entries = tree.len;
        Ok((tree, report))
    }

    /// A tree in an unlinked temp file (nothing survives the process).
    pub fn anonymous(opts: TreeOptions) -> Result<Tree, LogError> {
        Ok(Self::empty(Log::anonymous()?, opts))
    }

    fn empty(log: Log, opts: TreeOptions) -> Tree {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                parent: ROOT,
                name: Box::default(),
                children: BTreeMap::new(),
                count: 0,
                node_loc: None,
                entries_loc: None,
                node_dirty: false,
            },
        );
        Tree {
            log,
            opts,
            nodes,
            next_id: 1,
            cache: HashMap::new(),
            cache_bytes: 0,
            dirty_bytes: 0,
            tick: 0,
            len: 0,
            dirty: HashSet::new(),
            dropped: Vec::new(),
            dropped_written: Vec::new(),
            checkpoint: 0,
            committed: 0,
            faults: Vec::new(),
            damaged_dirs: Vec::new(),
        }
    }

    /// Rebuild the nodes from the committed records of the log.
    fn load(&mut self, report: &mut OpenReport) -> Result<(), LogError> {
        #[derive(Default)]
        struct St {
            parent: u64,
            name: Vec<u8>,
            node_loc: Option<Loc>,
            entries_loc: Option<Loc>,
            count: u64,
        }
        let mut state: HashMap<u64, St> = HashMap::new();
        let mut pending: Vec<Frame> = Vec::new();
        let mut committed = 0u64;
        let mut commit_end = None;
        let mut max_id = 0u64;
        use log::Frame;
        let apply = |state: &mut HashMap<u64, St>, f: Frame, max_id: &mut u64| match f.head {
            Head::Node {
                id, parent, name, ..
            } => {
                *max_id = (*max_id).max(id);
                let s = state.entry(id).or_default();
                s.parent = parent;
                s.name = name;
                s.node_loc = Some(f.loc);
            }
            Head::Entries { id, count, .. } => {
                *max_id = (*max_id).max(id);
                let s = state.entry(id).or_default();
                s.entries_loc = Some(f.loc);
                s.count = count;
            }
            Head::Drop { id, .. } => {
                *max_id = (*max_id).max(id);
                state.remove(&id);
            }
            Head::Commit { .. } => {}
        };
        let end = self.log.scan(|f| {
            if let Head::Commit { checkpoint } = f.head {
                // Records are written in checkpoint order: the ones a commit covers are a prefix.
                let split = pending
                    .iter()
                    .position(|p| p.head.checkpoint() > checkpoint)
                    .unwrap_or(pending.len());
                for p in pending.drain(..split) {
                    apply(&mut state, p, &mut max_id);
                }
                committed = committed.max(checkpoint);
                commit_end = Some(f.loc.off + f.loc.frame_bytes());
            } else {
                pending.push(f);
            }
        })?;
        let keep = commit_end.unwrap_or(8);
        // Records of a checkpoint written before the last commit frame but not covered by it
        // (commit(n) while n+1 was already written, then a crash) cannot be cut off: the log is
        // rewritten below, or the next process's checkpoint n+1 would commit them.
        let orphans = pending.iter().any(|p| p.loc.off < keep);
        for (off, n) in &end.damaged {
            if *off < keep {
                report
                    .damaged
                    .push(format!("{n} bytes at offset {off} are not intact records"));
            }
        }
        if end.file_len > keep {
            report.truncated_bytes = end.file_len - keep;
            self.log.truncate(keep)?;
        }
        self.checkpoint = committed;
        self.committed = committed;
        self.next_id = max_id + 1;

        // Place every directory under its parent; what cannot be reached from `/` is damage.
        let mut by_parent: HashMap<u64, Vec<u64>> = HashMap::new();
        for (id, s) in &state {
            if *id != ROOT {
                by_parent.entry(s.parent).or_default().push(*id);
            }
        }
        if let Some(root) = state.remove(&ROOT) {
            if let Some(n) = self.nodes.get_mut(&ROOT) {
                n.entries_loc = root.entries_loc;
                n.count = root.count;
            }
        }
        let mut queue = vec![ROOT];
        while let Some(p) = queue.pop() {
            for id in by_parent.remove(&p).unwrap_or_default() {
                let Some(s) = state.remove(&id) else { continue };
                if s.node_loc.is_none() || s.name.is_empty() {
                    report
                        .damaged
                        .push(format!("directory record {id} has no name record"));
                    continue;
                }
                let name: Box<[u8]> = s.name.into_boxed_slice();
                let Some(parent) = self.nodes.get_mut(&p) else {
                    continue;
                };
                if parent.children.contains_key(&name) {
                    report.damaged.push(format!(
                        "directory record {id} repeats a name of directory {p}"
                    ));
                    continue;
                }
                parent.children.insert(name.clone(), id);
                self.nodes.insert(
                    id,
                    Node {
                        parent: p,
                        name,
                        children: BTreeMap::new(),
                        count: s.count,
                        node_loc: s.node_loc,
                        entries_loc: s.entries_loc,
                        node_dirty: false,
                    },
                );
                queue.push(id);
            }
        }
        if !state.is_empty() {
            report.damaged.push(format!(
                "{} directory records are not reachable from the root",
                state.len()
            ));
        }
        self.len = self.nodes.values().map(|n| n.count).sum();
        if !report.damaged.is_empty() || orphans {
            // Start from a clean log: the damaged bytes are not read again.
            self.compact()?;
        }
        Ok(())
    }

    // ---- reading ----

    /// Entries stored (files and directories, roots included).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Directories with a node (entries or subdirectories with entries).
    pub fn dirs(&self) -> u64 {
        self.nodes.len() as u64 - 1
    }

    /// Bytes of the log file.
    pub fn log_bytes(&self) -> u64 {
        self.log.size()
    }

    /// Estimated heap bytes of cached directory contents (dirty ones included).
    pub fn cached_bytes(&self) -> usize {
        self.cache_bytes
    }

    /// The node of directory `path`.
    fn dir_id(&self, path: &Path) -> Option<u64> {
        if path == Path::new("/") {
            return Some(ROOT);
        }
        let mut id = ROOT;
        for n in names(path)? {
            id = *self.nodes.get(&id)?.children.get(n)?;
        }
        Some(id)
    }

    /// The node of `path`'s parent and `path`'s name.
    fn parent_of<'p>(&self, path: &'p Path) -> Option<(u64, &'p [u8])> {
        let ns = names(path)?;
        let (last, dirs) = ns.split_last()?;
        let mut id = ROOT;
        for n in dirs {
            id = *self.nodes.get(&id)?.children.get(*n)?;
        }
        Some((id, last))
    }

    pub fn lookup(&mut self, path: &Path) -> Option<FileFacts> {
        let (pid, name) = self.parent_of(path)?;
        if self.nodes.get(&pid)?.count == 0 {
            return None;
        }
        self.load_entries(pid).entries.get(name).cloned()
    }

    pub fn contains(&mut self, path: &Path) -> bool {
        let Some((pid, name)) = self.parent_of(path) else {
            return false;
        };
        if self.nodes.get(&pid).is_none_or(|n| n.count == 0) {
            return false;
        }
        self.load_entries(pid).entries.contains_key(name)
    }

    /// The entries of directory `path`, in name order.
    pub fn list_dir(&mut self, path: &Path) -> Vec<(OsString, FileFacts)> {
        let Some(id) = self.dir_id(path) else {
            return Vec::new();
        };
        self.load_entries(id)
            .entries
            .iter()
            .map(|(n, f)| (OsStr::from_bytes(n).to_os_string(), f.clone()))
            .collect()
    }

    /// A sorted merge of directory `path`'s stored entries with `live` (which must be in byte order
    /// of the names, as a directory listing sorted for this): every name once, from the side(s) it
    /// is on. Memory: this one directory.
    pub fn merge_dir(
        &mut self,
        path: &Path,
        live: &[(OsString, FileFacts)],
        mut each: impl FnMut(Merged<'_>),
    ) {
        let empty = BTreeMap::new();
        let stored = match self.dir_id(path) {
            Some(id) => &self.load_entries(id).entries,
            None => &empty,
        };
        let mut s = stored.iter().peekable();
        let mut l = live.iter().peekable();
        loop {
            let order = match (s.peek(), l.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((sn, _)), Some((ln, _))) => sn[..].cmp(ln.as_bytes()),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((n, f)) = s.next() {
                        each(Merged::Stored(OsStr::from_bytes(n), f));
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((n, f)) = l.next() {
                        each(Merged::Live(n, f));
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((n, o)), Some((_, f))) = (s.next(), l.next()) {
                        each(Merged::Both(OsStr::from_bytes(n), o, f));
                    }
                }
            }
        }
    }

    /// Every entry at or below `top`, in path order (a directory before what it holds).
    pub fn visit(&mut self, top: &Path, each: &mut impl FnMut(&Path, &FileFacts)) {
        if let Some(f) = self.lookup(top) {
            each(top, &f);
        }
        if let Some(id) = self.dir_id(top) {
            self.visit_dir(id, top, each);
        }
    }

    fn visit_dir(&mut self, id: u64, path: &Path, each: &mut impl FnMut(&Path, &FileFacts)) {
        // Entries are cloned out of the cache: visiting a child directory may evict this one.
        let entries: Vec<(Box<[u8]>, FileFacts)> = self
            .load_entries(id)
            .entries
            .iter()
            .map(|(n, f)| (n.clone(), f.clone()))
            .collect();
        let children: Vec<(Box<[u8]>, u64)> = self
            .nodes
            .get(&id)
            .map(|n| n.children.iter().map(|(k, v)| (k.clone(), *v)).collect())
            .unwrap_or_default();
        let mut e = entries.into_iter().peekable();
        let mut c = children.into_iter().peekable();
        loop {
            let name = match (e.peek(), c.peek()) {
                (None, None) => break,
                (Some((n, _)), None) | (None, Some((n, _))) => n.clone(),
                (Some((a, _)), Some((b, _))) => a.min(b).clone(),
            };
            let p = path.join(OsStr::from_bytes(&name));
            if e.peek().is_some_and(|(n, _)| *n == name) {
                if let Some((_, f)) = e.next() {
                    each(&p, &f);
                }
            }
            if c.peek().is_some_and(|(n, _)| *n == name) {
                if let Some((_, cid)) = c.next() {
                    self.visit_dir(cid, &p, each);
                }
            }
        }
    }

    // ---- changing ----

    /// Sets the facts of `path` (its parent directories need not be stored).
    pub fn upsert(&mut self, path: &Path, facts: FileFacts) {
        let Some(ns) = names(path) else { return };
        let Some((name, dirs)) = ns.split_last() else {
            return;
        };
        let pid = self.ensure_dirs(dirs);
        self.put_entry(pid, name, facts);
    }

    /// Removes `path`'s entry only (what is stored below it stays, as in a map).
    pub fn remove(&mut self, path: &Path) -> Option<FileFacts> {
        let (pid, name) = self.parent_of(path)?;
        let old = self.take_entry(pid, name);
        self.gc(pid);
        old
    }

    /// Removes `path` and everything stored below it, handing each to `visit` children first
    /// (the reverse of path order), `path` itself last.
    pub fn remove_subtree(&mut self, path: &Path, visit: &mut impl FnMut(&Path, FileFacts)) {
        let Some((pid, name)) = self.parent_of(path) else {
            return;
        };
        let child = self
            .nodes
            .get_mut(&pid)
            .and_then(|n| n.children.remove(name));
        if let Some(cid) = child {
            self.drop_subtree(cid, path, visit);
        }
        if let Some(f) = self.take_entry(pid, name) {
            visit(path, f);
        }
        self.gc(pid);
    }

    /// Moves `from` and everything below it to `to`; whatever was stored at or below `to` is
    /// dropped first. A directory keeps its id: the cost does not depend on the subtree's size.
    /// `from == to`, or one inside the other, changes nothing.
    pub fn rename(&mut self, from: &Path, to: &Path) {
        if from == to || to.starts_with(from) || from.starts_with(to) {
            return;
        }
        self.remove_subtree(to, &mut |_, _| {});
        let Some((fpid, fname)) = self.parent_of(from) else {
            return;
        };
        let fname: Box<[u8]> = fname.into();
        let entry = self.take_entry(fpid, &fname);
        let node = self
            .nodes
            .get_mut(&fpid)
            .and_then(|n| n.children.remove(&fname));
        if entry.is_none() && node.is_none() {
            self.gc(fpid);
            return;
        }
        if let Some(id) = node {
            // The parent of `from` must survive the ensure below (it still has `from`'s node
            // counted nowhere now): put the node back under `to` before collecting.
            if let Some(ns) = names(to) {
                if let Some((tname, tdirs)) = ns.split_last() {
                    let tpid = self.ensure_dirs(tdirs);
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.parent = tpid;
                        n.name = (*tname).into();
                        n.node_dirty = true;
                    }
                    self.dirty.insert(id);
                    if let Some(p) = self.nodes.get_mut(&tpid) {
                        p.children.insert((*tname).into(), id);
                    }
                }
            }
        }
        if let Some(f) = entry {
            self.upsert(to, f);
        }
        self.gc(fpid);
    }

    fn ensure_dirs(&mut self, dirs: &[&[u8]]) -> u64 {
        let mut id = ROOT;
        for n in dirs {
            let next = self.nodes.get(&id).and_then(|node| node.children.get(*n));
            id = match next {
                Some(c) => *c,
                None => {
                    let c = self.next_id;
                    self.next_id += 1;
                    self.nodes.insert(
                        c,
                        Node {
                            parent: id,
                            name: (*n).into(),
                            children: BTreeMap::new(),
                            count: 0,
                            node_loc: None,
                            entries_loc: None,
                            node_dirty: true,
                        },
                    );
                    if let Some(p) = self.nodes.get_mut(&id) {
                        p.children.insert((*n).into(), c);
                    }
                    self.dirty.insert(c);
                    c
                }
            };
        }
        id
    }

    fn put_entry(&mut self, pid: u64, name: &[u8], facts: FileFacts) {
        let cost = entry_cost(name, &facts);
        let c = self.load_entries(pid);
        let was_dirty = c.dirty;
        let old = c.entries.insert(name.into(), facts);
        let old_cost = old.as_ref().map_or(0, |o| entry_cost(name, o));
        c.bytes = c.bytes + cost - old_cost;
        c.dirty = true;
        let bytes = c.bytes;
        self.cache_bytes = self.cache_bytes + cost - old_cost;
        self.mark_dirty(pid, was_dirty, bytes, cost as isize - old_cost as isize);
        if old.is_none() {
            self.len += 1;
            if let Some(n) = self.nodes.get_mut(&pid) {
                n.count += 1;
            }
        }
    }

    fn take_entry(&mut self, pid: u64, name: &[u8]) -> Option<FileFacts> {
        if self.nodes.get(&pid)?.count == 0 {
            return None;
        }
        let c = self.load_entries(pid);
        let old = c.entries.remove(name)?;
        let cost = entry_cost(name, &old);
        let was_dirty = c.dirty;
        c.bytes -= cost;
        c.dirty = true;
        let bytes = c.bytes;
        self.cache_bytes -= cost;
        self.mark_dirty(pid, was_dirty, bytes, -(cost as isize));
        self.len -= 1;
        if let Some(n) = self.nodes.get_mut(&pid) {
            n.count -= 1;
        }
        Some(old)
    }

    fn mark_dirty(&mut self, id: u64, was_dirty: bool, bytes: usize, delta: isize) {
        if was_dirty {
            self.dirty_bytes = self.dirty_bytes.saturating_add_signed(delta);
        } else {
            self.dirty_bytes += bytes;
        }
        self.dirty.insert(id);
    }

    /// Drops `id` and everything below it (already detached from its parent), visiting entries
    /// children first.
    fn drop_subtree(&mut self, id: u64, path: &Path, visit: &mut impl FnMut(&Path, FileFacts)) {
        let entries = if self.nodes.get(&id).is_some_and(|n| n.count > 0) {
            self.load_entries(id);
            self.cache
                .remove(&id)
                .map(|c| {
                    self.cache_bytes -= c.bytes;
                    if c.dirty {
                        self.dirty_bytes = self.dirty_bytes.saturating_sub(c.bytes);
                    }
                    c.entries
                })
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        let children = self
            .nodes
            .get_mut(&id)
            .map(|n| {
                n.count = 0;
                std::mem::take(&mut n.children)
            })
            .unwrap_or_default();
        let mut e = entries.into_iter().rev().peekable();
        let mut c = children.into_iter().rev().peekable();
        loop {
            let name = match (e.peek(), c.peek()) {
                (None, None) => break,
                (Some((n, _)), None) | (None, Some((n, _))) => n.clone(),
                (Some((a, _)), Some((b, _))) => a.max(b).clone(),
            };
            let p = path.join(OsStr::from_bytes(&name));
            if c.peek().is_some_and(|(n, _)| *n == name) {
                if let Some((_, cid)) = c.next() {
                    self.drop_subtree(cid, &p, visit);
                }
            }
            if e.peek().is_some_and(|(n, _)| *n == name) {
                if let Some((_, f)) = e.next() {
                    self.len -= 1;
                    visit(&p, f);
                }
            }
        }
        self.forget_node(id);
    }

    /// Removes an empty node from memory; its records get a `Drop` at the next checkpoint.
    fn forget_node(&mut self, id: u64) {
        if let Some(c) = self.cache.remove(&id) {
            self.cache_bytes -= c.bytes;
            if c.dirty {
                self.dirty_bytes = self.dirty_bytes.saturating_sub(c.bytes);
            }
        }
        self.dirty.remove(&id);
        if let Some(n) = self.nodes.remove(&id) {
            if n.node_loc.is_some() || n.entries_loc.is_some() {
                self.dropped.push((id, n.node_loc, n.entries_loc));
            }
        }
    }

    /// Forgets `id` and its empty ancestors while they hold nothing.
    fn gc(&mut self, mut id: u64) {
        while id != ROOT {
            let Some(n) = self.nodes.get(&id) else { return };
            if n.count > 0 || !n.children.is_empty() {
                return;
            }
            let (parent, name) = (n.parent, n.name.clone());
            if let Some(p) = self.nodes.get_mut(&parent) {
                p.children.remove(&name);
            }
            self.forget_node(id);
            id = parent;
        }
    }

    // ---- the cache ----

    /// The entries of `id`, loaded from the log if not cached.
    fn load_entries(&mut self, id: u64) -> &mut Cached {
        self.tick += 1;
        let tick = self.tick;
        if !self.cache.contains_key(&id) {
            let loc = self.nodes.get(&id).and_then(|n| n.entries_loc);
            let mut entries = BTreeMap::new();
            let mut damaged = None;
            if let Some(loc) = loc {
                match self
                    .log
                    .read_payload(loc)
                    .map_err(|e| e.to_string())
                    .and_then(|p| record::decode_entries(&p).map_err(|e| e.to_string()))
                {
                    Ok(list) => entries = list.into_iter().collect(),
                    Err(e) => damaged = Some(e),
                }
            }
            let bytes: usize = entries.iter().map(|(n, f)| entry_cost(n, f)).sum();
            self.evict(bytes);
            let mut dirty = false;
            if let Some(e) = damaged {
                // Treated as empty (and rewritten so): the caller rescans the directory.
                self.faults.push(e);
                let count = self.nodes.get(&id).map_or(0, |n| n.count);
                self.len -= count.min(self.len);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.count = 0;
                }
                self.damaged_dirs.push(self.path_of(id));
                self.dirty.insert(id);
                dirty = true;
            }
            self.cache_bytes += bytes;
            self.cache.insert(
                id,
                Cached {
                    entries,
                    dirty,
                    bytes,
                    used: tick,
                },
            );
        }
        let c = self.cache.entry(id).or_insert_with(|| Cached {
            entries: BTreeMap::new(),
            dirty: false,
            bytes: 0,
            used: tick,
        });
        c.used = tick;
        c
    }

    /// Makes room for `incoming` bytes by dropping the least recently used clean directories.
    fn evict(&mut self, incoming: usize) {
        let budget = self.opts.cache_bytes;
        if self.cache_bytes + incoming <= budget {
            return;
        }
        // The directories used in the last few operations stay: they are the ones being worked
        // on, and one may alone be larger than the budget. Evicting it because a small one (its
        // parent, say) was loaded would decode it again at its next event: quadratic in a burst
        // into one large directory (100,000 files in one directory stalled the processor).
        let recent = self.tick.saturating_sub(RECENT_OPS);
        let mut clean: Vec<(u64, u64)> = self
            .cache
            .iter()
            .filter(|(_, c)| !c.dirty && c.used <= recent)
            .map(|(id, c)| (c.used, *id))
            .collect();
        clean.sort_unstable();
        // Down to three quarters of the budget, so that the next loads do not evict again.
        let target = budget / 4 * 3;
        for (_, id) in clean {
            if self.cache_bytes + incoming <= target {
                break;
            }
            if let Some(c) = self.cache.remove(&id) {
                self.cache_bytes -= c.bytes;
            }
        }
    }

    /// The path of directory `id` (for reports).
    fn path_of(&self, mut id: u64) -> PathBuf {
        let mut parts = Vec::new();
        while id != ROOT {
            let Some(n) = self.nodes.get(&id) else { break };
            parts.push(OsStr::from_bytes(&n.name).to_os_string());
            id = n.parent;
        }
        let mut p = PathBuf::from("/");
        for part in parts.into_iter().rev() {
            p.push(part);
        }
        p
    }

    /// Records that no longer checked when read back (a change to the log behind the agent's
    /// back), and the directories they held, which the caller should rescan. Each is reported once.
    pub fn take_faults(&mut self) -> (Vec<String>, Vec<PathBuf>) {
        (
            std::mem::take(&mut self.faults),
            std::mem::take(&mut self.damaged_dirs),
        )
    }

    // ---- durability ----

    /// Something changed since the last checkpoint.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.dropped.is_empty()
    }

    /// Dirty directory contents (held in memory until the next checkpoint) exceed the cache
    /// budget: checkpoint soon, whatever the timer says.
    /// One dirty directory larger than the budget does not count: checkpointing cannot free it
    /// (it is dirty again at its next change), and re-encoding it after every change would make a
    /// burst into one large directory quadratic.
    pub fn wants_checkpoint(&self) -> bool {
        self.dirty_bytes > self.opts.cache_bytes && self.dirty.len() > 1
    }

    /// The number of the last checkpoint written (committed or not).
    pub fn last_checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// The last number [`Tree::commit`] made durable.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Appends the records of everything changed since the last checkpoint under a new number,
    /// without fsync; they count only once [`Tree::commit`] covers that number. `None` when
    /// nothing changed.
    pub fn checkpoint(&mut self) -> Result<Option<u64>, LogError> {
        if !self.is_dirty() {
            return Ok(None);
        }
        let n = self.checkpoint + 1;
        let mut buf = Vec::new();
        let mut payload = Vec::new();
        // (id, Some(offset in buf) of its node record, Some(offset) of its entries record)
        let mut placed: Vec<Placed> = Vec::new();
        let mut base = self.log.size();
        let dropped = std::mem::take(&mut self.dropped);
        for (id, _, _) in &dropped {
            payload.clear();
            record::encode_drop(&mut payload, n, *id);
            log::put_frame(&mut buf, &payload);
        }
        self.dropped_written.extend(dropped);
        let mut ids: Vec<u64> = self.dirty.drain().collect();
        ids.sort_unstable();
        for id in ids {
            let Some(node) = self.nodes.get(&id) else {
                continue;
            };
            let mut at_node = None;
            if node.node_dirty && id != ROOT {
                payload.clear();
                record::encode_node(&mut payload, n, id, node.parent, &node.name);
                at_node = Some((buf.len(), payload.len() as u32));
                log::put_frame(&mut buf, &payload);
            }
            let mut at_entries = None;
            if let Some(c) = self.cache.get_mut(&id) {
                if c.dirty {
                    payload.clear();
                    record::encode_entries(
                        &mut payload,
                        n,
                        id,
                        c.entries.len(),
                        c.entries.iter().map(|(k, v)| (&k[..], v)),
                    );
                    at_entries = Some((buf.len(), payload.len() as u32));
                    log::put_frame(&mut buf, &payload);
                    c.dirty = false;
                    self.dirty_bytes = self.dirty_bytes.saturating_sub(c.bytes);
                }
            }
            placed.push((id, at_node, at_entries));
            // Large deltas go out in pieces: the delta is never held whole in memory.
            if buf.len() >= 1 << 20 {
                let at = self.log.append(&buf)?;
                self.place(&mut placed, at);
                base = self.log.size();
                buf.clear();
            }
        }
        let at = self.log.append(&buf)?;
        debug_assert_eq!(at, base);
        self.place(&mut placed, at);
        self.dirty_bytes = 0;
        self.checkpoint = n;
        // What was dirty is now clean and may be evicted.
        self.evict(0);
        Ok(Some(n))
    }

    fn place(&mut self, placed: &mut Vec<Placed>, at: u64) {
        for (id, node, entries) in placed.drain(..) {
            if let Some(n) = self.nodes.get_mut(&id) {
                if let Some((off, len)) = node {
                    n.node_loc = Some(Loc {
                        off: at + off as u64,
                        len,
                    });
                    n.node_dirty = false;
                }
                if let Some((off, len)) = entries {
                    n.entries_loc = Some(Loc {
                        off: at + off as u64,
                        len,
                    });
                }
            }
        }
    }

    /// Makes every checkpoint up to `n` durable (a `Commit` frame, then fdatasync). May rewrite
    /// the log when it holds more than twice the live records.
    pub fn commit(&mut self, n: u64) -> Result<(), LogError> {
        let n = n.min(self.checkpoint);
        if n <= self.committed {
            return Ok(());
        }
        let mut payload = Vec::new();
        record::encode_commit(&mut payload, n);
        let mut buf = Vec::new();
        log::put_frame(&mut buf, &payload);
        self.log.append(&buf)?;
        self.log.sync()?;
        self.committed = n;
        if self.committed == self.checkpoint {
            self.dropped_written.clear();
            if self.log.size() > self.opts.compact_min_bytes
                && self.log.size() > 2 * self.live_bytes()
            {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Bytes of the records the last commit left live.
    fn live_bytes(&self) -> u64 {
        let mut b = 8;
        for n in self.nodes.values() {
            b += n.node_loc.map_or(0, |l| l.frame_bytes());
            b += n.entries_loc.map_or(0, |l| l.frame_bytes());
        }
        for (_, a, e) in self.dropped.iter().chain(&self.dropped_written) {
            b += a.map_or(0, |l| l.frame_bytes()) + e.map_or(0, |l| l.frame_bytes());
        }
        b
    }

    /// Rewrites the log with the live records only (those the last commit left live: changes not
    /// yet checkpointed stay in memory, dropped directories not yet recorded as such are copied).
    /// Only when every checkpoint is committed.
    fn compact(&mut self) -> Result<(), LogError> {
        let w = self.compact_write()?;
        let (mut rw, moved) = w;
        let mut payload = Vec::new();
        record::encode_commit(&mut payload, self.committed);
        let mut buf = Vec::new();
        log::put_frame(&mut buf, &payload);
        rw.append(&buf)?;
        let before = self.log.size();
        self.log = rw.finish()?;
        for (id, node, entries) in moved {
            let target = if let Some(n) = self.nodes.get_mut(&id) {
                (&mut n.node_loc, &mut n.entries_loc)
            } else if let Some(d) = self
                .dropped
                .iter_mut()
                .chain(self.dropped_written.iter_mut())
                .find(|d| d.0 == id)
            {
                (&mut d.1, &mut d.2)
            } else {
                continue;
            };
            if node.is_some() {
                *target.0 = node;
            }
            if entries.is_some() {
                *target.1 = entries;
            }
        }
        tracing::debug!(
            path = %self.log.path().display(),
            before,
            after = self.log.size(),
            "Compacted the watch tree."
        );
        Ok(())
    }

    /// The live frames copied into a new temp log (not yet committed or renamed), with their new
    /// places.
    #[allow(clippy::type_complexity)]
    fn compact_write(
        &mut self,
    ) -> Result<(log::Rewrite, Vec<(u64, Option<Loc>, Option<Loc>)>), LogError> {
        let mut rw = self.log.rewrite()?;
        let mut moved = Vec::new();
        let mut ids: Vec<(u64, Option<Loc>, Option<Loc>)> = self
            .nodes
            .iter()
            .map(|(id, n)| (*id, n.node_loc, n.entries_loc))
            .collect();
        ids.extend(self.dropped.iter().chain(&self.dropped_written).copied());
        ids.sort_unstable_by_key(|x| x.0);
        for (id, node, entries) in ids {
            let mut copy = |loc: Option<Loc>| -> Result<Option<Loc>, LogError> {
                let Some(loc) = loc else { return Ok(None) };
                let frame = self.log.read_frame(loc)?;
                let off = rw.append(&frame)?;
                Ok(Some(Loc { off, len: loc.len }))
            };
            let a = copy(node)?;
            let b = copy(entries)?;
            moved.push((id, a, b));
        }
        Ok((rw, moved))
    }

    /// Tests only: a compaction that stops after the new log is written and fsynced, before the
    /// rename (what a crash there leaves).
    #[doc(hidden)]
    pub fn compact_without_rename_for_test(&mut self) -> Result<PathBuf, LogError> {
        let (rw, _) = self.compact_write()?;
        let (_, temp, _, _, _) = rw.write_out()?;
        Ok(temp)
    }

    /// Tests only: rewrite now (if everything is committed).
    #[doc(hidden)]
    pub fn compact_for_test(&mut self) -> Result<(), LogError> {
        if self.committed == self.checkpoint {
            self.compact()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
