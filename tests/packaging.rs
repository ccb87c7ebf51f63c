//! The release artifacts and the lifecycle configuration: rendered script sizes against the
//! 16,384-character base64 limit, the CloudFormation copy of the scripts, cfn-lint, the systemd
//! unit, the tarball and RPM that `packaging/build.sh` makes, and `on-start.sh` run for real in a
//! chroot of the notebook rootfs with the release served from 127.0.0.1.
//!
//! The tools come from `packaging/setup.sh` (rpm, cargo-generate-rpm, cfn-lint); a missing tool
//! fails the test with that command, never skips it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

use common::{repo, require_root, stderr, stdout, NotebookRoot};

const B64_LIMIT: usize = 16_384;

fn out(o: &Output) -> String {
    format!("{}{}", stdout(o), stderr(o))
}

fn run(cmd: &mut Command) -> Output {
    // Bounded (a cargo build or an rpm transaction; a hang fails the test).
    let o = common::output_within(cmd, std::time::Duration::from_secs(1200));
    assert!(o.status.success(), "{cmd:?} failed: {}", out(&o));
    o
}

/// Paths of the pinned tools, as `packaging/setup.sh --env` exports them.
fn tool(var: &str) -> PathBuf {
    let o = run(Command::new("bash").current_dir(repo()).args([
        "-c",
        &format!(". packaging/setup.sh --env; printf %s \"${var}\""),
    ]));
    let p = PathBuf::from(stdout(&o));
    assert!(
        p.exists(),
        "{} is missing: run packaging/setup.sh as root (tests/setup.sh calls it)",
        p.display()
    );
    p
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

fn tarball_name() -> String {
    format!("notebook-agent-{}-x86_64-linux-musl.tar.gz", version())
}

/// `packaging/build.sh --bin <the test build>` once per test process: the release's tarball,
/// RPM and SHA256SUMS, made exactly as a release makes them, minus the musl compile.
fn dist() -> &'static Path {
    static DIST: OnceLock<PathBuf> = OnceLock::new();
    DIST.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging-dist");
        let t = Instant::now();
        let o = Command::new(repo().join("packaging/build.sh"))
            .arg("--bin")
            .arg(env!("CARGO_BIN_EXE_notebook-agent"))
            .arg("--out")
            .arg(&dir)
            .output()
            .expect("run packaging/build.sh");
        assert!(
            o.status.success(),
            "packaging/build.sh failed (tools: run packaging/setup.sh as root): {}",
            out(&o)
        );
        eprintln!("packaging/build.sh --bin: {} ms", t.elapsed().as_millis());
        dir
    })
}

fn sha256_of(dir: &Path, file: &str) -> String {
    let sums = fs::read_to_string(dir.join("SHA256SUMS")).expect("SHA256SUMS");
    sums.lines()
        .find_map(|l| {
            let (h, f) = l.split_once("  ")?;
            (f == file).then(|| h.to_string())
        })
        .unwrap_or_else(|| panic!("{file} not in SHA256SUMS: {sums}"))
}

fn rpm_path() -> PathBuf {
    let rpms: Vec<PathBuf> = fs::read_dir(dist())
        .expect("dist")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rpm"))
        .collect();
    assert_eq!(rpms.len(), 1, "exactly one RPM: {rpms:?}");
    rpms[0].clone()
}

/// Runs `packaging/render-lifecycle-config` into a fresh directory.
fn render(args: &[&str]) -> (tempfile::TempDir, Output) {
    let dir = tempfile::Builder::new()
        .prefix("nbagent-render.")
        .tempdir()
        .expect("tempdir");
    let o = Command::new(repo().join("packaging/render-lifecycle-config"))
        .args(args)
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run render-lifecycle-config");
    (dir, o)
}

fn b64_len(path: &Path) -> usize {
    fs::metadata(path).expect("stat").len().div_ceil(3) as usize * 4
}

