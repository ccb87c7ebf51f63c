//! The instance metadata service, IMDSv2 only (a session token from `PUT /latest/api/token`, then
//! `GET`s carrying it), through reqwest with a short timeout and never through a proxy. The
//! endpoint is configurable (`environment.imds_endpoint`) so tests use a fake on 127.0.0.1; the
//! default is the real `http://169.254.169.254`, which no test may reach.
//!
//! [`Imds::network`] finds the notebook's customer ENI: a notebook instance has a service ENI
//! and the customer's; the customer's is the one whose `owner-id` is the notebook's account.

use std::time::Duration;

pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
const TOKEN_TTL: &str = "300";

/// What the customer ENI says about the notebook's network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Network {
    pub vpc: Option<String>,
    pub subnet: Option<String>,
    pub security_groups: Vec<String>,
    pub region: Option<String>,
}

pub struct Imds {
    base: String,
    http: reqwest::blocking::Client,
    token: String,
}

impl Imds {
    /// Connects (fetches a session token). Errors name the endpoint.
    pub fn connect(endpoint: &str, timeout: Duration) -> Result<Self, String> {
        let base = endpoint.trim_end_matches('/').to_string();
        let http = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("IMDS client: {e}"))?;
        let token = http
            .put(format!("{base}/latest/api/token"))
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.text())
            .map_err(|e| format!("IMDSv2 token from {base}: {}", chain(&e)))?;
        Ok(Self {
            base,
            http,
            token: token.trim().to_string(),
        })
    }

    /// `GET /latest/meta-data/<path>`; `Ok(None)` on 404.
    pub fn get(&self, path: &str) -> Result<Option<String>, String> {
        let url = format!("{}/latest/meta-data/{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .header("X-aws-ec2-metadata-token", &self.token)
            .send()
            .map_err(|e| format!("IMDS {url}: {}", chain(&e)))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = resp
            .error_for_status()
            .map_err(|e| format!("IMDS {url}: {}", chain(&e)))?;
        resp.text()
            .map(Some)
            .map_err(|e| format!("IMDS {url}: {}", chain(&e)))
    }

    /// The network of the ENI owned by `account` (the notebook's); when the account is unknown,
    /// the only ENI there is. Values are returned as IMDS gave them: callers validate them.
    pub fn network(&self, account: Option<&str>) -> Result<Network, String> {
        let macs = self.get("network/interfaces/macs/")?.unwrap_or_default();
        let macs: Vec<&str> = macs
            .lines()
            .map(|l| l.trim().trim_end_matches('/'))
            .filter(|l| !l.is_empty())
            .collect();
        let mut chosen = None;
        for mac in &macs {
            if !mac.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
                return Err(format!(
                    "IMDS returned a MAC address that is not one: {mac:?}"
                ));
            }
            let owner = self.get(&format!("network/interfaces/macs/{mac}/owner-id"))?;
            let owner = owner.as_deref().map(str::trim);
            match account {
                Some(a) if owner == Some(a) => {
                    chosen = Some(*mac);
                    break;
                }
                None if macs.len() == 1 => chosen = Some(*mac),
                _ => {}
            }
        }
        let Some(mac) = chosen else {
            return Err(match account {
                Some(a) => format!(
                    "IMDS: none of the {} network interfaces is owned by account {a} (the customer ENI)",
                    macs.len()
                ),
                None => format!(
                    "IMDS: {} network interfaces and no notebook account to choose the customer ENI by",
                    macs.len()
                ),
            });
        };
        let field = |f: &str| -> Result<Option<String>, String> {
            Ok(self
                .get(&format!("network/interfaces/macs/{mac}/{f}"))?
                .map(|s| s.trim().to_string()))
        };
        let security_groups = field("security-group-ids")?
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        Ok(Network {
            vpc: field("vpc-id")?,
            subnet: field("subnet-id")?,
            security_groups,
            region: self.get("placement/region")?.map(|s| s.trim().to_string()),
        })
    }
}

/// An error with its sources ("error sending request: connection refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
