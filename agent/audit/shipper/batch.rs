//! The pure request builder: spool records in, PutLogEvents batches out, every CloudWatch Logs limit
//! enforced here (moto enforces none of the size limits, so this is where they are tested).
//!
//! - a batch holds ≤ 10,000 events and ≤ 1,048,576 bytes, counting each message's UTF-8 length
//!   plus 26 bytes;
//! - events are sorted by time (stable: equal times keep spool order) and one batch spans ≤ 24 h;
//! - a message over 262,118 bytes (256 KiB minus the 26-byte overhead) is replaced by a
//!   [truncation wrapper](truncate) that stays valid JSON and says how big the original was;
//! - events older than 14 days (or the group's retention, when shorter) or more than 2 h in the
//!   future are *rejected locally*: returned in [`Plan::rejected`] for the caller to record,
//!   never sent (CloudWatch would drop them and only say so in `rejectedLogEventsInfo`).
//!
//! Acknowledgement: batches are sorted by time, the spool by sequence, so the two orders can
//! differ. [`Batch::ack_seq`] is the highest sequence number such that every record at or below it
//! is in this batch, an earlier batch of the same plan, or rejected — acking it after this batch
//! succeeds never acknowledges a record that has not reached CloudWatch.

use sha2::{Digest, Sha256};

/// One spool record, as the spool hands it over (in spool order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The spool's per-host, monotonically increasing sequence number.
    pub seq: u64,
    /// Event time in milliseconds since the Unix epoch (the OCSF `time`).
    pub time_ms: i64,
    /// The OCSF JSON record.
    pub payload: Vec<u8>,
}

impl Record {
    /// What this record costs in a batch before any truncation.
    pub fn wire_bytes(&self) -> usize {
        self.payload.len() + EVENT_OVERHEAD
    }
}

/// CloudWatch Logs counts this many bytes per event on top of its message.
pub const EVENT_OVERHEAD: usize = 26;
/// Events per PutLogEvents call.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// Bytes per PutLogEvents call (messages plus [`EVENT_OVERHEAD`] each).
pub const MAX_BATCH_BYTES: usize = 1_048_576;
/// Largest message: 256 KiB per event including the overhead.
pub const MAX_MESSAGE_BYTES: usize = 262_144 - EVENT_OVERHEAD;
/// Longest time span inside one batch.
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;
/// CloudWatch rejects events older than this.
pub const MAX_AGE_MS: i64 = 14 * 24 * 3600 * 1000;
/// CloudWatch rejects events further than this in the future.
pub const MAX_FUTURE_MS: i64 = 2 * 3600 * 1000;

/// The limits the builder enforces. [`Limits::default`] is CloudWatch's; tests shrink them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    pub max_message_bytes: usize,
    pub max_span_ms: i64,
    pub max_age_ms: i64,
    pub max_future_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_events: MAX_BATCH_EVENTS,
            max_bytes: MAX_BATCH_BYTES,
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_span_ms: MAX_SPAN_MS,
            max_age_ms: MAX_AGE_MS,
            max_future_ms: MAX_FUTURE_MS,
        }
    }
}

impl Limits {
    /// CloudWatch's limits, with the age limit shortened to the group's retention when that is
    /// shorter than 14 days (CloudWatch drops such events as "expired").
    pub fn for_retention(retention_days: Option<u32>) -> Self {
        let mut l = Self::default();
        if let Some(days) = retention_days {
            let ms = i64::from(days) * 24 * 3600 * 1000;
            if ms > 0 && ms < l.max_age_ms {
                l.max_age_ms = ms;
            }
        }
        l
    }
}

/// One event ready for PutLogEvents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub time_ms: i64,
    pub message: String,
}

/// One PutLogEvents request's worth of events, in time order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub events: Vec<Event>,
    /// Bytes as CloudWatch counts them (messages + 26 each).
    pub bytes: usize,
    /// Highest spool sequence number in this batch.
    pub max_seq: u64,
    /// The spool position that may be acknowledged once this batch is accepted (see module doc).
    /// `None`: an earlier-sequenced record is still in a later batch.
    pub ack_seq: Option<u64>,
}

/// Why a record was not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Older than 14 days or the group's retention.
    TooOld,
    /// More than 2 h in the future.
    TooNew,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooOld => "too_old",
            RejectReason::TooNew => "too_new",
        }
    }
}

/// A record rejected locally, kept whole so the caller can record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub record: Record,
    pub reason: RejectReason,
}

/// A record whose message was replaced by the truncation wrapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    pub seq: u64,
    pub original_bytes: usize,
}

