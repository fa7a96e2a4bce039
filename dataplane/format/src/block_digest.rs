//! The digest of a disk block, shared by everything that compares blocks without moving them:
//! the agent's block map, the digests a failover stores (FORMATS.md, `failovers/.../digests/`),
//! a reprotect's first pass and failback's comparison. BLAKE3 truncated to 128 bits: a
//! second preimage still costs 2^128, and half the bytes of a full digest per block.

/// One block's digest.
pub type BlockDigest = [u8; 16];

/// The entry that is never a digest: "unknown" in the agent's block map, "the block reads as
/// zeros" in a failover's stored digests (which [`expand`] turns into a real digest).
pub const NOT_A_DIGEST: BlockDigest = [0; 16];

/// The block size of a failover's stored digests (and the agent's default `scan.block_bytes`).
pub const DIGEST_BLOCK_BYTES: u64 = 64 * 1024;

/// The digest of `data` (a block; the disk's last block may be shorter). Never [`NOT_A_DIGEST`].
pub fn block_digest(data: &[u8]) -> BlockDigest {
    let hash = blake3::hash(data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash.as_bytes()[..16]);
    if out == NOT_A_DIGEST {
        out[0] = 1; // 2^-128: keeps the sentinel unambiguous at no cost
    }
    out
}

/// The digest of `length` zero bytes (a full block's is computed once per thread: a sparse
/// disk has many).
pub fn zero_block_digest(length: usize) -> BlockDigest {
    thread_local! {
        static FULL_BLOCK: BlockDigest = block_digest(&[0u8; DIGEST_BLOCK_BYTES as usize]);
    }
    if length == DIGEST_BLOCK_BYTES as usize {
        FULL_BLOCK.with(|d| *d)
    } else {
        block_digest(&vec![0u8; length])
    }
}

/// A stored failover digest as a real digest: [`NOT_A_DIGEST`] there means zeros.
pub fn expand(stored: BlockDigest, block_length: usize) -> BlockDigest {
    if stored == NOT_A_DIGEST {
        zero_block_digest(block_length)
    } else {
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_never_the_sentinel_and_zeros_expand() {
        assert_ne!(block_digest(b""), NOT_A_DIGEST);
        assert_ne!(block_digest(&[1u8; 512]), block_digest(&[2u8; 512]));
        assert_eq!(expand(NOT_A_DIGEST, 4096), block_digest(&[0u8; 4096]));
        let some = block_digest(b"x");
        assert_eq!(expand(some, 4096), some);
        assert_eq!(zero_block_digest(100_000), block_digest(&[0u8; 100_000]));
    }
}
