//! Planned moves on the configuration server (ASR's "switch process server"): `ferryctl ps
//! move` moves a machine to another process server, `ferryctl ps drain` moves every machine
//! off one (and places no new machine there until `--undo`).
//!
//! A move records the machine's new process server (so `placement` and `ferryctl machines`
//! say it) and queues a `move` command for its agent, which does the rest where the data is:
//! it asks the old process server to release each disk (`POST /v1/disks/{id}/release`: new
//! batches refused, the cache uploaded, the lease released), then sets the disks up at the
//! new one, which claims them with nothing to resend, and reports how long its disks were
//! not taking data (the RPO the move added). A machine whose agent is not running moves
//! when it next starts (its placement answer says where), its disks once their old owner
//! releases them or its leases run out.
//!
//! Limits: machines move whole (a machine's disks go to one process server); the target must
//! answer its health probe.

use ferry_client::api::ErrorCode;
use ferry_client::commands::{Command, CommandName};
use ferry_client::control::{DrainRequest, MoveRequest, Moving};
use uuid::Uuid;

use super::http::ApiError;
use super::placement::PROBE_TIMEOUT;
use super::register::{machine_record_path, machine_records, read_machine_record, write_machine_record};
use super::AppState;

/// The data endpoint of a site process server named `which` (a `ps list` name, or a data
/// endpoint of the site, the configuration server's own included).
fn resolve(state: &AppState, which: &str) -> Result<String, ApiError> {
    let own = &state.config.server.advertised_data_endpoint;
    if which == own {
        return Ok(own.clone());
    }
    let servers = ferry_config::site::servers(state.layout.root()).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("cannot read the site's process servers: {e}"),
        )
    })?;
    servers
        .iter()
        .find(|s| s.name == which || s.data_endpoint == which)
        .map(|s| s.data_endpoint.clone())
        .ok_or_else(|| {
            let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
            ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no process server {which:?} in this site (process servers: {names:?}; this configuration server is {own})"
                ),
            )
        })
}

fn configuration_server_only(state: &AppState) -> Result<(), ApiError> {
    match &state.config.server.config_server {
        Some(config_server) => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this is a process server: run this on the site's configuration server at {config_server}"),
        )),
        None => Ok(()),
    }
}

/// Moves one machine (see the module header).
pub async fn move_machine(state: &AppState, request: MoveRequest) -> Result<Moving, ApiError> {
    configuration_server_only(state)?;
    let to = resolve(state, &request.to)?;
    let ca_pem = std::fs::read_to_string(state.layout.ca_cert_file())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot read the site CA: {e}")))?;
    let own = state.config.server.advertised_data_endpoint.clone();
    if to != own && !ferry_client::register::healthy(&to, &ca_pem, PROBE_TIMEOUT).await {
        return Err(ApiError::new(
            ErrorCode::Busy,
            format!("process server {to} does not answer its health probe: nothing moved"),
        )
        .retry_after(10));
    }
    move_to(state, request.machine_id, to).await
}

async fn move_to(state: &AppState, machine_id: Uuid, to: String) -> Result<Moving, ApiError> {
    let path = machine_record_path(&state.layout, machine_id);
    let mut record = read_machine_record(&path).map_err(|e| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("machine {machine_id} is not registered here: {e}"),
        )
    })?;
    let from = record
        .data_endpoint
        .clone()
        .unwrap_or_else(|| state.config.server.advertised_data_endpoint.clone());
    if from == to {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("machine {} sends to {to} already", record.machine_name),
        ));
    }
    record.data_endpoint = Some(to.clone());
    write_machine_record(&path, &record)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    let command = Command {
        id: Uuid::new_v4(),
        command: CommandName::Move,
        kind: None,
        group_id: None,
        disk_id: None,
        reason: None,
        barrier_id: None,
        bookmark_id: None,
        deadline_unix_ms: None,
        data_endpoint: Some(to.clone()),
        issued_unix_ms: ferry_client::clock::now_unix_ms(),
    };
    let command_id = command.id;
    state
        .commands
        .enqueue(machine_id, command)
        .map_err(|e| ApiError::new(ErrorCode::Busy, e.to_string()).retry_after(5))?;
    tracing::info!(machine = %machine_id, name = %record.machine_name, %from, %to, "moving the machine");
    Ok(Moving {
        machine_id,
        machine_name: record.machine_name,
        from,
        to,
        command_id,
    })
}

/// Moves every machine off process server `name` to the others, each where placement would
/// put a new machine; marks it drained (or, with `undo`, not).
pub async fn drain(state: &AppState, request: DrainRequest) -> Result<Vec<Moving>, ApiError> {
    configuration_server_only(state)?;
    let root = state.layout.root();
    let servers = ferry_config::site::servers(root).map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    let Some(mut server) = servers
        .into_iter()
        .find(|s| s.name == request.name || s.data_endpoint == request.name)
    else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no joined process server {:?} (the configuration server itself cannot be drained)",
                request.name
            ),
        ));
    };
    server.drained = !request.undo;
    ferry_config::site::record_server(root, &server).map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    if request.undo {
        tracing::info!(name = %server.name, "process server takes new machines again");
        return Ok(Vec::new());
    }
    let ca_pem = std::fs::read_to_string(state.layout.ca_cert_file())
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot read the site CA: {e}")))?;
    let records = machine_records(&state.layout).map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let mut moved = Vec::new();
    for record in records {
        if record.data_endpoint.as_deref() != Some(server.data_endpoint.as_str()) {
            continue;
        }
        // Chosen one by one, so the machines spread as their counts change.
        let to = super::placement::choose(state, &ca_pem).await;
        moved.push(move_to(state, record.machine_id, to).await?);
    }
    tracing::info!(name = %server.name, machines = moved.len(), "process server drained");
    Ok(moved)
}
