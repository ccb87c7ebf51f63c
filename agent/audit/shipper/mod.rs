//! The shipper: spool records → CloudWatch Logs, at-least-once on the wire, exactly once as far as
//! the reader can tell (a duplicate, possible only for the batch in flight at a crash or a drain
//! timeout, carries the same `metadata.uid` and `sequence`).
//!
//! Shape (Vector's CloudWatch sink): [`batch`] is the pure request builder that enforces every
//! limit, [`retry`] classifies errors and backs off, [`client`] builds the SDK client, this module
//! is the service loop, [`stats`] its counters.
//!
//! The loop:
//! - reads from a [`SpoolSource`] until a batch is (nearly) full, the spool has had nothing new
//!   for `idle` (50 ms: the watcher went quiet), or the oldest record read has waited `flush`
//!   (default 1 s, the upper bound), then builds and sends ([`fill`]: full calls while a backlog
//!   exists);
//! - sends PutLogEvents first, always: no DescribeLogStreams, ever. ResourceNotFound creates the
//!   stream (and the group, with KMS key and retention, when the group is the missing one),
//!   ResourceAlreadyExists counts as success, and the batch is sent again;
//! - retries transient errors for as long as it takes (the spool keeps everything; its own cap
//!   decides what is dropped, and counts it);
//! - acknowledges a spool position only after CloudWatch accepted every record at or below it;
//! - writes what CloudWatch will not take (too old/new, rejected batch) whole to the dead-letter
//!   file `<state>/shipper-rejected.jsonl` and reports it as a [`ShipperEvent`] for the caller to
//!   record as an agent event: not delivered, but not lost;
//! - on shutdown (SIGTERM) ships what it can within `drain_timeout` (default 20 s, the unit's
//!   `TimeoutStopSec`) and returns; what is left stays unacknowledged in the spool for the next
//!   start.

pub mod batch;
pub mod client;
pub mod fill;
pub mod retry;
pub mod stats;

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_cloudwatchlogs::Client;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

pub use batch::{Limits, Record};
pub use client::{build_client, ClientSettings};
pub use stats::{Backlog, OperatorWait, Stats};

use crate::audit::change::now_ms;
use crate::config::AuditConfig;
use crate::host::metadata::NotebookIdentity;
use retry::{Action, Backoff, Classified};

/// Where the shipper reads from. The real spool gets an adapter; [`MemorySpool`] is for tests.
///
/// `read_batch` is a read cursor: each call returns the records after those it already returned
/// (at most `max_records`, at most `max_bytes` of payload + 26 each, but always at least one
/// record when one is waiting, even a bigger one). `ack(seq)` makes every record ≤ `seq` durable
/// as shipped; after a restart the cursor starts after the last ack.
pub trait SpoolSource: Send {
    fn read_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, String>;
    fn ack(&mut self, seq: u64) -> Result<(), String>;
    /// Backlog figures for `status` (spool bytes, oldest unshipped, drops), when the spool knows.
    fn backlog(&self) -> Option<Backlog> {
        None
    }
}

/// What the caller should record as agent events (the shipper cannot write to the spool itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipperEvent {
    /// Not sent: older than 14 days / the retention, or more than 2 h in the future.
    RejectedLocally {
        seq: u64,
        time_ms: i64,
        reason: &'static str,
    },
    /// CloudWatch accepted the call but not these events (`rejectedLogEventsInfo`).
    RejectedByService {
        seqs: Vec<u64>,
        too_new: usize,
        too_old: usize,
        expired: usize,
    },
    /// CloudWatch refused a whole batch with a non-retryable error.
    BatchRejected {
        first_seq: u64,
        last_seq: u64,
        events: usize,
        code: String,
        message: String,
    },
    /// A message over 256 KiB was replaced by the truncation wrapper.
    Truncated { seq: u64, original_bytes: usize },
    /// The group and/or stream was created after ResourceNotFound.
    DestinationCreated { group: bool, stream: bool },
}

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    pub log_group: String,
    pub log_stream: String,
    /// Retention of a group the shipper creates.
    pub retention_days: Option<u32>,
    /// KMS key of a group the shipper creates (passed in CreateLogGroup).
    pub kms_key_id: Option<String>,
    /// Longest wait before a partial batch is sent.
    pub flush: Duration,
    /// A partial batch is sent once the spool has had nothing new for this long.
    pub idle: Duration,
    /// How often an empty spool is polled.
    pub poll: Duration,
    /// Bound on the shutdown drain.
    pub drain_timeout: Duration,
    /// Where `shipper.json` and the dead-letter file live.
    pub state_dir: PathBuf,
    /// How often `shipper.json` is rewritten.
    pub stats_every: Duration,
    pub limits: Limits,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The dead-letter file stops growing here; further rejected events are counted as dropped.
    pub dead_letter_max_bytes: u64,
}

