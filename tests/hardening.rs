//! The hardening controls on the Amazon-Linux-shaped temp root: root rights (on by default), pip,
//! proxy; idempotence, status evidence when a control is broken, revert.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use common::{agent, stderr, stdout, TempRoot};

fn root_arg(t: &TempRoot) -> &str {
    t.path().to_str().expect("utf-8")
}

fn fixture(config: &str) -> TempRoot {
    let t = TempRoot::amazon_linux();
    t.install_visudo();
    t.write("etc/notebook-agent/config.json", config, 0o600);
    t
}

/// Paths whose description differs between two snapshots.
fn changed(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .filter(|k| !k.starts_with("var"))
        .cloned()
        .collect()
}

#[test]
fn empty_config_removes_root_rights_and_changes_nothing_else() {
    let t = fixture("{}");
    let before = t.snapshot();
    let status = agent(&["status", "--root", root_arg(&t)]);
    assert_eq!(status.status.code(), Some(3), "{}", stdout(&status));
    let text = stdout(&status);
    assert!(text.contains("ec2-user is in wheel, docker"), "{text}");
    assert!(
        text.contains("/etc/sudoers.d/90-cloud-init-users:2 grants ec2-user"),
        "{text}"
    );
    assert!(text.contains("/etc/sudoers:3 grants ec2-user"), "{text}");

    let out = agent(&["apply", "--root", root_arg(&t)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let after = t.snapshot();
    assert_eq!(
        changed(&before, &after),
        [
            "etc/group",
            "etc/sudoers",
            "etc/sudoers.d/90-cloud-init-users"
        ],
        "only the sudo grants and group memberships change"
    );
    assert!(
        !t.join("etc/sudoers.d/90-cloud-init-users").exists(),
        "inert drop-in removed"
    );
    let sudoers = t.read("etc/sudoers");
    assert!(
        sudoers.contains("# notebook-agent removed: %wheel ALL=(ALL) ALL"),
        "{sudoers}"
    );
    assert!(sudoers.contains("root ALL=(ALL) ALL\n"), "{sudoers}");
    let md = std::fs::metadata(t.join("etc/sudoers")).expect("stat");
    assert_eq!(md.mode() & 0o7777, 0o440, "sudoers keeps its mode");
    let group = t.read("etc/group");
    assert!(
        group.contains("wheel:x:10:\n") && group.contains("docker:x:992:\n"),
        "{group}"
    );

    let status = agent(&["status", "--root", root_arg(&t)]);
    assert_eq!(status.status.code(), Some(0), "{}", stdout(&status));
    assert!(
        stdout(&status).contains("ec2-user groups: ec2-user"),
        "{}",
        stdout(&status)
    );

    let again = agent(&["apply", "--root", root_arg(&t)]);
    assert!(
        stdout(&again).contains("apply: 0 changed"),
        "{}",
        stdout(&again)
    );
    assert!(changed(&after, &t.snapshot()).is_empty());

    let rev = agent(&["revert", "--root", root_arg(&t)]);
    assert_eq!(rev.status.code(), Some(0), "{}", stderr(&rev));
    assert!(
        changed(&before, &t.snapshot()).is_empty(),
        "revert restores every byte"
    );
}

/// (what, how to break it, the evidence status must show)
type Breakage = (&'static str, fn(&TempRoot), &'static str);

#[test]
fn each_broken_control_fails_status_with_evidence() {
    let cfg = r#"{"pip": {"index_url": "https://mirror.corp/simple"},
                  "proxy": {"http": "http://proxy.corp:3128", "no_proxy": [".amazonaws.com"]}}"#;
    let breakages: &[Breakage] = &[
        (
            "sudoers drop-in re-added",
            |t| {
                t.write(
                    "etc/sudoers.d/99-sneaky",
                    "ec2-user ALL=(ALL) NOPASSWD:ALL\n",
                    0o440,
                )
            },
            "/etc/sudoers.d/99-sneaky:1 grants ec2-user",
        ),
        (
            "user re-added to docker",
            |t| {
                let g = t
                    .read("etc/group")
                    .replace("docker:x:992:", "docker:x:992:ec2-user");
                t.write("etc/group", &g, 0o644);
            },
            "ec2-user is in docker",
        ),
        (
            "pip.conf edited",
            |t| {
                t.write(
                    "home/ec2-user/anaconda3/envs/python3/pip.conf",
                    "[global]\nindex-url = https://pypi.org/simple\n",
                    0o644,
                )
            },
            "/home/ec2-user/anaconda3/envs/python3/pip.conf: contents differ",
        ),
        (
            "profile.d file removed",
            |t| std::fs::remove_file(t.join("etc/profile.d/notebook-agent-proxy.sh")).expect("rm"),
            "/etc/profile.d/notebook-agent-proxy.sh: missing",
        ),
    ];
    for (what, breakage, evidence) in breakages {
        let t = fixture(cfg);
        let out = agent(&["apply", "--root", root_arg(&t)]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{what}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let ok = agent(&["status", "--root", root_arg(&t)]);
        assert_eq!(ok.status.code(), Some(0), "{what}: {}", stdout(&ok));
        breakage(&t);
        let status = agent(&["status", "--root", root_arg(&t)]);
        let text = stdout(&status);
        assert_eq!(status.status.code(), Some(3), "{what}: {text}");
        assert!(text.contains("FAIL"), "{what}: {text}");
        assert!(
            text.contains(evidence),
            "{what}: lacks {evidence:?}: {text}"
        );
        // And apply repairs it.
        let repair = agent(&["apply", "--root", root_arg(&t)]);
        assert_eq!(repair.status.code(), Some(0), "{what}: {}", stderr(&repair));
        let status = agent(&["status", "--root", root_arg(&t)]);
        assert_eq!(
            status.status.code(),
            Some(0),
            "{what} after repair: {}",
            stdout(&status)
        );
    }
}

#[test]
fn proxy_reaches_every_tool_and_no_proxy_always_has_loopback_and_imds() {
    let cfg = r#"{"root_access": {"enabled": false},
        "pip": {"index_url": "https://mirror.corp/simple"},
        "proxy": {"http": "http://bob:pa%25ss'w@proxy.corp:3128", "no_proxy": [".amazonaws.com", "localhost"]}}"#;
    let t = fixture(cfg);
    t.write(
        "etc/bashrc",
        "# System-wide .bashrc\nalias ll='ls -l'\n",
        0o644,
    );
    t.write("etc/gitconfig", "[core]\n\tautocrlf = false\n", 0o644);
    t.mkdir("etc/systemd/system");
    t.write(
        "etc/systemd/system/jupyter-server.service",
        "[Service]\nExecStart=/bin/true\n",
        0o644,
    );
    // systemd "runs" in this root: units are reloaded and Jupyter restarted.
    t.mkdir("run/systemd/system");
    let out = agent(&["apply", "--root", root_arg(&t)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !all.contains("pa%25ss") && !all.contains("bob"),
        "credentials printed: {all}"
    );

    let url = "http://bob:pa%25ss'w@proxy.corp:3128";
    let no_proxy = "127.0.0.1,localhost,169.254.169.254,.amazonaws.com";
    let profile = t.read("etc/profile.d/notebook-agent-proxy.sh");
    for k in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"] {
        assert!(
            profile.contains(&format!(
                "export {k}='http://bob:pa%25ss'\\''w@proxy.corp:3128'"
            )),
            "{profile}"
        );
    }
    assert!(
        profile.contains(&format!("export no_proxy='{no_proxy}'")),
        "{profile}"
    );
    // The shell reads it back exactly.
    let sh = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            ". {}; printf '%s\\n' \"$https_proxy\" \"$NO_PROXY\"",
            t.join("etc/profile.d/notebook-agent-proxy.sh").display()
        ))
        .output()
        .expect("sh");
    assert_eq!(
        String::from_utf8_lossy(&sh.stdout),
        format!("{url}\n{no_proxy}\n")
    );

    let bashrc = t.read("etc/bashrc");
    assert!(
        bashrc.starts_with("# System-wide .bashrc\nalias ll='ls -l'\n"),
        "{bashrc}"
    );
    assert!(
        bashrc.contains(". /etc/profile.d/notebook-agent-proxy.sh"),
        "{bashrc}"
    );
    let git = t.read("etc/gitconfig");
    assert!(git.starts_with("[core]\n\tautocrlf = false\n"), "{git}");
    assert!(
        git.contains("[https]\n\tproxy = \"http://bob:pa%25ss'w@proxy.corp:3128\""),
        "{git}"
    );
    let dropin = t.read("etc/systemd/system/jupyter-server.service.d/notebook-agent-proxy.conf");
    assert!(
        dropin.contains("Environment=\"https_proxy=http://bob:pa%%25ss'w@proxy.corp:3128\""),
        "{dropin}"
    );
    let conda = t.read("etc/conda/condarc.d/notebook-agent-proxy.yml");
    assert!(conda.contains("proxy_servers: #!final"), "{conda}");
    let pip = t.read("etc/pip.conf");
    assert!(pip.contains(&format!("proxy = {url}")), "{pip}");
    let ipy = t.read("home/ec2-user/.ipython/profile_default/startup/00-notebook-agent-proxy.py");
    assert!(
        ipy.contains(&format!("os.environ[\"NO_PROXY\"] = \"{no_proxy}\"")),
        "{ipy}"
    );
    // Python reads the startup file's values back exactly.
    let py = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            "exec(open({:?}).read()); import os; print(os.environ['HTTPS_PROXY'])",
            t.join("home/ec2-user/.ipython/profile_default/startup/00-notebook-agent-proxy.py")
        ))
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&py.stdout),
        format!("{url}\n"),
        "{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let md = std::fs::metadata(t.join("home/ec2-user/.ipython")).expect("stat");
    assert_eq!(md.uid(), 1000, "~/.ipython stays the user's");

    // Jupyter's restart was asked for once, though two of its inputs changed (systemctl is not
    // in this temp root, so it is reported as failed there; the sandbox runs it for real).
    assert_eq!(
        stdout(&out)
            .matches("systemctl --no-block restart jupyter-server.service")
            .count(),
        1,
        "{}",
        stdout(&out)
    );

    let status = agent(&["status", "--root", root_arg(&t)]);
    assert_eq!(status.status.code(), Some(0), "{}", stdout(&status));
    assert!(!stdout(&status).contains("pa%25ss"), "{}", stdout(&status));
}

