//! `notebook-agent status [--json]`: every control's check, with evidence.

use crate::exit::Exit;
use crate::harden;
use crate::host::RealRunner;
use crate::status;

use super::{Cli, Failure, Globals};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the findings as one JSON object instead of a table (schema: docs/STATUS.md).
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Cli, args: &Args) -> Result<Exit, Failure> {
    let g = Globals::load(cli)?;
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "status: running as uid {}: checks that read root-only files (/etc/sudoers, \
             /etc/sudoers.d, /etc/gshadow, the agent's state in /var/lib/notebook-agent) and ask \
             sudo need root and may show UNKNOWN; run it as root for the full evidence",
            nix::unistd::geteuid()
        );
    }
    let runner = RealRunner::new(g.root.clone());
    let report = status::collect(
        &g.root,
        &g.config,
        &runner,
        &harden::all(),
        crate::audit::change::now_ms(),
    )
    .map_err(Failure::Runtime)?;
    if args.json {
        println!(
            "{}",
            report
                .to_redacted_json(&g.config)
                .map_err(Failure::Runtime)?
        );
    } else {
        let redactor = g.config.redactor();
        let rows = || report.controls.iter().chain(&report.audit);
        let w = rows()
            .map(|f| f.title.len())
            .chain([16])
            .max()
            .unwrap_or(16);
        println!("{:<w$} {:<14} EVIDENCE", "CONTROL", "STATUS");
        for f in rows() {
            println!(
                "{:<w$} {:<14} {}",
                f.title,
                f.status.to_string(),
                redactor.scrub(&f.evidence)
            );
        }
    }
    // 3 wins over 4 (DESIGN.md).
    Ok(if !report.compliant {
        Exit::NonCompliant
    } else if !report.audit_healthy {
        Exit::DaemonUnhealthy
    } else {
        Exit::Ok
    })
}