/// Name of the dead-letter file inside the state directory.
pub const DEAD_LETTER_FILE: &str = "shipper-rejected.jsonl";

impl ShipperConfig {
    pub fn new(
        log_group: impl Into<String>,
        log_stream: impl Into<String>,
        state_dir: PathBuf,
    ) -> Self {
        Self {
            log_group: log_group.into(),
            log_stream: log_stream.into(),
            retention_days: None,
            kms_key_id: None,
            flush: Duration::from_millis(1000),
            idle: Duration::from_millis(50),
            poll: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(20),
            state_dir,
            stats_every: Duration::from_secs(5),
            limits: Limits::default(),
            backoff_base: retry::BASE,
            backoff_cap: retry::CAP,
            dead_letter_max_bytes: 64 * 1024 * 1024,
        }
    }

    /// From `audit` with the templates rendered for this notebook.
    /// `identity` is None off a SageMaker notebook: fixed names only.
    pub fn from_audit(
        audit: &AuditConfig,
        identity: Option<&NotebookIdentity>,
        state_dir: PathBuf,
    ) -> Result<Self, String> {
        let group = render_template_for(&audit.log_group, identity)
            .map_err(|e| format!("audit.log_group: {e}"))?;
        check_group_name(&group).map_err(|e| format!("audit.log_group: {e}"))?;
        let stream = render_template_for(&audit.log_stream, identity)
            .map_err(|e| format!("audit.log_stream: {e}"))?;
        check_stream_name(&stream).map_err(|e| format!("audit.log_stream: {e}"))?;
        let mut c = Self::new(group, stream, state_dir);
        c.retention_days = audit.retention_days;
        c.kms_key_id = audit.kms_key_id.clone();
        c.flush = Duration::from_millis(audit.flush_ms.max(1));
        c.drain_timeout = Duration::from_secs(audit.drain_secs);
        c.limits = Limits::for_retention(audit.retention_days);
        Ok(c)
    }
}

/// Renders `{notebook}`, `{region}` and `{account}`; any other `{...}` is an error.
pub fn render_template(template: &str, identity: &NotebookIdentity) -> Result<String, String> {
    render_template_for(template, Some(identity))
}

/// [`render_template`] where the notebook's identity may be unknown (no
/// `/opt/ml/metadata/resource-metadata.json`: a plain VM or container): a template without
/// placeholders renders as it is, one with a placeholder is an error that says so.
pub fn render_template_for(
    template: &str,
    identity: Option<&NotebookIdentity>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {template:?}"))?;
        let known = |f: fn(&NotebookIdentity) -> &str, name: &str| {
            identity.map(|i| f(i).to_string()).ok_or_else(|| {
                format!(
                    "{{{name}}} in {template:?} needs the notebook's identity, but {} is missing; use a fixed name on a host that is not a SageMaker notebook",
                    crate::host::metadata::RESOURCE_METADATA
                )
            })
        };
        match &after[..close] {
            "notebook" => out.push_str(&known(|i| &i.name, "notebook")?),
            "region" => out.push_str(&known(|i| &i.region, "region")?),
            "account" => out.push_str(&known(|i| &i.account, "account")?),
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} in {template:?} (known: {{notebook}}, {{region}}, {{account}})"
                ))
            }
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("stray '}}' in {template:?}"));
    }
    out.push_str(rest);
    Ok(out)
}

fn check_group_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/#".contains(c);
    if name.is_empty() || name.len() > 512 || !name.chars().all(ok_char) {
        return Err(format!(
            "{name:?} is not a log group name (1-512 of A-Z a-z 0-9 . _ - / #)"
        ));
    }
    Ok(())
}

