//! `ferry-perf run`: start (or reach) ferryd, run the scenario's simulated agents, sample
//! ferryd's `uploaded_seq` for every disk to measure upload throughput and the lag from
//! acknowledgement to storage, wait for the backlog to drain, and report.

use anyhow::Context;
use futures::stream::StreamExt;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::limits::Limits;
use crate::load::{self, Counters, Disk, LoadShared};
use crate::scenario::Scenario;
use crate::server::{self, Ferryd};

/// Longest wait for ferryd to upload the backlog after the load stops.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// The drain rate is the pipeline's own only when the backlog at the load's end would take at
/// least this long at the rate uploads kept while loaded; a smaller backlog drains at the
/// pace of the flush delays (quiet disks), which says nothing about the pipeline.
const DRAIN_MEASURABLE: Duration = Duration::from_secs(10);
/// With `hold_uploads_mb`: the overload is compared with the drain after it only when the
/// backlog at the load's end would take at least this long at the overload's upload rate.
const OVERLOAD_DRAIN_MEASURABLE: Duration = Duration::from_secs(2);

/// One point of the time series (one per poll).
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub t_secs: f64,
    pub ingest_mb_per_s: f64,
    pub upload_mb_per_s: f64,
    /// Largest ack-to-upload lag among batches seen uploaded in this interval.
    pub lag_secs: Option<f64>,
    /// Acknowledged but not yet uploaded, MB.
    pub backlog_mb: f64,
    /// Uploaded since the start, MB.
    pub uploaded_mb: f64,
}

/// With `hold_uploads_mb`: the pipeline working through a backlog while the load goes on,
/// against the same pipeline draining the rest alone after it, in the same run.
#[derive(Clone, Debug, Serialize)]
pub struct Overload {
    /// When the hold was let go (the backlog had reached `hold_uploads_mb`), from the start.
    pub lifted_at_secs: f64,
    /// When the load was told to stop (the backlog was down to half), or the load's end.
    pub stopped_at_secs: f64,
    /// From the lift to the stop: uploads, acknowledged ingest, and the smallest backlog
    /// polled (above 0: the pipeline had work the whole time).
    pub upload_mb_per_s: f64,
    pub ingest_mb_per_s: f64,
    pub min_backlog_mb: f64,
    /// What the drain started with.
    pub backlog_at_load_end_mb: f64,
    /// After the load: uploads until the backlog was down to a tenth of what it was at the
    /// load's end (the tail after that drains at the pace of quiet disks' flush delays, which
    /// says nothing about the pipeline). None when no poll saw the backlog that low.
    pub drain_mb_per_s: Option<f64>,
    /// Overload over drain (issue 11's goal: at least 0.9); None when the drain had less than
    /// `OVERLOAD_DRAIN_MEASURABLE` of work.
    pub vs_drain: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub machine: String,
    pub disks: usize,
    /// Where the upload progress was read: `control_status` (one request a poll on ferryd's
    /// control socket) or `data_endpoint` (a request per disk beside the load).
    pub uploads_read_from: &'static str,
    /// Polls whose status could not be read, and so asked each disk instead.
    pub status_fallbacks: u64,
    pub load_seconds: f64,
    pub drain_seconds: f64,
    pub ingested_bytes: u64,
    pub uploaded_bytes: u64,
    pub batches: u64,
    pub ingest_mb_per_s: f64,
    /// Uploaded bytes over the time from the start until the backlog drained.
    pub upload_mb_per_s: f64,
    /// "Sustained": uploaded bytes while the load ran, over the load's duration.
    pub sustained_upload_mb_per_s: f64,
    /// Uploaded bytes after the load stopped, over the drain time: the pipeline alone. None
    /// when the backlog was too small to measure it (see `DRAIN_MEASURABLE`).
    pub drain_upload_mb_per_s: Option<f64>,
    /// Sustained over drain (goal: at least 0.9; under 1 when ingest starves the pipeline).
    /// None when uploads were held during the load.
    pub sustained_vs_drain: Option<f64>,
    /// With `hold_uploads`: the drain (the pipeline alone) over the `limits` ceiling on all
    /// cores.
    pub drain_vs_ceiling: Option<f64>,
    /// With `hold_uploads_mb`: None when the backlog never reached it during the load.
    pub overload: Option<Overload>,
    pub ack_ms: Percentiles,
    pub lag_ms: Percentiles,
    pub ferryd_cpu_seconds: Option<f64>,
    pub ferryd_cpu_seconds_per_gb: Option<f64>,
    /// "CPU vs ideal": ferryd's CPU per byte over the `limits` ideal per byte of the same run
    /// (s/GB and ns/B are the same unit).
    pub cpu_vs_ideal: Option<f64>,
    /// ferryd's CPU over the run as a share of the machine (all cores).
    pub ferryd_cpu_share: Option<f64>,
    pub ferryd_peak_rss_mib: Option<f64>,
    /// ferryd's CPU by thread role over the run, per byte, beside the `limits` stages that
    /// role's work is made of: where the distance to the ideal is.
    pub cpu_by_thread: Vec<ThreadCpu>,
    /// ferryd's minor page faults per GB ingested (fresh memory touched: each costs a
    /// zeroed page from the kernel).
    pub minor_faults_per_gb: Option<f64>,
    /// Data bytes over sealed bytes in the local target; for other targets ferryd's
    /// `ferry_compression_ratio` (batch bytes over sealed bytes stored).
    pub compression_ratio: Option<f64>,
    pub retries: std::collections::BTreeMap<String, u64>,
    /// Objects ferryd wrote to the target (`ferry_storage_puts_total`; each at least one billed
    /// PUT), when ferry-perf started ferryd; per GB ingested and per hour of the run.
    pub storage_puts: Option<u64>,
    pub puts_per_gb: Option<f64>,
    pub puts_per_hour: Option<f64>,
    pub limits: Option<Limits>,
    /// Ingest MB/s over the limits probe's ideal ceiling for this machine.
    pub fraction_of_ceiling: Option<f64>,
    pub samples: Vec<Sample>,
}

