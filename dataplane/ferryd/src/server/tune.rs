//! `GET` and `PUT /v1/tune` (ferry_client::control): the run-time tunables. A change is
//! applied to a copy of the configuration, validated by the same rules as ferry.toml (errors
//! name the key), written to ferry.toml durably (so it survives a restart), and only then
//! handed to the running pipeline (pipeline/tuning.rs) and the cache. `reset` puts every
//! tunable back to its default. Keys that need a restart are refused by name.

use ferry_client::api::ErrorCode;
use ferry_client::control::{InEffect, Tunable, Tunables, TuneRequest, TuneState};
use ferry_config::config::{ApplianceConfig, CacheConfig, PipelineConfig};
use std::sync::atomic::Ordering;

use super::http::ApiError;
use super::AppState;

fn tunables(pipeline: &PipelineConfig, cache: &CacheConfig) -> Tunables {
    Tunables {
        upload_concurrency: pipeline.upload_concurrency,
        compression_level: pipeline.compression_level,
        worker_threads: pipeline.worker_threads,
        change_set_bytes: pipeline.change_set_bytes,
        flush_delay_ms: pipeline.flush_delay_ms,
        idle_flush_delay_max_ms: pipeline.idle_flush_delay_max_ms,
        memory_budget_bytes: pipeline.memory_budget_bytes,
        bandwidth_cap_bytes_per_sec: pipeline.bandwidth_cap_bytes_per_sec,
        bandwidth_schedule: serde_json::to_value(&pipeline.bandwidth_schedule).unwrap_or_default(),
        cache_limit_percent: u32::from(cache.limit_percent),
        cache_limit_bytes: cache.limit_bytes,
    }
}

pub fn state(app: &AppState) -> TuneState {
    let config = app.tuned.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (seal_workers, _) = app.pipeline.seal_work();
    let (_, upload_concurrency) = app.pipeline.uploads();
    TuneState {
        values: tunables(&config.pipeline, &config.cache),
        defaults: tunables(&PipelineConfig::default(), &CacheConfig::default()),
        in_effect: InEffect {
            compression_level: app.tuning.compression_level.load(Ordering::Relaxed),
            seal_workers,
            upload_concurrency,
            change_set_bytes: app.tuning.change_set_bytes(),
            flush_delay_ms: app.tuning.flush_delay().as_millis() as u64,
            idle_flush_delay_max_ms: app.tuning.idle_flush_delay_max().as_millis() as u64,
            memory_budget_bytes: app.tuning.memory_budget_bytes(),
            bandwidth_cap_bytes_per_sec: app.pipeline.bandwidth_cap_now(),
            cache_limit_bytes: app.cache.space().1,
        },
    }
}

/// The configuration with `request` applied, validated.
fn changed(current: &ApplianceConfig, request: &TuneRequest) -> Result<ApplianceConfig, ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::BadTunable, message);
    let mut config = current.clone();
    if request.reset {
        let (p, c) = (PipelineConfig::default(), CacheConfig::default());
        config.pipeline = p;
        config.cache.limit_percent = c.limit_percent;
        config.cache.limit_bytes = c.limit_bytes;
    }
    for (key, value) in &request.set {
        let tunable = Tunable::parse(key).ok_or_else(|| bad(not_tunable(&config, key)))?;
        set(&mut config, tunable, value.trim()).map_err(|message| bad(format!("{key}: {message}")))?;
    }
    config
        .validate()
        .map_err(|(key, message)| bad(format!("{key}: {message}")))?;
    Ok(config)
}

/// Sets one tunable from its text (as ferry.toml writes it; JSON for the schedule). Ranges
/// are checked afterwards by the configuration's own validation.
fn set(config: &mut ApplianceConfig, tunable: Tunable, value: &str) -> Result<(), String> {
    fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
        value
            .parse()
            .map_err(|_| format!("{value:?} is not a value: this key takes a whole number"))
    }
    let p = &mut config.pipeline;
    match tunable {
        Tunable::UploadConcurrency => p.upload_concurrency = number(value)?,
        Tunable::CompressionLevel => p.compression_level = number(value)?,
        Tunable::WorkerThreads => p.worker_threads = number(value)?,
        Tunable::ChangeSetBytes => p.change_set_bytes = number(value)?,
        Tunable::FlushDelayMs => p.flush_delay_ms = number(value)?,
        Tunable::IdleFlushDelayMaxMs => p.idle_flush_delay_max_ms = number(value)?,
        Tunable::MemoryBudgetBytes => p.memory_budget_bytes = number(value)?,
        Tunable::BandwidthCapBytesPerSec => p.bandwidth_cap_bytes_per_sec = number(value)?,
        Tunable::BandwidthSchedule => {
            p.bandwidth_schedule = serde_json::from_str(value).map_err(|e| {
                format!(
                    "{value:?} is not a schedule: {e} (JSON, e.g. \
                     [{{\"days\":[\"mon\"],\"start_hour\":8,\"end_hour\":18,\"cap_bytes_per_sec\":50000000}}])"
                )
            })?
        }
        Tunable::CacheLimitPercent => config.cache.limit_percent = number(value)?,
        Tunable::CacheLimitBytes => config.cache.limit_bytes = number(value)?,
    }
    Ok(())
}

