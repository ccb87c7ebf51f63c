//! The payload of one frame of the tree log: a directory's identity (`Node`), a directory's sorted
//! entries (`Entries`), a removed directory (`Drop`) or the end of a checkpoint (`Commit`).
//!
//! Little-endian, varints are LEB128. Every payload starts with `u8 type, varint checkpoint`; then
//! - `Node`: varint id, varint parent id, varint name length, name bytes;
//! - `Entries`: varint id, varint count, then per entry in byte order of the names: varint length of
//!   the prefix shared with the previous name, varint suffix length, suffix bytes, u8 kind (OCSF
//!   type_id), u8 flags (1 = sha256 follows, 2 = link target follows), varints inode, size, zigzag
//!   mtime_ms, mode, uid, gid, then 32 raw sha256 bytes and/or varint length + link target bytes
//!   (the facts are encoded as in `watch.snapshot`);
//! - `Drop`: varint id;
//! - `Commit`: nothing more (the checkpoint number is the one every payload carries).
//!
//! A `Node` record is small on purpose: renaming a directory rewrites it alone, never the
//! directory's entries, whatever their number.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use crate::audit::change::{Digest, FileFacts, FileKind};

pub const NODE: u8 = 1;
pub const ENTRIES: u8 = 2;
pub const DROP: u8 = 3;
pub const COMMIT: u8 = 4;

/// Why a payload does not decode. A payload whose frame checksum matched but does not decode was
/// written by something else than this code: it is damage like a bad checksum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// What the log scan needs of a payload without decoding a directory's entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    Node {
        checkpoint: u64,
        id: u64,
        parent: u64,
        name: Vec<u8>,
    },
    Entries {
        checkpoint: u64,
        id: u64,
        count: u64,
    },
    Drop {
        checkpoint: u64,
        id: u64,
    },
    Commit {
        checkpoint: u64,
    },
}

impl Head {
    pub fn checkpoint(&self) -> u64 {
        match self {
            Head::Node { checkpoint, .. }
            | Head::Entries { checkpoint, .. }
            | Head::Drop { checkpoint, .. }
            | Head::Commit { checkpoint } => *checkpoint,
        }
    }
}

pub fn encode_node(out: &mut Vec<u8>, checkpoint: u64, id: u64, parent: u64, name: &[u8]) {
    out.push(NODE);
    put_varint(out, checkpoint);
    put_varint(out, id);
    put_varint(out, parent);
    put_varint(out, name.len() as u64);
    out.extend_from_slice(name);
}

pub fn encode_drop(out: &mut Vec<u8>, checkpoint: u64, id: u64) {
    out.push(DROP);
    put_varint(out, checkpoint);
    put_varint(out, id);
}

pub fn encode_commit(out: &mut Vec<u8>, checkpoint: u64) {
    out.push(COMMIT);
    put_varint(out, checkpoint);
}

/// `entries` must be in byte order of the names (a `BTreeMap<Box<[u8]>, _>` iterates so).
pub fn encode_entries<'a>(
    out: &mut Vec<u8>,
    checkpoint: u64,
    id: u64,
    count: usize,
    entries: impl Iterator<Item = (&'a [u8], &'a FileFacts)>,
) {
    out.push(ENTRIES);
    put_varint(out, checkpoint);
    put_varint(out, id);
    put_varint(out, count as u64);
    let mut prev: &[u8] = &[];
    for (name, f) in entries {
        let shared = prev.iter().zip(name).take_while(|(a, b)| a == b).count();
        put_varint(out, shared as u64);
        put_varint(out, (name.len() - shared) as u64);
        out.extend_from_slice(&name[shared..]);
        put_facts(out, f);
        prev = name;
    }
}

fn put_facts(out: &mut Vec<u8>, f: &FileFacts) {
    out.push(f.kind as u8);
    let sha = f.sha256.map(|d| d.0);
    let flags = u8::from(sha.is_some()) | (u8::from(f.link_target.is_some()) << 1);
    out.push(flags);
    put_varint(out, f.inode);
    put_varint(out, f.size);
    put_varint(out, ((f.mtime_ms << 1) ^ (f.mtime_ms >> 63)) as u64);
    put_varint(out, u64::from(f.mode));
    put_varint(out, u64::from(f.uid));
    put_varint(out, u64::from(f.gid));
    if let Some(sha) = sha {
        out.extend_from_slice(&sha);
    }
    if let Some(t) = &f.link_target {
        let t = std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str());
        put_varint(out, t.len() as u64);
        out.extend_from_slice(t);
    }
}

/// The head of a payload; for `Entries` only the fields before the entries are read, so `b` may be
/// a prefix of the payload (the log scan reads at most a small window of a large record).
pub fn decode_head(b: &[u8]) -> Result<Head, RecordError> {
    let mut r = Reader { buf: b, pos: 0 };
    let ty = r.byte()?;
    let checkpoint = r.varint()?;
    match ty {
        NODE => {
            let id = r.varint()?;
            let parent = r.varint()?;
            let n = usize::try_from(r.varint()?).map_err(|_| RecordError::Malformed("name"))?;
            let name = r.take(n)?.to_vec();
            if id == 0 || name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                return Err(RecordError::Malformed("node id or name"));
            }
            Ok(Head::Node {
                checkpoint,
                id,
                parent,
                name,
            })
        }
        ENTRIES => {
            let id = r.varint()?;
            let count = r.varint()?;
            Ok(Head::Entries {
                checkpoint,
                id,
                count,
            })
        }
        DROP => Ok(Head::Drop {
            checkpoint,
            id: r.varint()?,
        }),
        COMMIT => Ok(Head::Commit { checkpoint }),
        _ => Err(RecordError::Malformed("record type")),
    }
}