const SHA_ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn rendered_scripts_fit_the_lifecycle_limit_even_at_the_parameters_maximum() {
    // The example config inline, and the worst the CloudFormation parameters allow: 400-char
    // URLs, a 200-char proxy, a 2048-byte inline config.
    let long_url = format!("s3://{}/n.tar.gz", "b".repeat(400 - 14));
    let proxy = format!("http://{}:3128", "p".repeat(200 - 12));
    let big = tempfile::NamedTempFile::new().expect("tmp");
    let (head, tail) = (r#"{"environment": {"extra": {"X": ""#, r#""}}}"#);
    let filler = "x".repeat(2048 - head.len() - tail.len());
    fs::write(big.path(), format!("{head}{filler}{tail}")).expect("write");
    assert_eq!(fs::metadata(big.path()).expect("stat").len(), 2048);
    let example = repo().join("packaging/config.example.json");
    let cases: [(&str, Vec<&str>); 3] = [
        ("default ({} config)", vec![]),
        (
            "example config inline",
            vec!["--config", example.to_str().expect("utf-8")],
        ),
        (
            "CloudFormation maxima",
            vec![
                "--config",
                big.path().to_str().expect("utf-8"),
                "--proxy",
                &proxy,
            ],
        ),
    ];
    for (what, extra) in cases {
        let url = if what == "CloudFormation maxima" {
            long_url.as_str()
        } else {
            "https://artifacts.example.com/notebook-agent-0.1.0-x86_64-linux-musl.tar.gz"
        };
        let mut args = vec!["--artifact-url", url, "--sha256", SHA_ZERO];
        args.extend(extra);
        let (dir, o) = render(&args);
        assert!(o.status.success(), "{what}: {}", out(&o));
        for s in ["on-create.sh", "on-start.sh"] {
            let n = b64_len(&dir.path().join(s));
            println!("{what}: {s} base64 {n} of {B64_LIMIT} characters");
            assert!(n < B64_LIMIT, "{what}: {s} is {n} base64 characters");
        }
        assert!(
            stdout(&o).contains("create-notebook-instance-lifecycle-config"),
            "{}",
            stdout(&o)
        );
    }
}

#[test]
fn render_refuses_a_malformed_sha256_and_quotes_in_urls() {
    let (_d, o) = render(&["--artifact-url", "https://x/a.tar.gz", "--sha256", "abc"]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
    let (_d, o) = render(&["--artifact-url", "https://x/a'b", "--sha256", SHA_ZERO]);
    assert_eq!(o.status.code(), Some(2), "{}", out(&o));
}

/// CloudFormation's Fn::Sub: `${Name}` from `params` (an unknown name is a test failure: it
/// would be an unescaped shell expansion), `${!x}` is a literal `${x}`.
fn fn_sub(body: &str, params: &BTreeMap<&str, &str>) -> String {
    let mut outp = String::new();
    let mut rest = body;
    while let Some(i) = rest.find("${") {
        outp.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        if let Some(lit) = after.strip_prefix('!') {
            outp.push_str("${");
            rest = lit;
        } else {
            let end = after.find('}').expect("unterminated ${");
            let name = &after[..end];
            let v = params
                .get(name)
                .unwrap_or_else(|| panic!("Fn::Sub: unknown variable ${{{name}}} (unescaped?)"));
            outp.push_str(v);
            rest = &after[end + 1..];
        }
    }
    outp.push_str(rest);
    outp
}

#[test]
fn cloudformation_scripts_are_the_lifecycle_scripts_and_cfn_lint_passes() {
    let template = repo().join("packaging/cloudformation.yaml");
    let check = Command::new(repo().join("packaging/render-lifecycle-config"))
        .arg("--check-template")
        .arg(&template)
        .output()
        .expect("render --check-template");
    assert!(check.status.success(), "{}", out(&check));

    // What CloudFormation would hand the notebook: the template parsed as YAML (cfn-lint's
    // PyYAML, CloudFormation's short tags as Fn:: keys), Fn::Sub evaluated.
    let cfn_lint = tool("CFN_LINT");
    let python = cfn_lint.parent().expect("venv bin").join("python");
    let o = run(Command::new(&python)
        .arg("-c")
        .arg(
            r#"
import json, sys, yaml
class L(yaml.SafeLoader): pass
def tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode): v = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode): v = loader.construct_sequence(node, deep=True)
    else: v = loader.construct_mapping(node, deep=True)
    return {suffix if suffix in ("Ref", "Condition") else "Fn::" + suffix: v}
L.add_multi_constructor("!", tag)
t = yaml.load(open(sys.argv[1]), L)
p = t["Resources"]["LifecycleConfig"]["Properties"]
print(json.dumps({"on_create": p["OnCreate"][0]["Content"]["Fn::Base64"],
                  "on_start": p["OnStart"][0]["Content"]["Fn::Base64"]["Fn::Sub"]}))
"#,
        )
        .arg(&template));
    let scripts: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let on_create = scripts["on_create"].as_str().expect("on_create");
    assert_eq!(
        on_create,
        fs::read_to_string(repo().join("lifecycle-scripts/on-create.sh")).expect("read")
    );

    let config = r#"{"proxy": {"https": "http://proxy.example.com:3128"}}"#;
    let url = "s3://bucket/notebook-agent/notebook-agent-0.1.0-x86_64-linux-musl.tar.gz";
    let sha = "ab".repeat(32);
    let params = BTreeMap::from([
        ("ArtifactUrl", url),
        ("ArtifactSha256", sha.as_str()),
        ("ConfigUrl", ""),
        ("ConfigJson", config),
        ("ProxyUrl", "http://proxy.example.com:3128"),
        ("FailClosed", "1"),
    ]);
    let from_cfn = fn_sub(scripts["on_start"].as_str().expect("on_start"), &params);
    let conf = tempfile::NamedTempFile::new().expect("tmp");
    fs::write(conf.path(), format!("{config}\n")).expect("write");
    let (dir, o) = render(&[
        "--artifact-url",
        url,
        "--sha256",
        &sha,
        "--config",
        conf.path().to_str().expect("utf-8"),
        "--proxy",
        "http://proxy.example.com:3128",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let rendered = fs::read_to_string(dir.path().join("on-start.sh")).expect("read");
    assert_eq!(
        from_cfn, rendered,
        "the stack's on-start differs from render-lifecycle-config's"
    );

    let lint = Command::new(&cfn_lint)
        .arg("--version")
        .output()
        .expect("cfn-lint");
    println!("{}", stdout(&lint).trim());
    let lint = Command::new(&cfn_lint)
        .arg(&template)
        .output()
        .expect("cfn-lint");
    assert!(lint.status.success(), "cfn-lint: {}", out(&lint));
}

#[test]
fn unit_verifies_under_systemd_and_has_the_required_directives() {
    let unit = fs::read_to_string(repo().join("packaging/notebook-agent.service")).expect("read");
    for d in [
        "ExecStart=/usr/local/bin/notebook-agent watch",
        "Restart=always",
        "RestartSec=5",
        "TimeoutStopSec=30",
        "SyslogIdentifier=notebook-agent",
        "WantedBy=multi-user.target",
    ] {
        assert!(unit.lines().any(|l| l == d), "missing {d}");
    }
    for banned in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "ReadOnlyPaths=",
    ] {
        assert!(
            !unit.lines().any(|l| l.starts_with(banned)),
            "{banned} would break drift repair or the audit"
        );
    }
    // systemd-analyze verify needs the executable to exist: point ExecStart at /bin/true.
    let dir = tempfile::tempdir().expect("tmp");
    let copy = dir.path().join("notebook-agent.service");
    fs::write(
        &copy,
        unit.replace("/usr/local/bin/notebook-agent watch", "/bin/true watch"),
    )
    .expect("write");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        stderr(&o).trim().is_empty(),
        "systemd 252 warns: {}",
        stderr(&o)
    );
}

