//! `--root`: the prefix under which every host path lives. `/` in production; a temp tree in tests,
//! so that every control runs unprivileged on a fixture.

use std::path::{Component, Path, PathBuf};

/// The agent's own state: backups, the apply record. On the system volume, so it is fresh on every
/// notebook start, like the files it describes.
pub const STATE_DIR: &str = "/var/lib/notebook-agent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    prefix: PathBuf,
}

impl Root {
    /// `prefix` must be an existing absolute directory. It is canonicalised once so that every
    /// later "is this inside the root" test compares real paths.
    pub fn new(prefix: impl AsRef<Path>) -> Result<Self, String> {
        let prefix = prefix.as_ref();
        if !prefix.is_absolute() {
            return Err(format!(
                "--root {}: must be an absolute path",
                prefix.display()
            ));
        }
        let canonical = prefix
            .canonicalize()
            .map_err(|e| format!("--root {}: {e}", prefix.display()))?;
        if !canonical.is_dir() {
            return Err(format!("--root {}: not a directory", prefix.display()));
        }
        Ok(Self { prefix: canonical })
    }

    /// The real host root.
    pub fn host() -> Self {
        Self {
            prefix: PathBuf::from("/"),
        }
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    pub fn is_host_root(&self) -> bool {
        self.prefix == Path::new("/")
    }

    /// Where the host path `host_path` (absolute, as on the notebook) is under this root.
    /// `..` components are dropped rather than followed, so a path can never leave the root.
    pub fn path(&self, host_path: impl AsRef<Path>) -> PathBuf {
        let mut out = self.prefix.clone();
        for c in host_path.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    /// The relative components of a host path, for walking it from the root with `openat`.
    pub fn relative(host_path: &Path) -> PathBuf {
        host_path
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    /// `var/lib/notebook-agent` under this root.
    pub fn state_dir(&self) -> PathBuf {
        self.path(STATE_DIR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_and_never_escapes() {
        let r = Root {
            prefix: PathBuf::from("/tmp/r"),
        };
        assert_eq!(
            r.path("/etc/pip.conf"),
            PathBuf::from("/tmp/r/etc/pip.conf")
        );
        assert_eq!(r.path("/etc/../../x"), PathBuf::from("/tmp/r/etc/x"));
        assert_eq!(
            Root::host().path("/etc/sudoers"),
            PathBuf::from("/etc/sudoers")
        );
    }

    #[test]
    fn relative_root_is_refused() {
        assert!(Root::new("relative/dir").is_err());
    }
}
