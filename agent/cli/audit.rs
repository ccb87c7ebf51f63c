//! `notebook-agent audit clear-rejected`: the operator's answer to records CloudWatch would not
//! take (the dead-letter file `shipper-rejected.jsonl`). `status` shows Shipping FAIL while that
//! file holds records, because they are not in CloudWatch; once the operator has re-sent them or
//! kept them elsewhere, this moves the file aside (never deletes it) and status passes again.

use crate::audit::health::{dead_letters, thousands};
use crate::audit::shipper::DEAD_LETTER_FILE;
use crate::exit::Exit;
use crate::host::Root;

use super::{Cli, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Move the dead-letter file (records CloudWatch refused, state directory
    /// shipper-rejected.jsonl) aside to shipper-rejected.cleared-<time>.jsonl, once its records
    /// were re-sent or kept elsewhere: Shipping stops failing for them. Nothing is deleted.
    ClearRejected,
}

pub fn run(cli: &Cli, args: &Args) -> Result<Exit, Failure> {
    let root = Root::new(&cli.root).map_err(Failure::Usage)?;
    match args.action {
        Action::ClearRejected => clear_rejected(&root),
    }
}

fn clear_rejected(root: &Root) -> Result<Exit, Failure> {
    let state = root.state_dir();
    let file = state.join(DEAD_LETTER_FILE);
    let n = dead_letters(&state);
    if !file.exists() {
        println!("clear-rejected: no {}: nothing to clear", file.display());
        return Ok(Exit::Ok);
    }
    let stamp = crate::audit::change::now_ms();
    let kept = state.join(format!("shipper-rejected.cleared-{stamp}.jsonl"));
    std::fs::rename(&file, &kept).map_err(|e| {
        Failure::Runtime(format!(
            "clear-rejected: cannot move {} to {}: {e}",
            file.display(),
            kept.display()
        ))
    })?;
    println!(
        "clear-rejected: {} record(s) moved from {} to {}; status no longer counts them",
        thousands(n),
        file.display(),
        kept.display()
    );
    Ok(Exit::Ok)
}
