//! The compact snapshot of the watched tree (one entry per path: inode, size, mtime, mode, owner,
//! kind, sha256 when known, symlink target), persisted by the daemon into the spool directory and
//! compared with the startup scan so that changes made while the agent was down are reported
//! ([`catch_up`], `Source::CatchUp`). The same comparison ([`diff`]) serves the watcher's rescans.
//!
//! File format (`watch.snapshot`), little-endian, varints are LEB128:
//! `b"NBSNAP1\n"`, varint entry count, then per entry in path order: varint length of the prefix
//! shared with the previous path, varint suffix length, suffix bytes, u8 kind (OCSF type_id),
//! u8 flags (1 = sha256 follows, 2 = link target follows), varints inode, size, zigzag mtime_ms,
//! mode, uid, gid, then 32 raw sha256 bytes and/or varint length + link target bytes; finally the
//! u32 crc32 of everything before it. Front coding keeps 100,000 entries around 3 MB.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::change::{
    now_ms, AgentEvent, ChangeKind, Digest, FileFacts, FileKind, FsChange, Source,
};
use super::tree::record::{kind_from_u8, put_varint};

/// The file name of the snapshot inside the directory the daemon gives.
pub const SNAPSHOT_FILE: &str = "watch.snapshot";
const MAGIC: &[u8; 8] = b"NBSNAP1\n";

/// The known state of the watched tree: every path (roots included) with its `lstat` facts.
/// `sha256` is kept when the pipeline filled it in; the watcher itself never hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: BTreeMap<PathBuf, FileFacts>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a snapshot (bad magic)")]
    BadMagic,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed entry {index}: {what}")]
    Malformed { index: u64, what: &'static str },
}

/// What [`Snapshot::load`] found.
#[derive(Debug)]
pub enum Loaded {
    Found(Snapshot),
    /// No snapshot file (first start, or it was deleted).
    Missing,
    /// Unreadable or corrupt: treated as empty, and worth an agent event.
    Corrupt {
        path: PathBuf,
        reason: String,
    },
}

impl Loaded {
    /// The snapshot to compare against (empty unless found) and, for a corrupt one, the
    /// `AgentEvent::SpoolTamper` the daemon should emit. A missing file is not reported here: the
    /// daemon knows whether this is a first start.
    pub fn into_parts(self) -> (Snapshot, Option<AgentEvent>) {
        match self {
            Loaded::Found(s) => (s, None),
            Loaded::Missing => (Snapshot::default(), None),
            Loaded::Corrupt { path, reason } => (
                Snapshot::default(),
                Some(AgentEvent::SpoolTamper {
                    path,
                    what: format!("watch snapshot unusable: {reason}"),
                }),
            ),
        }
    }
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The compact encoding described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.entries.len() * 32);
        out.extend_from_slice(MAGIC);
        put_varint(&mut out, self.entries.len() as u64);
        let mut prev: &[u8] = &[];
        for (path, f) in &self.entries {
            let bytes = path.as_os_str().as_bytes();
            let shared = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
            put_varint(&mut out, shared as u64);
            put_varint(&mut out, (bytes.len() - shared) as u64);
            out.extend_from_slice(&bytes[shared..]);
            out.push(f.kind as u8);
            let sha = f.sha256.map(|d| d.0);
            let flags = u8::from(sha.is_some()) | (u8::from(f.link_target.is_some()) << 1);
            out.push(flags);
            put_varint(&mut out, f.inode);
            put_varint(&mut out, f.size);
            put_varint(&mut out, ((f.mtime_ms << 1) ^ (f.mtime_ms >> 63)) as u64);
            put_varint(&mut out, u64::from(f.mode));
            put_varint(&mut out, u64::from(f.uid));
            put_varint(&mut out, u64::from(f.gid));
            if let Some(sha) = sha {
                out.extend_from_slice(&sha);
            }
            if let Some(t) = &f.link_target {
                let t = t.as_os_str().as_bytes();
                put_varint(&mut out, t.len() as u64);
                out.extend_from_slice(t);
            }
            prev = bytes;
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
        if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let (body, tail) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let computed = crc32fast::hash(body);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        let mut r = Reader {
            buf: body,
            pos: MAGIC.len(),
        };
        let count = r.varint()?;
        let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 24));
        let mut prev: Vec<u8> = Vec::new();
        for index in 0..count {
            let shared = r.varint()? as usize;
            let suffix_len = r.varint()? as usize;
            if shared > prev.len() {
                return Err(SnapshotError::Malformed {
                    index,
                    what: "prefix longer than previous path",
                });
            }
            let mut path = prev[..shared].to_vec();
            path.extend_from_slice(r.take(suffix_len)?);
            let kind = kind_from_u8(r.byte()?);
            let flags = r.byte()?;
            let inode = r.varint()?;
            let size = r.varint()?;
            let z = r.varint()?;
            let mtime_ms = ((z >> 1) as i64) ^ -((z & 1) as i64);
            let mode = u32::try_from(r.varint()?).map_err(|_| SnapshotError::Malformed {
                index,
                what: "mode",
            })?;
            let uid = u32::try_from(r.varint()?)
                .map_err(|_| SnapshotError::Malformed { index, what: "uid" })?;
            let gid = u32::try_from(r.varint()?)
                .map_err(|_| SnapshotError::Malformed { index, what: "gid" })?;
            let sha256 = if flags & 1 != 0 {
                Digest::from_slice(r.take(32)?)
            } else {
                None
            };
            let link_target = if flags & 2 != 0 {
                let n = r.varint()? as usize;
                Some(PathBuf::from(OsString::from_vec(r.take(n)?.to_vec())))
            } else {
                None
            };
            let facts = FileFacts {
                kind,
                size,
                uid,
                gid,
                mode,
                inode,
                mtime_ms,
                sha256,
                hash_note: None,
                link_target,
            };
            prev = path.clone();
            entries.push((PathBuf::from(OsString::from_vec(path)), facts));
        }
        if r.pos != body.len() {
            return Err(SnapshotError::Malformed {
                index: count,
                what: "trailing bytes",
            });
        }
        // Written in path order: from_iter's sort finds one run and builds the tree in bulk.
        Ok(Snapshot {
            entries: entries.into_iter().collect(),
        })
    }

    /// Persist into `dir` (the spool directory): temp file in the same directory, fsync, rename,
    /// fsync of the directory — a crash leaves either the old or the new snapshot, never half of one.
    pub fn save(&self, dir: &Path) -> std::io::Result<PathBuf> {
        save_encoded(&self.encode(), dir)
    }

    /// Load `dir/watch.snapshot`; never fails (see [`Loaded`]).
    pub fn load(dir: &Path) -> Loaded {
        let path = dir.join(SNAPSHOT_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => match Snapshot::decode(&bytes) {
                Ok(s) => Loaded::Found(s),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "Watch snapshot is corrupt; treating it as empty.");
                    Loaded::Corrupt {
                        path,
                        reason: e.to_string(),
                    }
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Watch snapshot unreadable; treating it as empty.");
                Loaded::Corrupt {
                    path,
                    reason: e.to_string(),
                }
            }
        }
    }
}

