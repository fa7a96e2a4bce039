//! Restore time as history grows, with and without consolidation (issue 12's goal: flat).
//!
//! One disk (1 GiB; 16 MiB under `cargo test`) gets an initial copy, then rounds of 10% churn
//! (64 KiB writes of mixed data at random places, ~1 MiB batches, ~8 MiB change sets sealed
//! with zstd 1 + AES-256-GCM exactly as ferryd writes them), one recovery point per round, an
//! hour of source time apart. The same objects go to two local-directory vaults: one never
//! consolidated, one consolidated after every round (window 3 h, keep_all 1 h: the base
//! follows three rounds behind). After rounds 10, 50 and 100 the latest point is restored from
//! both (8 downloads ahead, into a sparse file; twice each, in turns, keeping the faster) and
//! the images compared. Reports restore seconds and CPU seconds per vault, the 100-round / 10-round ratio, stored bytes, and consolidation's own
//! MB/s (disk bytes covered by the bases it wrote per second) and CPU share (this process's
//! CPU time over wall time while it ran; nothing else runs then).
//! Run: `cargo bench -p ferry-benches --bench retention` (under `cargo test`: a tiny pass;
//! `FERRY_BENCH_ROUNDS=10` for other checkpoints; `FERRY_BENCH_DROP_CACHES=1`, as root, drops
//! the page cache before each checkpoint's restores).

use bytes::Bytes;
use ferry_benches::{cpu_seconds, runtime};
use ferry_config::retention::{DiskPolicy, Span};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{DiskDescriptor, RecoveryPoint, PLAINTEXT_FORMAT};
use ferry_format::{BatchEncoder, Bookmark, BookmarkId, BookmarkKind, Keyring, VaultDescriptor, VaultKey};
use ferry_harness::datagen::{DataGenerator, Mix};
use ferry_storage::{LocalTargetConfig, ObjectStorage, RetryPolicy, TargetConfig};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HOUR_MS: u64 = 3_600_000;
const WRITE_BYTES: usize = 64 << 10;
const BATCH_WRITES: usize = 16;
const CHANGE_SET_BATCHES: usize = 8;
const START_MS: u64 = 1_800_000_000_000;

struct Vault {
    storage: Arc<dyn ObjectStorage>,
    dir: tempfile::TempDir,
}

async fn vault(descriptor: &VaultDescriptor) -> Vault {
    let dir = tempfile::tempdir_in(std::env::var("FERRY_BENCH_DIR").unwrap_or_else(|_| "/tmp".into())).unwrap();
    let storage = ferry_storage::open_target(
        &TargetConfig::Local(LocalTargetConfig {
            path: dir.path().join("target"),
            create: true,
        }),
        RetryPolicy::default(),
    )
    .await
    .unwrap();
    storage
        .put(ferry_format::names::VAULT_JSON, Bytes::from(descriptor.to_json()))
        .await
        .unwrap();
    Vault { storage, dir }
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    ferry_harness::procs::dir_bytes(path).unwrap_or(0)
}

/// Writes one sealed object to both vaults (sealed once: the same vault key).
async fn put_both(vaults: &[&Vault], keyring: &Keyring, name: &ObjectName, plain: &[u8]) {
    let sealed = Bytes::from(ferry_format::seal::seal(&keyring.key_for(name), &name.to_string(), plain, 1).unwrap());
    for vault in vaults {
        vault.storage.put(&name.to_string(), sealed.clone()).await.unwrap();
    }
}

struct Disk {
    id: Uuid,
    size: u64,
    seq: u64,
    rng: u64,
    pool: Vec<u8>,
}

