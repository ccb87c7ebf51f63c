//! pid → what the process is: executable, command line (redacted), users, parent, start time,
//! and what Jupyter role it has. Fed by the process-events connector (`connector`) at fork, exec
//! and exit, so a process that is gone from `/proc` before its file event is read is still known
//! for a grace period; without the connector, `/proc` is read when an event asks.
//!
//! **Identity.** A pid is reused, so a process is (pid, start time). Every incarnation of a pid
//! is kept until its grace period ends; a lookup that cannot tell which incarnation acted says so
//! ([`Lookup::Unknown`]) rather than guess. Start times come from `/proc/<pid>/stat` (clock ticks
//! since boot, 10 ms) or, for a process gone before `/proc` could be read, from the connector's
//! fork timestamp; two start times within [`SAME_START_MS`] are the same process.
//!
//! **Users.** `uid` is the effective uid (what the kernel checked the file access against) and
//! `real_uid` the real one (who started it: they differ for a set-uid program).
//!
//! Why hand parsing and not the `procfs` crate: we read four small files (`stat`, `status`,
//! `cmdline`, `exe`, and `environ` only to recognise a Jupyter terminal) and need a handful of
//! fields; `stat`'s one trap (a `comm` with spaces or parentheses) is handled by splitting at the
//! last `)`. The crate would add rustix and its own error types to a static binary for that.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::cmdline;
use super::jupyter::{self, JupyterRole};
use crate::audit::change::now_ms;

/// Without the connector: a live process is re-checked against `/proc` at most this often.
pub const UNFED_CHECK_MS: i64 = 500;
/// Without the connector: `/proc` is rescanned this often (exits nobody reported).
pub const UNFED_SCAN_MS: i64 = 60_000;

/// Start times this close (ms) are one process (a clock tick is 10 ms).
pub const SAME_START_MS: i64 = 20;

/// How a process came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Read from `/proc` when the connector reported its `exec`.
    Exec,
    /// Read (or copied from its parent) when the connector reported its `fork`.
    Fork,
    /// Found by the scan of `/proc` at start (or after lost connector messages).
    Scan,
    /// Read from `/proc` when a lookup asked for it.
    Lookup,
}

/// One process (one incarnation of a pid). Fields the agent could not read are `None`, and
/// `note` says why; nothing is filled in by guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The parent when the process was forked (if the connector saw it), else `/proc`'s.
    pub ppid: u32,
    /// `comm`: the kernel's short name (15 bytes; what `ps` shows).
    pub name: Option<String>,
    /// The executable (`/proc/<pid>/exe`), never argv[0].
    pub exe: Option<PathBuf>,
    /// Redacted and bounded ([`cmdline::cmd_line`]).
    pub cmd_line: Option<String>,
    /// ms since the epoch.
    pub created_time_ms: i64,
    /// Effective uid.
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub real_uid: Option<u32>,
    pub real_user: Option<String>,
    pub exited_ms: Option<i64>,
    pub jupyter: Option<JupyterRole>,
    pub seen: Seen,
    pub note: Option<String>,
}

/// The answer to "who is pid N".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Known(Arc<ProcessInfo>),
    /// Why nothing can be said (a sentence for `unmapped.actor_basis`).
    Unknown(String),
}

/// How the reason of a pid neither in the table nor in `/proc` ends while the connector feeds
/// the table: its fork and exec may still be queued.
const NOT_REPORTED: &str = "and the process-events connector did not report it";

impl Lookup {
    /// What the connector may still tell: a process known only as a fork of its parent (its
    /// exec may be queued), or one not known at all. Other unknowns (a reused pid) it cannot fix.
    pub fn may_be_queued(&self) -> bool {
        match self {
            Lookup::Known(i) => i.seen == Seen::Fork,
            Lookup::Unknown(why) => why.ends_with(NOT_REPORTED),
        }
    }
}

pub type UserLookup = Box<dyn Fn(u32) -> Option<String> + Send + Sync>;

#[derive(Debug, Clone)]
pub struct TableConfig {
    /// Where `/proc` is (tests point it elsewhere).
    pub proc_root: PathBuf,
    /// How long an exited process stays known.
    pub grace: Duration,
    /// At most this many exited processes are kept (the oldest go first).
    pub max_exited: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            grace: Duration::from_secs(60),
            max_exited: 8192,
        }
    }
}

/// Counters for `status` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableStats {
    pub live: usize,
    pub exited: usize,
    /// Connector messages lost (socket buffer overrun): `/proc` is rescanned once the socket is
    /// empty again (at most once a second).
    pub lost: u64,
    /// Processes read at lookup time (not known beforehand).
    pub read_at_lookup: u64,
}

/// What one read of `/proc/<pid>` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRead {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub start_ticks: u64,
    pub tty: Option<String>,
    pub real_uid: Option<u32>,
    pub uid: Option<u32>,
    /// `None` for a zombie or kernel thread (empty `cmdline`).
    pub argv: Option<Vec<String>>,
    pub exe: Option<PathBuf>,
}

struct Inner {
    /// Incarnations of each pid, oldest first; only the last may be alive.
    by_pid: HashMap<u32, Vec<Arc<ProcessInfo>>>,
    /// Exited incarnations in exit order: (pid, created, exited).
    exited: VecDeque<(u32, i64, i64)>,
    /// `None` while the connector feeds the table; else why it does not.
    feed_missing: Option<String>,
    lost: u64,
    read_at_lookup: u64,
    /// Without the connector: when each pid's live incarnation was last checked against
    /// `/proc`, and when `/proc` was last scanned (see [`ProcessTable::check_unfed`]).
    checked: HashMap<u32, i64>,
    last_scan_ms: i64,
    /// Wall-clock ms before the connector's last read that found its socket empty: every
    /// process event sent before it has been applied.
    drained_ms: i64,
    /// The connector's thread is blocked on its empty socket (since `drained_ms`): a process
    /// event sent now would wake it within a scheduler tick, so an event older than
    /// [`WAKE_MS`] has nothing pending behind it.
    feeder_idle: bool,
    /// Connector messages were lost and `/proc` has not been read again since.
    rescan_due: bool,
    last_rescan_ms: i64,
    /// The connector's thread runs at realtime priority (see [`WAKE_MS`]).
    feeder_realtime: bool,
    /// `drained_ms` when a wait for it last timed out: later waits give up at once until it
    /// moves (a stalled feeder costs one wait, not one per event).
    gave_up_at: Option<i64>,
}

