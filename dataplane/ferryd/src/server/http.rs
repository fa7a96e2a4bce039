//! Answers: JSON bodies, and the `{"error", "message", ...}` body of every non-2xx answer
//! (PROTOCOL.md "Errors"); and [`serve_http1`], the one accept loop of ferryd's two plain
//! HTTP/1.1 endpoints (the control socket and `/metrics`).

use bytes::Bytes;
use ferry_client::api::ErrorCode;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use serde::Serialize;

pub type Body = Full<Bytes>;

/// A protocol error: status, code, human message, and the extras PROTOCOL.md names.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub expected_seq: Option<u64>,
    pub retry_after_secs: Option<u64>,
    pub failover_id: Option<uuid::Uuid>,
    /// With `not_owner`: where the disk's owner takes its data.
    pub owner: Option<String>,
}

impl ApiError {
    /// An answer with `code` and its HTTP status (each code has one, see [`ErrorCode`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            expected_seq: None,
            retry_after_secs: None,
            failover_id: None,
            owner: None,
        }
    }

    pub fn owner(mut self, owner: Option<String>) -> Self {
        self.owner = owner;
        self
    }

    pub fn expected(mut self, seq: u64) -> Self {
        self.expected_seq = Some(seq);
        self
    }

    /// Names the committed failover (with `failed_over`).
    pub fn failover(mut self, failover_id: uuid::Uuid) -> Self {
        self.failover_id = Some(failover_id);
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn into_response(self) -> Response<Body> {
        let body = ferry_client::api::ErrorBody {
            error: self.code.as_str().to_string(),
            message: self.message,
            expected_seq: self.expected_seq,
            failover_id: self.failover_id,
            owner: self.owner,
        };
        let status = StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = json(status, &body);
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert("retry-after", secs.into());
        }
        response
    }
}

pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Connections served at once on a plain endpoint (ferryctl, a Prometheus scraper): more wait
/// in the kernel's accept queue.
pub const PLAIN_CONNECTIONS_MAX: usize = 64;

/// A listener the plain endpoints accept on: a Unix socket (control) or TCP (`/metrics`).
pub trait Accept: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static;
    fn accept_stream(&self) -> impl std::future::Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_stream(&self) -> std::io::Result<Self::Stream> {
        self.accept().await.map(|(stream, _)| stream)
    }
}

/// Serves plain HTTP/1.1 on `listener` with `handler` until `stopped` turns true, at most
/// [`PLAIN_CONNECTIONS_MAX`] connections at once. An accept error (out of descriptors, say) is
/// logged and retried after a pause rather than spun on.
pub async fn serve_http1<L, H, F>(
    listener: L,
    endpoint: &'static str,
    state: std::sync::Arc<super::AppState>,
    handler: H,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) where
    L: Accept,
    H: Fn(std::sync::Arc<super::AppState>, hyper::Request<hyper::body::Incoming>) -> F + Copy + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let connections = std::sync::Arc::new(tokio::sync::Semaphore::new(PLAIN_CONNECTIONS_MAX));
    loop {
        let permit = tokio::select! {
            _ = stopped.changed() => return,
            permit = connections.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        };
        let stream = tokio::select! {
            accepted = listener.accept_stream() => match accepted {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(endpoint, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request| {
                let answer = handler(state.clone(), request);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
