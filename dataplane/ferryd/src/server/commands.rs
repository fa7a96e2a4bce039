//! Management commands over HTTP (docs/PROTOCOL.md section 4): the agent's long poll and its
//! reports on the management endpoint (mTLS: a machine sees only its own commands), and the
//! control socket's queue and log. The queues themselves are crate::commands.

use bytes::Bytes;
use ferry_client::api::ErrorCode;
use ferry_client::commands::{Command, CommandName, CommandOutcome, CommandRequest, Commands};
use ferry_format::ids::parse_canonical_uuid;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::time::Duration;
use uuid::Uuid;

use super::http::{json, ApiError, Body};
use super::AppState;
use crate::commands::QueueError;

/// Largest outcome report.
const OUTCOME_MAX_BYTES: usize = 64 * 1024;
/// Longest outcome message, in characters.
const MESSAGE_MAX_CHARS: usize = 4096;
/// Longest resync reason, in characters (as `PUT .../resync`).
const REASON_MAX_CHARS: usize = 256;

fn machine_in_path(text: &str) -> Result<Uuid, ApiError> {
    parse_canonical_uuid(text).ok_or_else(|| ApiError::new(ErrorCode::BadId, "machine_id must be a lowercase UUID"))
}

/// `/v1/machines/{machine_id}/...` on the management endpoint.
pub async fn agent(
    state: &AppState,
    caller: Option<Uuid>,
    rest: &[&str],
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (machine, tail) = match rest {
        [machine, "commands", tail @ ..] => (machine, tail),
        [machine, "placement"] => (machine, &["placement"][..]),
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such endpoint")),
    };
    let machine = machine_in_path(machine)?;
    let caller = caller.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "a client certificate issued by this appliance is required",
        )
    })?;
    if caller != machine {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("these are machine {machine}'s commands"),
        ));
    }
    match (tail, request.method().clone()) {
        (["placement"], Method::GET) => {
            let placement = super::placement::for_machine(state, machine).await?;
            Ok(json(StatusCode::OK, &placement))
        }
        ([], Method::GET) => {
            let wait = wait_of(request.uri().query())?;
            let commands = state.commands.take(machine, wait).await;
            Ok(json(StatusCode::OK, &Commands { commands }))
        }
        ([id, "result"], Method::POST) => {
            let id = parse_canonical_uuid(id)
                .ok_or_else(|| ApiError::new(ErrorCode::BadId, "a command id is a lowercase UUID"))?;
            let body = http_body_util::Limited::new(request.into_body(), OUTCOME_MAX_BYTES)
                .collect()
                .await
                .map_err(|_| ApiError::new(ErrorCode::TooLarge, "an outcome is at most 64 KiB"))?
                .to_bytes();
            let outcome: CommandOutcome = serde_json::from_slice(&body)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("command outcome: {e}")))?;
            if outcome.message.chars().count() > MESSAGE_MAX_CHARS {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "an outcome's message is at most 4096 characters",
                ));
            }
            if !outcome.ok {
                tracing::warn!(%machine, command = %id, message = %outcome.message, "a command failed on its agent");
            }
            state
                .commands
                .report(machine, id, outcome, ferry_client::clock::now_unix_ms())
                .map_err(|e| ApiError::new(ErrorCode::NotFound, e.to_string()))?;
            Ok(json(StatusCode::OK, &serde_json::json!({})))
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such endpoint")),
    }
}

/// `?wait_s=N`: 0 to 60 seconds (absent: 0).
fn wait_of(query: Option<&str>) -> Result<Duration, ApiError> {
    let Some(value) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait_s="))
    else {
        return Ok(Duration::ZERO);
    };
    let secs: u64 = value
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "wait_s is a whole number of seconds"))?;
    if Duration::from_secs(secs) > crate::commands::WAIT_MAX {
        return Err(ApiError::new(ErrorCode::BadRequest, "wait_s is at most 60"));
    }
    Ok(Duration::from_secs(secs))
}

/// Control socket: `POST /v1/machines/{id}/commands` queues, `GET` shows the log.
pub fn control(state: &AppState, method: &Method, machine: &str, body: &Bytes) -> Result<Response<Body>, ApiError> {
    let machine = machine_in_path(machine)?;
    let known = super::register::machine_records(&state.layout)
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the machine records: {e}")))?
        .iter()
        .any(|r| r.machine_id == machine);
    if !known {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no machine {machine} is registered here"),
        ));
    }
    match *method {
        Method::GET => Ok(json(StatusCode::OK, &state.commands.log(machine))),
        Method::POST => {
            let request: CommandRequest = serde_json::from_slice(body)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("command request: {e}")))?;
            let command = checked(state, machine, request)?;
            state
                .commands
                .enqueue(machine, command.clone())
                .map_err(|e: QueueError| ApiError::new(ErrorCode::Busy, e.to_string()).retry_after(5))?;
            tracing::info!(%machine, command = %command.command, id = %command.id, "command queued");
            Ok(json(StatusCode::OK, &command))
        }
        _ => Err(ApiError::new(ErrorCode::NotFound, "no such control endpoint")),
    }
}

/// The command a request asks for, refused when its fields do not fit it.
fn checked(state: &AppState, machine: Uuid, request: CommandRequest) -> Result<Command, ApiError> {
    let bad = |message: &str| Err(ApiError::new(ErrorCode::BadRequest, message.to_string()));
    match request.command {
        CommandName::GroupPrepare | CommandName::GroupCommit | CommandName::GroupAbort => {
            return bad("group barrier commands are ferryd's own (ferryctl group point takes a group point)")
        }
        CommandName::Move => return bad("move commands are ferryd's own (ferryctl ps move moves a machine)"),
        CommandName::Bookmark if request.kind.is_none() => {
            return bad("a bookmark command needs its kind (app or crash)")
        }
        CommandName::Bookmark => {}
        _ if request.kind.is_some() || request.group_id.is_some() => {
            return bad("kind and group_id go with bookmark commands only")
        }
        _ => {}
    }
    if request.command != CommandName::Resync && (request.disk_id.is_some() || request.reason.is_some()) {
        return bad("disk_id and reason go with resync commands only");
    }
    if let Some(disk_id) = request.disk_id {
        match state.cache.disk(disk_id) {
            Some(view) if view.meta.machine_id == machine => {}
            _ => return bad("that disk is not one of this machine's"),
        }
    }
    let reason = match (request.command, request.reason) {
        (CommandName::Resync, None) => Some("requested by the operator".to_string()),
        (_, Some(reason)) if reason.is_empty() || reason.chars().count() > REASON_MAX_CHARS => {
            return bad("a reason is 1 to 256 characters")
        }
        (_, reason) => reason,
    };
    Ok(Command {
        id: Uuid::new_v4(),
        command: request.command,
        kind: request.kind.filter(|_| request.command == CommandName::Bookmark),
        group_id: request.group_id,
        disk_id: request.disk_id,
        reason,
        barrier_id: None,
        bookmark_id: None,
        deadline_unix_ms: None,
        data_endpoint: None,
        issued_unix_ms: ferry_client::clock::now_unix_ms(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_is_seconds_up_to_a_minute() {
        assert_eq!(wait_of(None).unwrap(), Duration::ZERO);
        assert_eq!(wait_of(Some("wait_s=25")).unwrap(), Duration::from_secs(25));
        assert_eq!(wait_of(Some("x=1&wait_s=60")).unwrap(), Duration::from_secs(60));
        assert!(wait_of(Some("wait_s=61")).is_err());
        assert!(wait_of(Some("wait_s=soon")).is_err());
    }
}