/// The builder's output for one read from the spool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub batches: Vec<Batch>,
    pub rejected: Vec<Rejected>,
    pub truncated: Vec<Truncated>,
    /// Highest sequence number of the input: acknowledging it is safe once every batch succeeded.
    pub max_seq: Option<u64>,
}

/// Turns records (spool order) into batches. `now_ms` decides what is too old or too new.
pub fn build(records: Vec<Record>, now_ms: i64, limits: &Limits) -> Plan {
    let mut plan = Plan {
        max_seq: records.iter().map(|r| r.seq).max(),
        ..Plan::default()
    };
    // Spool order of the accepted events, for the ack computation.
    let mut spool_order: Vec<u64> = Vec::with_capacity(records.len());
    let mut events: Vec<Event> = Vec::with_capacity(records.len());
    for record in records {
        if record.time_ms < now_ms.saturating_sub(limits.max_age_ms) {
            plan.rejected.push(Rejected {
                record,
                reason: RejectReason::TooOld,
            });
            continue;
        }
        if record.time_ms > now_ms.saturating_add(limits.max_future_ms) {
            plan.rejected.push(Rejected {
                record,
                reason: RejectReason::TooNew,
            });
            continue;
        }
        // Not UTF-8 (the encoder never writes it): replacement characters can grow the text, so
        // the size is checked on what would be sent.
        let fits = match std::str::from_utf8(&record.payload) {
            Ok(_) => record.payload.len() <= limits.max_message_bytes,
            Err(_) => String::from_utf8_lossy(&record.payload).len() <= limits.max_message_bytes,
        };
        let message = if fits {
            String::from_utf8(record.payload)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
        } else {
            plan.truncated.push(Truncated {
                seq: record.seq,
                original_bytes: record.payload.len(),
            });
            truncate(&record, limits.max_message_bytes)
        };
        spool_order.push(record.seq);
        events.push(Event {
            seq: record.seq,
            time_ms: record.time_ms,
            message,
        });
    }

    // Stable: equal timestamps keep spool order.
    events.sort_by_key(|e| e.time_ms);

    let mut current = Batch::default();
    let mut first_time = 0i64;
    for event in events {
        let cost = event.message.len() + EVENT_OVERHEAD;
        let full = !current.events.is_empty()
            && (current.events.len() >= limits.max_events
                || current.bytes + cost > limits.max_bytes
                || event.time_ms - first_time > limits.max_span_ms);
        if full {
            plan.batches.push(std::mem::take(&mut current));
        }
        if current.events.is_empty() {
            first_time = event.time_ms;
        }
        current.bytes += cost;
        current.max_seq = current.max_seq.max(event.seq);
        current.events.push(event);
    }
    if !current.events.is_empty() {
        plan.batches.push(current);
    }

    assign_acks(&mut plan, &spool_order);
    plan
}

/// Sets each batch's `ack_seq`: the longest prefix of the accepted records (spool order) that lies
/// entirely in batches up to this one. Rejected records never hold the ack back; when every
/// batch succeeded the caller acks [`Plan::max_seq`], which also covers trailing rejects.
fn assign_acks(plan: &mut Plan, spool_order: &[u64]) {
    use std::collections::HashMap;
    let mut batch_of: HashMap<u64, usize> = HashMap::with_capacity(spool_order.len());
    for (i, b) in plan.batches.iter().enumerate() {
        for e in &b.events {
            batch_of.insert(e.seq, i);
        }
    }
    // Rejected records below the first accepted one are covered by the first ack too.
    let mut prefix = 0usize; // records of spool_order[..prefix] are all in batches <= i
    for i in 0..plan.batches.len() {
        while prefix < spool_order.len() && batch_of.get(&spool_order[prefix]).copied() <= Some(i) {
            prefix += 1;
        }
        plan.batches[i].ack_seq = if prefix == 0 {
            None
        } else if prefix == spool_order.len() {
            // Everything accepted is shipped after this batch: trailing rejects may go too.
            plan.max_seq
        } else {
            // Up to (not including) the first record still waiting: safe for rejected records in
            // between, which are below it.
            Some(spool_order[prefix].saturating_sub(1))
        };
    }
}

