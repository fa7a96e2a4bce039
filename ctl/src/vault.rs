//! `ferryctl vault check`: does this key open the vault on this target? Works from an
//! appliance directory or, with no appliance at all, from target flags and a key file.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_format::names::VAULT_JSON;
use ferry_format::{VaultDescriptor, VaultKey};
use ferry_storage::{open_target, RetryPolicy, StorageError};
use serde::Serialize;
use std::path::PathBuf;

use crate::target_args::TargetArgs;

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Check a vault key against a target's vault.json ("wrong vault key" if it does not match).
    Check(CheckArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// An appliance directory (its config names the target and the key file).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["target_dir", "azure_account"])]
    pub config: Option<PathBuf>,
    /// The vault key file (default: the appliance's).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Serialize)]
struct CheckReport {
    vault_id: String,
    created_unix_ms: u64,
    target: String,
    key_matches: bool,
}

pub async fn run(command: VaultCommand, json: bool) -> Result<()> {
    match command {
        VaultCommand::Check(args) => check(args, json).await,
    }
}

async fn check(args: CheckArgs, json: bool) -> Result<()> {
    let (target, default_key_file) = match &args.config {
        Some(dir) => {
            let (target, key_file) = crate::init::appliance_target(dir)?;
            (target, Some(key_file))
        }
        None if args.target.names_a_target() => (args.target.to_config(None, false)?, None),
        None => {
            bail!("name the vault: --config DIR, or --target-dir / --azure-* flags with --key-file")
        }
    };
    let key_file = args
        .key_file
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
    vault.open(&key)?;
    let report = CheckReport {
        vault_id: vault.vault_id.to_string(),
        created_unix_ms: vault.created_unix_ms,
        target: storage.describe(),
        key_matches: true,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!("The vault key matches vault {} at {}.", report.vault_id, report.target);
    }
    Ok(())
}
