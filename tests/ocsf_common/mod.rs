//! Records shared by the OCSF schema test and the docs/EVENTS.md test: one fixed example of
//! every event kind (fixed event uids, so the documentation can be compared byte for byte).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use notebook_agent::audit::change::{
    AgentEvent, ChangeKind, ControlFailure, Digest, FileFacts, FileKind, FsChange, Source,
};
use notebook_agent::audit::ocsf::{self, Context};
use notebook_agent::audit::ocsf_actor::{actor, attribute, Attribution};
use notebook_agent::audit::process::jupyter::JupyterRole;
use notebook_agent::audit::process::table::Seen;
use notebook_agent::audit::process::{Lookup, ProcessInfo};
use notebook_agent::audit::reads::{self, ReadRecord};
use serde_json::{json, Value};
use std::sync::Arc;

pub const ARN: &str = "arn:aws:sagemaker:eu-west-1:123456789012:notebook-instance/research-nb";

pub fn ctx() -> Context {
    Context::new(
        "ip-172-16-20-7.eu-west-1.compute.internal",
        Some("research-nb".into()),
        Some(ARN.into()),
        Some("eu-west-1".into()),
        Some("123456789012".into()),
    )
    .with_user_lookup(|uid| match uid {
        0 => Some("root".into()),
        1000 => Some("ec2-user".into()),
        _ => None,
    })
}

/// A context where nothing about the notebook is known (IMDS unreachable).
pub fn bare_ctx() -> Context {
    Context::new("localhost", None, None, None, None)
}

pub fn regular() -> FileFacts {
    FileFacts {
        kind: FileKind::Regular,
        size: 3,
        uid: 1000,
        gid: 1000,
        mode: 0o644,
        inode: 1_048_601,
        mtime_ms: 1_767_225_600_123,
        sha256: Digest::from_hex(
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        hash_note: None,
        link_target: None,
    }
}

pub const T: i64 = 1_767_225_600_250;
const HOME: &str = "/home/ec2-user/SageMaker";

fn ch(kind: ChangeKind, path: &str, facts: Option<FileFacts>, source: Source) -> FsChange {
    FsChange {
        kind,
        path: PathBuf::from(format!("{HOME}/{path}")),
        facts,
        time_ms: T,
        source,
        pid: None,
    }
}

/// (name, what it shows, the change) for every file-activity example in docs/EVENTS.md.
pub fn file_examples() -> Vec<(&'static str, &'static str, FsChange)> {
    let big = FileFacts {
        size: 734_003_200,
        sha256: None,
        hash_note: Some("over hash_max_bytes (734003200 > 104857600)".into()),
        ..regular()
    };
    let link = FileFacts {
        kind: FileKind::SymbolicLink,
        size: 11,
        mode: 0o777,
        sha256: None,
        link_target: Some("/etc/shadow".into()),
        ..regular()
    };
    let dir = FileFacts {
        kind: FileKind::Directory,
        size: 4096,
        mode: 0o2775,
        sha256: None,
        ..regular()
    };
    let script = FileFacts {
        mode: 0o755,
        ..regular()
    };
    vec![
        ("create", "A file created while the agent ran (live).", ch(ChangeKind::Create, "train.py", Some(regular()), Source::Live)),
        ("update", "Contents written; hash over the size cap.", ch(ChangeKind::Update, "data/model.bin", Some(big), Source::Live)),
        ("delete", "A file deleted while the agent was down, known from the snapshot (catch_up).", ch(ChangeKind::Delete, "old.csv", Some(regular()), Source::CatchUp)),
        ("delete-unknown", "A delete of a file the agent never saw: no facts, unknown actor.", ch(ChangeKind::Delete, "tmp.txt", None, Source::Rescan)),
        ("rename", "`file` is the old name, `file_result` the new one.", ch(ChangeKind::Rename { from: format!("{HOME}/draft.ipynb").into() }, "final.ipynb", Some(regular()), Source::Live)),
        ("set-attributes", "chmod +x.", ch(ChangeKind::SetAttributes, "run.sh", Some(script), Source::Live)),
        ("symlink", "A symbolic link created; never followed, target recorded.", ch(ChangeKind::Create, "shadow", Some(link), Source::Live)),
        ("directory", "A directory created (setgid).", ch(ChangeKind::Create, "shared", Some(dir), Source::Live)),
        ("hostile-name", "A name with a newline, quotes and bytes that are not UTF-8: `path` is for display, `unmapped.file.path_hex` is exact.", FsChange {
            path: PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                format!("{HOME}/a\n\"b\" \u{1b}[31m")
                    .into_bytes()
                    .into_iter()
                    .chain([0xff, 0xfe])
                    .collect(),
            )),
            ..ch(ChangeKind::Create, "", Some(regular()), Source::Live)
        }),
    ]
}

