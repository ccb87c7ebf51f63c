//! The `apply` driver: plan every control → validate everything → execute → check every control →
//! record state. Nothing is touched until every plan exists and every validated file passed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Action, Context, Control, Finding, Plan, Status};
use crate::host::{Backups, SafeWriter, WriteOutcome};

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Host path, or the command for `Run`.
    pub target: String,
    /// `created`, `replaced`, `removed`, `ran`, `failed: …`.
    pub outcome: String,
}

/// One control's part of an apply.
#[derive(Debug, Clone, Serialize)]
pub struct ControlReport {
    pub control: &'static str,
    pub title: &'static str,
    pub changes: Vec<Change>,
    pub finding: Option<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    pub controls: Vec<ControlReport>,
}

impl ApplyReport {
    pub fn changed(&self) -> usize {
        self.controls.iter().map(|c| c.changes.len()).sum()
    }

    /// Controls whose check failed after apply.
    pub fn failing(&self) -> Vec<&Finding> {
        self.controls
            .iter()
            .filter_map(|c| c.finding.as_ref())
            .filter(|f| f.status == Status::Fail)
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("planning failed, nothing was changed:\n  {}", .0.join("\n  "))]
    Plan(Vec<String>),
    #[error("validation failed, nothing was changed:\n  {}", .0.join("\n  "))]
    Validation(Vec<String>),
    #[error("{control}: {message}")]
    Execute {
        control: &'static str,
        message: String,
    },
    #[error("{0}")]
    State(String),
}

/// Plans every control. Any failure aborts before anything is touched.
pub fn plan_all(ctx: &Context<'_>, controls: &[Box<dyn Control>]) -> Result<Vec<Plan>, ApplyError> {
    let mut plans = Vec::new();
    let mut errors = Vec::new();
    for c in controls {
        match c.plan(ctx) {
            Ok(p) => plans.push(p),
            Err(e) => errors.push(format!("{}: {e}", c.id())),
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(ApplyError::Plan(errors))
    }
}

/// Validates every planned file that needs it, on a staged copy inside the root, before anything is
/// installed. The staging directory is removed again, so a dry run leaves the tree as it was.
pub fn validate_all(
    ctx: &Context<'_>,
    controls: &[Box<dyn Control>],
    plans: &[Plan],
) -> Result<(), ApplyError> {
    let needs: Vec<_> = controls
        .iter()
        .zip(plans)
        .flat_map(|(c, p)| p.actions().iter().map(move |a| (c, a)))
        .filter_map(|(c, a)| match a {
            Action::Write {
                path,
                spec,
                validation: Some(v),
            } => Some((c, path, spec, *v)),
            _ => None,
        })
        .collect();
    if needs.is_empty() {
        return Ok(());
    }
    let base = ["/run", "/tmp"]
        .into_iter()
        .find(|p| ctx.root.path(p).is_dir())
        .unwrap_or("/");
    let staging = tempfile::Builder::new()
        .prefix(".notebook-agent-validate.")
        .tempdir_in(ctx.root.path(base))
        .map_err(|e| ApplyError::State(format!("staging directory in {base}: {e}")))?;
    let mut errors = Vec::new();
    for (i, (c, path, spec, v)) in needs.into_iter().enumerate() {
        let staged = staging.path().join(format!("{i}"));
        if let Err(e) = std::fs::write(&staged, &spec.contents) {
            errors.push(format!("{}: {}: staging: {e}", c.id(), path.display()));
            continue;
        }
        let host = Path::new(base)
            .join(staging.path().file_name().unwrap_or_default())
            .join(format!("{i}"));
        if let Err(m) = v.run(ctx.runner, &host) {
            errors.push(format!("{}: {}: {m}", c.id(), path.display()));
        }
    }
    drop(staging);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Validation(errors))
    }
}

/// What one apply has done so far, across controls.
#[derive(Debug, Default)]
pub struct Progress {
    /// Every path changed (for `Run { when_changed }`).
    pub changed: BTreeSet<PathBuf>,
    /// Every command run: two controls asking for the same restart get one.
    pub ran: BTreeSet<String>,
}

