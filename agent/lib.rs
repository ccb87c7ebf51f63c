//! notebook-agent: hardens a SageMaker notebook instance while its lifecycle configuration runs,
//! then stays resident to audit it. `main.rs` only parses arguments and dispatches to `cli`.

pub mod alloc;
pub mod audit;
pub mod cli;
pub mod config;
pub mod control;
pub mod exit;
pub mod harden;
pub mod host;
pub mod logging;
pub mod status;
