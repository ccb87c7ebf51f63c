//! Who made each file change: the daemon's bridge between the watcher's pids and the process
//! table (`WatchConfig::pid_seen` lets it read a new process as soon as its first event is
//! read). It runs only with the fanotify source (inotify never names a process): the table is
//! fed by the process-events connector where the kernel allows it, else from `/proc` at lookup
//! time (then a process that exits before its event is read is named `unknown`, with the reason).
//!
//! A change without a pid keeps the file-owner actor of `ocsf::file_activity`
//! (`actor_basis: file_owner`): catch-up and rescans find changes no event named.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value};

use super::change::{FsChange, Source};
use super::ocsf::Context;
use super::ocsf_actor::{actor, attribute, attribute_with, Attribution};
use super::process::connector::Feeder;
use super::process::jupyter::descent;
use super::process::table::{TableStats, UserLookup};
use super::process::{Lookup, ProcessInfo, ProcessTable, TableConfig};
use super::watcher::PidHook;

/// The process table and what feeds it, for the life of the daemon.
pub struct Attributor {
    table: Arc<ProcessTable>,
    /// Stops the connector thread when dropped.
    _feeder: Option<Feeder>,
    feed: String,
    /// The rendered actor of each process incarnation seen lately (see [`Rendered`]).
    rendered: Mutex<Rendered>,
}

/// Actors already rendered, by the table's entry for the process: a burst of changes by one
/// process (a `cp -r`, an `rm -r`, a training job's checkpoints) renders its actor once instead
/// of looking up its parent and Jupyter descent and building the OCSF objects per record. The
/// key is the address of the table's `Arc<ProcessInfo>`, which the table replaces whenever it
/// learns something new about the process (exec, exit note); the entry holds that `Arc`, so the
/// address cannot be reused while it is cached. Only complete renderings are kept (the parent
/// known): a process whose parent was not known yet is looked up again next time.
#[derive(Default)]
struct Rendered {
    by_info: HashMap<usize, (Arc<ProcessInfo>, ActorFields)>,
}

/// Processes whose actor stays rendered; all are forgotten when more are seen.
const RENDERED_MAX: usize = 256;

impl Attributor {
    /// Scans `/proc` and starts the connector (or says why it cannot).
    pub fn start(users: UserLookup) -> Self {
        Self::with_table(ProcessTable::new(TableConfig::default(), users))
    }

    fn with_table(table: ProcessTable) -> Self {
        let table = Arc::new(table);
        let (feeder, feed) = match Feeder::start(Arc::clone(&table)) {
            Ok(f) => (Some(f), "process-events connector".to_string()),
            Err(e) => (
                None,
                format!("/proc at event time only; short-lived processes may be unknown ({e})"),
            ),
        };
        Self {
            table,
            _feeder: feeder,
            feed,
            rendered: Mutex::new(Rendered::default()),
        }
    }

    /// For the watcher's reader ([`WatchConfig::pid_seen`]): a pid the table does not know yet is
    /// read from `/proc` at once, before a short-lived process is gone.
    pub fn hook(&self) -> PidHook {
        let table = Arc::clone(&self.table);
        PidHook(Arc::new(move |pid| table.prime(pid)))
    }

    /// What feeds the table, for the log, the Start record and `status`.
    pub fn feed(&self) -> &str {
        &self.feed
    }

    pub fn stats(&self) -> TableStats {
        self.table.stats()
    }