/// One thread role's CPU in a run.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadCpu {
    /// `ferry-seal` (sealing: zstd + AES-GCM), `ferry-ingest` (TLS, HTTP/2, copy into the
    /// record, CRCs), `ferry-cache` (the cache's group commit), ..., and `other` (threads
    /// that ended during the run, such as tokio's blocking pool, and what no role covers).
    pub role: String,
    pub cpu_seconds: f64,
    /// Per byte of the role's own work: uploaded bytes for `ferry-seal`, ingested otherwise.
    pub ns_per_byte: f64,
    /// The `limits` stages that role's work is made of, per input byte, where there are
    /// such stages: zstd + AES-GCM on the compressed bytes for sealing, TLS receive for
    /// ingest.
    pub ideal_ns_per_byte: Option<f64>,
}

/// Turns the run's CPU by role ([`crate::threads::ThreadLog`]) and the page faults at its
/// start and end into [`ThreadCpu`] rows (roles with at least 1% of ferryd's CPU; the rest,
/// and what ended threads used after they were last seen, as `other`) and faults per GB.
fn cpu_by_thread(
    roles: Option<std::collections::BTreeMap<String, f64>>,
    faults: Option<(u64, u64)>,
    total_cpu: Option<f64>,
    ingested: u64,
    uploaded: u64,
    limits: Option<&Limits>,
) -> (Vec<ThreadCpu>, Option<f64>) {
    let (Some(roles), Some((faults_before, faults_after)), Some(total)) = (roles, faults, total_cpu) else {
        return (Vec::new(), None);
    };
    let gb = |bytes: u64| (bytes as f64 / 1e9).max(1e-9);
    let stage = |name: &str| {
        limits.and_then(|l| {
            l.stages
                .iter()
                .find(|s| s.name.starts_with(name))
                .map(|s| s.cpu_ns_per_byte)
        })
    };
    let ratio = limits.map_or(1.0, |l| l.compression_ratio.max(1e-9));
    let mut rows = Vec::new();
    let mut counted = 0.0;
    for (role, &seconds) in &roles {
        if seconds < total * 0.01 {
            continue;
        }
        counted += seconds;
        let (bytes, ideal) = match role.as_str() {
            "ferry-seal" => (
                uploaded,
                stage("zstd").zip(stage("AES")).map(|(zstd, aes)| zstd + aes / ratio),
            ),
            "ferry-ingest" => (ingested, stage("TLS")),
            _ => (ingested, None),
        };
        rows.push(ThreadCpu {
            role: role.clone(),
            cpu_seconds: seconds,
            ns_per_byte: seconds / gb(bytes),
            ideal_ns_per_byte: ideal,
        });
    }
    rows.sort_by(|a, b| b.cpu_seconds.total_cmp(&a.cpu_seconds));
    let other = (total - counted).max(0.0);
    rows.push(ThreadCpu {
        role: "other".into(),
        cpu_seconds: other,
        ns_per_byte: other / gb(ingested),
        ideal_ns_per_byte: None,
    });
    let faults = faults_after.saturating_sub(faults_before) as f64 / gb(ingested);
    (rows, Some(faults))
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
}

