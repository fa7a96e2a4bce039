//! Ingest into the cache, end to end over real TLS: D disks, each on its own HTTPS (HTTP/2)
//! connection with a window of 4 batches in flight, 1 MiB WRITE batches, until 1 GiB is
//! durable. Reports payload MB/s, ack latency p50/p99 (request sent to 200, which means
//! fdatasync'd), and CPU seconds per GB of this process (server and clients together: on a
//! 2-core machine they share the cores, as they would in any single-box measurement).
//!
//! ferryd runs in-process (`ferryd::daemon::run_until`) on a fresh appliance directory under
//! $TMPDIR per run, so its cache sits on that file system (O_DIRECT needs a real one, not tmpfs).
//! Run: `cargo bench -p ferry-benches --bench ingest` (`-- quick` for a 256 MiB pass; under
//! `cargo test` it runs one tiny pass to prove it works).

use ferry_benches::{
    bench_size, cpu_seconds, make_appliance, percentile, runtime, start_ferryd, stream_disk, BenchTarget, BATCH_PAYLOAD,
};
use ferry_config::config::CacheEngine;
use ferry_harness::datagen::{DataGenerator, Mix};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WINDOW: usize = 4;

async fn run(engine: CacheEngine, disks: usize, total_bytes: usize) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let (_data, management) = make_appliance(tmp.path(), engine, BenchTarget::Local, |_| {});
    let (identity, stop, server) = start_ferryd(tmp.path(), &management).await;
    let mut pool = vec![0u8; 64 << 20];
    DataGenerator::new(7, Mix::MIXED).fill(&mut pool);
    let pool = Arc::new(pool);
    let per_disk = (total_bytes / BATCH_PAYLOAD / disks).max(1);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(per_disk * disks)));
    let record = latencies.clone();
    let on_ack: Arc<dyn Fn(Uuid, u64, Duration) + Send + Sync> =
        Arc::new(move |_, _, latency| record.lock().unwrap().push(latency));
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut streams = Vec::new();
    for d in 0..disks {
        streams.push(
            stream_disk(&identity, d, pool.clone(), per_disk as u64, WINDOW, on_ack.clone())
                .await
                .1,
        );
    }
    for stream in streams {
        stream.await.unwrap();
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_before;
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let bytes = (per_disk * disks * BATCH_PAYLOAD) as f64;
    format!(
        "{:<9} disks {:>3}: {:>7.0} MB/s  ack p50 {:>7.2} ms  p99 {:>7.2} ms  CPU {:>5.2} s/GB  ({} MiB in {:.2} s)",
        match engine {
            CacheEngine::IoUring => "io_uring",
            CacheEngine::Psync => "psync",
            CacheEngine::Auto => "auto",
        },
        disks,
        bytes / elapsed.as_secs_f64() / 1e6,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        cpu / (bytes / 1e9),
        (bytes as usize) >> 20,
        elapsed.as_secs_f64(),
    )
}

fn main() {
    let (measuring, total) = bench_size(8 << 20);
    let runtime = runtime();
    let cases: &[(CacheEngine, usize)] = if measuring {
        &[
            (CacheEngine::IoUring, 1),
            (CacheEngine::IoUring, 8),
            (CacheEngine::IoUring, 64),
            (CacheEngine::Psync, 1),
            (CacheEngine::Psync, 8),
            (CacheEngine::Psync, 64),
        ]
    } else {
        &[(CacheEngine::IoUring, 2), (CacheEngine::Psync, 2)]
    };
    for (engine, disks) in cases {
        println!("{}", runtime.block_on(run(*engine, *disks, total)));
    }
}
