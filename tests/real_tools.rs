//! The hardening controls against the real tools of a notebook root filesystem (real sudo with PAM,
//! su, visudo, python venvs with pip), chrooted: the production path of every host command.

mod common;

use common::{agent, stderr, stdout, NotebookRoot};

fn out(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

#[test]
fn real_sudo_works_before_apply_and_not_after() {
    let nb = NotebookRoot::new();
    let before = nb.sh("su ec2-user -c 'sudo -n true' && echo SUDO-OK; id -nG ec2-user");
    let text = out(&before);
    assert!(
        text.contains("SUDO-OK"),
        "baseline: ec2-user has passwordless sudo: {text}"
    );
    assert!(text.contains("wheel") && text.contains("docker"), "{text}");

    nb.write("etc/notebook-agent/config.json", "{}", 0o600);
    let apply = agent(&["apply", "--root", nb.arg()]);
    assert_eq!(apply.status.code(), Some(0), "{}", out(&apply));
    let status = agent(&["status", "--root", nb.arg()]);
    assert_eq!(status.status.code(), Some(0), "{}", out(&status));
    assert!(
        stdout(&status).contains("sudo -l -U ec2-user: not allowed"),
        "the check asks the real sudo: {}",
        stdout(&status)
    );

    let after = nb.sh("su ec2-user -c 'sudo -n true' && echo SUDO-OK; echo; id -nG ec2-user");
    let text = out(&after);
    assert!(!text.contains("SUDO-OK"), "ec2-user still has sudo: {text}");
    assert!(
        text.contains("a password is required")
            || text.contains("not allowed")
            || text.contains("may not run sudo"),
        "{text}"
    );
    let groups = text.lines().last().unwrap_or_default().to_string();
    assert!(
        !groups.contains("wheel") && !groups.contains("docker"),
        "{groups}"
    );
    // Lifecycle scripts still run as root afterwards.
    let root = nb.sh("sudo -n true && echo ROOT-OK");
    assert!(out(&root).contains("ROOT-OK"), "{}", out(&root));
}

#[test]
fn a_sudoers_edit_visudo_refuses_is_never_installed() {
    let nb = NotebookRoot::new();
    // A drop-in that grants ec2-user and also has a line visudo rejects: taking the grant out
    // leaves an invalid file, which must never replace the old one.
    nb.write(
        "etc/sudoers.d/50-team",
        "ec2-user ALL=(ALL) NOPASSWD:ALL\nDefaults:ec2-user !requiretty,\n",
        0o440,
    );
    nb.write("etc/notebook-agent/config.json", "{}", 0o600);
    let files = [
        "etc/sudoers",
        "etc/sudoers.d/50-team",
        "etc/sudoers.d/90-cloud-init-users",
        "etc/group",
    ];
    let read = |f: &str| std::fs::read(nb.path().join(f)).unwrap_or_default();
    let before: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    let apply = agent(&["apply", "--root", nb.arg()]);
    assert_eq!(apply.status.code(), Some(1), "{}", out(&apply));
    let err = stderr(&apply);
    assert!(
        err.contains("/etc/sudoers.d/50-team") && err.contains("visudo"),
        "{err}"
    );
    assert!(
        err.contains("syntax error"),
        "visudo's own message is passed on: {err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    let after: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    assert_eq!(before, after, "the host is unchanged");
}

#[test]
fn real_pip_in_every_env_sees_the_mirror() {
    let nb = NotebookRoot::new();
    nb.write(
        "etc/notebook-agent/config.json",
        r#"{"pip": {"index_url": "https://mirror.corp/simple", "trusted_hosts": ["mirror.corp"]}}"#,
        0o600,
    );
    let apply = agent(&["apply", "--root", nb.arg()]);
    assert_eq!(apply.status.code(), Some(0), "{}", out(&apply));
    for env in [
        "anaconda3",
        "anaconda3/envs/python3",
        "anaconda3/envs/JupyterSystemEnv",
    ] {
        let py = format!("/home/ec2-user/{env}/bin/python");
        // As the notebook user, in a login shell and in a non-login shell.
        for shell in ["su -l ec2-user -c", "su ec2-user -s /bin/bash -c"] {
            let o = nb.sh(&format!("{shell} '{py} -m pip config list'"));
            let text = out(&o);
            assert!(
                text.contains("index-url='https://mirror.corp/simple'"),
                "{env} via {shell}: {text}"
            );
            assert!(
                text.contains("site.index-url") || text.contains("global.index-url"),
                "{text}"
            );
        }
        // The user cannot change the env's pip.conf.
        let o = nb.sh(&format!(
            "su ec2-user -c 'echo x >> /home/ec2-user/{env}/pip.conf' 2>&1; echo rc=$?"
        ));
        assert!(out(&o).contains("Permission denied"), "{env}: {}", out(&o));
    }
}
