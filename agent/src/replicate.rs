//! `ferry-agent run`: rounds of passes over every configured disk, on the bookmark policy.
//!
//! A round sets up any disk that needs it (session.rs), quiesces when an app-consistent
//! bookmark is due, runs one pass per disk concurrently (pass.rs), thaws as soon as every
//! disk has been read, and gives each pass its bookmark kind. A disk whose pass fails is set
//! up again next round (a restarted or unreachable ferryd, a lost connection); a refused
//! certificate stops the agent. Rounds start every `crash_interval_secs`; a disk whose set-up
//! failed is retried when the appliance's `Retry-After` says (a 503 while it drains or its
//! cache is full), else after 30 s; `--once` keeps retrying so for up to `--retry-for`.
//! While a disk waits, its status keeps the last good bookmark (carried over from the
//! previous run's status.json) and shows the error on its own line. SIGTERM or SIGINT cancel
//! the round (safely: see blockmap.rs) and exit.

use anyhow::{bail, Context};
use ferry_client::DataClient;
use ferry_format::bookmark::{BookmarkId, BookmarkKind};
use futures::future::join_all;
use serde::Serialize;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::config::AgentConfig;
use crate::identity;
use crate::pass::{run_pass, BookmarkChoice, PassCounters, PassOutcome, PassRequest};
use crate::progress::{self, AgentStatus, BookmarkRecord, DiskStatus, PassStatus, Phase};
use crate::quiesce::Quiesce;
use crate::session::{self, Session};
use crate::snapshot::SnapshotMode;
use ferry_client::clock::now_unix_ms;
use ferry_client::commands::{BookmarkAsk, Command, CommandBookmark, CommandName, CommandOutcome};
use ferry_durable::private_dir;

/// Wait before a failed disk is set up again, when the appliance gave no Retry-After.
const RETRY_FAILED_DISK: Duration = Duration::from_secs(30);
/// How often a failed-over disk is asked about again (a failback lifts the mark; the disk then
/// replicates again without restarting the agent).
const RECHECK_FAILED_OVER: Duration = Duration::from_secs(60);
/// A Retry-After is honoured within these bounds (a wrong or hostile value neither spins
/// nor parks the disk for hours).
const RETRY_AFTER_MIN: Duration = Duration::from_secs(1);
const RETRY_AFTER_MAX: Duration = Duration::from_secs(300);

/// What one pass of one disk did, as `run --once` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    pub disk_id: Uuid,
    pub name: String,
    pub phase: String,
    pub bookmark_id: String,
    pub bookmark_kind: String,
    pub bookmark_seq: u64,
    pub scanned_bytes: u64,
    pub changed_blocks: u64,
    pub sent_bytes: u64,
    pub seconds: f64,
    /// Bytes read over the time until the last read: bounded by the disk, and by the sending
    /// (the reader waits when the window is full), so it is not the disk's own speed.
    pub read_mb_per_s: f64,
}

pub(crate) struct Slot {
    pub(crate) session: Option<Session>,
    pub(crate) status: DiskStatus,
    counters: Option<Arc<PassCounters>>,
    retry_at: Option<Instant>,
    /// The last set-up failed because the appliance was busy or unreachable.
    waiting_on_appliance: bool,
    /// The disk was failed over (committed): asked about again every minute only, until a
    /// failback lifts the mark.
    failed_over: bool,
}

/// The agent's live state, shared with the status writer.
pub(crate) struct Board {
    machine_id: Uuid,
    slots: Mutex<Vec<Slot>>,
}

impl Board {
    pub(crate) fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> AgentStatus {
        let slots = self.slots();
        AgentStatus {
            pid: std::process::id(),
            machine_id: Some(self.machine_id),
            updated_unix_ms: now_unix_ms(),
            disks: slots
                .iter()
                .map(|slot| {
                    let mut status = slot.status.clone();
                    if let (Some(counters), Some(pass)) = (&slot.counters, status.pass.as_mut()) {
                        use std::sync::atomic::Ordering::Relaxed;
                        pass.scanned_bytes = counters.scanned_bytes.load(Relaxed);
                        pass.changed_blocks = counters.changed_blocks.load(Relaxed);
                        pass.sent_bytes = counters.sent_bytes.load(Relaxed);
                    }
                    status
                })
                .collect(),
        }
    }

