//! The spool through its public API: round trips, restarts, acks, damaged tails, a writer killed
//! with SIGKILL mid-stream, the size cap, a symlinked directory, and writer/reader on two threads.
//! Everything happens in a tempdir.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use notebook_agent::audit::spool::{
    open, Anomaly, Appended, Damage, Record, SpoolError, SpoolOptions, SpoolReader, SpoolWriter,
};

fn opts(segment_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        max_bytes: 1 << 30,
        segment_bytes,
        sync_interval: Duration::from_millis(100),
        ..SpoolOptions::default()
    }
}

fn payload(seq: u64) -> Vec<u8> {
    format!(
        "{{\"class_uid\":1001,\"metadata\":{{\"sequence\":{seq}}},\"file\":{{\"path\":\"/home/ec2-user/SageMaker/f{seq}.ipynb\"}}}}"
    )
    .into_bytes()
}

fn open_spool(dir: &Path, o: SpoolOptions) -> (SpoolWriter, SpoolReader) {
    let (w, r, _) = open(dir, o).expect("open spool");
    (w, r)
}

fn read_all(r: &mut SpoolReader, after: u64) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    let mut after = after;
    loop {
        let batch = r.read_from(after, 97, 10_000).expect("spool test helper");
        let Some(last) = batch.last() else { break };
        after = last.seq;
        out.extend(batch);
    }
    out
}

fn seqs(r: &[Record]) -> Vec<u64> {
    r.iter().map(|r| r.seq).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("spool test helper")
        .map(|e| e.expect("spool test helper").path())
        .filter(|p| {
            p.file_name()
                .expect("spool test helper")
                .to_string_lossy()
                .starts_with("seg-")
        })
        .collect();
    v.sort();
    v
}

fn append_n(w: &mut SpoolWriter, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            match w
                .append(1_700_000_000_000 + i as i64, payload)
                .expect("spool test helper")
            {
                Appended::Stored { seq } => seq,
                Appended::Dropped => panic!("dropped"),
            }
        })
        .collect()
}

#[test]
fn round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (mut w, mut r) = open_spool(&t.path().join("spool"), opts(16 << 10));
    let stored = append_n(&mut w, 1000);
    assert_eq!(stored, (1..=1000).collect::<Vec<_>>());
    w.sync().unwrap();
    let all = read_all(&mut r, 0);
    assert_eq!(seqs(&all), stored);
    for rec in &all {
        assert_eq!(rec.payload, payload(rec.seq));
        assert_eq!(rec.time_ms, 1_700_000_000_000 + rec.seq as i64 - 1);
    }
    assert!(segment_files(&t.path().join("spool")).len() > 1, "rolled");
}

#[test]
fn sequence_continues_after_reopen() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    {
        let (mut w, _r) = open_spool(&d, opts(1 << 20));
        append_n(&mut w, 5);
        w.sync().unwrap();
    }
    let (mut w, mut r, rep) = open(&d, opts(1 << 20)).unwrap();
    assert_eq!(rep.next_seq, 6);
    assert!(rep.anomalies.is_empty(), "{:?}", rep.anomalies);
    assert_eq!(append_n(&mut w, 2), vec![6, 7]);
    w.sync().unwrap();
    assert_eq!(seqs(&read_all(&mut r, 0)), vec![1, 2, 3, 4, 5, 6, 7]);
}

#[test]
fn dropping_the_writer_syncs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    {
        let (mut w, _r) = open_spool(&d, opts(1 << 20));
        append_n(&mut w, 3);
    }
    let (_w, mut r) = open_spool(&d, opts(1 << 20));
    assert_eq!(seqs(&read_all(&mut r, 0)), vec![1, 2, 3]);
}

#[test]
fn ack_deletes_fully_acked_segments_and_read_resumes_after_it() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    {
        let (mut w, mut r) = open_spool(&d, opts(4096));
        append_n(&mut w, 300);
        w.sync().unwrap();
        let before = segment_files(&d).len();
        let batch = r.read_from(0, 150, usize::MAX).unwrap();
        assert_eq!(batch.last().unwrap().seq, 150);
        let deleted = r.ack(150).unwrap();
        assert!(deleted > 0);
        assert_eq!(segment_files(&d).len(), before - deleted);
        // Nothing unacknowledged was deleted: every remaining record from 151 on is still there,
        // and the first remaining segment starts at or before 151.
        let first = segment_files(&d)[0].clone();
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        let first_seq: u64 = name[4..24].parse().unwrap();
        assert!(first_seq <= 151 && first_seq > 100, "{name}");
        assert_eq!(
            seqs(&read_all(&mut r, 150)),
            (151..=300).collect::<Vec<_>>()
        );
        assert_eq!(r.acked_seq(), 150);
    }
    let (mut w, mut r, rep) = open(&d, opts(4096)).unwrap();
    assert_eq!(rep.acked_seq, 150);
    assert_eq!(rep.next_seq, 301);
    assert_eq!(
        seqs(&read_all(&mut r, rep.acked_seq)),
        (151..=300).collect::<Vec<_>>()
    );
    // Everything acknowledged: only the segment being written remains.
    r.ack(300).unwrap();
    assert_eq!(segment_files(&d).len(), 1);
    assert_eq!(r.stats().unacked_bytes, 0);
    assert_eq!(append_n(&mut w, 1), vec![301]);
}

