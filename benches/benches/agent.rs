//! The agent's initial replication, next to the disk's own read speed and ferryd's ingest,
//! measured in one run on one machine:
//!
//! 1. disk read: the image read cold with O_DIRECT in 1 MiB requests (what the disk gives);
//! 2. BLAKE3: one core hashing the same bytes in 64 KiB blocks, in memory (the agent's
//!    per-block cost);
//! 3. agent: `ferry-agent run --once` in-process against an in-process ferryd (local target)
//!    on the same image, its page cache dropped first: read, hash, batch, send over TLS,
//!    durable in ferryd's cache (the pass's own clock, bookmark included);
//! 4. ingest peer: the protocol client sending the same number of bytes as 1 MiB batches
//!    (window 4) from memory (the ingest benchmark's shape), once ferryd has uploaded the
//!    agent's data: ferryd's ceiling here. In both 3 and 4 ferryd's pipeline seals and stores
//!    behind the ingest, on the same cores.
//!
//! Agent and ferryd share this machine's 2 cores (deployed, they run on different machines).
//! Run: `cargo bench -p ferry-benches --bench agent` (`-- quick` for 256 MiB; under
//! `cargo test` one tiny pass proves it works).

use ferry_agent::config::{AgentConfig, DiskConfig};
use ferry_agent::replicate::{self, RunOptions};
use ferry_benches::{
    bench_size, cpu_seconds, make_appliance, runtime, start_ferryd, stream_disk, BenchTarget, BATCH_PAYLOAD,
};
use ferry_config::config::CacheEngine;
use ferry_harness::datagen::{DataGenerator, Mix};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn drop_page_cache(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    // The file was fsync'd, so its pages are clean and can go.
    let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed);
}

/// Cold sequential read with O_DIRECT, 1 MiB at a time: MB/s.
fn disk_read_mb_per_s(path: &Path, bytes: usize) -> f64 {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let mut raw = vec![0u8; (1 << 20) + 4096];
    let start = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[start..start + (1 << 20)];
    let started = Instant::now();
    let mut offset = 0;
    while offset < bytes {
        file.read_exact_at(buf, offset as u64).unwrap();
        offset += buf.len();
    }
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
}

fn blake3_mb_per_s(path: &Path, bytes: usize) -> f64 {
    let data = std::fs::read(path).unwrap();
    let started = Instant::now();
    let mut sink = 0u8;
    for block in data[..bytes].chunks(64 << 10) {
        sink ^= blake3::hash(block).as_bytes()[0];
    }
    std::hint::black_box(sink);
    bytes as f64 / 1e6 / started.elapsed().as_secs_f64()
}

async fn run(bytes: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let (_data, management) = make_appliance(tmp.path(), CacheEngine::Auto, BenchTarget::Local, |_| {});
    let (identity, stop, server) = start_ferryd(tmp.path(), &management).await;

    let image = tmp.path().join("disk.img");
    {
        let file = std::fs::File::create(&image).unwrap();
        let mut generator = DataGenerator::new(3, Mix::MIXED);
        let mut chunk = vec![0u8; 4 << 20];
        let mut offset = 0;
        while offset < bytes {
            let len = chunk.len().min(bytes - offset);
            generator.fill(&mut chunk[..len]);
            file.write_all_at(&chunk[..len], offset as u64).unwrap();
            offset += len;
        }
        file.sync_all().unwrap();
    }
    drop_page_cache(&image);
    let disk_read = disk_read_mb_per_s(&image, bytes);
    let hash = blake3_mb_per_s(&image, bytes);
    drop_page_cache(&image);

    let state_dir = tmp.path().join("agent");
    ferry_agent::identity::save(&state_dir, &identity, "bench", &management).unwrap();
    let config = AgentConfig {
        state_dir,
        disks: vec![DiskConfig {
            path: image.clone(),
            name: None,
            identity: None,
            sector_size: None,
            snapshot: Default::default(),
            reprotect_from: None,
        }],
        scan: Default::default(),
        bookmarks: Default::default(),
        quiesce: Default::default(),
        transfer: Default::default(),
    };
    config.validate().unwrap();
    let cpu_before = cpu_seconds();
    let options = RunOptions {
        once: true,
        app: false,
        once_retry_for: std::time::Duration::ZERO,
    };
    let reports = replicate::run(config, options, std::future::pending()).await.unwrap();
    let agent_cpu = cpu_seconds() - cpu_before;
    let pass = &reports[0];
    assert_eq!(pass.scanned_bytes as usize, bytes);
    let agent = bytes as f64 / 1e6 / pass.seconds;
    // Let the pipeline seal and store the agent's data first, so the peer has the cores to itself.
    let client = identity.data_client().unwrap();
    loop {
        let info = client.get_disk(pass.disk_id).await.unwrap();
        if info.uploaded_seq >= info.durable_seq {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut pool = vec![0u8; 64 << 20];
    DataGenerator::new(7, Mix::MIXED).fill(&mut pool);
    let count = (bytes / BATCH_PAYLOAD).max(1) as u64;
    let on_ack: Arc<dyn Fn(uuid::Uuid, u64, Duration) + Send + Sync> = Arc::new(|_, _, _| {});
    let started = Instant::now();
    let (_, stream) = stream_disk(&identity, 0, Arc::new(pool), count, 4, on_ack).await;
    stream.await.unwrap();
    let ingest = (count as usize * BATCH_PAYLOAD) as f64 / 1e6 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    println!("image {} MiB of Mix::MIXED data (zstd-1 ratio 2.37)", bytes >> 20);
    println!("  disk read (O_DIRECT, 1 MiB, cold)     {disk_read:>7.0} MB/s");
    println!("  BLAKE3, 64 KiB blocks, one core       {hash:>7.0} MB/s");
    println!(
        "  agent initial copy                    {agent:>7.0} MB/s  = {:.2} of the disk read, {:.2} of ingest  (CPU {:.2} s/GB, agent and ferryd)",
        agent / disk_read,
        agent / ingest,
        agent_cpu / (bytes as f64 / 1e9)
    );
    println!("  ferryd ingest, 1 MiB batches, window 4 {ingest:>7.0} MB/s");
}

fn main() {
    let (_, bytes) = bench_size(16 << 20);
    runtime().block_on(run(bytes));
}
