//! The pipeline's slow calls other than change set uploads: writing a disk's descriptor
//! (`disk.fseal`) and its recovery points, reading its newest point back after a restart, and
//! releasing cached batches (a state-file replace). Each storage call runs as its own tokio
//! task and reports a [`Done`] on a bounded channel, so the coordinator never waits on storage
//! or the disk, and one disk's slow or failing call never holds up another disk's commits.
//! Releases go to one thread, the releaser, which takes every release queued and makes them
//! durable together ([`Cache::release_many`]: each disk's watermark rewritten in place, one
//! `syncfs` for several disks, an `fdatasync` for a lone one) instead of a blocking-pool task
//! per release, serialized on the cache's release lock.
//!
//! Ownership: each call is made for the owner epoch the coordinator's disk was in; points are
//! named with it, and a storage write is made only while [`crate::ownership::Ownership`] says
//! the disk is writable in that epoch (checked right before it). Answers carry the epoch so the
//! coordinator drops those of a disk taken over meanwhile.
//!
//! Bounds: at most [`STORAGE_CALLS_MAX`] storage calls run at once (the rest wait for a
//! permit), at most [`RELEASE_QUEUE_DEPTH`] releases wait for the releaser and it takes at
//! most [`RELEASE_GROUP_MAX`] at a time; the coordinator puts out at most one call of each kind
//! per disk (its [`super::ledger::Ledger`] enforces that for points and releases), so the
//! number of tasks is bounded by the number of disks. Each storage call goes through the
//! storage layer's own retries; what still fails comes back as an error for the coordinator
//! to retry after [`super::TRANSIENT_PAUSE`] or [`super::PERMANENT_PAUSE`].

use bytes::Bytes;
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{DiskDescriptor, RecoveryPoint, PLAINTEXT_FORMAT};
use ferry_format::{BookmarkId, Keyring};
use ferry_storage::{ObjectStorage, StorageError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use uuid::Uuid;

use super::worker::FoundBookmark;
use super::{PipelineStatus, PointSummary};
use crate::cache::{Cache, Release};

/// Storage calls (descriptors, points, reads of the newest point) running at once at most.
pub const STORAGE_CALLS_MAX: usize = 32;
/// Releases waiting for the releaser thread at most (a task waits for room beyond that).
pub const RELEASE_QUEUE_DEPTH: usize = 1024;
/// Releases the releaser makes durable together at most.
pub const RELEASE_GROUP_MAX: usize = 256;
/// Answers waiting for the coordinator at most; a finished task waits for room.
pub const DONE_QUEUE_DEPTH: usize = 256;

/// How [`Calls::put_sealed_json`] writes: over what is there (a disk's descriptor, rewritten
/// after a resize), or only where nothing is (a recovery point: one written before a crash
/// keeps its creation time).
#[derive(Clone, Copy)]
enum Write {
    Replace,
    CreateNew,
}

/// A call's failure: from storage (which says whether retrying can help) or local.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Local(String),
}

impl CallError {
    /// How long to wait before trying again.
    pub fn pause(&self) -> Duration {
        match self {
            CallError::Storage(e) if e.is_permanent() => super::PERMANENT_PAUSE,
            _ => super::TRANSIENT_PAUSE,
        }
    }
}

/// The work a call does.
pub enum Call {
    /// Write `disk.fseal`.
    Descriptor(DiskDescriptor),
    /// Write these recovery points in order, stopping at the first failure.
    Points {
        disk_id: Uuid,
        points: Vec<(u64, FoundBookmark)>,
    },
    /// Read the disk's newest recovery point from storage.
    NewestPoint { disk_id: Uuid },
    /// Release the cache's batches through `through`.
    Release { disk_id: Uuid, through: u64 },
}

/// A call's answer.
pub enum Done {
    Descriptor {
        descriptor: DiskDescriptor,
        result: Result<(), CallError>,
    },
    Points {
        disk_id: Uuid,
        /// The points written, in order (a prefix of those asked for).
        written: Vec<PointSummary>,
        error: Option<CallError>,
    },
    NewestPoint {
        disk_id: Uuid,
        result: Result<Option<PointSummary>, CallError>,
    },
    Release {
        disk_id: Uuid,
        result: Result<(), CallError>,
    },
}

