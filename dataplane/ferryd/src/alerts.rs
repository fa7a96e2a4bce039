//! Health alerts, with Azure Site Recovery's process-server thresholds as configurable
//! defaults (`[alerts]` in ferry.toml). Each alert has a stable code, a severity and a plain
//! message; `ferryctl status` shows them and the health is the worst severity.
//!
//! | code              | when                                                        |
//! |-------------------|-------------------------------------------------------------|
//! | `cpu_high`        | machine CPU above the warning / critical share, sustained   |
//! | `memory_high`     | machine memory in use above the share, sustained            |
//! | `cache_free_low`  | free cache space below the warning / critical share         |
//! | `ingest_throttled`| free cache space below `throttle_free_percent`: new batches get 503 |
//! | `drain_time_high` | the backlog would take longer than the thresholds to upload |
//! | `rpo_exceeded`    | a disk's RPO above `rpo_threshold_secs` (one alert per disk)|
//! | `upload_failing`  | uploads fail (target unreachable, credentials refused, ...) |
//! | `draining`        | new data is refused: `ferryctl drain` (or shutting down)     |
//! | `retention_unmet` | a pinned point is older than the window (one alert per disk) |
//! | `retention_failing`| the last consolidation failed (storage errors, damage)     |
//!
//! [`evaluate`] is a pure function of measured inputs (tested directly); [`SystemMonitor`]
//! samples /proc every 5 s and keeps `sustained_secs` of samples to decide "sustained".

use ferry_client::control::{Alert, Health, Severity};
use ferry_config::config::AlertsConfig;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the alerts are decided from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub cache_used_bytes: u64,
    pub cache_limit_bytes: u64,
    pub drain_eta_secs: Option<f64>,
    /// (disk name, RPO seconds) of disks that have a restorable point.
    pub disk_rpos: Vec<(String, f64)>,
    /// The lowest CPU and memory use over the sustained window, when the window is full.
    pub cpu_sustained_percent: Option<f64>,
    pub memory_sustained_percent: Option<f64>,
    pub upload_failure: Option<String>,
    /// Why new data is refused, if it is.
    pub draining: Option<crate::admission::Refusal>,
    /// (disk, pinned points older than the window) from the last consolidation.
    pub pinned_beyond_window: Vec<(String, Vec<String>)>,
    /// Why the last consolidation failed.
    pub retention_failure: Option<String>,
}

fn alert(code: &str, severity: Severity, message: String) -> Alert {
    Alert {
        code: code.to_string(),
        severity,
        message,
    }
}

/// The share of the cache that is free, in percent (100 when there is no limit).
pub fn cache_free_percent(used: u64, limit: u64) -> f64 {
    if limit == 0 {
        return 100.0;
    }
    limit.saturating_sub(used) as f64 * 100.0 / limit as f64
}

