//! ferryd's side of retention: consolidating the vault every `retention.run_every` in the
//! background, and on demand through the control socket (`ferryctl retention run`), one run
//! at a time (a request waits for a background run in progress, so the two never race).
//!
//! The work is `ferry_vault::retention::consolidate`; here are its schedule, its share of the
//! machine, the scratch directory, and what the last run found, which `ferryctl status`,
//! `/metrics` and the alerts show (stored bytes and the oldest restorable point per disk, a
//! pin older than the window, a failed run).
//!
//! Its share: `retention.parallel` storage calls and chunk seals at once, on a runtime of its
//! own whose threads run at nice `retention.nice` (default 19; [`crate::niced_runtime`]), so
//! under load sealing, uploads and ingest get the CPU first. Points read by one run are kept
//! for the next ([`KnownPoints`], at most 100,000 over every disk), so a run reads only the
//! points written since, not all of every disk's each time. It has its own storage client
//! too: connections it opens are driven by its low-priority threads, and must not be handed
//! to the pipeline's uploads from a shared pool.

use anyhow::Result;
use ferry_client::control::{RetentionDisk, RetentionStatus};
use ferry_config::config::ApplianceConfig;
use ferry_format::Keyring;
use ferry_storage::ObjectStorage;
use ferry_vault::points::KnownPoints;
use ferry_vault::retention::consolidate::{consolidate_all, DiskSummary, Options};
use ferry_vault::retention::RunRequest;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::niced_runtime::{Lowered, NicedRuntime, NICE_MAX};

/// The first background run waits this long after start (the pipeline connects first).
const FIRST_RUN_DELAY: Duration = Duration::from_secs(30);

/// Test hook, named as such: `FERRY_TEST_RETENTION_FIRST_RUN_MS` starts the first background
/// run that many milliseconds after start instead of [`FIRST_RUN_DELAY`] (the crash tests kill
/// ferryd during it). ferryd logs loudly when it is set.
fn first_run_delay() -> Duration {
    match std::env::var("FERRY_TEST_RETENTION_FIRST_RUN_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(ms) => {
            tracing::warn!(
                ms,
                "FERRY_TEST_RETENTION_FIRST_RUN_MS is set: first consolidation early (tests only)"
            );
            Duration::from_millis(ms)
        }
        None => FIRST_RUN_DELAY,
    }
}

/// The target as the pipeline connected to it.
pub type Vault = (Arc<dyn ObjectStorage>, Keyring);

pub struct Retention {
    /// Set once the target is connected (a storage client of its own; see the header).
    pub vault: OnceLock<Vault>,
    /// Where runs execute, at the lower weight.
    runtime: NicedRuntime,
    /// Held by the run in progress.
    running: tokio::sync::Mutex<()>,
    /// Shared with the run in progress, which records each disk as it finishes.
    last: Arc<Mutex<RetentionStatus>>,
    scratch_dir: PathBuf,
    /// Points read by earlier runs: a run reads only the points new since (bounded, see
    /// [`KnownPoints`]).
    known_points: Arc<KnownPoints>,
}

impl Retention {
    /// `nice`: `retention.nice` as ferryd started (a change takes effect at the next start).
    pub fn new(scratch_dir: PathBuf, nice: u32) -> std::io::Result<Self> {
        let nice = i32::try_from(nice).unwrap_or(NICE_MAX).min(NICE_MAX);
        Ok(Self {
            vault: OnceLock::new(),
            runtime: NicedRuntime::start("ferry-retention", Some(1), Lowered::AtLeast(nice))?,
            running: tokio::sync::Mutex::new(()),
            last: Arc::new(Mutex::new(RetentionStatus::default())),
            scratch_dir,
            known_points: Arc::new(KnownPoints::default()),
        })
    }

    /// What the last run found (for status, metrics and alerts).
    pub fn status(&self) -> RetentionStatus {
        let mut status = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        status.running = self.running.try_lock().is_err();
        status
    }

