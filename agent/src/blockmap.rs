//! The block map: one 16-byte BLAKE3 digest (truncated) per block of a disk, in a file under
//! the disk's state directory. It says what the server holds for each block, and it may only
//! ever err on the side of "unknown":
//!
//! - an entry of all zeros is *unknown* (sent on the next pass whatever the block holds);
//! - before a batch is sent, the valid entries of its blocks are set to unknown and the file
//!   is fdatasync'd (the server may store the batch even if the answer never arrives);
//! - an entry gets the new digest only once the server's `durable_seq` covers the batch.
//!
//! So a crash at any moment (agent, machine, or server) leaves entries that are either the
//! server's content or unknown, and a pass after it sends everything that differs. Digest
//! writes are not fsync'd: losing one turns it back to unknown.
//!
//! File layout: a 4096-byte header block (`magic "FRAGMAP1" | version u32 | block_bytes u32 |
//! disk_id 16 | size_bytes u64 | CRC-32C of 0..40 at 40`), then the entries. A header that
//! does not match the disk (another disk, a resize, a different block size) or does not check
//! out means the map cannot be trusted: [`BlockMap::open`] says why and starts a fresh one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use uuid::Uuid;

pub type Digest = ferry_format::block_digest::BlockDigest;

/// The entry of a block whose server content is not known.
pub const UNKNOWN: Digest = ferry_format::block_digest::NOT_A_DIGEST;

const MAGIC: [u8; 8] = *b"FRAGMAP1";
const VERSION: u32 = 1;
const HEADER_BYTES: u64 = 4096;
const ENTRY_BYTES: u64 = 16;

/// The digest of a block's content (never [`UNKNOWN`]): the one failover digests use too.
pub use ferry_format::block_digest::block_digest as digest;

/// How a map was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// There was none: every entry is unknown.
    Created,
    /// The existing map matches the disk.
    Existing,
    /// The existing map could not be trusted (the reason); a fresh one replaced it.
    Replaced(String),
}

pub struct BlockMap {
    file: File,
    pub block_bytes: u32,
    pub blocks: u64,
}

fn header(disk_id: Uuid, block_bytes: u32, size_bytes: u64) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&block_bytes.to_le_bytes());
    h[16..32].copy_from_slice(disk_id.as_bytes());
    h[32..40].copy_from_slice(&size_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&h[..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

impl BlockMap {
    /// Opens (or creates) the map at `path` for a disk of `size_bytes` in `block_bytes` blocks.
    pub fn open(path: &Path, disk_id: Uuid, block_bytes: u32, size_bytes: u64) -> io::Result<(BlockMap, Opened)> {
        let blocks = size_bytes.div_ceil(u64::from(block_bytes));
        let expected = header(disk_id, block_bytes, size_bytes);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let len = file.metadata()?.len();
        let opened = if len == 0 {
            Opened::Created
        } else {
            let mut found = [0u8; 44];
            match file.read_exact_at(&mut found, 0) {
                Ok(()) if found == expected && len == HEADER_BYTES + blocks * ENTRY_BYTES => Opened::Existing,
                Ok(()) => Opened::Replaced(describe_mismatch(&found, &expected)),
                Err(_) => Opened::Replaced("the block map is truncated".into()),
            }
        };
        let map = BlockMap {
            file,
            block_bytes,
            blocks,
        };
        if opened != Opened::Existing {
            map.reset_with(&expected)?;
        }
        Ok((map, opened))
    }

    fn reset_with(&self, header: &[u8; 44]) -> io::Result<()> {
        // Truncating to the header and growing again makes every entry read as zeros (unknown).
        self.file.set_len(0)?;
        self.file.write_all_at(header, 0)?;
        self.file.set_len(HEADER_BYTES + self.blocks * ENTRY_BYTES)?;
        self.file.sync_all()
    }

    /// Forgets every entry (the server's content can no longer be trusted to match).
    pub fn forget_all(&self) -> io::Result<()> {
        let mut header = [0u8; 44];
        self.file.read_exact_at(&mut header, 0)?;
        self.reset_with(&header)
    }

    /// Entries `first .. first + count`.
    pub fn entries(&self, first: u64, count: usize) -> io::Result<Vec<Digest>> {
        let mut raw = vec![0u8; count * ENTRY_BYTES as usize];
        self.file.read_exact_at(&mut raw, HEADER_BYTES + first * ENTRY_BYTES)?;
        Ok(raw
            .chunks_exact(ENTRY_BYTES as usize)
            .map(|c| {
                let mut d = UNKNOWN;
                d.copy_from_slice(c);
                d
            })
            .collect())
    }

    /// Marks `blocks` (ascending) unknown, durably, before their new content is sent.
    pub fn mark_unknown(&self, blocks: &[u64]) -> io::Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        self.write_runs(blocks.iter().map(|b| (*b, UNKNOWN)))?;
        self.file.sync_data()
    }

    /// Records digests the server now holds (blocks ascending). Not synced: see the module.
    pub fn record(&self, entries: &[(u64, Digest)]) -> io::Result<()> {
        self.write_runs(entries.iter().copied())
    }

    /// Makes recorded digests durable (at the end of a pass, so a restart resends less).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// One pwrite per run of consecutive blocks.
    fn write_runs(&self, entries: impl Iterator<Item = (u64, Digest)>) -> io::Result<()> {
        let mut run_start = 0u64;
        let mut run: Vec<u8> = Vec::new();
        for (block, digest) in entries {
            let next = run_start + (run.len() as u64 / ENTRY_BYTES);
            if !run.is_empty() && block != next {
                self.file.write_all_at(&run, HEADER_BYTES + run_start * ENTRY_BYTES)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = block;
            }
            run.extend_from_slice(&digest);
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, HEADER_BYTES + run_start * ENTRY_BYTES)?;
        }
        Ok(())
    }
}

