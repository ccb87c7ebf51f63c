//! Logging: `tracing` to journald when its socket exists, to stderr otherwise. One-shot commands
//! (`apply`, `status`, `revert`) also log to stderr, because lifecycle-configuration output is
//! what reaches CloudWatch. `-v`/`-vv` raise the level; `RUST_LOG` overrides when no `-v` is given.

use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

pub fn init(verbosity: u8, daemon: bool) {
    let filter = match verbosity {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        1 => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    let journald = if Path::new(JOURNALD_SOCKET).exists() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier("notebook-agent".to_string()))
    } else {
        None
    };
    let stderr = (!daemon || journald.is_none()).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(|| ScrubbedStderr)
            .with_target(false)
            .with_ansi(false)
            .compact()
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .try_init();
}

/// stderr with every secret registered in the process scrubbed (`config::secret::scrub`). The fmt
/// layer formats an event into a buffer and writes it with one `write_all`, so a secret is never
/// split across two writes.
struct ScrubbedStderr;

impl std::io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(crate::config::secret::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
