//! `ferryctl retention`: consolidate now (`run`), and per-disk policy overrides (`set`).
//!
//! `run` works from storage and the vault key alone: with ferryd stopped (or with target
//! flags and no appliance at all) it consolidates here; when the appliance's ferryd answers on
//! its control socket it asks ferryd to, so that the two never consolidate at once. `set`
//! writes `[retention.disks."ID"]` into ferry.toml, through ferryd when it runs (ferryd owns
//! the file while it runs: `ferryctl tune` writes it too).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ferry_client::control::Method;
use ferry_config::config::ApplianceConfig;
use ferry_config::layout::ApplianceLayout;
use ferry_config::retention::{DiskPolicyOverride, RetentionConfig, Span};
use ferry_vault::retention::consolidate::{consolidate_all, DiskSummary, Options};
use ferry_vault::retention::{PolicyChange, RunRequest};
use std::path::PathBuf;
use uuid::Uuid;

use crate::vault_access::{self, VaultArgs};

#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// Consolidate now: prune points the policy drops, write bases, delete what no kept point
    /// needs (asks ferryd when it runs; works with ferryd stopped).
    Run(RunArgs),
    /// Override the policy for one disk (unset keys follow `[retention]`; --clear removes them).
    Set(SetArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Only this disk (id, unique prefix, or MACHINE/NAME).
    #[arg(long, value_name = "DISK")]
    pub disk: Option<String>,
    /// Say what would be kept and dropped; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Storage calls in flight at once (the run's share of the uplink and the machine;
    /// default: retention.parallel of the appliance, else 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: Option<u16>,
    /// Where a new base's scratch file goes (default: the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

#[derive(Args, Debug)]
pub struct SetArgs {
    /// The appliance directory.
    #[arg(long, value_name = "DIR")]
    pub config: PathBuf,
    /// The disk (id, unique prefix, or MACHINE/NAME).
    #[arg(long, value_name = "DISK")]
    pub disk: String,
    #[arg(long, value_name = "DURATION")]
    pub window: Option<Span>,
    #[arg(long, value_name = "DURATION")]
    pub keep_all: Option<Span>,
    #[arg(long, value_name = "DURATION")]
    pub crash_every: Option<Span>,
    #[arg(long, value_name = "DURATION")]
    pub app_every: Option<Span>,
    #[arg(long, value_name = "BYTES")]
    pub chunk_bytes: Option<u64>,
    /// Remove the disk's overrides (it follows `[retention]` again).
    #[arg(long, conflicts_with_all = ["window", "keep_all", "crash_every", "app_every", "chunk_bytes"])]
    pub clear: bool,
}

pub async fn run(command: RetentionCommand, json: bool) -> Result<()> {
    match command {
        RetentionCommand::Run(args) => run_now(args, json).await,
        RetentionCommand::Set(args) => set(args, json).await,
    }
}

/// The appliance's control client when its ferryd answers.
async fn run_now(args: RunArgs, json: bool) -> Result<()> {
    let opened = vault_access::open(&args.vault).await?;
    let only = match &args.disk {
        Some(selector) => Some(crate::vault_disks::resolve(&opened, selector).await?),
        None => None,
    };
    let summaries: Vec<DiskSummary> = match crate::control::running_ferryd(args.vault.config.as_ref())? {
        Some(client) => {
            if !json {
                eprintln!("ferryd is running: asking it to consolidate");
            }
            let request = RunRequest {
                dry_run: args.dry_run,
                disk: only,
                parallel: args.parallel.map(usize::from),
            };
            client
                .send(Method::POST, "/v1/retention/run", &request)
                .await
                .context("ferryd's consolidation")?
        }
        None => {
            let retention = match &args.vault.config {
                Some(dir) => ApplianceConfig::load(&ApplianceLayout::new(dir).config_file())?.retention,
                None => RetentionConfig::default(),
            };
            let options = Options {
                known_points: None, // one run: nothing to remember for
                now_unix_ms: ferry_client::clock::now_unix_ms(),
                dry_run: args.dry_run,
                parallel: args.parallel.map_or(retention.parallel as usize, usize::from),
                scratch_dir: args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir),
            };
            // Progress on stderr, a line per disk as it is done (stdout keeps the summary).
            let progress = |summary: &DiskSummary, done: usize, total: usize| {
                if !json {
                    eprintln!(
                        "disk {done}/{total} {}: {}",
                        summary.disk_id,
                        match &summary.error {
                            Some(error) => format!("failed: {error}"),
                            None => format!(
                                "base seq {}, {} points kept, {} dropped",
                                summary.base_seq.map_or("-".into(), |s| s.to_string()),
                                summary.points_kept,
                                summary.points_dropped
                            ),
                        }
                    );
                }
            };
            consolidate_all(
                opened.storage.clone(),
                &opened.keyring,
                &retention,
                &options,
                only,
                progress,
            )
            .await?
        }
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&summaries)?);
    } else {
        out!("{}", render(&summaries));
    }
    if let Some(failed) = summaries.iter().find(|s| s.error.is_some()) {
        bail!(
            "disk {} was not consolidated: {}",
            failed.disk_id,
            failed.error.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

pub fn render(summaries: &[DiskSummary]) -> String {
    let mut out = format!(
        "{:<10} {:>12} {:>6} {:>8} {:>8} {:>8}  {}\n",
        "DISK", "BASE SEQ", "KEPT", "DROPPED", "WRITTEN", "DELETED", "STORED"
    );
    for s in summaries {
        let base = match (s.previous_base_seq, s.base_seq) {
            (Some(before), Some(after)) if before != after => format!("{before}->{after}"),
            (_, Some(after)) => after.to_string(),
            (_, None) => "-".into(),
        };
        out.push_str(&format!(
            "{:<10} {:>12} {:>6} {:>8} {:>8} {:>8}  {} -> {}{}\n",
            &s.disk_id.to_string()[..8],
            base,
            s.points_kept,
            s.points_dropped,
            s.objects_written,
            s.objects_deleted,
            crate::control::mb(s.stored_bytes_before),
            crate::control::mb(s.stored_bytes_after),
            if s.dry_run { " (dry run: nothing changed)" } else { "" }
        ));
        if !s.pinned_beyond_window.is_empty() {
            out.push_str(&format!(
                "           pinned points older than the window hold the base back: {}\n",
                s.pinned_beyond_window.join(", ")
            ));
        }
        if let Some(deferred) = &s.deferred {
            out.push_str(&format!("           deferred to the next run: {deferred}\n"));
        }
        if let Some(error) = &s.error {
            out.push_str(&format!("           failed: {error}\n"));
        }
    }
    if summaries.is_empty() {
        out.push_str("(no disks in this vault)\n");
    }
    out
}

async fn set(args: SetArgs, json: bool) -> Result<()> {
    let vault_args = VaultArgs {
        config: Some(args.config.clone()),
        key_file: None,
        target: Default::default(),
    };
    let opened = vault_access::open(&vault_args).await?;
    let disk_id: Uuid = crate::vault_disks::resolve(&opened, &args.disk).await?;
    let change = PolicyChange {
        disk_id,
        overrides: if args.clear {
            DiskPolicyOverride::default()
        } else {
            DiskPolicyOverride {
                window: args.window,
                keep_all: args.keep_all,
                crash_every: args.crash_every,
                app_every: args.app_every,
                chunk_bytes: args.chunk_bytes,
            }
        },
    };
    if !args.clear && change.overrides.is_empty() {
        bail!("say what to override: --window, --keep-all, --crash-every, --app-every, --chunk-bytes (or --clear)");
    }
    let retention: RetentionConfig = match crate::control::running_ferryd(Some(&args.config))? {
        Some(client) => client
            .send(Method::PUT, "/v1/retention/policy", &change)
            .await
            .context("ferryd's retention policy")?,
        None => {
            let layout = ApplianceLayout::new(&args.config);
            let mut appliance = ApplianceConfig::load(&layout.config_file())?;
            change.apply(&mut appliance.retention)?;
            appliance
                .save(&layout.config_file())
                .with_context(|| format!("cannot write {}", layout.config_file().display()))?;
            appliance.retention
        }
    };
    let policy = retention.policy_for(disk_id);
    if json {
        outln!("{}", serde_json::to_string_pretty(&policy)?);
    } else {
        outln!(
            "disk {disk_id}: window {}, keep_all {}, crash_every {}, app_every {}, chunk_bytes {}{}",
            policy.window,
            policy.keep_all,
            policy.crash_every,
            policy.app_every,
            policy.chunk_bytes,
            if retention.disks.contains_key(&disk_id) {
                ""
            } else {
                " (the appliance-wide policy)"
            }
        );
    }
    Ok(())
}
