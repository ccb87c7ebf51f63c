//! The CloudWatch Logs client: one rustls + ring TLS stack, the default credential chain (the
//! notebook's execution role via IMDS; `AWS_*` variables in tests), the region from `audit.region`
//! or the notebook ARN, an `endpoint_url` override, the SDK's own proxy support (smithy-rs
//! 2025-08-18) with the configured proxy and `no_proxy`, an extra CA bundle, connect/read timeouts.
//!
//! The SDK's retries are off: [`super::retry`] decides, counts and logs every retry itself.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_cloudwatchlogs::config::retry::RetryConfig;
use aws_sdk_cloudwatchlogs::config::timeout::TimeoutConfig;
use aws_sdk_cloudwatchlogs::config::Region;
use aws_smithy_http_client::proxy::ProxyConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::{Builder as HttpClientBuilder, Connector};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use crate::config::{Config, SecretUrl};

/// Hosts that never go through the proxy, whatever the config says (as for every other tool).
pub const ALWAYS_NO_PROXY: &[&str] = &["127.0.0.1", "localhost", "169.254.169.254"];

/// Everything the client is built from; see [`ClientSettings::from_config`].
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub region: String,
    /// CloudWatch Logs endpoint override (VPC endpoint, tests). Secret-bearing: redacted in Debug.
    pub endpoint_url: Option<SecretUrl>,
    /// Proxy for `http://` endpoints.
    pub http_proxy: Option<SecretUrl>,
    /// Proxy for `https://` endpoints; falls back to `http_proxy` (they are usually the same).
    pub https_proxy: Option<SecretUrl>,
    /// Bypass rules; [`ALWAYS_NO_PROXY`] is always added.
    pub no_proxy: Vec<String>,
    /// Extra PEM certificates trusted on top of the system store (a corporate TLS-inspecting proxy).
    pub ca_bundle: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// One attempt (connect, send, answer) as a whole.
    pub attempt_timeout: Duration,
}

impl ClientSettings {
    /// From the agent config. `notebook_region` is the region of the notebook's ARN, used when
    /// `audit.region` is absent. `ca_bundle` is the PEM file to trust in addition to the system
    /// store (the caller passes `pip.cert` or its own setting).
    pub fn from_config(
        config: &Config,
        notebook_region: Option<&str>,
        ca_bundle: Option<PathBuf>,
    ) -> Result<Self, String> {
        let region = config
            .audit
            .region
            .clone()
            .or_else(|| notebook_region.map(str::to_string))
            .ok_or_else(|| {
                "audit.region: not set and the notebook's ARN is unknown (no /opt/ml/metadata/resource-metadata.json); set audit.region".to_string()
            })?;
        let (http_proxy, https_proxy, no_proxy) = match &config.proxy {
            Some(p) => (p.http.clone(), p.https.clone(), p.no_proxy.clone()),
            None => (None, None, Vec::new()),
        };
        Ok(Self {
            region,
            endpoint_url: config.audit.endpoint_url.clone(),
            http_proxy,
            https_proxy,
            no_proxy,
            ca_bundle,
            ..Self::new("")
        })
    }

