//! Seal workers: OS threads (one per core by default) that take a change set's batch range,
//! read the batches from the cache (from memory while resident, else from the segment files),
//! collect its bookmarks, and zstd + AES-GCM seal them (joined into one contiguous input, see
//! `Sealer::seal_parts`). Jobs arrive on a bounded crossbeam channel; results go back to the
//! coordinator on a tokio channel. Output buffers come back from finished uploads through
//! [`SPARE_BUFFERS`] slots and are reused, so a steady stream of objects allocates (and
//! page-faults) nothing new.

use bytes::Bytes;
use crossbeam_channel::Receiver;
use ferry_format::batch::{Record, BATCH_HEADER_LEN};
use ferry_format::names::ObjectName;
use ferry_format::seal::Sealer;
use ferry_format::{Bookmark, Keyring};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;

use crate::cache::Cache;

/// Sealed-object buffers kept for reuse at most (each about a change set: at the default
/// 8 MiB, 32 MiB retained in all; outside the memory budget's shares, see `memory_budget`).
pub const SPARE_BUFFERS: usize = 4;

pub struct SealJob {
    pub disk_id: Uuid,
    pub first_seq: u64,
    pub last_seq: u64,
    pub geometry: ferry_format::batch::DiskGeometry,
}

/// A bookmark found in a change set: where it is and when its newest write was captured.
#[derive(Clone, Debug)]
pub struct FoundBookmark {
    pub seq: u64,
    pub bookmark: Bookmark,
    pub source_time_ms: u64,
}

pub struct Sealed {
    pub disk_id: Uuid,
    pub first_seq: u64,
    pub last_seq: u64,
    pub name: String,
    pub result: Result<(Bytes, Vec<FoundBookmark>), String>,
    pub plain_len: u64,
}

/// The seal workers: a pool that can grow and shrink at run time (`ferryctl tune
/// worker_threads`). `alive` counts workers that have not decided to exit; a worker leaves
/// (after its current job) only by decrementing it while it is above `wanted`, so the pool
/// never drops below what is wanted and never grows past it.
#[derive(Clone)]
pub struct WorkerPool {
    pub jobs: Receiver<SealJob>,
    pub results: tokio::sync::mpsc::Sender<Sealed>,
    /// Output buffers of uploaded objects, handed back by the coordinator.
    pub spare_buffers: Receiver<Vec<u8>>,
    pub cache: Cache,
    pub keyring: Keyring,
    pub level: Arc<AtomicI32>,
    pub busy_nanos: Arc<AtomicU64>,
    pub alive: Arc<AtomicUsize>,
    pub wanted: Arc<AtomicUsize>,
    pub spawned: Arc<AtomicUsize>,
}

impl WorkerPool {
    /// Sets the number of workers: starts new ones now; extra ones leave after their job.
    pub fn resize(&self, wanted: usize) {
        let wanted = wanted.max(1);
        self.wanted.store(wanted, Ordering::SeqCst);
        while self.alive.load(Ordering::SeqCst) < wanted {
            self.alive.fetch_add(1, Ordering::SeqCst);
            let worker = self.clone();
            let index = self.spawned.fetch_add(1, Ordering::Relaxed);
            let spawned = std::thread::Builder::new()
                .name(format!("ferry-seal-{index}"))
                .spawn(move || worker.work());
            if let Err(e) = spawned {
                self.alive.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot start a seal worker");
                return;
            }
        }
    }

    /// True (and counted out) when this worker is one too many.
    fn leave_if_extra(&self) -> bool {
        loop {
            let alive = self.alive.load(Ordering::SeqCst);
            if alive <= self.wanted.load(Ordering::SeqCst) {
                return false;
            }
            if self
                .alive
                .compare_exchange(alive, alive - 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return true;
            }
        }
    }

    fn work(self) {
        let mut sealer = match Sealer::new(self.level.load(Ordering::Relaxed)) {
            Ok(sealer) => sealer,
            Err(e) => {
                self.alive.fetch_sub(1, Ordering::SeqCst);
                tracing::error!(error = %e, "cannot create a sealer");
                return;
            }
        };
        loop {
            match self.jobs.recv_timeout(std::time::Duration::from_millis(500)) {
                Ok(job) => {
                    let wanted = self.level.load(Ordering::Relaxed);
                    if wanted != sealer.level() {
                        let _ = sealer.set_level(wanted);
                    }
                    let started = std::time::Instant::now();
                    let spare = self.spare_buffers.try_recv().unwrap_or_default();
                    let sealed = seal(&mut sealer, &self.cache, &self.keyring, &job, spare);
                    self.busy_nanos
                        .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    if self.results.blocking_send(sealed).is_err() {
                        self.alive.fetch_sub(1, Ordering::SeqCst);
                        return; // the coordinator stopped
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.alive.fetch_sub(1, Ordering::SeqCst);
                    return;
                }
            }
            if self.leave_if_extra() {
                return;
            }
        }
    }
}

fn seal(sealer: &mut Sealer, cache: &Cache, keyring: &Keyring, job: &SealJob, spare: Vec<u8>) -> Sealed {
    let name = ObjectName::Log {
        disk_id: job.disk_id,
        first_seq: job.first_seq,
        last_seq: job.last_seq,
    }
    .to_string();
    let mut parts = Vec::with_capacity((job.last_seq - job.first_seq + 1) as usize);
    let mut bookmarks = Vec::new();
    let mut plain_len = 0u64;
    for seq in job.first_seq..=job.last_seq {
        let batch = match cache.read_batch(job.disk_id, seq) {
            Ok(Some(batch)) => batch,
            Ok(None) => return failed(job, name, format!("batch {seq} is not in the cache")),
            Err(e) => return failed(job, name, e.to_string()),
        };
        plain_len += batch.len() as u64;
        if ferry_format::batch::has_bookmark(&batch) {
            // Re-validated as on ingest; the bookmark JSON is needed for the point manifest.
            match ferry_format::batch::decode(batch.clone(), seq, job.geometry, u32::MAX - BATCH_HEADER_LEN as u32) {
                Ok(decoded) => {
                    for record in &decoded.records {
                        if let Record::Bookmark(bookmark) = record {
                            bookmarks.push(FoundBookmark {
                                seq,
                                bookmark: bookmark.clone(),
                                source_time_ms: decoded.header.source_time_ms,
                            });
                        }
                    }
                }
                Err(e) => return failed(job, name, format!("batch {seq} no longer decodes: {e}")),
            }
        }
        parts.push(batch);
    }
    let slices: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
    let key = keyring.disk_key(job.disk_id);
    let result = sealer
        .seal_parts_into(&key, &name, &slices, spare)
        .map(|sealed| (Bytes::from(sealed), bookmarks))
        .map_err(|e| e.to_string());
    Sealed {
        disk_id: job.disk_id,
        first_seq: job.first_seq,
        last_seq: job.last_seq,
        name,
        result,
        plain_len,
    }
}

fn failed(job: &SealJob, name: String, message: String) -> Sealed {
    Sealed {
        disk_id: job.disk_id,
        first_seq: job.first_seq,
        last_seq: job.last_seq,
        name,
        result: Err(message),
        plain_len: 0,
    }
}
