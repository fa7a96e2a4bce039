//! Page blobs in a container of the target's Azure account: what a failover writes for Azure
//! to make a managed disk from (a fixed VHD, `az disk create --source <blob URL>`).
//!
//! The calls go through Microsoft's typed client (`azure_storage_blob`: Create, Put Page, Clear
//! Pages, Get Page Ranges, Get Properties, Delete), authorized by a SAS in each blob URL that `object_store` signs from
//! the target's credential (a service SAS from an account key, a user delegation SAS from an
//! identity; a configured SAS token is used as it is). Each URL is signed for the one blob and
//! the one kind of call (write, read, delete) and for [`SIGNED_FOR`]; the signature never
//! leaves this module (errors pass through [`crate::azure::redact`], and [`PageBlob::url`] is
//! the blob's address without it). Pages are 512 bytes; one Put Page carries at most
//! [`PUT_PAGE_MAX`]. `azure_core`'s own bounded retries retry transient failures.

use azure_core::http::{RequestContent, Url};
use azure_storage_blob::models::{HttpRange, PageBlobClientCreateOptions};
use azure_storage_blob::{BlobClient, PageBlobClient};
use bytes::Bytes;
use futures::TryStreamExt;
use std::time::Duration;

use crate::azure::{concise, redact};
use crate::config::AzureTargetConfig;
use crate::{Operation, PermanentKind, StorageError};

/// The largest Put Page.
pub const PUT_PAGE_MAX: u64 = 4 << 20;
pub const PAGE: u64 = 512;
/// How long a signed URL is good for: long enough for a large disk's upload.
pub const SIGNED_FOR: Duration = Duration::from_secs(24 * 3600);

/// One page blob, with a client for each kind of call.
pub struct PageBlob {
    write: PageBlobClient,
    read: PageBlobClient,
    read_blob: BlobClient,
    delete: BlobClient,
    url: String,
    name: String,
}

impl std::fmt::Debug for PageBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBlob")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

pub(crate) fn error(operation: Operation, name: &str, e: impl std::fmt::Display, status: Option<u16>) -> StorageError {
    let message = concise(&redact(&e.to_string()));
    let permanent = |kind| StorageError::Permanent {
        operation,
        name: name.to_string(),
        kind,
        message: message.clone(),
    };
    match status {
        Some(404) if message.contains("ContainerNotFound") => permanent(PermanentKind::ContainerMissing),
        Some(404) => StorageError::NotFound { name: name.to_string() },
        Some(401) => permanent(PermanentKind::AuthenticationFailed),
        Some(403) => permanent(PermanentKind::PermissionDenied),
        Some(400 | 409 | 412 | 416) => permanent(PermanentKind::InvalidRequest),
        Some(408 | 429) | Some(500..=599) | None => StorageError::Transient {
            operation,
            name: name.to_string(),
            message,
        },
        Some(_) => permanent(PermanentKind::Other),
    }
}

pub(crate) fn status_of(e: &azure_core::Error) -> Option<u16> {
    e.http_status().map(u16::from)
}

impl PageBlob {
    /// The page blob `name` in `container` of `config`'s account (it need not exist yet).
    pub async fn open(config: &AzureTargetConfig, container: &str, name: &str) -> Result<Self, StorageError> {
        let fail = |e: String| StorageError::Permanent {
            operation: Operation::Put,
            name: name.to_string(),
            kind: PermanentKind::InvalidRequest,
            message: e,
        };
        let unsigned = format!("{}/{container}/{name}", config.account_url());
        let signer = crate::blob_url::BlobSigner::new(config, container).map_err(fail)?;
        let signed = |method: reqwest::Method| signer.url(name, method, SIGNED_FOR);
        let client = |url: Url| PageBlobClient::new(url, None, None).map_err(|e| fail(redact(&e.to_string())));
        let write = client(signed(reqwest::Method::PUT).await?)?;
        let read_blob = BlobClient::new(signed(reqwest::Method::GET).await?, None, None)
            .map_err(|e| fail(redact(&e.to_string())))?;
        let read = read_blob.page_blob_client();
        let delete = BlobClient::new(signed(reqwest::Method::DELETE).await?, None, None)
            .map_err(|e| fail(redact(&e.to_string())))?;
        Ok(PageBlob {
            write,
            read,
            read_blob,
            delete,
            url: unsigned,
            name: name.to_string(),
        })
    }

