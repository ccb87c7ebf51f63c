//! Proxy everywhere: `http(s)_proxy` and `no_proxy`, in upper and lower case, for login shells
//! (`/etc/profile.d`), non-login interactive shells such as Jupyter terminals (a managed block in
//! `/etc/bashrc` / `/etc/bash.bashrc`), the `jupyter-server` service (a systemd drop-in), kernels
//! (an IPython startup file, a second path in case the service environment is lost), git (a managed
//! block in the system gitconfig) and conda (`proxy_servers`). pip gets `proxy` in its pip.conf
//! from the pip control. `no_proxy` always holds 127.0.0.1, localhost and 169.254.169.254 (IMDS
//! must never go through the proxy). When these files change, jupyter-server is restarted without
//! blocking so running kernels pick the settings up.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::pip::{user_owner, CONDARC_DIR};
use super::render::{git_value, py_str, root_dir, shell_quote, systemd_env, with_block};
use crate::config::ProxyConfig;
use crate::control::{Action, Context, Control, Finding, Plan, Status};
use crate::host::{FileSpec, Owner};

pub const PROFILE: &str = "/etc/profile.d/notebook-agent-proxy.sh";
pub const BASHRCS: &[&str] = &["/etc/bashrc", "/etc/bash.bashrc"];
pub const DROPIN_DIR: &str = "/etc/systemd/system/jupyter-server.service.d";
pub const DROPIN: &str = "/etc/systemd/system/jupyter-server.service.d/notebook-agent-proxy.conf";
pub const GITCONFIG: &str = "/etc/gitconfig";
pub const CONDA_PROXY: &str = "/etc/conda/condarc.d/notebook-agent-proxy.yml";
pub const IPYTHON_STARTUP: &str = ".ipython/profile_default/startup/00-notebook-agent-proxy.py";

/// Always bypass the proxy for these: loopback, and IMDS (credentials must never leave the host).
pub const ALWAYS_NO_PROXY: &[&str] = &["127.0.0.1", "localhost", "169.254.169.254"];

pub struct Proxy;

/// The variables, in a fixed order: (name, value).
pub fn variables(p: &ProxyConfig) -> Vec<(&'static str, String)> {
    let mut no_proxy: Vec<String> = ALWAYS_NO_PROXY.iter().map(|s| s.to_string()).collect();
    for h in &p.no_proxy {
        if !no_proxy.contains(h) {
            no_proxy.push(h.clone());
        }
    }
    let no_proxy = no_proxy.join(",");
    let mut out = Vec::new();
    if let Some(http) = &p.http {
        out.push(("http_proxy", http.expose().to_string()));
        out.push(("HTTP_PROXY", http.expose().to_string()));
    }
    if let Some(https) = p.https.as_ref().or(p.http.as_ref()) {
        out.push(("https_proxy", https.expose().to_string()));
        out.push(("HTTPS_PROXY", https.expose().to_string()));
    }
    out.push(("no_proxy", no_proxy.clone()));
    out.push(("NO_PROXY", no_proxy));
    out
}

fn render_profile(vars: &[(&str, String)]) -> String {
    let mut s = super::managed_banner("#");
    for (k, v) in vars {
        let _ = writeln!(s, "export {k}={}", shell_quote(v));
    }
    s
}

fn render_dropin(vars: &[(&str, String)]) -> String {
    let mut s = super::managed_banner("#");
    s.push_str("[Service]\n");
    for (k, v) in vars {
        let _ = writeln!(s, "{}", systemd_env(k, v));
    }
    s
}

fn render_ipython(vars: &[(&str, String)]) -> String {
    let mut s = super::managed_banner("#");
    s.push_str("import os\n\n");
    for (k, v) in vars {
        let _ = writeln!(s, "os.environ[{}] = {}", py_str(k), py_str(v));
    }
    s
}

fn render_git(p: &ProxyConfig) -> String {
    let mut s = String::new();
    if let Some(http) = &p.http {
        let _ = writeln!(s, "[http]\n\tproxy = {}", git_value(http.expose()));
    }
    if let Some(https) = p.https.as_ref().or(p.http.as_ref()) {
        let _ = writeln!(s, "[https]\n\tproxy = {}", git_value(https.expose()));
    }
    s
}

fn render_conda(p: &ProxyConfig) -> String {
    let mut s = super::managed_banner("#");
    s.push_str("proxy_servers: #!final\n");
    if let Some(http) = &p.http {
        let _ = writeln!(s, "  http: {}", py_str(http.expose()));
    }
    if let Some(https) = p.https.as_ref().or(p.http.as_ref()) {
        let _ = writeln!(s, "  https: {}", py_str(https.expose()));
    }
    s
}

