//! Azure Blob Storage target: block blobs through `object_store`'s Azure client.
//!
//! Credentials: Shared Key, SAS, managed identity (IMDS) or workload identity. A custom
//! endpoint (for example Azurite's `http://127.0.0.1:10000/devstoreaccount1`) replaces
//! `https://{account}.blob.core.windows.net`; plain HTTP is allowed only for such an
//! endpoint. `object_store`'s own retries are switched off: [`crate::retry::Retrying`]
//! retries for every backend alike, and this module only classifies errors (transient:
//! timeouts, resets, 408, 429, 5xx; permanent: 401/403 credentials, 404 container).
//!
//! Creating a container is one REST call (`PUT ?restype=container`) that `object_store`
//! does not offer; it is signed here with Shared Key, or carries the SAS token. With an
//! identity credential the container must already exist.
//!
//! Error messages pass through [`redact`] so a SAS signature never reaches a log or status.

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, ObjectStore, PutPayload, RetryConfig};
use std::ops::Range;
use std::time::{Duration, SystemTime};

use crate::config::{AzureCredentialConfig, AzureTargetConfig};
use crate::{
    validate_name, validate_prefix, LeaseAnswer, LeaseOp, ObjectMeta, ObjectStorage, Operation, PermanentKind,
    StorageError, TokenBucket, LIST_PAGE_MAX,
};

/// The REST API version used for the container call.
const API_VERSION: &str = "2021-08-06";

#[derive(Debug)]
pub struct AzureBlob {
    store: MicrosoftAzure,
    config: AzureTargetConfig,
    /// Signs the URLs of lease calls (`object_store` has none; `azure_storage_blob` does).
    signer: crate::blob_url::BlobSigner,
}

/// How long a lease call's signed URL is good for: one call.
const LEASE_URL_VALID_FOR: Duration = Duration::from_secs(300);

impl AzureBlob {
    /// Builds the client, creates the container when configured to, and checks that the
    /// container is reachable (so a wrong key or a missing container is reported at start).
    pub async fn connect(config: &AzureTargetConfig) -> Result<Self, StorageError> {
        let invalid = |message: String| StorageError::Permanent {
            operation: Operation::CreateContainer,
            name: config.container.clone(),
            kind: PermanentKind::InvalidRequest,
            message,
        };
        config.validate().map_err(invalid)?;
        let builder = store_builder(config, &config.container);
        let store = builder.build().map_err(|e| {
            let text = redact(&e.to_string());
            if text.contains("Invalid Access Key") {
                StorageError::Permanent {
                    operation: Operation::CreateContainer,
                    name: config.container.clone(),
                    kind: PermanentKind::AuthenticationFailed,
                    message:
                        "the account key is not valid base64: copy it again from the storage account's access keys"
                            .into(),
                }
            } else {
                invalid(concise(&text))
            }
        })?;
        let signer = crate::blob_url::BlobSigner::new(config, &config.container).map_err(invalid)?;
        let blob = Self {
            store,
            config: config.clone(),
            signer,
        };
        if config.create_container {
            blob.create_container().await?;
        }
        blob.list_page("", None, 1).await?;
        Ok(blob)
    }

