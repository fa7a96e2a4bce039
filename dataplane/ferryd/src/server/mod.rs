//! ferryd's endpoints: the data endpoint ([`data`], mTLS, HTTP/2 and HTTP/1.1) and the
//! management endpoint ([`register`]), each an accept loop on tokio serving connections with
//! hyper-util's auto builder over tokio-rustls.
//!
//! SIGTERM (or SIGINT) drains: the flag makes new requests answer 503 `draining`, the listeners
//! close, in-flight requests finish (at most [`DRAIN_TIMEOUT`]), the cache thread writes what
//! is queued and stops, and the process exits 0.

pub mod control;
pub mod data;
pub mod http;
pub mod ingest_runtime;
pub mod metrics;
pub mod register;
pub mod tls;
pub mod tune;

use anyhow::{Context, Result};
use ferry_config::{ApplianceConfig, ApplianceLayout};
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::cache::{Cache, CacheOptions};
use crate::pipeline::ConnectError;

/// Longest the first look at the target may delay start.
pub const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for in-flight requests after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once per endpoint; more wait in the kernel's accept queue.
pub const CONNECTIONS_MAX: usize = 4096;
/// HTTP/2 receive windows (hyper's defaults are 1 MiB each): enough for a LAN's bandwidth-delay
/// product at several hundred MB/s per connection; a body is read as soon as it is admitted.
pub const H2_STREAM_WINDOW_BYTES: u32 = 256 << 10;
pub const H2_CONNECTION_WINDOW_BYTES: u32 = 512 << 10;

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
    pub tuned: std::sync::Mutex<ApplianceConfig>,
    /// Batch bodies being received (a quarter of the memory budget).
    pub ingest_memory: Arc<crate::ingest_memory::IngestMemory>,
}

/// The cache limit: `limit_bytes`, or `limit_percent` of the cache file system.
pub(crate) fn cache_limit(config: &ApplianceConfig, directory: &Path) -> Result<u64> {
    if config.cache.limit_bytes != 0 {
        return Ok(config.cache.limit_bytes);
    }
    std::fs::create_dir_all(directory).with_context(|| format!("cannot create {}", directory.display()))?;
    let stats = rustix::fs::statvfs(directory).context("statvfs on the cache directory")?;
    let total = stats.f_blocks * stats.f_frsize;
    Ok(total / 100 * u64::from(config.cache.limit_percent))
}

/// Runs ferryd from an appliance directory until SIGTERM or SIGINT.
pub async fn run(appliance: &Path) -> Result<()> {
    let signals = signals().await?;
    run_until(appliance, signals).await
}

