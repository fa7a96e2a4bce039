//! This machine's part in a consistency group's barrier (ferryd's group_points.rs):
//!
//! - `group-prepare`: quiesce (for an app point, as configured), capture every disk at one
//!   instant and hold its writes (held.rs), end the quiesce, report ok (or why not, holding
//!   nothing);
//! - then wait for `group-commit` or `group-abort` of the same barrier, or the barrier's
//!   deadline, whichever comes first, and release the writes at once: a dead or slow appliance
//!   never keeps this machine's writes held past the deadline;
//! - on commit, pass every disk from its capture and end with the group's bookmark; report the
//!   bookmarks and how long writes were held.
//!
//! Other commands arriving while a barrier holds are answered "busy" (not carried out).
//! In this build captures are of image files on a reflink file system (XFS, btrfs); a disk
//! that cannot be captured so fails the prepare with the reason.

use ferry_client::commands::{BookmarkAsk, Command, CommandName, CommandOutcome};
use ferry_client::DataClient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::config::AgentConfig;
use crate::device::Device;
use crate::held::Held;
use crate::quiesce::Quiesce;
use crate::replicate::{outcome_of, round, Board};

/// What a committed barrier's round reads and writes.
pub struct BarrierRound {
    pub group_id: Uuid,
    pub bookmark_id: String,
    pub captures: HashMap<Uuid, Arc<Device>>,
    /// The longest hold of this machine's disks.
    pub hold: Duration,
    /// When the disks were captured (the bookmark's source time).
    pub captured_unix_ms: u64,
}

fn failed(message: String) -> CommandOutcome {
    CommandOutcome {
        move_ms: None,
        ok: false,
        message,
        bookmarks: Vec::new(),
        hold_ms: None,
    }
}

/// Carries out a barrier command (see the module header).
pub(crate) async fn barrier(
    config: &AgentConfig,
    client: &DataClient,
    board: &Board,
    management: &DataClient,
    machine_id: Uuid,
    command: Command,
    commands: &mut Option<mpsc::Receiver<Command>>,
) {
    let report = |c: Command, outcome: CommandOutcome| async move {
        crate::commands::report(management, machine_id, &c, &outcome).await;
    };
    if command.command != CommandName::GroupPrepare {
        let message = format!(
            "no barrier {} is held here (it ended at its deadline, or the agent restarted)",
            command.barrier_id.map(|b| b.to_string()).unwrap_or_default()
        );
        report(command, failed(message)).await;
        return;
    }
    let (Some(group_id), Some(barrier_id), Some(bookmark_id), Some(deadline_ms)) = (
        command.group_id,
        command.barrier_id,
        command.bookmark_id.clone(),
        command.deadline_unix_ms,
    ) else {
        report(
            command,
            failed("a group-prepare without its group, barrier, bookmark or deadline".into()),
        )
        .await;
        return;
    };
    let left = Duration::from_millis(deadline_ms.saturating_sub(ferry_client::clock::now_unix_ms()));
    let deadline = Instant::now() + left;
    let app = command.kind == Some(BookmarkAsk::App);

    // Prepare: capture and hold every disk (quiesced around the captures for an app point).
    let quiesce = if app && config.quiesce.is_configured() {
        Some(Quiesce::begin(&config.quiesce).await)
    } else {
        None
    };
    let captured_unix_ms = ferry_client::clock::now_unix_ms();
    let mut holds: Vec<(Uuid, Held)> = Vec::new();
    let mut problem = None;
    {
        let slots = board.slots();
        for slot in slots.iter() {
            let Some(session) = slot.session.as_ref() else {
                continue;
            };
            if session.device.is_block_device {
                problem = Some(format!(
                    "{}: group points need image files on a reflink file system (XFS, btrfs) in this build",
                    session.device.path.display()
                ));
                break;
            }
            match crate::held::take(&session.device) {
                Ok(held) => holds.push((session.disk_id, held)),
                Err(e) => {
                    problem = Some(format!("{}: {e:#}", session.device.path.display()));
                    break;
                }
            }
        }
    }
    let consistent = match quiesce {
        Some(quiesce) => quiesce.end(true).await.consistent,
        None => false,
    };
    if holds.is_empty() && problem.is_none() {
        problem = Some("no disk is set up".into());
    }
    if let Some(problem) = problem {
        for (_, held) in &mut holds {
            held.release();
        }
        report(command, failed(problem)).await;
        return;
    }
    report(
        command,
        CommandOutcome {
            move_ms: None,
            ok: true,
            message: format!("{} disk(s) captured and held", holds.len()),
            bookmarks: Vec::new(),
            hold_ms: None,
        },
    )
    .await;

    // Wait for the second phase, never past the deadline.
    let decision = loop {
        tokio::select! {
            next = crate::commands::next(commands) => {
                if next.barrier_id == Some(barrier_id) && next.command != CommandName::GroupPrepare {
                    break Some(next);
                }
                report(next, failed(format!("busy: barrier {barrier_id} holds this machine's writes"))).await;
            }
            () = tokio::time::sleep_until(deadline.into()) => break None,
        }
    };
    let hold = holds
        .iter_mut()
        .map(|(_, held)| held.release())
        .max()
        .unwrap_or_default();
    let Some(decision) = decision else {
        tracing::warn!(%barrier_id, hold_ms = hold.as_secs_f64() * 1e3, "the barrier's deadline passed: writes released, no group bookmark");
        return;
    };
    if decision.command == CommandName::GroupAbort {
        let message = format!("aborted; writes released after {:.1} ms", hold.as_secs_f64() * 1e3);
        report(
            decision,
            CommandOutcome {
                move_ms: None,
                ok: true,
                message,
                bookmarks: Vec::new(),
                hold_ms: Some(hold.as_secs_f64() * 1e3),
            },
        )
        .await;
        return;
    }
    let round_of = BarrierRound {
        group_id,
        bookmark_id,
        captures: holds.iter().map(|(disk, held)| (*disk, held.device.clone())).collect(),
        hold,
        captured_unix_ms,
    };
    drop(holds);
    let reports = round(config, client, board, app && consistent, None, Some(&round_of)).await;
    let mut outcome = outcome_of(board, reports.as_deref().unwrap_or_default(), &reports, Vec::new());
    outcome.hold_ms = Some(hold.as_secs_f64() * 1e3);
    report(decision, outcome).await;
}
