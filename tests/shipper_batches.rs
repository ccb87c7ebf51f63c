//! The shipper's batches over the real spool (issue 14): a backlog goes out in full PutLogEvents
//! calls. Reads through [`SpoolAdapter`] are sized with CloudWatch's 26 bytes per event, so one
//! read is one call; before, reads were sized on payloads alone and each overflowed its call, and
//! the remainder went out as a call of a few events (about half of all calls carried 2-15).
//! No network, no clock: the same decisions the shipper's loop makes ([`Fill`]).

use std::time::Duration;

use notebook_agent::audit::change::now_ms;
use notebook_agent::audit::shipper::batch::{self, Limits, EVENT_OVERHEAD, MAX_BATCH_BYTES};
use notebook_agent::audit::shipper::fill::Fill;
use notebook_agent::audit::shipper::{Record, SpoolSource};
use notebook_agent::audit::shipping::SpoolAdapter;
use notebook_agent::audit::spool::{self, SpoolOptions};
use tokio::time::Instant;

/// A spool holding `n` records of `len`-byte payloads (synced), behind the shipper's adapter.
fn spool_with(dir: &std::path::Path, n: usize, len: usize) -> SpoolAdapter {
    let (mut w, r, _) = spool::open(dir, SpoolOptions::default()).expect("open spool");
    let t = now_ms();
    for _ in 0..n {
        w.append(t, |seq| {
            let mut p = format!("{{\"sequence\":{seq},\"pad\":\"").into_bytes();
            p.resize(len - 2, b'x');
            p.extend_from_slice(b"\"}");
            p
        })
        .expect("append");
    }
    w.sync().expect("sync");
    SpoolAdapter::new(r)
}

fn wire(records: &[Record]) -> usize {
    records.iter().map(Record::wire_bytes).sum()
}

#[test]
fn one_read_sized_for_a_call_fits_one_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 200-byte payloads: 5,242 fit a MiB on payloads alone, 4,639 with 26 bytes each.
    let mut src = spool_with(&dir.path().join("spool"), 12_000, 200);
    let recs = src.read_batch(10_000, MAX_BATCH_BYTES).expect("read");
    assert!(
        wire(&recs) <= MAX_BATCH_BYTES,
        "a read of {} records costs {} bytes on the wire, over one call's {MAX_BATCH_BYTES}",
        recs.len(),
        wire(&recs)
    );
    assert_eq!(recs.len(), MAX_BATCH_BYTES / (200 + EVENT_OVERHEAD));
    let plan = batch::build(recs, now_ms(), &Limits::default());
    assert_eq!(plan.batches.len(), 1, "one read, one call");
}

#[test]
fn a_backlog_in_the_spool_goes_out_in_full_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 30_000;
    let mut src = spool_with(&dir.path().join("spool"), n, 200);
    let limits = Limits::default();
    let mut fill = Fill::new(&limits);
    // The clock stands still: a call goes out only when full, or when the backlog is exhausted
    // (the spool stays dry for `idle`).
    let (now, flush, idle) = (
        Instant::now(),
        Duration::from_secs(1),
        Duration::from_millis(50),
    );
    let mut calls = Vec::new();
    for _ in 0..1_000 {
        if let Some((records, bytes)) = fill.room() {
            fill.add(src.read_batch(records, bytes).expect("read"), now);
        }
        if fill.ready(now, flush, idle).is_none() && fill.ready(now + idle, flush, idle).is_none() {
            if fill.is_empty() {
                break;
            }
            continue;
        }
        let taken = fill.take();
        let last = taken.last().map(|r| r.seq).expect("a batch");
        let plan = batch::build(taken, now_ms(), &limits);
        calls.extend(plan.batches.iter().map(|b| b.events.len()));
        src.ack(last).expect("ack");
    }
    let per_call = MAX_BATCH_BYTES / (200 + EVENT_OVERHEAD);
    println!("calls: {calls:?}");
    assert_eq!(calls.iter().sum::<usize>(), n, "every record once");
    let (last, full) = calls.split_last().expect("calls");
    assert!(
        full.iter().all(|c| *c == per_call),
        "every call but the last is full ({per_call} events): {calls:?}"
    );
    assert!(*last <= per_call);
    assert_eq!(calls.len(), n.div_ceil(per_call), "no extra calls");
}
