//! Drift repair and heartbeats in `notebook-agent watch`.
//!
//! One thread watches the directories that hold the files the controls own (`/etc/sudoers`,
//! `/etc/sudoers.d/`, `/etc/group`, `/etc/gshadow`, and every file a control plans: pip.conf
//! files, `/etc/profile.d/notebook-agent-*.sh`, the bashrcs, `/etc/gitconfig`, condarc.d, the
//! environment module and its `.pth` files, the jupyter-server drop-ins) with its own inotify
//! instance — small and separate from the audit watcher, which watches the notebook's data tree.
//! A change is debounced (200 ms), then every control is checked on a fresh view of the host; a
//! periodic full check (60 s) is the backstop for what inotify cannot see (a watched directory
//! created later, a queue overflow).
//!
//! A control that is not compliant is reported once per distinct evidence
//! ([`AgentEvent::DriftFound`]) and, with `drift.reapply`, put back by the same `apply` the
//! command line runs (plan, validate with visudo, execute, check); the result is
//! [`AgentEvent::DriftRepaired`] or [`AgentEvent::DriftRepairFailed`]. Drift is only looked for
//! once `apply` has recorded its state on this host: the daemon never hardens a host nobody
//! hardened.
//!
//! Heartbeats ([`AgentEvent::Heartbeat`], the `status --json` object) go out every
//! `audit.heartbeat_secs` and whenever compliance at the end of a check differs from the last
//! heartbeat's — a drift repaired within the same check leaves compliance unchanged and only its
//! drift events tell of it; a drift that stays is a non-compliant heartbeat.
//!
//! Every event goes to the daemon through `events`, which writes it to the spool in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::change::{now_ms, AgentEvent};
use super::daemon::DaemonReport;
use super::health;
use crate::config::ValidConfig;
use crate::control::apply::apply;
use crate::control::{state::STATE_FILE, Context, Control, Finding};
use crate::harden;
use crate::host::{RealRunner, Root};
use crate::status::{self, passes};

/// Files the controls own whatever the config: the sudo rules and the group files.
const FIXED: &[(&str, Option<&str>)] = &[
    ("/etc", Some("sudoers")),
    ("/etc", Some("group")),
    ("/etc", Some("gshadow")),
    ("/etc/sudoers.d", None),
];

/// How the drift monitor runs.
#[derive(Debug, Clone)]
pub struct DriftOptions {
    /// Re-apply when a control drifted (`drift.reapply`).
    pub reapply: bool,
    /// Heartbeat period (`audit.heartbeat_secs`).
    pub heartbeat: Duration,
    /// The backstop: every control is checked this often even without a notification.
    pub full_check: Duration,
    /// Quiet time after the last notification before checking (a burst is one check).
    pub debounce: Duration,
    /// How often inotify is polled.
    pub poll: Duration,
    /// Longest wait for the daemon's first `daemon.json` before the first heartbeat (so that it
    /// carries the daemon's health rather than "never ran").
    pub first_heartbeat_wait: Duration,
    /// How often the audit's problems (read from `daemon.json` and `shipper.json`) are compared
    /// with the last heartbeat's: a change sends a heartbeat at once, so the stream records when
    /// shipping was refused or the spool began dropping, not up to `heartbeat` later.
    pub audit_check: Duration,
}

impl DriftOptions {
    pub fn from_config(config: &ValidConfig) -> Self {
        Self {
            reapply: config.drift.reapply,
            heartbeat: Duration::from_secs(config.audit.heartbeat_secs),
            full_check: Duration::from_secs(60),
            debounce: Duration::from_millis(200),
            poll: Duration::from_millis(50),
            first_heartbeat_wait: Duration::from_secs(10),
            audit_check: Duration::from_secs(1),
        }
    }
}

/// Which entries of a watched directory matter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Filter {
    Any,
    Names(BTreeSet<OsString>),
}

