//! The durable cache of received batches (DESIGN.md "Data path"; STYLE.md 1-8).
//!
//! **Layout.** `cache/` (0700) holds `LOCK` (an advisory lock: one ferryd per cache),
//! `segments/{id:016}.seg` (preallocated segment files, see [`record`]), `disks/{disk_id}.meta`
//! (each disk's definition and release watermark, checksummed, written by durable rename) and
//! `disks/{disk_id}.release` (the watermarks of later releases, rewritten in place in one of
//! two slots by [`ferry_durable::two_slots`]; it counts over the `.meta` file's only when its
//! generation is newer and it names the same owner epoch and creation time).
//!
//! **Durability.** A batch is copied once, behind a 64-byte record header, into an aligned
//! buffer; the cache thread takes every queued batch (group commit), writes them with O_DIRECT
//! through the engine (io_uring or pwritev) and fdatasyncs once; only then does any of them
//! count as durable, advance its disk's `durable_seq` and get its answer. On start, segments
//! are scanned, every record's CRCs checked, the first bad record ends a segment (a torn tail
//! is cut and reported, never a panic), and appending resumes in a new segment, so stale bytes
//! behind a cut are never overwritten in part and later mistaken for records.
//!
//! **Release.** A disk's batches leave the cache only through [`Cache::release`] (the upload
//! pipeline says they are in storage). The watermark is persisted first (the watermarks of
//! disks released together by one `syncfs`); a segment file is deleted only once every record
//! in it is released.
//!
//! **Bounds.** The write queue holds at most [`WRITE_QUEUE_DEPTH`] batches and one group at
//! most [`GROUP_MAX_BYTES`]; segment files never exceed `limit_bytes` in total (at the limit
//! admission answers `CacheFull`); the batches kept resident in memory for the upload
//! pipeline are bounded by `resident_budget_bytes` (older ones are read back from disk);
//! each disk remembers the header CRCs of its last [`RECENT_CRCS`] released batches.

pub mod aligned;
pub mod engine;
pub mod record;
mod recovery;
mod takeover;
mod void;
mod writer;

pub use void::VoidMark;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

use ferry_config::config::CacheEngine;
use ferry_durable::checked::{self, StateFileError};
pub use recovery::{Damage, RecoveryReport};

/// Batches queued for the cache thread at most.
pub const WRITE_QUEUE_DEPTH: usize = 1024;
/// Bytes one group commit writes at most.
pub const GROUP_MAX_BYTES: usize = 64 << 20;
/// Released batches per disk whose header CRC is remembered (PROTOCOL.md: at least 1,024).
pub const RECENT_CRCS: usize = 1024;

const DISK_META_MAGIC: [u8; 8] = *b"FRCDISK1";
const DISK_META_VERSION: u32 = 1;
const RELEASE_MAGIC: [u8; 8] = *b"FRCRELS1";
const RELEASE_VERSION: u32 = 1;
/// One slot of a `.release` file: a record with [`RECENT_CRCS`] pairs of the largest numbers
/// is about 36 KiB of JSON.
const RELEASE_SLOT_BYTES: usize = 48 << 10;
/// How many disks released together make their watermarks durable by one `syncfs` of the
/// cache's file system rather than an `fdatasync` each. Why: with hundreds of small disks
/// the releaser made about a hundred `fdatasync`s a second, each a journal commit and a sleep
/// (asr-sizing, docs/BENCHMARKS.md sixteenth step). A `syncfs` writes back whatever else is
/// dirty on that file system too, which on an appliance is the cache alone (its segments are
/// written with O_DIRECT and fdatasynced already).
const RELEASES_SYNCED_TOGETHER: usize = 2;

#[derive(Clone, Debug)]
pub struct CacheOptions {
    pub directory: PathBuf,
    pub limit_bytes: u64,
    pub segment_bytes: u64,
    pub engine: CacheEngine,
    pub max_batch_bytes: u32,
    pub window: u32,
    pub resident_budget_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("another ferryd is using the cache at {0} (its lock is held); stop it first")]
    Locked(PathBuf),
    #[error("cache I/O at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    #[error("cache configuration: {0}")]
    Config(String),
    #[error("unknown disk {0}")]
    UnknownDisk(Uuid),
    #[error("disk {0} is busy: {1}")]
    Busy(Uuid, &'static str),
}

/// One disk's release for [`Cache::release_many`]: its batches through `through_seq` (at
/// most its durable_seq) are in storage, as the pipeline of owner epoch `epoch` found.
#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub disk_id: Uuid,
    pub through_seq: u64,
    pub epoch: u64,
}

