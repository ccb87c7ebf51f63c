//! Encodes what the pipeline carries as OCSF 1.x records (one JSON object per CloudWatch event).
//! docs/EVENTS.md lists every kind with its class and an example produced by this module.
//!
//! | What | OCSF class |
//! |---|---|
//! | [`FsChange`] | File System Activity (1001) |
//! | `Started`, `Stopped` | Application Lifecycle (6002), activity Start / Stop |
//! | `Rescan`, `WatchLimit`, `SpoolDrop`, `SpoolTamper`, `TokenRefreshed`, `TokenRefreshFailed` | Event Log Activity (1008), activity Other |
//! | `ApplyResult`, `DriftFound`, `DriftRepaired`, `Heartbeat` | Compliance Finding (2003) |
//!
//! **Paths.** The notebook user names the files, so a path may hold newlines, quotes, control
//! characters or bytes that are not UTF-8. A path that is valid UTF-8 is written as it is (JSON
//! escapes quotes and control characters, so the record stays one line and round-trips exactly).
//! A path that is not valid UTF-8 is written for display with every invalid byte as `\xNN`, and
//! its exact bytes go, as lowercase hex, in `unmapped.<object>.path_hex` (`<object>` being `file`
//! or `file_result`); when `path_hex` is present it is authoritative. [`path_bytes`] decodes.
//! Symbolic-link targets follow the same rule (`link_target`, `link_target_hex`).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::change::{AgentEvent, ChangeKind, FileFacts, FileKind, FsChange, Source};
use crate::host::users::UserDb;

/// The OCSF schema version the records follow.
pub const OCSF_VERSION: &str = "1.3.0";
pub const PRODUCT_NAME: &str = "notebook-agent";
pub const VENDOR_NAME: &str = "notebook-agent";
/// `compliance.standards` of the agent's own findings.
pub const STANDARD: &str = "notebook-agent hardening";

type UserLookup = Box<dyn Fn(u32) -> Option<String> + Send + Sync>;

/// What every record says about the host: the notebook and where it runs, and how to name users.
pub struct Context {
    pub hostname: String,
    pub notebook_name: Option<String>,
    pub notebook_arn: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
    user_name: UserLookup,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("hostname", &self.hostname)
            .field("notebook_name", &self.notebook_name)
            .field("notebook_arn", &self.notebook_arn)
            .field("region", &self.region)
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context that knows no user names (records carry uids only) until
    /// [`with_users`](Self::with_users) or [`with_user_lookup`](Self::with_user_lookup).
    pub fn new(
        hostname: impl Into<String>,
        notebook_name: Option<String>,
        notebook_arn: Option<String>,
        region: Option<String>,
        account: Option<String>,
    ) -> Self {
        Self {
            hostname: hostname.into(),
            notebook_name,
            notebook_arn,
            region,
            account,
            user_name: Box::new(|_| None),
        }
    }

    /// Names users from the root's `etc/passwd` as read into `db` (a musl binary has no NSS).
    pub fn with_users(self, db: UserDb) -> Self {
        self.with_user_lookup(move |uid| {
            db.user_by_uid(nix::unistd::Uid::from_raw(uid))
                .map(|u| u.name.clone())
        })
    }

    pub fn with_user_lookup(
        mut self,
        f: impl Fn(u32) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.user_name = Box::new(f);
        self
    }

    pub fn user_name(&self, uid: u32) -> Option<String> {
        (self.user_name)(uid)
    }

    fn user(&self, uid: u32) -> Value {
        let mut u = Map::new();
        u.insert("uid".into(), Value::String(uid.to_string()));
        if let Some(name) = self.user_name(uid) {
            u.insert("name".into(), Value::String(name));
        }
        Value::Object(u)
    }

    fn device(&self) -> Value {
        let mut d = Map::new();
        d.insert("hostname".into(), json!(self.hostname));
        put(&mut d, "name", self.notebook_name.as_deref());
        put(&mut d, "uid", self.notebook_arn.as_deref());
        put(&mut d, "region", self.region.as_deref());
        // A notebook instance is an EC2 virtual machine.
        d.insert("type_id".into(), json!(6));
        d.insert("type".into(), json!("Virtual"));
        Value::Object(d)
    }

    fn cloud(&self) -> Value {
        let mut c = Map::new();
        c.insert("provider".into(), json!("AWS"));
        put(&mut c, "region", self.region.as_deref());
        if let Some(account) = &self.account {
            c.insert(
                "account".into(),
                json!({"uid": account, "type_id": 10, "type": "AWS Account"}),
            );
        }
        Value::Object(c)
    }

    /// The notebook as an affected resource of a finding, when it is known.
    fn resources(&self) -> Option<Value> {
        if self.notebook_arn.is_none() && self.notebook_name.is_none() {
            return None;
        }
        let mut r = Map::new();
        r.insert("type".into(), json!("AWS::SageMaker::NotebookInstance"));
        put(&mut r, "uid", self.notebook_arn.as_deref());
        put(&mut r, "name", self.notebook_name.as_deref());
        put(&mut r, "region", self.region.as_deref());
        r.insert("cloud_partition".into(), json!("aws"));
        Some(Value::Array(vec![Value::Object(r)]))
    }

