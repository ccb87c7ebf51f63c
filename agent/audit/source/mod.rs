//! Where file-system events come from: one vocabulary ([`RawEvent`]) that every event source
//! yields, so the processor (`watcher`) never sees an inotify watch descriptor or a fanotify file
//! handle. docs/WATCHER-DESIGN.md has the plan. `fanotify` is a [`Source`] as it stands;
//! `inotify` has a reader half and a processor half (its watch paths must be resolved in the
//! processor's order), and its processor half decodes into the same [`RawEvent`]s.
//!
//! Facts the vocabulary follows from (fanotify(7), inotify(7), measured on 6.18):
//! - fanotify reports the acting process (`pid`), inotify never does (`pid: None`).
//! - Neither has a timestamp: `time_ms` is when the source read the event, an upper bound of when
//!   it happened.
//! - Paths: inotify names a watched directory by its descriptor, fanotify by a file handle; both
//!   sources turn that into the directory's path *as it is when the event is read*. A directory
//!   renamed between the event and its reading is named by its new path (the processor checks
//!   every path with `lstat` anyway).
//! - A rename: fanotify's `FAN_RENAME` (5.17+) gives both ends in one event ([`Op::Rename`]);
//!   inotify and older fanotify give a `MovedFrom`/`MovedTo` pair. inotify pairs them by the
//!   kernel's cookie; fanotify has no cookie, so its source makes one up (see `fanotify`).
//! - A rename across the edge of the audited scope is what the scope saw: a `Delete` (moved out)
//!   or a `Create` (moved in).

pub mod fanotify;
pub mod inotify;

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// What happened to `dir/name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create,
    Modify,
    /// A writer closed the file.
    CloseWrite,
    /// A reader closed the file (the opt-in read audit; only a source asked for reads yields it).
    CloseNoWrite,
    /// Mode, owner, timestamps or link count changed.
    Attrib,
    Delete,
    /// First half of a rename; `cookie` pairs it with its [`Op::MovedTo`]. A `MovedFrom` whose
    /// partner never comes is a move out of the scope.
    MovedFrom {
        cookie: u32,
    },
    MovedTo {
        cookie: u32,
    },
    /// A whole rename: `from_dir/from_name` → `dir/name`.
    Rename {
        from_dir: PathBuf,
        from_name: OsString,
    },
    /// Events were lost (the kernel queue overflowed): everything below every root may have
    /// changed unseen. `dir` is empty, `name` too.
    Overflow,
}

/// One event, as every source yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The directory the entry is in (absolute). Empty for [`Op::Overflow`].
    pub dir: PathBuf,
    /// The entry's name in `dir`; empty when the event is about `dir` itself (e.g. `chmod` of a
    /// root directory).
    pub name: OsString,
    pub op: Op,
    /// The entry is a directory.
    pub is_dir: bool,
    /// The process that acted (thread-group id, in the agent's pid namespace). `None` when the
    /// source cannot say (inotify) or the process is outside the agent's pid namespace.
    pub pid: Option<u32>,
    /// When the source read the event, ms since the epoch.
    pub time_ms: i64,
}

impl RawEvent {
    /// `dir/name` (just `dir` when `name` is empty).
    pub fn path(&self) -> PathBuf {
        if self.name.is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(&self.name)
        }
    }
}

/// Which source runs: named in `status`, the Start record and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Fanotify,
    Inotify,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Fanotify => "fanotify",
            SourceKind::Inotify => "inotify",
        })
    }
}

/// An event source: a blocking reader of [`RawEvent`]s. Owned by one reader thread.
pub trait Source: Send {
    fn kind(&self) -> SourceKind;
    /// Waits up to `timeout` (forever with `None`) for events and appends what it read to `out`
    /// (nothing on a timeout or `EINTR`). An error is the source failing for good.
    fn read(&mut self, out: &mut Vec<RawEvent>, timeout: Option<Duration>) -> std::io::Result<()>;
}

