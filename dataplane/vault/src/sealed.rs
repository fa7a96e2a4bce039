//! Sealed JSON objects (manifests, pins, pruned records, points, descriptors): read, written
//! and looked for in one way, with errors that name the object.

use anyhow::{Context, Result};
use bytes::Bytes;
use ferry_format::ObjectKey;
use ferry_storage::{ObjectStorage, StorageError};

/// zstd level of the small objects written here (the pipeline's default).
const LEVEL: i32 = 1;

/// Reads, unseals and parses object `name`.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    name: &str,
) -> Result<T> {
    let sealed = storage.get(name).await.with_context(|| format!("cannot read {name}"))?;
    let plain = ferry_format::seal::unseal(key, name, &sealed).with_context(|| format!("object {name} is corrupt"))?;
    serde_json::from_slice(&plain).with_context(|| format!("object {name} does not hold what its name says"))
}

/// Seals `value` as JSON and writes it as `name`. Returns the sealed size.
pub async fn write_json<T: serde::Serialize>(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    name: &str,
    value: &T,
) -> Result<u64> {
    let json = serde_json::to_vec(value).with_context(|| format!("cannot encode {name}"))?;
    let sealed = ferry_format::seal::seal(key, name, &json, LEVEL).with_context(|| format!("cannot seal {name}"))?;
    let size = sealed.len() as u64;
    storage
        .put(name, Bytes::from(sealed))
        .await
        .with_context(|| format!("cannot write {name}"))?;
    Ok(size)
}

/// Whether `name` exists (a missing object is `false`, other errors are errors).
pub async fn exists(storage: &dyn ObjectStorage, name: &str) -> Result<bool> {
    match storage.head(name).await {
        Ok(_) => Ok(true),
        Err(StorageError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot look for {name}")),
    }
}
