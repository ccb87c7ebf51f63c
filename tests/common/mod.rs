//! Shared helpers for the integration tests: an Amazon-Linux-shaped temp root, a tree snapshot
//! for "byte-identical" assertions, a runner for the built binary with a sealed environment, and a
//! minimal chroot with the real `visudo`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod watch;

/// A temp directory used as `--root`.
pub struct TempRoot {
    pub dir: tempfile::TempDir,
}

impl TempRoot {
    pub fn empty() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("nbagent-root.")
                .tempdir()
                .expect("temp dir"),
        }
    }

    /// An Amazon-Linux notebook shape: ec2-user (1000) in wheel and docker, the cloud-init sudo
    /// drop-in, a `%wheel` rule, SageMaker metadata, three conda-like envs, the SageMaker volume.
    pub fn amazon_linux() -> Self {
        let r = Self::empty();
        r.write(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\n\
            ec2-user:x:1000:1000:EC2 Default User:/home/ec2-user:/bin/bash\n",
            0o644,
        );
        r.write(
            "etc/group",
            "root:x:0:\nwheel:x:10:ec2-user\ndocker:x:992:ec2-user\n\
            ec2-user:x:1000:\nadm:x:4:\n",
            0o644,
        );
        r.write(
            "etc/sudoers",
            "Defaults env_reset\nroot ALL=(ALL) ALL\n%wheel ALL=(ALL) ALL\n\
            #includedir /etc/sudoers.d\n",
            0o440,
        );
        r.write(
            "etc/sudoers.d/90-cloud-init-users",
            "# Created by cloud-init\nec2-user ALL=(ALL) NOPASSWD:ALL\n",
            0o440,
        );
        r.write("opt/ml/metadata/resource-metadata.json",
            r#"{"ResourceArn":"arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/test-nb","ResourceName":"test-nb"}"#,
            0o644);
        for env in [
            "anaconda3",
            "anaconda3/envs/python3",
            "anaconda3/envs/JupyterSystemEnv",
        ] {
            r.mkdir(&format!("home/ec2-user/{env}/bin"));
            r.mkdir(&format!("home/ec2-user/{env}/lib/python3.11/site-packages"));
        }
        r.mkdir("home/ec2-user/SageMaker");
        r.mkdir("tmp");
        r.mkdir("run");
        r
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, contents: &str, mode: u32) {
        let p = self.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, contents).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    pub fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.join(rel)).expect("mkdir");
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.join(rel)).expect("read")
    }

    /// Every entry below the root with its type, mode, owner and contents (or link target).
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot(self.path(), &[])
    }

    /// Like [`snapshot`](Self::snapshot), leaving out subtrees (e.g. the agent's state dir).
    pub fn snapshot_without(&self, skip: &[&str]) -> BTreeMap<String, String> {
        snapshot(self.path(), skip)
    }

    /// Installs the real `visudo` (with its libraries and a passwd for root) so that commands
    /// the agent runs chrooted into this root exercise the production path.
    pub fn install_visudo(&self) {
        require_root("chroot into the test root");
        let visudo = Path::new("/usr/sbin/visudo");
        assert!(
            visudo.exists(),
            "/usr/sbin/visudo is missing: run tests/setup.sh (apt-get install -y sudo)"
        );
        let ldd = Command::new("ldd").arg(visudo).output().expect("ldd");
        let mut files = vec![visudo.to_path_buf()];
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') {
                files.push(PathBuf::from(word));
            }
        }
        for nss in [
            "/lib/x86_64-linux-gnu/libnss_files.so.2",
            "/etc/nsswitch.conf",
        ] {
            if Path::new(nss).exists() {
                files.push(PathBuf::from(nss));
            }
        }
        for f in files {
            let dest = self.path().join(f.strip_prefix("/").expect("absolute"));
            fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
            fs::copy(&f, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", f.display()));
        }
    }
}

pub fn require_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test must run as root ({why}); run the suite with tests/run.sh as root"
    );
}