/// What is audited: paths below a root, minus excluded paths and names. The same rules as the
/// processor's (`watcher.rs`): a glob matches one path component (`*` does not cross `/`).
#[derive(Debug, Clone)]
pub struct Scope {
    roots: Vec<PathBuf>,
    exclude_paths: Vec<PathBuf>,
    exclude_globs: GlobSet,
}

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("audit path {0} is not absolute")]
    NotAbsolute(PathBuf),
    #[error("invalid exclude pattern {pattern:?}: {error}")]
    BadGlob { pattern: String, error: String },
}

impl Scope {
    pub fn new(
        roots: Vec<PathBuf>,
        exclude_paths: Vec<PathBuf>,
        exclude_globs: &[String],
    ) -> Result<Self, ScopeError> {
        if let Some(r) = roots.iter().find(|r| !r.is_absolute()) {
            return Err(ScopeError::NotAbsolute(r.clone()));
        }
        let mut b = GlobSetBuilder::new();
        for p in exclude_globs {
            let g = GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| ScopeError::BadGlob {
                    pattern: p.clone(),
                    error: e.to_string(),
                })?;
            b.add(g);
        }
        let exclude_globs = b.build().map_err(|e| ScopeError::BadGlob {
            pattern: exclude_globs.join(","),
            error: e.to_string(),
        })?;
        Ok(Self {
            roots,
            exclude_paths,
            exclude_globs,
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `path` is a root or below one, and neither it nor a directory above it (below the root)
    /// is excluded.
    pub fn contains(&self, path: &Path) -> bool {
        if self.exclude_paths.iter().any(|x| path.starts_with(x)) {
            return false;
        }
        let Some(root) = self
            .roots
            .iter()
            .filter(|r| path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
        else {
            return false;
        };
        match path.strip_prefix(root) {
            Ok(rel) => !rel.components().any(|c| match c {
                Component::Normal(n) => self.is_excluded_name(n),
                // A resolved path never has `..`; refuse one rather than reason about it.
                Component::ParentDir => true,
                _ => false,
            }),
            Err(_) => false,
        }
    }

    /// Whether a directory may hold something in scope: it is in scope, or a root lies below it.
    pub fn may_contain(&self, dir: &Path) -> bool {
        self.contains(dir) || self.roots.iter().any(|r| r.starts_with(dir))
    }

    fn is_excluded_name(&self, name: &OsStr) -> bool {
        self.exclude_globs.is_match(Path::new(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_keeps_roots_and_drops_excluded_names_and_paths() {
        let s = Scope::new(
            vec!["/h/SageMaker".into()],
            vec!["/h/SageMaker/.notebook-agent".into()],
            &[".ipynb_checkpoints".into(), ".Trash-*".into()],
        )
        .unwrap();
        assert!(s.contains(Path::new("/h/SageMaker")));
        assert!(s.contains(Path::new("/h/SageMaker/a/b.py")));
        assert!(!s.contains(Path::new("/h/SageMakerX/a")));
        assert!(!s.contains(Path::new("/h/other")));
        assert!(!s.contains(Path::new("/h/SageMaker/x/.ipynb_checkpoints/a")));
        assert!(!s.contains(Path::new("/h/SageMaker/.Trash-1000")));
        assert!(!s.contains(Path::new("/h/SageMaker/.notebook-agent/spool")));
        assert!(s.may_contain(Path::new("/h")));
        assert!(!s.may_contain(Path::new("/h/other")));
        assert!(matches!(
            Scope::new(vec!["rel".into()], vec![], &[]),
            Err(ScopeError::NotAbsolute(_))
        ));
    }

    #[test]
    fn source_kind_displays_its_name() {
        assert_eq!(SourceKind::Fanotify.to_string(), "fanotify");
        assert_eq!(SourceKind::Inotify.to_string(), "inotify");
    }
}