impl Filter {
    fn merge(&mut self, name: Option<&std::ffi::OsStr>) {
        match (self, name) {
            (Filter::Names(names), Some(n)) => {
                names.insert(n.to_os_string());
            }
            (f, None) => *f = Filter::Any,
            (Filter::Any, Some(_)) => {}
        }
    }

    fn matches(&self, name: Option<&OsString>) -> bool {
        match (self, name) {
            (Filter::Any, _) => true,
            (Filter::Names(names), Some(n)) => names.contains(n),
            (Filter::Names(_), None) => false,
        }
    }
}

/// The watched directories (host paths) and what matters in each: the fixed files and every
/// path any control plans to write or remove (a planned directory: all of it).
fn targets(ctx: &Context<'_>, controls: &[Box<dyn Control>]) -> BTreeMap<PathBuf, Filter> {
    let mut out: BTreeMap<PathBuf, Filter> = BTreeMap::new();
    let mut add = |dir: PathBuf, name: Option<&std::ffi::OsStr>| {
        out.entry(dir)
            .or_insert_with(|| Filter::Names(BTreeSet::new()))
            .merge(name);
    };
    for (dir, name) in FIXED {
        add(PathBuf::from(dir), name.map(std::ffi::OsStr::new));
    }
    for c in controls {
        let plan = match c.plan(ctx) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(control = c.id(), error = %e, "Cannot plan; its files are not watched until the next full check.");
                continue;
            }
        };
        for a in plan.actions() {
            match a {
                crate::control::Action::EnsureDir { path, .. } => add(path.clone(), None),
                crate::control::Action::Write { path, .. }
                | crate::control::Action::Remove { path } => {
                    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
                        add(dir.to_path_buf(), Some(name));
                    }
                }
                crate::control::Action::Run { .. } => {}
            }
        }
    }
    out
}

/// The inotify instance on the target directories.
struct Watches {
    inotify: Inotify,
    by_wd: HashMap<WatchDescriptor, (PathBuf, Filter)>,
}

impl Watches {
    fn new() -> Result<Self, String> {
        let inotify =
            Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| match e {
                Errno::EMFILE => {
                    "inotify_init: too many inotify instances; raise fs.inotify.max_user_instances"
                        .to_string()
                }
                e => format!("inotify_init: {e}"),
            })?;
        Ok(Self {
            inotify,
            by_wd: HashMap::new(),
        })
    }

    /// (Re-)adds a watch on every target directory that exists. Adding a watch again on the same
    /// directory returns the same descriptor, so this is also how a re-created directory is
    /// picked up at the next full check.
    fn update(&mut self, root: &Root, targets: BTreeMap<PathBuf, Filter>) {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF
            | AddWatchFlags::IN_ONLYDIR;
        for (dir, filter) in targets {
            let on_disk = root.path(&dir);
            if !on_disk.is_dir() {
                continue;
            }
            match self.inotify.add_watch(&on_disk, mask) {
                Ok(wd) => {
                    self.by_wd.insert(wd, (dir, filter));
                }
                Err(Errno::ENOSPC) => tracing::warn!(
                    dir = %on_disk.display(),
                    "Cannot watch for drift: too many inotify watches; raise fs.inotify.max_user_watches. The periodic check still runs."
                ),
                Err(e) => {
                    tracing::warn!(dir = %on_disk.display(), error = %e, "Cannot watch for drift; the periodic check still runs.")
                }
            }
        }
    }

    /// Host paths of relevant changes since the last call; `None` in the list means "something
    /// inotify could not name" (a queue overflow, a watched directory gone): check everything.
    fn changes(&mut self) -> (Vec<PathBuf>, bool) {
        let mut paths = Vec::new();
        let mut unnamed = false;
        loop {
            let events = match self.inotify.read_events() {
                Ok(evs) => evs,
                Err(Errno::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read drift notifications.");
                    break;
                }
            };
            if events.is_empty() {
                break;
            }
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    unnamed = true;
                    continue;
                }
                let Some((dir, filter)) = self.by_wd.get(&ev.wd) else {
                    continue;
                };
                if ev.mask.intersects(
                    AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF
                        | AddWatchFlags::IN_IGNORED,
                ) {
                    paths.push(dir.clone());
                    unnamed = true;
                    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                        self.by_wd.remove(&ev.wd);
                    }
                    continue;
                }
                if filter.matches(ev.name.as_ref()) {
                    let p = match &ev.name {
                        Some(n) => dir.join(n),
                        None => dir.clone(),
                    };
                    if !paths.contains(&p) {
                        paths.push(p);
                    }
                }
            }
        }
        (paths, unnamed)
    }
}

