//! How long a disk's durable batches wait before they are cut into a change set: every object
//! is a billed PUT (about $0.05 per 10,000 on Azure's hot tier), and a quiet disk cut after
//! every `flush_delay` makes one object a second out of a trickle. So each disk has its own
//! delay: it doubles (up to `idle_flush_delay_max`) each time a change set is cut by the timer
//! while still under a quarter of `change_set_bytes`, and falls back to `flush_delay` as soon
//! as one fills by size. A batch that holds a bookmark is always cut at once, so recovery
//! points, and the RPO they give, never wait for this delay; what waits longer is only the
//! upload of writes between bookmarks, which stay durable in the cache meanwhile.
//!
//! Pure: the coordinator keeps one [`Duration`] per disk and asks [`next`].

use std::time::Duration;

/// Why a change set was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// It reached `change_set_bytes`.
    Size,
    /// Its last batch holds a bookmark.
    Bookmark,
    /// Its oldest batch waited the disk's delay.
    Timer,
}

/// The limits the delay moves between (read live from the tunables).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub base: Duration,
    pub max: Duration,
    pub change_set_bytes: u64,
}

/// The disk's delay in force now (its stored value, within the current limits).
pub fn current(stored: Duration, limits: Limits) -> Duration {
    stored.clamp(limits.base, limits.max.max(limits.base))
}

/// The disk's delay after a change set of `bytes` was cut for `why`.
pub fn next(stored: Duration, why: Cut, bytes: u64, limits: Limits) -> Duration {
    let now = current(stored, limits);
    match why {
        Cut::Size => limits.base,
        Cut::Bookmark => now,
        Cut::Timer if bytes < limits.change_set_bytes / 4 => current(now.saturating_mul(2), limits),
        Cut::Timer => limits.base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        base: Duration::from_secs(1),
        max: Duration::from_secs(60),
        change_set_bytes: 8 << 20,
    };

    #[test]
    fn a_quiet_disk_waits_longer_a_busy_one_does_not() {
        let mut delay = LIMITS.base;
        let mut seen = Vec::new();
        for _ in 0..8 {
            delay = next(delay, Cut::Timer, 100_000, LIMITS);
            seen.push(delay.as_secs());
        }
        assert_eq!(seen, [2, 4, 8, 16, 32, 60, 60, 60], "doubles up to the maximum");
        assert_eq!(
            next(delay, Cut::Bookmark, 100, LIMITS),
            delay,
            "a bookmark cut changes nothing"
        );
        assert_eq!(
            next(delay, Cut::Size, 8 << 20, LIMITS),
            LIMITS.base,
            "a full change set resets it"
        );
        assert_eq!(
            next(delay, Cut::Timer, 4 << 20, LIMITS),
            LIMITS.base,
            "so does a large timed one"
        );
    }

    #[test]
    fn tuned_limits_apply_at_once() {
        let stored = Duration::from_secs(60);
        let tighter = Limits {
            max: Duration::from_secs(5),
            ..LIMITS
        };
        assert_eq!(current(stored, tighter), Duration::from_secs(5));
        let slower_base = Limits {
            base: Duration::from_secs(10),
            max: Duration::from_secs(5),
            ..LIMITS
        };
        assert_eq!(
            current(Duration::ZERO, slower_base),
            Duration::from_secs(10),
            "the base wins"
        );
    }
}
