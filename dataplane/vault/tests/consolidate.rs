//! Consolidation against a model, on a real local-directory target: a disk whose points span
//! three days, consolidated under a 24 h window; every kept point must restore byte for byte
//! equal to the model, at the end and after every interrupted or failing run on the way.

use bytes::Bytes;
use ferry_config::retention::{DiskPolicy, Span};
use ferry_format::bookmark::{Bookmark, BookmarkId, BookmarkKind};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{DiskDescriptor, Pin, RecoveryPoint, PLAINTEXT_FORMAT};
use ferry_format::{BatchEncoder, Keyring, VaultDescriptor, VaultKey};
use ferry_storage::faults::{Fault, FaultInjecting};
use ferry_storage::{list_all, LocalTargetConfig, ObjectStorage, Operation, RetryPolicy, TargetConfig};
use ferry_vault::points::KnownPoints;
use ferry_vault::retention::consolidate::{consolidate_disk, DiskSummary, Options};
use ferry_vault::retention::records;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

const HOUR_MS: u64 = 3_600_000;
const NOW: u64 = 1_800_000_000_000;
/// Not a whole number of chunks: every base has a short last chunk.
const DISK_BYTES: u64 = (4 << 20) - 32 * 1024;
/// After the first batches (an initial copy all over the disk), writes stay in this hot region.
const HOT_BYTES: u64 = 1 << 20;
const INITIAL_BATCHES: u64 = 4;
const CHUNK: u64 = 64 * 1024;
/// One batch an hour for three days; every batch carries a bookmark.
const BATCHES: u64 = 72;
/// Batches per change set object.
const PER_OBJECT: u64 = 3;

