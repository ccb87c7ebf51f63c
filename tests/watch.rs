//! `notebook-agent watch` end to end: the binary on a temp root, real inotify, real files. Every
//! file action gives exactly the expected OCSF record (validated against the class schema); a
//! `kill -9` loses nothing that was spooled and the restart reports what changed while it was
//! down; a 50,000-file burst is accounted for; a full spool counts its drops and says so.

mod common;
#[path = "shipper_fixtures/moto.rs"]
mod moto;
#[path = "ocsf_common/mod.rs"]
mod ocsf_common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::watch::{read_spool, Daemon};
use common::TempRoot;
use nix::sys::signal::Signal;
use notebook_agent::audit::daemon::{self, Options};
use notebook_agent::host::Root;
use serde_json::Value;

const SM: &str = "home/ec2-user/SageMaker";

/// Spool-mode tests that are not about shipping: CloudWatch is a closed loopback port (nothing
/// is delivered, nothing leaves the machine) and the stop drain is 1 s.
const NO_SHIPPING: &str = r#"{"audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}}"#;

fn started(r: &Value) -> bool {
    r["class_uid"] == 6002 && r["activity_id"] == 3
}

/// (activity_id, path relative to the SageMaker directory) of a file record.
fn key(r: &Value, sm: &Path) -> Option<(u64, String)> {
    if r["class_uid"] != 1001 {
        return None;
    }
    let path = if r["activity_id"] == 5 {
        &r["file_result"]["path"]
    } else {
        &r["file"]["path"]
    };
    let rel = Path::new(path.as_str()?)
        .strip_prefix(sm)
        .ok()?
        .to_string_lossy()
        .into_owned();
    Some((r["activity_id"].as_u64()?, rel))
}

fn is_file_event(r: &Value, activity: u64, rel: &str, sm: &Path) -> bool {
    key(r, sm) == Some((activity, rel.to_string()))
}

#[test]
fn every_file_action_gives_exactly_its_event_and_every_record_is_valid_ocsf() {
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/notebook-agent/config.json",
        r#"{"audit": {"hash_max_bytes": 2097152}}"#,
        0o600,
    );
    let sm = t.join(SM);
    let d = Daemon::start(&t, true);
    d.wait_for("Started", started);

    let step = |what: &str, activity: u64, rel: &str, action: &dyn Fn()| {
        action();
        d.wait_for(what, |r| is_file_event(r, activity, rel, &sm));
    };
    step("create", 1, "notes.txt", &|| {
        std::fs::write(sm.join("notes.txt"), "hello").expect("write")
    });
    step("update", 3, "notes.txt", &|| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(sm.join("notes.txt"))
            .expect("open");
        f.write_all(b" world").expect("append");
    });
    step("chmod", 6, "notes.txt", &|| {
        std::fs::set_permissions(sm.join("notes.txt"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod")
    });
    step("rename", 5, "renamed.txt", &|| {
        std::fs::rename(sm.join("notes.txt"), sm.join("renamed.txt")).expect("rename")
    });
    step("delete", 4, "renamed.txt", &|| {
        std::fs::remove_file(sm.join("renamed.txt")).expect("rm")
    });
    step("mkdir -p burst", 1, "a/b/c/f", &|| {
        let st = Command::new("sh")
            .arg("-c")
            .arg("mkdir -p a/b/c && touch a/b/c/f")
            .current_dir(&sm)
            .status()
            .expect("sh");
        assert!(st.success());
    });
    step("1 MiB file", 1, "one-mib.bin", &|| {
        std::fs::write(sm.join("one-mib.bin"), vec![7u8; 1 << 20]).expect("write")
    });
    step("file over the hash cap", 1, "three-mib.bin", &|| {
        std::fs::write(sm.join("three-mib.bin"), vec![7u8; 3 << 20]).expect("write")
    });
    // Excluded: no event (checked at the end, after a later event proves the daemon is current).
    std::fs::create_dir_all(sm.join(".ipynb_checkpoints")).expect("mkdir");
    std::fs::write(sm.join(".ipynb_checkpoints/x-checkpoint.ipynb"), "{}").expect("write");
    step("rm -r", 4, "a", &|| {
        std::fs::remove_dir_all(sm.join("a")).expect("rm -r")
    });

    let records = d.stop();
    let mut counts: BTreeMap<(u64, String), usize> = BTreeMap::new();
    for r in &records {
        let errs = ocsf_common::schema_errors(r);
        assert!(errs.is_empty(), "{errs:#?}\n{r:#}");
        if let Some(k) = key(r, &sm) {
            *counts.entry(k).or_default() += 1;
        }
    }
    let expected: BTreeMap<(u64, String), usize> = [
        (1, "notes.txt"),
        (3, "notes.txt"),
        (6, "notes.txt"),
        (5, "renamed.txt"),
        (4, "renamed.txt"),
        (1, "a"),
        (1, "a/b"),
        (1, "a/b/c"),
        (1, "a/b/c/f"),
        (1, "one-mib.bin"),
        (1, "three-mib.bin"),
        (4, "a/b/c/f"),
        (4, "a/b/c"),
        (4, "a/b"),
        (4, "a"),
    ]
    .into_iter()
    .map(|(a, p)| ((a, p.to_string()), 1))
    .collect();
    assert_eq!(counts, expected, "exactly the expected events, once each");

    let find = |a: u64, p: &str| {
        records
            .iter()
            .find(|r| is_file_event(r, a, p, &sm))
            .expect("record")
    };
    let hash = |r: &Value| r["file"]["hashes"][0]["value"].as_str().map(str::to_string);
    assert_eq!(
        hash(find(1, "notes.txt")).as_deref(),
        Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),
        "sha256 of 'hello'"
    );
    assert!(hash(find(1, "one-mib.bin")).is_some());
    assert!(
        hash(find(1, "three-mib.bin")).is_none(),
        "over audit.hash_max_bytes: no hash"
    );
    assert_eq!(find(5, "renamed.txt")["file"]["name"], "notes.txt");
    assert_eq!(find(6, "notes.txt")["unmapped"]["file"]["mode"], "0600");
    let seqs: Vec<u64> = records
        .iter()
        .map(|r| r["metadata"]["sequence"].as_u64().expect("sequence"))
        .collect();
    assert_eq!(
        seqs,
        (1..=records.len() as u64).collect::<Vec<_>>(),
        "sequence 1..n"
    );
    assert!(
        records
            .last()
            .is_some_and(|r| r["class_uid"] == 6002 && r["activity_id"] == 4),
        "the last record says the agent stopped"
    );
}

