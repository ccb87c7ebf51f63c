//! sagemaker_environment.py: values from config, the metadata file and IMDSv2 (a fake on
//! 127.0.0.1), Python-safe rendering checked by a real python3, importability from every env,
//! idempotence and revert, and hostile values refused.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{agent, stderr, stdout, FakeImds, NotebookRoot, TempRoot};

const MODULE: &str = "usr/local/lib/notebook-agent/python/sagemaker_environment.py";

fn out(o: &std::process::Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn fixture(config: &str) -> TempRoot {
    let t = TempRoot::amazon_linux();
    t.install_visudo();
    t.write("etc/notebook-agent/config.json", config, 0o600);
    t
}

/// Loads the module with the host's python3 and returns `json.dumps` of the named attributes.
fn python_values(module: &std::path::Path, expr: &str) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import importlib.util, json\n\
             s = importlib.util.spec_from_file_location('m', {:?})\n\
             m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n\
             print(json.dumps({expr}, ensure_ascii=False))",
            module.to_str().expect("utf-8")
        ))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 (installed by tests/setup.sh)");
    assert!(o.status.success(), "python3: {}", stderr(&o));
    stdout(&o).trim().to_string()
}

#[test]
fn config_values_and_metadata_render_into_a_module_python_reads_exactly() {
    // No tab: control characters are refused in every config string (issue 13); a literal
    // backslash-t must stay two characters.
    let extra_value = "it's \"quoted\"\\ — ünïcødé ✓ \u{1F680} and a literal \\there";
    let config = serde_json::json!({
        "environment": {
            "vpc": "vpc-0a1b2c3d",
            "subnets": ["subnet-0123abcd", "subnet-0123456789abcdef0"],
            "security_groups": ["sg-0123abcd"],
            "kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "data_bucket": "corp-ml-data",
            "model_bucket": "corp-ml-models",
            "extra": {"TEAM_NOTE": extra_value, "COST_CENTER": "cc-42"}
        }
    });
    let t = fixture(&config.to_string());
    let r = t.path().to_str().expect("utf-8");
    let original = t.snapshot();

    let first = agent(&["apply", "--root", r]);
    assert_eq!(first.status.code(), Some(0), "{}", out(&first));

    let module = t.join(MODULE);
    let md = std::fs::metadata(&module).expect("module written");
    assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o644));
    let dir = std::fs::metadata(module.parent().expect("dir")).expect("dir");
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (0, 0o755));

    let got = python_values(
        &module,
        "[m.SAGEMAKER_VPC, m.SAGEMAKER_SUBNETS, m.SAGEMAKER_SECURITY_GROUPS, m.SAGEMAKER_KMS_KEY_ID, \
         m.SAGEMAKER_DATA_BUCKET, m.SAGEMAKER_MODEL_BUCKET, m.SAGEMAKER_NOTEBOOK_NAME, \
         m.SAGEMAKER_REGION, m.SAGEMAKER_ACCOUNT_ID, m.TEAM_NOTE, m.COST_CENTER]",
    );
    let want = serde_json::json!([
        "vpc-0a1b2c3d",
        ["subnet-0123abcd", "subnet-0123456789abcdef0"],
        ["sg-0123abcd"],
        "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "corp-ml-data",
        "corp-ml-models",
        "test-nb",
        "us-east-1",
        "123456789012",
        extra_value,
        "cc-42"
    ]);
    let got: serde_json::Value = serde_json::from_str(&got).expect("json from python");
    assert_eq!(got, want, "values round-trip exactly through Python");

    let kwargs: serde_json::Value = serde_json::from_str(&python_values(
        &module,
        "[m.network_kwargs(), m.vpc_config()]",
    ))
    .expect("json");
    assert_eq!(
        kwargs,
        serde_json::json!([{
            "subnets": ["subnet-0123abcd", "subnet-0123456789abcdef0"],
            "security_group_ids": ["sg-0123abcd"],
            "volume_kms_key": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "output_kms_key": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "encrypt_inter_container_traffic": true
        }, {"Subnets": ["subnet-0123abcd", "subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123abcd"]}])
    );

    // .pth in every env's site-packages, the legacy copy, the service PYTHONPATH.
    for env in [
        "anaconda3",
        "anaconda3/envs/python3",
        "anaconda3/envs/JupyterSystemEnv",
    ] {
        let pth = format!(
            "home/ec2-user/{env}/lib/python3.11/site-packages/notebook-agent-environment.pth"
        );
        assert_eq!(
            t.read(&pth),
            "/usr/local/lib/notebook-agent/python\n",
            "{pth}"
        );
    }
    assert_eq!(
        t.read("home/ec2-user/.ipython/sagemaker_environment.py"),
        t.read(MODULE)
    );
    assert_eq!(
        std::fs::metadata(t.join("home/ec2-user/.ipython"))
            .expect("stat")
            .uid(),
        1000
    );
    let dropin =
        t.read("etc/systemd/system/jupyter-server.service.d/notebook-agent-environment.conf");
    assert!(
        dropin.contains("Environment=\"PYTHONPATH=/usr/local/lib/notebook-agent/python\""),
        "{dropin}"
    );

    let status = agent(&["status", "--root", r]);
    assert_eq!(status.status.code(), Some(0), "{}", out(&status));
    assert!(
        stdout(&status).contains("importable via 3 .pth files"),
        "{}",
        stdout(&status)
    );

    // Idempotent, then drift is seen, then revert gives back the original tree.
    let applied = t.snapshot_without(&["var"]);
    let second = agent(&["apply", "--root", r]);
    assert!(
        stdout(&second).contains("apply: 0 changed"),
        "{}",
        out(&second)
    );
    assert_eq!(applied, t.snapshot_without(&["var"]));

    std::fs::remove_file(t.join(
        "home/ec2-user/anaconda3/envs/python3/lib/python3.11/site-packages/notebook-agent-environment.pth",
    ))
    .expect("rm");
    let status = agent(&["status", "--root", r]);
    assert_eq!(status.status.code(), Some(3), "{}", out(&status));
    assert!(
        stdout(&status).contains("notebook-agent-environment.pth"),
        "{}",
        stdout(&status)
    );
    // The module itself changed (as root: the user cannot): FAIL naming it, apply repairs.
    let module = t.join(MODULE);
    let mut text = std::fs::read_to_string(&module).expect("read");
    text.push_str("SAGEMAKER_VPC = 'vpc-evil'\n");
    std::fs::write(&module, text).expect("write");
    let status = agent(&["status", "--root", r]);
    assert_eq!(status.status.code(), Some(3), "{}", out(&status));
    assert!(
        stdout(&status).contains("sagemaker_environment.py: contents differ"),
        "{}",
        stdout(&status)
    );
    let repair = agent(&["apply", "--root", r]);
    assert_eq!(repair.status.code(), Some(0), "{}", out(&repair));
    assert!(!t.read(MODULE).contains("vpc-evil"));

    let revert = agent(&["revert", "--root", r]);
    assert_eq!(revert.status.code(), Some(0), "{}", out(&revert));
    let mut reverted = t.snapshot();
    let mut original = original;
    for s in [&mut reverted, &mut original] {
        s.retain(|k, _| !k.starts_with("var"));
    }
    let differing: Vec<&String> = original
        .keys()
        .chain(reverted.keys())
        .filter(|k| original.get(*k) != reverted.get(*k))
        .collect();
    assert!(
        differing.is_empty(),
        "revert restores the original tree; differing: {differing:?}\n{}",
        out(&revert)
    );
}

