//! The pipeline's run-time tunables (`ferryctl tune`): the coordinator and the seal workers
//! read them on every cycle (at least once a second), so a change takes effect without a
//! restart and without dropping anything: a smaller upload concurrency waits for uploads in
//! flight to finish, extra seal workers leave after their current job, a smaller memory
//! budget stops new change sets until enough in flight complete.

use ferry_config::config::PipelineConfig;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Tuning {
    pub compression_level: Arc<AtomicI32>,
    workers: AtomicUsize,
    upload_concurrency: AtomicUsize,
    change_set_bytes: AtomicU64,
    flush_delay_ms: AtomicU64,
    idle_flush_delay_max_ms: AtomicU64,
    /// Set while ferryd drains: every disk's batches are cut at once (no delay at all).
    flush_all: std::sync::atomic::AtomicBool,
    memory_budget_bytes: AtomicU64,
    /// The whole pipeline section, for the bandwidth cap and its schedule.
    pipeline: Mutex<PipelineConfig>,
    /// Bumped by every [`Tuning::apply`]; the coordinator records in `applied` the generation
    /// its last retune read, so `ferryctl tune` can answer with what is really in effect.
    generation: AtomicU64,
    applied: AtomicU64,
    /// Wakes the coordinator when something changed (it re-reads at least every second anyway).
    pub changed: tokio::sync::Notify,
}

/// `worker_threads` 0 means one per core.
pub fn resolve_workers(worker_threads: u32) -> usize {
    if worker_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        worker_threads as usize
    }
}

impl Tuning {
    pub fn new(config: &PipelineConfig) -> Self {
        let tuning = Self {
            compression_level: Arc::new(AtomicI32::new(config.compression_level)),
            workers: AtomicUsize::new(1),
            upload_concurrency: AtomicUsize::new(1),
            change_set_bytes: AtomicU64::new(0),
            flush_delay_ms: AtomicU64::new(0),
            idle_flush_delay_max_ms: AtomicU64::new(0),
            flush_all: Default::default(),
            memory_budget_bytes: AtomicU64::new(0),
            pipeline: Mutex::new(config.clone()),
            generation: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        };
        tuning.apply(config);
        tuning
    }

    /// Takes a new (validated) pipeline section.
    pub fn apply(&self, config: &PipelineConfig) {
        self.compression_level
            .store(config.compression_level, Ordering::Relaxed);
        self.workers
            .store(resolve_workers(config.worker_threads), Ordering::Relaxed);
        self.upload_concurrency
            .store((config.upload_concurrency as usize).max(1), Ordering::Relaxed);
        self.change_set_bytes.store(config.change_set_bytes, Ordering::Relaxed);
        self.flush_delay_ms.store(config.flush_delay_ms, Ordering::Relaxed);
        self.idle_flush_delay_max_ms
            .store(config.idle_flush_delay_max_ms, Ordering::Relaxed);
        self.memory_budget_bytes
            .store(config.memory_budget_bytes, Ordering::Relaxed);
        *self.pipeline.lock().unwrap_or_else(|p| p.into_inner()) = config.clone();
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// The generation the coordinator is about to apply (read before it reads the values).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The coordinator applied everything up to `generation`.
    pub fn mark_applied(&self, generation: u64) {
        self.applied.fetch_max(generation, Ordering::SeqCst);
    }

    /// Waits (at most `limit`) until the coordinator has applied the latest change; false if
    /// it has not (no pipeline runs while the target is unreachable at start).
    pub async fn wait_applied(&self, limit: Duration) -> bool {
        let wanted = self.generation();
        let deadline = tokio::time::Instant::now() + limit;
        while self.applied.load(Ordering::SeqCst) < wanted {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    pub fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    pub fn upload_concurrency(&self) -> usize {
        self.upload_concurrency.load(Ordering::Relaxed)
    }

    pub fn change_set_bytes(&self) -> u64 {
        self.change_set_bytes.load(Ordering::Relaxed)
    }

    pub fn flush_delay(&self) -> Duration {
        Duration::from_millis(self.flush_delay_ms.load(Ordering::Relaxed))
    }

    /// While draining, nothing waits for a flush delay.
    pub fn set_flush_all(&self, on: bool) {
        self.flush_all.store(on, Ordering::SeqCst);
        self.changed.notify_one();
    }

    pub fn flush_all(&self) -> bool {
        self.flush_all.load(Ordering::SeqCst)
    }

    pub fn idle_flush_delay_max(&self) -> Duration {
        Duration::from_millis(self.idle_flush_delay_max_ms.load(Ordering::Relaxed))
    }

    /// The change sets' share of the memory budget ([`crate::memory_budget`]).
    pub fn change_sets_in_flight_bytes(&self) -> u64 {
        crate::memory_budget::change_sets_in_flight(self.memory_budget_bytes())
    }

    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget_bytes.load(Ordering::Relaxed)
    }

    /// The bandwidth cap in force now (local time), schedule included; 0 = unlimited.
    pub fn bandwidth_cap_now(&self) -> u64 {
        let (weekday, hour) = local_weekday_hour();
        self.pipeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bandwidth_cap_at(weekday, hour)
    }
}

/// (weekday with 0 = Sunday, hour) in the machine's local time.
fn local_weekday_hour() -> (u32, u32) {
    use chrono::{Datelike, Timelike};
    // chrono reads the zone as localtime(3) does: TZ, else /etc/localtime.
    let now = chrono::Local::now();
    (now.weekday().num_days_from_sunday(), now.hour())
}
