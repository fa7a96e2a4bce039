//! `ferryctl restore`: a disk image at a chosen seq, from storage and the vault key alone
//! (FORMATS.md section 5), with no ferryd.
//!
//! The log objects are listed and a chain that covers seq 1..=S is chosen (greedily, the
//! object reaching furthest at each step, so objects that overlap after a crash are read
//! once). Up to `--parallel` objects are downloaded ahead while batches are applied strictly
//! in seq order, each exactly once; a missing seq stops the restore and is named. WRITEs are
//! written in place, ZEROs punch holes, so the image stays sparse. Memory: about `--parallel`
//! sealed objects plus their plaintexts.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use ferry_format::batch::{self, DiskGeometry, Record};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::split_change_set;
use ferry_storage::list_all;
use futures::StreamExt;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Instant;
use uuid::Uuid;

use crate::vault_access::{self, OpenVault, VaultArgs};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The disk to restore: its id, a unique prefix of it (as `ferryctl status` prints), or
    /// MACHINE/NAME (machine id prefix and disk name); `ferryctl vault disks` lists them.
    #[arg(long, value_name = "DISK")]
    pub disk: String,
    /// Restore the state after this batch.
    #[arg(long, value_name = "N", conflicts_with_all = ["point", "latest"])]
    pub seq: Option<u64>,
    /// Restore at this recovery point (bookmark id).
    #[arg(long, value_name = "BOOKMARK", conflicts_with = "latest")]
    pub point: Option<String>,
    /// Restore at the newest recovery point.
    #[arg(long)]
    pub latest: bool,
    /// The image file to write (created; must not exist).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
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
    objects_read: usize,
    batches_applied: u64,
    bytes_written: u64,
    seconds: f64,
}

#[derive(Debug)]
struct LogObject {
    name: String,
    first_seq: u64,
    last_seq: u64,
}

/// The chain of log objects that covers 1..=target: at each step the object that starts at or
/// before the next needed seq and reaches furthest.
fn cover(mut objects: Vec<LogObject>, target: u64) -> Result<Vec<LogObject>> {
    objects.sort_by_key(|o| (o.first_seq, std::cmp::Reverse(o.last_seq)));
    let mut chain = Vec::new();
    let mut next = 1;
    let mut candidates = objects.into_iter().peekable();
    while next <= target {
        let mut best: Option<LogObject> = None;
        while let Some(object) = candidates.next_if(|o| o.first_seq <= next) {
            if object.last_seq >= next && best.as_ref().is_none_or(|b| object.last_seq > b.last_seq) {
                best = Some(object);
            }
        }
        match best {
            Some(object) => {
                next = object.last_seq + 1;
                chain.push(object);
            }
            None => {
                bail!("seq {next} is missing from storage: no log object holds it (the vault is incomplete or damaged)")
            }
        }
    }
    Ok(chain)
}

async fn target_seq(args: &RestoreArgs, opened: &OpenVault, disk_id: Uuid) -> Result<u64> {
    if let Some(seq) = args.seq {
        if seq == 0 {
            bail!("--seq counts from 1");
        }
        return Ok(seq);
    }
    let points = crate::points::read_points(opened, disk_id).await?;
    let chosen = match &args.point {
        Some(id) => points.iter().filter(|p| &p.bookmark_id == id).max_by_key(|p| p.seq),
        None if args.latest => points.last(),
        None => bail!("say what to restore: --seq N, --point BOOKMARK or --latest"),
    };
    match chosen {
        Some(point) => Ok(point.seq),
        None => bail!("disk {disk_id} has no such recovery point (ferryctl points --disk {disk_id} lists them)"),
    }
}

