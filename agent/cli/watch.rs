//! `notebook-agent watch`: the resident audit daemon (watcher → hash → OCSF → spool → shipper).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::audit::daemon::{self, Options};
use crate::audit::shipping::Shipping;
use crate::exit::Exit;

use super::{Cli, Failure, Globals};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print every OCSF record on stdout (one JSON object per line) instead of spooling and
    /// shipping it; nothing is persisted. For admins and tests. Stops on SIGTERM or SIGINT.
    #[arg(long)]
    pub stdout: bool,
}

pub fn run(cli: &Cli, args: &Args) -> Result<Exit, Failure> {
    let g = Globals::load(cli)?;
    let stop = Arc::new(AtomicBool::new(false));
    // Before any other thread exists, so that every thread inherits the blocked signals.
    daemon::install_signal_thread(Arc::clone(&stop)).map_err(Failure::Runtime)?;
    if !g.config.audit.enabled {
        tracing::warn!("audit.enabled is false: nothing is watched.");
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        return Ok(Exit::Ok);
    }
    let opts = Options::from_config(&g.root, &g.config, args.stdout);
    let mut shipping = None;
    let report = daemon::run(&g.root, opts, stop, |reader| {
        match Shipping::start(&g.root, &g.config, reader) {
            Ok((s, events)) => {
                shipping = Some(s);
                Some(events)
            }
            Err(e) => {
                tracing::error!(error = %e, "Not shipping to CloudWatch Logs; records stay in the spool.");
                None
            }
        }
    });
    // Whatever happened to the pipeline, let the shipper drain what the spool holds.
    if let Some(s) = shipping {
        s.stop();
    }
    let report = report.map_err(|e| Failure::Runtime(format!("watch: {e}")))?;
    tracing::info!(
        events = report.events_written,
        dropped = report.events_dropped,
        "Stopped."
    );
    Ok(Exit::Ok)
}
