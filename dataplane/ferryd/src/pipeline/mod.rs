//! The upload pipeline (DESIGN.md "Data path", FORMATS.md): durable batches in the cache
//! become sealed change sets in target storage, in order per disk. This module is the
//! coordinator: one tokio task that owns every disk's state and never waits on storage,
//! the disk or the seal workers; it reacts to their answers and hands out the next work.
//!
//! - **Batcher** (`Coordinator::dispatch`): per disk, gathers the next durable batches into
//!   a change set of up to `change_set_bytes` of plaintext, cut early right after a batch that
//!   holds a BOOKMARK, or when the oldest waiting batch has waited the disk's flush delay
//!   ([`idle_delay`]), which bounds the RPO Ferry adds.
//! - **Seal workers** ([`worker`]): OS threads that read the batches where they lie in the
//!   cache and zstd + AES-GCM seal them; a bounded crossbeam channel feeds them.
//! - **Uploads**: one PUT per object on tokio, at most `upload_concurrency` at once, through
//!   the bandwidth cap (`ferry_storage::TokenBucket`, which paces every byte: objects go
//!   out in slices of a second of the rate); the storage layer retries transient errors. An object
//!   whose upload still fails waits and is tried again (5 s after a transient error, 30 s after
//!   a permanent one, with the disk's state saying why): nothing is dropped, nothing spins.
//! - **Ordered commit** ([`ledger`], pure): a disk's `uploaded_seq` advances over the
//!   contiguous prefix of uploaded change sets; then the recovery points of the bookmarks
//!   inside it are written; then the cache releases those batches (persisting the watermark,
//!   so a restart resumes from it; change sets re-uploaded after a crash may overlap, which
//!   FORMATS.md allows). Those calls, and each disk's `disk.fseal`, run as tasks ([`calls`]):
//!   a slow or failing call pauses only its own disk's commits.
//! - **Ownership** ([`crate::ownership`]): a disk's change sets, points and descriptor go to
//!   storage only while this process server holds the disk's lease, named with the owner
//!   epoch the cache holds the disk in; work of an epoch the disk is no longer in (taken over
//!   meanwhile) is dropped, work waiting on a lapsed renewal waits.
//! - **Pacing**: while the pipeline is quiet (less than a change set in flight, nothing
//!   queued, no disk filling change sets by size, `is_quiet`) the coordinator's cycles start
//!   at least `QUIET_CYCLE` apart, so many quiet disks' events are served in groups rather
//!   than one wake-up each.
//! - **Memory**: change sets between cut and stored (their plaintext until sealed, then their
//!   sealed bytes) stay within their share of `memory_budget_bytes` ([`crate::memory_budget`];
//!   one change set may always proceed, so progress is guaranteed).

pub mod calls;
pub mod idle_delay;
pub mod ledger;
pub mod reader;
pub mod tuning;
pub mod worker;

use bytes::Bytes;
use ferry_format::batch::DiskGeometry;
use ferry_format::names::VAULT_JSON;
use ferry_format::plaintexts::{DiskDescriptor, PLAINTEXT_FORMAT, REPROTECTED_DISK_FORMAT};
use ferry_format::{Keyring, VaultDescriptor, VaultError, VaultKey};
use ferry_storage::{ObjectStorage, StorageError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::cache::{Cache, DiskView};
use worker::{FoundBookmark, SealJob, Sealed};

/// Pause before retrying an object whose upload failed transiently (after the storage
/// layer's own retries).
pub const TRANSIENT_PAUSE: Duration = Duration::from_secs(5);
/// Pause before retrying after a permanent error (credentials, missing container).
pub const PERMANENT_PAUSE: Duration = Duration::from_secs(30);
/// Seal jobs queued for the workers at most.
const SEAL_QUEUE_DEPTH: usize = 64;
/// How often the coordinator looks at every disk even when none signalled anything.
const FULL_PASS_EVERY: Duration = Duration::from_secs(1);
/// How often the bandwidth schedule is looked at again when nothing was tuned.
const CAP_RECHECK_EVERY: Duration = Duration::from_secs(1);
/// Entries of `wakeups` per disk (most of them stale) before it is rebuilt.
const WAKEUPS_PER_DISK_MAX: usize = 4;
/// While the pipeline is quiet ([`is_quiet`]), cycles start at least this far
/// apart. Why: with hundreds of disks each writing a little (asr-sizing: 675 disks, 23 MB/s)
/// the coordinator woke for every durable batch, sealed change set, stored object and call
/// answer, some 300 times a second, and each wake of an idle thread costs about 15 µs of CPU
/// on a virtual machine (docs/BENCHMARKS.md, thirteenth step); so did every thread it handed
/// work to, one object at a time. Paced, a cycle serves everything that arrived meanwhile and
/// hands the seal workers, the uploads and the releaser their work in groups. Each step of a
/// change set (cut, sealed, stored, committed) may wait this long more: the RPO grows by a
/// fraction of a second at most, against flush delays of a second and more. A pipeline with
/// real work in flight is never paced, so throughput is what it was. 100 ms rather than 50:
/// asr-sizing's ferryd 0.96-0.98 of its CPU per byte at 50 ms (local writer 0.89, coordinator
/// 0.87), its lag p50 in the same histogram bucket (docs/BENCHMARKS.md, fourteenth step).
const QUIET_CYCLE: Duration = Duration::from_millis(100);

/// Less than one full change set (`change_set_bytes`) is between cut and stored, no seal job
/// waits for a worker, no pass is held back by the memory budget, and no disk filled a change
/// set by size within [`BUSY_DISK_MEMORY`]: the pipeline is far from any limit, so its cycles
/// may be paced ([`QUIET_CYCLE`]). A throughput-bound pipeline (steady, a drain, an overload)
/// has many change sets in flight and is never paced; nor is one whose disks write fast enough
/// to fill change sets between cycles, though all it cut may be stored at the cycle's end
/// (pacing that one delayed each of its change sets by up to a cycle and held a backlog of
/// several change sets in the cache: ferry-perf's overload smoke test, 2 disks at 215 MB/s).
fn is_quiet(
    in_flight_bytes: u64,
    change_set_bytes: u64,
    seal_jobs_queued: usize,
    dispatch_blocked: bool,
    filled_by_size_recently: bool,
) -> bool {
    !dispatch_blocked && !filled_by_size_recently && seal_jobs_queued == 0 && in_flight_bytes < change_set_bytes
}

/// How long a cut by size keeps the pipeline from being paced (a disk that filled a change set
/// within it writes at least `change_set_bytes` a second).
const BUSY_DISK_MEMORY: Duration = Duration::from_secs(1);

/// Which disks a dispatch pass looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// Every disk of the cache.
    EveryDisk,
    /// Only disks with something new (new durable batches, a delay or pause ended, a
    /// descriptor written).
    DisksWithNews,
}

