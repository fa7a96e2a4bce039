//! Ferry's formats, without I/O: what crosses the wire on port 9443 and what lands in storage.
//!
//! - [`batch`]: the PROTOCOL.md batch (`FRB1`): an encoder and a validating decoder that
//!   borrows record data from the received [`bytes::Bytes`] (never copies it) and names each
//!   violation with the exact error code of PROTOCOL.md section 3.
//! - [`seal`]: the FORMATS.md sealed object (`FERRYSL1`): zstd then AES-256-GCM (aws-lc-rs),
//!   bound to its object name through the AAD.
//! - [`keys`]: the vault key, its text form, `key_check`, and HKDF object keys.
//! - [`names`]: every object name of FORMATS.md section 1, built and parsed back.
//! - [`vault`]: `vault.json`, the only plaintext object.
//! - [`block_digest`]: the 128-bit BLAKE3 digest of a disk block (block maps, failover digests).
//!
//! Everything here is deterministic given its inputs (except fresh nonces), bounded in what it
//! allocates by limits named as constants, and never panics on input from the network or disk.

pub mod batch;
pub mod block_digest;
pub mod bookmark;
pub mod ids;
pub mod keys;
pub mod names;
pub mod plaintexts;
pub mod seal;
pub mod time;
pub mod vault;

pub use batch::{BatchEncoder, BatchError, BatchErrorCode, BatchHeader, DecodedBatch, DiskGeometry, Record};
pub use bookmark::{Bookmark, BookmarkId, BookmarkKind};
pub use keys::{KeyError, Keyring, ObjectKey, VaultKey};
pub use names::{NameError, ObjectName};
pub use seal::{Codec, SealError, Sealer, SEALED_HEADER_LEN, SEALED_TAG_LEN};
pub use vault::{VaultDescriptor, VaultError};