    /// A stable identity for this host in finding uids: the ARN, else the hostname.
    fn host_id(&self) -> &str {
        self.notebook_arn.as_deref().unwrap_or(&self.hostname)
    }
}

fn put(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.into(), Value::String(v.to_string()));
    }
}

/// The record as one line: compact JSON, no trailing newline. Control characters inside strings
/// are escaped by JSON, so the line never contains a raw newline.
///
/// The same bytes as `v.to_string()`, made without its `fmt::Write` adapter: serde_json writes a
/// record as a few hundred pieces of one or two bytes (quotes, colons, commas), and each became a
/// call to musl's `memcpy`, whose `rep movs` costs tens of cycles however short the copy — a third
/// of the daemon thread's CPU per event (docs/BENCHMARKS.md, "Cost per event"). [`LineBuf`] copies
/// short pieces byte by byte into a buffer sized for a typical record.
pub fn to_line(v: &Value) -> Vec<u8> {
    let mut buf = LineBuf(Vec::with_capacity(LINE_CAPACITY));
    // Writing to memory cannot fail, and a `Value` always serializes (string keys only).
    if serde_json::to_writer(&mut buf, v).is_err() {
        return v.to_string().into_bytes();
    }
    buf.0
}

/// A file record with a process actor is 1.5–3 kB.
const LINE_CAPACITY: usize = 4096;

/// An in-memory writer that does not call `memcpy` for short pieces.
struct LineBuf(Vec<u8>);

impl std::io::Write for LineBuf {
    #[inline]
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if b.len() <= 16 {
            self.0.reserve(b.len());
            for &x in b {
                self.0.push(x);
            }
        } else {
            self.0.extend_from_slice(b);
        }
        Ok(b.len())
    }

    #[inline]
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.write(b).map(|_| ())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A File System Activity (1001) record with a fresh event uid.
pub fn file_activity(ch: &FsChange, ctx: &Context, seq: u64) -> Value {
    file_activity_with_uid(ch, ctx, seq, &new_uid())
}

/// An agent event with a fresh event uid; the class depends on the kind (see the module docs).
pub fn agent_event(ev: &AgentEvent, ctx: &Context, seq: u64, time_ms: i64) -> Value {
    agent_event_with_uid(ev, ctx, seq, time_ms, &new_uid())
}

fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Lossless path text. Valid UTF-8 is returned as it is, with no hex; otherwise every invalid
/// byte is written `\xNN` for display and the exact bytes come back as lowercase hex.
pub fn encode_path(p: &[u8]) -> (String, Option<String>) {
    if let Ok(s) = std::str::from_utf8(p) {
        return (s.to_string(), None);
    }
    let mut display = String::with_capacity(p.len() + 8);
    for chunk in p.utf8_chunks() {
        display.push_str(chunk.valid());
        for b in chunk.invalid() {
            display.push_str(&format!("\\x{b:02x}"));
        }
    }
    (display, Some(hex(p)))
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The exact bytes of the path of `record[object]` (`object` = `"file"` or `"file_result"`):
/// `unmapped.<object>.path_hex` when present, else `<object>.path`.
pub fn path_bytes(record: &Value, object: &str) -> Option<Vec<u8>> {
    if let Some(h) = record
        .pointer(&format!("/unmapped/{object}/path_hex"))
        .and_then(Value::as_str)
    {
        return unhex(h);
    }
    record
        .get(object)?
        .get("path")?
        .as_str()
        .map(|s| s.as_bytes().to_vec())
}

fn file_type_name(k: FileKind) -> &'static str {
    match k {
        FileKind::Regular => "Regular File",
        FileKind::Directory => "Folder",
        FileKind::CharDevice => "Character Device",
        FileKind::BlockDevice => "Block Device",
        FileKind::LocalSocket => "Local Socket",
        FileKind::NamedPipe => "Named Pipe",
        FileKind::SymbolicLink => "Symbolic Link",
        FileKind::Unknown => "Unknown",
    }
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Live => "live",
        Source::CatchUp => "catch_up",
        Source::Rescan => "rescan",
    }
}