fn source(r: &Value) -> &str {
    r["unmapped"]["source"].as_str().unwrap_or_default()
}

#[test]
fn kill_9_loses_nothing_spooled_and_the_restart_reports_what_changed_while_down() {
    let t = TempRoot::amazon_linux();
    t.write("etc/notebook-agent/config.json", NO_SHIPPING, 0o600);
    let sm = t.join(SM);
    let spool_dir = sm.join(".notebook-agent");
    std::fs::write(sm.join("before-first-start.txt"), "x").expect("write");

    let d = Daemon::start(&t, false);
    let report = t.join("var/lib/notebook-agent/daemon.json");
    let until = Instant::now() + Duration::from_secs(10);
    while !report.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(report.exists(), "daemon.json written at start");
    for i in 0..200 {
        std::fs::write(sm.join(format!("f{i}.txt")), format!("{i}")).expect("write");
    }
    // The spool syncs at least every 100 ms and, after changes, the watch tree is checkpointed
    // within 500 ms and committed once the spool has it: give the pipeline time for both.
    std::thread::sleep(Duration::from_millis(3500));
    d.signal(Signal::SIGKILL);
    let mut d = d;
    let _ = d.child.wait();
    d.stopped = true;

    // While the agent is down.
    for i in 0..10 {
        std::fs::write(sm.join(format!("g{i}.txt")), "new").expect("write");
    }
    std::fs::remove_file(sm.join("f0.txt")).expect("rm");
    std::fs::write(sm.join("f1.txt"), "changed, longer").expect("write");

    let d = Daemon::start(&t, false);
    std::thread::sleep(Duration::from_millis(1500));
    let _ = d.stop();

    let records = read_spool(&spool_dir);
    let seqs: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=records.len() as u64).collect::<Vec<_>>(),
        "the sequence continues across the crash without gaps or repeats"
    );
    for (seq, r) in &records {
        assert_eq!(r["metadata"]["sequence"].as_u64(), Some(*seq));
    }
    let has = |activity: u64, rel: &str, src: &str| {
        records
            .iter()
            .filter(|(_, r)| is_file_event(r, activity, rel, &sm) && source(r) == src)
            .count()
    };
    for i in 0..200 {
        assert_eq!(
            has(1, &format!("f{i}.txt"), "live"),
            1,
            "f{i}.txt created live"
        );
        // The tree followed the spool before the kill: no second report at catch-up.
        assert_eq!(
            has(1, &format!("f{i}.txt"), "catch_up"),
            0,
            "f{i}.txt reported twice"
        );
    }
    for i in 0..10 {
        assert_eq!(
            has(1, &format!("g{i}.txt"), "catch_up"),
            1,
            "g{i}.txt created while down"
        );
    }
    assert_eq!(has(4, "f0.txt", "catch_up"), 1, "deleted while down");
    assert_eq!(has(3, "f1.txt", "catch_up"), 1, "modified while down");
    assert_eq!(
        has(1, "before-first-start.txt", "catch_up") + has(1, "before-first-start.txt", "live"),
        0,
        "the first start takes the tree as it is"
    );
    let started = records.iter().filter(|(_, r)| started(r)).count();
    let stopped = records
        .iter()
        .filter(|(_, r)| r["class_uid"] == 6002 && r["activity_id"] == 4)
        .count();
    assert_eq!((started, stopped), (2, 1), "killed once, stopped once");
    let tamper: Vec<&Value> = records
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.to_string().contains("tampered"))
        .collect();
    assert!(tamper.is_empty(), "a crash is not tampering: {tamper:#?}");
    let spool_mode = std::fs::metadata(&spool_dir)
        .expect("spool")
        .permissions()
        .mode();
    assert_eq!(spool_mode & 0o777, 0o700, "spool is root-only");
}