fn check_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 512 || name.contains(':') || name.contains('*') {
        return Err(format!(
            "{name:?} is not a log stream name (1-512 characters, no ':' or '*')"
        ));
    }
    Ok(())
}

/// A shutdown signal that turns true on SIGTERM or SIGINT (for `watch`).
pub fn shutdown_on_signals() -> Result<watch::Receiver<bool>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot catch SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot catch SIGINT: {e}"))?;
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!(signal = "SIGTERM", "Shutting down."),
            _ = int.recv() => info!(signal = "SIGINT", "Shutting down."),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// The send was cut short by the end of the drain window; the rest stays in the spool.
struct Interrupted;

/// The service. Build with [`Shipper::new`], run with [`Shipper::run`].
pub struct Shipper<S: SpoolSource> {
    client: Client,
    cfg: ShipperConfig,
    source: S,
    stats: Stats,
    events: Option<mpsc::UnboundedSender<ShipperEvent>>,
    backoff: Backoff,
    shutdown: watch::Receiver<bool>,
    /// Set when shutdown was signalled: the drain ends here.
    deadline: Option<Instant>,
    last_logged: Option<String>,
    next_persist: Instant,
}

impl<S: SpoolSource> Shipper<S> {
    pub fn new(
        client: Client,
        cfg: ShipperConfig,
        source: S,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let backoff = Backoff::new(cfg.backoff_base, cfg.backoff_cap);
        // Counters on disk from the start: `status` reads them.
        let next_persist = Instant::now();
        let stats = Stats::load(&cfg.state_dir)
            .ok()
            .flatten()
            .unwrap_or_default();
        // Counters are per run except the ones status compares over time.
        let stats = Stats {
            last_success_ms: stats.last_success_ms,
            acked_seq: stats.acked_seq,
            ..Stats::default()
        };
        Self {
            client,
            cfg,
            source,
            stats,
            events: None,
            backoff,
            shutdown,
            deadline: None,
            last_logged: None,
            next_persist,
        }
    }

    /// Where [`ShipperEvent`]s go.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<ShipperEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Runs until shutdown is signalled and the drain is done (or its bound passed). Returns the
    /// final counters (also persisted) and the source, for the caller to close.
    pub async fn run(mut self) -> (Stats, S) {
        info!(
            group = %self.cfg.log_group,
            stream = %self.cfg.log_stream,
            flush_ms = self.cfg.flush.as_millis() as u64,
            "Shipping audit events to CloudWatch Logs."
        );
        let mut fill = fill::Fill::new(&self.cfg.limits);
        loop {
            self.note_shutdown();
            let mut read_any = false;
            let room = fill.room();
            if let Some((records, bytes)) = room {
                match self.source.read_batch(records, bytes) {
                    Ok(recs) => {
                        read_any = !recs.is_empty();
                        fill.add(recs, Instant::now());
                    }
                    Err(e) => self.note_error(&format!("spool read failed: {e}")),
                }
            }
            let now = Instant::now();
            let ready = fill.ready(now, self.cfg.flush, self.cfg.idle);
            if ready.is_some() || (self.deadline.is_some() && !fill.is_empty()) {
                let records = fill.take();
                debug!(events = records.len(), why = ?ready, "Sending a batch.");
                if self.ship(records).await.is_err() {
                    warn!(
                        acked_seq = ?self.stats.acked_seq,
                        "Drain window over: the rest stays in the spool for the next start."
                    );
                    break;
                }
                continue;
            }
            if let Some(deadline) = self.deadline {
                if (fill.is_empty() && !read_any) || now >= deadline {
                    info!(acked_seq = ?self.stats.acked_seq, "Drained.");
                    break;
                }
                continue;
            }
            if read_any && fill.room().is_some() {
                // More may be waiting right now: read again before sleeping.
                continue;
            }
            let wait = fill.wait(now, self.cfg.flush, self.cfg.idle, self.cfg.poll);
            self.sleep_or_shutdown(wait).await;
            self.maybe_persist(false);
        }
        self.maybe_persist(true);
        (self.stats, self.source)
    }

    fn note_shutdown(&mut self) {
        if self.deadline.is_none() && *self.shutdown.borrow() {
            self.start_drain();
        }
    }

