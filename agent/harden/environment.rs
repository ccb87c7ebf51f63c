//! `sagemaker_environment.py`: the notebook's network and encryption settings as a Python module
//! every kernel can import (`import sagemaker_environment as env; Estimator(..., **env.network_kwargs())`),
//! so data scientists launch jobs inside the notebook's VPC with its KMS key without being given
//! the values to copy around.
//!
//! The module lives in a root-owned directory ([`MODULE_DIR`]) and is made importable from every
//! Python on the notebook: a `.pth` file in each conda env's site-packages and in the system
//! Python's, and `PYTHONPATH` in a jupyter-server drop-in. The reference architecture's copy at
//! `~/.ipython/sagemaker_environment.py` is kept (root-owned) for notebooks that add that
//! directory to `sys.path`.
//!
//! Values come from the config, else from `/opt/ml/metadata/resource-metadata.json` (name, ARN,
//! region, account), else — with `discover` — from IMDSv2 (the customer ENI's VPC, subnet and
//! security groups). Every value is checked for its AWS shape whatever its source, and written as
//! a Python string literal, so nothing in the module is code except what this file renders.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::envs;
use super::pip::user_owner;
use super::render::{py_str, root_dir, root_file, systemd_env};
use crate::config::{validate, EnvironmentConfig};
use crate::control::{Action, Context, Control, Finding, Plan, Status};
use crate::host::imds::{self, Imds};
use crate::host::metadata::NotebookIdentity;

pub const MODULE_DIR: &str = "/usr/local/lib/notebook-agent/python";
pub const MODULE: &str = "/usr/local/lib/notebook-agent/python/sagemaker_environment.py";
pub const PTH_NAME: &str = "notebook-agent-environment.pth";
pub const LEGACY: &str = ".ipython/sagemaker_environment.py";
pub const DROPIN: &str =
    "/etc/systemd/system/jupyter-server.service.d/notebook-agent-environment.conf";
const IMDS_TIMEOUT: Duration = Duration::from_secs(2);

/// Names the module defines; `environment.extra` may not reuse them (owned by the config, which
/// validates them).
pub use crate::config::RESERVED_NAMES;

pub struct Environment;

/// Every value the module holds, resolved and validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    pub notebook_name: Option<String>,
    pub notebook_arn: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
    pub vpc: Option<String>,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    pub kms_key_id: Option<String>,
    pub data_bucket: Option<String>,
    pub model_bucket: Option<String>,
    pub extra: Vec<(String, String)>,
    /// Where the network values came from ("config", "IMDS", "not set").
    pub network_source: &'static str,
}

/// Config, then the metadata file, then (with `discover`) IMDSv2. Discovered values that do not
/// have their AWS shape are an error naming the source: nothing is written from them.
pub fn resolve(ctx: &Context<'_>, env: &EnvironmentConfig) -> Result<Values, String> {
    let identity = NotebookIdentity::load(ctx.root)?;
    let mut v = Values {
        notebook_name: identity.as_ref().map(|i| i.name.clone()),
        notebook_arn: identity.as_ref().map(|i| i.arn.clone()),
        region: identity.as_ref().map(|i| i.region.clone()),
        account: identity.as_ref().map(|i| i.account.clone()),
        vpc: env.vpc.clone(),
        subnets: env.subnets.clone(),
        security_groups: env.security_groups.clone(),
        kms_key_id: env.kms_key_id.clone(),
        data_bucket: env.data_bucket.clone(),
        model_bucket: env.model_bucket.clone(),
        extra: env
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        network_source: "config",
    };
    let network_missing = v.vpc.is_none() || v.subnets.is_empty() || v.security_groups.is_empty();
    if env.discover && (network_missing || v.region.is_none()) {
        let endpoint = env
            .imds_endpoint
            .as_ref()
            .map(|u| u.expose().to_string())
            .unwrap_or_else(|| imds::DEFAULT_ENDPOINT.to_string());
        let net = ctx
            .discovered_network(|| {
                Imds::connect(&endpoint, IMDS_TIMEOUT)?.network(v.account.as_deref())
            })
            .map_err(|e| format!("environment.discover: {e}"))?;
        let bad = |what: &str, e: String| format!("environment.discover: IMDS {what}: {e}");
        if v.vpc.is_none() {
            if let Some(vpc) = net.vpc {
                validate::aws_id(&vpc, "vpc").map_err(|e| bad("vpc-id", e))?;
                v.vpc = Some(vpc);
            }
        }
        if v.subnets.is_empty() {
            if let Some(s) = net.subnet {
                validate::aws_id(&s, "subnet").map_err(|e| bad("subnet-id", e))?;
                v.subnets = vec![s];
            }
        }
        if v.security_groups.is_empty() {
            for sg in &net.security_groups {
                validate::aws_id(sg, "sg").map_err(|e| bad("security-group-ids", e))?;
            }
            v.security_groups = net.security_groups;
        }
        if v.region.is_none() {
            if let Some(r) = net.region {
                validate::region(&r).map_err(|e| bad("placement/region", e))?;
                v.region = Some(r);
            }
        }
        if network_missing {
            v.network_source = "IMDS";
        }
    } else if network_missing && v.vpc.is_none() && v.subnets.is_empty() {
        v.network_source = "not set";
    }
    Ok(v)
}

