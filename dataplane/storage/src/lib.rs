//! Target storage: where sealed objects land (FORMATS.md), behind one small trait.
//!
//! Backends: [`local::LocalDirectory`] (the embedded default: durable temp-write and rename,
//! made durable by `syncfs` rounds shared by the puts of one writer thread,
//! [`local_writer`]) and [`azure::AzureBlob`] (block blobs through
//! `object_store`); beside the trait, [`page_blob::PageBlob`] writes the page blobs a failover
//! makes for Azure (through `azure_storage_blob`). Layers with one job each wrap any backend: [`retry::Retrying`] retries
//! transient errors with exponential backoff and full jitter, bounded in attempts and time;
//! [`faults::FaultInjecting`] is a test-only wrapper that fails, delays or answers errors on
//! purpose.
//!
//! Contract shared by every backend (and checked by one test suite run against each):
//! - names are FORMATS.md-style relative names, checked by [`validate_name`] before any I/O;
//! - `put` is atomic and durable when it returns: a reader sees the old object, or the new one
//!   whole, never part of it; writing the same name again replaces it;
//! - `list_page` returns names below a prefix in byte order, at most `max_results` at a time;
//! - `delete` of a missing object succeeds (deletion is idempotent);
//! - every error says whether retrying can help ([`StorageError::is_transient`]).

use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::ops::Range;

pub mod azure;
mod blob_url;
pub mod config;
pub mod direct_write;
pub mod discard;
pub mod faults;
pub mod group_sync;
pub mod lease;
pub mod local;
pub mod local_writer;
pub mod pacing;
pub mod page_blob;
pub mod retry;

pub use config::{AzureCredentialConfig, AzureTargetConfig, LocalTargetConfig, Secret, TargetConfig};
pub use lease::{LeaseAnswer, LeaseOp};
pub use pacing::TokenBucket;
pub use retry::RetryPolicy;

/// Longest object name accepted (Azure's limit is 1024 characters).
pub const NAME_MAX_BYTES: usize = 1024;
/// Largest page `list_page` returns; callers asking for more get this many.
pub const LIST_PAGE_MAX: usize = 5000;

/// What a listing or `head` says about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: String,
    pub size_bytes: u64,
}

/// The operation an error came from, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Put,
    Get,
    Head,
    List,
    Delete,
    CreateContainer,
    Lease,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Put => "put",
            Operation::Get => "get",
            Operation::Head => "head",
            Operation::List => "list",
            Operation::Delete => "delete",
            Operation::CreateContainer => "create container",
            Operation::Lease => "lease",
        })
    }
}

/// Why a permanent error will not go away by retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PermanentKind {
    /// Credentials refused (wrong account key, expired SAS): fix the configuration.
    AuthenticationFailed,
    /// The credentials are valid but not allowed this operation.
    PermissionDenied,
    /// The container (or the local target directory) does not exist.
    ContainerMissing,
    /// The local target's file system is full.
    NoSpace,
    /// The request itself is wrong (a range past the end, an unsupported operation).
    InvalidRequest,
    /// Anything else the backend says will not succeed.
    Other,
}

impl fmt::Display for PermanentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PermanentKind::AuthenticationFailed => {
                "authentication failed (check the account key, SAS token or identity)"
            }
            PermanentKind::PermissionDenied => {
                "permission denied (the credential needs read, write, list and delete on the container)"
            }
            PermanentKind::ContainerMissing => {
                "the container or target directory does not exist (create it, or let `ferryctl init \
                 --create-container` create it; check the name)"
            }
            PermanentKind::NoSpace => "no space left on the target (free space or grow it; the cache keeps the data)",
            PermanentKind::InvalidRequest => "invalid request",
            PermanentKind::Other => "permanent error",
        })
    }
}

/// Every error is one line: what was being done, on what, why, and (for permanent errors) what
/// fixes it; never a raw XML answer, a URL with a signature, or a secret.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {name} does not exist")]
    NotFound { name: String },
    #[error("{name:?} is not a valid object name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("{}: transient error (retrying may help): {message}", what(*operation, name))]
    Transient {
        operation: Operation,
        name: String,
        message: String,
    },
    #[error("{}: {kind}: {message}", what(*operation, name))]
    Permanent {
        operation: Operation,
        name: String,
        kind: PermanentKind,
        message: String,
    },
}

/// "put ferry/v1/x", or "list" for a listing of the whole container (an empty name).
fn what(operation: Operation, name: &str) -> String {
    if name.is_empty() {
        operation.to_string()
    } else {
        format!("{operation} {name}")
    }
}

