//! Setting a disk up for passes after a start, a restart or a lost connection: create (or
//! confirm) it on the server, give up any batches a previous run left past a gap, and decide
//! the phase from what the agent remembers against what the server says:
//!
//! | agent state                              | server            | phase                      |
//! |------------------------------------------|-------------------|----------------------------|
//! | none                                     | no batches        | initial                    |
//! | none or damaged                          | has batches       | resync (map forgotten)     |
//! | map replaced (resized, damaged, other)   | any               | resync (map forgotten)     |
//! | acked_seq above the server's durable_seq | lost batches      | resync (map forgotten)     |
//! | a continuous pass was interrupted        | any               | resync (map kept: trusted) |
//! | initial copy not finished                | any               | initial (map kept)         |
//! | a resync not finished                    | any               | resync (same reason)       |
//!
//! "Map kept" is safe because the map only ever errs towards unknown (blockmap.rs).

use anyhow::Context;
use ferry_client::api::ErrorCode;
use ferry_client::{ClientError, DataClient, DiskSpec};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

use crate::blockmap::{BlockMap, Opened};
use crate::config::{AgentConfig, DiskConfig};
use crate::device::Device;
use crate::pass::PassSettings;
use crate::progress::{self, DiskProgress};
use ferry_durable::private_dir;

pub struct Session {
    pub device: Arc<Device>,
    pub disk_id: Uuid,
    pub map: Arc<BlockMap>,
    /// The blocks of acknowledged batches storage may not hold yet (unconfirmed.rs).
    pub unconfirmed: Arc<crate::unconfirmed::Unconfirmed>,
    pub progress: DiskProgress,
    pub settings: PassSettings,
    /// The server's `durable_seq + 1`: the next batch's seq.
    pub next_seq: u64,
}

/// A setup failure, and whether trying again can help.
#[derive(Debug)]
pub struct SetupError {
    pub error: anyhow::Error,
    /// The appliance refused this machine's certificate, or the disk cannot be served as
    /// configured: retrying will not help.
    pub fatal: bool,
    /// The appliance was busy (503: draining, cache full) or unreachable: it, not this
    /// machine, has to change, so `run --once` waits for it rather than failing at once.
    pub transient: bool,
    /// The appliance's `Retry-After` (a 503 while it drains or its cache is full).
    pub retry_after: Option<Duration>,
    /// The disk was failed over and the failover committed (`state: failed_over`): this
    /// machine's copy is no longer replicated; the agent stops sending it (other disks go on).
    pub failed_over: bool,
    /// The process server is unreachable or says another one owns the disk (`not_owner`):
    /// the configuration server says where to send now (scale-out, docs/SCALE-OUT.md).
    pub ask_placement: bool,
}

impl<E: Into<anyhow::Error>> From<E> for SetupError {
    fn from(error: E) -> Self {
        SetupError {
            error: error.into(),
            fatal: false,
            transient: false,
            retry_after: None,
            failed_over: false,
            ask_placement: false,
        }
    }
}

/// Whether a client error means the appliance refused our certificate (or we refuse its).
pub fn certificate_refused(error: &ClientError) -> bool {
    match error {
        ClientError::Transport(text) => {
            let text = text.to_ascii_lowercase();
            text.contains("certificate") || text.contains("unknownca") || text.contains("unknown ca")
        }
        _ => false,
    }
}

/// Turns a client error at setup into an error a user can act on.
pub fn explain(error: ClientError, endpoint: &str) -> SetupError {
    if certificate_refused(&error) {
        return SetupError {
            error: anyhow::anyhow!(
                "the TLS handshake with {endpoint} failed over certificates ({error}): this machine's certificate \
                 was not issued by that appliance's CA (or has expired), or the server is not the appliance this \
                 machine registered with; register again with `ferry-agent register`"
            ),
            fatal: true,
            transient: false,
            retry_after: None,
            failed_over: false,
            ask_placement: false,
        };
    }
    let fatal = matches!(
        error.code(),
        Some(
            ErrorCode::SizeShrink
                | ErrorCode::DiskConflict
                | ErrorCode::Forbidden
                | ErrorCode::BadRequest
                | ErrorCode::ReprotectRefused
        )
    );
    let retry_after = match &error {
        ClientError::Status {
            retry_after_secs: Some(secs),
            ..
        } => Some(Duration::from_secs(*secs)),
        _ => None,
    };
    let ask_placement = matches!(error, ClientError::Transport(_)) || error.code() == Some(ErrorCode::NotOwner);
    SetupError {
        transient: !fatal && (error.is_retryable() || ask_placement),
        error: anyhow::anyhow!("{endpoint}: {error}"),
        fatal,
        retry_after,
        failed_over: false,
        ask_placement,
    }
}

