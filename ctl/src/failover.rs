//! `ferryctl failover`: recovery points turned into disks a machine can boot, from storage and
//! the vault key alone (like `restore`: the site may be gone), and the failover records that
//! `failover list` shows and `failover cleanup` undoes for a test failover.
//!
//! A run: resolve the disks (`--disk`, repeatable, or every disk of `--machine`), choose each
//! disk's point with the same flags as `restore`, then, for a test failover, pin those points
//! (retention keeps them while the test runs); write the record (`running`), write each disk
//! (`--to-dir DIR`: `DIR/{failover_id}/{disk_id}.vhd`, a fixed VHD, or `.raw`), and rewrite the
//! record `done`; `--to-device DEV` writes the one disk named onto a block device instead
//! (checked first: size, not mounted, held exclusively), `--to-azure-container NAME` into
//! page blobs. A failure leaves the record `failed` with what was written, so cleanup can
//! remove it. Disks are written one after another, each with `--parallel` downloads ahead.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::{FailoverDisk, FailoverOutput, FailoverRecord, FailoverState, Pin, PLAINTEXT_FORMAT};
use ferry_format::BookmarkId;
use ferry_vault::failover::FileFormat;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;
use uuid::Uuid;

use crate::point_args::PointArgs;
use crate::vault_access::{self, OpenVault, VaultArgs};
use crate::vault_disks::short;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct FailoverArgs {
    #[command(subcommand)]
    pub action: Option<FailoverAction>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum FailoverAction {
    /// The failovers and test failovers recorded in the vault.
    List(VaultArgs),
    /// Delete a test failover's outputs, release the pins it made, and forget it.
    Cleanup(CleanupArgs),
    /// Move a failover (before commit) to another recovery point: only the blocks that can
    /// differ between the two points are rewritten in its outputs.
    ChangePoint(crate::failover_final::ChangePointArgs),
    /// Make a failover final: ferryd refuses its disks' new batches (409 failed_over) and
    /// their agents stop sending.
    Commit(crate::failover_final::CommitArgs),
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    /// The failover id (`ferryctl failover list` shows them).
    #[arg(value_name = "ID")]
    pub failover_id: Uuid,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// Where the disks go: one of these.
#[derive(Args, Debug, Clone)]
#[group(id = "destination", required = true, multiple = false)]
pub struct Destination {
    /// Write the disks as files under DIR/{failover id}/.
    #[arg(long, value_name = "DIR")]
    pub to_dir: Option<PathBuf>,
    /// Write the (one) disk onto this block device: refused when it is smaller than the disk,
    /// mounted or in use; everything past the disk's size is left as it was.
    #[arg(long, value_name = "DEVICE")]
    pub to_device: Option<PathBuf>,
    /// Write the disks as fixed-VHD page blobs into this container of the target's Azure
    /// account (created when missing and the credential allows).
    #[arg(long, value_name = "NAME")]
    pub to_azure_container: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// A fixed VHD (what Azure makes a managed disk from).
    Vhd,
    /// The disk's bytes only.
    Raw,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// A disk to fail over (repeatable): its id, a unique prefix, or MACHINE/NAME.
    #[arg(long = "disk", value_name = "DISK")]
    pub disks: Vec<String>,
    /// Every disk of this machine (its id or a unique prefix of it; repeatable).
    #[arg(long = "machine", value_name = "MACHINE")]
    pub machines: Vec<String>,
    /// Every member disk of a consistency group at the group point `--point` (its id, as
    /// `ferryctl group list` shows).
    #[arg(long, value_name = "GROUP_ID", conflicts_with_all = ["disks", "machines"], requires = "point")]
    pub group: Option<Uuid>,
    #[command(flatten)]
    pub which: PointArgs,
    #[command(flatten)]
    pub to: Destination,
    /// The files' format with --to-dir (default vhd; a device gets the disk's bytes, Azure a
    /// fixed VHD).
    #[arg(long, value_enum, requires = "to_dir")]
    pub format: Option<FormatArg>,
    /// A test failover: replication goes on, the points used are pinned until
    /// `ferryctl failover cleanup ID`.
    #[arg(long)]
    pub test: bool,
    /// Objects downloaded ahead at most, per disk.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Put Page calls in flight at most, per disk going to Azure (each carries one run of
    /// non-zero sectors, often much less than 4 MiB, so many in flight keep the link busy).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub put_parallel: u16,
    /// With --latest and a running ferryd: how long to wait for its cache to be uploaded.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub latest_wait: u64,
    /// Where a disk going to Azure is put together first (sparse: as large as its data).
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub vault: VaultArgs,
}

/// The report of a run (`--json`), also what `failover list --json` gives per failover.
#[derive(Serialize)]
pub struct Report {
    failover_id: Uuid,
    test: bool,
    state: String,
    disks: Vec<ReportDisk>,
}

#[derive(Serialize)]
pub struct ReportDisk {
    disk_id: Uuid,
    name: String,
    seq: u64,
    point: Option<String>,
    kind: Option<String>,
    source_time_unix_ms: Option<u64>,
    output: String,
    virtual_size_bytes: u64,
}

impl Report {
    pub fn of(record: &FailoverRecord) -> Self {
        Report {
            failover_id: record.failover_id,
            test: record.test,
            state: record.state.as_str().into(),
            disks: record
                .disks
                .iter()
                .map(|d| ReportDisk {
                    disk_id: d.disk_id,
                    name: d.name.clone(),
                    seq: d.seq,
                    point: d.point.clone(),
                    kind: d.kind.clone(),
                    source_time_unix_ms: d.source_time_unix_ms,
                    output: d.output.clone(),
                    virtual_size_bytes: d.virtual_size_bytes,
                })
                .collect(),
        }
    }
}

pub async fn run(args: FailoverArgs, json: bool) -> Result<()> {
    match args.action {
        Some(FailoverAction::List(vault)) => list(vault, json).await,
        Some(FailoverAction::Cleanup(cleanup_args)) => cleanup(cleanup_args, json).await,
        Some(FailoverAction::ChangePoint(change)) => crate::failover_final::change_point(change, json).await,
        Some(FailoverAction::Commit(commit)) => crate::failover_final::commit(commit, json).await,
        None => fail_over(args.run, json).await,
    }
}

/// The disks `--disk` and `--machine` name, each once, in the order given.
async fn disks_named(opened: &OpenVault, args: &RunArgs) -> Result<Vec<Uuid>> {
    if let (Some(group_id), Some(bookmark)) = (args.group, &args.which.point) {
        // Each member has a recovery point of the group's bookmark id at the member's seq.
        let point = ferry_vault::group_points::find(&*opened.storage, &opened.keyring, group_id, bookmark).await?;
        return Ok(point.members.iter().map(|m| m.disk_id).collect());
    }
    let mut disks = Vec::new();
    for selector in &args.disks {
        disks.push(crate::vault_disks::resolve(opened, selector).await?);
    }
    let all = if args.machines.is_empty() {
        Vec::new()
    } else {
        crate::vault_disks::list(opened, false).await? // names and machines only
    };
    for machine in &args.machines {
        let prefix = machine.trim().to_ascii_lowercase();
        if prefix.is_empty() {
            bail!("--machine is empty: give a machine id or a unique prefix of one");
        }
        let mut machines: Vec<Uuid> = all
            .iter()
            .map(|d| d.machine_id)
            .filter(|m| m.to_string().starts_with(&prefix))
            .collect();
        machines.dedup();
        match machines.as_slice() {
            [] => bail!("no machine in this vault matches {machine:?} (ferryctl vault disks lists them)"),
            [one] => disks.extend(all.iter().filter(|d| d.machine_id == *one).map(|d| d.disk_id)),
            many => bail!(
                "{machine:?} is the start of {} machine ids; give more of it",
                many.len()
            ),
        }
    }
    if disks.is_empty() {
        bail!(
            "say what to fail over: --disk DISK (repeatable), --machine MACHINE or --group GROUP_ID --point BOOKMARK"
        );
    }
    let mut seen = std::collections::HashSet::new();
    disks.retain(|d| seen.insert(*d));
    Ok(disks)
}

/// One disk's plan: its descriptor, the seq and point chosen, where it goes (a path, a device
/// or a blob URL).
struct Planned {
    descriptor: ferry_format::plaintexts::DiskDescriptor,
    chosen: ferry_vault::points::Chosen,
    output: String,
}

/// Where a failover's disks go, checked before anything is written.
enum Target {
    /// `DIR/{failover id}/`, one file per disk.
    Files { dir: PathBuf, format: FileFormat },
    /// One disk onto a block device, held open (exclusively) from the check to the end.
    Device { path: PathBuf, device: std::fs::File },
    /// Page blobs in a container of the target's account, one per disk, opened (URLs signed)
    /// in disk order.
    Azure {
        blobs: Vec<ferry_storage::page_blob::PageBlob>,
        container_url: String,
    },
}

impl Target {
    fn output(&self) -> FailoverOutput {
        match self {
            Target::Files {
                format: FileFormat::Vhd,
                ..
            } => FailoverOutput::Vhd,
            Target::Files {
                format: FileFormat::Raw,
                ..
            } => FailoverOutput::Raw,
            Target::Device { .. } => FailoverOutput::Device,
            Target::Azure { .. } => FailoverOutput::PageBlob,
        }
    }

    /// The size a disk of `size_bytes` has there (a VHD's without its footer).
    fn virtual_size(&self, size_bytes: u64) -> u64 {
        match self {
            Target::Files { format, .. } => format.virtual_size(size_bytes),
            Target::Device { .. } => size_bytes,
            Target::Azure { .. } => FileFormat::Vhd.virtual_size(size_bytes),
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Files { dir, .. } => dir.display().to_string(),
            Target::Device { path, .. } => path.display().to_string(),
            Target::Azure { container_url, .. } => container_url.clone(),
        }
    }
}

async fn fail_over(args: RunArgs, json: bool) -> Result<()> {
    let started = Instant::now();
    let opened = vault_access::open(&args.vault).await?;
    let record = execute(&opened, &args, Uuid::new_v4(), json).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&Report::of(&record))?);
    } else {
        out!("{}", render_done(&record, started.elapsed().as_secs_f64()));
    }
    Ok(())
}