/// (name, what it shows, the event) for every agent-event example in docs/EVENTS.md.
pub fn agent_examples() -> Vec<(&'static str, &'static str, AgentEvent)> {
    vec![
        (
            "started",
            "The daemon started; the catch-up scan found 2 changes.",
            AgentEvent::Started {
                version: "0.1.0".into(),
                paths: vec![HOME.into()],
                watches: 0,
                catch_up_changes: 2,
                source: "fanotify".into(),
                source_reason: "fanotify: filesystem mark through /home/ec2-user/SageMaker".into(),
                actors: "process-events connector".into(),
            },
        ),
        (
            "stopped",
            "SIGTERM; what is left in the spool ships at the next start.",
            AgentEvent::Stopped {
                reason: "SIGTERM".into(),
                spooled: 0,
            },
        ),
        (
            "rescan",
            "The inotify queue overflowed; the tree was rescanned.",
            AgentEvent::Rescan {
                path: HOME.into(),
                reason: "inotify queue overflow".into(),
                changes: 37,
                lost_notifications: 1,
            },
        ),
        (
            "watch-limit",
            "inotify watches ran out; the tree is scanned periodically.",
            AgentEvent::WatchLimit {
                path: format!("{HOME}/datasets").into(),
                sysctl: "fs.inotify.max_user_watches".into(),
                error: "No space left on device (os error 28)".into(),
                scan_interval_secs: 60,
            },
        ),
        (
            "spool-drop",
            "The spool was full; events were counted and dropped.",
            AgentEvent::SpoolDrop {
                dropped: 1200,
                first_ms: T - 60_000,
                last_ms: T - 1_000,
            },
        ),
        (
            "delivery-rejected",
            "CloudWatch Logs rejected events as too old; they are kept in the dead-letter file.",
            AgentEvent::Delivery {
                what: "rejected_by_service".into(),
                detail: "2 too old, 0 too new, 0 expired; kept in shipper-rejected.jsonl".into(),
                count: 2,
                first_seq: 4711,
                last_seq: 4712,
            },
        ),
        (
            "spool-tamper",
            "A spool segment was deleted behind the agent's back.",
            AgentEvent::SpoolTamper {
                path: format!("{HOME}/.notebook-agent/spool/000017.seg").into(),
                what: "deleted".into(),
            },
        ),
        (
            "token-refreshed",
            "`watch` obtained a new CodeArtifact token and rewrote every pip.conf (expiry times only, never the token).",
            AgentEvent::TokenRefreshed {
                repository: "corp/pypi-mirror".into(),
                expires_ms: T + 43_200_000,
                previous_expires_ms: Some(T + 21_600_000),
            },
        ),
        (
            "token-refresh-failed",
            "A CodeArtifact token refresh failed; the token in the files stays in use and the refresh is retried.",
            AgentEvent::TokenRefreshFailed {
                repository: "corp/pypi-mirror".into(),
                error: "pip.codeartifact: GetAuthorizationToken: the CodeArtifact API at https://codeartifact.eu-west-1.amazonaws.com is unreachable (io error: connection refused): without internet access the notebook's VPC needs the endpoints com.amazonaws.eu-west-1.codeartifact.api, com.amazonaws.eu-west-1.codeartifact.repositories and com.amazonaws.eu-west-1.sts".into(),
                attempt: 3,
                expires_ms: Some(T + 21_000_000),
                retry_secs: 8,
            },
        ),
        (
            "apply-pass",
            "`apply` brought every control into compliance.",
            AgentEvent::ApplyResult {
                changed: vec!["root_access".into(), "sudoers".into()],
                unchanged: vec!["pip".into(), "proxy".into()],
                failed: vec![],
            },
        ),
        (
            "apply-fail",
            "`apply` could not fix a control.",
            AgentEvent::ApplyResult {
                changed: vec!["root_access".into()],
                unchanged: vec![],
                failed: vec![ControlFailure {
                    control: "pip".into(),
                    error: "/etc/pip.conf: Read-only file system".into(),
                }],
            },
        ),
        (
            "drift-found",
            "A control drifted after one of its files changed (same finding uid as its repair).",
            AgentEvent::DriftFound {
                control: "root_access".into(),
                title: "Root rights".into(),
                evidence: "ec2-user is in wheel; sudo -l -U ec2-user: may run (ALL) ALL".into(),
                changed: vec![PathBuf::from("/etc/group")],
            },
        ),
        (
            "drift-repaired",
            "The drift was put back by a re-apply; the finding is closed.",
            AgentEvent::DriftRepaired {
                control: "root_access".into(),
                title: "Root rights".into(),
                evidence: "re-applied in 41 ms: replaced /etc/group; now PASS: sudo -l -U ec2-user: not allowed; ec2-user groups: ec2-user adm".into(),
            },
        ),
        (
            "drift-repair-failed",
            "The re-apply failed or left the control failing; the finding stays open.",
            AgentEvent::DriftRepairFailed {
                control: "root_access".into(),
                title: "Root rights".into(),
                error: "re-apply failed: validation failed, nothing was changed: root_access: /etc/sudoers: visudo -cf: syntax error near line 3".into(),
            },
        ),
        (
            "heartbeat",
            "Periodic status: the `status --json` object (docs/STATUS.md) in `unmapped.status`.",
            AgentEvent::Heartbeat {
                uptime_secs: 86_400,
                drifted: vec![],
                spool_pending: 12,
                spool_dropped: 0,
                watches: 812,
                status: status_example(true),
            },
        ),
        (
            "heartbeat-non-compliant",
            "A heartbeat while a control stays non-compliant (`drift.reapply` off, or the repair failed): `compliance.status_id` 3.",
            AgentEvent::Heartbeat {
                uptime_secs: 3_600,
                drifted: vec!["pip".into()],
                spool_pending: 0,
                spool_dropped: 0,
                watches: 812,
                status: status_example(false),
            },
        ),
    ]
}