#[test]
fn a_50000_file_burst_and_rm_r_are_all_accounted_for() {
    let t = TempRoot::amazon_linux();
    let sm = t.join(SM);
    let d = Daemon::start(&t, true);
    d.wait_for("Started", started);
    let n = 50_000;
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "mkdir burst && cd burst && seq 1 {n} | sed 's/^/f/' | xargs touch"
        ))
        .current_dir(&sm)
        .status()
        .expect("sh");
    assert!(st.success());
    let last = format!("burst/f{n}");
    d.wait_for_within(300, "the last file", |r| {
        key(r, &sm).is_some_and(|(a, p)| a == 1 && p == last) || r["class_uid"] == 1008
    });
    let st = Command::new("rm")
        .args(["-r", "burst"])
        .current_dir(&sm)
        .status()
        .expect("rm");
    assert!(st.success());
    d.wait_for_within(300, "the burst directory deleted", |r| {
        is_file_event(r, 4, "burst", &sm)
    });
    let records = d.stop();
    let mut created = 0;
    let mut deleted = 0;
    let mut rescans = 0;
    for r in &records {
        match key(r, &sm) {
            Some((1, p)) if p.starts_with("burst/") => created += 1,
            Some((4, p)) if p.starts_with("burst/") => deleted += 1,
            _ => {}
        }
        if r["class_uid"] == 1008 {
            rescans += 1;
        }
    }
    println!(
        "burst of {n}: {created} create and {deleted} delete events, {rescans} rescan records"
    );
    assert!(
        rescans > 0 || (created == n && deleted == n),
        "every file accounted for: {created} created, {deleted} deleted, {rescans} rescans"
    );
    assert!(created <= n && deleted <= n, "no duplicates");
}

