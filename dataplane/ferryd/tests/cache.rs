//! The cache against both engines: durability across restarts, admission rules, release,
//! rollover, a full cache, torn tails, the lock, and a model run side by side (STYLE.md 8)
//! with segments shrunk so rollover and deletion happen in every run.

use bytes::Bytes;
use ferry_config::config::CacheEngine;
use ferry_format::BatchEncoder;
use ferryd::cache::{Admission, AppendError, Cache, CacheError, CacheOptions, DiskMeta, RecordBuffer, Release};
use std::collections::BTreeMap;
use std::path::Path;
use uuid::Uuid;

const SEGMENT: u64 = 64 * 1024;

fn options(dir: &Path, engine: CacheEngine, limit_segments: u64) -> CacheOptions {
    CacheOptions {
        directory: dir.join("cache"),
        limit_bytes: limit_segments * SEGMENT,
        segment_bytes: SEGMENT,
        engine,
        max_batch_bytes: 16 << 20,
        window: 16,
        resident_budget_bytes: 32 * 1024,
    }
}

fn meta(disk_id: Uuid) -> DiskMeta {
    DiskMeta {
        disk_id,
        machine_id: Uuid::from_u128(99),
        name: "sda".into(),
        size_bytes: 1 << 30,
        sector_size: 512,
        write_ordered: false,
        created_unix_ms: 1,
        resync_reason: None,
        failed_over: None,
        reprotect_from: None,
        owner_epoch: 0,
    }
}

/// Batch `seq` with `variant` changing its content (a different header CRC).
fn batch(seq: u64, sectors: usize, variant: u8) -> Bytes {
    let mut enc = BatchEncoder::new(seq, 1000 + seq);
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i as u8) ^ (seq as u8) ^ variant).collect();
    enc.write(seq * 512, &data);
    enc.finish()
}

/// What the ingest path does: admit, copy into a record, append.
async fn store(cache: &Cache, disk: Uuid, batch: &Bytes) -> Result<Admission, AppendError> {
    let seq = u64::from_le_bytes(batch[8..16].try_into().unwrap());
    let mut record = RecordBuffer::new(batch.len());
    record.batch_mut().copy_from_slice(batch);
    let (record, _, header_crc) = record.finish(disk, seq);
    let admission = cache.admit(disk, seq, header_crc, record.len() as u64).unwrap();
    if admission != Admission::Accept {
        return Ok(admission);
    }
    cache.append(disk, seq, record, batch.len() as u32, header_crc).await?;
    Ok(Admission::Accept)
}

macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod psync { $(#[tokio::test] async fn $name() { super::$name(ferry_config::config::CacheEngine::Psync).await; })* }
        mod io_uring { $(#[tokio::test] async fn $name() { super::$name(ferry_config::config::CacheEngine::IoUring).await; })* }
    };
}

both_engines!(
    durable_across_restart,
    admission_rules,
    release_persists_and_deletes_segments,
    releases_of_many_disks_are_made_durable_together,
    a_failed_release_sync_keeps_the_batches_and_no_release_file,
    full_cache_refuses_then_resumes,
    torn_tail_is_cut_and_reported,
    second_open_is_locked,
    model_run,
    abandoned_batches_stay_abandoned_across_restarts,
    a_taken_over_disk_restarts_at_storage_and_its_old_batches_stay_gone,
    the_disks_that_advanced_are_named_once,
);

/// The pipeline looks only at disks the cache names as advanced: each disk whose durable_seq
/// moved is named once per take, a batch that leaves a gap does not name it, and views of
/// named disks come back for those the cache has.
async fn the_disks_that_advanced_are_named_once(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
    for disk in [a, b, c] {
        cache.create_disk(meta(disk)).unwrap();
    }
    assert!(cache.take_advanced().is_empty());
    for seq in 1..=3 {
        store(&cache, a, &batch(seq, 1, 0)).await.unwrap();
    }
    store(&cache, b, &batch(1, 1, 0)).await.unwrap();
    store(&cache, c, &batch(2, 1, 0)).await.unwrap(); // a gap: durable_seq stays 0
    let mut named: Vec<(Uuid, u64)> = cache
        .take_advanced()
        .iter()
        .map(|v| (v.meta.disk_id, v.durable_seq))
        .collect();
    named.sort();
    assert_eq!(named, vec![(a, 3), (b, 1)]);
    assert!(cache.take_advanced().is_empty(), "named once");
    store(&cache, c, &batch(1, 1, 0)).await.unwrap(); // fills the gap: 1 and 2 durable
    let named: Vec<(Uuid, u64)> = cache
        .take_advanced()
        .iter()
        .map(|v| (v.meta.disk_id, v.durable_seq))
        .collect();
    assert_eq!(named, vec![(c, 2)]);
    store(&cache, a, &batch(4, 1, 0)).await.unwrap();
    cache.clear_advanced();
    assert!(cache.take_advanced().is_empty(), "cleared before a full pass");
    let views = cache.views_of(&[b, Uuid::from_u128(99)]);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].meta.disk_id, b);
}

