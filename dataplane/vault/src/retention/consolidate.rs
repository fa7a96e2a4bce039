//! Consolidating one disk (FORMATS.md section 6): plan which points stay ([`super::plan`]),
//! write a base at F, the seq of the oldest point kept, then delete what nothing kept needs,
//! in an order that leaves every kept point restorable at every moment:
//!
//! 1. the base at F: its chunks, then its manifest (skipped when it exists);
//! 2. pruned-point records older than [`PRUNED_RECORD_LIFETIME`];
//! 3. each dropped point: first its pruned record, then the point;
//! 4. log objects with `last_seq <= F`;
//! 5. manifests of bases older than the newest base at or below F;
//! 6. chunks no remaining manifest names (an older base's, or a crashed run's).
//!
//! Deletions start only once the base at F exists, and each step only removes what the steps
//! before made unneeded, so a run killed (or failing) anywhere is finished by the next run.
//! One consolidator per vault at a time: ferryd runs it, and `ferryctl retention run` asks
//! ferryd to when it is running.

use anyhow::{Context, Result};
use ferry_config::retention::{DiskPolicy, WINDOW_MAX};
use ferry_format::batch::DiskGeometry;
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{DiskDescriptor, PrunedPoint, PLAINTEXT_FORMAT};
use ferry_format::{Keyring, ObjectKey};
use ferry_storage::{list_all, ObjectMeta, ObjectStorage, StorageError};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use uuid::Uuid;

use super::plan::{plan, PointKind, PointRef, Verdict};
use super::records;
use crate::base;
use crate::points::KnownPoints;

/// How long a pruned-point record stays: the longest window, so any restore tool asked for a
/// point the window could have held can say why it is gone.
pub const PRUNED_RECORD_LIFETIME: u64 = WINDOW_MAX.0 * 1000;

/// How a run works.
#[derive(Clone, Debug)]
pub struct Options {
    pub now_unix_ms: u64,
    /// Plan and report only: nothing is written or deleted.
    pub dry_run: bool,
    /// Storage calls (and chunks being sealed) in flight at once: the run's share of the
    /// machine and the uplink.
    pub parallel: usize,
    /// Where the scratch file of a new base goes (sparse; it holds only the chunks the log
    /// touched since the older base, and is removed at the end, also on failure).
    pub scratch_dir: PathBuf,
    /// Points read by earlier runs (ferryd keeps them from run to run); without it every
    /// point of every disk is read from storage each run.
    pub known_points: Option<Arc<KnownPoints>>,
}

/// A dropped point, as the summary lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedPoint {
    pub seq: u64,
    pub bookmark_id: String,
    /// `thinned` or `older_than_window`.
    pub reason: String,
}

/// What a run did to one disk (`ferryctl retention run --json`, and the control socket's
/// answer when ferryd runs it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSummary {
    pub disk_id: Uuid,
    /// F: the base every kept point now starts from (None: the disk has no points).
    pub base_seq: Option<u64>,
    /// The oldest point kept: (bookmark id, source time).
    pub oldest_point: Option<(String, u64)>,
    pub previous_base_seq: Option<u64>,
    pub points_kept: usize,
    pub points_dropped: usize,
    pub dropped: Vec<DroppedPoint>,
    /// Pinned points older than the window: the policy cannot be met while they are pinned.
    pub pinned_beyond_window: Vec<String>,
    /// Points read from storage (the others were known from an earlier run).
    #[serde(default)]
    pub points_read: usize,
    pub objects_written: u64,
    pub objects_deleted: u64,
    pub stored_bytes_before: u64,
    pub stored_bytes_after: u64,
    pub dry_run: bool,
    /// Why the deletions stopped short (a pin that arrived during the run); the next run
    /// finishes them.
    pub deferred: Option<String>,
    /// Why this disk's run failed (the others go on; the next run finishes this one).
    pub error: Option<String>,
}

/// Every disk of the vault under `retention` (or only `only`), one after another; a disk that
/// fails is reported in its summary and the others go on. `progress` hears of each disk as it
/// is done: its summary, how many disks are done, and how many there are.
///
/// The future is boxed and declared `Send` here, where its borrows are concrete: left to
/// inference, rustc cannot prove it `Send` for every lifetime when a caller spawns it.
pub fn consolidate_all<'a>(
    storage: Arc<dyn ObjectStorage>,
    keyring: &'a Keyring,
    retention: &'a ferry_config::retention::RetentionConfig,
    options: &'a Options,
    only: Option<Uuid>,
    progress: impl FnMut(&DiskSummary, usize, usize) + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<DiskSummary>>> + Send + 'a>> {
    Box::pin(consolidate_each(storage, keyring, retention, options, only, progress))
}