/// How often a repair re-applies while each apply makes progress but leaves a control failing
/// (someone changed another file while it ran).
const REPAIR_ATTEMPTS: usize = 3;

/// The monitor's state between checks.
struct Monitor {
    root: Root,
    config: ValidConfig,
    opts: DriftOptions,
    events: Sender<AgentEvent>,
    controls: Vec<Box<dyn Control>>,
    watches: Option<Watches>,
    /// Changed paths not checked yet; `pending_all`: something inotify could not name.
    pending: Vec<PathBuf>,
    pending_all: bool,
    last_change: Instant,
    /// The evidence last reported as drift, per control: a drift is reported once.
    reported: HashMap<String, String>,
    /// The last repair error per control: a repair that keeps failing is reported once.
    repair_failed: HashMap<String, String>,
    /// Compliance in the last heartbeat.
    last_compliant: Option<bool>,
    /// The audit problems the last heartbeat carried.
    last_audit: Option<Vec<&'static str>>,
    armed_logged: bool,
}

impl Monitor {
    fn send(&self, ev: AgentEvent) {
        // The receiver goes away only when the daemon stops.
        let _ = self.events.send(ev);
    }

    fn runner(&self) -> RealRunner {
        RealRunner::new(self.root.clone())
    }

    /// Drift is only looked for where `apply` ran.
    fn armed(&mut self) -> bool {
        let armed = self.root.state_dir().join(STATE_FILE).exists();
        if !armed && !self.armed_logged {
            tracing::info!("No apply recorded on this host: drift is not repaired, heartbeats report the state.");
            self.armed_logged = true;
        }
        armed
    }

    /// Takes the queued notifications into `pending`, leaving out the paths in `own` (what a
    /// repair just wrote: inotify queues synchronously, so its notifications are there by now).
    fn collect(&mut self, own: &BTreeSet<PathBuf>) {
        let Some(w) = self.watches.as_mut() else {
            return;
        };
        let (paths, unnamed) = w.changes();
        let mut any = unnamed;
        self.pending_all |= unnamed;
        for p in paths {
            if !own.contains(&p) && !self.pending.contains(&p) {
                self.pending.push(p);
                any = true;
            }
        }
        if any {
            self.last_change = Instant::now();
        }
    }

    fn report_drift(&mut self, f: &Finding, changed: &[PathBuf]) {
        let evidence = self.config.redactor().scrub(&f.evidence);
        if self.reported.get(f.control) != Some(&evidence) {
            tracing::warn!(control = f.control, evidence = %evidence, "Drift found.");
            self.send(AgentEvent::DriftFound {
                control: f.control.to_string(),
                title: f.title.to_string(),
                evidence: evidence.clone(),
                changed: changed.to_vec(),
            });
            self.reported.insert(f.control.to_string(), evidence);
        }
    }

