//! The `[target]` section of the appliance configuration, and opening a target from it.
//!
//! ```toml
//! [target]
//! kind = "local"                 # or "azure"
//! path = "/var/lib/ferry/target"
//! create = true
//!
//! # kind = "azure"
//! # account = "mystorageaccount"
//! # container = "ferry"
//! # endpoint = "http://127.0.0.1:10000/devstoreaccount1"   # optional, e.g. Azurite
//! # create_container = true
//! # request_timeout_secs = 60
//! # credential = { kind = "shared_key", account_key = "..." }
//! #            | { kind = "sas", token = "sv=...&sig=..." }
//! #            | { kind = "managed_identity", client_id = "..." }   # client_id optional
//! #            | { kind = "workload_identity", client_id = "...", tenant_id = "...", federated_token_file = "..." }
//! ```
//! Secrets are kept in [`Secret`], which prints as `<redacted>`; the configuration file that
//! holds them is owner-only.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// A secret string: serialised as is (the config file is owner-only), never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AzureCredentialConfig {
    SharedKey {
        account_key: Secret,
    },
    Sas {
        token: Secret,
    },
    ManagedIdentity {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    WorkloadIdentity {
        client_id: String,
        tenant_id: String,
        federated_token_file: String,
    },
}

fn default_request_timeout_secs() -> u64 {
    60
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureTargetConfig {
    pub account: String,
    pub container: String,
    /// Account URL; defaults to `https://{account}.blob.core.windows.net`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub create_container: bool,
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    pub credential: AzureCredentialConfig,
}

impl AzureTargetConfig {
    pub fn account_url(&self) -> String {
        match &self.endpoint {
            Some(endpoint) => endpoint.trim_end_matches('/').to_string(),
            None => format!("https://{}.blob.core.windows.net", self.account),
        }
    }

    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let account_ok = (3..=24).contains(&self.account.len())
            && self
                .account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !account_ok {
            return Err(format!(
                "target.account {:?} is not a storage account name (3-24 lowercase letters and digits)",
                self.account
            ));
        }
        let container_ok = (3..=63).contains(&self.container.len())
            && self
                .container
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.container.starts_with('-')
            && !self.container.ends_with('-')
            && !self.container.contains("--");
        if !container_ok {
            return Err(format!(
                "target.container {:?} is not a container name (3-63 of a-z 0-9 -)",
                self.container
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
                return Err(format!(
                    "target.endpoint {endpoint:?} must start with https:// (or http:// for an emulator)"
                ));
            }
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err(format!(
                "target.request_timeout_secs must be 1..=3600, got {}",
                self.request_timeout_secs
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalTargetConfig {
    pub path: PathBuf,
    #[serde(default = "yes")]
    pub create: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetConfig {
    Local(LocalTargetConfig),
    Azure(AzureTargetConfig),
    /// Benchmarks only: change sets are dropped (see [`crate::discard`]).
    Discard(LocalTargetConfig),
}

impl TargetConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            TargetConfig::Local(local) | TargetConfig::Discard(local) if local.path.as_os_str().is_empty() => {
                Err("target.path must not be empty".into())
            }
            TargetConfig::Local(_) | TargetConfig::Discard(_) => Ok(()),
            TargetConfig::Azure(azure) => azure.validate(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_hides_secrets() {
        #[derive(Deserialize)]
        struct File {
            target: TargetConfig,
        }
        let local: File = toml::from_str("[target]\nkind = \"local\"\npath = \"/tmp/x\"\n").unwrap();
        assert_eq!(
            local.target,
            TargetConfig::Local(LocalTargetConfig {
                path: "/tmp/x".into(),
                create: true
            })
        );
        let azure: File = toml::from_str(
            "[target]\nkind = \"azure\"\naccount = \"devstoreaccount1\"\ncontainer = \"ferry\"\n\
             credential = { kind = \"shared_key\", account_key = \"c2VjcmV0\" }\n",
        )
        .unwrap();
        assert!(azure.target.validate().is_ok());
        assert!(!format!("{:?}", azure.target).contains("c2VjcmV0"));
        let typo = toml::from_str::<File>("[target]\nkind = \"local\"\npth = \"/tmp/x\"\n");
        assert!(typo.is_err());
        let bad_container = TargetConfig::Azure(AzureTargetConfig {
            account: "acct".into(),
            container: "Bad_Name".into(),
            endpoint: None,
            create_container: false,
            request_timeout_secs: 60,
            credential: AzureCredentialConfig::ManagedIdentity { client_id: None },
        });
        assert!(bad_container.validate().unwrap_err().contains("target.container"));
    }
}
