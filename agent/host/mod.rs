//! The host layer every control uses: the `--root` prefix ([`Root`]), the one helper that writes
//! system files ([`safe_write`]), user and group lookup on a prefix root ([`users`]), and the
//! trait behind which host commands run ([`command`]).

pub mod command;
pub mod imds;
pub mod metadata;
pub mod root;
pub mod safe_write;
pub mod users;

pub use command::{CommandOutput, CommandRunner, HostCommand, RealRunner, RecordingRunner};
pub use root::Root;
pub use safe_write::{Backups, FileSpec, Owner, SafeWriter, WriteError, WriteOutcome};
pub use users::UserDb;
