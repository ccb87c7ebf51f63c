//! The shipper inside `watch`: the spool's reader behind the shipper's [`SpoolSource`], the
//! CloudWatch Logs service on its own thread with a tokio runtime, and what the shipper could not
//! deliver as it is turned into agent events for the spool (and so, eventually, for CloudWatch).
//!
//! Stop order: the daemon first stops watching, writes and syncs everything (its last record says
//! it stopped), then [`Shipping::stop`] asks the shipper to drain within its bound (20 s; the unit's
//! `TimeoutStopSec` is 30 s). What is not shipped by then stays in the spool for the next start.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use super::change::AgentEvent;
use super::shipper::batch::EVENT_OVERHEAD;
use super::shipper::{
    build_client, Backlog, ClientSettings, Record, Shipper, ShipperConfig, ShipperEvent,
    SpoolSource,
};
use super::spool::SpoolReader;
use crate::config::ValidConfig;
use crate::host::metadata::NotebookIdentity;
use crate::host::Root;

/// The real spool as the shipper's source: a read cursor from the last acknowledgement.
pub struct SpoolAdapter {
    reader: SpoolReader,
    after: u64,
}

impl SpoolAdapter {
    pub fn new(reader: SpoolReader) -> Self {
        let after = reader.acked_seq();
        Self { reader, after }
    }
}

impl SpoolSource for SpoolAdapter {
    fn read_batch(&mut self, max_records: usize, max_bytes: usize) -> Result<Vec<Record>, String> {
        let records = self
            .reader
            // Sized as CloudWatch counts: payload + 26 bytes per event (the trait's contract).
            .read_sized(self.after, max_records, max_bytes, EVENT_OVERHEAD)
            .map_err(|e| e.to_string())?;
        if let Some(last) = records.last() {
            self.after = last.seq;
        }
        Ok(records
            .into_iter()
            .map(|r| Record {
                seq: r.seq,
                time_ms: r.time_ms,
                payload: r.payload,
            })
            .collect())
    }

    fn ack(&mut self, seq: u64) -> Result<(), String> {
        self.reader.ack(seq).map(|_| ()).map_err(|e| e.to_string())
    }

    fn backlog(&self) -> Option<Backlog> {
        let s = self.reader.stats();
        Some(Backlog {
            bytes: s.unacked_bytes,
            oldest_unshipped_ms: s.oldest_unacked_ms,
            dropped: s.dropped_total,
        })
    }
}

/// What the shipper reports, as the agent event the spool records.
pub fn to_agent_event(ev: ShipperEvent) -> AgentEvent {
    match ev {
        ShipperEvent::RejectedLocally {
            seq,
            time_ms,
            reason,
        } => AgentEvent::Delivery {
            what: "rejected_locally".into(),
            detail: format!(
                "event time {time_ms} {reason}; kept in shipper-rejected.jsonl, not sent"
            ),
            count: 1,
            first_seq: seq,
            last_seq: seq,
        },
        ShipperEvent::RejectedByService {
            seqs,
            too_new,
            too_old,
            expired,
        } => AgentEvent::Delivery {
            what: "rejected_by_service".into(),
            detail: format!(
                "{too_old} too old, {too_new} too new, {expired} expired; kept in shipper-rejected.jsonl"
            ),
            count: seqs.len() as u64,
            first_seq: seqs.iter().copied().min().unwrap_or(0),
            last_seq: seqs.iter().copied().max().unwrap_or(0),
        },
        ShipperEvent::BatchRejected {
            first_seq,
            last_seq,
            events,
            code,
            message,
        } => AgentEvent::Delivery {
            what: "batch_rejected".into(),
            detail: format!(
                "{}; kept in shipper-rejected.jsonl",
                with_code_once(&code, &message)
            ),
            count: events as u64,
            first_seq,
            last_seq,
        },
        ShipperEvent::Truncated {
            seq,
            original_bytes,
        } => AgentEvent::Delivery {
            what: "truncated".into(),
            detail: format!("{original_bytes} bytes, over CloudWatch's event limit; sent truncated with a marker"),
            count: 1,
            first_seq: seq,
            last_seq: seq,
        },
        ShipperEvent::DestinationCreated { group, stream } => AgentEvent::Delivery {
            what: "destination_created".into(),
            detail: format!("log group created: {group}, log stream created: {stream}"),
            count: 0,
            first_seq: 0,
            last_seq: 0,
        },
    }
}

/// `code: message`, unless the message already starts with the code (the classifier's messages
/// do: "InvalidParameterException: …").
fn with_code_once(code: &str, message: &str) -> String {
    if message.starts_with(code) {
        message.to_string()
    } else {
        format!("{code}: {message}")
    }
}