#[test]
fn tarball_holds_the_release_files() {
    let d = dist();
    let o = run(Command::new("tar").arg("-tzvf").arg(d.join(tarball_name())));
    let list = stdout(&o);
    let top = format!("notebook-agent-{}-x86_64-linux-musl", version());
    for f in [
        "notebook-agent",
        "notebook-agent.service",
        "config.example.json",
        "README.md",
        "cloudformation.yaml",
        "render-lifecycle-config",
        "lifecycle-scripts/on-start.sh",
        "lifecycle-scripts/on-create.sh",
    ] {
        assert!(list.contains(&format!("{top}/{f}\n")), "{f} not in: {list}");
    }
    assert!(list.contains("root/root") || list.contains("0/0"), "{list}");
    for f in fs::read_dir(d).expect("dist").flatten() {
        println!(
            "{}: {} bytes",
            f.file_name().to_string_lossy(),
            f.metadata().expect("stat").len()
        );
    }
}

#[test]
fn rpm_lists_the_files_gzip_no_requires_and_manages_the_unit() {
    let rpm = rpm_path();
    let files = stdout(&run(Command::new("rpm").arg("-qpl").arg(&rpm)));
    for f in [
        "/usr/local/bin/notebook-agent",
        "/usr/lib/systemd/system/notebook-agent.service",
        "/usr/share/doc/notebook-agent/config.example.json",
        "/usr/share/notebook-agent/lifecycle-scripts/on-start.sh",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in: {files}");
    }
    let comp = stdout(&run(Command::new("rpm")
        .args(["-qp", "--qf", "%{PAYLOADCOMPRESSOR}"])
        .arg(&rpm)));
    assert_eq!(comp, "gzip", "AL2's rpm 4.11 reads gzip payloads only");
    let reqs = stdout(&run(Command::new("rpm").arg("-qpR").arg(&rpm)));
    assert!(
        !reqs.contains(".so"),
        "auto-requires must be off (static binary): {reqs}"
    );
    let scripts = stdout(&run(Command::new("rpm")
        .args(["-qp", "--scripts"])
        .arg(&rpm)));
    assert!(
        scripts.contains("postinstall") && scripts.contains("systemctl daemon-reload"),
        "{scripts}"
    );
    assert!(
        scripts.contains("preuninstall")
            && scripts.contains("disable --now notebook-agent.service")
            && scripts.contains("\"$1\" -eq 0"),
        "{scripts}"
    );
}