#[test]
fn sequence_is_never_reused_after_every_segment_is_gone() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    {
        let (mut w, mut r) = open_spool(&d, opts(4096));
        append_n(&mut w, 40);
        w.sync().unwrap();
        r.ack(40).unwrap();
    }
    // Even the segment being written disappears (e.g. cleaned by hand): acked, so not an anomaly,
    // and the high-water mark in the ack file keeps the numbering going.
    for f in segment_files(&d) {
        std::fs::remove_file(f).unwrap();
    }
    let (mut w, _r, rep) = open(&d, opts(4096)).unwrap();
    assert!(rep.anomalies.is_empty(), "{:?}", rep.anomalies);
    assert_eq!(rep.next_seq, 41);
    assert_eq!(append_n(&mut w, 1), vec![41]);
}

/// Damages the last segment with `damage`, reopens, and checks the cut and what follows.
fn torn_tail_case(damage: impl FnOnce(&Path), expect: Damage, survivors: u64) {
    let t = tempfile::tempdir().expect("spool test helper");
    let d = t.path().join("spool");
    {
        let (mut w, _r) = open_spool(&d, opts(1 << 20));
        append_n(&mut w, 10);
        w.sync().expect("spool test helper");
    }
    let seg = segment_files(&d).pop().expect("spool test helper");
    let len_before = std::fs::metadata(&seg).expect("spool test helper").len();
    damage(&seg);
    let (mut w, mut r, rep) = open(&d, opts(1 << 20)).expect("spool test helper");
    assert!(rep.truncated_bytes > 0);
    assert!(
        rep.anomalies
            .iter()
            .any(|a| matches!(a, Anomaly::Truncated { damage, .. } if *damage == expect)),
        "{:?}",
        rep.anomalies
    );
    assert_eq!(rep.next_seq, survivors + 1);
    assert!(std::fs::metadata(&seg).expect("spool test helper").len() <= len_before);
    assert_eq!(
        seqs(&read_all(&mut r, 0)),
        (1..=survivors).collect::<Vec<_>>()
    );
    assert_eq!(append_n(&mut w, 2), vec![survivors + 1, survivors + 2]);
    w.sync().expect("spool test helper");
    assert_eq!(
        seqs(&read_all(&mut r, survivors)),
        vec![survivors + 1, survivors + 2]
    );
    drop((w, r));
    let (_w, mut r, rep) = open(&d, opts(1 << 20)).expect("spool test helper");
    assert_eq!(rep.truncated_bytes, 0, "{:?}", rep.anomalies);
    assert_eq!(rep.next_seq, survivors + 3);
    assert_eq!(
        seqs(&read_all(&mut r, 0)),
        (1..=survivors + 2).collect::<Vec<_>>()
    );
}

#[test]
fn torn_tail_partial_frame_is_truncated() {
    torn_tail_case(
        |seg| {
            let len = std::fs::metadata(seg).unwrap().len();
            let f = OpenOptions::new().write(true).open(seg).unwrap();
            f.set_len(len - 7).unwrap();
        },
        Damage::Incomplete,
        9,
    );
}

#[test]
fn torn_tail_flipped_byte_is_truncated() {
    torn_tail_case(
        |seg| {
            let mut b = std::fs::read(seg).unwrap();
            let n = b.len();
            b[n - 3] ^= 0x20;
            std::fs::write(seg, b).unwrap();
        },
        Damage::BadCrc,
        9,
    );
}

#[test]
fn torn_tail_garbage_is_truncated() {
    torn_tail_case(
        |seg| {
            let mut f = OpenOptions::new().append(true).open(seg).unwrap();
            f.write_all(b"\0\0\0\0garbage after a crash").unwrap();
        },
        Damage::BadMagic,
        10,
    );
}

#[test]
fn torn_tail_half_header_is_truncated() {
    torn_tail_case(
        |seg| {
            // The first bytes of a valid frame header, as a write cut short would leave them.
            let mut f = OpenOptions::new().append(true).open(seg).unwrap();
            f.write_all(&[0xF7, b'S', b'P', 1, 9, 0]).unwrap();
        },
        Damage::Incomplete,
        10,
    );
}

