//! The OCSF `actor` of a file record when the process is known (fanotify + the process table),
//! replacing today's file-owner actor (`ocsf::file_activity_with_uid`).
//!
//! - `actor.process`: `pid`, `name` (comm), `file` (the executable: `path`, `name`), `cmd_line`
//!   (already redacted by the table), `created_time`, `user` (effective uid: the one the access
//!   was checked against) and `parent_process` with the same fields.
//! - `actor.user`: who started the process (the real uid; differs from `actor.process.user` for a
//!   set-uid program).
//! - `unmapped.actor_basis`: `"process"`, or `"unknown: <reason>"` when nothing can be said (then
//!   `actor.user.name` is `"unknown"` and `actor.process` carries only the pid the kernel gave).
//! - `unmapped.actor_note`: what could not be read about a known process (it exited too fast).
//! - `unmapped.jupyter`: the kernel (`kernel_id`, `kernel_pid`) or terminal (`terminal_tty`,
//!   `terminal_pid`) the process descends from.
//!
//! A field the agent does not know is left out, never filled in.

use std::os::unix::ffi::OsStrExt;

use serde_json::{json, Map, Value};

use super::ocsf::{encode_path, Context};
use super::process::jupyter::JupyterRole;
use super::process::{Lookup, ProcessInfo};

/// Everything known about who acted on one file event.
#[derive(Debug, Clone, Copy)]
pub struct Attribution<'a> {
    /// The pid the kernel reported, if any.
    pub pid: Option<u32>,
    pub lookup: &'a Lookup,
    pub parent: Option<&'a ProcessInfo>,
    /// The kernel or terminal it descends from, and the process that has that role.
    pub jupyter: Option<(&'a JupyterRole, &'a ProcessInfo)>,
}

fn user(uid: Option<u32>, name: Option<&str>, ctx: &Context) -> Option<Value> {
    let mut u = Map::new();
    if let Some(uid) = uid {
        u.insert("uid".into(), json!(uid.to_string()));
    }
    let name = name
        .map(str::to_string)
        .or_else(|| uid.and_then(|u| ctx.user_name(u)));
    if let Some(n) = name {
        u.insert("name".into(), json!(n));
    }
    (!u.is_empty()).then_some(Value::Object(u))
}

/// The OCSF `process` object of `info` (with `parent_process` when given).
pub fn process_object(info: &ProcessInfo, parent: Option<&ProcessInfo>, ctx: &Context) -> Value {
    let mut p = Map::new();
    p.insert("pid".into(), json!(info.pid));
    if let Some(n) = &info.name {
        p.insert("name".into(), json!(n));
    }
    if let Some(exe) = &info.exe {
        let (path, _) = encode_path(exe.as_os_str().as_bytes());
        let name = exe
            .file_name()
            .map(|n| encode_path(n.as_bytes()).0)
            .unwrap_or_else(|| path.clone());
        p.insert(
            "file".into(),
            json!({"path": path, "name": name, "type_id": 1, "type": "Regular File"}),
        );
    }
    if let Some(c) = &info.cmd_line {
        p.insert("cmd_line".into(), json!(c));
    }
    if info.created_time_ms >= 0 {
        p.insert("created_time".into(), json!(info.created_time_ms));
    }
    if let Some(u) = user(info.uid, info.user.as_deref(), ctx) {
        p.insert("user".into(), u);
    }
    if let Some(parent) = parent {
        p.insert("parent_process".into(), process_object(parent, None, ctx));
    }
    Value::Object(p)
}

/// (`actor`, fields for `unmapped`) of one file record.
pub fn actor(a: &Attribution<'_>, ctx: &Context) -> (Value, Map<String, Value>) {
    let mut unmapped = Map::new();
    let actor = match a.lookup {
        Lookup::Known(info) => {
            unmapped.insert("actor_basis".into(), json!("process"));
            if let Some(n) = &info.note {
                unmapped.insert("actor_note".into(), json!(n));
            }
            if let Some((role, who)) = a.jupyter {
                let j = match role {
                    JupyterRole::Kernel { id } => json!({"kernel_id": id, "kernel_pid": who.pid}),
                    JupyterRole::Terminal { tty } => match tty {
                        Some(t) => json!({"terminal_tty": t, "terminal_pid": who.pid}),
                        None => json!({"terminal_pid": who.pid}),
                    },
                    JupyterRole::Server => json!({"server_pid": who.pid}),
                };
                unmapped.insert("jupyter".into(), j);
            }
            let who = user(
                info.real_uid.or(info.uid),
                if info.real_uid.is_some() {
                    info.real_user.as_deref()
                } else {
                    info.user.as_deref()
                },
                ctx,
            )
            .unwrap_or_else(|| json!({"name": "unknown"}));
            json!({"process": process_object(info, a.parent, ctx), "user": who})
        }
        Lookup::Unknown(reason) => {
            unmapped.insert("actor_basis".into(), json!(format!("unknown: {reason}")));
            match a.pid {
                Some(pid) => json!({"process": {"pid": pid}, "user": {"name": "unknown"}}),
                None => json!({"user": {"name": "unknown"}}),
            }
        }
    };
    (actor, unmapped)
}