#[test]
fn a_full_spool_counts_its_drops_and_records_them_when_room_returns() {
    let t = TempRoot::amazon_linux();
    let root = Root::new(t.path()).expect("root");
    let cfg = notebook_agent::config::parse("{}", Path::new("test.json")).expect("config");
    let mut opts = Options::from_config(&root, &cfg, false);
    opts.spool.max_bytes = 256 * 1024;
    let spool_dir = opts.spool_dir.clone();
    let sm = t.join(SM);

    let stop = Arc::new(AtomicBool::new(false));
    let reader_slot = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&reader_slot);
    let stop2 = Arc::clone(&stop);
    let daemon = std::thread::spawn(move || {
        daemon::run(&root, opts, stop2, move |r| {
            *slot.lock().expect("lock") = Some(r);
            None
        })
        .expect("daemon")
    });
    let until = Instant::now() + Duration::from_secs(10);
    while reader_slot.lock().expect("lock").is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..1000 {
        std::fs::write(sm.join(format!("fill{i}")), "x").expect("write");
    }
    std::thread::sleep(Duration::from_millis(1500));
    // The shipper acknowledges everything: room returns.
    {
        let mut guard = reader_slot.lock().expect("lock");
        let reader = guard.as_mut().expect("reader");
        let mut after = reader.acked_seq();
        loop {
            let batch = reader.read_from(after, 10_000, 64 << 20).expect("read");
            let Some(last) = batch.last() else { break };
            after = last.seq;
        }
        reader.ack(after).expect("ack");
    }
    std::fs::write(sm.join("after-room.txt"), "x").expect("write");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let report = common::join_within(
        daemon,
        Duration::from_secs(60),
        "the daemon thread after stop",
    );
    drop(reader_slot);

    assert!(report.events_dropped > 0, "the tiny spool dropped events");
    let records = read_spool(&spool_dir);
    let drop_events: Vec<&Value> = records
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r["class_uid"] == 1008 && r.to_string().contains("dropped"))
        .collect();
    assert_eq!(
        drop_events.len(),
        1,
        "one spool-full event: {drop_events:#?}"
    );
    let text = drop_events[0].to_string();
    assert!(
        text.contains(&report.events_dropped.to_string()),
        "the event carries the count {}: {text}",
        report.events_dropped
    );
    println!(
        "spool cap 256 KiB: {} written, {} dropped and recorded",
        report.events_written, report.events_dropped
    );
    let _ = PathBuf::new();
}

#[test]
fn deleting_the_watch_tree_is_recorded_as_tampering() {
    let t = TempRoot::amazon_linux();
    t.write("etc/notebook-agent/config.json", NO_SHIPPING, 0o600);
    let sm = t.join(SM);
    let spool_dir = sm.join(".notebook-agent");
    let d = Daemon::start(&t, false);
    std::fs::write(sm.join("a.txt"), "x").expect("write");
    std::thread::sleep(Duration::from_millis(800));
    let _ = d.stop();
    std::fs::remove_file(spool_dir.join("watch.tree")).expect("rm tree");
    let d = Daemon::start(&t, false);
    std::thread::sleep(Duration::from_millis(800));
    let _ = d.stop();
    let records = read_spool(&spool_dir);
    let tamper: Vec<String> = records
        .iter()
        .map(|(_, r)| r.to_string())
        .filter(|r| r.contains("tampered") && r.contains("watch tree missing"))
        .collect();
    assert_eq!(tamper.len(), 1, "{records:#?}");
}

/// An agent updated from the snapshot format: its `watch.snapshot` is the catch-up baseline once,
/// becomes the watch tree and is removed; nothing it knew is reported again.
#[test]
fn an_old_watch_snapshot_is_migrated_once_into_the_watch_tree() {
    use notebook_agent::audit::snapshot::Snapshot;
    use notebook_agent::audit::tree::{Tree, TreeOptions};
    let t = TempRoot::amazon_linux();
    t.write("etc/notebook-agent/config.json", NO_SHIPPING, 0o600);
    let sm = t.join(SM);
    let spool_dir = sm.join(".notebook-agent");
    let d = Daemon::start(&t, false);
    std::fs::write(sm.join("known.txt"), "x").expect("write");
    std::thread::sleep(Duration::from_millis(800));
    let _ = d.stop();
    // What an older agent would have left: the same knowledge as a snapshot, no tree.
    let mut snap = Snapshot::default();
    {
        let (mut tree, _) = Tree::open(&spool_dir, TreeOptions::default()).expect("open tree");
        tree.visit(Path::new("/"), &mut |p, f| {
            snap.entries.insert(p.to_path_buf(), f.clone());
        });
    }
    assert!(snap.entries.contains_key(&sm.join("known.txt")));
    snap.save(&spool_dir).expect("save snapshot");
    std::fs::remove_file(spool_dir.join("watch.tree")).expect("rm tree");
    std::fs::write(sm.join("while-down.txt"), "y").expect("write");

    let d = Daemon::start(&t, false);
    std::thread::sleep(Duration::from_millis(800));
    let _ = d.stop();
    assert!(
        !spool_dir.join("watch.snapshot").exists(),
        "snapshot removed"
    );
    assert!(spool_dir.join("watch.tree").exists(), "tree written");
    let records = read_spool(&spool_dir);
    let count = |rel: &str, src: &str| {
        records
            .iter()
            .filter(|(_, r)| is_file_event(r, 1, rel, &sm) && source(r) == src)
            .count()
    };
    assert_eq!(count("while-down.txt", "catch_up"), 1, "{records:#?}");
    assert_eq!(count("known.txt", "catch_up"), 0, "known before: not again");
    assert!(
        !records
            .iter()
            .any(|(_, r)| r.to_string().contains("tampered")),
        "{records:#?}"
    );
}

