//! Who acted: the processes behind file events. `table` keeps pid → process facts (with exited
//! processes for a grace period, and pid reuse told apart by start time), `connector` feeds it
//! from the kernel's process-events connector, `jupyter` names the kernel or terminal a process
//! descends from, `cmdline` redacts command lines. The daemon asks it through
//! `audit::attribution` for every change the fanotify source names a pid for.

pub mod cmdline;
pub mod connector;
pub mod jupyter;
pub mod table;

pub use table::{Lookup, ProcessInfo, ProcessTable, TableConfig};
