//! Where a newly registered machine sends its disks: the configuration server or one of the
//! process servers that joined its site (`ferry_config::site`), whichever has the least load
//! ([`choose`]: machines placed, then disks, then MB/s over the last minute; none with a nearly
//! full cache, none drained). A process server counts as healthy when its data endpoint answers
//! `GET /v1/health` (which carries its load) over TLS verified with the site's CA within
//! [`PROBE_TIMEOUT`]; the probes run at once, so a registration waits at most that long.
//!
//! A machine whose process server stops answering is moved: its agent asks
//! `GET /v1/machines/{id}/placement` ([`for_machine`]) when it cannot reach its process server
//! or hears `not_owner`, and the configuration server places it again when that server's
//! health probe fails (the disks follow once their leases run out, docs/SCALE-OUT.md).
//!
//! Limits: machines count first (a machine just registered sends nothing yet, so disks and MB/s
//! alone would send a burst of registrations to one server); a machine's own MB/s is not
//! known before it sends.

use std::collections::HashMap;
use std::time::Duration;

use super::http::ApiError;
use super::AppState;
use ferry_client::api::ErrorCode;

/// How long a process server's health probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where machine `machine_id` sends now: its recorded process server while that answers its
/// health probe, else the one [`choose`] picks (recorded).
pub async fn for_machine(state: &AppState, machine_id: uuid::Uuid) -> Result<ferry_client::api::Placement, ApiError> {
    if let Some(config_server) = &state.config.server.config_server {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("this is a process server: ask the site's configuration server at {config_server}"),
        ));
    }
    let internal = |message: String| {
        tracing::error!(%message, "placement");
        ApiError::new(ErrorCode::Internal, "the machine's placement is not available")
    };
    let own = state.config.server.advertised_data_endpoint.clone();
    let path = super::register::machine_record_path(&state.layout, machine_id);
    let mut record = super::register::read_machine_record(&path).map_err(|e| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("machine {machine_id} is not registered here: {e}"),
        )
    })?;
    let current = record.data_endpoint.clone().unwrap_or_else(|| own.clone());
    let ca_pem = std::fs::read_to_string(state.layout.ca_cert_file()).map_err(|e| internal(e.to_string()))?;
    let up = current == own || ferry_client::register::healthy(&current, &ca_pem, PROBE_TIMEOUT).await;
    if up {
        return Ok(ferry_client::api::Placement {
            data_endpoint: current,
            moved: false,
        });
    }
    let chosen = choose(state, &ca_pem).await;
    if chosen == current {
        return Ok(ferry_client::api::Placement {
            data_endpoint: current,
            moved: false,
        });
    }
    tracing::warn!(machine = %machine_id, from = %current, to = %chosen, "process server unreachable: the machine moves");
    record.data_endpoint = Some(chosen.clone());
    super::register::write_machine_record(&path, &record)
        .await
        .map_err(internal)?;
    Ok(ferry_client::api::Placement {
        data_endpoint: chosen,
        moved: true,
    })
}

/// A process server below this share of free cache gets no new machine.
pub const CACHE_FREE_MIN: f64 = 0.10;

/// The data endpoint for a new machine (see the module header): among the healthy, not
/// drained process servers with at least [`CACHE_FREE_MIN`] of their cache free (the
/// configuration server included), the one with the fewest machines placed on it, then the
/// fewest disks, then the least MB/s received over the last minute; ties to the
/// configuration server, then by name.
pub async fn choose(state: &AppState, ca_pem: &str) -> String {
    let own = state.config.server.advertised_data_endpoint.clone();
    let servers = match ferry_config::site::servers(state.layout.root()) {
        Ok(servers) => servers,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the site's process servers; the new machine stays here");
            return own;
        }
    };
    if servers.is_empty() {
        return own;
    }
    let probes = servers
        .iter()
        .map(|s| ferry_client::register::probe(&s.data_endpoint, ca_pem, PROBE_TIMEOUT));
    let health = futures::future::join_all(probes).await;
    let mut machines: HashMap<String, usize> = HashMap::new();
    if let Ok(records) = super::register::machine_records(&state.layout) {
        for record in records {
            let endpoint = record.data_endpoint.unwrap_or_else(|| own.clone());
            *machines.entry(endpoint).or_default() += 1;
        }
    }
    let count = |endpoint: &str| machines.get(endpoint).copied().unwrap_or(0);
    // (machines, disks, MB/s in tenths) of each candidate; the configuration server's own load
    // from its own state.
    let own_load = (
        count(&own),
        state.cache.disks().len(),
        (super::control::ingest_mb_per_s_60s(state) * 10.0) as u64,
    );
    let mut best = (own_load, own.clone());
    for (server, health) in servers.iter().zip(health) {
        let Some(health) = health else {
            tracing::warn!(name = %server.name, endpoint = %server.data_endpoint, "process server unreachable: no new machines go there");
            continue;
        };
        if server.drained || health.status != "ok" {
            continue; // `ferryctl ps drain` (until --undo), or draining for maintenance
        }
        if health.cache_free_fraction.is_some_and(|free| free < CACHE_FREE_MIN) {
            tracing::warn!(name = %server.name, "process server's cache is nearly full: no new machines go there");
            continue;
        }
        let load = (
            count(&server.data_endpoint),
            health.disks.unwrap_or(0),
            (health.ingest_mb_per_s.unwrap_or(0.0) * 10.0) as u64,
        );
        if load < best.0 {
            best = (load, server.data_endpoint.clone());
        }
    }
    best.1
}
