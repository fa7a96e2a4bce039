//! Changing a failover's recovery point in place (`ferryctl failover change-point`): which
//! blocks of a disk can differ between two seqs, and rewriting only those blocks of an output
//! (a VHD or raw file, a block device, a page blob) from the new point's image
//! (`crate::restore::into_scratch`).
//!
//! The bytes of a disk at seq `b` are its bytes at `a < b` plus the batches `a+1..=b`, so every
//! block no batch in that range wrote is the same at both seqs: only the written blocks need
//! rewriting (in either direction, later or earlier point). They are kept as a bitmap of
//! [`BLOCK`]-sized blocks: memory is the disk's size / 512 Ki (2 MiB for a 1 TiB disk) however
//! many batches wrote them. When retention has consolidated part of the range into a base,
//! the batches are gone and every block counts as changed (a whole rewrite, said so).

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_format::batch::DiskGeometry;
use ferry_format::plaintexts::DiskDescriptor;
use ferry_format::ObjectKey;
use ferry_storage::page_blob::{PageBlob, PAGE, PUT_PAGE_MAX};
use ferry_storage::ObjectStorage;
use futures::TryStreamExt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::log::RecordSink;

/// The granularity of the changed-block map: the agent's default block, and a whole number of
/// 4 KiB sectors and 512-byte pages.
pub const BLOCK: u64 = 64 * 1024;

/// The blocks of a disk that can differ between two seqs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedBlocks {
    size_bytes: u64,
    words: Vec<u64>,
    /// Every block counts as changed (the batches between the seqs are no longer stored).
    pub whole_disk: bool,
}

impl ChangedBlocks {
    /// No block changed, on a disk of `size_bytes`.
    pub fn none(size_bytes: u64) -> Self {
        let blocks = size_bytes.div_ceil(BLOCK);
        ChangedBlocks {
            size_bytes,
            words: vec![0; blocks.div_ceil(64) as usize],
            whole_disk: false,
        }
    }

    /// Every block changed.
    pub fn all(size_bytes: u64) -> Self {
        let mut all = Self::none(size_bytes);
        all.mark(0, size_bytes);
        all.whole_disk = true;
        all
    }

    /// Marks the blocks that `offset .. offset + length` touches (clamped to the disk).
    pub fn mark(&mut self, offset: u64, length: u64) {
        let end = offset.saturating_add(length).min(self.size_bytes);
        if offset >= end {
            return;
        }
        for block in offset / BLOCK..end.div_ceil(BLOCK) {
            self.words[(block / 64) as usize] |= 1 << (block % 64);
        }
    }

    pub fn is_marked(&self, block: u64) -> bool {
        self.words
            .get((block / 64) as usize)
            .is_some_and(|word| word & (1 << (block % 64)) != 0)
    }

    /// Whether any block that `offset .. offset + length` touches is marked.
    pub fn any_marked(&self, offset: u64, length: u64) -> bool {
        let end = offset.saturating_add(length).min(self.size_bytes);
        offset < end && (offset / BLOCK..end.div_ceil(BLOCK)).any(|block| self.is_marked(block))
    }

    /// Unmarks every block `other` marks (same disk size).
    pub fn remove(&mut self, other: &ChangedBlocks) {
        for (word, theirs) in self.words.iter_mut().zip(&other.words) {
            *word &= !theirs;
        }
    }

    /// Marks every block `other` marks (same disk size).
    pub fn merge(&mut self, other: &ChangedBlocks) {
        for (word, theirs) in self.words.iter_mut().zip(&other.words) {
            *word |= theirs;
        }
        self.whole_disk |= other.whole_disk;
    }

    /// How many blocks are marked.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// The disk size this map covers.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// How many bytes the changed blocks hold (the last block ends at the disk's end).
    pub fn bytes(&self) -> u64 {
        self.runs(u64::MAX).map(|(start, end)| end - start).sum()
    }