    fn start_drain(&mut self) {
        if self.deadline.is_none() {
            info!(
                bound_ms = self.cfg.drain_timeout.as_millis() as u64,
                "Draining the spool before exit."
            );
            self.deadline = Some(Instant::now() + self.cfg.drain_timeout);
        }
    }

    /// Sleeps `d`, cut short by a shutdown signal (which starts the drain) or the drain's end.
    /// Returns false when the drain window is over.
    async fn sleep_or_shutdown(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        match self.deadline {
            Some(deadline) => {
                tokio::time::sleep_until(until.min(deadline)).await;
                until <= deadline
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => {}
                    changed = self.shutdown.changed() => {
                        // A dropped sender means nobody can signal any more: treat as shutdown.
                        if changed.is_err() || *self.shutdown.borrow() {
                            self.start_drain();
                        }
                    }
                }
                true
            }
        }
    }

    fn emit(&self, ev: ShipperEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }

    /// `status` shows FAIL while the operator must act; any other outcome ends the episode.
    fn note_operator_wait(&mut self, c: &Classified) {
        if c.action != Action::Wait {
            // A transient error in between does not mean the operator fixed anything.
            return;
        }
        match &mut self.stats.waiting_for_operator {
            Some(w) if w.code == c.code => w.message = c.message.clone(),
            _ => {
                self.stats.waiting_for_operator = Some(OperatorWait {
                    code: c.code.clone(),
                    since_ms: now_ms(),
                    message: c.message.clone(),
                })
            }
        }
    }

    fn note_error(&mut self, message: &str) {
        self.stats.last_error = Some(message.to_string());
        self.stats.last_error_ms = Some(now_ms());
    }

    fn maybe_persist(&mut self, force: bool) {
        let now = Instant::now();
        if !force && now < self.next_persist {
            return;
        }
        self.next_persist = now + self.cfg.stats_every;
        if let Some(b) = self.source.backlog() {
            self.stats.apply_backlog(b);
        }
        self.stats.updated_ms = now_ms();
        if let Err(e) = self.stats.persist(&self.cfg.state_dir) {
            warn!(error = %e, "Cannot persist the shipper counters.");
        }
    }

    fn ack(&mut self, seq: u64) {
        if self.stats.acked_seq.is_some_and(|a| a >= seq) {
            return;
        }
        match self.source.ack(seq) {
            Ok(()) => self.stats.acked_seq = Some(seq),
            Err(e) => {
                // Delivered but not acknowledged: at worst re-sent after a restart (same uids).
                error!(seq, error = %e, "Cannot acknowledge shipped events in the spool.");
                self.note_error(&format!("spool ack failed: {e}"));
            }
        }
    }

    /// Builds and sends one read's worth of records; acks as batches succeed.
    async fn ship(&mut self, records: Vec<Record>) -> Result<(), Interrupted> {
        let plan = batch::build(records, now_ms(), &self.cfg.limits);
        for r in &plan.rejected {
            self.emit(ShipperEvent::RejectedLocally {
                seq: r.record.seq,
                time_ms: r.record.time_ms,
                reason: r.reason.as_str(),
            });
        }
        if !plan.rejected.is_empty() {
            warn!(
                events = plan.rejected.len(),
                first_seq = plan.rejected[0].record.seq,
                "Events too old or too far in the future for CloudWatch: kept in the dead-letter file."
            );
            let items: Vec<(u64, i64, &str, &[u8])> = plan
                .rejected
                .iter()
                .map(|r| {
                    (
                        r.record.seq,
                        r.record.time_ms,
                        r.reason.as_str(),
                        r.record.payload.as_slice(),
                    )
                })
                .collect();
            self.dead_letter(&items);
            self.stats.rejected += plan.rejected.len() as u64;
        }
        for t in &plan.truncated {
            warn!(
                seq = t.seq,
                original_bytes = t.original_bytes,
                "Event over 256 KiB truncated."
            );
            self.emit(ShipperEvent::Truncated {
                seq: t.seq,
                original_bytes: t.original_bytes,
            });
            self.stats.truncated += 1;
        }
        for b in &plan.batches {
            self.send_batch(b).await?;
            if let Some(a) = b.ack_seq {
                self.ack(a);
            }
        }
        if let Some(m) = plan.max_seq {
            self.ack(m);
        }
        self.maybe_persist(false);
        Ok(())
    }

    /// Appends rejected records to the dead-letter file (bounded).
    fn dead_letter(&mut self, items: &[(u64, i64, &str, &[u8])]) {
        let path = self.cfg.state_dir.join(DEAD_LETTER_FILE);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut buf = Vec::new();
        for (seq, time_ms, reason, payload) in items {
            let line = serde_json::json!({
                "sequence": seq,
                "time": time_ms,
                "reason": reason,
                "rejected_ms": now_ms(),
                "record": String::from_utf8_lossy(payload),
            });
            buf.extend_from_slice(line.to_string().as_bytes());
            buf.push(b'\n');
        }
        if size + buf.len() as u64 > self.cfg.dead_letter_max_bytes {
            self.stats.dropped += items.len() as u64;
            error!(
                path = %path.display(),
                events = items.len(),
                "Dead-letter file full: rejected events dropped."
            );
            return;
        }
        let res = std::fs::create_dir_all(&self.cfg.state_dir).and_then(|()| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&buf)?;
            f.sync_data()
        });
        if let Err(e) = res {
            self.stats.dropped += items.len() as u64;
            error!(path = %path.display(), error = %e, "Cannot write the dead-letter file.");
        }
    }

    /// Logs an error once per distinct cause at warn/error, then quietly (debug) until it changes.
    fn log_failure(&mut self, c: &Classified, attempt: u32, delay: Duration) {
        let first = self.last_logged.as_deref() != Some(c.code.as_str());
        if first {
            match c.action {
                Action::Wait => {
                    error!(code = %c.code, error = %c.message, "CloudWatch Logs refuses the agent: waiting for the operator.")
                }
                _ => {
                    warn!(code = %c.code, error = %c.message, "CloudWatch Logs call failed: retrying.")
                }
            }
            self.last_logged = Some(c.code.clone());
        }
        info!(
            code = %c.code,
            attempt,
            delay_ms = delay.as_millis() as u64,
            "Backing off."
        );
        self.note_error(&c.message);
    }

    async fn send_batch(&mut self, b: &batch::Batch) -> Result<(), Interrupted> {
        let events: Result<Vec<InputLogEvent>, _> = b
            .events
            .iter()
            .map(|e| {
                InputLogEvent::builder()
                    .timestamp(e.time_ms)
                    .message(e.message.clone())
                    .build()
            })
            .collect();
        let events = match events {
            Ok(e) => e,
            Err(e) => {
                let c = Classified {
                    action: Action::Reject,
                    code: "build".into(),
                    message: e.to_string(),
                };
                self.reject_batch(b, &c);
                return Ok(());
            }
        };
        let mut created_this_batch = false;
        loop {
            self.note_shutdown();
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Interrupted);
            }
            let send = self
                .client
                .put_log_events()
                .log_group_name(&self.cfg.log_group)
                .log_stream_name(&self.cfg.log_stream)
                .set_log_events(Some(events.clone()))
                .send();
            let result = self.bounded(send).await?;
            let c = match result {
                Ok(out) => {
                    self.accepted(b, out.rejected_log_events_info());
                    return Ok(());
                }
                Err(e) => retry::classify(&e),
            };
            match c.action {
                Action::Accepted => {
                    self.accepted(b, None);
                    return Ok(());
                }
                Action::Reject => {
                    self.reject_batch(b, &c);
                    return Ok(());
                }
                Action::CreateDestination if !created_this_batch => {
                    created_this_batch = true;
                    info!(
                        group = %self.cfg.log_group,
                        stream = %self.cfg.log_stream,
                        "Log stream or group missing: creating it."
                    );
                    if let Err(c) = self.create_destination().await? {
                        self.back_off(&c).await;
                    }
                }
                Action::CreateDestination | Action::Retry => {
                    // Created and still not found (e.g. deleted again): back off, create again.
                    created_this_batch = false;
                    self.back_off(&c).await;
                }
                Action::Wait => self.back_off(&c).await,
            }
            self.maybe_persist(false);
        }
    }

    /// Awaits one CloudWatch call, bounded by the drain: a shutdown signal that arrives while the
    /// call is in flight starts the drain window, and the call is dropped (cancelled) when the
    /// window ends — an endpoint that never answers cannot hold the stop for the SDK's read
    /// timeout on top of `drain_secs`. What was in flight stays unacknowledged in the spool.
    async fn bounded<F: std::future::Future>(&mut self, call: F) -> Result<F::Output, Interrupted> {
        tokio::pin!(call);
        loop {
            if let Some(d) = self.deadline {
                return tokio::time::timeout_at(d, &mut call)
                    .await
                    .map_err(|_| Interrupted);
            }
            tokio::select! {
                out = &mut call => return Ok(out),
                changed = self.shutdown.changed() => {
                    // A dropped sender means nobody can signal any more: treat as shutdown.
                    if changed.is_err() || *self.shutdown.borrow() {
                        self.start_drain();
                    }
                }
            }
        }
    }

    async fn back_off(&mut self, c: &Classified) {
        let delay = match c.action {
            Action::Wait => self.backoff.at_cap(),
            _ => self.backoff.next_delay(),
        };
        self.stats.retried += 1;
        let attempt = self.backoff.attempts();
        self.log_failure(c, attempt, delay);
        self.note_operator_wait(c);
        // `status` reads the counters: a wait that runs past the next scheduled write (an
        // operator error waits 15-30 s) must not hide the error and the retry for its length.
        if Instant::now() + delay >= self.next_persist {
            self.maybe_persist(true);
        }
        self.sleep_or_shutdown(delay).await;
    }

    fn accepted(
        &mut self,
        b: &batch::Batch,
        info: Option<&aws_sdk_cloudwatchlogs::types::RejectedLogEventsInfo>,
    ) {
        let n = b.events.len();
        let mut rejected: Vec<(usize, &'static str)> = Vec::new();
        if let Some(info) = info {
            let idx = |v: Option<i32>| v.map(|i| (i.max(0) as usize).min(n));
            if let Some(start) = idx(info.too_new_log_event_start_index()) {
                rejected.extend((start..n).map(|i| (i, "too_new")));
            }
            if let Some(end) = idx(info.too_old_log_event_end_index()) {
                rejected.extend((0..end).map(|i| (i, "too_old")));
            }
            if let Some(end) = idx(info.expired_log_event_end_index()) {
                rejected.extend((0..end).map(|i| (i, "expired")));
            }
            rejected.sort_unstable();
            rejected.dedup_by_key(|(i, _)| *i);
        }
        if !rejected.is_empty() {
            let count = |k: &str| rejected.iter().filter(|(_, r)| *r == k).count();
            let ev = ShipperEvent::RejectedByService {
                seqs: rejected.iter().map(|(i, _)| b.events[*i].seq).collect(),
                too_new: count("too_new"),
                too_old: count("too_old"),
                expired: count("expired"),
            };
            warn!(
                events = rejected.len(),
                "CloudWatch rejected events of an accepted batch: kept in the dead-letter file."
            );
            let items: Vec<(u64, i64, &str, &[u8])> = rejected
                .iter()
                .map(|(i, r)| {
                    let e = &b.events[*i];
                    (e.seq, e.time_ms, *r, e.message.as_bytes())
                })
                .collect();
            self.dead_letter(&items);
            self.stats.rejected += rejected.len() as u64;
            self.emit(ev);
        }
        self.stats.shipped += (n - rejected.len()) as u64;
        self.stats.batches += 1;
        self.stats.last_success_ms = Some(now_ms());
        self.stats.waiting_for_operator = None;
        if self.last_logged.take().is_some() {
            info!(
                attempts = self.backoff.attempts(),
                "CloudWatch Logs accepts events again."
            );
        }
        self.backoff.reset();
        debug!(events = n, max_seq = b.max_seq, "Batch accepted.");
    }

    fn reject_batch(&mut self, b: &batch::Batch, c: &Classified) {
        let first_seq = b.events.iter().map(|e| e.seq).min().unwrap_or(0);
        error!(
            code = %c.code,
            error = %c.message,
            events = b.events.len(),
            first_seq,
            last_seq = b.max_seq,
            "CloudWatch Logs refused a batch: kept in the dead-letter file."
        );
        let items: Vec<(u64, i64, &str, &[u8])> = b
            .events
            .iter()
            .map(|e| (e.seq, e.time_ms, c.code.as_str(), e.message.as_bytes()))
            .collect();
        self.dead_letter(&items);
        self.stats.rejected += b.events.len() as u64;
        self.note_error(&c.message);
        self.emit(ShipperEvent::BatchRejected {
            first_seq,
            last_seq: b.max_seq,
            events: b.events.len(),
            code: c.code.clone(),
            message: c.message.clone(),
        });
    }

    /// CreateLogStream; when the group is the missing one, CreateLogGroup (KMS key, retention)
    /// first. ResourceAlreadyExists is success either way.
    /// The outer `Err` is the drain window ending during a call.
    async fn create_destination(&mut self) -> Result<Result<(), Classified>, Interrupted> {
        match self.create_stream().await? {
            Ok(()) => return Ok(Ok(())),
            Err(c) if c.action != Action::CreateDestination => return Ok(Err(c)),
            Err(_) => {}
        }
        let mut req = self
            .client
            .create_log_group()
            .log_group_name(&self.cfg.log_group);
        if let Some(k) = &self.cfg.kms_key_id {
            req = req.kms_key_id(k);
        }
        match self.bounded(req.send()).await? {
            Ok(_) => {
                info!(group = %self.cfg.log_group, kms = self.cfg.kms_key_id.is_some(), "Created the log group.");
                self.stats.created += 1;
                self.emit(ShipperEvent::DestinationCreated {
                    group: true,
                    stream: false,
                });
                if let Some(days) = self.cfg.retention_days {
                    let call = self
                        .client
                        .put_retention_policy()
                        .log_group_name(&self.cfg.log_group)
                        .retention_in_days(days as i32)
                        .send();
                    let r = self.bounded(call).await?;
                    if let Err(e) = r {
                        let c = retry::classify(&e);
                        warn!(days, error = %c.message, "Cannot set the log group's retention.");
                    }
                }
            }
            Err(e) => {
                let c = retry::classify(&e);
                if c.code != "ResourceAlreadyExistsException" {
                    return Ok(Err(as_config_problem(c)));
                }
            }
        }
        self.create_stream().await
    }

    async fn create_stream(&mut self) -> Result<Result<(), Classified>, Interrupted> {
        let call = self
            .client
            .create_log_stream()
            .log_group_name(&self.cfg.log_group)
            .log_stream_name(&self.cfg.log_stream)
            .send();
        let r = self.bounded(call).await?;
        Ok(match r {
            Ok(_) => {
                info!(stream = %self.cfg.log_stream, "Created the log stream.");
                self.stats.created += 1;
                self.emit(ShipperEvent::DestinationCreated {
                    group: false,
                    stream: true,
                });
                Ok(())
            }
            Err(e) => {
                let c = retry::classify(&e);
                if c.code == "ResourceAlreadyExistsException" {
                    Ok(())
                } else if c.action == Action::CreateDestination {
                    Err(c)
                } else {
                    Err(as_config_problem(c))
                }
            }
        })
    }
}