    /// `PUT {account_url}/{container}?restype=container`; an existing container is fine.
    pub async fn create_container(&self) -> Result<(), StorageError> {
        let operation = Operation::CreateContainer;
        let container = &self.config.container;
        let fail = |kind, message: String| StorageError::Permanent {
            operation,
            name: container.clone(),
            kind,
            message,
        };
        let mut url = format!("{}/{}?restype=container", self.config.account_url(), container);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(self.config.request_timeout_secs))
            .build()
            .map_err(|e| fail(PermanentKind::Other, e.to_string()))?;
        let date = httpdate::fmt_http_date(SystemTime::now());
        let mut request = client
            .put(&url)
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header("content-length", "0");
        match &self.config.credential {
            AzureCredentialConfig::SharedKey { account_key } => {
                let path = reqwest::Url::parse(&url).map_err(|e| fail(PermanentKind::InvalidRequest, e.to_string()))?.path().to_string();
                let authorization = shared_key_for_create_container(&self.config.account, account_key.expose(), &path, &date)
                    .map_err(|e| fail(PermanentKind::AuthenticationFailed, e))?;
                request = request.header("authorization", authorization);
            }
            AzureCredentialConfig::Sas { token } => {
                url = format!("{url}&{}", token.expose().trim_start_matches('?'));
                request = client.put(&url).header("x-ms-date", &date).header("x-ms-version", API_VERSION).header("content-length", "0");
            }
            _ => {
                return Err(fail(
                    PermanentKind::InvalidRequest,
                    "creating a container needs a shared_key or sas credential; create it beforehand for identity credentials".into(),
                ))
            }
        }
        let response = request.send().await.map_err(|e| StorageError::Transient {
            operation,
            name: container.clone(),
            message: concise(&redact(&format!("{e:?}"))),
        })?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        match status {
            200..=299 | 409 => Ok(()),
            _ => Err(classify_status(operation, container, status, &redact(&body))),
        }
    }

    fn path(&self, name: &str) -> Result<StorePath, StorageError> {
        validate_name(name)?;
        StorePath::parse(name).map_err(|_| StorageError::InvalidName {
            name: name.to_string(),
            reason: "not a valid blob path",
        })
    }
}

/// `object_store`'s Azure client for `container` of the target's account, with its
/// credential, timeouts and no retries of its own (see the module header).
pub(crate) fn store_builder(config: &AzureTargetConfig, container: &str) -> MicrosoftAzureBuilder {
    let timeout = Duration::from_secs(config.request_timeout_secs);
    let mut options = ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(Duration::from_secs(10));
    let endpoint = config.account_url();
    if endpoint.starts_with("http://") {
        options = options.with_allow_http(true);
    }
    let no_retries = RetryConfig {
        max_retries: 0,
        retry_timeout: timeout,
        ..Default::default()
    };
    let builder = MicrosoftAzureBuilder::new()
        .with_account(&config.account)
        .with_container_name(container)
        .with_endpoint(endpoint)
        .with_client_options(options)
        .with_retry(no_retries);
    match &config.credential {
        AzureCredentialConfig::SharedKey { account_key } => builder.with_access_key(account_key.expose()),
        AzureCredentialConfig::Sas { token } => builder.with_sas_authorization(split_sas(token.expose())),
        AzureCredentialConfig::ManagedIdentity { client_id } => match client_id {
            Some(id) => builder.with_client_id(id),
            None => builder,
        },
        AzureCredentialConfig::WorkloadIdentity {
            client_id,
            tenant_id,
            federated_token_file,
        } => builder
            .with_client_id(client_id)
            .with_tenant_id(tenant_id)
            .with_federated_token_file(federated_token_file),
    }
}

/// Shared Key authorization for `PUT ?restype=container` with no body (Blob service, version
/// 2015-02-21 and later: an empty Content-Length line for a zero length).
fn shared_key_for_create_container(
    account: &str,
    account_key_base64: &str,
    url_path: &str,
    date: &str,
) -> Result<String, String> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(account_key_base64.trim())
        .map_err(|_| "the account key is not valid base64".to_string())?;
    // VERB, then 11 standard header lines (all empty here), then x-ms-* headers, then resource.
    let string_to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n/{account}{url_path}\nrestype:container"
    );
    let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
    let signature = aws_lc_rs::hmac::sign(&hmac_key, string_to_sign.as_bytes());
    Ok(format!(
        "SharedKey {account}:{}",
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    ))
}

fn split_sas(token: &str) -> Vec<(String, String)> {
    token
        .trim_start_matches('?')
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (k.to_string(), percent_decode(v)),
            None => (pair.to_string(), String::new()),
        })
        .collect()
}