/// One failover as `args` says, under `failover_id`: the disks named, their points chosen,
/// pinned when a test, recorded, written, recorded done. Progress on stderr unless `json`.
pub async fn execute(opened: &OpenVault, args: &RunArgs, failover_id: Uuid, json: bool) -> Result<FailoverRecord> {
    let disks = disks_named(opened, args).await?;
    let selector = args.which.selector()?;
    if args.to.to_device.is_some() && disks.len() != 1 {
        bail!(
            "--to-device takes one disk; {} were named (use --disk once)",
            disks.len()
        );
    }
    let azure = match &args.to.to_azure_container {
        Some(container) => Some((azure_target(opened, container).await?, container.clone())),
        None => None,
    };
    if args.which.latest {
        wait_for_uploads(args, &disks).await?;
    }
    // Choose every disk's point before writing anything: a disk without a fitting point stops
    // the failover before it starts.
    let mut planned: Vec<Planned> = Vec::with_capacity(disks.len());
    for disk_id in disks {
        let descriptor = crate::vault_disks::read_descriptor(opened, disk_id).await?;
        let points = crate::points::read_points(opened, disk_id).await?;
        let chosen = crate::points::choose_or_explain(opened, disk_id, &points, &selector).await?;
        planned.push(Planned {
            descriptor,
            chosen,
            output: String::new(),
        });
    }
    let target = match (&args.to.to_dir, &args.to.to_device, azure) {
        (Some(dir), _, _) => {
            let format = match args.format.unwrap_or(FormatArg::Vhd) {
                FormatArg::Vhd => FileFormat::Vhd,
                FormatArg::Raw => FileFormat::Raw,
            };
            let dir = dir.join(failover_id.to_string());
            for plan in &mut planned {
                let file = format!("{}.{}", plan.descriptor.disk_id, format.as_str());
                plan.output = dir.join(file).display().to_string();
            }
            std::fs::create_dir_all(dir.parent().unwrap_or(&dir))
                .and_then(|()| std::fs::create_dir(&dir))
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Target::Files { dir, format }
        }
        (None, Some(path), _) => {
            let device = ferry_vault::failover::open_device(path, planned[0].descriptor.size_bytes)?;
            planned[0].output = path.display().to_string();
            Target::Device {
                path: path.clone(),
                device,
            }
        }
        (None, None, Some((config, container))) => {
            let mut blobs = Vec::with_capacity(planned.len());
            for plan in &mut planned {
                let name = blob_name(failover_id, plan.descriptor.disk_id);
                let blob = ferry_storage::page_blob::PageBlob::open(&config, &container, &name)
                    .await
                    .with_context(|| format!("cannot reach the container {container}"))?;
                plan.output = blob.url().to_string();
                blobs.push(blob);
            }
            Target::Azure {
                blobs,
                container_url: format!("{}/{container}", config.account_url()),
            }
        }
        (None, None, None) => {
            bail!("say where the disks go: --to-dir DIR, --to-device DEVICE or --to-azure-container NAME")
        }
    };

    let mut record = FailoverRecord {
        format: PLAINTEXT_FORMAT,
        failover_id,
        test: args.test,
        state: FailoverState::Running,
        created_unix_ms: ferry_client::clock::now_unix_ms(),
        finished_unix_ms: None,
        committed_unix_ms: None,
        disks: Vec::with_capacity(planned.len()),
    };
    for plan in &planned {
        let pinned_by_failover = match (&plan.chosen.point, args.test) {
            (Some(point), true) => pin_for_test(opened, point, failover_id).await?,
            _ => false,
        };
        let point = plan.chosen.point.as_ref();
        record.disks.push(FailoverDisk {
            disk_id: plan.descriptor.disk_id,
            machine_id: plan.descriptor.machine_id,
            name: plan.descriptor.name.clone(),
            seq: plan.chosen.seq,
            point: point.map(|p| p.bookmark_id.clone()),
            kind: point.map(|p| p.kind.clone()),
            source_time_unix_ms: point.map(|p| p.source_time_unix_ms),
            output: plan.output.clone(),
            output_format: target.output(),
            virtual_size_bytes: target.virtual_size(plan.descriptor.size_bytes),
            pinned_by_failover,
            changing_seqs: None,
            digest_blocks: None,
            failed_back_unix_ms: None,
        });
    }
    ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
    if !json {
        eprintln!(
            "{} {failover_id}: {} disk(s) to {}",
            if args.test { "test failover" } else { "failover" },
            planned.len(),
            target.describe()
        );
    }

    let total = planned.len();
    let parallel = args.parallel as usize;
    for (number, plan) in planned.iter().enumerate() {
        let disk_id = plan.descriptor.disk_id;
        let seq = plan.chosen.seq;
        let mut last_report = Instant::now();
        let progress = |applied| {
            if !json && last_report.elapsed().as_secs() >= 1 {
                eprintln!(
                    "disk {}/{total} {}: seq {applied} of {seq} ({}%)",
                    number + 1,
                    short(&disk_id),
                    applied * 100 / seq.max(1)
                );
                last_report = Instant::now();
            }
        };
        let storage = opened.storage.clone();
        let keyring = &opened.keyring;
        let (descriptor, output) = (&plan.descriptor, Path::new(&plan.output));
        let scratch_dir = args.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
        let written = async {
            // Every block's digest at this point, computed as the output is written: reprotect
            // and failback compare against them (ferry_vault::digests).
            let mut digests = ferry_vault::digests::DigestTable::new(descriptor.size_bytes, &scratch_dir)?;
            match &target {
                Target::Files { format, .. } => {
                    let now = ferry_client::clock::now_unix_ms();
                    ferry_vault::failover::write_file(
                        storage.clone(),
                        keyring,
                        &mut digests,
                        descriptor,
                        seq,
                        output,
                        *format,
                        parallel,
                        now,
                        progress,
                    )
                    .await?
                }
                Target::Device { device, .. } => {
                    ferry_vault::failover::write_device(
                        storage.clone(),
                        keyring,
                        &mut digests,
                        descriptor,
                        seq,
                        device,
                        output,
                        parallel,
                        progress,
                    )
                    .await?
                }
                Target::Azure { blobs, .. } => {
                    let in_flight = (parallel, args.put_parallel as usize);
                    let now = ferry_client::clock::now_unix_ms();
                    ferry_vault::failover::write_page_blob(
                        storage.clone(),
                        keyring,
                        &mut digests,
                        descriptor,
                        seq,
                        &blobs[number],
                        &scratch_dir,
                        in_flight,
                        now,
                        progress,
                    )
                    .await?
                }
            };
            digests
                .store(&*storage, keyring, failover_id, disk_id, parallel)
                .await
                .context("cannot store the disk's block digests")
        }
        .await;
        if let Ok(blocks) = &written {
            record.disks[number].digest_blocks = Some(*blocks);
        }
        if let Err(e) = written {
            record.state = FailoverState::Failed;
            record.finished_unix_ms = Some(ferry_client::clock::now_unix_ms());
            if let Err(record_error) =
                ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await
            {
                eprintln!("warning: the failover record could not be updated: {record_error:#}");
            }
            let cleanup = if args.test {
                format!("; ferryctl failover cleanup {failover_id} removes what it wrote and its pins")
            } else {
                String::new()
            };
            return Err(e.context(format!("failover {failover_id}: disk {disk_id} failed{cleanup}")));
        }
        if !json {
            eprintln!("disk {}/{total} {}: done", number + 1, short(&disk_id));
        }
    }
    record.state = FailoverState::Done;
    record.finished_unix_ms = Some(ferry_client::clock::now_unix_ms());
    ferry_vault::failover::write_record(&*opened.storage, &opened.keyring, &record).await?;
    Ok(record)
}