/// A create call that fails for a reason other than a transient one is a configuration problem
/// (bad name, KMS key, permissions): wait for the operator rather than drop anything.
fn as_config_problem(mut c: Classified) -> Classified {
    if c.action != Action::Retry {
        c.action = Action::Wait;
    }
    c
}

/// An in-memory [`SpoolSource`] for tests and benchmarks. Clones share the same spool, so a test
/// can append while the shipper reads.
#[derive(Debug, Clone, Default)]
pub struct MemorySpool {
    inner: Arc<Mutex<MemoryInner>>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Records not yet acknowledged, oldest first.
    records: VecDeque<Record>,
    /// How many of `records` were already handed out.
    cursor: usize,
    next_seq: u64,
    acked: Option<u64>,
}

impl MemorySpool {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panicking test thread must not hide the spool from the others.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a record; returns its sequence number (from 1).
    pub fn push(&self, time_ms: i64, payload: Vec<u8>) -> u64 {
        let mut g = self.lock();
        g.next_seq += 1;
        let seq = g.next_seq;
        g.records.push_back(Record {
            seq,
            time_ms,
            payload,
        });
        seq
    }

    pub fn acked(&self) -> Option<u64> {
        self.lock().acked
    }

    /// Records not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.lock().records.len()
    }

    /// What a restart does: the read cursor goes back to the last ack.
    pub fn rewind_to_ack(&self) {
        self.lock().cursor = 0;
    }
}

