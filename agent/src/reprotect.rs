//! Reprotect's head start: a disk created with `reprotect_from` begins, on the server, as the
//! failed-over disk at the failover point (docs/FORMATS.md, `reprotect_from`), so its block map
//! may begin as that point's block digests rather than all unknown. The first pass then sends
//! only the blocks whose content differs from the failover point: what the failed-over machine
//! changed since.
//!
//! Only a fresh map of a disk the server holds no batch of is seeded (anything else could claim
//! more than the server holds); a seeded entry is never wrong, since the server does hold that
//! content for it. The failover's digests are per 64 KiB block: with another
//! `scan.block_bytes`, nothing is seeded and the first pass is a full copy (said in the log).
//! Memory: one 1 MiB segment at a time.

use anyhow::{bail, Context, Result};
use ferry_client::api::ErrorCode;
use ferry_client::DataClient;
use ferry_format::block_digest::{expand, BlockDigest, DIGEST_BLOCK_BYTES, NOT_A_DIGEST};
use uuid::Uuid;

use crate::blockmap::BlockMap;

/// Digests per segment the server hands out.
const SEGMENT_BLOCKS: u64 = 65_536;

/// Fills `map` (fresh, of a disk of `size_bytes`) with the failover point's digests; returns
/// how many entries were set.
pub async fn seed(client: &DataClient, disk_id: Uuid, map: &BlockMap, size_bytes: u64) -> Result<u64> {
    if u64::from(map.block_bytes) != DIGEST_BLOCK_BYTES {
        tracing::warn!(%disk_id, block_bytes = map.block_bytes, "scan.block_bytes is not 65536, the failover digests' block: the first pass copies the whole disk");
        return Ok(0);
    }
    let mut seeded = 0u64;
    let mut segment = 0u64;
    while segment * SEGMENT_BLOCKS < map.blocks {
        let raw = match client.get_reprotect_digests(disk_id, segment).await {
            Ok(raw) => raw,
            // Past the failed-over disk's last segment (this disk is larger).
            Err(e) if e.code() == Some(ErrorCode::NotFound) && segment > 0 => break,
            Err(e) => return Err(e).context("cannot read the failover's block digests from the appliance"),
        };
        if raw.len() % 16 != 0 || raw.len() as u64 > SEGMENT_BLOCKS * 16 {
            bail!(
                "the appliance sent {} bytes of digests, not whole 16-byte entries of one segment",
                raw.len()
            );
        }
        let first = segment * SEGMENT_BLOCKS;
        let entries: Vec<(u64, BlockDigest)> = raw
            .chunks_exact(16)
            .enumerate()
            .map(|(i, chunk)| (first + i as u64, chunk))
            .take_while(|(block, _)| *block < map.blocks)
            .map(|(block, chunk)| {
                let mut stored = NOT_A_DIGEST;
                stored.copy_from_slice(chunk);
                let length = DIGEST_BLOCK_BYTES.min(size_bytes - block * DIGEST_BLOCK_BYTES) as usize;
                (block, expand(stored, length))
            })
            .collect();
        map.record(&entries).context("cannot write the block map")?;
        seeded += entries.len() as u64;
        if (raw.len() as u64) < SEGMENT_BLOCKS * 16 {
            break;
        }
        segment += 1;
    }
    map.sync().context("cannot sync the block map")?;
    Ok(seeded)
}
