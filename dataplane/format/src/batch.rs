//! PROTOCOL.md section 3: the batch (`FRB1`), encoded and validated.
//!
//! Layout: a 40-byte header (magic, version, flags, seq, source time, record count, payload
//! length, payload CRC-32C, header CRC-32C), then `record_count` records of a 16-byte header
//! (kind, reserved, length, offset) each, WRITE records followed by their data.
//!
//! The decoder takes the received [`Bytes`] and hands out WRITE data as `Bytes::slice`s of it:
//! no record byte is copied. It checks everything PROTOCOL.md lists and maps each violation to
//! the exact error code there ([`BatchErrorCode`]). Checks run in a fixed order so a client
//! gets a predictable code: header shape, magic, header CRC, header fields, size limit, body
//! length, payload CRC, then records first to last.
//!
//! Limits: WRITE data <= [`WRITE_MAX_BYTES`] per record; a BOOKMARK <= 4096 bytes; the payload
//! <= the caller's `max_batch_bytes`. The record vector is bounded by `payload_len / 16`.

use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

use crate::bookmark::{Bookmark, BOOKMARK_JSON_MAX_BYTES};

pub const BATCH_MAGIC: [u8; 4] = *b"FRB1";
pub const BATCH_VERSION: u16 = 1;
pub const BATCH_HEADER_LEN: usize = 40;
pub const RECORD_HEADER_LEN: usize = 16;
/// Largest WRITE record data, in bytes.
pub const WRITE_MAX_BYTES: u32 = 4 * 1024 * 1024;
/// The server's default `max_batch_bytes` (largest `payload_len` accepted).
pub const DEFAULT_MAX_BATCH_BYTES: u32 = 16 * 1024 * 1024;

pub const RECORD_KIND_WRITE: u8 = 1;
pub const RECORD_KIND_ZERO: u8 = 2;
pub const RECORD_KIND_BOOKMARK: u8 = 3;

/// Bytes of the header covered by `header_crc32c`.
const HEADER_CRC_COVERS: usize = 36;

/// ZERO records longer than this are split by the encoder; a power of two, so a multiple of
/// every sector size.
const ZERO_SPLIT_BYTES: u64 = 1 << 31;

const _: () = assert!((WRITE_MAX_BYTES as u64).is_multiple_of(4096));
const _: () = assert!(ZERO_SPLIT_BYTES <= u32::MAX as u64 && ZERO_SPLIT_BYTES.is_multiple_of(4096));
const _: () = assert!(BOOKMARK_JSON_MAX_BYTES < WRITE_MAX_BYTES);

/// The error codes of PROTOCOL.md section 3 that a batch body can earn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BatchErrorCode {
    MalformedBatch,
    CrcMismatch,
    OutOfRange,
    BadBookmark,
    TooLarge,
}

impl BatchErrorCode {
    /// The `"error"` string of the JSON error body.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchErrorCode::MalformedBatch => "malformed_batch",
            BatchErrorCode::CrcMismatch => "crc_mismatch",
            BatchErrorCode::OutOfRange => "out_of_range",
            BatchErrorCode::BadBookmark => "bad_bookmark",
            BatchErrorCode::TooLarge => "too_large",
        }
    }

    /// The HTTP status PROTOCOL.md gives the code.
    pub fn http_status(self) -> u16 {
        match self {
            BatchErrorCode::TooLarge => 413,
            _ => 400,
        }
    }
}

/// A rejected batch: the protocol code and a human explanation (which field, which record).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct BatchError {
    pub code: BatchErrorCode,
    pub message: String,
}

fn reject(code: BatchErrorCode, message: impl Into<String>) -> BatchError {
    BatchError {
        code,
        message: message.into(),
    }
}

/// What the decoder needs to know about the disk a batch is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskGeometry {
    pub size_bytes: u64,
    pub sector_size: u32,
}

/// The 40-byte batch header, after its CRC and fields were checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub seq: u64,
    pub source_time_ms: u64,
    pub record_count: u32,
    pub payload_len: u32,
    pub payload_crc32c: u32,
    pub header_crc32c: u32,
}

impl BatchHeader {
    /// Total bytes of the batch: header plus payload.
    pub fn batch_len(&self) -> u64 {
        BATCH_HEADER_LEN as u64 + u64::from(self.payload_len)
    }