#[test]
fn discover_takes_the_customer_eni_from_imdsv2() {
    let imds = FakeImds::notebook();
    let config = format!(
        r#"{{"environment": {{"discover": true, "imds_endpoint": "{}", "kms_key_id": "alias/ml"}}}}"#,
        imds.url
    );
    let t = fixture(&config);
    let r = t.path().to_str().expect("utf-8");
    let apply = agent(&["apply", "--root", r]);
    assert_eq!(apply.status.code(), Some(0), "{}", out(&apply));
    let got = python_values(
        &t.join(MODULE),
        "[m.SAGEMAKER_VPC, m.SAGEMAKER_SUBNETS, m.SAGEMAKER_SECURITY_GROUPS, m.SAGEMAKER_KMS_KEY_ID]",
    );
    assert_eq!(
        got,
        r#"["vpc-0a1b2c3d4e5f60718", ["subnet-0123abcd"], ["sg-0123abcd", "sg-4567ef01"], "alias/ml"]"#,
        "the ENI owned by the notebook's account 123456789012, not SageMaker's"
    );
    let requests = imds.requests.lock().expect("lock").clone();
    assert_eq!(
        requests.first().map(String::as_str),
        Some("PUT /latest/api/token HTTP/1.1"),
        "IMDSv2: a token first: {requests:?}"
    );
    let tokens = requests
        .iter()
        .filter(|r| r.starts_with("PUT /latest/api/token"))
        .count();
    assert_eq!(
        tokens, 1,
        "one apply asks IMDS once (its plan and its check share the answer): {requests:?}"
    );
    let status = agent(&["status", "--root", r]);
    assert_eq!(status.status.code(), Some(0), "{}", out(&status));
    assert!(
        stdout(&status).contains("network settings from IMDS"),
        "{}",
        stdout(&status)
    );
}