/// Tells a refused client certificate from an unreachable server: with TLS 1.3 the server
/// checks the client certificate after the client's handshake is done, so a refusal often
/// reaches the client only as a closed connection. If a request without a certificate gets
/// through where ours did not, ours is what the server refuses.
async fn diagnose(error: ClientError, anonymous: &DataClient, endpoint: &str) -> SetupError {
    if matches!(error, ClientError::Transport(_)) && !certificate_refused(&error) && anonymous.health().await.is_ok() {
        return explain(
            ClientError::Transport(format!(
                "the server closed the connection after the certificate exchange ({error})"
            )),
            endpoint,
        );
    }
    explain(error, endpoint)
}

pub async fn setup(
    client: &DataClient,
    anonymous: &DataClient,
    endpoint: &str,
    machine_id: Uuid,
    config: &AgentConfig,
    disk: &DiskConfig,
    journals: &crate::unconfirmed::Journals,
) -> Result<Session, SetupError> {
    let device = Arc::new(Device::open(disk).map_err(SetupError::from)?);
    let disk_id = device.disk_id(machine_id);
    let dir = progress::disk_dir(&config.state_dir, disk_id);
    private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = DiskSpec {
        name: device.name.clone(),
        size_bytes: device.size_bytes,
        sector_size: device.sector_size,
        write_ordered: false,
        reprotect_from: disk
            .reprotect_request()
            .map_err(|m| anyhow::anyhow!("reprotect_from: {m}"))?,
    };
    if let Err(error) = client.put_disk(disk_id, &spec).await {
        return Err(diagnose(error, anonymous, endpoint).await);
    }
    let abandoned = client
        .abandon_past_durable(disk_id)
        .await
        .map_err(|e| explain(e, endpoint))?;
    let info = abandoned.disk;
    if info.state == ferry_client::api::DiskState::FailedOver {
        let failover = info.failover_id.map(|id| id.to_string()).unwrap_or_else(|| "?".into());
        let mut failure = SetupError::from(anyhow::anyhow!(
            "disk {disk_id} was failed over (failover {failover}, committed): the failed-over copy is the disk \
             now, so this machine's copy is no longer replicated and the agent stops sending it"
        ));
        failure.failed_over = true;
        return Err(failure);
    }
    if abandoned.abandoned > 0 {
        tracing::info!(%disk_id, batches = abandoned.abandoned, "gave up batches a previous run left past a gap");
    }
    let (map, opened) = BlockMap::open(
        &dir.join("blockmap"),
        disk_id,
        config.scan.block_bytes,
        device.size_bytes,
    )
    .with_context(|| format!("opening the block map in {}", dir.display()))?;
    let remembered =
        progress::load(&config.state_dir, disk_id).with_context(|| format!("reading progress in {}", dir.display()))?;
    // A new owner lost batches this agent saw acknowledged (a process server died before
    // uploading them): when the journal knows their blocks, only those are sent again.
    let acked_seq = remembered.as_ref().ok().and_then(|p| p.as_ref().map(|p| p.acked_seq));
    let journal = journals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&disk_id)
        .cloned();
    let lost_blocks = match (acked_seq, &journal) {
        (Some(acked), Some(journal)) if acked > info.durable_seq && opened == Opened::Existing => {
            journal.lost_after(info.durable_seq)
        }
        _ => None,
    };
    if let Some(blocks) = &lost_blocks {
        map.mark_unknown(blocks)
            .context("marking the lost batches' blocks in the block map")?;
    }
    let Decision {
        mut progress,
        resync,
        forget_map,
    } = decide(
        remembered,
        &opened,
        &info,
        lost_blocks.as_ref().map(Vec::len),
        &device.path,
        device.size_bytes,
        disk_id,
        &dir,
    );
    if forget_map {
        map.forget_all().context("resetting the block map")?;
    }
    // A reprotected disk the server holds no batch of starts as the failover point: a fresh
    // map may say so (reprotect.rs).
    if info.reprotect_from.is_some() && opened == Opened::Created && info.durable_seq == 0 && resync.is_none() {
        let seeded = crate::reprotect::seed(client, disk_id, &map, device.size_bytes)
            .await
            .map_err(SetupError::from)?;
        tracing::info!(%disk_id, blocks = seeded, "block map seeded from the failover point: the first pass sends only what changed since");
    }
    if let Some(reason) = &resync {
        tracing::warn!(%disk_id, %reason, "resync: the whole disk is read again and what differs is sent");
        client
            .put_resync(disk_id, Some(reason))
            .await
            .map_err(|e| explain(e, endpoint))?;
        progress.resync_reason = Some(reason.clone());
    }
    progress.size_bytes = device.size_bytes;
    progress.acked_seq = progress.acked_seq.min(info.durable_seq);
    progress::save(&config.state_dir, &progress).context("saving progress")?;
    let settings = PassSettings {
        block_bytes: config.scan.block_bytes,
        read_bytes: config.scan.read_bytes,
        batch_bytes: config.transfer.batch_bytes.min(info.max_batch_bytes),
        window: config.transfer.window.min(info.window).max(1),
        read_rate_bytes_per_sec: config.scan.read_rate_bytes_per_sec,
        keep_page_cache: config.scan.keep_page_cache,
    };
    let unconfirmed = match (
        journal,
        lost_blocks.is_some() || info.durable_seq >= acked_seq.unwrap_or(0),
    ) {
        (Some(journal), true) => {
            journal.restart_after(info.durable_seq);
            journal
        }
        _ => Arc::new(crate::unconfirmed::Unconfirmed::new(info.durable_seq + 1)),
    };
    unconfirmed.uploaded(info.uploaded_seq);
    journals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(disk_id, unconfirmed.clone());
    Ok(Session {
        device,
        disk_id,
        map: Arc::new(map),
        unconfirmed,
        progress,
        settings,
        next_seq: info.durable_seq + 1,
    })
}