/// Why `key` cannot be tuned: a ferry.toml key that needs a restart (named with its section),
/// or no setting at all.
fn not_tunable(config: &ApplianceConfig, key: &str) -> String {
    let known: Vec<&str> = Tunable::ALL.iter().map(|t| t.as_str()).collect();
    let sections = serde_json::to_value(config).unwrap_or_default();
    let in_file = sections.as_object().and_then(|sections| {
        sections
            .iter()
            .find(|(_, fields)| fields.get(key).is_some())
            .map(|(section, _)| format!("{section}.{key}"))
    });
    match in_file {
        Some(path) => format!(
            "{path} cannot change while ferryd runs: edit it in ferry.toml, then restart ferryd \
             (systemctl restart ferryd); tunable at run time: {}",
            known.join(", ")
        ),
        None => format!(
            "{key} is not a setting of ferry.toml; tunable at run time: {}",
            known.join(", ")
        ),
    }
}

/// How long a tune answer waits for the pipeline to apply the change (it does so within a
/// cycle, at most a second), so the table it prints shows what is in effect.
const APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn put(app: &AppState, request: &TuneRequest) -> Result<TuneState, ApiError> {
    apply(app, request)?;
    if !app.tuning.wait_applied(APPLY_WAIT).await {
        tracing::warn!("the pipeline has not applied the change yet (is the target reachable?)");
    }
    Ok(state(app))
}

fn apply(app: &AppState, request: &TuneRequest) -> Result<(), ApiError> {
    let mut tuned = app.tuned.lock().unwrap_or_else(|p| p.into_inner());
    let config = changed(&tuned, request)?;
    let cache_dir = app.layout.resolve(&config.cache.directory);
    let limit = crate::daemon::cache_limit(&config, &cache_dir)
        .map_err(|e| ApiError::new(ErrorCode::BadTunable, format!("cache limit: {e:#}")))?;
    let minimum = 2 * config.cache.segment_bytes;
    if limit < minimum {
        return Err(ApiError::new(
            ErrorCode::BadTunable,
            format!("cache limit: {limit} bytes is less than two segments ({minimum})"),
        ));
    }
    // Durable first: what is applied is what a restart will read.
    config.save(&app.layout.config_file()).map_err(|e| {
        tracing::error!(error = %e, "cannot write ferry.toml");
        ApiError::new(ErrorCode::Internal, format!("cannot write ferry.toml: {e}"))
    })?;
    app.tuning.apply(&config.pipeline);
    let shares = crate::memory_budget::shares(&config);
    app.cache.set_resident_budget_bytes(shares.resident_batches);
    crate::cache::aligned::set_pool_limit(shares.buffer_pool);
    app.ingest_memory.set_limit(crate::ingest_memory::limit_for(&config));
    app.cache
        .set_limit_bytes(limit)
        .map_err(|e| ApiError::new(ErrorCode::BadTunable, e.to_string()))?;
    let changes: Vec<String> = request.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(reset = request.reset, changes = %changes.join(" "), "tuned; ferry.toml written");
    *tuned = config;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_storage::config::{AzureCredentialConfig, AzureTargetConfig, Secret, TargetConfig};

    fn azure() -> ApplianceConfig {
        ApplianceConfig::with_target(TargetConfig::Azure(AzureTargetConfig {
            account: "acct1".into(),
            container: "ferry".into(),
            endpoint: None,
            create_container: false,
            request_timeout_secs: 60,
            credential: AzureCredentialConfig::SharedKey {
                account_key: Secret::new("a2V5LXRoYXQtbXVzdC1zdXJ2aXZl"),
            },
        }))
    }

    fn set(pairs: &[(&str, &str)]) -> TuneRequest {
        TuneRequest {
            set: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            reset: false,
        }
    }

    #[test]
    fn a_change_keeps_everything_else_including_credentials() {
        let before = azure();
        let after = changed(
            &before,
            &set(&[("upload_concurrency", "7"), ("cache_limit_percent", "50")]),
        )
        .unwrap();
        assert_eq!(after.pipeline.upload_concurrency, 7);
        assert_eq!(after.cache.limit_percent, 50);
        let mut expected = before.clone();
        expected.pipeline.upload_concurrency = 7;
        expected.cache.limit_percent = 50;
        assert_eq!(after, expected, "the target and its account key are untouched");
        let reset = changed(
            &after,
            &TuneRequest {
                set: Vec::new(),
                reset: true,
            },
        )
        .unwrap();
        assert_eq!(reset, before);
    }

    #[test]
    fn bad_changes_name_the_key() {
        let message = |pairs: &[(&str, &str)]| changed(&azure(), &set(pairs)).unwrap_err().message;
        assert!(message(&[("worker_threads", "-1")]).contains("worker_threads"));
        assert!(message(&[("compression_level", "fast")]).contains("compression_level: \"fast\" is not a value"));
        assert!(message(&[("bandwidth_schedule", "[{\"days\":1}]")]).contains("bandwidth_schedule: "));
        assert!(message(&[("flush_delay_ms", "1")]).contains("pipeline.flush_delay_ms"));
        let restart = message(&[("window", "8")]);
        assert!(
            restart.contains("ingest.window cannot change while ferryd runs: edit it in ferry.toml, then restart"),
            "{restart}"
        );
        assert!(message(&[("no_such_key", "1")]).contains("no_such_key is not a setting of ferry.toml"));
    }
}
