//! The file under the tree: `watch.tree`, an append-only log of framed, checksummed records.
//!
//! ```text
//! file header  b"NBTREE1\n"
//! frame        magic F7 'T' 'R' | version 1 | u32 LE payload len | u32 LE crc32(len ‖ payload) | payload
//! ```
//!
//! Opening scans every frame through a bounded window (a large record is checksummed in chunks,
//! only its first bytes are kept to read its head). A frame that does not check is never trusted:
//! the scan looks for the next frame that does and reports the bytes in between; with none after
//! it, the bad frame is a torn tail. Rewriting (compaction) goes to a temp file in the same
//! directory which is fsynced, renamed over the log and the directory fsynced: a crash leaves the
//! old log or the new one, and a leftover temp file is removed at the next open.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::record::{self, Head};

/// The log's file name inside the directory the daemon gives (the spool directory).
pub const FILE: &str = "watch.tree";
const TEMP_PREFIX: &str = ".watch.tree.";
const HEADER: &[u8; 8] = b"NBTREE1\n";
const MAGIC: [u8; 4] = [0xF7, b'T', b'R', 1];
/// Bytes of a frame before its payload.
pub const FRAME_HEADER: u64 = 12;
/// Largest payload a frame may carry (a directory of several million entries); anything longer in
/// a header is damage.
pub const MAX_PAYLOAD: u64 = 512 << 20;
/// The scan reads at most this much at once; a payload's head is read from its first bytes.
const WINDOW: usize = 256 << 10;
const HEAD_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    #[error(
        "{path}: record at byte {offset} does not check ({what}): the file changed under the agent"
    )]
    Damaged {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

/// Where a frame is: its first byte and its payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub off: u64,
    pub len: u32,
}

impl Loc {
    /// Bytes the whole frame takes.
    pub fn frame_bytes(&self) -> u64 {
        FRAME_HEADER + u64::from(self.len)
    }
}

/// A frame the scan found intact.
#[derive(Debug)]
pub struct Frame {
    pub loc: Loc,
    pub head: Head,
}

/// What the scan found besides the intact frames.
#[derive(Debug, Default)]
pub struct ScanEnd {
    /// Runs of bytes `(offset, length)` that are not intact frames, with intact frames after them.
    pub damaged: Vec<(u64, u64)>,
    /// Where the last intact frame ends; anything after it is a torn tail.
    pub good_end: u64,
    pub file_len: u64,
}

