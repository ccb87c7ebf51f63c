//! `notebook-agent watch`: the resident audit daemon (watcher → event → spool → shipper).

use crate::exit::Exit;

use super::{Cli, Failure, Globals};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Cli, _args: &Args) -> Result<Exit, Failure> {
    // Validate the config even now, so a bad config is reported with exit 2 as everywhere else.
    let _ = Globals::load(cli)?;
    Err(Failure::Runtime(
        "watch: not implemented yet (the audit daemon is a later release)".to_string(),
    ))
}
