//! When the shipper sends: what it holds between spool reads, and the decision to send it.
//!
//! - **Full** batches while a backlog exists: each read is sized with CloudWatch's 26 bytes per
//!   event ([`SpoolSource`](super::SpoolSource)'s contract), and what a read returns beyond one
//!   call (the source always hands over at least one record, even one bigger than the room left)
//!   waits for the next batch instead of going out as a call of its own.
//! - **Idle**: as soon as the spool has had nothing new for `idle` (the writer went quiet: the
//!   watcher has nothing more to say for now), what is held is sent — a few hundred
//!   milliseconds after the last change instead of a whole `flush`.
//! - **Due**: `flush` stays the upper bound on how long a record waits when the writer never
//!   pauses.
//!
//! Pure (the caller passes the clock): unit-tested without a network or a timer.

use std::time::Duration;

use tokio::time::Instant;

use super::batch::{Limits, Record};

/// The records read and not yet sent, with their cost as CloudWatch counts it.
#[derive(Debug)]
pub struct Fill {
    max_events: usize,
    max_bytes: usize,
    /// Within 1/16 of the byte limit counts as full: the next record may not fit anyway.
    nearly_full: usize,
    pending: Vec<Record>,
    bytes: usize,
    /// When the oldest pending record was read.
    since: Option<Instant>,
    /// The first read that found nothing new while records were pending.
    dry_since: Option<Instant>,
}

/// Why [`Fill::ready`] says send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// A whole call's worth is waiting.
    Full,
    /// Nothing new arrived for `idle`.
    Idle,
    /// The oldest record has waited `flush`.
    Due,
}

impl Fill {
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_events: limits.max_events.max(1),
            max_bytes: limits.max_bytes,
            nearly_full: limits.max_bytes - limits.max_bytes / 16,
            pending: Vec::new(),
            bytes: 0,
            since: None,
            dry_since: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// What the next read may return, (records, bytes with 26 per record); None when a whole
    /// call is already waiting.
    pub fn room(&self) -> Option<(usize, usize)> {
        let events = self.max_events.saturating_sub(self.pending.len());
        let bytes = self.max_bytes.saturating_sub(self.bytes);
        (!self.is_full() && events > 0 && bytes > 0).then_some((events, bytes))
    }

    fn is_full(&self) -> bool {
        self.pending.len() >= self.max_events || self.bytes >= self.nearly_full
    }

    /// What one read returned (empty: the spool had nothing new).
    pub fn add(&mut self, records: Vec<Record>, now: Instant) {
        if records.is_empty() {
            if !self.pending.is_empty() {
                self.dry_since.get_or_insert(now);
            }
            return;
        }
        self.dry_since = None;
        self.bytes += records.iter().map(Record::wire_bytes).sum::<usize>();
        self.pending.extend(records);
        self.since.get_or_insert(now);
    }

    /// Whether to send now, and why.
    pub fn ready(&self, now: Instant, flush: Duration, idle: Duration) -> Option<Ready> {
        if self.pending.is_empty() {
            return None;
        }
        if self.is_full() {
            return Some(Ready::Full);
        }
        if self
            .dry_since
            .is_some_and(|t| now.duration_since(t) >= idle)
        {
            return Some(Ready::Idle);
        }
        if self.since.is_some_and(|t| now.duration_since(t) >= flush) {
            return Some(Ready::Due);
        }
        None
    }

    /// How long to sleep before the next read: until the idle or flush moment, at most `poll`.
    pub fn wait(&self, now: Instant, flush: Duration, idle: Duration, poll: Duration) -> Duration {
        let mut wait = poll;
        if let Some(t) = self.since {
            wait = wait.min(flush.saturating_sub(now.duration_since(t)));
        }
        if !self.pending.is_empty() {
            let dry_for = self
                .dry_since
                .map_or(Duration::ZERO, |t| now.duration_since(t));
            wait = wait.min(idle.saturating_sub(dry_for));
        }
        wait
    }

