//! The disks of a vault, from storage and the vault key alone (the site may be gone): each
//! disk's descriptor (`disk.fseal`: name, machine, size) and its newest recovery point, for
//! `ferryctl vault disks` and `ferryctl points` without `--disk`; and [`resolve`], which
//! turns what a user types for `--disk` (a full id, a unique id prefix such as the 8
//! characters `ferryctl status` prints, or `MACHINE/NAME` with a machine id prefix, or a
//! unique disk name) into a disk id.
//!
//! Cost: one directory listing of `disks/`, then per disk one descriptor read and (for the
//! listing, not for resolving a name) one listing of its `points/` plus a read of the newest
//! point, 8 disks at a time.

use anyhow::{bail, Result};
use ferry_format::plaintexts::{DiskDescriptor, RecoveryPoint};
use futures::StreamExt;
use serde::Serialize;
use uuid::Uuid;

use crate::vault_access::OpenVault;

/// Descriptors and points read at once.
const READ_AHEAD: usize = 8;

#[derive(Clone, Debug, Serialize)]
pub struct VaultDisk {
    pub disk_id: Uuid,
    pub machine_id: Uuid,
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    /// The newest recovery point (highest seq), if the disk has one.
    pub newest_point: Option<RecoveryPoint>,
    /// What could not be read (a damaged or missing descriptor or point): the disk is still
    /// listed, so one damaged disk does not hide the others.
    pub problem: Option<String>,
}

/// Every disk id with a directory under `disks/`.
async fn disk_ids(opened: &OpenVault) -> Result<Vec<Uuid>> {
    ferry_vault::disks::ids(&*opened.storage).await
}

/// A disk's descriptor, from `disk.fseal`.
pub async fn read_descriptor(opened: &OpenVault, disk_id: Uuid) -> Result<DiskDescriptor> {
    ferry_vault::disks::read_descriptor(&*opened.storage, &opened.keyring, disk_id).await
}

/// The recovery point with the highest seq, reading only that one point object.
pub async fn newest_point(opened: &OpenVault, disk_id: Uuid) -> Result<Option<RecoveryPoint>> {
    let key = opened.keyring.disk_key(disk_id);
    match ferry_vault::points::newest_name(&*opened.storage, &key, disk_id).await? {
        Some(name) => Ok(Some(crate::points::read_point(opened, disk_id, &name).await?)),
        None => Ok(None),
    }
}

/// Every disk of the vault with its descriptor and, `with_points`, its newest point; by
/// machine then name.
pub async fn list(opened: &OpenVault, with_points: bool) -> Result<Vec<VaultDisk>> {
    let ids = disk_ids(opened).await?;
    let mut disks: Vec<VaultDisk> = futures::stream::iter(ids)
        .map(|disk_id| async move {
            let mut disk = VaultDisk {
                disk_id,
                machine_id: Uuid::nil(),
                name: "?".into(),
                size_bytes: 0,
                sector_size: 0,
                newest_point: None,
                problem: None,
            };
            match read_descriptor(opened, disk_id).await {
                Ok(descriptor) => {
                    disk.machine_id = descriptor.machine_id;
                    disk.name = descriptor.name;
                    disk.size_bytes = descriptor.size_bytes;
                    disk.sector_size = descriptor.sector_size;
                }
                Err(e) => disk.problem = Some(format!("{e:#}")),
            }
            if with_points {
                match newest_point(opened, disk_id).await {
                    Ok(point) => disk.newest_point = point,
                    Err(e) => disk.problem = Some(format!("{e:#}")),
                }
            }
            disk
        })
        .buffer_unordered(READ_AHEAD)
        .collect()
        .await;
    disks.sort_by(|a, b| (a.machine_id, &a.name, a.disk_id).cmp(&(b.machine_id, &b.name, b.disk_id)));
    Ok(disks)
}

/// What `--disk` may name, checked against the vault's disks (see the module header).
pub async fn resolve(opened: &OpenVault, selector: &str) -> Result<Uuid> {
    let selector = selector.trim();
    if selector.is_empty() {
        bail!("--disk is empty: give a disk id, a unique prefix of one, or MACHINE/NAME");
    }
    let ids = disk_ids(opened).await?;
    if let Some(full) = ferry_format::ids::parse_canonical_uuid(&selector.to_ascii_lowercase()) {
        if ids.contains(&full) {
            return Ok(full);
        }
        bail!("disk {full} is not in this vault (ferryctl vault disks lists them)");
    }
    let lowered = selector.to_ascii_lowercase();
    let by_prefix: Vec<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| id.to_string().starts_with(&lowered))
        .collect();
    match by_prefix.as_slice() {
        [one] => return Ok(*one),
        [] => {}
        many => bail!(
            "{selector:?} is the start of {} disk ids ({}); give more of it",
            many.len(),
            many.iter().map(Uuid::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
    // Not an id prefix: a disk name, alone or as MACHINE/NAME.
    let (machine, name) = match selector.split_once('/') {
        Some((machine, name)) => (Some(machine.to_ascii_lowercase()), name),
        None => (None, selector),
    };
    let disks = list(opened, false).await?; // names and machines only
    let matching: Vec<&VaultDisk> = disks
        .iter()
        .filter(|d| d.name == name)
        .filter(|d| {
            machine
                .as_ref()
                .is_none_or(|m| d.machine_id.to_string().starts_with(m.as_str()))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.disk_id),
        [] => bail!("no disk in this vault matches {selector:?} (ferryctl vault disks lists them)"),
        many => bail!(
            "{selector:?} names {} disks: {}; give MACHINE/NAME or an id",
            many.len(),
            many.iter()
                .map(|d| format!("{} ({}/{})", d.disk_id, short(&d.machine_id), d.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub fn short(id: &Uuid) -> String {
    id.to_string()[..8].to_string()
}

/// `ferryctl vault disks` (and `ferryctl points` without `--disk`).
pub async fn print(opened: &OpenVault, json: bool) -> Result<()> {
    let disks = list(opened, true).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&disks).unwrap_or_default());
    } else {
        out!("{}", render(&disks));
    }
    Ok(())
}

/// The table `ferryctl vault disks` prints.
pub fn render(disks: &[VaultDisk]) -> String {
    if disks.is_empty() {
        return "No disks in this vault yet.\n".into();
    }
    let mut out = format!(
        "{:<36}  {:<8}  {:<20}  {:>10}  {:<32}  {}\n",
        "DISK", "MACHINE", "NAME", "SIZE", "NEWEST POINT (SEQ)", "SOURCE TIME (UTC)"
    );
    for d in disks {
        let (point, time) = match &d.newest_point {
            Some(p) => (
                format!("{} ({})", p.bookmark_id, p.seq),
                ferry_format::time::format_unix_ms(p.source_time_unix_ms),
            ),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<36}  {:<8}  {:<20}  {:>10}  {:<32}  {}\n",
            d.disk_id,
            short(&d.machine_id),
            d.name,
            gib(d.size_bytes),
            point,
            time
        ));
        if let Some(problem) = &d.problem {
            out.push_str(&format!("  {problem}\n"));
        }
    }
    out
}

fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
