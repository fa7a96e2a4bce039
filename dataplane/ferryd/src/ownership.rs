//! Disk ownership (docs/SCALE-OUT.md): one process server writes a disk to storage at a time,
//! holding the disk's lease there, in an owner epoch recorded in the vault.
//!
//! - **Claim** (`PUT /v1/disks/{id}` for a disk not held here, and at start for the cached
//!   disks): acquire the lease on `disks/{id}/lease` (refused: `409 not_owner` naming the
//!   holder); read the owner records; resume our own epoch when the newest record is ours and
//!   the cache still has the disk at it; otherwise take over: the next epoch, from the end of
//!   the disk's contiguous prefix in storage (`since_seq`), recorded by creating
//!   `owners/{epoch}.fseal` (never replaced: of two claimers one wins), the vault marked
//!   format 2, and the cache restarted at that seq (the sender resends or resyncs the rest).
//! - **Renew** every third of the lease. A renewal refused means another process server holds
//!   the disk: it is lost here at once (the cache forgets it, its requests get `not_owner`).
//!   A renewal that fails for another reason (storage unreachable) keeps the disk, but nothing
//!   of it is written to storage once the last granted renewal is older than the lease less a
//!   margin ([`Ownership::writable`]); ingest into the cache goes on.
//! - **Target unreachable** (at start, or never reached yet): a disk is held *provisionally*:
//!   its batches are cached (the cache rides out storage outages) but nothing goes to storage;
//!   it is claimed once the target answers. Should another process server own it by then, the
//!   cache forgets it and the agent, seeing `durable_seq` go back, resyncs (nothing is lost).
//! - **Fencing** does not rest on timing: everything uploaded carries the epoch in its name,
//!   and readers use an object only if its epoch owned its seqs (`ferry_vault::owners`).
//!
//! Limits: one lease call per held disk per renewal period, [`RENEWALS_IN_FLIGHT`] at once;
//! claims of one disk are serialized (a second one meanwhile answers `503 busy`).

use bytes::Bytes;
use ferry_format::names::{ObjectName, VAULT_JSON};
use ferry_format::plaintexts::OwnerRecord;
use ferry_format::vault::{VaultDescriptor, VAULT_FORMAT_EPOCHS};
use ferry_format::Keyring;
use ferry_storage::{LeaseAnswer, LeaseOp, ObjectStorage};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::cache::{Cache, DiskMeta, DiskView};

/// Lease calls running at once during a renewal round.
pub const RENEWALS_IN_FLIGHT: usize = 32;
/// Nothing is written to storage for a disk once its last granted renewal is older than the
/// lease less this (renewals run every third of the lease, so two may fail first).
pub const WRITE_MARGIN: Duration = Duration::from_secs(5);

/// A disk held here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub epoch: u64,
    pub since_seq: u64,
    /// When the last granted acquire or renewal was sent.
    renewed_at: Instant,
}

/// Why a disk cannot be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("disk {disk_id} is owned by process server {owner}")]
    OwnedElsewhere { disk_id: Uuid, owner: String },
    #[error("the target is not connected yet")]
    NotConnected,
    #[error("disk {0} is being claimed right now")]
    Busy(Uuid),
    #[error("disk {disk_id} belongs to another machine")]
    OtherMachine { disk_id: Uuid },
    #[error("claiming disk {disk_id}: {message}")]
    Failed { disk_id: Uuid, message: String },
}

/// The ownership of this process server's disks.
pub struct Ownership {
    /// The lease id: names this process server in leases and owner records.
    pub id: Uuid,
    /// The data endpoint agents are sent to (owner records and `not_owner` answers carry it).
    pub name: String,
    pub lease: Duration,
    vault: OnceLock<(Arc<dyn ObjectStorage>, Keyring)>,
    held: Mutex<HashMap<Uuid, Held>>,
    /// Disks another process server took from this one: their owner, for `not_owner`.
    lost: Mutex<HashMap<Uuid, String>>,
    claiming: Mutex<HashSet<Uuid>>,
    /// Disks cached while the target was unreachable, to be claimed once it answers.
    provisional: Mutex<HashSet<Uuid>>,
    /// Disks being moved to another process server (`POST /v1/disks/{id}/release`): their
    /// batches are refused with `not_owner` naming it while the cache uploads what it holds.
    moving: Mutex<HashMap<Uuid, String>>,
}

