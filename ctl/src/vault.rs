//! `ferryctl vault check`: does this key open the vault on this target? Works from an
//! appliance directory or, with no appliance at all, from target flags and a key file.

use anyhow::Result;
use clap::Subcommand;
use serde::Serialize;

use crate::vault_access::{self, VaultArgs};

#[derive(Subcommand)]
pub enum VaultCommand {
    /// Check a vault key against a target's vault.json ("wrong vault key" if it does not match).
    Check(VaultArgs),
    /// Print the appliance's vault key in its text form (with a warning), to keep it offline.
    ExportKey(crate::secrets::ExportKeyArgs),
    /// Every disk in the vault with its machine, size and newest recovery point (storage and
    /// the vault key only: works when the site is gone).
    Disks(VaultArgs),
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
        VaultCommand::ExportKey(args) => crate::secrets::export_key(args, json),
        VaultCommand::Disks(args) => crate::vault_disks::print(&vault_access::open(&args).await?, json).await,
        VaultCommand::Check(args) => {
            let opened = vault_access::open(&args).await?;
            let report = CheckReport {
                vault_id: opened.vault.vault_id.to_string(),
                created_unix_ms: opened.vault.created_unix_ms,
                target: opened.storage.describe(),
                key_matches: true,
            };
            if json {
                outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                outln!("The vault key matches vault {} at {}.", report.vault_id, report.target);
            }
            Ok(())
        }
    }
}