/// SAS values arrive URL-encoded (`sig=...%2B...%3D`); object_store encodes them again.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes SAS signatures (`sig=...`) from a message.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        out.push_str("REDACTED");
        let after = &rest[at + 4..];
        let end = after
            .find(|c: char| c == '&' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// One readable sentence from object_store's error text: Azure's own error code and the first
/// line of its message when the answer has them (instead of the raw XML), else the last part
/// of the chain ("error sending request" for an endpoint that does not answer), without the
/// request URL and timings.
pub(crate) fn concise(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(text[start..end].trim().to_string())
    };
    if let Some(code) = between("<Code>", "</Code>") {
        let message = between("<Message>", "</Message>").unwrap_or_default();
        let first_line = message.lines().next().unwrap_or_default().trim();
        return format!("Azure answered {code}: {first_line}");
    }
    if text.contains("error sending request") || text.contains("Connection refused") {
        return "no answer from the endpoint (connection failed: check the endpoint, DNS, proxy and firewall)".into();
    }
    match text.rsplit_once(" - ") {
        Some((_, last)) if !last.trim().is_empty() => last.trim().to_string(),
        _ => text.trim_start_matches("Generic MicrosoftAzure error: ").to_string(),
    }
}

fn classify_status(operation: Operation, name: &str, status: u16, detail: &str) -> StorageError {
    let detail = &concise(detail);
    let permanent = |kind| StorageError::Permanent {
        operation,
        name: name.to_string(),
        kind,
        message: format!("HTTP {status}: {detail}"),
    };
    match status {
        408 | 429 | 500..=599 => StorageError::Transient {
            operation,
            name: name.to_string(),
            message: format!("HTTP {status}: {detail}"),
        },
        401 => permanent(PermanentKind::AuthenticationFailed),
        403 if detail.contains("AuthenticationFailed") || detail.contains("AuthorizationFailure") => {
            permanent(PermanentKind::AuthenticationFailed)
        }
        403 => permanent(PermanentKind::PermissionDenied),
        404 => permanent(PermanentKind::ContainerMissing),
        _ => permanent(PermanentKind::InvalidRequest),
    }
}

/// A listing prefix (empty, or ending in '/') as object_store's path (without the '/').
fn store_prefix(prefix: &str) -> Result<Option<StorePath>, StorageError> {
    match prefix.strip_suffix('/') {
        Some(directory) => StorePath::parse(directory)
            .map(Some)
            .map_err(|_| StorageError::InvalidName {
                name: prefix.to_string(),
                reason: "not a valid blob path",
            }),
        None => Ok(None),
    }
}

