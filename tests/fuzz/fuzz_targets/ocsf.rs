//! The OCSF encoder on paths the notebook user chose: any bytes but NUL (newlines, quotes, escape
//! sequences, invalid UTF-8, up to several KB). Input: one flag byte, then up to three paths
//! separated by NUL (the path, a rename's old name, a symlink target).
//!
//! Invariants: the record is one line of valid UTF-8 JSON that parses back to the same value, and
//! the escaping documented in docs/EVENTS.md ("Path escaping") gives back the exact bytes, both
//! through `ocsf::path_bytes` and through a decoder written here from the documentation.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use notebook_agent::audit::change::{
    AgentEvent, ChangeKind, FileFacts, FileKind, FsChange, Source,
};
use notebook_agent::audit::ocsf::{self, Context};
use serde_json::Value;

fn path(b: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(b))
}

/// docs/EVENTS.md, "Path escaping" 3: `path_hex` (lowercase hex) when present, else the UTF-8 of
/// `path`. Written from the documentation, not from the encoder.
fn documented_decode(text: &Value, hex: Option<&Value>) -> Vec<u8> {
    if let Some(h) = hex {
        let h = h.as_str().expect("path_hex is a string");
        assert!(h.len() % 2 == 0, "odd-length path_hex {h:?}");
        assert!(
            h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "path_hex is not lowercase hex: {h:?}"
        );
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect();
    }
    text.as_str().expect("path is a string").as_bytes().to_vec()
}

/// One line of UTF-8 JSON that parses back to `v`.
fn line_round_trip(v: &Value) -> Value {
    let line = ocsf::to_line(v);
    assert!(
        !line.contains(&b'\n') && !line.contains(&b'\r'),
        "record is not one line"
    );
    assert!(std::str::from_utf8(&line).is_ok(), "record is not UTF-8");
    assert_eq!(line.first(), Some(&b'{'));
    let back: Value = serde_json::from_slice(&line).expect("record is not valid JSON");
    assert_eq!(&back, v, "record does not parse back to itself");
    back
}

fn check_object(rec: &Value, object: &str, raw: &[u8]) {
    assert_eq!(
        ocsf::path_bytes(rec, object).as_deref(),
        Some(raw),
        "ocsf::path_bytes({object}) lost bytes"
    );
    let hex = rec.pointer(&format!("/unmapped/{object}/path_hex"));
    assert_eq!(
        hex.is_some(),
        std::str::from_utf8(raw).is_err(),
        "path_hex must be present exactly when the path is not UTF-8"
    );
    assert_eq!(
        documented_decode(&rec[object]["path"], hex),
        raw,
        "documented decoding of {object} lost bytes"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0);
    let p = parts.next().unwrap_or_default();
    let from = parts.next();
    let target = parts.next();

    let ctx = Context::new(
        "ip-10-0-0-1",
        Some("nb".into()),
        Some("arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/nb".into()),
        Some("us-east-1".into()),
        Some("123456789012".into()),
    )
    .with_user_lookup(|uid| (uid == 1000).then(|| "ec2-user".to_string()));

    let facts = (flags & 1 != 0).then(|| FileFacts {
        kind: if target.is_some() {
            FileKind::SymbolicLink
        } else {
            FileKind::Regular
        },
        size: 42,
        uid: 1000,
        gid: 1000,
        mode: 0o644,
        inode: 7,
        mtime_ms: 1_700_000_000_000,
        sha256: None,
        hash_note: None,
        link_target: target.map(path),
    });
    let kind = match (flags >> 1) % 5 {
        0 => ChangeKind::Create,
        1 => ChangeKind::Update,
        2 => ChangeKind::Delete,
        3 => ChangeKind::SetAttributes,
        _ => ChangeKind::Rename {
            from: path(from.unwrap_or(b"/home/ec2-user/SageMaker/old")),
        },
    };
    let ch = FsChange {
        kind: kind.clone(),
        path: path(p),
        facts,
        time_ms: 1_700_000_000_000,
        source: Source::Live,
        pid: None,
    };
    let rec = line_round_trip(&ocsf::file_activity_with_uid(&ch, &ctx, 1, "uid"));
    match &kind {
        ChangeKind::Rename { from } => {
            check_object(&rec, "file", from.as_os_str().as_bytes());
            check_object(&rec, "file_result", p);
        }
        _ => check_object(&rec, "file", p),
    }
    if let Some(t) = target.filter(|_| flags & 1 != 0) {
        let extra = &rec["unmapped"]["file"];
        assert_eq!(
            documented_decode(&extra["link_target"], extra.get("link_target_hex")),
            t,
            "link target lost bytes"
        );
    }

    // The agent events that carry a path use the same escaping (`unmapped.file.path_hex`).
    let tree = path(p);
    let events = [
        AgentEvent::Rescan {
            path: tree.clone(),
            reason: "overflow".into(),
            changes: 1,
            lost_notifications: 1,
        },
        AgentEvent::WatchLimit {
            path: tree.clone(),
            sysctl: "fs.inotify.max_user_watches".into(),
            error: "ENOSPC".into(),
            scan_interval_secs: 60,
        },
        AgentEvent::SpoolTamper {
            path: tree.clone(),
            what: "renamed".into(),
        },
    ];
    for ev in &events {
        let rec = line_round_trip(&ocsf::agent_event_with_uid(ev, &ctx, 2, 0, "uid"));
        check_object(&rec, "file", p);
    }
    // `Started` lists paths as a string, or `{display, hex}` when not UTF-8.
    let started = AgentEvent::Started {
        version: "0".into(),
        paths: vec![tree, Path::new("/etc").to_path_buf()],
        watches: 1,
        catch_up_changes: 0,
        source: "fanotify".into(),
        source_reason: "fanotify: filesystem mark through /x".into(),
        actors: "process-events connector".into(),
    };
    let rec = line_round_trip(&ocsf::agent_event_with_uid(&started, &ctx, 3, 0, "uid"));
    let listed = &rec["unmapped"]["paths"][0];
    let got = match listed {
        Value::String(_) => documented_decode(listed, None),
        _ => documented_decode(&listed["display"], listed.get("hex")),
    };
    assert_eq!(got, p, "Started.paths lost bytes");
});
