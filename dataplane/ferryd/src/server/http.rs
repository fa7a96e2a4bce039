//! Answers: JSON bodies, and the `{"error", "message", ...}` body of every non-2xx answer
//! (PROTOCOL.md "Errors").

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
}

impl ApiError {
    /// An answer with `code` and its HTTP status (each code has one, see [`ErrorCode`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            expected_seq: None,
            retry_after_secs: None,
        }
    }

    pub fn expected(mut self, seq: u64) -> Self {
        self.expected_seq = Some(seq);
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
