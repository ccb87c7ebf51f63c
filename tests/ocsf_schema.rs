//! Every record the encoder makes validates against a JSON Schema written from the OCSF 1.x
//! class it claims (tests/fixtures/ocsf): every ChangeKind, every file type found on a real
//! tree (regular, directory, symlink, FIFO), hostile names, and every agent event.

mod ocsf_common;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use notebook_agent::audit::change::{ChangeKind, FileFacts, FsChange, Source};
use notebook_agent::audit::ocsf::{self, file_activity, path_bytes, to_line, Context};
use ocsf_common::validator;
use serde_json::Value;

struct Validators {
    fsa: Validator,
    by_class: Vec<(u64, Validator)>,
}

impl Validators {
    fn new() -> Self {
        Self {
            fsa: validator("file_system_activity"),
            by_class: vec![
                (1001, validator("file_system_activity")),
                (1008, validator("event_log_activity")),
                (2003, validator("compliance_finding")),
                (6002, validator("application_lifecycle")),
            ],
        }
    }

    fn errors(&self, record: &Value) -> Vec<String> {
        let class = record["class_uid"].as_u64().unwrap_or(0);
        let Some((_, v)) = self.by_class.iter().find(|(c, _)| *c == class) else {
            return vec![format!("no schema for class_uid {class}")];
        };
        v.iter_errors(record)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    fn check(&self, record: &Value) {
        let errs = self.errors(record);
        assert!(errs.is_empty(), "{errs:#?}\nin {record:#}");
        // And the record survives the trip through one line.
        let line = to_line(record);
        assert!(!line.contains(&b'\n'));
        let back: Value = serde_json::from_slice(&line).expect("one line parses back");
        assert_eq!(&back, record);
    }
}

fn facts(p: &Path) -> FileFacts {
    FileFacts::from_metadata(&std::fs::symlink_metadata(p).expect("lstat"))
}

fn kinds(old: &Path) -> Vec<ChangeKind> {
    vec![
        ChangeKind::Create,
        ChangeKind::Update,
        ChangeKind::Delete,
        ChangeKind::Rename {
            from: old.to_path_buf(),
        },
        ChangeKind::SetAttributes,
    ]
}

fn contexts() -> Vec<Context> {
    vec![ocsf_common::ctx(), ocsf_common::bare_ctx()]
}

#[test]
fn every_change_kind_on_every_file_type_validates() {
    let v = Validators::new();
    let d = tempfile::tempdir().unwrap();
    let reg = d.path().join("f.txt");
    std::fs::write(&reg, "abc").unwrap();
    let dir = d.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    let link = d.path().join("shadow");
    std::os::unix::fs::symlink("/etc/shadow", &link).unwrap();
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();

    let hash_cfg = notebook_agent::audit::hash::HashConfig {
        trees: vec![d.path().to_path_buf()],
        ..Default::default()
    };
    let limiter = notebook_agent::audit::hash::RateLimiter::unlimited();
    for ctx in contexts() {
        for p in [&reg, &dir, &link, &fifo] {
            for kind in kinds(&d.path().join("old")) {
                let mut f = facts(p);
                if p == &link {
                    f.link_target = Some(std::fs::read_link(p).unwrap());
                }
                let mut c = FsChange {
                    kind: kind.clone(),
                    path: p.clone(),
                    facts: Some(f),
                    time_ms: notebook_agent::audit::change::now_ms(),
                    source: Source::Live,
                    pid: None,
                };
                notebook_agent::audit::hash::fill(&mut c, &hash_cfg, &limiter);
                let r = file_activity(&c, &ctx, 1);
                v.check(&r);
                assert_eq!(
                    r["activity_id"].as_u64(),
                    Some(u64::from(kind.activity_id()))
                );
                if p == &reg && kind != ChangeKind::Delete {
                    assert_eq!(
                        r.pointer("/file_result/hashes/0/value")
                            .or(r.pointer("/file/hashes/0/value")),
                        Some(&Value::from(
                            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                        ))
                    );
                }
            }
            // A delete the snapshot did not know: no facts at all.
            let c = FsChange {
                kind: ChangeKind::Delete,
                path: p.clone(),
                facts: None,
                time_ms: 1,
                source: Source::CatchUp,
                pid: None,
            };
            v.check(&file_activity(&c, &ctx, u64::MAX));
        }
    }
}

fn hostile_names() -> Vec<Vec<u8>> {
    let mut long = b"/home/ec2-user/SageMaker/".to_vec();
    while long.len() < 4000 {
        long.extend_from_slice(b"deep/\xe2\x98\x83\xff/");
    }
    long.truncate(4000);
    vec![
        b"/t/new\nline".to_vec(),
        b"/t/\"quoted\" and 'single'".to_vec(),
        b"/t/back\\slash\\x41".to_vec(),
        b"/t/ctl \x01\x07\x08\x0b\x0c\r\x1b[2J\x7f".to_vec(),
        b"/t/\xff\xfe\xfd".to_vec(),
        b"/t/\xc3\x28 half\xe2\x82".to_vec(),
        "/t/ünïcødé/日本語/😀/\u{2028}\u{2029}\u{feff}"
            .as_bytes()
            .to_vec(),
        b"/t/{\"json\":1}".to_vec(),
        b"/t/@message fields | filter".to_vec(),
        long,
    ]
}

#[test]
fn hostile_names_validate_and_round_trip() {
    let v = Validators::new();
    for raw in hostile_names() {
        let p = PathBuf::from(OsString::from_vec(raw.clone()));
        for kind in kinds(&p) {
            let c = FsChange {
                kind,
                path: p.clone(),
                facts: Some(ocsf_common::regular()),
                time_ms: 5,
                source: Source::Rescan,
                pid: None,
            };
            let r = file_activity(&c, &ocsf_common::ctx(), 9);
            v.check(&r);
            let back: Value = serde_json::from_slice(&to_line(&r)).unwrap();
            assert_eq!(path_bytes(&back, "file").unwrap(), raw);
            if back.get("file_result").is_some() {
                assert_eq!(path_bytes(&back, "file_result").unwrap(), raw);
            }
        }
    }
}

#[test]
fn hostile_symlink_target_round_trips() {
    let v = Validators::new();
    let target = b"../\xff\n\"x".to_vec();
    let mut f = ocsf_common::regular();
    f.kind = notebook_agent::audit::change::FileKind::SymbolicLink;
    f.link_target = Some(PathBuf::from(OsString::from_vec(target.clone())));
    let c = FsChange {
        kind: ChangeKind::Create,
        path: "/t/l".into(),
        facts: Some(f),
        time_ms: 5,
        source: Source::Live,
        pid: None,
    };
    let r = file_activity(&c, &ocsf_common::ctx(), 1);
    v.check(&r);
    let hex = r["unmapped"]["file"]["link_target_hex"].as_str().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(bytes, target);
}

#[test]
fn every_agent_event_validates() {
    let v = Validators::new();
    for ctx in contexts() {
        for (name, _, ev) in ocsf_common::agent_examples() {
            let r = ocsf::agent_event(&ev, &ctx, 3, 1_767_225_600_000);
            let errs = v.errors(&r);
            assert!(errs.is_empty(), "{name}: {errs:#?}\n{r:#}");
            v.check(&r);
        }
    }
}

#[test]
fn the_schema_rejects_what_ocsf_forbids() {
    let v = Validators::new();
    let c = FsChange {
        kind: ChangeKind::Create,
        path: "/t/x".into(),
        facts: Some(ocsf_common::regular()),
        time_ms: 5,
        source: Source::Live,
        pid: None,
    };
    let good = file_activity(&c, &ocsf_common::ctx(), 1);
    assert!(v.fsa.is_valid(&good));
    type Break = fn(&mut Value);
    let broken: Vec<(&str, Break)> = vec![
        ("type_uid not 100100 + activity_id", |r| {
            r["type_uid"] = 100103.into()
        }),
        ("activity_id outside the class enum", |r| {
            r["activity_id"] = 42.into();
            r["type_uid"] = 100142.into();
        }),
        ("no file", |r| {
            r.as_object_mut().unwrap().remove("file");
        }),
        ("file.type_id out of range", |r| {
            r["file"]["type_id"] = 8.into()
        }),
        ("metadata.version not 1.x.y", |r| {
            r["metadata"]["version"] = "2.0".into()
        }),
        ("product not ours", |r| {
            r["metadata"]["product"]["name"] = "x".into()
        }),
        ("sha256 not hex", |r| {
            r["file"]["hashes"][0]["value"] = "zz".into()
        }),
        ("unknown top-level attribute", |r| r["path"] = "/t/x".into()),
        ("rename without file_result", |r| {
            r["activity_id"] = 5.into();
            r["type_uid"] = 100105.into();
            r["activity_name"] = "Rename".into();
            r["type_name"] = "File System Activity: Rename".into();
        }),
        ("time as a string", |r| {
            r["time"] = "2026-01-01T00:00:00Z".into()
        }),
    ];
    for (what, f) in broken {
        let mut r = good.clone();
        f(&mut r);
        assert!(!v.fsa.is_valid(&r), "accepted: {what}");
    }
}
