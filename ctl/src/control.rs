//! Commands that ask a running ferryd over its control socket (ferry_client::control):
//! `status`, `disks`, `machines`. The socket is found from the appliance's ferry.toml
//! (`server.control_socket`, relative to the appliance directory).

use anyhow::Context;
use clap::Args;
use ferry_client::control::{ControlClient, Status};
use ferry_config::config::ApplianceConfig;
use ferry_config::layout::ApplianceLayout;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ApplianceArg {
    /// The appliance directory ferryd runs on.
    #[arg(long, default_value = "/var/lib/ferry")]
    pub config: PathBuf,
}

impl ApplianceArg {
    pub fn client(&self) -> anyhow::Result<ControlClient> {
        let layout = ApplianceLayout::new(&self.config);
        let config = ApplianceConfig::load(&layout.config_file())
            .with_context(|| format!("reading the appliance at {}", self.config.display()))?;
        Ok(ControlClient::new(&layout.resolve(&config.server.control_socket)))
    }
}

/// The registered machine `text` names (its id or a unique prefix of it), among `machines`.
pub fn registered_machine(machines: &[ferry_client::control::MachineInfo], text: &str) -> anyhow::Result<uuid::Uuid> {
    let prefix = text.trim().to_ascii_lowercase();
    let matching: Vec<uuid::Uuid> = machines
        .iter()
        .map(|m| m.machine_id)
        .filter(|id| !prefix.is_empty() && id.to_string().starts_with(&prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => anyhow::bail!("no machine registered here matches {text:?} (ferryctl machines lists them)"),
        many => anyhow::bail!("{text:?} is the start of {} machine ids; give more of it", many.len()),
    }
}

/// The control client of the ferryd running on appliance `config`, if one runs there.
pub fn running_ferryd(config: Option<&PathBuf>) -> anyhow::Result<Option<ControlClient>> {
    let Some(dir) = config else { return Ok(None) };
    let layout = ApplianceLayout::new(dir);
    let appliance = ApplianceConfig::load(&layout.config_file())?;
    let client = ControlClient::new(&layout.resolve(&appliance.server.control_socket));
    Ok(client.answers().then_some(client))
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub appliance: ApplianceArg,
    /// Refresh every N seconds (default 2) until interrupted.
    #[arg(long, num_args = 0..=1, default_missing_value = "2", value_name = "SECS")]
    pub watch: Option<u64>,
}

pub(crate) fn mb(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.0} KiB", b as f64 / 1024.0),
    }
}