async fn consolidate_each(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    retention: &ferry_config::retention::RetentionConfig,
    options: &Options,
    only: Option<Uuid>,
    mut progress: impl FnMut(&DiskSummary, usize, usize) + Send,
) -> Result<Vec<DiskSummary>> {
    let disks = match only {
        Some(disk_id) => vec![disk_id],
        None => crate::disks::ids(&*storage).await?,
    };
    let mut summaries = Vec::with_capacity(disks.len());
    for &disk_id in &disks {
        let policy = retention.policy_for(disk_id);
        let summary = match consolidate_disk(storage.clone(), keyring, disk_id, &policy, options).await {
            Ok(summary) => summary,
            Err(e) => DiskSummary {
                disk_id,
                dry_run: options.dry_run,
                error: Some(format!("{e:#}")),
                ..Default::default()
            },
        };
        summaries.push(summary);
        progress(summaries.last().expect("just pushed"), summaries.len(), disks.len());
    }
    Ok(summaries)
}

/// Every object stored under a disk.
async fn list_disk(storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<Vec<ObjectMeta>> {
    list_all(storage, &ObjectName::disk_prefix(disk_id, ""))
        .await
        .context("cannot list the disk's objects")
}

/// Bytes stored under a disk (every object kind).
async fn stored_bytes(storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<u64> {
    Ok(total_bytes(&list_disk(storage, disk_id).await?))
}

fn total_bytes(listed: &[ObjectMeta]) -> u64 {
    listed.iter().map(|o| o.size_bytes).sum()
}

/// Deletes `names`, `parallel` at once; an object already gone counts as deleted (a repeated
/// run). Returns how many were deleted.
async fn delete_all(storage: &Arc<dyn ObjectStorage>, names: Vec<String>, parallel: usize) -> Result<u64> {
    let count = names.len() as u64;
    let storage = storage.clone();
    futures::stream::iter(names.into_iter().map(move |name| {
        let storage = storage.clone();
        async move {
            match storage.delete(&name).await {
                Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e).with_context(|| format!("cannot delete {name}")),
            }
        }
    }))
    .buffer_unordered(parallel.max(1))
    .try_collect::<Vec<()>>()
    .await?;
    Ok(count)
}

/// Consolidates `disk_id` under `policy`.
pub async fn consolidate_disk(
    storage: Arc<dyn ObjectStorage>,
    keyring: &Keyring,
    disk_id: Uuid,
    policy: &DiskPolicy,
    options: &Options,
) -> Result<DiskSummary> {
    let key = Arc::new(keyring.disk_key(disk_id));
    let parallel = options.parallel.max(1);
    let descriptor: DiskDescriptor =
        crate::sealed::read_json(&*storage, &key, &ObjectName::DiskMeta { disk_id }.to_string()).await?;
    // The run's one listing of the whole disk: its size before, and what the run deletes
    // from (bases and chunks, the log of every epoch, pruned-point records). Everything in it
    // is older than the run, and what the run writes meanwhile is never among what it deletes,
    // so listing each kind again (a 1 TB base alone is up to 262,144 chunk objects, 53 LIST
    // calls on Azure) would only find more of what a later run deletes. Points and the log a
    // new base replays are listed on their own, points first: a point is written only once the
    // log it needs is stored, so the log listed after a point covers it. Pins are read again
    // before anything is deleted (step 3).
    let listed = list_disk(&*storage, disk_id).await?;
    let mut summary = DiskSummary {
        disk_id,
        dry_run: options.dry_run,
        stored_bytes_before: total_bytes(&listed),
        ..Default::default()
    };

    if descriptor.reprotect_from.is_some() {
        // A reprotected disk's restores start from another disk's failover point until it has
        // a base of its own, and a base is built from the disk's own log alone: its
        // consolidation is left for a later build. Nothing of it is deleted.
        summary.stored_bytes_after = summary.stored_bytes_before;
        summary.deferred = Some("a reprotected disk (replicating back after a failover) is not consolidated".into());
        return Ok(summary);
    }
    let history = crate::owners::History::read(&*storage, &key, disk_id).await?;
    let point_names = crate::points::list_names(&*storage, &history, disk_id).await?;
    let (points, points_read) = match &options.known_points {
        Some(known) => known.read(&storage, &key, disk_id, point_names, parallel).await?,
        None => {
            let read = point_names.len();
            (
                crate::points::read_named(&storage, &key, point_names, parallel).await?,
                read,
            )
        }
    };
    summary.points_read = points_read;
    let refs: Vec<PointRef> = points
        .iter()
        .map(|(_, p)| PointRef {
            seq: p.seq,
            bookmark_id: p.bookmark_id.clone(),
            kind: PointKind::from_text(&p.kind),
            source_time_unix_ms: p.source_time_unix_ms,
        })
        .collect();
    let pins = records::pins_from_listing(&listed);
    let decided = plan(&refs, &pins, policy, options.now_unix_ms);
    summary.pinned_beyond_window = decided
        .pinned_beyond_window
        .iter()
        .map(|p| p.bookmark_id.clone())
        .collect();
    let bases = base::from_listing(&listed);
    let expired_records: Vec<String> = records::pruned_from_listing(&listed)
        .into_iter()
        .filter(|r| r.pruned_unix_ms.saturating_add(PRUNED_RECORD_LIFETIME) < options.now_unix_ms)
        .map(|r| r.name)
        .collect();
    let log_of_every_epoch = crate::log::from_listing(&listed, &crate::owners::History::every_epoch());
    drop(listed);
    summary.previous_base_seq = bases.manifests.last().copied();

    // F: the oldest kept point, and for a write-ordered disk (every seq is a point) no later
    // than the newest point older than keep_all, so every seq inside keep_all stays.
    let mut base_seq = decided.oldest_kept_seq();
    if descriptor.write_ordered {
        let keep_all_from = options.now_unix_ms.saturating_sub(policy.keep_all.millis());
        let floor = refs
            .iter()
            .filter(|p| p.source_time_unix_ms < keep_all_from)
            .map(|p| p.seq)
            .max();
        base_seq = match (base_seq, floor) {
            (Some(f), Some(floor)) => Some(f.min(floor)),
            _ => None,
        };
    }
    // F moves back only when a point below the newest base is kept, which happens only when
    // it was pinned during a run that then left the log it needs in place (step 3).
    summary.base_seq = base_seq;
    let dropped: Vec<(&PointRef, Verdict)> = decided.dropped().collect();
    summary.points_kept = decided.kept().count();
    summary.oldest_point = decided
        .kept()
        .min_by_key(|p| p.seq)
        .map(|p| (p.bookmark_id.clone(), p.source_time_unix_ms));
    summary.points_dropped = dropped.len();
    summary.dropped = dropped
        .iter()
        .map(|(p, verdict)| DroppedPoint {
            seq: p.seq,
            bookmark_id: p.bookmark_id.clone(),
            reason: verdict.as_str().to_string(),
        })
        .collect();
    let Some(base_seq) = base_seq else {
        summary.stored_bytes_after = summary.stored_bytes_before;
        return Ok(summary); // no points yet: nothing to keep or drop
    };
    if options.dry_run {
        summary.stored_bytes_after = summary.stored_bytes_before;
        return Ok(summary);
    }

    // 1. The base at F.
    if !bases.manifests.contains(&base_seq) {
        summary.objects_written += build_base(&storage, &key, &descriptor, &bases, base_seq, policy, options).await?;
    }

    // 2. Pruned-point records past their lifetime.
    summary.objects_deleted += delete_all(&storage, expired_records, parallel).await?;

    // 3. Dropped points: the record first, then the point. Pins are read again first: one
    // made during this run keeps its point, and if that point lies below F the log it needs
    // stays too (the rest of the run waits for the next one, which plans with the pin).
    let pins_now = records::pins(&*storage, disk_id).await?;
    let newly_pinned: Vec<&PointRef> = dropped
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| pins_now.contains(&(p.seq, p.bookmark_id.clone())))
        .collect();
    let stop_before_log = newly_pinned.iter().any(|p| p.seq < base_seq);
    if !newly_pinned.is_empty() {
        summary.deferred = Some(format!(
            "pinned during the run: {}",
            newly_pinned
                .iter()
                .map(|p| p.bookmark_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let dropped: Vec<(&PointRef, Verdict)> = dropped
        .into_iter()
        .filter(|(p, _)| !pins_now.contains(&(p.seq, p.bookmark_id.clone())))
        .collect();
    for (point, _) in &dropped {
        let record = PrunedPoint {
            format: PLAINTEXT_FORMAT,
            disk_id,
            seq: point.seq,
            bookmark_id: point.bookmark_id.clone(),
            kind: match point.kind {
                PointKind::App => "app".into(),
                PointKind::Crash => "crash".into(),
            },
            source_time_unix_ms: point.source_time_unix_ms,
            pruned_unix_ms: options.now_unix_ms,
        };
        records::record_pruned(&*storage, &key, &record).await?;
        summary.objects_written += 1;
    }
    let dropped_names: BTreeSet<(u64, &str)> = dropped.iter().map(|(p, _)| (p.seq, p.bookmark_id.as_str())).collect();
    let point_names: Vec<String> = points
        .iter()
        .filter(|(_, p)| dropped_names.contains(&(p.seq, p.bookmark_id.as_str())))
        .map(|(name, _)| name.clone())
        .collect();
    summary.objects_deleted += delete_all(&storage, point_names, parallel).await?;
    if stop_before_log {
        summary.stored_bytes_after = stored_bytes(&*storage, disk_id).await?;
        return Ok(summary);
    }

    // 4. The log up to F.
    // Every epoch's: a stale owner's objects below the base are as useless as the rest.
    let old_log: Vec<String> = log_of_every_epoch
        .into_iter()
        .filter(|o| o.last_seq <= base_seq)
        .map(|o| o.name)
        .collect();
    summary.objects_deleted += delete_all(&storage, old_log, parallel).await?;

    // 5. Older bases' manifests, 6. then the chunks nothing names.
    let older: Vec<String> = bases
        .manifests
        .range(..base_seq)
        .map(|&seq| ObjectName::BaseManifest { disk_id, seq }.to_string())
        .collect();
    summary.objects_deleted += delete_all(&storage, older, parallel).await?;
    let manifests_left: BTreeSet<u64> = bases.manifests.range(base_seq..).copied().chain([base_seq]).collect();
    summary.objects_deleted += collect_chunks(&storage, &key, &descriptor, &bases, &manifests_left, parallel).await?;

    summary.stored_bytes_after = stored_bytes(&*storage, disk_id).await?;
    Ok(summary)
}

/// Writes the base at `seq` from the newest older base and the log after it. Returns the
/// objects written.
async fn build_base(
    storage: &Arc<dyn ObjectStorage>,
    key: &Arc<ObjectKey>,
    descriptor: &DiskDescriptor,
    bases: &base::Bases,
    seq: u64,
    policy: &DiskPolicy,
    options: &Options,
) -> Result<u64> {
    let disk_id = descriptor.disk_id;
    let size = descriptor.size_bytes;
    let older_seq = bases.newest_at_or_below(seq);
    let older = match older_seq {
        Some(s) => Some(base::read_manifest(&**storage, key, disk_id, s, size).await?),
        None => None,
    };
    std::fs::create_dir_all(&options.scratch_dir)
        .with_context(|| format!("cannot create the scratch directory {}", options.scratch_dir.display()))?;
    // Unnamed, so it goes away with the process whatever happens.
    let file = tempfile::tempfile_in(&options.scratch_dir)
        .with_context(|| format!("cannot make a scratch file in {}", options.scratch_dir.display()))?;
    file.set_len(size).context("cannot size the scratch file")?;
    let mut scratch = base::Scratch::new(file, policy.chunk_bytes);
    if let Some(older) = older.as_ref().filter(|o| o.chunk_size != policy.chunk_bytes) {
        // Another chunking: the new base is written whole from the older one.
        base::fill(
            storage.clone(),
            key.clone(),
            older,
            scratch.file(),
            options.parallel,
            false,
            Default::default(),
        )
        .await?;
        scratch.touch_all(size);
    }
    let objects = crate::log::list(&**storage, key, disk_id).await?;
    let after = older_seq.unwrap_or(0);
    let chain = crate::log::cover(objects, after, seq)?;
    let replay = crate::log::Replay {
        storage: storage.clone(),
        key: key.clone(),
        geometry: DiskGeometry {
            size_bytes: size,
            sector_size: descriptor.sector_size,
        },
        chain: &chain,
        after,
        target: seq,
        parallel: options.parallel,
    };
    replay.run(&mut scratch, |_| {}).await?;
    let (_, written) = base::write_base(
        storage.clone(),
        key.clone(),
        disk_id,
        seq,
        size,
        older.as_ref(),
        &scratch,
        options.parallel,
    )
    .await?;
    Ok(written.chunks_written + 1)
}

/// Deletes every chunk object of the run's listing that no manifest left (`manifests_left`,
/// the base at F and those newer) names. Returns how many. Chunks written by this run are not
/// in the listing, and are named by the base at F anyway.
async fn collect_chunks(
    storage: &Arc<dyn ObjectStorage>,
    key: &ObjectKey,
    descriptor: &DiskDescriptor,
    bases: &base::Bases,
    manifests_left: &BTreeSet<u64>,
    parallel: usize,
) -> Result<u64> {
    let disk_id = descriptor.disk_id;
    let mut named = BTreeSet::new();
    for &seq in manifests_left {
        let manifest = base::read_manifest(&**storage, key, disk_id, seq, descriptor.size_bytes).await?;
        named.extend(manifest.chunks.into_values());
    }
    let orphans: Vec<String> = bases
        .chunks
        .keys()
        .filter(|name| !named.contains(*name))
        .cloned()
        .collect();
    delete_all(storage, orphans, parallel).await
}