/// Runs ferryd until `stop` completes, then drains (for embedding: benchmarks, tests).
pub async fn run_until(appliance: &Path, until: impl std::future::Future<Output = ()>) -> Result<()> {
    let layout = ApplianceLayout::new(appliance);
    let config = ApplianceConfig::load(&layout.config_file())?;
    let cache_dir = layout.resolve(&config.cache.directory);
    let options = CacheOptions {
        limit_bytes: cache_limit(&config, &cache_dir)?,
        directory: cache_dir,
        segment_bytes: config.cache.segment_bytes,
        engine: config.cache.engine,
        max_batch_bytes: config.ingest.max_batch_bytes,
        window: config.ingest.window,
        resident_budget_bytes: crate::memory_budget::shares(&config).resident_batches,
    };
    let (cache, report) = Cache::open(options).context("cannot open the cache")?;
    tracing::info!(
        engine = report.engine,
        segments = report.segments_scanned,
        batches = report.records_recovered,
        disks = report.disks,
        damage = report.damage.len(),
        "cache recovered"
    );
    let vault_key_text = std::fs::read_to_string(layout.vault_key_file())
        .with_context(|| format!("cannot read the vault key {}", layout.vault_key_file().display()))?;
    let vault_key =
        ferry_format::VaultKey::parse_text(&vault_key_text).context("the vault key file does not hold a vault key")?;
    let tls = tls::server_config(
        &layout.ca_cert_file(),
        &layout.server_cert_file(),
        &layout.server_key_file(),
    )?;
    let data_listener = bind(&config.server.data_listen).await?;
    let management_listener = bind(&config.server.management_listen).await?;
    let metrics_listener = bind(&config.server.metrics_listen)
        .await
        .context("server.metrics_listen (Prometheus /metrics)")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let pipeline = crate::pipeline::PipelineStatus::default();
    // A wrong vault key or a target without a vault is a configuration error: refuse to start.
    // An unreachable target is not: ingest starts and the pipeline connects when it can.
    let target = config.resolved_target(&layout);
    // One quick attempt: an unreachable target must not hold up ingest.
    let quick = ferry_storage::RetryPolicy {
        max_attempts: 1,
        ..config.storage_retry
    };
    let first_try = match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, connect(&target, quick, &vault_key)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Storage(ferry_storage::StorageError::Transient {
            operation: ferry_storage::Operation::Get,
            name: ferry_format::names::VAULT_JSON.into(),
            message: format!("no answer within {FIRST_CONNECT_TIMEOUT:?}"),
        })),
    };
    if let Err(e @ (ConnectError::WrongKey(_) | ConnectError::NoVault | ConnectError::BadVault(_))) = first_try {
        return Err(e).context("cannot use the target");
    }
    if let Err(e) = &first_try {
        tracing::warn!(error = %e, "the target is not usable yet; batches stay in the cache until it is");
        pipeline.set_target_error(Some(e.to_string()));
    }
    // The startup look only decides whether to refuse; the pipeline opens its own storage with
    // the configured retry policy.
    drop(first_try);
    let tuning = Arc::new(crate::pipeline::tuning::Tuning::new(&config.pipeline));
    tokio::spawn(start_pipeline(
        cache.clone(),
        target,
        config.clone(),
        vault_key,
        pipeline.clone(),
        tuning.clone(),
        stopped.clone(),
    ));
    let config_sustained = config.alerts.sustained_secs;
    let tuned = config.clone();
    let state = Arc::new(AppState {
        cache: cache.clone(),
        pipeline,
        config,
        layout,
        admission: Default::default(),
        throttle: Default::default(),
        ingested_bytes: Default::default(),
        started: std::time::Instant::now(),
        rates: Default::default(),
        metrics: Default::default(),
        system: crate::alerts::SystemMonitor::new(Duration::from_secs(config_sustained)),
        ingest_memory: crate::ingest_memory::IngestMemory::new(crate::ingest_memory::limit_for(&tuned)),
        tuned: std::sync::Mutex::new(tuned),
        tuning,
    });
    let control_socket = state.layout.resolve(&state.config.server.control_socket);
    let control_listener = control::bind(&control_socket)?;
    // One line tests and operators can wait for: both endpoints accept connections now.
    tracing::info!(data = %data_listener.local_addr()?, management = %management_listener.local_addr()?, "ferryd is serving");

    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    // The data endpoint runs on its own, lower-weight runtime (see ingest_runtime); its
    // listener moves there so its connections are driven by that runtime's threads.
    let ingest = ingest_runtime::IngestRuntime::start().context("cannot start the ingest runtime")?;
    let data_listener = data_listener.into_std()?;
    let data_loop = {
        let (tls, state, graceful, stopped) = (tls.clone(), state.clone(), graceful.clone(), stopped.clone());
        ingest.handle().spawn(async move {
            match TcpListener::from_std(data_listener) {
                Ok(listener) => serve(listener, tls, state, Endpoint::Data, graceful, stopped).await,
                Err(e) => tracing::error!(error = %e, "cannot serve the data endpoint"),
            }
        })
    };
    let control_loop = tokio::spawn(control::serve(control_listener, state.clone(), stopped.clone()));
    tokio::spawn(control::sample_rates(state.clone(), stopped.clone()));
    tokio::spawn(metrics::serve(metrics_listener, state.clone(), stopped.clone()));
    let management_loop = tokio::spawn(serve(
        management_listener,
        tls,
        state.clone(),
        Endpoint::Management,
        graceful.clone(),
        stopped,
    ));

    until.await;
    tracing::info!("draining: refusing new requests, finishing those in flight");
    state.admission.shut_down();
    state.tuning.set_flush_all(true);
    let _ = stop.send(true);
    let _ = data_loop.await;
    let _ = management_loop.await;
    let _ = control_loop.await;
    let _ = std::fs::remove_file(&control_socket);
    // The accept loops have returned, so this is the last reference.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            tracing::warn!("some connections were still open after {DRAIN_TIMEOUT:?}; closing them");
        }
    }
    let cache_for_shutdown = cache.clone();
    tokio::task::spawn_blocking(move || cache_for_shutdown.shutdown())
        .await
        .context("cache shutdown")?;
    tracing::info!("ferryd stopped cleanly");
    Ok(())
}

type Connected = (Arc<dyn ferry_storage::ObjectStorage>, ferry_format::Keyring);