/// What the cache keeps about a disk (PROTOCOL.md section 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMeta {
    pub disk_id: Uuid,
    pub machine_id: Uuid,
    pub name: String,
    pub size_bytes: u64,
    pub sector_size: u32,
    pub write_ordered: bool,
    pub created_unix_ms: u64,
    /// Why the agent is re-reading the whole disk, while it does (`state: resync_required`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync_reason: Option<String>,
    /// The committed failover of the disk (`state: failed_over`): its new batches are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_over: Option<Uuid>,
    /// A reprotected disk: where its restore starts (the descriptor says it; FORMATS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reprotect_from: Option<ferry_format::plaintexts::ReprotectFrom>,
    /// The owner epoch this appliance holds the disk in (docs/SCALE-OUT.md): its cached
    /// batches are uploaded under it, and a release of another epoch is ignored.
    #[serde(default)]
    pub owner_epoch: u64,
}

#[derive(Serialize, Deserialize)]
struct DiskMetaFile {
    meta: DiskMeta,
    released_through: u64,
    /// (seq, header_crc32c) of the newest released batches, oldest first.
    recent: Vec<(u64, u32)>,
    /// Batches given up by their sender (see `void.rs`); absent in files from before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    voided: Vec<VoidMark>,
    /// The last `.release` generation this file includes: slots up to it are older news.
    #[serde(default)]
    release_generation: u64,
}

/// What a release writes into the disk's `.release` file (see the module header).
#[derive(Serialize, Deserialize)]
struct ReleaseRecord {
    /// The disk incarnation it belongs to: a record of an earlier one (the disk taken over,
    /// or forgotten and registered again) is never taken for this one's.
    owner_epoch: u64,
    created_unix_ms: u64,
    released_through: u64,
    /// (seq, header_crc32c) of the newest released batches, oldest first.
    recent: Vec<(u64, u32)>,
}

impl ReleaseRecord {
    fn belongs_to(&self, meta: &DiskMeta) -> bool {
        self.owner_epoch == meta.owner_epoch && self.created_unix_ms == meta.created_unix_ms
    }
}

/// Removes `disks/{disk_id}.release` if there is one; the caller makes it durable with a
/// directory fsync.
fn remove_release_file(disks_dir: &Path, disk_id: Uuid) -> Result<(), CacheError> {
    let path = disks_dir.join(format!("{disk_id}.release"));
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CacheError::Io { path, source }),
    }
}

/// A snapshot of one disk's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskView {
    pub meta: DiskMeta,
    pub durable_seq: u64,
    pub released_through: u64,
    pub cached_batches: usize,
}

/// The outcome of asking to store batch `seq` with a given header CRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Write it: call [`Cache::append`] (or [`Cache::abandon`]).
    Accept,
    /// Already durable with the same header CRC: answer 200 again.
    AlreadyStored { durable_seq: u64 },
    /// Already stored (or too old to check) with other content: 409 seq_conflict.
    Conflict { expected_seq: u64 },
    /// Beyond the window: 409 out_of_window.
    OutOfWindow { expected_seq: u64 },
    /// The same seq is being written right now: 503, retry shortly.
    InFlight,
    /// No room: 503 cache_full.
    CacheFull,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("the cache is full")]
    CacheFull,
    #[error("cache write failed: {0}")]
    Io(String),
    #[error("the cache is shutting down")]
    ShuttingDown,
    #[error("the cache's write queue is full")]
    QueueFull,
}

/// What the pipeline needs to know about a cached batch to cut change sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchInfo {
    pub batch_len: u32,
    pub has_bookmark: bool,
}

/// Disk and space usage, for status and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub segment_bytes_total: u64,
    pub limit_bytes: u64,
    pub live_bytes: u64,
    pub segments: usize,
    pub resident_bytes: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    segment_id: u64,
    offset: u64,
    record_len: u64,
    batch_len: u32,
    header_crc: u32,
    has_bookmark: bool,
    resident: Option<Bytes>,
}

struct DiskState {
    meta: DiskMeta,
    released_through: u64,
    durable_seq: u64,
    entries: BTreeMap<u64, Entry>,
    in_flight: HashSet<u64>,
    recent: VecDeque<(u64, u32)>,
    voided: Vec<VoidMark>,
    /// Set while batches past `durable_seq` are being given up: new batches wait (503).
    voiding: bool,
    /// The last generation written to (or read from) the disk's `.release` file.
    release_generation: u64,
}

impl DiskState {
    fn new(meta: DiskMeta, released_through: u64, recent: VecDeque<(u64, u32)>) -> Self {
        Self {
            meta,
            released_through,
            durable_seq: released_through,
            entries: BTreeMap::new(),
            in_flight: HashSet::new(),
            recent,
            voided: Vec::new(),
            voiding: false,
            release_generation: 0,
        }
    }