    /// Parses and checks the header at the start of `bytes` (which may hold more after it, as
    /// in a change set). Checks: length, magic, header CRC, version, flags, record count.
    pub fn parse(bytes: &[u8]) -> Result<Self, BatchError> {
        use BatchErrorCode::*;
        let Some(header) = bytes.get(..BATCH_HEADER_LEN) else {
            return Err(reject(
                MalformedBatch,
                format!("batch is {} bytes, shorter than the 40-byte header", bytes.len()),
            ));
        };
        if header[0..4] != BATCH_MAGIC {
            return Err(reject(MalformedBatch, "magic is not \"FRB1\""));
        }
        let header_crc32c = read_u32(header, 36);
        let computed = crc32c::crc32c(&header[..HEADER_CRC_COVERS]);
        if header_crc32c != computed {
            return Err(reject(
                CrcMismatch,
                format!("header_crc32c is {header_crc32c:#010x}, the header's CRC-32C is {computed:#010x}"),
            ));
        }
        let version = read_u16(header, 4);
        if version != BATCH_VERSION {
            return Err(reject(
                MalformedBatch,
                format!("version {version} is not supported (only 1)"),
            ));
        }
        let flags = read_u16(header, 6);
        if flags != 0 {
            return Err(reject(
                MalformedBatch,
                format!("flags are {flags:#06x}; all bits are reserved and must be 0"),
            ));
        }
        let parsed = BatchHeader {
            seq: read_u64(header, 8),
            source_time_ms: read_u64(header, 16),
            record_count: read_u32(header, 24),
            payload_len: read_u32(header, 28),
            payload_crc32c: read_u32(header, 32),
            header_crc32c,
        };
        if parsed.seq == 0 {
            return Err(reject(
                MalformedBatch,
                "seq 0 is not valid; batches are numbered from 1",
            ));
        }
        if parsed.record_count == 0 {
            return Err(reject(
                MalformedBatch,
                "record_count is 0; a batch holds at least one record",
            ));
        }
        Ok(parsed)
    }
}

/// One record of a decoded batch. WRITE data is a slice of the received buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Write { offset: u64, data: Bytes },
    Zero { offset: u64, length: u32 },
    Bookmark(Bookmark),
}

/// A batch that passed every check of PROTOCOL.md section 3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedBatch {
    pub header: BatchHeader,
    pub records: Vec<Record>,
    /// The whole batch exactly as received (header and payload): what the cache and change
    /// sets store.
    pub bytes: Bytes,
}

impl DecodedBatch {
    pub fn bookmarks(&self) -> impl Iterator<Item = &Bookmark> {
        self.records.iter().filter_map(|r| match r {
            Record::Bookmark(b) => Some(b),
            _ => None,
        })
    }
}

/// Validates `bytes` as batch `expected_seq` of a disk with `geometry`.
pub fn decode(
    bytes: Bytes,
    expected_seq: u64,
    geometry: DiskGeometry,
    max_batch_bytes: u32,
) -> Result<DecodedBatch, BatchError> {
    use BatchErrorCode::*;
    let header = BatchHeader::parse(&bytes)?;
    if header.seq != expected_seq {
        return Err(reject(
            MalformedBatch,
            format!("header seq {} differs from seq {expected_seq} in the path", header.seq),
        ));
    }
    if header.payload_len > max_batch_bytes {
        return Err(reject(
            TooLarge,
            format!(
                "payload_len {} exceeds max_batch_bytes {max_batch_bytes}",
                header.payload_len
            ),
        ));
    }
    if bytes.len() as u64 != header.batch_len() {
        return Err(reject(
            MalformedBatch,
            format!(
                "body is {} bytes; the header says 40 + payload_len {} = {}",
                bytes.len(),
                header.payload_len,
                header.batch_len()
            ),
        ));
    }
    let computed = crc32c::crc32c(&bytes[BATCH_HEADER_LEN..]);
    if computed != header.payload_crc32c {
        return Err(reject(
            CrcMismatch,
            format!(
                "payload_crc32c is {:#010x}, the payload's CRC-32C is {computed:#010x}",
                header.payload_crc32c
            ),
        ));
    }
    let records = decode_records(&bytes, &header, geometry)?;
    Ok(DecodedBatch { header, records, bytes })
}

