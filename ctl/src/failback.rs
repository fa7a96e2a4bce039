//! `ferryctl failback`: after a failover and a reprotect (the failed-over machine replicating
//! back into the vault with `reprotect_from`), writes onto the original disk only the blocks
//! that differ from the chosen point of the reprotected disk.
//!
//! Which blocks differ: those changed on either side since the failover point. On premises, the
//! original disk is read once and each 64 KiB block's digest compared with the failover's stored
//! digest (`L`); on the failed-over side, the blocks the reverse replication's batches wrote up
//! to the point (`R`, from its log). Every other block equals the failover point on both sides.
//! The blocks of `L ∪ R` are restored (only those: base chunks and record pieces elsewhere are
//! skipped; the failed-over disk's history is read only for the blocks the reverse batches did
//! not write whole, usually `L` minus `R`, often none) into a sparse scratch file, written onto the disk, fsynced, and read back past the
//! page cache to verify their digests.
//!
//! Then forward replication is set up to resume without an initial copy: the original disk's
//! block map in the agent's state (`--agent-state`) is written as what the vault holds for it
//! (the failover digests; blocks the vault got after the failover point unknown), so the next
//! pass sends just the blocks failback changed. The failover record marks the disk failed back
//! and a running ferryd (`--config`) lifts its `failed_over` mark at once (others do when they
//! next read the vault).
//!
//! Memory: one digest segment (1 MiB), two changed-block bitmaps (disk size / 512 Ki each) and
//! 4 MiB buffers; the scratch file holds only the differing blocks (sparse).

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_format::block_digest::{block_digest, expand, BlockDigest, DIGEST_BLOCK_BYTES, NOT_A_DIGEST};
use ferry_format::plaintexts::{DiskDescriptor, FailoverRecord, FailoverState};
use ferry_vault::change_point::ChangedBlocks;
use ferry_vault::digests::{self, SEGMENT_BLOCKS};
use serde::Serialize;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

use crate::point_args::PointArgs;
use crate::vault_access::{self, OpenVault, VaultArgs};
use crate::vault_disks::short;

const BLOCK: u64 = DIGEST_BLOCK_BYTES;
/// Bytes read or written per call.
const IO_BYTES: u64 = 4 << 20;

