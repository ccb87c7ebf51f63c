//! The bookkeeping of one walk: what it does with each directory (report what appeared, or
//! reconcile with the stored tree), the differences a reconcile collected, and the pure
//! comparisons of stored and live facts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::audit::change::{now_ms, ChangeKind, FileFacts, FileKind, FsChange, Source};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum PendKind {
    Create,
    Update,
}

/// A file written (or created) and not yet reported: reported when its writer closes it or
/// at `deadline`, as `kind`, naming `pid` (the process whose event put it here, if the source
/// said).
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) kind: PendKind,
    pub(super) deadline: Instant,
    pub(super) pid: Option<u32>,
}

pub(super) struct PendingMove {
    pub(super) from: PathBuf,
    pub(super) deadline: Instant,
}

/// What a walk does with each directory it lists.
pub(super) enum Walk {
    /// A directory that appeared live: every entry not yet known is stored and reported at once.
    Appeared,
    /// Catch-up or rescan: each listing is merged with the stored record.
    Reconcile(Recon),
}

/// The differences a reconcile found so far (the tree itself is updated as it goes).
pub(super) struct Recon {
    pub(super) source: Source,
    /// Report (false: the first start takes the tree as it is).
    pub(super) emit: bool,
    pub(super) time_ms: i64,
    /// New paths, with what they replaced (another inode under the same name and kind).
    pub(super) creates: Vec<(PathBuf, FileFacts, Option<FileFacts>)>,
    pub(super) updates: Vec<FsChange>,
    pub(super) deletes: Vec<FsChange>,
    /// Stored paths no longer there; removed from the tree (with what is below) at the end.
    pub(super) vanished: Vec<(PathBuf, FileFacts)>,
}

impl Recon {
    pub(super) fn new(source: Source, emit: bool) -> Self {
        Recon {
            source,
            emit,
            time_ms: now_ms(),
            creates: Vec::new(),
            updates: Vec::new(),
            deletes: Vec::new(),
            vanished: Vec::new(),
        }
    }
}

/// The same file, moved: rename keeps inode, kind, size and mtime.
pub(super) fn same_file(a: &FileFacts, b: &FileFacts) -> bool {
    a.inode == b.inode
        && a.kind == b.kind
        && (a.kind == FileKind::Directory || (a.size == b.size && a.mtime_ms == b.mtime_ms))
}

/// A difference between stored and live facts that is reported, or that later comparisons need
/// (a directory's own size and mtime follow its children and are neither).
pub(super) fn worth_storing(o: &FileFacts, f: &FileFacts) -> bool {
    o.inode != f.inode
        || o.kind != f.kind
        || o.mode != f.mode
        || o.uid != f.uid
        || o.gid != f.gid
        || (f.kind != FileKind::Directory
            && (o.size != f.size || o.mtime_ms != f.mtime_ms || o.link_target != f.link_target))
}

/// `Update` when the contents changed (a non-directory), `SetAttributes` when mode or owner did.
pub(super) fn content_and_attrs(
    path: &Path,
    o: &FileFacts,
    f: &FileFacts,
    source: Source,
    time_ms: i64,
) -> Vec<FsChange> {
    let is_dir = f.kind == FileKind::Directory;
    let content = !is_dir
        && (o.inode != f.inode
            || o.size != f.size
            || o.mtime_ms != f.mtime_ms
            || o.link_target != f.link_target
            || matches!((&o.sha256, &f.sha256), (Some(a), Some(b)) if a != b));
    let attrs = o.mode != f.mode || o.uid != f.uid || o.gid != f.gid;
    let mut out = Vec::new();
    for (yes, kind) in [
        (content, ChangeKind::Update),
        (attrs, ChangeKind::SetAttributes),
    ] {
        if yes {
            out.push(FsChange {
                kind,
                path: path.to_path_buf(),
                facts: Some(f.clone()),
                time_ms,
                source,
                pid: None,
            });
        }
    }
    out
}

/// Per-walk bookkeeping of watch failures.
#[derive(Default)]
pub(super) struct WalkCtx {
    /// Stop trying to add watches for the rest of this walk (limit reached).
    pub(super) limit_hit: bool,
    pub(super) limit_error: Option<String>,
    pub(super) newly_unwatched: Vec<PathBuf>,
}