/// Changes made while the agent was down: `diff(snapshot, current scan)` with `Source::CatchUp`.
pub fn catch_up(snapshot: &Snapshot, current: &Snapshot) -> Vec<FsChange> {
    diff(&snapshot.entries, &current.entries, Source::CatchUp)
}

/// What turns `old` into `new`, in this order: renames, creates (parents first), updates and
/// attribute changes, deletes (children first).
///
/// - A path only in `new` whose inode, kind, size and mtime match a path only in `old` is a
///   `Rename` (rename keeps all four); inside a renamed directory only the top is reported.
/// - A path in both with another inode: a `Rename` onto it when the inode matches a vanished path
///   (`mv a b` over an existing `b`), else `Update` (replaced, e.g. an editor's atomic save), or
///   `Delete` + `Create` when the kind changed.
/// - Same inode: `Update` when size or mtime changed (or both sha256 are known and differ) for a
///   non-directory; `SetAttributes` when mode/uid/gid changed (both may be emitted). A directory's
///   own size/mtime follow its children and are ignored.
pub fn diff(
    old: &BTreeMap<PathBuf, FileFacts>,
    new: &BTreeMap<PathBuf, FileFacts>,
    source: Source,
) -> Vec<FsChange> {
    let time_ms = now_ms();
    let ev = |kind: ChangeKind, path: &Path, facts: &FileFacts| FsChange {
        kind,
        path: path.to_path_buf(),
        facts: Some(facts.clone()),
        time_ms,
        source,
        pid: None,
    };
    // One merge-join over the two path-ordered maps (no per-path lookups: `Path` compares
    // component by component, which dominated the cost at 100,000 entries).
    enum Side<'a> {
        Old(&'a FileFacts),
        New(&'a FileFacts),
        Both(&'a FileFacts, &'a FileFacts),
    }
    let mut merged: Vec<(&Path, Side<'_>)> = Vec::with_capacity(new.len().max(old.len()));
    let (mut oi, mut ni) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (oi.peek(), ni.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((op, _)), Some((np, _))) => op.as_path().cmp(np.as_path()),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((p, o)) = oi.next() {
                    merged.push((p.as_path(), Side::Old(o)));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((p, f)) = ni.next() {
                    merged.push((p.as_path(), Side::New(f)));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((p, o)), Some((_, f))) = (oi.next(), ni.next()) {
                    merged.push((p.as_path(), Side::Both(o, f)));
                }
            }
        }
    }
    let vanished: HashMap<u64, (&Path, &FileFacts)> = merged
        .iter()
        .filter_map(|(p, s)| match s {
            Side::Old(o) => Some((o.inode, (*p, *o))),
            _ => None,
        })
        .collect();
    let same_file = |a: &FileFacts, b: &FileFacts| {
        a.inode == b.inode
            && a.kind == b.kind
            && (a.kind == FileKind::Directory || (a.size == b.size && a.mtime_ms == b.mtime_ms))
    };
    // new path -> old path
    let mut renamed: HashMap<&Path, &Path> = HashMap::new();
    if !vanished.is_empty() {
        for (p, s) in &merged {
            let f = match s {
                Side::New(f) => *f,
                Side::Both(o, f) if o.inode != f.inode && o.kind == f.kind => *f,
                _ => continue,
            };
            if let Some((from, o)) = vanished.get(&f.inode) {
                if same_file(o, f) {
                    renamed.insert(*p, *from);
                }
            }
        }
    }
    let consumed: std::collections::HashSet<&Path> = renamed.values().copied().collect();

    let mut renames = Vec::new();
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut deletes = Vec::new();
    for (p, s) in &merged {
        let p = *p;
        if let Side::New(f) | Side::Both(_, f) = s {
            if let Some(from) = renamed.get(p) {
                // Inside a renamed directory: implied by the directory's own rename.
                let implied = match (p.parent(), from.parent()) {
                    (Some(np), Some(op)) => {
                        renamed.get(np) == Some(&op) && p.file_name() == from.file_name()
                    }
                    _ => false,
                };
                if !implied {
                    renames.push(ev(
                        ChangeKind::Rename {
                            from: from.to_path_buf(),
                        },
                        p,
                        f,
                    ));
                }
                continue;
            }
        }
        match s {
            Side::Old(_) => {}
            Side::New(f) => creates.push(ev(ChangeKind::Create, p, f)),
            Side::Both(o, f) if o.kind != f.kind => {
                deletes.push(ev(ChangeKind::Delete, p, o));
                creates.push(ev(ChangeKind::Create, p, f));
            }
            Side::Both(o, f) => {
                let is_dir = f.kind == FileKind::Directory;
                let content = !is_dir
                    && (o.inode != f.inode
                        || o.size != f.size
                        || o.mtime_ms != f.mtime_ms
                        || o.link_target != f.link_target
                        || matches!((&o.sha256, &f.sha256), (Some(a), Some(b)) if a != b));
                let attrs = o.mode != f.mode || o.uid != f.uid || o.gid != f.gid;
                if content {
                    updates.push(ev(ChangeKind::Update, p, f));
                }
                if attrs {
                    updates.push(ev(ChangeKind::SetAttributes, p, f));
                }
            }
        }
    }
    for (p, s) in merged.iter().rev() {
        if let Side::Old(o) = s {
            if !consumed.contains(p) {
                deletes.push(ev(ChangeKind::Delete, p, o));
            }
        }
    }
    renames.extend(creates);
    renames.extend(updates);
    renames.extend(deletes);
    renames
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, SnapshotError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(SnapshotError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(SnapshotError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SnapshotError::Truncated(self.pos))
    }
}