impl Disk {
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// `bytes` of writes (at random 64 KiB-aligned places, or in order for the initial copy)
    /// as change sets to both vaults, ending with a point at `source_ms`. Returns its seq.
    async fn round(&mut self, vaults: &[&Vault], keyring: &Keyring, bytes: u64, in_order: bool, source_ms: u64) -> u64 {
        let writes = (bytes as usize).div_ceil(WRITE_BYTES);
        let slots = self.size as usize / WRITE_BYTES;
        let (mut object, mut first_seq, mut batches_in_object) = (Vec::new(), self.seq + 1, 0);
        let mut written = 0;
        while written < writes {
            self.seq += 1;
            let mut batch = BatchEncoder::new(self.seq, source_ms);
            for _ in 0..BATCH_WRITES.min(writes - written) {
                let slot = if in_order {
                    written % slots
                } else {
                    self.next() as usize % slots
                };
                let from = self.next() as usize % (self.pool.len() - WRITE_BYTES);
                batch.write((slot * WRITE_BYTES) as u64, &self.pool[from..from + WRITE_BYTES]);
                written += 1;
            }
            let last = written >= writes;
            if last {
                batch.bookmark(&Bookmark {
                    id: BookmarkId::new(&format!("r{}", self.seq)).unwrap(),
                    kind: BookmarkKind::Crash,
                    tag: None,
                    group_id: None,
                });
            }
            object.extend_from_slice(&batch.finish());
            batches_in_object += 1;
            if batches_in_object == CHANGE_SET_BATCHES || last {
                let name = ObjectName::Log {
                    disk_id: self.id,
                    epoch: 0,
                    first_seq,
                    last_seq: self.seq,
                };
                put_both(vaults, keyring, &name, &object).await;
                object.clear();
                first_seq = self.seq + 1;
                batches_in_object = 0;
            }
        }
        let point = RecoveryPoint {
            format: PLAINTEXT_FORMAT,
            disk_id: self.id,
            seq: self.seq,
            bookmark_id: format!("r{}", self.seq),
            kind: "crash".into(),
            tag: None,
            group_id: None,
            source_time_unix_ms: source_ms,
            created_unix_ms: source_ms,
        };
        let name = ObjectName::Point {
            disk_id: self.id,
            epoch: 0,
            seq: self.seq,
            bookmark_id: BookmarkId::new(&point.bookmark_id).unwrap(),
        };
        put_both(vaults, keyring, &name, &serde_json::to_vec(&point).unwrap()).await;
        self.seq
    }
}

/// One restore: wall seconds, this process's CPU seconds, and the image's BLAKE3.
struct Restore {
    secs: f64,
    cpu: f64,
    hash: Vec<u8>,
}

/// Restores `seq` into a sparse file.
async fn restore(vault: &Vault, keyring: &Keyring, descriptor: &DiskDescriptor, seq: u64) -> Restore {
    let file = tempfile::tempfile_in(vault.dir.path()).unwrap();
    file.set_len(descriptor.size_bytes).unwrap();
    let (started, cpu) = (Instant::now(), cpu_seconds());
    ferry_vault::restore::restore_into(vault.storage.clone(), keyring, descriptor, seq, &file, 8, |_| {})
        .await
        .unwrap();
    file.sync_all().unwrap();
    let (secs, cpu) = (started.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let mut hasher = blake3::Hasher::new();
    let mut buffer = vec![0u8; 4 << 20];
    let mut at = 0;
    while at < descriptor.size_bytes {
        let n = buffer.len().min((descriptor.size_bytes - at) as usize);
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buffer[..n], at).unwrap();
        hasher.update(&buffer[..n]);
        at += n as u64;
    }
    Restore {
        secs,
        cpu,
        hash: hasher.finalize().as_bytes().to_vec(),
    }
}

/// The faster of two restores of each vault, taken in turns (plain, consolidated, plain,
/// consolidated): the first writes into memory the VM has not touched since boot pay the
/// hypervisor's first-touch faults (they showed as 3x the CPU of a later, equal write in
/// `copy_folio_from_iter_atomic`), so a single restore each measured whichever came first as
/// the slower one.
async fn restore_both(
    plain: &Vault,
    consolidated: &Vault,
    keyring: &Keyring,
    descriptor: &DiskDescriptor,
    seq: u64,
) -> (Restore, Restore) {
    let faster = |a: Restore, b: Restore| if b.secs < a.secs { b } else { a };
    // FERRY_BENCH_DROP_CACHES=1 (root): every checkpoint starts from the same memory state,
    // and the first restore of each vault reads it cold, as a restore from remote storage
    // does; without it, how full the page cache is by then weighs on the later checkpoints.
    if std::env::var("FERRY_BENCH_DROP_CACHES").as_deref() == Ok("1") {
        std::process::Command::new("sync").status().expect("sync runs");
        std::fs::write("/proc/sys/vm/drop_caches", "1").expect("FERRY_BENCH_DROP_CACHES=1 needs root");
    }
    let (mut best_plain, mut best_consolidated) = (None::<Restore>, None::<Restore>);
    for _ in 0..2 {
        let p = restore(plain, keyring, descriptor, seq).await;
        let c = restore(consolidated, keyring, descriptor, seq).await;
        assert_eq!(p.hash, c.hash, "the two vaults restore different images");
        best_plain = Some(match best_plain {
            Some(best) => faster(best, p),
            None => p,
        });
        best_consolidated = Some(match best_consolidated {
            Some(best) => faster(best, c),
            None => c,
        });
    }
    (
        best_plain.expect("two restores"),
        best_consolidated.expect("two restores"),
    )
}

