//! The Control mechanism end to end through the binary: dry run, apply, idempotence, status,
//! revert; and validation with the real `visudo`, chrooted into a test root.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use common::{agent, stderr, stdout, TempRoot};
use notebook_agent::config;
use notebook_agent::control::apply::{apply, ApplyError};
use notebook_agent::control::{Action, Context, Control, Finding, Plan, Status, Validation};
use notebook_agent::host::{FileSpec, Owner, RealRunner, Root};

/// The mechanism is tested on the pip control alone; root rights have their own tests.
const PIP: &str = r#"{"root_access": {"enabled": false},
  "pip": {"index_url": "https://__token__:s3cr3t-token@mirror.corp/simple",
  "extra_index_urls": ["https://mirror.corp/ml/simple"], "timeout_secs": 30}}"#;

fn root_arg(t: &TempRoot) -> &str {
    t.path().to_str().expect("utf-8")
}

#[test]
fn dry_run_changes_nothing_and_prints_a_redacted_diff() {
    let t = TempRoot::amazon_linux();
    t.install_visudo();
    t.write(
        "etc/pip.conf",
        "[global]\nindex-url = https://pypi.org/simple\n",
        0o644,
    );
    let example = common::repo().join("packaging/config.example.json");
    let before = t.snapshot();
    let out = agent(&[
        "apply",
        "--dry-run",
        "--root",
        root_arg(&t),
        "--config",
        example.to_str().expect("utf-8"),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(before, t.snapshot(), "dry run touched the host");
    assert!(text.contains("--- a/etc/pip.conf"), "{text}");
    assert!(text.contains("+++ b/etc/pip.conf"), "{text}");
    assert!(
        text.contains("-index-url = https://pypi.org/simple"),
        "{text}"
    );
    assert!(
        text.contains("+index-url = https://REDACTED@pypi.mirror.example.com/simple"),
        "{text}"
    );
    assert!(!text.contains("EXAMPLE-TOKEN"), "secret in dry run: {text}");
    assert!(text.contains("nothing was changed"), "{text}");
    // Root rights are on in the example: the sudo grants and group memberships show as diffs.
    assert!(text.contains("-ec2-user ALL=(ALL) NOPASSWD:ALL"), "{text}");
    assert!(
        text.contains("+# notebook-agent removed: %wheel ALL=(ALL) ALL"),
        "{text}"
    );
    assert!(text.contains("-wheel:x:10:ec2-user"), "{text}");
}

#[test]
fn apply_is_idempotent_status_detects_edits_and_revert_restores() {
    let t = TempRoot::amazon_linux();
    t.write("etc/notebook-agent/config.json", PIP, 0o600);
    let original = t.snapshot();
    let r = root_arg(&t);

    let first = agent(&["apply", "--root", r]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    // 3 user directories, /etc/pip.conf, 2 user files, 3 env files.
    assert!(
        stdout(&first).contains("apply: 9 changed"),
        "{}",
        stdout(&first)
    );
    let pip = t.read("etc/pip.conf");
    for loc in [
        "home/ec2-user/.config/pip/pip.conf",
        "home/ec2-user/.pip/pip.conf",
        "home/ec2-user/anaconda3/pip.conf",
        "home/ec2-user/anaconda3/envs/python3/pip.conf",
        "home/ec2-user/anaconda3/envs/JupyterSystemEnv/pip.conf",
    ] {
        assert_eq!(t.read(loc), pip, "{loc}");
        let md = std::fs::metadata(t.join(loc)).expect("stat");
        assert_eq!(
            (md.uid(), md.mode() & 0o7777),
            (0, 0o644),
            "{loc}: root-owned 0644"
        );
    }
    let md = std::fs::metadata(t.join("home/ec2-user/.config")).expect("stat");
    assert_eq!(md.uid(), 1000, "~/.config stays the user's");
    assert!(
        pip.contains("index-url = https://__token__:s3cr3t-token@mirror.corp/simple"),
        "{pip}"
    );
    assert!(
        pip.contains("extra-index-url = https://mirror.corp/ml/simple"),
        "{pip}"
    );
    assert!(pip.contains("timeout = 30"), "{pip}");
    let all = format!("{}{}", stdout(&first), stderr(&first));
    assert!(
        !all.contains("s3cr3t-token"),
        "secret printed by apply: {all}"
    );
    assert!(t.join("var/lib/notebook-agent/state.json").exists());
    let state = t.read("var/lib/notebook-agent/state.json");
    assert!(!state.contains("s3cr3t-token"), "secret in state: {state}");

    let applied = t.snapshot_without(&["var/lib/notebook-agent/state.json"]);
    let second = agent(&["apply", "--root", r]);
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("apply: 0 changed"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        applied,
        t.snapshot_without(&["var/lib/notebook-agent/state.json"])
    );

    let status = agent(&["status", "--root", r]);
    assert_eq!(status.status.code(), Some(0), "{}", stdout(&status));
    assert!(stdout(&status).contains("PASS"), "{}", stdout(&status));

    t.write(
        "etc/pip.conf",
        "[global]\nindex-url = https://pypi.org/simple\n",
        0o644,
    );
    let status = agent(&["status", "--root", r]);
    assert_eq!(status.status.code(), Some(3), "{}", stdout(&status));
    assert!(stdout(&status).contains("FAIL"), "{}", stdout(&status));
    assert!(
        stdout(&status).contains("/etc/pip.conf: contents differ"),
        "{}",
        stdout(&status)
    );

    let json = agent(&["status", "--json", "--root", r]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(v["compliant"], false);
    assert_eq!(v["controls"][0]["status"], "NOT_CONFIGURED");
    assert_eq!(v["controls"][1]["control"], "pip");
    assert_eq!(v["controls"][1]["status"], "FAIL");

    let rev = agent(&["revert", "--root", r]);
    assert_eq!(rev.status.code(), Some(0), "{}", stderr(&rev));
    assert!(stdout(&rev).contains("/etc/pip.conf"), "{}", stdout(&rev));
    assert_eq!(original, t.snapshot_without(&["var"]));
}

/// A control that installs one sudoers drop-in, validated by visudo.
struct Dropin(&'static str);

impl Control for Dropin {
    fn id(&self) -> &'static str {
        "test_dropin"
    }
    fn title(&self) -> &'static str {
        "test drop-in"
    }
    fn plan(&self, _ctx: &Context<'_>) -> Result<Plan, String> {
        Ok(Plan::Actions(vec![Action::Write {
            path: PathBuf::from("/etc/sudoers.d/50-test"),
            spec: FileSpec {
                contents: self.0.as_bytes().to_vec(),
                mode: 0o440,
                owner: Owner::ROOT,
            },
            validation: Some(Validation::Sudoers),
        }]))
    }
    fn check(&self, ctx: &Context<'_>) -> Finding {
        let ok = self
            .plan(ctx)
            .map(|p| p.drift(ctx).is_empty())
            .unwrap_or(false);
        self.finding(if ok { Status::Pass } else { Status::Fail }, "")
    }
}

#[test]
fn real_visudo_in_a_chroot_refuses_a_bad_sudoers_file_before_anything_is_touched() {
    let t = TempRoot::amazon_linux();
    t.install_visudo();
    t.mkdir("etc/sudoers.d");
    let root = Root::new(t.path()).expect("root");
    let cfg = config::parse("{}", std::path::Path::new("test.json")).expect("config");
    let runner = RealRunner::new(root.clone());
    let ctx = Context::new(&root, &cfg, &runner).expect("context");

    let before = t.snapshot();
    let controls: Vec<Box<dyn Control>> =
        vec![Box::new(Dropin("ec2-user ALL=(ALL NOPASSWD: ALL\n"))];
    let err = apply(&ctx, &controls).expect_err("visudo refuses");
    assert!(matches!(err, ApplyError::Validation(_)), "{err}");
    assert!(
        err.to_string().contains("syntax error"),
        "visudo's message is passed on: {err}"
    );
    assert_eq!(before, t.snapshot(), "nothing touched");

    let controls: Vec<Box<dyn Control>> = vec![Box::new(Dropin("Defaults:ec2-user !requiretty\n"))];
    let report = apply(&ctx, &controls).expect("valid file is installed");
    assert_eq!(report.changed(), 1);
    assert_eq!(
        t.read("etc/sudoers.d/50-test"),
        "Defaults:ec2-user !requiretty\n"
    );
}

/// Answers every command with success and records, for each, which of the agent's service files
/// existed at that moment.
struct ServiceRunner {
    root: PathBuf,
    calls: std::sync::Mutex<Vec<(String, bool)>>,
}

impl notebook_agent::host::CommandRunner for ServiceRunner {
    fn run(
        &self,
        cmd: &notebook_agent::host::HostCommand,
    ) -> Result<notebook_agent::host::CommandOutput, notebook_agent::host::command::CommandError>
    {
        let all_written = [
            "etc/profile.d/notebook-agent-proxy.sh",
            "etc/systemd/system/jupyter-server.service.d/notebook-agent-proxy.conf",
            "etc/systemd/system/jupyter-server.service.d/notebook-agent-environment.conf",
        ]
        .iter()
        .all(|f| self.root.join(f).exists());
        self.calls
            .lock()
            .expect("lock")
            .push((cmd.to_string(), all_written));
        Ok(notebook_agent::host::CommandOutput {
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
        })
    }
}

/// Regression: the root-rights control asked for the jupyter-server restart before the proxy
/// control had written its files, so Jupyter could come back without the proxy.
#[test]
fn service_commands_run_after_every_control_wrote_its_files_reload_first_once_each() {
    let t = TempRoot::amazon_linux();
    t.mkdir("run/systemd/system");
    t.write(
        "etc/systemd/system/jupyter-server.service",
        "[Service]\nExecStart=/bin/true\n",
        0o644,
    );
    let root = Root::new(t.path()).expect("root");
    let cfg = config::parse(
        r#"{"proxy": {"http": "http://proxy.corp:3128"},
            "environment": {"subnets": ["subnet-0123abcd"]}}"#,
        std::path::Path::new("test.json"),
    )
    .expect("config");
    let runner = ServiceRunner {
        root: t.path().to_path_buf(),
        calls: std::sync::Mutex::new(Vec::new()),
    };
    let ctx = Context::new(&root, &cfg, &runner).expect("context");
    apply(&ctx, &notebook_agent::harden::all()).expect("apply");
    let calls = runner.calls.lock().expect("lock").clone();
    let systemctl: Vec<&(String, bool)> = calls
        .iter()
        .filter(|(c, _)| c.starts_with("systemctl"))
        .collect();
    assert_eq!(
        systemctl
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>(),
        [
            "systemctl daemon-reload",
            "systemctl --no-block restart jupyter-server.service"
        ],
        "{calls:?}"
    );
    assert!(
        systemctl.iter().all(|(_, written)| *written),
        "a service command ran before every file was written: {calls:?}"
    );
}
