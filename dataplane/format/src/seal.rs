//! FORMATS.md section 3: sealed objects (`.fseal`).
//!
//! ```text
//! 0  8 magic "FERRYSL1" | 8 1 codec | 9 1 cipher | 10 2 reserved | 12 4 key_gen
//! 16 12 nonce | 28 8 plain_len | 36 8 body_len | 44 body_len ciphertext | tag 16
//! ```
//! Sealing compresses the plaintext with zstd straight into the output buffer (after room for
//! the header), falls back to storing it as is when compression does not make it smaller, and
//! encrypts that body in place with AES-256-GCM (aws-lc-rs). The AAD is the 44 header bytes
//! followed by the object name, so an object cannot be moved to another name or have its
//! header edited. Nonces are 12 fresh random bytes for every sealing.
//!
//! Memory: sealing allocates one output buffer of `44 + plain_len + 16` bytes, never zeroed
//! (zstd writes into its spare capacity; storing wins when compression does not make the body
//! smaller); a [`Sealer`] keeps one reused buffer to join a multi-part input (see
//! [`Sealer::seal_parts`]), as large as the largest input it sealed; unsealing allocates the
//! ciphertext copy it decrypts in place and, for zstd, the `plain_len` output. Unsealing
//! refuses objects that claim more than [`SEALED_PLAIN_MAX_BYTES`] so a hostile header cannot
//! make it allocate without bound.

use aws_lc_rs::aead::{Aad, Nonce, NONCE_LEN};
use zstd::zstd_safe;

use crate::keys::ObjectKey;

pub const SEALED_MAGIC: [u8; 8] = *b"FERRYSL1";
pub const SEALED_HEADER_LEN: usize = 44;
pub const SEALED_TAG_LEN: usize = 16;
pub const SEALED_NONCE_LEN: usize = NONCE_LEN;
/// Cipher byte for AES-256-GCM, the only cipher of format 1.
pub const CIPHER_AES_256_GCM: u8 = 1;
/// Largest plaintext this implementation seals or unseals: change sets, chunks and manifests
/// are far smaller (megabytes); the bound keeps a corrupt header from driving allocation.
pub const SEALED_PLAIN_MAX_BYTES: u64 = 1 << 30;
/// The only key generation of format 1 (rotation is future work).
pub const KEY_GENERATION: u32 = 0;

const _: () = assert!(SEALED_NONCE_LEN == 12);
const _: () = assert!(SEALED_HEADER_LEN == 8 + 1 + 1 + 2 + 4 + 12 + 8 + 8);

/// How the body was encoded before encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Stored = 0,
    Zstd = 1,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed object is {len} bytes, shorter than the 60 bytes of header and tag")]
    TooShort { len: usize },
    #[error("magic is not \"FERRYSL1\"; this is not a Ferry sealed object")]
    BadMagic,
    #[error("unknown codec {0}")]
    UnknownCodec(u8),
    #[error("unknown cipher {0}")]
    UnknownCipher(u8),
    #[error("reserved header bytes are not zero")]
    ReservedNotZero,
    #[error("key generation {0} is not known to this version")]
    UnknownKeyGeneration(u32),
    #[error("object is {actual} bytes but its header says {expected} (44 + body_len + 16)")]
    LengthMismatch { expected: u64, actual: u64 },
    #[error("stored body is {body_len} bytes but plain_len says {plain_len}")]
    StoredLengthMismatch { body_len: u64, plain_len: u64 },
    #[error("plain_len {0} exceeds the {SEALED_PLAIN_MAX_BYTES}-byte limit")]
    TooLarge(u64),
    #[error("authentication failed: wrong key, wrong object name, or the object was altered")]
    AuthenticationFailed,
    #[error("zstd body is corrupt: {0}")]
    Decompress(String),
    #[error("decompressed to {actual} bytes but plain_len says {expected}")]
    PlainLengthMismatch { expected: u64, actual: u64 },
    #[error("zstd compression failed: {0}")]
    Compress(String),
    #[error("the system random generator failed")]
    Random,
}

/// A parsed and checked sealed-object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    pub codec: Codec,
    pub key_gen: u32,
    pub nonce: [u8; SEALED_NONCE_LEN],
    pub plain_len: u64,
    pub body_len: u64,
}