/// Whether the coordinator still owes a full pass when a pass starts (the pass sets it
/// again if it stops at the budget). A pass over a few disks says nothing about the others,
/// so only a full pass starts from "not blocked". Clearing it on any pass lost the debt
/// whenever a disk's flush delay ended while the budget was full: nothing more was cut
/// until the once-a-second full pass, and a drain of 64 disks sat idle for up to a second at
/// a time, a third of the time or more (`perf/scenarios/drain.toml`, 2026-12-05).
fn blocked_after_start(blocked: bool, pass: Pass) -> bool {
    match pass {
        Pass::EveryDisk => false,
        Pass::DisksWithNews => blocked,
    }
}

/// A recovery point as the status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointSummary {
    pub seq: u64,
    pub bookmark_id: String,
    pub kind: String,
    pub source_time_unix_ms: u64,
}

/// A disk's upload state, for `GET /v1/disks/{id}` and status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskUploadStatus {
    pub uploaded_seq: u64,
    pub latest_point: Option<PointSummary>,
    pub error: Option<String>,
}

/// Why the pipeline cannot use the target yet.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    WrongKey(VaultError),
    #[error("the target has no Ferry vault ({VAULT_JSON} is missing); run ferryctl init against it")]
    NoVault,
    #[error("vault.json on the target is not readable: {0}")]
    BadVault(VaultError),
    #[error("the target is not reachable: {0}")]
    Storage(#[from] StorageError),
}

/// Reads `vault.json` from the target and checks the vault key against it.
pub async fn open_vault(storage: &dyn ObjectStorage, key: &VaultKey) -> Result<Keyring, ConnectError> {
    let bytes = match storage.get(VAULT_JSON).await {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound { .. }) => return Err(ConnectError::NoVault),
        Err(e) => return Err(e.into()),
    };
    let vault = VaultDescriptor::parse(&bytes).map_err(ConnectError::BadVault)?;
    vault.open(key).map_err(ConnectError::WrongKey)
}

/// Decrements the in-flight upload count when dropped.
struct InFlightGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The running pipeline's shared status.
#[derive(Clone, Default)]
pub struct PipelineStatus {
    disks: Arc<Mutex<HashMap<Uuid, DiskUploadStatus>>>,
    target_error: Arc<Mutex<Option<String>>>,
    /// Plaintext batch bytes stored since start.
    uploaded_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Failed uploads since start, by reason.
    upload_errors: Arc<Mutex<std::collections::BTreeMap<String, u64>>>,
    /// Sealed bytes stored since start.
    sealed_bytes: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes of change sets between cut and stored (plaintext while queued, sealed after):
    /// the change sets' share of the memory budget in use.
    change_set_bytes_in_flight: Arc<std::sync::atomic::AtomicU64>,
    /// Objects written to the target since start (change sets, points, descriptors): each at
    /// least one billed PUT.
    storage_puts: Arc<std::sync::atomic::AtomicU64>,
    /// Time the seal workers spent sealing, summed over workers, since start.
    seal_busy_nanos: Arc<std::sync::atomic::AtomicU64>,
    seal_workers: Arc<std::sync::atomic::AtomicUsize>,
    upload_concurrency: Arc<std::sync::atomic::AtomicUsize>,
    uploads_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The token bucket's rate as the coordinator last set it (0 = unlimited).
    bandwidth_cap_now: Arc<std::sync::atomic::AtomicU64>,
    upload_latency: Arc<ferry_client::histogram::Histogram>,
}