async fn durable_across_restart(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(1);
    let mut written = BTreeMap::new();
    {
        let (cache, report) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        assert_eq!(
            report.engine,
            if engine == CacheEngine::Psync {
                "psync"
            } else {
                "io_uring"
            }
        );
        cache.create_disk(meta(disk)).unwrap();
        // Out of order within the window: durable_seq waits for the gap.
        for seq in [2u64, 3, 1, 5, 4] {
            let b = batch(seq, 3, 0);
            assert_eq!(store(&cache, disk, &b).await.unwrap(), Admission::Accept);
            written.insert(seq, b);
        }
        for seq in 6..=40 {
            let b = batch(seq, 1 + (seq as usize % 9), 0);
            store(&cache, disk, &b).await.unwrap();
            written.insert(seq, b);
        }
        assert_eq!(cache.disk(disk).unwrap().durable_seq, 40);
        assert!(
            cache.usage().segments >= 3,
            "records rolled over several 64 KiB segments"
        );
        for (seq, b) in &written {
            assert_eq!(&cache.read_batch(disk, *seq).unwrap().unwrap(), b);
        }
        cache.shutdown();
    }
    let (cache, report) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    assert!(report.damage.is_empty(), "{:?}", report.damage);
    assert_eq!(report.records_recovered, 40);
    assert_eq!(cache.disk(disk).unwrap().durable_seq, 40);
    for (seq, b) in &written {
        assert_eq!(
            &cache.read_batch(disk, *seq).unwrap().unwrap(),
            b,
            "seq {seq} after restart"
        );
    }
}

async fn admission_rules(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(1);
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    cache.create_disk(meta(disk)).unwrap();
    store(&cache, disk, &batch(1, 1, 0)).await.unwrap();
    assert_eq!(
        store(&cache, disk, &batch(1, 1, 0)).await.unwrap(),
        Admission::AlreadyStored { durable_seq: 1 }
    );
    assert_eq!(
        store(&cache, disk, &batch(1, 1, 7)).await.unwrap(),
        Admission::Conflict { expected_seq: 2 }
    );
    assert_eq!(
        store(&cache, disk, &batch(18, 1, 0)).await.unwrap(),
        Admission::OutOfWindow { expected_seq: 2 }
    );
    assert_eq!(
        cache.window_check(disk, 18).unwrap(),
        Some(Admission::OutOfWindow { expected_seq: 2 })
    );
    assert_eq!(cache.window_check(disk, 17).unwrap(), None);
    // A seq being written answers InFlight to a concurrent duplicate.
    assert_eq!(cache.admit(disk, 5, 1, 4096).unwrap(), Admission::Accept);
    assert_eq!(cache.admit(disk, 5, 1, 4096).unwrap(), Admission::InFlight);
    cache.abandon(disk, 5, 4096);
    assert_eq!(cache.admit(disk, 5, 1, 4096).unwrap(), Admission::Accept);
    cache.abandon(disk, 5, 4096);
    assert!(matches!(
        cache.admit(Uuid::from_u128(2), 1, 1, 4096),
        Err(CacheError::UnknownDisk(_))
    ));
    assert_eq!(
        cache.disk(disk).unwrap().cached_batches,
        1,
        "nothing of the refused batches was stored"
    );
}