/// Puts the attribution into a file record made by `ocsf::file_activity`: its `actor` is
/// replaced, `unmapped.actor_basis` overwritten and the other fields added.
pub fn attribute(record: &mut Value, a: &Attribution<'_>, ctx: &Context) {
    attribute_with(record, actor(a, ctx));
}

/// [`attribute`] with an actor already rendered by [`actor`].
pub fn attribute_with(record: &mut Value, (act, extra): (Value, Map<String, Value>)) {
    if let Some(r) = record.as_object_mut() {
        r.insert("actor".into(), act);
        let unmapped = r
            .entry("unmapped")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(u) = unmapped.as_object_mut() {
            for (k, v) in extra {
                u.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::process::table::Seen;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;
    use std::sync::Arc;

    fn ctx() -> Context {
        Context::new("h", None, None, None, None)
            .with_user_lookup(|u| (u == 1000).then(|| "ec2-user".to_string()))
    }

    fn info(pid: u32, exe: PathBuf) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            name: Some("cp".into()),
            exe: Some(exe),
            cmd_line: Some("cp a b".into()),
            created_time_ms: 1_767_225_600_000,
            uid: Some(0),
            user: None,
            real_uid: Some(1000),
            real_user: None,
            exited_ms: Some(1_767_225_600_010),
            jupyter: None,
            seen: Seen::Exec,
            note: None,
        }
    }

    #[test]
    fn known_process_renders_process_parent_users_and_jupyter() {
        let i = info(42, "/usr/bin/cp".into());
        let parent = info(7, "/usr/bin/bash".into());
        let kernel = info(5, "/opt/conda/bin/python3.11".into());
        let role = JupyterRole::Kernel { id: "k1".into() };
        let l = Lookup::Known(Arc::new(i));
        let (a, u) = actor(
            &Attribution {
                pid: Some(42),
                lookup: &l,
                parent: Some(&parent),
                jupyter: Some((&role, &kernel)),
            },
            &ctx(),
        );
        assert_eq!(a["process"]["pid"], 42);
        assert_eq!(a["process"]["file"]["path"], "/usr/bin/cp");
        assert_eq!(a["process"]["file"]["name"], "cp");
        assert_eq!(a["process"]["cmd_line"], "cp a b");
        assert_eq!(a["process"]["user"], json!({"uid": "0"}));
        assert_eq!(a["process"]["parent_process"]["pid"], 7);
        assert!(a["process"]["parent_process"]
            .get("parent_process")
            .is_none());
        // Set-uid: the actor is the real user.
        assert_eq!(a["user"], json!({"uid": "1000", "name": "ec2-user"}));
        assert_eq!(u["actor_basis"], "process");
        assert_eq!(u["jupyter"], json!({"kernel_id": "k1", "kernel_pid": 5}));
    }

    #[test]
    fn unknown_says_why_and_keeps_only_the_pid() {
        let l = Lookup::Unknown("process 9 exited before it could be read".into());
        let (a, u) = actor(
            &Attribution {
                pid: Some(9),
                lookup: &l,
                parent: None,
                jupyter: None,
            },
            &ctx(),
        );
        assert_eq!(
            a,
            json!({"process": {"pid": 9}, "user": {"name": "unknown"}})
        );
        assert_eq!(
            u["actor_basis"],
            "unknown: process 9 exited before it could be read"
        );
    }

    #[test]
    fn a_hostile_executable_path_stays_one_line() {
        let exe = PathBuf::from(OsString::from_vec(b"/tmp/x\n\xff".to_vec()));
        let v = process_object(&info(1, exe), None, &ctx());
        let line = serde_json::to_string(&v).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(v["file"]["path"], "/tmp/x\n\\xff");
    }
}