fn percentiles(h: &ferry_client::histogram::Histogram) -> Percentiles {
    let ms = |q| h.quantile(q).map(|d| d.as_secs_f64() * 1e3);
    Percentiles {
        p50: ms(0.5),
        p99: ms(0.99),
        p999: ms(0.999),
    }
}

pub struct RunOptions {
    pub poll: Duration,
    pub progress: bool,
    pub keep: bool,
    /// Reach this ferryd instead of starting one: (management, data, passphrase file, pid).
    pub existing: Option<(String, String, std::path::PathBuf, Option<u32>)>,
}

pub async fn run(scenario: Scenario, limits: Option<Limits>, options: RunOptions) -> anyhow::Result<Report> {
    scenario.validate()?;
    let ferryd: Ferryd = match &options.existing {
        Some((management, data, passphrase, pid)) => server::existing(management, data, passphrase, *pid)?,
        None => server::launch(&scenario.target, options.keep)?,
    };
    // Before the agents register: a ferryd that cannot be held is refused with nothing set up.
    let hold = if scenario.hold_uploads || scenario.hold_uploads_mb > 0 {
        Some(UploadHold::start(&ferryd).await?)
    } else {
        None
    };
    // The simulated machines (their registrations, connections and senders) run on the load
    // runtime: this one's at `load_nice` lowered, so the sampler here keeps its pace.
    let load_runtime = LoadRuntime::start(scenario.load_nice)?;
    let disks = {
        let (s, management, passphrase) = (scenario.clone(), ferryd.management.clone(), ferryd.passphrase.clone());
        load_runtime
            .handle()
            .spawn(async move { load::setup(&s, &management, &passphrase).await })
            .await
            .context("the load's setup task failed")??
    };
    let probe = UploadProbe::for_ferryd(&ferryd);
    let counters = Arc::new(Counters::default());
    let usage_before = ferryd.pid.and_then(server::process_usage);
    // ferryd's threads are looked at every poll, so threads that end during the run count too.
    let mut thread_log = crate::threads::ThreadLog::default();
    let observe_threads = |log: &mut crate::threads::ThreadLog| {
        let usage = ferryd.pid.and_then(server::thread_usage);
        usage.map(|(threads, faults)| {
            log.observe(threads);
            faults
        })
    };
    let faults_before = observe_threads(&mut thread_log);
    let shared = LoadShared::new(scenario.clone(), counters.clone())?;
    let started = shared.started;
    let senders: Vec<_> = disks
        .iter()
        .enumerate()
        .map(|(i, disk)| {
            load_runtime
                .handle()
                .spawn(load::run_disk(shared.clone(), disk.clone(), i))
        })
        .collect();
    let mut samples = Vec::new();
    let mut last = (Instant::now(), 0u64, 0u64);
    let mut load_seconds = None;
    let mut senders = futures::future::join_all(senders);
    let mut senders_done = None;
    let mut uploaded_at_load_end = None;
    // With `hold_uploads_mb`: (seconds from the start, uploaded, acked) when the hold was let go.
    let mut lifted: Option<(f64, u64, u64)> = None;
    // ... and when the load was told to stop (its senders then finish the batches in flight).
    let mut stopped: Option<(f64, u64, u64)> = None;
    let drain_deadline = |load_end: Instant| load_end + DRAIN_LIMIT;
    loop {
        tokio::select! {
            results = &mut senders, if senders_done.is_none() => {
                load_seconds = Some(started.elapsed().as_secs_f64());
                // The upload counter moves only when polled: read it now, not up to a poll ago
                // (the drain after the load is measured from here).
                poll_uploads(&probe, &disks, &counters).await;
                uploaded_at_load_end = Some(counters.uploaded_bytes.load(Ordering::Relaxed));
                if let Some(hold) = hold.as_ref().filter(|_| lifted.is_none()) {
                    hold.lift().await?;
                }
                senders_done = Some(results);
            }
            () = tokio::time::sleep(options.poll) => {}
        }
        if let Some(results) = senders_done.as_ref() {
            for result in results {
                let failure = match result {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(e) => e.to_string(),
                };
                shared.stop.store(true, Ordering::Relaxed);
                anyhow::bail!("a simulated disk failed: {failure}");
            }
        }
        let worst_lag = poll_uploads(&probe, &disks, &counters).await;
        observe_threads(&mut thread_log);
        let now = Instant::now();
        let acked = counters.acked_bytes.load(Ordering::Relaxed);
        let uploaded = counters.uploaded_bytes.load(Ordering::Relaxed);
        let dt = now.duration_since(last.0).as_secs_f64().max(1e-6);
        samples.push(Sample {
            t_secs: now.duration_since(started).as_secs_f64(),
            ingest_mb_per_s: (acked - last.1) as f64 / 1e6 / dt,
            upload_mb_per_s: (uploaded - last.2) as f64 / 1e6 / dt,
            lag_secs: worst_lag.map(|d| d.as_secs_f64()),
            backlog_mb: acked.saturating_sub(uploaded) as f64 / 1e6,
            uploaded_mb: uploaded as f64 / 1e6,
        });
        let backlog = acked.saturating_sub(uploaded);
        let hold_bytes = scenario.hold_uploads_mb.saturating_mul(1_000_000);
        if hold_bytes > 0 && load_seconds.is_none() {
            // This poll's moment, with the counters read at it.
            let polled = (now.duration_since(started).as_secs_f64(), uploaded, acked);
            match (&hold, lifted) {
                (Some(hold), None) if backlog >= hold_bytes => {
                    hold.lift().await?;
                    lifted = Some(polled);
                }
                // Down to half: the load stops, so the drain after it still has a backlog to
                // measure.
                (_, Some(_)) if stopped.is_none() && backlog <= hold_bytes / 2 => {
                    shared.stop.store(true, Ordering::Relaxed);
                    stopped = Some(polled);
                }
                _ => {}
            }
        }
        last = (now, acked, uploaded);
        if options.progress {
            progress(&scenario, &samples, load_seconds.is_some());
        }
        if let Some(load_end) = load_seconds.map(|s| started + Duration::from_secs_f64(s)) {
            if disks.iter().all(|d| d.drained()) {
                break;
            }
            if now > drain_deadline(load_end) {
                anyhow::bail!("ferryd did not upload the backlog within {} s", DRAIN_LIMIT.as_secs());
            }
        }
    }
    if options.progress {
        eprintln!();
    }
    let total_seconds = started.elapsed().as_secs_f64();
    let load_seconds = load_seconds.unwrap_or(total_seconds);
    let usage_after = ferryd.pid.and_then(server::process_usage);
    let faults_after = observe_threads(&mut thread_log);
    let ingested = counters.acked_bytes.load(Ordering::Relaxed);
    let uploaded = counters.uploaded_bytes.load(Ordering::Relaxed);
    let cpu = usage_before.zip(usage_after).map(|(b, a)| a.0 - b.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let compression_ratio = match (&ferryd.appliance, scenario.target.as_str()) {
        (Some(dir), "local") => {
            let stored = crate::procs::dir_bytes(&dir.join("target")).context("measuring the local target")?;
            (stored > 0).then(|| uploaded as f64 / stored as f64)
        }
        // Elsewhere ferryd's own count: batch bytes over sealed bytes stored.
        _ => ferryd
            .metrics
            .as_deref()
            .and_then(|address| crate::procs::scrape_metric(address, "ferry_compression_ratio"))
            .filter(|ratio| *ratio > 0.0),
    };
    let storage_puts = ferryd
        .metrics
        .as_deref()
        .and_then(|address| crate::procs::scrape_metric(address, "ferry_storage_puts_total"))
        .map(|puts| puts as u64);
    let ingest_mb_per_s = ingested as f64 / 1e6 / load_seconds;
    let drain_seconds = total_seconds - load_seconds;
    let uploaded_at_load_end = uploaded_at_load_end.unwrap_or(uploaded);
    let sustained_upload_mb_per_s = uploaded_at_load_end as f64 / 1e6 / load_seconds.max(1e-9);
    let backlog_at_load_end = ingested.saturating_sub(uploaded_at_load_end) as f64 / 1e6;
    let drain_upload_mb_per_s = (drain_seconds > 0.0
        && backlog_at_load_end >= sustained_upload_mb_per_s * DRAIN_MEASURABLE.as_secs_f64())
    .then(|| (uploaded - uploaded_at_load_end) as f64 / 1e6 / drain_seconds);
    let ferryd_cpu_seconds_per_gb = cpu.map(|c| c / (ingested as f64 / 1e9).max(1e-9));
    let (cpu_by_thread, minor_faults_per_gb) = cpu_by_thread(
        faults_before.is_some().then(|| thread_log.by_role()),
        faults_before.zip(faults_after),
        cpu,
        ingested,
        uploaded,
        limits.as_ref(),
    );
    let load_end = (load_seconds, uploaded_at_load_end, ingested);
    let overload = lifted.map(|lift| overload_of(lift, stopped.unwrap_or(load_end), load_end, &samples));
    let fraction_of_ceiling = limits.as_ref().map(|l| ingest_mb_per_s / l.ideal_mb_per_s);
    let machine = machine_description();
    let retries = counters.retries.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Report {
        disks: disks.len(),
        machine,
        load_seconds,
        drain_seconds,
        ingested_bytes: ingested,
        uploaded_bytes: uploaded,
        batches: counters.acked_batches.load(Ordering::Relaxed),
        ingest_mb_per_s,
        upload_mb_per_s: uploaded as f64 / 1e6 / total_seconds,
        sustained_upload_mb_per_s,
        drain_upload_mb_per_s,
        sustained_vs_drain: drain_upload_mb_per_s
            .filter(|d| *d > 0.0 && !scenario.hold_uploads && scenario.hold_uploads_mb == 0)
            .map(|d| sustained_upload_mb_per_s / d),
        drain_vs_ceiling: drain_upload_mb_per_s
            .zip(limits.as_ref())
            .filter(|_| scenario.hold_uploads)
            .map(|(d, l)| d / l.ideal_mb_per_s),
        overload,
        ack_ms: percentiles(&counters.ack_latency),
        lag_ms: percentiles(&counters.lag),
        ferryd_cpu_seconds: cpu,
        ferryd_cpu_seconds_per_gb,
        cpu_vs_ideal: ferryd_cpu_seconds_per_gb
            .zip(limits.as_ref())
            .map(|(per_gb, l)| per_gb / l.ideal_ns_per_byte),
        ferryd_cpu_share: cpu.map(|c| c / (total_seconds * cores)),
        ferryd_peak_rss_mib: usage_after.map(|u| u.1),
        cpu_by_thread,
        minor_faults_per_gb,
        compression_ratio,
        retries,
        storage_puts,
        uploads_read_from: probe.name(),
        status_fallbacks: probe.fallbacks(),
        puts_per_gb: storage_puts.map(|p| p as f64 / (ingested as f64 / 1e9).max(1e-9)),
        puts_per_hour: storage_puts.map(|p| p as f64 * 3600.0 / total_seconds.max(1e-9)),
        limits,
        fraction_of_ceiling,
        samples,
        scenario,
    })
}