    /// The blob's address, without any signature.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates the blob, `size` bytes of zero pages; refuses to replace an existing blob.
    pub async fn create(&self, size: u64) -> Result<(), StorageError> {
        if !size.is_multiple_of(PAGE) {
            return Err(StorageError::Permanent {
                operation: Operation::Put,
                name: self.name.clone(),
                kind: PermanentKind::InvalidRequest,
                message: format!("a page blob's size must be a multiple of 512, not {size}"),
            });
        }
        let options = PageBlobClientCreateOptions::default().if_not_exists();
        self.write
            .create(size, Some(options))
            .await
            .map(|_| ())
            .map_err(|e| error(Operation::Put, &self.name, &e, status_of(&e)))
    }

    /// Writes `data` (a whole number of pages, at most [`PUT_PAGE_MAX`]) at `offset`.
    pub async fn put_pages(&self, offset: u64, data: Bytes) -> Result<(), StorageError> {
        let length = data.len() as u64;
        if !offset.is_multiple_of(PAGE) || !length.is_multiple_of(PAGE) || length == 0 || length > PUT_PAGE_MAX {
            return Err(StorageError::Permanent {
                operation: Operation::Put,
                name: self.name.clone(),
                kind: PermanentKind::InvalidRequest,
                message: format!("pages at {offset}, {length} bytes: not whole 512-byte pages of at most 4 MiB"),
            });
        }
        self.write
            .upload_pages(
                RequestContent::from(data.to_vec()),
                length,
                HttpRange::new(offset, length),
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| error(Operation::Put, &self.name, &e, status_of(&e)))
    }

    /// Makes `length` bytes at `offset` (whole pages; any length, unlike Put Page) zero pages
    /// again, which also stops them counting as written.
    pub async fn clear_pages(&self, offset: u64, length: u64) -> Result<(), StorageError> {
        if !offset.is_multiple_of(PAGE) || !length.is_multiple_of(PAGE) || length == 0 {
            return Err(StorageError::Permanent {
                operation: Operation::Put,
                name: self.name.clone(),
                kind: PermanentKind::InvalidRequest,
                message: format!("pages at {offset}, {length} bytes: not whole 512-byte pages"),
            });
        }
        self.write
            .clear_pages(HttpRange::new(offset, length), None)
            .await
            .map(|_| ())
            .map_err(|e| error(Operation::Put, &self.name, &e, status_of(&e)))
    }

    /// The written page ranges, `(start, end)` with `end` exclusive, in order.
    pub async fn page_ranges(&self) -> Result<Vec<(u64, u64)>, StorageError> {
        let mut pages = self
            .read
            .list_page_ranges(None)
            .map_err(|e| error(Operation::Get, &self.name, &e, status_of(&e)))?;
        let mut ranges = Vec::new();
        while let Some(page) = pages
            .try_next()
            .await
            .map_err(|e| error(Operation::Get, &self.name, &e, status_of(&e)))?
        {
            let list = page
                .into_model()
                .map_err(|e| error(Operation::Get, &self.name, &e, status_of(&e)))?;
            for range in list.page_ranges {
                if let (Some(start), Some(end)) = (range.start, range.end) {
                    ranges.push((start as u64, end as u64 + 1)); // the service's end is inclusive
                }
            }
        }
        ranges.sort_unstable();
        Ok(ranges)
    }

    /// The blob's type as the service reports it (`PageBlob` for what [`Self::create`] made)
    /// and its size in bytes.
    pub async fn properties(&self) -> Result<(String, u64), StorageError> {
        use azure_storage_blob::models::BlobClientGetPropertiesResultHeaders;
        let response = self
            .read_blob
            .get_properties(None)
            .await
            .map_err(|e| error(Operation::Head, &self.name, &e, status_of(&e)))?;
        let fail = |e: azure_core::Error| error(Operation::Head, &self.name, &e, None);
        let blob_type = response
            .blob_type()
            .map_err(fail)?
            .map(|t| format!("{t:?}"))
            .unwrap_or_default();
        let size = response.content_length().map_err(fail)?.unwrap_or(0);
        Ok((blob_type, size))
    }

    /// Deletes the blob; one already gone counts as deleted.
    pub async fn delete(&self) -> Result<(), StorageError> {
        match self.delete.delete(None).await {
            Ok(_) => Ok(()),
            Err(e) if status_of(&e) == Some(404) => Ok(()),
            Err(e) => Err(error(Operation::Delete, &self.name, &e, status_of(&e))),
        }
    }
}
