//! `ferryctl points --disk DISK`: the recovery points of a disk, read from storage alone, each
//! with whether it is pinned and the base a restore of it starts from; without `--disk`,
//! every disk of the vault with its newest point (as `ferryctl vault disks`).
//! `ferryctl points pin|unpin --disk DISK --point BOOKMARK`: retention never prunes a pinned
//! point (the pin is an object in storage, so any restore tool sees it).

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ferry_format::plaintexts::RecoveryPoint;
use ferry_format::plaintexts::{Pin, PLAINTEXT_FORMAT};
use ferry_format::BookmarkId;
use serde::Serialize;
use uuid::Uuid;

use crate::vault_access::{self, OpenVault, VaultArgs};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PointsArgs {
    #[command(subcommand)]
    pub action: Option<PointsAction>,
    /// The disk: its id, a unique prefix of it (as `ferryctl status` prints), or MACHINE/NAME
    /// (machine id prefix and disk name). Without it, every disk of the vault is listed.
    #[arg(long, value_name = "DISK")]
    pub disk: Option<String>,
    /// A consistency group's points (its id, as `ferryctl group list` shows), each with its
    /// members' disks and seqs.
    #[arg(long, value_name = "GROUP_ID", conflicts_with = "disk")]
    pub group: Option<Uuid>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

#[derive(Subcommand, Debug)]
pub enum PointsAction {
    /// Keep a point whatever the retention policy says (test failovers pin theirs).
    Pin(Box<PinArgs>),
    /// Let retention prune a pinned point again (at its next run).
    Unpin(Box<PinArgs>),
}

#[derive(Args, Debug)]
pub struct PinArgs {
    #[arg(long, value_name = "DISK")]
    pub disk: String,
    /// The recovery point (bookmark id).
    #[arg(long, value_name = "BOOKMARK")]
    pub point: String,
    /// Why it is pinned (shown by `ferryctl points`).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// A point as `ferryctl points --json` lists it: the stored point, whether it is pinned (and
/// why), and the base a restore of it starts from.
#[derive(Serialize)]
struct ListedPoint {
    #[serde(flatten)]
    point: RecoveryPoint,
    pinned: bool,
    pin_reason: Option<String>,
    base_seq: Option<u64>,
}

/// Every recovery point of `disk`, by seq.
pub async fn read_points(opened: &OpenVault, disk: Uuid) -> Result<Vec<RecoveryPoint>> {
    let key = std::sync::Arc::new(opened.keyring.disk_key(disk));
    let points = ferry_vault::points::read_all(&opened.storage, &key, disk, 16).await?;
    Ok(points.into_iter().map(|(_, point)| point).collect())
}

/// One recovery point object of `disk`, read, unsealed and parsed.
pub async fn read_point(opened: &OpenVault, disk: Uuid, name: &str) -> Result<RecoveryPoint> {
    ferry_vault::sealed::read_json(&*opened.storage, &opened.keyring.disk_key(disk), name).await
}

/// [`ferry_vault::points::choose`], and when a named point is gone, the reason retention
/// recorded ("pruned by retention" with when), pointing at `ferryctl points`.
pub async fn choose_or_explain(
    opened: &OpenVault,
    disk_id: Uuid,
    points: &[RecoveryPoint],
    selector: &ferry_vault::points::Selector,
) -> Result<ferry_vault::points::Chosen> {
    match ferry_vault::points::choose(points, selector) {
        Ok(chosen) => Ok(chosen),
        Err(e) => {
            if let ferry_vault::points::Selector::Bookmark(id) = selector {
                let key = opened.keyring.disk_key(disk_id);
                let pruned = ferry_vault::retention::records::find_pruned(&*opened.storage, &key, disk_id, id).await?;
                if let Some(record) = pruned.last() {
                    bail!(
                        "recovery point {id} (seq {}, source time {} UTC) was pruned by retention on {} UTC \
                         (ferryctl points --disk {disk_id} lists the points kept)",
                        record.seq,
                        ferry_format::time::format_unix_ms(record.source_time_unix_ms),
                        ferry_format::time::format_unix_ms(record.pruned_unix_ms)
                    );
                }
            }
            Err(e.context(format!(
                "disk {disk_id}: no recovery point fits (ferryctl points --disk {disk_id} lists them)"
            )))
        }
    }
}

pub use ferry_format::time::format_unix_ms;

pub async fn run(args: PointsArgs, json: bool) -> Result<()> {
    match args.action {
        Some(PointsAction::Pin(pin)) => return set_pin(*pin, true, json).await,
        Some(PointsAction::Unpin(pin)) => return set_pin(*pin, false, json).await,
        None => {}
    }
    let opened = vault_access::open(&args.vault).await?;
    if let Some(group_id) = args.group {
        return print_group(&opened, group_id, json).await;
    }
    let Some(selector) = &args.disk else {
        return crate::vault_disks::print(&opened, json).await;
    };
    let disk = crate::vault_disks::resolve(&opened, selector).await?;
    let points = read_points(&opened, disk).await?;
    let key = opened.keyring.disk_key(disk);
    let pins = ferry_vault::retention::records::read_pins(&*opened.storage, &key, disk).await?;
    let bases = ferry_vault::base::list(&*opened.storage, disk).await?;
    let listed: Vec<ListedPoint> = points
        .into_iter()
        .map(|point| {
            let pin = pins
                .iter()
                .find(|p| p.seq == point.seq && p.bookmark_id == point.bookmark_id);
            ListedPoint {
                pinned: pin.is_some(),
                pin_reason: pin.and_then(|p| p.reason.clone()),
                base_seq: bases.newest_at_or_below(point.seq),
                point,
            }
        })
        .collect();
    if json {
        outln!("{}", serde_json::to_string_pretty(&listed).unwrap_or_default());
        return Ok(());
    }
    let points = listed;
    if points.is_empty() {
        outln!("No recovery points for disk {disk} yet.");
        return Ok(());
    }
    if !bases.manifests.is_empty() {
        let seqs: Vec<String> = bases.manifests.iter().map(u64::to_string).collect();
        outln!(
            "Base images at seq {} (older seqs were pruned by retention).",
            seqs.join(", ")
        );
    }
    outln!(
        "{:>12}  {:<32}  {:<5}  {:<24}  {:<6}  tag",
        "seq",
        "bookmark",
        "kind",
        "source time (UTC)",
        "pinned"
    );
    for listed in &points {
        let point = &listed.point;
        let pinned = match (&listed.pinned, &listed.pin_reason) {
            (true, Some(reason)) => format!("yes ({reason})"),
            (true, None) => "yes".into(),
            (false, _) => "".into(),
        };
        outln!(
            "{:>12}  {:<32}  {:<5}  {:<24}  {:<6}  {}",
            point.seq,
            point.bookmark_id,
            point.kind,
            format_unix_ms(point.source_time_unix_ms),
            pinned,
            point.tag.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// Pins or unpins a point. A pin is checked against the point afterwards: a point pruned
/// meanwhile is reported (and its pin removed) rather than pinned in name only.
async fn set_pin(args: PinArgs, pin: bool, json: bool) -> Result<()> {
    let opened = vault_access::open(&args.vault).await?;
    let disk = crate::vault_disks::resolve(&opened, &args.disk).await?;
    let bookmark = BookmarkId::new(&args.point).map_err(anyhow::Error::msg)?;
    let points = read_points(&opened, disk).await?;
    let key = opened.keyring.disk_key(disk);
    let Some(point) = points
        .iter()
        .filter(|p| p.bookmark_id == args.point)
        .max_by_key(|p| p.seq)
    else {
        let pruned = ferry_vault::retention::records::find_pruned(&*opened.storage, &key, disk, &args.point).await?;
        if !pruned.is_empty() {
            bail!("recovery point {} of disk {disk} was pruned by retention", args.point);
        }
        bail!(
            "disk {disk} has no recovery point {} (ferryctl points --disk {disk} lists them)",
            args.point
        );
    };
    if pin {
        let record = Pin {
            format: PLAINTEXT_FORMAT,
            disk_id: disk,
            seq: point.seq,
            bookmark_id: args.point.clone(),
            reason: args.reason.clone(),
            pinned_unix_ms: ferry_client::clock::now_unix_ms(),
        };
        ferry_vault::retention::records::pin(&*opened.storage, &key, &record).await?;
        if !ferry_vault::points::exists(&*opened.storage, &key, disk, point.seq, bookmark.as_str()).await? {
            ferry_vault::retention::records::unpin(&*opened.storage, disk, point.seq, &bookmark).await?;
            bail!(
                "recovery point {} of disk {disk} was pruned by retention while it was being pinned",
                args.point
            );
        }
    } else if !ferry_vault::retention::records::unpin(&*opened.storage, disk, point.seq, &bookmark).await? {
        bail!("recovery point {} of disk {disk} is not pinned", args.point);
    }
    let verb = if pin { "pinned" } else { "unpinned" };
    if json {
        outln!(
            "{}",
            serde_json::json!({ "disk_id": disk, "seq": point.seq, "bookmark_id": args.point, "pinned": pin })
        );
    } else {
        outln!(
            "{verb} recovery point {} (seq {}) of disk {disk}",
            args.point,
            point.seq
        );
    }
    Ok(())
}

/// `points --group`: the group's points, oldest first.
async fn print_group(opened: &OpenVault, group_id: Uuid, json: bool) -> Result<()> {
    let points = ferry_vault::group_points::list(&*opened.storage, &opened.keyring, group_id).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&points)?);
        return Ok(());
    }
    if points.is_empty() {
        outln!("No points of group {group_id} in this vault yet.");
        return Ok(());
    }
    outln!("{:<32}  {:<5}  MEMBERS (disk@seq)  tag", "POINT", "KIND");
    for point in &points {
        outln!(
            "{:<32}  {:<5}  {}  {}",
            point.bookmark_id,
            point.kind,
            point
                .members
                .iter()
                .map(|m| format!("{}@{}", crate::vault_disks::short(&m.disk_id), m.seq))
                .collect::<Vec<_>>()
                .join(", "),
            point.tag.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
