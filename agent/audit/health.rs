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
    assess(root, config, now_ms).0
}

/// Stable codes for what makes the audit rows FAIL (`audit_problems` in `status --json`).
pub mod problem {
    /// The daemon should run here and does not (never ran, stopped, crashed).
    pub const DAEMON_DOWN: &str = "daemon_not_running";
    /// The daemon's process is there but it stopped reporting.
    pub const DAEMON_HUNG: &str = "daemon_hung";
    /// The spool is full: audit events are being dropped now.
    pub const DROPPING: &str = "spool_dropping";
    /// Events were dropped and the record of it is not in CloudWatch yet.
    pub const LOSS_UNRECORDED: &str = "loss_not_recorded";
    /// Shipping could not start at all.
    pub const NOT_SHIPPING: &str = "shipping_not_started";
    /// CloudWatch refuses the agent (credentials, permissions, KMS) until the operator acts.
    pub const OPERATOR: &str = "waiting_for_operator";
    /// Records CloudWatch would not take wait in the dead-letter file.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// The oldest unshipped record is older than the limit.
    pub const BACKLOG: &str = "backlog_stale";
    /// The counters cannot be read.
    pub const UNREADABLE: &str = "counters_unreadable";
}

/// The oldest unshipped record may be this old before Shipping is FAIL (docs/STATUS.md): long
/// enough for a throttling storm or a short outage (the shipper retries for as long as it takes),
/// short enough that an admin's check within minutes sees a shipper that is stuck.
pub const BACKLOG_LIMIT_MS: i64 = 5 * 60_000;

/// fanotify events whose directory could not be named when they were read: removed since (its
/// removal is reported, so nothing is lost) or deeper than PATH_MAX (a known gap,
/// docs/WATCHER-DESIGN.md). Counted so an admin sees them; the row stays as it is. The count
/// is of the whole filesystem's events, before they are matched to `audit.paths` (an unnamed
/// event cannot be placed), and starts again at 0 when the daemon restarts.
fn unresolved_evidence(r: &DaemonReport) -> String {
    match r.unresolved_events {
        0 => String::new(),
        n => format!(
            ", {} events unnamed (their directory was gone when read, or past PATH_MAX)",
            thousands(n)
        ),
    }
}

/// `source fanotify, ` or `source inotify (why: what fanotify refused), ` for the daemon row;
/// nothing from a daemon too old to say.
fn source_evidence(r: &DaemonReport) -> String {
    match r.source.as_str() {
        "" => String::new(),
        "fanotify" if r.actors.is_empty() || r.actors == "process-events connector" => {
            "source fanotify, ".to_string()
        }
        // The process table cannot see processes that exit quickly: said, not hidden.
        "fanotify" => format!("source fanotify (actors: {}), ", r.actors),
        s => {
            let why = r
                .source_reason
                .strip_prefix("inotify: ")
                .unwrap_or(&r.source_reason);
            format!("source {s} ({why}), ")
        }
    }
}