#[test]
fn rpm_installs_binary_and_unit_into_a_scratch_root() {
    require_root("rpm --root writes files owned by root");
    let rpm = rpm_path();
    let root = tempfile::Builder::new()
        .prefix("nbagent-rpmroot.")
        .tempdir()
        .expect("tmp");
    let o = Command::new("rpm")
        .arg("--root")
        .arg(root.path())
        .args([
            "--dbpath",
            "/var/lib/rpm",
            "-ivh",
            "--nodeps",
            "--noscripts",
        ])
        .arg(&rpm)
        .output()
        .expect("rpm (run packaging/setup.sh)");
    assert!(o.status.success(), "{}", out(&o));
    let bin = root.path().join("usr/local/bin/notebook-agent");
    let md = fs::metadata(&bin).expect("binary installed");
    assert_eq!(md.permissions().mode() & 0o7777, 0o755);
    assert_eq!((md.uid(), md.gid()), (0, 0));
    let unit = root
        .path()
        .join("usr/lib/systemd/system/notebook-agent.service");
    assert_eq!(
        fs::read(&unit).expect("unit installed"),
        fs::read(repo().join("packaging/notebook-agent.service")).expect("read")
    );
    let q = run(Command::new("rpm").arg("--root").arg(root.path()).args([
        "--dbpath",
        "/var/lib/rpm",
        "-q",
        "notebook-agent",
    ]));
    assert!(stdout(&q).starts_with("notebook-agent-"), "{}", out(&q));
}

/// `python3 -m http.server` on 127.0.0.1 (an ephemeral port), serving `dir`.
struct HttpServer {
    child: Child,
    url: String,
}