fn file(path: impl Into<PathBuf>, contents: String, mode: u32, owner: Owner) -> Action {
    Action::Write {
        path: path.into(),
        spec: FileSpec {
            contents: contents.into_bytes(),
            mode,
            owner,
        },
        validation: None,
    }
}

/// A shared file with our block in it: keeps its mode and owner (default root 0644).
fn shared_file(ctx: &Context<'_>, path: &str, comment: &str, body: &str) -> Result<Action, String> {
    let reader = ctx.reader();
    let host = PathBuf::from(path);
    let existing = reader
        .read(&host)
        .map_err(|e| e.to_string())?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (mode, owner) = reader
        .stat(&host)
        .map_err(|e| e.to_string())?
        .unwrap_or((0o644, Owner::ROOT));
    Ok(file(
        host,
        with_block(&existing, comment, body),
        mode,
        owner,
    ))
}

impl Control for Proxy {
    fn id(&self) -> &'static str {
        "proxy"
    }

    fn title(&self) -> &'static str {
        "Proxy"
    }

    fn plan(&self, ctx: &Context<'_>) -> Result<Plan, String> {
        let Some(p) = &ctx.config.proxy else {
            return Ok(Plan::Unmanaged);
        };
        let vars = variables(p);
        let mut actions = vec![
            root_dir("/etc/profile.d"),
            file(PROFILE, render_profile(&vars), 0o644, Owner::ROOT),
        ];
        // Non-login interactive shells: whichever system bashrc this distribution has.
        let mut bashrc_found = false;
        for rc in BASHRCS {
            if ctx.root.path(rc).is_file() {
                bashrc_found = true;
                actions.push(shared_file(
                    ctx,
                    rc,
                    "#",
                    &format!("[ -r {PROFILE} ] && . {PROFILE}"),
                )?);
            }
        }
        if !bashrc_found {
            tracing::warn!("Neither /etc/bashrc nor /etc/bash.bashrc exists: non-login shells get the proxy only from their parent.");
        }
        actions.push(root_dir(DROPIN_DIR));
        actions.push(file(DROPIN, render_dropin(&vars), 0o644, Owner::ROOT));
        actions.push(shared_file(ctx, GITCONFIG, "#", &render_git(p))?);
        actions.push(root_dir(CONDARC_DIR));
        actions.push(file(CONDA_PROXY, render_conda(p), 0o644, Owner::ROOT));

        let home = ctx.home();
        if ctx.root.path(&home).is_dir() {
            let owner = user_owner(ctx);
            for d in [
                ".ipython",
                ".ipython/profile_default",
                ".ipython/profile_default/startup",
            ] {
                actions.push(Action::EnsureDir {
                    path: home.join(d),
                    mode: 0o755,
                    owner,
                });
            }
            actions.push(file(
                home.join(IPYTHON_STARTUP),
                render_ipython(&vars),
                0o644,
                Owner::ROOT,
            ));
        }

        // The service's environment: reload units, then restart Jupyter without blocking.
        let service_inputs = vec![PathBuf::from(DROPIN), PathBuf::from(PROFILE)];
        actions.extend(super::jupyter_service(ctx, DROPIN, service_inputs));
        Ok(Plan::Actions(actions))
    }

    fn check(&self, ctx: &Context<'_>) -> Finding {
        let plan = match self.plan(ctx) {
            Ok(Plan::Unmanaged) => {
                return self.finding(Status::NotConfigured, "no proxy section in the config")
            }
            Ok(p) => p,
            Err(e) => return self.finding(Status::Unknown, e),
        };
        let drift = plan.drift(ctx);
        if !drift.is_empty() {
            return self.finding(Status::Fail, drift.join("; "));
        }
        let Some(p) = &ctx.config.proxy else {
            return self.finding(Status::NotConfigured, "no proxy section in the config");
        };
        let shown = p.https.as_ref().or(p.http.as_ref()).map(|u| u.to_string());
        let files = plan
            .actions()
            .iter()
            .filter(|a| matches!(a, Action::Write { .. }))
            .count();
        self.finding(
            Status::Pass,
            format!(
                "{} in {files} files (profile, bashrc, service, git, conda, IPython); no_proxy has {}",
                shown.unwrap_or_default(),
                ALWAYS_NO_PROXY.join(",")
            ),
        )
    }
}
