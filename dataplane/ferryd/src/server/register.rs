//! The management endpoint: `POST /v1/register` (PROTOCOL.md section 1) and `GET /v1/health`.
//!
//! The passphrase is read from the appliance's passphrase file on each attempt (so a rotation
//! takes effect at once) and compared in constant time. Each failure from an address doubles
//! the delay before that address's next answer (from 100 ms up to 5 s); the table of
//! addresses is bounded. A success signs the agent's CSR with the appliance CA, naming a new
//! machine id, and records the machine under `state/machines/`.

use ferry_client::api::ErrorCode;
use ferry_client::api::{RegisterRequest, RegisterResponse};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

use super::http::{json, ApiError, Body};
use super::AppState;
use ferry_durable::checked;

const REGISTER_MAX_BYTES: usize = 64 * 1024;
const MACHINE_NAME_MAX_CHARS: usize = 256;
const THROTTLE_ADDRESSES_MAX: usize = 10_000;
const MACHINE_MAGIC: [u8; 8] = *b"FRMACHN1";

/// Failed attempts per client address.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    pub(super) fn delay_for(&self, address: IpAddr) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(&address) {
            Some((count, _)) if *count > 0 => {
                Duration::from_millis(100u64.saturating_mul(1 << (*count - 1).min(6))).min(Duration::from_secs(5))
            }
            _ => Duration::ZERO,
        }
    }

    pub(super) fn failed(&self, address: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() >= THROTTLE_ADDRESSES_MAX {
            let hour_ago = Instant::now() - Duration::from_secs(3600);
            failures.retain(|_, (_, last)| *last > hour_ago);
            if failures.len() >= THROTTLE_ADDRESSES_MAX {
                failures.clear();
            }
        }
        let entry = failures.entry(address).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
    }

    pub(super) fn succeeded(&self, address: IpAddr) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(&address);
    }
}

/// What the appliance records about a registered machine.
#[derive(Clone, Serialize, Deserialize)]
pub struct MachineRecord {
    pub machine_id: Uuid,
    pub machine_name: String,
    pub registered_unix_ms: u64,
    pub registered_from: String,
    /// The data endpoint the machine was given (a process server of the site; absent in
    /// records from before scale-out: this appliance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_endpoint: Option<String>,
}

/// Where machine `machine_id`'s record lives.
pub fn machine_record_path(layout: &ferry_config::layout::ApplianceLayout, machine_id: Uuid) -> std::path::PathBuf {
    layout.root().join("state/machines").join(format!("{machine_id}.meta"))
}

pub fn read_machine_record(path: &std::path::Path) -> Result<MachineRecord, String> {
    checked::read::<MachineRecord>(path, MACHINE_MAGIC, 1).map_err(|e| e.to_string())
}

/// Writes a machine's record durably (its directory made first), off the async workers.
pub async fn write_machine_record(path: &std::path::Path, record: &MachineRecord) -> Result<(), String> {
    let (path, record) = (path.to_path_buf(), record.clone());
    tokio::task::spawn_blocking(move || {
        let dir = path.parent().ok_or("a machine record has a directory")?.to_path_buf();
        std::fs::create_dir_all(&dir)
            .and_then(|()| ferry_durable::fsync_dir(&dir))
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        checked::write(&path, MACHINE_MAGIC, 1, &record).map_err(|e| format!("cannot record the machine: {e}"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("the recording task failed: {e}")))
}

/// Every registered machine's record (`state/machines/*.meta`); damaged files are skipped
/// with a warning.
pub fn machine_records(layout: &ferry_config::layout::ApplianceLayout) -> std::io::Result<Vec<MachineRecord>> {
    let dir = layout.root().join("state/machines");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("meta") {
            continue;
        }
        match checked::read::<MachineRecord>(&path, MACHINE_MAGIC, 1) {
            Ok(record) => records.push(record),
            Err(e) => tracing::warn!(file = %path.display(), error = %e, "skipping a damaged machine record"),
        }
    }
    Ok(records)
}

/// The management endpoint: health, registration, and (as a registered machine) its commands.
pub async fn handle(
    state: &AppState,
    peer: IpAddr,
    machine: Option<uuid::Uuid>,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (request.method().clone(), path.as_str()) {
        (Method::GET, "/v1/health") => Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))),
        (Method::POST, "/v1/register") => register(state, peer, request).await,
        (Method::POST, "/v1/join") => super::join::join(state, peer, request).await,
        _ if segments.starts_with(&["v1", "machines"]) => {
            super::commands::agent(state, machine, &segments[2..], request).await
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, format!("no such endpoint: {path}"))),
    };
    result.unwrap_or_else(ApiError::into_response)
}

async fn register(state: &AppState, peer: IpAddr, request: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = http_body_util::Limited::new(request.into_body(), REGISTER_MAX_BYTES)
        .collect()
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BadRequest,
                "the registration request is missing or too large",
            )
        })?
        .to_bytes();
    let body: RegisterRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("registration: {e}")))?;
    if let Some(config_server) = &state.config.server.config_server {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this is a scale-out process server: agents register with the site's configuration server at {config_server}"
            ),
        ));
    }
    if body.machine_name.is_empty() || body.machine_name.chars().count() > MACHINE_NAME_MAX_CHARS {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "machine_name must be 1 to 256 characters",
        ));
    }
    let delay = state.throttle.delay_for(peer);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let expected = std::fs::read_to_string(state.layout.passphrase_file()).map_err(|e| {
        tracing::error!(error = %e, "cannot read the passphrase file");
        ApiError::new(ErrorCode::Internal, "registration is not available")
    })?;
    let matches =
        aws_lc_rs::constant_time::verify_slices_are_equal(expected.trim().as_bytes(), body.passphrase.as_bytes())
            .is_ok();
    if !matches {
        state.throttle.failed(peer);
        tracing::warn!(%peer, machine_name = %body.machine_name, "registration with a wrong passphrase");
        return Err(ApiError::new(
            ErrorCode::BadPassphrase,
            "the registration passphrase is wrong",
        ));
    }
    state.throttle.succeeded(peer);
    let machine_id = Uuid::new_v4();
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "cannot read the appliance CA");
            ApiError::new(ErrorCode::Internal, "registration is not available")
        })
    };
    let ca_pem = read(state.layout.ca_cert_file())?;
    let ca_key = read(state.layout.ca_key_file())?;
    let cert_pem = ferry_config::pki::sign_agent_csr(&body.csr_pem, &machine_id.to_string(), &ca_pem, &ca_key)
        .map_err(|e| ApiError::new(ErrorCode::BadCsr, e.to_string()))?;
    let data_endpoint = super::placement::choose(state, &ca_pem).await;
    let record = MachineRecord {
        machine_id,
        machine_name: body.machine_name.clone(),
        registered_unix_ms: ferry_client::clock::now_unix_ms(),
        registered_from: peer.to_string(),
        data_endpoint: Some(data_endpoint.clone()),
    };
    // fsyncs: on the blocking pool, not on the workers that serve the data streams.
    let recorded = write_machine_record(&machine_record_path(&state.layout, machine_id), &record).await;
    if let Err(message) = recorded {
        tracing::error!(%message, "registration not recorded");
        return Err(ApiError::new(ErrorCode::Internal, "registration could not be recorded"));
    }
    tracing::info!(%machine_id, machine_name = %body.machine_name, %peer, %data_endpoint, "machine registered");
    let answer = RegisterResponse {
        machine_id,
        cert_pem,
        ca_pem,
        data_endpoint,
    };
    Ok(json(StatusCode::CREATED, &answer))
}