/// Starts calls; cheap to clone into tasks.
#[derive(Clone)]
pub struct Calls {
    storage: Arc<dyn ObjectStorage>,
    keyring: Keyring,
    ownership: Arc<crate::ownership::Ownership>,
    bucket: Arc<ferry_storage::TokenBucket>,
    status: PipelineStatus,
    storage_permits: Arc<Semaphore>,
    /// To the releaser thread: a release and where its outcome goes.
    releases: mpsc::Sender<(Release, ReleaseAnswer)>,
    done: mpsc::Sender<(u64, Done)>,
}

impl Calls {
    /// The calls' runner and the receiver of their answers.
    pub fn new(
        storage: Arc<dyn ObjectStorage>,
        keyring: Keyring,
        cache: Cache,
        ownership: Arc<crate::ownership::Ownership>,
        bucket: Arc<ferry_storage::TokenBucket>,
        status: PipelineStatus,
    ) -> std::io::Result<(Self, mpsc::Receiver<(u64, Done)>)> {
        let (done, answers) = mpsc::channel(DONE_QUEUE_DEPTH);
        let (releases, queued) = mpsc::channel(RELEASE_QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("ferry-release".into())
            .spawn(move || run_releaser(&cache, queued))?;
        let calls = Self {
            storage,
            keyring,
            ownership,
            bucket,
            status,
            storage_permits: Arc::new(Semaphore::new(STORAGE_CALLS_MAX)),
            releases,
            done,
        };
        Ok((calls, answers))
    }

    /// Runs `call` for the disk in owner epoch `epoch` in its own task; its answer arrives on
    /// the receiver with the epoch.
    pub fn start(&self, epoch: u64, call: Call) {
        let this = self.clone();
        tokio::spawn(async move {
            // Releases wait in the releaser's queue instead of for a storage permit.
            let _permit = match call {
                Call::Release { .. } => None,
                _ => match this.storage_permits.clone().acquire_owned().await {
                    Ok(permit) => Some(permit),
                    Err(_) => return,
                },
            };
            let done = this.run(epoch, call).await;
            // Closed only when the pipeline stopped: the answer no longer matters.
            let _ = this.done.send((epoch, done)).await;
        });
    }

    async fn run(&self, epoch: u64, call: Call) -> Done {
        match call {
            Call::Descriptor(descriptor) => {
                let name = ObjectName::DiskMeta {
                    disk_id: descriptor.disk_id,
                }
                .to_string();
                let result = self
                    .put_sealed_json(descriptor.disk_id, epoch, &name, &descriptor, Write::Replace)
                    .await;
                Done::Descriptor { descriptor, result }
            }
            Call::Points { disk_id, points } => {
                let mut written = Vec::with_capacity(points.len());
                let mut error = None;
                for (_, found) in &points {
                    match self.write_point(disk_id, epoch, found).await {
                        Ok(summary) => written.push(summary),
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    }
                }
                Done::Points {
                    disk_id,
                    written,
                    error,
                }
            }
            Call::NewestPoint { disk_id } => Done::NewestPoint {
                disk_id,
                result: self.newest_point(disk_id).await,
            },
            Call::Release { disk_id, through } => {
                let (answer, answered) = tokio::sync::oneshot::channel();
                let release = Release {
                    disk_id,
                    through_seq: through,
                    epoch,
                };
                let result = match self.releases.send((release, answer)).await {
                    Ok(()) => answered
                        .await
                        .unwrap_or_else(|_| Err("the releaser thread stopped".into())),
                    Err(_) => Err("the releaser thread stopped".into()),
                };
                Done::Release {
                    disk_id,
                    result: result.map_err(|e| CallError::Local(format!("cannot release the cache: {e}"))),
                }
            }
        }
    }

    /// Seals `value` as JSON under the disk's key and writes it (`Write::Replace`), or only
    /// when no object has its name (`Write::CreateNew`: one conditional PUT, no HEAD first).
    /// Metadata is small and must not queue behind uploads: it goes now, charged to the
    /// bandwidth cap.
    async fn put_sealed_json<T: serde::Serialize>(
        &self,
        disk_id: Uuid,
        epoch: u64,
        name: &str,
        value: &T,
        write: Write,
    ) -> Result<(), CallError> {
        if self.ownership.writable(disk_id) != Some(epoch) {
            return Err(CallError::Local(format!(
                "this process server does not hold disk {disk_id}'s lease in epoch {epoch} right now"
            )));
        }
        let json = serde_json::to_vec(value).map_err(|e| CallError::Local(e.to_string()))?;
        let key = self.keyring.disk_key(disk_id);
        let sealed = seal_small(&key, name, &json).map_err(|e| CallError::Local(e.to_string()))?;
        self.bucket.charge(sealed.len() as u64);
        match write {
            Write::Replace => self.storage.put(name, Bytes::from(sealed)).await?,
            // Created or not, the request was made (and billed).
            Write::CreateNew => {
                self.storage.put_new(name, Bytes::from(sealed)).await?;
            }
        }
        self.status
            .storage_puts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn write_point(&self, disk_id: Uuid, epoch: u64, found: &FoundBookmark) -> Result<PointSummary, CallError> {
        let bookmark_id = BookmarkId::new(found.bookmark.id.as_str()).map_err(|e| CallError::Local(e.to_string()))?;
        let name = ObjectName::Point {
            disk_id,
            epoch,
            seq: found.seq,
            bookmark_id,
        }
        .to_string();
        let summary = PointSummary {
            seq: found.seq,
            bookmark_id: found.bookmark.id.as_str().to_string(),
            kind: found.bookmark.kind.as_str().to_string(),
            source_time_unix_ms: found.source_time_ms,
        };
        let point = RecoveryPoint {
            format: PLAINTEXT_FORMAT,
            disk_id,
            seq: found.seq,
            bookmark_id: summary.bookmark_id.clone(),
            kind: summary.kind.clone(),
            tag: found.bookmark.tag.clone(),
            group_id: found.bookmark.group_id,
            source_time_unix_ms: found.source_time_ms,
            created_unix_ms: ferry_client::clock::now_unix_ms(),
        };
        // A point written before a crash stays as it was (its creation time included).
        self.put_sealed_json(disk_id, epoch, &name, &point, Write::CreateNew)
            .await?;
        Ok(summary)
    }

    /// The newest recovery point of a disk in storage: the highest seq under `points/`.
    async fn newest_point(&self, disk_id: Uuid) -> Result<Option<PointSummary>, CallError> {
        let newest = ferry_vault::points::newest_name(&*self.storage, &self.keyring.disk_key(disk_id), disk_id)
            .await
            .map_err(|e| CallError::Local(format!("{e:#}")))?;
        let Some(name) = newest else {
            return Ok(None);
        };
        let sealed = self.storage.get(&name).await?;
        let plain = ferry_format::seal::unseal(&self.keyring.disk_key(disk_id), &name, &sealed)
            .map_err(|e| CallError::Local(format!("{name}: {e}")))?;
        let point: RecoveryPoint =
            serde_json::from_slice(&plain).map_err(|e| CallError::Local(format!("{name}: {e}")))?;
        Ok(Some(PointSummary {
            seq: point.seq,
            bookmark_id: point.bookmark_id,
            kind: point.kind,
            source_time_unix_ms: point.source_time_unix_ms,
        }))
    }
}

/// Seals a small object (a descriptor or a point) with this thread's sealer, made once: a
/// fresh zstd context per object was a few percent of the tokio workers' CPU with hundreds of
/// disks writing points (its tables are allocated and faulted in each time).
fn seal_small(
    key: &ferry_format::ObjectKey,
    name: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, ferry_format::seal::SealError> {
    thread_local! {
        static SEALER: std::cell::RefCell<Option<ferry_format::seal::Sealer>> = const { std::cell::RefCell::new(None) };
    }
    SEALER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let mut sealer = match slot.take() {
            Some(sealer) => sealer,
            None => ferry_format::seal::Sealer::new(1)?,
        };
        let sealed = sealer.seal(key, name, plaintext);
        *slot = Some(sealer);
        sealed
    })
}

/// Where the releaser sends one release's outcome (as the message the coordinator logs).
type ReleaseAnswer = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The releaser thread: takes every queued release (at most [`RELEASE_GROUP_MAX`]), makes them
/// durable together and answers each. Ends when the pipeline drops its senders.
fn run_releaser(cache: &Cache, mut queued: mpsc::Receiver<(Release, ReleaseAnswer)>) {
    let mut group = Vec::with_capacity(RELEASE_GROUP_MAX);
    while let Some(first) = queued.blocking_recv() {
        group.clear();
        group.push(first);
        while group.len() < RELEASE_GROUP_MAX {
            match queued.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        let releases: Vec<Release> = group.iter().map(|(release, _)| *release).collect();
        let results = cache.release_many(&releases);
        for ((_, answer), result) in group.drain(..).zip(results) {
            // A dropped receiver: the pipeline stopped waiting; nothing to tell.
            let _ = answer.send(result.map_err(|e| e.to_string()));
        }
    }
}