fn duration(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn short(id: &uuid::Uuid) -> String {
    id.to_string()[..8].to_string()
}

pub fn render_disks(status: &Status) -> String {
    let mut out = format!(
        "{:<10} {:<20} {:<10} {:>10} {:>10} {:>11} {:>9}  {}\n",
        "DISK", "NAME", "MACHINE", "DURABLE", "UPLOADED", "BACKLOG", "RPO", "STATE"
    );
    for d in &status.disks {
        out.push_str(&format!(
            "{:<10} {:<20} {:<10} {:>10} {:>10} {:>11} {:>9}  {}\n",
            short(&d.disk_id),
            d.name,
            short(&d.machine_id),
            d.durable_seq,
            d.uploaded_seq,
            mb(d.backlog_bytes),
            d.rpo_secs.map_or("-".into(), duration),
            d.state
        ));
        if let Some(error) = &d.error {
            out.push_str(&format!("           {error}\n"));
        }
    }
    if status.disks.is_empty() {
        out.push_str("(no disks yet)\n");
    }
    out
}

pub fn render_status(status: &Status) -> String {
    let c = &status.cache;
    let mut out = format!(
        "ferryd {}, up {}: {}{}\n",
        status.version,
        duration(status.uptime_secs as f64),
        status.health,
        if status.draining {
            ", DRAINING: new data is refused until `ferryctl drain --resume`"
        } else {
            ""
        }
    );
    out.push_str(&format!(
        "leases     {} disk(s) held here{}\n",
        status.leases_held,
        if status.disks_lost > 0 {
            format!(
                "; {} taken over by other process servers since start",
                status.disks_lost
            )
        } else {
            String::new()
        }
    ));
    match (&status.config_server, status.process_servers.as_slice()) {
        (Some(config_server), _) => out.push_str(&format!(
            "role       process server of the site of the configuration server at {config_server}\n"
        )),
        (None, []) => {}
        (None, servers) => {
            out.push_str(&format!(
                "role       configuration server of a site with {} more process server(s):\n",
                servers.len()
            ));
            for server in servers {
                out.push_str(&format!(
                    "             {} at {}: {} machine(s) placed there\n",
                    server.name, server.data_endpoint, server.machines
                ));
            }
        }
    }
    if let Some(error) = &status.target_error {
        out.push_str(&format!("target     {error}\n"));
    }
    out.push_str(&format!(
        "cache      {} used of {} ({} free, {} engine); backlog {}{}\n",
        mb(c.used_bytes),
        mb(c.limit_bytes),
        mb(c.free_bytes),
        c.engine,
        mb(c.backlog_bytes),
        c.drain_eta_secs
            .map_or(String::new(), |s| format!(", drains in about {}", duration(s)))
    ));
    for (name, rates) in [("ingest", &status.ingest), ("upload", &status.upload)] {
        out.push_str(&format!(
            "{name:<10} {:.1} MB/s over 10 s, {:.1} MB/s over 1 min\n",
            rates.last_10s_mb_per_s, rates.last_60s_mb_per_s
        ));
    }
    let errors = if status.upload_errors.is_empty() {
        "none".to_string()
    } else {
        status
            .upload_errors
            .iter()
            .map(|(reason, n)| format!("{reason}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let u = &status.utilisation;
    out.push_str(&format!(
        "workers    sealing {:.0}% busy over 10 s ({} threads); uploads {} of {} in flight\n",
        u.seal_busy_10s * 100.0,
        u.seal_workers,
        u.uploads_in_flight,
        u.upload_concurrency
    ));
    out.push_str(&format!(
        "objects    {} written since start (each at least one billed PUT); {:.0} per hour over 1 min\n",
        status.storage_puts, status.storage_puts_per_hour
    ));
    out.push_str(&format!("upload errors since start: {errors}\n"));
    out.push_str(&render_retention(&status.retention));
    for alert in &status.alerts {
        out.push_str(&format!(
            "{:<8}   {} ({})\n",
            alert.severity.as_str().to_uppercase(),
            alert.message,
            alert.code
        ));
    }
    out.push('\n');
    out.push_str(&render_disks(status));
    out
}

/// ": 12 of 64 disks done" while a run is under way (nothing before its first disk is done).
fn run_progress(retention: &ferry_client::control::RetentionStatus) -> String {
    if retention.run_disks_total == 0 {
        return String::new();
    }
    format!(
        ": {} of {} disks done",
        retention.run_disks_done, retention.run_disks_total
    )
}

/// Retention's last run: when, and per disk the stored bytes, base and oldest point.
fn render_retention(retention: &ferry_client::control::RetentionStatus) -> String {
    let Some(last) = retention.last_run_unix_ms else {
        return format!(
            "retention  {}\n",
            if retention.running {
                format!("consolidating now (first run){}", run_progress(retention))
            } else {
                "not run yet".into()
            }
        );
    };
    let mut out = format!(
        "retention  last run {} UTC ({:.1} s){}; {} runs, {} failed\n",
        ferry_format::time::format_unix_ms(last),
        retention.last_run_secs,
        if retention.running {
            format!(", running now{}", run_progress(retention))
        } else {
            String::new()
        },
        retention.runs,
        retention.failures
    );
    for disk in &retention.disks {
        out.push_str(&format!(
            "           {}  stored {}, base seq {}, oldest point {}{}\n",
            short(&disk.disk_id),
            mb(disk.stored_bytes),
            disk.base_seq.map_or("-".into(), |s| s.to_string()),
            disk.oldest_point.as_deref().unwrap_or("-"),
            disk.oldest_point_source_unix_ms.map_or(String::new(), |t| format!(
                " ({} UTC)",
                ferry_format::time::format_unix_ms(t)
            ))
        ));
    }
    out
}

pub async fn status(args: StatusArgs, json: bool, disks_only: bool) -> anyhow::Result<()> {
    let client = args.appliance.client()?;
    loop {
        let status = client.status().await?;
        if json {
            let value = if disks_only {
                serde_json::to_string(&status.disks)?
            } else {
                serde_json::to_string(&status)?
            };
            outln!("{value}");
        } else {
            if args.watch.is_some() {
                out!("\x1b[2J\x1b[H");
            }
            if disks_only {
                out!("{}", render_disks(&status));
            } else {
                out!("{}", render_status(&status));
            }
        }
        match args.watch {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs.max(1))).await,
            None => return Ok(()),
        }
    }
}

pub async fn machines(args: ApplianceArg, json: bool) -> anyhow::Result<()> {
    let machines = args.client()?.machines().await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&machines)?);
        return Ok(());
    }
    outln!(
        "{:<38} {:<24} {:>5}  {:<24} {:<22} SENDS TO",
        "MACHINE",
        "NAME",
        "DISKS",
        "REGISTERED (UTC)",
        "FROM"
    );
    for m in &machines {
        outln!(
            "{:<38} {:<24} {:>5}  {:<24} {:<22} {}",
            m.machine_id,
            m.machine_name,
            m.disks,
            ferry_format::time::format_unix_ms(m.registered_unix_ms),
            m.registered_from,
            m.data_endpoint.as_deref().unwrap_or("this appliance")
        );
    }
    if machines.is_empty() {
        outln!("(no machines registered yet)");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    #[command(flatten)]
    pub appliance: ApplianceArg,
    /// Accept data again (ends a drain).
    #[arg(long)]
    pub resume: bool,
    /// Ask for the drain and return without waiting for the cache to empty.
    #[arg(long, conflicts_with = "resume")]
    pub no_wait: bool,
}