impl PipelineStatus {
    /// (seal workers, their summed busy nanoseconds since start).
    pub fn seal_work(&self) -> (usize, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.seal_workers.load(Relaxed), self.seal_busy_nanos.load(Relaxed))
    }

    /// (uploads in flight now, upload_concurrency).
    pub fn uploads(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.uploads_in_flight.load(Relaxed),
            self.upload_concurrency.load(Relaxed),
        )
    }

    pub fn bandwidth_cap_now(&self) -> u64 {
        self.bandwidth_cap_now.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn storage_puts(&self) -> u64 {
        self.storage_puts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn sealed_bytes(&self) -> u64 {
        self.sealed_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn change_set_bytes_in_flight(&self) -> u64 {
        self.change_set_bytes_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn upload_latency(&self) -> &ferry_client::histogram::Histogram {
        &self.upload_latency
    }

    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn upload_errors(&self) -> std::collections::BTreeMap<String, u64> {
        self.upload_errors.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record_upload_error(&self, error: &StorageError) {
        let reason = match error {
            StorageError::Permanent { kind, .. } => format!("permanent: {kind}"),
            StorageError::Transient { .. } => "transient".to_string(),
            StorageError::NotFound { .. } => "not found".to_string(),
            StorageError::InvalidName { .. } => "invalid name".to_string(),
        };
        *self
            .upload_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Why the pipeline is not running, while it is not (the target is unreachable).
    pub fn target_error(&self) -> Option<String> {
        self.target_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_target_error(&self, error: Option<String>) {
        *self.target_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    pub fn disk(&self, disk_id: Uuid) -> Option<DiskUploadStatus> {
        self.disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&disk_id)
            .cloned()
    }

    /// Drops a disk's status (the disk was taken over or forgotten).
    fn forget(&self, disk_id: Uuid) {
        self.disks.lock().unwrap_or_else(|p| p.into_inner()).remove(&disk_id);
    }

    fn set(&self, disk_id: Uuid, status: DiskUploadStatus) {
        self.disks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(disk_id, status);
    }
}

/// What the coordinator keeps per disk: the commit ledger plus the cut timer, the descriptor
/// and the status it publishes.
struct DiskProgress {
    /// The owner epoch this progress belongs to (the cache's `owner_epoch` when it was made).
    epoch: u64,
    ledger: ledger::Ledger<FoundBookmark>,
    waiting_since: Option<Instant>,
    /// This disk's flush delay ([`idle_delay`]): longer while it writes little.
    flush_delay: Duration,
    /// How far the next change set's batches have been looked at.
    next_cut: NextCut,
    /// (size, name) of the `disk.fseal` in storage, once written by this run.
    descriptor_written: Option<(u64, String)>,
    descriptor_call_out: bool,
    latest_point: Option<PointSummary>,
    /// Whether storage was asked for the newest point (after a restart it is not in memory;
    /// asked again after a failed answer).
    newest_point_asked: bool,
    /// After a failed call, no new call for this disk before this moment.
    paused_until: Option<Instant>,
    /// The earliest entry of this disk in the coordinator's `wakeups` (None: none pending).
    wake_at: Option<Instant>,
    error: Option<String>,
}

/// The next change set of a disk as far as its batches have been looked at: it starts at
/// `first` and so far ends at `last` with `bytes`, and `cut` says whether it is complete
/// (by size or at a bookmark). Valid while `first` and `change_set_bytes` stay the same.
#[derive(Clone, Copy, Debug)]
struct NextCut {
    first: u64,
    last: u64,
    bytes: u64,
    cut: Option<idle_delay::Cut>,
    limit: u64,
}

impl NextCut {
    fn starting_at(first: u64, limit: u64) -> Self {
        Self {
            first,
            last: first - 1,
            bytes: 0,
            cut: None,
            limit,
        }
    }
}

impl DiskProgress {
    fn paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| until > now)
    }

    fn failed(&mut self, message: String, pause: Duration) {
        self.error = Some(message);
        self.paused_until = Some(Instant::now() + pause);
    }
}

struct Upload {
    disk_id: Uuid,
    epoch: u64,
    first_seq: u64,
    last_seq: u64,
    name: String,
    sealed: Bytes,
    plain_len: u64,
    bookmarks: Vec<FoundBookmark>,
}

enum UploadOutcome {
    Stored(Upload),
    Failed(Upload, StorageError),
}

struct Coordinator {
    cache: Cache,
    ownership: Arc<crate::ownership::Ownership>,
    storage: Arc<dyn ObjectStorage>,
    tuning: Arc<tuning::Tuning>,
    workers: worker::WorkerPool,
    /// Permits the upload semaphore has in all (in use or free): what `tuning` last set.
    upload_permits: usize,
    status: PipelineStatus,
    disks: HashMap<Uuid, DiskProgress>,
    jobs: crossbeam_channel::Sender<SealJob>,
    /// Output buffers of stored objects, back to the seal workers (full: dropped).
    spare_buffers: crossbeam_channel::Sender<Vec<u8>>,
    sealed: tokio::sync::mpsc::Receiver<Sealed>,
    outcomes_tx: tokio::sync::mpsc::UnboundedSender<UploadOutcome>,
    outcomes: tokio::sync::mpsc::UnboundedReceiver<UploadOutcome>,
    uploads: Arc<tokio::sync::Semaphore>,
    bucket: Arc<ferry_storage::TokenBucket>,
    retry_uploads: Vec<(Instant, Upload)>,
    retry_jobs: Vec<(Instant, SealJob)>,
    /// Descriptor, point and release calls, run as tasks ([`calls`]).
    calls: calls::Calls,
    /// Disks whose ledger may have a commit step to hand out (uploads stored, calls answered,
    /// or paused after a failure): [`Coordinator::commit`] looks at these only.
    commit_due: std::collections::HashSet<Uuid>,
    /// Whether the next cycle passes over every disk to cut change sets ([`Self::dispatch`]):
    /// at start, after a tuning change, when room is back after a blocked pass, and once a
    /// second (which also catches a lease renewed or anything else not signalled).
    dispatch_due: bool,
    /// When the next pass over every disk is due at the latest.
    next_full_pass: Instant,
    /// Disks the next cycle looks at without a full pass: their descriptor was written, or
    /// their flush delay or pause ended. (Disks with new durable batches come from the cache,
    /// [`Cache::take_advanced`].)
    dispatch_disks: std::collections::HashSet<Uuid>,
    /// When each disk's flush delay or pause ends, earliest first, so the loop finds the next
    /// deadline and the disks due without walking every disk per event (with hundreds of
    /// disks that walk showed in profiles). Entries may be stale (a disk looked at sooner
    /// than its entry): one that fires early only has the disk looked at once more.
    wakeups: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, Uuid)>>,
    /// (tuning generation, when) the bandwidth cap in force was last worked out: reading the
    /// local time costs a `statx` of /etc/localtime, too much for every cycle.
    cap_checked: Option<(u64, Instant)>,
    /// The cache signalled new durable batches since the last cycle.
    advanced_due: bool,
    /// A pass stopped at the memory budget or a full seal queue, and no pass over every disk
    /// has got through since: some disk may hold a change set that did not fit. Only a full
    /// pass clears it ([`Coordinator::dispatch`])...
    dispatch_blocked: bool,
    /// ...and a change set was sealed or stored since (room may be back).
    room_freed: bool,
    /// When a change set was last cut because it reached `change_set_bytes`: a disk filling
    /// change sets by size is busy, and the pipeline is not paced ([`is_quiet`]).
    last_size_cut: Option<Instant>,
    calls_done: tokio::sync::mpsc::Receiver<(u64, calls::Done)>,
}

/// Starts the pipeline on an opened target, publishing into `status`, with the tunables in
/// `tuning` (read live); it runs until `stop` turns true.
pub fn start(
    cache: Cache,
    ownership: Arc<crate::ownership::Ownership>,
    storage: Arc<dyn ObjectStorage>,
    keyring: Keyring,
    tuning: Arc<tuning::Tuning>,
    status: PipelineStatus,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(SEAL_QUEUE_DEPTH);
    let (loaded_tx, loaded_rx) = crossbeam_channel::bounded(reader::READ_AHEAD);
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(worker::SPARE_BUFFERS);
    let (sealed_tx, sealed_rx) = tokio::sync::mpsc::channel(SEAL_QUEUE_DEPTH);
    if let Err(e) = reader::start(jobs_rx, cache.clone(), loaded_tx) {
        tracing::error!(error = %e, "cannot start the read-ahead threads; nothing will be uploaded");
    }
    let workers = worker::WorkerPool {
        jobs: loaded_rx,
        results: sealed_tx,
        spare_buffers: spare_rx,
        keyring: keyring.clone(),
        level: tuning.compression_level.clone(),
        busy_nanos: status.seal_busy_nanos.clone(),
        alive: status.seal_workers.clone(),
        wanted: Default::default(),
        spawned: Default::default(),
    };
    workers.resize(tuning.workers());
    let permits = tuning.upload_concurrency();
    status
        .upload_concurrency
        .store(permits, std::sync::atomic::Ordering::Relaxed);
    let (outcomes_tx, outcomes) = tokio::sync::mpsc::unbounded_channel();
    let bucket = Arc::new(ferry_storage::TokenBucket::new(tuning.bandwidth_cap_now()));
    let (calls, calls_done) = match calls::Calls::new(
        storage.clone(),
        keyring.clone(),
        cache.clone(),
        ownership.clone(),
        bucket.clone(),
        status.clone(),
    ) {
        Ok(started) => started,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the cache's releaser thread; nothing will be uploaded");
            return;
        }
    };
    let coordinator = Coordinator {
        uploads: Arc::new(tokio::sync::Semaphore::new(permits)),
        upload_permits: permits,
        bucket,
        cache,
        ownership,
        storage,
        calls,
        calls_done,
        commit_due: Default::default(),
        dispatch_due: true,
        next_full_pass: Instant::now(),
        dispatch_disks: std::collections::HashSet::new(),
        wakeups: std::collections::BinaryHeap::new(),
        cap_checked: None,
        advanced_due: false,
        dispatch_blocked: false,
        room_freed: false,
        last_size_cut: None,
        tuning,
        workers,
        status: status.clone(),
        disks: HashMap::new(),
        jobs: jobs_tx,
        spare_buffers: spare_tx,
        sealed: sealed_rx,
        outcomes_tx,
        outcomes,
        retry_uploads: Vec::new(),
        retry_jobs: Vec::new(),
    };
    tokio::spawn(coordinator.run(stop));
}

impl Coordinator {
    /// Bytes of change sets between cut and stored: kept in the status (only the coordinator
    /// writes it), so `/metrics` reads the same number the cut is decided on.
    fn in_flight_bytes(&self) -> u64 {
        self.status.change_set_bytes_in_flight()
    }

    fn set_in_flight_bytes(&self, bytes: u64) {
        self.status
            .change_set_bytes_in_flight
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let durable = self.cache.durable_notify();
        let mut paced_until: Option<Instant> = None;
        loop {
            if *stop.borrow() {
                return;
            }
            if let Some(until) = paced_until.take() {
                // Answers and signals wait in their queues meanwhile (the durable signal as a
                // stored permit), so nothing is missed.
                tokio::select! {
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep_until(until.into()) => {}
                }
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = stop.changed() => return,
                _ = durable.notified() => self.advanced_due = true,
                _ = self.tuning.changed.notified() => self.dispatch_due = true,
                Some(sealed) = self.sealed.recv() => self.on_sealed(sealed),
                Some(outcome) = self.outcomes.recv() => self.on_outcome(outcome),
                Some(done) = self.calls_done.recv() => self.on_call_done(done),
                _ = tokio::time::sleep_until(deadline.into()) => self.collect_due_disks(),
            }
            // Take every answer already waiting, so one pass over the disks serves them all
            // (with hundreds of disks, a pass per answer was a tenth of ferryd's CPU).
            while let Ok(sealed) = self.sealed.try_recv() {
                self.on_sealed(sealed);
            }
            while let Ok(outcome) = self.outcomes.try_recv() {
                self.on_outcome(outcome);
            }
            while let Ok(done) = self.calls_done.try_recv() {
                self.on_call_done(done);
            }
            self.retune();
            self.requeue_due();
            // A pass over every disk only when any disk may have become ready (a change of
            // tunables, room again after the last pass stopped at the memory budget or a full
            // seal queue, once a second); otherwise only the disks with something new: new
            // durable batches, a flush delay or pause ending, a descriptor written. (Passes
            // over every disk per upload, call answer or write were most of the coordinator's
            // CPU with hundreds of disks.)
            if self.dispatch_blocked && self.room_freed {
                self.dispatch_due = true;
            }
            if Instant::now() >= self.next_full_pass {
                self.dispatch_due = true;
            }
            if std::mem::take(&mut self.dispatch_due) {
                self.room_freed = false;
                self.advanced_due = false;
                self.dispatch_disks.clear();
                self.cache.clear_advanced();
                self.next_full_pass = Instant::now() + FULL_PASS_EVERY;
                let views = self.cache.disks();
                self.dispatch(views, Pass::EveryDisk);
            } else if std::mem::take(&mut self.advanced_due) || !self.dispatch_disks.is_empty() {
                let mut views = self.cache.take_advanced();
                for view in &views {
                    self.dispatch_disks.remove(&view.meta.disk_id);
                }
                let named: Vec<Uuid> = self.dispatch_disks.drain().collect();
                views.extend(self.cache.views_of(&named));
                self.dispatch(views, Pass::DisksWithNews);
            }
            self.commit();
            if self.quiet() {
                paced_until = Some(Instant::now() + QUIET_CYCLE);
            }
        }
    }

    /// Whether the next cycle may be paced ([`is_quiet`]).
    fn quiet(&self) -> bool {
        is_quiet(
            self.in_flight_bytes(),
            self.tuning.change_set_bytes(),
            self.jobs.len(),
            self.dispatch_blocked,
            self.last_size_cut.is_some_and(|at| at.elapsed() < BUSY_DISK_MEMORY),
        )
    }

    /// Applies the tunables (cheap; every cycle): upload permits, seal workers, bandwidth.
    fn retune(&mut self) {
        let generation = self.tuning.generation();
        let wanted = self.tuning.upload_concurrency();
        if wanted > self.upload_permits {
            self.uploads.add_permits(wanted - self.upload_permits);
        } else if wanted < self.upload_permits {
            // Take the excess out as uploads finish (never cancelling one in flight).
            let excess = (self.upload_permits - wanted) as u32;
            let uploads = self.uploads.clone();
            tokio::spawn(async move {
                if let Ok(permits) = uploads.acquire_many_owned(excess).await {
                    permits.forget();
                }
            });
        }
        if wanted != self.upload_permits {
            tracing::info!(from = self.upload_permits, to = wanted, "upload concurrency changed");
            self.upload_permits = wanted;
            self.status
                .upload_concurrency
                .store(wanted, std::sync::atomic::Ordering::Relaxed);
        }
        let workers = self.tuning.workers();
        if workers != self.workers.wanted.load(std::sync::atomic::Ordering::Relaxed) {
            tracing::info!(to = workers, "seal workers changed");
            self.workers.resize(workers);
        }
        // A tuned cap applies at once; a schedule's window within a second of its hour.
        let cap_due = self
            .cap_checked
            .is_none_or(|(checked, at)| checked != generation || at.elapsed() >= CAP_RECHECK_EVERY);
        if cap_due {
            let cap = self.tuning.bandwidth_cap_now();
            self.bucket.set_rate(cap);
            self.status
                .bandwidth_cap_now
                .store(cap, std::sync::atomic::Ordering::Relaxed);
            self.cap_checked = Some((generation, Instant::now()));
        }
        self.tuning.mark_applied(generation);
    }

    fn delay_limits(&self) -> idle_delay::Limits {
        if self.tuning.flush_all() {
            return idle_delay::Limits {
                base: Duration::ZERO,
                max: Duration::ZERO,
                change_set_bytes: self.tuning.change_set_bytes(),
            };
        }
        idle_delay::Limits {
            base: self.tuning.flush_delay(),
            max: self.tuning.idle_flush_delay_max(),
            change_set_bytes: self.tuning.change_set_bytes(),
        }
    }

    /// The next moment something is due: a flush delay ending, a retry, or the next pass over
    /// every disk.
    fn next_deadline(&self) -> Instant {
        let mut deadline = self.next_full_pass;
        if let Some(std::cmp::Reverse((wake, _))) = self.wakeups.peek() {
            deadline = deadline.min(*wake);
        }
        for (due, _) in self.retry_uploads.iter() {
            deadline = deadline.min(*due);
        }
        for (due, _) in self.retry_jobs.iter() {
            deadline = deadline.min(*due);
        }
        deadline.max(Instant::now() + Duration::from_millis(1))
    }

    /// The disks whose flush delay or pause has ended: looked at in this cycle's pass.
    fn collect_due_disks(&mut self) {
        let now = Instant::now();
        while let Some(std::cmp::Reverse((wake, disk_id))) = self.wakeups.peek().copied() {
            if wake > now {
                break;
            }
            self.wakeups.pop();
            if let Some(progress) = self.disks.get_mut(&disk_id) {
                if progress.wake_at == Some(wake) {
                    progress.wake_at = None;
                }
                self.dispatch_disks.insert(disk_id);
            }
        }
    }

    /// Puts the moment the disk's flush delay or pause ends into `wakeups`, unless an entry
    /// at or before it is pending. Called after every look at a disk and every answer for it.
    fn arm_wakeup(&mut self, disk_id: Uuid) {
        let limits = self.delay_limits();
        let Some(progress) = self.disks.get_mut(&disk_id) else {
            return;
        };
        let delay_ends = progress
            .waiting_since
            .map(|since| since + idle_delay::current(progress.flush_delay, limits));
        let Some(wake) = [delay_ends, progress.paused_until].into_iter().flatten().min() else {
            return;
        };
        if progress.wake_at.is_some_and(|pending| pending <= wake) {
            return;
        }
        progress.wake_at = Some(wake);
        self.wakeups.push(std::cmp::Reverse((wake, disk_id)));
        // Bounded: stale entries are rebuilt away when they outnumber the disks.
        if self.wakeups.len() > WAKEUPS_PER_DISK_MAX * self.disks.len() + 1024 {
            self.wakeups.clear();
            for (id, progress) in &self.disks {
                if let Some(pending) = progress.wake_at {
                    self.wakeups.push(std::cmp::Reverse((pending, *id)));
                }
            }
        }
    }

    fn requeue_due(&mut self) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retry_uploads)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retry_uploads = later;
        for (_, upload) in due {
            if self.current(upload.disk_id, upload.epoch) {
                self.start_upload(upload);
            } else {
                self.set_in_flight_bytes(self.in_flight_bytes().saturating_sub(upload.sealed.len() as u64));
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retry_jobs)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.retry_jobs = later;
        for (_, job) in due {
            if !self.current(job.disk_id, job.epoch) {
                self.set_in_flight_bytes(self.in_flight_bytes().saturating_sub(job.plain_bytes));
                continue;
            }
            if let Err(crossbeam_channel::TrySendError::Full(job)) = self.jobs.try_send(job) {
                self.retry_jobs.push((now + Duration::from_millis(100), job));
            }
        }
    }

    fn progress(&mut self, view: &DiskView) -> &mut DiskProgress {
        progress_of(&mut self.disks, view)
    }

    /// Puts out the calls a disk needs before its change sets can go (its descriptor, and its
    /// newest point for the status after a restart), then cuts the ready change sets of
    /// the disks of `views`. Never waits: calls run as tasks.
    fn dispatch(&mut self, views: Vec<DiskView>, pass: Pass) {
        let now = Instant::now();
        self.dispatch_blocked = blocked_after_start(self.dispatch_blocked, pass);
        for view in views {
            let disk_id = view.meta.disk_id;
            let go_on = self.dispatch_view(&view, now);
            self.arm_wakeup(disk_id);
            if !go_on {
                self.dispatch_blocked = true;
                return; // the memory budget or the seal queue is full
            }
        }
    }

    /// One disk of a pass; false when nothing more fits right now.
    fn dispatch_view(&mut self, view: &DiskView, now: Instant) -> bool {
        let disk_id = view.meta.disk_id;
        // One map lookup per disk and pass (the pass visits every disk; with hundreds of
        // them the lookups showed in profiles).
        let progress = progress_of(&mut self.disks, view);
        if progress.epoch != view.meta.owner_epoch {
            // Taken over since (the cache restarted the disk): start again from the cache.
            self.disks.remove(&disk_id);
            self.status.forget(disk_id);
            return true; // made afresh on the next pass
        }
        if self.ownership.writable(disk_id) != Some(view.meta.owner_epoch) {
            return true; // not held, or the lease is not renewed: nothing goes to storage
        }
        if progress.paused(now) {
            return true;
        }
        if !progress.newest_point_asked {
            progress.newest_point_asked = true;
            self.calls.start(progress.epoch, calls::Call::NewestPoint { disk_id });
        }
        if view.durable_seq <= progress.ledger.dispatched_through() {
            return true;
        }
        let written = progress.descriptor_written.as_ref();
        if written.map(|(size, name)| (*size, name.as_str())) != Some((view.meta.size_bytes, view.meta.name.as_str())) {
            // Nothing of a disk goes to storage before its descriptor (a new disk or a resize).
            if !progress.descriptor_call_out {
                progress.descriptor_call_out = true;
                self.calls
                    .start(progress.epoch, calls::Call::Descriptor(descriptor_of(view)));
            }
            return true;
        }
        self.dispatch_disk(view)
    }

    /// Cuts and queues the disk's ready change sets; false when nothing more fits right now.
    fn dispatch_disk(&mut self, view: &DiskView) -> bool {
        let disk_id = view.meta.disk_id;
        let geometry = DiskGeometry {
            size_bytes: view.meta.size_bytes,
            sector_size: view.meta.sector_size,
        };
        let (limit, budget) = (
            self.tuning.change_set_bytes(),
            self.tuning.change_sets_in_flight_bytes(),
        );
        let limits = self.delay_limits();
        loop {
            let in_flight = self.in_flight_bytes();
            let progress = self.progress(view);
            let dispatched_through = progress.ledger.dispatched_through();
            if dispatched_through >= view.durable_seq {
                return true;
            }
            let waiting_since = *progress.waiting_since.get_or_insert_with(Instant::now);
            let delay = idle_delay::current(progress.flush_delay, limits);
            let first = dispatched_through + 1;
            // Go on from where the last look stopped: a quiet disk waiting out its delay has
            // its batches looked at once, not once per pass (with hundreds of disks that
            // re-reading was a tenth of ferryd's CPU).
            let mut scan = progress.next_cut;
            if scan.first != first || scan.limit != limit {
                scan = NextCut::starting_at(first, limit);
            }
            while scan.cut.is_none() && scan.last < view.durable_seq {
                let Some(info) = self.cache.batch_info(disk_id, scan.last + 1) else {
                    break;
                };
                if scan.bytes > 0 && scan.bytes + u64::from(info.batch_len) > limit {
                    scan.cut = Some(idle_delay::Cut::Size);
                    break;
                }
                scan.bytes += u64::from(info.batch_len);
                scan.last += 1;
                if info.has_bookmark {
                    scan.cut = Some(idle_delay::Cut::Bookmark);
                } else if scan.bytes >= limit {
                    scan.cut = Some(idle_delay::Cut::Size);
                }
            }
            self.progress(view).next_cut = scan;
            let NextCut { last, bytes, cut, .. } = scan;
            // A disk being moved goes out at once: its move waits for it.
            let delay = if self.ownership.moving_to(disk_id).is_some() {
                Duration::ZERO
            } else {
                delay
            };
            if last < first || (cut.is_none() && waiting_since.elapsed() < delay) {
                return true; // wait for more batches or for the disk's flush delay
            }
            let cut = cut.unwrap_or(idle_delay::Cut::Timer);
            if in_flight > 0 && in_flight + bytes > budget {
                return false;
            }
            let job = SealJob {
                disk_id,
                epoch: view.meta.owner_epoch,
                first_seq: first,
                last_seq: last,
                plain_bytes: bytes,
                geometry,
            };
            if self.jobs.try_send(job).is_err() {
                return false;
            }
            self.set_in_flight_bytes(in_flight + bytes);
            let progress = self.progress(view);
            if let Err(e) = progress.ledger.dispatched(first, last) {
                // Unreachable: `first` is taken from the ledger just above.
                tracing::error!(disk = %disk_id, error = %e, "pipeline ledger refused a cut");
            }
            progress.waiting_since = (last < view.durable_seq).then(Instant::now);
            progress.flush_delay = idle_delay::next(progress.flush_delay, cut, bytes, limits);
            if cut == idle_delay::Cut::Size {
                self.last_size_cut = Some(Instant::now());
            }
        }
    }

    /// Whether work of `disk_id` in `epoch` is still wanted (the disk was not taken over or
    /// forgotten since it was cut).
    fn current(&self, disk_id: Uuid, epoch: u64) -> bool {
        self.disks.get(&disk_id).is_some_and(|p| p.epoch == epoch) && self.cache.owner_epoch(disk_id) == Some(epoch)
    }

    fn on_sealed(&mut self, sealed: Sealed) {
        if !self.current(sealed.disk_id, sealed.epoch) {
            self.room_freed = true;
            self.set_in_flight_bytes(self.in_flight_bytes().saturating_sub(sealed.counted_bytes));
            return;
        }
        match sealed.result {
            Ok((bytes, bookmarks)) => {
                self.room_freed = true;
                // From here the change set holds its sealed bytes, not its plaintext.
                self.set_in_flight_bytes(
                    (self.in_flight_bytes() + bytes.len() as u64).saturating_sub(sealed.plain_len),
                );
                self.start_upload(Upload {
                    disk_id: sealed.disk_id,
                    epoch: sealed.epoch,
                    first_seq: sealed.first_seq,
                    last_seq: sealed.last_seq,
                    name: sealed.name,
                    sealed: bytes,
                    plain_len: sealed.plain_len,
                    bookmarks,
                })
            }
            Err(failure) => {
                tracing::error!(disk = %sealed.disk_id, first = sealed.first_seq, last = sealed.last_seq, error = %failure, "sealing failed; retrying");
                if let Some(progress) = self.disks.get_mut(&sealed.disk_id) {
                    progress.error = Some(format!("sealing failed: {failure}"));
                }
                self.publish(sealed.disk_id);
                let geometry = self
                    .cache
                    .disk(sealed.disk_id)
                    .map(|v| DiskGeometry {
                        size_bytes: v.meta.size_bytes,
                        sector_size: v.meta.sector_size,
                    })
                    .unwrap_or(DiskGeometry {
                        size_bytes: 0,
                        sector_size: 512,
                    });
                let job = SealJob {
                    disk_id: sealed.disk_id,
                    epoch: sealed.epoch,
                    first_seq: sealed.first_seq,
                    last_seq: sealed.last_seq,
                    plain_bytes: sealed.counted_bytes,
                    geometry,
                };
                self.retry_jobs.push((Instant::now() + TRANSIENT_PAUSE, job));
            }
        }
    }

    fn start_upload(&self, upload: Upload) {
        let (ownership, storage, uploads, bucket, outcomes, status) = (
            self.ownership.clone(),
            self.storage.clone(),
            self.uploads.clone(),
            self.bucket.clone(),
            self.outcomes_tx.clone(),
            self.status.clone(),
        );
        tokio::spawn(async move {
            let Ok(_permit) = uploads.acquire_owned().await else {
                return;
            };
            let in_flight = status.uploads_in_flight.clone();
            in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Counted down however the task ends.
            let _counted = InFlightGuard(in_flight);
            // Checked last thing before the PUT: a lease lost or lapsed meanwhile stops it.
            // (A stale owner that was paused right here still cannot harm a restore: its object
            // carries its own epoch, which does not own these seqs any more.)
            if ownership.writable(upload.disk_id) != Some(upload.epoch) {
                let error = StorageError::Transient {
                    operation: ferry_storage::Operation::Put,
                    name: upload.name.clone(),
                    message: "this process server does not hold the disk's lease right now".into(),
                };
                let _ = outcomes.send(UploadOutcome::Failed(upload, error));
                return;
            }
            let started = Instant::now();
            let outcome = match storage.put_paced(&upload.name, upload.sealed.clone(), &bucket).await {
                Ok(()) => {
                    status.upload_latency.record(started.elapsed());
                    status
                        .sealed_bytes
                        .fetch_add(upload.sealed.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    status.storage_puts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    UploadOutcome::Stored(upload)
                }
                Err(error) => UploadOutcome::Failed(upload, error),
            };
            let _ = outcomes.send(outcome);
        });
    }

    fn on_outcome(&mut self, outcome: UploadOutcome) {
        match outcome {
            UploadOutcome::Stored(mut upload) => {
                self.room_freed = true;
                self.set_in_flight_bytes(self.in_flight_bytes().saturating_sub(upload.sealed.len() as u64));
                if !self.current(upload.disk_id, upload.epoch) {
                    return; // uploaded under an epoch the disk is no longer in: never used
                }
                // The storage layer kept no reference: the buffer goes back for the next object.
                // Emptied first: converting keeps the capacity and copies only the contents.
                if let Ok(mut buffer) = std::mem::take(&mut upload.sealed).try_into_mut() {
                    buffer.clear();
                    let _ = self.spare_buffers.try_send(Vec::from(buffer));
                }
                let Some(progress) = self.disks.get_mut(&upload.disk_id) else {
                    return;
                };
                progress.error = None;
                self.commit_due.insert(upload.disk_id);
                let points = upload.bookmarks.into_iter().map(|b| (b.seq, b)).collect();
                if let Err(e) = progress.ledger.uploaded(upload.first_seq, upload.last_seq, points) {
                    // Unreachable: every upload comes from a cut of this run's ledger.
                    tracing::error!(disk = %upload.disk_id, error = %e, "pipeline ledger refused an upload");
                }
                self.publish(upload.disk_id);
                self.status
                    .uploaded_bytes
                    .fetch_add(upload.plain_len, std::sync::atomic::Ordering::Relaxed);
            }
            UploadOutcome::Failed(upload, error) => {
                if !self.current(upload.disk_id, upload.epoch) {
                    self.room_freed = true;
                    self.set_in_flight_bytes(self.in_flight_bytes().saturating_sub(upload.sealed.len() as u64));
                    return;
                }
                self.status.record_upload_error(&error);
                let pause = if error.is_permanent() {
                    PERMANENT_PAUSE
                } else {
                    TRANSIENT_PAUSE
                };
                let message = error.to_string();
                if let Some(progress) = self.disks.get_mut(&upload.disk_id) {
                    if progress.error.as_deref() != Some(message.as_str()) {
                        tracing::warn!(disk = %upload.disk_id, error = %message, retry_in_s = pause.as_secs(), "upload failed; the data stays in the cache");
                    }
                    progress.error = Some(message);
                }
                self.publish(upload.disk_id);
                self.retry_uploads.push((Instant::now() + pause, upload));
            }
        }
    }

    /// Puts out, for every disk not waiting on one already, the commit call its ledger asks
    /// for next: its points once the uploaded prefix covers them, then the cache release.
    fn commit(&mut self) {
        let now = Instant::now();
        let mut still_due = Vec::new();
        for disk_id in self.commit_due.drain() {
            let Some(progress) = self.disks.get_mut(&disk_id) else {
                continue;
            };
            if progress.paused(now) {
                still_due.push(disk_id); // looked at again when the pause ends
                continue;
            }
            // With a call out, its answer makes the disk due again.
            match progress.ledger.next_step() {
                None => {}
                Some(ledger::Step::WritePoints(points)) => self
                    .calls
                    .start(progress.epoch, calls::Call::Points { disk_id, points }),
                Some(ledger::Step::Release { through }) => self
                    .calls
                    .start(progress.epoch, calls::Call::Release { disk_id, through }),
            }
        }
        self.commit_due.extend(still_due);
    }

    /// Applies a call's answer to its disk; a failure pauses the disk's calls (not its
    /// uploads, nor any other disk) and the same call is put out again afterwards.
    fn on_call_done(&mut self, (epoch, done): (u64, calls::Done)) {
        let disk_id = match &done {
            calls::Done::Descriptor { descriptor, .. } => descriptor.disk_id,
            calls::Done::Points { disk_id, .. }
            | calls::Done::NewestPoint { disk_id, .. }
            | calls::Done::Release { disk_id, .. } => *disk_id,
        };
        let Some(progress) = self.disks.get_mut(&disk_id).filter(|p| p.epoch == epoch) else {
            return; // the disk was taken over since: the answer is of no use
        };
        self.commit_due.insert(disk_id);
        match done {
            calls::Done::Descriptor { descriptor, result } => {
                progress.descriptor_call_out = false;
                self.dispatch_disks.insert(disk_id);
                match result {
                    Ok(()) => progress.descriptor_written = Some((descriptor.size_bytes, descriptor.name)),
                    Err(e) => progress.failed(format!("cannot write disk.fseal: {e}"), e.pause()),
                }
            }
            calls::Done::NewestPoint { result, .. } => match result {
                Ok(newest) => {
                    if progress.latest_point.as_ref().map_or(0, |p| p.seq) < newest.as_ref().map_or(0, |p| p.seq) {
                        progress.latest_point = newest;
                    }
                }
                Err(e) => {
                    // Only the status lacks it meanwhile; asked again after the pause.
                    tracing::debug!(disk = %disk_id, error = %e, "cannot read the newest point");
                    progress.newest_point_asked = false;
                    progress.paused_until = Some(Instant::now() + e.pause());
                }
            },
            calls::Done::Points { written, error, .. } => {
                let count = written.len();
                for summary in written {
                    if progress.latest_point.as_ref().is_none_or(|p| p.seq <= summary.seq) {
                        progress.latest_point = Some(summary);
                    }
                }
                if let Err(e) = progress.ledger.points_written(count) {
                    tracing::error!(disk = %disk_id, error = %e, "pipeline ledger refused points");
                }
                if let Some(e) = error {
                    // The cache keeps the batches until the points exist.
                    progress.failed(format!("cannot write a recovery point: {e}"), e.pause());
                }
            }
            calls::Done::Release { result, .. } => match result {
                Ok(()) => {
                    if let Err(e) = progress.ledger.released() {
                        tracing::error!(disk = %disk_id, error = %e, "pipeline ledger refused a release");
                    }
                }
                Err(e) => {
                    progress.ledger.call_failed();
                    progress.failed(e.to_string(), e.pause());
                }
            },
        }
        self.publish(disk_id);
        self.arm_wakeup(disk_id);
    }

    fn publish(&self, disk_id: Uuid) {
        if let Some(progress) = self.disks.get(&disk_id) {
            self.status.set(
                disk_id,
                DiskUploadStatus {
                    uploaded_seq: progress.ledger.uploaded_seq(),
                    latest_point: progress.latest_point.clone(),
                    error: progress.error.clone(),
                },
            );
        }
    }
}

/// The coordinator's entry for a disk, made on first sight from the cache's view.
fn progress_of<'a>(disks: &'a mut HashMap<Uuid, DiskProgress>, view: &DiskView) -> &'a mut DiskProgress {
    disks.entry(view.meta.disk_id).or_insert_with(|| DiskProgress {
        epoch: view.meta.owner_epoch,
        ledger: ledger::Ledger::resume(view.released_through),
        waiting_since: None,
        flush_delay: Duration::ZERO, // within the limits: the base delay
        next_cut: NextCut::starting_at(view.released_through + 1, 0),
        descriptor_written: None,
        descriptor_call_out: false,
        latest_point: None,
        newest_point_asked: false,
        paused_until: None,
        wake_at: None,
        error: None,
    })
}