/// Executes one control's file actions (directories, writes, removals) with the shared writer.
/// Its `Run` actions are left to [`run_commands`].
pub fn execute(
    ctx: &Context<'_>,
    control: &dyn Control,
    plan: &Plan,
    backups: &Backups,
    progress: &mut Progress,
) -> Result<Vec<Change>, ApplyError> {
    let changed = &mut progress.changed;
    let writer = SafeWriter::new(ctx.root, Some(backups));
    let fail = |message: String| ApplyError::Execute {
        control: control.id(),
        message,
    };
    let mut out = Vec::new();
    for action in plan.actions() {
        match action {
            Action::EnsureDir { path, mode, owner } => {
                if writer
                    .ensure_dir(path, *mode, *owner)
                    .map_err(|e| fail(e.to_string()))?
                {
                    tracing::info!(control = control.id(), path = %path.display(), "Created directory.");
                    changed.insert(path.clone());
                    out.push(Change {
                        target: path.display().to_string(),
                        outcome: "created".into(),
                    });
                }
            }
            Action::Write {
                path,
                spec,
                validation,
            } => {
                let runner = ctx.runner;
                let validate = validation.map(|v| move |p: &Path| v.run(runner, p));
                let outcome = writer
                    .write_validated(
                        path,
                        spec,
                        validate
                            .as_ref()
                            .map(|f| f as &dyn Fn(&Path) -> Result<(), String>),
                    )
                    .map_err(|e| fail(e.to_string()))?;
                if outcome != WriteOutcome::Unchanged {
                    let word = if outcome == WriteOutcome::Created {
                        "created"
                    } else {
                        "replaced"
                    };
                    tracing::info!(control = control.id(), path = %path.display(), outcome = word, "Wrote file.");
                    changed.insert(path.clone());
                    out.push(Change {
                        target: path.display().to_string(),
                        outcome: word.into(),
                    });
                }
            }
            Action::Remove { path } => {
                if writer.remove(path).map_err(|e| fail(e.to_string()))? {
                    tracing::info!(control = control.id(), path = %path.display(), "Removed file.");
                    changed.insert(path.clone());
                    out.push(Change {
                        target: path.display().to_string(),
                        outcome: "removed".into(),
                    });
                }
            }
            // Commands run after every control's files are in place: see `run_commands`.
            Action::Run { .. } => {}
        }
    }
    Ok(out)
}

/// Runs the `Run` actions of every plan once every control's files are written, so that a restart
/// one control asks for sees the files of the controls after it (a jupyter-server restarted by
/// the root-rights control must start with the proxy control's environment). Unit reloads
/// (`systemctl daemon-reload`) run first; a command asked for twice runs once; a command whose
/// `when_changed` files did not change is skipped. Returns the changes per control, in order.
pub fn run_commands(
    ctx: &Context<'_>,
    controls: &[Box<dyn Control>],
    plans: &[Plan],
    progress: &mut Progress,
) -> Result<Vec<Vec<Change>>, ApplyError> {
    let mut runs: Vec<(usize, &Action)> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        runs.extend(
            plan.actions()
                .iter()
                .filter(|a| matches!(a, Action::Run { .. }))
                .map(|a| (i, a)),
        );
    }
    let is_reload = |a: &Action| matches!(a, Action::Run { command, .. } if command.to_string().contains("daemon-reload"));
    runs.sort_by_key(|(_, a)| !is_reload(a));
    let mut out: Vec<Vec<Change>> = vec![Vec::new(); plans.len()];
    let changed = &progress.changed;
    for (i, action) in runs {
        let Some(control) = controls.get(i) else {
            continue;
        };
        let fail = |message: String| ApplyError::Execute {
            control: control.id(),
            message,
        };
        let Action::Run {
            command,
            reason,
            when_changed,
            must_succeed,
        } = action
        else {
            continue;
        };
        if !when_changed.is_empty() && !when_changed.iter().any(|p| changed.contains(p)) {
            continue;
        }
        if !progress.ran.insert(command.to_string()) {
            continue;
        }
        let result = ctx.runner.run(command);
        let outcome = match result {
            Ok(o) if o.success() => {
                tracing::info!(control = control.id(), command = %command, reason = %reason, "Ran command.");
                "ran".to_string()
            }
            Ok(o) => format!("failed (exit {:?}): {}", o.code, o.message()),
            Err(e) => format!("failed: {e}"),
        };
        if outcome != "ran" {
            if *must_succeed {
                return Err(fail(format!("{command}: {outcome}")));
            }
            tracing::warn!(control = control.id(), command = %command, "Command {outcome}.");
        }
        out[i].push(Change {
            target: command.to_string(),
            outcome,
        });
    }
    Ok(out)
}

/// The whole apply. `ctx` is used for planning; checks run on a fresh context (groups may have
/// changed). Returns the report; the caller decides the exit code.
pub fn apply(ctx: &Context<'_>, controls: &[Box<dyn Control>]) -> Result<ApplyReport, ApplyError> {
    let plans = plan_all(ctx, controls)?;
    validate_all(ctx, controls, &plans)?;
    let backups = Backups::open(ctx.root).map_err(ApplyError::State)?;
    let mut progress = Progress::default();
    let mut reports = Vec::new();
    for (c, p) in controls.iter().zip(&plans) {
        let changes = execute(ctx, c.as_ref(), p, &backups, &mut progress)?;
        reports.push(ControlReport {
            control: c.id(),
            title: c.title(),
            changes,
            finding: None,
        });
    }
    let ran = run_commands(ctx, controls, &plans, &mut progress)?;
    for (report, changes) in reports.iter_mut().zip(ran) {
        report.changes.extend(changes);
    }
    let after = ctx.refreshed().map_err(ApplyError::State)?;
    for (c, r) in controls.iter().zip(reports.iter_mut()) {
        r.finding = Some(c.check(&after));
    }
    let report = ApplyReport { controls: reports };
    super::state::record_apply(ctx.root, ctx.config, &report).map_err(ApplyError::State)?;
    Ok(report)
}