/// `--latest` with `--config` naming a running ferryd: waits until each disk's batches that
/// ferryd holds now (its durable seq) have left its cache (uploaded, and their recovery points
/// written), so the newest point is as new as the appliance can make it (lowest RPO). Without a running ferryd there is nothing to wait for.
async fn wait_for_uploads(args: &RunArgs, disks: &[Uuid]) -> Result<()> {
    let Some(client) = crate::control::running_ferryd(args.vault.config.as_ref())? else {
        return Ok(());
    };
    let status = client.status().await.context("ferryd's status")?;
    let goals: Vec<(Uuid, u64)> = disks
        .iter()
        .filter_map(|id| {
            status
                .disks
                .iter()
                .find(|d| d.disk_id == *id)
                .map(|d| (*id, d.durable_seq))
        })
        .collect();
    let deadline = Instant::now() + std::time::Duration::from_secs(args.latest_wait);
    loop {
        let status = client.status().await.context("ferryd's status")?;
        let behind: Vec<(Uuid, u64, u64)> = goals
            .iter()
            .filter_map(|(id, goal)| {
                let uploaded = status
                    .disks
                    .iter()
                    .find(|d| d.disk_id == *id)
                    .map_or(0, |d| d.released_seq);
                (uploaded < *goal).then_some((*id, uploaded, *goal))
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "ferryd has not uploaded what it holds for {} within {} s ({}); use --latest-processed \
                 for the newest point already in storage",
                behind.iter().map(|(id, _, _)| short(id)).collect::<Vec<_>>().join(", "),
                args.latest_wait,
                behind
                    .iter()
                    .map(|(id, uploaded, goal)| format!("{}: seq {uploaded} of {goal}", short(id)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        // On stderr also with --json (stdout keeps the report).
        let (id, uploaded, goal) = behind[0];
        eprintln!("waiting for ferryd to upload {}: seq {uploaded} of {goal}", short(&id));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The blob a disk of a failover goes to.
fn blob_name(failover_id: Uuid, disk_id: Uuid) -> String {
    format!("ferry-failover-{failover_id}/{disk_id}.vhd")
}

/// The page blob at `url` (a failover's output, in a container of the target's account).
pub(crate) async fn open_blob(opened: &OpenVault, url: &str) -> Result<ferry_storage::page_blob::PageBlob> {
    let ferry_storage::TargetConfig::Azure(config) = &opened.target else {
        bail!("{url} is a blob: reach it with the Azure target's --config or --azure-* flags");
    };
    let Some((container, name)) = url
        .strip_prefix(&format!("{}/", config.account_url()))
        .and_then(|rest| rest.split_once('/'))
    else {
        bail!("{url} is not in the target's account {}", config.account_url());
    };
    Ok(ferry_storage::page_blob::PageBlob::open(config, container, name).await?)
}

/// Deletes the page blob at `url` (in a container of the target's account).
async fn delete_blob(opened: &OpenVault, url: &str) -> Result<()> {
    let blob = open_blob(opened, url).await?;
    blob.delete().await.with_context(|| format!("cannot delete {url}"))
}

/// The target's Azure settings, for page blobs in `container` of its account; the container
/// is created when missing (with a shared key or SAS credential).
async fn azure_target(opened: &OpenVault, container: &str) -> Result<ferry_storage::AzureTargetConfig> {
    let ferry_storage::TargetConfig::Azure(config) = &opened.target else {
        bail!("--to-azure-container needs an Azure target: --config of an appliance on Azure, or the --azure-* flags");
    };
    let mut config = config.clone();
    config.container = container.to_string();
    config.create_container = matches!(
        config.credential,
        ferry_storage::AzureCredentialConfig::SharedKey { .. } | ferry_storage::AzureCredentialConfig::Sas { .. }
    );
    ferry_storage::azure::AzureBlob::connect(&config)
        .await
        .with_context(|| format!("cannot use the container {container}"))?;
    Ok(config)
}

/// Pins `point` for a test failover; false when it was pinned already (by a user or another
/// test), so this failover's cleanup leaves that pin alone.
async fn pin_for_test(
    opened: &OpenVault,
    point: &ferry_format::plaintexts::RecoveryPoint,
    failover_id: Uuid,
) -> Result<bool> {
    let bookmark_id = BookmarkId::new(&point.bookmark_id).map_err(anyhow::Error::msg)?;
    let name = ObjectName::Pin {
        disk_id: point.disk_id,
        seq: point.seq,
        bookmark_id,
    }
    .to_string();
    if ferry_vault::sealed::exists(&*opened.storage, &name).await? {
        return Ok(false);
    }
    let pin = Pin {
        format: PLAINTEXT_FORMAT,
        disk_id: point.disk_id,
        seq: point.seq,
        bookmark_id: point.bookmark_id.clone(),
        reason: Some(format!("test failover {failover_id}")),
        pinned_unix_ms: ferry_client::clock::now_unix_ms(),
    };
    let key = opened.keyring.disk_key(point.disk_id);
    ferry_vault::retention::records::pin(&*opened.storage, &key, &pin).await?;
    Ok(true)
}

pub fn render_done(record: &FailoverRecord, seconds: f64) -> String {
    let now = ferry_client::clock::now_unix_ms();
    let mut out = format!(
        "{} {} done in {seconds:.1} s:\n",
        if record.test { "Test failover" } else { "Failover" },
        record.failover_id
    );
    for disk in &record.disks {
        let point = match (&disk.point, disk.source_time_unix_ms) {
            (Some(point), Some(time)) => format!(
                "point {point} ({}, source time {} UTC, RPO {} s)",
                disk.kind.as_deref().unwrap_or("?"),
                ferry_format::time::format_unix_ms(time),
                now.saturating_sub(time) / 1000
            ),
            _ => format!("seq {} (not a recovery point)", disk.seq),
        };
        out.push_str(&format!(
            "  {} ({}/{}): {point}\n    -> {} ({}, {} bytes)\n",
            disk.disk_id,
            short(&disk.machine_id),
            disk.name,
            disk.output,
            disk.output_format.as_str(),
            disk.virtual_size_bytes
        ));
        if disk.output_format == FailoverOutput::PageBlob {
            out.push_str(&format!(
                "    az disk create --resource-group <group> --name {} --source {}\n",
                disk.name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"),
                disk.output
            ));
        }
    }
    if record.test {
        out.push_str(&format!(
            "Replication goes on; the points used stay pinned until `ferryctl failover cleanup {}`.\n",
            record.failover_id
        ));
    }
    out
}

async fn list(vault: VaultArgs, json: bool) -> Result<()> {
    let opened = vault_access::open(&vault).await?;
    let records = ferry_vault::failover::list_records(&*opened.storage, &opened.keyring).await?;
    if json {
        let reports: Vec<Report> = records.iter().map(Report::of).collect();
        outln!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    if records.is_empty() {
        outln!("No failovers recorded in this vault.");
        return Ok(());
    }
    outln!(
        "{:<36}  {:<5}  {:<8}  {:<24}  DISKS",
        "FAILOVER",
        "TEST",
        "STATE",
        "STARTED (UTC)"
    );
    for record in &records {
        outln!(
            "{:<36}  {:<5}  {:<8}  {:<24}  {}",
            record.failover_id,
            if record.test { "yes" } else { "no" },
            record.state.as_str(),
            ferry_format::time::format_unix_ms(record.created_unix_ms),
            record
                .disks
                .iter()
                .map(|d| format!(
                    "{}@{} -> {}",
                    short(&d.disk_id),
                    d.point.as_deref().unwrap_or("seq"),
                    d.output
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct CleanupReport {
    failover_id: Uuid,
    outputs_removed: Vec<String>,
    outputs_already_gone: Vec<String>,
    /// Devices: not ours to delete; what the test wrote stays on them.
    devices_left: Vec<String>,
    pins_released: usize,
}

async fn cleanup(args: CleanupArgs, json: bool) -> Result<()> {
    let opened = vault_access::open(&args.vault).await?;
    let id = args.failover_id;
    let record = ferry_vault::failover::read_record(&*opened.storage, &opened.keyring, id).await?;
    if !record.test {
        bail!(
            "failover {id} is not a test failover: its outputs are the failed-over disks, and cleanup \
             never deletes those"
        );
    }
    let mut report = CleanupReport {
        failover_id: id,
        outputs_removed: Vec::new(),
        outputs_already_gone: Vec::new(),
        devices_left: Vec::new(),
        pins_released: 0,
    };
    for disk in &record.disks {
        let path = Path::new(&disk.output);
        match disk.output_format {
            FailoverOutput::Device => report.devices_left.push(disk.output.clone()),
            FailoverOutput::PageBlob => {
                delete_blob(&opened, &disk.output).await?;
                report.outputs_removed.push(disk.output.clone());
            }
            FailoverOutput::Vhd | FailoverOutput::Raw => match std::fs::remove_file(path) {
                Ok(()) => report.outputs_removed.push(disk.output.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.outputs_already_gone.push(disk.output.clone())
                }
                Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
            },
        }
        if let Some(dir) = path.parent().filter(|d| d.file_name() == Some(id.to_string().as_ref())) {
            let _ = std::fs::remove_dir(dir); // only when empty: nothing else of ours is there
        }
        if let (true, Some(point)) = (disk.pinned_by_failover, &disk.point) {
            let bookmark_id = BookmarkId::new(point).map_err(anyhow::Error::msg)?;
            if ferry_vault::retention::records::unpin(&*opened.storage, disk.disk_id, disk.seq, &bookmark_id).await? {
                report.pins_released += 1;
            }
        }
        if let Some(blocks) = disk.digest_blocks {
            ferry_vault::digests::delete(&*opened.storage, id, disk.disk_id, blocks).await?;
        }
    }
    ferry_vault::failover::delete_record(&*opened.storage, id).await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        outln!(
            "Test failover {id} cleaned up: {} output(s) removed{}{}, {} pin(s) released, record deleted.",
            report.outputs_removed.len(),
            if report.outputs_already_gone.is_empty() {
                String::new()
            } else {
                format!(" ({} already gone)", report.outputs_already_gone.len())
            },
            if report.devices_left.is_empty() {
                String::new()
            } else {
                format!("; left as written: {}", report.devices_left.join(", "))
            },
            report.pins_released
        );
    }
    Ok(())
}
