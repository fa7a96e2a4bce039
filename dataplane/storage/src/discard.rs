//! The discard target, for measuring the pipeline without a storage bottleneck (benchmarks
//! only; every report that uses it says so). Change sets (`.../log/...`) are counted and
//! dropped; everything else (vault.json, disk descriptors, recovery points: small objects)
//! is kept in a local directory so ferryd can start and commit as usual. Nothing can be
//! restored from it.

use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::local::LocalDirectory;
use crate::{validate_name, ObjectMeta, ObjectStorage, StorageError, TokenBucket};

#[derive(Debug)]
pub struct Discard {
    metadata: LocalDirectory,
    dropped_objects: AtomicU64,
    dropped_bytes: AtomicU64,
}

impl Discard {
    pub fn new(metadata: LocalDirectory) -> Self {
        Self {
            metadata,
            dropped_objects: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        }
    }

    /// (objects, bytes) dropped so far.
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_objects.load(Ordering::Relaxed),
            self.dropped_bytes.load(Ordering::Relaxed),
        )
    }
}

#[async_trait]
impl ObjectStorage for Discard {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        validate_name(name)?;
        if name.contains("/log/") {
            self.dropped_objects.fetch_add(1, Ordering::Relaxed);
            self.dropped_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        self.metadata.put(name, data).await
    }

    /// Dropped objects are paced too, so a benchmark of the cap sees what a real link would.
    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError> {
        let mut left = data.len() as u64;
        while left > 0 {
            left -= pace.take(left).await;
        }
        self.put(name, data).await
    }

    async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        self.metadata.get(name).await
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        self.metadata.get_range(name, range).await
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError> {
        self.metadata.head(name).await
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        self.metadata.list_page(prefix, start_after, max_results).await
    }

    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.metadata.list_directories(prefix).await
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.metadata.delete(name).await
    }

    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError> {
        self.metadata.put_new(name, data).await
    }

    async fn lease(&self, name: &str, op: crate::LeaseOp) -> Result<crate::LeaseAnswer, StorageError> {
        self.metadata.lease(name, op).await
    }

    fn describe(&self) -> String {
        format!(
            "discard target (change sets dropped; metadata in {})",
            self.metadata.root().display()
        )
    }
}
