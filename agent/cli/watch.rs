//! `notebook-agent watch`: the resident audit daemon (watcher → hash → OCSF → spool → shipper),
//! with the drift monitor beside it (drift repair and heartbeats).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::audit::daemon::{self, Options};
use crate::audit::drift::{DriftMonitor, DriftOptions};
use crate::audit::shipping::Shipping;
use crate::exit::Exit;
use crate::harden::codeartifact::Refresher;

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
        // pip's CodeArtifact token is kept fresh all the same; with no spool its events are
        // dropped (the journal has them).
        let (tx, rx) = std::sync::mpsc::channel();
        let refresher = Refresher::spawn(&g.root, &g.config, &stop, tx);
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(200));
            while rx.try_recv().is_ok() {}
        }
        if let Some(r) = refresher {
            r.join();
        }
        return Ok(Exit::Ok);
    }
    let opts = Options::from_config(&g.root, &g.config, args.stdout);
    // One channel for every producer of agent events (the drift monitor, the shipper): the
    // daemon writes them to the spool in the order they arrive.
    let (events_tx, events_rx) = std::sync::mpsc::channel();
    // Before the drift monitor: the token in the files is this process's current token before
    // drift repair plans with it.
    let refresher = Refresher::spawn(&g.root, &g.config, &stop, events_tx.clone());
    let drift = match DriftMonitor::start(
        g.root.clone(),
        g.config.clone(),
        DriftOptions::from_config(&g.config),
        Arc::clone(&stop),
        events_tx.clone(),
    ) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::error!(error = %e, "No drift repair and no heartbeats.");
            None
        }
    };
    let mut shipping = None;
    let report = daemon::run(&g.root, opts, Arc::clone(&stop), |reader| {
        match Shipping::start_with_events(&g.root, &g.config, reader, events_tx) {
            Ok(s) => shipping = Some(s),
            Err(e) => {
                tracing::error!(error = %e, "Not shipping to CloudWatch Logs; records stay in the spool.");
                // `status` must say so (FAIL, with the reason), not report the audit healthy.
                let state = g.root.state_dir();
                let reason = g.config.redactor().scrub(&e);
                if let Err(w) = crate::audit::shipper::Stats::persist_not_started(
                    &state,
                    &reason,
                    crate::audit::change::now_ms(),
                ) {
                    tracing::warn!(error = %w, "Cannot record why shipping did not start.");
                }
            }
        }
        Some(events_rx)
    });
    // A pipeline that failed must not leave the monitor running.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(d) = drift {
        d.join();
    }
    if let Some(r) = refresher {
        r.join();
    }
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