/// Where the simulated machines run: with `load_nice` 0 the caller's runtime, otherwise a
/// runtime of their own whose threads (and the blocking threads they start) run at that nice.
/// Shut down without waiting when dropped (inside the caller's runtime, where a blocking
/// shutdown is not allowed).
struct LoadRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
}

impl LoadRuntime {
    fn start(nice: i32) -> anyhow::Result<LoadRuntime> {
        if nice == 0 {
            return Ok(LoadRuntime {
                runtime: None,
                handle: tokio::runtime::Handle::current(),
            });
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("perf-load")
            .on_thread_start(move || {
                // On Linux a thread id names one thread: this lowers the calling thread only.
                if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
                    eprintln!("ferry-perf: cannot set a load thread to nice {nice} ({e}); it keeps its weight");
                }
            })
            .build()
            .context("starting the load's runtime")?;
        Ok(LoadRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }
}

impl Drop for LoadRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The overload figures, each point `(seconds from the start, uploaded, acked)`: from the
/// lift to the stop (the load fully on; after the stop its senders only finish what is in
/// flight), and the drain from the load's end, read from the polls.
fn overload_of(
    lift: (f64, u64, u64),
    stop: (f64, u64, u64),
    load_end: (f64, u64, u64),
    samples: &[Sample],
) -> Overload {
    let (lift_secs, lift_uploaded, lift_acked) = lift;
    let (stop_secs, stop_uploaded, stop_acked) = stop;
    let (end_secs, end_uploaded, end_acked) = load_end;
    let span = (stop_secs - lift_secs).max(1e-9);
    let backlog_mb = |uploaded: u64, acked: u64| acked.saturating_sub(uploaded) as f64 / 1e6;
    let min_backlog_mb = samples
        .iter()
        .filter(|s| s.t_secs >= lift_secs && s.t_secs <= stop_secs)
        .map(|s| s.backlog_mb)
        .fold(backlog_mb(stop_uploaded, stop_acked), f64::min);
    let upload_mb_per_s = stop_uploaded.saturating_sub(lift_uploaded) as f64 / 1e6 / span;
    let backlog_at_end_mb = backlog_mb(end_uploaded, end_acked);
    let drain_mb_per_s = drain_to_a_tenth(backlog_at_end_mb, end_secs, samples);
    Overload {
        lifted_at_secs: lift_secs,
        stopped_at_secs: stop_secs,
        upload_mb_per_s,
        ingest_mb_per_s: stop_acked.saturating_sub(lift_acked) as f64 / 1e6 / span,
        min_backlog_mb,
        backlog_at_load_end_mb: backlog_at_end_mb,
        drain_mb_per_s,
        // A backlog smaller than two seconds of uploads drains partly at the pace of the flush
        // delays (1 s), which says nothing about the pipeline.
        vs_drain: drain_mb_per_s
            .filter(|d| *d > 0.0 && backlog_at_end_mb >= upload_mb_per_s * OVERLOAD_DRAIN_MEASURABLE.as_secs_f64())
            .map(|d| upload_mb_per_s / d),
    }
}

/// The drain's rate from the load's end (`end_secs`, `backlog_mb` waiting) until a tenth of
/// that backlog is left. The moment it crossed a tenth is interpolated between the two polls
/// around it (nothing is acknowledged after the load, so the backlog falls exactly as uploads
/// rise): with a poll a second and a drain of a few seconds, taking the first poll under a
/// tenth would understate the rate by up to a third.
fn drain_to_a_tenth(backlog_mb: f64, end_secs: f64, samples: &[Sample]) -> Option<f64> {
    let tenth = backlog_mb / 10.0;
    let mut before = (end_secs, backlog_mb);
    for sample in samples.iter().filter(|s| s.t_secs > end_secs) {
        if sample.backlog_mb <= tenth {
            let (t0, b0) = before;
            let fall = (b0 - sample.backlog_mb).max(1e-9);
            let crossed = t0 + (sample.t_secs - t0) * ((b0 - tenth) / fall).clamp(0.0, 1.0);
            return Some((backlog_mb - tenth) / (crossed - end_secs).max(1e-9));
        }
        before = (sample.t_secs, sample.backlog_mb);
    }
    None
}

/// Where the sampler reads every disk's `uploaded_seq`.
enum UploadProbe {
    /// ferryd's control socket, when ferry-perf made the appliance: one `GET /v1/status` a
    /// poll, answered on ferryd's main runtime. The load's own endpoint carries none of it.
    /// Counts the polls that fell back to asking each disk.
    Status(ferry_client::control::ControlClient, std::sync::atomic::AtomicU64),
    /// `GET /v1/disks/{id}` for each disk on the data endpoint, for a ferryd reached with
    /// `--management`: those requests go through the ingest path beside the load and their
    /// CPU counts as ferryd's (in asr-sizing, 675 a second against 134 batches).
    PerDisk,
}

impl UploadProbe {
    fn for_ferryd(ferryd: &Ferryd) -> UploadProbe {
        match ferryd.appliance.as_deref().map(control_client) {
            Some(Ok(control)) => UploadProbe::Status(control, Default::default()),
            Some(Err(e)) => {
                eprintln!("warning: reading uploads per disk, not from the control socket: {e:#}");
                UploadProbe::PerDisk
            }
            None => UploadProbe::PerDisk,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            UploadProbe::Status(..) => "control_status",
            UploadProbe::PerDisk => "data_endpoint",
        }
    }