fn decode_records(bytes: &Bytes, header: &BatchHeader, geometry: DiskGeometry) -> Result<Vec<Record>, BatchError> {
    use BatchErrorCode::*;
    let end = bytes.len();
    let most_records = (header.payload_len as usize) / RECORD_HEADER_LEN;
    let mut records = Vec::with_capacity((header.record_count as usize).min(most_records));
    let mut pos = BATCH_HEADER_LEN;
    // Each iteration consumes at least 16 bytes or returns, so the loop is bounded by the payload.
    for index in 0..header.record_count {
        let Some(record_header) = bytes.get(pos..pos + RECORD_HEADER_LEN) else {
            return Err(reject(
                MalformedBatch,
                format!(
                    "record {index} of {} starts past the end of the payload",
                    header.record_count
                ),
            ));
        };
        let kind = record_header[0];
        let length = read_u32(record_header, 4);
        let offset = read_u64(record_header, 8);
        if record_header[1..4] != [0, 0, 0] {
            return Err(reject(
                MalformedBatch,
                format!("record {index}: reserved bytes are not 0"),
            ));
        }
        pos += RECORD_HEADER_LEN;
        let remaining = end - pos;
        let record = match kind {
            RECORD_KIND_WRITE => {
                if length > WRITE_MAX_BYTES {
                    return Err(reject(
                        MalformedBatch,
                        format!("record {index}: WRITE of {length} bytes exceeds the 4 MiB limit"),
                    ));
                }
                check_range(index, offset, length, geometry)?;
                if (length as usize) > remaining {
                    return Err(reject(
                        MalformedBatch,
                        format!("record {index}: WRITE data of {length} bytes runs past the payload"),
                    ));
                }
                let data = bytes.slice(pos..pos + length as usize);
                pos += length as usize;
                Record::Write { offset, data }
            }
            RECORD_KIND_ZERO => {
                check_range(index, offset, length, geometry)?;
                Record::Zero { offset, length }
            }
            RECORD_KIND_BOOKMARK => {
                if offset != 0 {
                    return Err(reject(
                        MalformedBatch,
                        format!("record {index}: BOOKMARK offset must be 0"),
                    ));
                }
                if length > BOOKMARK_JSON_MAX_BYTES {
                    return Err(reject(
                        BadBookmark,
                        format!("record {index}: bookmark of {length} bytes exceeds 4096"),
                    ));
                }
                if (length as usize) > remaining {
                    return Err(reject(
                        MalformedBatch,
                        format!("record {index}: BOOKMARK data of {length} bytes runs past the payload"),
                    ));
                }
                let json = &bytes[pos..pos + length as usize];
                let bookmark =
                    Bookmark::from_json(json).map_err(|why| reject(BadBookmark, format!("record {index}: {why}")))?;
                pos += length as usize;
                Record::Bookmark(bookmark)
            }
            other => return Err(reject(MalformedBatch, format!("record {index}: unknown kind {other}"))),
        };
        records.push(record);
    }
    if pos != end {
        return Err(reject(
            MalformedBatch,
            format!(
                "{} records end {} bytes before payload_len does",
                header.record_count,
                end - pos
            ),
        ));
    }
    Ok(records)
}

fn check_range(index: u32, offset: u64, length: u32, geometry: DiskGeometry) -> Result<(), BatchError> {
    let sector = u64::from(geometry.sector_size);
    let aligned = sector != 0 && offset.is_multiple_of(sector) && u64::from(length) % sector == 0;
    let inside = offset
        .checked_add(u64::from(length))
        .is_some_and(|end| end <= geometry.size_bytes);
    if length == 0 || !aligned || !inside {
        return Err(reject(
            BatchErrorCode::OutOfRange,
            format!(
                "record {index}: range offset {offset} length {length} is empty, not a multiple of the {} byte sector, or past the disk's {} bytes",
                geometry.sector_size, geometry.size_bytes
            ),
        ));
    }
    Ok(())
}

/// Builds a batch. It encodes what it is given: ranges are checked by the server, not here,
/// so tests can build every kind of violation. WRITEs above 4 MiB and ZEROs above 2 GiB are
/// split into several records.
pub struct BatchEncoder {
    buf: BytesMut,
    seq: u64,
    source_time_ms: u64,
    flags: u16,
    record_count: u32,
}

impl BatchEncoder {
    pub fn new(seq: u64, source_time_ms: u64) -> Self {
        Self::with_capacity(seq, source_time_ms, 0)
    }