/// What a claim did, for the log and the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The target is not reachable: cached only, claimed when it answers.
    Provisional,
    /// Our own epoch, carried on (a restart, or a lease that had lapsed with nobody taking it).
    Resumed(Held),
    /// A new epoch from `since_seq`.
    TookOver(Held),
}

impl Ownership {
    pub fn new(id: Uuid, name: String, lease: Duration) -> Self {
        Self {
            id,
            name,
            lease,
            vault: OnceLock::new(),
            held: Default::default(),
            lost: Default::default(),
            claiming: Default::default(),
            provisional: Default::default(),
            moving: Default::default(),
        }
    }

    /// Starts moving a held disk to `to`: no more batches here; the pipeline flushes it.
    pub fn begin_move(&self, disk_id: Uuid, to: String) {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(disk_id, to);
    }

    /// Where the disk is being moved, while it is.
    pub fn moving_to(&self, disk_id: Uuid) -> Option<String> {
        self.moving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&disk_id)
            .cloned()
    }

    /// The lease id of the process server with this certificate: stable across restarts.
    pub fn id_from_certificate(cert_der: &[u8]) -> Uuid {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_ref()[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// The target, once connected (claims wait for it).
    pub fn connect(&self, storage: Arc<dyn ObjectStorage>, keyring: Keyring) {
        let _ = self.vault.set((storage, keyring));
    }

    /// The epoch the disk may be written to storage in now: held, and renewed recently enough.
    pub fn writable(&self, disk_id: Uuid) -> Option<u64> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&disk_id)
            .filter(|h| h.renewed_at.elapsed() + WRITE_MARGIN < self.lease)
            .map(|h| h.epoch)
    }

    /// Whether the disk is held here, or provisionally while the target is unreachable (its
    /// batches may be cached).
    pub fn holds(&self, disk_id: Uuid) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&disk_id)
            || self
                .provisional
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&disk_id)
    }

    fn held(&self, disk_id: Uuid) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&disk_id)
    }

    /// The owner another process server is, when it took the disk from this one.
    pub fn lost_to(&self, disk_id: Uuid) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&disk_id)
            .cloned()
    }

    /// Disks held now.
    pub fn held_count(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Disks another process server took from this one since start.
    pub fn lost_count(&self) -> usize {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn lease_name(disk_id: Uuid) -> String {
        ObjectName::DiskLease { disk_id }.to_string()
    }

    /// Claims `meta.disk_id` (see the module header) for the calling machine `machine`;
    /// `meta` is the disk as the agent describes it now (used when this cache lacks it).
    pub async fn claim(&self, cache: &Cache, meta: DiskMeta) -> Result<Claimed, ClaimError> {
        let disk_id = meta.disk_id;
        if !self.claiming.lock().unwrap_or_else(|p| p.into_inner()).insert(disk_id) {
            return Err(ClaimError::Busy(disk_id));
        }
        let result = match self.vault.get() {
            Some(_) => self.claim_once(cache, meta).await,
            None => Self::hold_provisionally(cache, meta).await,
        };
        self.claiming.lock().unwrap_or_else(|p| p.into_inner()).remove(&disk_id);
        match &result {
            Ok(Claimed::Provisional) => {
                self.provisional
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(disk_id);
            }
            Ok(Claimed::Resumed(held) | Claimed::TookOver(held)) => {
                self.provisional
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&disk_id);
                self.lost.lock().unwrap_or_else(|p| p.into_inner()).remove(&disk_id);
                self.held
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(disk_id, *held);
            }
            Err(ClaimError::OwnedElsewhere { owner, .. }) => {
                self.provisional
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&disk_id);
                self.lost
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(disk_id, owner.clone());
            }
            Err(_) => {}
        }
        result
    }

    /// The disk as cached (created at epoch 0 when new), to be claimed once the target answers.
    async fn hold_provisionally(cache: &Cache, meta: DiskMeta) -> Result<Claimed, ClaimError> {
        let disk_id = meta.disk_id;
        if cache.disk(disk_id).is_none() {
            let cache = cache.clone();
            tokio::task::spawn_blocking(move || cache.create_disk(meta))
                .await
                .map_err(|e| ClaimError::Failed {
                    disk_id,
                    message: e.to_string(),
                })?
                .map_err(|e| ClaimError::Failed {
                    disk_id,
                    message: e.to_string(),
                })?;
        }
        Ok(Claimed::Provisional)
    }

    async fn claim_once(&self, cache: &Cache, meta: DiskMeta) -> Result<Claimed, ClaimError> {
        let disk_id = meta.disk_id;
        let failed = |message: String| ClaimError::Failed { disk_id, message };
        let (storage, keyring) = self.vault.get().cloned().ok_or(ClaimError::NotConnected)?;
        let key = keyring.disk_key(disk_id);
        let sent = Instant::now();
        let acquire = LeaseOp::Acquire {
            lease_id: self.id.to_string(),
            duration_secs: self.lease.as_secs() as u32,
        };
        let history = |e: anyhow::Error| failed(format!("{e:#}"));
        match storage.lease(&Self::lease_name(disk_id), acquire).await {
            Ok(LeaseAnswer::Granted) => {}
            Ok(LeaseAnswer::Refused) => {
                let records = ferry_vault::owners::History::read(&*storage, &key, disk_id)
                    .await
                    .map_err(history)?;
                let owner = records
                    .newest()
                    .map_or_else(|| "another process server".to_string(), |r| r.owner_name.clone());
                return Err(ClaimError::OwnedElsewhere { disk_id, owner });
            }
            Err(e) => return Err(failed(e.to_string())),
        }
        let records = ferry_vault::owners::History::read(&*storage, &key, disk_id)
            .await
            .map_err(history)?;
        let cached = cache.disk(disk_id);
        let newest = records.newest().cloned();
        // Our own epoch, with the cache at it: carry on.
        if let (Some(view), Some(record)) = (&cached, &newest) {
            if record.owner_id == self.id
                && view.meta.owner_epoch == record.epoch
                && view.released_through + 1 >= record.since_seq
            {
                return Ok(Claimed::Resumed(Held {
                    epoch: record.epoch,
                    since_seq: record.since_seq,
                    renewed_at: sent,
                }));
            }
        }
        let stored = ferry_vault::log::stored_prefix(&*storage, &records, disk_id)
            .await
            .map_err(history)?;
        // The disk's descriptor in storage decides whose it is and what it is (the agent's
        // description may be newer: a resize is applied after the claim, as on any PUT).
        let descriptor = match ferry_vault::disks::read_descriptor(&*storage, &keyring, disk_id).await {
            Ok(descriptor) => Some(descriptor),
            Err(_) if stored == 0 => None,
            Err(e) => return Err(failed(format!("{e:#}"))),
        };
        if let Some(descriptor) = &descriptor {
            if descriptor.machine_id != meta.machine_id {
                let _ = self.release(&*storage, disk_id).await;
                return Err(ClaimError::OtherMachine { disk_id });
            }
        }
        // A disk nobody recorded an owner for: epoch 0 (format 1's names), when this cache has
        // been writing it (a vault from before ownership) or nothing of it is stored yet.
        let first_owner = newest.is_none() && (cached.is_some() || stored == 0);
        let (epoch, since_seq) = if first_owner {
            (0, 1)
        } else {
            let epoch = newest.as_ref().map_or(1, |r| r.epoch + 1);
            (epoch, stored + 1)
        };
        if epoch > 0 {
            mark_vault_format_2(&*storage).await.map_err(failed)?;
        }
        let record = OwnerRecord {
            format: ferry_format::plaintexts::PLAINTEXT_FORMAT,
            disk_id,
            epoch,
            owner_id: self.id,
            owner_name: self.name.clone(),
            since_seq,
            claimed_unix_ms: ferry_client::clock::now_unix_ms(),
        };
        let name = ObjectName::Owner { disk_id, epoch }.to_string();
        let json = serde_json::to_vec(&record).map_err(|e| failed(e.to_string()))?;
        let sealed = ferry_format::seal::seal(&key, &name, &json, 1).map_err(|e| failed(e.to_string()))?;
        match storage.put_new(&name, Bytes::from(sealed)).await {
            Ok(true) => {}
            // Another claimer got this epoch first (its lease then expired under it, or a
            // retry of ours created it: either way, look again next time).
            Ok(false) => {
                let _ = self.release(&*storage, disk_id).await;
                return Err(failed(format!(
                    "epoch {epoch} was claimed by someone else first; retry"
                )));
            }
            Err(e) => return Err(failed(e.to_string())),
        }
        let held = Held {
            epoch,
            since_seq,
            renewed_at: sent,
        };
        if epoch == 0 && cached.is_some() {
            // The cache's batches are this epoch's already.
            return Ok(Claimed::TookOver(held));
        }
        let base = cached.map(|v| v.meta).unwrap_or(meta);
        let meta = DiskMeta {
            owner_epoch: epoch,
            created_unix_ms: descriptor.as_ref().map_or(base.created_unix_ms, |d| d.created_unix_ms),
            reprotect_from: descriptor.as_ref().map_or(base.reprotect_from, |d| d.reprotect_from),
            ..base
        };
        let cache = cache.clone();
        tokio::task::spawn_blocking(move || cache.take_over(meta, since_seq - 1))
            .await
            .map_err(|e| failed(e.to_string()))?
            .map_err(|e| failed(e.to_string()))?;
        Ok(Claimed::TookOver(held))
    }

    async fn release(&self, storage: &dyn ObjectStorage, disk_id: Uuid) -> Result<(), ferry_storage::StorageError> {
        let op = LeaseOp::Release {
            lease_id: self.id.to_string(),
        };
        storage.lease(&Self::lease_name(disk_id), op).await.map(|_| ())
    }

    /// Gives a held disk up on purpose (a planned move): no more writes, the lease released.
    pub async fn give_up(&self, disk_id: Uuid, new_owner: String) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(&disk_id);
        self.moving.lock().unwrap_or_else(|p| p.into_inner()).remove(&disk_id);
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(disk_id, new_owner);
        if let Some((storage, _)) = self.vault.get() {
            if let Err(e) = self.release(&**storage, disk_id).await {
                tracing::warn!(disk = %disk_id, error = %e, "cannot release the disk's lease; it runs out by itself");
            }
        }
    }

    /// One renewal round: every held disk's lease, [`RENEWALS_IN_FLIGHT`] at a time. Returns
    /// the disks lost (another process server holds them now).
    pub async fn renew_all(&self) -> Vec<Uuid> {
        let Some((storage, _)) = self.vault.get().cloned() else {
            return Vec::new();
        };
        let disks: Vec<Uuid> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let lease_id = self.id.to_string();
        let answers: Vec<(Uuid, Instant, Result<LeaseAnswer, ferry_storage::StorageError>)> =
            futures::stream::iter(disks.into_iter().map(|disk_id| {
                let (storage, lease_id) = (storage.clone(), lease_id.clone());
                async move {
                    let sent = Instant::now();
                    let op = LeaseOp::Renew { lease_id };
                    (disk_id, sent, storage.lease(&Self::lease_name(disk_id), op).await)
                }
            }))
            .buffer_unordered(RENEWALS_IN_FLIGHT)
            .collect()
            .await;
        let mut lost = Vec::new();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (disk_id, sent, answer) in answers {
            match answer {
                Ok(LeaseAnswer::Granted) => {
                    if let Some(h) = held.get_mut(&disk_id) {
                        h.renewed_at = sent;
                    }
                }
                Ok(LeaseAnswer::Refused) => {
                    if held.remove(&disk_id).is_some() {
                        lost.push(disk_id);
                    }
                }
                Err(e) => {
                    tracing::warn!(disk = %disk_id, error = %e, "cannot renew the disk's lease; no uploads of it until it is renewed");
                }
            }
        }
        drop(held);
        let mut lost_to = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        for disk_id in &lost {
            lost_to.insert(*disk_id, "another process server".to_string());
        }
        lost
    }
}

