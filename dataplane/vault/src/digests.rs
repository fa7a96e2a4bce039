//! A failover's block digests (FORMATS.md, `failovers/{failover_id}/digests/{disk_id}/`): the
//! 128-bit BLAKE3 digest of every 64 KiB block of a disk at its failover point, stored so a
//! reprotect sends only the blocks changed since the failover and failback writes only the
//! blocks that differ.
//!
//! [`DigestTable`] computes them while the failover writes its output: a base chunk's blocks
//! are hashed from the chunk in memory as it is written; the blocks the log touches after the
//! base (and a block a chunk covers only in part) are read back once from the output at the
//! end (just written: usually still in the page cache). An all-zero block is stored as the
//! entry [`NOT_A_DIGEST`] ("reads as zeros"; [`ferry_format::block_digest::expand`] makes it a
//! digest again). The table lives in a sparse scratch file, 16 bytes per block (256 MiB for a
//! 1 TiB disk, never in memory at once); it is stored in segments of [`SEGMENT_BLOCKS`]
//! (1 MiB of digests, 4 GiB of disk), each sealed with the vault-wide key (FORMATS.md section 2:
//! everything outside `disks/`).

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ferry_format::block_digest::{block_digest, BlockDigest, DIGEST_BLOCK_BYTES, NOT_A_DIGEST};
use ferry_format::names::ObjectName;
use ferry_format::Keyring;
use ferry_storage::{ObjectStorage, StorageError};
use futures::{StreamExt, TryStreamExt};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::change_point::ChangedBlocks;
use crate::log::RecordSink;

/// Blocks per stored segment.
pub const SEGMENT_BLOCKS: u64 = 65_536;
const ENTRY: usize = 16;
const BLOCK: u64 = DIGEST_BLOCK_BYTES;
/// zstd level of the stored segments (zero entries compress to almost nothing).
const LEVEL: i32 = 1;

/// How many 64 KiB blocks a disk of `size_bytes` has.
pub fn blocks_of(size_bytes: u64) -> u64 {
    size_bytes.div_ceil(BLOCK)
}

/// How many segments hold `blocks` digests.
pub fn segments_of(blocks: u64) -> u64 {
    blocks.div_ceil(SEGMENT_BLOCKS)
}

/// The length of `block` on a disk of `size_bytes` (the last one may be short).
pub fn block_len(size_bytes: u64, block: u64) -> usize {
    BLOCK.min(size_bytes.saturating_sub(block * BLOCK)) as usize
}

/// The stored entry of a block's content.
pub fn entry_of(data: &[u8]) -> BlockDigest {
    if data.iter().all(|&b| b == 0) {
        NOT_A_DIGEST
    } else {
        block_digest(data)
    }
}

/// The digests of one disk's output, computed as it is written (see the module header).
pub struct DigestTable {
    size_bytes: u64,
    table: File,
    /// Blocks whose entry must be computed from the output at [`DigestTable::finish`].
    touched: ChangedBlocks,
}

impl DigestTable {
    /// An empty table (every entry "zeros") for a disk of `size_bytes`, in a scratch file in
    /// `scratch_dir` (unlinked: it goes with the table).
    pub fn new(size_bytes: u64, scratch_dir: &Path) -> Result<Self> {
        let table = tempfile::tempfile_in(scratch_dir)
            .with_context(|| format!("cannot make the digest table in {}", scratch_dir.display()))?;
        table
            .set_len(blocks_of(size_bytes) * ENTRY as u64)
            .context("cannot size the digest table")?;
        Ok(DigestTable {
            size_bytes,
            table,
            touched: ChangedBlocks::none(size_bytes),
        })
    }

    pub fn blocks(&self) -> u64 {
        blocks_of(self.size_bytes)
    }

