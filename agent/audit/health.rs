//! The audit half of `status`: is the daemon running, and is it shipping? Read from what the
//! daemon and the shipper persist in the state directory (`daemon.json`, `shipper.json`) and from
//! `/proc/<pid>` — no network, no daemon cooperation needed.
//!
//! Counted against the exit code only where the `notebook-agent` unit is installed and systemd
//! runs: on a host (or a test root, or a chroot) without them, the rows say so and are NOT
//! CONFIGURED. (`/proc` is read
//! directly rather than through sysinfo: two small files, no dependency in a static binary.)

use std::path::Path;

use super::daemon::DaemonReport;
use super::shipper::Stats;
use crate::config::ValidConfig;
use crate::control::{Finding, Status};
use crate::host::Root;

pub const UNIT: &str = "notebook-agent.service";
/// The daemon rewrites `daemon.json` every 5 s; three missed rewrites is a hung daemon.
const STALE_MS: i64 = 15_000;
/// Unshipped records with no successful delivery for this long is a failing shipper.
const SHIP_STALE_MS: i64 = 5 * 60_000;

fn finding(
    control: &'static str,
    title: &'static str,
    status: Status,
    evidence: String,
) -> Finding {
    Finding {
        control,
        title,
        status,
        evidence,
    }
}

/// `(state, VmRSS kB, start time in clock ticks after boot)` of a live process that is the agent.
fn process(pid: u32) -> Option<(String, u64)> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if !cmdline.contains("notebook-agent") || !cmdline.contains("watch") {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l[name.len()..].trim().to_string())
    };
    let rss_kb = field("VmRSS:")
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    Some((field("State:").unwrap_or_default(), rss_kb))
}

fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0) / 1000;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// The two audit rows: the daemon and the shipping.
pub fn findings(root: &Root, config: &ValidConfig, now_ms: i64) -> Vec<Finding> {
    const D: (&str, &str) = ("audit_daemon", "Audit daemon");
    const S: (&str, &str) = ("shipping", "Shipping");
    if !config.audit.enabled {
        return vec![
            finding(
                D.0,
                D.1,
                Status::NotConfigured,
                "audit.enabled is false".into(),
            ),
            finding(
                S.0,
                S.1,
                Status::NotConfigured,
                "audit.enabled is false".into(),
            ),
        ];
    }
    // Counted only where systemd runs the installed unit (not in a chroot or an image build).
    let systemd = crate::harden::systemd_runs(root);
    let counted = crate::harden::unit_installed(root, UNIT) && systemd;
    let missing_status = if counted {
        Status::Fail
    } else {
        Status::NotConfigured
    };
    let state_dir = root.state_dir();
    let daemon = match DaemonReport::load(&state_dir) {
        None => finding(
            D.0,
            D.1,
            missing_status,
            if counted {
                format!(
                    "never ran: no {}; systemctl start {UNIT}",
                    display(&state_dir, "daemon.json")
                )
            } else {
                format!("{UNIT} is not installed and no daemon ran here")
            },
        ),
        Some(r) if r.stopped_ms.is_some() => finding(
            D.0,
            D.1,
            missing_status,
            format!(
                "stopped {} ago (pid {}); {} events written, {} dropped",
                ago(now_ms, r.stopped_ms.unwrap_or(now_ms)),
                r.pid,
                r.events_written,
                r.events_dropped
            ),
        ),
        Some(r) => match process(r.pid) {
            None => finding(
                D.0,
                D.1,
                missing_status,
                format!(
                    "pid {} is gone (crashed or killed); systemd restarts it",
                    r.pid
                ),
            ),
            Some(_) if now_ms - r.updated_ms > STALE_MS => finding(
                D.0,
                D.1,
                Status::Fail,
                format!(
                    "pid {} has not reported for {} (hung?)",
                    r.pid,
                    ago(now_ms, r.updated_ms)
                ),
            ),
            Some((_, rss_kb)) => finding(
                D.0,
                D.1,
                Status::Pass,
                format!(
                    "pid {} up {}, RSS {} MB, {} watches, {} events, {} dropped, {} rescans",
                    r.pid,
                    ago(now_ms, r.started_ms),
                    rss_kb / 1024,
                    r.watches,
                    r.events_written,
                    r.events_dropped,
                    r.rescans
                ),
            ),
        },
    };
    let shipping = match Stats::load(&state_dir) {
        Err(e) => finding(S.0, S.1, Status::Unknown, e),
        Ok(None) => finding(
            S.0,
            S.1,
            missing_status,
            "no shipper counters yet (shipper.json)".into(),
        ),
        Ok(Some(s)) => {
            let unshipped = s.spool_bytes.unwrap_or(0);
            let last = s
                .last_success_ms
                .map(|t| format!("last PutLogEvents {} ago", ago(now_ms, t)))
                .unwrap_or_else(|| "no PutLogEvents accepted yet".into());
            let oldest = s
                .oldest_unshipped_ms
                .map(|t| format!(", oldest unshipped {} old", ago(now_ms, t)))
                .unwrap_or_default();
            let evidence = format!(
                "spool: {unshipped} bytes unshipped{oldest}, {last}; {} shipped, {} retried, {} rejected",
                s.shipped, s.retried, s.rejected
            );
            // The last error, while it is newer than the last success.
            let failing = match (s.last_error_ms, s.last_success_ms) {
                (Some(e), Some(ok)) => e > ok,
                (Some(_), None) => true,
                _ => false,
            };
            let evidence = match (&s.last_error, failing) {
                (Some(err), true) => format!("{evidence}; last error: {err}"),
                _ => evidence,
            };
            let behind = s
                .oldest_unshipped_ms
                .is_some_and(|t| now_ms - t > SHIP_STALE_MS);
            if behind {
                finding(S.0, S.1, Status::Fail, evidence)
            } else {
                finding(S.0, S.1, Status::Pass, evidence)
            }
        }
    };
    vec![daemon, shipping]
}

fn display(dir: &Path, file: &str) -> String {
    dir.join(file).display().to_string()
}

/// Whether the audit rows allow exit 0 (PASS, or not configured here).
pub fn healthy(findings: &[Finding]) -> bool {
    findings
        .iter()
        .all(|f| matches!(f.status, Status::Pass | Status::NotConfigured))
}
