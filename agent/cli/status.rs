//! `notebook-agent status [--json]`: every control's check, with evidence.

use serde::Serialize;

use crate::control::{Context, Finding, Status};
use crate::exit::Exit;
use crate::harden;
use crate::host::RealRunner;

use super::{Cli, Failure, Globals};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the findings as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct StatusReport<'a> {
    version: u32,
    agent_version: &'static str,
    compliant: bool,
    controls: &'a [Finding],
}

pub fn run(cli: &Cli, args: &Args) -> Result<Exit, Failure> {
    let g = Globals::load(cli)?;
    let runner = RealRunner::new(g.root.clone());
    let ctx = Context::new(&g.root, &g.config, &runner).map_err(Failure::Runtime)?;
    let findings: Vec<Finding> = harden::all().iter().map(|c| c.check(&ctx)).collect();
    // An unknown result is not evidence of compliance.
    let compliant = findings
        .iter()
        .all(|f| matches!(f.status, Status::Pass | Status::NotConfigured));
    let redactor = g.config.redactor();
    if args.json {
        let report = StatusReport {
            version: 1,
            agent_version: env!("CARGO_PKG_VERSION"),
            compliant,
            controls: &findings,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Runtime(format!("status: {e}")))?;
        println!("{}", redactor.scrub(&text));
    } else {
        let w = findings
            .iter()
            .map(|f| f.title.len())
            .chain([16])
            .max()
            .unwrap_or(16);
        println!("{:<w$} {:<14} EVIDENCE", "CONTROL", "STATUS");
        for f in &findings {
            println!(
                "{:<w$} {:<14} {}",
                f.title,
                f.status.to_string(),
                redactor.scrub(&f.evidence)
            );
        }
    }
    Ok(if compliant {
        Exit::Ok
    } else {
        Exit::NonCompliant
    })
}
