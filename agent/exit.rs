//! Exit codes. They are an API: admins script `status` and lifecycle scripts test `apply`.

use std::process::ExitCode;

/// Documented in `--help` and the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `status`, every managed control passes and the audit daemon is healthy.
    Ok = 0,
    /// Runtime failure (a host file could not be written, a command failed, …).
    Failure = 1,
    /// Bad usage or bad config; nothing was changed.
    Usage = 2,
    /// `status`: a control is not compliant (wins over 4).
    NonCompliant = 3,
    /// `status`: every control passes but the audit daemon is not healthy.
    DaemonUnhealthy = 4,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// The `--help` text for the codes.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success; for status: every managed control passes and the audit daemon is healthy
  1  runtime failure (a host file could not be written, a command failed, ...)
  2  bad usage or bad config (every problem is listed with its JSON path); nothing was changed
  3  status: a control is not compliant (wins when 3 and 4 both hold)
  4  status: every control passes but the audit daemon is not healthy";
