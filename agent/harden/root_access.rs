//! Root rights: the notebook user loses every sudo grant (lines in `/etc/sudoers`, drop-ins in
//! `/etc/sudoers.d` naming the user, a group of theirs, their uid, an alias of them, or ALL) and
//! leaves the root-equivalent groups (`wheel`, `docker`). Every sudoers file is validated with
//! `visudo -cf` before it replaces the old one. The check asks sudo itself (`sudo -l -U`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::sudoers::{self, LineKind, Subject};
use crate::control::{Action, Context, Control, Finding, Plan, Status, Validation};
use crate::host::command::CommandError;
use crate::host::users::without_member;
use crate::host::{FileSpec, HostCommand, Owner, UserDb};

pub const SUDOERS: &str = "/etc/sudoers";
pub const GSHADOW: &str = "/etc/gshadow";

pub struct RootAccess;

/// The user as sudo sees them.
fn subject(ctx: &Context<'_>) -> Result<Subject, String> {
    let name = &ctx.config.user.name;
    let user = ctx
        .users
        .user(name)
        .ok_or_else(|| format!("user {name} is not in {}", UserDb::PASSWD))?;
    let groups: Vec<String> = ctx.users.groups_of(name);
    let gids = groups
        .iter()
        .filter_map(|g| ctx.users.group(g))
        .map(|g| g.gid.as_raw())
        .collect();
    Ok(Subject {
        user: name.clone(),
        uid: user.uid.as_raw(),
        groups: groups.into_iter().collect(),
        gids,
    })
}