async fn release_persists_and_deletes_segments(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(1);
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        cache.create_disk(meta(disk)).unwrap();
        for seq in 1..=30 {
            store(&cache, disk, &batch(seq, 8, 0)).await.unwrap();
        }
        let before = cache.usage().segments;
        cache.release(disk, 25, 0).unwrap();
        let view = cache.disk(disk).unwrap();
        assert_eq!(
            (view.durable_seq, view.released_through, view.cached_batches),
            (30, 25, 5)
        );
        assert!(
            cache.usage().segments < before,
            "segments holding only released batches are deleted"
        );
        assert_eq!(cache.read_batch(disk, 10).unwrap(), None);
        // A retry of a released batch is still recognised by its header CRC.
        assert_eq!(
            store(&cache, disk, &batch(10, 8, 0)).await.unwrap(),
            Admission::AlreadyStored { durable_seq: 30 }
        );
        assert_eq!(
            store(&cache, disk, &batch(10, 8, 1)).await.unwrap(),
            Admission::Conflict { expected_seq: 31 }
        );
        cache.release(disk, 99, 0).unwrap();
        assert_eq!(
            cache.disk(disk).unwrap().released_through,
            30,
            "release stops at durable_seq"
        );
        cache.shutdown();
    }
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let view = cache.disk(disk).unwrap();
    assert_eq!(
        (view.durable_seq, view.released_through, view.cached_batches),
        (30, 30, 0),
        "durable_seq never goes back"
    );
    assert_eq!(
        store(&cache, disk, &batch(10, 8, 0)).await.unwrap(),
        Admission::AlreadyStored { durable_seq: 30 }
    );
    assert_eq!(store(&cache, disk, &batch(31, 8, 0)).await.unwrap(), Admission::Accept);
}

async fn releases_of_many_disks_are_made_durable_together(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<Uuid> = (1..=4).map(Uuid::from_u128).collect();
    let release = |disk_id, through_seq, epoch| Release {
        disk_id,
        through_seq,
        epoch,
    };
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        for disk in &disks {
            cache.create_disk(meta(*disk)).unwrap();
            for seq in 1..=10 {
                store(&cache, *disk, &batch(seq, 8, 0)).await.unwrap();
            }
        }
        let unknown = Uuid::from_u128(77);
        let results = cache.release_many(&[
            release(disks[0], 4, 0),
            release(disks[1], 99, 0),
            release(disks[2], 5, 3), // another owner epoch: nothing happens
            release(unknown, 1, 0),
            release(disks[0], 6, 0), // the same disk twice in one group
            release(disks[3], 10, 0),
        ]);
        assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_ok() && results[5].is_ok());
        assert!(matches!(results[3], Err(CacheError::UnknownDisk(d)) if d == unknown));
        assert!(
            matches!(results[4], Err(CacheError::Busy(d, _)) if d == disks[0]),
            "a second release of a disk in one group is refused, never answered as done"
        );
        let released: Vec<u64> = disks.iter().map(|d| cache.disk(*d).unwrap().released_through).collect();
        assert_eq!(
            released,
            [4, 10, 0, 10],
            "each disk up to its own request, at most durable_seq"
        );
        assert_eq!(cache.read_batch(disks[0], 4).unwrap(), None);
        assert!(cache.read_batch(disks[0], 5).unwrap().is_some());
        // A second group: rewrites of existing watermark files and a first one, one round.
        let results = cache.release_many(&[release(disks[0], 8, 0), release(disks[2], 3, 0)]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        cache.shutdown();
    }
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let after: Vec<(u64, usize)> = disks
        .iter()
        .map(|d| {
            let view = cache.disk(*d).unwrap();
            (view.released_through, view.cached_batches)
        })
        .collect();
    assert_eq!(
        after,
        [(8, 2), (10, 0), (3, 7), (10, 0)],
        "the watermarks survived a restart"
    );
    assert_eq!(
        store(&cache, disks[1], &batch(3, 8, 0)).await.unwrap(),
        Admission::AlreadyStored { durable_seq: 10 },
        "released batches are still recognised by their CRCs"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path().join("cache/disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "no temporary file stays: {names:?}");
}

async fn a_failed_release_sync_keeps_the_batches_and_no_release_file(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disks: Vec<Uuid> = (1..=2).map(Uuid::from_u128).collect();
    let release = |disk_id, through_seq| Release {
        disk_id,
        through_seq,
        epoch: 0,
    };
    let release_file = |disk: Uuid| dir.path().join(format!("cache/disks/{disk}.release"));
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        for disk in &disks {
            cache.create_disk(meta(*disk)).unwrap();
            for seq in 1..=5 {
                store(&cache, *disk, &batch(seq, 8, 0)).await.unwrap();
            }
        }
        // Several disks: their one `syncfs` fails.
        cache.fail_next_release_sync();
        let results = cache.release_many(&[release(disks[0], 3), release(disks[1], 3)]);
        assert!(results.iter().all(Result::is_err), "{results:?}");
        // A lone disk's first release: its directory fsync fails.
        cache.fail_next_release_sync();
        assert!(cache.release(disks[0], 2, 0).is_err());
        for disk in &disks {
            assert_eq!(cache.disk(*disk).unwrap().released_through, 0, "nothing released");
            assert!(cache.read_batch(*disk, 1).unwrap().is_some(), "the batches stay cached");
            assert!(
                !release_file(*disk).exists(),
                "no release file whose name may not be durable is left"
            );
        }
        // The next attempts succeed and make the new files' names durable.
        assert!(cache.release(disks[0], 2, 0).is_ok());
        let results = cache.release_many(&[release(disks[0], 3), release(disks[1], 4)]);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        cache.shutdown();
    }
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let after: Vec<u64> = disks.iter().map(|d| cache.disk(*d).unwrap().released_through).collect();
    assert_eq!(
        after,
        [3, 4],
        "the watermarks written after the failures survive a restart"
    );
}