/// The OCSF `file` object for `path` and the agent's extra facts for `unmapped.<object>`.
fn file_object(path: &Path, facts: Option<&FileFacts>, ctx: &Context) -> (Value, Value) {
    let bytes = path.as_os_str().as_bytes();
    let (display, path_hex) = encode_path(bytes);
    let name = path
        .file_name()
        .map(|n| encode_path(n.as_bytes()).0)
        .unwrap_or_else(|| display.clone());
    let mut f = Map::new();
    f.insert("path".into(), json!(display));
    f.insert("name".into(), json!(name));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        f.insert(
            "parent_folder".into(),
            json!(encode_path(parent.as_os_str().as_bytes()).0),
        );
    }
    let kind = facts.map_or(FileKind::Unknown, |x| x.kind);
    f.insert("type_id".into(), json!(kind as u8));
    f.insert("type".into(), json!(file_type_name(kind)));

    let mut extra = Map::new();
    if let Some(h) = path_hex {
        extra.insert("path_hex".into(), json!(h));
    }
    if let Some(x) = facts {
        f.insert("size".into(), json!(x.size));
        f.insert("owner".into(), ctx.user(x.uid));
        f.insert("uid".into(), json!(x.inode.to_string()));
        f.insert("modified_time".into(), json!(x.mtime_ms));
        if let Some(sha) = &x.sha256 {
            f.insert(
                "hashes".into(),
                json!([{"algorithm_id": 3, "algorithm": "SHA-256", "value": sha.hex()}]),
            );
        }
        extra.insert("mode".into(), json!(format!("{:04o}", x.mode)));
        extra.insert("gid".into(), json!(x.gid));
        if let Some(note) = &x.hash_note {
            extra.insert("hash_note".into(), json!(note));
        }
        if let Some(t) = &x.link_target {
            let (t, t_hex) = encode_path(t.as_os_str().as_bytes());
            extra.insert("link_target".into(), json!(t));
            if let Some(h) = t_hex {
                extra.insert("link_target_hex".into(), json!(h));
            }
        }
    }
    (Value::Object(f), Value::Object(extra))
}

fn activity_name(id: u8) -> &'static str {
    match id {
        1 => "Create",
        2 => "Read",
        3 => "Update",
        4 => "Delete",
        5 => "Rename",
        6 => "Set Attributes",
        _ => "Other",
    }
}

fn metadata(seq: u64, uid: &str) -> Value {
    json!({
        "version": OCSF_VERSION,
        "product": {
            "name": PRODUCT_NAME,
            "vendor_name": VENDOR_NAME,
            "version": env!("CARGO_PKG_VERSION"),
        },
        "profiles": ["cloud", "host"],
        "uid": uid,
        "sequence": seq,
        "log_name": "audit",
    })
}

struct Class {
    category_uid: u32,
    category_name: &'static str,
    class_uid: u32,
    class_name: &'static str,
}

const FILE_SYSTEM_ACTIVITY: Class = Class {
    category_uid: 1,
    category_name: "System Activity",
    class_uid: 1001,
    class_name: "File System Activity",
};
const EVENT_LOG_ACTIVITY: Class = Class {
    category_uid: 1,
    category_name: "System Activity",
    class_uid: 1008,
    class_name: "Event Log Activity",
};
const COMPLIANCE_FINDING: Class = Class {
    category_uid: 2,
    category_name: "Findings",
    class_uid: 2003,
    class_name: "Compliance Finding",
};
const APPLICATION_LIFECYCLE: Class = Class {
    category_uid: 6,
    category_name: "Application Activity",
    class_uid: 6002,
    class_name: "Application Lifecycle",
};

fn severity_name(id: u8) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        _ => "Unknown",
    }
}

/// The common attributes of a successful File System Activity record (`activity_id` 2 = Read is
/// the read audit's, `audit::reads`); the caller adds `file`, `actor` and `unmapped`.
pub(super) fn file_base(
    activity_id: u8,
    time_ms: i64,
    message: String,
    ctx: &Context,
    seq: u64,
    uid: &str,
) -> Map<String, Value> {
    let mut r = base(
        &FILE_SYSTEM_ACTIVITY,
        activity_id,
        activity_name(activity_id),
        1,
        time_ms,
        message,
        ctx,
        seq,
        uid,
    );
    r.insert("status_id".into(), json!(1));
    r.insert("status".into(), json!("Success"));
    r
}

/// The attributes every record has, in the order they are written.
#[allow(clippy::too_many_arguments)]
fn base(
    class: &Class,
    activity_id: u8,
    activity: &str,
    severity_id: u8,
    time_ms: i64,
    message: String,
    ctx: &Context,
    seq: u64,
    uid: &str,
) -> Map<String, Value> {
    let mut r = Map::new();
    r.insert("class_uid".into(), json!(class.class_uid));
    r.insert("class_name".into(), json!(class.class_name));
    r.insert("category_uid".into(), json!(class.category_uid));
    r.insert("category_name".into(), json!(class.category_name));
    r.insert("activity_id".into(), json!(activity_id));
    r.insert("activity_name".into(), json!(activity));
    r.insert(
        "type_uid".into(),
        json!(u64::from(class.class_uid) * 100 + u64::from(activity_id)),
    );
    r.insert(
        "type_name".into(),
        json!(format!("{}: {}", class.class_name, activity)),
    );
    r.insert("time".into(), json!(time_ms));
    r.insert("severity_id".into(), json!(severity_id));
    r.insert("severity".into(), json!(severity_name(severity_id)));
    r.insert("message".into(), json!(message));
    r.insert("metadata".into(), metadata(seq, uid));
    r.insert("device".into(), ctx.device());
    r.insert("cloud".into(), ctx.cloud());
    r
}

