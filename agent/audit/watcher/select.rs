//! Which event source runs: fanotify first (a filesystem mark on the filesystem of every root,
//! the acting pid with every event, no watch per directory), inotify when fanotify is refused
//! (old kernel, no `CAP_SYS_ADMIN`, a filesystem that refuses the mark). The choice and its
//! reason are never silent: they are in the log, [`super::StartInfo`] (the Start record) and
//! `status`. `NOTEBOOK_AGENT_SOURCE=auto|fanotify|inotify` forces one (tests run every watcher
//! test with each); a forced fanotify that is refused is an error, not a fallback.

use std::path::PathBuf;
use std::sync::Arc;

use nix::errno::Errno;
use nix::sys::inotify::Inotify;

use super::backend::Backend;
use super::reader::ReaderHalf;
use super::{WatchConfig, WatchError};
use crate::audit::source::fanotify::{FanotifyConfig, FanotifySource};
use crate::audit::source::inotify::{self, InotifyReader, InotifyWatches};
use crate::audit::source::Scope;

/// The environment variable that forces a source.
pub const SOURCE_ENV: &str = "NOTEBOOK_AGENT_SOURCE";

/// Which source to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceChoice {
    /// Whatever `NOTEBOOK_AGENT_SOURCE` says at start; `Auto` when it is unset.
    #[default]
    FromEnv,
    /// fanotify, else inotify (with the reason in the log, the Start record and `status`).
    Auto,
    Fanotify,
    Inotify,
}

impl SourceChoice {
    pub fn parse(s: &str) -> Option<SourceChoice> {
        match s {
            "auto" | "" => Some(SourceChoice::Auto),
            "fanotify" => Some(SourceChoice::Fanotify),
            "inotify" => Some(SourceChoice::Inotify),
            _ => None,
        }
    }

    /// Whether this choice may run fanotify (not inotify forced, nor an invalid variable).
    pub fn may_be_fanotify(self) -> bool {
        self.resolve()
            .is_ok_and(|(c, _)| c != SourceChoice::Inotify)
    }

    /// `FromEnv` resolved; an unknown value names the variable.
    fn resolve(self) -> Result<(SourceChoice, bool), WatchError> {
        if self != SourceChoice::FromEnv {
            return Ok((self, false));
        }
        match std::env::var(SOURCE_ENV) {
            Err(_) => Ok((SourceChoice::Auto, false)),
            Ok(v) => SourceChoice::parse(v.trim())
                .map(|c| (c, c != SourceChoice::Auto))
                .ok_or_else(|| {
                    WatchError::BadSource(format!(
                        "{SOURCE_ENV}={v:?}: expected auto, fanotify or inotify"
                    ))
                }),
        }
    }
}

/// The source that was opened, its two halves, and why it is this one.
pub(super) struct Opened {
    pub(super) backend: Backend,
    pub(super) reader: Option<ReaderHalf>,
    pub(super) reason: String,
    /// `inotify_init` failed: every tree is scanned periodically.
    pub(super) init_error: Option<Errno>,
}

pub(super) fn open(cfg: &WatchConfig) -> Result<Opened, WatchError> {
    let (choice, by_env) = cfg.source.resolve()?;
    let how = if by_env {
        format!(" ({SOURCE_ENV})")
    } else {
        String::new()
    };
    if choice == SourceChoice::Inotify {
        let reason = format!("inotify: forced{how}; the actor of a change is unknown");
        tracing::info!(source = "inotify", reason = %reason, "Event source chosen.");
        return Ok(open_inotify(cfg, reason));
    }
    match open_fanotify(cfg) {
        Ok((src, marked)) => {
            let reason = format!(
                "fanotify: filesystem mark through {}{}",
                marked.join(", "),
                if choice == SourceChoice::Fanotify {
                    format!(" (forced{how})")
                } else {
                    String::new()
                }
            );
            tracing::info!(source = "fanotify", reason = %reason, "Event source chosen.");
            Ok(Opened {
                backend: Backend::Fanotify,
                reader: Some(ReaderHalf::Fanotify(Box::new(src))),
                reason,
                init_error: None,
            })
        }
        Err(e) if choice == SourceChoice::Fanotify => Err(WatchError::Fanotify(e)),
        Err(e) => {
            let reason = format!("inotify: {e}; the actor of a change is unknown");
            tracing::warn!(source = "inotify", reason = %reason, "fanotify refused; event source is inotify.");
            Ok(open_inotify(cfg, reason))
        }
    }
}

fn open_fanotify(cfg: &WatchConfig) -> Result<(FanotifySource, Vec<String>), String> {
    let scope = Scope::new(
        cfg.roots.clone(),
        cfg.exclude_paths.clone(),
        &cfg.exclude_globs,
    )
    .map_err(|e| e.to_string())?;
    let fan = FanotifyConfig {
        reads: cfg.reads.is_some(),
        ..FanotifyConfig::default()
    };
    let src = FanotifySource::open(scope, fan).map_err(|e| e.to_string())?;
    let marked = src
        .marked()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Ok((src, marked))
}

fn open_inotify(cfg: &WatchConfig, reason: String) -> Opened {
    let roots: Vec<PathBuf> = cfg.roots.clone();
    let (ino, init_error): (Option<Arc<Inotify>>, _) = match inotify::init() {
        Ok(i) => (Some(i), None),
        Err(e) => (None, Some(e)),
    };
    Opened {
        reader: ino
            .as_ref()
            .map(|i| ReaderHalf::Inotify(InotifyReader::new(Arc::clone(i)))),
        backend: Backend::Inotify(InotifyWatches::new(ino, roots)),
        reason,
        init_error,
    }
}
