//! Drift repair and heartbeats in `notebook-agent watch`, on the Amazon Linux temp root with the
//! real visudo chrooted into it. After `apply`, re-adding ec2-user to wheel or dropping a sudoers
//! grant is undone within 5 s, and the spool holds the drift and the repair; heartbeats come at
//! the configured period and at every change of compliance.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::watch::{read_spool, Daemon};
use common::{agent, stderr, stdout, TempRoot};
use notebook_agent::audit::daemon::{self, Options};
use notebook_agent::audit::drift::{DriftMonitor, DriftOptions};
use notebook_agent::config;
use notebook_agent::host::Root;
use serde_json::Value;

/// CloudWatch is a closed loopback port: nothing is delivered, nothing leaves the machine.
const NO_SHIPPING: &str = r#"{"audit": {"endpoint_url": "http://127.0.0.1:9", "drain_secs": 1}}"#;
const SPOOL: &str = "home/ec2-user/SageMaker/.notebook-agent";
const DEADLINE: Duration = Duration::from_secs(5);

/// The spool's records, without their sequence numbers.
fn records(dir: &Path) -> Vec<Value> {
    read_spool(dir).into_iter().map(|(_, r)| r).collect()
}

/// Polls `f` until it holds; the time it took.
fn within(limit: Duration, what: &str, f: impl Fn() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    t0.elapsed()
}

fn applied_root() -> TempRoot {
    let t = TempRoot::amazon_linux();
    t.install_visudo();
    t.write("etc/notebook-agent/config.json", NO_SHIPPING, 0o600);
    let root = t.path().to_str().expect("utf-8");
    let out = agent(&["apply", "--root", root]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!wheel_has_user(&t), "apply took ec2-user out of wheel");
    t
}

fn wheel_has_user(t: &TempRoot) -> bool {
    t.read("etc/group")
        .lines()
        .any(|l| l.starts_with("wheel:") && l.contains("ec2-user"))
}

fn drift(r: &Value, activity: u64) -> bool {
    r["class_uid"] == 2003
        && r["finding_info"]["types"][0] == "Drift"
        && r["activity_id"] == activity
}

fn heartbeat(r: &Value) -> bool {
    r["class_uid"] == 2003 && r["finding_info"]["types"][0] == "Heartbeat"
}

