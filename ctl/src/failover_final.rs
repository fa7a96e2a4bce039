//! What follows a failover before the machines run from it for good: `failover change-point`
//! (another recovery point, written into the same outputs: only the blocks that can differ
//! between the two points are rewritten) and `failover commit` (final: the record says so, and
//! ferryd refuses the disks' new batches with `409 failed_over`).
//!
//! Change-point marks each disk's record entry with the range of seqs its output may hold
//! before it writes anything, so a change that fails half way is safe to run again, towards
//! the same point or another (ferry_vault::change_point). Test failovers are not changed or
//! committed: a test ends with `failover cleanup`.

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_client::control::FailoverCommit;
use ferry_format::plaintexts::{FailoverOutput, FailoverRecord, FailoverState};
use ferry_vault::change_point::{self, Output};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use crate::point_args::PointArgs;
use crate::vault_access::{self, OpenVault, VaultArgs};
use crate::vault_disks::short;

#[derive(Args, Debug)]
pub struct ChangePointArgs {
    /// The failover id (`ferryctl failover list` shows them).
    #[arg(value_name = "ID")]
    pub failover_id: Uuid,
    #[command(flatten)]
    pub which: PointArgs,
    /// Objects downloaded ahead at most, per disk.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Put Page and Clear Pages calls in flight at most (outputs in Azure).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub put_parallel: u16,
    /// Where the new point's image is put together first (sparse: as large as its data).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

#[derive(Args, Debug)]
pub struct CommitArgs {
    /// The failover id (`ferryctl failover list` shows them).
    #[arg(value_name = "ID")]
    pub failover_id: Uuid,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Refuses what cannot change or commit: a test failover, one that did not finish, one that
/// is final already (for a change).
fn check_changeable(record: &FailoverRecord, action: &str) -> Result<()> {
    let id = record.failover_id;
    if record.test {
        bail!(
            "failover {id} is a test failover: it cannot be {action}; `ferryctl failover cleanup {id}` ends it \
             (run a new test failover for another point)"
        );
    }
    match record.state {
        FailoverState::Done | FailoverState::ChangingPoint => Ok(()),
        FailoverState::Committed => bail!("failover {id} is committed: it is final and cannot be {action}"),
        FailoverState::Running => {
            bail!("failover {id} is still running (or was interrupted): it cannot be {action}; run a new failover")
        }
        FailoverState::Failed => {
            bail!("failover {id} failed before its outputs were complete: it cannot be {action}; run a new failover")
        }
    }
}

#[derive(Serialize)]
struct ChangedDisk {
    disk_id: Uuid,
    from_seq: u64,
    seq: u64,
    point: Option<String>,
    source_time_unix_ms: Option<u64>,
    /// The batches between the two points were consolidated by retention: every block was
    /// rewritten.
    whole_disk: bool,
    changed_bytes: u64,
    written_bytes: u64,
    zeroed_bytes: u64,
    output: String,
}

#[derive(Serialize)]
struct ChangeReport {
    failover_id: Uuid,
    disks: Vec<ChangedDisk>,
}

/// One disk's change, decided before anything is written.
struct Planned {
    index: usize,
    descriptor: ferry_format::plaintexts::DiskDescriptor,
    chosen: ferry_vault::points::Chosen,
    /// The seqs whose blocks are rewritten: every batch in `low+1 ..= high`.
    seqs: (u64, u64),
}

pub async fn change_point(args: ChangePointArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let opened = vault_access::open(&args.vault).await?;
    let id = args.failover_id;
    let mut record = ferry_vault::failover::read_record(&*opened.storage, &opened.keyring, id).await?;
    check_changeable(&record, "changed")?;
    let selector = args.which.selector()?;
    let mut planned = Vec::new();
    for (index, disk) in record.disks.iter().enumerate() {
        let descriptor = crate::vault_disks::read_descriptor(&opened, disk.disk_id).await?;
        let size_there = match disk.output_format {
            FailoverOutput::Vhd | FailoverOutput::PageBlob => ferry_vault::vhd::virtual_size(descriptor.size_bytes),
            FailoverOutput::Raw | FailoverOutput::Device => descriptor.size_bytes,
        };
        if size_there != disk.virtual_size_bytes {
            bail!(
                "disk {} was resized since failover {id} ({} bytes, the output holds {}): run a new failover",
                disk.disk_id,
                descriptor.size_bytes,
                disk.virtual_size_bytes
            );
        }
        let points = crate::points::read_points(&opened, disk.disk_id).await?;
        let chosen = crate::points::choose_or_explain(&opened, disk.disk_id, &points, &selector).await?;
        let (mut low, mut high) = disk.changing_seqs.unwrap_or((disk.seq, disk.seq));
        low = low.min(disk.seq).min(chosen.seq);
        high = high.max(disk.seq).max(chosen.seq);
        if low == high {
            continue; // the output holds exactly this point already
        }
        planned.push(Planned {
            index,
            descriptor,
            chosen,
            seqs: (low, high),
        });
    }
    let mut report = ChangeReport {
        failover_id: id,
        disks: Vec::new(),
    };
    if planned.is_empty() {
        if record.state == FailoverState::ChangingPoint {
            record.state = FailoverState::Done;
            ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
        }
        if json {
            outln!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            outln!("Failover {id} is at that point already: nothing to rewrite.");
        }
        return Ok(());
    }
    // Recorded before any output is touched: from here on each output may hold any seq in
    // its range, block by block, until its disk is done.
    record.state = FailoverState::ChangingPoint;
    for plan in &planned {
        record.disks[plan.index].changing_seqs = Some(plan.seqs);
    }
    ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;

    let scratch_dir = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let parallel = args.parallel as usize;
    for plan in &planned {
        let disk = &record.disks[plan.index];
        let (disk_id, output) = (disk.disk_id, disk.output.clone());
        let (low, high) = plan.seqs;
        let (storage, key) = (opened.storage.clone(), Arc::new(opened.keyring.disk_key(disk_id)));
        if !json {
            eprintln!(
                "disk {}: from seq {} to seq {}: finding the blocks written by seqs {}..={high}",
                short(&disk_id),
                disk.seq,
                plan.chosen.seq,
                low + 1
            );
        }
        let changed =
            change_point::changed_between(storage.clone(), key.clone(), &plan.descriptor, low, high, parallel).await?;
        if changed.whole_disk && !json {
            eprintln!(
                "disk {}: retention consolidated the batches between seq {low} and {high}: every block is rewritten",
                short(&disk_id)
            );
        }
        let digests = disk.digest_blocks.map(|_| id);
        let rewritten = rewrite_disk(&opened, &args, plan, disk.output_format, &output, &changed, &scratch_dir, digests, json)
            .await
            .with_context(|| {
                format!(
                    "failover {id}: disk {disk_id}: the change stopped half way; run `ferryctl failover change-point {id}` \
                     again (towards any point) to finish it"
                )
            })?;
        let point = plan.chosen.point.as_ref();
        let entry = &mut record.disks[plan.index];
        let from_seq = entry.seq;
        entry.seq = plan.chosen.seq;
        entry.point = point.map(|p| p.bookmark_id.clone());
        entry.kind = point.map(|p| p.kind.clone());
        entry.source_time_unix_ms = point.map(|p| p.source_time_unix_ms);
        entry.changing_seqs = None;
        ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
        report.disks.push(ChangedDisk {
            disk_id,
            from_seq,
            seq: plan.chosen.seq,
            point: point.map(|p| p.bookmark_id.clone()),
            source_time_unix_ms: point.map(|p| p.source_time_unix_ms),
            whole_disk: changed.whole_disk,
            changed_bytes: rewritten.changed_bytes,
            written_bytes: rewritten.written_bytes,
            zeroed_bytes: rewritten.zeroed_bytes,
            output,
        });
    }
    record.state = FailoverState::Done;
    ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!(
        "Failover {id}: point changed in {:.1} s:",
        started.elapsed().as_secs_f64()
    );
    for disk in &report.disks {
        outln!(
            "  {}: seq {} -> {} ({}): {} of changed blocks, {} written, {} zeroed{}\n    -> {}",
            disk.disk_id,
            disk.from_seq,
            disk.seq,
            disk.point.as_deref().unwrap_or("not a recovery point"),
            crate::control::mb(disk.changed_bytes),
            crate::control::mb(disk.written_bytes),
            crate::control::mb(disk.zeroed_bytes),
            if disk.whole_disk { " (whole disk)" } else { "" },
            disk.output
        );
    }
    Ok(())
}

/// Restores the new point into a sparse scratch file, then copies the changed blocks into the
/// disk's output (opened, and checked, here). With `digests_of` (the failover's id, when it
/// stored block digests), the changed blocks' digests are recomputed from the new image and
/// stored again.
#[allow(clippy::too_many_arguments)]
async fn rewrite_disk(
    opened: &OpenVault,
    args: &ChangePointArgs,
    plan: &Planned,
    format: FailoverOutput,
    output: &str,
    changed: &change_point::ChangedBlocks,
    scratch_dir: &Path,
    digests_of: Option<Uuid>,
    json: bool,
) -> Result<change_point::Rewritten> {
    let descriptor = &plan.descriptor;
    let disk_id = descriptor.disk_id;
    let seq = plan.chosen.seq;
    // The output first: a missing or busy one stops the change before the restore's work.
    enum Opened {
        File(std::fs::File),
        Blob(Box<ferry_storage::page_blob::PageBlob>),
    }
    let target = match format {
        FailoverOutput::Vhd | FailoverOutput::Raw => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(output)
                .with_context(|| format!("cannot open the output {output}"))?;
            let expected = match format {
                FailoverOutput::Vhd => ferry_vault::vhd::virtual_size(descriptor.size_bytes) + 512,
                _ => descriptor.size_bytes,
            };
            let found = file
                .metadata()
                .with_context(|| format!("cannot look at {output}"))?
                .len();
            if found != expected {
                bail!(
                    "{output} is {found} bytes, not the {expected} this failover wrote: it is not the output any more"
                );
            }
            Opened::File(file)
        }
        FailoverOutput::Device => Opened::File(ferry_vault::failover::open_device(
            Path::new(output),
            descriptor.size_bytes,
        )?),
        FailoverOutput::PageBlob => {
            let blob = crate::failover::open_blob(opened, output).await?;
            let (_, size) = blob
                .properties()
                .await
                .with_context(|| format!("cannot reach the output {output}"))?;
            let expected = ferry_vault::vhd::virtual_size(descriptor.size_bytes) + 512;
            if size != expected {
                bail!(
                    "{output} is {size} bytes, not the {expected} this failover wrote: it is not the output any more"
                );
            }
            Opened::Blob(Box::new(blob))
        }
    };
    let mut last_report = Instant::now();
    let progress = |applied: u64| {
        if !json && last_report.elapsed().as_secs() >= 1 {
            eprintln!(
                "disk {}: restoring seq {applied} of {seq} ({}%)",
                short(&disk_id),
                applied * 100 / seq.max(1)
            );
            last_report = Instant::now();
        }
    };
    let (scratch, _) = ferry_vault::restore::into_scratch(
        opened.storage.clone(),
        &opened.keyring,
        descriptor,
        seq,
        scratch_dir,
        args.parallel as usize,
        progress,
        Default::default(),
    )
    .await?;
    if !json {
        eprintln!(
            "disk {}: rewriting {} of changed blocks in {output}",
            short(&disk_id),
            crate::control::mb(changed.bytes())
        );
    }
    let rewritten = match &target {
        Opened::File(file) => change_point::rewrite(&scratch, changed, Output::File(file)).await,
        Opened::Blob(blob) => {
            change_point::rewrite(&scratch, changed, Output::PageBlob(blob, args.put_parallel as usize)).await
        }
    }?;
    if let Some(failover_id) = digests_of {
        let mut table = ferry_vault::digests::DigestTable::new(descriptor.size_bytes, scratch_dir)?;
        table
            .load(&*opened.storage, &opened.keyring, failover_id, disk_id)
            .await?;
        for (start, end) in changed.runs(u64::MAX) {
            table.touch(start, end - start);
        }
        table.finish(&scratch)?;
        table
            .store(
                &*opened.storage,
                &opened.keyring,
                failover_id,
                disk_id,
                args.parallel as usize,
            )
            .await
            .context("cannot store the disk's block digests")?;
    }
    Ok(rewritten)
}

#[derive(Serialize)]
struct CommitReport {
    failover_id: Uuid,
    committed_unix_ms: u64,
    /// Whether a running ferryd was told (it also applies committed failovers when it starts).
    ferryd_told: bool,
    /// The disks ferryd now refuses batches for.
    refused_by_ferryd: Vec<Uuid>,
    /// Disks that ferryd does not hold (another process server, or gone).
    not_on_this_ferryd: Vec<Uuid>,
}

pub async fn commit(args: CommitArgs, json: bool) -> Result<()> {
    let opened = vault_access::open(&args.vault).await?;
    let id = args.failover_id;
    let mut record = ferry_vault::failover::read_record(&*opened.storage, &opened.keyring, id).await?;
    if record.test {
        bail!("failover {id} is a test failover: tests are not committed; `ferryctl failover cleanup {id}` ends it");
    }
    match record.state {
        FailoverState::Committed => {} // again: ferryd is told once more, nothing else changes
        FailoverState::Done => {
            record.state = FailoverState::Committed;
            record.committed_unix_ms = Some(ferry_client::clock::now_unix_ms());
            ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
        }
        FailoverState::ChangingPoint => bail!(
            "failover {id} is between two points (a change-point did not finish): run `ferryctl failover \
             change-point {id}` again first"
        ),
        _ => check_changeable(&record, "committed")?,
    }
    let commit = FailoverCommit {
        failover_id: id,
        disk_ids: record.disks.iter().map(|d| d.disk_id).collect(),
    };
    let mut report = CommitReport {
        failover_id: id,
        committed_unix_ms: record.committed_unix_ms.unwrap_or_default(),
        ferryd_told: false,
        refused_by_ferryd: Vec::new(),
        not_on_this_ferryd: Vec::new(),
    };
    if let Some(client) = crate::control::running_ferryd(args.vault.config.as_ref())? {
        let answer = client.commit_failover(&commit).await.context(
            "the failover is committed in the vault, but telling ferryd failed (it applies it at its next start)",
        )?;
        report.ferryd_told = true;
        report.refused_by_ferryd = answer.marked;
        report.not_on_this_ferryd = answer.unknown;
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!("Failover {id} committed: the failed-over disks are the disks now.");
    if report.ferryd_told {
        for disk in &report.refused_by_ferryd {
            outln!("  {disk}: ferryd refuses its new batches (409 failed_over); its agent stops sending");
        }
        for disk in &report.not_on_this_ferryd {
            outln!("  {disk}: not held by this ferryd");
        }
    } else {
        outln!(
            "  No running ferryd was named (--config): a process server applies committed failovers when it \
             next connects to the vault."
        );
    }
    Ok(())
}