    fn write(&self, state_dir: &std::path::Path) {
        let snapshot = self.snapshot();
        if let Ok(json) = serde_json::to_vec_pretty(&snapshot) {
            if let Err(e) = ferry_durable::replace(&progress::status_path(state_dir), &json) {
                tracing::warn!(error = %e, "cannot write status.json");
            }
        }
    }
}

pub struct RunOptions {
    /// One round, then exit (non-zero if a disk failed).
    pub once: bool,
    /// Quiesce this round (with `once`), whatever the schedule says.
    pub app: bool,
    /// With `once`: how long to keep retrying disks that could not be set up yet.
    pub once_retry_for: Duration,
}

/// Runs until `shutdown` resolves (or one round with `once`); returns the last round's passes.
pub async fn run(
    config: AgentConfig,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Vec<PassReport>> {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pending = None;
    let journals = crate::unconfirmed::Journals::default();
    loop {
        match run_at_endpoint(&config, &options, shutdown.as_mut(), pending.take(), &journals).await? {
            Ran::Finished(reports) => return Ok(reports),
            Ran::Moved(endpoint, moving) => {
                tracing::warn!(%endpoint, "this machine sends to another process server from now on");
                identity::set_data_endpoint(&config.state_dir, &endpoint)?;
                pending = moving;
            }
        }
    }
}

/// How [`run_at_endpoint`] ended.
enum Ran {
    Finished(Vec<PassReport>),
    /// The machine sends to this data endpoint now: run again there (and report the planned
    /// move, if it was one, once the disks are set up).
    Moved(String, Option<Box<crate::moving::PendingMove>>),
}

/// Least time between two placement questions to the configuration server.
const PLACEMENT_ASK_EVERY: Duration = Duration::from_secs(5);

/// Asks the configuration server where to send (after a disk's set-up met an unreachable
/// process server or `not_owner`); the new endpoint when it differs from `endpoint`.
async fn moved_to(management: &DataClient, machine_id: Uuid, endpoint: &str) -> Option<String> {
    match management.placement(machine_id).await {
        Ok(placement) if placement.data_endpoint != endpoint => Some(placement.data_endpoint),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the configuration server where to send");
            None
        }
    }
}

