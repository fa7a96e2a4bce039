//! A disk's recovery points (FORMATS.md section 4): reading them all (or only those not read
//! before, [`KnownPoints`]), and choosing one the way `ferryctl restore` and `ferryctl
//! failover` are asked to ([`Selector`]).

use anyhow::{bail, Context, Result};
use ferry_format::names::ObjectName;
use ferry_format::plaintexts::RecoveryPoint;
use ferry_format::ObjectKey;
use ferry_storage::{list_all, ObjectStorage};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// Every recovery point of a disk with its object name, read `parallel` at once, by seq.
pub async fn read_all(
    storage: &Arc<dyn ObjectStorage>,
    key: &Arc<ObjectKey>,
    disk_id: Uuid,
    parallel: usize,
) -> Result<Vec<(String, RecoveryPoint)>> {
    let history = crate::owners::History::read(&**storage, key, disk_id).await?;
    let names = list_names(&**storage, &history, disk_id).await?;
    read_named(storage, key, names, parallel).await
}

/// The names of the disk's recovery points that count: those whose epoch owned their seq
/// under `history` ([`crate::owners`]).
pub async fn list_names(
    storage: &dyn ObjectStorage,
    history: &crate::owners::History,
    disk_id: Uuid,
) -> Result<Vec<String>> {
    Ok(list_all(storage, &ObjectName::disk_prefix(disk_id, "points/"))
        .await
        .context("cannot list the recovery points")?
        .into_iter()
        .map(|meta| meta.name)
        .filter(|name| match ObjectName::parse(name) {
            Ok(ObjectName::Point { epoch, seq, .. }) => history.counts(epoch, seq, seq),
            _ => false,
        })
        .collect())
}

/// The recovery points named, read `parallel` at once, by seq.
pub async fn read_named(
    storage: &Arc<dyn ObjectStorage>,
    key: &Arc<ObjectKey>,
    names: Vec<String>,
    parallel: usize,
) -> Result<Vec<(String, RecoveryPoint)>> {
    let (storage, key) = (storage.clone(), key.clone());
    let mut points: Vec<(String, RecoveryPoint)> = futures::stream::iter(names.into_iter().map(move |name| {
        let (storage, key) = (storage.clone(), key.clone());
        async move {
            let point: RecoveryPoint = crate::sealed::read_json(&*storage, &key, &name).await?;
            Ok::<_, anyhow::Error>((name, point))
        }
    }))
    .buffer_unordered(parallel.max(1))
    .try_collect()
    .await?;
    points.sort_by_key(|(_, point)| point.seq);
    Ok(points)
}

/// The name of the disk's recovery point with the highest seq that counts (fencing applied),
/// found without reading any point.
pub async fn newest_name(storage: &dyn ObjectStorage, key: &ObjectKey, disk_id: Uuid) -> Result<Option<String>> {
    let history = crate::owners::History::read(storage, key, disk_id).await?;
    let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "points/"))
        .await
        .context("cannot list the recovery points")?;
    Ok(listed
        .into_iter()
        .filter_map(|m| match ObjectName::parse(&m.name) {
            Ok(ObjectName::Point { epoch, seq, .. }) if history.counts(epoch, seq, seq) => Some((seq, m.name)),
            _ => None,
        })
        .max_by_key(|(seq, _)| *seq)
        .map(|(_, name)| name))
}

/// Whether the disk's point `bookmark_id` at `seq` is in storage, written by the owner epoch
/// of that seq (any epoch's name: the disk may have moved between process servers).
pub async fn exists(
    storage: &dyn ObjectStorage,
    key: &ObjectKey,
    disk_id: Uuid,
    seq: u64,
    bookmark_id: &str,
) -> Result<bool> {
    let history = crate::owners::History::read(storage, key, disk_id).await?;
    let listed = list_all(storage, &ObjectName::disk_prefix(disk_id, "points/"))
        .await
        .context("cannot list the recovery points")?;
    Ok(listed.iter().any(|meta| {
        matches!(ObjectName::parse(&meta.name), Ok(ObjectName::Point { epoch, seq: s, bookmark_id: b, .. })
            if s == seq && b.as_str() == bookmark_id && history.counts(epoch, s, s))
    }))
}

/// Most points [`KnownPoints`] keeps, over every disk: about 350 bytes each (the object name,
/// the point with its strings, the table's share), so at most about 35 MB. With agents'
/// default bookmarks (crash every 5 min, app hourly) and the default retention policy a disk
/// keeps about 174 points: about 570 disks' worth.
pub const KNOWN_POINTS_MAX: usize = 100_000;

/// Recovery points already read, by object name, for a caller that reads the same disks'
/// points again and again (ferryd's consolidation, every `run_every`): a point object is
/// written only where none is and never changed, so a name listed again need not be read
/// again. After each read a disk's entry holds exactly the points listed (deleted ones are
/// forgotten). Bounded: a disk whose points would take the whole past its limit
/// ([`KNOWN_POINTS_MAX`] by default) is not kept, and its points are read every time.
#[derive(Debug)]
pub struct KnownPoints {
    disks: std::sync::Mutex<HashMap<Uuid, HashMap<String, RecoveryPoint>>>,
    limit: usize,
}

impl Default for KnownPoints {
    fn default() -> Self {
        Self::with_limit(KNOWN_POINTS_MAX)
    }
}

