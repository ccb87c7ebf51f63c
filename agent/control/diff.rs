//! `apply --dry-run`: every planned change as a unified diff against the host, with secrets
//! scrubbed. Reads only.

use std::fmt::Write as _;

use similar::TextDiff;

use super::{Action, Context, Control, Plan};
use crate::config::Redactor;

/// The dry-run text for all plans, and how many actions would change something.
pub fn render(
    ctx: &Context<'_>,
    controls: &[Box<dyn Control>],
    plans: &[Plan],
    redactor: &Redactor,
) -> (String, usize) {
    let reader = ctx.reader();
    let mut out = String::new();
    let mut count = 0;
    for (c, plan) in controls.iter().zip(plans) {
        if let Plan::Unmanaged = plan {
            let _ = writeln!(
                out,
                "# {} ({}): not configured, unmanaged",
                c.title(),
                c.id()
            );
            continue;
        }
        let mut section = String::new();
        for action in plan.actions() {
            match action {
                Action::EnsureDir { path, mode, owner } => {
                    if !ctx.root.path(path).is_dir() {
                        count += 1;
                        let _ = writeln!(
                            section,
                            "mkdir {} (mode {mode:04o}, owner {}:{})",
                            path.display(),
                            owner.uid,
                            owner.gid
                        );
                    }
                }
                Action::Write { path, spec, .. } => {
                    let old = match reader.read(path) {
                        Ok(o) => o,
                        Err(e) => {
                            count += 1;
                            let _ = writeln!(section, "! {e}");
                            continue;
                        }
                    };
                    let meta = reader.stat(path).ok().flatten();
                    let new_text = String::from_utf8_lossy(&spec.contents);
                    let (old_text, old_name) = match &old {
                        Some(bytes) => (
                            String::from_utf8_lossy(bytes).into_owned(),
                            format!("a{}", path.display()),
                        ),
                        None => (String::new(), "/dev/null".to_string()),
                    };
                    let content_changed = old.as_deref() != Some(&spec.contents[..]);
                    let meta_changed = meta.is_some_and(|(m, o)| m != spec.mode || o != spec.owner);
                    if !content_changed && !meta_changed {
                        continue;
                    }
                    count += 1;
                    if let Some((m, o)) = meta.filter(|_| meta_changed) {
                        let _ = writeln!(
                            section,
                            "# {}: mode {m:04o} -> {:04o}, owner {}:{} -> {}:{}",
                            path.display(),
                            spec.mode,
                            o.uid,
                            o.gid,
                            spec.owner.uid,
                            spec.owner.gid
                        );
                    } else if old.is_none() {
                        let _ = writeln!(
                            section,
                            "# {}: new file, mode {:04o}, owner {}:{}",
                            path.display(),
                            spec.mode,
                            spec.owner.uid,
                            spec.owner.gid
                        );
                    }
                    if content_changed {
                        let diff = TextDiff::from_lines(old_text.as_str(), new_text.as_ref());
                        let _ = write!(
                            section,
                            "{}",
                            diff.unified_diff()
                                .context_radius(3)
                                .header(&old_name, &format!("b{}", path.display()))
                        );
                    }
                }
                Action::Remove { path } => match reader.read(path) {
                    Ok(Some(bytes)) => {
                        count += 1;
                        let old_text = String::from_utf8_lossy(&bytes);
                        let diff = TextDiff::from_lines(old_text.as_ref(), "");
                        let _ = write!(
                            section,
                            "{}",
                            diff.unified_diff()
                                .context_radius(3)
                                .header(&format!("a{}", path.display()), "/dev/null")
                        );
                    }
                    Ok(None) => {}
                    Err(e) => {
                        count += 1;
                        let _ = writeln!(section, "! {e}");
                    }
                },
                Action::Run {
                    command,
                    reason,
                    when_changed,
                    ..
                } => {
                    let cond = if when_changed.is_empty() {
                        String::new()
                    } else {
                        " (if the files above change)".to_string()
                    };
                    let _ = writeln!(section, "would run{cond}: {command}   # {reason}");
                }
            }
        }
        if section.is_empty() {
            let _ = writeln!(out, "# {} ({}): no change", c.title(), c.id());
        } else {
            let _ = writeln!(out, "# {} ({}):", c.title(), c.id());
            out.push_str(&section);
        }
    }
    (redactor.scrub(&out), count)
}
