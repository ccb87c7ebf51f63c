//! Entry point: parse arguments, start logging, dispatch. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use notebook_agent::cli::{self, Cli};
use notebook_agent::exit::Exit;

/// mimalloc instead of musl's allocator: under a file burst musl's malloc and its lock took about a
/// third of the daemon's CPU (docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    notebook_agent::alloc::purge_sooner();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap: --help/--version exit 0, usage errors exit 2.
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    notebook_agent::logging::init(cli.verbose, cli.command.is_daemon());
    cli::run(cli).into()
}
