//! The audit pipeline of `notebook-agent watch`, in the order an event travels:
//! `watcher` (over a `source`: fanotify or inotify; excludes, rescans) and `snapshot` (catch-up
//! after downtime) produce [`change::FsChange`] values → `attribution` names the `process` behind
//! each (fanotify only) → `hash` adds sha256 off the notify thread → `ocsf` encodes OCSF 1.x
//! records → `spool` keeps them durably until the shipper has them acknowledged by CloudWatch;
//! `daemon` runs them together; `drift` checks the controls' files beside it, repairs drift and
//! sends heartbeats.

pub mod attribution;
pub mod change;
pub mod daemon;
pub mod drift;
pub mod hash;
pub mod health;
pub mod ocsf;
pub mod ocsf_actor;
pub mod process;
pub mod queue;
pub mod reads;
pub mod shipper;
pub mod shipping;
pub mod snapshot;
pub mod source;
pub mod spool;
pub mod tree;
pub mod watcher;
