//! The notebook's Python environments: the conda base (`~/anaconda3`) and every env under
//! `~/anaconda3/envs/`. Several controls write into each of them (pip.conf, the environment
//! module's `.pth`); none is skipped silently — what is left out is logged with the reason.

use std::path::{Path, PathBuf};

use super::super::control::Context;

/// Host paths of every environment prefix, base first, then envs by name.
pub fn prefixes(ctx: &Context<'_>) -> Vec<PathBuf> {
    let base = ctx.home().join("anaconda3");
    let mut out = Vec::new();
    if is_real_dir(ctx, &base) {
        out.push(base.clone());
    } else {
        tracing::debug!(path = %base.display(), "No conda base environment.");
        return out;
    }
    let envs = base.join("envs");
    let mut names: Vec<String> = match std::fs::read_dir(ctx.root.path(&envs)) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    for name in names {
        let p = envs.join(&name);
        if is_real_dir(ctx, &p) {
            out.push(p);
        } else {
            tracing::warn!(path = %p.display(), "Not a directory (or a symlink): not treated as a conda env.");
        }
    }
    out
}

/// A directory that is not a symlink (the user owns these trees).
pub fn is_real_dir(ctx: &Context<'_>, host: &Path) -> bool {
    std::fs::symlink_metadata(ctx.root.path(host)).is_ok_and(|m| m.is_dir())
}

/// `lib/python3.*/site-packages` directories of an env (host paths), sorted. An env without one
/// (no Python installed) is logged.
pub fn site_packages(ctx: &Context<'_>, prefix: &Path) -> Vec<PathBuf> {
    let lib = prefix.join("lib");
    let mut out: Vec<PathBuf> = match std::fs::read_dir(ctx.root.path(&lib)) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("python3"))
            .map(|n| lib.join(n).join("site-packages"))
            .filter(|p| is_real_dir(ctx, p))
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    if out.is_empty() {
        tracing::warn!(env = %prefix.display(), "No lib/python3.*/site-packages in this env.");
    }
    out
}