/// The disk's descriptor as `disk.fseal` holds it.
fn descriptor_of(view: &DiskView) -> DiskDescriptor {
    DiskDescriptor {
        format: if view.meta.reprotect_from.is_some() {
            REPROTECTED_DISK_FORMAT
        } else {
            PLAINTEXT_FORMAT
        },
        disk_id: view.meta.disk_id,
        machine_id: view.meta.machine_id,
        name: view.meta.name.clone(),
        size_bytes: view.meta.size_bytes,
        sector_size: view.meta.sector_size,
        write_ordered: view.meta.write_ordered,
        created_unix_ms: view.meta.created_unix_ms,
        reprotect_from: view.meta.reprotect_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pass_over_every_disk_clears_a_blocked_dispatch() {
        assert!(
            blocked_after_start(true, Pass::DisksWithNews),
            "a pass over a few disks must keep the debt: the others may still wait for room"
        );
        assert!(!blocked_after_start(false, Pass::DisksWithNews), "no debt, none made");
        assert!(!blocked_after_start(true, Pass::EveryDisk), "a full pass starts afresh");
    }

    #[test]
    fn only_a_pipeline_far_from_every_limit_is_paced() {
        let change_set = 8 << 20;
        assert!(is_quiet(0, change_set, 0, false, false), "nothing in flight");
        assert!(
            is_quiet(change_set - 1, change_set, 0, false, false),
            "less than one change set in flight"
        );
        assert!(
            !is_quiet(change_set, change_set, 0, false, false),
            "a full change set in flight is work"
        );
        assert!(
            !is_quiet(0, change_set, 1, false, false),
            "a seal job waiting for a worker"
        );
        assert!(
            !is_quiet(0, change_set, 0, true, false),
            "a pass held back by the memory budget"
        );
        assert!(
            !is_quiet(0, change_set, 0, false, true),
            "a disk that filled a change set by size a moment ago"
        );
    }
}