    /// The changed blocks as byte ranges `(start, end)`, consecutive blocks merged into runs of
    /// at most `max_run` bytes (a multiple of [`BLOCK`], or u64::MAX), in order.
    pub fn runs(&self, max_run: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let blocks = self.size_bytes.div_ceil(BLOCK);
        let max_blocks = (max_run / BLOCK).max(1);
        let mut block = 0;
        std::iter::from_fn(move || {
            while block < blocks && !self.is_marked(block) {
                // Skip whole empty words quickly.
                if block % 64 == 0 && self.words[(block / 64) as usize] == 0 {
                    block += 64;
                } else {
                    block += 1;
                }
            }
            if block >= blocks {
                return None;
            }
            let start = block;
            while block < blocks && self.is_marked(block) && block - start < max_blocks {
                block += 1;
            }
            Some((start * BLOCK, (block * BLOCK).min(self.size_bytes)))
        })
    }
}

impl RecordSink for ChangedBlocks {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.mark(offset, data.len() as u64);
        Ok(())
    }

    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        self.mark(offset, length);
        Ok(())
    }
}

/// The blocks the batches `low+1 ..= high` of the disk wrote (or zeroed): every block that can
/// differ between any two seqs in `low ..= high`. When the log no longer holds all of them
/// (retention consolidated them into a base), every block.
pub async fn changed_between(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    descriptor: &DiskDescriptor,
    low: u64,
    high: u64,
    parallel: usize,
) -> Result<ChangedBlocks> {
    Ok(written_between(storage, key, descriptor, low, high, parallel)
        .await?
        .touched)
}

/// What the batches of a range wrote, block by block.
#[derive(Clone, Debug)]
pub struct Written {
    /// Every block a record touched (see [`changed_between`]).
    pub touched: ChangedBlocks,
    /// The blocks one record covered whole: their content at the end of the range does not
    /// depend on what they held before it.
    pub whole: ChangedBlocks,
}

impl RecordSink for Written {
    fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.zero(offset, data.len() as u64)
    }

    fn zero(&mut self, offset: u64, length: u64) -> std::io::Result<()> {
        self.touched.mark(offset, length);
        let size = self.whole.size_bytes;
        let end = offset.saturating_add(length).min(size);
        let first = offset.div_ceil(BLOCK);
        let mut block = first;
        // Whole blocks inside the record (the disk's short last block counts when the record
        // reaches the disk's end).
        while block * BLOCK < end && (block * BLOCK + BLOCK).min(size) <= end {
            block += 1;
        }
        if block > first {
            self.whole
                .mark(first * BLOCK, (block * BLOCK).min(size) - first * BLOCK);
        }
        Ok(())
    }
}

/// [`changed_between`], also telling the blocks a record covered whole.
pub async fn written_between(
    storage: Arc<dyn ObjectStorage>,
    key: Arc<ObjectKey>,
    descriptor: &DiskDescriptor,
    low: u64,
    high: u64,
    parallel: usize,
) -> Result<Written> {
    let mut written = Written {
        touched: ChangedBlocks::none(descriptor.size_bytes),
        whole: ChangedBlocks::none(descriptor.size_bytes),
    };
    if low >= high {
        return Ok(written);
    }
    let objects = crate::log::list(&*storage, &key, descriptor.disk_id).await?;
    let Ok(chain) = crate::log::cover(objects, low, high) else {
        written.touched = ChangedBlocks::all(descriptor.size_bytes);
        return Ok(written);
    };
    let replay = crate::log::Replay {
        storage,
        key,
        geometry: DiskGeometry {
            size_bytes: descriptor.size_bytes,
            sector_size: descriptor.sector_size,
        },
        chain: &chain,
        after: low,
        target: high,
        parallel,
    };
    replay
        .run(&mut written, |_| {})
        .await
        .with_context(|| format!("cannot read the batches {}..={high}", low + 1))?;
    Ok(written)
}

/// Where the rewritten blocks go.
pub enum Output<'a> {
    /// A VHD or raw file, or a block device: data written in place, zero runs punched as
    /// holes (written as zeros where that is not possible).
    File(&'a File),
    /// A fixed-VHD page blob: data by Put Page, zero runs by Clear Pages, `usize` calls in
    /// flight at most.
    PageBlob(&'a PageBlob, usize),
}

/// What a rewrite did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rewritten {
    /// The changed blocks' bytes (what was looked at).
    pub changed_bytes: u64,
    /// Non-zero bytes written.
    pub written_bytes: u64,
    /// Bytes made zero.
    pub zeroed_bytes: u64,
}