fn describe_mismatch(found: &[u8; 44], expected: &[u8; 44]) -> String {
    if found[0..8] != MAGIC || crc32c::crc32c(&found[..40]).to_le_bytes() != found[40..44] {
        "the block map is damaged".into()
    } else if found[16..32] != expected[16..32] {
        "the block map belongs to another disk".into()
    } else if found[32..40] != expected[32..40] {
        "the disk was resized".into()
    } else if found[12..16] != expected[12..16] {
        "scan.block_bytes changed".into()
    } else {
        "the block map has the wrong length".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_mismatches_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map");
        let disk = Uuid::from_u128(5);
        let (map, opened) = BlockMap::open(&path, disk, 65536, 10 * 65536 + 512).unwrap();
        assert_eq!((opened, map.blocks), (Opened::Created, 11));
        assert_eq!(map.entries(0, 11).unwrap(), vec![UNKNOWN; 11]);
        let a = digest(b"a");
        let b = digest(b"b");
        map.record(&[(2, a), (3, b), (10, a)]).unwrap();
        assert_eq!(map.entries(2, 2).unwrap(), vec![a, b]);
        map.mark_unknown(&[3]).unwrap();
        assert_eq!(map.entries(2, 2).unwrap(), vec![a, UNKNOWN]);
        drop(map);

        let (map, opened) = BlockMap::open(&path, disk, 65536, 10 * 65536 + 512).unwrap();
        assert_eq!(opened, Opened::Existing);
        assert_eq!(map.entries(10, 1).unwrap(), vec![a]);
        drop(map);

        let (map, opened) = BlockMap::open(&path, disk, 65536, 20 * 65536).unwrap();
        assert_eq!(opened, Opened::Replaced("the disk was resized".into()));
        assert_eq!(
            map.entries(0, 20).unwrap(),
            vec![UNKNOWN; 20],
            "a replaced map knows nothing"
        );
        drop(map);

        let (_, opened) = BlockMap::open(&path, Uuid::from_u128(6), 65536, 20 * 65536).unwrap();
        assert_eq!(opened, Opened::Replaced("the block map belongs to another disk".into()));
        std::fs::write(&path, b"garbage").unwrap();
        let (_, opened) = BlockMap::open(&path, disk, 65536, 20 * 65536).unwrap();
        assert!(matches!(opened, Opened::Replaced(_)), "{opened:?}");
    }
}
