//! docs/EVENTS.md cannot rot: its examples section is exactly what the encoder produces now.
//! After changing the encoder, regenerate with `UPDATE_EVENTS_DOC=1 cargo test --test events_doc`.

mod ocsf_common;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/EVENTS.md");
const BEGIN: &str = "<!-- BEGIN GENERATED EXAMPLES (tests/events_doc.rs) -->\n";
const END: &str = "<!-- END GENERATED EXAMPLES -->\n";

fn generated() -> String {
    let mut s = String::new();
    for (name, what, record) in ocsf_common::examples(&ocsf_common::ctx()) {
        let class = format!(
            "{} {} / {}",
            record["class_uid"],
            record["class_name"].as_str().unwrap_or(""),
            record["activity_name"].as_str().unwrap_or("")
        );
        s.push_str(&format!("### `{name}` — {class}\n\n{what}\n\n```json\n"));
        s.push_str(&serde_json::to_string_pretty(&record).expect("a Value serializes"));
        s.push_str("\n```\n\n");
    }
    s
}

#[test]
fn events_doc_examples_are_current() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let (head, rest) = doc
        .split_once(BEGIN)
        .expect("begin marker in docs/EVENTS.md");
    let (_, tail) = rest.split_once(END).expect("end marker in docs/EVENTS.md");
    let want = format!("{head}{BEGIN}{}{END}{tail}", generated());
    if std::env::var_os("UPDATE_EVENTS_DOC").is_some() {
        std::fs::write(DOC, &want).unwrap();
        return;
    }
    assert!(
        doc == want,
        "docs/EVENTS.md examples are stale: run UPDATE_EVENTS_DOC=1 cargo test --test events_doc"
    );
}

#[test]
fn the_on_wire_form_is_one_line() {
    for (name, _, record) in ocsf_common::examples(&ocsf_common::ctx()) {
        let line = notebook_agent::audit::ocsf::to_line(&record);
        assert!(!line.contains(&b'\n'), "{name}");
    }
}