/// Appends `payload` as one frame to `out`.
pub fn put_frame(out: &mut Vec<u8>, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// The open log file.
pub struct Log {
    file: File,
    /// The directory holding the log; `None` for an anonymous log (nothing persisted).
    dir: Option<PathBuf>,
    path: PathBuf,
    len: u64,
}

impl Log {
    /// Opens `dir/watch.tree`, creating it (with its header, fsynced) when missing, and removes
    /// temp files a crash during a rewrite left. A file whose header is wrong is renamed
    /// `watch.tree.bad` (kept as evidence) and replaced: `Ok((log, Some(reason)))`.
    pub fn open(dir: &Path) -> Result<(Log, bool, Option<String>), LogError> {
        remove_temps(dir);
        let path = dir.join(FILE);
        let file = open_rw(&path, false)?;
        let len = file_len(&file, &path)?;
        if len == 0 {
            let log = Self::init(file, Some(dir.to_path_buf()), path)?;
            return Ok((log, true, None));
        }
        let mut head = [0u8; 8];
        let bad = if len < 8 {
            Some(format!("{len} bytes, shorter than the header"))
        } else {
            file.read_exact_at(&mut head, 0)
                .map_err(io_err(&path, "read"))?;
            (&head != HEADER).then(|| "not a tree log (bad header)".to_string())
        };
        if let Some(reason) = bad {
            let kept = dir.join(format!("{FILE}.bad"));
            std::fs::rename(&path, &kept).map_err(io_err(&path, "rename"))?;
            let file = open_rw(&path, true)?;
            let log = Self::init(file, Some(dir.to_path_buf()), path)?;
            return Ok((log, true, Some(reason)));
        }
        Ok((
            Log {
                file,
                dir: Some(dir.to_path_buf()),
                path,
                len,
            },
            false,
            None,
        ))
    }

    /// A log in an unlinked temp file: the tree works the same, nothing survives the process
    /// (`watch --stdout`).
    pub fn anonymous() -> Result<Log, LogError> {
        let path = std::env::temp_dir();
        let file = tempfile::tempfile().map_err(io_err(&path, "create temp file"))?;
        Self::init(file, None, path)
    }

    fn init(file: File, dir: Option<PathBuf>, path: PathBuf) -> Result<Log, LogError> {
        file.write_all_at(HEADER, 0)
            .map_err(io_err(&path, "write header"))?;
        let log = Log {
            file,
            dir,
            path,
            len: HEADER.len() as u64,
        };
        log.file
            .set_len(log.len)
            .map_err(io_err(&log.path, "truncate"))?;
        log.sync()?;
        log.sync_dir()?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the file.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Every intact frame, in file order, through a window of at most `WINDOW` bytes.
    pub fn scan(&self, mut each: impl FnMut(Frame)) -> Result<ScanEnd, LogError> {
        let file_len = self.len;
        let mut end = ScanEnd {
            file_len,
            good_end: HEADER.len() as u64,
            ..ScanEnd::default()
        };
        let mut buf = vec![0u8; WINDOW];
        let mut pos = HEADER.len() as u64;
        while pos < file_len {
            match self.check_frame(pos, &mut buf)? {
                Some(frame) => {
                    pos += frame.loc.frame_bytes();
                    end.good_end = pos;
                    each(frame);
                }
                None => match self.resync(pos + 1, &mut buf)? {
                    Some(next) => {
                        end.damaged.push((pos, next - pos));
                        pos = next;
                    }
                    None => break,
                },
            }
        }
        Ok(end)
    }

    /// The intact frame at `pos`, or `None` when there is none.
    fn check_frame(&self, pos: u64, buf: &mut [u8]) -> Result<Option<Frame>, LogError> {
        if pos + FRAME_HEADER > self.len {
            return Ok(None);
        }
        let mut h = [0u8; FRAME_HEADER as usize];
        self.read_at(&mut h, pos)?;
        if h[..4] != MAGIC {
            return Ok(None);
        }
        let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let crc = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if u64::from(len) > MAX_PAYLOAD || pos + FRAME_HEADER + u64::from(len) > self.len {
            return Ok(None);
        }
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&len.to_le_bytes());
        let mut head = Vec::new();
        let mut done = 0u64;
        while done < u64::from(len) {
            let n = (u64::from(len) - done).min(buf.len() as u64) as usize;
            self.read_at(&mut buf[..n], pos + FRAME_HEADER + done)?;
            hasher.update(&buf[..n]);
            if head.len() < HEAD_BYTES {
                let take = (HEAD_BYTES - head.len()).min(n);
                head.extend_from_slice(&buf[..take]);
            }
            done += n as u64;
        }
        if hasher.finalize() != crc {
            return Ok(None);
        }
        Ok(record::decode_head(&head).ok().map(|head| Frame {
            loc: Loc { off: pos, len },
            head,
        }))
    }

    /// The offset of the next intact frame at or after `from`.
    fn resync(&self, mut from: u64, buf: &mut [u8]) -> Result<Option<u64>, LogError> {
        let mut scratch = vec![0u8; WINDOW];
        while from + FRAME_HEADER <= self.len {
            let n = (self.len - from).min(buf.len() as u64) as usize;
            self.read_at(&mut buf[..n], from)?;
            let mut i = 0;
            while let Some(k) = buf[i..n].windows(4).position(|w| w == MAGIC) {
                let at = from + (i + k) as u64;
                if self.check_frame(at, &mut scratch)?.is_some() {
                    return Ok(Some(at));
                }
                i += k + 1;
            }
            if n < 4 {
                break;
            }
            // Overlap by three bytes so a magic split across two windows is found.
            from += (n - 3) as u64;
        }
        Ok(None)
    }

    /// The payload of the frame at `loc`, checked again: the file may have changed under us.
    pub fn read_payload(&self, loc: Loc) -> Result<Vec<u8>, LogError> {
        let mut frame = vec![0u8; loc.frame_bytes() as usize];
        self.read_at(&mut frame, loc.off)?;
        let damaged = |what: &str| LogError::Damaged {
            path: self.path.clone(),
            offset: loc.off,
            what: what.to_string(),
        };
        if frame[..4] != MAGIC {
            return Err(damaged("bad magic"));
        }
        let len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        if len != loc.len {
            return Err(damaged("length"));
        }
        let crc = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
        let mut h = crc32fast::Hasher::new();
        h.update(&len.to_le_bytes());
        h.update(&frame[FRAME_HEADER as usize..]);
        if h.finalize() != crc {
            return Err(damaged("checksum"));
        }
        frame.drain(..FRAME_HEADER as usize);
        Ok(frame)
    }

    /// The whole frame at `loc` (for copying into a rewritten log), checked.
    pub fn read_frame(&self, loc: Loc) -> Result<Vec<u8>, LogError> {
        let payload = self.read_payload(loc)?;
        let mut out = Vec::with_capacity(payload.len() + FRAME_HEADER as usize);
        put_frame(&mut out, &payload);
        Ok(out)
    }

    /// Writes already framed bytes at the end (no fsync); returns where they start.
    pub fn append(&mut self, frames: &[u8]) -> Result<u64, LogError> {
        let at = self.len;
        self.file
            .write_all_at(frames, at)
            .map_err(io_err(&self.path, "write"))?;
        self.len += frames.len() as u64;
        Ok(at)
    }

    /// Cuts the file at `at` (a torn or uncommitted tail) and makes that durable.
    pub fn truncate(&mut self, at: u64) -> Result<(), LogError> {
        self.file
            .set_len(at)
            .map_err(io_err(&self.path, "truncate"))?;
        self.len = at;
        self.sync()
    }

    /// Everything appended so far is durable once this returns.
    pub fn sync(&self) -> Result<(), LogError> {
        if self.dir.is_none() {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(io_err(&self.path, "fdatasync"))
    }

    fn sync_dir(&self) -> Result<(), LogError> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir, "fsync directory"))
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<(), LogError> {
        self.file
            .read_exact_at(buf, off)
            .map_err(io_err(&self.path, "read"))
    }

    /// A new log to be filled by [`Rewrite::append`] and put in place by [`Rewrite::finish`].
    pub fn rewrite(&self) -> Result<Rewrite, LogError> {
        let (file, path) = match &self.dir {
            Some(dir) => {
                let tmp = tempfile::Builder::new()
                    .prefix(TEMP_PREFIX)
                    .tempfile_in(dir)
                    .map_err(io_err(dir, "create temp file"))?;
                let (file, path) = tmp.keep().map_err(|e| LogError::Io {
                    path: dir.clone(),
                    op: "keep temp file",
                    source: e.error,
                })?;
                (file, path)
            }
            None => {
                let path = std::env::temp_dir();
                let file = tempfile::tempfile().map_err(io_err(&path, "create temp file"))?;
                (file, path)
            }
        };
        let mut w = Rewrite {
            file: std::io::BufWriter::with_capacity(WINDOW, file),
            temp: path,
            dir: self.dir.clone(),
            target: self.path.clone(),
            len: 0,
        };
        w.append(HEADER)?;
        Ok(w)
    }
}

