//! The hardening controls, one file each. [`all`] is the order `apply` runs them in.

pub mod codeartifact;
pub mod environment;
pub mod envs;
pub mod pip;
pub mod proxy;
pub mod render;
pub mod root_access;
pub mod sudoers;

use std::path::PathBuf;

use crate::control::{Action, Context, Control};
use crate::host::HostCommand;

/// Every control, in apply order.
pub fn all() -> Vec<Box<dyn Control>> {
    vec![
        Box::new(root_access::RootAccess),
        Box::new(pip::Pip),
        Box::new(proxy::Proxy),
        Box::new(environment::Environment),
    ]
}

/// The banner every managed file starts with, in the file's comment syntax.
pub fn managed_banner(comment: &str) -> String {
    format!(
        "{comment} Managed by notebook-agent; local changes are reverted.\n\
         {comment} Change /etc/notebook-agent/config.json (through the lifecycle configuration) instead.\n"
    )
}

/// The jupyter-server unit as SageMaker installs it.
pub const JUPYTER_UNIT: &str = "jupyter-server.service";

/// Whether systemd runs under `root` (not in a chroot or an image build).
pub fn systemd_runs(root: &crate::host::Root) -> bool {
    root.path("/run/systemd/system").is_dir()
}

/// Whether `unit` is installed under `root`.
pub fn unit_installed(root: &crate::host::Root, unit: &str) -> bool {
    [
        "/etc/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ]
    .iter()
    .any(|d| root.path(d).join(unit).exists())
}

/// `systemctl --no-block restart jupyter-server` when one of `when_changed` changes in this apply,
/// if systemd runs and the unit exists. Non-blocking: the lifecycle script must not wait for Jupyter.
pub fn restart_jupyter(ctx: &Context<'_>, when_changed: Vec<PathBuf>) -> Option<Action> {
    if when_changed.is_empty() || !systemd_runs(ctx.root) || !unit_installed(ctx.root, JUPYTER_UNIT)
    {
        return None;
    }
    Some(Action::Run {
        command: HostCommand::new("systemctl", ["--no-block", "restart", JUPYTER_UNIT]),
        reason: "running processes keep old groups and environment".to_string(),
        when_changed,
        must_succeed: false,
    })
}

/// A control that writes a jupyter-server drop-in: `systemctl daemon-reload` when the drop-in
/// changed (if systemd runs), then the restart of [`restart_jupyter`] when any of `inputs` did.
pub fn jupyter_service(ctx: &Context<'_>, dropin: &str, inputs: Vec<PathBuf>) -> Vec<Action> {
    let mut out = Vec::new();
    if systemd_runs(ctx.root) {
        out.push(Action::Run {
            command: HostCommand::new("systemctl", ["daemon-reload"]),
            reason: "the jupyter-server drop-in changed".to_string(),
            when_changed: vec![PathBuf::from(dropin)],
            must_succeed: false,
        });
    }
    out.extend(restart_jupyter(ctx, inputs));
    out
}
