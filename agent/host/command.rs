//! Host commands (`visudo`, `gpasswd`, `systemctl`, `sudo`) behind a small trait: the real runner
//! executes them (inside the root with `chroot` when `--root` is not `/`, so a test root with real
//! sudo installed runs the production path), the recording runner answers from a script in tests.

use std::collections::VecDeque;
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::root::Root;

/// The PATH lifecycle configurations run with; host commands get exactly this.
pub const LIFECYCLE_PATH: &str = "/sbin:/bin:/usr/sbin:/usr/bin";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    pub program: String,
    pub args: Vec<String>,
    pub stdin: Option<Vec<u8>>,
}

impl HostCommand {
    pub fn new<I, S>(program: &str, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            program: program.to_string(),
            args: args.into_iter().map(Into::into).collect(),
            stdin: None,
        }
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for a in &self.args {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
                && !a.is_empty()
            {
                write!(f, " {a}")?;
            } else {
                write!(f, " '{}'", a.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal or the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// stderr, else stdout, trimmed: what to show an operator when it failed.
    pub fn message(&self) -> String {
        let s = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        s.trim().to_string()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{program}: not found in {root} (PATH {LIFECYCLE_PATH}); {hint}")]
    NotFound {
        program: String,
        root: String,
        hint: String,
    },
    #[error("{command}: {err}")]
    Spawn {
        command: String,
        err: std::io::Error,
    },
    #[error("{command}: no answer within {secs} s; killed")]
    Timeout { command: String, secs: u64 },
}

/// Runs host commands. `Send + Sync` so the daemon can share one.
pub trait CommandRunner: Send + Sync {
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput, CommandError>;
}

/// Runs commands for real, chrooted into the root when it is not `/`, with a clean environment
/// (`PATH` as in a lifecycle configuration, `LC_ALL=C` for parseable output).
pub struct RealRunner {
    root: Root,
    timeout: Duration,
}

impl RealRunner {
    pub fn new(root: Root) -> Self {
        Self {
            root,
            timeout: Duration::from_secs(60),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

fn hint_for(program: &str) -> &'static str {
    match program {
        "visudo" | "sudo" => "install the sudo package",
        "gpasswd" => "install the passwd (shadow-utils) package",
        "systemctl" => "install systemd",
        _ => "install it or fix PATH",
    }
}

impl CommandRunner for RealRunner {
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput, CommandError> {
        let mut command = if self.root.is_host_root() {
            Command::new(&cmd.program)
        } else {
            // chroot(8) rather than chroot(2) in pre_exec: no unsafe code, and the same binary is
            // on every distribution.
            let mut c = Command::new(chroot_binary());
            c.arg(self.root.prefix()).arg(&cmd.program);
            c
        };
        command
            .args(&cmd.args)
            .env_clear()
            .env("PATH", LIFECYCLE_PATH)
            .env("LC_ALL", "C")
            .current_dir("/")
            .stdin(if cmd.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let not_found = || CommandError::NotFound {
            program: cmd.program.clone(),
            root: self.root.prefix().display().to_string(),
            hint: hint_for(&cmd.program).to_string(),
        };
        let mut child = command.spawn().map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                not_found()
            } else {
                CommandError::Spawn {
                    command: cmd.to_string(),
                    err,
                }
            }
        })?;
        if let (Some(input), Some(mut stdin)) = (cmd.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        let out = child.stdout.take().map(drain);
        let err = child.stderr.take().map(drain);
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    return Err(CommandError::Spawn {
                        command: cmd.to_string(),
                        err: e,
                    })
                }
            }
        };
        let Some(status) = status else {
            return Err(CommandError::Timeout {
                command: cmd.to_string(),
                secs: self.timeout.as_secs(),
            });
        };
        let output = CommandOutput {
            code: status.code(),
            stdout: out.and_then(|h| h.join().ok()).unwrap_or_default(),
            stderr: err.and_then(|h| h.join().ok()).unwrap_or_default(),
        };
        // chroot(8) reports a missing program as exit 127.
        if !self.root.is_host_root()
            && output.code == Some(127)
            && output.stderr.contains("No such file or directory")
        {
            return Err(not_found());
        }
        Ok(output)
    }
}

fn chroot_binary() -> &'static str {
    ["/usr/sbin/chroot", "/sbin/chroot", "/usr/bin/chroot"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("chroot")
}

fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A test runner: records every command and answers from a queue of scripted outputs (or a
/// default success with empty output when the queue is empty).
#[derive(Default)]
pub struct RecordingRunner {
    calls: Mutex<Vec<HostCommand>>,
    answers: Mutex<VecDeque<(String, CommandOutput)>>,
}

impl RecordingRunner {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next call of `program` returns `output`.
    pub fn answer(&self, program: &str, output: CommandOutput) {
        if let Ok(mut a) = self.answers.lock() {
            a.push_back((program.to_string(), output));
        }
    }

    pub fn calls(&self) -> Vec<HostCommand> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, cmd: &HostCommand) -> Result<CommandOutput, CommandError> {
        if let Ok(mut c) = self.calls.lock() {
            c.push(cmd.clone());
        }
        let mut answers = match self.answers.lock() {
            Ok(a) => a,
            Err(_) => return Ok(CommandOutput::default()),
        };
        if let Some(i) = answers.iter().position(|(p, _)| *p == cmd.program) {
            if let Some((_, out)) = answers.remove(i) {
                return Ok(out);
            }
        }
        Ok(CommandOutput {
            code: Some(0),
            ..CommandOutput::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_runner_records_and_answers() {
        let r = RecordingRunner::new();
        r.answer(
            "visudo",
            CommandOutput {
                code: Some(1),
                stderr: "syntax error".into(),
                ..Default::default()
            },
        );
        let bad = r
            .run(&HostCommand::new("visudo", ["-cf", "/etc/sudoers"]))
            .expect("runs");
        assert!(!bad.success());
        assert_eq!(bad.message(), "syntax error");
        let ok = r
            .run(&HostCommand::new("visudo", ["-cf", "x"]))
            .expect("runs");
        assert!(ok.success());
        assert_eq!(r.calls().len(), 2);
        assert_eq!(r.calls()[0].to_string(), "visudo -cf /etc/sudoers");
    }

    #[test]
    fn real_runner_reports_missing_program_with_hint() {
        let r = RealRunner::new(Root::host());
        let e = r
            .run(&HostCommand::new(
                "definitely-not-a-program-xyz",
                Vec::<String>::new(),
            ))
            .unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }

    #[test]
    fn real_runner_captures_output_and_exit_code() {
        let r = RealRunner::new(Root::host());
        let out = r
            .run(&HostCommand::new(
                "sh",
                ["-c", "echo out; echo err >&2; exit 3"],
            ))
            .expect("runs");
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn real_runner_kills_on_timeout() {
        let r = RealRunner::new(Root::host()).with_timeout(Duration::from_millis(200));
        let e = r.run(&HostCommand::new("sleep", ["5"])).unwrap_err();
        assert!(matches!(e, CommandError::Timeout { .. }), "{e}");
    }
}