#[derive(Args, Debug)]
pub struct FailbackArgs {
    /// The committed failover (`ferryctl failover list`).
    #[arg(long, value_name = "ID")]
    pub failover: Uuid,
    /// The original disk: its id or a unique prefix of it (one of the failover's disks).
    #[arg(long, value_name = "DISK")]
    pub disk: String,
    /// Which point of the reprotected disk to fail back to.
    #[command(flatten)]
    pub which: PointArgs,
    /// The original disk on premises: a block device (not mounted, not in use, at least the
    /// disk's size) or an image file.
    #[arg(long, value_name = "PATH")]
    pub onto: PathBuf,
    /// The state directory of the agent that replicated the original disk: its block map for
    /// the disk is rewritten so forward replication resumes without an initial copy.
    #[arg(long, value_name = "DIR", default_value = ferry_agent::config::DEFAULT_STATE_DIR)]
    pub agent_state: PathBuf,
    /// Objects downloaded ahead at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Where the differing blocks are put together first (sparse: as large as they are).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// What a failback did (`--json`).
#[derive(Serialize, Debug)]
pub struct Report {
    pub failover_id: Uuid,
    pub disk_id: Uuid,
    pub reprotected_disk_id: Uuid,
    pub seq: u64,
    pub point: Option<String>,
    pub onto: String,
    /// Bytes of the original disk read to compare, and read back to verify.
    pub read_bytes: u64,
    pub compared_blocks: u64,
    /// Blocks changed on premises since the failover point (their digest differs).
    pub changed_here_blocks: u64,
    /// Blocks the reverse replication wrote up to the point.
    pub changed_there_blocks: u64,
    /// Of the blocks written, those restored from the failover point out of the failed-over
    /// disk's history in the vault (the rest come from the reverse replication's batches alone).
    pub from_failover_point_blocks: u64,
    pub written_bytes: u64,
    pub verified_bytes: u64,
    /// Whether the agent's block map was rewritten (else forward replication resyncs).
    pub agent_map_written: bool,
    /// Blocks the block map marks unknown (the vault got them after the failover point).
    pub agent_map_unknown_blocks: u64,
    pub ferryd_told: bool,
    pub seconds: f64,
}

pub async fn run(args: FailbackArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let opened = vault_access::open(&args.vault).await?;
    let report = fail_back(&opened, &args, json, started).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    outln!(
        "Failback of disk {} (failover {}) onto {}: done in {:.1} s",
        report.disk_id,
        report.failover_id,
        report.onto,
        report.seconds
    );
    outln!(
        "  from reprotected disk {} at seq {} ({})",
        report.reprotected_disk_id,
        report.seq,
        report.point.as_deref().unwrap_or("not a recovery point")
    );
    outln!(
        "  compared {} blocks ({} read); changed here {}, changed there {}; written {}, verified {}",
        report.compared_blocks,
        crate::control::mb(report.read_bytes),
        report.changed_here_blocks,
        report.changed_there_blocks,
        crate::control::mb(report.written_bytes),
        crate::control::mb(report.verified_bytes)
    );
    if report.agent_map_written {
        outln!(
            "  forward replication: the agent's block map was rewritten ({} blocks unknown); its next pass sends only what failback changed",
            report.agent_map_unknown_blocks
        );
    } else {
        outln!(
            "  forward replication: no agent state for the disk under {}: the agent's next pass resyncs the whole disk",
            args.agent_state.display()
        );
    }
    if !report.ferryd_told {
        outln!("  No running ferryd was named (--config): process servers accept the disk again when they next read the vault.");
    }
    Ok(())
}

/// Progress on stderr, at most once a second.
struct Progress {
    quiet: bool,
    last: Instant,
}

impl Progress {
    fn say(&mut self, force: bool, line: impl FnOnce() -> String) {
        if !self.quiet && (force || self.last.elapsed().as_secs() >= 1) {
            eprintln!("{}", line());
            self.last = Instant::now();
        }
    }
}

async fn fail_back(opened: &OpenVault, args: &FailbackArgs, json: bool, started: Instant) -> Result<Report> {
    let mut progress = Progress {
        quiet: json,
        last: Instant::now(),
    };
    let id = args.failover;
    let mut record = ferry_vault::failover::read_record(&*opened.storage, &opened.keyring, id).await?;
    let index = failed_over_disk(&record, &args.disk)?;
    let failed = record.disks[index].clone();
    let disk_id = failed.disk_id;
    let Some(digest_blocks) = failed.digest_blocks else {
        bail!("failover {id} stored no block digests for disk {disk_id} (made by an older ferryctl): restore the reprotected disk instead");
    };
    let original = crate::vault_disks::read_descriptor(opened, disk_id).await?;
    if digest_blocks != digests::blocks_of(original.size_bytes) {
        bail!(
            "failover {id} stored {digest_blocks} digests for disk {disk_id}, which has {} blocks",
            digests::blocks_of(original.size_bytes)
        );
    }
    let reverse = reprotected_disk(opened, id, disk_id).await?;
    let points = crate::points::read_points(opened, reverse.disk_id).await?;
    let chosen = crate::points::choose_or_explain(opened, reverse.disk_id, &points, &args.which.selector()?).await?;
    let onto = open_onto(&args.onto, original.size_bytes)?;
    let size = original.size_bytes;
    progress.say(true, || {
        format!(
            "failback: disk {} from reprotected disk {} at seq {} onto {}",
            short(&disk_id),
            short(&reverse.disk_id),
            chosen.seq,
            args.onto.display()
        )
    });

    // L: the blocks changed here since the failover point.
    let mut differ = ChangedBlocks::none(size);
    let mut read_bytes = 0u64;
    let mut reader = ferry_vault::image::DirectReader::new(&onto);
    let blocks = digests::blocks_of(size);
    for segment in 0..digests::segments_of(blocks) {
        let stored = digests::read_segment(&*opened.storage, &opened.keyring, id, disk_id, segment, blocks).await?;
        let first = segment * SEGMENT_BLOCKS;
        let mut block = first;
        while block < first + stored.len() as u64 {
            let start = block * BLOCK;
            let end = (start + IO_BYTES).min(size).min((first + stored.len() as u64) * BLOCK);
            let piece = reader
                .read_at(start, (end - start) as usize)
                .with_context(|| format!("cannot read {} at {start}", args.onto.display()))?;
            read_bytes += end - start;
            for data in piece.chunks(BLOCK as usize) {
                let was = stored[(block - first) as usize];
                // A block that was zeros is compared as such, without hashing it.
                let same = if was == NOT_A_DIGEST {
                    data.iter().all(|&b| b == 0)
                } else {
                    block_digest(data) == was
                };
                if !same {
                    differ.mark(block * BLOCK, data.len() as u64);
                }
                block += 1;
            }
            progress.say(false, || {
                format!(
                    "failback: compared {} of {} ({}%)",
                    crate::control::mb(end),
                    crate::control::mb(size),
                    end * 100 / size.max(1)
                )
            });
        }
    }
    let changed_here_blocks = differ.count();

    // R: the blocks the reverse replication wrote up to the point.
    let reverse_key = Arc::new(opened.keyring.disk_key(reverse.disk_id));
    let parallel = args.parallel as usize;
    let there = ferry_vault::change_point::written_between(
        opened.storage.clone(),
        reverse_key,
        &reverse,
        0,
        chosen.seq,
        parallel,
    )
    .await?;
    // The reverse disk may be larger (a VHD rounds up): only the original's size comes back.
    let clip = |blocks: &ChangedBlocks| {
        let mut clipped = ChangedBlocks::none(size);
        for (start, end) in blocks.runs(u64::MAX) {
            clipped.mark(start, end.min(size).saturating_sub(start));
        }
        clipped
    };
    let there_clipped = clip(&there.touched);
    let changed_there_blocks = there_clipped.count();
    differ.merge(&there_clipped);
    // The blocks whose content comes from the failover point (in the vault, the failed-over
    // disk's history): those the reverse replication did not write whole. The agent sends whole
    // blocks, so these are the blocks changed here only; often none, and then the failed-over
    // disk's history is not read at all.
    let mut from_failover_point = differ.clone();
    from_failover_point.remove(&clip(&there.whole));
    let from_failover_point_blocks = from_failover_point.count();
    progress.say(true, || {
        format!(
            "failback: {changed_here_blocks} blocks changed here, {changed_there_blocks} there: restoring {} of blocks \
             ({from_failover_point_blocks} of them from the failover point)",
            crate::control::mb(differ.bytes())
        )
    });

    // The differing blocks at the point, then onto the disk.
    let scratch_dir = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let extras = ferry_vault::restore::Extras {
        only: Some(&differ),
        start_only: Some(&from_failover_point),
        digests: None,
    };
    let (scratch, _) = ferry_vault::restore::into_scratch(
        opened.storage.clone(),
        &opened.keyring,
        &reverse,
        chosen.seq,
        &scratch_dir,
        parallel,
        |_| {},
        extras,
    )
    .await
    .with_context(|| format!("cannot restore the differing blocks of disk {}", reverse.disk_id))?;
    let mut buffer = vec![0u8; IO_BYTES as usize];
    let mut written_bytes = 0u64;
    let total = differ.bytes();
    for (start, end) in differ.runs(IO_BYTES) {
        let piece = &mut buffer[..(end - start) as usize];
        scratch
            .read_exact_at(piece, start)
            .context("cannot read the scratch file")?;
        onto.write_all_at(piece, start)
            .with_context(|| format!("cannot write {} at {start}", args.onto.display()))?;
        written_bytes += end - start;
        progress.say(false, || {
            format!(
                "failback: written {} of {}",
                crate::control::mb(written_bytes),
                crate::control::mb(total)
            )
        });
    }
    onto.sync_all()
        .with_context(|| format!("cannot fsync {}", args.onto.display()))?;

    // Verify: each written block read back from the disk, past the page cache (where the file
    // system allows O_DIRECT; else the cache is dropped for the range first).
    let mut verified_bytes = 0u64;
    let mut reader = ferry_vault::image::DirectReader::new(&onto);
    for (start, end) in differ.runs(IO_BYTES) {
        let length = (end - start) as usize;
        if !reader.is_direct() {
            let _ = rustix::fs::fadvise(
                &onto,
                start,
                std::num::NonZeroU64::new(end - start),
                rustix::fs::Advice::DontNeed,
            );
        }
        scratch
            .read_exact_at(&mut buffer[..length], start)
            .context("cannot read the scratch file")?;
        let found = reader
            .read_at(start, length)
            .with_context(|| format!("cannot read {} back at {start}", args.onto.display()))?;
        if found != &buffer[..length] {
            bail!(
                "{} does not read back what was written at {start}..{end}: the device lost writes; run failback again",
                args.onto.display()
            );
        }
        verified_bytes += end - start;
        read_bytes += end - start;
    }

    // Forward replication: the agent's block map says what the vault holds for the disk.
    let (agent_map_written, agent_map_unknown_blocks) =
        write_agent_map(opened, args, &original, &failed, parallel).await?;

    record.disks[index].failed_back_unix_ms = Some(ferry_client::clock::now_unix_ms());
    ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
    let mut ferryd_told = false;
    if let Some(client) = crate::control::running_ferryd(args.vault.config.as_ref())? {
        let done = ferry_client::control::FailoverCommit {
            failover_id: id,
            disk_ids: vec![disk_id],
        };
        client.failback_done(&done).await.context(
            "the failback is done and recorded in the vault, but telling ferryd failed (it reads it at its next connection to the vault)",
        )?;
        ferryd_told = true;
    }
    Ok(Report {
        failover_id: id,
        disk_id,
        reprotected_disk_id: reverse.disk_id,
        seq: chosen.seq,
        point: chosen.point.map(|p| p.bookmark_id),
        onto: args.onto.display().to_string(),
        read_bytes,
        compared_blocks: blocks,
        changed_here_blocks,
        changed_there_blocks,
        from_failover_point_blocks,
        written_bytes,
        verified_bytes,
        agent_map_written,
        agent_map_unknown_blocks,
        ferryd_told,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The index in `record` of the disk `selector` names (an id or a unique prefix), checked.
fn failed_over_disk(record: &FailoverRecord, selector: &str) -> Result<usize> {
    let id = record.failover_id;
    if record.test {
        bail!(
            "failover {id} is a test failover: the original disks were never replaced, there is nothing to fail back"
        );
    }
    if record.state != FailoverState::Committed {
        bail!(
            "failover {id} is {}: only a committed failover is failed back (ferryctl failover commit {id})",
            record.state.as_str()
        );
    }
    let wanted = selector.trim().to_ascii_lowercase();
    let matching: Vec<usize> = (0..record.disks.len())
        .filter(|&i| !wanted.is_empty() && record.disks[i].disk_id.to_string().starts_with(&wanted))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => bail!(
            "failover {id} has no disk {selector:?}; its disks: {}",
            record
                .disks
                .iter()
                .map(|d| format!("{} ({})", d.disk_id, d.name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => bail!("{selector:?} is the start of several disk ids of failover {id}; give more of it"),
    }
}

/// The disk replicating back from failover `failover_id`'s disk `disk_id` (the newest such).
async fn reprotected_disk(opened: &OpenVault, failover_id: Uuid, disk_id: Uuid) -> Result<DiskDescriptor> {
    let mut found: Option<DiskDescriptor> = None;
    for candidate in ferry_vault::disks::ids(&*opened.storage).await? {
        let Ok(descriptor) = crate::vault_disks::read_descriptor(opened, candidate).await else {
            continue; // a disk whose descriptor is not written yet
        };
        let matches = descriptor
            .reprotect_from
            .is_some_and(|from| from.failover_id == failover_id && from.disk_id == disk_id);
        if matches
            && found
                .as_ref()
                .is_none_or(|f| descriptor.created_unix_ms > f.created_unix_ms)
        {
            found = Some(descriptor);
        }
    }
    found.with_context(|| {
        format!(
            "no disk in this vault replicates back from disk {disk_id} of failover {failover_id}: run ferry-agent on the \
             failed-over machine with reprotect_from = \"{failover_id}\" on that disk first"
        )
    })
}

/// The original disk, open for reading and writing: a block device checked like a failover's
/// (`open_device`), or an image file at least as large as the disk.
fn open_onto(path: &Path, size_bytes: u64) -> Result<File> {
    let metadata = std::fs::metadata(path).with_context(|| format!("cannot look at {}", path.display()))?;
    if metadata.file_type().is_block_device() {
        return ferry_vault::failover::open_device(path, size_bytes);
    }
    if !metadata.is_file() {
        bail!("{} is neither a block device nor an image file", path.display());
    }
    if metadata.len() < size_bytes {
        bail!(
            "{} holds {} bytes, smaller than the disk's {size_bytes}: is it the right disk?",
            path.display(),
            metadata.len()
        );
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// Rewrites the block map of `original` under `--agent-state`, when the agent has state for
/// it: each entry the failover digest, except the blocks the vault got after the failover point
/// (unknown). Returns (written, unknown blocks).
async fn write_agent_map(
    opened: &OpenVault,
    args: &FailbackArgs,
    original: &DiskDescriptor,
    failed: &ferry_format::plaintexts::FailoverDisk,
    parallel: usize,
) -> Result<(bool, u64)> {
    let dir = ferry_agent::progress::disk_dir(&args.agent_state, original.disk_id);
    if !dir.join("progress.json").exists() {
        return Ok((false, 0));
    }
    let newest = ferry_vault::log::list(
        &*opened.storage,
        &opened.keyring.disk_key(original.disk_id),
        original.disk_id,
    )
    .await?
    .iter()
    .map(|o| o.last_seq)
    .max()
    .unwrap_or(0);
    let after = ferry_vault::change_point::changed_between(
        opened.storage.clone(),
        Arc::new(opened.keyring.disk_key(original.disk_id)),
        original,
        failed.seq,
        newest,
        parallel,
    )
    .await?;
    let size = original.size_bytes;
    let (map, _) = ferry_agent::blockmap::BlockMap::open(&dir.join("blockmap"), original.disk_id, BLOCK as u32, size)
        .with_context(|| format!("cannot open the agent's block map in {}", dir.display()))?;
    let blocks = digests::blocks_of(size);
    for segment in 0..digests::segments_of(blocks) {
        let stored = digests::read_segment(
            &*opened.storage,
            &opened.keyring,
            args.failover,
            original.disk_id,
            segment,
            blocks,
        )
        .await?;
        let first = segment * SEGMENT_BLOCKS;
        let entries: Vec<(u64, BlockDigest)> = stored
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let block = first + i as u64;
                let entry = if after.is_marked(block) {
                    ferry_agent::blockmap::UNKNOWN
                } else {
                    expand(*entry, digests::block_len(size, block))
                };
                (block, entry)
            })
            .collect();
        map.record(&entries).context("cannot write the agent's block map")?;
    }
    map.sync().context("cannot sync the agent's block map")?;
    Ok((true, after.count()))
}