fn snapshot(root: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("read_dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            if skip
                .iter()
                .any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
            {
                continue;
            }
            let md = fs::symlink_metadata(&path).expect("lstat");
            let head = format!("{:o} {}:{}", md.mode(), md.uid(), md.gid());
            let desc = if md.file_type().is_symlink() {
                format!(
                    "{head} -> {}",
                    fs::read_link(&path).expect("readlink").display()
                )
            } else if md.is_dir() {
                stack.push(path.clone());
                format!("{head} dir")
            } else {
                format!(
                    "{head} {:?}",
                    String::from_utf8_lossy(&fs::read(&path).expect("read"))
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

/// The environment every test process gets: fake AWS credentials and region, IMDS disabled and,
/// should anything still ask, pointed at a closed loopback port — never 169.254.169.254.
pub const TEST_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIATESTTESTTESTTEST"),
    ("AWS_SECRET_ACCESS_KEY", "test-secret-key"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9"),
    ("LC_ALL", "C"),
];

/// Runs the built binary with a sealed environment.
pub fn agent(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_notebook-agent"));
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in TEST_ENV {
        cmd.env(k, v);
    }
    output_within(&mut cmd, COMMAND_DEADLINE)
}

/// How long one command of a test may run (an `apply` in a loaded chroot takes seconds; nothing
/// healthy comes near this).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(300);

/// `cmd.output()` with a deadline: a command still running after `limit` is killed and the test
/// fails naming it (a hung child must not hang the suite). stdin is /dev/null.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    // Read both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for a child") {
            break s;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A grandchild that kept the pipes open would keep these readers going: bounded too.
    let join = |t: std::thread::JoinHandle<Vec<u8>>, what: &str| {
        let until = Instant::now() + Duration::from_secs(10);
        while !t.is_finished() {
            assert!(
                Instant::now() < until,
                "{cmd:?} exited but its {what} stayed open (a child left behind?)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().expect("pipe reader")
    };
    let stdout = join(out_t, "stdout");
    let stderr = join(err_t, "stderr");
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Waits for a thread with a deadline (a daemon thread that does not stop must fail the test,
/// not hang it).
pub fn join_within<T>(t: std::thread::JoinHandle<T>, limit: Duration, what: &str) -> T {
    let until = Instant::now() + limit;
    while !t.is_finished() {
        assert!(
            Instant::now() < until,
            "{what}: not finished within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The repository's root (for packaged files like the example config).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A writable copy of the notebook sandbox's root filesystem (Debian with the Amazon-Linux
/// notebook profile: real sudo, PAM, su, python venvs with pip), as an overlay over the cached
/// rootfs so that each test gets a fresh one in milliseconds. Commands run in it with chroot.
pub struct NotebookRoot {
    _dir: tempfile::TempDir,
    merged: PathBuf,
}

impl NotebookRoot {
    pub fn new() -> Self {
        require_root("mount an overlay and chroot into it");
        let script = repo().join("vm-tests/lib/rootfs.sh");
        // The first run builds the rootfs with debootstrap (minutes); later ones reuse the cache.
        let out = output_within(&mut Command::new(&script), Duration::from_secs(1200));
        assert!(
            out.status.success(),
            "building the notebook rootfs failed (run tests/setup.sh, which installs debootstrap \
             and systemd-container): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lower = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let dir = tempfile::Builder::new()
            .prefix("nbagent-overlay.")
            .tempdir()
            .expect("temp dir");
        for d in ["upper", "work", "merged"] {
            fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        let merged = dir.path().join("merged");
        let opts = format!(
            "lowerdir={lower},upperdir={},workdir={}",
            dir.path().join("upper").display(),
            dir.path().join("work").display()
        );
        let st = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(&merged)
            .status()
            .expect("mount");
        assert!(
            st.success(),
            "mount -t overlay failed (needs root and overlayfs)"
        );
        Self { _dir: dir, merged }
    }

    pub fn path(&self) -> &Path {
        &self.merged
    }

    pub fn arg(&self) -> &str {
        self.merged.to_str().expect("utf-8")
    }

    /// The overlay's upper layer: exactly what was written to the root since it was mounted.
    pub fn upper(&self) -> PathBuf {
        self._dir.path().join("upper")
    }

    pub fn write(&self, rel: &str, contents: &str, mode: u32) {
        let p = self.merged.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, contents).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Runs `sh -c script` inside the root as root, with the lifecycle PATH.
    pub fn sh(&self, script: &str) -> Output {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.merged)
            .args(["/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/sbin:/bin:/usr/sbin:/usr/bin");
        for (k, v) in TEST_ENV {
            cmd.env(k, v);
        }
        output_within(&mut cmd, COMMAND_DEADLINE)
    }
}

impl Drop for NotebookRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.merged).status();
    }
}

/// TEST FIXTURE — a fake instance metadata service on 127.0.0.1 (IMDS cannot be had here, and no
/// test may contact 169.254.169.254). IMDSv2 only: `PUT /latest/api/token` hands out a token,
/// `GET /latest/meta-data/<path>` answers from `paths` only when the token is sent, 401 otherwise,
/// 404 for unknown paths. Every request line is recorded.
pub struct FakeImds {
    pub url: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeImds {
    pub fn start(paths: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let map: BTreeMap<String, String> = paths
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut token_ok = false;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    let lower = h.to_ascii_lowercase();
                    if lower.starts_with("x-aws-ec2-metadata-token:")
                        && h.contains("fake-imds-token")
                    {
                        token_ok = true;
                    }
                }
                log.lock().expect("lock").push(line.trim().to_string());
                let mut parts = line.split_whitespace();
                let method = parts.next().unwrap_or_default();
                let path = parts.next().unwrap_or_default();
                let (code, body) = if method == "PUT" && path == "/latest/api/token" {
                    ("200 OK", "fake-imds-token".to_string())
                } else if !token_ok {
                    ("401 Unauthorized", String::new())
                } else if let Some(v) = path
                    .strip_prefix("/latest/meta-data/")
                    .and_then(|p| map.get(p))
                {
                    ("200 OK", v.clone())
                } else {
                    ("404 Not Found", String::new())
                };
                let mut w = stream;
                let _ = write!(
                    w,
                    "HTTP/1.1 {code}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url, requests }
    }

    /// Two ENIs as on a notebook instance: SageMaker's service ENI (another account) and the
    /// customer ENI owned by the notebook's account 123456789012.
    pub fn notebook() -> Self {
        Self::start(&[
            (
                "network/interfaces/macs/",
                "0a:00:00:00:00:01/\n0a:00:00:00:00:02/",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:01/owner-id",
                "999999999999",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:01/vpc-id",
                "vpc-99999999",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:01/subnet-id",
                "subnet-99999999",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:01/security-group-ids",
                "sg-99999999",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:02/owner-id",
                "123456789012",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:02/vpc-id",
                "vpc-0a1b2c3d4e5f60718",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:02/subnet-id",
                "subnet-0123abcd",
            ),
            (
                "network/interfaces/macs/0a:00:00:00:00:02/security-group-ids",
                "sg-0123abcd\nsg-4567ef01",
            ),
            ("placement/region", "us-east-1"),
        ])
    }
}