/// A `status --json` object as a heartbeat carries it.
pub fn status_example(compliant: bool) -> Value {
    let pip = if compliant {
        json!({"control": "pip", "title": "pip mirror", "status": "PASS",
               "evidence": "index-url https://pypi.corp.example/simple in 4 pip.conf files"})
    } else {
        json!({"control": "pip", "title": "pip mirror", "status": "FAIL",
               "evidence": "/etc/pip.conf: contents differ"})
    };
    json!({
        "version": 1,
        "agent_version": "0.1.0",
        "compliant": compliant,
        "audit_healthy": true,
        "controls": [
            {"control": "root_access", "title": "Root rights", "status": "PASS",
             "evidence": "sudo -l -U ec2-user: not allowed; ec2-user groups: ec2-user adm"},
            pip,
            {"control": "proxy", "title": "Proxy", "status": "NOT_CONFIGURED",
             "evidence": "no proxy section in the config"},
            {"control": "environment", "title": "sagemaker_environment.py", "status": "PASS",
             "evidence": "sagemaker_environment importable via 4 .pth files and the service PYTHONPATH"}
        ],
        "audit": [
            {"control": "audit_daemon", "title": "Audit daemon", "status": "PASS",
             "evidence": "pid 2417 up 24 h, RSS 9 MB, 812 watches, 5120 events, 0 dropped, 0 rescans"},
            {"control": "shipping", "title": "Shipping", "status": "PASS",
             "evidence": "spool: 0 bytes unshipped, last PutLogEvents 3 s ago; 5120 shipped, 0 retried, 0 rejected"}
        ]
    })
}