/// The three-digit status in object_store's "status code: 503 Service Unavailable" text.
fn status_in(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

fn map_error(operation: Operation, name: &str, error: object_store::Error) -> StorageError {
    let text = redact(&error.to_string());
    let permanent = |kind| StorageError::Permanent {
        operation,
        name: name.to_string(),
        kind,
        message: concise(&text),
    };
    match error {
        object_store::Error::NotFound { .. } => {
            // A blob PUT or a listing cannot miss an object: the container is what is missing.
            if text.contains("ContainerNotFound") || matches!(operation, Operation::Put | Operation::List) {
                permanent(PermanentKind::ContainerMissing)
            } else {
                StorageError::NotFound { name: name.to_string() }
            }
        }
        object_store::Error::Unauthenticated { .. } => permanent(PermanentKind::AuthenticationFailed),
        object_store::Error::PermissionDenied { .. } => {
            if text.contains("AuthenticationFailed")
                || text.contains("AuthorizationFailure")
                || text.contains("Signature")
            {
                permanent(PermanentKind::AuthenticationFailed)
            } else {
                permanent(PermanentKind::PermissionDenied)
            }
        }
        object_store::Error::NotSupported { .. }
        | object_store::Error::NotImplemented
        | object_store::Error::InvalidPath { .. } => permanent(PermanentKind::InvalidRequest),
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => {
            match status_in(&text) {
                Some(status) => classify_status(operation, name, status, &text),
                // No HTTP status: the request never got an answer (connect, reset, timeout, decode).
                None if text.contains("range") || text.contains("Range") => permanent(PermanentKind::InvalidRequest),
                None => StorageError::Transient {
                    operation,
                    name: name.to_string(),
                    message: concise(&text),
                },
            }
        }
        _ => permanent(PermanentKind::Other),
    }
}

#[async_trait]
impl ObjectStorage for AzureBlob {
    async fn put(&self, name: &str, data: Bytes) -> Result<(), StorageError> {
        let path = self.path(name)?;
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| map_error(Operation::Put, name, e))
    }

    /// An object the bucket does not grant at once goes up as blocks (Put Block, one per
    /// granted piece) committed by one Put Block List, so the blob appears whole and no request
    /// sends more than a slice. Uncommitted blocks of a failed attempt are discarded by Azure.
    async fn put_paced(&self, name: &str, data: Bytes, pace: &TokenBucket) -> Result<(), StorageError> {
        let first = pace.take(data.len() as u64).await as usize;
        if first == data.len() {
            return self.put(name, data).await;
        }
        let path = self.path(name)?;
        let failed = |e| map_error(Operation::Put, name, e);
        let mut upload = self.store.put_multipart(&path).await.map_err(failed)?;
        let mut granted = first;
        let mut at = 0;
        loop {
            let piece = data.slice(at..at + granted);
            at += granted;
            if let Err(e) = upload.put_part(PutPayload::from_bytes(piece)).await {
                let _ = upload.abort().await;
                return Err(failed(e));
            }
            if at == data.len() {
                break;
            }
            granted = pace.take((data.len() - at) as u64).await as usize;
        }
        upload.complete().await.map(|_| ()).map_err(failed)
    }

    async fn get(&self, name: &str) -> Result<Bytes, StorageError> {
        let path = self.path(name)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| map_error(Operation::Get, name, e))?;
        result.bytes().await.map_err(|e| map_error(Operation::Get, name, e))
    }

    async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Bytes, StorageError> {
        let path = self.path(name)?;
        let invalid = |message: String| StorageError::Permanent {
            operation: Operation::Get,
            name: name.to_string(),
            kind: PermanentKind::InvalidRequest,
            message,
        };
        if range.start > range.end {
            return Err(invalid(format!("range {range:?} is inverted")));
        }
        // Azure answers a range that runs past the end with the bytes it has; check the size
        // first so a short range is an error here as it is on the local backend.
        let size = self.head(name).await?.size_bytes;
        if range.end > size {
            return Err(invalid(format!("range {range:?} is outside the object's {size} bytes")));
        }
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&path, range)
            .await
            .map_err(|e| map_error(Operation::Get, name, e))
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta, StorageError> {
        let path = self.path(name)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| map_error(Operation::Head, name, e))?;
        Ok(ObjectMeta {
            name: name.to_string(),
            size_bytes: meta.size,
        })
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max_results: usize,
    ) -> Result<Vec<ObjectMeta>, StorageError> {
        validate_prefix(prefix)?;
        let limit = max_results.min(LIST_PAGE_MAX);
        let store_prefix = store_prefix(prefix)?;
        let stream = match start_after {
            Some(after) => {
                let offset = StorePath::parse(after).map_err(|_| StorageError::InvalidName {
                    name: after.to_string(),
                    reason: "not a valid blob path",
                })?;
                self.store.list_with_offset(store_prefix.as_ref(), &offset)
            }
            None => self.store.list(store_prefix.as_ref()),
        };
        let page: Vec<ObjectMeta> = stream
            .map_ok(|meta| ObjectMeta {
                name: meta.location.to_string(),
                size_bytes: meta.size,
            })
            .try_filter(|meta| futures::future::ready(validate_name(&meta.name).is_ok()))
            .take(limit)
            .try_collect()
            .await
            .map_err(|e| map_error(Operation::List, prefix, e))?;
        Ok(page)
    }

    async fn list_directories(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        validate_prefix(prefix)?;
        let store_prefix = store_prefix(prefix)?;
        let listed = self
            .store
            .list_with_delimiter(store_prefix.as_ref())
            .await
            .map_err(|e| map_error(Operation::List, prefix, e))?;
        let mut found: Vec<String> = listed
            .common_prefixes
            .iter()
            .map(|p| format!("{p}/"))
            .filter(|p| p.strip_suffix('/').is_some_and(|name| validate_name(name).is_ok()))
            .collect();
        found.sort();
        Ok(found)
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path(name)?;
        match self.store.delete(&path).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(map_error(Operation::Delete, name, e)),
        }
    }

    async fn put_new(&self, name: &str, data: Bytes) -> Result<bool, StorageError> {
        let path = self.path(name)?;
        let options = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self.store.put_opts(&path, PutPayload::from_bytes(data), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(map_error(Operation::Put, name, e)),
        }
    }

    /// Lease Blob through `azure_storage_blob`: 409 (a lease present, or another lease id) is
    /// [`LeaseAnswer::Refused`]; a missing blob is created empty and the call made again.
    async fn lease(&self, name: &str, op: LeaseOp) -> Result<LeaseAnswer, StorageError> {
        use crate::page_blob::{error, status_of};
        validate_name(name)?;
        op.check(name)?;
        let url = self.signer.url(name, reqwest::Method::PUT, LEASE_URL_VALID_FOR).await?;
        let client = azure_storage_blob::BlobClient::new(url, None, None)
            .map_err(|e| error(Operation::Lease, name, &e, None))?;
        for attempt in 0..2 {
            let result = match &op {
                LeaseOp::Acquire {
                    lease_id,
                    duration_secs,
                } => {
                    let options = azure_storage_blob::models::BlobClientAcquireLeaseOptions {
                        proposed_lease_id: Some(lease_id.clone()),
                        ..Default::default()
                    };
                    client
                        .acquire_lease(*duration_secs as i32, Some(options))
                        .await
                        .map(|_| ())
                }
                LeaseOp::Renew { lease_id } => client.renew_lease(lease_id.clone(), None).await.map(|_| ()),
                LeaseOp::Release { lease_id } => client.release_lease(lease_id.clone(), None).await.map(|_| ()),
            };
            match result {
                Ok(()) => return Ok(LeaseAnswer::Granted),
                Err(e) if status_of(&e) == Some(409) => return Ok(LeaseAnswer::Refused),
                Err(e)
                    if status_of(&e) == Some(404) && attempt == 0 && !e.to_string().contains("ContainerNotFound") =>
                {
                    if matches!(op, LeaseOp::Acquire { .. }) {
                        self.put_new(name, Bytes::new()).await?;
                    } else {
                        return Ok(LeaseAnswer::Refused); // no blob: no lease of ours
                    }
                }
                Err(e) => return Err(error(Operation::Lease, name, &e, status_of(&e))),
            }
        }
        Err(StorageError::Transient {
            operation: Operation::Lease,
            name: name.to_string(),
            message: "the leased blob disappeared while it was being created".into(),
        })
    }

    fn describe(&self) -> String {
        format!(
            "Azure Blob container {} at {}",
            self.config.container,
            self.config.account_url()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_signatures_are_redacted() {
        let text = "GET https://a.blob.core.windows.net/c/x?sv=2021&sig=abc%2Bdef%3D&se=1 failed";
        let redacted = redact(text);
        assert!(!redacted.contains("abc"), "{redacted}");
        assert!(redacted.contains("sig=REDACTED&se=1"));
    }

    #[test]
    fn status_codes_are_classified() {
        assert!(classify_status(Operation::Put, "x", 503, "ServerBusy").is_transient());
        assert!(classify_status(Operation::Put, "x", 500, "OperationTimedOut").is_transient());
        assert!(classify_status(Operation::Put, "x", 429, "").is_transient());
        assert_eq!(
            classify_status(Operation::Put, "x", 403, "AuthenticationFailed").permanent_kind(),
            Some(PermanentKind::AuthenticationFailed)
        );
        assert_eq!(
            classify_status(Operation::Put, "x", 404, "ContainerNotFound").permanent_kind(),
            Some(PermanentKind::ContainerMissing)
        );
        assert_eq!(
            status_in("Server returned non-2xx status code: 503 Service Unavailable: x"),
            Some(503)
        );
    }

    #[test]
    fn sas_tokens_are_split_and_decoded() {
        let pairs = split_sas("?sv=2021-08-06&sig=a%2Bb%3D");
        assert_eq!(
            pairs,
            vec![("sv".into(), "2021-08-06".into()), ("sig".into(), "a+b=".into())]
        );
    }
}
