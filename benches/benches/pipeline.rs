//! End to end, ingest to storage: D disks send 1 MiB batches of mixed data (zstd-1 ratio
//! 2.37) over their own HTTPS connections until 1 GiB is acknowledged; ferryd caches them,
//! cuts change sets (default 8 MiB, 1 s), seals them (zstd 1 + AES-256-GCM) and uploads them.
//! Reports MB/s to storage (first send until everything is in storage), the ack-to-storage
//! lag p50/p99 (per batch: when it was acknowledged to when `uploaded_seq` passed it, polled
//! every 10 ms), and CPU s/GB of this process (ferryd and the senders share the 2 cores).
//!
//! Targets: the local directory inside the appliance (the same file system as the cache), and
//! the discard target (change sets dropped: the pipeline alone; reported as such).
//! Run: `cargo bench -p ferry-benches --bench pipeline` (under `cargo test`: one tiny pass).

use ferry_benches::{
    bench_size, cpu_seconds, make_appliance, peak_rss_mib, percentile, runtime, start_ferryd, stream_disk, BenchTarget,
    BATCH_PAYLOAD,
};
use ferry_config::config::CacheEngine;
use ferry_harness::datagen::{DataGenerator, Mix};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WINDOW: usize = 4;
const DISKS: usize = 8;

async fn run(target: BenchTarget, total_bytes: usize) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (_data, management) = make_appliance(tmp.path(), CacheEngine::Auto, target, |_| {});
    let (identity, stop, server) = start_ferryd(tmp.path(), &management).await;
    let mut pool = vec![0u8; 64 << 20];
    DataGenerator::new(11, Mix::MIXED).fill(&mut pool);
    let pool = Arc::new(pool);
    let per_disk = (total_bytes / BATCH_PAYLOAD / DISKS).max(1) as u64;
    let acked: Arc<Mutex<HashMap<(Uuid, u64), Instant>>> = Arc::default();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let record = acked.clone();
    let on_ack: Arc<dyn Fn(Uuid, u64, Duration) + Send + Sync> = Arc::new(move |disk, seq, _| {
        record.lock().unwrap().insert((disk, seq), Instant::now());
    });
    let mut disks = Vec::new();
    let mut streams = Vec::new();
    for d in 0..DISKS {
        let (disk, stream) = stream_disk(&identity, d, pool.clone(), per_disk, WINDOW, on_ack.clone()).await;
        disks.push(disk);
        streams.push(stream);
    }
    // Poll uploaded_seq; note when each batch reached storage.
    let client = identity.data_client().unwrap();
    let mut uploaded_at: HashMap<(Uuid, u64), Instant> = HashMap::new();
    let mut uploaded: HashMap<Uuid, u64> = HashMap::new();
    let mut ingest_done = None;
    loop {
        if ingest_done.is_none() && streams.iter().all(|s| s.is_finished()) {
            ingest_done = Some(started.elapsed());
        }
        let mut all = true;
        for disk in &disks {
            let seq = client.get_disk(*disk).await.unwrap().uploaded_seq;
            let before = uploaded.insert(*disk, seq).unwrap_or(0);
            let now = Instant::now();
            for s in before + 1..=seq {
                uploaded_at.insert((*disk, s), now);
            }
            all &= seq >= per_disk;
        }
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    for stream in streams {
        stream.await.unwrap();
    }
    let mut lags: Vec<Duration> = {
        let acked = acked.lock().unwrap();
        uploaded_at
            .iter()
            .filter_map(|(k, at)| acked.get(k).map(|a| at.saturating_duration_since(*a)))
            .collect()
    };
    lags.sort();
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let bytes = (per_disk as usize * DISKS * BATCH_PAYLOAD) as f64;
    format!(
        "{:<8} target: {:>6.0} MB/s to storage ({:>6.0} MB/s ingest)  lag ack->storage p50 {:>6.0} ms  p99 {:>6.0} ms  CPU {:>5.2} s/GB  peak RSS {:>4.0} MiB  ({} MiB in {:.2} s)",
        match target {
            BenchTarget::Local => "local",
            BenchTarget::Discard => "discard",
        },
        bytes / elapsed.as_secs_f64() / 1e6,
        bytes / ingest_done.unwrap_or(elapsed).as_secs_f64() / 1e6,
        percentile(&lags, 0.5).as_secs_f64() * 1e3,
        percentile(&lags, 0.99).as_secs_f64() * 1e3,
        cpu / (bytes / 1e9),
        peak_rss_mib(),
        (bytes as usize) >> 20,
        elapsed.as_secs_f64(),
    )
}

fn main() {
    let (_, total) = bench_size(16 << 20);
    let runtime = runtime();
    for target in [BenchTarget::Local, BenchTarget::Discard] {
        println!("{}", runtime.block_on(run(target, total)));
    }
}