fn py_opt(v: &Option<String>) -> String {
    v.as_deref()
        .map(py_str)
        .unwrap_or_else(|| "None".to_string())
}

fn py_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| py_str(s)).collect();
    format!("[{}]", items.join(", "))
}

/// The module, deterministic for given values. Every value is a string literal (JSON string
/// syntax, which Python reads identically), a list of them, or `None`.
pub fn render(v: &Values) -> String {
    let mut s = super::managed_banner("#");
    s.push_str(
        r#""""This notebook's network and encryption settings, written by notebook-agent at boot.

    import sagemaker_environment as env
    estimator = Estimator(..., **env.network_kwargs())
    model = Model(..., vpc_config=env.vpc_config())
"""

"#,
    );
    let rows: [(&str, String); 10] = [
        ("SAGEMAKER_NOTEBOOK_NAME", py_opt(&v.notebook_name)),
        ("SAGEMAKER_NOTEBOOK_ARN", py_opt(&v.notebook_arn)),
        ("SAGEMAKER_REGION", py_opt(&v.region)),
        ("SAGEMAKER_ACCOUNT_ID", py_opt(&v.account)),
        ("SAGEMAKER_VPC", py_opt(&v.vpc)),
        ("SAGEMAKER_SUBNETS", py_list(&v.subnets)),
        ("SAGEMAKER_SECURITY_GROUPS", py_list(&v.security_groups)),
        ("SAGEMAKER_KMS_KEY_ID", py_opt(&v.kms_key_id)),
        ("SAGEMAKER_DATA_BUCKET", py_opt(&v.data_bucket)),
        ("SAGEMAKER_MODEL_BUCKET", py_opt(&v.model_bucket)),
    ];
    for (k, val) in rows {
        let _ = writeln!(s, "{k} = {val}");
    }
    if !v.extra.is_empty() {
        s.push_str("\n# environment.extra\n");
        for (k, val) in &v.extra {
            let _ = writeln!(s, "{k} = {}", py_str(val));
        }
    }
    s.push_str(
        r#"

def network_kwargs():
    """Keyword arguments for SageMaker Python SDK estimators: this notebook's subnets and
    security groups, its KMS key for volumes and output, traffic between containers encrypted."""
    kwargs = {}
    if SAGEMAKER_SUBNETS:
        kwargs["subnets"] = list(SAGEMAKER_SUBNETS)
    if SAGEMAKER_SECURITY_GROUPS:
        kwargs["security_group_ids"] = list(SAGEMAKER_SECURITY_GROUPS)
    if SAGEMAKER_KMS_KEY_ID:
        kwargs["volume_kms_key"] = SAGEMAKER_KMS_KEY_ID
        kwargs["output_kms_key"] = SAGEMAKER_KMS_KEY_ID
    if SAGEMAKER_SUBNETS:
        kwargs["encrypt_inter_container_traffic"] = True
    return kwargs


def vpc_config():
    """The `vpc_config` of SageMaker Python SDK models and of boto3 CreateModel, or None."""
    if not (SAGEMAKER_SUBNETS and SAGEMAKER_SECURITY_GROUPS):
        return None
    return {"Subnets": list(SAGEMAKER_SUBNETS), "SecurityGroupIds": list(SAGEMAKER_SECURITY_GROUPS)}
"#,
    );
    s
}

/// site-packages of the system Pythons (Debian `dist-packages`, Amazon Linux `site-packages`).
fn system_site_dirs(ctx: &Context<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if envs::is_real_dir(ctx, Path::new("/usr/lib/python3/dist-packages")) {
        out.push(PathBuf::from("/usr/lib/python3/dist-packages"));
    }
    for lib in ["/usr/lib", "/usr/lib64", "/usr/local/lib"] {
        let Ok(rd) = std::fs::read_dir(ctx.root.path(lib)) else {
            continue;
        };
        let mut names: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("python3."))
            .collect();
        names.sort();
        for n in names {
            let p = Path::new(lib).join(n).join("site-packages");
            if envs::is_real_dir(ctx, &p) {
                out.push(p);
            }
        }
    }
    out
}

/// Every `.pth` location: each conda env's site-packages, then the system Pythons'.
pub fn pth_locations(ctx: &Context<'_>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for prefix in envs::prefixes(ctx) {
        out.extend(envs::site_packages(ctx, &prefix));
    }
    out.extend(system_site_dirs(ctx));
    out.into_iter().map(|d| d.join(PTH_NAME)).collect()
}

impl Control for Environment {
    fn id(&self) -> &'static str {
        "environment"
    }

    fn title(&self) -> &'static str {
        "sagemaker_environment.py"
    }

    fn plan(&self, ctx: &Context<'_>) -> Result<Plan, String> {
        let Some(env) = &ctx.config.environment else {
            return Ok(Plan::Unmanaged);
        };
        Ok(plan_for(ctx, &resolve(ctx, env)?))
    }

    fn check(&self, ctx: &Context<'_>) -> Finding {
        let Some(env) = &ctx.config.environment else {
            return self.finding(
                Status::NotConfigured,
                "no environment section in the config",
            );
        };
        let values = match resolve(ctx, env) {
            Ok(v) => v,
            Err(e) => return self.finding(Status::Unknown, e),
        };
        let plan = plan_for(ctx, &values);
        let drift = plan.drift(ctx);
        if !drift.is_empty() {
            return self.finding(Status::Fail, drift.join("; "));
        }
        let pths = plan
            .actions()
            .iter()
            .filter(|a| matches!(a.path(), Some(p) if p.ends_with(PTH_NAME)))
            .count();
        self.finding(
            Status::Pass,
            format!(
                "{MODULE} importable via {pths} .pth files and the service PYTHONPATH; network settings from {}",
                values.network_source
            ),
        )
    }
}

/// The files for resolved values.
fn plan_for(ctx: &Context<'_>, values: &Values) -> Plan {
    let module = render(values);
    let mut actions = vec![
        root_dir("/usr/local/lib/notebook-agent"),
        root_dir(MODULE_DIR),
        root_file(PathBuf::from(MODULE), module.clone()),
    ];
    let pths = pth_locations(ctx);
    tracing::debug!(
        files = %pths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" "),
        "sagemaker_environment is made importable from every Python."
    );
    for pth in pths {
        actions.push(root_file(pth, format!("{MODULE_DIR}\n")));
    }
    let home = ctx.home();
    if ctx.root.path(&home).is_dir() {
        actions.push(Action::EnsureDir {
            path: home.join(".ipython"),
            mode: 0o755,
            owner: user_owner(ctx),
        });
        actions.push(root_file(home.join(LEGACY), module));
    } else {
        tracing::warn!(home = %home.display(), "No home directory: the legacy ~/.ipython copy is skipped.");
    }
    // The service: PYTHONPATH, for kernels whose Python has no .pth (a venv made later).
    actions.push(root_dir(super::proxy::DROPIN_DIR));
    let mut dropin = super::managed_banner("#");
    dropin.push_str("[Service]\n");
    let _ = writeln!(dropin, "{}", systemd_env("PYTHONPATH", MODULE_DIR));
    actions.push(root_file(PathBuf::from(DROPIN), dropin));
    actions.extend(super::jupyter_service(
        ctx,
        DROPIN,
        vec![PathBuf::from(DROPIN)],
    ));
    Plan::Actions(actions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_deterministic_and_quotes_everything() {
        let v = Values {
            subnets: vec!["subnet-0123abcd".into()],
            extra: vec![("TEAM".into(), "q\"uo'te\n\u{e9}\\".into())],
            ..Values::default()
        };
        let a = render(&v);
        assert_eq!(a, render(&v));
        assert!(
            a.contains("SAGEMAKER_SUBNETS = [\"subnet-0123abcd\"]"),
            "{a}"
        );
        assert!(a.contains("TEAM = \"q\\\"uo'te\\n\u{e9}\\\\\""), "{a}");
        assert!(a.contains("SAGEMAKER_VPC = None"), "{a}");
    }
}
