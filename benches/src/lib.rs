//! Helpers shared by the benchmarks in `benches/benches/` (see docs/BENCHMARKS.md): a minimal
//! appliance made in-process, an in-process ferryd, CPU accounting, percentiles.

use ferry_config::config::CacheEngine;
use ferry_config::{pki, ApplianceConfig, ApplianceLayout};
use ferry_format::{VaultDescriptor, VaultKey};
use ferry_storage::{LocalTargetConfig, TargetConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loopback port free now (`ferry_harness::procs::free_port`: below the ephemeral range).
pub fn free_port() -> u16 {
    ferry_harness::procs::free_port().expect("a free loopback port")
}

/// Which target an appliance writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchTarget {
    /// A local directory inside the appliance (the embedded default).
    Local,
    /// Change sets dropped (benchmarks only): the pipeline without a storage bottleneck.
    Discard,
}

/// A minimal appliance directory: config, passphrase, vault key, CA and server certificate,
/// and a vault on its target. Returns (data endpoint, management endpoint).
pub fn make_appliance(
    dir: &Path,
    engine: CacheEngine,
    target: BenchTarget,
    edit: impl FnOnce(&mut ApplianceConfig),
) -> (String, String) {
    std::fs::create_dir_all(dir.join("pki")).expect("appliance directory");
    let layout = ApplianceLayout::new(dir);
    let data = format!("127.0.0.1:{}", free_port());
    let management = format!("127.0.0.1:{}", free_port());
    let local = LocalTargetConfig {
        path: "target".into(),
        create: true,
    };
    let mut config = ApplianceConfig::with_target(match target {
        BenchTarget::Local => TargetConfig::Local(local),
        BenchTarget::Discard => TargetConfig::Discard(local),
    });
    config.server.data_listen = data.clone();
    config.server.management_listen = management.clone();
    config.server.metrics_listen = format!("127.0.0.1:{}", free_port());
    config.server.advertised_data_endpoint = data.clone();
    config.cache.engine = engine;
    config.cache.limit_bytes = 8 << 30;
    edit(&mut config);
    let write = |path: std::path::PathBuf, bytes: &[u8]| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("directory");
        std::fs::write(&path, bytes).expect("file written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("mode");
    };
    write(layout.config_file(), config.to_documented_toml().as_bytes());
    write(layout.passphrase_file(), b"bench-passphrase");
    let key = VaultKey::generate().expect("random key");
    write(layout.vault_key_file(), key.to_text().as_bytes());
    write(
        dir.join("target/ferry/v1/vault.json"),
        &VaultDescriptor::create(&key, 0).to_json(),
    );
    let (ca_pem, ca, ca_key) = pki::generate_ca("bench").expect("CA");
    let server = pki::generate_server_cert(&["127.0.0.1".into()], &ca, &ca_key).expect("server certificate");
    write(layout.ca_cert_file(), ca_pem.cert_pem.as_bytes());
    write(layout.ca_key_file(), ca_pem.key_pem.as_bytes());
    write(layout.server_cert_file(), server.cert_pem.as_bytes());
    write(layout.server_key_file(), server.key_pem.as_bytes());
    (data, management)
}

/// Starts ferryd in-process; returns the registered machine's identity and a stop handle.
pub async fn start_ferryd(
    dir: &Path,
    management: &str,
) -> (
    ferry_client::Identity,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dir = dir.to_path_buf();
    let server = tokio::spawn(async move {
        ferryd::daemon::run_until(&dir, async {
            let _ = stopped.await;
        })
        .await
    });
    for _ in 0..250 {
        if server.is_finished() {
            panic!("ferryd stopped during start: {:?}", server.await);
        }
        if let Ok(ferry_client::Registration { identity, .. }) =
            ferry_client::register(management, None, "bench", "bench-passphrase").await
        {
            return (identity, stop, server);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("ferryd did not start");
}

/// User + system CPU seconds of this process.
pub fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Peak resident set size of this process, in MiB (VmHWM in /proc/self/status).
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `p` quantile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// How much to send: under `cargo bench` (a `--bench` argument) 1 GiB, or 256 MiB with
/// `quick`; under `cargo test` (no `--bench`) `tiny`, just to show the harness works.
/// Returns (measuring, bytes).
pub fn bench_size(tiny: usize) -> (bool, usize) {
    let args: Vec<String> = std::env::args().collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let bytes = if !measuring {
        tiny
    } else if args.iter().any(|a| a == "quick") {
        256 << 20
    } else {
        1 << 30
    };
    (measuring, bytes)
}

/// The 2-worker runtime every benchmark runs on (this machine has 2 cores).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Bytes of WRITE data in each benchmark batch.
pub const BATCH_PAYLOAD: usize = 1 << 20;

/// Creates disk number `index` for `identity`, then sends `count` batches of 1 MiB cut from
/// `pool` with `window` in flight on the disk's own connection. `on_ack(disk, seq, latency)`
/// runs as each batch is acknowledged (latency: request sent to 200). Returns the disk and
/// the task sending its batches.
pub async fn stream_disk(
    identity: &ferry_client::Identity,
    index: usize,
    pool: Arc<Vec<u8>>,
    count: u64,
    window: usize,
    on_ack: Arc<dyn Fn(uuid::Uuid, u64, Duration) + Send + Sync>,
) -> (uuid::Uuid, tokio::task::JoinHandle<()>) {
    let client = identity.data_client().expect("data client");
    let disk = uuid::Uuid::new_v4();
    let spec = ferry_client::DiskSpec {
        name: format!("d{index}"),
        size_bytes: 1 << 30,
        sector_size: 4096,
        write_ordered: false,
        reprotect_from: None,
    };
    client.put_disk(disk, &spec).await.expect("disk created");
    let sender = Arc::new(ferry_client::BatchSender::new(
        client,
        disk,
        window,
        ferry_client::RetryPolicy::default(),
    ));
    let task = tokio::spawn(async move {
        let mut in_flight = futures::stream::FuturesUnordered::new();
        for seq in 1..=count {
            let offset = ((seq as usize * 7 + index * 131) * 4096 * 37) % (pool.len() - BATCH_PAYLOAD);
            let mut encoder = ferry_format::BatchEncoder::with_capacity(seq, seq, BATCH_PAYLOAD + 16);
            encoder.write(
                (seq % 1000) * BATCH_PAYLOAD as u64,
                &pool[offset..offset + BATCH_PAYLOAD],
            );
            let batch = encoder.finish();
            let (sender, on_ack) = (sender.clone(), on_ack.clone());
            in_flight.push(async move {
                let sent = Instant::now();
                sender.send_one(seq, batch).await.expect("batch stored");
                on_ack(disk, seq, sent.elapsed());
            });
            if in_flight.len() >= window {
                futures::StreamExt::next(&mut in_flight).await;
            }
        }
        while futures::StreamExt::next(&mut in_flight).await.is_some() {}
    });
    (disk, task)
}