/// What the stop may take beyond `audit.drain_secs` (building the last request, closing the
/// runtime) before `watch` exits without waiting any longer: 20 s + 5 s stays within the unit's
/// `TimeoutStopSec=30`.
pub const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The running shipper.
pub struct Shipping {
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: JoinHandle<()>,
    /// Fires when the shipper thread is done.
    done: Receiver<()>,
    drain: std::time::Duration,
}

impl Shipping {
    /// Starts shipping the spool; the returned receiver carries agent events for the spool.
    pub fn start(
        root: &Root,
        config: &ValidConfig,
        reader: SpoolReader,
    ) -> Result<(Self, Receiver<AgentEvent>), String> {
        let (events_tx, events_rx) = std::sync::mpsc::channel();
        Self::start_with_events(root, config, reader, events_tx).map(|s| (s, events_rx))
    }

    /// Like [`start`](Self::start), sending its agent events into a channel shared with other
    /// producers (the drift monitor), so the daemon reads one receiver.
    pub fn start_with_events(
        root: &Root,
        config: &ValidConfig,
        reader: SpoolReader,
        events_tx: Sender<AgentEvent>,
    ) -> Result<Self, String> {
        // Off a SageMaker notebook (a plain VM or container) there is no identity: shipping then
        // works from the config alone when the names need none and `audit.region` is set.
        let identity = NotebookIdentity::load(root)?;
        let cfg = ShipperConfig::from_audit(&config.audit, identity.as_ref(), root.state_dir())?;
        // A TLS-inspecting proxy's CA is usually the one pip is given.
        let ca: Option<PathBuf> = config
            .pip
            .as_ref()
            .and_then(|p| p.cert.clone())
            .map(|c| root.path(c));
        let settings =
            ClientSettings::from_config(config, identity.as_ref().map(|i| i.region.as_str()), ca)?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done) = std::sync::mpsc::channel();
        let drain = cfg.drain_timeout;
        let thread = std::thread::Builder::new()
            .name("shipper".into())
            .spawn(move || {
                run(settings, cfg, reader, shutdown_rx, events_tx);
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("shipper thread: {e}"))?;
        Ok(Self {
            shutdown,
            thread,
            done,
            drain,
        })
    }

    /// Drain (bounded by the shipper's drain timeout) and wait for the thread — at most the drain
    /// window plus [`STOP_MARGIN`], whatever is in flight: past that the thread is left to the
    /// process exit (the spool keeps everything not acknowledged).
    pub fn stop(self) {
        let _ = self.shutdown.send(true);
        match self.done.recv_timeout(self.drain + STOP_MARGIN) {
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!(
                    bound_secs = (self.drain + STOP_MARGIN).as_secs(),
                    "The shipper did not finish within the drain window: stopping without it; what it had in flight stays in the spool."
                );
            }
        }
    }
}

fn run(
    settings: ClientSettings,
    cfg: ShipperConfig,
    reader: SpoolReader,
    shutdown: tokio::sync::watch::Receiver<bool>,
    events: Sender<AgentEvent>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "Cannot start the shipper's runtime; records stay in the spool.");
            return;
        }
    };
    runtime.block_on(async move {
        let client = match build_client(&settings).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "Cannot build the CloudWatch Logs client; records stay in the spool.");
                return;
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let forward = tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if events.send(to_agent_event(ev)).is_err() {
                    break;
                }
            }
        });
        let shipper = Shipper::new(client, cfg, SpoolAdapter::new(reader), shutdown).with_events(tx);
        let (stats, _source) = shipper.run().await;
        tracing::info!(
            shipped = stats.shipped,
            retried = stats.retried,
            rejected = stats.rejected,
            "Shipper stopped."
        );
        let _ = forward.await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 13): "InvalidParameterException: InvalidParameterException: …".
    #[test]
    fn a_rejected_batch_record_names_its_error_code_once() {
        let ev = to_agent_event(ShipperEvent::BatchRejected {
            first_seq: 1,
            last_seq: 742,
            events: 742,
            code: "InvalidParameterException".into(),
            message: "InvalidParameterException: Log event too large".into(),
        });
        let AgentEvent::Delivery { detail, .. } = ev else {
            panic!("a Delivery event: {ev:?}");
        };
        assert_eq!(
            detail,
            "InvalidParameterException: Log event too large; kept in shipper-rejected.jsonl"
        );
        // A message without the code still gets it.
        let ev = to_agent_event(ShipperEvent::BatchRejected {
            first_seq: 1,
            last_seq: 1,
            events: 1,
            code: "build".into(),
            message: "missing timestamp".into(),
        });
        let AgentEvent::Delivery { detail, .. } = ev else {
            panic!("a Delivery event: {ev:?}");
        };
        assert_eq!(
            detail,
            "build: missing timestamp; kept in shipper-rejected.jsonl"
        );
    }
}
