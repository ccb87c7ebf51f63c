//! Who this notebook is: `/opt/ml/metadata/resource-metadata.json`, which SageMaker writes on every
//! notebook instance (`ResourceArn`, `ResourceName`). The ARN gives the region and the account;
//! every value is checked for its AWS shape before anything uses it.

use std::path::Path;

use serde::Deserialize;

use super::{Root, SafeWriter};

pub const RESOURCE_METADATA: &str = "/opt/ml/metadata/resource-metadata.json";

/// The notebook instance's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotebookIdentity {
    pub name: String,
    pub arn: String,
    pub region: String,
    pub account: String,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "ResourceArn")]
    arn: String,
    #[serde(rename = "ResourceName")]
    name: Option<String>,
}

impl NotebookIdentity {
    /// Reads the metadata file under `root`. `Ok(None)` when it does not exist (not a notebook,
    /// or a bare test root); an error naming the file when it exists but is not what SageMaker
    /// writes.
    pub fn load(root: &Root) -> Result<Option<Self>, String> {
        let host = Path::new(RESOURCE_METADATA);
        let bytes = SafeWriter::new(root, None)
            .read(host)
            .map_err(|e| format!("{RESOURCE_METADATA}: {e}"))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let raw: Raw = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{RESOURCE_METADATA}: not SageMaker resource metadata: {e}"))?;
        Self::from_arn(&raw.arn, raw.name.as_deref())
            .map(Some)
            .map_err(|e| format!("{RESOURCE_METADATA}: {e}"))
    }

    /// `arn:PARTITION:sagemaker:REGION:ACCOUNT:notebook-instance/NAME`.
    pub fn from_arn(arn: &str, name: Option<&str>) -> Result<Self, String> {
        let bad = || format!("ResourceArn {arn:?} is not a SageMaker notebook-instance ARN");
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let [prefix, partition, service, region, account, resource] = parts[..] else {
            return Err(bad());
        };
        if prefix != "arn" || !partition.starts_with("aws") || service != "sagemaker" {
            return Err(bad());
        }
        crate::config::validate::region(region).map_err(|e| format!("{}: {e}", bad()))?;
        if !is_account(account) {
            return Err(bad());
        }
        let arn_name = resource
            .strip_prefix("notebook-instance/")
            .ok_or_else(bad)?;
        // The ARN carries the name lower-cased; ResourceName has the real spelling.
        let name = name.unwrap_or(arn_name);
        if !is_notebook_name(name) || !name.eq_ignore_ascii_case(arn_name) {
            return Err(format!(
                "ResourceName {name:?} is not a notebook instance name matching {arn:?}"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            arn: arn.to_string(),
            region: region.to_string(),
            account: account.to_string(),
        })
    }
}

/// A 12-digit AWS account id.
pub fn is_account(s: &str) -> bool {
    s.len() == 12 && s.chars().all(|c| c.is_ascii_digit())
}

/// SageMaker's notebook instance name rule: `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`.
pub fn is_notebook_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_gives_region_and_account() {
        let id = NotebookIdentity::from_arn(
            "arn:aws:sagemaker:eu-west-1:123456789012:notebook-instance/my-nb",
            Some("My-NB"),
        )
        .unwrap();
        assert_eq!(id.region, "eu-west-1");
        assert_eq!(id.account, "123456789012");
        assert_eq!(id.name, "My-NB");
    }

    #[test]
    fn hostile_metadata_is_refused() {
        for (arn, name) in [
            (
                "arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/x\"y",
                None,
            ),
            (
                "arn:aws:sagemaker:us-east-1:12345678901:notebook-instance/nb",
                None,
            ),
            (
                "arn:aws:s3:us-east-1:123456789012:notebook-instance/nb",
                None,
            ),
            (
                "arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/nb",
                Some("other"),
            ),
            (
                "arn:aws:sagemaker:us-east-1:123456789012:notebook-instance/nb",
                Some("nb\nX=1"),
            ),
        ] {
            assert!(
                NotebookIdentity::from_arn(arn, name).is_err(),
                "{arn} {name:?}"
            );
        }
    }
}
