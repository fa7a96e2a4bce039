//! Which recovery points of a disk a consolidation keeps: a pure function of the points, the
//! pins, the disk's policy and the time, so every rule is tested without storage.
//!
//! A point's age is `now` minus its source time (a source time in the future counts as age 0).
//! In order, a point is kept when it is pinned; when it is the disk's newest point (a disk that
//! stopped replicating keeps its last point however old); when it is younger than `keep_all`;
//! or, younger than `window`, when it is the newest of its kind in its interval of
//! `crash_every` (crash points) or `app_every` (app points; 0 keeps every one). Everything else
//! is dropped. Intervals are aligned to the Unix epoch, so runs agree on them. The oldest kept
//! point's seq is where the next base goes.

use ferry_config::retention::DiskPolicy;
use std::collections::{BTreeMap, HashSet};

/// A recovery point as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointRef {
    pub seq: u64,
    pub bookmark_id: String,
    pub kind: PointKind,
    pub source_time_unix_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PointKind {
    Crash,
    App,
}

impl PointKind {
    /// From a point's `kind` text; anything but `app` is thinned as a crash point (every point
    /// is at least crash-consistent).
    pub fn from_text(kind: &str) -> Self {
        if kind == "app" {
            PointKind::App
        } else {
            PointKind::Crash
        }
    }
}

/// Why a point is kept or dropped, as `--dry-run` and the summary say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pinned,
    Newest,
    KeepAll,
    /// The newest of its kind in its interval.
    IntervalNewest,
    /// Inside the window, but a newer point of its kind stands for its interval.
    Thinned,
    OlderThanWindow,
}

impl Verdict {
    pub fn keeps(self) -> bool {
        !matches!(self, Verdict::Thinned | Verdict::OlderThanWindow)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pinned => "pinned",
            Verdict::Newest => "newest",
            Verdict::KeepAll => "keep_all",
            Verdict::IntervalNewest => "interval_newest",
            Verdict::Thinned => "thinned",
            Verdict::OlderThanWindow => "older_than_window",
        }
    }
}

/// The decision for every point of a disk, in seq order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub points: Vec<(PointRef, Verdict)>,
    /// Pinned points older than the window: the policy cannot be met while they stay pinned
    /// (an alert says so), and they hold the base back.
    pub pinned_beyond_window: Vec<PointRef>,
}

impl Plan {
    pub fn kept(&self) -> impl Iterator<Item = &PointRef> {
        self.points.iter().filter(|(_, v)| v.keeps()).map(|(p, _)| p)
    }

    pub fn dropped(&self) -> impl Iterator<Item = (&PointRef, Verdict)> {
        self.points.iter().filter(|(_, v)| !v.keeps()).map(|(p, v)| (p, *v))
    }

    /// The seq of the oldest kept point: everything a kept point needs is at or after it.
    pub fn oldest_kept_seq(&self) -> Option<u64> {
        self.kept().map(|p| p.seq).min()
    }
}

