//! `audit.reads`: the opt-in read audit. Off when absent (`{}` audits changes only, as before).
//! The config names which files are sensitive (globs); `audit::reads` aggregates the reads the
//! fanotify source reports and turns them into OCSF Read records. Its validation and the glob
//! compiler live here, self-contained, so the audit and the validator use one matcher.
//!
//! **Globs.** Matched against the path relative to the audit root it is under, `/` separated:
//! `data/**` is everything under `<root>/data`, `*.csv` (no `/`) matches a file name at any
//! depth (as in `.gitignore`), `reports/*.parquet` only directly in `<root>/reports`.

use std::path::Path;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

use super::validate::Problem;

/// Shortest and longest aggregation window, in seconds.
pub const MIN_WINDOW_SECS: u64 = 5;
pub const MAX_WINDOW_SECS: u64 = 3600;
/// Most files one process may read in one directory in one window before they are summarised.
pub const MAX_SUMMARY_AFTER: u32 = 1000;
/// Most globs (each is matched against every read).
pub const MAX_GLOBS: usize = 64;

/// Which reads are audited, and how they are aggregated.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReadsConfig {
    /// Sensitive files, as globs relative to the audit root (see the module docs), e.g.
    /// `["data/**", "*.csv", "*.parquet"]`.
    pub globs: Vec<String>,
    /// Reads are aggregated per (process, file) over this many seconds. Default 60.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// When one process reads more than this many files of one directory in one window, the
    /// directory gets one summary record (counts, first/last time, a sample of names) instead of
    /// one record per file. Default 20.
    #[serde(default = "default_summary_after")]
    pub summary_after: u32,
}

fn default_window_secs() -> u64 {
    60
}
fn default_summary_after() -> u32 {
    20
}

/// The compiled globs of [`ReadsConfig`].
#[derive(Debug, Clone)]
pub struct ReadMatcher {
    set: GlobSet,
}

impl ReadMatcher {
    /// Compiles `globs`; the error names the index of the first bad one and why.
    pub fn new(globs: &[String]) -> Result<Self, (usize, String)> {
        let mut b = GlobSetBuilder::new();
        for (i, g) in globs.iter().enumerate() {
            b.add(compile_one(g).map_err(|m| (i, m))?);
        }
        let set = b.build().map_err(|e| (0, e.to_string()))?;
        Ok(Self { set })
    }

    /// Whether `rel` (a path relative to its audit root) is a sensitive file.
    pub fn is_match(&self, rel: &Path) -> bool {
        self.set.is_match(rel)
    }
}

fn compile_one(g: &str) -> Result<globset::Glob, String> {
    if g.is_empty() {
        return Err("is empty".into());
    }
    if g.starts_with('/') {
        return Err("must be relative to the audit root (no leading '/')".into());
    }
    if g.split('/').any(|c| c == "..") {
        return Err("must not contain '..'".into());
    }
    // A pattern without '/' names a file at any depth, as in .gitignore.
    let pattern = if g.contains('/') {
        g.to_string()
    } else {
        format!("**/{g}")
    };
    GlobBuilder::new(&pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| format!("is not a glob: {}", e.kind()))
}

/// Every problem of `audit.reads`.
pub fn problems(r: &ReadsConfig) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut push = |path: String, message: String| out.push(Problem { path, message });
    if r.globs.is_empty() {
        push(
            "audit.reads.globs".into(),
            "is empty; name the sensitive files (e.g. [\"data/**\", \"*.csv\"]) or remove audit.reads".into(),
        );
    }
    if r.globs.len() > MAX_GLOBS {
        push(
            "audit.reads.globs".into(),
            format!("has {} globs; at most {MAX_GLOBS}", r.globs.len()),
        );
    }
    for (i, g) in r.globs.iter().enumerate() {
        if let Err(m) = compile_one(g) {
            push(format!("audit.reads.globs[{i}]"), format!("{g:?} {m}"));
        }
    }
    if !(MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&r.window_secs) {
        push(
            "audit.reads.window_secs".into(),
            format!(
                "{} is out of range; use {MIN_WINDOW_SECS}..={MAX_WINDOW_SECS}",
                r.window_secs
            ),
        );
    }
    if !(1..=MAX_SUMMARY_AFTER).contains(&r.summary_after) {
        push(
            "audit.reads.summary_after".into(),
            format!(
                "{} is out of range; use 1..={MAX_SUMMARY_AFTER}",
                r.summary_after
            ),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(globs: &[&str]) -> ReadMatcher {
        ReadMatcher::new(&globs.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn globs_match_relative_paths_like_gitignore() {
        let x = m(&["data/**", "*.csv", "reports/*.parquet"]);
        assert!(x.is_match(Path::new("data/train/0001.jpg")));
        assert!(x.is_match(Path::new("a/b/c.csv")));
        assert!(x.is_match(Path::new("c.csv")));
        assert!(x.is_match(Path::new("reports/q1.parquet")));
        assert!(!x.is_match(Path::new("reports/old/q1.parquet")));
        assert!(!x.is_match(Path::new("notebooks/a.ipynb")));
        assert!(!x.is_match(Path::new("mydata/x")));
    }

    #[test]
    fn every_bad_field_is_named() {
        let r = ReadsConfig {
            globs: vec!["".into(), "/abs/*".into(), "a/../b".into(), "[".into()],
            window_secs: 1,
            summary_after: 0,
        };
        let paths: Vec<String> = problems(&r).into_iter().map(|p| p.path).collect();
        assert_eq!(
            paths,
            [
                "audit.reads.globs[0]",
                "audit.reads.globs[1]",
                "audit.reads.globs[2]",
                "audit.reads.globs[3]",
                "audit.reads.window_secs",
                "audit.reads.summary_after"
            ]
        );
        let empty = ReadsConfig {
            globs: vec![],
            window_secs: 60,
            summary_after: 20,
        };
        assert_eq!(problems(&empty)[0].path, "audit.reads.globs");
    }
}
