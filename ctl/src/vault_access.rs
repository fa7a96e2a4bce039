//! Opening a vault for offline commands (restore, points, vault check): the target and key
//! come from an appliance directory, or, with no appliance at all, from target flags and a
//! vault key file. Nothing here needs ferryd.

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_format::names::VAULT_JSON;
use ferry_format::{Keyring, VaultDescriptor, VaultKey};
use ferry_storage::{open_target, ObjectStorage, RetryPolicy, StorageError};
use std::path::PathBuf;
use std::sync::Arc;

use crate::target_args::TargetArgs;

#[derive(Args, Debug, Clone)]
pub struct VaultArgs {
    /// An appliance directory (its config names the target and the key file).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["target_dir", "azure_account"])]
    pub config: Option<PathBuf>,
    /// The vault key file (default: the appliance's).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub struct OpenVault {
    /// The target as configured (failover writes page blobs beside the vault's container).
    pub target: ferry_storage::TargetConfig,
    pub storage: Arc<dyn ObjectStorage>,
    pub keyring: Keyring,
    pub vault: VaultDescriptor,
}

pub async fn open(args: &VaultArgs) -> Result<OpenVault> {
    let (target, default_key_file) = match &args.config {
        Some(dir) => {
            let (target, key_file) = crate::init::appliance_target(dir)?;
            (target, Some(key_file))
        }
        None if args.target.names_a_target() => (args.target.to_config(None, false)?, None),
        None => bail!("name the vault: --config DIR, or --target-dir / --azure-* flags with --key-file"),
    };
    let key_file = args
        .key_file
        .clone()
        .or(default_key_file)
        .context("--key-file is required with target flags")?;
    let key_text = std::fs::read_to_string(&key_file)
        .with_context(|| format!("cannot read the vault key file {}", key_file.display()))?;
    let key =
        VaultKey::parse_text(&key_text).with_context(|| format!("{} does not hold a vault key", key_file.display()))?;
    let storage = open_target(&target, RetryPolicy::default())
        .await
        .context("cannot open the target")?;
    let bytes = match storage.get(VAULT_JSON).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => {
            bail!("no Ferry vault at {}: {VAULT_JSON} does not exist", storage.describe())
        }
        Err(e) => return Err(e).context("cannot read the target"),
    };
    let vault = VaultDescriptor::parse(&bytes)?;
    let keyring = vault.open(&key)?;
    Ok(OpenVault {
        target,
        storage,
        keyring,
        vault,
    })
}