async fn full_cache_refuses_then_resumes(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(1);
    let (cache, _) = Cache::open(options(dir.path(), engine, 2)).unwrap();
    cache.create_disk(meta(disk)).unwrap();
    let mut seq = 1;
    let mut stored = Vec::new();
    loop {
        let b = batch(seq, 20, 0);
        match store(&cache, disk, &b).await.unwrap() {
            Admission::Accept => stored.push(b),
            Admission::CacheFull => break,
            other => panic!("unexpected {other:?}"),
        }
        seq += 1;
        assert!(seq < 100, "a two-segment cache fills");
    }
    assert_eq!(cache.disk(disk).unwrap().durable_seq, seq - 1);
    assert!(cache.usage().segment_bytes_total <= 2 * SEGMENT);
    for (i, b) in stored.iter().enumerate() {
        assert_eq!(
            &cache.read_batch(disk, i as u64 + 1).unwrap().unwrap(),
            b,
            "nothing lost at the limit"
        );
    }
    cache.release(disk, seq - 1, 0).unwrap();
    assert_eq!(
        store(&cache, disk, &batch(seq, 20, 0)).await.unwrap(),
        Admission::Accept,
        "ingest resumes after release"
    );
}

async fn torn_tail_is_cut_and_reported(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(1);
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        cache.create_disk(meta(disk)).unwrap();
        for seq in 1..=5 {
            store(&cache, disk, &batch(seq, 2, 0)).await.unwrap();
        }
        cache.shutdown();
    }
    // Corrupt the last record's data (a torn write of the final group).
    let segment = std::fs::read_dir(dir.path().join("cache/segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let bytes = std::fs::read(&segment).unwrap();
    let last_record = 4096 + 4 * 4096;
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&[bytes[last_record + 200] ^ 0xff], (last_record + 200) as u64)
        .unwrap();
    drop(file);
    {
        let (cache, report) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
        assert_eq!(report.damage[0].file, segment);
        assert_eq!(report.damage[0].offset, last_record as u64);
        assert_eq!(cache.disk(disk).unwrap().durable_seq, 4, "the valid prefix is kept");
        for seq in 1..=4 {
            assert_eq!(cache.read_batch(disk, seq).unwrap().unwrap(), batch(seq, 2, 0));
        }
        // The client resends 5 (it never got an answer); it lands in a new segment.
        assert_eq!(store(&cache, disk, &batch(5, 2, 0)).await.unwrap(), Admission::Accept);
        assert_eq!(store(&cache, disk, &batch(6, 2, 0)).await.unwrap(), Admission::Accept);
        cache.shutdown();
    }
    let (cache, report) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    assert_eq!(report.damage.len(), 1, "the old cut is reported again, nothing new");
    assert_eq!(cache.disk(disk).unwrap().durable_seq, 6);
    assert_eq!(cache.read_batch(disk, 5).unwrap().unwrap(), batch(5, 2, 0));

    cache.shutdown();
    drop(cache);

    // Truncating the segment in the middle of a record is a cut too.
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len((4096 + 2 * 4096 + 100) as u64).unwrap();
    drop(file);
    let (cache, report) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    assert_eq!(report.damage.len(), 1, "{:?}", report.damage);
    assert_eq!(
        (report.damage[0].file.clone(), report.damage[0].offset),
        (segment, 3 * 4096)
    );
    assert!(report.damage[0].reason.contains("truncated"), "{}", report.damage[0]);
    assert_eq!(
        cache.disk(disk).unwrap().durable_seq,
        2,
        "batches 3 and 4 were cut away with the file"
    );
    assert_eq!(cache.read_batch(disk, 6).unwrap().unwrap(), batch(6, 2, 0));
}