/// `/etc/sudoers` and every file it includes (directly or through an include directory), with
/// their text, in the order sudo reads them.
fn sudoers_files(ctx: &Context<'_>) -> Result<Vec<(PathBuf, String)>, String> {
    let reader = ctx.reader();
    let mut out: Vec<(PathBuf, String)> = Vec::new();
    let mut queue = vec![(PathBuf::from(SUDOERS), 0usize)];
    let mut seen = BTreeSet::new();
    while let Some((path, depth)) = queue.pop() {
        if depth > 8 || !seen.insert(path.clone()) {
            continue;
        }
        let text = match reader.read(&path).map_err(|e| e.to_string())? {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => continue,
        };
        let mut next = Vec::new();
        for l in sudoers::logical_lines(&text) {
            if let LineKind::Include { dir, path: inc } = sudoers::classify(&l.text) {
                // Relative includes are relative to /etc (sudo 1.9 resolves them against the
                // including file's directory, which is /etc for the standard layout).
                let inc = Path::new("/etc").join(inc.replace("%h", "localhost"));
                if dir {
                    let mut names: Vec<String> = match std::fs::read_dir(ctx.root.path(&inc)) {
                        Ok(rd) => rd
                            .flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .filter(|n| sudoers::included_name(n))
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    names.sort();
                    next.extend(names.into_iter().map(|n| inc.join(n)));
                } else {
                    next.push(inc);
                }
            }
        }
        out.push((path, text));
        // The stack is LIFO: push in reverse to read in file order.
        queue.extend(next.into_iter().rev().map(|p| (p, depth + 1)));
    }
    Ok(out)
}

fn aliases(files: &[(PathBuf, String)]) -> BTreeMap<String, Vec<String>> {
    files
        .iter()
        .flat_map(|(_, t)| sudoers::user_aliases(t))
        .collect()
}

/// Mode and owner of an existing file, to keep them when it is rewritten.
fn keep_meta(ctx: &Context<'_>, path: &Path, default_mode: u32) -> (u32, Owner) {
    ctx.reader()
        .stat(path)
        .ok()
        .flatten()
        .unwrap_or((default_mode, Owner::ROOT))
}

impl Control for RootAccess {
    fn id(&self) -> &'static str {
        "root_access"
    }

    fn title(&self) -> &'static str {
        "Root rights"
    }

    fn plan(&self, ctx: &Context<'_>) -> Result<Plan, String> {
        let cfg = &ctx.config.root_access;
        if !cfg.enabled {
            return Ok(Plan::Unmanaged);
        }
        let who = subject(ctx)?;
        let files = sudoers_files(ctx)?;
        let aliases = aliases(&files);
        let mut actions = Vec::new();
        for (path, text) in &files {
            let Some(new) = sudoers::without_grants(text, &who, &aliases) else {
                continue;
            };
            if path != Path::new(SUDOERS) && sudoers::is_inert(&new) {
                actions.push(Action::Remove { path: path.clone() });
            } else {
                let (mode, owner) = keep_meta(ctx, path, 0o440);
                actions.push(Action::Write {
                    path: path.clone(),
                    spec: FileSpec {
                        contents: new.into_bytes(),
                        mode,
                        owner,
                    },
                    validation: Some(Validation::Sudoers),
                });
            }
        }
        let mut group_changed = Vec::new();
        for (file, gshadow) in [(UserDb::GROUP, false), (GSHADOW, true)] {
            let path = PathBuf::from(file);
            let Some(bytes) = ctx.reader().read(&path).map_err(|e| e.to_string())? else {
                continue;
            };
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            let mut changed = false;
            for g in &cfg.groups {
                if let Some(t) = without_member(&text, g, &who.user, gshadow) {
                    text = t;
                    changed = true;
                }
            }
            if changed {
                let (mode, owner) = keep_meta(ctx, &path, if gshadow { 0o000 } else { 0o644 });
                actions.push(Action::Write {
                    path: path.clone(),
                    spec: FileSpec {
                        contents: text.into_bytes(),
                        mode,
                        owner,
                    },
                    validation: None,
                });
                group_changed.push(path);
            }
        }
        // Running processes keep their supplementary groups: Jupyter (and every kernel it
        // started) would still hold docker. Restart it so the change takes effect now.
        if let Some(restart) = super::restart_jupyter(ctx, group_changed) {
            actions.push(restart);
        }
        Ok(Plan::Actions(actions))
    }

    fn check(&self, ctx: &Context<'_>) -> Finding {
        let cfg = &ctx.config.root_access;
        if !cfg.enabled {
            return self.finding(
                Status::NotConfigured,
                "root_access.enabled is false: the notebook user keeps root",
            );
        }
        let user = &ctx.config.user.name;
        let who = match subject(ctx) {
            Ok(w) => w,
            Err(e) => return self.finding(Status::Unknown, e),
        };
        let mut problems = Vec::new();
        let groups = ctx.users.groups_of(user);
        let bad: Vec<&String> = groups.iter().filter(|g| cfg.groups.contains(g)).collect();
        if !bad.is_empty() {
            problems.push(format!(
                "{user} is in {}",
                bad.iter()
                    .map(|g| g.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        match sudoers_files(ctx) {
            Ok(files) => {
                let aliases = aliases(&files);
                for (path, text) in &files {
                    for g in sudoers::grants(text, &who, &aliases) {
                        problems.push(format!("{}:{} grants {user}", path.display(), g.first + 1));
                    }
                }
            }
            Err(e) => problems.push(e),
        }
        let sudo = ctx
            .runner
            .run(&HostCommand::new("sudo", ["-n", "-l", "-U", user.as_str()]));
        let sudo_evidence = match sudo {
            Err(CommandError::NotFound { .. }) => "sudo is not installed".to_string(),
            Err(e) => return self.finding(Status::Unknown, format!("sudo -l -U {user}: {e}")),
            Ok(out) if out.stdout.contains("is not allowed to run sudo") => {
                format!("sudo -l -U {user}: not allowed")
            }
            Ok(out) if out.stdout.contains("may run the following commands") => {
                let rule = out
                    .stdout
                    .lines()
                    .skip_while(|l| !l.contains("may run the following commands"))
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_string();
                problems.push(format!("sudo -l -U {user}: may run {rule}"));
                String::new()
            }
            Ok(out) => {
                return self.finding(
                    Status::Unknown,
                    format!("sudo -l -U {user}: {} (run status as root)", out.message()),
                )
            }
        };
        if problems.is_empty() {
            self.finding(
                Status::Pass,
                format!("{sudo_evidence}; {user} groups: {}", groups.join(" ")),
            )
        } else {
            self.finding(Status::Fail, problems.join("; "))
        }
    }
}