/// [`file_activity`] with a given event uid (tests and docs/EVENTS.md need stable output).
pub fn file_activity_with_uid(ch: &FsChange, ctx: &Context, seq: u64, uid: &str) -> Value {
    let id = ch.kind.activity_id();
    let facts = ch.facts.as_ref();
    let kind = facts.map_or(FileKind::Unknown, |x| x.kind);
    let message = format!("{} {}", activity_name(id), file_type_name(kind));
    let mut r = file_base(id, ch.time_ms, message, ctx, seq, uid);

    // inotify does not say who acted: the actor is the file's owner, and `unmapped.actor_basis`
    // says so. With no facts (a delete the snapshot did not know) the user is unknown.
    let (user, basis) = match facts {
        Some(x) => (ctx.user(x.uid), "file_owner"),
        None => (json!({"name": "unknown"}), "unknown"),
    };
    r.insert("actor".into(), json!({ "user": user }));

    let mut unmapped = Map::new();
    unmapped.insert("source".into(), json!(source_name(ch.source)));
    unmapped.insert("actor_basis".into(), json!(basis));
    match &ch.kind {
        ChangeKind::Rename { from } => {
            // OCSF 1001: `file` is the target of the activity (the old name), `file_result` the
            // file that resulted (the new name). Both are the same inode.
            let (old, old_extra) = file_object(from, facts, ctx);
            let (new, new_extra) = file_object(&ch.path, facts, ctx);
            r.insert("file".into(), old);
            r.insert("file_result".into(), new);
            unmapped.insert("file".into(), old_extra);
            unmapped.insert("file_result".into(), new_extra);
        }
        _ => {
            let (f, extra) = file_object(&ch.path, facts, ctx);
            r.insert("file".into(), f);
            unmapped.insert("file".into(), extra);
        }
    }
    r.insert("unmapped".into(), Value::Object(unmapped));
    Value::Object(r)
}

fn display(p: &Path) -> String {
    encode_path(p.as_os_str().as_bytes()).0
}

/// A path for `unmapped`: display text plus exact hex when it is not UTF-8.
fn path_value(p: &Path) -> Value {
    match encode_path(p.as_os_str().as_bytes()) {
        (s, None) => json!(s),
        (s, Some(h)) => json!({"display": s, "hex": h}),
    }
}

fn folder(path: &Path) -> (Value, Option<String>) {
    agent_file(path, 2, "Folder")
}

/// An OCSF `file` object for an agent event, and the path's hex form when it is not UTF-8.
fn agent_file(path: &Path, type_id: u8, type_name: &str) -> (Value, Option<String>) {
    let (disp, hex) = encode_path(path.as_os_str().as_bytes());
    let name = path
        .file_name()
        .map(|n| display(Path::new(n)))
        .unwrap_or_else(|| disp.clone());
    (
        json!({"path": disp, "name": name, "type_id": type_id, "type": type_name}),
        hex,
    )
}

/// `unmapped.file` of an agent event: the path's hex form, when it has one.
fn hex_unmapped(hex: Option<String>) -> Value {
    hex.map(|h| json!({"path_hex": h}))
        .unwrap_or_else(|| json!({}))
}

