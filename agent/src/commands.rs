//! Management commands (docs/PROTOCOL.md section 4) while `ferry-agent run` runs: a task
//! long-polls the appliance's management endpoint (mTLS, as this machine) and hands each
//! command to the run loop, which carries it out as its next round (replicate.rs) and reports
//! the outcome back.
//!
//! Bounded: at most `BUFFERED` commands wait for the run loop (the poll waits for room); a
//! failed poll is retried after `RETRY` (after `RETRY_UNSERVED` when the appliance does
//! not serve commands at all).

use ferry_client::commands::{Command, CommandOutcome, Commands};
use ferry_client::{ClientError, DataClient};
use std::time::Duration;
use tokio::sync::mpsc;
use uuid::Uuid;

const BUFFERED: usize = 16;
/// How long one poll waits for a command (below the client's 60 s request timeout).
const POLL_WAIT_SECS: u64 = 25;
const RETRY: Duration = Duration::from_secs(5);
const RETRY_UNSERVED: Duration = Duration::from_secs(300);

/// The management endpoint as this machine.
pub fn client(identity: &ferry_client::Identity, management_endpoint: &str) -> Result<DataClient, ClientError> {
    let tls = ferry_client::tls::ca_verified(&identity.ca_pem, Some((&identity.cert_pem, &identity.key_pem)))?;
    Ok(DataClient::new(management_endpoint, tls))
}

/// Starts the poll; commands arrive on the receiver until it is dropped.
pub fn spawn_poller(client: DataClient, machine_id: Uuid) -> (mpsc::Receiver<Command>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(BUFFERED);
    let path = format!("/v1/machines/{machine_id}/commands?wait_s={POLL_WAIT_SECS}");
    let task = tokio::spawn(async move {
        loop {
            let answer = client
                .raw(
                    ferry_client::control::Method::GET,
                    &path,
                    "application/json",
                    bytes::Bytes::new(),
                )
                .await;
            let pause = match answer {
                Ok(response) if response.status == 200 => {
                    match serde_json::from_slice::<Commands>(&response.body) {
                        Ok(list) => {
                            for command in list.commands {
                                tracing::info!(id = %command.id, command = %command.command, "command from the appliance");
                                if tx.send(command).await.is_err() {
                                    return; // the run is over
                                }
                            }
                            None
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the appliance sent commands this agent cannot read");
                            Some(RETRY)
                        }
                    }
                }
                Ok(response) if response.status == 404 => {
                    tracing::debug!("the appliance serves no commands; polling again in 5 min");
                    Some(RETRY_UNSERVED)
                }
                Ok(response) => {
                    tracing::debug!(status = response.status, "polling for commands");
                    Some(RETRY)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "polling for commands");
                    Some(RETRY)
                }
            };
            if let Some(pause) = pause {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = tx.closed() => return,
                }
            }
        }
    });
    (rx, task)
}

/// The next command, or never when there is no poll (`run --once`).
pub async fn next(commands: &mut Option<mpsc::Receiver<Command>>) -> Command {
    match commands {
        Some(rx) => match rx.recv().await {
            Some(command) => command,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Sends a command's outcome (a failure is logged: the appliance shows the command as
/// delivered without an outcome).
pub async fn report(client: &DataClient, machine_id: Uuid, command: &Command, outcome: &CommandOutcome) {
    let path = format!("/v1/machines/{machine_id}/commands/{}/result", command.id);
    match client.post_json::<_, serde_json::Value>(&path, outcome).await {
        Ok(_) => tracing::info!(id = %command.id, ok = outcome.ok, "command done"),
        Err(e) => tracing::warn!(id = %command.id, error = %e, "cannot report a command's outcome"),
    }
}
