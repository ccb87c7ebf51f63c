//! The hardening controls, one file each. [`all`] is the order `apply` runs them in.

pub mod pip;

use crate::control::Control;

/// Every control, in apply order.
pub fn all() -> Vec<Box<dyn Control>> {
    vec![Box::new(pip::Pip)]
}

/// The banner every managed file starts with, in the file's comment syntax.
pub fn managed_banner(comment: &str) -> String {
    format!(
        "{comment} Managed by notebook-agent; local changes are reverted.\n\
         {comment} Change /etc/notebook-agent/config.json (through the lifecycle configuration) instead.\n"
    )
}
pub mod sudoers;