    /// Defaults: no endpoint override, no proxy, 5 s connect, 30 s read, 60 s per attempt.
    pub fn new(region: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            endpoint_url: None,
            http_proxy: None,
            https_proxy: None,
            no_proxy: Vec::new(),
            ca_bundle: None,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(60),
        }
    }

    /// The proxy for CloudWatch traffic: by the endpoint's scheme (default https), with the
    /// `no_proxy` list plus [`ALWAYS_NO_PROXY`]. Credentials in the proxy URL become basic auth.
    pub fn proxy_config(&self) -> Result<ProxyConfig, String> {
        let endpoint_is_http = self
            .endpoint_url
            .as_ref()
            .is_some_and(|u| u.expose().starts_with("http://"));
        let chosen = if endpoint_is_http {
            self.http_proxy.as_ref()
        } else {
            self.https_proxy.as_ref().or(self.http_proxy.as_ref())
        };
        let Some(proxy) = chosen else {
            return Ok(ProxyConfig::disabled());
        };
        let mut url = proxy
            .parse()
            .map_err(|e| format!("proxy: not a URL: {} ({e})", proxy.redacted()))?;
        let user = percent_decode(url.username());
        let pass = url.password().map(percent_decode);
        // Credentials go in as basic auth, not inside the URI that may end up in debug logs.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut cfg = ProxyConfig::all(url.as_str())
            .map_err(|e| format!("proxy: {}: {e}", proxy.redacted()))?;
        if !user.is_empty() {
            cfg = cfg.with_basic_auth(user, pass.unwrap_or_default());
        }
        let mut rules: Vec<String> = self.no_proxy.clone();
        for h in ALWAYS_NO_PROXY {
            if !rules.iter().any(|r| r == h) {
                rules.push((*h).to_string());
            }
        }
        Ok(cfg.no_proxy(rules.join(",")))
    }

    fn tls_context(&self) -> Result<TlsContext, String> {
        let mut store = TrustStore::default();
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| format!("CA bundle {}: cannot read: {e}", path.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!(
                    "CA bundle {}: no PEM certificate in it",
                    path.display()
                ));
            }
            store = store.with_pem_certificate(pem);
        }
        TlsContext::builder()
            .with_trust_store(store)
            .build()
            .map_err(|e| format!("TLS setup: {e}"))
    }

    /// The HTTP client: rustls + ring, the trust store above, the proxy above. Connectors are
    /// cached per timeout settings by the builder, so connections are pooled.
    pub fn http_client(&self) -> Result<SharedHttpClient, String> {
        let proxy = self.proxy_config()?;
        let tls_context = self.tls_context()?;
        // The high-level Builder has no proxy setter; the connector builder has. The connector
        // function is `#[doc(hidden)]` but public and keeps the per-settings connector cache.
        Ok(
            HttpClientBuilder::new().build_with_connector_fn(move |settings, components| {
                let mut b = Connector::builder().proxy_config(proxy.clone());
                b.set_connector_settings(settings.cloned());
                if let Some(c) = components {
                    b.set_sleep_impl(c.sleep_impl());
                }
                b.tls_provider(tls::Provider::rustls(CryptoMode::Ring))
                    .tls_context(tls_context.clone())
                    .build()
            }),
        )
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds the CloudWatch Logs client. Loads credentials lazily (first request), so this does not
/// touch the network.
pub async fn build_client(
    settings: &ClientSettings,
) -> Result<aws_sdk_cloudwatchlogs::Client, String> {
    let http_client = settings.http_client()?;
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .operation_attempt_timeout(settings.attempt_timeout)
        .build();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .http_client(http_client)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::disabled());
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url.expose());
    }
    let sdk_config = loader.load().await;
    Ok(aws_sdk_cloudwatchlogs::Client::new(&sdk_config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_from_config_else_arn() {
        let mut c = Config::default();
        let s = ClientSettings::from_config(&c, Some("eu-west-1"), None).expect("settings");
        assert_eq!(s.region, "eu-west-1");
        c.audit.region = Some("us-east-2".into());
        let s = ClientSettings::from_config(&c, Some("eu-west-1"), None).expect("settings");
        assert_eq!(s.region, "us-east-2");
        c.audit.region = None;
        let e = ClientSettings::from_config(&c, None, None).expect_err("no region");
        assert!(e.contains("audit.region"));
    }

    #[test]
    fn proxy_with_credentials_and_no_proxy() {
        let mut s = ClientSettings::new("eu-west-1");
        assert!(s.proxy_config().expect("none").is_disabled());
        s.https_proxy = Some(SecretUrl::new("http://u%40corp:p%3Ass@proxy.corp:3128"));
        s.no_proxy = vec![".amazonaws.com".into()];
        let p = s.proxy_config().expect("proxy");
        let dbg = format!("{p:?}");
        assert!(dbg.contains("proxy.corp:3128"), "{dbg}");
        assert!(dbg.contains(".amazonaws.com,127.0.0.1,localhost,169.254.169.254"));
        assert!(!dbg.contains("u%40corp:p"), "credentials not in the URI");
        // An http:// endpoint uses the http proxy only.
        s.endpoint_url = Some(SecretUrl::new("http://127.0.0.1:5000"));
        assert!(s.proxy_config().expect("none").is_disabled());
        assert_eq!(percent_decode("u%40corp"), "u@corp");
        assert_eq!(percent_decode("50%"), "50%");
    }

    #[test]
    fn ca_bundle_must_be_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "not a cert").expect("write");
        let mut s = ClientSettings::new("eu-west-1");
        s.ca_bundle = Some(f);
        let e = s.http_client().expect_err("bad bundle");
        assert!(e.contains("no PEM certificate"), "{e}");
        s.ca_bundle = Some(dir.path().join("missing.pem"));
        assert!(s
            .http_client()
            .expect_err("missing")
            .contains("cannot read"));
    }
}