    /// `data` was written at `offset` of the output and nothing written before overlaps it in
    /// part (a base chunk): the blocks it covers whole get their entry now, the others are read
    /// back at the end.
    pub fn written(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let end = (offset + data.len() as u64).min(self.size_bytes);
        if offset >= end {
            return Ok(());
        }
        let first = offset.div_ceil(BLOCK);
        let mut entries = Vec::new();
        let mut block = first;
        while block * BLOCK < end {
            let block_end = (block * BLOCK + BLOCK).min(self.size_bytes);
            if block_end > end {
                break;
            }
            let at = (block * BLOCK - offset) as usize;
            entries.extend_from_slice(&entry_of(&data[at..at + (block_end - block * BLOCK) as usize]));
            block += 1;
        }
        // The pieces at either end that cover a block in part.
        if first * BLOCK > offset {
            self.touched.mark(offset, first * BLOCK - offset);
        }
        if block * BLOCK < end {
            self.touched.mark(block * BLOCK, end - block * BLOCK);
        }
        if !entries.is_empty() {
            self.table.write_all_at(&entries, first * ENTRY as u64)?;
        }
        Ok(())
    }

    /// `offset .. offset + length` of the output changed after the base (a replayed record).
    pub fn touch(&mut self, offset: u64, length: u64) {
        self.touched.mark(offset, length);
    }

    /// Computes the touched blocks' entries from `output` (the whole restore is in it now).
    /// Returns the bytes read back.
    pub fn finish(&mut self, output: &File) -> Result<u64> {
        let mut read = 0u64;
        let mut buffer = Vec::new();
        let runs: Vec<(u64, u64)> = self.touched.runs(4 << 20).collect();
        for (start, end) in runs {
            buffer.resize((end - start) as usize, 0);
            output
                .read_exact_at(&mut buffer, start)
                .with_context(|| format!("cannot read the output back at {start} for its digests"))?;
            read += end - start;
            let entries: Vec<u8> = buffer.chunks(BLOCK as usize).flat_map(entry_of).collect();
            self.table
                .write_all_at(&entries, start / BLOCK * ENTRY as u64)
                .context("cannot write the digest table")?;
        }
        self.touched = ChangedBlocks::none(self.size_bytes);
        Ok(read)
    }

    /// Entries `first .. first + count`.
    pub fn entries(&self, first: u64, count: u64) -> Result<Vec<BlockDigest>> {
        let mut raw = vec![0u8; count as usize * ENTRY];
        self.table
            .read_exact_at(&mut raw, first * ENTRY as u64)
            .context("cannot read the digest table")?;
        Ok(to_entries(&raw))
    }

    /// Sets entries from `first` on (a failover's changed point rewrote those blocks).
    pub fn set(&mut self, first: u64, entries: &[BlockDigest]) -> Result<()> {
        let raw: Vec<u8> = entries.iter().flatten().copied().collect();
        self.table
            .write_all_at(&raw, first * ENTRY as u64)
            .context("cannot write the digest table")
    }

    /// Loads the stored digests of `disk_id` for failover `failover_id` into this table.
    pub async fn load(
        &mut self,
        storage: &dyn ObjectStorage,
        keyring: &Keyring,
        failover_id: uuid::Uuid,
        disk_id: uuid::Uuid,
    ) -> Result<()> {
        for segment in 0..segments_of(self.blocks()) {
            let entries = read_segment(storage, keyring, failover_id, disk_id, segment, self.blocks()).await?;
            self.set(segment * SEGMENT_BLOCKS, &entries)?;
        }
        Ok(())
    }