/// How long after a process event the connector's thread, blocked on its socket, has surely
/// woken and applied it: at realtime priority wakeups take microseconds; at nice -10 (realtime
/// refused) [`WAKE_MS_NICE`].
const WAKE_MS: i64 = 5;
const WAKE_MS_NICE: i64 = 50;

/// At most one `/proc` rescan after lost connector messages per this many ms.
const RESCAN_MS: i64 = 1000;

pub struct ProcessTable {
    cfg: TableConfig,
    /// Wall-clock ms at boot (`CLOCK_REALTIME - CLOCK_BOOTTIME`): `/proc` start times.
    boot_ms: i64,
    /// Wall-clock ms at `CLOCK_MONOTONIC` zero: the connector's timestamps.
    mono_ms: i64,
    tick_hz: u64,
    users: UserLookup,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessTable")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn clock_ms(id: nix::time::ClockId) -> i64 {
    nix::time::clock_gettime(id)
        .map(|t| t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000)
        .unwrap_or(0)
}

impl ProcessTable {
    /// An empty table (no connector yet: `feed_missing` says so until [`set_feed`](Self::set_feed)).
    pub fn new(cfg: TableConfig, users: UserLookup) -> Self {
        use nix::time::ClockId;
        let now = clock_ms(ClockId::CLOCK_REALTIME);
        let tick_hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(100);
        Self {
            boot_ms: now - clock_ms(ClockId::CLOCK_BOOTTIME),
            mono_ms: now - clock_ms(ClockId::CLOCK_MONOTONIC),
            tick_hz,
            users,
            cfg,
            inner: Mutex::new(Inner {
                by_pid: HashMap::new(),
                exited: VecDeque::new(),
                feed_missing: Some("the process-events connector was not started".into()),
                lost: 0,
                read_at_lookup: 0,
                checked: HashMap::new(),
                last_scan_ms: now,
                drained_ms: i64::MIN,
                feeder_idle: false,
                rescan_due: false,
                last_rescan_ms: i64::MIN,
                feeder_realtime: false,
                gave_up_at: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent-enough data (plain inserts/removes).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connector found its socket empty on a read begun at `at_ms`, and now blocks on it.
    pub fn set_drained(&self, at_ms: i64) {
        let mut g = self.lock();
        g.drained_ms = at_ms;
        g.feeder_idle = true;
    }

    /// The connector's blocking read returned (with events, or after its timeout).
    pub fn set_woken(&self) {
        self.lock().feeder_idle = false;
    }

    /// Waits (at most `max`) until the connector has applied every process event sent before
    /// `at_ms`; false when it did not in time or does not feed the table.
    pub fn await_drained(&self, at_ms: i64, max: Duration) -> bool {
        let until = std::time::Instant::now() + max;
        loop {
            {
                let mut g = self.lock();
                if g.feed_missing.is_some() || g.gave_up_at == Some(g.drained_ms) {
                    return false;
                }
                let wake = if g.feeder_realtime {
                    WAKE_MS
                } else {
                    WAKE_MS_NICE
                };
                if g.drained_ms >= at_ms || (g.feeder_idle && now_ms() >= at_ms + wake) {
                    g.gave_up_at = None;
                    return true;
                }
                if std::time::Instant::now() >= until {
                    g.gave_up_at = Some(g.drained_ms);
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A pid whose event was just read: read `/proc/<pid>` now, while the process most likely
    /// still runs, unless the table already knows what it runs (a fork copy does not count: the
    /// child may have exec'd since). Without the connector, also re-checked as by a lookup.
    pub fn prime(&self, pid: u32) {
        let known = self.live(pid);
        if known.as_ref().is_some_and(|i| i.seen != Seen::Fork) {
            if self.lock().feed_missing.is_some() {
                let _ = self.lookup(pid, now_ms());
            }
            return;
        }
        let Ok(r) = read_proc(&self.cfg.proc_root, pid) else {
            return;
        };
        if let Some(k) = &known {
            if (self.created_ms(r.start_ticks) - k.created_time_ms).abs() > SAME_START_MS {
                return; // not the incarnation the table knows: a lookup sorts that out
            }
        }
        let info = self.info_from_read(r, Seen::Lookup, known.map(|k| k.ppid));
        self.lock().read_at_lookup += 1;
        self.upsert(info);
    }

    /// Whether the connector feeds the table (`Ok`) or why not.
    pub fn set_feed(&self, feed: Result<(), String>) {
        self.lock().feed_missing = feed.err();
    }

    pub fn stats(&self) -> TableStats {
        let g = self.lock();
        let live = g
            .by_pid
            .values()
            .filter(|v| v.last().is_some_and(|i| i.exited_ms.is_none()))
            .count();
        TableStats {
            live,
            exited: g.exited.len(),
            lost: g.lost,
            read_at_lookup: g.read_at_lookup,
        }
    }

    /// Start time in wall-clock ms of a `/proc` start time in ticks.
    pub fn created_ms(&self, start_ticks: u64) -> i64 {
        self.boot_ms + i64::try_from(start_ticks.saturating_mul(1000) / self.tick_hz).unwrap_or(0)
    }

    /// Wall-clock ms of a connector timestamp (`CLOCK_MONOTONIC` ns).
    pub fn mono_to_ms(&self, ns: u64) -> i64 {
        self.mono_ms + i64::try_from(ns / 1_000_000).unwrap_or(0)
    }

    // ---- feeding ----

    /// Reads every process in `/proc` (at start, and after connector messages were lost: then
    /// the known live processes that are gone or replaced are marked exited).
    pub fn scan(&self) {
        let mut reads: Vec<ProcRead> = match std::fs::read_dir(&self.cfg.proc_root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|pid| read_proc(&self.cfg.proc_root, pid).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "Reading /proc for the process table failed.");
                return;
            }
        };
        // Parents first (a parent always started before its child): terminal detection looks
        // at the parent's role.
        reads.sort_by_key(|r| r.start_ticks);
        let now = now_ms();
        {
            let mut g = self.lock();
            let gone: Vec<u32> = g
                .by_pid
                .iter()
                .filter(|(pid, v)| {
                    v.last().is_some_and(|i| i.exited_ms.is_none())
                        && !reads.iter().any(|r| {
                            r.pid == **pid
                                && v.last().is_some_and(|i| {
                                    (self.created_ms(r.start_ticks) - i.created_time_ms).abs()
                                        <= SAME_START_MS
                                })
                        })
                })
                .map(|(pid, _)| *pid)
                .collect();
            for pid in gone {
                self.mark_exited(&mut g, pid, None, now);
            }
        }
        for r in reads {
            let info = self.info_from_read(r, Seen::Scan, None);
            self.upsert(info);
        }
    }

    /// The connector saw `parent` fork `child` at `ts_ns` (monotonic). Until it execs, a child
    /// runs its parent's program: the parent's facts are copied, nothing is read (the feeder must
    /// be quick for the exec that usually follows at once).
    pub fn on_fork(&self, parent: u32, child: u32, ts_ns: u64) {
        let created = self.mono_to_ms(ts_ns);
        let info = match self.live(parent) {
            Some(p) => ProcessInfo {
                pid: child,
                ppid: parent,
                created_time_ms: created,
                exited_ms: None,
                seen: Seen::Fork,
                jupyter: None,
                ..(*p).clone()
            },
            None => match read_proc(&self.cfg.proc_root, child) {
                Ok(r) => self.info_from_read(r, Seen::Fork, Some(parent)),
                Err(_) => self.stub(
                    child,
                    parent,
                    created,
                    format!(
                        "forked by {parent} and exited before /proc/{child} could be read; the parent was not known either"
                    ),
                ),
            },
        };
        self.upsert(info);
    }

    /// The connector saw `pid` exec a new program.
    pub fn on_exec(&self, pid: u32, ts_ns: u64) {
        // Read before anything else: the new program may exit at any moment.
        let read = read_proc(&self.cfg.proc_root, pid);
        let prev = self.live(pid);
        let fork_parent = prev.as_ref().map(|p| p.ppid);
        match read {
            Ok(r) => {
                let info = self.info_from_read(r, Seen::Exec, fork_parent);
                self.upsert(info);
            }
            // A read at one of its events (`prime`) already saw the program it runs now.
            Err(_) if prev.as_ref().is_some_and(|p| p.seen == Seen::Lookup) => {}
            Err(_) => {
                // The new program is unknown: keep who it was, drop what it ran.
                let note = format!(
                    "exec'd a program and exited before /proc/{pid} could be read: the program is unknown"
                );
                let info = match prev {
                    Some(p) => ProcessInfo {
                        name: None,
                        exe: None,
                        cmd_line: None,
                        // A set-uid program changes the effective uid, not the real one.
                        uid: None,
                        user: None,
                        jupyter: None,
                        seen: Seen::Exec,
                        note: Some(note),
                        ..(*p).clone()
                    },
                    None => self.stub(pid, 0, self.mono_to_ms(ts_ns), note),
                };
                self.upsert(info);
            }
        }
    }

    /// The connector saw `pid` exit.
    pub fn on_exit(&self, pid: u32, ts_ns: u64) {
        let at = self.mono_to_ms(ts_ns);
        let mut g = self.lock();
        self.mark_exited(&mut g, pid, None, at);
        self.expire(&mut g, now_ms());
    }

    /// The connector saw `pid` change its uids (`setuid`).
    pub fn on_uid(&self, pid: u32, real_uid: u32, uid: u32) {
        let mut g = self.lock();
        if let Some(last) = g.by_pid.get_mut(&pid).and_then(|v| v.last_mut()) {
            if last.exited_ms.is_none() {
                let mut i = (**last).clone();
                i.uid = Some(uid);
                i.user = (self.users)(uid);
                i.real_uid = Some(real_uid);
                i.real_user = (self.users)(real_uid);
                if i.note
                    .as_deref()
                    .is_some_and(|n| n.starts_with(UID_UNKNOWN))
                {
                    i.note = None;
                }
                *last = Arc::new(i);
            }
        }
    }

    /// Connector messages were lost: exits may have been missed. `/proc` is read again by
    /// [`ProcessTable::rescan_if_lost`] once the connector's socket is empty, not once per loss
    /// (a storm of forks overflows it again and again).
    pub fn on_lost(&self) {
        let mut g = self.lock();
        g.lost += 1;
        g.rescan_due = true;
    }

    /// Reads `/proc` again if messages were lost since the last time, at most once per
    /// [`RESCAN_MS`]; true if it did.
    pub fn rescan_if_lost(&self) -> bool {
        let now = now_ms();
        {
            let mut g = self.lock();
            if !g.rescan_due || now.saturating_sub(g.last_rescan_ms) < RESCAN_MS {
                return false;
            }
            g.rescan_due = false;
            g.last_rescan_ms = now;
        }
        self.scan();
        true
    }

    /// Whether the connector's thread got realtime priority.
    pub fn set_feeder_realtime(&self, realtime: bool) {
        self.lock().feeder_realtime = realtime;
    }

    fn stub(&self, pid: u32, ppid: u32, created: i64, note: String) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid,
            name: None,
            exe: None,
            cmd_line: None,
            created_time_ms: created,
            uid: None,
            user: None,
            real_uid: None,
            real_user: None,
            exited_ms: None,
            jupyter: None,
            seen: Seen::Fork,
            note: Some(note),
        }
    }

    fn live(&self, pid: u32) -> Option<Arc<ProcessInfo>> {
        self.lock()
            .by_pid
            .get(&pid)
            .and_then(|v| v.last())
            .filter(|i| i.exited_ms.is_none())
            .cloned()
    }

    fn info_from_read(&self, r: ProcRead, seen: Seen, fork_parent: Option<u32>) -> ProcessInfo {
        let ppid = fork_parent.filter(|p| *p != 0).unwrap_or(r.ppid);
        let mut role = r.argv.as_deref().and_then(jupyter::own_role);
        if role.is_none() {
            // Without the connector the parent may have exec'd since it was read.
            self.check_unfed(ppid, now_ms());
            let parent_is_server = self
                .live(ppid)
                .is_some_and(|p| p.jupyter == Some(JupyterRole::Server));
            if parent_is_server {
                let env = std::fs::read(self.cfg.proc_root.join(format!("{}/environ", r.pid)))
                    .unwrap_or_default();
                role = jupyter::terminal_role(true, &env, r.tty.clone());
            }
        }
        let note = match (&r.argv, &r.exe) {
            (None, _) => Some(
                "no command line: it had exited (a zombie) when /proc was read, or is a kernel thread"
                    .to_string(),
            ),
            (_, None) => Some(format!("/proc/{}/exe unreadable", r.pid)),
            _ if r.uid.is_none() => Some(format!(
                "{UID_UNKNOWN}: reaped before /proc/{}/status was read",
                r.pid
            )),
            _ => None,
        };
        ProcessInfo {
            pid: r.pid,
            ppid,
            name: Some(r.comm),
            exe: r.exe,
            cmd_line: r.argv.as_deref().map(cmdline::cmd_line),
            created_time_ms: self.created_ms(r.start_ticks),
            user: r.uid.and_then(|u| (self.users)(u)),
            uid: r.uid,
            real_user: r.real_uid.and_then(|u| (self.users)(u)),
            real_uid: r.real_uid,
            exited_ms: None,
            jupyter: role,
            seen,
            note,
        }
    }

    /// Adds a process, or updates the incarnation with the same start time (an exec). A live
    /// incarnation with another start time exited unseen: it is marked exited.
    fn upsert(&self, info: ProcessInfo) {
        let now = now_ms();
        let mut g = self.lock();
        let pid = info.pid;
        let created = info.created_time_ms;
        let same = g.by_pid.get(&pid).and_then(|v| v.last()).map(|l| {
            (
                (l.created_time_ms - created).abs() <= SAME_START_MS,
                l.exited_ms,
            )
        });
        match same {
            Some((true, exited)) => {
                if let Some(last) = g.by_pid.get_mut(&pid).and_then(|v| v.last_mut()) {
                    let mut info = info;
                    info.exited_ms = exited;
                    *last = Arc::new(info);
                }
            }
            Some((false, None)) => {
                self.mark_exited(&mut g, pid, None, created.min(now));
                g.by_pid.entry(pid).or_default().push(Arc::new(info));
            }
            _ => g.by_pid.entry(pid).or_default().push(Arc::new(info)),
        }
        self.expire(&mut g, now);
    }

    /// Marks the live incarnation of `pid` (with start time `created`, if given) exited at `at`.
    fn mark_exited(&self, g: &mut Inner, pid: u32, created: Option<i64>, at: i64) {
        let Some(last) = g.by_pid.get_mut(&pid).and_then(|v| v.last_mut()) else {
            return;
        };
        if last.exited_ms.is_some()
            || created.is_some_and(|c| (c - last.created_time_ms).abs() > SAME_START_MS)
        {
            return;
        }
        let mut i = (**last).clone();
        i.exited_ms = Some(at.max(i.created_time_ms));
        let created = i.created_time_ms;
        *last = Arc::new(i);
        g.exited.push_back((pid, created, at));
    }

    /// Forgets exited processes past the grace period or beyond the count bound.
    fn expire(&self, g: &mut Inner, now: i64) {
        let grace = i64::try_from(self.cfg.grace.as_millis()).unwrap_or(i64::MAX);
        while let Some(&(pid, created, exited)) = g.exited.front() {
            if exited.saturating_add(grace) >= now && g.exited.len() <= self.cfg.max_exited {
                break;
            }
            g.exited.pop_front();
            if let Some(v) = g.by_pid.get_mut(&pid) {
                v.retain(|i| !(i.exited_ms.is_some() && i.created_time_ms == created));
                if v.is_empty() {
                    g.by_pid.remove(&pid);
                }
            }
        }
    }

    // ---- asking ----

    /// Every process the table knows now (live and exited), for `status` and tests.
    pub fn all(&self) -> Vec<Arc<ProcessInfo>> {
        self.lock().by_pid.values().flatten().cloned().collect()
    }

    /// Who `pid` was for an event read at `at_ms`.
    pub fn lookup(&self, pid: u32, at_ms: i64) -> Lookup {
        self.lookup_between(pid, i64::MIN, at_ms)
    }

    /// Who `pid` was for an event that happened in `[not_before_ms, at_ms]`. Only incarnations
    /// alive at some point of that window count; more than one is an honest "cannot tell".
    pub fn lookup_between(&self, pid: u32, not_before_ms: i64, at_ms: i64) -> Lookup {
        let now = now_ms();
        self.check_unfed(pid, now);
        let (cands, later, feed_missing) = {
            let mut g = self.lock();
            self.expire(&mut g, now);
            let all = g.by_pid.get(&pid).cloned().unwrap_or_default();
            let (cands, later): (Vec<_>, Vec<_>) = all
                .into_iter()
                .partition(|i| i.created_time_ms <= at_ms + SAME_START_MS);
            let cands: Vec<_> = cands
                .into_iter()
                .filter(|i| {
                    i.exited_ms
                        .is_none_or(|e| e + SAME_START_MS >= not_before_ms)
                })
                .collect();
            (cands, !later.is_empty(), g.feed_missing.clone())
        };
        match cands.len() {
            1 => return Lookup::Known(Arc::clone(&cands[0])),
            0 => {}
            n => {
                return Lookup::Unknown(format!(
                    "pid {pid} belonged to {n} processes around the event; which one acted cannot be told"
                ))
            }
        }
        if later {
            return Lookup::Unknown(format!(
                "pid {pid} now belongs to a process started after the event; the one that acted was not seen"
            ));
        }
        match read_proc(&self.cfg.proc_root, pid) {
            Ok(r) => {
                if self.created_ms(r.start_ticks) > at_ms + SAME_START_MS {
                    return Lookup::Unknown(format!(
                        "pid {pid} now belongs to a process started after the event; the one that acted was not seen"
                    ));
                }
                let info = self.info_from_read(r, Seen::Lookup, None);
                self.lock().read_at_lookup += 1;
                self.upsert(info);
                match self.live(pid) {
                    Some(i) => Lookup::Known(i),
                    None => Lookup::Unknown(format!("process {pid} vanished while it was read")),
                }
            }
            Err(_) => Lookup::Unknown(match feed_missing {
                Some(why) => format!(
                    "process {pid} exited before it could be read (no process-events connector: {why})"
                ),
                None => format!("process {pid} exited before it could be read {NOT_REPORTED}"),
            }),
        }
    }

    /// Without the connector nobody reports exits: before a live incarnation of `pid` is
    /// trusted, `/proc/<pid>` must still be that process (checked at most every
    /// [`UNFED_CHECK_MS`] per pid). A gone one is marked exited now; another one (the pid was
    /// reused) is read, which marks the old one exited. `/proc` is rescanned every
    /// [`UNFED_SCAN_MS`], so processes never asked about again do not stay "live" forever.
    fn check_unfed(&self, pid: u32, now: i64) {
        let (live, scan) = {
            let mut g = self.lock();
            if g.feed_missing.is_none() {
                return;
            }
            let scan = now - g.last_scan_ms >= UNFED_SCAN_MS;
            if scan {
                g.last_scan_ms = now;
                g.checked.clear();
            }
            let live = g
                .by_pid
                .get(&pid)
                .and_then(|v| v.last())
                .filter(|i| i.exited_ms.is_none())
                .cloned();
            let fresh = g
                .checked
                .get(&pid)
                .is_some_and(|t| now - t < UNFED_CHECK_MS);
            if live.is_some() && !fresh {
                g.checked.insert(pid, now);
            }
            (live.filter(|_| !fresh), scan)
        };
        if scan {
            self.scan();
        }
        let Some(known) = live else { return };
        let created = known.created_time_ms;
        let stat = std::fs::read(self.cfg.proc_root.join(format!("{pid}/stat")))
            .ok()
            .and_then(|b| parse_stat(&b))
            .map(|(_, comm, t, _)| (self.created_ms(t), comm));
        match stat {
            Some((c, comm))
                if (c - created).abs() <= SAME_START_MS && !self.exec_since(&known, &comm) => {}
            // Another process with the pid, or this one exec'd since it was read (nobody reports
            // an exec without the connector: a restarted service read between its fork and its
            // exec would otherwise stay `su` for good). After an exec its parent is the one it
            // had, even if that one exited since.
            Some((c, _)) => match read_proc(&self.cfg.proc_root, pid) {
                Ok(r) => {
                    let same = (c - created).abs() <= SAME_START_MS;
                    let info = self.info_from_read(r, Seen::Lookup, same.then_some(known.ppid));
                    self.upsert(info);
                }
                Err(_) => self.mark_exited(&mut self.lock(), pid, Some(created), now),
            },
            None => self.mark_exited(&mut self.lock(), pid, Some(created), now),
        }
    }

    /// Whether `known` (read earlier, same start time) has exec'd another program since: its
    /// `comm` now is `comm`, or its executable changed.
    fn exec_since(&self, known: &ProcessInfo, comm: &str) -> bool {
        if known.name.as_deref().is_some_and(|n| n != comm) {
            return true;
        }
        let exe = std::fs::read_link(self.cfg.proc_root.join(format!("{}/exe", known.pid)));
        matches!((&known.exe, exe), (Some(was), Ok(now)) if *was != now)
    }

    /// The parent of `info` as it was when `info` started (never a later process with the pid).
    pub fn parent(&self, info: &ProcessInfo) -> Option<Arc<ProcessInfo>> {
        if info.ppid == 0 {
            return None;
        }
        let start = info.created_time_ms;
        let found = {
            let g = self.lock();
            g.by_pid.get(&info.ppid).and_then(|v| {
                v.iter()
                    .rev()
                    .find(|p| {
                        p.created_time_ms <= start + SAME_START_MS
                            && p.exited_ms.is_none_or(|e| e + SAME_START_MS >= start)
                    })
                    .cloned()
            })
        };
        if found.is_some() {
            return found;
        }
        let r = read_proc(&self.cfg.proc_root, info.ppid).ok()?;
        if self.created_ms(r.start_ticks) > start + SAME_START_MS {
            return None;
        }
        let p = self.info_from_read(r, Seen::Lookup, None);
        self.upsert(p);
        self.live(info.ppid)
    }
}

/// How a note for a process whose uid was not read begins: neither its `status` nor its
/// `/proc/<pid>` owner could be read before it was reaped.
const UID_UNKNOWN: &str = "uid unknown";

/// Reads `/proc/<pid>`: `stat` is required (the start time tells incarnations apart), the rest is
/// kept as far as it could be read.
pub fn read_proc(proc_root: &Path, pid: u32) -> io::Result<ProcRead> {
    let path = proc_root.join(pid.to_string());
    // One handle on the directory for every read: once this process is gone, reads through it
    // fail (a reused pid is another directory), so what was read before is still this process's
    // and is kept when it exits mid-read.
    let dir = nix::fcntl::open(
        &path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // The directory's owner is the process's effective uid, even for a non-dumpable process (the
    // kernel exempts /proc/PID itself from the root-owns-it rule); it is computed when it is
    // asked for, and a reaped process's directory reads as root's. `stat` is read after it and
    // is required, so when this returns Ok the process was alive at the fstat and its owner is
    // true, root included. It is what names the user when `status` is gone by the time it is read.
    let dir_uid = nix::sys::stat::fstat(&dir).ok().map(|s| s.st_uid);
    // What an instant process loses first when it exits (a zombie has neither) is read first;
    // `stat` and `status` stay until it is reaped.
    let exe = nix::fcntl::readlinkat(&dir, "exe").ok().map(PathBuf::from);
    let argv = read_at(&dir, "cmdline")
        .ok()
        .and_then(|b| parse_cmdline(&b));
    let stat = read_at(&dir, "stat")?;
    let (ppid, comm, start_ticks, tty_nr) = parse_stat(&stat)
        .ok_or_else(|| io::Error::other(format!("{}/stat: unexpected format", path.display())))?;
    let status = read_at(&dir, "status").unwrap_or_default();
    let (real_uid, uid) = parse_uids(&String::from_utf8_lossy(&status));
    let uid = uid.or(dir_uid);
    Ok(ProcRead {
        pid,
        ppid,
        comm,
        start_ticks,
        tty: pts_name(tty_nr),
        real_uid,
        uid,
        argv,
        exe,
    })
}

/// The whole of `dir/name`.
fn read_at(dir: &OwnedFd, name: &str) -> io::Result<Vec<u8>> {
    let fd = nix::fcntl::openat(dir, name, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let mut b = Vec::new();
    File::from(fd).read_to_end(&mut b)?;
    Ok(b)
}

/// (ppid, comm, starttime, tty_nr) from `/proc/<pid>/stat`. `comm` may hold spaces and `)`, so
/// the fields are counted from the last `)`.
pub fn parse_stat(b: &[u8]) -> Option<(u32, String, u64, u32)> {
    let open = b.iter().position(|c| *c == b'(')?;
    let close = b.iter().rposition(|c| *c == b')')?;
    if close < open {
        return None;
    }
    let comm = String::from_utf8_lossy(&b[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(b.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state): field N is f[N - 3].
    let ppid = f.get(1)?.parse().ok()?;
    let tty = f.get(4)?.parse::<i64>().ok()?;
    let start = f.get(19)?.parse().ok()?;
    Some((ppid, comm, start, u32::try_from(tty).unwrap_or(0)))
}

/// (real, effective) uid from `/proc/<pid>/status`.
fn parse_uids(status: &str) -> (Option<u32>, Option<u32>) {
    let Some(line) = status.lines().find_map(|l| l.strip_prefix("Uid:")) else {
        return (None, None);
    };
    let mut it = line.split_ascii_whitespace().map(|s| s.parse::<u32>().ok());
    (it.next().flatten(), it.next().flatten())
}

fn parse_cmdline(b: &[u8]) -> Option<Vec<String>> {
    if b.is_empty() {
        return None;
    }
    let b = b.strip_suffix(&[0]).unwrap_or(b);
    Some(
        b.split(|c| *c == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// `pts/N` for a pseudo-terminal device number (majors 136–143).
fn pts_name(tty_nr: u32) -> Option<String> {
    let major = (tty_nr >> 8) & 0xfff;
    let minor = (tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00);
    (136..=143)
        .contains(&major)
        .then(|| format!("pts/{}", (major - 136) * 256 + minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pid, ppid, comm, start ticks, argv, uid)
    type FakeProc<'a> = (u32, u32, &'a str, u64, &'a [&'a str], u32);

    /// A fake `/proc` with the given processes.
    fn fake_proc(dir: &Path, procs: &[FakeProc<'_>]) {
        for (pid, ppid, comm, start, argv, uid) in procs {
            let d = dir.join(pid.to_string());
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!("{pid} ({comm}) S {ppid} 1 1 34819 1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 100 0"),
            )
            .unwrap();
            std::fs::write(
                d.join("status"),
                format!("Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"),
            )
            .unwrap();
            let mut cl = argv.join("\0").into_bytes();
            cl.push(0);
            std::fs::write(d.join("cmdline"), cl).unwrap();
            std::os::unix::fs::symlink(format!("/usr/bin/{comm}"), d.join("exe")).unwrap();
        }
    }

    fn table(dir: &Path) -> ProcessTable {
        let t = ProcessTable::new(
            TableConfig {
                proc_root: dir.to_path_buf(),
                ..Default::default()
            },
            Box::new(|u| (u == 1000).then(|| "ec2-user".to_string())),
        );
        t.set_feed(Ok(()));
        t
    }

    #[test]
    fn stat_with_a_hostile_comm_parses() {
        let s = b"42 (a) b (c)) R 7 42 42 34819 42 0 0 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        let (ppid, comm, start, tty) = parse_stat(s).unwrap();
        assert_eq!((ppid, comm.as_str(), start), (7, "a) b (c)", 123456));
        assert_eq!(pts_name(tty).as_deref(), Some("pts/3"));
        assert!(parse_stat(b"garbage").is_none());
    }

    #[test]
    fn reaped_before_its_status_is_read_the_user_is_the_directory_owner() {
        use std::os::unix::fs::chown;
        let d = tempfile::tempdir().unwrap();
        fake_proc(
            d.path(),
            &[
                (41, 1, "touch", 5, &["touch", "x"], 1000),
                (42, 1, "su", 5, &["su"], 0),
            ],
        );
        for pid in [41, 42] {
            std::fs::remove_file(d.path().join(format!("{pid}/status"))).unwrap();
        }
        // As the kernel does: /proc/PID belongs to the effective uid, dumpable or not.
        if chown(d.path().join("41"), Some(1000), None).is_err() {
            panic!("this test needs root to give its fake /proc/41 to uid 1000");
        }
        chown(d.path().join("42"), Some(0), None).unwrap();
        let r = read_proc(d.path(), 41).unwrap();
        assert_eq!((r.uid, r.real_uid), (Some(1000), None));
        assert_eq!(r.comm, "touch");
        // Owned by root and alive when read: a root process.
        assert_eq!(read_proc(d.path(), 42).unwrap().uid, Some(0));
    }

    #[test]
    fn an_exited_process_is_known_during_its_grace_and_a_reused_pid_is_not_mistaken_for_it() {
        use nix::time::{clock_gettime, ClockId};
        // Fake start times a few seconds ago (within the grace period), in /proc's clock ticks.
        let secs = |id| u64::try_from(clock_gettime(id).unwrap().tv_sec()).unwrap();
        let now_ticks = secs(ClockId::CLOCK_BOOTTIME) * 100;
        let mono_ns = secs(ClockId::CLOCK_MONOTONIC) * 1_000_000_000;
        let (cp_t, evil_t) = (now_ticks - 3000, now_ticks - 1000);
        let d = tempfile::tempdir().unwrap();
        fake_proc(
            d.path(),
            &[
                (1, 0, "init", 1, &["/sbin/init"], 0),
                (500, 1, "bash", 100, &["bash"], 1000),
            ],
        );
        let t = table(d.path());
        t.scan();
        // cp (pid 700) forked by bash, exec'd, exited.
        fake_proc(d.path(), &[(700, 500, "cp", cp_t, &["cp", "a", "b"], 1000)]);
        t.on_fork(500, 700, mono_ns - 30_000_000_000);
        t.on_exec(700, mono_ns - 30_000_000_000);
        let cp_created = t.created_ms(cp_t);
        std::fs::remove_dir_all(d.path().join("700")).unwrap();
        t.on_exit(700, mono_ns - 29_990_000_000);
        let event_at = cp_created + 3;
        let Lookup::Known(cp) = t.lookup(700, event_at) else {
            panic!("cp must be known after it exited")
        };
        assert_eq!(cp.cmd_line.as_deref(), Some("cp a b"));
        assert_eq!(cp.exe.as_deref(), Some(Path::new("/usr/bin/cp")));
        assert_eq!(cp.user.as_deref(), Some("ec2-user"));
        assert!(cp.exited_ms.is_some());
        assert_eq!(
            t.parent(&cp).and_then(|p| p.name.clone()).as_deref(),
            Some("bash")
        );

        // The pid is reused by a later process: an event read before it started is still cp's…
        fake_proc(d.path(), &[(700, 1, "evil", evil_t, &["evil"], 0)]);
        t.on_fork(1, 700, mono_ns - 10_000_000_000);
        t.on_exec(700, mono_ns - 10_000_000_000);
        let Lookup::Known(again) = t.lookup_between(700, cp_created, event_at) else {
            panic!("before the reuse, pid 700 is cp")
        };
        assert_eq!(again.name.as_deref(), Some("cp"));
        // …one read after both ran, with no lower bound, cannot be told…
        let later = t.created_ms(evil_t) + 5;
        assert!(matches!(t.lookup(700, later), Lookup::Unknown(r) if r.contains("2 processes")));
        // …and one whose window starts after cp exited is the new process.
        let Lookup::Known(new) = t.lookup_between(700, t.created_ms(now_ticks - 2000), later)
        else {
            panic!("after cp exited, pid 700 is the new process")
        };
        assert_eq!(new.name.as_deref(), Some("evil"));
    }

    #[test]
    fn without_the_connector_a_reused_pid_is_read_again_not_taken_for_the_old_process() {
        use nix::time::{clock_gettime, ClockId};
        // Start times within the grace period (an exited process older than it is forgotten).
        let boot_secs = clock_gettime(ClockId::CLOCK_BOOTTIME).unwrap().tv_sec();
        let now_ticks = u64::try_from(boot_secs).unwrap() * 100;
        let (first_t, second_t) = (now_ticks - 3000, now_ticks - 1000);
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path(), &[(900, 1, "first", first_t, &["first"], 1000)]);
        let t = table(d.path());
        t.set_feed(Err("ECONNREFUSED".into()));
        let first_at = t.created_ms(first_t) + 1;
        assert!(
            matches!(t.lookup(900, first_at), Lookup::Known(i) if i.name.as_deref() == Some("first"))
        );
        // The first process exits unreported and the pid is reused by a later one.
        fake_proc(d.path(), &[(900, 1, "second", second_t, &["second"], 0)]);
        std::thread::sleep(Duration::from_millis(UNFED_CHECK_MS as u64 + 20));
        let second_at = t.created_ms(second_t) + 1;
        let r = t.lookup_between(900, t.created_ms(second_t) + 100, second_at + 100);
        assert!(
            matches!(&r, Lookup::Known(i) if i.name.as_deref() == Some("second")),
            "{r:?}"
        );
        // Read after both ran, with no lower bound: either may have acted, and that is said.
        let r = t.lookup(900, second_at);
        assert!(
            matches!(&r, Lookup::Unknown(s) if s.contains("2 processes")),
            "{r:?}"
        );
        // An event from before the reuse is still the first process's.
        let r = t.lookup_between(900, first_at, first_at);
        assert!(
            matches!(&r, Lookup::Known(i) if i.name.as_deref() == Some("first")),
            "{r:?}"
        );
        // And a pid whose process is gone is marked exited, not kept live forever.
        std::fs::remove_dir_all(d.path().join("900")).unwrap();
        std::thread::sleep(Duration::from_millis(UNFED_CHECK_MS as u64 + 20));
        let _ = t.lookup(900, second_at);
        assert_eq!(t.stats().live, 0, "{:?}", t.all());
    }

    #[test]
    fn a_stalled_feeder_costs_one_wait_and_losses_rescan_at_most_once_a_second() {
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path(), &[(1, 0, "init", 1, &["/sbin/init"], 0)]);
        let t = table(d.path());
        let at = now_ms();
        let wait = |max| {
            let s = std::time::Instant::now();
            (t.await_drained(at, max), s.elapsed())
        };
        let (ok, took) = wait(Duration::from_millis(50));
        assert!(!ok && took >= Duration::from_millis(50), "{took:?}");
        // Until the feeder moves on, later waits give up at once.
        let (ok, took) = wait(Duration::from_secs(5));
        assert!(!ok && took < Duration::from_secs(1), "{took:?}");
        t.set_drained(at);
        assert!(wait(Duration::from_secs(5)).0);

        t.on_lost();
        assert!(t.rescan_if_lost(), "the first loss rescans");
        t.on_lost();
        assert!(!t.rescan_if_lost(), "a second within the second waits");
        assert_eq!(t.stats().lost, 2);
    }

    #[test]
    fn without_the_connector_a_process_read_before_its_exec_is_read_again() {
        use nix::time::{clock_gettime, ClockId};
        let boot_secs = clock_gettime(ClockId::CLOCK_BOOTTIME).unwrap().tv_sec();
        let start = u64::try_from(boot_secs).unwrap() * 100 - 1000;
        let d = tempfile::tempdir().unwrap();
        // A restarted jupyter-server read between su's fork and its exec (the sandbox's demo).
        fake_proc(
            d.path(),
            &[(600, 1, "su", start, &["su", "-l", "ec2-user"], 0)],
        );
        let t = table(d.path());
        t.set_feed(Err("EPERM".into()));
        t.scan();
        let at = t.created_ms(start) + 1;
        assert!(matches!(t.lookup(600, at), Lookup::Known(i) if i.name.as_deref() == Some("su")));
        // It exec'd: same pid, same start time, another program and user.
        let server = "/opt/conda/bin/jupyter-server";
        fake_proc(
            d.path(),
            &[(600, 1, "jupyter-server", start, &[server], 1000)],
        );
        std::thread::sleep(Duration::from_millis(UNFED_CHECK_MS as u64 + 20));
        let r = t.lookup(600, at + 100);
        assert!(
            matches!(&r, Lookup::Known(i) if i.name.as_deref() == Some("jupyter-server")
                && i.uid == Some(1000) && i.jupyter == Some(JupyterRole::Server)),
            "{r:?}"
        );
        // A child read later finds its parent as it is now.
        fake_proc(d.path(), &[(601, 600, "bash", start + 50, &["bash"], 1000)]);
        let Lookup::Known(child) = t.lookup(601, at + 1000) else {
            panic!("bash must be known")
        };
        let parent = t.parent(&child).expect("its parent");
        assert_eq!(parent.name.as_deref(), Some("jupyter-server"));
    }

    #[test]
    fn a_pid_now_used_by_a_newer_process_is_unknown_not_guessed() {
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path(), &[(800, 1, "late", 7000, &["late"], 1000)]);
        let t = table(d.path());
        // No connector: the event was read before pid 800's current process started.
        t.set_feed(Err("ECONNREFUSED".into()));
        let r = t.lookup(800, t.created_ms(6000));
        assert!(
            matches!(&r, Lookup::Unknown(s) if s.contains("started after the event")),
            "{r:?}"
        );
        let r = t.lookup(801, t.created_ms(6000));
        assert!(
            matches!(&r, Lookup::Unknown(s) if s.contains("ECONNREFUSED")),
            "{r:?}"
        );
        // Read at lookup when it started before.
        assert!(
            matches!(t.lookup(800, t.created_ms(7000) + 1), Lookup::Known(i) if i.seen == Seen::Lookup)
        );
    }

    #[test]
    fn exec_that_could_not_be_read_keeps_who_but_not_what() {
        let d = tempfile::tempdir().unwrap();
        fake_proc(d.path(), &[(500, 1, "bash", 100, &["bash", "-i"], 1000)]);
        let t = table(d.path());
        t.scan();
        t.on_fork(500, 900, 3000 * 10 * 1_000_000); // /proc/900 never existed for us
        t.on_exec(900, 3000 * 10 * 1_000_000);
        let Lookup::Known(i) = t.lookup(900, now_ms()) else {
            panic!()
        };
        assert_eq!(i.exe, None);
        assert_eq!(i.cmd_line, None);
        assert_eq!(i.uid, None);
        assert_eq!(i.real_uid, Some(1000));
        assert!(
            i.note
                .as_deref()
                .is_some_and(|n| n.contains("program is unknown")),
            "{i:?}"
        );
    }

    #[test]
    fn exited_entries_are_bounded_in_count() {
        let d = tempfile::tempdir().unwrap();
        let t = ProcessTable::new(
            TableConfig {
                proc_root: d.path().to_path_buf(),
                max_exited: 10,
                ..Default::default()
            },
            Box::new(|_| None),
        );
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        let now_ns = u64::try_from(mono.tv_sec()).unwrap() * 1_000_000_000;
        for pid in 1000..1100u32 {
            t.on_fork(1, pid, now_ns + u64::from(pid));
            t.on_exit(pid, now_ns + u64::from(pid) + 1);
        }
        let s = t.stats();
        assert_eq!(s.exited, 10);
        assert_eq!(s.live, 0);
    }
}