async fn second_open_is_locked(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let (_cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let second = Cache::open(options(dir.path(), engine, 64));
    assert!(
        matches!(second, Err(CacheError::Locked(_))),
        "a second cache on the same directory is refused"
    );
}

/// Random appends (in and out of window order), releases and restarts, checked against a
/// plain map after every step.
async fn model_run(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disks = [Uuid::from_u128(1), Uuid::from_u128(2)];
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut model: BTreeMap<(Uuid, u64), Bytes> = BTreeMap::new();
    let mut released: BTreeMap<Uuid, u64> = BTreeMap::new();
    let (mut cache, _) = Cache::open(options(dir.path(), engine, 8)).unwrap();
    let (mut restarts, mut fulls) = (0, 0);
    for disk in disks {
        cache.create_disk(meta(disk)).unwrap();
    }
    for step in 0..400 {
        let disk = disks[(next() % 2) as usize];
        match next() % 10 {
            0 => {
                cache.shutdown();
                drop(cache);
                let (reopened, report) = Cache::open(options(dir.path(), engine, 8)).unwrap();
                assert!(report.damage.is_empty(), "step {step}: {:?}", report.damage);
                cache = reopened;
                restarts += 1;
            }
            1 => {
                let durable = cache.disk(disk).unwrap().durable_seq;
                let through = durable.saturating_sub(next() % 4);
                cache.release(disk, through, 0).unwrap();
                let mark = released.entry(disk).or_default();
                *mark = (*mark).max(through);
                model.retain(|(d, s), _| *d != disk || *s > *mark);
            }
            _ => {
                let durable = cache.disk(disk).unwrap().durable_seq;
                let seq = durable + 1 + next() % 3;
                // Content is a function of the seq: sending a seq again is a genuine retry.
                let b = batch(seq, 1 + (seq % 6) as usize, 0);
                match store(&cache, disk, &b).await.unwrap() {
                    Admission::Accept => {
                        model.insert((disk, seq), b);
                    }
                    Admission::AlreadyStored { .. } => assert_eq!(model.get(&(disk, seq)), Some(&b)),
                    Admission::CacheFull => {
                        fulls += 1;
                        let durable = cache.disk(disk).unwrap().durable_seq;
                        cache.release(disk, durable, 0).unwrap();
                        released.insert(disk, durable);
                        model.retain(|(d, s), _| *d != disk || *s > durable);
                    }
                    other => panic!("step {step}: unexpected {other:?}"),
                }
            }
        }
        for disk in disks {
            let view = cache.disk(disk).unwrap();
            let mut expected_durable = released.get(&disk).copied().unwrap_or(0);
            while model.contains_key(&(disk, expected_durable + 1)) {
                expected_durable += 1;
            }
            assert_eq!(view.durable_seq, expected_durable, "step {step}");
            let cached: Vec<u64> = model.keys().filter(|(d, _)| *d == disk).map(|(_, s)| *s).collect();
            assert_eq!(view.cached_batches, cached.len(), "step {step}");
        }
        for ((disk, seq), b) in &model {
            assert_eq!(
                &cache.read_batch(*disk, *seq).unwrap().unwrap(),
                b,
                "step {step}: {disk} {seq}"
            );
        }
    }
    assert!(cache.usage().segment_bytes_total <= 8 * SEGMENT);
    assert!(
        restarts > 10 && fulls > 0,
        "the run exercised restarts ({restarts}) and a full cache ({fulls})"
    );
}

/// A sender that died with batches in flight leaves 4 and 5 stored past a gap at 3. It gives
/// them up, sends other batches under the same seqs, and only the new ones exist, before and
/// after restarts; a resync reason persists too.
async fn abandoned_batches_stay_abandoned_across_restarts(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(7);
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        cache.create_disk(meta(disk)).unwrap();
        for seq in [1u64, 2, 4, 5] {
            store(&cache, disk, &batch(seq, 2, 0)).await.unwrap();
        }
        assert_eq!(cache.disk(disk).unwrap().durable_seq, 2);
        // The old seq 4 conflicts with new content, as a restarted sender would find.
        let retry = store(&cache, disk, &batch(4, 2, 9)).await.unwrap();
        assert!(matches!(retry, Admission::Conflict { .. }), "{retry:?}");
        let (view, abandoned) = cache.abandon_past_durable(disk).unwrap();
        assert_eq!((view.durable_seq, view.cached_batches, abandoned), (2, 2, 2));
        assert_eq!(cache.read_batch(disk, 4).unwrap(), None);
        cache.set_resync(disk, Some("state lost".into())).unwrap();
        cache.shutdown();
    }
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        let view = cache.disk(disk).unwrap();
        assert_eq!(
            (view.durable_seq, view.cached_batches),
            (2, 2),
            "the old 4 and 5 did not come back"
        );
        assert_eq!(view.meta.resync_reason.as_deref(), Some("state lost"));
        for seq in 3..=5 {
            assert_eq!(store(&cache, disk, &batch(seq, 2, 9)).await.unwrap(), Admission::Accept);
        }
        // Nothing more to give up: the disk is contiguous.
        assert_eq!(cache.abandon_past_durable(disk).unwrap().1, 0);
        cache.set_resync(disk, None).unwrap();
        cache.shutdown();
    }
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let view = cache.disk(disk).unwrap();
    assert_eq!(view.durable_seq, 5);
    assert_eq!(view.meta.resync_reason, None);
    for seq in 3..=5 {
        assert_eq!(
            cache.read_batch(disk, seq).unwrap().unwrap(),
            batch(seq, 2, 9),
            "seq {seq} is the new batch"
        );
    }
    assert_eq!(cache.read_batch(disk, 1).unwrap().unwrap(), batch(1, 2, 0));
}

