//! docs/queries/ and the stack's saved queries cannot drift apart: each saved `QueryDefinition`
//! in packaging/cloudformation.yaml is, word for word, one file in docs/queries/.

use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `QueryString: |` block of the template, dedented.
fn saved_queries() -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("packaging/cloudformation.yaml"))
        .expect("read cloudformation.yaml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() != "QueryString: |" {
            continue;
        }
        let indent = l.len() - l.trim_start().len();
        let body: Vec<&str> = lines[i + 1..]
            .iter()
            .take_while(|b| b.trim().is_empty() || b.len() - b.trim_start().len() > indent)
            .copied()
            .collect();
        let strip = body
            .iter()
            .filter(|b| !b.trim().is_empty())
            .map(|b| b.len() - b.trim_start().len())
            .min()
            .unwrap_or(0);
        let q: Vec<&str> = body
            .iter()
            .map(|b| if b.len() >= strip { &b[strip..] } else { "" })
            .collect();
        out.push(q.join("\n").trim_end().to_string());
    }
    out
}

#[test]
fn every_saved_query_is_in_docs_queries() {
    let saved = saved_queries();
    assert_eq!(saved.len(), 7, "{saved:#?}");
    let dir = Path::new(ROOT).join("docs/queries");
    let files: Vec<String> = [
        "non-compliant-notebooks",
        "silent-notebooks",
        "file-deletions-by-notebook",
        "drift-repairs",
        "who-deleted-under-a-path",
        "readers-of-data",
        "top-writers",
    ]
    .iter()
    .map(|n| {
        std::fs::read_to_string(dir.join(format!("{n}.txt")))
            .unwrap_or_else(|e| panic!("docs/queries/{n}.txt: {e}"))
            .trim_end()
            .to_string()
    })
    .collect();
    for q in &saved {
        assert!(files.contains(q), "not in docs/queries:\n{q}");
    }
}

/// The fields the queries use are the encoder's: a heartbeat and a drift record carry them.
#[test]
fn the_queries_name_fields_the_encoder_writes() {
    #[path = "ocsf_common/mod.rs"]
    mod ocsf_common;
    let examples = ocsf_common::examples(&ocsf_common::ctx());
    let get = |name: &str| {
        examples
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, r)| r.clone())
            .unwrap_or_else(|| panic!("example {name}"))
    };
    let beat = get("heartbeat-non-compliant");
    for p in [
        "/class_uid",
        "/finding_info/types/0",
        "/compliance/status_id",
        "/compliance/status_detail",
        "/device/name",
        "/metadata/product/name",
        "/unmapped/spool_pending",
        "/unmapped/uptime_secs",
        "/unmapped/status/compliant",
        "/unmapped/status/audit_healthy",
    ] {
        assert!(beat.pointer(p).is_some(), "heartbeat lacks {p}");
    }
    let drift = get("drift-found");
    for p in [
        "/compliance/control",
        "/activity_name",
        "/compliance/status",
    ] {
        assert!(drift.pointer(p).is_some(), "drift lacks {p}");
    }
    let delete = get("delete");
    for p in ["/file/path", "/actor/user/name", "/activity_id"] {
        assert!(delete.pointer(p).is_some(), "delete lacks {p}");
    }
    let by_terminal = get("delete-by-terminal");
    for p in [
        "/actor/process/name",
        "/actor/process/cmd_line",
        "/unmapped/jupyter/terminal_tty",
        "/unmapped/actor_basis",
    ] {
        assert!(
            by_terminal.pointer(p).is_some(),
            "delete-by-terminal lacks {p}"
        );
    }
    assert!(get("create-by-kernel")
        .pointer("/unmapped/jupyter/kernel_id")
        .is_some());
    for name in ["read-summary", "read-file"] {
        let r = get(name);
        for p in [
            "/unmapped/read/reads",
            "/actor/process/name",
            "/activity_id",
        ] {
            assert!(r.pointer(p).is_some(), "{name} lacks {p}");
        }
    }
}
