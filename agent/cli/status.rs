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
    /// The audit daemon and shipping rows allow exit 0 (PASS, or NOT_CONFIGURED where the unit
    /// is not installed).
    audit_healthy: bool,
    controls: &'a [Finding],
    audit: &'a [Finding],
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
    let audit = crate::audit::health::findings(&g.root, &g.config, crate::audit::change::now_ms());
    let audit_healthy = crate::audit::health::healthy(&audit);
    let redactor = g.config.redactor();
    if args.json {
        let report = StatusReport {
            version: 1,
            agent_version: env!("CARGO_PKG_VERSION"),
            compliant,
            audit_healthy,
            controls: &findings,
            audit: &audit,
        };
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| Failure::Runtime(format!("status: {e}")))?;
        println!("{}", redactor.scrub(&text));
    } else {
        let w = findings
            .iter()
            .chain(&audit)
            .map(|f| f.title.len())
            .chain([16])
            .max()
            .unwrap_or(16);
        println!("{:<w$} {:<14} EVIDENCE", "CONTROL", "STATUS");
        for f in findings.iter().chain(&audit) {
            println!(
                "{:<w$} {:<14} {}",
                f.title,
                f.status.to_string(),
                redactor.scrub(&f.evidence)
            );
        }
    }
    // 3 wins over 4 (DESIGN.md).
    Ok(if !compliant {
        Exit::NonCompliant
    } else if !audit_healthy {
        Exit::DaemonUnhealthy
    } else {
        Exit::Ok
    })
}
