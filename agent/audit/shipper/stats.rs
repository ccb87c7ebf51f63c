//! The shipper's counters, persisted as `<state>/shipper.json` for `notebook-agent status`
//! (written to a temp file in the same directory, fsynced, renamed over the old one).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name of the persisted counters inside the state directory.
pub const STATS_FILE: &str = "shipper.json";

/// Counters since the daemon started. Times are ms since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events CloudWatch accepted.
    pub shipped: u64,
    /// PutLogEvents batches accepted.
    pub batches: u64,
    /// Failed attempts that were retried.
    pub retried: u64,
    /// Events not delivered: rejected locally (too old/new), by CloudWatch
    /// (`rejectedLogEventsInfo`) or with their whole batch (4xx). Kept in the dead-letter file.
    pub rejected: u64,
    /// Events lost: the spool's own drops when full (reported by the spool, see [`Backlog`]).
    pub dropped: u64,
    /// Events whose message was replaced by the truncation wrapper.
    pub truncated: u64,
    /// Log groups / streams created after ResourceNotFound.
    pub created: u64,
    /// Time of the last accepted batch.
    pub last_success_ms: Option<i64>,
    /// Time and text of the last error (cleared by nothing: status compares the times).
    pub last_error_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Highest acknowledged spool sequence number.
    pub acked_seq: Option<u64>,
    /// From the spool, when it reports them: bytes not yet shipped, age of the oldest.
    pub spool_bytes: Option<u64>,
    pub oldest_unshipped_ms: Option<i64>,
    /// Set while CloudWatch refuses the agent for a reason only the operator can fix
    /// (credentials, permissions, KMS): nothing is delivered until then. Cleared by the next
    /// accepted batch.
    #[serde(default)]
    pub waiting_for_operator: Option<OperatorWait>,
    /// Why shipping could not start at all in this run (no region, a template that needs the
    /// notebook's identity, a bad CA bundle, …). Written by `watch` instead of the counters.
    #[serde(default)]
    pub not_started: Option<String>,
    /// When this file was written.
    pub updated_ms: i64,
}

/// CloudWatch refuses the agent until the operator acts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorWait {
    /// The error code (`AccessDeniedException`, `credentials`, `KMSInvalidStateException`, …).
    pub code: String,
    /// The first refusal of this episode.
    pub since_ms: i64,
    /// The operator's line: what failed and what to change.
    pub message: String,
}

/// What the spool knows about its backlog (the hook for `spool bytes` and `oldest unshipped`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub bytes: u64,
    pub oldest_unshipped_ms: Option<i64>,
    /// Total records the spool dropped because it was full.
    pub dropped: u64,
}

impl Stats {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATS_FILE)
    }

    /// Writes the counters atomically: temp file in the state directory, fsync, rename.
    pub fn persist(&self, state_dir: &Path) -> Result<(), String> {
        let target = Self::path(state_dir);
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| format!("cannot encode the shipper counters: {e}"))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".shipper.json.")
            .tempfile_in(state_dir)
            .map_err(|e| format!("cannot create a temp file in {}: {e}", state_dir.display()))?;
        tmp.write_all(&json)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.path().display()))?;
        tmp.persist(&target)
            .map_err(|e| format!("cannot rename into {}: {}", target.display(), e.error))?;
        Ok(())
    }

    /// Reads the persisted counters (for `status`). `Ok(None)` when the daemon never wrote them.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, String> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| format!("{}: not valid shipper counters: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Records that shipping could not start (replaces any counters of an earlier run: none of
    /// them describe this one).
    pub fn persist_not_started(state_dir: &Path, reason: &str, now_ms: i64) -> Result<(), String> {
        let previous = Self::load(state_dir).ok().flatten().unwrap_or_default();
        Self {
            // What status compares over time survives, as with a shipper that starts.
            last_success_ms: previous.last_success_ms,
            acked_seq: previous.acked_seq,
            not_started: Some(reason.to_string()),
            updated_ms: now_ms,
            ..Self::default()
        }
        .persist(state_dir)
    }

    pub fn apply_backlog(&mut self, backlog: Backlog) {
        self.spool_bytes = Some(backlog.bytes);
        self.oldest_unshipped_ms = backlog.oldest_unshipped_ms;
        self.dropped = backlog.dropped;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(Stats::load(dir.path()).expect("load"), None);
        let mut s = Stats {
            shipped: 5,
            last_error: Some("ThrottlingException: slow down".into()),
            ..Stats::default()
        };
        s.apply_backlog(Backlog {
            bytes: 10,
            oldest_unshipped_ms: Some(3),
            dropped: 1,
        });
        s.persist(dir.path()).expect("persist");
        s.shipped = 6;
        s.persist(dir.path()).expect("persist again");
        assert_eq!(Stats::load(dir.path()).expect("load"), Some(s));
        let leftovers = std::fs::read_dir(dir.path()).expect("ls").count();
        assert_eq!(leftovers, 1, "no temp files left behind");
    }
}