    /// What the disk's meta file holds, with `meta` and `released_through` as given.
    fn meta_file(&self, meta: DiskMeta, released_through: u64, recent: Vec<(u64, u32)>) -> DiskMetaFile {
        DiskMetaFile {
            meta,
            released_through,
            recent,
            voided: self.voided.clone(),
            release_generation: self.release_generation,
        }
    }

    fn advance_durable(&mut self) {
        while self.entries.contains_key(&(self.durable_seq + 1)) {
            self.durable_seq += 1;
        }
    }

    fn stored_crc(&self, seq: u64) -> Option<u32> {
        self.entries
            .get(&seq)
            .map(|e| e.header_crc)
            .or_else(|| self.recent.iter().find(|(s, _)| *s == seq).map(|(_, c)| *c))
    }
}

#[derive(Clone, Debug)]
struct SegmentInfo {
    path: PathBuf,
    live_records: u64,
    live_bytes: u64,
}

struct State {
    disks: HashMap<Uuid, DiskState>,
    segments: BTreeMap<u64, SegmentInfo>,
    active_segment: Option<u64>,
    /// Bytes written into the active segment so far (including its header block).
    active_used: u64,
    /// Record bytes admitted but not yet written.
    pending_bytes: u64,
    resident_bytes: u64,
    resident_order: VecDeque<(Uuid, u64)>,
    /// Disks whose durable_seq advanced since the pipeline last took them
    /// ([`Cache::take_advanced`]): with hundreds of disks, a pass over every disk per write
    /// was most of the pipeline coordinator's CPU. At most one entry per disk.
    advanced: HashSet<Uuid>,
}

pub(crate) struct Shared {
    options: CacheOptions,
    /// `options.limit_bytes` and `options.resident_budget_bytes` as tuned at run time.
    limit_bytes: std::sync::atomic::AtomicU64,
    resident_budget_bytes: std::sync::atomic::AtomicU64,
    /// Signalled after every group commit that made batches durable (the pipeline waits on it).
    durable: Arc<tokio::sync::Notify>,
    state: Mutex<State>,
    release_lock: Mutex<()>,
    /// Fault injection for tests ([`Cache::fail_next_release_sync`]): the next release's
    /// `syncfs` or directory fsync fails.
    release_sync_fault: std::sync::atomic::AtomicBool,
    engine_name: &'static str,
}