const REASON_INTERRUPTED: &str = "a pass was interrupted";

/// What [`decide`] concluded.
#[derive(Debug)]
struct Decision {
    progress: DiskProgress,
    /// Why a resync is needed (none: initial or continuous).
    resync: Option<String>,
    /// The block map cannot be trusted: forget every entry before the next pass.
    forget_map: bool,
}

/// The table in the module header.
#[allow(clippy::too_many_arguments)] // the inputs of one decision, kept apart so tests name each
fn decide(
    remembered: Result<Option<DiskProgress>, String>,
    opened: &Opened,
    info: &ferry_client::DiskInfo,
    lost_blocks: Option<usize>,
    path: &Path,
    size_bytes: u64,
    disk_id: Uuid,
    dir: &Path,
) -> Decision {
    let fresh = || DiskProgress::new(disk_id, path.to_path_buf(), size_bytes);
    let server_has_data = info.durable_seq > 0;
    let mut progress = match remembered {
        Ok(Some(progress)) => progress,
        // A first start: whatever map lies around describes nothing the server has.
        Ok(None) | Err(_) if !server_has_data => {
            return Decision {
                progress: fresh(),
                resync: None,
                forget_map: *opened == Opened::Existing,
            }
        }
        lost_or_damaged => {
            let why = match lost_or_damaged {
                Err(damaged) => format!("the agent's progress was damaged: {damaged}"),
                _ => format!("the agent's state for this disk was lost ({} has none)", dir.display()),
            };
            let mut progress = fresh();
            // The server holds this disk's data: the resync ends in the first point of this run.
            progress.initial_done = true;
            return Decision {
                progress,
                resync: Some(why),
                forget_map: true,
            };
        }
    };
    let interrupted = std::mem::replace(&mut progress.pass_in_progress, false);
    let map_lost = match opened {
        Opened::Existing => None,
        Opened::Created => Some("the block map was missing".to_string()),
        Opened::Replaced(why) => Some(why.clone()),
    };
    let server_lost = (info.durable_seq < progress.acked_seq).then(|| {
        format!(
            "the server's durable_seq is {} but this agent saw {} acknowledged: the server lost batches",
            info.durable_seq, progress.acked_seq
        )
    });
    if let (None, Some(_), Some(blocks)) = (&map_lost, &server_lost, lost_blocks) {
        // The map is right but for the lost batches' blocks, marked unknown already.
        let why = format!(
            "the server's durable_seq is {} but this agent saw {} acknowledged: the {blocks} block(s) of the lost batches are sent again",
            info.durable_seq, progress.acked_seq
        );
        return Decision {
            progress,
            resync: Some(why),
            forget_map: false,
        };
    }
    let untrusted = map_lost.or(server_lost);
    if !progress.initial_done {
        // No point exists yet: the initial copy goes on (from scratch if the map is untrusted).
        return Decision {
            progress,
            resync: None,
            forget_map: untrusted.is_some(),
        };
    }
    if let Some(why) = untrusted {
        return Decision {
            progress,
            resync: Some(why),
            forget_map: true,
        };
    }
    let resync = progress
        .resync_reason
        .clone()
        .or_else(|| interrupted.then(|| REASON_INTERRUPTED.to_string()));
    Decision {
        progress,
        resync,
        forget_map: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(durable_seq: u64) -> ferry_client::DiskInfo {
        ferry_client::DiskInfo {
            disk_id: Uuid::from_u128(1),
            machine_id: Uuid::from_u128(2),
            name: "d".into(),
            size_bytes: 1 << 20,
            sector_size: 512,
            write_ordered: false,
            durable_seq,
            uploaded_seq: 0,
            window: 16,
            max_batch_bytes: 16 << 20,
            latest_point: None,
            state: ferry_client::api::DiskState::Replicating,
            error: None,
            resync_reason: None,
            failover_id: None,
            reprotect_from: None,
        }
    }

    fn progress(acked_seq: u64, initial_done: bool, pass_in_progress: bool) -> DiskProgress {
        let mut p = DiskProgress::new(Uuid::from_u128(1), "/d".into(), 1 << 20);
        p.acked_seq = acked_seq;
        p.initial_done = initial_done;
        p.pass_in_progress = pass_in_progress;
        p
    }

    fn run(
        remembered: Result<Option<DiskProgress>, String>,
        opened: Opened,
        durable: u64,
    ) -> (Option<String>, bool, bool) {
        run_knowing(remembered, opened, durable, None)
    }

    fn run_knowing(
        remembered: Result<Option<DiskProgress>, String>,
        opened: Opened,
        durable: u64,
        lost_blocks: Option<usize>,
    ) -> (Option<String>, bool, bool) {
        let d = decide(
            remembered,
            &opened,
            &info(durable),
            lost_blocks,
            Path::new("/d"),
            1 << 20,
            Uuid::from_u128(1),
            Path::new("/s"),
        );
        (d.resync, d.forget_map, d.progress.initial_done)
    }

    /// Each row of the table in the module header.
    #[test]
    fn the_phase_table() {
        // Nothing anywhere: initial; a stray map is forgotten.
        assert_eq!(run(Ok(None), Opened::Created, 0), (None, false, false));
        assert_eq!(run(Ok(None), Opened::Existing, 0), (None, true, false));
        // State lost or damaged while the server has data: resync, map forgotten.
        let (why, forget, done) = run(Ok(None), Opened::Existing, 9);
        assert!(why.unwrap().contains("was lost") && forget && done);
        let (why, forget, _) = run(Err("bad json".into()), Opened::Existing, 9);
        assert!(why.unwrap().contains("damaged") && forget);
        // Map replaced (resize): resync, forgotten.
        let (why, forget, _) = run(
            Ok(Some(progress(9, true, false))),
            Opened::Replaced("the disk was resized".into()),
            9,
        );
        assert_eq!((why.as_deref(), forget), (Some("the disk was resized"), true));
        // The server lost batches.
        let (why, forget, _) = run(Ok(Some(progress(9, true, false))), Opened::Existing, 4);
        assert!(why.unwrap().contains("lost batches") && forget);
        // ...whose blocks the journal knows (marked unknown already): resync, map kept.
        let (why, forget, _) = run_knowing(Ok(Some(progress(9, true, false))), Opened::Existing, 4, Some(3));
        assert!(why.unwrap().contains("the 3 block(s) of the lost batches") && !forget);
        // The journal cannot help a map that is gone anyway.
        let (_, forget, _) = run_knowing(Ok(Some(progress(9, true, false))), Opened::Created, 4, Some(3));
        assert!(forget);
        // Interrupted continuous pass: resync with the map kept.
        let (why, forget, _) = run(Ok(Some(progress(9, true, true))), Opened::Existing, 12);
        assert_eq!((why.as_deref(), forget), (Some(REASON_INTERRUPTED), false));
        // Interrupted initial copy: still initial, map kept; with the map lost, from scratch.
        assert_eq!(
            run(Ok(Some(progress(3, false, true))), Opened::Existing, 5),
            (None, false, false)
        );
        assert_eq!(
            run(Ok(Some(progress(3, false, true))), Opened::Created, 5),
            (None, true, false)
        );
        // An unfinished resync goes on with its reason.
        let mut resyncing = progress(9, true, false);
        resyncing.resync_reason = Some("the disk was resized".into());
        assert_eq!(
            run(Ok(Some(resyncing)), Opened::Existing, 9),
            (Some("the disk was resized".into()), false, true)
        );
        // All well: continuous.
        assert_eq!(
            run(Ok(Some(progress(9, true, false))), Opened::Existing, 9),
            (None, false, true)
        );
    }
}
