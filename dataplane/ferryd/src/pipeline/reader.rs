//! Read-ahead: threads between the coordinator's cut and the seal workers that load each
//! change set's batches from the cache (from memory while resident, else with O_DIRECT from
//! the segment files) and collect its bookmarks, so the seal workers only compress and
//! encrypt. Reading inside the seal workers left them waiting on the disk: draining a backlog
//! that had outgrown the resident budget, each worker was blocked on reads for about 40% of
//! its time (docs/BENCHMARKS.md).
//!
//! **Bounds.** [`READERS`] threads, each loading one change set at a time, and at most
//! [`READ_AHEAD`] loaded change sets waiting for a worker. A loaded change set is plaintext of
//! a change set already cut, which the coordinator counts against the change sets' share of
//! the memory budget from the cut on, so read-ahead adds no memory outside that share.

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use ferry_format::batch::{Record, BATCH_HEADER_LEN};

use super::worker::{FoundBookmark, SealJob};
use crate::cache::Cache;

/// Threads loading change sets (two keep a disk read in flight while the other is parsed).
pub const READERS: usize = 2;
/// Loaded change sets waiting for a seal worker at most.
pub const READ_AHEAD: usize = 2;

/// A change set's batches, in seq order, with the bookmarks found in them.
pub struct Loaded {
    pub parts: Vec<Bytes>,
    pub bookmarks: Vec<FoundBookmark>,
    pub plain_len: u64,
}

pub struct LoadedJob {
    pub job: SealJob,
    /// Why the change set could not be loaded (the coordinator retries the cut).
    pub loaded: Result<Loaded, LoadError>,
}

/// Why a change set's batches could not be read back from the cache.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("batch {seq} is not in the cache")]
    Missing { seq: u64 },
    #[error("cannot read batch {seq} from the cache: {source}")]
    Read { seq: u64, source: crate::cache::CacheError },
    /// Checked on ingest, so only damage after the write (the cache's CRC passed) gets here.
    #[error("batch {seq} no longer decodes: {source}")]
    Decode {
        seq: u64,
        source: ferry_format::batch::BatchError,
    },
}

/// Starts the readers. They stop when the coordinator drops its end of `jobs` (after
/// loading what was queued) or when no seal worker is left to take their work.
pub fn start(jobs: Receiver<SealJob>, cache: Cache, loaded: Sender<LoadedJob>) -> std::io::Result<()> {
    for index in 0..READERS {
        let (jobs, cache, loaded) = (jobs.clone(), cache.clone(), loaded.clone());
        std::thread::Builder::new()
            .name(format!("ferry-read-{index}"))
            .spawn(move || {
                for job in jobs.iter() {
                    let result = load(&cache, &job);
                    if loaded.send(LoadedJob { job, loaded: result }).is_err() {
                        return;
                    }
                }
            })?;
    }
    Ok(())
}

fn load(cache: &Cache, job: &SealJob) -> Result<Loaded, LoadError> {
    let mut parts = Vec::with_capacity((job.last_seq - job.first_seq + 1) as usize);
    let mut bookmarks = Vec::new();
    let mut plain_len = 0u64;
    for seq in job.first_seq..=job.last_seq {
        let batch = match cache.read_batch(job.disk_id, seq) {
            Ok(Some(batch)) => batch,
            Ok(None) => return Err(LoadError::Missing { seq }),
            Err(source) => return Err(LoadError::Read { seq, source }),
        };
        plain_len += batch.len() as u64;
        if ferry_format::batch::has_bookmark(&batch) {
            // Re-validated as on ingest; the bookmark JSON is needed for the point manifest.
            let decoded =
                ferry_format::batch::decode(batch.clone(), seq, job.geometry, u32::MAX - BATCH_HEADER_LEN as u32)
                    .map_err(|source| LoadError::Decode { seq, source })?;
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
        parts.push(batch);
    }
    Ok(Loaded {
        parts,
        bookmarks,
        plain_len,
    })
}