#[test]
fn all_four_controls_pass_reapply_changes_nothing_and_revert_is_byte_identical() {
    let cfg = r#"{"pip": {"index_url": "https://mirror.corp/simple", "conda_channels": ["https://mirror.corp/conda"]},
                  "proxy": {"http": "http://proxy.corp:3128", "no_proxy": [".amazonaws.com"]},
                  "environment": {"subnets": ["subnet-0123abcd"], "security_groups": ["sg-0123abcd"],
                                  "kms_key_id": "alias/ml", "extra": {"TEAM": "ml"}}}"#;
    let t = fixture(cfg);
    let original = t.snapshot();
    let first = agent(&["apply", "--root", root_arg(&t)]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let status = agent(&["status", "--root", root_arg(&t)]);
    let text = stdout(&status);
    assert_eq!(status.status.code(), Some(0), "{text}");
    for row in [
        "Root rights",
        "pip mirror",
        "Proxy",
        "sagemaker_environment.py",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(row))
            .unwrap_or_else(|| panic!("no {row} row: {text}"));
        assert!(line.contains("PASS"), "{line}");
    }
    let applied = t.snapshot_without(&["var"]);
    let second = agent(&["apply", "--root", root_arg(&t)]);
    assert!(
        stdout(&second).contains("apply: 0 changed"),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        changed(&applied, &t.snapshot_without(&["var"])),
        Vec::<String>::new()
    );
    let revert = agent(&["revert", "--root", root_arg(&t)]);
    assert_eq!(revert.status.code(), Some(0), "{}", stderr(&revert));
    assert_eq!(
        changed(&original, &t.snapshot()),
        Vec::<String>::new(),
        "revert: {}",
        stdout(&revert)
    );
}
