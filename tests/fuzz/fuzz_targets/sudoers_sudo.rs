//! The sudoers edit judged by sudo's own parser: whatever the agent leaves of a sudoers file must
//! grant the notebook user nothing *as sudo reads it*. `cvtsudoers -f json` (shipped with sudo)
//! parses the edited text; every user specification it reports is checked for an item naming
//! ec2-user, uid 1000, one of their groups (name or gid), `ALL`, or a user alias that does.
//!
//! Slower than `sudoers` (one process per input) but the only target that can see the agent and
//! sudo disagree on where a line or a name ends. Inputs sudo refuses are skipped (visudo -cf stops
//! the agent from installing them), and so are includes (cvtsudoers would read the host's files).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use libfuzzer_sys::fuzz_target;
use notebook_agent::harden::sudoers::{self, Subject};
use serde_json::Value;

/// sudo's parse of `text` as JSON, or `None` when sudo refuses it.
fn sudo_parse(text: &str) -> Option<Value> {
    let mut child = Command::new("cvtsudoers")
        .args(["-f", "json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cvtsudoers (Debian package sudo) is needed for this target");
    // A write error means cvtsudoers gave up early: its exit status says so.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes());
    let out = child.wait_with_output().expect("cvtsudoers");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn names_subject(item: &Value, doc: &Value, s: &Subject, depth: usize) -> bool {
    if depth > 8 || item.get("negated").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    if let Some(u) = item.get("username").and_then(Value::as_str) {
        return u == "ALL" || u == s.user;
    }
    if let Some(uid) = item.get("userid").and_then(Value::as_u64) {
        return uid == u64::from(s.uid);
    }
    if let Some(g) = item.get("usergroup").and_then(Value::as_str) {
        return s.groups.contains(g);
    }
    if let Some(gid) = item.get("usergid").and_then(Value::as_u64) {
        return u32::try_from(gid).is_ok_and(|g| s.gids.contains(&g));
    }
    if let Some(alias) = item.get("useralias").and_then(Value::as_str) {
        let members = doc
            .pointer("/User_Aliases")
            .and_then(|a| a.get(alias))
            .and_then(Value::as_array);
        return members.is_some_and(|m| m.iter().any(|x| names_subject(x, doc, s, depth + 1)));
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if text.contains("include") || text.contains('\0') {
        return;
    }
    let who = common::ec2_user();
    let aliases = sudoers::user_aliases(&text);
    let out = sudoers::without_grants(&text, &who, &aliases).unwrap_or_else(|| text.to_string());
    let Some(doc) = sudo_parse(&out) else {
        return;
    };
    for spec in doc
        .get("User_Specs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for item in spec
            .get("User_List")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(
                !names_subject(item, &doc, &who, 0),
                "sudo still grants ec2-user after the edit: {item}\n--- input\n{text}\n--- edited\n{out}"
            );
        }
    }
});