    fn fallbacks(&self) -> u64 {
        match self {
            UploadProbe::Status(_, fallbacks) => fallbacks.load(Ordering::Relaxed),
            UploadProbe::PerDisk => 0,
        }
    }
}

/// The control socket of the appliance ferry-perf made in `appliance`.
fn control_client(appliance: &std::path::Path) -> anyhow::Result<ferry_client::control::ControlClient> {
    let layout = ferry_config::ApplianceLayout::new(appliance);
    let config = ferry_config::config::ApplianceConfig::load(&layout.config_file())
        .with_context(|| format!("reading {}", layout.config_file().display()))?;
    Ok(ferry_client::control::ControlClient::new(
        &layout.resolve(&config.server.control_socket),
    ))
}

/// Reads every disk's `uploaded_seq` through `probe`; the largest lag seen. A status that
/// cannot be read falls back to asking each disk, so a poll is never lost.
async fn poll_uploads(probe: &UploadProbe, disks: &[Arc<Disk>], counters: &Arc<Counters>) -> Option<Duration> {
    if let UploadProbe::Status(control, fallbacks) = probe {
        match control.status().await {
            Ok(status) => {
                let uploaded: std::collections::HashMap<uuid::Uuid, u64> =
                    status.disks.iter().map(|d| (d.disk_id, d.uploaded_seq)).collect();
                return disks
                    .iter()
                    .filter_map(|disk| {
                        uploaded
                            .get(&disk.disk_id)
                            .and_then(|&seq| disk.uploaded(seq, counters))
                    })
                    .max();
            }
            Err(e) => {
                fallbacks.fetch_add(1, Ordering::Relaxed);
                eprintln!("warning: cannot read ferryd's status ({e}); asking each disk");
            }
        }
    }
    futures::stream::iter(disks.iter().filter(|d| !d.drained()))
        .map(|disk| async move {
            let info = disk.client.get_disk(disk.disk_id).await.ok()?;
            disk.uploaded(info.uploaded_seq, counters)
        })
        .buffer_unordered(64)
        .fold(None, |worst, lag| async move { worst.max(lag) })
        .await
}

fn progress(scenario: &Scenario, samples: &[Sample], draining: bool) {
    let Some(last) = samples.last() else {
        return;
    };
    let total = scenario.duration_secs.max(1.0);
    let done = (last.t_secs / total).min(1.0);
    let bar: String = (0..30)
        .map(|i| if (i as f64) < done * 30.0 { '#' } else { '.' })
        .collect();
    let phase = if draining { "draining" } else { "loading" };
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let line = format!(
        "[{bar}] {:>5.0} s {phase}: ingest {:>6.0} MB/s, upload {:>6.0} MB/s, backlog {:>7.0} MB",
        last.t_secs, last.ingest_mb_per_s, last.upload_mb_per_s, last.backlog_mb
    );
    if tty {
        eprint!("\r{line}");
    } else if samples.len().is_multiple_of(5) {
        eprintln!("{line}");
    }
}

/// CPU model and core count, for the report.
pub fn machine_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores")
}

