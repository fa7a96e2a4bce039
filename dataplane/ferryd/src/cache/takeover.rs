//! A disk's cache state when its ownership changes (docs/SCALE-OUT.md): taken over at an owner
//! epoch from a seq, or forgotten when another process server owns it now.
//!
//! Taking over starts the disk afresh after `after_seq` (what storage holds): every batch the
//! cache still has of it is given up, the release watermark and `durable_seq` become
//! `after_seq`, and the disk's meta file records the new epoch. Durability is `void.rs`'s: a
//! [`VoidMark`] in the meta file (written before anything is forgotten) keeps recovery from
//! bringing the old batches back, since they stay in their segments until those are deleted.
//! Forgetting removes the disk's meta file, after which recovery skips its records.

use std::collections::VecDeque;
use uuid::Uuid;

use super::record::SEGMENT_HEADER_LEN;
use super::void::{VoidMark, VOID_MARKS_MAX};
use super::{
    delete_segments, forget_entry, take_empty_segments, view, Cache, CacheError, DiskMeta, DiskMetaFile, DiskState,
    DiskView, DISK_META_MAGIC, DISK_META_VERSION,
};
use ferry_durable::checked;

impl Cache {
    /// Holds `meta.disk_id` at `meta.owner_epoch` from `after_seq + 1` on: creates the disk
    /// there, or gives up every cached batch of it and restarts it there. A batch of the disk
    /// being written right now makes it [`CacheError::Busy`].
    pub fn take_over(&self, meta: DiskMeta, after_seq: u64) -> Result<DiskView, CacheError> {
        let _releasing = self.shared.release_lock.lock().unwrap_or_else(|p| p.into_inner());
        let disk_id = meta.disk_id;
        let path = self.shared.disks_dir().join(format!("{disk_id}.meta"));
        let file = {
            let mut state = self.shared.state();
            let oldest_segment = state.segments.keys().next().copied();
            let position = match state.active_segment {
                Some(id) => (id, state.active_used),
                None => (state.segments.keys().next_back().map_or(0, |id| id + 1), 0),
            };
            let mut voided = Vec::new();
            let mut release_generation = 0;
            if let Some(disk) = state.disks.get_mut(&disk_id) {
                release_generation = disk.release_generation;
                if !disk.in_flight.is_empty() || disk.voiding {
                    return Err(CacheError::Busy(disk_id, "a batch is being written"));
                }
                disk.voided
                    .retain(|mark| oldest_segment.is_some_and(|oldest| mark.segment_id >= oldest));
                if disk.voided.len() >= VOID_MARKS_MAX {
                    return Err(CacheError::Busy(
                        disk_id,
                        "too many given-up windows wait for their segments to be deleted",
                    ));
                }
                voided = disk.voided.clone();
                disk.voiding = true;
            }
            // Everything of the disk written so far lies before `position`: past `after_seq`
            // it is void; at or below it, the release watermark covers it.
            voided.push(VoidMark {
                after_seq,
                segment_id: position.0,
                offset: position.1.max(SEGMENT_HEADER_LEN as u64),
            });
            DiskMetaFile {
                meta: meta.clone(),
                released_through: after_seq,
                recent: Vec::new(),
                voided,
                // The new owner epoch already sets earlier `.release` records aside.
                release_generation,
            }
        };
        let written = checked::write(&path, DISK_META_MAGIC, DISK_META_VERSION, &file);
        let mut state = self.shared.state();
        let state = &mut *state;
        if let Err(e) = written {
            if let Some(disk) = state.disks.get_mut(&disk_id) {
                disk.voiding = false;
            }
            return Err(e.into());
        }
        let old = state.disks.insert(disk_id, {
            let mut fresh = DiskState::new(meta, after_seq, VecDeque::new());
            fresh.voided = file.voided;
            fresh.release_generation = file.release_generation;
            fresh
        });
        for entry in old.into_iter().flat_map(|disk| disk.entries.into_values()) {
            forget_entry(&mut state.segments, &mut state.resident_bytes, &entry);
        }
        let answer = state
            .disks
            .get(&disk_id)
            .map(view)
            .ok_or(CacheError::UnknownDisk(disk_id))?;
        let empty = take_empty_segments(state);
        drop(_releasing);
        delete_segments(&self.shared.segments_dir(), &empty)?;
        Ok(answer)
    }

    /// Drops the disk and every cached batch of it (another process server owns it now and
    /// its sender resends to that one what storage lacks). Unknown disks are fine.
    pub fn forget_disk(&self, disk_id: Uuid) -> Result<(), CacheError> {
        let _releasing = self.shared.release_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.shared.disks_dir().join(format!("{disk_id}.meta"));
        {
            let state = self.shared.state();
            match state.disks.get(&disk_id) {
                None => return Ok(()),
                Some(disk) if !disk.in_flight.is_empty() || disk.voiding => {
                    return Err(CacheError::Busy(disk_id, "a batch is being written"))
                }
                Some(_) => {}
            }
        }
        // Without its meta file, recovery skips the disk's records: durable first.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(CacheError::Io { path, source }),
        }
        super::remove_release_file(&self.shared.disks_dir(), disk_id)?;
        ferry_durable::fsync_dir(&self.shared.disks_dir()).map_err(|source| CacheError::Io {
            path: self.shared.disks_dir(),
            source,
        })?;
        let mut state = self.shared.state();
        let state = &mut *state;
        if let Some(disk) = state.disks.remove(&disk_id) {
            for entry in disk.entries.into_values() {
                forget_entry(&mut state.segments, &mut state.resident_bytes, &entry);
            }
        }
        let empty = take_empty_segments(state);
        drop(_releasing);
        delete_segments(&self.shared.segments_dir(), &empty)
    }
}