/// `vault.json` says format 2 once a takeover may write epoch-named objects (a reader of
/// format 1 would not know to fence them). Rewritten whole, the same but for the format.
async fn mark_vault_format_2(storage: &dyn ObjectStorage) -> Result<(), String> {
    let bytes = storage.get(VAULT_JSON).await.map_err(|e| e.to_string())?;
    let mut vault = VaultDescriptor::parse(&bytes).map_err(|e| e.to_string())?;
    if vault.format >= VAULT_FORMAT_EPOCHS {
        return Ok(());
    }
    vault.format = VAULT_FORMAT_EPOCHS;
    storage
        .put(VAULT_JSON, Bytes::from(vault.to_json()))
        .await
        .map_err(|e| e.to_string())
}

/// Claims every cached disk once the target is connected (after a restart), then renews every
/// held disk's lease each third of the lease until `stopped`; a lost disk is forgotten by the
/// cache.
pub async fn run(ownership: Arc<Ownership>, cache: Cache, mut stopped: tokio::sync::watch::Receiver<bool>) {
    // Disks cached before a restart were this process server's: their batches keep coming
    // into the cache while the target is out of reach, and they are claimed once it answers.
    {
        let mut provisional = ownership.provisional.lock().unwrap_or_else(|p| p.into_inner());
        provisional.extend(cache.disks().iter().map(|v| v.meta.disk_id));
    }
    while ownership.vault.get().is_none() {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    for view in cache.disks() {
        claim_cached(&ownership, &cache, view).await;
    }
    let period = ownership.lease / 3;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(period) => {}
        }
        for disk_id in ownership.renew_all().await {
            tracing::warn!(disk = %disk_id, "lost the disk's lease to another process server: its cached batches are dropped, its agent is sent on");
            forget(&cache, disk_id).await;
        }
        // Disks cached but not held (held provisionally, or a claim that failed): again; and
        // lost disks the cache could not drop at once.
        for view in cache.disks() {
            let disk_id = view.meta.disk_id;
            if ownership.lost_to(disk_id).is_some() {
                forget(&cache, disk_id).await;
            } else if !ownership.held(disk_id) {
                claim_cached(&ownership, &cache, view).await;
            }
        }
    }
}

async fn claim_cached(ownership: &Ownership, cache: &Cache, view: DiskView) {
    let disk_id = view.meta.disk_id;
    match ownership.claim(cache, view.meta).await {
        Ok(claimed) => tracing::info!(disk = %disk_id, ?claimed, "holding the disk"),
        Err(ClaimError::OwnedElsewhere { owner, .. }) => {
            tracing::warn!(disk = %disk_id, %owner, "the disk is owned by another process server now: its cached batches are dropped");
            forget(cache, disk_id).await;
        }
        Err(e) => tracing::warn!(disk = %disk_id, error = %e, "cannot claim the disk yet; trying again"),
    }
}

async fn forget(cache: &Cache, disk_id: Uuid) {
    let cache = cache.clone();
    match tokio::task::spawn_blocking(move || cache.forget_disk(disk_id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(disk = %disk_id, error = %e, "cannot drop the disk from the cache"),
        Err(e) => tracing::warn!(disk = %disk_id, error = %e, "cannot drop the disk from the cache"),
    }
}