struct Vault {
    _dir: tempfile::TempDir,
    storage: Arc<dyn ObjectStorage>,
    keyring: Keyring,
    disk_id: Uuid,
    descriptor: DiskDescriptor,
    /// The disk after each seq.
    model: BTreeMap<u64, Vec<u8>>,
    scratch: tempfile::TempDir,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn source_time(seq: u64) -> u64 {
    NOW - BATCHES * HOUR_MS + seq * HOUR_MS - HOUR_MS / 2
}

async fn put_sealed(storage: &dyn ObjectStorage, keyring: &Keyring, name: &ObjectName, plain: &[u8]) {
    let sealed = ferry_format::seal::seal(&keyring.key_for(name), &name.to_string(), plain, 1).unwrap();
    storage.put(&name.to_string(), Bytes::from(sealed)).await.unwrap();
}

async fn vault() -> Vault {
    vault_with(false, 1).await
}

/// A vault whose disk is `write_ordered` (or not), with a point every `point_every` batches.
async fn vault_with(write_ordered: bool, point_every: u64) -> Vault {
    let dir = tempfile::tempdir().unwrap();
    let storage = ferry_storage::open_target(
        &TargetConfig::Local(LocalTargetConfig {
            path: dir.path().join("target"),
            create: true,
        }),
        RetryPolicy::default(),
    )
    .await
    .unwrap();
    let key = VaultKey::generate().unwrap();
    let descriptor = VaultDescriptor::create(&key, NOW);
    storage
        .put(ferry_format::names::VAULT_JSON, Bytes::from(descriptor.to_json()))
        .await
        .unwrap();
    let keyring = descriptor.open(&key).unwrap();
    let disk_id = Uuid::new_v4();
    let disk = DiskDescriptor {
        format: PLAINTEXT_FORMAT,
        disk_id,
        machine_id: Uuid::new_v4(),
        name: "model".into(),
        size_bytes: DISK_BYTES,
        sector_size: 512,
        write_ordered,
        created_unix_ms: NOW - BATCHES * HOUR_MS,
        reprotect_from: None,
    };
    put_sealed(
        &*storage,
        &keyring,
        &ObjectName::DiskMeta { disk_id },
        &serde_json::to_vec(&disk).unwrap(),
    )
    .await;

    let mut image = vec![0u8; DISK_BYTES as usize];
    let mut model = BTreeMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut object = Vec::new();
    for seq in 1..=BATCHES {
        let mut batch = BatchEncoder::new(seq, source_time(seq));
        if seq == 1 {
            // The disk's last (short) chunk holds data from the start.
            let offset = DISK_BYTES - 4096;
            batch.write(offset, &[0xee; 4096]);
            image[offset as usize..].fill(0xee);
        }
        let writes = if seq <= INITIAL_BATCHES { 64 } else { 4 };
        for _ in 0..writes {
            // Writes of 1-64 sectors anywhere, some across chunk edges; now and then a zero run.
            let sectors = 1 + xorshift(&mut rng) % 64;
            let region = if seq <= INITIAL_BATCHES { DISK_BYTES } else { HOT_BYTES };
            let offset = (xorshift(&mut rng) % (region / 512 - sectors)) * 512;
            let length = sectors * 512;
            if xorshift(&mut rng).is_multiple_of(5) {
                batch.zero(offset, length);
                image[offset as usize..(offset + length) as usize].fill(0);
            } else {
                let byte = (xorshift(&mut rng) % 251 + 1) as u8;
                let data = vec![byte; length as usize];
                batch.write(offset, &data);
                image[offset as usize..(offset + length) as usize].copy_from_slice(&data);
            }
        }
        let kind = if seq % 4 == 0 {
            BookmarkKind::App
        } else {
            BookmarkKind::Crash
        };
        let bookmark = Bookmark {
            id: BookmarkId::new(&format!("p{seq}")).unwrap(),
            kind,
            tag: None,
            group_id: None,
        };
        batch.bookmark(&bookmark);
        object.extend_from_slice(&batch.finish());
        model.insert(seq, image.clone());
        if seq % PER_OBJECT == 0 {
            let name = ObjectName::Log {
                disk_id,
                epoch: 0,
                first_seq: seq - PER_OBJECT + 1,
                last_seq: seq,
            };
            put_sealed(&*storage, &keyring, &name, &object).await;
            object.clear();
        }
        if !seq.is_multiple_of(point_every) {
            continue;
        }
        let point = RecoveryPoint {
            format: PLAINTEXT_FORMAT,
            disk_id,
            seq,
            bookmark_id: format!("p{seq}"),
            kind: kind.as_str().into(),
            tag: None,
            group_id: None,
            source_time_unix_ms: source_time(seq),
            created_unix_ms: source_time(seq) + 1000,
        };
        let name = ObjectName::Point {
            disk_id,
            epoch: 0,
            seq,
            bookmark_id: BookmarkId::new(&format!("p{seq}")).unwrap(),
        };
        put_sealed(&*storage, &keyring, &name, &serde_json::to_vec(&point).unwrap()).await;
    }
    Vault {
        _dir: dir,
        storage,
        keyring,
        disk_id,
        descriptor: disk,
        model,
        scratch: tempfile::tempdir().unwrap(),
    }
}

fn policy() -> DiskPolicy {
    DiskPolicy {
        window: Span(24 * 3600),
        keep_all: Span(3600 * 3),
        crash_every: Span(6 * 3600),
        app_every: Span(0),
        chunk_bytes: CHUNK,
    }
}

fn options(vault: &Vault) -> Options {
    Options {
        known_points: None,
        now_unix_ms: NOW,
        dry_run: false,
        parallel: 4,
        scratch_dir: vault.scratch.path().to_path_buf(),
    }
}

async fn consolidate_with(vault: &Vault, options: &Options) -> DiskSummary {
    consolidate_disk(vault.storage.clone(), &vault.keyring, vault.disk_id, &policy(), options)
        .await
        .unwrap()
}

async fn consolidate(vault: &Vault, storage: Arc<dyn ObjectStorage>) -> anyhow::Result<DiskSummary> {
    consolidate_disk(storage, &vault.keyring, vault.disk_id, &policy(), &options(vault)).await
}

/// The seqs of the points in storage.
async fn point_seqs(vault: &Vault) -> Vec<u64> {
    let mut seqs: Vec<u64> = list_all(&*vault.storage, &ObjectName::disk_prefix(vault.disk_id, "points/"))
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match ObjectName::parse(&m.name) {
            Ok(ObjectName::Point { seq, .. }) => Some(seq),
            _ => None,
        })
        .collect();
    seqs.sort();
    seqs
}