/// Applies `policy` at `now_unix_ms` to a disk's `points`; `pinned` holds the
/// `(seq, bookmark_id)` of its pins.
pub fn plan(points: &[PointRef], pinned: &HashSet<(u64, String)>, policy: &DiskPolicy, now_unix_ms: u64) -> Plan {
    let mut sorted: Vec<&PointRef> = points.iter().collect();
    sorted.sort_by_key(|p| (p.seq, p.source_time_unix_ms));
    let newest_seq = sorted.last().map(|p| p.seq);
    let age_ms = |p: &PointRef| now_unix_ms.saturating_sub(p.source_time_unix_ms);
    let every_ms = |kind| match kind {
        PointKind::Crash => policy.crash_every.millis(),
        PointKind::App => policy.app_every.millis(),
    };

    // The newest point of each (kind, interval) inside the window: by source time, then seq.
    let mut interval_newest: BTreeMap<(bool, u64), (u64, u64)> = BTreeMap::new();
    for point in &sorted {
        let every = every_ms(point.kind);
        if every == 0 || age_ms(point) > policy.window.millis() {
            continue;
        }
        let key = (point.kind == PointKind::App, point.source_time_unix_ms / every);
        let candidate = (point.source_time_unix_ms, point.seq);
        let best = interval_newest.entry(key).or_insert(candidate);
        if candidate > *best {
            *best = candidate;
        }
    }

    let mut pinned_beyond_window = Vec::new();
    let decided = sorted
        .into_iter()
        .map(|point| {
            let age = age_ms(point);
            let verdict = if pinned.contains(&(point.seq, point.bookmark_id.clone())) {
                if age > policy.window.millis() {
                    pinned_beyond_window.push(point.clone());
                }
                Verdict::Pinned
            } else if Some(point.seq) == newest_seq {
                Verdict::Newest
            } else if age <= policy.keep_all.millis() {
                Verdict::KeepAll
            } else if age > policy.window.millis() {
                Verdict::OlderThanWindow
            } else {
                let every = every_ms(point.kind);
                let key = (point.kind == PointKind::App, point.source_time_unix_ms / every.max(1));
                if every == 0 || interval_newest.get(&key) == Some(&(point.source_time_unix_ms, point.seq)) {
                    Verdict::IntervalNewest
                } else {
                    Verdict::Thinned
                }
            };
            (point.clone(), verdict)
        })
        .collect();
    Plan {
        points: decided,
        pinned_beyond_window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_config::retention::Span;

    const MINUTE: u64 = 60_000;
    const HOUR: u64 = 60 * MINUTE;
    const NOW: u64 = 1_800_000_000_000 - 1_800_000_000_000 % HOUR;

    /// A point every 5 minutes for three days, every third one an app point, oldest first.
    fn three_days() -> Vec<PointRef> {
        (0..3 * 24 * 12)
            .map(|i: u64| PointRef {
                seq: 10 * (i + 1),
                bookmark_id: format!("bm-{i}"),
                kind: if i.is_multiple_of(3) {
                    PointKind::App
                } else {
                    PointKind::Crash
                },
                source_time_unix_ms: NOW - 72 * HOUR + i * 5 * MINUTE,
            })
            .collect()
    }

    fn verdict_of(plan: &Plan, seq: u64) -> Verdict {
        plan.points.iter().find(|(p, _)| p.seq == seq).unwrap().1
    }

    #[test]
    fn the_default_policy_keeps_the_last_hour_then_thins_then_prunes() {
        let points = three_days();
        let plan = plan(&points, &HashSet::new(), &DiskPolicy::default(), NOW);
        assert_eq!(plan.points.len(), points.len());
        for point in &points {
            let age = NOW - point.source_time_unix_ms;
            let verdict = verdict_of(&plan, point.seq);
            if point.seq == points.last().unwrap().seq {
                assert_eq!(verdict, Verdict::Newest);
            } else if age > 24 * HOUR {
                assert_eq!(verdict, Verdict::OlderThanWindow, "{point:?}");
            } else if age <= HOUR {
                assert_eq!(verdict, Verdict::KeepAll, "{point:?}");
            } else if point.kind == PointKind::App {
                assert_eq!(verdict, Verdict::IntervalNewest, "app points: all kept (app_every 0)");
            } else {
                // Crash points at minutes 5, 10, 20, 25, 35, 40, ... of a three-slot cycle:
                // per 10-minute interval only the newest crash point stays.
                let interval = point.source_time_unix_ms / (10 * MINUTE);
                let newer_in_interval = points.iter().any(|q| {
                    q.kind == PointKind::Crash
                        && q.source_time_unix_ms > point.source_time_unix_ms
                        && q.source_time_unix_ms / (10 * MINUTE) == interval
                });
                let expected = if newer_in_interval {
                    Verdict::Thinned
                } else {
                    Verdict::IntervalNewest
                };
                assert_eq!(verdict, expected, "{point:?}");
            }
        }
        let oldest = plan.oldest_kept_seq().unwrap();
        let oldest_point = points.iter().find(|p| p.seq == oldest).unwrap();
        assert!(NOW - oldest_point.source_time_unix_ms <= 24 * HOUR);
        assert!(plan.dropped().count() > points.len() / 2, "two days of three go");
    }

    #[test]
    fn pins_and_the_newest_point_survive_any_age() {
        let mut points = three_days();
        points.truncate(12); // the first hour of three days ago: all beyond the window
        let pinned: HashSet<(u64, String)> = [(points[2].seq, points[2].bookmark_id.clone())].into();
        let plan = plan(&points, &pinned, &DiskPolicy::default(), NOW);
        assert_eq!(verdict_of(&plan, points[2].seq), Verdict::Pinned);
        assert_eq!(verdict_of(&plan, points[11].seq), Verdict::Newest);
        assert_eq!(plan.kept().count(), 2);
        assert_eq!(plan.pinned_beyond_window, vec![points[2].clone()]);
        assert_eq!(plan.oldest_kept_seq(), Some(points[2].seq));
        // A pin of another point id at the same seq does not pin this one.
        let other: HashSet<(u64, String)> = [(points[2].seq, "other".to_string())].into();
        let unpinned = super::plan(&points, &other, &DiskPolicy::default(), NOW);
        assert_eq!(verdict_of(&unpinned, points[2].seq), Verdict::OlderThanWindow);
        assert_eq!(unpinned.oldest_kept_seq(), Some(points[11].seq));
    }

    #[test]
    fn app_thinning_and_future_times() {
        let policy = DiskPolicy {
            app_every: Span(3_600),
            keep_all: Span(0),
            ..DiskPolicy::default()
        };
        let points: Vec<PointRef> = (0..4)
            .map(|i| PointRef {
                seq: i + 1,
                bookmark_id: format!("a{i}"),
                kind: PointKind::App,
                // Three in the hour starting two hours ago, one "in the future" (clock skew).
                source_time_unix_ms: if i < 3 { NOW - 2 * HOUR + i * MINUTE } else { NOW + HOUR },
            })
            .collect();
        let plan = plan(&points, &HashSet::new(), &policy, NOW);
        let verdicts: Vec<Verdict> = plan.points.iter().map(|(_, v)| *v).collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Thinned,
                Verdict::Thinned,
                Verdict::IntervalNewest,
                Verdict::Newest
            ]
        );
        assert!(super::plan(&[], &HashSet::new(), &policy, NOW)
            .oldest_kept_seq()
            .is_none());
    }
}