/// Every example as (name, description, record), in document order.
pub fn examples(ctx: &Context) -> Vec<(&'static str, &'static str, Value)> {
    let mut out = Vec::new();
    let mut seq = 1u64;
    for (name, what, c) in file_examples() {
        let uid = format!("00000000-0000-4000-8000-{seq:012}");
        out.push((name, what, ocsf::file_activity_with_uid(&c, ctx, seq, &uid)));
        seq += 1;
    }
    for (name, what, r) in attributed_examples(ctx, seq) {
        out.push((name, what, r));
        seq += 1;
    }
    for (name, what, e) in agent_examples() {
        let uid = format!("00000000-0000-4000-8000-{seq:012}");
        out.push((
            name,
            what,
            ocsf::agent_event_with_uid(&e, ctx, seq, T, &uid),
        ));
        seq += 1;
    }
    out
}

/// The attribution of `pid` (`lookup`), with the process that holds its Jupyter role, if any.
fn by<'a>(
    pid: u32,
    lookup: &'a Lookup,
    parent: Option<&'a ProcessInfo>,
    role: Option<&'a ProcessInfo>,
) -> Attribution<'a> {
    Attribution {
        pid: Some(pid),
        lookup,
        parent,
        jupyter: role.and_then(|r| r.jupyter.as_ref().map(|j| (j, r))),
    }
}

fn process(pid: u32, ppid: u32, name: &str, exe: &str, cmd: &str, created: i64) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid,
        name: Some(name.into()),
        exe: Some(exe.into()),
        cmd_line: Some(cmd.into()),
        created_time_ms: created,
        uid: Some(1000),
        user: Some("ec2-user".into()),
        real_uid: Some(1000),
        real_user: Some("ec2-user".into()),
        exited_ms: None,
        jupyter: None,
        seen: Seen::Exec,
        note: None,
    }
}

pub const KERNEL_ID: &str = "5f2b6b5e-1c1a-4c9a-9d7e-0c7a3e2f1b11";