/// Test hooks, named as such, that wrap the target in the fault-injecting layer (under the
/// retry layer, as real faults would be):
/// - `FERRY_TEST_FAULTS=<fault>:<every>[:<latency_ms>]` makes every Nth storage call fail
///   (faults: 503, 500, 429, timeout, reset, timeout-after-success), each call delayed by
///   `latency_ms`;
/// - `FERRY_TEST_SLOW_NAMES=<text>:<latency_ms>` delays only the calls on object names that
///   contain `text` (one disk's points, for example).
///
/// Never set in production; ferryd logs loudly when either is.
#[derive(Debug, Default)]
struct TestFaults {
    every: Option<(ferry_storage::faults::Fault, u32, u64)>,
    slow_names: Option<(String, u64)>,
}

fn test_faults() -> Option<TestFaults> {
    use ferry_storage::faults::Fault;
    let every = std::env::var("FERRY_TEST_FAULTS").ok().and_then(|spec| {
        let mut parts = spec.split(':');
        let fault = match parts.next()? {
            "503" => Fault::ServerBusy,
            "500" => Fault::InternalError,
            "429" => Fault::Throttled,
            "timeout" => Fault::Timeout,
            "reset" => Fault::ConnectionReset,
            "timeout-after-success" => Fault::TimeoutAfterSuccess,
            _ => return None,
        };
        let every = parts.next()?.parse().ok()?;
        let latency_ms = parts.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        Some((fault, every, latency_ms))
    });
    let slow_names = std::env::var("FERRY_TEST_SLOW_NAMES").ok().and_then(|spec| {
        let (text, latency_ms) = spec.rsplit_once(':')?;
        Some((text.to_string(), latency_ms.parse().ok()?))
    });
    (every.is_some() || slow_names.is_some()).then_some(TestFaults { every, slow_names })
}

async fn connect(
    target: &ferry_storage::TargetConfig,
    retry: ferry_storage::RetryPolicy,
    key: &ferry_format::VaultKey,
) -> Result<Connected, crate::pipeline::ConnectError> {
    let storage: Arc<dyn ferry_storage::ObjectStorage> = match test_faults() {
        None => ferry_storage::open_target(target, retry).await?,
        Some(faults) => {
            tracing::warn!(
                ?faults,
                "FERRY_TEST_FAULTS or FERRY_TEST_SLOW_NAMES is set: injecting storage faults (tests only)"
            );
            let raw = ferry_storage::open_target(
                target,
                ferry_storage::RetryPolicy {
                    max_attempts: 1,
                    ..retry
                },
            )
            .await?;
            let faulty = ferry_storage::faults::FaultInjecting::new(raw);
            if let Some((fault, every, latency_ms)) = faults.every {
                faulty.fail_every(every, fault, None);
                faulty.set_latency(Duration::from_millis(latency_ms));
            }
            if let Some((text, latency_ms)) = faults.slow_names {
                faulty.slow_names_containing(&text, Duration::from_millis(latency_ms));
            }
            Arc::new(ferry_storage::retry::Retrying::new(faulty, retry))
        }
    };
    let keyring = crate::pipeline::open_vault(&*storage, key).await?;
    Ok((storage, keyring))
}

/// Connects to the target (retrying every 30 s while it is unreachable), then runs the pipeline.
async fn start_pipeline(
    cache: Cache,
    target: ferry_storage::TargetConfig,
    config: ApplianceConfig,
    key: ferry_format::VaultKey,
    status: crate::pipeline::PipelineStatus,
    tuning: Arc<crate::pipeline::tuning::Tuning>,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut first = true;
    let (storage, keyring) = loop {
        if !first {
            let mut stop = stopped.clone();
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(crate::pipeline::PERMANENT_PAUSE) => {}
            }
        }
        first = false;
        match connect(&target, config.storage_retry, &key).await {
            Ok(connected) => break connected,
            Err(e) => {
                tracing::warn!(error = %e, "the target is not usable yet; batches stay in the cache; retrying in 30 s");
                status.set_target_error(Some(e.to_string()));
            }
        }
    };
    status.set_target_error(None);
    tracing::info!(target = %storage.describe(), workers = tuning.workers(), "upload pipeline running");
    crate::pipeline::start(cache, storage, keyring, tuning, status, stopped);
}

async fn bind(address: &str) -> Result<TcpListener> {
    let address: SocketAddr = address
        .parse()
        .with_context(|| format!("{address} is not an address"))?;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))
}

/// A future that completes on SIGTERM or SIGINT (handlers installed before it is returned).
async fn signals() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[derive(Clone, Copy)]
enum Endpoint {
    Data,
    Management,
}

async fn serve(
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
                        Endpoint::Management => register::handle(&state, peer.ip(), request).await,
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
                .initial_connection_window_size(H2_CONNECTION_WINDOW_BYTES);
            let connection = builder.serve_connection(TokioIo::new(tls_stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
