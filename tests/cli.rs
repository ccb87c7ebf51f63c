//! The command line contract: help documents the exit codes, usage errors exit 2, the example
//! config parses.

mod common;

use common::{agent, stdout};

#[test]
fn help_documents_every_command_and_exit_code() {
    let out = agent(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for word in [
        "apply",
        "status",
        "watch",
        "revert",
        "--config",
        "--root",
        "Exit codes",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    for code in [
        "0  success",
        "1  runtime failure",
        "2  bad usage or bad config",
        "3  status:",
        "4  status:",
    ] {
        assert!(
            text.contains(code),
            "--help lacks exit code {code:?}: {text}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(agent(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(agent(&["apply", "--no-such-flag"]).status.code(), Some(2));
    assert_eq!(agent(&[]).status.code(), Some(2));
}

#[test]
fn example_config_parses_and_validates() {
    let path = common::repo().join("packaging/config.example.json");
    let text = std::fs::read_to_string(&path).expect("example config");
    let cfg = notebook_agent::config::parse(&text, &path).expect("example config is valid");
    assert!(cfg.pip.is_some() && cfg.proxy.is_some() && cfg.environment.is_some());
    // Its Debug form (what a log line would show) carries no secret.
    assert!(!format!("{cfg:?}").contains("EXAMPLE-TOKEN"));
}

#[test]
fn version_is_printed() {
    let out = agent(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn status_as_a_normal_user_says_which_checks_need_root() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    common::require_root("run a command as nobody");
    let t = common::TempRoot::amazon_linux();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = common::output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_notebook-agent"))
            .args(["status", "--root", t.path().to_str().expect("utf-8")])
            .env_clear()
            .envs(common::TEST_ENV.iter().copied())
            .env("PATH", "/usr/bin:/bin")
            .uid(65534)
            .gid(65534),
        common::COMMAND_DEADLINE,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("need root"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Root rights"),
        "it still reports what it can"
    );
    assert_ne!(out.status.code(), Some(0), "not evidence of compliance");
}