impl KnownPoints {
    /// Keeping at most `limit` points over every disk (tests use a small one).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            disks: Default::default(),
            limit,
        }
    }

    fn disks(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, HashMap<String, RecoveryPoint>>> {
        self.disks.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The points named (of `disk_id`), by seq: those known from memory, the others read from
    /// storage `parallel` at once. Returns them with how many were read from storage.
    pub async fn read(
        &self,
        storage: &Arc<dyn ObjectStorage>,
        key: &Arc<ObjectKey>,
        disk_id: Uuid,
        names: Vec<String>,
        parallel: usize,
    ) -> Result<(Vec<(String, RecoveryPoint)>, usize)> {
        let (mut points, unknown): (Vec<(String, RecoveryPoint)>, Vec<String>) = {
            let disks = self.disks();
            let known = disks.get(&disk_id);
            let mut points = Vec::new();
            let mut unknown = Vec::new();
            for name in names {
                match known.and_then(|k| k.get(&name)) {
                    Some(point) => points.push((name, point.clone())),
                    None => unknown.push(name),
                }
            }
            (points, unknown)
        };
        let read = unknown.len();
        points.extend(read_named(storage, key, unknown, parallel).await?);
        points.sort_by_key(|(_, point)| point.seq);
        let mut disks = self.disks();
        disks.remove(&disk_id);
        let others: usize = disks.values().map(HashMap::len).sum();
        if others + points.len() <= self.limit {
            disks.insert(disk_id, points.iter().cloned().collect());
        }
        Ok((points, read))
    }

    /// How many points are known, over every disk.
    pub fn len(&self) -> usize {
        self.disks().values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which state of a disk is wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// The newest recovery point.
    Latest,
    /// The newest point of kind `app`.
    LatestApp,
    /// The point with this bookmark id.
    Bookmark(String),
    /// The state after this batch (a point or not).
    Seq(u64),
    /// The newest point whose source time is at or before this (Unix ms).
    At(u64),
}

/// What a selector chose: a seq, and the point there when there is one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    pub seq: u64,
    pub point: Option<RecoveryPoint>,
}

/// Chooses from `points` (by seq, as [`read_all`] gives them); the error says why none fits.
pub fn choose(points: &[RecoveryPoint], selector: &Selector) -> Result<Chosen> {
    let found = match selector {
        Selector::Seq(0) => bail!("seqs count from 1"),
        Selector::Seq(seq) => {
            return Ok(Chosen {
                seq: *seq,
                point: points.iter().find(|p| p.seq == *seq).cloned(),
            })
        }
        Selector::Latest => points.last(),
        Selector::LatestApp => points.iter().rev().find(|p| p.kind == "app"),
        Selector::Bookmark(id) => points.iter().rev().find(|p| &p.bookmark_id == id),
        Selector::At(at) => points
            .iter()
            .filter(|p| p.source_time_unix_ms <= *at)
            .max_by_key(|p| (p.source_time_unix_ms, p.seq)),
    };
    match found {
        Some(point) => Ok(Chosen {
            seq: point.seq,
            point: Some(point.clone()),
        }),
        None => bail!(match selector {
            _ if points.is_empty() => "the disk has no recovery point yet".to_string(),
            Selector::LatestApp => "the disk has no app-consistent recovery point".to_string(),
            Selector::Bookmark(id) => format!("no recovery point {id}"),
            Selector::At(at) => format!(
                "no recovery point at or before {} UTC (the oldest is from {} UTC)",
                ferry_format::time::format_unix_ms(*at),
                ferry_format::time::format_unix_ms(points.iter().map(|p| p.source_time_unix_ms).min().unwrap_or(0))
            ),
            _ => "no recovery point fits".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(seq: u64, id: &str, kind: &str, source: u64) -> RecoveryPoint {
        RecoveryPoint {
            format: 1,
            disk_id: Uuid::nil(),
            seq,
            bookmark_id: id.into(),
            kind: kind.into(),
            tag: None,
            group_id: None,
            source_time_unix_ms: source,
            created_unix_ms: source,
        }
    }

    #[test]
    fn each_selector_chooses_its_point_or_says_why_not() {
        let points = [
            point(10, "a", "crash", 1_000),
            point(20, "b", "app", 2_000),
            point(30, "c", "crash", 3_000),
        ];
        let seq = |s: &Selector| choose(&points, s).map(|c| c.seq).map_err(|e| e.to_string());
        assert_eq!(seq(&Selector::Latest), Ok(30));
        assert_eq!(seq(&Selector::LatestApp), Ok(20));
        assert_eq!(seq(&Selector::Bookmark("a".into())), Ok(10));
        assert_eq!(seq(&Selector::At(2_500)), Ok(20)); // between two points: the older
        assert_eq!(seq(&Selector::At(3_000)), Ok(30));
        assert_eq!(seq(&Selector::Seq(25)), Ok(25));
        assert_eq!(choose(&points, &Selector::Seq(25)).unwrap().point, None);
        assert_eq!(
            choose(&points, &Selector::Seq(20)).unwrap().point.unwrap().bookmark_id,
            "b"
        );
        assert!(seq(&Selector::At(999))
            .unwrap_err()
            .contains("no recovery point at or before"));
        assert!(seq(&Selector::Bookmark("zz".into()))
            .unwrap_err()
            .contains("no recovery point zz"));
        assert!(seq(&Selector::Seq(0)).is_err());
        assert!(choose(&points[..1], &Selector::LatestApp)
            .unwrap_err()
            .to_string()
            .contains("no app-consistent"));
        assert!(choose(&[], &Selector::Latest)
            .unwrap_err()
            .to_string()
            .contains("no recovery point yet"));
    }
}
