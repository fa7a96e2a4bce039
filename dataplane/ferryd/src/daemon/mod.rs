//! ferryd's start-up and shut-down wiring: loads ferry.toml, recovers the cache, reads the
//! vault key and the TLS identity, binds every listener, builds the server's [`AppState`],
//! starts the upload pipeline once the target answers (`target`), serves until told to
//! stop, then drains.
//!
//! SIGTERM (or SIGINT) drains: the flag makes new requests answer 503 `draining`, the listeners
//! close, in-flight requests finish (at most [`DRAIN_TIMEOUT`]), the cache thread writes what
//! is queued and stops, and the process exits 0.

mod target;

use anyhow::{Context, Result};
use ferry_config::{ApplianceConfig, ApplianceLayout};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

use crate::cache::{Cache, CacheOptions};
use crate::niced_runtime::{Lowered, NicedRuntime, INGEST_NICE_OFFSET};
use crate::pipeline::ConnectError;
use crate::server::{control, metrics, serve, tls, AppState, Endpoint};

/// Longest the first look at the target may delay start.
pub const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for in-flight requests after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
    let memory_shares = crate::memory_budget::shares(&config);
    let options = CacheOptions {
        limit_bytes: cache_limit(&config, &cache_dir)?,
        directory: cache_dir,
        segment_bytes: config.cache.segment_bytes,
        engine: config.cache.engine,
        max_batch_bytes: config.ingest.max_batch_bytes,
        window: config.ingest.window,
        resident_budget_bytes: memory_shares.resident_batches,
    };
    crate::cache::aligned::set_pool_limit(memory_shares.buffer_pool);
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
    let first_try = match tokio::time::timeout(FIRST_CONNECT_TIMEOUT, target::connect(&target, quick, &vault_key)).await
    {
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
    let server_cert_der = tls::read_certs(&layout.server_cert_file())?.remove(0);
    let ownership = Arc::new(crate::ownership::Ownership::new(
        crate::ownership::Ownership::id_from_certificate(&server_cert_der),
        config.server.advertised_data_endpoint.clone(),
        Duration::from_secs(u64::from(config.server.lease_secs)),
    ));
    let retention = Arc::new(
        crate::retention::Retention::new(layout.retention_scratch_dir(), config.retention.nice)
            .context("cannot start the consolidation runtime")?,
    );
    tokio::spawn(target::start_pipeline(
        target,
        config.clone(),
        vault_key,
        target::OnTarget {
            cache: cache.clone(),
            ownership: ownership.clone(),
            status: pipeline.clone(),
            tuning: tuning.clone(),
            retention: retention.clone(),
        },
        stopped.clone(),
    ));
    let groups = crate::groups::Groups::load(&layout.root().join("state/groups"))
        .context("cannot read the consistency groups")?;
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
        tuned: Arc::new(std::sync::Mutex::new(tuned)),
        retention: retention.clone(),
        tuning,
        commands: Default::default(),
        groups,
        barriers: Default::default(),
        ownership: ownership.clone(),
    });
    tokio::spawn(crate::ownership::run(ownership, cache.clone(), stopped.clone()));
    let control_socket = state.layout.resolve(&state.config.server.control_socket);
    let control_listener = control::bind(&control_socket)?;
    // One line tests and operators can wait for: both endpoints accept connections now.
    tracing::info!(data = %data_listener.local_addr()?, management = %management_listener.local_addr()?, "ferryd is serving");

    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    // The data endpoint runs on its own, lower-weight runtime (see niced_runtime); its
    // listener moves there so its connections are driven by that runtime's threads.
    let ingest = NicedRuntime::start("ferry-ingest", None, Lowered::By(INGEST_NICE_OFFSET))
        .context("cannot start the ingest runtime")?;
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
    tokio::spawn(crate::group_points::run_schedule(state.clone(), stopped.clone()));
    // Consolidation runs on one appliance of a site, its configuration server: two process
    // servers consolidating the same vault would race (scale-out's disk ownership is not built
    // yet). A process server answers `ferryctl retention run` itself when asked.
    if state.config.server.config_server.is_none() {
        tokio::spawn(crate::retention::run_in_background(
            retention,
            state.tuned.clone(),
            stopped.clone(),
        ));
    } else {
        drop(retention);
    }
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
