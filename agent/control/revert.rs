//! `revert`: restores every file `apply` replaced or removed from its backup, deletes what it
//! created, and removes the directories it created when they are empty.

use std::path::PathBuf;

use crate::host::safe_write::BackupEntry;
use crate::host::{Backups, FileSpec, Root, SafeWriter};

/// One restored path and what was done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub path: PathBuf,
    pub action: &'static str,
}

pub fn revert(root: &Root) -> Result<Vec<Restored>, String> {
    let backups = Backups::open(root)?;
    let writer = SafeWriter::new(root, None);
    let manifest = backups.manifest();
    let mut done = Vec::new();
    let mut errors = Vec::new();
    // Files first, then directories deepest first so parents are empty when their turn comes.
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (path, entry) in &manifest.entries {
        let result = match entry {
            BackupEntry::File { mode, owner } => backups.original(path).and_then(|contents| {
                writer
                    .write(
                        path,
                        &FileSpec {
                            contents,
                            mode: *mode,
                            owner: *owner,
                        },
                    )
                    .map(|_| "restored from backup")
                    .map_err(|e| e.to_string())
            }),
            BackupEntry::CreatedFile => writer
                .remove(path)
                .map(|_| "removed (created by apply)")
                .map_err(|e| e.to_string()),
            BackupEntry::CreatedDir => {
                dirs.push(path.clone());
                continue;
            }
        };
        match result {
            Ok(action) => {
                tracing::info!(path = %path.display(), action, "Reverted file.");
                backups.forget(path)?;
                done.push(Restored {
                    path: path.clone(),
                    action,
                });
            }
            Err(e) => errors.push(e),
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        match writer.remove_empty_dir(&d) {
            Ok(true) => {
                backups.forget(&d)?;
                done.push(Restored {
                    path: d,
                    action: "removed directory (created by apply)",
                });
            }
            Ok(false) => {
                // Not empty: something else lives there now; leave it and say so.
                tracing::warn!(path = %d.display(), "Directory created by apply is not empty; left in place.");
                backups.forget(&d)?;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        Ok(done)
    } else {
        Err(errors.join("\n  "))
    }
}

/// After a revert, the services see the restored files: `systemctl daemon-reload` when a unit
/// file or drop-in was restored (and systemd runs), then `systemctl --no-block restart
/// jupyter-server` when anything its environment comes from was (drop-ins, profile.d, bashrc,
/// groups), if the unit exists. Returns one line per command for the report.
pub fn reload_services(
    root: &Root,
    runner: &dyn crate::host::CommandRunner,
    restored: &[Restored],
) -> Vec<String> {
    use crate::harden::{systemd_runs, unit_installed, JUPYTER_UNIT};
    use crate::host::HostCommand;
    let touched = |prefixes: &[&str]| {
        restored
            .iter()
            .any(|r| prefixes.iter().any(|p| r.path.starts_with(p)))
    };
    let mut out = Vec::new();
    let mut run = |cmd: HostCommand| {
        let line = match runner.run(&cmd) {
            Ok(o) if o.success() => format!("ran {cmd}"),
            Ok(o) => format!("{cmd} failed (exit {:?}): {}", o.code, o.message()),
            Err(e) => format!("{cmd} failed: {e}"),
        };
        out.push(line);
    };
    if touched(&["/etc/systemd/system"]) && systemd_runs(root) {
        run(HostCommand::new("systemctl", ["daemon-reload"]));
    }
    let env_sources = [
        "/etc/systemd/system/jupyter-server.service.d",
        "/etc/profile.d",
        "/etc/bashrc",
        "/etc/bash.bashrc",
        "/etc/group",
    ];
    if touched(&env_sources) && systemd_runs(root) && unit_installed(root, JUPYTER_UNIT) {
        run(HostCommand::new(
            "systemctl",
            ["--no-block", "restart", JUPYTER_UNIT],
        ));
    }
    out
}