impl HttpServer {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server (apt-get install python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read http.server banner");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap_or_else(|| panic!("no port in http.server banner: {line:?}"))
            .to_string();
        Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Renders on-start.sh for the test release served at `url` and puts it into the root.
fn stage_on_start(nb: &NotebookRoot, url: &str, sha: &str, config: &str, extra: &[&str]) {
    let conf = tempfile::NamedTempFile::new().expect("tmp");
    fs::write(conf.path(), config).expect("write");
    let mut args = vec![
        "--artifact-url",
        url,
        "--sha256",
        sha,
        "--config",
        conf.path().to_str().expect("utf-8"),
    ];
    args.extend(extra);
    let (dir, o) = render(&args);
    assert!(o.status.success(), "{}", out(&o));
    nb.write(
        "root/on-start.sh",
        &fs::read_to_string(dir.path().join("on-start.sh")).expect("read"),
        0o755,
    );
}

/// Every file (not directory) the run wrote into the root, from the overlay's upper layer.
fn written_files(nb: &NotebookRoot) -> Vec<String> {
    let upper = nb.upper();
    let mut files = Vec::new();
    let mut stack = vec![upper.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if e.file_type().expect("type").is_dir() {
                stack.push(p);
            } else {
                files.push(
                    p.strip_prefix(&upper)
                        .expect("prefix")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    files.sort();
    files
}

fn in_wheel(nb: &NotebookRoot, user: &str) -> bool {
    fs::read_to_string(nb.path().join("etc/group"))
        .expect("group")
        .lines()
        .any(|l| {
            l.starts_with("wheel:")
                && l.rsplit(':')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .any(|m| m == user)
        })
}

#[test]
fn on_start_with_a_wrong_sha256_fails_before_anything_is_installed() {
    let d = dist();
    let server = HttpServer::start(d);
    let nb = NotebookRoot::new();
    let url = format!("{}/{}", server.url, tarball_name());
    stage_on_start(&nb, &url, &"f".repeat(64), "{}", &[]);
    let before = written_files(&nb);
    let o = nb.sh("/bin/bash /root/on-start.sh");
    let text = out(&o);
    println!("{text}");
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("sha256 mismatch"), "{text}");
    assert_eq!(
        written_files(&nb),
        before,
        "on-start wrote files although the artifact did not verify"
    );
    assert!(!nb.path().join("usr/local/bin/notebook-agent").exists());
    assert!(!nb.path().join("etc/notebook-agent").exists());
    assert!(in_wheel(&nb, "ec2-user"), "nothing was applied");
}

#[test]
fn on_start_in_a_notebook_chroot_installs_applies_and_proves() {
    let d = dist();
    let server = HttpServer::start(d);
    let nb = NotebookRoot::new();
    assert!(in_wheel(&nb, "ec2-user"), "baseline: ec2-user in wheel");
    let url = format!("{}/{}", server.url, tarball_name());
    let config = "{\"drift\": {\"reapply\": true}}\n";
    stage_on_start(&nb, &url, &sha256_of(d, &tarball_name()), config, &[]);
    let t = Instant::now();
    let o = nb.sh("/bin/bash /root/on-start.sh");
    let wall = t.elapsed();
    let text = out(&o);
    println!("{text}");
    println!("on-start wall time in the chroot: {} ms", wall.as_millis());
    assert_eq!(o.status.code(), Some(0), "{text}");
    assert!(wall.as_secs() < 60, "on-start took {wall:?}");

    let bin = fs::metadata(nb.path().join("usr/local/bin/notebook-agent")).expect("installed");
    assert_eq!(
        (bin.permissions().mode() & 0o7777, bin.uid(), bin.gid()),
        (0o755, 0, 0)
    );
    let conf_path = nb.path().join("etc/notebook-agent/config.json");
    let conf = fs::metadata(&conf_path).expect("config written");
    assert_eq!(
        (conf.permissions().mode() & 0o7777, conf.uid(), conf.gid()),
        (0o600, 0, 0)
    );
    assert_eq!(fs::read_to_string(&conf_path).expect("read"), config);
    assert!(
        nb.path()
            .join("etc/systemd/system/notebook-agent.service")
            .exists(),
        "unit installed"
    );
    assert!(!in_wheel(&nb, "ec2-user"), "apply ran: ec2-user left wheel");
    assert!(
        text.contains("systemd is not running") && text.contains("not started"),
        "{text}"
    );
    for step in [
        "== fetch",
        "== verify sha256",
        "sha256 OK",
        "== notebook-agent apply",
        "== notebook-agent status",
        "compliant",
        "== done in",
    ] {
        assert!(text.contains(step), "no step line {step:?}: {text}");
    }
    assert!(
        !written_files(&nb)
            .iter()
            .any(|f| f.starts_with("tmp/notebook-agent-on-start")),
        "work directory left behind"
    );
}

#[test]
fn on_start_fails_closed_when_apply_fails_and_opens_only_when_told() {
    let d = dist();
    let server = HttpServer::start(d);
    let url = format!("{}/{}", server.url, tarball_name());
    let sha = sha256_of(d, &tarball_name());
    // A config apply refuses (exit 2): nothing is hardened.
    let bad = r#"{"proxy": {"https": "not a url"}}"#;

    let nb = NotebookRoot::new();
    stage_on_start(&nb, &url, &sha, bad, &[]);
    let o = nb.sh("/bin/bash /root/on-start.sh");
    let text = out(&o);
    println!("{text}");
    assert_eq!(o.status.code(), Some(1), "fail closed: {text}");
    assert!(
        text.contains("notebook-agent apply exited 2") && text.contains("FAIL_CLOSED=1"),
        "{text}"
    );
    assert!(in_wheel(&nb, "ec2-user"));

    let nb = NotebookRoot::new();
    stage_on_start(&nb, &url, &sha, bad, &["--fail-open"]);
    let o = nb.sh("/bin/bash /root/on-start.sh");
    let text = out(&o);
    assert_eq!(o.status.code(), Some(0), "explicit opt-out: {text}");
    assert!(text.contains("NOT HARDENED"), "{text}");
}

#[test]
fn on_start_fails_when_the_artifact_cannot_be_fetched() {
    let nb = NotebookRoot::new();
    // Port 9 on loopback: nothing listens (the discard port), connection refused at once.
    stage_on_start(
        &nb,
        "http://127.0.0.1:9/missing.tar.gz",
        SHA_ZERO,
        "{}",
        &[],
    );
    let o = nb.sh("/bin/bash /root/on-start.sh");
    let text = out(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("could not fetch"), "{text}");
    assert!(!nb.path().join("usr/local/bin/notebook-agent").exists());
}