/// The audit rows and the codes of what fails in them.
pub fn assess(root: &Root, config: &ValidConfig, now_ms: i64) -> (Vec<Finding>, Vec<&'static str>) {
    const D: (&str, &str) = ("audit_daemon", "Audit daemon");
    const S: (&str, &str) = ("shipping", "Shipping");
    if !config.audit.enabled {
        return (
            vec![
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
            ],
            Vec::new(),
        );
    }
    let mut problems: Vec<&'static str> = Vec::new();
    // Counted only where systemd runs the installed unit (not in a chroot or an image build).
    let systemd = crate::harden::systemd_runs(root);
    let counted = crate::harden::unit_installed(root, UNIT) && systemd;
    let missing_status = if counted {
        Status::Fail
    } else {
        Status::NotConfigured
    };
    let state_dir = root.state_dir();
    let stats = Stats::load(&state_dir);
    let acked = stats
        .as_ref()
        .ok()
        .and_then(|s| s.as_ref())
        .and_then(|s| s.acked_seq)
        .unwrap_or(0);
    let report = DaemonReport::load(&state_dir);
    let losses = report
        .as_ref()
        .map(|r| Losses::of(r, acked, now_ms))
        .unwrap_or_default();
    let daemon = match &report {
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
            losses.worst(missing_status),
            losses.append(format!(
                "stopped {} ago (pid {}); {} events written, {} dropped",
                ago(now_ms, r.stopped_ms.unwrap_or(now_ms)),
                r.pid,
                r.events_written,
                r.events_dropped
            )),
        ),
        Some(r) => match process(r.pid) {
            None => finding(
                D.0,
                D.1,
                losses.worst(missing_status),
                losses.append(format!(
                    "pid {} is gone (crashed or killed); systemd restarts it",
                    r.pid
                )),
            ),
            Some(_) if now_ms - r.updated_ms > STALE_MS => {
                problems.push(problem::DAEMON_HUNG);
                finding(
                    D.0,
                    D.1,
                    Status::Fail,
                    losses.append(format!(
                        "pid {} has not reported for {} (hung?): systemctl restart {UNIT}",
                        r.pid,
                        ago(now_ms, r.updated_ms)
                    )),
                )
            }
            Some((_, rss_kb)) => finding(
                D.0,
                D.1,
                losses.worst(Status::Pass),
                losses.append(format!(
                    "pid {} up {}, RSS {} MB, {}{} watches, {} events, {} dropped, {} rescans{}",
                    r.pid,
                    ago(now_ms, r.started_ms),
                    rss_kb / 1024,
                    source_evidence(r),
                    r.watches,
                    r.events_written,
                    r.events_dropped,
                    r.rescans,
                    unresolved_evidence(r)
                )),
            ),
        },
    };
    if daemon.status == Status::Fail
        && report
            .as_ref()
            .is_none_or(|r| r.stopped_ms.is_some() || process(r.pid).is_none())
    {
        problems.push(problem::DAEMON_DOWN);
    }
    problems.extend(losses.codes.iter().copied());
    let shipping = match stats {
        Err(e) => {
            problems.push(problem::UNREADABLE);
            finding(S.0, S.1, Status::Unknown, e)
        }
        Ok(None) => finding(
            S.0,
            S.1,
            missing_status,
            "no shipper counters yet (shipper.json)".into(),
        ),
        Ok(Some(s)) => {
            let (status, evidence, codes) = shipping_row(&s, &state_dir, now_ms);
            problems.extend(codes);
            finding(S.0, S.1, status, evidence)
        }
    };
    let mut unique = Vec::with_capacity(problems.len());
    for p in problems {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }
    (vec![daemon, shipping], unique)
}

/// What the daemon's drop episodes say, against what CloudWatch acknowledged.
#[derive(Debug, Default)]
struct Losses {
    /// Sentences for the evidence, worst first.
    notes: Vec<String>,
    codes: Vec<&'static str>,
}

impl Losses {
    fn of(r: &DaemonReport, acked: u64, now_ms: i64) -> Self {
        let mut l = Self::default();
        if let Some(d) = &r.dropping {
            l.codes.push(problem::DROPPING);
            l.notes.push(format!(
                "DROPPING: {} audit events dropped since {} (spool full): make shipping work (see Shipping) or raise audit.spool_max_bytes; the dropped paths are recorded when room returns",
                thousands(d.count),
                clock(d.first_ms, now_ms)
            ));
        }
        // Episodes on record: the newest two by name, the rest summed (the line stays readable).
        let mut recorded_named = 0;
        let (mut older, mut older_count) = (0u64, 0u64);
        for e in r.drop_episodes.iter().rev() {
            let when = format!(
                "{} dropped {}",
                thousands(e.count),
                span(e.first_ms, e.last_ms, now_ms)
            );
            match e.recorded_seq {
                Some(seq) if seq <= acked && recorded_named >= 2 => {
                    older += 1;
                    older_count += e.count;
                }
                Some(seq) if seq <= acked => {
                    recorded_named += 1;
                    l.notes.push(format!("{when}, recorded"));
                }
                Some(seq) => {
                    l.codes.push(problem::LOSS_UNRECORDED);
                    l.notes.push(format!(
                        "{when}, not yet on record in CloudWatch (its record, sequence {seq}, waits in the spool): make shipping work"
                    ));
                }
                None => {
                    l.codes.push(problem::LOSS_UNRECORDED);
                    l.notes.push(format!(
                        "{when}, not yet recorded (no room in the spool for the record): it is written when room returns or at the next start"
                    ));
                }
            }
        }
        if older > 0 {
            l.notes.push(format!(
                "{} dropped in {older} earlier episode(s), recorded",
                thousands(older_count)
            ));
        }
        if r.dropped_paths_pending > 0 || r.dropped_paths_unnamed > 0 {
            l.notes.push(format!(
                "{} dropped changes wait to be recorded by path{}",
                thousands(r.dropped_paths_pending),
                if r.dropped_paths_unnamed > 0 {
                    format!(
                        " ({} more beyond the list's cap, counted only)",
                        thousands(r.dropped_paths_unnamed)
                    )
                } else {
                    String::new()
                }
            ));
        }
        l.codes.dedup();
        l
    }

    /// FAIL when anything is lost or not on record; otherwise `otherwise`.
    fn worst(&self, otherwise: Status) -> Status {
        if self.codes.is_empty() {
            otherwise
        } else {
            Status::Fail
        }
    }

    fn append(&self, evidence: String) -> String {
        if self.notes.is_empty() {
            evidence
        } else {
            format!("{evidence}; {}", self.notes.join("; "))
        }
    }
}