/// Scale-out: a disk taken over at an owner epoch restarts after what storage holds, its
/// cached batches past that given up for good (across restarts too), and releases of the old
/// epoch change nothing; a forgotten disk does not come back.
async fn a_taken_over_disk_restarts_at_storage_and_its_old_batches_stay_gone(engine: CacheEngine) {
    let dir = tempfile::tempdir().unwrap();
    let (disk, other) = (Uuid::from_u128(7), Uuid::from_u128(8));
    {
        let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
        cache.create_disk(meta(disk)).unwrap();
        cache.create_disk(meta(other)).unwrap();
        for seq in 1..=5u64 {
            store(&cache, disk, &batch(seq, 2, 0)).await.unwrap();
            store(&cache, other, &batch(seq, 2, 0)).await.unwrap();
        }
        // Storage holds 1..=2 (say): epoch 1 starts at 3.
        let view = cache
            .take_over(
                DiskMeta {
                    owner_epoch: 1,
                    ..meta(disk)
                },
                2,
            )
            .unwrap();
        assert_eq!(
            (view.durable_seq, view.released_through, view.cached_batches),
            (2, 2, 0)
        );
        assert_eq!(view.meta.owner_epoch, 1);
        assert_eq!(cache.read_batch(disk, 3).unwrap(), None);
        // A release the old epoch's pipeline still had out changes nothing.
        cache.release(disk, 2, 0).unwrap();
        // The new epoch's batch 3 has other content: accepted, not a conflict.
        assert_eq!(store(&cache, disk, &batch(3, 2, 9)).await.unwrap(), Admission::Accept);
        cache.forget_disk(other).unwrap();
        assert!(cache.disk(other).is_none());
        cache.shutdown();
    }
    let (cache, _) = Cache::open(options(dir.path(), engine, 64)).unwrap();
    let view = cache.disk(disk).unwrap();
    assert_eq!(
        (
            view.durable_seq,
            view.released_through,
            view.cached_batches,
            view.meta.owner_epoch
        ),
        (3, 2, 1, 1),
        "the old 3..=5 did not come back; the new 3 did"
    );
    assert_eq!(cache.read_batch(disk, 3).unwrap().unwrap(), batch(3, 2, 9));
    assert!(cache.disk(other).is_none(), "a forgotten disk stays forgotten");
}

