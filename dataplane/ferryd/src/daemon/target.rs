//! The daemon's link to its target: connecting (the vault opened with the vault key), the
//! test-only fault-injection hooks, and starting the upload pipeline once the target answers.

use ferry_config::ApplianceConfig;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Cache;

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

pub(super) async fn connect(
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

/// What runs on the target once it answers: the upload pipeline, consolidation, and the
/// committed failovers' marks (crate::failed_over).
pub(super) struct OnTarget {
    pub cache: Cache,
    pub ownership: Arc<crate::ownership::Ownership>,
    pub status: crate::pipeline::PipelineStatus,
    pub tuning: Arc<crate::pipeline::tuning::Tuning>,
    pub retention: Arc<crate::retention::Retention>,
}

/// Connects to the target (retrying every 30 s while it is unreachable), then runs the
/// pipeline and hands the connection to consolidation.
pub(super) async fn start_pipeline(
    target: ferry_storage::TargetConfig,
    config: ApplianceConfig,
    key: ferry_format::VaultKey,
    on_target: OnTarget,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    let OnTarget {
        cache,
        ownership,
        status,
        tuning,
        retention,
    } = on_target;
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
    // Consolidation gets a client of its own (crate::retention says why); should the second
    // connection fail where the first just worked, it shares the pipeline's.
    let for_retention = match connect(&target, config.storage_retry, &key).await {
        Ok(connected) => connected,
        Err(e) => {
            tracing::warn!(error = %e, "consolidation shares the pipeline's storage client");
            (storage.clone(), keyring.clone())
        }
    };
    tokio::spawn(crate::failed_over::apply_committed(
        cache.clone(),
        for_retention.0.clone(),
        for_retention.1.clone(),
    ));
    let _ = retention.vault.set(for_retention);
    ownership.connect(storage.clone(), keyring.clone());
    crate::pipeline::start(cache, ownership, storage, keyring, tuning, status, stopped);
}