pub fn evaluate(config: &AlertsConfig, inputs: &Inputs) -> Vec<Alert> {
    let mut alerts = Vec::new();
    let level = |value: f64, warning: u32, critical: u32| {
        if value >= f64::from(critical) {
            Some(Severity::Critical)
        } else if value >= f64::from(warning) {
            Some(Severity::Warning)
        } else {
            None
        }
    };
    let sustained = Duration::from_secs(config.sustained_secs);
    if let Some(cpu) = inputs.cpu_sustained_percent {
        if let Some(severity) = level(cpu, config.cpu_warning_percent, config.cpu_critical_percent) {
            alerts.push(alert(
                "cpu_high",
                severity,
                format!(
                    "CPU use has stayed at or above {cpu:.0}% for {} min",
                    sustained.as_secs() / 60
                ),
            ));
        }
    }
    if let Some(memory) = inputs.memory_sustained_percent {
        if let Some(severity) = level(memory, config.memory_warning_percent, config.memory_critical_percent) {
            alerts.push(alert(
                "memory_high",
                severity,
                format!(
                    "memory use has stayed at or above {memory:.0}% for {} min",
                    sustained.as_secs() / 60
                ),
            ));
        }
    }
    let free = cache_free_percent(inputs.cache_used_bytes, inputs.cache_limit_bytes);
    if inputs.cache_limit_bytes > 0 {
        let severity = if free < f64::from(config.cache_free_critical_percent) {
            Some(Severity::Critical)
        } else if free < f64::from(config.cache_free_warning_percent) {
            Some(Severity::Warning)
        } else {
            None
        };
        if let Some(severity) = severity {
            alerts.push(alert(
                "cache_free_low",
                severity,
                format!("only {free:.0}% of the cache is free; uploads are not keeping up with ingest"),
            ));
        }
        if config.throttle_free_percent > 0 && free < f64::from(config.throttle_free_percent) {
            alerts.push(alert(
                "ingest_throttled",
                Severity::Critical,
                format!(
                    "less than {}% of the cache is free: new batches are refused (503, agents retry) until uploads free space",
                    config.throttle_free_percent
                ),
            ));
        }
    }
    if let Some(eta) = inputs.drain_eta_secs {
        let severity = if eta > config.drain_critical_secs as f64 {
            Some(Severity::Critical)
        } else if eta > config.drain_warning_secs as f64 {
            Some(Severity::Warning)
        } else {
            None
        };
        if let Some(severity) = severity {
            alerts.push(alert(
                "drain_time_high",
                severity,
                format!(
                    "uploading the cached backlog would take about {:.0} min at the current rate",
                    eta / 60.0
                ),
            ));
        }
    }
    for (name, rpo) in &inputs.disk_rpos {
        if *rpo > config.rpo_threshold_secs as f64 {
            alerts.push(alert(
                "rpo_exceeded",
                Severity::Warning,
                format!(
                    "disk {name}: RPO {:.0} min is above the {:.0} min threshold",
                    rpo / 60.0,
                    config.rpo_threshold_secs as f64 / 60.0
                ),
            ));
        }
    }
    if let Some(reason) = &inputs.upload_failure {
        alerts.push(alert(
            "upload_failing",
            Severity::Warning,
            format!("uploads are failing: {reason}"),
        ));
    }
    match inputs.draining {
        Some(crate::admission::Refusal::Maintenance) => alerts.push(alert(
            "draining",
            Severity::Warning,
            "draining for maintenance: new data is refused (agents keep it and retry) while the cache \
             uploads; `ferryctl drain --resume` accepts data again"
                .into(),
        )),
        Some(crate::admission::Refusal::ShuttingDown) => alerts.push(alert(
            "draining",
            Severity::Warning,
            "shutting down: new data is refused while requests in flight finish".into(),
        )),
        None => {}
    }
    for (disk, pins) in &inputs.pinned_beyond_window {
        alerts.push(alert(
            "retention_unmet",
            Severity::Warning,
            format!(
                "disk {disk}: pinned points older than the retention window hold its history (and storage) \
                 back: {}; `ferryctl points unpin` lets the next run prune them",
                pins.join(", ")
            ),
        ));
    }
    if let Some(reason) = &inputs.retention_failure {
        alerts.push(alert(
            "retention_failing",
            Severity::Warning,
            format!("consolidation failed (every kept point stays restorable; the next run retries): {reason}"),
        ));
    }
    alerts
}

/// The worst severity among `alerts` (ok when none).
pub fn health(alerts: &[Alert]) -> Health {
    if alerts.iter().any(|a| a.severity == Severity::Critical) {
        Health::Critical
    } else if alerts.iter().any(|a| a.severity == Severity::Warning) {
        Health::Warning
    } else {
        Health::Ok
    }
}

/// Machine CPU and memory use, sampled from /proc.
pub struct SystemMonitor {
    sustained: Duration,
    samples: Mutex<VecDeque<(Instant, f64, f64)>>,
    last_cpu: Mutex<Option<(u64, u64)>>,
}

impl SystemMonitor {
    pub fn new(sustained: Duration) -> Self {
        Self {
            sustained,
            samples: Mutex::new(VecDeque::new()),
            last_cpu: Mutex::new(None),
        }
    }

    /// Records one sample (CPU and memory use in percent).
    pub fn record(&self, at: Instant, cpu: f64, memory: f64) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back((at, cpu, memory));
        while samples
            .front()
            .is_some_and(|(first, _, _)| at.duration_since(*first) > self.sustained + Duration::from_secs(10))
        {
            samples.pop_front();
        }
    }

    /// The lowest (CPU, memory) over the sustained window, once samples cover it.
    pub fn sustained(&self, now: Instant) -> (Option<f64>, Option<f64>) {
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let window: Vec<_> = samples
            .iter()
            .filter(|(at, _, _)| now.duration_since(*at) <= self.sustained)
            .collect();
        let covered = samples
            .front()
            .is_some_and(|(first, _, _)| now.duration_since(*first) >= self.sustained);
        if !covered || window.is_empty() {
            return (None, None);
        }
        let min = |pick: fn(&(Instant, f64, f64)) -> f64| window.iter().map(|s| pick(s)).fold(f64::MAX, f64::min);
        (Some(min(|s| s.1)), Some(min(|s| s.2)))
    }

    /// Reads /proc/stat and /proc/meminfo; CPU is the busy share since the previous call.
    pub fn sample_proc(&self) {
        let Some((busy, total)) = read_cpu() else {
            return;
        };
        let memory = read_memory_percent().unwrap_or(0.0);
        let mut last = self.last_cpu.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((last_busy, last_total)) = *last {
            let span = total.saturating_sub(last_total).max(1);
            let cpu = busy.saturating_sub(last_busy) as f64 * 100.0 / span as f64;
            self.record(Instant::now(), cpu, memory);
        }
        *last = Some((busy, total));
    }
}

