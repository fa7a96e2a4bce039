//! `ferryctl restore`: a disk image at a chosen seq, from storage and the vault key alone
//! (FORMATS.md section 5), with no ferryd.
//!
//! The image starts from the newest base at or below S (its chunks written at their offsets),
//! then the change sets after the base are replayed up to S (`ferry_vault::log`: a chain that
//! reads objects overlapping after a crash once, `--parallel` downloads ahead, each batch
//! exactly once and in order, a missing seq named). WRITEs land in place, ZEROs punch holes,
//! so the image stays sparse. Memory: about `--parallel` sealed objects plus their plaintexts.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Instant;
use uuid::Uuid;

use crate::point_args::PointArgs;
use crate::vault_access::{self, OpenVault, VaultArgs};
use ferry_vault::points::Selector;

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The disk to restore: its id, a unique prefix of it (as `ferryctl status` prints), or
    /// MACHINE/NAME (machine id prefix and disk name); `ferryctl vault disks` lists them.
    #[arg(long, value_name = "DISK", required_unless_present = "group", requires = "out")]
    pub disk: Option<String>,
    /// A consistency group instead (its id): every member disk at the group point `--point`,
    /// each into `--out-dir/{disk id}.raw`.
    #[arg(long, value_name = "GROUP_ID", conflicts_with = "disk", requires_all = ["out_dir", "point"])]
    pub group: Option<Uuid>,
    #[command(flatten)]
    pub which: PointArgs,
    /// The image file to write (created; must not exist).
    #[arg(long, value_name = "FILE", conflicts_with = "group")]
    pub out: Option<PathBuf>,
    /// With --group: the directory the members' images go to (created when missing).
    #[arg(long, value_name = "DIR", requires = "group")]
    pub out_dir: Option<PathBuf>,
    /// Objects downloaded ahead at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    #[command(flatten)]
    pub vault: VaultArgs,
}

#[derive(Serialize)]
struct RestoreReport {
    disk_id: Uuid,
    seq: u64,
    out: PathBuf,
    size_bytes: u64,
    /// The base the image started from (None: from zeros).
    base_seq: Option<u64>,
    objects_read: usize,
    batches_applied: u64,
    bytes_written: u64,
    seconds: f64,
}

async fn target_seq(args: &RestoreArgs, opened: &OpenVault, disk_id: Uuid) -> Result<u64> {
    let selector = args.which.selector()?;
    if let Selector::Seq(seq) = selector {
        return Ok(seq); // any seq in storage, a point or not (checked against storage below)
    }
    let points = crate::points::read_points(opened, disk_id).await?;
    crate::points::choose_or_explain(opened, disk_id, &points, &selector)
        .await
        .map(|chosen| chosen.seq)
}

pub async fn run(args: RestoreArgs, json: bool) -> Result<()> {
    let opened = vault_access::open(&args.vault).await?;
    if let (Some(group_id), Some(dir), Some(bookmark)) = (args.group, &args.out_dir, &args.which.point) {
        let point = ferry_vault::group_points::find(&*opened.storage, &opened.keyring, group_id, bookmark).await?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut reports = Vec::new();
        for member in &point.members {
            let out = dir.join(format!("{}.raw", member.disk_id));
            reports.push(restore_one(&opened, member.disk_id, member.seq, &out, args.parallel, json).await?);
        }
        if json {
            outln!("{}", serde_json::to_string_pretty(&reports).unwrap_or_default());
        }
        return Ok(());
    }
    let (Some(disk), Some(out)) = (&args.disk, &args.out) else {
        bail!("say what to restore: --disk DISK --out FILE, or --group GROUP_ID --point BOOKMARK --out-dir DIR");
    };
    let disk_id = crate::vault_disks::resolve(&opened, disk).await?;
    let target = target_seq(&args, &opened, disk_id).await?;
    let report = restore_one(&opened, disk_id, target, out, args.parallel, json).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    }
    Ok(())
}

/// Restores `disk_id` at seq `target` into the new file `out`; prints a line unless `json`.
async fn restore_one(
    opened: &OpenVault,
    disk_id: Uuid,
    target: u64,
    out: &std::path::Path,
    parallel: u16,
    json: bool,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let descriptor = crate::vault_disks::read_descriptor(opened, disk_id).await?;

    let objects = ferry_vault::log::list(&*opened.storage, &opened.keyring.disk_key(disk_id), disk_id).await?;
    let newest = objects.iter().map(|o| o.last_seq).max().unwrap_or(0);
    let bases = ferry_vault::base::list(&*opened.storage, disk_id).await?;
    let newest_stored = newest.max(bases.manifests.last().copied().unwrap_or(0));
    if target > newest_stored {
        let point = match crate::vault_disks::newest_point(opened, disk_id).await? {
            Some(p) => format!(
                "the newest recovery point is {} at seq {} ({} UTC)",
                p.bookmark_id,
                p.seq,
                ferry_format::time::format_unix_ms(p.source_time_unix_ms)
            ),
            None => "the disk has no recovery point yet".into(),
        };
        bail!("seq {target} is past the newest seq in storage ({newest_stored}); {point}");
    }
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
    file.set_len(descriptor.size_bytes)
        .with_context(|| format!("cannot size {}", out.display()))?;
    let mut last_report = Instant::now();
    let restored = ferry_vault::restore::restore_into(
        opened.storage.clone(),
        &opened.keyring,
        &descriptor,
        target,
        &file,
        parallel as usize,
        |seq| {
            if !json && last_report.elapsed().as_secs() >= 1 {
                eprintln!("restore: seq {seq} of {target} ({}%)", seq * 100 / target.max(1));
                last_report = Instant::now();
            }
        },
    )
    .await;
    let restored = match restored {
        Ok(restored) => restored,
        Err(e) => {
            // Leave no partial image behind that could be mistaken for a restore.
            let _ = std::fs::remove_file(out);
            return Err(e.context(format!("cannot restore {}", out.display())));
        }
    };
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", out.display()))?;
    let report = RestoreReport {
        disk_id,
        seq: target,
        out: out.to_path_buf(),
        size_bytes: descriptor.size_bytes,
        base_seq: restored.base_seq,
        objects_read: restored.replayed.objects_read,
        batches_applied: restored.replayed.batches_applied,
        bytes_written: restored.base_bytes + restored.replayed.bytes_written,
        seconds: started.elapsed().as_secs_f64(),
    };
    if !json {
        outln!(
            "Restored disk {} at seq {} to {} ({} bytes, {} batches from {} objects, {:.1} s).",
            report.disk_id,
            report.seq,
            report.out.display(),
            report.size_bytes,
            report.batches_applied,
            report.objects_read,
            report.seconds
        );
    }
    Ok(report)
}