    /// One run over the vault (or one disk), after any run in progress.
    pub async fn run(&self, config: &ApplianceConfig, request: &RunRequest) -> Result<Vec<DiskSummary>> {
        let Some((storage, keyring)) = self.vault.get() else {
            anyhow::bail!("the target is not connected yet; retry when `ferryctl status` shows no target error");
        };
        let _running = self.running.lock().await;
        let options = Options {
            now_unix_ms: ferry_client::clock::now_unix_ms(),
            dry_run: request.dry_run,
            parallel: request
                .parallel
                .unwrap_or(config.retention.parallel as usize)
                .clamp(1, 64),
            scratch_dir: self.scratch_dir.clone(),
            known_points: Some(self.known_points.clone()),
        };
        let started = std::time::Instant::now();
        let task = {
            let (storage, keyring, retention, options, only, last) = (
                storage.clone(),
                keyring.clone(),
                config.retention.clone(),
                options.clone(),
                request.disk,
                self.last.clone(),
            );
            // Each disk shows in status as soon as it is done (a run over many disks is long).
            let progress = move |summary: &DiskSummary, done: usize, total: usize| {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                (last.run_disks_done, last.run_disks_total) = (done as u64, total as u64);
                if !summary.dry_run {
                    tracing::info!(
                        disk = %summary.disk_id,
                        done,
                        total,
                        base_seq = ?summary.base_seq,
                        kept = summary.points_kept,
                        points_read = summary.points_read,
                        dropped = summary.points_dropped,
                        deleted = summary.objects_deleted,
                        stored_before = summary.stored_bytes_before,
                        stored_after = summary.stored_bytes_after,
                        error = summary.error.as_deref().unwrap_or(""),
                        "consolidated"
                    );
                    record(&mut last, summary);
                }
            };
            self.runtime
                .handle()
                .spawn(async move { consolidate_all(storage, &keyring, &retention, &options, only, progress).await })
        };
        // A run whose caller goes away (ferryd stopping) stops too; the next run finishes it.
        let _stop_with_caller = AbortOnDrop(task.abort_handle());
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("the consolidation task failed: {e}")),
        };
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.runs += 1;
        (last.run_disks_done, last.run_disks_total) = (0, 0);
        match &result {
            Ok(summaries) => {
                last.last_error = summaries
                    .iter()
                    .find_map(|s| s.error.as_ref().map(|e| format!("disk {}: {e}", s.disk_id)));
            }
            Err(e) => last.last_error = Some(format!("{e:#}")),
        }
        if !request.dry_run {
            last.last_run_unix_ms = Some(options.now_unix_ms);
            last.last_run_secs = started.elapsed().as_secs_f64();
        }
        if last.last_error.is_some() {
            last.failures += 1;
        }
        result
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps what a disk's run found (a failed disk keeps its earlier figures, with the error).
fn record(last: &mut RetentionStatus, summary: &DiskSummary) {
    let entry = match last.disks.iter_mut().find(|d| d.disk_id == summary.disk_id) {
        Some(entry) => entry,
        None => {
            last.disks.push(RetentionDisk {
                disk_id: summary.disk_id,
                ..Default::default()
            });
            last.disks.last_mut().expect("just pushed")
        }
    };
    entry.error = summary.error.clone();
    if summary.error.is_some() {
        return;
    }
    entry.base_seq = summary.base_seq;
    entry.stored_bytes = summary.stored_bytes_after;
    entry.oldest_point = summary.oldest_point.as_ref().map(|(id, _)| id.clone());
    entry.oldest_point_source_unix_ms = summary.oldest_point.as_ref().map(|(_, time)| *time);
    entry.pinned_beyond_window = summary.pinned_beyond_window.clone();
}

/// Runs consolidation every `retention.run_every` of the configuration as tuned now (0: never
/// in the background), until `stopped`.
pub async fn run_in_background(
    retention: Arc<Retention>,
    tuned: Arc<Mutex<ApplianceConfig>>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = first_run_delay();
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let config = tuned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let every = config.retention.run_every.duration();
        if every.is_zero() {
            wait = Duration::from_secs(60); // looked at again: `run_every` may be tuned
            continue;
        }
        if retention.vault.get().is_none() {
            wait = Duration::from_secs(1); // the pipeline has not connected yet
            continue;
        }
        let request = RunRequest::default();
        tokio::select! {
            _ = stopped.changed() => return, // a run cut short is finished by the next one
            result = retention.run(&config, &request) => {
                if let Err(e) = result {
                    tracing::warn!(error = %format!("{e:#}"), "consolidation failed; the next run retries");
                }
            }
        }
        wait = every;
    }
}