    /// The records of one call: the longest prefix (spool order) within the limits, at least one.
    /// The rest stays, still counted from when it was read, and starts the next batch.
    pub fn take(&mut self) -> Vec<Record> {
        let mut n = 0;
        let mut bytes = 0usize;
        for r in &self.pending {
            let cost = r.wire_bytes();
            if n > 0 && (n >= self.max_events || bytes + cost > self.max_bytes) {
                break;
            }
            n += 1;
            bytes += cost;
        }
        let rest = self.pending.split_off(n);
        let out = std::mem::replace(&mut self.pending, rest);
        self.bytes -= bytes;
        self.dry_since = None;
        if self.pending.is_empty() {
            self.since = None;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::shipper::batch::{self, EVENT_OVERHEAD, MAX_BATCH_BYTES};
    use crate::audit::shipper::{MemorySpool, SpoolSource};

    const NOW_MS: i64 = 1_700_000_000_000;

    fn spool_of(sizes: impl IntoIterator<Item = usize>) -> MemorySpool {
        let s = MemorySpool::new();
        for len in sizes {
            s.push(NOW_MS, vec![b'x'; len]);
        }
        s
    }

    /// Drives a [`Fill`] over a backlog the way the loop does (read while there is room, send
    /// when ready); returns the events of each PutLogEvents call `batch::build` would make.
    fn calls(spool: &MemorySpool) -> Vec<usize> {
        let mut src = spool.clone();
        let mut fill = Fill::new(&Limits::default());
        let t0 = Instant::now();
        let (flush, idle) = (Duration::from_secs(1), Duration::from_millis(50));
        let mut out = Vec::new();
        for step in 0..10_000u32 {
            // A backlog: the clock never moves, so nothing is sent for being idle or due.
            let now = t0;
            if let Some((n, bytes)) = fill.room() {
                let recs = src.read_batch(n, bytes).expect("read");
                fill.add(recs, now);
            }
            let send = fill.ready(now, flush, idle).is_some()
                // The backlog is exhausted: what is left goes once the spool stays dry.
                || (!fill.is_empty() && fill.ready(now + idle, flush, idle).is_some());
            if send {
                let plan = batch::build(fill.take(), NOW_MS, &Limits::default());
                out.extend(plan.batches.iter().map(|b| b.events.len()));
            } else if fill.is_empty() {
                return out;
            }
            assert!(step < 9_999, "the backlog never drained");
        }
        out
    }

    /// Every call but the last is at least half full (by events or bytes) while a backlog exists.
    fn assert_full(calls: &[usize], per_full_call: usize, what: &str) {
        let (last, rest) = calls.split_last().expect("some calls");
        for (i, n) in rest.iter().enumerate() {
            assert!(
                *n * 2 >= per_full_call,
                "{what}: call {i} carried {n} events, under half of {per_full_call}: {calls:?}"
            );
        }
        assert!(*last > 0);
    }

    #[test]
    fn a_backlog_of_small_records_goes_out_in_full_calls() {
        // 200-byte payloads: 226 bytes on the wire, 4,639 per MiB call.
        let n = 25_000;
        let c = calls(&spool_of(std::iter::repeat_n(200, n)));
        let per_call = MAX_BATCH_BYTES / (200 + EVENT_OVERHEAD);
        assert_full(&c, per_call, "200-byte records");
        assert_eq!(c.iter().sum::<usize>(), n, "every record once");
        assert_eq!(c.len(), n.div_ceil(per_call), "no extra calls: {c:?}");
    }

    #[test]
    fn a_record_bigger_than_the_room_left_starts_the_next_call() {
        // Mixed sizes, some large: the read hands over one record past the room left; it must
        // wait for the next call, not go out alone.
        let sizes: Vec<usize> = (0..6_000)
            .map(|i| {
                if i % 97 == 0 {
                    150_000
                } else {
                    300 + (i % 7) * 50
                }
            })
            .collect();
        let c = calls(&spool_of(sizes.iter().copied()));
        let avg = sizes.iter().sum::<usize>() / sizes.len() + EVENT_OVERHEAD;
        assert_full(&c, MAX_BATCH_BYTES / avg / 2, "mixed records");
        assert_eq!(c.iter().sum::<usize>(), sizes.len(), "every record once");
    }

    #[test]
    fn ten_thousand_tiny_records_fill_a_call_by_count() {
        let c = calls(&spool_of(std::iter::repeat_n(10, 23_000)));
        assert_eq!(c, vec![10_000, 10_000, 3_000]);
    }

    #[test]
    fn a_quiet_spool_sends_after_idle_not_after_flush() {
        let mut fill = Fill::new(&Limits::default());
        let t0 = Instant::now();
        let (flush, idle) = (Duration::from_secs(1), Duration::from_millis(50));
        fill.add(vec![rec(1, 100)], t0);
        assert_eq!(fill.ready(t0, flush, idle), None, "more may follow at once");
        // The next read finds nothing new: wait `idle`, not `flush`.
        let t1 = t0 + Duration::from_millis(5);
        fill.add(Vec::new(), t1);
        assert_eq!(fill.wait(t1, flush, idle, Duration::from_millis(100)), idle);
        assert_eq!(fill.ready(t1 + idle / 2, flush, idle), None);
        assert_eq!(fill.ready(t1 + idle, flush, idle), Some(Ready::Idle));
        // Records that keep coming reset the idle clock; flush bounds the wait.
        fill.add(vec![rec(2, 100)], t1 + idle / 2);
        assert_eq!(fill.ready(t1 + idle, flush, idle), None);
        assert_eq!(fill.ready(t0 + flush, flush, idle), Some(Ready::Due));
        assert_eq!(
            fill.take().iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(fill.is_empty());
        assert_eq!(fill.ready(t0 + 2 * flush, flush, idle), None);
    }

    fn rec(seq: u64, len: usize) -> Record {
        Record {
            seq,
            time_ms: NOW_MS,
            payload: vec![b'x'; len],
        }
    }
}
