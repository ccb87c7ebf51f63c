//! `status --json` validates against docs/status.schema.json — the real output on the temp root
//! and the object a heartbeat carries.

mod common;
#[path = "ocsf_common/mod.rs"]
mod ocsf_common;

use common::{agent, stderr, stdout, TempRoot};
use serde_json::Value;

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/status.schema.json"
    ))
    .expect("read docs/status.schema.json");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn check(v: &jsonschema::Validator, doc: &Value) {
    let errs: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errs.is_empty(), "{errs:#?}\nin {doc:#}");
}

#[test]
fn status_json_on_the_fixture_validates_against_the_documented_schema() {
    let v = validator();
    let t = TempRoot::amazon_linux();
    let out = agent(&[
        "status",
        "--json",
        "--root",
        t.path().to_str().expect("utf-8"),
    ]);
    // Not applied: ec2-user still has root, so not compliant.
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("one JSON object");
    check(&v, &doc);
    assert_eq!(doc["compliant"], false);
    assert_eq!(doc["controls"].as_array().map(Vec::len), Some(4));
    assert_eq!(doc["audit"].as_array().map(Vec::len), Some(2));
    // No daemon ran and the unit is not installed: not counted, nothing failing.
    assert_eq!(doc["audit_problems"], serde_json::json!([]), "{doc:#}");
}

/// Every `audit_problems` code the agent can report is in the schema's enum and documented.
#[test]
fn every_audit_problem_code_is_in_the_schema_and_docs() {
    use notebook_agent::audit::health::problem;
    let v = validator();
    let doc_text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/STATUS.md"))
        .expect("read docs/STATUS.md");
    for code in [
        problem::DAEMON_DOWN,
        problem::DAEMON_HUNG,
        problem::DROPPING,
        problem::LOSS_UNRECORDED,
        problem::NOT_SHIPPING,
        problem::OPERATOR,
        problem::DEAD_LETTER,
        problem::BACKLOG,
        problem::UNREADABLE,
    ] {
        let mut doc = ocsf_common::status_example(true);
        doc["audit_problems"] = serde_json::json!([code]);
        check(&v, &doc);
        assert!(
            doc_text.contains(&format!("`{code}`")),
            "{code} not in docs/STATUS.md"
        );
    }
    let mut doc = ocsf_common::status_example(true);
    doc["audit_problems"] = serde_json::json!(["made_up"]);
    assert!(!v.is_valid(&doc), "unknown codes are refused");
}

#[test]
fn the_heartbeat_status_validates_too() {
    let v = validator();
    for compliant in [true, false] {
        check(&v, &ocsf_common::status_example(compliant));
    }
    let bad = serde_json::json!({"version": 1, "compliant": "yes"});
    assert!(!v.is_valid(&bad));
}
