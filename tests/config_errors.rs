//! Bad configs: every one exits 2 with a message naming the JSON path, and the host is left
//! byte-identical.

mod common;

use common::{agent, stderr, TempRoot};

/// (what, config text, substrings the message must contain)
const CASES: &[(&str, &str, &[&str])] = &[
    ("truncated JSON", r#"{"pip": "#, &["line 1"]),
    ("not an object", r#"[1, 2]"#, &["invalid type"]),
    (
        "trailing comma",
        r#"{"drift": {"reapply": true,}}"#,
        &["trailing comma at line 1 column 28"],
    ),
    ("unknown top-level key", r#"{"prxy": {}}"#, &["prxy"]),
    (
        "unknown nested key",
        r#"{"proxy": {"htps": "http://p:3128"}}"#,
        &["proxy", "htps"],
    ),
    (
        "bool as string",
        r#"{"root_access": {"enabled": "yes"}}"#,
        &["root_access.enabled"],
    ),
    (
        "list as string",
        r#"{"proxy": {"http": "http://p:3128", "no_proxy": "a,b"}}"#,
        &["proxy.no_proxy"],
    ),
    (
        "negative number",
        r#"{"audit": {"heartbeat_secs": -1}}"#,
        &["audit.heartbeat_secs"],
    ),
    (
        "not a URL",
        r#"{"proxy": {"https": "not a url"}}"#,
        &["proxy.https", "not a URL"],
    ),
    (
        "ftp index",
        r#"{"pip": {"index_url": "ftp://mirror.corp/simple"}}"#,
        &["pip.index_url", "scheme"],
    ),
    (
        "proxy with a path",
        r#"{"proxy": {"http": "http://p:3128/x"}}"#,
        &["proxy.http"],
    ),
    (
        "proxy without URLs",
        r#"{"proxy": {"no_proxy": [".corp"]}}"#,
        &["proxy: set at least one"],
    ),
    (
        "short vpc id",
        r#"{"environment": {"vpc": "vpc-123"}}"#,
        &["environment.vpc"],
    ),
    (
        "subnet with Python injection",
        r#"{"environment": {"subnets": ["subnet-0123abcd", "subnet-1'; import os; os.system('touch pwned') #"]}}"#,
        &["environment.subnets[1]"],
    ),
    (
        "subnet with a newline",
        r#"{"environment": {"subnets": ["subnet-0123abcd\nX = 1"]}}"#,
        &["environment.subnets[0]"],
    ),
    (
        "upper-case sg",
        r#"{"environment": {"security_groups": ["sg-0123ABCD"]}}"#,
        &["environment.security_groups[0]"],
    ),
    (
        "bad KMS key",
        r#"{"environment": {"kms_key_id": "my-key"}}"#,
        &["environment.kms_key_id"],
    ),
    (
        "bad bucket",
        r#"{"environment": {"data_bucket": "My_Bucket"}}"#,
        &["environment.data_bucket"],
    ),
    (
        "extra key not an identifier",
        r#"{"environment": {"extra": {"1abc": "x"}}}"#,
        &["environment.extra.1abc"],
    ),
    (
        "bad IMDS endpoint",
        r#"{"environment": {"imds_endpoint": "169.254.169.254"}}"#,
        &["environment.imds_endpoint"],
    ),
    (
        "retention 4",
        r#"{"audit": {"retention_days": 4}}"#,
        &["audit.retention_days"],
    ),
    (
        "retention 0",
        r#"{"audit": {"retention_days": 0}}"#,
        &["audit.retention_days"],
    ),
    (
        "relative audit path",
        r#"{"audit": {"paths": ["SageMaker"]}}"#,
        &["audit.paths[0]", "absolute"],
    ),
    (
        "audit path with ..",
        r#"{"audit": {"paths": ["/home/ec2-user/../../etc"]}}"#,
        &["audit.paths[0]"],
    ),
    (
        "relative spool dir",
        r#"{"audit": {"spool_dir": "spool"}}"#,
        &["audit.spool_dir"],
    ),
    (
        "relative CA bundle",
        r#"{"pip": {"index_url": "https://m.corp/simple", "cert": "ca.pem"}}"#,
        &["pip.cert"],
    ),
    (
        "bad region",
        r#"{"audit": {"region": "useast1"}}"#,
        &["audit.region"],
    ),
    (
        "colon in stream",
        r#"{"audit": {"log_stream": "a:b"}}"#,
        &["audit.log_stream"],
    ),
    (
        "unknown placeholder",
        r#"{"audit": {"log_stream": "{nb}/audit"}}"#,
        &["audit.log_stream", "placeholder"],
    ),
    (
        "log group KMS alias",
        r#"{"audit": {"kms_key_id": "alias/logs"}}"#,
        &["audit.kms_key_id"],
    ),
    (
        "bad user name",
        r#"{"user": {"name": "Ec2 User"}}"#,
        &["user.name"],
    ),
    (
        "tiny spool",
        r#"{"audit": {"spool_max_bytes": 10}}"#,
        &["audit.spool_max_bytes"],
    ),
    (
        "zero pip timeout",
        r#"{"pip": {"index_url": "https://m.corp/simple", "timeout_secs": 0}}"#,
        &["pip.timeout_secs"],
    ),
    (
        "bad trusted host",
        r#"{"pip": {"index_url": "https://m.corp/simple", "trusted_hosts": ["m.corp:99999"]}}"#,
        &["pip.trusted_hosts[0]"],
    ),
    (
        "bad no_proxy",
        r#"{"proxy": {"http": "http://p:3128", "no_proxy": ["10.0.0.0/33"]}}"#,
        &["proxy.no_proxy[0]"],
    ),
    (
        "slash in exclude",
        r#"{"audit": {"excludes": ["a/b"]}}"#,
        &["audit.excludes[0]"],
    ),
    (
        "bad root group",
        r#"{"root_access": {"groups": ["wheel", "Docker"]}}"#,
        &["root_access.groups[1]"],
    ),
    // Issue 13: documents that are not exactly one object with object sections.
    (
        "empty array as the document",
        r#"[]"#,
        &["(document)", "expected an object"],
    ),
    ("trailing data", r#"{} xyz"#, &["trailing characters"]),
    (
        "two documents",
        r#"{}{"audit": {"enabled": false}}"#,
        &["trailing characters"],
    ),
    (
        "audit section as an array",
        r#"{"audit": [false]}"#,
        &["audit", "invalid type: an array, expected an object"],
    ),
    (
        "root_access section as an array",
        r#"{"root_access": [false]}"#,
        &["root_access", "expected an object"],
    ),
    (
        "duplicate section",
        r#"{"audit": {"enabled": true}, "audit": {"enabled": false}}"#,
        &["duplicate key"],
    ),
    // Issue 13: every type error and unknown key in one pass.
    (
        "two type errors and an unknown key",
        r#"{"pip": {"index_url": "https://m.corp/simple", "timeout_secs": "60"}, "environment": {"discover": "yes"}, "prxy": {}}"#,
        &[
            "3 problems",
            "pip.timeout_secs: invalid type: a string",
            "environment.discover: invalid type: a string",
            "prxy: unknown key",
        ],
    ),
    (
        "type errors together with value errors",
        r#"{"audit": {"enabled": "no", "retention_days": 4}, "environment": {"vpc": "x"}}"#,
        &[
            "3 problems",
            "audit.enabled",
            "audit.retention_days",
            "environment.vpc",
        ],
    ),
    // Issue 13: control characters in strings that reach generated files.
    (
        "DEL in a proxy URL",
        r#"{"proxy": {"http": "http://p.corp:3128\u007f"}}"#,
        &["proxy.http", "U+007F"],
    ),
    (
        "C1 control in a conda channel",
        r#"{"pip": {"index_url": "https://m.corp/simple", "conda_channels": ["main\u0085"]}}"#,
        &["pip.conda_channels[0]", "U+0085"],
    ),
    (
        "U+FFFE in the CA bundle path",
        r#"{"pip": {"index_url": "https://m.corp/simple", "cert": "/etc/ca\ufffe.pem"}}"#,
        &["pip.cert", "U+FFFE"],
    ),
    (
        "ESC in an extra value",
        r#"{"environment": {"extra": {"TEAM": "a\u001b[2Jb"}}}"#,
        &["environment.extra.TEAM", "U+001B"],
    ),
    (
        "U+FFFF in a no_proxy entry",
        r#"{"proxy": {"http": "http://p:3128", "no_proxy": [".corp\uffff"]}}"#,
        &["proxy.no_proxy[0]", "U+FFFF"],
    ),
    // Issue 13: the notebook user is a login user with their own home.
    (
        "user root",
        r#"{"user": {"name": "root"}}"#,
        &["user.name", "(uid 0)"],
    ),
    (
        "home /root",
        r#"{"user": {"home": "/root"}}"#,
        &["user.home", "/root"],
    ),
    ("home /etc", r#"{"user": {"home": "/etc"}}"#, &["user.home"]),
    ("home /", r#"{"user": {"home": "/"}}"#, &["user.home"]),
    (
        "home not the user's",
        r#"{"user": {"home": "/home/someone-else"}}"#,
        &["user.home", "/etc/passwd"],
    ),
    // Issue 15: the opt-in read audit.
    (
        "read audit without globs",
        r#"{"audit": {"reads": {}}}"#,
        &["audit.reads.globs", "is required"],
    ),
    (
        "read audit with bad globs and window",
        r#"{"audit": {"reads": {"globs": ["/etc/*", "a/../b"], "window_secs": 1, "summary_after": 0}}}"#,
        &[
            "4 problems",
            "audit.reads.globs[0]",
            "audit.reads.globs[1]",
            "audit.reads.window_secs",
            "audit.reads.summary_after",
        ],
    ),
    (
        "read audit as a list",
        r#"{"audit": {"reads": ["*.csv"]}}"#,
        &["audit.reads"],
    ),
    (
        "every problem is listed",
        r#"{"environment": {"vpc": "x", "subnets": ["y"]}, "audit": {"retention_days": 4}}"#,
        &[
            "3 problems",
            "environment.vpc",
            "environment.subnets[0]",
            "audit.retention_days",
        ],
    ),
];

#[test]
fn malformed_configs_exit_2_naming_the_json_path_and_change_nothing() {
    assert!(CASES.len() >= 20);
    for (what, text, expect) in CASES {
        let root = TempRoot::amazon_linux();
        root.write("etc/notebook-agent/config.json", text, 0o600);
        let before = root.snapshot();
        for cmd in [&["apply"][..], &["apply", "--dry-run"], &["status"]] {
            let mut args = cmd.to_vec();
            let r = root.path().to_str().expect("utf-8");
            args.extend(["--root", r]);
            let out = agent(&args);
            let err = stderr(&out);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{what} ({cmd:?}): exit code; stderr: {err}"
            );
            for e in *expect {
                assert!(
                    err.contains(e),
                    "{what} ({cmd:?}): message lacks {e:?}: {err}"
                );
            }
            assert!(
                err.contains("config.json"),
                "{what}: message names the file: {err}"
            );
        }
        assert_eq!(before, root.snapshot(), "{what}: the host changed");
    }
}

#[test]
fn secrets_never_appear_in_config_errors() {
    let root = TempRoot::amazon_linux();
    let cases = [
        r#"{"proxy": {"https": "http://alice:hunter2@proxy.corp:3128/path"}}"#,
        r#"{"proxy": {"https": "http://alice:hunter2@proxy.corp:3128", "no_proxy": "x"}}"#,
        r#"{"pip": {"index_url": "https://hunter2@mirror corp/simple"}}"#,
        r#"{"pip": {"index_url": 7, "extra_index_urls": ["https://u:hunter2@m/simple"]}}"#,
    ];
    for text in cases {
        root.write("etc/notebook-agent/config.json", text, 0o600);
        let out = agent(&["apply", "--root", root.path().to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(2));
        let all = format!("{}{}", stderr(&out), common::stdout(&out));
        assert!(!all.contains("hunter2"), "secret printed: {all}");
    }
}

/// Issue 13: a credential URL pasted into a field that is not a URL was echoed in the exit-2
/// message (`proxy.no_proxy[0]: "http://u:pw@p:3128" is not a CIDR`), and on-start's output is
/// shipped to CloudWatch.
#[test]
fn credential_urls_in_any_field_are_never_echoed() {
    let root = TempRoot::amazon_linux();
    let url = "http://u:hunter2@p.corp:3128";
    let cases = [
        ("proxy.no_proxy[0]", format!(r#"{{"proxy": {{"http": "http://p:3128", "no_proxy": ["{url}"]}}}}"#)),
        ("pip.trusted_hosts[0]", format!(r#"{{"pip": {{"index_url": "https://m.corp/simple", "trusted_hosts": ["{url}"]}}}}"#)),
        ("environment.vpc", format!(r#"{{"environment": {{"vpc": "{url}"}}}}"#)),
        ("environment.subnets[0]", format!(r#"{{"environment": {{"subnets": ["{url}"]}}}}"#)),
        ("audit.region", format!(r#"{{"audit": {{"region": "{url}"}}}}"#)),
        ("audit.log_stream", format!(r#"{{"audit": {{"log_stream": "{url}"}}}}"#)),
        ("audit.excludes[0]", format!(r#"{{"audit": {{"excludes": ["a/{url}"]}}}}"#)),
        ("user.home", format!(r#"{{"user": {{"home": "{url}"}}}}"#)),
        ("pip.conda_channels[0]", r#"{"pip": {"index_url": "https://m.corp/simple", "conda_channels": ["https://u:hunter2@c corp/main"]}}"#.to_string()),
        ("proxy.https", r#"{"proxy": {"https": "http://u:hunter2@p.corp:3128/path"}}"#.to_string()),
        ("prxy", r#"{"prxy": {"http://u:hunter2@p.corp:3128": 1}}"#.to_string()),
    ];
    for (path, text) in cases {
        root.write("etc/notebook-agent/config.json", &text, 0o600);
        let out = agent(&[
            "apply",
            "--dry-run",
            "--root",
            root.path().to_str().expect("utf-8"),
        ]);
        let all = format!("{}{}", stderr(&out), common::stdout(&out));
        assert_eq!(out.status.code(), Some(2), "{path}: {all}");
        assert!(all.contains(path), "{path}: not named: {all}");
        assert!(!all.contains("hunter2"), "{path}: secret printed: {all}");
    }
}

/// Issue 13: `user.name` of a system account applied cleanly and status said Root rights PASS
/// while ec2-user kept `NOPASSWD: ALL`.
#[test]
fn system_accounts_are_not_the_notebook_user() {
    let root = TempRoot::amazon_linux();
    root.write(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\n\
         daemon:x:2:2:daemon:/sbin:/sbin/nologin\n\
         ec2-user:x:1000:1000:EC2 Default User:/home/ec2-user:/bin/bash\n\
         svc:x:1500:1500::/var/lib/svc:/bin/bash\n\
         lowuid:x:700:700::/home/lowuid:/bin/bash\n\
         nobody:x:65534:65534:Kernel Overflow User:/:/sbin/nologin\n",
        0o644,
    );
    root.write("etc/login.defs", "UID_MIN 500\nUID_MAX 60000\n", 0o644);
    let r = root.path().to_str().expect("utf-8");
    for (name, expect) in [
        ("daemon", "uid 2"),
        ("nobody", "uid 65534"),
        ("svc", "system directory /var"),
    ] {
        root.write(
            "etc/notebook-agent/config.json",
            &format!(r#"{{"user": {{"name": "{name}"}}}}"#),
            0o600,
        );
        let before = root.snapshot();
        let out = agent(&["apply", "--root", r]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains("user.name"), "{}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{name}: {}", stderr(&out));
        assert_eq!(before, root.snapshot(), "{name}: the host changed");
    }
    // UID_MIN comes from the root's login.defs: 700 is a login user with UID_MIN 500.
    root.write(
        "etc/notebook-agent/config.json",
        r#"{"user": {"name": "lowuid"}, "audit": {"enabled": false}}"#,
        0o600,
    );
    let out = agent(&["status", "--root", r]);
    assert_ne!(out.status.code(), Some(2), "{}", stderr(&out));
    root.write("etc/login.defs", "UID_MIN 1000\n", 0o644);
    let out = agent(&["status", "--root", r]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("uid 700"), "{}", stderr(&out));
}

/// Issue 13: 100,000 `no_proxy` entries were accepted, took half a minute to apply and exported a
/// 1.9 MB variable after which every command in a login shell failed with E2BIG.
#[test]
fn oversized_lists_and_values_are_refused() {
    let root = TempRoot::amazon_linux();
    let r = root.path().to_str().expect("utf-8");
    let many: Vec<String> = (0..10_000).map(|i| format!("h{i}.corp")).collect();
    let huge: Vec<String> = (0..100_000).map(|i| format!("h{i}.corp")).collect();
    let long: Vec<String> = (0..200)
        .map(|i| format!("host-number-{i:04}.example.corp"))
        .collect();
    let cases = [
        (
            serde_json::json!({"proxy": {"http": "http://p:3128", "no_proxy": many}}),
            &["proxy.no_proxy", "at most 256"][..],
        ),
        (
            serde_json::json!({"proxy": {"http": "http://p:3128", "no_proxy": huge}}),
            &["config.json", "larger than 1048576 bytes"][..],
        ),
        (
            serde_json::json!({"proxy": {"http": "http://p:3128", "no_proxy": long}}),
            &["proxy.no_proxy", "at most 2000"][..],
        ),
        (
            serde_json::json!({"proxy": {"http": format!("http://p{}:3128", "x".repeat(1200))}}),
            &["proxy.http", "at most 1000"][..],
        ),
        (
            serde_json::json!({"environment": {"extra": {"BIG": "x".repeat(5000)}}}),
            &["environment.extra.BIG", "at most 4096"][..],
        ),
    ];
    for (doc, expect) in cases {
        root.write("etc/notebook-agent/config.json", &doc.to_string(), 0o600);
        let before = root.snapshot();
        let out = agent(&["apply", "--root", r]);
        assert_eq!(out.status.code(), Some(2), "{expect:?}: {}", stderr(&out));
        for e in expect {
            assert!(stderr(&out).contains(e), "{e}: {}", stderr(&out));
        }
        assert_eq!(before, root.snapshot(), "{expect:?}: the host changed");
    }
}

/// Issue 13: a FIFO as `--config` blocked forever. Refused, with exit 2, before it is opened.
#[test]
fn config_that_is_a_fifo_or_device_is_exit_2_and_never_blocks() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let root = TempRoot::amazon_linux();
    root.mkdir("etc/notebook-agent");
    let fifo = root.join("etc/notebook-agent/fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    for (config, what) in [
        (fifo.to_str().expect("utf-8"), "FIFO"),
        ("/dev/null", "device"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_notebook-agent"))
            .args([
                "status",
                "--root",
                root.path().to_str().expect("utf-8"),
                "--config",
                config,
            ])
            .env("RUST_LOG", "off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "--config {config}: the agent still runs after 30 s (blocked on the {what})"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("output");
        let err = stderr(&out);
        assert_eq!(status.code(), Some(2), "{what}: {err}");
        assert!(err.contains(config) && err.contains(what), "{what}: {err}");
    }
}

/// Issue 13: the config module reached into the hardening controls for `RESERVED_NAMES`; the
/// config is the lower layer and imports no control.
#[test]
fn config_does_not_import_the_controls() {
    let dir = common::repo().join("agent/config");
    for e in std::fs::read_dir(&dir).expect("agent/config") {
        let p = e.expect("entry").path();
        let text = std::fs::read_to_string(&p).expect("read");
        for layer in [
            "crate::harden",
            "crate::control",
            "crate::audit",
            "crate::cli",
        ] {
            assert!(!text.contains(layer), "{} imports {layer}", p.display());
        }
    }
}

#[test]
fn missing_explicit_config_is_exit_2_naming_the_file() {
    let root = TempRoot::amazon_linux();
    let missing = root.join("etc/notebook-agent/nope.json");
    let out = agent(&[
        "apply",
        "--root",
        root.path().to_str().expect("utf-8"),
        "--config",
        missing.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.json"), "{}", stderr(&out));
}

#[test]
fn config_that_is_a_directory_is_exit_2() {
    let root = TempRoot::amazon_linux();
    root.mkdir("etc/notebook-agent/config.json");
    let out = agent(&["status", "--root", root.path().to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("config.json"));
}

#[test]
fn relative_root_is_exit_2() {
    let out = agent(&["status", "--root", "relative/path"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--root"), "{}", stderr(&out));
}

#[test]
fn retention_5_is_valid_because_cloudwatch_allows_it() {
    // CloudWatch's allowed set is 1, 3, 5, 7, 14, ...; 5 is valid (4 and 6 are not).
    let root = TempRoot::amazon_linux();
    // The dry run validates the sudoers edit with the real visudo, chrooted into the root.
    root.install_visudo();
    root.write(
        "etc/notebook-agent/config.json",
        r#"{"audit": {"retention_days": 5}}"#,
        0o600,
    );
    let out = agent(&[
        "apply",
        "--dry-run",
        "--root",
        root.path().to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