#[test]
fn the_daemon_ships_every_record_to_cloudwatch_logs_in_moto_exactly_once() {
    let moto = moto::Moto::start();
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/notebook-agent/config.json",
        &format!(
            r#"{{"audit": {{"endpoint_url": "{}", "region": "{}", "flush_ms": 200, "drain_secs": 10}}}}"#,
            moto.endpoint(),
            moto::REGION
        ),
        0o600,
    );
    let sm = t.join(SM);
    let group = "/aws/sagemaker/NotebookInstances";
    let stream = "test-nb/audit";
    let d = Daemon::start(&t, false);
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..50 {
        std::fs::write(sm.join(format!("nb{i}.ipynb")), "{}").expect("write");
    }
    // Arrives while the daemon runs (flush 200 ms), not only at the stop drain.
    let until = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while Instant::now() < until {
        // The group does not exist until the first put: ask again.
        got = moto::try_read_back(moto.port, group, stream).unwrap_or_default();
        if got.len() > 50 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        got.len() > 50,
        "Started + 50 creates in moto while running: {}",
        got.len()
    );
    let _ = d.stop();
    let events = moto::read_back(moto.port, group, stream);
    let seqs = moto::sequences(&events);
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every record once, in order"
    );
    let records: Vec<Value> = events
        .iter()
        .map(|(_, m)| serde_json::from_str(m).expect("JSON"))
        .collect();
    for i in 0..50 {
        let rel = format!("nb{i}.ipynb");
        assert_eq!(
            records
                .iter()
                .filter(|r| is_file_event(r, 1, &rel, &sm))
                .count(),
            1,
            "{rel}"
        );
    }
    assert!(
        records
            .last()
            .is_some_and(|r| r["class_uid"] == 6002 && r["activity_id"] == 4),
        "the stop record was drained to CloudWatch too"
    );
    let shipper: Value = serde_json::from_slice(
        &std::fs::read(t.join("var/lib/notebook-agent/shipper.json")).expect("shipper.json"),
    )
    .expect("JSON");
    assert_eq!(
        shipper["shipped"].as_u64(),
        Some(seqs.len() as u64),
        "{shipper:#}"
    );
}

#[test]
fn status_reports_the_daemon_and_shipping_where_the_unit_is_installed() {
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/notebook-agent/config.json",
        r#"{"root_access": {"enabled": false},
            "audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}}"#,
        0o600,
    );
    let r = t.path().to_str().expect("utf-8");
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();

    // Without the unit: the audit rows are informational.
    let s = common::agent(&["status", "--root", r]);
    assert_eq!(s.status.code(), Some(0), "{}", text(&s));
    assert!(
        text(&s).contains("notebook-agent.service is not installed"),
        "{}",
        text(&s)
    );

    t.write(
        "etc/systemd/system/notebook-agent.service",
        "[Service]\n",
        0o644,
    );
    t.mkdir("run/systemd/system");
    let s = common::agent(&["status", "--root", r]);
    assert_eq!(
        s.status.code(),
        Some(4),
        "controls pass, daemon never ran: {}",
        text(&s)
    );
    assert!(text(&s).contains("never ran"), "{}", text(&s));

    let d = Daemon::start(&t, false);
    let state = t.join("var/lib/notebook-agent");
    let until = Instant::now() + Duration::from_secs(10);
    while !(state.join("daemon.json").exists() && state.join("shipper.json").exists())
        && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = common::agent(&["status", "--root", r]);
    assert_eq!(s.status.code(), Some(0), "{}", text(&s));
    let row = |name: &str| {
        text(&s)
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        row("Audit daemon").contains("PASS") && row("Audit daemon").contains("pid"),
        "{}",
        text(&s)
    );
    assert!(
        row("Shipping").contains("PASS") && row("Shipping").contains("bytes unshipped"),
        "{}",
        text(&s)
    );
    let json = common::agent(&["status", "--json", "--root", r]);
    let v: Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["audit_healthy"], true, "{v:#}");
    assert_eq!(v["audit"][0]["control"], "audit_daemon");

    let _ = d.stop();
    let s = common::agent(&["status", "--root", r]);
    assert_eq!(s.status.code(), Some(4), "{}", text(&s));
    assert!(text(&s).contains("stopped"), "{}", text(&s));
}