fn punch_zeros(file: &File, offset: u64, length: u64) -> std::io::Result<()> {
    let hole = rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
    if rustix::fs::fallocate(file, hole, offset, length).is_ok() {
        return Ok(());
    }
    // No hole punching here: write zeros, a megabyte at a time.
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < length {
        let n = (length - done).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

pub async fn run(args: RestoreArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let opened = vault_access::open(&args.vault).await?;
    let disk_id = crate::vault_disks::resolve(&opened, &args.disk).await?;
    let key = opened.keyring.disk_key(disk_id);
    let descriptor = crate::vault_disks::read_descriptor(&opened, disk_id).await?;
    let target = target_seq(&args, &opened, disk_id).await?;

    let mut objects = Vec::new();
    for meta in list_all(&*opened.storage, &ObjectName::disk_prefix(disk_id, "log/"))
        .await
        .context("cannot list the log")?
    {
        if let Ok(ObjectName::Log {
            first_seq, last_seq, ..
        }) = ObjectName::parse(&meta.name)
        {
            objects.push(LogObject {
                name: meta.name,
                first_seq,
                last_seq,
            });
        }
    }
    let newest = objects.iter().map(|o| o.last_seq).max().unwrap_or(0);
    if target > newest {
        let point = match crate::vault_disks::newest_point(&opened, disk_id).await? {
            Some(p) => format!(
                "the newest recovery point is {} at seq {} ({} UTC)",
                p.bookmark_id,
                p.seq,
                ferry_format::time::format_unix_ms(p.source_time_unix_ms)
            ),
            None => "the disk has no recovery point yet".into(),
        };
        bail!("seq {target} is past the newest seq in storage ({newest}); {point}");
    }
    let chain = cover(objects, target)?;

    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| format!("cannot create {} (it must not exist)", args.out.display()))?;
    file.set_len(descriptor.size_bytes)
        .with_context(|| format!("cannot size {}", args.out.display()))?;
    let geometry = DiskGeometry {
        size_bytes: descriptor.size_bytes,
        sector_size: descriptor.sector_size,
    };
    let storage = opened.storage.clone();
    let mut downloads = futures::stream::iter(chain.iter().map(|object| {
        let storage = storage.clone();
        let name = object.name.clone();
        async move { storage.get(&name).await.map(|bytes| (name, bytes)) }
    }))
    .buffered(args.parallel as usize);

    let (mut next, mut applied, mut written, mut objects_read) = (1u64, 0u64, 0u64, 0usize);
    let mut last_report = Instant::now();
    while let Some(download) = downloads.next().await {
        let (name, sealed) = download.context("cannot download a log object")?;
        objects_read += 1;
        let plain = Bytes::from(
            ferry_format::seal::unseal(&key, &name, &sealed).with_context(|| format!("object {name} is corrupt"))?,
        );
        for item in split_change_set(&plain) {
            let (header, bytes) = item.with_context(|| format!("object {name} holds a damaged batch"))?;
            if header.seq < next || header.seq > target {
                continue; // already applied from an overlapping object, or past the target
            }
            if header.seq > next {
                bail!(
                    "seq {next} is missing from storage (object {name} jumps to {})",
                    header.seq
                );
            }
            let decoded = batch::decode(bytes, header.seq, geometry, u32::MAX - 40)
                .with_context(|| format!("object {name}: batch {}", header.seq))?;
            for record in &decoded.records {
                match record {
                    Record::Write { offset, data } => {
                        file.write_all_at(data, *offset)
                            .with_context(|| format!("cannot write {}", args.out.display()))?;
                        written += data.len() as u64;
                    }
                    Record::Zero { offset, length } => {
                        punch_zeros(&file, *offset, u64::from(*length))
                            .with_context(|| format!("cannot write {}", args.out.display()))?;
                    }
                    Record::Bookmark(_) => {}
                }
            }
            applied += 1;
            next += 1;
        }
        if !json && last_report.elapsed().as_secs() >= 1 {
            eprintln!(
                "restore: seq {} of {target} ({}%)",
                next - 1,
                (next - 1) * 100 / target.max(1)
            );
            last_report = Instant::now();
        }
    }
    if next <= target {
        bail!("seq {next} is missing from storage: the log ends before seq {target}");
    }
    file.sync_all()
        .with_context(|| format!("cannot fsync {}", args.out.display()))?;
    let report = RestoreReport {
        disk_id,
        seq: target,
        out: args.out.clone(),
        size_bytes: descriptor.size_bytes,
        objects_read,
        batches_applied: applied,
        bytes_written: written,
        seconds: started.elapsed().as_secs_f64(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!(
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(first: u64, last: u64) -> LogObject {
        LogObject {
            name: format!("{first}-{last}"),
            first_seq: first,
            last_seq: last,
        }
    }

    #[test]
    fn cover_reads_overlaps_once_and_names_gaps() {
        let chain = cover(vec![object(1, 4), object(5, 9), object(3, 12), object(13, 13)], 13).unwrap();
        let names: Vec<&str> = chain.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["1-4", "3-12", "13-13"]);
        assert!(cover(vec![object(1, 4), object(6, 9)], 9)
            .unwrap_err()
            .to_string()
            .contains("seq 5 is missing"));
        assert!(cover(vec![object(2, 4)], 3)
            .unwrap_err()
            .to_string()
            .contains("seq 1 is missing"));
        assert_eq!(cover(vec![object(1, 4), object(5, 9)], 3).unwrap().len(), 1);
    }
}