/// [`agent_event`] with a given event uid.
pub fn agent_event_with_uid(
    ev: &AgentEvent,
    ctx: &Context,
    seq: u64,
    time_ms: i64,
    uid: &str,
) -> Value {
    let actor = json!({"app_name": PRODUCT_NAME});
    let app = json!({
        "name": PRODUCT_NAME,
        "vendor_name": VENDOR_NAME,
        "version": env!("CARGO_PKG_VERSION"),
    });
    match ev {
        AgentEvent::Started {
            version,
            paths,
            watches,
            catch_up_changes,
            source,
            source_reason,
            actors,
        } => {
            let msg = format!(
                "notebook-agent {version} started: source {source}, {watches} watches, {catch_up_changes} changes while down"
            );
            let unmapped = json!({
                "version": version,
                "paths": paths.iter().map(|p| path_value(p)).collect::<Vec<_>>(),
                "watches": watches,
                "catch_up_changes": catch_up_changes,
                "source": source,
                "source_reason": source_reason,
                "actors": actors,
            });
            let r = base(
                &APPLICATION_LIFECYCLE,
                3,
                "Start",
                1,
                time_ms,
                msg,
                ctx,
                seq,
                uid,
            );
            lifecycle(r, actor, app, unmapped)
        }
        AgentEvent::Stopped { reason, spooled } => {
            let msg =
                format!("notebook-agent stopped ({reason}); {spooled} events written to the spool since it started");
            let r = base(
                &APPLICATION_LIFECYCLE,
                4,
                "Stop",
                1,
                time_ms,
                msg,
                ctx,
                seq,
                uid,
            );
            lifecycle(r, actor, app, json!({"reason": reason, "spooled": spooled}))
        }
        AgentEvent::Rescan {
            path,
            reason,
            changes,
            lost_notifications,
        } => {
            let sev = if *lost_notifications > 0 { 2 } else { 1 };
            let msg = format!(
                "Rescanned {}: {reason}; {changes} changes found, {lost_notifications} notifications lost",
                display(path)
            );
            let mut r = event_log(ctx, "Rescan", sev, time_ms, msg, seq, uid, 1, actor);
            let (f, hex) = folder(path);
            r.insert("file".into(), f);
            r.insert("status_detail".into(), json!(reason));
            r.insert(
                "unmapped".into(),
                json!({
                    "reason": reason,
                    "changes": changes,
                    "lost_notifications": lost_notifications,
                    "file": hex_unmapped(hex),
                }),
            );
            Value::Object(r)
        }
        AgentEvent::WatchLimit {
            path,
            sysctl,
            error,
            scan_interval_secs,
        } => {
            let msg = format!(
                "inotify limit hit under {}: {error}; raise {sysctl}; scanning every {scan_interval_secs} s meanwhile",
                display(path)
            );
            let mut r = event_log(ctx, "Watch Limit", 3, time_ms, msg, seq, uid, 2, actor);
            let (f, hex) = folder(path);
            r.insert("file".into(), f);
            r.insert("status_detail".into(), json!(error));
            r.insert(
                "unmapped".into(),
                json!({
                    "sysctl": sysctl,
                    "error": error,
                    "scan_interval_secs": scan_interval_secs,
                    "file": hex_unmapped(hex),
                }),
            );
            Value::Object(r)
        }
        AgentEvent::SpoolDrop {
            dropped,
            first_ms,
            last_ms,
        } => {
            let msg = format!("Spool full: {dropped} audit events dropped");
            let mut r = event_log(ctx, "Drop", 4, time_ms, msg, seq, uid, 2, actor);
            r.insert("count".into(), json!(dropped));
            r.insert("start_time".into(), json!(first_ms));
            r.insert("end_time".into(), json!(last_ms));
            r.insert("status_detail".into(), json!("spool full"));
            r.insert(
                "unmapped".into(),
                json!({"dropped": dropped, "first_ms": first_ms, "last_ms": last_ms}),
            );
            Value::Object(r)
        }
        AgentEvent::Delivery {
            what,
            detail,
            count,
            first_seq,
            last_seq,
        } => {
            let msg = format!("Delivery to CloudWatch Logs: {what}: {detail}");
            let (severity, status) = if what == "destination_created" {
                (1, 1)
            } else {
                (4, 2)
            };
            let mut r = event_log(
                ctx, "Delivery", severity, time_ms, msg, seq, uid, status, actor,
            );
            r.insert("count".into(), json!(count));
            r.insert("status_detail".into(), json!(what));
            r.insert(
                "unmapped".into(),
                json!({"what": what, "detail": detail, "first_seq": first_seq, "last_seq": last_seq}),
            );
            Value::Object(r)
        }
        AgentEvent::SpoolTamper { path, what } => {
            let msg = format!("Audit spool tampered with: {} {what}", display(path));
            let mut r = event_log(ctx, "Tamper", 4, time_ms, msg, seq, uid, 1, actor);
            let (f, hex) = agent_file(path, 0, "Unknown");
            r.insert("file".into(), f);
            r.insert("status_detail".into(), json!(what));
            r.insert(
                "unmapped".into(),
                json!({
                    "what": what,
                    "file": hex_unmapped(hex),
                }),
            );
            Value::Object(r)
        }
        AgentEvent::TokenRefreshed {
            repository,
            expires_ms,
            previous_expires_ms,
        } => {
            let msg = format!("CodeArtifact token for {repository} refreshed; pip.conf rewritten");
            let mut r = event_log(ctx, "Token Refresh", 1, time_ms, msg, seq, uid, 1, actor);
            r.insert("status_detail".into(), json!("token_refreshed"));
            r.insert(
                "unmapped".into(),
                json!({
                    "repository": repository,
                    "expires_ms": expires_ms,
                    "previous_expires_ms": previous_expires_ms,
                }),
            );
            Value::Object(r)
        }
        AgentEvent::TokenRefreshFailed {
            repository,
            error,
            attempt,
            expires_ms,
            retry_secs,
        } => {
            let msg = format!(
                "CodeArtifact token for {repository} not refreshed (attempt {attempt}, retry in {retry_secs} s): {error}"
            );
            let mut r = event_log(ctx, "Token Refresh", 3, time_ms, msg, seq, uid, 2, actor);
            r.insert("status_detail".into(), json!("token_refresh_failed"));
            r.insert(
                "unmapped".into(),
                json!({
                    "repository": repository,
                    "error": error,
                    "attempt": attempt,
                    "expires_ms": expires_ms,
                    "retry_secs": retry_secs,
                }),
            );
            Value::Object(r)
        }
        AgentEvent::ApplyResult {
            changed,
            unchanged,
            failed,
        } => {
            let pass = failed.is_empty();
            let msg = if pass {
                format!(
                    "Hardening applied: {} controls changed, {} already compliant",
                    changed.len(),
                    unchanged.len()
                )
            } else {
                format!(
                    "Hardening incomplete: {} controls failed ({})",
                    failed.len(),
                    failed
                        .iter()
                        .map(|f| f.control.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let detail = failed
                .iter()
                .map(|f| format!("{}: {}", f.control, f.error))
                .collect::<Vec<_>>()
                .join("; ");
            let mut r = finding(
                ctx,
                FindingSpec {
                    activity_id: 1,
                    severity_id: if pass { 1 } else { 3 },
                    status_id: if pass { 4 } else { 1 },
                    finding_uid: uid.to_string(),
                    title: "notebook-agent apply".to_string(),
                    types: "Apply",
                    control: None,
                    pass: Some(pass),
                    detail: if pass { None } else { Some(detail) },
                },
                time_ms,
                msg,
                seq,
                uid,
            );
            r.insert(
                "unmapped".into(),
                json!({
                    "changed": changed,
                    "unchanged": unchanged,
                    "failed": failed.iter().map(|f| json!({"control": f.control, "error": f.error})).collect::<Vec<_>>(),
                }),
            );
            Value::Object(r)
        }
        AgentEvent::DriftFound {
            control,
            title,
            evidence,
            changed,
        } => {
            let paths: Vec<String> = changed.iter().map(|p| display_os(p.as_os_str())).collect();
            let msg = if paths.is_empty() {
                format!("Control {control} drifted (periodic check): {evidence}")
            } else {
                format!(
                    "Control {control} drifted after {} changed: {evidence}",
                    paths.join(", ")
                )
            };
            let mut r = finding(
                ctx,
                FindingSpec {
                    activity_id: 1,
                    severity_id: 3,
                    status_id: 1,
                    pass: Some(false),
                    detail: Some(evidence.clone()),
                    ..drift_spec(ctx, control, title)
                },
                time_ms,
                msg,
                seq,
                uid,
            );
            r.insert("unmapped".into(), json!({ "changed_paths": paths }));
            Value::Object(r)
        }
        AgentEvent::DriftRepairFailed {
            control,
            title,
            error,
        } => {
            let msg = format!("Control {control} could not be repaired: {error}");
            let r = finding(
                ctx,
                FindingSpec {
                    activity_id: 2,
                    severity_id: 4,
                    status_id: 1,
                    pass: Some(false),
                    detail: Some(error.clone()),
                    ..drift_spec(ctx, control, title)
                },
                time_ms,
                msg,
                seq,
                uid,
            );
            Value::Object(r)
        }
        AgentEvent::DriftRepaired {
            control,
            title,
            evidence,
        } => {
            let msg = format!("Control {control} repaired: {evidence}");
            let r = finding(
                ctx,
                FindingSpec {
                    activity_id: 3,
                    severity_id: 1,
                    status_id: 4,
                    pass: Some(true),
                    detail: Some(evidence.clone()),
                    ..drift_spec(ctx, control, title)
                },
                time_ms,
                msg,
                seq,
                uid,
            );
            Value::Object(r)
        }
        AgentEvent::Heartbeat {
            uptime_secs,
            drifted,
            spool_pending,
            spool_dropped,
            watches,
            status,
        } => {
            let pass = status["compliant"].as_bool().unwrap_or(drifted.is_empty());
            let audit_healthy = status["audit_healthy"].as_bool().unwrap_or(true);
            let msg = format!(
                "Heartbeat: {}, {} drifted controls, audit {}, {spool_pending} events pending, {spool_dropped} dropped",
                if pass { "compliant" } else { "NOT compliant" },
                drifted.len(),
                if audit_healthy { "healthy" } else { "NOT healthy" }
            );
            let mut r = finding(
                ctx,
                FindingSpec {
                    activity_id: 2,
                    severity_id: if pass && audit_healthy && *spool_dropped == 0 {
                        1
                    } else {
                        2
                    },
                    status_id: if pass { 4 } else { 1 },
                    finding_uid: format!("{}/heartbeat", ctx.host_id()),
                    title: "notebook-agent heartbeat".to_string(),
                    types: "Heartbeat",
                    control: None,
                    pass: Some(pass),
                    detail: (!pass).then(|| format!("drifted: {}", drifted.join(", "))),
                },
                time_ms,
                msg,
                seq,
                uid,
            );
            r.insert(
                "unmapped".into(),
                json!({
                    "uptime_secs": uptime_secs,
                    "drifted": drifted,
                    "spool_pending": spool_pending,
                    "spool_dropped": spool_dropped,
                    "watches": watches,
                    "status": status,
                }),
            );
            Value::Object(r)
        }
    }
}

fn drift_uid(ctx: &Context, control: &str) -> String {
    // Found and Repaired of one control share the uid, so a SIEM pairs them.
    format!("{}/drift/{control}", ctx.host_id())
}

#[allow(clippy::too_many_arguments)]
fn event_log(
    ctx: &Context,
    activity: &str,
    severity_id: u8,
    time_ms: i64,
    message: String,
    seq: u64,
    uid: &str,
    status_id: u8,
    actor: Value,
) -> Map<String, Value> {
    let mut r = base(
        &EVENT_LOG_ACTIVITY,
        99,
        activity,
        severity_id,
        time_ms,
        message,
        ctx,
        seq,
        uid,
    );
    r.insert("status_id".into(), json!(status_id));
    r.insert(
        "status".into(),
        json!(if status_id == 1 { "Success" } else { "Failure" }),
    );
    r.insert("actor".into(), actor);
    r.insert("log_name".into(), json!("notebook-agent audit"));
    r.insert("log_provider".into(), json!(PRODUCT_NAME));
    r
}

/// The rest of an Application Lifecycle record (Start, Stop) after [`base`].
fn lifecycle(mut r: Map<String, Value>, actor: Value, app: Value, unmapped: Value) -> Value {
    r.insert("status_id".into(), json!(1));
    r.insert("status".into(), json!("Success"));
    r.insert("actor".into(), actor);
    r.insert("app".into(), app);
    r.insert("unmapped".into(), unmapped);
    Value::Object(r)
}

struct FindingSpec<'a> {
    activity_id: u8,
    severity_id: u8,
    /// Finding status: 1 New, 4 Resolved.
    status_id: u8,
    finding_uid: String,
    title: String,
    types: &'static str,
    control: Option<&'a str>,
    pass: Option<bool>,
    detail: Option<String>,
}

/// What every drift finding of `control` shares; the caller sets activity, severity, status,
/// pass and detail.
fn drift_spec<'a>(ctx: &Context, control: &'a str, title: &str) -> FindingSpec<'a> {
    FindingSpec {
        activity_id: 0,
        severity_id: 0,
        status_id: 0,
        finding_uid: drift_uid(ctx, control),
        title: format!("Drift: {title}"),
        types: "Drift",
        control: Some(control),
        pass: None,
        detail: None,
    }
}