    /// Stores the table as `disk_id`'s digests of failover `failover_id` (`parallel` writes at
    /// once). Returns the number of blocks.
    pub async fn store(
        &self,
        storage: &dyn ObjectStorage,
        keyring: &Keyring,
        failover_id: uuid::Uuid,
        disk_id: uuid::Uuid,
        parallel: usize,
    ) -> Result<u64> {
        let blocks = self.blocks();
        futures::stream::iter(0..segments_of(blocks))
            .map(|segment| async move {
                let first = segment * SEGMENT_BLOCKS;
                let count = SEGMENT_BLOCKS.min(blocks - first);
                let mut raw = vec![0u8; count as usize * ENTRY];
                self.table
                    .read_exact_at(&mut raw, first * ENTRY as u64)
                    .context("cannot read the digest table")?;
                let name = ObjectName::FailoverDigests {
                    failover_id,
                    disk_id,
                    segment,
                };
                let text = name.to_string();
                let sealed = ferry_format::seal::seal(&keyring.key_for(&name), &text, &raw, LEVEL)
                    .with_context(|| format!("cannot seal {text}"))?;
                storage
                    .put(&text, Bytes::from(sealed))
                    .await
                    .with_context(|| format!("cannot write {text}"))
            })
            .buffer_unordered(parallel.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        Ok(blocks)
    }
}

fn to_entries(raw: &[u8]) -> Vec<BlockDigest> {
    raw.chunks_exact(ENTRY)
        .map(|c| {
            let mut d = NOT_A_DIGEST;
            d.copy_from_slice(c);
            d
        })
        .collect()
}

/// Segment `segment` of `disk_id`'s digests for failover `failover_id` (a disk of `blocks`
/// blocks), checked for its length.
pub async fn read_segment(
    storage: &dyn ObjectStorage,
    keyring: &Keyring,
    failover_id: uuid::Uuid,
    disk_id: uuid::Uuid,
    segment: u64,
    blocks: u64,
) -> Result<Vec<BlockDigest>> {
    let name = ObjectName::FailoverDigests {
        failover_id,
        disk_id,
        segment,
    };
    let text = name.to_string();
    if segment >= segments_of(blocks) {
        bail!(
            "a disk of {blocks} blocks has {} digest segments, not {}",
            segments_of(blocks),
            segment + 1
        );
    }
    let sealed = match storage.get(&text).await {
        Ok(sealed) => sealed,
        Err(StorageError::NotFound { .. }) => bail!(
            "failover {failover_id} stored no block digests for disk {disk_id} ({text} is missing): it was made \
             before failovers kept digests, or it failed before finishing"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {text}")),
    };
    let raw = ferry_format::seal::unseal(&keyring.key_for(&name), &text, &sealed)
        .with_context(|| format!("object {text} is corrupt"))?;
    let expected = SEGMENT_BLOCKS.min(blocks - segment * SEGMENT_BLOCKS) as usize * ENTRY;
    if raw.len() != expected {
        bail!("object {text} holds {} bytes of digests, not {expected}", raw.len());
    }
    Ok(to_entries(&raw))
}

/// Deletes `disk_id`'s digests of failover `failover_id` (a missing segment counts as deleted).
pub async fn delete(
    storage: &dyn ObjectStorage,
    failover_id: uuid::Uuid,
    disk_id: uuid::Uuid,
    blocks: u64,
) -> Result<()> {
    for segment in 0..segments_of(blocks) {
        let name = ObjectName::FailoverDigests {
            failover_id,
            disk_id,
            segment,
        }
        .to_string();
        match storage.delete(&name).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot delete {name}")),
        }
    }
    Ok(())
}

/// A restore's sink that also tells a [`DigestTable`] which blocks the records touched.
pub struct Touching<'a, S: RecordSink> {
    pub inner: S,
    pub table: &'a mut DigestTable,
}

impl<S: RecordSink> RecordSink for Touching<'_, S> {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.table.touch(offset, data.len() as u64);
        self.inner.write(offset, data)
    }

    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        self.table.touch(offset, length);
        self.inner.zero(offset, length)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_hash_in_place_and_touched_blocks_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * BLOCK + 512; // the last block is short
        let mut image = vec![0u8; size as usize];
        for (i, b) in image.iter_mut().enumerate().skip(BLOCK as usize).take(BLOCK as usize) {
            *b = (i % 251) as u8 + 1;
        }
        let output = tempfile::tempfile_in(dir.path()).unwrap();
        output.write_all_at(&image, 0).unwrap();
        let mut table = DigestTable::new(size, dir.path()).unwrap();
        // A "chunk" covering blocks 0..2 whole and half of block 2.
        table.written(0, &image[..(2 * BLOCK + BLOCK / 2) as usize]).unwrap();
        // A record in the last (short) block.
        image[(3 * BLOCK + 10) as usize] = 7;
        output.write_all_at(&[7], 3 * BLOCK + 10).unwrap();
        table.touch(3 * BLOCK + 10, 1);
        let read_back = table.finish(&output).unwrap();
        assert_eq!(
            read_back,
            BLOCK + 512,
            "block 2 (covered in part) and block 3 (touched)"
        );
        let entries = table.entries(0, 4).unwrap();
        assert_eq!(entries[0], NOT_A_DIGEST, "zeros are stored as the sentinel");
        assert_eq!(entries[1], block_digest(&image[BLOCK as usize..2 * BLOCK as usize]));
        assert_eq!(entries[2], NOT_A_DIGEST);
        assert_eq!(entries[3], block_digest(&image[3 * BLOCK as usize..]));
    }
}