async fn run(disk_bytes: u64, checkpoints: &[u64]) {
    let key = VaultKey::generate().unwrap();
    let descriptor = VaultDescriptor::create(&key, START_MS);
    let keyring = descriptor.open(&key).unwrap();
    let (plain, consolidated) = (vault(&descriptor).await, vault(&descriptor).await);
    let both = [&plain, &consolidated];
    let mut pool = vec![0u8; 32 << 20];
    DataGenerator::new(12, Mix::MIXED).fill(&mut pool);
    let mut disk = Disk {
        id: Uuid::new_v4(),
        size: disk_bytes,
        seq: 0,
        rng: 0x9e37_79b9_7f4a_7c15,
        pool,
    };
    let disk_descriptor = DiskDescriptor {
        format: PLAINTEXT_FORMAT,
        disk_id: disk.id,
        machine_id: Uuid::new_v4(),
        name: "bench".into(),
        size_bytes: disk_bytes,
        sector_size: 512,
        write_ordered: false,
        created_unix_ms: START_MS,
        reprotect_from: None,
    };
    put_both(
        &both,
        &keyring,
        &ObjectName::DiskMeta { disk_id: disk.id },
        &serde_json::to_vec(&disk_descriptor).unwrap(),
    )
    .await;
    let policy = DiskPolicy {
        window: Span(3 * 3600),
        keep_all: Span(3600),
        crash_every: Span(0),
        app_every: Span(0),
        chunk_bytes: 4 << 20,
    };
    let scratch = tempfile::tempdir_in(consolidated.dir.path()).unwrap();
    disk.round(&both, &keyring, disk_bytes, true, START_MS).await;
    let (mut consolidation_secs, mut consolidation_cpu, mut consolidated_bytes) = (0.0, 0.0, 0u64);
    let mut first_ratio = None;
    println!(
        "disk {} MiB, 10% churn per round; restore of the latest point (s) and stored MiB",
        disk_bytes >> 20
    );
    for round in 1..=*checkpoints.iter().max().unwrap() {
        let now = START_MS + round * HOUR_MS;
        disk.round(&both, &keyring, disk_bytes / 10, false, now).await;
        let options = ferry_vault::retention::consolidate::Options {
            known_points: None,
            now_unix_ms: now + 60_000,
            dry_run: false,
            parallel: 4,
            scratch_dir: scratch.path().to_path_buf(),
        };
        let (cpu, started) = (cpu_seconds(), Instant::now());
        let summary = ferry_vault::retention::consolidate::consolidate_disk(
            consolidated.storage.clone(),
            &keyring,
            disk.id,
            &policy,
            &options,
        )
        .await
        .unwrap();
        consolidation_secs += started.elapsed().as_secs_f64();
        consolidation_cpu += cpu_seconds() - cpu;
        if summary.base_seq != summary.previous_base_seq {
            consolidated_bytes += disk_bytes;
        }
        if checkpoints.contains(&round) {
            let (p, c) = restore_both(&plain, &consolidated, &keyring, &disk_descriptor, disk.seq).await;
            let ratio = *first_ratio.get_or_insert(c.secs);
            println!(
                "  after {round:>3} rounds: consolidated {:>6.2} s (CPU {:.2} s; {:.2}x of the first checkpoint), {:>6} MiB stored; \
                 never consolidated {:>6.2} s (CPU {:.2} s), {:>6} MiB stored",
                c.secs,
                c.cpu,
                c.secs / ratio,
                dir_bytes(consolidated.dir.path()) >> 20,
                p.secs,
                p.cpu,
                dir_bytes(plain.dir.path()) >> 20,
            );
        }
    }
    println!(
        "  consolidation: {:.0} MB/s of disk covered by new bases, CPU {:.0}% of one core while it ran ({:.1} s in all)",
        consolidated_bytes as f64 / consolidation_secs / 1e6,
        consolidation_cpu / consolidation_secs * 100.0,
        consolidation_secs
    );
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let runtime = runtime();
    // FERRY_BENCH_ROUNDS=10,20 measures at other checkpoints (a quicker look).
    let checkpoints: Vec<u64> = std::env::var("FERRY_BENCH_ROUNDS")
        .ok()
        .map(|list| list.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .filter(|list: &Vec<u64>| !list.is_empty())
        .unwrap_or_else(|| vec![10, 50, 100]);
    if measuring {
        runtime.block_on(run(1 << 30, &checkpoints));
    } else {
        runtime.block_on(run(16 << 20, &[2, 4, 6]));
    }
}
