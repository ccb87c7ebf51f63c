//! `notebook-agent revert`: undo what apply changed, from its backups.

use crate::control::revert;
use crate::exit::Exit;
use crate::host::Root;

use super::{Cli, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Cli, _args: &Args) -> Result<Exit, Failure> {
    // Revert needs no config: it works from the backups alone, even if the config is broken.
    let root = Root::new(&cli.root).map_err(Failure::Usage)?;
    let restored = revert::revert(&root).map_err(|e| Failure::Runtime(format!("revert: {e}")))?;
    for r in &restored {
        println!("{} {}", r.action, r.path.display());
    }
    println!("revert: {} path(s) restored", restored.len());
    let runner = crate::host::RealRunner::new(root.clone());
    for line in revert::reload_services(&root, &runner, &restored) {
        println!("{line}");
    }
    Ok(Exit::Ok)
}