/// One entry of a directory: its name and facts.
pub type Entry = (Box<[u8]>, FileFacts);

/// The entries of a whole `Entries` payload, in name order.
pub fn decode_entries(b: &[u8]) -> Result<Vec<Entry>, RecordError> {
    let mut r = Reader { buf: b, pos: 0 };
    if r.byte()? != ENTRIES {
        return Err(RecordError::Malformed("not an entries record"));
    }
    let _checkpoint = r.varint()?;
    let _id = r.varint()?;
    let count = r.varint()?;
    // Each entry takes at least 10 bytes: a count beyond that is damage, not an allocation.
    if count > (b.len() / 10) as u64 {
        return Err(RecordError::Malformed("entry count"));
    }
    let mut out: Vec<Entry> = Vec::with_capacity(count as usize);
    let mut prev: &[u8] = &[];
    for _ in 0..count {
        let shared = r.varint()? as usize;
        let suffix = r.varint()? as usize;
        if shared > prev.len() {
            return Err(RecordError::Malformed("prefix longer than previous name"));
        }
        let mut name = Vec::with_capacity(shared + suffix);
        name.extend_from_slice(&prev[..shared]);
        name.extend_from_slice(r.take(suffix)?);
        if name.as_slice() <= prev && !out.is_empty() {
            return Err(RecordError::Malformed("names out of order"));
        }
        let facts = get_facts(&mut r)?;
        out.push((name.into_boxed_slice(), facts));
        prev = out.last().map(|(n, _)| &n[..]).unwrap_or(&[]);
    }
    if r.pos != b.len() {
        return Err(RecordError::Malformed("trailing bytes"));
    }
    Ok(out)
}

fn get_facts(r: &mut Reader<'_>) -> Result<FileFacts, RecordError> {
    let kind = kind_from_u8(r.byte()?);
    let flags = r.byte()?;
    let inode = r.varint()?;
    let size = r.varint()?;
    let z = r.varint()?;
    let mtime_ms = ((z >> 1) as i64) ^ -((z & 1) as i64);
    let mode = u32::try_from(r.varint()?).map_err(|_| RecordError::Malformed("mode"))?;
    let uid = u32::try_from(r.varint()?).map_err(|_| RecordError::Malformed("uid"))?;
    let gid = u32::try_from(r.varint()?).map_err(|_| RecordError::Malformed("gid"))?;
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
    Ok(FileFacts {
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
    })
}

pub fn kind_from_u8(b: u8) -> FileKind {
    match b {
        1 => FileKind::Regular,
        2 => FileKind::Directory,
        3 => FileKind::CharDevice,
        4 => FileKind::BlockDevice,
        5 => FileKind::LocalSocket,
        6 => FileKind::NamedPipe,
        7 => FileKind::SymbolicLink,
        _ => FileKind::Unknown,
    }
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, RecordError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(RecordError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(RecordError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Malformed("varint too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kind: FileKind, inode: u64) -> FileFacts {
        FileFacts {
            kind,
            size: inode * 3,
            uid: 1000,
            gid: 100,
            mode: 0o644,
            inode,
            mtime_ms: -7,
            sha256: None,
            hash_note: None,
            link_target: None,
        }
    }

    #[test]
    fn entries_round_trip_with_hashes_links_and_odd_names() {
        let mut a = facts(FileKind::Regular, 1);
        a.sha256 = Digest::from_hex(&"0f".repeat(32));
        let mut l = facts(FileKind::SymbolicLink, 2);
        l.link_target = Some(PathBuf::from("/etc/shadow"));
        let names: Vec<Box<[u8]>> = vec![
            b"".to_vec().into(),
            b"a".to_vec().into(),
            b"ab\xff\n".to_vec().into(),
            b"b".to_vec().into(),
        ];
        let fs = [
            facts(FileKind::Directory, 9),
            a,
            l,
            facts(FileKind::NamedPipe, 4),
        ];
        let mut out = Vec::new();
        encode_entries(
            &mut out,
            5,
            42,
            names.len(),
            names.iter().map(|n| &n[..]).zip(fs.iter()),
        );
        assert_eq!(
            decode_head(&out[..6]),
            Ok(Head::Entries {
                checkpoint: 5,
                id: 42,
                count: 4
            })
        );
        let back = decode_entries(&out).expect("decode");
        let want: Vec<(Box<[u8]>, FileFacts)> = names.into_iter().zip(fs).collect();
        assert_eq!(back, want);
        for n in 0..out.len() {
            assert!(decode_entries(&out[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn heads_round_trip_and_bad_names_are_malformed() {
        let mut out = Vec::new();
        encode_node(&mut out, 3, 7, 1, b"dir");
        assert_eq!(
            decode_head(&out),
            Ok(Head::Node {
                checkpoint: 3,
                id: 7,
                parent: 1,
                name: b"dir".to_vec()
            })
        );
        for bad in [&b"a/b"[..], b"", b"a\0"] {
            let mut out = Vec::new();
            encode_node(&mut out, 3, 7, 1, bad);
            assert!(decode_head(&out).is_err());
        }
        let mut out = Vec::new();
        encode_drop(&mut out, 1, 9);
        assert_eq!(
            decode_head(&out),
            Ok(Head::Drop {
                checkpoint: 1,
                id: 9
            })
        );
        let mut out = Vec::new();
        encode_commit(&mut out, 12);
        assert_eq!(decode_head(&out), Ok(Head::Commit { checkpoint: 12 }));
        assert!(decode_head(&[9, 0]).is_err());
    }
}