impl SealedHeader {
    /// Parses the header of the whole object `sealed` and checks it against its length.
    pub fn parse(sealed: &[u8]) -> Result<Self, SealError> {
        if sealed.len() < SEALED_HEADER_LEN + SEALED_TAG_LEN {
            return Err(SealError::TooShort { len: sealed.len() });
        }
        let h = &sealed[..SEALED_HEADER_LEN];
        if h[0..8] != SEALED_MAGIC {
            return Err(SealError::BadMagic);
        }
        let codec = match h[8] {
            0 => Codec::Stored,
            1 => Codec::Zstd,
            other => return Err(SealError::UnknownCodec(other)),
        };
        if h[9] != CIPHER_AES_256_GCM {
            return Err(SealError::UnknownCipher(h[9]));
        }
        if h[10..12] != [0, 0] {
            return Err(SealError::ReservedNotZero);
        }
        let key_gen = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        if key_gen != KEY_GENERATION {
            return Err(SealError::UnknownKeyGeneration(key_gen));
        }
        let mut nonce = [0u8; SEALED_NONCE_LEN];
        nonce.copy_from_slice(&h[16..28]);
        let plain_len = u64_at(h, 28);
        let body_len = u64_at(h, 36);
        let expected = (SEALED_HEADER_LEN as u64 + SEALED_TAG_LEN as u64).checked_add(body_len);
        if expected != Some(sealed.len() as u64) {
            return Err(SealError::LengthMismatch {
                expected: expected.unwrap_or(u64::MAX),
                actual: sealed.len() as u64,
            });
        }
        if plain_len > SEALED_PLAIN_MAX_BYTES {
            return Err(SealError::TooLarge(plain_len));
        }
        if codec == Codec::Stored && body_len != plain_len {
            return Err(SealError::StoredLengthMismatch { body_len, plain_len });
        }
        Ok(Self {
            codec,
            key_gen,
            nonce,
            plain_len,
            body_len,
        })
    }

