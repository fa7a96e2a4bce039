//! `POST /v1/join` on the configuration server's management endpoint: a scale-out process
//! server joins the site with a one-time token (`ferryctl ps token`). The answer carries what
//! it needs to serve the site's agents and write its vault: a server certificate from the
//! site's CA (signed from its CSR: its key stays with it), the CA, the vault key and the
//! target's settings (secrets included: the channel is TLS, pinned by the joiner to this
//! server's certificate fingerprint). The token is spent before anything is answered, so it
//! works once; failures are throttled per address like registration.

use ferry_client::api::{ErrorCode, JoinRequest, JoinResponse};
use ferry_config::site::{self, ProcessServer, TokenRefused};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::net::IpAddr;

use super::http::{json, ApiError, Body};
use super::AppState;

const JOIN_MAX_BYTES: usize = 64 * 1024;
const NAME_MAX_CHARS: usize = 64;
const SERVER_NAMES_MAX: usize = 32;

fn unavailable(what: &str, error: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %error, "join: {what}");
    ApiError::new(ErrorCode::Internal, "joining is not available")
}

pub async fn join(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = http_body_util::Limited::new(request.into_body(), JOIN_MAX_BYTES)
        .collect()
        .await
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the join request is missing or too large"))?
        .to_bytes();
    let body: JoinRequest =
        serde_json::from_slice(&bytes).map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("join: {e}")))?;
    let name_ok = !body.name.is_empty()
        && body.name.chars().count() <= NAME_MAX_CHARS
        && body
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !name_ok {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "name must be 1 to 64 of a-z A-Z 0-9 - _ .",
        ));
    }
    if body.server_names.is_empty() || body.server_names.len() > SERVER_NAMES_MAX {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "server_names must list 1 to 32 names",
        ));
    }
    if let Some(config_server) = &state.config.server.config_server {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this is a process server: join the site's configuration server at {config_server}"),
        ));
    }
    let Some((_, keyring)) = state.retention.vault.get() else {
        let mut busy = ApiError::new(ErrorCode::Busy, "ferryd has not reached its target yet");
        busy.retry_after_secs = Some(5);
        return Err(busy);
    };
    let delay = state.throttle.delay_for(peer);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let root = state.layout.root().to_path_buf();
    let token = body.token.clone();
    let now = ferry_client::clock::now_unix_ms();
    let spent = tokio::task::spawn_blocking(move || site::spend_token(&root, &token, now))
        .await
        .map_err(|e| unavailable("the token task failed", e))?;
    match spent {
        Ok(()) => state.throttle.succeeded(peer),
        Err(refused) => {
            let message = match refused {
                TokenRefused::Unknown => "the join token is unknown or was used already (ferryctl ps token makes one)",
                TokenRefused::Expired => "the join token has expired (ferryctl ps token makes a new one)",
                TokenRefused::Io(e) => return Err(unavailable("cannot read the join tokens", e)),
            };
            state.throttle.failed(peer);
            tracing::warn!(%peer, name = %body.name, "join refused: {message}");
            return Err(ApiError::new(ErrorCode::BadToken, message));
        }
    }
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| unavailable("cannot read the site's keys", e))
    };
    let ca_pem = read(state.layout.ca_cert_file())?;
    let ca_key = read(state.layout.ca_key_file())?;
    let vault_key = read(state.layout.vault_key_file())?;
    let cert_pem = ferry_config::pki::sign_server_csr(&body.csr_pem, &body.server_names, &ca_pem, &ca_key)
        .map_err(|e| ApiError::new(ErrorCode::BadCsr, e.to_string()))?;
    let target = serde_json::to_value(state.config.resolved_target(&state.layout))
        .map_err(|e| unavailable("cannot describe the target", e))?;
    let server = ProcessServer {
        name: body.name.clone(),
        data_endpoint: body.data_endpoint.clone(),
        server_names: body.server_names.clone(),
        joined_unix_ms: now,
        joined_from: peer.to_string(),
        drained: false,
    };
    let root = state.layout.root().to_path_buf();
    tokio::task::spawn_blocking(move || site::record_server(&root, &server))
        .await
        .map_err(|e| unavailable("the recording task failed", e))?
        .map_err(|e| unavailable("cannot record the process server", e))?;
    tracing::info!(name = %body.name, data_endpoint = %body.data_endpoint, %peer, "a process server joined the site");
    let answer = JoinResponse {
        cert_pem,
        ca_pem,
        vault_key: vault_key.trim().to_string(),
        vault_id: keyring.vault_id(),
        target,
    };
    Ok(json(StatusCode::CREATED, &answer))
}