    /// Replaces the file-owner actor of `record` (made from `ch`) with the process that acted,
    /// or with an `unknown` that says why.
    pub fn apply(&self, record: &mut Value, ch: &FsChange, ctx: &Context) {
        let Some(pid) = ch.pid else {
            if ch.source == Source::Live {
                let why = Lookup::Unknown(NO_PID.into());
                let a = Attribution {
                    pid: None,
                    lookup: &why,
                    parent: None,
                    jupyter: None,
                };
                attribute(record, &a, ctx);
            }
            return;
        };
        let lookup = self.lookup(pid, ch.time_ms);
        let Lookup::Known(info) = &lookup else {
            return self.render(pid, lookup, |a, _| attribute(record, a, ctx));
        };
        let key = Arc::as_ptr(info) as usize;
        let cached = self.cache().by_info.get(&key).map(|(_, f)| f.clone());
        let fields = match cached {
            Some(f) => f,
            None => {
                let keep = Arc::clone(info);
                let (fields, complete) =
                    self.render(pid, lookup, |a, _| (actor(a, ctx), a.parent.is_some()));
                if complete || keep.ppid <= 1 {
                    let mut cache = self.cache();
                    if cache.by_info.len() >= RENDERED_MAX {
                        cache.by_info.clear();
                    }
                    cache.by_info.insert(key, (keep, fields.clone()));
                }
                fields
            }
        };
        attribute_with(record, fields);
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Rendered> {
        self.rendered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The OCSF actor (and its `unmapped` fields) of `pid` at `time_ms`, with a key that names
    /// that one process (pid reuse apart): the read audit aggregates by it.
    pub fn actor_of(
        &self,
        pid: Option<u32>,
        time_ms: i64,
        ctx: &Context,
    ) -> (ActorKey, ActorFields) {
        let Some(pid) = pid else {
            let why = Lookup::Unknown(NO_PID.into());
            let a = Attribution {
                pid: None,
                lookup: &why,
                parent: None,
                jupyter: None,
            };
            return ((0, i64::MIN), actor(&a, ctx));
        };
        self.resolve(pid, time_ms, |a, created| ((pid, created), actor(a, ctx)))
    }

    fn resolve<R>(&self, pid: u32, time_ms: i64, f: impl FnOnce(&Attribution<'_>, i64) -> R) -> R {
        self.render(pid, self.lookup(pid, time_ms), f)
    }

    /// The table's entry for `pid` at `time_ms`.
    fn lookup(&self, pid: u32, time_ms: i64) -> Lookup {
        let lookup = self.table.lookup(pid, time_ms);
        // Known only as a fork of its parent, or not at all: its fork and exec may still be in
        // the connector's queue (the event can be read before the feeder applied them, and the
        // process be gone from /proc by then).
        if lookup.may_be_queued() && self.table.await_drained(time_ms, EXEC_WAIT) {
            return self.table.lookup(pid, time_ms);
        }
        lookup
    }

    /// `f` of the attribution of `lookup` (its parent and Jupyter descent looked up).
    fn render<R>(&self, pid: u32, lookup: Lookup, f: impl FnOnce(&Attribution<'_>, i64) -> R) -> R {
        let (parent, jupyter, created) = match &lookup {
            Lookup::Known(info) => (
                self.table.parent(info),
                descent(&self.table, info),
                info.created_time_ms,
            ),
            Lookup::Unknown(_) => (None, None, i64::MIN),
        };
        let a = Attribution {
            pid: Some(pid),
            lookup: &lookup,
            parent: parent.as_deref(),
            jupyter: jupyter.as_ref().map(|(r, p)| (r, p.as_ref())),
        };
        f(&a, created)
    }
}

/// Why a change without a pid has no process.
const NO_PID: &str = "no event named a process: found by the scan of a new directory, or made by \
                      a process outside the agent's pid namespace";

/// How long a lookup of a just-forked process waits for the connector to apply its exec.
const EXEC_WAIT: Duration = Duration::from_millis(100);

/// One process incarnation: (pid, start time in ms; `i64::MIN` when unknown).
pub type ActorKey = (u32, i64);
/// An OCSF `actor` and the fields it adds to `unmapped` (`ocsf_actor::actor`).
pub type ActorFields = (Value, Map<String, Value>);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::change::{ChangeKind, FsChange};
    use crate::audit::ocsf;

    fn change(pid: Option<u32>, source: Source) -> FsChange {
        FsChange {
            kind: ChangeKind::Create,
            path: "/home/ec2-user/SageMaker/a.txt".into(),
            facts: None,
            time_ms: crate::audit::change::now_ms(),
            source,
            pid,
        }
    }

    fn ctx() -> Context {
        Context::new("h", None, None, None, None)
    }

    #[test]
    fn the_agent_itself_is_named_and_a_change_without_pid_keeps_its_basis() {
        let a = Attributor::with_table(ProcessTable::new(
            TableConfig::default(),
            Box::new(|_| None),
        ));
        let me = std::process::id();
        let ch = change(Some(me), Source::Live);
        let mut r = ocsf::file_activity(&ch, &ctx(), 1);
        a.apply(&mut r, &ch, &ctx());
        assert_eq!(r["unmapped"]["actor_basis"], "process", "{r:#}");
        assert_eq!(r["actor"]["process"]["pid"], me, "{r:#}");
        assert!(
            r["actor"]["process"]["parent_process"]["pid"].is_u64(),
            "{r:#}"
        );

        let ch = change(None, Source::CatchUp);
        let mut r = ocsf::file_activity(&ch, &ctx(), 1);
        let before = r.clone();
        a.apply(&mut r, &ch, &ctx());
        assert_eq!(r, before, "a catch-up change keeps the file-owner actor");

        let ch = change(None, Source::Live);
        let mut r = ocsf::file_activity(&ch, &ctx(), 1);
        a.apply(&mut r, &ch, &ctx());
        let basis = r["unmapped"]["actor_basis"].as_str().unwrap_or_default();
        assert!(basis.starts_with("unknown: "), "{r:#}");
        assert_eq!(r["actor"]["user"]["name"], "unknown", "{r:#}");
    }

    #[test]
    fn a_process_is_rendered_once_and_its_records_stay_the_same() {
        let a = Attributor::with_table(ProcessTable::new(
            TableConfig::default(),
            Box::new(|_| None),
        ));
        let me = std::process::id();
        let ch = change(Some(me), Source::Live);
        let mut first = ocsf::file_activity(&ch, &ctx(), 1);
        a.apply(&mut first, &ch, &ctx());
        assert_eq!(a.cache().by_info.len(), 1, "rendered and kept");
        let mut again = ocsf::file_activity(&ch, &ctx(), 1);
        a.apply(&mut again, &ch, &ctx());
        assert_eq!(a.cache().by_info.len(), 1);
        assert_eq!(first["actor"], again["actor"]);
        assert_eq!(first["unmapped"], again["unmapped"]);
        // The same as rendering without the cache.
        let mut fresh = ocsf::file_activity(&ch, &ctx(), 1);
        a.resolve(me, ch.time_ms, |x, _| attribute(&mut fresh, x, &ctx()));
        assert_eq!(fresh["actor"], again["actor"]);
    }

    #[test]
    fn a_pid_that_never_existed_is_unknown_with_the_reason() {
        let a = Attributor::with_table(ProcessTable::new(
            TableConfig::default(),
            Box::new(|_| None),
        ));
        // Above pid_max (4,194,304 at most): no process can have it.
        let ch = change(Some(4_194_305), Source::Live);
        let mut r = ocsf::file_activity(&ch, &ctx(), 1);
        a.apply(&mut r, &ch, &ctx());
        let basis = r["unmapped"]["actor_basis"].as_str().unwrap_or_default();
        assert!(basis.contains("exited before it could be read"), "{r:#}");
        assert_eq!(r["actor"]["process"]["pid"], 4_194_305, "{r:#}");
    }
}
