//! What more than one target needs (included with `#[path]`: each target is its own binary).

use std::collections::BTreeSet;

use notebook_agent::harden::sudoers::Subject;

/// The notebook user as the root-rights control sees it on an Amazon Linux notebook.
pub fn ec2_user() -> Subject {
    Subject {
        user: "ec2-user".into(),
        uid: 1000,
        groups: ["ec2-user", "wheel", "docker"].map(String::from).into(),
        gids: BTreeSet::from([1000, 10, 992]),
    }
}
