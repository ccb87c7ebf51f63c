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