/// `ferryctl drain`: ferryd refuses new data (agents keep theirs and retry), uploads what is
/// cached, and this command reports progress until every disk's `uploaded_seq` has reached
/// its `durable_seq`. Ctrl-C stops waiting, not the drain; `--resume` ends it.
pub async fn drain(args: DrainArgs, json: bool) -> anyhow::Result<()> {
    let client = args.appliance.client()?;
    if args.resume {
        let status = client.resume().await?;
        if json {
            outln!("{}", serde_json::to_string(&status)?);
        } else {
            outln!("ferryd accepts data again ({})", status.health);
        }
        return Ok(());
    }
    let mut status = client.drain().await?;
    if !json {
        eprintln!("draining: ferryd refuses new data (agents keep it and retry) and uploads its cache");
    }
    let drained = |s: &Status| s.cache.backlog_bytes == 0 && s.disks.iter().all(|d| d.uploaded_seq >= d.durable_seq);
    while !args.no_wait && !drained(&status) {
        if !json {
            let note = status
                .target_error
                .clone()
                .or_else(|| status.disks.iter().find_map(|d| d.error.clone()))
                .map_or(String::new(), |e| format!(" (uploads failing: {e})"));
            eprintln!(
                "  backlog {} uploading at {:.1} MB/s{}{note}",
                mb(status.cache.backlog_bytes),
                status.upload.last_10s_mb_per_s,
                status
                    .cache
                    .drain_eta_secs
                    .map_or(String::new(), |s| format!(", about {} left", duration(s)))
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        status = client.status().await?;
    }
    if json {
        outln!("{}", serde_json::to_string(&status)?);
    } else if drained(&status) {
        outln!(
            "cache drained: every acknowledged batch is in storage. ferryd refuses data until \
             `ferryctl drain --resume` (or a restart)."
        );
    } else {
        outln!("drain requested; `ferryctl status` shows the backlog");
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TuneArgs {
    #[command(flatten)]
    pub appliance: ApplianceArg,
    /// Changes as key=value (values as in ferry.toml; the schedule as JSON). None: show.
    pub changes: Vec<String>,
    /// Put every tunable back to its default.
    #[arg(long)]
    pub reset: bool,
}

/// `ferryctl tune`: show the tunables (ferry.toml value, default, what the running pipeline
/// uses now), or change them at run time; ferryd writes ferry.toml so they survive a restart.
pub async fn tune(args: TuneArgs, json: bool) -> anyhow::Result<()> {
    use ferry_client::control::{Tunable, TuneRequest};
    let client = args.appliance.client()?;
    let state = if args.changes.is_empty() && !args.reset {
        client.tune_state().await?
    } else {
        let mut set = Vec::new();
        for change in &args.changes {
            let (key, value) = change.split_once('=').with_context(|| {
                let keys: Vec<&str> = Tunable::ALL.iter().map(|t| t.as_str()).collect();
                format!(
                    "{change:?}: write key=value, e.g. upload_concurrency=16; keys: {}",
                    keys.join(", ")
                )
            })?;
            set.push((key.trim().to_string(), value.trim().to_string()));
        }
        client.tune(&TuneRequest { set, reset: args.reset }).await?
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&state)?);
        return Ok(());
    }
    let values = serde_json::to_value(&state.values)?;
    let defaults = serde_json::to_value(&state.defaults)?;
    let in_effect = serde_json::to_value(&state.in_effect)?;
    fn effect_key(key: &str) -> &str {
        match key {
            "worker_threads" => "seal_workers",
            "cache_limit_percent" => "cache_limit_bytes",
            other => other,
        }
    }
    outln!(
        "{:<28} {:>14} {:>14} {:>14}",
        "TUNABLE",
        "VALUE",
        "DEFAULT",
        "IN EFFECT"
    );
    if let Some(map) = values.as_object() {
        for (key, value) in map {
            if key == "bandwidth_schedule" {
                continue;
            }
            let shown = |v: &serde_json::Value| v.to_string();
            outln!(
                "{:<28} {:>14} {:>14} {:>14}",
                key,
                shown(value),
                shown(&defaults[key]),
                in_effect.get(effect_key(key)).map_or("-".into(), shown)
            );
        }
    }
    outln!("bandwidth_schedule           {}", values["bandwidth_schedule"]);
    Ok(())
}
