//! One HTTPS client for the data (or management) endpoint: requests are multiplexed over one
//! HTTP/2 connection when the server offers h2. Every non-2xx answer becomes a typed
//! [`ClientError::Status`] carrying the protocol's error code.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

use crate::api::{AbandonAnswer, BatchAck, DiskInfo, DiskSpec, ErrorBody, ResyncState};

/// Largest answer body read (a reprotect digest segment is 1 MiB).
const RESPONSE_MAX_BYTES: usize = 2 << 20;

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
        expected_seq: Option<u64>,
        retry_after_secs: Option<u64>,
    },
    #[error("transport: {0}")]
    Transport(String),
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// Worth retrying the same request: the server was busy, draining, full, or unreachable.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            ClientError::Transport(_) => true,
            ClientError::Invalid(_) => false,
        }
    }

    /// The answer's code, when ferryd answered with one this build knows.
    pub fn code(&self) -> Option<crate::api::ErrorCode> {
        match self {
            ClientError::Status { code, .. } => crate::api::ErrorCode::parse(code),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A raw answer, for callers (and tests) that look at everything.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    pub retry_after_secs: Option<u64>,
    pub body: Bytes,
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
pub struct DataClient {
    http: HttpsClient,
    base: String,
    timeout: Duration,
}

impl DataClient {
    /// `endpoint` is `host:port`; `tls` from [`crate::tls`]. Offers HTTP/2 and HTTP/1.1.
    pub fn new(endpoint: &str, tls: rustls::ClientConfig) -> Self {
        Self::build(endpoint, tls, true)
    }

    /// Speaks HTTP/1.1 only (one request per connection at a time).
    pub fn new_http1(endpoint: &str, tls: rustls::ClientConfig) -> Self {
        Self::build(endpoint, tls, false)
    }

    fn build(endpoint: &str, mut tls: rustls::ClientConfig, http2: bool) -> Self {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        tls.alpn_protocols.clear();
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1();
        let connector = if http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.wrap_connector(http)
        };
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            http,
            base: format!("https://{endpoint}"),
            timeout: Duration::from_secs(60),
        }
    }

    /// Sends a request and returns the answer whatever its status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<RawResponse, ClientError> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(Full::new(body))
            .map_err(|e| ClientError::Invalid(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.http.request(request))
            .await
            .map_err(|_| ClientError::Transport("request timed out".into()))?
            .map_err(|e| ClientError::Transport(error_chain(&e)))?;
        let status = response.status().as_u16();
        let retry_after_secs = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = http_body_util::Limited::new(response.into_body(), RESPONSE_MAX_BYTES)
            .collect()
            .await
            .map_err(|e| ClientError::Transport(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(RawResponse {
            status,
            retry_after_secs,
            body,
        })
    }

    /// A non-2xx answer as the error it is.
    fn status_error(response: &RawResponse) -> ClientError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
        ClientError::Status {
            status: response.status,
            code: parsed.as_ref().map(|b| b.error.clone()).unwrap_or_default(),
            message: parsed
                .as_ref()
                .map(|b| b.message.clone())
                .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned()),
            expected_seq: parsed.and_then(|b| b.expected_seq),
            retry_after_secs: response.retry_after_secs,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, T), ClientError> {
        let response = self.raw(method, path, content_type, body).await?;
        if !(200..300).contains(&response.status) {
            return Err(Self::status_error(&response));
        }
        let value = serde_json::from_slice(&response.body)
            .map_err(|e| ClientError::Invalid(format!("unexpected answer: {e}")))?;
        Ok((response.status, value))
    }

    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<(u16, T), ClientError> {
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.call(Method::POST, path, "application/json", json.into()).await
    }

    /// `GET /v1/health`: the server's status word.
    pub async fn health(&self) -> Result<String, ClientError> {
        Ok(self.health_and_load().await?.status)
    }

    /// `GET /v1/health` whole: the status word and the load ferryd reports with it.
    pub async fn health_and_load(&self) -> Result<crate::api::Health, ClientError> {
        let (_, health) = self
            .call(Method::GET, "/v1/health", "application/json", Bytes::new())
            .await?;
        Ok(health)
    }

    /// `GET /v1/machines/{id}/placement` (management endpoint, the configuration server): the
    /// data endpoint this machine should send to now.
    pub async fn placement(&self, machine_id: Uuid) -> Result<crate::api::Placement, ClientError> {
        Ok(self
            .call(
                Method::GET,
                &format!("/v1/machines/{machine_id}/placement"),
                "application/json",
                Bytes::new(),
            )
            .await?
            .1)
    }

    /// `POST /v1/disks/{id}/release` with `{"to": endpoint}`: the process server stops taking
    /// the disk's batches, uploads what it holds and releases the disk's lease; `503 busy` with
    /// `Retry-After` while it is still uploading (ask again).
    pub async fn release_disk(&self, disk_id: Uuid, to: &str) -> Result<DiskInfo, ClientError> {
        Ok(self
            .post_json(
                &format!("/v1/disks/{disk_id}/release"),
                &serde_json::json!({ "to": to }),
            )
            .await?
            .1)
    }

    /// Creates (201) or confirms (200) a disk; returns the status and the disk.
    pub async fn put_disk(&self, disk_id: Uuid, spec: &DiskSpec) -> Result<(u16, DiskInfo), ClientError> {
        let json = serde_json::to_vec(spec).map_err(|e| ClientError::Invalid(e.to_string()))?;
        self.call(
            Method::PUT,
            &format!("/v1/disks/{disk_id}"),
            "application/json",
            json.into(),
        )
        .await
    }

    pub async fn get_disk(&self, disk_id: Uuid) -> Result<DiskInfo, ClientError> {
        Ok(self
            .call(
                Method::GET,
                &format!("/v1/disks/{disk_id}"),
                "application/json",
                Bytes::new(),
            )
            .await?
            .1)
    }

    /// Segment `segment` of the stored block digests a reprotected disk starts from (16 bytes
    /// per 64 KiB block; an all-zero entry means the block reads as zeros).
    pub async fn get_reprotect_digests(&self, disk_id: Uuid, segment: u64) -> Result<Bytes, ClientError> {
        let response = self
            .raw(
                Method::GET,
                &format!("/v1/disks/{disk_id}/reprotect-digests/{segment}"),
                "application/json",
                Bytes::new(),
            )
            .await?;
        if !(200..300).contains(&response.status) {
            return Err(Self::status_error(&response));
        }
        Ok(response.body)
    }

    /// Gives up the batches stored past `durable_seq` (a restarted sender that cannot send the
    /// same bytes again); afterwards the disk accepts new batches from `durable_seq + 1`.
    pub async fn abandon_past_durable(&self, disk_id: Uuid) -> Result<AbandonAnswer, ClientError> {
        let path = format!("/v1/disks/{disk_id}/abandon");
        Ok(self
            .call(Method::POST, &path, "application/json", Bytes::new())
            .await?
            .1)
    }

    /// Marks the disk `resync_required` (with `reason`) or, with `None`, replicating again.
    pub async fn put_resync(&self, disk_id: Uuid, reason: Option<&str>) -> Result<DiskInfo, ClientError> {
        let body = ResyncState {
            required: reason.is_some(),
            reason: reason.map(str::to_string),
        };
        let json = serde_json::to_vec(&body).map_err(|e| ClientError::Invalid(e.to_string()))?;
        let path = format!("/v1/disks/{disk_id}/resync");
        Ok(self.call(Method::PUT, &path, "application/json", json.into()).await?.1)
    }

    /// Sends one batch; `Ok` only once the server says it is durable.
    pub async fn put_batch(&self, disk_id: Uuid, seq: u64, batch: Bytes) -> Result<BatchAck, ClientError> {
        let path = format!("/v1/disks/{disk_id}/batches/{seq}");
        Ok(self
            .call(Method::PUT, &path, "application/vnd.ferry.batch.v1", batch)
            .await?
            .1)
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
