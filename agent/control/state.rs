//! The record `apply` leaves in the state directory (`var/lib/notebook-agent/state.json`): when it
//! ran, which version, which config, what changed and what the checks said. `status` and the
//! daemon read it; it never holds secrets (URLs are serialised redacted).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::apply::ApplyReport;
use crate::config::ValidConfig;
use crate::host::safe_write::write_private;
use crate::host::Root;

pub const STATE_FILE: &str = "state.json";

#[derive(Serialize)]
struct ApplyRecord<'a> {
    version: u32,
    agent_version: &'static str,
    applied_at_unix_ms: u128,
    config_source: String,
    changed: usize,
    report: &'a ApplyReport,
}

pub fn record_apply(root: &Root, config: &ValidConfig, report: &ApplyReport) -> Result<(), String> {
    let record = ApplyRecord {
        version: 1,
        agent_version: env!("CARGO_PKG_VERSION"),
        applied_at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
        config_source: config.source().display().to_string(),
        changed: report.changed(),
        report,
    };
    let text = serde_json::to_string_pretty(&record).map_err(|e| e.to_string())?;
    // Evidence may quote a file: the config's one redaction, as for everything printed.
    let text = config.redactor().scrub(&text);
    write_private(&root.state_dir().join(STATE_FILE), text.as_bytes())
}