impl StorageError {
    /// Retrying the same request may succeed (timeouts, resets, 500, 503, 429).
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }

    /// Retrying will not help until something outside Ferry changes.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StorageError::Permanent { .. } | StorageError::InvalidName { .. })
    }

    pub fn permanent_kind(&self) -> Option<PermanentKind> {
        match self {
            StorageError::Permanent { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// One trait over every target. Implementations are cheap to share (`Arc<dyn ObjectStorage>`).
#[async_trait]
pub trait ObjectStorage: Send + Sync + fmt::Debug {
    /// Stores `data` under `name`, atomically and durably, replacing any object there.
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError>;
    /// `put` under the bandwidth cap: the bytes leave in pieces granted by `pace` (each at
    /// most a second of the rate in force when granted), and the object still appears
    /// atomically (a temporary file renamed; blocks committed by one block list). With an
    /// unlimited bucket it is `put`.
    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError>;
    /// The whole object.
    async fn get(&self, name: &str) -> Result<Bytes, StorageError>;
    /// Bytes `range` of the object; the range must lie within it.
    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError>;
    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError>;
    /// Objects whose names start with `prefix` (empty, or ending in '/'), in byte order,
    /// after `start_after` if given, at most `max_results` (capped at [`LIST_PAGE_MAX`]).
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError>;
    /// The names of the "directories" directly below `prefix` (empty, or ending in '/'): each
    /// a valid name ending in '/', in byte order. For one level of a listing (every disk of
    /// a vault) without listing every object below it.
    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// Removes the object; a missing object is not an error.
    async fn delete(&self, name: &str) -> Result<(), StorageError>;
    /// Stores `data` under `name` only if no object has that name: `Ok(true)` when created,
    /// `Ok(false)` when one existed (left as it was). Of two racing creators exactly one wins.
    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError>;
    /// An exclusive lease on `name` with Azure Blob lease semantics ([`lease`]); the object is
    /// created empty when missing.
    async fn lease(&self, name: &str, op: LeaseOp) -> Result<LeaseAnswer, StorageError>;
    /// Where this target points, for status and logs; never contains a secret.
    fn describe(&self) -> String;
}

/// An `Arc` of a backend is a backend, so layers can share one (tests keep a handle on the
/// fault injector while the retry layer owns it).
#[async_trait]
impl<T: ObjectStorage + ?Sized> ObjectStorage for std::sync::Arc<T> {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        (**self).put(name, data).await
    }
    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError> {
        (**self).put_paced(name, data, pace).await
    }
    async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        (**self).get(name).await
    }
    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        (**self).get_range(name, range).await
    }
    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError> {
        (**self).head(name).await
    }
    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        (**self).list_page(prefix, start_after, max_results).await
    }
    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        (**self).list_directories(prefix).await
    }
    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        (**self).delete(name).await
    }
    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError> {
        (**self).put_new(name, data).await
    }
    async fn lease(&self, name: &str, op: LeaseOp) -> Result<LeaseAnswer, StorageError> {
        (**self).lease(name, op).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Every object below `prefix`, following pages. Memory grows with the listing: for prefixes
/// known to be small (one disk's points, a base's chunks), or callers that accept the size.
pub async fn list_all(storage: &dyn ObjectStorage, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    let mut all = Vec::new();
    loop {
        let start_after = all.last().map(|m: &ObjectMeta| m.name.clone());
        let page = storage.list_page(prefix, start_after.as_deref(), LIST_PAGE_MAX).await?;
        let done = page.len() < LIST_PAGE_MAX;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
}

/// Checks an object name before it reaches any backend: 1..=1024 bytes of `[A-Za-z0-9._/-]`,
/// relative, no empty, `.` or `..` segments, and no segment starting with `.` (the local
/// backend's temporary files use those, so they can never collide with an object).
pub fn validate_name(name: &str) -> Result<(), StorageError> {
    let fail = |reason| {
        Err(StorageError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > NAME_MAX_BYTES {
        return fail("must be 1 to 1024 bytes");
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/');
    if !name.bytes().all(allowed) {
        return fail("may only contain A-Z a-z 0-9 . _ - /");
    }
    if name
        .split('/')
        .any(|segment| segment.is_empty() || segment.starts_with('.'))
    {
        return fail("has an empty segment, a leading or trailing '/', or a segment starting with '.'");
    }
    Ok(())
}

/// Checks a listing prefix: empty, or a valid name followed by '/'.
pub fn validate_prefix(prefix: &str) -> Result<(), StorageError> {
    if prefix.is_empty() {
        return Ok(());
    }
    match prefix.strip_suffix('/') {
        Some(directory) => validate_name(directory),
        None => Err(StorageError::InvalidName {
            name: prefix.to_string(),
            reason: "a listing prefix is empty or ends with '/'",
        }),
    }
}

/// Opens the configured target behind the retry layer (beside the trait it returns; the
/// config module only describes targets).
pub async fn open_target(
    config: &TargetConfig,
    retry: RetryPolicy,
) -> Result<std::sync::Arc<dyn ObjectStorage>, StorageError> {
    Ok(match config {
        TargetConfig::Local(local) => std::sync::Arc::new(retry::Retrying::new(
            local::LocalDirectory::open(&local.path, local.create)?,
            retry,
        )),
        TargetConfig::Azure(azure) => {
            std::sync::Arc::new(retry::Retrying::new(azure::AzureBlob::connect(azure).await?, retry))
        }
        TargetConfig::Discard(local) => {
            let metadata = local::LocalDirectory::open(&local.path, local.create)?;
            std::sync::Arc::new(retry::Retrying::new(discard::Discard::new(metadata), retry))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_collide_are_refused() {
        for bad in [
            "",
            "/abs",
            "a//b",
            "a/",
            "../x",
            "a/../b",
            "a/./b",
            "a/.hidden",
            ".x",
            "a\\b",
            "a b",
            "a\0b",
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"a".repeat(1025)).is_err());
        for good in ["ferry/v1/vault.json", "a", "a/b.c/d-e_f"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
        assert!(validate_prefix("").is_ok());
        assert!(validate_prefix("ferry/v1/").is_ok());
        assert!(validate_prefix("ferry/v1").is_err());
        assert!(validate_prefix("../").is_err());
    }
}