/// One piece of a rewrite: data at an offset, or a range to make zero.
enum Piece {
    Data(u64, Bytes),
    Zero(u64, u64),
}

/// Copies the `changed` blocks of `image` (the disk at the new point, as large as the disk) to
/// `output`, then makes it durable (fsync for a file; a page blob's writes are durable when
/// answered). Memory: a 4 MiB read at a time, plus the Put Page calls in flight.
pub async fn rewrite(image: &File, changed: &ChangedBlocks, output: Output<'_>) -> Result<Rewritten> {
    let mut done = Rewritten {
        changed_bytes: changed.bytes(),
        ..Default::default()
    };
    let runs = futures::stream::iter(changed.runs(PUT_PAGE_MAX).map(Ok::<_, anyhow::Error>));
    let pieces = runs
        .map_ok(|(start, end)| {
            let mut data = vec![0u8; (end - start) as usize];
            let read = image
                .read_exact_at(&mut data, start)
                .with_context(|| format!("cannot read the new point's image at {start}"));
            let pieces = read.map(|()| split_zero(start, Bytes::from(data)));
            futures::stream::iter(pieces.into_iter().flatten().map(Ok))
        })
        .try_flatten();
    match output {
        Output::File(file) => {
            tokio::pin!(pieces);
            while let Some(piece) = pieces.try_next().await? {
                match piece {
                    Piece::Data(offset, data) => {
                        file.write_all_at(&data, offset)
                            .with_context(|| format!("cannot write at {offset}"))?;
                        done.written_bytes += data.len() as u64;
                    }
                    Piece::Zero(offset, length) => {
                        crate::image::zero_range(file, offset, length)
                            .with_context(|| format!("cannot zero {length} bytes at {offset}"))?;
                        done.zeroed_bytes += length;
                    }
                }
            }
            file.sync_all().context("cannot fsync the output")?;
        }
        Output::PageBlob(blob, parallel) => {
            let sizes: Vec<(u64, u64)> = pieces
                .map_ok(|piece| async move {
                    match piece {
                        Piece::Data(offset, data) => {
                            let length = data.len() as u64;
                            blob.put_pages(offset, data)
                                .await
                                .with_context(|| format!("cannot write pages at {offset}"))?;
                            Ok::<_, anyhow::Error>((length, 0))
                        }
                        Piece::Zero(offset, length) => {
                            blob.clear_pages(offset, length)
                                .await
                                .with_context(|| format!("cannot clear pages at {offset}"))?;
                            Ok((0, length))
                        }
                    }
                })
                .try_buffer_unordered(parallel.max(1))
                .try_collect()
                .await?;
            for (written, zeroed) in sizes {
                done.written_bytes += written;
                done.zeroed_bytes += zeroed;
            }
        }
    }
    Ok(done)
}

