//! `notebook-agent apply [--dry-run]`.

use crate::control::{apply, diff, Context};
use crate::exit::Exit;
use crate::harden;
use crate::host::RealRunner;

use super::{Cli, Failure, Globals};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print every planned change as a unified diff (secrets redacted) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(cli: &Cli, args: &Args) -> Result<Exit, Failure> {
    let g = Globals::load(cli)?;
    let runner = RealRunner::new(g.root.clone());
    let ctx = Context::new(&g.root, &g.config, &runner).map_err(Failure::Runtime)?;
    let controls = harden::all();

    if args.dry_run {
        let plans =
            apply::plan_all(&ctx, &controls).map_err(|e| Failure::Runtime(e.to_string()))?;
        apply::validate_all(&ctx, &controls, &plans)
            .map_err(|e| Failure::Runtime(e.to_string()))?;
        let (text, count) = diff::render(&ctx, &controls, &plans, &g.config.redactor());
        print!("{text}");
        println!("dry run: {count} change(s) planned; nothing was changed");
        return Ok(Exit::Ok);
    }

    let report = apply::apply(&ctx, &controls).map_err(|e| Failure::Runtime(e.to_string()))?;
    // Evidence and targets may quote file contents: printed through the config's redaction.
    let redactor = g.config.redactor();
    for c in &report.controls {
        let (status, evidence) = c
            .finding
            .as_ref()
            .map(|f| (f.status.to_string(), f.evidence.clone()))
            .unwrap_or_default();
        println!(
            "{:<16} {:>3} changed  {:<14} {}",
            c.title,
            c.changes.len(),
            status,
            redactor.scrub(&evidence)
        );
        for ch in &c.changes {
            println!(
                "    {} {}",
                ch.outcome,
                redactor.scrub(&ch.target.to_string())
            );
        }
    }
    let failing = report.failing();
    println!(
        "apply: {} changed, {}",
        report.changed(),
        if failing.is_empty() {
            "every managed control passes".to_string()
        } else {
            format!("{} control(s) still failing", failing.len())
        }
    );
    if failing.is_empty() {
        Ok(Exit::Ok)
    } else {
        Err(Failure::Runtime(format!(
            "applied, but not compliant: {}",
            failing
                .iter()
                .map(|f| format!("{}: {}", f.control, redactor.scrub(&f.evidence)))
                .collect::<Vec<_>>()
                .join("; ")
        )))
    }
}