#[test]
fn wheel_membership_and_a_sudoers_drop_in_are_undone_within_5_s_and_spooled() {
    let t = applied_root();
    let d = Daemon::start(&t, false);
    within(Duration::from_secs(10), "daemon.json", || {
        t.join("var/lib/notebook-agent/daemon.json").exists()
    });
    // The monitor's first full check (and its watches) runs at start; give it a moment.
    std::thread::sleep(Duration::from_millis(500));

    // The data scientist (with root for a moment, or a careless admin) re-adds ec2-user to wheel.
    let group = t
        .read("etc/group")
        .replace("wheel:x:10:", "wheel:x:10:ec2-user");
    std::fs::write(t.join("etc/group"), group).expect("write group");
    let wheel = within(DEADLINE, "wheel membership reverted", || {
        !wheel_has_user(&t)
    });

    // Let the repair finish (its own final check included) before the next change: one drift,
    // one repair each. (A change during a repair is re-applied in the same repair.)
    std::thread::sleep(Duration::from_millis(500));
    let sneaky = t.join("etc/sudoers.d/99-sneaky");
    t.write(
        "etc/sudoers.d/99-sneaky",
        "ec2-user ALL=(ALL) NOPASSWD:ALL\n",
        0o440,
    );
    let dropin = within(DEADLINE, "sudoers drop-in removed", || !sneaky.exists());
    println!("drift repair latency: wheel re-add {wheel:?}, sudoers drop-in {dropin:?}");

    // The events reach the spool within the pipeline's 100 ms loop.
    std::thread::sleep(Duration::from_millis(300));
    let _ = d.stop();
    let records = records(&t.join(SPOOL));
    let found: Vec<&Value> = records.iter().filter(|r| drift(r, 1)).collect();
    let repaired: Vec<&Value> = records.iter().filter(|r| drift(r, 3)).collect();
    let dump = || {
        records
            .iter()
            .filter(|r| r["class_uid"] == 2003)
            .map(|r| r["message"].to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(found.len(), 2, "one drift per change:\n{}", dump());
    assert_eq!(repaired.len(), 2, "one repair per drift:\n{}", dump());
    assert!(
        !records.iter().any(|r| drift(r, 2)),
        "no failed repair:\n{}",
        dump()
    );
    for r in found.iter().chain(&repaired) {
        assert_eq!(r["compliance"]["control"], "root_access");
    }
    assert_eq!(found[0]["unmapped"]["changed_paths"][0], "/etc/group");
    assert!(
        found[0]["compliance"]["status_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("ec2-user is in wheel"),
        "{}",
        found[0]
    );
    assert_eq!(
        found[1]["unmapped"]["changed_paths"],
        serde_json::json!(["/etc/sudoers.d/99-sneaky"]),
        "the repair's own write of /etc/group is not named as drift"
    );
    assert!(
        repaired[1]["compliance"]["status_detail"]
            .as_str()
            .unwrap_or_default()
            .contains("removed /etc/sudoers.d/99-sneaky"),
        "{}",
        repaired[1]
    );
    // In order: each drift before its repair, and the pair shares the finding uid.
    let seq = |r: &Value| r["metadata"]["sequence"].as_u64().expect("sequence");
    for (f, r) in found.iter().zip(&repaired) {
        assert!(seq(f) < seq(r));
        assert_eq!(f["finding_info"]["uid"], r["finding_info"]["uid"]);
    }
    assert!(seq(repaired[0]) < seq(found[1]));
    // The first heartbeat says compliant; a repaired drift is no change of compliance.
    let beats: Vec<&Value> = records.iter().filter(|r| heartbeat(r)).collect();
    assert_eq!(beats.len(), 1, "{}", dump());
    assert_eq!(beats[0]["compliance"]["status_id"], 1);
    assert_eq!(beats[0]["unmapped"]["status"]["compliant"], true);
}

#[test]
fn heartbeats_come_every_period_and_at_every_change_of_compliance() {
    let t = applied_root();
    let root = Root::new(t.path()).expect("root");
    let cfg = config::parse(NO_SHIPPING, Path::new("test.json")).expect("config");
    let opts = Options::from_config(&root, &cfg, false);
    let spool_dir = opts.spool_dir.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    // Shorter than the config allows (10 s), for the test; drift is reported, not repaired.
    let drift_opts = DriftOptions {
        reapply: false,
        heartbeat: Duration::from_millis(400),
        first_heartbeat_wait: Duration::ZERO,
        ..DriftOptions::from_config(&cfg)
    };
    let monitor =
        DriftMonitor::start(root.clone(), cfg, drift_opts, Arc::clone(&stop), tx).expect("monitor");
    let stop2 = Arc::clone(&stop);
    let daemon = std::thread::spawn(move || {
        daemon::run(&root, opts, stop2, move |_reader| Some(rx)).expect("daemon")
    });
    std::thread::sleep(Duration::from_millis(1000));
    let group = t
        .read("etc/group")
        .replace("wheel:x:10:", "wheel:x:10:ec2-user");
    let drifted_at = Instant::now();
    std::fs::write(t.join("etc/group"), &group).expect("write group");
    std::thread::sleep(Duration::from_millis(1000));
    assert!(wheel_has_user(&t), "drift.reapply off: nothing is repaired");
    let fixed = group.replace("wheel:x:10:ec2-user", "wheel:x:10:");
    std::fs::write(t.join("etc/group"), fixed).expect("write group");
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Ordering::SeqCst);
    common::join_within(
        daemon,
        Duration::from_secs(60),
        "the daemon thread after stop",
    );
    monitor.join();
    let total = drifted_at.elapsed() + Duration::from_millis(1000);

    let records = records(&spool_dir);
    let beats: Vec<&Value> = records.iter().filter(|r| heartbeat(r)).collect();
    let states: Vec<bool> = beats
        .iter()
        .map(|r| r["unmapped"]["status"]["compliant"] == true)
        .collect();
    println!(
        "{} heartbeats in {total:?} at a 400 ms period: {states:?}",
        beats.len()
    );
    assert!(beats.len() >= 5, "{states:?}");
    // compliant …, then non-compliant (at the drift, not at the next period) …, then compliant.
    let first_bad = states
        .iter()
        .position(|c| !c)
        .expect("a non-compliant heartbeat");
    assert!(states[..first_bad].iter().all(|c| *c), "{states:?}");
    let back = states[first_bad..]
        .iter()
        .position(|c| *c)
        .expect("compliant again");
    assert!(states[first_bad + back..].iter().all(|c| *c), "{states:?}");
    let bad = beats[first_bad];
    assert_eq!(
        bad["compliance"]["status_id"], 3,
        "the metric filter's field"
    );
    assert_eq!(bad["unmapped"]["drifted"][0], "root_access");
    assert!(bad["unmapped"]["uptime_secs"].as_u64().is_some());
    assert!(
        bad["unmapped"]["status"]["controls"]
            .as_array()
            .is_some_and(|c| c.len() == 4),
        "{bad}"
    );
    // The drift itself was reported once, not repaired.
    assert_eq!(records.iter().filter(|r| drift(r, 1)).count(), 1);
    assert_eq!(records.iter().filter(|r| drift(r, 3)).count(), 0);
    // The change of compliance is a heartbeat of its own: drift event and heartbeat are
    // neighbours in the spool.
    let seq = |r: &Value| r["metadata"]["sequence"].as_u64().expect("sequence");
    let found = records.iter().find(|r| drift(r, 1)).expect("drift");
    assert_eq!(seq(bad), seq(found) + 1);
}