    /// Checks every control against the pending changes; reports and repairs drift. Returns
    /// compliance afterwards.
    fn check(&mut self) -> Option<bool> {
        let changed = std::mem::take(&mut self.pending);
        self.pending_all = false;
        // Owned copies: the context borrows them while `self` records what was reported.
        let (root, config) = (self.root.clone(), self.config.clone());
        let runner = self.runner();
        let ctx = match Context::new(&root, &config, &runner) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot check for drift.");
                return None;
            }
        };
        let findings: Vec<Finding> = self.controls.iter().map(|c| c.check(&ctx)).collect();
        drop(ctx);
        let failing: Vec<Finding> = findings.into_iter().filter(|f| !passes(f)).collect();
        self.forget_passing(&failing);
        if failing.is_empty() {
            return Some(true);
        }
        if !self.armed() {
            return Some(false);
        }
        for f in &failing {
            self.report_drift(f, &changed);
        }
        if !self.opts.reapply {
            return Some(false);
        }
        Some(self.repair(failing))
    }

    fn forget_passing(&mut self, failing: &[Finding]) {
        let ids: Vec<&'static str> = self.controls.iter().map(|c| c.id()).collect();
        for id in ids {
            if !failing.iter().any(|f| f.control == id) {
                self.reported.remove(id);
                self.repair_failed.remove(id);
            }
        }
    }

    /// `apply`, exactly as the command line runs it (plan, validate, execute, check); then one
    /// event per drifted control. When an apply changed something but a control still fails
    /// (a file changed while it ran), that is reported as drift and applied again.
    fn repair(&mut self, mut failing: Vec<Finding>) -> bool {
        let redactor = self.config.redactor();
        let (root, config) = (self.root.clone(), self.config.clone());
        let mut done: HashMap<&'static str, Vec<String>> = HashMap::new();
        for attempt in 1..=REPAIR_ATTEMPTS {
            let started = Instant::now();
            let runner = self.runner();
            let result = Context::new(&root, &config, &runner)
                .map_err(|e| format!("re-apply failed: {e}"))
                .and_then(|ctx| {
                    apply(&ctx, &self.controls).map_err(|e| format!("re-apply failed: {e}"))
                });
            let took_ms = started.elapsed().as_millis() as u64;
            let own: BTreeSet<PathBuf> = match &result {
                Ok(report) => report
                    .controls
                    .iter()
                    .flat_map(|c| &c.changes)
                    .map(|c| PathBuf::from(&c.target))
                    .collect(),
                Err(_) => BTreeSet::new(),
            };
            // What someone else changed while the apply ran.
            let before = self.pending.len();
            self.collect(&own);
            let during: Vec<PathBuf> = self.pending[before..].to_vec();
            let progressed = result.as_ref().is_ok_and(|r| r.changed() > 0);
            let mut again = Vec::new();
            for f in &failing {
                let report = result.as_ref().map_err(Clone::clone).and_then(|report| {
                    report
                        .controls
                        .iter()
                        .find(|r| r.control == f.control)
                        .ok_or_else(|| "re-apply did not report it".to_string())
                });
                let outcome = match report {
                    Err(e) => Err((e, None)),
                    Ok(r) => {
                        done.entry(f.control).or_default().extend(
                            r.changes
                                .iter()
                                .map(|c| format!("{} {}", c.outcome, c.target)),
                        );
                        match &r.finding {
                            Some(after) if passes(after) => Ok(after.clone()),
                            Some(after) => Err((
                                format!(
                                    "still {} after re-apply: {}",
                                    after.status, after.evidence
                                ),
                                Some(after.clone()),
                            )),
                            None => Err(("re-apply did not check it".to_string(), None)),
                        }
                    }
                };
                match outcome {
                    Ok(after) => {
                        let changes = done.remove(f.control).unwrap_or_default();
                        let changes = if changes.is_empty() {
                            "nothing to change".to_string()
                        } else {
                            changes.join(", ")
                        };
                        let evidence = redactor.scrub(&format!(
                            "re-applied in {took_ms} ms: {changes}; now {}: {}",
                            after.status, after.evidence
                        ));
                        tracing::info!(control = f.control, took_ms, evidence = %evidence, "Drift repaired.");
                        self.reported.remove(f.control);
                        self.repair_failed.remove(f.control);
                        self.send(AgentEvent::DriftRepaired {
                            control: f.control.to_string(),
                            title: f.title.to_string(),
                            evidence,
                        });
                    }
                    Err((_, Some(after))) if progressed && attempt < REPAIR_ATTEMPTS => {
                        self.report_drift(&after, &during);
                        again.push(after);
                    }
                    Err((error, _)) => {
                        let error = redactor.scrub(&error);
                        if self.repair_failed.get(f.control) != Some(&error) {
                            tracing::error!(control = f.control, error = %error, "Drift repair failed.");
                            self.send(AgentEvent::DriftRepairFailed {
                                control: f.control.to_string(),
                                title: f.title.to_string(),
                                error: error.clone(),
                            });
                            self.repair_failed.insert(f.control.to_string(), error);
                        }
                        return false;
                    }
                }
            }
            if again.is_empty() {
                // What changed during the apply stays pending: checked again (cheaply) next.
                return true;
            }
            failing = again;
        }
        false
    }

    /// The status object as a heartbeat.
    fn heartbeat(&mut self) {
        let runner = self.runner();
        let collected =
            status::collect(&self.root, &self.config, &runner, &self.controls, now_ms()).and_then(
                |r| {
                    let text = r.to_redacted_json(&self.config)?;
                    let value: serde_json::Value =
                        serde_json::from_str(&text).map_err(|e| format!("status: {e}"))?;
                    Ok((r.drifted(), value, r.compliant))
                },
            );
        let (drifted, value, compliant) = match collected {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot collect the status for the heartbeat.");
                (
                    vec![],
                    serde_json::json!({"error": self.config.redactor().scrub(&e)}),
                    false,
                )
            }
        };
        self.last_compliant = Some(compliant);
        self.last_audit = Some(self.audit_problems());
        self.send(AgentEvent::Heartbeat {
            uptime_secs: 0,
            drifted,
            spool_pending: 0,
            spool_dropped: 0,
            watches: 0,
            status: value,
        });
    }

    /// What fails in the audit rows now (no network: the daemon's and the shipper's state files).
    fn audit_problems(&self) -> Vec<&'static str> {
        let mut p = health::assess(&self.root, &self.config, now_ms()).1;
        p.sort_unstable();
        p
    }

    /// Whether the audit's problems differ from the last heartbeat's.
    fn audit_changed(&self) -> bool {
        self.last_audit
            .as_ref()
            .is_some_and(|last| *last != self.audit_problems())
    }

    /// Whether the daemon of this process has reported itself (its health is then known).
    fn daemon_reported(&self) -> bool {
        DaemonReport::load(&self.root.state_dir())
            .is_some_and(|r| r.pid == std::process::id() && r.stopped_ms.is_none())
    }

    fn run(mut self, stop: &AtomicBool) {
        self.watches = match Watches::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(error = %e, "Drift is found by the periodic check only.");
                None
            }
        };
        let started = Instant::now();
        let mut next_full = Instant::now();
        let mut next_heartbeat: Option<Instant> = None;
        let mut next_audit_check = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.collect(&BTreeSet::new());
            let now = Instant::now();
            let mut compliant = None;
            if now >= next_full {
                let runner = self.runner();
                if let Ok(ctx) = Context::new(&self.root, &self.config, &runner) {
                    let t = targets(&ctx, &self.controls);
                    if let Some(w) = self.watches.as_mut() {
                        w.update(&self.root, t);
                    }
                }
                compliant = self.check();
                next_full = now + self.opts.full_check;
            } else if (!self.pending.is_empty() || self.pending_all)
                && now.duration_since(self.last_change) >= self.opts.debounce
            {
                compliant = self.check();
            }
            let first_due = next_heartbeat.is_none()
                && (self.daemon_reported() || started.elapsed() >= self.opts.first_heartbeat_wait);
            let periodic_due = next_heartbeat.is_some_and(|t| now >= t);
            let mut changed =
                next_heartbeat.is_some() && compliant.is_some() && compliant != self.last_compliant;
            if next_heartbeat.is_some() && !changed && now >= next_audit_check {
                next_audit_check = now + self.opts.audit_check;
                changed = self.audit_changed();
            }
            if first_due || periodic_due || changed {
                self.heartbeat();
                next_heartbeat = Some(Instant::now() + self.opts.heartbeat);
            }
            std::thread::sleep(self.opts.poll);
        }
    }
}

