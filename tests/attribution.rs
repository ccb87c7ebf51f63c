//! Who did it, end to end: `notebook-agent watch` (the binary, fanotify, the process-events
//! connector) names the process behind each change — a shell, a `touch` that exits at once, a
//! child of a (stand-in) Jupyter kernel — with its command line redacted, and the opt-in read
//! audit turns reads of matching files into Read records naming the reader.
//!
//! Each shell is held alive until its events have been read (its records are in; for the reader,
//! a file it writes after its reads is), so what it is can be asserted exactly.
//! The programs it starts (`touch`, `mkdir`, `cp`, `cat`) live about a millisecond: whether the
//! connector's exec beat their exit to `/proc` is a race no test can fix, so for them the record
//! names either the program or says exactly that it is unknown — and in both cases names the
//! shell that started it, which only the connector can know once the program is gone.
//!
//! Needs what the daemon needs for attribution: root (CAP_SYS_ADMIN for the filesystem mark) on
//! a filesystem that takes a fanotify mark. Where that is missing the test fails and says so
//! (the suite runs as root: CI and the dev machines).

mod common;
#[path = "ocsf_common/mod.rs"]
mod ocsf_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// `sh -c "script || exit 1; read _" args…` in `dir`: once `script` is done the shell waits on
/// its stdin, so it still runs (and `/proc` still shows it) until [`Held::release`], which fails
/// the test if `script` failed. The programs `script` starts (`touch`, `cp`, …) exit at once, as
/// they do for a user.
struct Held(Child);

fn held(dir: &Path, script: &str, args: &[&str]) -> Held {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("{script} || exit 1; read -r _ || true"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh");
    Held(child)
}

impl Held {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Closes the shell's stdin and waits (10 s at most) for it to exit.
    fn release(mut self) {
        drop(self.0.stdin.take());
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match self.0.try_wait().expect("wait for sh") {
                Some(st) => return assert!(st.success(), "sh failed: {st}"),
                None if Instant::now() > until => {
                    let _ = self.0.kill();
                    panic!("sh did not exit within 10 s of its stdin closing");
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

/// The actor of a record made by an instant program `name` (started by the shell `parent`):
/// the program when the connector's exec reached `/proc` before it exited, otherwise exactly
/// "exec'd … the program is unknown" — never a guess such as its parent's name.
fn assert_instant(r: &Value, name: &str, parent: u32) {
    let p = &r["actor"]["process"];
    assert_eq!(r["unmapped"]["actor_basis"], "process", "{r:#}");
    match p["name"].as_str() {
        Some(n) => {
            assert_eq!(n, name, "{r:#}");
            if let Some(exe) = p["file"]["path"].as_str() {
                assert!(exe.ends_with(&format!("/{name}")), "{r:#}");
            }
        }
        None => {
            let note = format!(
                "exec'd a program and exited before /proc/{} could be read: the program is unknown",
                p["pid"]
            );
            assert_eq!(r["unmapped"]["actor_note"], note.as_str(), "{r:#}");
        }
    }
    assert_eq!(p["parent_process"]["pid"], parent, "{r:#}");
    assert_eq!(p["parent_process"]["name"], "sh", "{r:#}");
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
    let shell = held(
        &sm,
        ": > from-shell.txt",
        &["--password", "hunter2-never-shipped"],
    );
    d.wait_for("the shell's Create", |r| {
        file_record(r, 1, &shell_file).is_some()
    });
    // A short-lived process: `touch` has exited long before its event is read.
    let touched = sm.join("touched.txt");
    let toucher = held(&sm, "touch touched.txt", &[]);
    d.wait_for("touch's Create", |r| file_record(r, 1, &touched).is_some());
    // A child of a kernel: the stand-in kernel is a shell whose command line names a Jupyter
    // connection file, as ipykernel's does.
    let connection = format!("/home/ec2-user/.local/share/jupyter/runtime/kernel-{KERNEL_ID}.json");
    let from_kernel = sm.join("from-kernel.txt");
    let kernel = held(
        &sm,
        "cp notes.txt from-kernel.txt",
        &["ipykernel_launcher", "-f", &connection],
    );
    d.wait_for("the kernel child's Create", |r| {
        file_record(r, 1, &from_kernel).is_some()
    });
    // A new directory and a file in it, by two processes: the directory's scan may find the
    // file before the file's own event is read; the file is still its writer's, not mkdir's.
    let in_new_dir = sm.join("made/by-sh.txt");
    let maker = held(&sm, "mkdir made && echo x >made/by-sh.txt", &[]);
    d.wait_for("the file in the new directory", |r| {
        file_record(r, 1, &in_new_dir).is_some()
    });
    // Reads: one of a sensitive file, one of a file the globs do not match. The shell then
    // writes a file: once that file's record is in, the reads' events (queued before it) have
    // been read too. Read records themselves come out when their window closes.
    let reads_done = sm.join("reads-done.txt");
    let reader = held(
        &sm,
        "cat data/train.csv notes.txt > /dev/null && : > reads-done.txt",
        &[],
    );
    d.wait_for("the reader's marker file", |r| {
        file_record(r, 1, &reads_done).is_some()
    });
    let pids = [&shell, &toucher, &kernel, &maker, &reader].map(Held::pid);
    for h in [shell, toucher, kernel, maker, reader] {
        h.release();
    }
    let [shell_pid, toucher_pid, kernel_pid, maker_pid, reader_pid] = pids;
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
    let by_shell = find(1, &shell_file);
    assert_eq!(
        by_shell["unmapped"]["actor_basis"], "process",
        "{by_shell:#}"
    );
    let proc_ = &by_shell["actor"]["process"];
    assert_eq!(proc_["pid"], shell_pid, "{by_shell:#}");
    assert_eq!(proc_["name"], "sh", "{by_shell:#}");
    let cmd = proc_["cmd_line"].as_str().unwrap_or_default();
    assert!(
        cmd.starts_with("sh -c") && cmd.contains("REDACTED"),
        "the command line, redacted: {by_shell:#}"
    );
    assert_eq!(proc_["parent_process"]["pid"], me, "{by_shell:#}");
    assert_eq!(proc_["user"]["uid"], "0", "{by_shell:#}");
    assert_eq!(by_shell["actor"]["user"]["name"], "root", "{by_shell:#}");

    assert_instant(find(1, &touched), "touch", toucher_pid);
    assert_instant(find(1, &sm.join("made")), "mkdir", maker_pid);
    let by_sh = find(1, &in_new_dir);
    assert_eq!(by_sh["actor"]["process"]["pid"], maker_pid, "{by_sh:#}");
    assert_eq!(by_sh["actor"]["process"]["name"], "sh", "{by_sh:#}");

    let kid = find(1, &from_kernel);
    assert_instant(kid, "cp", kernel_pid);
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
    assert_instant(read, "cat", reader_pid);
    assert_eq!(read["unmapped"]["read"]["reads"], 1, "{read:#}");
}