/// `data` (at `offset`, whole 512-byte pages) as runs of non-zero pages and the zero gaps
/// between them.
fn split_zero(offset: u64, data: Bytes) -> Vec<Piece> {
    let end = offset + data.len() as u64;
    let mut pieces = Vec::new();
    let mut at = offset;
    for (start, run) in crate::failover::non_zero_runs(offset, &data) {
        if start > at {
            pieces.push(Piece::Zero(at, start - at));
        }
        at = start + run.len() as u64;
        pieces.push(Piece::Data(start, run));
    }
    if at < end {
        pieces.push(Piece::Zero(at, end - at));
    }
    debug_assert!(pieces.iter().all(|p| match p {
        Piece::Data(o, d) => o.is_multiple_of(PAGE) && (d.len() as u64).is_multiple_of(PAGE),
        Piece::Zero(o, l) => o.is_multiple_of(PAGE) && l.is_multiple_of(PAGE),
    }));
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_mark_touched_blocks_and_the_blocks_they_cover_whole() {
        let size = 10 * BLOCK + 4096; // a short last block
        let mut written = Written {
            touched: ChangedBlocks::none(size),
            whole: ChangedBlocks::none(size),
        };
        written.write(BLOCK / 2, &vec![1u8; (2 * BLOCK) as usize]).unwrap(); // blocks 0-2, block 1 whole
        written.zero(4 * BLOCK, 2 * BLOCK).unwrap(); // blocks 4 and 5 whole
        written.write(10 * BLOCK, &[1u8; 4096]).unwrap(); // the short last block, whole
        written.write(7 * BLOCK, &[1u8; 512]).unwrap(); // part of block 7
        let blocks = |c: &ChangedBlocks| (0..11).filter(|b| c.is_marked(*b)).collect::<Vec<u64>>();
        assert_eq!(blocks(&written.touched), [0, 1, 2, 4, 5, 7, 10]);
        assert_eq!(blocks(&written.whole), [1, 4, 5, 10]);
        let mut only_partly = written.touched.clone();
        only_partly.remove(&written.whole);
        assert_eq!(blocks(&only_partly), [0, 2, 7]);
        assert_eq!(only_partly.count(), 3);
    }

    #[test]
    fn marks_become_merged_bounded_runs_clamped_to_the_disk() {
        let size = 100 * BLOCK + 4096; // a partial last block
        let mut changed = ChangedBlocks::none(size);
        assert_eq!(changed.runs(u64::MAX).count(), 0);
        changed.mark(10, 1); // block 0
        changed.mark(BLOCK - 1, 2); // blocks 0 and 1
        changed.mark(70 * BLOCK, 3 * BLOCK); // blocks 70..73
        changed.mark(100 * BLOCK + 100, 1 << 40); // the last block, clamped
        changed.mark(size + 10, 10); // past the end: nothing
        let runs: Vec<_> = changed.runs(u64::MAX).collect();
        assert_eq!(runs, [(0, 2 * BLOCK), (70 * BLOCK, 73 * BLOCK), (100 * BLOCK, size)]);
        assert_eq!(changed.bytes(), 5 * BLOCK + 4096);
        let bounded: Vec<_> = changed.runs(2 * BLOCK).collect();
        assert_eq!(
            bounded,
            [
                (0, 2 * BLOCK),
                (70 * BLOCK, 72 * BLOCK),
                (72 * BLOCK, 73 * BLOCK),
                (100 * BLOCK, size)
            ]
        );
        let all = ChangedBlocks::all(size);
        assert!(all.whole_disk);
        assert_eq!(all.bytes(), size);
    }

    #[test]
    fn pieces_cover_the_run_exactly_with_data_and_zero_gaps() {
        let mut data = vec![0u8; 512 * 6];
        data[512] = 1; // page 1
        data[512 * 2 + 7] = 1; // page 2
        data[512 * 5] = 1; // page 5
        let pieces = split_zero(1 << 20, Bytes::from(data));
        let spans: Vec<(char, u64, u64)> = pieces
            .iter()
            .map(|p| match p {
                Piece::Data(o, d) => ('d', *o - (1 << 20), d.len() as u64),
                Piece::Zero(o, l) => ('z', *o - (1 << 20), *l),
            })
            .collect();
        assert_eq!(
            spans,
            [('z', 0, 512), ('d', 512, 1024), ('z', 1536, 1024), ('d', 2560, 512)]
        );
    }

    #[tokio::test]
    async fn a_file_gets_the_changed_blocks_of_the_image_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let size = 8 * BLOCK;
        let image = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("image"))
            .unwrap();
        image.write_all_at(&vec![7u8; size as usize], 0).unwrap();
        image.write_all_at(&vec![0u8; BLOCK as usize], 3 * BLOCK).unwrap(); // block 3: zeros
        let output = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("output"))
            .unwrap();
        output.write_all_at(&vec![9u8; size as usize], 0).unwrap();
        let mut changed = ChangedBlocks::none(size);
        changed.mark(BLOCK, 1); // block 1: data
        changed.mark(3 * BLOCK, 1); // block 3: becomes zeros
        let done = rewrite(&image, &changed, Output::File(&output)).await.unwrap();
        assert_eq!(
            done,
            Rewritten {
                changed_bytes: 2 * BLOCK,
                written_bytes: BLOCK,
                zeroed_bytes: BLOCK
            }
        );
        let mut after = vec![0u8; size as usize];
        output.read_exact_at(&mut after, 0).unwrap();
        for (block, bytes) in after.chunks(BLOCK as usize).enumerate() {
            let expected = match block {
                1 => 7,
                3 => 0,
                _ => 9,
            };
            assert!(bytes.iter().all(|&b| b == expected), "block {block}");
        }
    }
}