/// Replaces an oversize message with a JSON wrapper that fits `max` bytes:
///
/// ```json
/// {"truncated":true,"original_bytes":N,"sha256":"<hex of the full record>","sequence":S,
///  "time":T,"uid":"<metadata.uid of the record, when it parses>","class_uid":C,
///  "head":"<the record's first bytes, as a JSON string>"}
/// ```
///
/// `sequence` and `uid` keep the event identifiable (duplicate detection works as for any
/// other event); `sha256` lets an investigator match the spool's full copy; `head` keeps as much of
/// the original as fits, cut on a UTF-8 boundary.
pub fn truncate(record: &Record, max: usize) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&record.payload).ok();
    let uid = parsed
        .as_ref()
        .and_then(|v| v.pointer("/metadata/uid"))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let class_uid = parsed
        .as_ref()
        .and_then(|v| v.get("class_uid"))
        .and_then(|v| v.as_u64());
    drop(parsed);
    let digest = Sha256::digest(&record.payload);
    let sha256: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let text = String::from_utf8_lossy(&record.payload);

    let wrap = |head: &str| {
        let mut obj = serde_json::Map::new();
        obj.insert("truncated".into(), true.into());
        obj.insert("original_bytes".into(), record.payload.len().into());
        obj.insert("sha256".into(), sha256.clone().into());
        obj.insert("sequence".into(), record.seq.into());
        obj.insert("time".into(), record.time_ms.into());
        if let Some(uid) = &uid {
            obj.insert("uid".into(), uid.clone().into());
        }
        if let Some(c) = class_uid {
            obj.insert("class_uid".into(), c.into());
        }
        obj.insert("head".into(), head.into());
        serde_json::Value::Object(obj).to_string()
    };

    let mut keep = max.min(text.len());
    loop {
        while keep > 0 && !text.is_char_boundary(keep) {
            keep -= 1;
        }
        let out = wrap(&text[..keep]);
        if out.len() <= max || keep == 0 {
            return out;
        }
        // Escaping grows the head; shrink by the overflow (at least one byte) and try again.
        keep = keep.saturating_sub((out.len() - max).max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn rec(seq: u64, time_ms: i64, len: usize) -> Record {
        let body = format!(r#"{{"metadata":{{"uid":"u{seq}","sequence":{seq}}},"x":""#);
        let mut s = body.clone();
        while s.len() + 2 < len {
            s.push('a');
        }
        s.push_str("\"}");
        Record {
            seq,
            time_ms,
            payload: s.into_bytes(),
        }
    }

    #[test]
    fn limits_of_cloudwatch() {
        assert_eq!(MAX_MESSAGE_BYTES, 262_118);
        let l = Limits::for_retention(Some(3));
        assert_eq!(l.max_age_ms, 3 * 86_400_000);
        assert_eq!(Limits::for_retention(Some(30)).max_age_ms, MAX_AGE_MS);
    }

    #[test]
    fn ten_thousand_events_per_batch() {
        let records: Vec<Record> = (0..25_000).map(|i| rec(i, NOW, 40)).collect();
        let plan = build(records, NOW, &Limits::default());
        let sizes: Vec<usize> = plan.batches.iter().map(|b| b.events.len()).collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
        assert_eq!(plan.batches[0].ack_seq, Some(9_999));
        assert_eq!(plan.batches[2].ack_seq, Some(24_999));
    }

    #[test]
    fn one_mebibyte_counting_26_bytes_per_event() {
        // 1000-byte messages: 1026 each; 1_048_576 / 1026 = 1022 per batch.
        let records: Vec<Record> = (0..3000).map(|i| rec(i, NOW, 1000)).collect();
        let plan = build(records, NOW, &Limits::default());
        assert_eq!(plan.batches[0].events.len(), 1022);
        for b in &plan.batches {
            assert!(b.bytes <= MAX_BATCH_BYTES);
            let counted: usize = b.events.iter().map(|e| e.message.len() + 26).sum();
            assert_eq!(counted, b.bytes);
        }
        let total: usize = plan.batches.iter().map(|b| b.events.len()).sum();
        assert_eq!(total, 3000);
    }

    #[test]
    fn exactly_full_batch_fits() {
        // 4 events of 262_118 bytes = 4 * 262_144 = 1_048_576: exactly one batch.
        let records: Vec<Record> = (0..4).map(|i| rec(i, NOW, MAX_MESSAGE_BYTES)).collect();
        let plan = build(records, NOW, &Limits::default());
        assert_eq!(plan.batches.len(), 1);
        assert_eq!(plan.batches[0].bytes, MAX_BATCH_BYTES);
        assert!(plan.truncated.is_empty());
    }

    #[test]
    fn sorted_by_time_stable() {
        let records = vec![
            rec(1, NOW - 5, 30),
            rec(2, NOW - 9, 30),
            rec(3, NOW - 5, 30),
        ];
        let plan = build(records, NOW, &Limits::default());
        let seqs: Vec<u64> = plan.batches[0].events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![2, 1, 3]);
    }

    #[test]
    fn span_of_24_hours() {
        let day = MAX_SPAN_MS;
        let records = vec![
            rec(1, NOW - day - 1000, 30),
            rec(2, NOW - 1000, 30), // exactly 24 h after the first: same batch
            rec(3, NOW - 999, 30),  // 24 h + 1 ms: next batch
        ];
        let plan = build(records, NOW, &Limits::default());
        assert_eq!(plan.batches.len(), 2);
        assert_eq!(plan.batches[0].events.len(), 2);
        for b in &plan.batches {
            let first = b.events[0].time_ms;
            let last = b.events[b.events.len() - 1].time_ms;
            assert!(last - first <= day);
        }
    }

    #[test]
    fn oversize_event_truncated_with_marker() {
        let big = rec(7, NOW, 300_000);
        let plan = build(vec![big], NOW, &Limits::default());
        assert_eq!(
            plan.truncated,
            vec![Truncated {
                seq: 7,
                original_bytes: 300_000
            }]
        );
        let msg = &plan.batches[0].events[0].message;
        assert!(msg.len() <= MAX_MESSAGE_BYTES);
        assert!(msg.len() > MAX_MESSAGE_BYTES - 200, "keeps as much as fits");
        let v: serde_json::Value = serde_json::from_str(msg).expect("valid JSON");
        assert_eq!(v["truncated"], true);
        assert_eq!(v["original_bytes"], 300_000);
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["uid"], "u7");
        assert!(v["head"]
            .as_str()
            .is_some_and(|h| h.starts_with("{\"metadata\"")));
    }

    #[test]
    fn truncation_survives_escaping_and_multibyte() {
        // Quotes double on escaping; "é" is two bytes: the wrapper must still fit.
        let mut payload = Vec::new();
        for i in 0..200_000 {
            payload.extend_from_slice(if i % 2 == 0 { b"\"" } else { "é".as_bytes() });
        }
        let r = Record {
            seq: 1,
            time_ms: NOW,
            payload,
        };
        let out = truncate(&r, 1000);
        assert!(out.len() <= 1000);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["original_bytes"], 300_000);
        assert!(v.get("uid").is_none());
    }

    #[test]
    fn too_old_and_too_new_rejected_locally() {
        let records = vec![
            rec(1, NOW - MAX_AGE_MS - 1, 30),
            rec(2, NOW - MAX_AGE_MS + 60_000, 30),
            rec(3, NOW + MAX_FUTURE_MS + 1, 30),
            rec(4, NOW, 30),
        ];
        let plan = build(records, NOW, &Limits::default());
        let rejected: Vec<(u64, RejectReason)> = plan
            .rejected
            .iter()
            .map(|r| (r.record.seq, r.reason))
            .collect();
        assert_eq!(
            rejected,
            vec![(1, RejectReason::TooOld), (3, RejectReason::TooNew)]
        );
        // 2 and 4 are 14 days apart: two batches (24 h span).
        let sent: Vec<u64> = plan
            .batches
            .iter()
            .flat_map(|b| b.events.iter().map(|e| e.seq))
            .collect();
        assert_eq!(sent, vec![2, 4]);
        assert_eq!(plan.batches[0].ack_seq, Some(3), "covers the rejected 3");
        assert_eq!(plan.batches[1].ack_seq, Some(4));
        assert_eq!(plan.max_seq, Some(4));
    }

    #[test]
    fn retention_shortens_the_age_limit() {
        let records = vec![rec(1, NOW - 2 * 86_400_000, 30), rec(2, NOW, 30)];
        let plan = build(records, NOW, &Limits::for_retention(Some(1)));
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].record.seq, 1);
    }

    #[test]
    fn ack_never_passes_an_unshipped_record() {
        // seq 1 is late in time and lands in the second batch: batch 0's ack must stay below 1.
        let limits = Limits {
            max_events: 2,
            ..Limits::default()
        };
        let records = vec![
            rec(1, NOW, 30),
            rec(2, NOW - 30, 30),
            rec(3, NOW - 20, 30),
            rec(4, NOW - 10, 30),
        ];
        let plan = build(records, NOW, &limits);
        assert_eq!(plan.batches.len(), 2);
        assert_eq!(plan.batches[0].max_seq, 3);
        assert_eq!(plan.batches[0].ack_seq, None);
        assert_eq!(plan.batches[1].ack_seq, Some(4));
    }

    #[test]
    fn empty_input_empty_plan() {
        let plan = build(Vec::new(), NOW, &Limits::default());
        assert!(plan.batches.is_empty());
        assert_eq!(plan.max_seq, None);
    }
}
