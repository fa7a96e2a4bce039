//! Small metadata files with a magic, a version, a length and a CRC-32C (STYLE.md 2), written
//! by [`crate::replace`], so damage is told from absence and a crash leaves the old or the new
//! file. ferryd keeps its registrations and the cache's disk metadata this way.
//!
//! ```text
//! 0 8 magic (per kind) | 8 4 version | 12 4 body_len | 16 4 CRC-32C of the body | 20 4 reserved
//! 24 body (JSON)
//! ```
//! Bodies are limited to [`STATE_FILE_MAX_BODY`] bytes.

use serde::{de::DeserializeOwned, Serialize};
use std::fs;
use std::io;
use std::path::Path;

pub const STATE_FILE_MAX_BODY: usize = 1 << 20;
const HEADER_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: String, reason: String },
}

/// Writes `value` to `path` durably and atomically.
pub fn write<T: Serialize>(path: &Path, magic: [u8; 8], version: u32, value: &T) -> Result<(), StateFileError> {
    let io_error = |source| StateFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = encode(magic, version, value).map_err(io_error)?;
    crate::replace(path, &bytes).map_err(io_error)
}

/// The bytes [`write()`] writes: header and JSON body (also one slot of [`crate::two_slots`]).
pub fn encode<T: Serialize>(magic: [u8; 8], version: u32, value: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    if body.len() > STATE_FILE_MAX_BODY {
        return Err(io::Error::other("state file body is too large"));
    }
    let mut bytes = Vec::with_capacity(HEADER_LEN + body.len());
    bytes.extend_from_slice(&magic);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&[0u8; 4]);
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Reads a file written by [`write()`], checking magic, version, length and CRC.
pub fn read<T: DeserializeOwned>(path: &Path, magic: [u8; 8], version: u32) -> Result<T, StateFileError> {
    let display = path.display().to_string();
    let bytes = fs::read(path).map_err(|source| StateFileError::Io {
        path: display.clone(),
        source,
    })?;
    let damaged = |reason: String| StateFileError::Damaged {
        path: display.clone(),
        reason,
    };
    let (value, used) = decode_prefix(&bytes, magic, version).map_err(damaged)?;
    if used != bytes.len() {
        return Err(damaged("length does not match".into()));
    }
    Ok(value)
}

/// Decodes what [`encode`] wrote at the start of `bytes` (more may follow); returns the value
/// and how many bytes it took, or why the bytes are not such a record.
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8], magic: [u8; 8], version: u32) -> Result<(T, usize), String> {
    if bytes.len() < HEADER_LEN || bytes[0..8] != magic {
        return Err("wrong magic or too short".into());
    }
    let field = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let file_version = field(8);
    if file_version != version {
        return Err(format!("version {file_version}, expected {version}"));
    }
    let body_len = field(12) as usize;
    if body_len > STATE_FILE_MAX_BODY || bytes.len() < HEADER_LEN + body_len {
        return Err("length does not match".into());
    }
    let body = &bytes[HEADER_LEN..HEADER_LEN + body_len];
    if field(16) != crc32c::crc32c(body) {
        return Err("CRC mismatch".into());
    }
    let value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    Ok((value, HEADER_LEN + body_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.meta");
        write(&path, *b"TESTMETA", 1, &vec![1u64, 2, 3]).unwrap();
        assert_eq!(read::<Vec<u64>>(&path, *b"TESTMETA", 1).unwrap(), vec![1, 2, 3]);
        assert!(matches!(
            read::<Vec<u64>>(&path, *b"OTHRMETA", 1),
            Err(StateFileError::Damaged { .. })
        ));
        assert!(matches!(
            read::<Vec<u64>>(&path, *b"TESTMETA", 2),
            Err(StateFileError::Damaged { .. })
        ));
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read::<Vec<u64>>(&path, *b"TESTMETA", 1),
            Err(StateFileError::Damaged { .. })
        ));
    }
}