fn finding(
    ctx: &Context,
    spec: FindingSpec<'_>,
    time_ms: i64,
    message: String,
    seq: u64,
    uid: &str,
) -> Map<String, Value> {
    let activity = match spec.activity_id {
        1 => "Create",
        2 => "Update",
        3 => "Close",
        _ => "Other",
    };
    let mut r = base(
        &COMPLIANCE_FINDING,
        spec.activity_id,
        activity,
        spec.severity_id,
        time_ms,
        message,
        ctx,
        seq,
        uid,
    );
    r.insert("status_id".into(), json!(spec.status_id));
    r.insert(
        "status".into(),
        json!(if spec.status_id == 4 {
            "Resolved"
        } else {
            "New"
        }),
    );
    r.insert(
        "finding_info".into(),
        json!({
            "uid": spec.finding_uid,
            "title": spec.title,
            "types": [spec.types],
            "product_uid": PRODUCT_NAME,
        }),
    );
    let mut c = Map::new();
    c.insert("standards".into(), json!([STANDARD]));
    if let Some(control) = spec.control {
        c.insert("control".into(), json!(control));
    }
    if let Some(pass) = spec.pass {
        c.insert("status_id".into(), json!(if pass { 1 } else { 3 }));
        c.insert("status".into(), json!(if pass { "Pass" } else { "Fail" }));
    }
    if let Some(d) = spec.detail {
        c.insert("status_detail".into(), json!(d));
    }
    r.insert("compliance".into(), Value::Object(c));
    if let Some(res) = ctx.resources() {
        r.insert("resources".into(), res);
    }
    r
}