async fn restore(vault: &Vault, seq: u64) -> anyhow::Result<Vec<u8>> {
    let file = tempfile::tempfile().unwrap();
    file.set_len(DISK_BYTES).unwrap();
    ferry_vault::restore::restore_into(
        vault.storage.clone(),
        &vault.keyring,
        &vault.descriptor,
        seq,
        &file,
        4,
        |_| {},
    )
    .await?;
    let mut image = vec![0u8; DISK_BYTES as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut image, 0).unwrap();
    Ok(image)
}

/// Every point still in storage restores equal to the model.
async fn every_point_restores(vault: &Vault, when: &str) {
    for seq in point_seqs(vault).await {
        let image = restore(vault, seq)
            .await
            .unwrap_or_else(|e| panic!("{when}: point at seq {seq} does not restore: {e:#}"));
        assert!(
            image == vault.model[&seq],
            "{when}: point at seq {seq} restores different bytes"
        );
    }
}

async fn names_under(vault: &Vault, kind: &str) -> Vec<String> {
    list_all(&*vault.storage, &ObjectName::disk_prefix(vault.disk_id, kind))
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect()
}

/// What the policy keeps of the model: the last 3 h, app points of the last 24 h, the
/// newest crash point of each 6 h interval of the last 24 h.
fn expected_kept() -> Vec<u64> {
    let mut kept = Vec::new();
    for seq in 1..=BATCHES {
        let age = NOW - source_time(seq);
        let interval = source_time(seq) / (6 * HOUR_MS);
        let newest_crash_of_interval =
            !(seq + 1..=BATCHES).any(|later| later % 4 != 0 && source_time(later) / (6 * HOUR_MS) == interval);
        let keep = age <= 3 * HOUR_MS || (age <= 24 * HOUR_MS && (seq % 4 == 0 || newest_crash_of_interval));
        if keep {
            kept.push(seq);
        }
    }
    kept
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidation_keeps_what_the_policy_keeps_and_frees_the_rest() {
    let vault = vault().await;
    every_point_restores(&vault, "before").await;
    let key = vault.keyring.disk_key(vault.disk_id);

    // A pin on an old point holds the base back and is reported.
    records::pin(
        &*vault.storage,
        &key,
        &Pin {
            format: PLAINTEXT_FORMAT,
            disk_id: vault.disk_id,
            seq: 10,
            bookmark_id: "p10".into(),
            reason: Some("audit".into()),
            pinned_unix_ms: NOW,
        },
    )
    .await
    .unwrap();
    let pinned = consolidate(&vault, vault.storage.clone()).await.unwrap();
    assert_eq!(pinned.base_seq, Some(10));
    assert_eq!(pinned.pinned_beyond_window, ["p10"]);
    let mut expected: Vec<u64> = vec![10];
    expected.extend(expected_kept());
    assert_eq!(point_seqs(&vault).await, expected);
    every_point_restores(&vault, "with the pin").await;

    // Unpinned, the next run moves the base to the oldest point the window keeps.
    assert!(
        records::unpin(&*vault.storage, vault.disk_id, 10, &BookmarkId::new("p10").unwrap())
            .await
            .unwrap()
    );
    let recording = Arc::new(FaultInjecting::new(vault.storage.clone()));
    recording.record_calls();
    let summary = consolidate(&vault, recording.clone()).await.unwrap();
    // This run builds a base and collects the chunks of the one before. It lists the chunks
    // twice (the disk's size before and after), not once more for each step that needs them:
    // on Azure a 1 TB base is 53 LIST calls each time. The log is listed once more, for the
    // new base to replay.
    let listed: Vec<String> = recording
        .take_recorded()
        .into_iter()
        .filter(|(operation, _)| *operation == Operation::List)
        .map(|(_, prefix)| prefix)
        .collect();
    let listings_holding = |kind: &str| {
        let under = ObjectName::disk_prefix(vault.disk_id, kind);
        listed
            .iter()
            .filter(|prefix| under.starts_with(prefix.as_str()))
            .count()
    };
    assert_eq!(listings_holding("base/"), 2, "{listed:#?}");
    assert_eq!(listings_holding("log/"), 3, "{listed:#?}");
    let kept = expected_kept();
    let base = kept[0];
    assert_eq!(summary.base_seq, Some(base));
    assert_eq!(summary.previous_base_seq, Some(10));
    assert_eq!(point_seqs(&vault).await, kept);
    every_point_restores(&vault, "after").await;
    assert!(summary.stored_bytes_after < pinned.stored_bytes_before);

    // Nothing the kept points do not need is left.
    for name in names_under(&vault, "log/").await {
        match ObjectName::parse(&name).unwrap() {
            ObjectName::Log { last_seq, .. } => assert!(last_seq > base, "{name} is at or below the base"),
            other => panic!("{other:?}"),
        }
    }
    let manifests: Vec<String> = names_under(&vault, "base/")
        .await
        .into_iter()
        .filter(|n| n.ends_with("manifest.fseal"))
        .collect();
    assert_eq!(
        manifests,
        [ObjectName::BaseManifest {
            disk_id: vault.disk_id,
            seq: base
        }
        .to_string()]
    );
    let manifest = ferry_vault::base::read_manifest(&*vault.storage, &key, vault.disk_id, base, DISK_BYTES)
        .await
        .unwrap();
    assert_eq!(
        chunk_objects(&vault).await,
        chunks_named(&vault).await,
        "no orphaned chunk, none missing"
    );
    // The base at 10 was built whole; the one after it reuses its unchanged chunks by name.
    assert!(
        manifest
            .chunks
            .values()
            .any(|n| n.contains(&format!("/base/{:020}/", 10))),
        "unchanged chunks are named from the older base"
    );

    // Every dropped point has its pruned record, and a restore of it says so.
    let pruned = records::pruned_names(&*vault.storage, vault.disk_id).await.unwrap();
    let mut pruned_seqs: Vec<u64> = pruned.iter().map(|r| r.seq).collect();
    pruned_seqs.sort();
    let dropped: Vec<u64> = (1..=BATCHES).filter(|s| !kept.contains(s)).collect();
    assert_eq!(pruned_seqs, dropped);
    let error = restore(&vault, dropped[0]).await.unwrap_err().to_string();
    assert!(error.contains("pruned by retention"), "{error}");

    // A second run has nothing left to do.
    let again = consolidate(&vault, vault.storage.clone()).await.unwrap();
    assert_eq!(
        (again.objects_written, again.objects_deleted, again.points_dropped),
        (0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_and_failing_runs_leave_every_point_restorable() {
    let vault = vault().await;
    // Storage failing every 5th, then 7th, ... call: each run stops somewhere else.
    let faulty = Arc::new(FaultInjecting::new(vault.storage.clone()));
    let mut failures = 0;
    for every in 5..40 {
        faulty.fail_every(every, Fault::InternalError, None);
        match consolidate(&vault, faulty.clone()).await {
            Ok(_) => break,
            Err(_) => failures += 1,
        }
        every_point_restores(&vault, &format!("after a run failing every {every}th call")).await;
    }
    assert!(failures > 0, "the faults interrupted no run");
    faulty.clear();

    // Runs cut off after a growing number of milliseconds (a kill at any await point).
    let fresh = vault_with_same_history(&vault).await;
    let mut cut = 0;
    for millis in [1u64, 3, 10, 30, 100] {
        let run = consolidate(&fresh, fresh.storage.clone());
        if tokio::time::timeout(std::time::Duration::from_millis(millis), run)
            .await
            .is_err()
        {
            cut += 1;
        }
        every_point_restores(&fresh, &format!("after a run cut at {millis} ms")).await;
    }
    assert!(cut > 0, "no run was cut short");

    for v in [&vault, &fresh] {
        let done = consolidate(v, v.storage.clone()).await.unwrap();
        assert_eq!(point_seqs(v).await, expected_kept());
        every_point_restores(v, "at the end").await;
        assert_eq!(done.base_seq, Some(expected_kept()[0]));
        // What the interrupted runs left half-written (chunks of a base whose manifest never
        // came) is gone too.
        assert_eq!(
            chunk_objects(v).await,
            chunks_named(v).await,
            "no orphaned chunk, none missing"
        );
    }
}

/// Every chunk object of the disk, by name.
async fn chunk_objects(vault: &Vault) -> Vec<String> {
    let mut chunks: Vec<String> = names_under(vault, "base/")
        .await
        .into_iter()
        .filter(|n| n.contains("/chunk-"))
        .collect();
    chunks.sort();
    chunks
}

/// The chunks the disk's manifests name.
async fn chunks_named(vault: &Vault) -> Vec<String> {
    let key = vault.keyring.disk_key(vault.disk_id);
    let bases = ferry_vault::base::list(&*vault.storage, vault.disk_id).await.unwrap();
    let mut named = std::collections::BTreeSet::new();
    for &seq in &bases.manifests {
        let manifest = ferry_vault::base::read_manifest(&*vault.storage, &key, vault.disk_id, seq, DISK_BYTES)
            .await
            .unwrap();
        named.extend(manifest.chunks.into_values());
    }
    named.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_remember_points_read_only_new_ones_and_decide_the_same() {
    let vault = vault().await;
    let known = Arc::new(KnownPoints::default());
    let remembering = Options {
        known_points: Some(known.clone()),
        ..options(&vault)
    };
    let first = consolidate_with(&vault, &remembering).await;
    assert_eq!(
        first.points_read, BATCHES as usize,
        "nothing known yet: every point is read"
    );
    // The same decisions as a run that remembers nothing, on a vault with the same history.
    let twin = vault_with_same_history(&vault).await;
    let plain = consolidate(&twin, twin.storage.clone()).await.unwrap();
    assert_eq!(plain.points_read, BATCHES as usize);
    assert_eq!(
        (first.base_seq, first.points_kept, first.points_dropped, &first.dropped),
        (plain.base_seq, plain.points_kept, plain.points_dropped, &plain.dropped)
    );

    // The next run reads no point, and finds nothing left to do; what it remembers now is
    // the kept points only (the dropped ones are gone from storage and from memory).
    let second = consolidate_with(&vault, &remembering).await;
    assert_eq!(second.points_read, 0);
    assert_eq!(second.points_kept, first.points_kept);
    assert_eq!((second.objects_written, second.objects_deleted), (0, 0));
    assert_eq!(known.len(), first.points_kept);
    assert_eq!(point_seqs(&vault).await, expected_kept());
    every_point_restores(&vault, "after two remembering runs").await;

    // Past its limit the memory keeps nothing of a disk, and its points are read every run.
    let small = Arc::new(KnownPoints::with_limit(first.points_kept - 1));
    let bounded = Options {
        known_points: Some(small.clone()),
        ..options(&vault)
    };
    for _ in 0..2 {
        assert_eq!(consolidate_with(&vault, &bounded).await.points_read, first.points_kept);
        assert!(small.is_empty());
    }
}

/// A second vault with the same history (the same seeded model).
async fn vault_with_same_history(_: &Vault) -> Vault {
    vault().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ordered_disk_keeps_every_seq_inside_keep_all() {
    // Points every 6th batch; keep_all 3 h. For a write-ordered disk every seq is a crash
    // point, so the base may not pass the newest point older than keep_all: every seq since
    // then stays restorable, not only the points.
    // The window is keep_all itself, so the only point kept is the newest: without the
    // floor the base would go there and the seqs just before it would be lost.
    let vault = vault_with(true, 6).await;
    let tight = DiskPolicy {
        window: Span(3 * 3600),
        ..policy()
    };
    let summary = consolidate_disk(
        vault.storage.clone(),
        &vault.keyring,
        vault.disk_id,
        &tight,
        &options(&vault),
    )
    .await
    .unwrap();
    assert_eq!(summary.points_kept, 1, "{summary:?}");
    let keep_all_from = NOW - 3 * HOUR_MS;
    let floor = (1..=BATCHES)
        .filter(|s| s.is_multiple_of(6) && source_time(*s) < keep_all_from)
        .max()
        .unwrap();
    assert_eq!(summary.base_seq, Some(floor), "{summary:?}");
    for seq in (1..=BATCHES).filter(|s| source_time(*s) >= keep_all_from) {
        assert!(restore(&vault, seq).await.unwrap() == vault.model[&seq], "seq {seq}");
    }
    assert!(restore(&vault, floor).await.unwrap() == vault.model[&floor]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_grows_after_its_base_keeps_restoring() {
    let mut vault = vault().await;
    consolidate(&vault, vault.storage.clone()).await.unwrap();
    // The disk grows by 96 KiB (past its short last chunk); new batches write there too.
    let grown = DISK_BYTES + 96 * 1024;
    vault.descriptor.size_bytes = grown;
    let meta = ObjectName::DiskMeta { disk_id: vault.disk_id };
    put_sealed(
        &*vault.storage,
        &vault.keyring,
        &meta,
        &serde_json::to_vec(&vault.descriptor).unwrap(),
    )
    .await;
    let mut image = vault.model[&BATCHES].clone();
    image.resize(grown as usize, 0);
    let seq = BATCHES + 1;
    let mut batch = BatchEncoder::new(seq, NOW - 60_000);
    batch.write(grown - 8192, &[7u8; 8192]); // the new region
    image[(grown - 8192) as usize..].fill(7);
    batch.bookmark(&Bookmark {
        id: BookmarkId::new(&format!("p{seq}")).unwrap(),
        kind: BookmarkKind::Crash,
        tag: None,
        group_id: None,
    });
    let log = ObjectName::Log {
        disk_id: vault.disk_id,
        epoch: 0,
        first_seq: seq,
        last_seq: seq,
    };
    put_sealed(&*vault.storage, &vault.keyring, &log, &batch.finish()).await;
    let point = RecoveryPoint {
        format: PLAINTEXT_FORMAT,
        disk_id: vault.disk_id,
        seq,
        bookmark_id: format!("p{seq}"),
        kind: "crash".into(),
        tag: None,
        group_id: None,
        source_time_unix_ms: NOW - 60_000,
        created_unix_ms: NOW,
    };
    let name = ObjectName::Point {
        disk_id: vault.disk_id,
        epoch: 0,
        seq,
        bookmark_id: BookmarkId::new(&format!("p{seq}")).unwrap(),
    };
    put_sealed(
        &*vault.storage,
        &vault.keyring,
        &name,
        &serde_json::to_vec(&point).unwrap(),
    )
    .await;
    // A later consolidation, an hour on, moves the base past the resize.
    let later = Options {
        now_unix_ms: NOW + 30 * HOUR_MS,
        ..options(&vault)
    };
    let summary = consolidate_disk(vault.storage.clone(), &vault.keyring, vault.disk_id, &policy(), &later)
        .await
        .unwrap();
    assert_eq!(summary.base_seq, Some(seq), "{summary:?}");
    let key = Arc::new(vault.keyring.disk_key(vault.disk_id));
    let manifest = ferry_vault::base::read_manifest(&*vault.storage, &key, vault.disk_id, seq, grown)
        .await
        .unwrap();
    assert_eq!(manifest.size_bytes, grown);
    // The old base's short last chunk is not reused by name: only a base's last chunk may be
    // shorter than chunk_size, so it is written again at full length.
    let old_last = (DISK_BYTES / CHUNK).to_string();
    assert!(
        manifest.chunks[&old_last].contains(&format!("/base/{seq:020}/")),
        "{}",
        manifest.chunks[&old_last]
    );
    let file = tempfile::tempfile().unwrap();
    file.set_len(grown).unwrap();
    ferry_vault::restore::restore_into(
        vault.storage.clone(),
        &vault.keyring,
        &vault.descriptor,
        seq,
        &file,
        4,
        |_| {},
    )
    .await
    .unwrap();
    let mut restored = vec![0u8; grown as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut restored, 0).unwrap();
    assert!(restored == image, "the grown disk restores different bytes");
    vault.model.insert(seq, image);
}
