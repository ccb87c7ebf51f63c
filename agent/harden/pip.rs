//! pip and conda mirror: every place pip reads its configuration from points at the company
//! mirror — `/etc/pip.conf` (global), `~/.config/pip/pip.conf` and `~/.pip/pip.conf` (user) and
//! `<prefix>/pip.conf` in every conda env (site, the highest file priority) — and conda's channels
//! are locked (`#!final`) in `/etc/conda/condarc.d/`. The files are root-owned so the user cannot
//! edit them; the directories around them stay the user's (their tools write there), and drift
//! repair puts back a file the user deletes.
//!
//! The index URL is `pip.index_url`, or with `pip.codeartifact` the repository's URL with the
//! token the agent obtains and refreshes (`codeartifact.rs`): the plan is always the current
//! token, and the check says when the token in the files expires.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::envs;
use super::render::{py_str, root_file};
use crate::config::{Config, PipConfig, SecretUrl};
use crate::control::{Action, Context, Control, Finding, Plan, Status};
use crate::host::Owner;

pub const GLOBAL_PIP_CONF: &str = "/etc/pip.conf";
pub const CONDARC_DIR: &str = "/etc/conda/condarc.d";
pub const CONDA_CHANNELS: &str = "/etc/conda/condarc.d/notebook-agent-channels.yml";

pub struct Pip;

/// The proxy pip should use (it takes one for both schemes): https, else http.
fn pip_proxy(config: &Config) -> Option<&str> {
    let p = config.proxy.as_ref()?;
    p.https.as_ref().or(p.http.as_ref()).map(|u| u.expose())
}

/// The pip.conf every location gets, deterministic for a given config.
pub fn render(pip: &PipConfig, index_url: &SecretUrl, proxy: Option<&str>) -> String {
    let mut s = super::managed_banner("#");
    s.push_str("[global]\n");
    let _ = writeln!(s, "index-url = {}", index_url.expose());
    let list = |s: &mut String, key: &str, items: &[&str]| {
        if let Some((first, rest)) = items.split_first() {
            let _ = writeln!(s, "{key} = {first}");
            for item in rest {
                let _ = writeln!(s, "    {item}");
            }
        }
    };
    let extra: Vec<&str> = pip.extra_index_urls.iter().map(|u| u.expose()).collect();
    list(&mut s, "extra-index-url", &extra);
    let trusted: Vec<&str> = pip.trusted_hosts.iter().map(String::as_str).collect();
    list(&mut s, "trusted-host", &trusted);
    if let Some(cert) = &pip.cert {
        let _ = writeln!(s, "cert = {}", cert.display());
    }
    if let Some(t) = pip.timeout_secs {
        let _ = writeln!(s, "timeout = {t}");
    }
    if let Some(p) = proxy {
        let _ = writeln!(s, "proxy = {p}");
    }
    s
}

/// conda's channels, locked with `#!final` so no later condarc (the user's) can replace them.
pub fn render_condarc(pip: &PipConfig) -> String {
    let mut s = super::managed_banner("#");
    for key in ["channels", "default_channels"] {
        let _ = writeln!(s, "{key}: #!final");
        for ch in &pip.conda_channels {
            let _ = writeln!(s, "  - {}", py_str(ch));
        }
    }
    if let Some(cert) = &pip.cert {
        let _ = writeln!(
            s,
            "ssl_verify: {} #!final",
            py_str(&cert.display().to_string())
        );
    }
    s
}

/// The user's own directory (created as theirs when missing).
fn user_dir(path: PathBuf, owner: Owner) -> Action {
    Action::EnsureDir {
        path,
        mode: 0o755,
        owner,
    }
}

/// The user's uid/gid, or root when the user does not exist (a bare test root).
pub fn user_owner(ctx: &Context<'_>) -> Owner {
    ctx.users
        .user(&ctx.config.user.name)
        .map(|u| Owner {
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
        })
        .unwrap_or(Owner::ROOT)
}

/// Every pip.conf location this control writes, global first.
pub fn locations(ctx: &Context<'_>) -> Vec<PathBuf> {
    let home = ctx.home();
    let mut out = vec![
        PathBuf::from(GLOBAL_PIP_CONF),
        home.join(".config/pip/pip.conf"),
        home.join(".pip/pip.conf"),
    ];
    out.extend(envs::prefixes(ctx).into_iter().map(|p| p.join("pip.conf")));
    out
}

