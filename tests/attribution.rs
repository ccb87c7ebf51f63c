//! Who did it, end to end: `notebook-agent watch` (the binary, fanotify, the process-events
//! connector) names the process behind each change — a shell, a `touch` that exits at once, a
//! child of a (stand-in) Jupyter kernel — with its command line redacted, and the opt-in read
//! audit turns reads of matching files into Read records naming the reader.
//!
//! Needs what the daemon needs for attribution: root (CAP_SYS_ADMIN for the filesystem mark) on
//! a filesystem that takes a fanotify mark. Where that is missing the test fails and says so
//! (the suite runs as root: CI and the dev machines).

mod common;
#[path = "ocsf_common/mod.rs"]
mod ocsf_common;

use std::path::Path;
use std::process::Command;

use common::watch::Daemon;
use common::TempRoot;
use serde_json::Value;

const SM: &str = "home/ec2-user/SageMaker";
const KERNEL_ID: &str = "5f2b6b5e-1c1a-4c9a-9d7e-0c7a3e2f1b11";

fn started(r: &Value) -> bool {
    r["class_uid"] == 6002 && r["activity_id"] == 3
}

fn file_record<'a>(r: &'a Value, activity: u64, path: &Path) -> Option<&'a Value> {
    (r["class_uid"] == 1001
        && r["activity_id"] == activity
        && r["file"]["path"].as_str() == path.to_str())
    .then_some(r)
}

/// Runs `sh -c script args…` in `dir` and waits for it.
fn sh(dir: &Path, script: &str, args: &[&str]) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .status()
        .expect("sh");
    assert!(st.success(), "sh -c {script:?} failed");
}

#[test]
fn every_change_names_the_process_and_reads_of_sensitive_files_are_audited() {
    let t = TempRoot::amazon_linux();
    t.write(
        "etc/notebook-agent/config.json",
        r#"{"audit": {"reads": {"globs": ["data/**"], "window_secs": 5}}}"#,
        0o600,
    );
    let sm = t.join(SM);
    std::fs::create_dir_all(sm.join("data")).expect("mkdir data");
    std::fs::write(sm.join("data/train.csv"), "a,b\n1,2\n").expect("write");
    std::fs::write(sm.join("notes.txt"), "not sensitive").expect("write");
    let d = Daemon::start(&t, true);
    d.wait_for("Started", started);
    let start = d.records().into_iter().find(started).expect("Start record");
    assert_eq!(
        start["unmapped"]["source"], "fanotify",
        "attribution needs the fanotify source (root, a filesystem that takes the mark): {start:#}"
    );
    assert_eq!(
        start["unmapped"]["actors"], "process-events connector",
        "{start:#}"
    );

    // A shell that writes through a redirection, with a secret on its command line.
    let shell_file = sm.join("from-shell.txt");
    sh(
        &sm,
        ": > from-shell.txt; true",
        &["--password", "hunter2-never-shipped"],
    );
    d.wait_for("the shell's Create", |r| {
        file_record(r, 1, &shell_file).is_some()
    });
    // A short-lived process: `touch` has exited long before its event is read.
    let touched = sm.join("touched.txt");
    sh(&sm, "touch touched.txt; true", &[]);
    d.wait_for("touch's Create", |r| file_record(r, 1, &touched).is_some());
    // A child of a kernel: the stand-in kernel is a shell whose command line names a Jupyter
    // connection file, as ipykernel's does.
    let connection = format!("/home/ec2-user/.local/share/jupyter/runtime/kernel-{KERNEL_ID}.json");
    let from_kernel = sm.join("from-kernel.txt");
    sh(
        &sm,
        "cp notes.txt from-kernel.txt; true",
        &["ipykernel_launcher", "-f", &connection],
    );
    d.wait_for("the kernel child's Create", |r| {
        file_record(r, 1, &from_kernel).is_some()
    });
    // A new directory and a file in it, by two processes: the directory's scan may find the
    // file before the file's own event is read; the file is still its writer's, not mkdir's.
    let in_new_dir = sm.join("made/by-sh.txt");
    sh(&sm, "mkdir made && echo x >made/by-sh.txt; true", &[]);
    d.wait_for("the file in the new directory", |r| {
        file_record(r, 1, &in_new_dir).is_some()
    });
    // Reads: one of a sensitive file, one of a file the globs do not match.
    sh(&sm, "cat data/train.csv notes.txt > /dev/null; true", &[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let records = d.stop();
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();

    for r in &records {
        let errs = ocsf_common::schema_errors(r);
        assert!(errs.is_empty(), "{errs:#?}\n{r:#}");
    }
    assert!(
        !lines.iter().any(|l| l.contains("hunter2-never-shipped")),
        "a secret on a command line was shipped"
    );

    let me = std::process::id();
    let find = |a: u64, p: &Path| {
        records
            .iter()
            .find_map(|r| file_record(r, a, p))
            .unwrap_or_else(|| panic!("no record {a} for {}", p.display()))
    };
    let shell = find(1, &shell_file);
    assert_eq!(shell["unmapped"]["actor_basis"], "process", "{shell:#}");
    let proc_ = &shell["actor"]["process"];
    assert_eq!(proc_["name"], "sh", "{shell:#}");
    let cmd = proc_["cmd_line"].as_str().unwrap_or_default();
    assert!(
        cmd.starts_with("sh -c") && cmd.contains("REDACTED"),
        "the command line, redacted: {shell:#}"
    );
    assert_eq!(proc_["parent_process"]["pid"], me, "{shell:#}");
    assert_eq!(proc_["user"]["uid"], "0", "{shell:#}");
    assert_eq!(shell["actor"]["user"]["name"], "root", "{shell:#}");

    let touch = find(1, &touched);
    assert_eq!(touch["unmapped"]["actor_basis"], "process", "{touch:#}");
    assert_eq!(touch["actor"]["process"]["name"], "touch", "{touch:#}");
    // The connector reports the exec; `touch` may be a zombie before /proc/<pid>/exe is read.
    // Then the record says so instead of naming an executable.
    match touch["actor"]["process"]["file"]["path"].as_str() {
        Some(exe) => assert!(exe.ends_with("/touch"), "{touch:#}"),
        None => assert!(touch["unmapped"]["actor_note"].is_string(), "{touch:#}"),
    }
    assert_eq!(
        touch["actor"]["process"]["parent_process"]["name"], "sh",
        "{touch:#}"
    );

    let made = find(1, &sm.join("made"));
    assert_eq!(made["actor"]["process"]["name"], "mkdir", "{made:#}");
    let by_sh = find(1, &in_new_dir);
    assert_eq!(by_sh["actor"]["process"]["name"], "sh", "{by_sh:#}");

    let kid = find(1, &from_kernel);
    assert_eq!(kid["actor"]["process"]["name"], "cp", "{kid:#}");
    assert_eq!(
        kid["unmapped"]["jupyter"]["kernel_id"], KERNEL_ID,
        "a kernel's child names the kernel: {kid:#}"
    );

    let reads: Vec<&Value> = records
        .iter()
        .filter(|r| r["class_uid"] == 1001 && r["activity_id"] == 2)
        .collect();
    assert_eq!(
        reads.len(),
        1,
        "exactly the sensitive file's read: {reads:#?}"
    );
    let read = reads[0];
    assert_eq!(
        read["file"]["path"].as_str(),
        sm.join("data/train.csv").to_str(),
        "{read:#}"
    );
    assert_eq!(read["actor"]["process"]["name"], "cat", "{read:#}");
    assert_eq!(read["unmapped"]["read"]["reads"], 1, "{read:#}");
}