/// (busy, total) jiffies of all CPUs.
fn read_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let values: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

fn read_memory_percent() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    Some((total - available) * 100.0 / total.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(alerts: &[Alert]) -> Vec<(String, Severity)> {
        alerts.iter().map(|a| (a.code.clone(), a.severity)).collect()
    }

    #[test]
    fn thresholds_give_the_documented_alerts() {
        let config = AlertsConfig::default();
        let quiet = Inputs {
            cache_used_bytes: 10,
            cache_limit_bytes: 100,
            ..Inputs::default()
        };
        assert!(evaluate(&config, &quiet).is_empty());
        assert_eq!(health(&evaluate(&config, &quiet)), Health::Ok);
        let pair = |c: &str, s: Severity| (c.to_string(), s);
        let at = |used| Inputs {
            cache_used_bytes: used,
            cache_limit_bytes: 100,
            ..Inputs::default()
        };
        assert_eq!(
            codes(&evaluate(&config, &at(71))),
            vec![pair("cache_free_low", Severity::Warning)]
        );
        assert_eq!(
            codes(&evaluate(&config, &at(76))),
            vec![pair("cache_free_low", Severity::Critical)]
        );
        assert_eq!(
            codes(&evaluate(&config, &at(81))),
            vec![
                pair("cache_free_low", Severity::Critical),
                pair("ingest_throttled", Severity::Critical)
            ]
        );
        let busy = Inputs {
            cpu_sustained_percent: Some(85.0),
            memory_sustained_percent: Some(96.0),
            drain_eta_secs: Some(2000.0),
            disk_rpos: vec![("sda".into(), 1000.0), ("sdb".into(), 10.0)],
            upload_failure: Some("credentials refused".into()),
            ..Inputs::default()
        };
        let alerts = evaluate(&config, &busy);
        assert_eq!(
            codes(&alerts),
            vec![
                pair("cpu_high", Severity::Warning),
                pair("memory_high", Severity::Critical),
                pair("drain_time_high", Severity::Warning),
                pair("rpo_exceeded", Severity::Warning),
                pair("upload_failing", Severity::Warning),
            ]
        );
        assert!(alerts[3].message.contains("sda"));
        assert_eq!(health(&alerts), Health::Critical);
        let drained = Inputs {
            draining: Some(crate::admission::Refusal::Maintenance),
            ..Inputs::default()
        };
        let alerts = evaluate(&config, &drained);
        assert_eq!(codes(&alerts), vec![pair("draining", Severity::Warning)]);
        let retention = Inputs {
            pinned_beyond_window: vec![("sda".into(), vec!["audit-1".into()])],
            retention_failure: Some("cannot list the log".into()),
            ..Inputs::default()
        };
        let retention_alerts = evaluate(&config, &retention);
        assert_eq!(
            codes(&retention_alerts),
            vec![
                pair("retention_unmet", Severity::Warning),
                pair("retention_failing", Severity::Warning)
            ]
        );
        assert!(retention_alerts[0].message.contains("audit-1"));
        assert!(
            alerts[0].message.contains("ferryctl drain --resume"),
            "{}",
            alerts[0].message
        );
    }

    #[test]
    fn sustained_means_the_whole_window() {
        let monitor = SystemMonitor::new(Duration::from_secs(60));
        let start = Instant::now();
        monitor.record(start, 90.0, 50.0);
        assert_eq!(
            monitor.sustained(start + Duration::from_secs(30)),
            (None, None),
            "not covered yet"
        );
        for s in (5..=60).step_by(5) {
            monitor.record(start + Duration::from_secs(s), if s == 30 { 40.0 } else { 90.0 }, 50.0);
        }
        let (cpu, memory) = monitor.sustained(start + Duration::from_secs(60));
        assert_eq!((cpu, memory), (Some(40.0), Some(50.0)), "one dip breaks the streak");
        for s in (65..=130).step_by(5) {
            monitor.record(start + Duration::from_secs(s), 92.0, 50.0);
        }
        assert_eq!(monitor.sustained(start + Duration::from_secs(130)).0, Some(92.0));
    }
}