impl Control for Pip {
    fn id(&self) -> &'static str {
        "pip"
    }

    fn title(&self) -> &'static str {
        "pip mirror"
    }

    fn plan(&self, ctx: &Context<'_>) -> Result<Plan, String> {
        let Some(pip) = &ctx.config.pip else {
            return Ok(Plan::Unmanaged);
        };
        let index_url = match (&pip.codeartifact, &pip.index_url) {
            (Some(ca), _) => super::codeartifact::for_plan(ctx, ca)?,
            (None, Some(u)) => u.clone(),
            (None, None) => return Err("neither pip.index_url nor pip.codeartifact is set".into()),
        };
        self.plan_with(ctx, pip, &index_url)
    }

    fn check(&self, ctx: &Context<'_>) -> Finding {
        let Some(pip) = &ctx.config.pip else {
            return self.finding(Status::NotConfigured, "no pip section in the config");
        };
        let Some(ca) = &pip.codeartifact else {
            return match self.plan(ctx) {
                Ok(plan) => self.judge(ctx, &plan, pip.index_url.as_ref(), None),
                Err(e) => self.finding(Status::Unknown, e),
            };
        };
        // The refresher replaces the token and rewrites the files under this lock: plan and
        // files are compared either before or after a refresh, never in between.
        let _guard = super::codeartifact::WRITE_LOCK.lock();
        let current = match super::codeartifact::for_check(ctx, ca) {
            Ok(c) => c,
            Err(e) => return self.finding(Status::Fail, e),
        };
        match self.plan_with(ctx, pip, &current.index_url) {
            Ok(plan) => self.judge(
                ctx,
                &plan,
                Some(&current.index_url),
                Some(current.expires_ms),
            ),
            Err(e) => self.finding(Status::Unknown, e),
        }
    }
}

impl Pip {
    /// The plan for a given index URL (the configured one, or the current CodeArtifact token's).
    fn plan_with(
        &self,
        ctx: &Context<'_>,
        pip: &PipConfig,
        index_url: &SecretUrl,
    ) -> Result<Plan, String> {
        let conf = render(pip, index_url, pip_proxy(ctx.config));
        let home = ctx.home();
        let owner = user_owner(ctx);
        let mut actions = Vec::new();
        if ctx.root.path(&home).is_dir() {
            actions.push(user_dir(home.join(".config"), owner));
            actions.push(user_dir(home.join(".config/pip"), owner));
            actions.push(user_dir(home.join(".pip"), owner));
        } else {
            tracing::warn!(home = %home.display(), "No home directory: user pip.conf files skipped.");
        }
        let envs = envs::prefixes(ctx);
        tracing::debug!(
            envs = %envs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
            "pip.conf goes into every conda env."
        );
        for path in locations(ctx) {
            if path.starts_with(&home) && !ctx.root.path(&home).is_dir() {
                continue;
            }
            actions.push(root_file(path, conf.clone()));
        }
        if !pip.conda_channels.is_empty() {
            actions.push(Action::EnsureDir {
                path: PathBuf::from(CONDARC_DIR),
                mode: 0o755,
                owner: Owner::ROOT,
            });
            actions.push(root_file(
                PathBuf::from(CONDA_CHANNELS),
                render_condarc(pip),
            ));
        }
        Ok(Plan::Actions(actions))
    }

    /// PASS when every planned file matches; with CodeArtifact (`expires`), also the token's
    /// expiry (FAIL when expired, or close to it after a failed refresh).
    fn judge(
        &self,
        ctx: &Context<'_>,
        plan: &Plan,
        index_url: Option<&SecretUrl>,
        expires: Option<Option<i64>>,
    ) -> Finding {
        let drift = plan.drift(ctx);
        if !drift.is_empty() {
            return self.finding(Status::Fail, drift.join("; "));
        }
        let files = plan
            .actions()
            .iter()
            .filter(|a| matches!(a, Action::Write { path, .. } if path.file_name() == Some(Path::new("pip.conf").as_os_str())))
            .count();
        let shown = index_url.map(SecretUrl::redacted).unwrap_or_default();
        let mut evidence = format!("index-url {shown} in {files} pip.conf files");
        let mut status = Status::Pass;
        if let Some(expires) = expires {
            let (ok, token) =
                super::codeartifact::judge(ctx.root, expires, crate::audit::change::now_ms());
            evidence.push_str("; ");
            evidence.push_str(&token);
            if !ok {
                status = Status::Fail;
            }
        }
        self.finding(status, evidence)
    }
}
