//! The spool's frame decoder and torn-tail recovery, through the real `spool::open` on a
//! directory in /dev/shm (tmpfs: the fsyncs cost nothing). Input: one mode byte, then one segment
//! file. libFuzzer cannot forge a CRC32, so with mode bit 0 set every complete frame's CRC is
//! recomputed before the file is written (bit 1 spares the last one): the sequence numbers, times
//! and lengths behind a valid checksum get explored too, not only the checksum check.
//!
//! Invariants, against a decoder written here from the format in `agent/audit/spool.rs`'s module
//! docs: `open` never fails or panics on a damaged segment; it truncates the file exactly at the
//! end of the last good frame (a good frame has the magic and version, a length ≤ 4 MiB, all its
//! bytes, a matching CRC and a sequence in 1..=MAX_SEQ above the previous frame's) and reports
//! the bytes it cut; the reader returns exactly the good frames (so never one whose CRC does not
//! match); and the spool still works afterwards: a record appended after recovery gets the next
//! sequence number and reads back.
#![no_main]

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use notebook_agent::audit::spool::{self, Record, SpoolOptions};

const MAGIC: [u8; 4] = [0xF7, b'S', b'P', 1];
const HEADER_LEN: usize = 28;
const MAX_PAYLOAD: usize = 4 << 20;
const SEGMENT: &str = "seg-00000000000000000001.log";

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The good frames at the start of `b` and the offset just after the last one.
fn decode(b: &[u8]) -> (Vec<Record>, usize) {
    let mut out: Vec<Record> = Vec::new();
    let mut off = 0;
    loop {
        let f = &b[off..];
        if f.len() < HEADER_LEN || f[..4] != MAGIC {
            break;
        }
        let len = u32_at(f, 4) as usize;
        if len > MAX_PAYLOAD || f.len() < HEADER_LEN + len {
            break;
        }
        let seq = u64_at(f, 12);
        let time_ms = u64_at(f, 20) as i64;
        let payload = &f[HEADER_LEN..HEADER_LEN + len];
        if crc(len as u32, seq, time_ms, payload) != u32_at(f, 8)
            || seq == 0
            || seq > spool::MAX_SEQ
            || out.last().is_some_and(|p| seq <= p.seq)
        {
            break;
        }
        out.push(Record {
            seq,
            time_ms,
            payload: payload.to_vec(),
        });
        off += HEADER_LEN + len;
    }
    (out, off)
}

fn shm() -> &'static Path {
    let p = Path::new("/dev/shm");
    if p.is_dir() {
        p
    } else {
        Path::new("/tmp")
    }
}

fn crc(len: u32, seq: u64, time_ms: i64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&time_ms.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Rewrites the CRC of every complete frame with the right magic and a possible length.
fn fix_crcs(b: &mut [u8], spare_last: bool) {
    let mut off = 0;
    let mut last = None;
    while b.len() - off >= HEADER_LEN && b[off..off + 4] == MAGIC {
        let len = u32_at(&b[off..], 4) as usize;
        if len > MAX_PAYLOAD || b.len() - off < HEADER_LEN + len {
            break;
        }
        let f = &b[off..];
        let c = crc(
            len as u32,
            u64_at(f, 12),
            u64_at(f, 20) as i64,
            &f[HEADER_LEN..HEADER_LEN + len],
        );
        last = Some((off, u32_at(f, 8)));
        b[off + 8..off + 12].copy_from_slice(&c.to_le_bytes());
        off += HEADER_LEN + len;
    }
    if let (true, Some((at, old))) = (spare_last, last) {
        b[at + 8..at + 12].copy_from_slice(&old.to_le_bytes());
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let mut owned = rest.to_vec();
    if mode & 1 != 0 {
        fix_crcs(&mut owned, mode & 2 != 0);
    }
    let data = &owned[..];
    let (frames, good) = decode(data);

    let tmp = tempfile::tempdir_in(shm()).expect("temp dir");
    let dir = tmp.path().join("spool");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .expect("spool dir");
    std::fs::write(dir.join(SEGMENT), data).expect("segment");

    let (mut writer, mut reader, report) =
        spool::open(&dir, SpoolOptions::default()).expect("open must repair, not fail");
    let on_disk = std::fs::metadata(dir.join(SEGMENT))
        .expect("the only segment is kept")
        .len();
    assert_eq!(on_disk, good as u64, "not truncated at the last good frame");
    assert_eq!(
        report.truncated_bytes,
        (data.len() - good) as u64,
        "reported cut differs"
    );

    let first_unread = reader.acked_seq();
    let got = reader
        .read_from(first_unread, usize::MAX, usize::MAX)
        .expect("read");
    assert_eq!(got, frames, "the reader's records are not the good frames");

    // Recovery left a working spool: the next record follows on.
    let next = frames.last().map_or(1, |f| f.seq + 1);
    writer
        .append(7, |seq| format!("{{\"seq\":{seq}}}").into_bytes())
        .expect("append");
    writer.sync().expect("sync");
    let after = frames.last().map_or(first_unread, |f| f.seq);
    let more = reader.read_from(after, 10, 1 << 20).expect("read again");
    assert_eq!(more.len(), 1, "the appended record is not readable");
    assert_eq!(more[0].seq, next, "the appended record's sequence");
    assert_eq!(more[0].payload, format!("{{\"seq\":{next}}}").into_bytes());
});
