//! ferryd's endpoints: the data endpoint ([`data`], mTLS, HTTP/2 and HTTP/1.1) and the
//! management endpoint ([`register`]), each an accept loop on tokio serving connections with
//! hyper-util's auto builder over tokio-rustls; the control socket ([`control`]) and
//! `/metrics` ([`metrics`]) are plain HTTP/1.1 ([`http::serve_http1`]). [`AppState`] is what
//! every handler reads. `crate::daemon` builds it and starts the loops.

pub mod commands;
pub mod control;
pub mod data;
pub mod http;
pub mod join;
pub mod metrics;
pub mod moves;
pub mod placement;
pub mod register;
pub mod tls;
pub mod tune;

use ferry_config::{ApplianceConfig, ApplianceLayout};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cache::Cache;

/// Connections served at once per endpoint; more wait in the kernel's accept queue.
pub const CONNECTIONS_MAX: usize = 4096;
/// HTTP/2 receive windows (hyper's defaults are 1 MiB each): enough for a LAN's bandwidth-delay
/// product at several hundred MB/s per connection; a body is read as soon as it is admitted.
pub const H2_STREAM_WINDOW_BYTES: u32 = 256 << 10;
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 512 << 10;
/// Largest HTTP/2 frame a client may send (SETTINGS_MAX_FRAME_SIZE; RFC 9113's default is
/// 16 KiB, which cut a 1 MiB batch into 64 DATA frames, each decoded, queued and handed to
/// the handler on its own). A client that honours the setting sends a batch in a few frames:
/// the ingest thread's CPU per byte fell 9% in steady and 3.5% in asr-sizing
/// (docs/BENCHMARKS.md, thirteenth step). A frame is held whole before it is decoded, so a
/// connection's receive buffer can grow to one frame and keep that capacity while the
/// connection lives (outside the memory budget, like the windows): at 1,000 disks on 100
/// connections peak RSS was the same as with 16 KiB frames (344 MiB).
pub const H2_FRAME_MAX_BYTES: u32 = 256 << 10;

pub struct AppState {
    pub cache: Cache,
    pub pipeline: crate::pipeline::PipelineStatus,
    pub config: ApplianceConfig,
    pub layout: ApplianceLayout,
    /// Open, drained for maintenance, or shutting down.
    pub admission: crate::admission::Admission,
    pub throttle: register::Throttle,
    /// Batch bytes acknowledged since start (status rates).
    pub ingested_bytes: std::sync::atomic::AtomicU64,
    pub started: std::time::Instant,
    pub rates: control::RateSampler,
    pub metrics: crate::counters::IngestMetrics,
    pub system: crate::alerts::SystemMonitor,
    /// The pipeline's run-time tunables (ferryctl tune).
    pub tuning: Arc<crate::pipeline::tuning::Tuning>,
    /// The configuration as last tuned (what ferry.toml says now).
    pub tuned: Arc<std::sync::Mutex<ApplianceConfig>>,
    /// Consolidation: the background runs and `ferryctl retention run`.
    pub retention: Arc<crate::retention::Retention>,
    /// Batch bodies being received (a quarter of the memory budget).
    pub ingest_memory: Arc<crate::ingest_memory::IngestMemory>,
    /// Management commands waiting for agents.
    pub commands: crate::commands::CommandQueues,
    /// Consistency groups (the configuration server's).
    pub groups: crate::groups::Groups,
    /// Their barriers: one at a time per group, and the last outcomes.
    pub barriers: crate::group_points::Barriers,
    /// The disks this process server holds the storage lease of.
    pub ownership: Arc<crate::ownership::Ownership>,
}

/// Role names, as `ferryctl status` and `/metrics` (`ferry_role`) give them.
pub const ROLE_PROCESS_SERVER: &str = "process_server";
pub const ROLE_CONFIGURATION_SERVER: &str = "configuration_server";

/// This appliance's role in its site: a process server joined a configuration server's site
/// (`server.config_server` set); anything else is a site's configuration server, alone or with
/// process servers.
pub(crate) fn role_of(state: &AppState) -> &'static str {
    if state.config.server.config_server.is_some() {
        ROLE_PROCESS_SERVER
    } else {
        ROLE_CONFIGURATION_SERVER
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Endpoint {
    Data,
    Management,
}

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: Arc<AppState>,
    endpoint: Endpoint,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let connections = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        if *stopped.borrow() {
            return;
        }
        let permit = tokio::select! {
            _ = stopped.changed() => return,
            permit = connections.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => return },
        };
        let (tcp, peer) = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let state = state.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let tls_stream = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let machine = tls::machine_of(tls_stream.get_ref().1.peer_certificates());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let response = match endpoint {
                        Endpoint::Data => data::handle(&state, machine, request).await,
                        Endpoint::Management => register::handle(&state, peer.ip(), machine, request).await,
                    };
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // HTTP/2 flow-control windows: what a client may send before ferryd reads it, held
            // in memory per stream and per connection outside the memory budget, so small.
            builder
                .http2()
                .initial_stream_window_size(H2_STREAM_WINDOW_BYTES)
                .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES)
                .max_frame_size(H2_FRAME_MAX_BYTES);
            let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
