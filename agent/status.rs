//! The status object: every control's check plus the audit daemon's health. `status --json`
//! prints it, and the daemon ships it in every heartbeat; docs/STATUS.md is its schema.

use serde::Serialize;

use crate::config::ValidConfig;
use crate::control::{Context, Control, Finding, Status};
use crate::host::{CommandRunner, Root};

/// Bumped when a field changes meaning or goes away (adding a field does not bump it).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub version: u32,
    pub agent_version: &'static str,
    /// Every control passes or is not configured.
    pub compliant: bool,
    /// The audit daemon and shipping rows allow exit 0 (PASS, or NOT_CONFIGURED where the unit
    /// is not installed).
    pub audit_healthy: bool,
    /// Stable codes of what makes the audit rows FAIL (`crate::audit::health::problem`), for
    /// scripts: empty when the audit is healthy. docs/STATUS.md lists them.
    pub audit_problems: Vec<&'static str>,
    pub controls: Vec<Finding>,
    pub audit: Vec<Finding>,
}

impl StatusReport {
    /// The ids of the controls that are not compliant.
    pub fn drifted(&self) -> Vec<String> {
        self.controls
            .iter()
            .filter(|f| !passes(f))
            .map(|f| f.control.to_string())
            .collect()
    }

    /// The report as JSON with every configured secret redacted.
    pub fn to_redacted_json(&self, config: &ValidConfig) -> Result<String, String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| format!("status: {e}"))?;
        Ok(config.redactor().scrub(&text))
    }
}

/// A control's finding allows compliance. An unknown result is not evidence of compliance.
pub fn passes(f: &Finding) -> bool {
    matches!(f.status, Status::Pass | Status::NotConfigured)
}

/// Runs every control's check (on a fresh view of the host) and reads the audit health.
pub fn collect(
    root: &Root,
    config: &ValidConfig,
    runner: &dyn CommandRunner,
    controls: &[Box<dyn Control>],
    now_ms: i64,
) -> Result<StatusReport, String> {
    let ctx = Context::new(root, config, runner)?;
    let findings: Vec<Finding> = controls.iter().map(|c| c.check(&ctx)).collect();
    let (audit, audit_problems) = crate::audit::health::assess(root, config, now_ms);
    Ok(StatusReport {
        version: SCHEMA_VERSION,
        agent_version: env!("CARGO_PKG_VERSION"),
        compliant: findings.iter().all(passes),
        audit_healthy: crate::audit::health::healthy(&audit),
        audit_problems,
        controls: findings,
        audit,
    })
}
