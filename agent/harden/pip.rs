//! pip mirror: `/etc/pip.conf` points pip at the company mirror.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::PipConfig;
use crate::control::{Action, Context, Control, Finding, Plan, Status};
use crate::host::{FileSpec, Owner};

pub const GLOBAL_PIP_CONF: &str = "/etc/pip.conf";

pub struct Pip;

/// The `[global]` section for `pip`, deterministic for a given config.
pub fn render(pip: &PipConfig) -> String {
    let mut s = super::managed_banner("#");
    s.push_str("[global]\n");
    let _ = writeln!(s, "index-url = {}", pip.index_url.expose());
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
    s
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
        Ok(Plan::Actions(vec![Action::Write {
            path: PathBuf::from(GLOBAL_PIP_CONF),
            spec: FileSpec {
                contents: render(pip).into_bytes(),
                mode: 0o644,
                owner: Owner::ROOT,
            },
            validation: None,
        }]))
    }

    fn check(&self, ctx: &Context<'_>) -> Finding {
        let plan = match self.plan(ctx) {
            Ok(Plan::Unmanaged) => {
                return self.finding(Status::NotConfigured, "no pip section in the config")
            }
            Ok(p) => p,
            Err(e) => return self.finding(Status::Unknown, e),
        };
        let drift = plan.drift(ctx);
        match (&ctx.config.pip, drift.is_empty()) {
            (Some(pip), true) => self.finding(
                Status::Pass,
                format!("{GLOBAL_PIP_CONF}: index-url {}", pip.index_url),
            ),
            _ => self.finding(Status::Fail, drift.join("; ")),
        }
    }
}
