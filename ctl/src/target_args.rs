//! Command-line flags that name a target: a local directory, or an Azure Blob container
//! with one credential. Secrets are read from files, never taken on the command line (where
//! other users could see them in the process list).

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_storage::{AzureCredentialConfig, AzureTargetConfig, LocalTargetConfig, Secret, TargetConfig};
use std::path::PathBuf;

#[derive(Args, Debug, Default, Clone)]
pub struct TargetArgs {
    /// Local-directory target.
    #[arg(long, value_name = "PATH", conflicts_with = "azure_account")]
    pub target_dir: Option<PathBuf>,
    /// Azure storage account name.
    #[arg(long, value_name = "NAME", requires = "azure_container")]
    pub azure_account: Option<String>,
    /// Azure Blob container.
    #[arg(long, value_name = "NAME", requires = "azure_account")]
    pub azure_container: Option<String>,
    /// Account URL, e.g. `http://127.0.0.1:10000/devstoreaccount1` for Azurite (default `https://NAME.blob.core.windows.net`).
    #[arg(long, value_name = "URL")]
    pub azure_endpoint: Option<String>,
    /// File holding the storage account key (Shared Key).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["azure_sas_file", "azure_managed_identity"])]
    pub azure_key_file: Option<PathBuf>,
    /// File holding a SAS token.
    #[arg(long, value_name = "FILE", conflicts_with = "azure_managed_identity")]
    pub azure_sas_file: Option<PathBuf>,
    /// Use the VM's managed identity.
    #[arg(long)]
    pub azure_managed_identity: bool,
    /// Client id of a user-assigned managed identity.
    #[arg(long, value_name = "ID", requires = "azure_managed_identity")]
    pub azure_client_id: Option<String>,
    /// Create the container if it does not exist (Shared Key or SAS credentials).
    #[arg(long)]
    pub create_container: bool,
}

fn read_secret(path: &PathBuf, what: &str) -> Result<Secret> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(Secret::new(value))
}

impl TargetArgs {
    pub fn names_a_target(&self) -> bool {
        self.target_dir.is_some() || self.azure_account.is_some()
    }

    /// The target these flags name, or `default_local` when they name none. A local
    /// directory is created only when `create_local` (init does; checks and restores never).
    pub fn to_config(&self, default_local: Option<PathBuf>, create_local: bool) -> Result<TargetConfig> {
        if let (Some(account), Some(container)) = (&self.azure_account, &self.azure_container) {
            let credential = if let Some(file) = &self.azure_key_file {
                AzureCredentialConfig::SharedKey {
                    account_key: read_secret(file, "account key")?,
                }
            } else if let Some(file) = &self.azure_sas_file {
                AzureCredentialConfig::Sas {
                    token: read_secret(file, "SAS token")?,
                }
            } else if self.azure_managed_identity {
                AzureCredentialConfig::ManagedIdentity {
                    client_id: self.azure_client_id.clone(),
                }
            } else {
                bail!("an Azure target needs a credential: --azure-key-file, --azure-sas-file or --azure-managed-identity");
            };
            let config = TargetConfig::Azure(AzureTargetConfig {
                account: account.clone(),
                container: container.clone(),
                endpoint: self.azure_endpoint.clone(),
                create_container: self.create_container,
                request_timeout_secs: 60,
                credential,
            });
            config.validate().map_err(anyhow::Error::msg)?;
            return Ok(config);
        }
        let path = match (&self.target_dir, default_local) {
            (Some(path), _) => path.clone(),
            (None, Some(path)) => path,
            (None, None) => {
                bail!("name a target: --target-dir PATH, or --azure-account and --azure-container with a credential")
            }
        };
        Ok(TargetConfig::Local(LocalTargetConfig {
            path,
            create: create_local,
        }))
    }
}