/// The display text of an OS string (for messages and logs).
pub fn display_os(s: &OsStr) -> String {
    encode_path(s.as_bytes()).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::change::ControlFailure;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::path::PathBuf;

    fn ctx() -> Context {
        Context::new(
            "ip-10-0-0-1",
            Some("nb".into()),
            Some("arn:aws:sagemaker:eu-west-1:123456789012:notebook-instance/nb".into()),
            Some("eu-west-1".into()),
            Some("123456789012".into()),
        )
        .with_user_lookup(|u| (u == 1000).then(|| "ec2-user".to_string()))
    }

    fn facts() -> FileFacts {
        FileFacts {
            kind: FileKind::Regular,
            size: 5,
            uid: 1000,
            gid: 100,
            mode: 0o644,
            inode: 42,
            mtime_ms: 1_700_000_000_123,
            sha256: crate::audit::change::Digest::from_hex(&"ab".repeat(32)),
            hash_note: None,
            link_target: None,
        }
    }

    fn change(kind: ChangeKind, path: PathBuf) -> FsChange {
        FsChange {
            kind,
            path,
            facts: Some(facts()),
            time_ms: 1_700_000_000_500,
            source: Source::Live,
            pid: None,
        }
    }

    #[test]
    fn create_has_the_ocsf_basics() {
        let r = file_activity(
            &change(ChangeKind::Create, "/home/ec2-user/SageMaker/a.py".into()),
            &ctx(),
            7,
        );
        assert_eq!(r["class_uid"], 1001);
        assert_eq!(r["type_uid"], 100101);
        assert_eq!(r["metadata"]["sequence"], 7);
        assert_eq!(r["file"]["name"], "a.py");
        assert_eq!(r["file"]["parent_folder"], "/home/ec2-user/SageMaker");
        assert_eq!(r["file"]["owner"]["name"], "ec2-user");
        assert_eq!(r["file"]["uid"], "42");
        assert_eq!(r["actor"]["user"]["uid"], "1000");
        assert_eq!(r["unmapped"]["file"]["mode"], "0644");
        assert_eq!(r["file"]["hashes"][0]["algorithm_id"], 3);
        assert_eq!(r["cloud"]["account"]["uid"], "123456789012");
        assert!(uuid::Uuid::parse_str(r["metadata"]["uid"].as_str().unwrap_or("")).is_ok());
    }

    #[test]
    fn rename_puts_old_in_file_and_new_in_file_result() {
        let r = file_activity(
            &change(
                ChangeKind::Rename {
                    from: "/t/old".into(),
                },
                "/t/new".into(),
            ),
            &ctx(),
            1,
        );
        assert_eq!(r["type_uid"], 100105);
        assert_eq!(r["file"]["path"], "/t/old");
        assert_eq!(r["file_result"]["path"], "/t/new");
    }

    #[test]
    fn hostile_names_round_trip_and_stay_one_line() {
        let mut names: Vec<Vec<u8>> = vec![
            b"/t/line\nbreak \"quoted\" \\back\\ \t\r\x1b[31m\x00\x7f".to_vec(),
            b"/t/\xff\xfe not utf8 \xc3(".to_vec(),
            b"/t/\\xff literal".to_vec(),
            "/t/ünï😀\u{2028}".as_bytes().to_vec(),
        ];
        let mut long = b"/t/".to_vec();
        long.extend(std::iter::repeat_n(b'\x80', 3997));
        names.push(long);
        for raw in names {
            let p = PathBuf::from(OsString::from_vec(raw.clone()));
            for kind in [ChangeKind::Create, ChangeKind::Rename { from: p.clone() }] {
                let r = file_activity(&change(kind, p.clone()), &ctx(), 1);
                let line = to_line(&r);
                assert_eq!(
                    line,
                    r.to_string().into_bytes(),
                    "to_line is Display's bytes"
                );
                assert!(!line.contains(&b'\n') && !line.contains(&b'\r'));
                assert!(!line.ends_with(b"\n"));
                let back: Value = serde_json::from_slice(&line).unwrap();
                assert_eq!(path_bytes(&back, "file").unwrap(), raw);
                if back.get("file_result").is_some() {
                    assert_eq!(path_bytes(&back, "file_result").unwrap(), raw);
                }
            }
        }
    }

    #[test]
    fn invalid_bytes_display_as_hex_escapes() {
        let (d, h) = encode_path(b"a\xffb");
        assert_eq!(d, "a\\xffb");
        assert_eq!(h.as_deref(), Some("61ff62"));
        assert_eq!(encode_path("ü".as_bytes()), ("ü".to_string(), None));
    }

    #[test]
    fn every_agent_event_encodes() {
        let evs = [
            AgentEvent::Started {
                version: "0.1.0".into(),
                paths: vec!["/x".into()],
                watches: 3,
                catch_up_changes: 0,
                source: "inotify".into(),
                source_reason: "inotify: forced; the actor of a change is unknown".into(),
                actors: "none: the inotify source names no process".into(),
            },
            AgentEvent::ApplyResult {
                changed: vec!["sudoers".into()],
                unchanged: vec![],
                failed: vec![ControlFailure {
                    control: "pip".into(),
                    error: "boom".into(),
                }],
            },
            AgentEvent::DriftFound {
                control: "root_access".into(),
                title: "Root rights".into(),
                evidence: "ec2-user is in wheel".into(),
                changed: vec!["/etc/group".into()],
            },
            AgentEvent::DriftRepairFailed {
                control: "root_access".into(),
                title: "Root rights".into(),
                error: "visudo".into(),
            },
            AgentEvent::Heartbeat {
                uptime_secs: 1,
                drifted: vec!["pip".into()],
                spool_pending: 0,
                spool_dropped: 0,
                watches: 1,
                status: json!({"compliant": false, "audit_healthy": true}),
            },
        ];
        for ev in &evs {
            let r = agent_event(ev, &ctx(), 2, 5);
            let class = r["class_uid"].as_u64().unwrap();
            let act = r["activity_id"].as_u64().unwrap();
            assert_eq!(r["type_uid"].as_u64().unwrap(), class * 100 + act);
        }
    }

    /// packaging/cloudformation.yaml's metric filters count on these fields.
    #[test]
    fn drift_and_heartbeat_records_match_the_metric_filters() {
        let drift = agent_event(
            &AgentEvent::DriftFound {
                control: "root_access".into(),
                title: "Root rights".into(),
                evidence: "ec2-user is in wheel".into(),
                changed: vec!["/etc/group".into()],
            },
            &ctx(),
            1,
            5,
        );
        assert_eq!(drift["class_uid"], 2003);
        assert_eq!(drift["activity_id"], 1);
        assert_eq!(drift["finding_info"]["types"][0], "Drift");
        assert_eq!(drift["unmapped"]["changed_paths"][0], "/etc/group");
        let beat = |compliant: bool| {
            agent_event(
                &AgentEvent::Heartbeat {
                    uptime_secs: 1,
                    drifted: vec![],
                    spool_pending: 0,
                    spool_dropped: 0,
                    watches: 1,
                    status: json!({"compliant": compliant, "audit_healthy": true}),
                },
                &ctx(),
                1,
                5,
            )
        };
        let bad = beat(false);
        assert_eq!(bad["finding_info"]["types"][0], "Heartbeat");
        assert_eq!(bad["compliance"]["status_id"], 3);
        assert_eq!(bad["unmapped"]["status"]["compliant"], false);
        assert_eq!(beat(true)["compliance"]["status_id"], 1);
    }
}