#[test]
fn a_hostile_imds_value_is_refused_and_nothing_is_written() {
    let imds = FakeImds::start(&[
        ("network/interfaces/macs/", "0a:00:00:00:00:02/"),
        (
            "network/interfaces/macs/0a:00:00:00:00:02/owner-id",
            "123456789012",
        ),
        (
            "network/interfaces/macs/0a:00:00:00:00:02/vpc-id",
            "vpc-0a1b2c3d",
        ),
        (
            "network/interfaces/macs/0a:00:00:00:00:02/subnet-id",
            "subnet-1'; import os; os.system('touch pwned') #",
        ),
        (
            "network/interfaces/macs/0a:00:00:00:00:02/security-group-ids",
            "sg-0123abcd",
        ),
    ]);
    let t = fixture(&format!(
        r#"{{"environment": {{"discover": true, "imds_endpoint": "{}"}}}}"#,
        imds.url
    ));
    let before = t.snapshot();
    let apply = agent(&["apply", "--root", t.path().to_str().expect("utf-8")]);
    assert_eq!(apply.status.code(), Some(1), "{}", out(&apply));
    assert!(
        stderr(&apply).contains("IMDS subnet-id") && stderr(&apply).contains("not a subnet id"),
        "{}",
        stderr(&apply)
    );
    assert_eq!(before, t.snapshot(), "nothing written");
}

#[test]
fn an_unreachable_imds_is_a_clear_error_naming_the_endpoint() {
    // A closed loopback port: connection refused, quickly.
    let t =
        fixture(r#"{"environment": {"discover": true, "imds_endpoint": "http://127.0.0.1:9"}}"#);
    let before = t.snapshot();
    let apply = agent(&["apply", "--root", t.path().to_str().expect("utf-8")]);
    assert_eq!(apply.status.code(), Some(1), "{}", out(&apply));
    assert!(
        stderr(&apply).contains("environment.discover: IMDSv2 token from http://127.0.0.1:9"),
        "{}",
        stderr(&apply)
    );
    assert_eq!(before, t.snapshot());
}

#[test]
fn extra_names_that_shadow_the_module_are_refused_with_exit_2() {
    let t = fixture(r#"{"environment": {"extra": {"SAGEMAKER_VPC": "x", "network_kwargs": "y"}}}"#);
    let before = t.snapshot();
    let apply = agent(&["apply", "--root", t.path().to_str().expect("utf-8")]);
    assert_eq!(apply.status.code(), Some(2), "{}", out(&apply));
    for path in [
        "environment.extra.SAGEMAKER_VPC",
        "environment.extra.network_kwargs",
    ] {
        assert!(stderr(&apply).contains(path), "{}", stderr(&apply));
    }
    assert_eq!(before, t.snapshot());
}

#[test]
fn every_python_imports_it_as_ec2_user_in_login_and_non_login_shells() {
    let nb = NotebookRoot::new();
    nb.write(
        "etc/notebook-agent/config.json",
        r#"{"environment": {"subnets": ["subnet-0123abcd"], "security_groups": ["sg-0123abcd"]}}"#,
        0o600,
    );
    let apply = agent(&["apply", "--root", nb.arg()]);
    assert_eq!(apply.status.code(), Some(0), "{}", out(&apply));
    let pythons = [
        "/home/ec2-user/anaconda3/bin/python",
        "/home/ec2-user/anaconda3/envs/python3/bin/python",
        "/home/ec2-user/anaconda3/envs/JupyterSystemEnv/bin/python",
        "/usr/bin/python3",
    ];
    for py in pythons {
        for shell in ["su -l ec2-user -c", "su ec2-user -s /bin/bash -c"] {
            let o = nb.sh(&format!(
                "cd /tmp && {shell} \"{py} -c 'import sagemaker_environment as e; print(e.SAGEMAKER_SUBNETS)'\""
            ));
            assert!(
                out(&o).contains("['subnet-0123abcd']"),
                "{py} via {shell}: {}",
                out(&o)
            );
        }
    }
    // The user cannot replace the module.
    let o = nb.sh(
        "su ec2-user -c 'echo X=1 >> /usr/local/lib/notebook-agent/python/sagemaker_environment.py' 2>&1; true",
    );
    assert!(out(&o).contains("Permission denied"), "{}", out(&o));
}
