//! Seal workers: OS threads (one per core by default) that take a change set loaded by the
//! read-ahead threads ([`super::reader`]) and zstd + AES-GCM seal it (joined into one
//! contiguous input, see `Sealer::seal_parts`). Loaded change sets arrive on a bounded
//! crossbeam channel; results go back to the coordinator on a tokio channel. Output buffers
//! come back from finished uploads through [`SPARE_BUFFERS`] slots and are reused, so a
//! steady stream of objects allocates (and page-faults) nothing new.

use bytes::Bytes;
use crossbeam_channel::Receiver;
use ferry_format::names::ObjectName;
use ferry_format::seal::Sealer;
use ferry_format::{Bookmark, Keyring};
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use uuid::Uuid;

use super::reader::LoadedJob;

/// Sealed-object buffers kept for reuse at most (each about a change set: at the default
/// 8 MiB, 32 MiB retained in all; outside the memory budget's shares, see `memory_budget`).
/// A buffer's capacity may reach twice its largest object (`big_enough`), but only the
/// pages an object was written into are resident.
pub const SPARE_BUFFERS: usize = 4;

pub struct SealJob {
    pub disk_id: Uuid,
    /// The owner epoch the change set is written in (its object's name carries it).
    pub epoch: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Plaintext bytes counted against the memory budget when it was cut.
    pub plain_bytes: u64,
    pub geometry: ferry_format::batch::DiskGeometry,
}

/// A bookmark found in a change set: where it is and when its newest write was captured.
#[derive(Clone, Debug)]
pub struct FoundBookmark {
    pub seq: u64,
    pub bookmark: Bookmark,
    pub source_time_ms: u64,
}

/// Why a change set was not sealed (the coordinator logs it, shows it on the disk, and cuts
/// the change set again).
#[derive(Debug, thiserror::Error)]
pub enum SealFailure {
    #[error(transparent)]
    Load(#[from] super::reader::LoadError),
    #[error("cannot seal: {0}")]
    Seal(#[from] ferry_format::seal::SealError),
}

pub struct Sealed {
    pub disk_id: Uuid,
    pub epoch: u64,
    /// The job's `plain_bytes` (what to give back to the budget if it is dropped).
    pub counted_bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub name: String,
    pub result: Result<(Bytes, Vec<FoundBookmark>), SealFailure>,
    pub plain_len: u64,
}

/// The seal workers: a pool that can grow and shrink at run time (`ferryctl tune
/// worker_threads`). `alive` counts workers that have not decided to exit; a worker leaves
/// (after its current job) only by decrementing it while it is above `wanted`, so the pool
/// never drops below what is wanted and never grows past it.
#[derive(Clone)]
pub struct WorkerPool {
    pub jobs: Receiver<LoadedJob>,
    pub results: tokio::sync::mpsc::Sender<Sealed>,
    /// Output buffers of uploaded objects, handed back by the coordinator.
    pub spare_buffers: Receiver<Vec<u8>>,
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
                Ok(loaded) => {
                    let wanted = self.level.load(Ordering::Relaxed);
                    if wanted != sealer.level() {
                        let _ = sealer.set_level(wanted);
                    }
                    let started = std::time::Instant::now();
                    let spare = self.spare_buffers.try_recv().unwrap_or_default();
                    let sealed = seal(&mut sealer, &self.keyring, loaded, spare);
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

fn seal(sealer: &mut Sealer, keyring: &Keyring, loaded: LoadedJob, spare: Vec<u8>) -> Sealed {
    let LoadedJob { job, loaded } = loaded;
    let name = ObjectName::Log {
        disk_id: job.disk_id,
        epoch: job.epoch,
        first_seq: job.first_seq,
        last_seq: job.last_seq,
    }
    .to_string();
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(error) => return failed(&job, name, error.into()),
    };
    let slices: Vec<&[u8]> = loaded.parts.iter().map(|b| &b[..]).collect();
    let key = keyring.disk_key(job.disk_id);
    let result = sealer
        .seal_parts_into(&key, &name, &slices, big_enough(spare, loaded.plain_len))
        .map(|sealed| (Bytes::from(sealed), loaded.bookmarks))
        .map_err(SealFailure::from);
    Sealed {
        disk_id: job.disk_id,
        epoch: job.epoch,
        counted_bytes: job.plain_bytes,
        first_seq: job.first_seq,
        last_seq: job.last_seq,
        name,
        result,
        plain_len: loaded.plain_len,
    }
}

/// `spare` if it can hold the sealed object of `plain_len` plaintext bytes, else a new,
/// empty buffer of the next power of two that can. Growing a spare that is too small would
/// reallocate it, which copies its whole old allocation (stale bytes of an earlier object:
/// 2.6% of the seal workers' time in steady) and faults in new pages anyway; a buffer sized
/// up to a power of two also holds the larger change sets that come later, and its pages
/// count only once written.
fn big_enough(spare: Vec<u8>, plain_len: u64) -> Vec<u8> {
    let sealed_len = usize::try_from(plain_len)
        .unwrap_or(usize::MAX)
        .saturating_add(ferry_format::seal::SEALED_HEADER_LEN + ferry_format::seal::SEALED_TAG_LEN);
    if spare.capacity() >= sealed_len || plain_len > ferry_format::seal::SEALED_PLAIN_MAX_BYTES {
        spare // (one too large to seal is refused before anything is allocated)
    } else {
        Vec::with_capacity(sealed_len.next_power_of_two())
    }
}

fn failed(job: &SealJob, name: String, failure: SealFailure) -> Sealed {
    Sealed {
        disk_id: job.disk_id,
        epoch: job.epoch,
        counted_bytes: job.plain_bytes,
        first_seq: job.first_seq,
        last_seq: job.last_seq,
        name,
        result: Err(failure),
        plain_len: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_too_small_is_replaced_by_a_power_of_two_and_one_large_enough_is_kept() {
        let overhead = ferry_format::seal::SEALED_HEADER_LEN + ferry_format::seal::SEALED_TAG_LEN;
        let small = Vec::with_capacity(1 << 20);
        let fresh = big_enough(small, 3 << 20);
        assert_eq!(fresh.capacity(), 4 << 20, "3 MiB + {overhead} B rounds up to 4 MiB");
        assert!(fresh.is_empty());

        let spare: Vec<u8> = Vec::with_capacity(4 << 20);
        let at = spare.as_ptr();
        let kept = big_enough(spare, (4 << 20) - overhead as u64);
        assert_eq!(kept.as_ptr(), at, "an exact fit is the same buffer");

        let exact = big_enough(Vec::new(), (4 << 20) - overhead as u64 + 1);
        assert_eq!(exact.capacity(), 8 << 20, "one byte past a power of two takes the next");

        let refused = big_enough(Vec::new(), ferry_format::seal::SEALED_PLAIN_MAX_BYTES + 1);
        assert_eq!(refused.capacity(), 0, "nothing is reserved for what cannot be sealed");
    }
}