impl Shared {
    fn limit_bytes(&self) -> u64 {
        self.limit_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn resident_budget_bytes(&self) -> u64 {
        self.resident_budget_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug already reported; the state stays usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn segments_dir(&self) -> PathBuf {
        self.options.directory.join("segments")
    }

    fn disks_dir(&self) -> PathBuf {
        self.options.directory.join("disks")
    }

    /// Whether `more` record bytes fit within the limit, counting what is already admitted.
    fn fits(&self, state: &State, more: u64) -> bool {
        let segment = self.options.segment_bytes;
        let usable = segment - record::SEGMENT_HEADER_LEN as u64;
        let active_free = if state.active_segment.is_some() {
            segment.saturating_sub(state.active_used)
        } else {
            0
        };
        let needed = state.pending_bytes + more;
        let new_segments = needed.saturating_sub(active_free).div_ceil(usable);
        let total = state.segments.len() as u64 * segment;
        total + new_segments * segment <= self.limit_bytes()
    }
}

/// The cache. Cloning shares it.
#[derive(Clone)]
pub struct Cache {
    shared: Arc<Shared>,
    writer: writer::WriterHandle,
}

impl Cache {
    /// Locks and recovers the cache directory and starts the cache thread.
    pub fn open(options: CacheOptions) -> Result<(Cache, RecoveryReport), CacheError> {
        let minimum = 2 * options.segment_bytes;
        if options.limit_bytes < minimum {
            return Err(CacheError::Config(format!(
                "the cache limit must be at least two segments ({minimum} bytes)"
            )));
        }
        let engine = engine::select(options.engine).map_err(|source| CacheError::Io {
            path: options.directory.clone(),
            source,
        })?;
        let recovered = recovery::recover(&options)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                disks: recovered.disks,
                segments: recovered.segments,
                active_segment: None,
                active_used: 0,
                pending_bytes: 0,
                resident_bytes: 0,
                resident_order: VecDeque::new(),
                advanced: HashSet::new(),
            }),
            release_lock: Mutex::new(()),
            release_sync_fault: std::sync::atomic::AtomicBool::new(false),
            durable: Arc::new(tokio::sync::Notify::new()),
            engine_name: engine.name(),
            limit_bytes: options.limit_bytes.into(),
            resident_budget_bytes: options.resident_budget_bytes.into(),
            options,
        });
        let mut report = recovered.report;
        report.engine = engine.name();
        let writer = writer::start(shared.clone(), engine, recovered.next_segment_id, recovered.lock);
        Ok((Cache { shared, writer }, report))
    }

    /// Notified whenever batches become durable.
    pub fn durable_notify(&self) -> Arc<tokio::sync::Notify> {
        self.shared.durable.clone()
    }

    pub fn engine_name(&self) -> &'static str {
        self.shared.engine_name
    }

    pub fn options(&self) -> &CacheOptions {
        &self.shared.options
    }

    /// Creates a disk or returns the existing one. The caller checks ownership and sizes.
    pub fn create_disk(&self, meta: DiskMeta) -> Result<DiskView, CacheError> {
        let path = self.shared.disks_dir().join(format!("{}.meta", meta.disk_id));
        {
            let state = self.shared.state();
            if let Some(existing) = state.disks.get(&meta.disk_id) {
                return Ok(view(existing));
            }
        }
        // A leftover of an earlier incarnation goes with the new `.meta`'s directory fsync.
        remove_release_file(&self.shared.disks_dir(), meta.disk_id)?;
        checked::write(
            &path,
            DISK_META_MAGIC,
            DISK_META_VERSION,
            &DiskMetaFile {
                meta: meta.clone(),
                released_through: 0,
                recent: Vec::new(),
                voided: Vec::new(),
                release_generation: 0,
            },
        )?;
        let mut state = self.shared.state();
        let disk = state
            .disks
            .entry(meta.disk_id)
            .or_insert_with(|| DiskState::new(meta, 0, VecDeque::new()));
        Ok(view(disk))
    }

    /// Updates a disk's definition (a resize or a rename), durably.
    pub fn update_disk(&self, meta: DiskMeta) -> Result<DiskView, CacheError> {
        let _releasing = self.shared.release_lock.lock().unwrap_or_else(|p| p.into_inner());
        let file = {
            let state = self.shared.state();
            let disk = state
                .disks
                .get(&meta.disk_id)
                .ok_or(CacheError::UnknownDisk(meta.disk_id))?;
            disk.meta_file(
                meta.clone(),
                disk.released_through,
                disk.recent.iter().copied().collect(),
            )
        };
        checked::write(
            &self.shared.disks_dir().join(format!("{}.meta", meta.disk_id)),
            DISK_META_MAGIC,
            DISK_META_VERSION,
            &file,
        )?;
        let mut state = self.shared.state();
        let disk = state
            .disks
            .get_mut(&meta.disk_id)
            .ok_or(CacheError::UnknownDisk(meta.disk_id))?;
        disk.meta = meta;
        Ok(view(disk))
    }

    /// Records that the disk was failed over by the committed failover `failover_id` (from
    /// then on its new batches are refused), durably; unchanged when already so.
    pub fn set_failed_over(&self, disk_id: Uuid, failover_id: Uuid) -> Result<DiskView, CacheError> {
        let meta = {
            let state = self.shared.state();
            let disk = state.disks.get(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
            if disk.meta.failed_over == Some(failover_id) {
                return Ok(view(disk));
            }
            DiskMeta {
                failed_over: Some(failover_id),
                ..disk.meta.clone()
            }
        };
        self.update_disk(meta)
    }

    /// Lifts the mark of failover `failover_id` (the disk was failed back: its batches are
    /// accepted again), durably; unchanged when the disk carries no such mark.
    pub fn clear_failed_over(&self, disk_id: Uuid, failover_id: Uuid) -> Result<DiskView, CacheError> {
        let meta = {
            let state = self.shared.state();
            let disk = state.disks.get(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
            if disk.meta.failed_over != Some(failover_id) {
                return Ok(view(disk));
            }
            DiskMeta {
                failed_over: None,
                ..disk.meta.clone()
            }
        };
        self.update_disk(meta)
    }

    pub fn disk(&self, disk_id: Uuid) -> Option<DiskView> {
        self.shared.state().disks.get(&disk_id).map(view)
    }

    /// The owner epoch the disk is held in (no copy of its view: the pipeline asks per upload).
    pub fn owner_epoch(&self, disk_id: Uuid) -> Option<u64> {
        self.shared.state().disks.get(&disk_id).map(|d| d.meta.owner_epoch)
    }

    pub fn disks(&self) -> Vec<DiskView> {
        self.shared.state().disks.values().map(view).collect()
    }

    /// The disks whose durable_seq advanced since the last call (each once), and forgets them.
    pub fn take_advanced(&self) -> Vec<DiskView> {
        let mut state = self.shared.state();
        let mut advanced = std::mem::take(&mut state.advanced);
        let views = advanced.iter().filter_map(|id| state.disks.get(id)).map(view).collect();
        advanced.clear();
        state.advanced = advanced; // keeps its capacity
        views
    }

    /// Forgets which disks advanced (a pass over every disk is about to look at all of them).
    pub fn clear_advanced(&self) {
        self.shared.state().advanced.clear();
    }

    /// The views of these disks (those the cache still has).
    pub fn views_of(&self, disk_ids: &[Uuid]) -> Vec<DiskView> {
        let state = self.shared.state();
        disk_ids.iter().filter_map(|id| state.disks.get(id)).map(view).collect()
    }

    /// The first check, before reading a body: is `seq` possibly acceptable?
    pub fn window_check(&self, disk_id: Uuid, seq: u64) -> Result<Option<Admission>, CacheError> {
        let state = self.shared.state();
        let disk = state.disks.get(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
        let window = u64::from(self.shared.options.window);
        if seq > disk.durable_seq + window {
            return Ok(Some(Admission::OutOfWindow {
                expected_seq: disk.durable_seq + 1,
            }));
        }
        Ok(None)
    }

    /// Decides what to do with batch `seq` (header CRC `header_crc`) of `record_len` bytes on
    /// disk. `Accept` reserves the seq and the space until [`Cache::append`] or [`Cache::abandon`].
    pub fn admit(&self, disk_id: Uuid, seq: u64, header_crc: u32, record_len: u64) -> Result<Admission, CacheError> {
        let mut state = self.shared.state();
        let fits = self.shared.fits(&state, record_len);
        let disk = state.disks.get_mut(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
        let expected_seq = disk.durable_seq + 1;
        if seq <= disk.durable_seq || disk.entries.contains_key(&seq) {
            return Ok(match disk.stored_crc(seq) {
                Some(crc) if crc == header_crc => Admission::AlreadyStored {
                    durable_seq: disk.durable_seq,
                },
                _ => Admission::Conflict { expected_seq },
            });
        }
        if seq > disk.durable_seq + u64::from(self.shared.options.window) {
            return Ok(Admission::OutOfWindow { expected_seq });
        }
        if disk.in_flight.contains(&seq) || disk.voiding {
            return Ok(Admission::InFlight);
        }
        if !fits {
            return Ok(Admission::CacheFull);
        }
        disk.in_flight.insert(seq);
        state.pending_bytes += record_len;
        Ok(Admission::Accept)
    }

    /// Gives up an accepted seq without writing it.
    pub fn abandon(&self, disk_id: Uuid, seq: u64, record_len: u64) {
        let mut state = self.shared.state();
        state.pending_bytes = state.pending_bytes.saturating_sub(record_len);
        if let Some(disk) = state.disks.get_mut(&disk_id) {
            disk.in_flight.remove(&seq);
        }
    }

    /// Writes an accepted batch. `record` is the aligned record (header + batch + padding).
    /// Resolves with the disk's `durable_seq` once the batch is durable.
    pub async fn append(
        &self,
        disk_id: Uuid,
        seq: u64,
        record: Bytes,
        batch_len: u32,
        header_crc: u32,
    ) -> Result<u64, AppendError> {
        let record_len = record.len() as u64;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let request = writer::WriteRequest {
            disk_id,
            seq,
            record,
            batch_len,
            header_crc,
            reply,
        };
        if let Err(refusal) = self.writer.try_send(request) {
            self.abandon(disk_id, seq, record_len);
            return Err(match refusal {
                writer::QueueRefusal::Full => AppendError::QueueFull,
                writer::QueueRefusal::Stopped => AppendError::ShuttingDown,
            });
        }
        answer.await.unwrap_or(Err(AppendError::ShuttingDown))
    }

    /// Size and bookmark presence of a cached batch.
    pub fn batch_info(&self, disk_id: Uuid, seq: u64) -> Option<BatchInfo> {
        let state = self.shared.state();
        let entry = state.disks.get(&disk_id)?.entries.get(&seq)?;
        Some(BatchInfo {
            batch_len: entry.batch_len,
            has_bookmark: entry.has_bookmark,
        })
    }

    /// The batch `seq` of a disk, exactly as received: from memory while resident, else
    /// read back from its segment.
    pub fn read_batch(&self, disk_id: Uuid, seq: u64) -> Result<Option<Bytes>, CacheError> {
        let (entry, path) = {
            let state = self.shared.state();
            let Some(entry) = state.disks.get(&disk_id).and_then(|d| d.entries.get(&seq)).cloned() else {
                return Ok(None);
            };
            let path = state.segments.get(&entry.segment_id).map(|s| s.path.clone());
            (entry, path)
        };
        let start = record::RECORD_HEADER_LEN;
        let end = start + entry.batch_len as usize;
        if let Some(resident) = entry.resident {
            return Ok(Some(resident.slice(start..end)));
        }
        let path = path.ok_or_else(|| CacheError::Io {
            path: self.shared.segments_dir(),
            source: std::io::Error::other(format!("segment {} is missing", entry.segment_id)),
        })?;
        let io_error = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        // The whole record, with O_DIRECT into a pooled aligned buffer: no page-cache copy
        // (it was 5% of ferryd when a backlog outgrew the resident budget) and no fresh pages.
        let file = open_for_direct_reads(&path).map_err(io_error)?;
        let mut record = aligned::AlignedBuf::reused(entry.record_len as usize);
        file.read_exact_at(record.as_mut_slice(), entry.offset)
            .map_err(io_error)?;
        let damaged = |why: String| CacheError::Io {
            path: path.clone(),
            source: std::io::Error::other(format!("record of seq {seq} at offset {}: {why}", entry.offset)),
        };
        match record::parse_record_header(record.as_slice(), u32::MAX) {
            record::RecordStatus::Valid(header)
                if header.disk_id == disk_id && header.seq == seq && header.batch_len == entry.batch_len => {}
            record::RecordStatus::Valid(_) => return Err(damaged("another record is there".into())),
            record::RecordStatus::End => return Err(damaged("nothing is there".into())),
            record::RecordStatus::Corrupted(why) => return Err(damaged(why)),
        }
        Ok(Some(record.freeze().slice(start..end)))
    }

    /// The pipeline stored every batch of `disk_id` through `through_seq`: persist that, then
    /// forget those batches and delete the segments nothing lives in any more.
    /// A release asked under another owner epoch than the disk's now (the disk was taken over
    /// meanwhile, see `takeover.rs`) does nothing.
    pub fn release(&self, disk_id: Uuid, through_seq: u64, epoch: u64) -> Result<(), CacheError> {
        let mut results = self.release_many(&[Release {
            disk_id,
            through_seq,
            epoch,
        }]);
        results.pop().unwrap_or(Ok(()))
    }

    /// [`Cache::release`] for several disks at once: each disk's watermark is rewritten in
    /// place in its `.release` file (no new file, no rename, no directory fsync but for a
    /// disk's first release), made durable by one `fdatasync` for a lone disk or one `syncfs`
    /// for several. One result per request, in order; a disk's failure leaves its batches
    /// cached and the others released.
    pub fn release_many(&self, requests: &[Release]) -> Vec<Result<(), CacheError>> {
        let _releasing = self.shared.release_lock.lock().unwrap_or_else(|p| p.into_inner());
        let disks_dir = self.shared.disks_dir();
        let mut results: Vec<Result<(), CacheError>> = Vec::with_capacity(requests.len());
        // (request index, generation, record)
        let mut planned: Vec<(usize, u64, ReleaseRecord)> = Vec::new();
        {
            let state = self.shared.state();
            for (index, request) in requests.iter().enumerate() {
                results.push(Ok(()));
                let Some(disk) = state.disks.get(&request.disk_id) else {
                    results[index] = Err(CacheError::UnknownDisk(request.disk_id));
                    continue;
                };
                if disk.meta.owner_epoch != request.epoch {
                    continue;
                }
                let through = request.through_seq.min(disk.durable_seq);
                if planned.iter().any(|(i, _, _)| requests[*i].disk_id == request.disk_id) {
                    // Never answered Ok without being done; the caller asks again.
                    results[index] = Err(CacheError::Busy(request.disk_id, "released twice in one group"));
                    continue;
                }
                if through <= disk.released_through {
                    continue;
                }
                let mut recent = disk.recent.clone();
                for (seq, entry) in disk.entries.range(..=through) {
                    recent.push_back((*seq, entry.header_crc));
                }
                while recent.len() > RECENT_CRCS {
                    recent.pop_front();
                }
                planned.push((
                    index,
                    disk.release_generation + 1,
                    ReleaseRecord {
                        owner_epoch: disk.meta.owner_epoch,
                        created_unix_ms: disk.meta.created_unix_ms,
                        released_through: through,
                        recent: recent.into_iter().collect(),
                    },
                ));
            }
        }
        // The watermarks are durable before any record is forgotten or any file deleted: one
        // `fdatasync` for a lone disk, one `syncfs` for several (see RELEASES_SYNCED_TOGETHER).
        // A disk's first release (generation 1, or a file that was missing) must also make the
        // file's name durable; when that fails the file is removed (best effort), so neither a
        // later release nor a restart takes a name that a crash could still lose.
        let synced_together = planned.len() >= RELEASES_SYNCED_TOGETHER;
        let release_path = |index: usize| disks_dir.join(format!("{}.release", requests[index].disk_id));
        let remove_new_files = |indices: &[usize]| {
            for index in indices {
                let _ = std::fs::remove_file(release_path(*index));
            }
        };
        let fault = || {
            self.shared
                .release_sync_fault
                .swap(false, std::sync::atomic::Ordering::Relaxed)
        };
        let mut written = Vec::with_capacity(planned.len());
        let mut created = Vec::new();
        for (index, generation, record) in planned {
            let path = release_path(index);
            let write = if synced_together {
                ferry_durable::two_slots::write_unsynced
            } else {
                ferry_durable::two_slots::write
            };
            match write(
                &path,
                RELEASE_SLOT_BYTES,
                RELEASE_MAGIC,
                RELEASE_VERSION,
                generation,
                &record,
            ) {
                Ok(new_file) => {
                    if new_file || generation == 1 {
                        created.push(index);
                    }
                    written.push((index, generation, record));
                }
                Err(source) => {
                    if generation == 1 {
                        remove_new_files(&[index]);
                    }
                    results[index] = Err(CacheError::Io { path, source });
                }
            }
        }
        if synced_together && !written.is_empty() {
            // One round for the data of every file written above and for their names.
            let synced = injected(fault(), "syncfs").and_then(|()| {
                std::fs::File::open(&disks_dir).and_then(|dir| rustix::fs::syncfs(&dir).map_err(Into::into))
            });
            if let Err(source) = synced {
                for (index, _, _) in &written {
                    results[*index] = Err(CacheError::Io {
                        path: disks_dir.clone(),
                        source: std::io::Error::new(source.kind(), format!("syncfs: {source}")),
                    });
                }
                remove_new_files(&created);
                written.clear();
            }
        } else if !created.is_empty() {
            // A first release's file name, like a rename, is durable with its directory.
            let synced = injected(fault(), "fsync").and_then(|()| ferry_durable::fsync_dir(&disks_dir));
            if let Err(source) = synced {
                for index in &created {
                    results[*index] = Err(CacheError::Io {
                        path: disks_dir.clone(),
                        source: std::io::Error::new(source.kind(), source.to_string()),
                    });
                }
                remove_new_files(&created);
                written.retain(|(index, _, _)| !created.contains(index));
            }
        }
        let empty_segments = {
            let mut state = self.shared.state();
            let state = &mut *state;
            for (index, generation, record) in written {
                let disk_id = requests[index].disk_id;
                let Some(disk) = state.disks.get_mut(&disk_id) else {
                    results[index] = Err(CacheError::UnknownDisk(disk_id));
                    continue;
                };
                let through = record.released_through;
                let kept = disk.entries.split_off(&(through + 1));
                let released = std::mem::replace(&mut disk.entries, kept);
                disk.released_through = through;
                disk.recent = record.recent.into_iter().collect();
                disk.release_generation = generation;
                for entry in released.values() {
                    forget_entry(&mut state.segments, &mut state.resident_bytes, entry);
                }
            }
            take_empty_segments(state)
        };
        if let Err(e) = delete_segments(&self.shared.segments_dir(), &empty_segments) {
            // The watermarks moved; the segments stay on disk until the next start scans them.
            for result in results.iter_mut().filter(|r| r.is_ok()) {
                *result = Err(CacheError::Io {
                    path: self.shared.segments_dir(),
                    source: std::io::Error::other(e.to_string()),
                });
            }
        }
        results
    }

    /// Fault injection, for tests only: the next [`Cache::release_many`] that syncs (a `syncfs`
    /// for several disks, a directory fsync for a lone disk's first release) fails as if the
    /// file system had reported an I/O error.
    #[doc(hidden)]
    pub fn fail_next_release_sync(&self) {
        self.shared
            .release_sync_fault
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Batch bytes of `disk_id` still in the cache (acknowledged, not yet released). Walks the
    /// disk's entries: for status, not the hot path.
    pub fn backlog_bytes(&self, disk_id: Uuid) -> u64 {
        let state = self.shared.state();
        state
            .disks
            .get(&disk_id)
            .map_or(0, |d| d.entries.values().map(|e| u64::from(e.batch_len)).sum())
    }

    /// Changes the space limit at run time (at least two segments). Lowering it below what is
    /// in use refuses new batches until uploads release segments; nothing is dropped.
    pub fn set_limit_bytes(&self, limit: u64) -> Result<(), CacheError> {
        let minimum = 2 * self.shared.options.segment_bytes;
        if limit < minimum {
            return Err(CacheError::Config(format!(
                "the cache limit must be at least two segments ({minimum} bytes)"
            )));
        }
        self.shared
            .limit_bytes
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Changes how much of received batches the cache keeps in memory for the seal workers.
    pub fn set_resident_budget_bytes(&self, budget: u64) {
        self.shared
            .resident_budget_bytes
            .store(budget, std::sync::atomic::Ordering::Relaxed);
    }

    /// (space the segment files take, the limit): cheap enough for every batch.
    pub fn space(&self) -> (u64, u64) {
        let segments = self.shared.state().segments.len() as u64;
        (segments * self.shared.options.segment_bytes, self.shared.limit_bytes())
    }

    pub fn usage(&self) -> Usage {
        let state = self.shared.state();
        Usage {
            segment_bytes_total: state.segments.len() as u64 * self.shared.options.segment_bytes,
            limit_bytes: self.shared.limit_bytes(),
            live_bytes: state.segments.values().map(|s| s.live_bytes).sum(),
            segments: state.segments.len(),
            resident_bytes: state.resident_bytes,
        }
    }

    /// Stops the cache thread after it has written everything queued.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

/// Opens a segment for O_DIRECT reads (plain reads where the file system has no O_DIRECT,
/// such as tmpfs).
fn open_for_direct_reads(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => File::open(path),
        other => other,
    }
}

fn view(disk: &DiskState) -> DiskView {
    DiskView {
        meta: disk.meta.clone(),
        durable_seq: disk.durable_seq,
        released_through: disk.released_through,
        cached_batches: disk.entries.len(),
    }
}

/// Takes a forgotten batch's record out of its segment's live counts, and its resident bytes
/// (if it was kept in memory) out of the resident total.
fn forget_entry(segments: &mut BTreeMap<u64, SegmentInfo>, resident_bytes: &mut u64, entry: &Entry) {
    if let Some(segment) = segments.get_mut(&entry.segment_id) {
        segment.live_records = segment.live_records.saturating_sub(1);
        segment.live_bytes = segment.live_bytes.saturating_sub(entry.record_len);
    }
    if let Some(resident) = &entry.resident {
        *resident_bytes = resident_bytes.saturating_sub(resident.len() as u64);
    }
}

/// An injected failure ([`Cache::fail_next_release_sync`]) of the named call, or nothing.
fn injected(fault: bool, call: &str) -> std::io::Result<()> {
    if fault {
        return Err(std::io::Error::other(format!("injected failure of {call} (test)")));
    }
    Ok(())
}

/// Removes (from the state) segments with no live record that are not being written.
fn take_empty_segments(state: &mut State) -> Vec<PathBuf> {
    let empty: Vec<u64> = state
        .segments
        .iter()
        .filter(|(id, s)| s.live_records == 0 && Some(**id) != state.active_segment)
        .map(|(id, _)| *id)
        .collect();
    empty
        .iter()
        .filter_map(|id| state.segments.remove(id))
        .map(|s| s.path)
        .collect()
}

fn delete_segments(dir: &Path, paths: &[PathBuf]) -> Result<(), CacheError> {
    if paths.is_empty() {
        return Ok(());
    }
    for path in paths {
        std::fs::remove_file(path).map_err(|source| CacheError::Io {
            path: path.clone(),
            source,
        })?;
    }
    ferry_durable::fsync_dir(dir).map_err(|source| CacheError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// A record being filled: an aligned buffer with room for the 64-byte record header and a
/// batch of known length. The received body is copied straight into [`RecordBuffer::batch_mut`]
/// (the one copy), then [`RecordBuffer::finish`] writes the header and freezes the memory.
pub struct RecordBuffer {
    buf: aligned::AlignedBuf,
    batch_len: usize,
}

impl RecordBuffer {
    /// A buffer from the pool ([`aligned`]): the header is written by `finish`, the padding
    /// after the batch is zeroed here, and the caller fills every byte of [`Self::batch_mut`]
    /// (or drops the buffer), so nothing of an earlier record survives in it.
    pub fn new(batch_len: usize) -> Self {
        let mut buf = aligned::AlignedBuf::reused(record::record_len(batch_len));
        buf.as_mut_slice()[record::RECORD_HEADER_LEN + batch_len..].fill(0);
        Self { buf, batch_len }
    }

    pub fn batch_mut(&mut self) -> &mut [u8] {
        &mut self.buf.as_mut_slice()[record::RECORD_HEADER_LEN..record::RECORD_HEADER_LEN + self.batch_len]
    }

    /// Writes the record header for batch `seq` of `disk_id` (taking the batch's header CRC
    /// from its bytes; the caller validates the batch before appending) and returns the whole
    /// record plus a view of just the batch, both over the same memory.
    pub fn finish(mut self, disk_id: Uuid, seq: u64) -> (Bytes, Bytes, u32) {
        let batch = self.batch_mut();
        let header_crc = batch
            .get(36..40)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .unwrap_or(0);
        let header = record::RecordHeader {
            disk_id,
            seq,
            batch_len: self.batch_len as u32,
            batch_header_crc: header_crc,
        };
        header.encode(self.buf.as_mut_slice());
        let batch_len = self.batch_len;
        let record = self.buf.freeze();
        let batch = record.slice(record::RECORD_HEADER_LEN..record::RECORD_HEADER_LEN + batch_len);
        (record, batch, header_crc)
    }
}