/// Releases rewrite one `.release` file per disk in place (no new inode per release); a torn
/// last write falls back to the release before it; a leftover of an earlier incarnation of
/// the disk, or of a disk no longer known, is never taken for the current one.
#[tokio::test]
async fn release_watermarks_are_rewritten_in_place_and_survive_a_torn_write() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let disk = Uuid::from_u128(1);
    let disks_dir = dir.path().join("cache/disks");
    let release_file = disks_dir.join(format!("{disk}.release"));
    let inode = || std::fs::metadata(&release_file).unwrap().ino();
    {
        let (cache, _) = Cache::open(options(dir.path(), CacheEngine::Psync, 64)).unwrap();
        cache.create_disk(meta(disk)).unwrap();
        for seq in 1..=20 {
            store(&cache, disk, &batch(seq, 8, 0)).await.unwrap();
        }
        cache.release(disk, 5, 0).unwrap();
        let first = inode();
        cache.release(disk, 10, 0).unwrap();
        assert_eq!(inode(), first, "the second release rewrote the same file");
        cache.shutdown();
    }
    let mut names: Vec<String> = std::fs::read_dir(&disks_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, [format!("{disk}.meta"), format!("{disk}.release")]);
    // The third release (generation 3, slot 1) torn half way: the first half of a record
    // there (slot 0's, generation 2, whose header says its length).
    let mut bytes = std::fs::read(&release_file).unwrap();
    let slot = bytes.len() / 2;
    let record_len = 24 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let torn: Vec<u8> = bytes[..record_len / 2].to_vec();
    bytes[slot..slot + torn.len()].copy_from_slice(&torn);
    std::fs::write(&release_file, &bytes).unwrap();
    let saved_release = bytes;
    {
        let (cache, _) = Cache::open(options(dir.path(), CacheEngine::Psync, 64)).unwrap();
        let view = cache.disk(disk).unwrap();
        assert_eq!(
            (view.released_through, view.durable_seq, view.cached_batches),
            (10, 20, 10),
            "the release before the torn one"
        );
        assert_eq!(
            store(&cache, disk, &batch(7, 8, 0)).await.unwrap(),
            Admission::AlreadyStored { durable_seq: 20 },
            "the released batches' CRCs came back with the watermark"
        );
        cache.release(disk, 12, 0).unwrap();
        cache.shutdown();
    }
    {
        let (cache, _) = Cache::open(options(dir.path(), CacheEngine::Psync, 64)).unwrap();
        assert_eq!(cache.disk(disk).unwrap().released_through, 12);
        // The disk forgotten and registered again: an old `.release` left beside it is ignored.
        cache.forget_disk(disk).unwrap();
        assert!(!release_file.exists(), "forgetting a disk removes its release file");
        let again = DiskMeta {
            created_unix_ms: 2,
            ..meta(disk)
        };
        cache.create_disk(again).unwrap();
        std::fs::write(&release_file, &saved_release).unwrap();
        // And a release file of a disk the cache does not know.
        std::fs::write(
            disks_dir.join(format!("{}.release", Uuid::from_u128(5))),
            &saved_release,
        )
        .unwrap();
        cache.shutdown();
    }
    let (cache, _) = Cache::open(options(dir.path(), CacheEngine::Psync, 64)).unwrap();
    assert_eq!(
        cache.disk(disk).unwrap().released_through,
        0,
        "another incarnation's watermark is not this one's"
    );
    assert!(!disks_dir.join(format!("{}.release", Uuid::from_u128(5))).exists());
}