    /// `payload_capacity`: expected payload bytes, to size the buffer once.
    pub fn with_capacity(seq: u64, source_time_ms: u64, payload_capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(BATCH_HEADER_LEN + payload_capacity);
        buf.put_bytes(0, BATCH_HEADER_LEN);
        Self {
            buf,
            seq,
            source_time_ms,
            flags: 0,
            record_count: 0,
        }
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> &mut Self {
        let mut chunk_offset = offset;
        for chunk in data.chunks(WRITE_MAX_BYTES as usize) {
            self.raw_record(RECORD_KIND_WRITE, chunk.len() as u32, chunk_offset, chunk);
            chunk_offset = chunk_offset.wrapping_add(chunk.len() as u64);
        }
        self
    }

    pub fn zero(&mut self, offset: u64, length: u64) -> &mut Self {
        let mut done = 0;
        while done < length {
            let part = (length - done).min(ZERO_SPLIT_BYTES);
            self.raw_record(RECORD_KIND_ZERO, part as u32, offset.wrapping_add(done), &[]);
            done += part;
        }
        self
    }

    pub fn bookmark(&mut self, bookmark: &Bookmark) -> &mut Self {
        let json = bookmark.to_json();
        self.raw_record(RECORD_KIND_BOOKMARK, json.len() as u32, 0, &json)
    }

    /// Appends a record exactly as given (the length field is not derived from `data`).
    pub fn raw_record(&mut self, kind: u8, length: u32, offset: u64, data: &[u8]) -> &mut Self {
        self.buf.put_u8(kind);
        self.buf.put_bytes(0, 3);
        self.buf.put_u32_le(length);
        self.buf.put_u64_le(offset);
        self.buf.put_slice(data);
        self.record_count += 1;
        self
    }

    /// Sets the batch's source time (when the newest write in it was captured).
    pub fn source_time_ms(&mut self, ms: u64) -> &mut Self {
        self.source_time_ms = ms;
        self
    }

    /// Sets the header flags (only to build invalid batches in tests: version 1 has none).
    pub fn flags(&mut self, flags: u16) -> &mut Self {
        self.flags = flags;
        self
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    pub fn payload_len(&self) -> usize {
        self.buf.len() - BATCH_HEADER_LEN
    }

    /// Fills in the header and CRCs and returns the batch.
    pub fn finish(mut self) -> Bytes {
        let payload_len = self.payload_len() as u32;
        let payload_crc = crc32c::crc32c(&self.buf[BATCH_HEADER_LEN..]);
        let header = &mut self.buf[..BATCH_HEADER_LEN];
        header[0..4].copy_from_slice(&BATCH_MAGIC);
        header[4..6].copy_from_slice(&BATCH_VERSION.to_le_bytes());
        header[6..8].copy_from_slice(&self.flags.to_le_bytes());
        header[8..16].copy_from_slice(&self.seq.to_le_bytes());
        header[16..24].copy_from_slice(&self.source_time_ms.to_le_bytes());
        header[24..28].copy_from_slice(&self.record_count.to_le_bytes());
        header[28..32].copy_from_slice(&payload_len.to_le_bytes());
        header[32..36].copy_from_slice(&payload_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&header[..HEADER_CRC_COVERS]);
        header[36..40].copy_from_slice(&header_crc.to_le_bytes());
        self.buf.freeze()
    }
}

impl fmt::Debug for BatchEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchEncoder")
            .field("seq", &self.seq)
            .field("record_count", &self.record_count)
            .field("payload_len", &self.payload_len())
            .finish()
    }
}

/// Recomputes both CRCs of an encoded batch in place, for tests that patch header fields and
/// want to reach the check after the CRC.
pub fn reseal_crcs(batch: &mut [u8]) {
    if batch.len() < BATCH_HEADER_LEN {
        return;
    }
    let payload_crc = crc32c::crc32c(&batch[BATCH_HEADER_LEN..]);
    batch[32..36].copy_from_slice(&payload_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&batch[..HEADER_CRC_COVERS]);
    batch[36..40].copy_from_slice(&header_crc.to_le_bytes());
}

// Callers pass slices of at least `at + N` bytes (the header was length-checked).
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

/// Whether a batch (already validated once) holds a BOOKMARK record. Walks record headers
/// only; a malformed batch answers false.
pub fn has_bookmark(batch: &[u8]) -> bool {
    let Some(count) = batch.get(24..28).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])) else {
        return false;
    };
    let mut pos = BATCH_HEADER_LEN;
    for _ in 0..count {
        let Some(header) = batch.get(pos..pos + RECORD_HEADER_LEN) else {
            return false;
        };
        let length = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        match header[0] {
            RECORD_KIND_BOOKMARK => return true,
            RECORD_KIND_WRITE => pos += RECORD_HEADER_LEN + length,
            _ => pos += RECORD_HEADER_LEN,
        }
    }
    false
}
