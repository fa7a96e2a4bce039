//! The blocks of batches a process server acknowledged but may not have uploaded yet: what a
//! takeover may lose (docs/SCALE-OUT.md). When a disk's new process server answers a
//! `durable_seq` below what this agent saw acknowledged, only those batches' blocks need to
//! be sent again: they are marked unknown in the block map and a resync sends them (and
//! nothing else that did not change), instead of the whole disk.
//!
//! Kept in memory for the agent's life, per disk: batches are added as `durable_seq` covers
//! them (when their digests go into the block map) and dropped once `uploaded_seq` covers them.
//! The journal is usable only when it holds every acknowledged batch after the server's new
//! `durable_seq` (it started at or before it, and never overflowed); otherwise the whole map is
//! forgotten as before. Bounded: [`BLOCKS_MAX`] block numbers in all, past which it gives up
//! until uploads catch up and it starts again.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Every disk's journal, by disk id: kept across moves between process servers.
pub type Journals = std::sync::Arc<Mutex<std::collections::HashMap<uuid::Uuid, std::sync::Arc<Unconfirmed>>>>;

/// Block numbers kept at most per disk (8 bytes each: 8 MiB; 64 GiB of 64 KiB blocks).
pub const BLOCKS_MAX: usize = 1 << 20;

#[derive(Debug)]
struct Journal {
    /// Every acknowledged batch from this seq on is in `batches`.
    complete_from: u64,
    batches: BTreeMap<u64, Vec<u64>>,
    blocks: usize,
}

/// One disk's journal (see the module header).
#[derive(Debug)]
pub struct Unconfirmed {
    journal: Mutex<Journal>,
}

impl Unconfirmed {
    /// A journal complete from `next_seq` (the disk's next batch) on.
    pub fn new(next_seq: u64) -> Self {
        Self {
            journal: Mutex::new(Journal {
                complete_from: next_seq,
                batches: BTreeMap::new(),
                blocks: 0,
            }),
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batch `seq`, acknowledged, wrote `blocks`.
    pub fn acked(&self, seq: u64, blocks: impl IntoIterator<Item = u64>) {
        let mut journal = self.journal();
        if seq < journal.complete_from {
            return;
        }
        let blocks: Vec<u64> = blocks.into_iter().collect();
        if journal.blocks + blocks.len() > BLOCKS_MAX {
            // Too much unconfirmed: give up; complete again from the next batch.
            journal.batches.clear();
            journal.blocks = 0;
            journal.complete_from = seq + 1;
            return;
        }
        journal.blocks += blocks.len();
        journal.batches.insert(seq, blocks);
    }

    /// Storage holds every batch through `uploaded_seq`: those need no journal.
    pub fn uploaded(&self, uploaded_seq: u64) {
        let mut journal = self.journal();
        let kept = journal.batches.split_off(&(uploaded_seq + 1));
        journal.batches = kept;
        journal.blocks = journal.batches.values().map(Vec::len).sum();
    }

    /// The blocks written by acknowledged batches after `durable_seq` (ascending, each once),
    /// when the journal holds them all; `None` when it cannot tell.
    pub fn lost_after(&self, durable_seq: u64) -> Option<Vec<u64>> {
        let journal = self.journal();
        if journal.complete_from > durable_seq + 1 {
            return None;
        }
        let mut blocks: Vec<u64> = journal
            .batches
            .range(durable_seq + 1..)
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        blocks.sort_unstable();
        blocks.dedup();
        Some(blocks)
    }

    /// After a takeover: the batches past `durable_seq` are gone; the disk goes on from there.
    pub fn restart_after(&self, durable_seq: u64) {
        let mut journal = self.journal();
        journal.batches.split_off(&(durable_seq + 1));
        journal.blocks = journal.batches.values().map(Vec::len).sum();
        journal.complete_from = journal.complete_from.min(durable_seq + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_blocks_are_known_only_when_every_batch_after_the_new_durable_seq_was_journaled() {
        let journal = Unconfirmed::new(5);
        journal.acked(4, [99]); // before the journal began: ignored
        journal.acked(5, [1, 2]);
        journal.acked(6, [2, 3]);
        journal.acked(7, [10]);
        assert_eq!(journal.lost_after(4), Some(vec![1, 2, 3, 10]));
        assert_eq!(journal.lost_after(6), Some(vec![10]));
        assert_eq!(journal.lost_after(3), None, "batch 4 was not journaled");
        journal.uploaded(6);
        assert_eq!(journal.lost_after(6), Some(vec![10]));
        assert_eq!(journal.lost_after(7), Some(vec![]));
        journal.restart_after(6);
        assert_eq!(journal.lost_after(6), Some(vec![]));
        // Overflow: it gives up, and is complete again from the next batch.
        let big = Unconfirmed::new(1);
        big.acked(1, 0..BLOCKS_MAX as u64);
        big.acked(2, [1]);
        assert_eq!(big.lost_after(0), None);
        big.acked(3, [7]);
        assert_eq!(big.lost_after(2), Some(vec![7]));
    }
}
