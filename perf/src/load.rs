//! The simulated agents: each machine registers and keeps one HTTP/2 connection; each disk
//! sends batches of random writes (sizes from the scenario's distribution, data cut from a
//! generated pool of the chosen compressibility) with a window in flight, at a fixed rate,
//! in bursts, or as fast as the window allows, with a bookmark every so often. Every 503 or
//! lost connection is retried (counted by reason). Memory: at most `window` batches in flight
//! per disk, plus one 64 MiB data pool.

use anyhow::Context;
use bytes::Bytes;
use ferry_client::{ClientError, DataClient, DiskSpec};
use ferry_format::bookmark::{Bookmark, BookmarkId, BookmarkKind};
use ferry_format::BatchEncoder;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::datagen::{DataGenerator, Rng};
use crate::scenario::Scenario;
use ferry_client::histogram::Histogram;

/// Most attempts for one batch before the run fails.
const MAX_ATTEMPTS: u32 = 200;

#[derive(Default)]
pub struct Counters {
    /// WRITE data bytes acknowledged (durable in ferryd's cache).
    pub acked_bytes: AtomicU64,
    pub acked_batches: AtomicU64,
    /// WRITE data bytes of batches ferryd reports uploaded (`uploaded_seq`).
    pub uploaded_bytes: AtomicU64,
    pub ack_latency: Histogram,
    /// Acknowledged to uploaded, per batch (resolution: the poll interval).
    pub lag: Histogram,
    pub retries: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn retry(&self, reason: String) {
        *self
            .retries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// One simulated disk, shared by its sender and the sampler.
pub struct Disk {
    pub disk_id: Uuid,
    pub client: DataClient,
    /// Acknowledged batches not yet seen uploaded: seq -> (ack time, data bytes).
    pending: Mutex<BTreeMap<u64, (Instant, u64)>>,
}

impl Disk {
    /// Takes in ferryd's `uploaded_seq`: records the lag and bytes of what it now covers.
    /// Returns the largest lag seen in this call.
    pub fn uploaded(&self, uploaded_seq: u64, counters: &Counters) -> Option<Duration> {
        let now = Instant::now();
        let done = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let rest = pending.split_off(&(uploaded_seq + 1));
            std::mem::replace(&mut *pending, rest)
        };
        let mut worst = None;
        for (_, (acked, bytes)) in done {
            let lag = now.saturating_duration_since(acked);
            counters.lag.record(lag);
            counters.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
            worst = worst.max(Some(lag));
        }
        worst
    }

    pub fn drained(&self) -> bool {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// Registers the machines and creates their disks.
pub async fn setup(scenario: &Scenario, management: &str, passphrase: &str) -> anyhow::Result<Vec<Arc<Disk>>> {
    let machines: Vec<anyhow::Result<DataClient>> = futures::stream::iter(0..scenario.machines)
        .map(|m| async move {
            let registration = ferry_client::register(management, None, &format!("perf-{m}"), passphrase)
                .await
                .with_context(|| format!("registering simulated machine {m} at {management}"))?;
            Ok(registration.identity.data_client()?)
        })
        .buffered(16)
        .collect()
        .await;
    let mut disks = Vec::new();
    for (m, client) in machines.into_iter().enumerate() {
        let client = client?;
        for d in 0..scenario.disks_per_machine {
            let disk_id = Uuid::new_v4();
            let spec = DiskSpec {
                name: format!("perf-{m}-{d}"),
                size_bytes: scenario.disk_size_bytes,
                sector_size: 4096,
                write_ordered: true,
                reprotect_from: None,
            };
            client.put_disk(disk_id, &spec).await.context("creating a disk")?;
            disks.push(Arc::new(Disk {
                disk_id,
                client: client.clone(),
                pending: Mutex::new(BTreeMap::new()),
            }));
        }
    }
    Ok(disks)
}

/// What every disk sender shares.
pub struct LoadShared {
    pub scenario: Scenario,
    pub pool: Arc<Vec<u8>>,
    pub counters: Arc<Counters>,
    pub started: Instant,
    pub stop: AtomicBool,
}

impl LoadShared {
    pub fn new(scenario: Scenario, counters: Arc<Counters>) -> anyhow::Result<Arc<Self>> {
        let mut pool = vec![0u8; 64 << 20];
        DataGenerator::new(11, scenario.mix()?).fill(&mut pool);
        Ok(Arc::new(Self {
            scenario,
            pool: Arc::new(pool),
            counters,
            started: Instant::now(),
            stop: AtomicBool::new(false),
        }))
    }
}

/// Sends disk `index`'s load until the scenario's duration or byte count is reached.
pub async fn run_disk(shared: Arc<LoadShared>, disk: Arc<Disk>, index: usize) -> anyhow::Result<()> {
    let s = &shared.scenario;
    let per_disk_bytes = if s.total_bytes > 0 {
        (s.total_bytes / s.disks() as u64).max(1)
    } else {
        u64::MAX
    };
    let end = (s.duration_secs > 0.0).then(|| shared.started + Duration::from_secs_f64(s.duration_secs));
    let total_weight: u64 = s.write_sizes.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut rng = Rng::new(index as u64 + 1);
    let rate = s.rate_mb_per_s * 1e6;
    let cycle = s.burst_on_secs + s.burst_off_secs;
    // Stagger starts so a thousand disks do not send in lockstep.
    let mut paced = shared.started + Duration::from_micros(rng.next() % 200_000);
    let mut sent = 0u64;
    let mut seq = 0u64;
    let mut last_bookmark = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    // Slides over seqs, as ferryd's window does (see ferry_client::SendWindow).
    let mut window = ferry_client::SendWindow::new(s.window as usize);
    loop {
        let now = Instant::now();
        if sent >= per_disk_bytes || end.is_some_and(|e| now >= e) || shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if cycle > 0.0 && s.burst_off_secs > 0.0 {
            let into = now.duration_since(shared.started).as_secs_f64() % cycle;
            if into >= s.burst_on_secs {
                tokio::time::sleep(Duration::from_secs_f64(cycle - into)).await;
                paced = paced.max(Instant::now());
                continue;
            }
        }
        if rate > 0.0 {
            if end.is_some_and(|e| paced >= e) {
                break; // the next batch would start after the load's end
            }
            tokio::time::sleep_until(paced.into()).await;
        }
        // Each batch is its own task, so it is driven (and its ack timed) while this loop
        // sleeps; the window is enforced over the tasks not yet collected.
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            finished(done, &mut window)?;
        }
        while !window.may_send(seq + 1) {
            if let Some(done) = in_flight.next().await {
                finished(done, &mut window)?;
            }
        }
        seq += 1;
        let bookmark = s.bookmark_every_secs > 0.0 && last_bookmark.elapsed().as_secs_f64() >= s.bookmark_every_secs;
        if bookmark {
            last_bookmark = Instant::now();
        }
        let (batch, bytes) = build_batch(&shared, seq, &mut rng, total_weight, bookmark);
        sent += bytes;
        if rate > 0.0 {
            paced = paced.max(shared.started) + Duration::from_secs_f64(bytes as f64 / rate);
        }
        window.sent(seq);
        let sending = send(shared.clone(), disk.clone(), seq, batch, bytes);
        in_flight.push(tokio::spawn(async move { (seq, sending.await) }));
    }
    while let Some(done) = in_flight.next().await {
        finished(done, &mut window)?;
    }
    Ok(())
}

type Answered = Result<(u64, anyhow::Result<()>), tokio::task::JoinError>;

fn finished(done: Answered, window: &mut ferry_client::SendWindow) -> anyhow::Result<()> {
    let (seq, result) = done.map_err(|e| anyhow::anyhow!("a batch task failed: {e}"))?;
    window.answered(seq);
    result
}

fn acked(shared: &LoadShared, disk: &Disk, seq: u64, bytes: u64, latency: Duration) {
    let counters = &shared.counters;
    counters.acked_bytes.fetch_add(bytes, Ordering::Relaxed);
    counters.acked_batches.fetch_add(1, Ordering::Relaxed);
    counters.ack_latency.record(latency);
    disk.pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(seq, (Instant::now(), bytes));
}

fn build_batch(shared: &LoadShared, seq: u64, rng: &mut Rng, total_weight: u64, bookmark: bool) -> (Bytes, u64) {
    let s = &shared.scenario;
    let pool = &shared.pool;
    let batch_bytes = s.batch_bytes as usize;
    let mut encoder = BatchEncoder::with_capacity(seq, ferry_client::clock::now_unix_ms(), batch_bytes + 4096);
    let mut data = 0u64;
    loop {
        let mut pick = rng.next() % total_weight.max(1);
        let size = s
            .write_sizes
            .iter()
            .find(|(_, w)| {
                let hit = pick < u64::from(*w);
                pick = pick.saturating_sub(u64::from(*w));
                hit
            })
            .map_or(4096, |(size, _)| *size as usize);
        if data > 0 && encoder.payload_len() + size + 16 > batch_bytes {
            break;
        }
        let blocks = (s.disk_size_bytes as usize - size) / 4096;
        let offset = (rng.next() as usize % blocks.max(1)) * 4096;
        let from = (rng.next() as usize % ((pool.len() - size) / 4096)) * 4096;
        encoder.write(offset as u64, &pool[from..from + size]);
        data += size as u64;
    }
    if bookmark {
        if let Ok(id) = BookmarkId::new(&format!("perf-{seq}")) {
            encoder.bookmark(&Bookmark {
                id,
                kind: BookmarkKind::Crash,
                tag: None,
                group_id: None,
            });
        }
    }
    (encoder.finish(), data)
}

/// Sends one batch until it is acknowledged, then records it (latency from the first try).
async fn send(shared: Arc<LoadShared>, disk: Arc<Disk>, seq: u64, batch: Bytes, bytes: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(20);
    for attempt in 1..=MAX_ATTEMPTS {
        let error = match disk.client.put_batch(disk.disk_id, seq, batch.clone()).await {
            Ok(_) => {
                acked(&shared, &disk, seq, bytes, started.elapsed());
                return Ok(());
            }
            Err(error) => error,
        };
        let retry = error.is_retryable() || error.code() == Some(ferry_client::api::ErrorCode::OutOfWindow);
        if !retry || attempt == MAX_ATTEMPTS {
            return Err(anyhow::anyhow!("disk {} seq {seq}: {error}", disk.disk_id));
        }
        let (reason, hinted) = match &error {
            ClientError::Status {
                status,
                code,
                retry_after_secs,
                ..
            } => (format!("{status} {code}"), retry_after_secs.map(Duration::from_secs)),
            ClientError::Transport(_) => ("transport".to_string(), None),
            ClientError::Invalid(_) => ("invalid".to_string(), None),
        };
        shared.counters.retry(reason);
        tokio::time::sleep(hinted.unwrap_or(pause).min(Duration::from_secs(5))).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    Err(anyhow::anyhow!("disk {} seq {seq}: no attempt left", disk.disk_id))
}