    fn encode(&self) -> [u8; SEALED_HEADER_LEN] {
        let mut h = [0u8; SEALED_HEADER_LEN];
        h[0..8].copy_from_slice(&SEALED_MAGIC);
        h[8] = self.codec as u8;
        h[9] = CIPHER_AES_256_GCM;
        h[12..16].copy_from_slice(&self.key_gen.to_le_bytes());
        h[16..28].copy_from_slice(&self.nonce);
        h[28..36].copy_from_slice(&self.plain_len.to_le_bytes());
        h[36..44].copy_from_slice(&self.body_len.to_le_bytes());
        h
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}

fn aad_for(header: &[u8; SEALED_HEADER_LEN], name: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(SEALED_HEADER_LEN + name.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// Seals objects, reusing one zstd context (one per worker thread) and one join buffer.
pub struct Sealer {
    cctx: zstd_safe::CCtx<'static>,
    level: i32,
    /// Multi-part inputs are copied here, one after another, before compressing.
    joined: Vec<u8>,
}

impl Sealer {
    /// `level`: a zstd level (negative levels are the fast ones; 1 is the default).
    pub fn new(level: i32) -> Result<Self, SealError> {
        let mut sealer = Self {
            cctx: zstd_safe::CCtx::create(),
            level,
            joined: Vec::new(),
        };
        sealer.set_level(level)?;
        Ok(sealer)
    }

    pub fn level(&self) -> i32 {
        self.level
    }

    pub fn set_level(&mut self, level: i32) -> Result<(), SealError> {
        let range = zstd_safe::min_c_level()..=zstd_safe::max_c_level();
        if !range.contains(&level) {
            return Err(SealError::Compress(format!(
                "level {level} is outside zstd's {}..={}",
                range.start(),
                range.end()
            )));
        }
        self.cctx
            .set_parameter(zstd_safe::CParameter::CompressionLevel(level))
            .map_err(|code| SealError::Compress(zstd_safe::get_error_name(code).to_string()))?;
        self.level = level;
        Ok(())
    }

    /// Seals `plaintext` as object `name` with a fresh random nonce.
    pub fn seal(&mut self, key: &ObjectKey, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_parts(key, name, &[plaintext])
    }

    /// Seals the concatenation of `parts` (for example the batches of a change set where they
    /// lie in the cache). Several parts are first copied into one reused buffer and compressed
    /// as one contiguous input: a memcpy costs a few percent of zstd-1, while zstd's streaming
    /// mode over separate parts runs its slower external-dictionary match finder (measured:
    /// `cargo bench -p ferry-benches --bench seal`, `seal_8_parts` against `seal`). A single
    /// part is compressed where it lies.
    pub fn seal_parts(&mut self, key: &ObjectKey, name: &str, parts: &[&[u8]]) -> Result<Vec<u8>, SealError> {
        self.seal_parts_into(key, name, parts, Vec::new())
    }

    /// As [`Sealer::seal_parts`], written into `out` (cleared first): a buffer from an earlier
    /// object, so a steady stream of objects needs no fresh allocation (and no page faults).
    pub fn seal_parts_into(
        &mut self,
        key: &ObjectKey,
        name: &str,
        parts: &[&[u8]],
        out: Vec<u8>,
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; SEALED_NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        self.seal_into_with_nonce(key, name, parts, nonce, out)
    }

    /// Seals with a caller-chosen nonce. Only for reproducible test vectors: reusing a nonce
    /// with one key destroys AES-GCM's confidentiality and integrity.
    #[doc(hidden)]
    pub fn seal_parts_with_nonce(
        &mut self,
        key: &ObjectKey,
        name: &str,
        parts: &[&[u8]],
        nonce: [u8; SEALED_NONCE_LEN],
    ) -> Result<Vec<u8>, SealError> {
        self.seal_into_with_nonce(key, name, parts, nonce, Vec::new())
    }

    fn seal_into_with_nonce(
        &mut self,
        key: &ObjectKey,
        name: &str,
        parts: &[&[u8]],
        nonce: [u8; SEALED_NONCE_LEN],
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, SealError> {
        let plain_len: usize = parts.iter().map(|p| p.len()).sum();
        if plain_len as u64 > SEALED_PLAIN_MAX_BYTES {
            return Err(SealError::TooLarge(plain_len as u64));
        }
        // Never zeroed: the header is written below, the body by zstd or the stored copy.
        out.clear();
        out.reserve(SEALED_HEADER_LEN + plain_len + SEALED_TAG_LEN);
        out.resize(SEALED_HEADER_LEN, 0);
        let (codec, body_len) = match self.compress_into(parts, plain_len, &mut out)? {
            Some(compressed_len) => (Codec::Zstd, compressed_len),
            None => {
                out.truncate(SEALED_HEADER_LEN);
                for part in parts {
                    out.extend_from_slice(part);
                }
                (Codec::Stored, plain_len)
            }
        };
        let header = SealedHeader {
            codec,
            key_gen: KEY_GENERATION,
            nonce,
            plain_len: plain_len as u64,
            body_len: body_len as u64,
        };
        let header_bytes = header.encode();
        out[..SEALED_HEADER_LEN].copy_from_slice(&header_bytes);
        let aad = aad_for(&header_bytes, name);
        let body = &mut out[SEALED_HEADER_LEN..SEALED_HEADER_LEN + body_len];
        let tag = key
            .aead()
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..]), body)
            .map_err(|_| SealError::Compress("AES-GCM sealing failed".into()))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Compresses `parts` (joined first when there are several) and appends the result to
    /// `out`. Returns the compressed length if it is smaller than `plain_len`, `None` if
    /// storing is better (then `out`'s length is unspecified beyond the header).
    fn compress_into(
        &mut self,
        parts: &[&[u8]],
        plain_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<Option<usize>, SealError> {
        if plain_len == 0 {
            return Ok(None);
        }
        let Self { cctx, joined, .. } = self;
        let input: &[u8] = match parts {
            [single] => single,
            _ => {
                joined.clear();
                joined.reserve(plain_len);
                for part in parts {
                    joined.extend_from_slice(part);
                }
                joined
            }
        };
        let _ = cctx.reset(zstd_safe::ResetDirective::SessionOnly);
        let start = out.len();
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(start as u64);
        match cctx.compress2(&mut cursor, input) {
            Ok(n) if n < plain_len => Ok(Some(n)),
            Ok(_) => Ok(None),
            Err(code) if is_dst_too_small(code) => Ok(None),
            Err(code) => Err(SealError::Compress(zstd_safe::get_error_name(code).to_string())),
        }
    }
}

fn is_dst_too_small(code: usize) -> bool {
    zstd_safe::get_error_name(code).contains("Destination buffer is too small")
}

/// Unseals objects, reusing one zstd context.
pub struct Unsealer {
    dctx: zstd_safe::DCtx<'static>,
}

impl Default for Unsealer {
    fn default() -> Self {
        Self::new()
    }
}

impl Unsealer {
    pub fn new() -> Self {
        Self {
            dctx: zstd_safe::DCtx::create(),
        }
    }

    /// Checks and opens `sealed`, stored under `name`, and returns its plaintext.
    pub fn unseal(&mut self, key: &ObjectKey, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let header = SealedHeader::parse(sealed)?;
        let mut header_bytes = [0u8; SEALED_HEADER_LEN];
        header_bytes.copy_from_slice(&sealed[..SEALED_HEADER_LEN]);
        let aad = aad_for(&header_bytes, name);
        let mut body = sealed[SEALED_HEADER_LEN..].to_vec();
        let opened_len = key
            .aead()
            .open_in_place(
                Nonce::assume_unique_for_key(header.nonce),
                Aad::from(&aad[..]),
                &mut body,
            )
            .map_err(|_| SealError::AuthenticationFailed)?
            .len();
        body.truncate(opened_len);
        match header.codec {
            Codec::Stored => Ok(body),
            Codec::Zstd => {
                let mut plain = Vec::with_capacity(header.plain_len as usize);
                let written = self
                    .dctx
                    .decompress(&mut plain, &body)
                    .map_err(|code| SealError::Decompress(zstd_safe::get_error_name(code).to_string()))?;
                if written as u64 != header.plain_len {
                    return Err(SealError::PlainLengthMismatch {
                        expected: header.plain_len,
                        actual: written as u64,
                    });
                }
                Ok(plain)
            }
        }
    }
}

/// Seals one object with a fresh zstd context (for occasional objects: manifests, metadata).
pub fn seal(key: &ObjectKey, name: &str, plaintext: &[u8], level: i32) -> Result<Vec<u8>, SealError> {
    Sealer::new(level)?.seal(key, name, plaintext)
}

/// Unseals one object with a fresh zstd context.
pub fn unseal(key: &ObjectKey, name: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    Unsealer::new().unseal(key, name, sealed)
}
