//! `ferryctl points --disk DISK`: the recovery points of a disk, read from storage alone;
//! without `--disk`, every disk of the vault with its newest point (as `ferryctl vault disks`).

use anyhow::{Context, Result};
use clap::Args;
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::RecoveryPoint;
use ferry_storage::list_all;
use uuid::Uuid;

use crate::vault_access::{self, OpenVault, VaultArgs};

#[derive(Args, Debug)]
pub struct PointsArgs {
    /// The disk: its id, a unique prefix of it (as `ferryctl status` prints), or MACHINE/NAME
    /// (machine id prefix and disk name). Without it, every disk of the vault is listed.
    #[arg(long, value_name = "DISK")]
    pub disk: Option<String>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Every recovery point of `disk`, by seq.
pub async fn read_points(opened: &OpenVault, disk: Uuid) -> Result<Vec<RecoveryPoint>> {
    let prefix = ObjectName::disk_prefix(disk, "points/");
    let mut points = Vec::new();
    for meta in list_all(&*opened.storage, &prefix)
        .await
        .context("cannot list the recovery points")?
    {
        if ObjectName::parse(&meta.name).is_err() {
            continue; // not an object of this format
        }
        points.push(read_point(opened, disk, &meta.name).await?);
    }
    points.sort_by_key(|p| p.seq);
    Ok(points)
}

/// One recovery point object of `disk`, read, unsealed and parsed.
pub async fn read_point(opened: &OpenVault, disk: Uuid, name: &str) -> Result<RecoveryPoint> {
    let sealed = opened
        .storage
        .get(name)
        .await
        .with_context(|| format!("cannot read {name}"))?;
    let plain = ferry_format::seal::unseal(&opened.keyring.disk_key(disk), name, &sealed)
        .with_context(|| format!("object {name} is corrupt"))?;
    serde_json::from_slice(&plain).with_context(|| format!("object {name} is not a recovery point"))
}

pub use ferry_format::time::format_unix_ms;

pub async fn run(args: PointsArgs, json: bool) -> Result<()> {
    let opened = vault_access::open(&args.vault).await?;
    let Some(selector) = &args.disk else {
        return crate::vault_disks::print(&opened, json).await;
    };
    let disk = crate::vault_disks::resolve(&opened, selector).await?;
    let points = read_points(&opened, disk).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&points).unwrap_or_default());
        return Ok(());
    }
    if points.is_empty() {
        println!("No recovery points for disk {disk} yet.");
        return Ok(());
    }
    println!(
        "{:>12}  {:<32}  {:<5}  {:<24}  tag",
        "seq", "bookmark", "kind", "source time (UTC)"
    );
    for point in &points {
        println!(
            "{:>12}  {:<32}  {:<5}  {:<24}  {}",
            point.seq,
            point.bookmark_id,
            point.kind,
            format_unix_ms(point.source_time_unix_ms),
            point.tag.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