/// [`Snapshot::save`] of bytes made by [`Snapshot::encode`] (the watcher encodes its tree in place
/// rather than copying it: a copy of 100,000 entries costs tens of MB, the encoding 2.5 MB).
pub fn save_encoded(bytes: &[u8], dir: &Path) -> std::io::Result<PathBuf> {
    let target = dir.join(SNAPSHOT_FILE);
    let mut tmp = tempfile::Builder::new()
        .prefix(".watch.snapshot.")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(&target).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: FileKind, inode: u64, size: u64, mtime_ms: i64, mode: u32) -> FileFacts {
        FileFacts {
            kind,
            size,
            uid: 1000,
            gid: 1000,
            mode,
            inode,
            mtime_ms,
            sha256: None,
            hash_note: None,
            link_target: None,
        }
    }

    fn snap(items: &[(&str, FileFacts)]) -> Snapshot {
        Snapshot {
            entries: items
                .iter()
                .map(|(p, f)| (PathBuf::from(p), f.clone()))
                .collect(),
        }
    }

    #[test]
    fn encode_decode_round_trip_with_odd_names_sha_and_links() {
        let mut f = facts(FileKind::Regular, 7, 12, -5, 0o4755);
        f.sha256 = Digest::from_hex(&"ab".repeat(32));
        let mut l = facts(FileKind::SymbolicLink, 8, 11, 1_700_000_000_123, 0o777);
        l.link_target = Some(PathBuf::from("/etc/shadow"));
        let bad = PathBuf::from(OsString::from_vec(b"/r/bad\xff\nname\"".to_vec()));
        let mut s = snap(&[
            ("/r", facts(FileKind::Directory, 1, 4096, 0, 0o755)),
            ("/r/a", f),
            ("/r/l", l),
        ]);
        s.entries
            .insert(bad, facts(FileKind::NamedPipe, 9, 0, 3, 0o600));
        let enc = s.encode();
        assert_eq!(Snapshot::decode(&enc), Ok(s));
    }

    #[test]
    fn corrupt_and_truncated_snapshots_are_errors_not_panics() {
        let s = snap(&[("/r", facts(FileKind::Directory, 1, 0, 0, 0o755))]);
        let enc = s.encode();
        let mut flipped = enc.clone();
        flipped[10] ^= 1;
        assert!(matches!(
            Snapshot::decode(&flipped),
            Err(SnapshotError::Checksum { .. })
        ));
        for n in 0..enc.len() {
            assert!(Snapshot::decode(&enc[..n]).is_err());
        }
        assert_eq!(
            Snapshot::decode(b"garbage garbage"),
            Err(SnapshotError::BadMagic)
        );
    }

    #[test]
    fn save_and_load_missing_and_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(Snapshot::load(dir.path()), Loaded::Missing));
        let s = snap(&[("/r/x", facts(FileKind::Regular, 2, 1, 1, 0o644))]);
        s.save(dir.path()).expect("save");
        match Snapshot::load(dir.path()) {
            Loaded::Found(l) => assert_eq!(l, s),
            other => panic!("unexpected {other:?}"),
        }
        std::fs::write(dir.path().join(SNAPSHOT_FILE), b"NBSNAP1\nxxxx").expect("write");
        let (empty, event) = Snapshot::load(dir.path()).into_parts();
        assert!(empty.is_empty());
        assert!(matches!(event, Some(AgentEvent::SpoolTamper { .. })));
    }

    #[test]
    fn diff_reports_each_kind_once() {
        let d = facts(FileKind::Directory, 1, 0, 0, 0o755);
        let old = snap(&[
            ("/r", d.clone()),
            ("/r/gone", facts(FileKind::Regular, 2, 1, 1, 0o644)),
            ("/r/written", facts(FileKind::Regular, 3, 1, 1, 0o644)),
            ("/r/chmod", facts(FileKind::Regular, 4, 1, 1, 0o644)),
            ("/r/old", facts(FileKind::Regular, 5, 9, 9, 0o644)),
            ("/r/dir", facts(FileKind::Directory, 6, 0, 0, 0o755)),
            ("/r/dir/inner", facts(FileKind::Regular, 7, 1, 1, 0o644)),
        ]);
        let new = snap(&[
            ("/r", facts(FileKind::Directory, 1, 99, 99, 0o755)),
            ("/r/new", facts(FileKind::Regular, 10, 1, 1, 0o644)),
            ("/r/written", facts(FileKind::Regular, 3, 2, 2, 0o644)),
            ("/r/chmod", facts(FileKind::Regular, 4, 1, 1, 0o600)),
            ("/r/renamed", facts(FileKind::Regular, 5, 9, 9, 0o644)),
            ("/r/dir2", facts(FileKind::Directory, 6, 0, 5, 0o755)),
            ("/r/dir2/inner", facts(FileKind::Regular, 7, 1, 1, 0o644)),
        ]);
        let got: Vec<(u8, String, Option<String>)> = catch_up(&old, &new)
            .into_iter()
            .map(|c| {
                let from = match &c.kind {
                    ChangeKind::Rename { from } => Some(from.display().to_string()),
                    _ => None,
                };
                assert_eq!(c.source, Source::CatchUp);
                (c.kind.activity_id(), c.path.display().to_string(), from)
            })
            .collect();
        let mut want = vec![
            (5, "/r/dir2".to_string(), Some("/r/dir".to_string())),
            (5, "/r/renamed".to_string(), Some("/r/old".to_string())),
            (1, "/r/new".to_string(), None),
            (6, "/r/chmod".to_string(), None),
            (3, "/r/written".to_string(), None),
            (4, "/r/gone".to_string(), None),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "{got:?}");
    }

    #[test]
    fn rename_over_existing_file_is_one_rename() {
        let old = snap(&[
            ("/r/a", facts(FileKind::Regular, 2, 5, 5, 0o644)),
            ("/r/b", facts(FileKind::Regular, 3, 1, 1, 0o644)),
        ]);
        let new = snap(&[("/r/b", facts(FileKind::Regular, 2, 5, 5, 0o644))]);
        let got = diff(&old.entries, &new.entries, Source::Rescan);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            got[0].kind,
            ChangeKind::Rename {
                from: PathBuf::from("/r/a")
            }
        );
    }
}
