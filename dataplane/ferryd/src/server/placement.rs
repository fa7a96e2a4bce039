//! Where a newly registered machine sends its disks: the configuration server or one of the
//! process servers that joined its site (`ferry_config::site`), whichever healthy one has the
//! fewest registered machines (ties: the configuration server first, then by name). A process
//! server counts as healthy when its data endpoint answers `GET /v1/health` over TLS verified
//! with the site's CA within [`PROBE_TIMEOUT`]; the probes run at once, so a registration waits
//! at most that long for them.
//!
//! Limits: the load measure is the number of machines, not their MB/s or the servers' free
//! cache; a machine stays with its process server (moves need disk ownership by storage
//! leases, not built yet).

use std::collections::HashMap;
use std::time::Duration;

use super::AppState;

/// How long a process server's health probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The data endpoint for a new machine (see the module header).
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
        .map(|s| ferry_client::register::healthy(&s.data_endpoint, ca_pem, PROBE_TIMEOUT));
    let health = futures::future::join_all(probes).await;
    let mut machines: HashMap<String, usize> = HashMap::new();
    if let Ok(records) = super::register::machine_records(&state.layout) {
        for record in records {
            let endpoint = record.data_endpoint.unwrap_or_else(|| own.clone());
            *machines.entry(endpoint).or_default() += 1;
        }
    }
    let count = |endpoint: &str| machines.get(endpoint).copied().unwrap_or(0);
    let mut best = (count(&own), own.clone());
    for (server, up) in servers.iter().zip(health) {
        if !up {
            tracing::warn!(name = %server.name, endpoint = %server.data_endpoint, "process server unreachable: no new machines go there");
            continue;
        }
        let load = count(&server.data_endpoint);
        if load < best.0 {
            best = (load, server.data_endpoint.clone());
        }
    }
    best.1
}