impl SpoolSource for MemorySpool {
    fn read_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, String> {
        let mut g = self.lock();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max_records {
            let Some(r) = g.records.get(g.cursor) else {
                break;
            };
            if !out.is_empty() && bytes + r.wire_bytes() > max_bytes {
                break;
            }
            bytes += r.wire_bytes();
            out.push(r.clone());
            g.cursor += 1;
        }
        Ok(out)
    }

    fn ack(&mut self, seq: u64) -> Result<(), String> {
        let mut g = self.lock();
        while g.records.front().is_some_and(|r| r.seq <= seq) {
            g.records.pop_front();
            g.cursor = g.cursor.saturating_sub(1);
        }
        g.acked = Some(g.acked.map_or(seq, |a| a.max(seq)));
        Ok(())
    }

    fn backlog(&self) -> Option<Backlog> {
        let g = self.lock();
        Some(Backlog {
            bytes: g.records.iter().map(|r| r.payload.len() as u64).sum(),
            oldest_unshipped_ms: g.records.front().map(|r| r.time_ms),
            dropped: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> NotebookIdentity {
        NotebookIdentity {
            name: "nb-1".into(),
            arn: "arn:aws:sagemaker:eu-west-1:123456789012:notebook-instance/nb-1".into(),
            region: "eu-west-1".into(),
            account: "123456789012".into(),
        }
    }

    #[test]
    fn templates_render() {
        let id = identity();
        assert_eq!(
            render_template("{notebook}/audit", &id).expect("render"),
            "nb-1/audit"
        );
        assert_eq!(
            render_template("/a/{account}/{region}/{notebook}", &id).expect("render"),
            "/a/123456789012/eu-west-1/nb-1"
        );
        assert!(render_template("{user}", &id)
            .expect_err("unknown")
            .contains("unknown placeholder {user}"));
        assert!(render_template("{notebook", &id).is_err());
        assert!(render_template("x}", &id).is_err());
    }

    #[test]
    fn default_destination() {
        let c =
            ShipperConfig::from_audit(&AuditConfig::default(), Some(&identity()), "/tmp/s".into())
                .expect("config");
        assert_eq!(c.log_group, "/aws/sagemaker/NotebookInstances");
        assert_eq!(c.log_stream, "nb-1/audit");
        assert_eq!(c.flush, Duration::from_millis(1000));
        let bad = AuditConfig {
            log_stream: "{notebook}:x".into(),
            ..AuditConfig::default()
        };
        assert!(
            ShipperConfig::from_audit(&bad, Some(&identity()), "/tmp/s".into())
                .expect_err("colon")
                .contains("audit.log_stream")
        );
    }

    /// Regression (issue 13): shipping needed resource-metadata.json even for a fixed stream name.
    #[test]
    fn a_fixed_destination_needs_no_notebook_identity() {
        let fixed = AuditConfig {
            log_stream: "lab-vm-1/audit".into(),
            ..AuditConfig::default()
        };
        let c = ShipperConfig::from_audit(&fixed, None, "/tmp/s".into()).expect("config alone");
        assert_eq!(
            (c.log_group.as_str(), c.log_stream.as_str()),
            ("/aws/sagemaker/NotebookInstances", "lab-vm-1/audit")
        );
        let e = ShipperConfig::from_audit(&AuditConfig::default(), None, "/tmp/s".into())
            .expect_err("{notebook} without an identity");
        assert!(
            e.contains("audit.log_stream") && e.contains("resource-metadata.json"),
            "{e}"
        );
    }

    #[test]
    fn memory_spool_cursor_and_ack() {
        let s = MemorySpool::new();
        for i in 0..5 {
            s.push(i, vec![b'x'; 10]);
        }
        let mut src = s.clone();
        let a = src.read_batch(2, 1000).expect("read");
        assert_eq!(a.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        // 36 bytes each: 2 fit in 80.
        let b = src.read_batch(10, 80).expect("read");
        assert_eq!(b.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
        src.ack(2).expect("ack");
        assert_eq!(s.unacked(), 3);
        s.rewind_to_ack();
        let c = src.read_batch(10, 10).expect("read");
        assert_eq!(
            c.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![3],
            "always one"
        );
    }
}
