//! Who owned a disk when (docs/FORMATS.md "Ownership"): the owner records of its epochs, and
//! the fencing rule every reader applies with them.
//!
//! Each takeover of a disk by another process server creates `owners/{epoch:010}.fseal` with
//! the first seq the new epoch may write (`since_seq`). Epoch `e` owns the seqs from its
//! `since_seq` up to the next epoch's; a log object or point counts only if the epoch in its
//! name owns every seq it holds. So nothing a stale owner (one that lost its lease while it
//! was paused, say) writes after the takeover is ever used: its seqs belong to the next epoch,
//! and its names, carrying its own epoch, can never replace the new owner's objects. Epoch 0
//! (format 1's names) owns everything from seq 1 when it has no record.
//!
//! Limits: one record per takeover, read whole (a few hundred bytes each).

use anyhow::{Context, Result};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::OwnerRecord;
use ferry_format::ObjectKey;
use ferry_storage::{list_all, ObjectStorage};
use uuid::Uuid;

/// A disk's owner records, by epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub records: Vec<OwnerRecord>,
    /// Set only by [`History::every_epoch`].
    every_epoch: bool,
}

impl History {
    /// Reads every owner record of `disk_id` (none: a disk never taken over).
    pub async fn read(storage: &dyn ObjectStorage, key: &ObjectKey, disk_id: Uuid) -> Result<Self> {
        let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "owners/"))
            .await
            .context("cannot list the disk's owner records")?;
        let mut records = Vec::new();
        for meta in listed {
            let Ok(ObjectName::Owner { epoch, .. }) = ObjectName::parse(&meta.name) else {
                continue;
            };
            let record: OwnerRecord = crate::sealed::read_json(storage, key, &meta.name).await?;
            anyhow::ensure!(
                record.epoch == epoch && record.disk_id == disk_id,
                "owner record {} does not hold what its name says",
                meta.name
            );
            records.push(record);
        }
        records.sort_by_key(|r| r.epoch);
        Ok(Self {
            records,
            every_epoch: false,
        })
    }

    /// A history under which every object counts (for garbage collection, never for reading).
    pub fn every_epoch() -> Self {
        Self {
            records: Vec::new(),
            every_epoch: true,
        }
    }

    /// The newest epoch's record.
    pub fn newest(&self) -> Option<&OwnerRecord> {
        self.records.last()
    }

    /// The epoch that owns `seq`: the highest whose `since_seq` is at or below it (0 when none).
    pub fn epoch_of(&self, seq: u64) -> u64 {
        self.records
            .iter()
            .rev()
            .find(|r| r.since_seq <= seq)
            .map_or(0, |r| r.epoch)
    }

    /// Whether objects of `epoch` holding `first..=last` may be used.
    pub fn counts(&self, epoch: u64, first: u64, last: u64) -> bool {
        self.every_epoch || self.epoch_of(first) == epoch && self.epoch_of(last) == epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(epoch: u64, since_seq: u64) -> OwnerRecord {
        OwnerRecord {
            format: 1,
            disk_id: Uuid::nil(),
            epoch,
            owner_id: Uuid::nil(),
            owner_name: format!("ps{epoch}"),
            since_seq,
            claimed_unix_ms: 0,
        }
    }

    #[test]
    fn each_seq_belongs_to_one_epoch_and_stale_objects_do_not_count() {
        let none = History::default();
        assert!(none.counts(0, 1, 100), "a disk never taken over: epoch 0 owns all");
        assert!(!none.counts(1, 1, 1));
        // Epoch 0 wrote 1..=10; epoch 1 took over at 11; epoch 2 at 11 too (epoch 1 wrote
        // nothing), epoch 3 at 40.
        let history = History {
            records: vec![record(0, 1), record(1, 11), record(2, 11), record(3, 40)],
            every_epoch: false,
        };
        assert_eq!(history.epoch_of(10), 0);
        assert_eq!(history.epoch_of(11), 2, "an epoch that wrote nothing owns nothing");
        assert_eq!(history.epoch_of(39), 2);
        assert_eq!(history.epoch_of(u64::MAX), 3);
        assert!(history.counts(0, 5, 10));
        assert!(!history.counts(0, 5, 11), "a stale owner's object across the takeover");
        assert!(!history.counts(0, 11, 12), "a stale owner's object after the takeover");
        assert!(!history.counts(1, 11, 12));
        assert!(history.counts(2, 11, 39));
        assert!(!history.counts(2, 39, 40));
        assert!(history.counts(3, 40, 41));
        assert_eq!(history.newest().map(|r| r.epoch), Some(3));
    }
}