/// Records with the process behind them (the fanotify source): what `attribution` adds.
pub fn attributed_examples(
    ctx: &Context,
    first_seq: u64,
) -> Vec<(&'static str, &'static str, Value)> {
    let server = process(
        2101, 2088, "jupyter-server", "/usr/bin/python3.11",
        "/home/ec2-user/anaconda3/envs/JupyterSystemEnv/bin/python /home/ec2-user/anaconda3/envs/JupyterSystemEnv/bin/jupyter-server --ip=127.0.0.1",
        T - 3_600_000,
    );
    let kernel = ProcessInfo {
        jupyter: Some(JupyterRole::Kernel { id: KERNEL_ID.into() }),
        ..process(
            4242, 2101, "python", "/usr/bin/python3.11",
            &format!("/home/ec2-user/anaconda3/envs/python3/bin/python -m ipykernel_launcher -f /home/ec2-user/.local/share/jupyter/runtime/kernel-{KERNEL_ID}.json"),
            T - 600_000,
        )
    };
    let shell = ProcessInfo {
        jupyter: Some(JupyterRole::Terminal {
            tty: Some("pts/1".into()),
        }),
        ..process(
            5150,
            2101,
            "bash",
            "/usr/bin/bash",
            "/bin/bash -l",
            T - 120_000,
        )
    };
    let rm = ProcessInfo {
        exited_ms: Some(T - 5),
        ..process(5188, 5150, "rm", "/usr/bin/rm", "rm -rf old-runs", T - 40)
    };
    let aws = ProcessInfo {
        ..process(
            5201,
            5150,
            "aws",
            "/home/ec2-user/anaconda3/bin/python3.11",
            "aws s3 cp --recursive data/ s3://outside-bucket/ --sse-kms-key-id REDACTED",
            T - 2_000,
        )
    };
    let mut out = Vec::new();
    let mut seq = first_seq;
    let mut uid = || {
        let u = format!("00000000-0000-4000-8000-{seq:012}");
        seq += 1;
        (seq - 1, u)
    };
    let file = |kind, path: &str, pid| FsChange {
        pid: Some(pid),
        ..ch(kind, path, Some(regular()), Source::Live)
    };
    let known = |i: &ProcessInfo| Lookup::Known(Arc::new(i.clone()));

    let (n, u) = uid();
    let mut r =
        ocsf::file_activity_with_uid(&file(ChangeKind::Create, "results.csv", 4242), ctx, n, &u);
    let l = known(&kernel);
    attribute(&mut r, &by(4242, &l, Some(&server), Some(&kernel)), ctx);
    out.push(("create-by-kernel", "A notebook's kernel wrote a file (fanotify source): `actor.process` is the kernel, `unmapped.jupyter` names it.", r));

    let (n, u) = uid();
    let mut r = ocsf::file_activity_with_uid(
        &FsChange {
            facts: None,
            ..file(ChangeKind::Delete, "old-runs/run-1.log", 5188)
        },
        ctx,
        n,
        &u,
    );
    let l = known(&rm);
    attribute(&mut r, &by(5188, &l, Some(&shell), Some(&shell)), ctx);
    out.push(("delete-by-terminal", "`rm -rf` typed in a Jupyter terminal: the short-lived `rm` (gone before its event was read; the process-events connector kept it), its shell and the terminal.", r));

    let (n, u) = uid();
    let mut r =
        ocsf::file_activity_with_uid(&file(ChangeKind::Create, "scratch.txt", 31337), ctx, n, &u);
    let l = Lookup::Unknown("process 31337 exited before it could be read (no process-events connector: the connector answers only in the host's network namespace)".into());
    attribute(&mut r, &by(31337, &l, None, None), ctx);
    out.push(("create-by-unknown", "The process could not be known: the record says why and names only the pid the kernel gave.", r));

    let (n, u) = uid();
    let rec = ReadRecord::Dir {
        actor: (5201u32, aws.created_time_ms),
        dir: PathBuf::from(HOME).join("data/images"),
        reads: 12_800,
        files: 12_800,
        files_lower_bound: false,
        first_ms: T - 1_900,
        last_ms: T,
        sample: [
            "n01440764_10026.JPEG",
            "n01440764_10027.JPEG",
            "n01440764_10029.JPEG",
        ]
        .iter()
        .map(Into::into)
        .collect(),
        overflow: false,
    };
    let l = known(&aws);
    let (a, extra) = actor(&by(5201, &l, Some(&shell), Some(&shell)), ctx);
    out.push(("read-summary", "Read audit (`audit.reads`): one process read 12,800 matching files of one folder in the window: one summary record with counts and a sample of names.", reads::encode(&rec, a, extra, ctx, n, &u)));

    let (n, u) = uid();
    let rec = ReadRecord::File {
        actor: (4242u32, kernel.created_time_ms),
        path: PathBuf::from(HOME).join("data/train.csv"),
        reads: 3,
        first_ms: T - 20_000,
        last_ms: T,
    };
    let l = known(&kernel);
    let (a, extra) = actor(&by(4242, &l, Some(&server), Some(&kernel)), ctx);
    out.push((
        "read-file",
        "Read audit: a kernel read one matching file three times in the window.",
        reads::encode(&rec, a, extra, ctx, n, &u),
    ));
    out
}

// JSON Schemas of the OCSF classes the agent emits (tests/fixtures/ocsf).
use jsonschema::{Retrieve, Uri, Validator};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ocsf");

/// Resolves `https://notebook-agent.invalid/ocsf/<file>` to the fixture file; nothing else.
pub struct Fixtures;

impl Retrieve for Fixtures {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        let name = uri
            .path()
            .as_str()
            .strip_prefix("/ocsf/")
            .ok_or_else(|| format!("not a fixture: {uri}"))?;
        let text = std::fs::read_to_string(Path::new(FIXTURES).join(name))?;
        Ok(serde_json::from_str(&text)?)
    }
}

pub fn validator(class: &str) -> Validator {
    let path = Path::new(FIXTURES).join(format!("{class}.schema.json"));
    let text = std::fs::read_to_string(&path).expect("schema fixture readable");
    let schema: Value = serde_json::from_str(&text).expect("schema fixture is JSON");
    jsonschema::options()
        .with_retriever(Fixtures)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Schema errors of one record, by its `class_uid`.
pub fn schema_errors(record: &Value) -> Vec<String> {
    let class = match record["class_uid"].as_u64() {
        Some(1001) => "file_system_activity",
        Some(1008) => "event_log_activity",
        Some(2003) => "compliance_finding",
        Some(6002) => "application_lifecycle",
        other => return vec![format!("no schema for class_uid {other:?}")],
    };
    validator(class)
        .iter_errors(record)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}