/// A log being written anew (compaction).
pub struct Rewrite {
    file: std::io::BufWriter<File>,
    temp: PathBuf,
    dir: Option<PathBuf>,
    target: PathBuf,
    len: u64,
}

impl Rewrite {
    pub fn append(&mut self, bytes: &[u8]) -> Result<u64, LogError> {
        let at = self.len;
        self.file
            .write_all(bytes)
            .map_err(io_err(&self.temp, "write"))?;
        self.len += bytes.len() as u64;
        Ok(at)
    }

    /// Written and fsynced, not yet renamed over the log: what a crash between the two leaves.
    pub fn write_out(self) -> Result<(File, PathBuf, Option<PathBuf>, PathBuf, u64), LogError> {
        let file = self.file.into_inner().map_err(|e| LogError::Io {
            path: self.temp.clone(),
            op: "write",
            source: e.into_error(),
        })?;
        if self.dir.is_some() {
            file.sync_all().map_err(io_err(&self.temp, "fsync"))?;
        }
        Ok((file, self.temp, self.dir, self.target, self.len))
    }

    /// Fsync, rename over the log, fsync the directory: the new log replaces the old one.
    pub fn finish(self) -> Result<Log, LogError> {
        let (file, temp, dir, target, len) = self.write_out()?;
        if let Some(d) = &dir {
            std::fs::rename(&temp, &target).map_err(io_err(&temp, "rename"))?;
            File::open(d)
                .and_then(|f| f.sync_all())
                .map_err(io_err(d, "fsync directory"))?;
        }
        Ok(Log {
            file,
            dir,
            path: target,
            len,
        })
    }
}

fn open_rw(path: &Path, create_new: bool) -> Result<File, LogError> {
    let mut o = OpenOptions::new();
    o.read(true).write(true).mode(0o600);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err(path, "open"))
}

fn file_len(file: &File, path: &Path) -> Result<u64, LogError> {
    file.metadata()
        .map(|m| m.len())
        .map_err(io_err(path, "stat"))
}

/// Temp files of a rewrite that a crash left behind: the log itself was never replaced by them.
fn remove_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if name.as_encoded_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            if let Err(err) = std::fs::remove_file(e.path()) {
                tracing::warn!(path = %e.path().display(), error = %err, "Cannot remove a leftover temp file of the watch tree.");
            }
        }
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}
