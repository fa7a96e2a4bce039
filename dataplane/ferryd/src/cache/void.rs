//! Giving up batches stored past a gap (PROTOCOL.md appendix, `POST .../abandon`).
//!
//! The server stores batches in any order inside the window, so a sender that dies with
//! several batches in flight can leave batch N+2 stored while N+1 never arrived. Such a batch
//! is not part of the disk's state (`durable_seq` stops at N), and the restarted sender cannot
//! send the same bytes again: its resumed seq N+2 would be a `seq_conflict` forever. The owner
//! may therefore give up everything past `durable_seq`.
//!
//! Durability: the voided records stay in their segments, so the disk's meta file records a
//! [`VoidMark`] (the disk's `durable_seq` and the cache's append position at that moment)
//! before anything is forgotten; recovery skips a record whose seq is past the mark and whose
//! position is before it. Batches written later for the same seqs lie after the mark and are
//! kept. Marks are dropped once no segment older than them remains. Limit: at most
//! [`VOID_MARKS_MAX`] marks per disk are outstanding; beyond that the request waits (503) for
//! uploads to release old segments.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::record::SEGMENT_HEADER_LEN;
use super::DISK_META_VERSION;
use super::{delete_segments, forget_entry, take_empty_segments, view, Cache, CacheError, DiskView, DISK_META_MAGIC};
use ferry_durable::checked;

/// Most outstanding marks per disk.
pub const VOID_MARKS_MAX: usize = 64;

/// Records of a disk with `seq > after_seq` written before (`segment_id`, `offset`) are void.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidMark {
    pub after_seq: u64,
    pub segment_id: u64,
    pub offset: u64,
}

impl VoidMark {
    /// Whether a record of this disk at (`segment_id`, `offset`) holding `seq` is void.
    pub fn voids(&self, seq: u64, segment_id: u64, offset: u64) -> bool {
        seq > self.after_seq && (segment_id, offset) < (self.segment_id, self.offset)
    }
}

impl Cache {
    /// Gives up every batch of `disk_id` stored past its `durable_seq`; returns the disk and
    /// how many batches were given up. Waits for nothing: a batch of the disk being written
    /// right now makes it [`CacheError::Busy`] (the caller answers 503, retry).
    pub fn abandon_past_durable(&self, disk_id: Uuid) -> Result<(DiskView, usize), CacheError> {
        let _releasing = self.shared.release_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (file, voided) = {
            let mut state = self.shared.state();
            let oldest_segment = state.segments.keys().next().copied();
            // The append position now: every record of this disk lies before it (none is being
            // written), every later one after it.
            let position = match state.active_segment {
                Some(id) => (id, state.active_used),
                None => (state.segments.keys().next_back().map_or(0, |id| id + 1), 0),
            };
            let disk = state.disks.get_mut(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
            if !disk.in_flight.is_empty() || disk.voiding {
                return Err(CacheError::Busy(disk_id, "a batch is being written"));
            }
            let voided: Vec<u64> = disk.entries.range(disk.durable_seq + 1..).map(|(s, _)| *s).collect();
            if voided.is_empty() {
                return Ok((view(disk), 0));
            }
            // Marks older than every remaining segment can void nothing any more.
            disk.voided
                .retain(|mark| oldest_segment.is_some_and(|oldest| mark.segment_id >= oldest));
            if disk.voided.len() >= VOID_MARKS_MAX {
                return Err(CacheError::Busy(
                    disk_id,
                    "too many abandoned windows wait for their segments to be uploaded",
                ));
            }
            let mut marks = disk.voided.clone();
            marks.push(VoidMark {
                after_seq: disk.durable_seq,
                segment_id: position.0,
                offset: position.1.max(SEGMENT_HEADER_LEN as u64),
            });
            disk.voiding = true;
            let mut file = disk.meta_file(
                disk.meta.clone(),
                disk.released_through,
                disk.recent.iter().copied().collect(),
            );
            file.voided = marks;
            (file, voided)
        };
        // The mark is durable before anything is forgotten.
        let written = checked::write(
            &self.shared.disks_dir().join(format!("{disk_id}.meta")),
            DISK_META_MAGIC,
            DISK_META_VERSION,
            &file,
        );
        let mut state = self.shared.state();
        let state = &mut *state;
        let disk = state.disks.get_mut(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
        disk.voiding = false;
        written?;
        disk.voided = file.voided;
        for seq in &voided {
            let Some(entry) = disk.entries.remove(seq) else {
                continue;
            };
            forget_entry(&mut state.segments, &mut state.resident_bytes, &entry);
        }
        let answer = view(disk);
        let empty = take_empty_segments(state);
        drop(_releasing);
        delete_segments(&self.shared.segments_dir(), &empty)?;
        Ok((answer, voided.len()))
    }

    /// Records (`Some(reason)`) or clears (`None`) that the disk's sender is resyncing it.
    pub fn set_resync(&self, disk_id: Uuid, reason: Option<String>) -> Result<DiskView, CacheError> {
        let meta = {
            let state = self.shared.state();
            let disk = state.disks.get(&disk_id).ok_or(CacheError::UnknownDisk(disk_id))?;
            if disk.meta.resync_reason == reason {
                return Ok(view(disk));
            }
            super::DiskMeta {
                resync_reason: reason,
                ..disk.meta.clone()
            }
        };
        self.update_disk(meta)
    }
}