/// The Shipping row: FAIL while anything waits for the operator or is not in CloudWatch.
fn shipping_row(s: &Stats, state_dir: &Path, now_ms: i64) -> (Status, String, Vec<&'static str>) {
    let mut codes = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    if let Some(reason) = &s.not_started {
        codes.push(problem::NOT_SHIPPING);
        notes.push(format!(
            "NOT SHIPPING: {reason}; records stay in the spool: fix it, then systemctl restart {UNIT}"
        ));
    }
    if let Some(w) = &s.waiting_for_operator {
        codes.push(problem::OPERATOR);
        notes.push(format!(
            "CloudWatch refuses the agent since {} ({}): {}; nothing is lost (the spool keeps it) and shipping resumes by itself once that is fixed",
            clock(w.since_ms, now_ms),
            w.code,
            w.message
        ));
    }
    let dead = dead_letters(state_dir);
    if dead > 0 {
        codes.push(problem::DEAD_LETTER);
        notes.push(format!(
            "{} records CloudWatch would not take are in {} and not in CloudWatch: re-send them or keep them elsewhere, then run `notebook-agent audit clear-rejected`",
            thousands(dead),
            display(state_dir, super::shipper::DEAD_LETTER_FILE)
        ));
    }
    if let Some(t) = s
        .oldest_unshipped_ms
        .filter(|t| now_ms - t > BACKLOG_LIMIT_MS)
    {
        codes.push(problem::BACKLOG);
        notes.push(format!(
            "the oldest unshipped record is {} old (limit {} min): check the endpoint, proxy and network (the last error says which)",
            ago(now_ms, t),
            BACKLOG_LIMIT_MS / 60_000
        ));
    }
    let unshipped = s.spool_bytes.unwrap_or(0);
    let last = s
        .last_success_ms
        .map(|t| format!("last PutLogEvents {} ago", ago(now_ms, t)))
        .unwrap_or_else(|| "no PutLogEvents accepted yet".into());
    let oldest = s
        .oldest_unshipped_ms
        .map(|t| format!(", oldest unshipped {} old", ago(now_ms, t)))
        .unwrap_or_default();
    let mut evidence = format!(
        "spool: {unshipped} bytes unshipped{oldest}, {last}; {} shipped, {} retried, {} rejected",
        s.shipped, s.retried, s.rejected
    );
    // The last error, while it is newer than the last success.
    let failing = match (s.last_error_ms, s.last_success_ms) {
        (Some(e), Some(ok)) => e > ok,
        (Some(_), None) => true,
        _ => false,
    };
    if let (Some(err), true) = (&s.last_error, failing) {
        if s.waiting_for_operator.is_none() {
            evidence = format!("{evidence}; last error: {err}");
        }
    }
    if notes.is_empty() {
        (Status::Pass, evidence, codes)
    } else {
        (
            Status::Fail,
            format!("{}; {evidence}", notes.join("; ")),
            codes,
        )
    }
}

/// Records in the dead-letter file (its lines).
pub fn dead_letters(state_dir: &Path) -> u64 {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(state_dir.join(super::shipper::DEAD_LETTER_FILE)) else {
        return 0;
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    while let Ok(k) = f.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
    }
    n
}

/// 21777 → "21,777".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `HH:MM` UTC, with the date in front when it is not today's.
fn clock(ms: i64, now_ms: i64) -> String {
    let (d, hm) = civil(ms);
    if civil(now_ms).0 == d {
        format!("{hm} UTC")
    } else {
        format!("{d} {hm} UTC")
    }
}

/// `14:27–14:28 UTC` (the date in front when not today's).
fn span(first_ms: i64, last_ms: i64, now_ms: i64) -> String {
    let (d1, a) = civil(first_ms);
    let (d2, b) = civil(last_ms);
    let today = civil(now_ms).0;
    if d1 == d2 && d1 == today {
        format!("{a}–{b} UTC")
    } else if d1 == d2 {
        format!("{d1} {a}–{b} UTC")
    } else {
        format!("{d1} {a}–{d2} {b} UTC")
    }
}