/// The child half of `killed_writer_loses_nothing_synced`: appends forever, printing the last
/// synced sequence after each sync. Does nothing unless started by that test.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SPOOL_CRASH_CHILD") else {
        return;
    };
    let (mut w, _r, _) = open(Path::new(&dir), opts(64 << 10)).unwrap();
    let mut out = std::io::stdout().lock();
    let mut n = 0u64;
    loop {
        let Appended::Stored { seq } = w.append(n as i64, payload).unwrap() else {
            panic!("dropped");
        };
        n += 1;
        if n % 37 == 0 {
            w.sync().unwrap();
            writeln!(out, "synced {seq}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn killed_writer_loses_nothing_synced() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    let exe = std::env::current_exe().unwrap();
    let mut last_synced = 0;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env("SPOOL_CRASH_CHILD", &d)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Read on a thread that keeps the pipe open until the child is dead (so it cannot see
        // EPIPE and exit cleanly first); this thread waits with a deadline.
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some(s) = line.trim_end().strip_prefix("synced ") {
                    if tx.send(s.parse::<u64>().unwrap()).is_err() {
                        break;
                    }
                }
            }
        });
        let mut synced_this_round = 0;
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while synced_this_round < last_synced + 3000 {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => synced_this_round = s,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("child died early"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!(
                        "round {round}: child synced only up to {synced_this_round} within 120 s"
                    )
                }
            }
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        drop(rx);
        pipe.join().unwrap();
        assert!(
            synced_this_round > last_synced,
            "round {round} made progress"
        );
        last_synced = synced_this_round;

        let (mut w, mut r, rep) = open(&d, opts(64 << 10)).unwrap();
        assert!(
            rep.anomalies.iter().all(|a| !a.suspicious()),
            "{:?}",
            rep.anomalies
        );
        let all = seqs(&read_all(&mut r, 0));
        let n = all.len() as u64;
        // Contiguous from 1, so no duplicates and no holes; at least everything synced.
        assert_eq!(all, (1..=n).collect::<Vec<_>>(), "round {round}");
        assert!(n >= last_synced, "round {round}: {n} < {last_synced}");
        assert_eq!(rep.next_seq, n + 1);
        assert_eq!(append_n(&mut w, 1), vec![n + 1]);
        w.sync().unwrap();
        last_synced = n + 1;
    }
}

#[test]
fn full_spool_counts_drops_and_reports_them_once_room_returns() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    let o = SpoolOptions {
        max_bytes: 2000,
        ..opts(1 << 20)
    };
    let (mut w, mut r) = open_spool(&d, o);
    let mut stored = Vec::new();
    let mut dropped = 0;
    for i in 0..40 {
        let mut built = false;
        match w
            .append(100 + i, |s| {
                built = true;
                payload(s)
            })
            .unwrap()
        {
            Appended::Stored { seq } => stored.push(seq),
            Appended::Dropped => {
                assert!(!built, "no payload is built for a dropped record");
                dropped += 1;
            }
        }
    }
    assert!(!stored.is_empty() && dropped > 0);
    assert_eq!(stored, (1..=stored.len() as u64).collect::<Vec<_>>());
    assert_eq!(w.stats().dropped_total, dropped);
    assert!(w.stats().unacked_bytes < 2000 + 200);
    // Still full: nothing handed over yet.
    assert_eq!(w.take_drops(), None);
    assert_eq!(w.pending_drops().unwrap().count, dropped);
    w.sync().unwrap();
    let last = *stored.last().unwrap();
    r.ack(last).unwrap();
    let d1 = w.take_drops().expect("room has returned");
    assert_eq!(d1.count, dropped);
    assert_eq!(d1.first_ms, 100 + stored.len() as i64);
    assert_eq!(d1.last_ms, 139);
    assert_eq!(w.take_drops(), None, "handed over once");
    assert_eq!(
        w.append(200, payload).unwrap(),
        Appended::Stored { seq: last + 1 }
    );
}

#[test]
fn symlinked_spool_dir_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let real = t.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = t.path().join("spool");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(matches!(
        open(&link, opts(4096)),
        Err(SpoolError::Symlink(_))
    ));
    assert_eq!(
        std::fs::read_dir(&real).unwrap().count(),
        0,
        "nothing written through it"
    );
    let dangling = t.path().join("dangling");
    std::os::unix::fs::symlink(t.path().join("nowhere"), &dangling).unwrap();
    assert!(matches!(
        open(&dangling, opts(4096)),
        Err(SpoolError::Symlink(_))
    ));
    assert!(!t.path().join("nowhere").exists());
}

#[test]
fn writer_and_reader_on_two_threads() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("spool");
    let (mut w, mut r) = open_spool(&d, opts(32 << 10));
    const N: u64 = 20_000;
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            w.append(i as i64, payload).unwrap();
            if i % 500 == 0 {
                w.sync().unwrap();
            }
        }
        w.sync().unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut next = 1;
        let until = std::time::Instant::now() + Duration::from_secs(120);
        while next <= N {
            assert!(
                std::time::Instant::now() < until,
                "reader: only up to {next} of {N} within 120 s (writer stuck or dead?)"
            );
            let batch = r.read_from(next - 1, 1000, 64 << 10).unwrap();
            for rec in &batch {
                assert_eq!(rec.seq, next);
                assert_eq!(rec.payload, payload(rec.seq));
                next += 1;
            }
            if let Some(last) = batch.last() {
                r.ack(last.seq).unwrap();
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        r
    });
    writer.join().unwrap();
    let r = reader.join().unwrap();
    assert_eq!(r.acked_seq(), N);
    assert_eq!(r.stats().unacked_records, 0);
    assert_eq!(segment_files(&d).len(), 1);
}
