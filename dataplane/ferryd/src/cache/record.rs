//! On-disk framing of cache segments.
//!
//! A segment file is preallocated to `segment_bytes` and starts with one 4096-byte header
//! block; records follow, each starting on a 4096-byte boundary (O_DIRECT):
//!
//! ```text
//! segment header: 0 8 magic "FRCSEG01" | 8 4 version 1 | 12 4 reserved | 16 8 segment_id
//!                 24 8 created_unix_ms | 32 8 segment_bytes | 40 4 CRC-32C of 0..40 | zeros
//! record header:  0 4 magic "FRCR" | 4 4 CRC-32C of 8..64 | 8 16 disk_id | 24 8 seq
//!                 32 4 batch_len | 36 4 the batch's header_crc32c | 40 24 reserved (0)
//! then the batch exactly as received (PROTOCOL.md), then zeros to the next 4096 boundary.
//! ```
//! A record is valid when its header CRC holds and the batch's own CRCs (header and payload)
//! hold: the batch framing already checksums every byte, so the cache adds no second pass over
//! the data. Unwritten space reads as zeros (fallocate), so a zero block ends a segment.

use ferry_format::batch::{BatchHeader, BATCH_HEADER_LEN};
use uuid::Uuid;

pub const BLOCK: usize = 4096;
pub const SEGMENT_HEADER_LEN: usize = BLOCK;
pub const SEGMENT_MAGIC: [u8; 8] = *b"FRCSEG01";
pub const SEGMENT_VERSION: u32 = 1;
pub const RECORD_MAGIC: [u8; 4] = *b"FRCR";
pub const RECORD_HEADER_LEN: usize = 64;

const _: () = assert!(RECORD_HEADER_LEN + BATCH_HEADER_LEN <= BLOCK);

/// Total on-disk length of a record holding a batch of `batch_len` bytes.
pub fn record_len(batch_len: usize) -> usize {
    (RECORD_HEADER_LEN + batch_len).div_ceil(BLOCK) * BLOCK
}

/// What a record header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub disk_id: Uuid,
    pub seq: u64,
    pub batch_len: u32,
    pub batch_header_crc: u32,
}

impl RecordHeader {
    pub fn encode(&self, out: &mut [u8]) {
        let h = &mut out[..RECORD_HEADER_LEN];
        h.fill(0);
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[8..24].copy_from_slice(self.disk_id.as_bytes());
        h[24..32].copy_from_slice(&self.seq.to_le_bytes());
        h[32..36].copy_from_slice(&self.batch_len.to_le_bytes());
        h[36..40].copy_from_slice(&self.batch_header_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[8..RECORD_HEADER_LEN]);
        h[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The state of the bytes at a record position, modelled as a value (STYLE.md 6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordStatus {
    Valid(RecordHeader),
    /// A zero block: nothing was ever written here.
    End,
    /// Something was written but does not check out (a torn or damaged record).
    Corrupted(String),
}

/// Checks the record header at the start of `block` (at least 64 bytes).
pub fn parse_record_header(block: &[u8], max_batch_len: u32) -> RecordStatus {
    let h = &block[..RECORD_HEADER_LEN];
    if h.iter().all(|b| *b == 0) {
        return RecordStatus::End;
    }
    if h[0..4] != RECORD_MAGIC {
        return RecordStatus::Corrupted("record magic is not FRCR".into());
    }
    let stored = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if stored != crc32c::crc32c(&h[8..RECORD_HEADER_LEN]) {
        return RecordStatus::Corrupted("record header CRC mismatch".into());
    }
    let mut disk = [0u8; 16];
    disk.copy_from_slice(&h[8..24]);
    let header = RecordHeader {
        disk_id: Uuid::from_bytes(disk),
        seq: u64::from_le_bytes(h[24..32].try_into().unwrap_or_default()),
        batch_len: u32::from_le_bytes([h[32], h[33], h[34], h[35]]),
        batch_header_crc: u32::from_le_bytes([h[36], h[37], h[38], h[39]]),
    };
    if (header.batch_len as usize) < BATCH_HEADER_LEN || header.batch_len > max_batch_len {
        return RecordStatus::Corrupted(format!("batch_len {} is out of bounds", header.batch_len));
    }
    RecordStatus::Valid(header)
}

/// Checks the batch bytes a valid record header points at.
pub fn check_batch(header: &RecordHeader, batch: &[u8]) -> Result<(), String> {
    let parsed = BatchHeader::parse(batch).map_err(|e| format!("batch header: {e}"))?;
    if parsed.seq != header.seq || parsed.header_crc32c != header.batch_header_crc {
        return Err("batch header does not match the record header".into());
    }
    if parsed.batch_len() != u64::from(header.batch_len) {
        return Err("batch length does not match the record header".into());
    }
    if crc32c::crc32c(&batch[BATCH_HEADER_LEN..]) != parsed.payload_crc32c {
        return Err("batch payload CRC mismatch (torn write?)".into());
    }
    Ok(())
}

pub fn encode_segment_header(segment_id: u64, created_unix_ms: u64, segment_bytes: u64) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&segment_id.to_le_bytes());
    h[24..32].copy_from_slice(&created_unix_ms.to_le_bytes());
    h[32..40].copy_from_slice(&segment_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&h[..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Returns the segment id a header block names, or why it is not a valid header.
pub fn parse_segment_header(block: &[u8]) -> Result<u64, String> {
    if block.len() < 44 || block[0..8] != SEGMENT_MAGIC {
        return Err("segment magic is not FRCSEG01".into());
    }
    let crc = u32::from_le_bytes([block[40], block[41], block[42], block[43]]);
    if crc != crc32c::crc32c(&block[..40]) {
        return Err("segment header CRC mismatch".into());
    }
    let version = u32::from_le_bytes([block[8], block[9], block[10], block[11]]);
    if version != SEGMENT_VERSION {
        return Err(format!("segment version {version} is not supported"));
    }
    Ok(u64::from_le_bytes(block[16..24].try_into().unwrap_or_default()))
}