/// (`YYYY-MM-DD`, `HH:MM`) in UTC of a time in ms since the epoch (days to civil date: Howard
/// Hinnant's algorithm).
fn civil(ms: i64) -> (String, String) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        format!("{year:04}-{month:02}-{day:02}"),
        format!("{:02}:{:02}", tod / 3600, (tod % 3600) / 60),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::daemon::DropEpisode;

    /// 2026-12-04 14:27:00 UTC.
    const T: i64 = 1_796_394_420_000;

    #[test]
    fn numbers_and_times_for_the_evidence() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(21_777), "21,777");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(civil(0), ("1970-01-01".into(), "00:00".into()));
        assert_eq!(civil(T), ("2026-12-04".into(), "14:27".into()));
        assert_eq!(span(T, T + 60_000, T + 3_600_000), "14:27–14:28 UTC");
        assert_eq!(
            span(T, T + 60_000, T + 86_400_000),
            "2026-12-04 14:27–14:28 UTC"
        );
        assert_eq!(clock(T, T), "14:27 UTC");
    }

    #[test]
    fn unnamed_fanotify_events_are_counted_only_when_there_are_some() {
        let mut r = DaemonReport::default();
        assert_eq!(unresolved_evidence(&r), "");
        r.unresolved_events = 1_204;
        assert_eq!(
            unresolved_evidence(&r),
            ", 1,204 events unnamed (their directory was gone when read, or past PATH_MAX)"
        );
    }

    fn report(dropping: Option<DropEpisode>, episodes: Vec<DropEpisode>) -> DaemonReport {
        DaemonReport {
            dropping,
            drop_episodes: episodes,
            ..DaemonReport::default()
        }
    }

    /// Regression (issue 13): "21777 dropped" was evidence of a PASS row.
    #[test]
    fn a_loss_fails_until_its_record_is_acknowledged_and_stays_named_after() {
        let ep = |seq| DropEpisode {
            count: 21_777,
            first_ms: T,
            last_ms: T + 60_000,
            recorded_seq: seq,
        };
        let now = T + 120_000;
        let l = Losses::of(&report(Some(ep(None)), vec![]), 0, now);
        assert_eq!(l.worst(Status::Pass), Status::Fail);
        assert_eq!(l.codes, vec![problem::DROPPING]);
        assert!(l.notes[0].contains("21,777 audit events dropped since 14:27 UTC"));

        let l = Losses::of(&report(None, vec![ep(Some(500))]), 499, now);
        assert_eq!(
            l.worst(Status::Pass),
            Status::Fail,
            "record not acknowledged"
        );
        assert_eq!(l.codes, vec![problem::LOSS_UNRECORDED]);
        let l = Losses::of(&report(None, vec![ep(None)]), 10_000, now);
        assert_eq!(l.worst(Status::Pass), Status::Fail, "no record at all");

        let l = Losses::of(&report(None, vec![ep(Some(500))]), 500, now);
        assert_eq!(l.worst(Status::Pass), Status::Pass);
        assert_eq!(
            l.append("pid 1".into()),
            "pid 1; 21,777 dropped 14:27–14:28 UTC, recorded"
        );
    }

    /// Regression (issue 13): AccessDenied, a dead-lettered batch and a shipper that never started
    /// all said Shipping PASS.
    #[test]
    fn shipping_fails_while_the_operator_must_act() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = T;
        let ok = Stats {
            shipped: 5,
            last_success_ms: Some(now - 3_000),
            spool_bytes: Some(0),
            ..Stats::default()
        };
        assert_eq!(shipping_row(&ok, dir.path(), now).0, Status::Pass);

        let denied = Stats {
            waiting_for_operator: Some(super::super::shipper::OperatorWait {
                code: "AccessDeniedException".into(),
                since_ms: now - 60_000,
                message: "AccessDeniedException: not allowed (the notebook's execution role needs logs:PutLogEvents)".into(),
            }),
            ..ok.clone()
        };
        let (st, ev, codes) = shipping_row(&denied, dir.path(), now);
        assert_eq!(st, Status::Fail);
        assert_eq!(codes, vec![problem::OPERATOR]);
        assert!(
            ev.contains("refuses the agent since 14:26 UTC (AccessDeniedException)"),
            "{ev}"
        );

        let not_started = Stats {
            not_started: Some("audit.region: not set".into()),
            ..Stats::default()
        };
        let (st, ev, codes) = shipping_row(&not_started, dir.path(), now);
        assert_eq!((st, codes), (Status::Fail, vec![problem::NOT_SHIPPING]));
        assert!(ev.contains("audit.region: not set"), "{ev}");

        let behind = Stats {
            oldest_unshipped_ms: Some(now - BACKLOG_LIMIT_MS - 1_000),
            ..ok.clone()
        };
        assert_eq!(
            shipping_row(&behind, dir.path(), now).2,
            vec![problem::BACKLOG]
        );

        std::fs::write(
            dir.path().join(super::super::shipper::DEAD_LETTER_FILE),
            "{}\n{}\n",
        )
        .expect("write");
        let (st, ev, codes) = shipping_row(&ok, dir.path(), now);
        assert_eq!((st, codes), (Status::Fail, vec![problem::DEAD_LETTER]));
        assert!(
            ev.starts_with("2 records CloudWatch would not take"),
            "{ev}"
        );
        assert!(ev.contains("notebook-agent audit clear-rejected"), "{ev}");
    }
}
