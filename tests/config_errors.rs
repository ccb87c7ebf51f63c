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
        &["drift"],
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