/// `hold_uploads`: ferryd's bandwidth cap set low through its control socket for the load,
/// then put back to what it was.
struct UploadHold {
    control: ferry_client::control::ControlClient,
    cap_before: u64,
}

impl UploadHold {
    async fn start(ferryd: &Ferryd) -> anyhow::Result<UploadHold> {
        let appliance = ferryd.appliance.as_ref().context(
            "hold_uploads and hold_uploads_mb need a ferryd that ferry-perf starts (its control socket is in the appliance it makes)",
        )?;
        let control = control_client(appliance)?;
        let cap_before = control
            .tune_state()
            .await
            .context("reading ferryd's tunables")?
            .values
            .bandwidth_cap_bytes_per_sec;
        let hold = UploadHold { control, cap_before };
        hold.set_cap(crate::scenario::HOLD_CAP_BYTES_PER_SEC).await?;
        Ok(hold)
    }

    async fn lift(&self) -> anyhow::Result<()> {
        self.set_cap(self.cap_before).await
    }

    async fn set_cap(&self, cap: u64) -> anyhow::Result<()> {
        use ferry_client::control::{Tunable, TuneRequest};
        let request = TuneRequest::one(Tunable::BandwidthCapBytesPerSec, cap);
        self.control
            .tune(&request)
            .await
            .context("setting ferryd's upload cap")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_secs: f64, backlog_mb: f64) -> Sample {
        Sample {
            t_secs,
            ingest_mb_per_s: 0.0,
            upload_mb_per_s: 0.0,
            lag_secs: None,
            backlog_mb,
            uploaded_mb: 0.0,
        }
    }

    #[test]
    fn the_drain_rate_is_read_at_the_moment_a_tenth_was_left() {
        // 1000 MB at the load's end (10 s), drained at 300 MB/s, polled at 11, 12 and 13.2 s:
        // a tenth (100 MB) was left at 13.0 s. The first poll under a tenth alone would say
        // 900 MB in 3.2 s (281 MB/s).
        let samples = [
            sample(9.0, 5000.0),
            sample(11.0, 700.0),
            sample(12.0, 400.0),
            sample(13.2, 40.0),
        ];
        let rate = drain_to_a_tenth(1000.0, 10.0, &samples).unwrap();
        assert!((rate - 300.0).abs() < 1e-6, "{rate}");
        // Never down to a tenth: no rate.
        assert_eq!(drain_to_a_tenth(1000.0, 10.0, &samples[..3]), None);
        // Down to a tenth by the first poll: the span from the load's end to the crossing.
        let rate = drain_to_a_tenth(1000.0, 10.0, &[sample(11.0, 0.0)]).unwrap();
        assert!((rate - 1000.0).abs() < 1e-6, "{rate}");
    }
}
