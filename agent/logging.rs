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
            .with_writer(std::io::stderr)
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