/// The running drift monitor.
pub struct DriftMonitor {
    thread: JoinHandle<()>,
}

impl DriftMonitor {
    /// Starts the monitor thread; it stops when `stop` is set.
    pub fn start(
        root: Root,
        config: ValidConfig,
        opts: DriftOptions,
        stop: Arc<AtomicBool>,
        events: Sender<AgentEvent>,
    ) -> Result<Self, String> {
        let monitor = Monitor {
            root,
            config,
            opts,
            events,
            controls: harden::all(),
            watches: None,
            pending: Vec::new(),
            pending_all: false,
            last_change: Instant::now(),
            reported: HashMap::new(),
            repair_failed: HashMap::new(),
            last_compliant: None,
            last_audit: None,
            armed_logged: false,
        };
        let thread = std::thread::Builder::new()
            .name("drift".into())
            .spawn(move || monitor.run(&stop))
            .map_err(|e| format!("drift thread: {e}"))?;
        Ok(Self { thread })
    }

    /// Waits for the thread (after `stop` was set).
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::RecordingRunner;
    use std::path::Path;

    fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (rel, text) in files {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
        }
        let root = Root::new(dir.path()).expect("root");
        (dir, root)
    }

    #[test]
    fn the_sudo_and_group_files_are_watched_whatever_the_config() {
        let (_d, root) = root_with(&[
            (
                "etc/passwd",
                "ec2-user:x:1000:1000::/home/ec2-user:/bin/bash\n",
            ),
            ("etc/group", "wheel:x:10:\n"),
        ]);
        let cfg = crate::config::parse("{}", Path::new("t.json")).expect("config");
        let runner = RecordingRunner::new();
        let ctx = Context::new(&root, &cfg, &runner).expect("ctx");
        let t = targets(&ctx, &harden::all());
        let etc = t.get(Path::new("/etc")).expect("/etc");
        for n in ["sudoers", "group", "gshadow"] {
            assert!(etc.matches(Some(&OsString::from(n))), "{n}");
        }
        assert!(!etc.matches(Some(&OsString::from("hosts"))));
        assert_eq!(t.get(Path::new("/etc/sudoers.d")), Some(&Filter::Any));
    }

    #[test]
    fn planned_files_are_watched_by_name() {
        let (_d, root) = root_with(&[
            (
                "etc/passwd",
                "ec2-user:x:1000:1000::/home/ec2-user:/bin/bash\n",
            ),
            ("etc/group", "wheel:x:10:\n"),
        ]);
        let cfg = crate::config::parse(
            r#"{"pip": {"index_url": "https://mirror.example/simple"}, "proxy": {"https": "http://proxy.example:3128"}}"#,
            Path::new("t.json"),
        )
        .expect("config");
        let runner = RecordingRunner::new();
        let ctx = Context::new(&root, &cfg, &runner).expect("ctx");
        let t = targets(&ctx, &harden::all());
        let etc = t.get(Path::new("/etc")).expect("/etc");
        assert!(etc.matches(Some(&OsString::from("pip.conf"))));
        assert!(etc.matches(Some(&OsString::from("gitconfig"))));
        let profile = t.get(Path::new("/etc/profile.d")).expect("profile.d");
        assert!(profile.matches(Some(&OsString::from("notebook-agent-proxy.sh"))));
    }
}