async fn run_at_endpoint(
    config: &AgentConfig,
    options: &RunOptions,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    mut moving: Option<Box<crate::moving::PendingMove>>,
    journals: &crate::unconfirmed::Journals,
) -> anyhow::Result<Ran> {
    let stored = identity::load(&config.state_dir)?;
    stored.check_current((now_unix_ms() / 1000) as i64)?;
    private_dir(&config.state_dir.join("disks")).context("creating the state directory")?;
    let client = stored
        .identity
        .data_client()
        .context("loading this machine's certificate")?;
    let endpoint = stored.identity.data_endpoint.clone();
    // No client certificate: only to tell a refused certificate from a server that is down.
    let anonymous = DataClient::new(
        &endpoint,
        ferry_client::tls::ca_verified(&stored.identity.ca_pem, None).context("loading the appliance CA")?,
    );
    let machine_id = stored.identity.machine_id;
    // What the previous run knew of each disk (its last good bookmark above all), shown until
    // this run knows better. A missing or damaged file only means starting blank.
    let previous = crate::status::load(&config.state_dir).ok().flatten();
    let board = Arc::new(Board {
        machine_id,
        slots: Mutex::new(
            config
                .disks
                .iter()
                .map(|disk| {
                    let known = previous
                        .as_ref()
                        .and_then(|p| p.disks.iter().find(|d| d.path == disk.path));
                    Slot {
                        session: None,
                        status: DiskStatus {
                            name: disk.name.clone().unwrap_or_default(),
                            path: disk.path.clone(),
                            phase: "starting".into(),
                            disk_id: known.and_then(|d| d.disk_id),
                            size_bytes: known.map_or(0, |d| d.size_bytes),
                            last_bookmark: known.and_then(|d| d.last_bookmark.clone()),
                            ..DiskStatus::default()
                        },
                        counters: None,
                        retry_at: None,
                        waiting_on_appliance: false,
                        failed_over: false,
                    }
                })
                .collect(),
        ),
    });
    let writer = {
        let board = board.clone();
        let state_dir = config.state_dir.clone();
        tokio::spawn(async move {
            loop {
                board.write(&state_dir);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let agent_started_ms = now_unix_ms();
    // Management commands: polled for while the agent runs (not for one round).
    let management = crate::commands::client(&stored.identity, &stored.management_endpoint)
        .context("loading this machine's certificate")?;
    let (mut commands, poller) = if options.once {
        (None, None)
    } else {
        let (rx, task) = crate::commands::spawn_poller(management.clone(), machine_id);
        (Some(rx), Some(task))
    };
    let mut command: Option<Command> = None;
    let work = async {
        let once_deadline = Instant::now() + options.once_retry_for;
        let mut placement_asked: Option<Instant> = None;
        loop {
            let round_started = Instant::now();
            let ask = set_up_disks(config, &client, &anonymous, &endpoint, machine_id, &board, journals).await?;
            if let Some(pending) = moving.take() {
                // A planned move: report it once the disks are set up here (or failed to be).
                let errors: Vec<String> = board
                    .slots()
                    .iter()
                    .filter(|s| s.session.is_none())
                    .map(|s| {
                        format!(
                            "{}: {}",
                            s.status.path.display(),
                            s.status.last_error.clone().unwrap_or_default()
                        )
                    })
                    .collect();
                let outcome = crate::moving::outcome(&pending, &endpoint, &errors);
                crate::commands::report(&management, machine_id, &pending.command, &outcome).await;
            }
            if ask && placement_asked.is_none_or(|at| at.elapsed() >= PLACEMENT_ASK_EVERY) {
                placement_asked = Some(Instant::now());
                if let Some(moved) = moved_to(&management, machine_id, &endpoint).await {
                    return Ok(Ran::Moved(moved, None));
                }
            }
            if options.once {
                // One pass of every disk: wait for those the appliance cannot take yet (a disk
                // that failed here, say a missing device, fails the run at once as before).
                let retry = board
                    .slots()
                    .iter()
                    .filter(|s| s.session.is_none() && s.waiting_on_appliance)
                    .filter_map(|s| s.retry_at)
                    .max();
                if let Some(at) = retry.filter(|at| *at <= once_deadline) {
                    tokio::time::sleep_until(at.into()).await;
                    continue;
                }
            }
            // A planned move: release the disks here, then run against the new process server.
            if let Some(c) = command.take_if(|c| c.command == CommandName::Move) {
                let to = c.data_endpoint.clone().unwrap_or_default();
                let disks: Vec<Uuid> = board
                    .slots()
                    .iter()
                    .filter_map(|s| s.session.as_ref().map(|session| session.disk_id))
                    .collect();
                let started = Instant::now();
                match crate::moving::release_all(&client, &disks, &to).await {
                    Ok(()) if !to.is_empty() => {
                        let pending = crate::moving::PendingMove {
                            command: c,
                            started,
                            from: endpoint.clone(),
                            disks: disks.len(),
                        };
                        return Ok(Ran::Moved(to, Some(Box::new(pending))));
                    }
                    result => {
                        let message = result
                            .err()
                            .unwrap_or_else(|| "a move command names no process server".into());
                        tracing::error!(%message, "the move failed; the disks stay where they are");
                        let outcome = crate::moving::outcome(
                            &crate::moving::PendingMove {
                                command: c.clone(),
                                started,
                                from: endpoint.clone(),
                                disks: 0,
                            },
                            &to,
                            &[message],
                        );
                        crate::commands::report(&management, machine_id, &c, &outcome).await;
                        continue;
                    }
                }
            }
            // A consistency group's barrier: capture and hold, then passes or nothing.
            if let Some(c) = command.take_if(|c| c.command.is_group_barrier()) {
                crate::group::barrier(config, &client, &board, &management, machine_id, c, &mut commands).await;
            } else {
                let scheduled_app = if options.once {
                    options.app
                } else {
                    app_due(&board, config.bookmarks.app_interval_secs, agent_started_ms)
                };
                let (app, group_id) = match &command {
                    Some(c) if c.command == CommandName::Bookmark => (c.kind == Some(BookmarkAsk::App), c.group_id),
                    _ => (scheduled_app, None),
                };
                let mut notes = Vec::new();
                if let Some(c) = command.as_ref().filter(|c| c.command == CommandName::Resync) {
                    notes = request_resync(config, &client, &board, c).await;
                }
                let reports = round(config, &client, &board, app, group_id, None).await;
                if let Some(c) = command.take() {
                    let outcome = outcome_of(&board, reports.as_deref().unwrap_or_default(), &reports, notes);
                    crate::commands::report(&management, machine_id, &c, &outcome).await;
                }
                let reports = reports?;
                if options.once {
                    let failed: Vec<String> = board
                        .slots()
                        .iter()
                        .filter_map(|s| {
                            s.status
                                .last_error
                                .clone()
                                .map(|e| format!("{}: {e}", s.status.path.display()))
                        })
                        .collect();
                    if !failed.is_empty() {
                        bail!("{}", failed.join("\n"));
                    }
                    return Ok(Ran::Finished(reports));
                }
            }
            let mut next = round_started + Duration::from_secs(config.bookmarks.crash_interval_secs);
            if let Some(retry) = board.slots().iter().filter_map(|s| s.retry_at).min() {
                next = next.min(retry);
            }
            tokio::select! {
                () = tokio::time::sleep_until(next.into()) => {}
                received = crate::commands::next(&mut commands) => command = Some(received),
            }
        }
    };
    let result = tokio::select! {
        result = work => result,
        () = shutdown => {
            tracing::info!("stopping: the pass in progress (if any) is cancelled; the next start resumes safely");
            Ok(Ran::Finished(Vec::new()))
        }
    };
    writer.abort();
    if let Some(poller) = poller {
        poller.abort();
    }
    board.write(&config.state_dir);
    result
}

/// A `resync` command: the named disk (or every disk) forgets its block map and re-reads the
/// whole disk in this round; ferryd shows it `resync_required` until the pass's bookmark.
/// Returns what went wrong, for the outcome.
async fn request_resync(config: &AgentConfig, client: &DataClient, board: &Board, command: &Command) -> Vec<String> {
    let reason = command
        .reason
        .clone()
        .unwrap_or_else(|| "requested by the operator".to_string());
    let mut notes = Vec::new();
    let mut marked = Vec::new();
    {
        let mut slots = board.slots();
        for slot in slots.iter_mut() {
            let Some(session) = slot.session.as_mut() else {
                continue;
            };
            if command.disk_id.is_some_and(|d| d != session.disk_id) {
                continue;
            }
            if let Err(e) = session.map.forget_all() {
                notes.push(format!("disk {}: cannot reset the block map: {e}", session.disk_id));
                continue;
            }
            session.progress.resync_reason = Some(reason.clone());
            if let Err(e) = progress::save(&config.state_dir, &session.progress) {
                notes.push(format!("disk {}: saving progress: {e}", session.disk_id));
            }
            slot.status.resync_reason = Some(reason.clone());
            marked.push(session.disk_id);
        }
    }
    if marked.is_empty() {
        notes.push("no disk to resync is set up".to_string());
    }
    for disk_id in marked {
        tracing::warn!(%disk_id, %reason, "resync requested: the whole disk is read again and what differs is sent");
        if let Err(e) = client.put_resync(disk_id, Some(&reason)).await {
            notes.push(format!("disk {disk_id}: telling the appliance: {e}"));
        }
    }
    notes
}

/// A command's outcome from the round it ran: ok when every disk made its bookmark.
pub(crate) fn outcome_of(
    board: &Board,
    reports: &[PassReport],
    round: &anyhow::Result<Vec<PassReport>>,
    mut notes: Vec<String>,
) -> CommandOutcome {
    if let Err(e) = round {
        notes.push(format!("{e:#}"));
    }
    for slot in board.slots().iter() {
        if let Some(error) = &slot.status.last_error {
            notes.push(format!("{}: {error}", slot.status.path.display()));
        }
    }
    let ok = notes.is_empty() && !reports.is_empty();
    let message = if ok {
        format!("{} disk(s) passed", reports.len())
    } else if notes.is_empty() {
        "no disk is set up for a pass".to_string()
    } else {
        notes.join("; ")
    };
    CommandOutcome {
        move_ms: None,
        ok,
        message: message.chars().take(4096).collect(),
        bookmarks: reports
            .iter()
            .map(|r| CommandBookmark {
                disk_id: r.disk_id,
                bookmark_id: r.bookmark_id.clone(),
                kind: r.bookmark_kind.clone(),
                seq: r.bookmark_seq,
            })
            .collect(),
        hold_ms: None,
    }
}

/// Whether this round should quiesce: every disk is past its initial copy and out of resync
/// (a quiesce holds writes for a whole read of the disk), and some disk's last app-consistent
/// bookmark (persisted, so restarts do not postpone it; the agent's start when there is none)
/// is older than the interval.
fn app_due(board: &Board, interval_secs: u64, agent_started_ms: u64) -> bool {
    if interval_secs == 0 {
        return false;
    }
    let slots = board.slots();
    let sessions: Vec<&Session> = slots.iter().filter_map(|s| s.session.as_ref()).collect();
    let settled = !sessions.is_empty() && sessions.iter().all(|s| s.progress.phase() == Phase::Continuous);
    let now = now_unix_ms();
    settled
        && sessions.iter().any(|s| {
            let last = s.progress.last_app_unix_ms.unwrap_or(agent_started_ms);
            now.saturating_sub(last) >= interval_secs * 1000
        })
}

/// Sets up every disk that needs it (first round, or after a failure once its retry is due);
/// errors only for what stops the agent (a refused certificate). True when a disk met an
/// unreachable process server or `not_owner` (ask the configuration server where to send).
async fn set_up_disks(
    config: &AgentConfig,
    client: &DataClient,
    anonymous: &DataClient,
    endpoint: &str,
    machine_id: Uuid,
    board: &Board,
    journals: &crate::unconfirmed::Journals,
) -> anyhow::Result<bool> {
    let mut ask_placement = false;
    for (index, disk) in config.disks.iter().enumerate() {
        let due = {
            let slots = board.slots();
            let slot = &slots[index];
            slot.session.is_none() && slot.retry_at.is_none_or(|at| at <= Instant::now())
        };
        if !due {
            continue;
        }
        let result = session::setup(client, anonymous, endpoint, machine_id, config, disk, journals).await;
        let mut slots = board.slots();
        let slot = &mut slots[index];
        match result {
            Ok(session) => {
                slot.status.disk_id = Some(session.disk_id);
                slot.status.name = session.device.name.clone();
                slot.status.size_bytes = session.device.size_bytes;
                slot.status.phase = session.progress.phase().as_str().into();
                slot.status.resync_reason = session.progress.resync_reason.clone();
                slot.status.last_bookmark = session.progress.last_bookmark.clone();
                slot.status.last_error = None;
                slot.retry_at = None;
                slot.waiting_on_appliance = false;
                slot.failed_over = false;
                slot.session = Some(session);
            }
            Err(failure) if failure.failed_over => {
                let text = format!("{:#}", failure.error);
                tracing::warn!(disk = %disk.path.display(), reason = %text, "not replicating this disk any more");
                slot.status.last_error = Some(text);
                slot.status.phase = "failed_over".into();
                slot.retry_at = Some(Instant::now() + RECHECK_FAILED_OVER);
                slot.waiting_on_appliance = false;
                slot.failed_over = true;
            }
            Err(failure) => {
                ask_placement |= failure.ask_placement;
                let text = format!("{:#}", failure.error);
                let wait = failure
                    .retry_after
                    .map_or(RETRY_FAILED_DISK, |hint| hint.clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX));
                tracing::error!(disk = %disk.path.display(), error = %text, retry_in_s = wait.as_secs(), "cannot set the disk up");
                slot.status.last_error = Some(text.clone());
                slot.status.phase = if failure.fatal { "error" } else { "waiting" }.into();
                slot.retry_at = Some(Instant::now() + wait);
                slot.waiting_on_appliance = failure.transient;
                if failure.fatal {
                    bail!("{}: {text}", disk.path.display());
                }
            }
        }
    }
    Ok(ask_placement)
}

/// One round of passes over every disk that is set up.
pub(crate) async fn round(
    config: &AgentConfig,
    client: &DataClient,
    board: &Board,
    app: bool,
    group_id: Option<Uuid>,
    barrier: Option<&crate::group::BarrierRound>,
) -> anyhow::Result<Vec<PassReport>> {
    // An app-consistent round quiesces first, so the disks are captured while the
    // applications are quiet; when every disk is captured at one instant (a snapshot), they
    // thaw at once, otherwise only when every disk has been read.
    // A barrier's round: the disks were captured (and quiesced) at the prepare.
    let started_ms = barrier.map_or_else(now_unix_ms, |b| b.captured_unix_ms);
    let mut quiesce = if barrier.is_some() {
        None
    } else if app && config.quiesce.is_configured() {
        Some(Quiesce::begin(&config.quiesce).await)
    } else {
        if app {
            tracing::info!("an app-consistent bookmark is due but [quiesce] configures nothing: crash-consistent");
        }
        None
    };
    // Start a pass on every disk that is set up, each reading its snapshot.
    let mut passes = Vec::new();
    let mut reads_done = Vec::new();
    let mut kinds = Vec::new();
    let mut all_point_in_time = true;
    {
        let mut slots = board.slots();
        for (index, slot) in slots.iter_mut().enumerate() {
            let Some(session) = slot.session.as_mut() else {
                continue;
            };
            let mut mode = config.disks.get(index).map(|d| d.snapshot).unwrap_or_default();
            let frozen_here = !session.device.is_block_device
                && quiesce
                    .as_ref()
                    .is_some_and(|q| q.froze_file_system_of(&session.device.path));
            if frozen_here && mode != SnapshotMode::Lvm {
                // A clone writes the file system the quiesce froze: it would wait for the thaw.
                tracing::warn!(disk = %session.device.path.display(), "[quiesce] froze the file system of this image: the pass reads the live disk while it stays frozen");
                mode = SnapshotMode::None;
            }
            let taken = match barrier {
                Some(b) => b
                    .captures
                    .get(&session.disk_id)
                    .map(|device| crate::snapshot::Snapshot::held(device.clone(), b.hold))
                    .ok_or_else(|| anyhow::anyhow!("no capture of this disk at the group barrier")),
                None => crate::snapshot::take(&session.device, mode),
            };
            let snapshot = match taken {
                Ok(snapshot) => snapshot,
                Err(e) => {
                    let error = format!("snapshot ({mode:?}): {e:#}");
                    tracing::error!(disk = %session.device.path.display(), %error, "no pass this round");
                    slot.status.last_error = Some(error);
                    continue;
                }
            };
            all_point_in_time &= snapshot.point_in_time();
            slot.status.snapshot = Some(match &snapshot.note {
                Some(note) => format!("{} ({note})", snapshot.provider),
                None => snapshot.provider.to_string(),
            });
            let phase = session.progress.phase();
            let number = session.progress.passes_completed + 1;
            let bookmark_id = barrier.map_or_else(|| format!("pass-{number}-{started_ms}"), |b| b.bookmark_id.clone());
            let bookmark_id = BookmarkId::new(&bookmark_id).map_err(|e| anyhow::anyhow!("bookmark id: {e}"))?;
            let tag = match (&phase, &session.progress.resync_reason) {
                (Phase::Resync, Some(reason)) => format!("resync: {reason}"),
                _ => phase.as_str().to_string(),
            };
            // The capture's words first: a long resync reason may be cut at the tag's limit.
            let tag = format!("{}; {tag}", snapshot.tag());
            session.progress.pass_in_progress = true;
            if let Err(e) = progress::save(&config.state_dir, &session.progress) {
                slot.status.last_error = Some(format!("saving progress: {e}"));
                continue;
            }
            let counters = Arc::new(PassCounters::default());
            let (done_tx, done_rx) = oneshot::channel();
            let (kind_tx, kind_rx) = oneshot::channel();
            reads_done.push(done_rx);
            kinds.push(kind_tx);
            slot.counters = Some(counters.clone());
            slot.status.phase = phase.as_str().into();
            slot.status.pass = Some(PassStatus {
                number,
                running: true,
                started_unix_ms: started_ms,
                size_bytes: session.device.size_bytes,
                hold_ms: snapshot.point_in_time().then_some(snapshot.hold.as_secs_f64() * 1e3),
                ..PassStatus::default()
            });
            let request = PassRequest {
                client: client.clone(),
                disk_id: session.disk_id,
                device: snapshot.device.clone(),
                map: session.map.clone(),
                unconfirmed: session.unconfirmed.clone(),
                first_seq: session.next_seq,
                settings: session.settings,
                counters,
                bookmark_id,
                bookmark_tag: tag,
                reads_done: done_tx,
                bookmark: kind_rx,
            };
            passes.push(async move {
                let result = run_pass(request).await;
                drop(snapshot); // an LVM snapshot is removed once its pass is over
                (index, phase, result)
            });
        }
    }
    if passes.is_empty() {
        if let Some(quiesce) = quiesce {
            quiesce.end(true).await;
        }
        return Ok(Vec::new());
    }

    // Every disk captured: thaw now. Otherwise thaw as soon as every disk has been read.
    let early = match quiesce.take() {
        Some(q) if all_point_in_time => Some(q.end(true).await),
        other => {
            quiesce = other;
            None
        }
    };
    let limit = quiesce
        .as_ref()
        .map_or(Duration::from_secs(100 * 365 * 86_400), |q| q.timeout());
    let passes = join_all(passes);
    tokio::pin!(passes);
    let mut finished = None;
    let reads_in_time = tokio::select! {
        results = &mut passes => { finished = Some(results); true }
        waited = tokio::time::timeout(limit, join_all(reads_done)) => waited.is_ok(),
    };
    let outcome = match (early, quiesce) {
        (Some(outcome), _) => Some(outcome),
        (None, Some(quiesce)) => Some(quiesce.end(reads_in_time).await),
        (None, None) => None,
    };
    let consistent = match outcome {
        Some(outcome) => {
            for note in &outcome.notes {
                tracing::warn!(%note, "quiesce");
            }
            outcome.consistent
        }
        None => barrier.is_some() && app,
    };
    let choice = BookmarkChoice {
        kind: if consistent {
            BookmarkKind::App
        } else {
            BookmarkKind::Crash
        },
        source_time_unix_ms: started_ms,
        group_id: barrier.map(|b| b.group_id).or(group_id),
    };
    for kind in kinds {
        let _ = kind.send(choice.clone());
    }
    let results = match finished {
        Some(results) => results,
        None => passes.await,
    };

    // Record what each pass did (the slot lock is never held across an await).
    let mut reports = Vec::new();
    for (index, phase, result) in results {
        let taken = {
            let mut slots = board.slots();
            let slot = &mut slots[index];
            let counters = slot.counters.take();
            if let Some(pass) = slot.status.pass.as_mut() {
                use std::sync::atomic::Ordering::Relaxed;
                pass.running = false;
                pass.finished_unix_ms = Some(now_unix_ms());
                if let Some(counters) = counters {
                    pass.scanned_bytes = counters.scanned_bytes.load(Relaxed);
                    pass.changed_blocks = counters.changed_blocks.load(Relaxed);
                    pass.sent_bytes = counters.sent_bytes.load(Relaxed);
                }
                pass.quiesced = Some(consistent);
            }
            slot.session.take()
        };
        let Some(mut session) = taken else {
            continue;
        };
        let finished = match result {
            Ok(outcome) => finish_pass(config, client, &mut session, &outcome, phase)
                .await
                .map(|()| outcome)
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e.to_string()),
        };
        let mut slots = board.slots();
        let slot = &mut slots[index];
        match finished {
            Ok(outcome) => {
                slot.status.phase = session.progress.phase().as_str().into();
                slot.status.resync_reason = session.progress.resync_reason.clone();
                slot.status.last_bookmark = session.progress.last_bookmark.clone();
                slot.status.last_error = None;
                tracing::info!(
                    disk = %session.disk_id, phase = phase.as_str(), bookmark = %outcome.bookmark_id,
                    kind = outcome.bookmark_kind.as_str(), seq = outcome.bookmark_seq,
                    changed_blocks = outcome.changed_blocks, sent_bytes = outcome.sent_bytes,
                    seconds = outcome.seconds, "pass complete"
                );
                reports.push(PassReport {
                    disk_id: session.disk_id,
                    name: session.device.name.clone(),
                    phase: phase.as_str().into(),
                    bookmark_id: outcome.bookmark_id,
                    bookmark_kind: outcome.bookmark_kind.as_str().into(),
                    bookmark_seq: outcome.bookmark_seq,
                    scanned_bytes: outcome.scanned_bytes,
                    changed_blocks: outcome.changed_blocks,
                    sent_bytes: outcome.sent_bytes,
                    seconds: outcome.seconds,
                    read_mb_per_s: outcome.scanned_bytes as f64 / 1e6 / outcome.read_seconds.max(1e-9),
                });
                slot.session = Some(session);
            }
            Err(error) => fail_slot(slot, error),
        }
    }
    Ok(reports)
}

fn fail_slot(slot: &mut Slot, error: String) {
    tracing::error!(disk = %slot.status.path.display(), %error, "pass failed; the disk is set up again");
    slot.status.last_error = Some(error);
    slot.session = None;
    slot.retry_at = Some(Instant::now() + Duration::from_secs(1));
}

/// After the bookmark is durable: remember it, end a resync, and move `next_seq` on.
async fn finish_pass(
    config: &AgentConfig,
    client: &DataClient,
    session: &mut Session,
    outcome: &PassOutcome,
    phase: Phase,
) -> anyhow::Result<()> {
    let progress = &mut session.progress;
    progress.acked_seq = outcome.bookmark_seq;
    progress.passes_completed += 1;
    progress.initial_done = true;
    progress.pass_in_progress = false;
    progress.last_bookmark = Some(BookmarkRecord {
        id: outcome.bookmark_id.clone(),
        kind: outcome.bookmark_kind.as_str().into(),
        seq: outcome.bookmark_seq,
        source_time_unix_ms: outcome.source_time_unix_ms,
        acked_unix_ms: now_unix_ms(),
    });
    if outcome.bookmark_kind == BookmarkKind::App {
        progress.last_app_unix_ms = Some(outcome.source_time_unix_ms);
    }
    session.next_seq = outcome.bookmark_seq + 1;
    if phase == Phase::Resync {
        client
            .put_resync(session.disk_id, None)
            .await
            .context("telling the server the resync is done")?;
        progress.resync_reason = None;
    }
    progress::save(&config.state_dir, progress).context("saving progress")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blockmap::BlockMap;
    use crate::config::DiskConfig;
    use crate::device::Device;
    use crate::pass::PassSettings;
    use crate::progress::DiskProgress;

    fn board_with(dir: &std::path::Path, progresses: Vec<DiskProgress>) -> Board {
        let slots = progresses
            .into_iter()
            .enumerate()
            .map(|(i, progress)| {
                let path = dir.join(format!("disk{i}.img"));
                std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
                let device = Device::open(&DiskConfig {
                    path,
                    name: None,
                    identity: None,
                    sector_size: None,
                    snapshot: Default::default(),
                    reprotect_from: None,
                })
                .unwrap();
                let (map, _) = BlockMap::open(&dir.join(format!("map{i}")), progress.disk_id, 65536, 1 << 20).unwrap();
                Slot {
                    session: Some(Session {
                        device: Arc::new(device),
                        disk_id: progress.disk_id,
                        map: Arc::new(map),
                        unconfirmed: Arc::new(crate::unconfirmed::Unconfirmed::new(1)),
                        progress,
                        settings: PassSettings {
                            block_bytes: 65536,
                            read_bytes: 1 << 20,
                            batch_bytes: 8 << 20,
                            window: 1,
                            read_rate_bytes_per_sec: 0,
                            keep_page_cache: false,
                        },
                        next_seq: 1,
                    }),
                    status: DiskStatus::default(),
                    counters: None,
                    retry_at: None,
                    waiting_on_appliance: false,
                    failed_over: false,
                }
            })
            .collect();
        Board {
            machine_id: Uuid::nil(),
            slots: Mutex::new(slots),
        }
    }

    fn progress(initial_done: bool, resync: bool, last_app_unix_ms: Option<u64>) -> DiskProgress {
        let mut p = DiskProgress::new(Uuid::new_v4(), "/d".into(), 1 << 20);
        p.initial_done = initial_done;
        p.resync_reason = resync.then(|| "resized".to_string());
        p.last_app_unix_ms = last_app_unix_ms;
        p
    }

    #[test]
    fn app_bookmarks_follow_the_persisted_schedule_and_skip_long_passes() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_unix_ms();
        let hour = 3600;
        let long_ago = Some(now - 2 * hour * 1000);
        let recent = Some(now - 60 * 1000);
        // The last app bookmark survives a restart: an agent started just now is still due.
        assert!(app_due(
            &board_with(dir.path(), vec![progress(true, false, long_ago)]),
            hour,
            now
        ));
        assert!(!app_due(
            &board_with(dir.path(), vec![progress(true, false, recent)]),
            hour,
            now
        ));
        // Never had one: counted from the agent's start.
        assert!(!app_due(
            &board_with(dir.path(), vec![progress(true, false, None)]),
            hour,
            now
        ));
        assert!(app_due(
            &board_with(dir.path(), vec![progress(true, false, None)]),
            hour,
            now - 2 * hour * 1000
        ));
        // No quiesce around an initial copy or a resync, on any disk.
        let mixed = vec![progress(true, false, long_ago), progress(false, false, None)];
        assert!(!app_due(&board_with(dir.path(), mixed), hour, now));
        let mixed = vec![progress(true, false, long_ago), progress(true, true, long_ago)];
        assert!(!app_due(&board_with(dir.path(), mixed), hour, now));
        // Interval 0: never.
        assert!(!app_due(
            &board_with(dir.path(), vec![progress(true, false, long_ago)]),
            0,
            now
        ));
    }
}
