//! The `[retention]` policy of ferry.toml and its per-disk overrides (`[retention.disks."ID"]`,
//! written by `ferryctl retention set`): which recovery points consolidation keeps, the size
//! of base chunks, and how often ferryd consolidates. Durations are written `0`, `90s`, `10m`,
//! `24h`, `15d` ([`Span`]). The rules that use the policy are in `ferry_vault::retention`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// Longest retention window: Azure Site Recovery's limit, and how long pruned-point records
/// are kept.
pub const WINDOW_MAX: Span = Span(15 * 86_400);
const CHUNK_BYTES_MIN: u64 = 64 * 1024;
const CHUNK_BYTES_MAX: u64 = 256 * 1024 * 1024;
const RUN_EVERY_MIN: Span = Span(60);

/// A whole number of seconds, as ferry.toml writes durations: `0`, `90s`, `10m`, `24h`, `15d`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub u64);

impl Span {
    pub fn secs(self) -> u64 {
        self.0
    }

    pub fn millis(self) -> u64 {
        self.0.saturating_mul(1000)
    }

    pub fn duration(self) -> Duration {
        Duration::from_secs(self.0)
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Span(0));
        }
        let bad =
            || format!("{text:?} is not a duration: write 0, or a whole number with s, m, h or d (90s, 10m, 24h, 15d)");
        let unit_at = text.len().checked_sub(1).ok_or_else(bad)?;
        let (number, unit) = text.split_at(unit_at);
        let seconds_per = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let count: u64 = number.parse().map_err(|_| bad())?;
        count.checked_mul(seconds_per).map(Span).ok_or_else(bad)
    }
}

impl fmt::Display for Span {
    /// The largest unit that divides the span exactly (days from two days up, so a day is
    /// `24h` as ferry.toml's defaults write it), so text round-trips.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0;
        if secs == 0 {
            return f.write_str("0");
        }
        for (unit, per) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs.is_multiple_of(per) && (unit != "d" || secs >= 2 * per) {
                return write!(f, "{}{unit}", secs / per);
            }
        }
        write!(f, "{secs}s")
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which points a disk keeps, and the chunk size of its bases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskPolicy {
    /// Points older than this (by their source time) are pruned; at most [`WINDOW_MAX`].
    pub window: Span,
    /// Every point younger than this is kept (for a write-ordered disk, every seq).
    pub keep_all: Span,
    /// Between `keep_all` and `window`: the newest crash point of each interval (0: all).
    pub crash_every: Span,
    /// App points inside the window: all (0), or the newest of each interval.
    pub app_every: Span,
    /// Plaintext size of a base chunk.
    pub chunk_bytes: u64,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        Self {
            window: Span(86_400),
            keep_all: Span(3_600),
            crash_every: Span(600),
            app_every: Span(0),
            chunk_bytes: 4 * 1024 * 1024,
        }
    }
}

impl DiskPolicy {
    /// The rules, each naming its key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.window > WINDOW_MAX {
            return Err(("window", format!("must be at most {WINDOW_MAX}, got {}", self.window)));
        }
        if self.window == Span(0) {
            return Err(("window", "must be more than 0".into()));
        }
        if self.keep_all > self.window {
            return Err((
                "keep_all",
                format!("must be at most the window ({}), got {}", self.window, self.keep_all),
            ));
        }
        if self.chunk_bytes < CHUNK_BYTES_MIN
            || self.chunk_bytes > CHUNK_BYTES_MAX
            || !self.chunk_bytes.is_multiple_of(4096)
        {
            return Err((
                "chunk_bytes",
                format!(
                    "must be a multiple of 4096 between {CHUNK_BYTES_MIN} and {CHUNK_BYTES_MAX}, got {}",
                    self.chunk_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// One disk's overrides of the appliance-wide policy; unset keys follow it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskPolicyOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_all: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_every: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_every: Option<Span>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_bytes: Option<u64>,
}

impl DiskPolicyOverride {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with these overrides applied.
    pub fn over(&self, base: DiskPolicy) -> DiskPolicy {
        DiskPolicy {
            window: self.window.unwrap_or(base.window),
            keep_all: self.keep_all.unwrap_or(base.keep_all),
            crash_every: self.crash_every.unwrap_or(base.crash_every),
            app_every: self.app_every.unwrap_or(base.app_every),
            chunk_bytes: self.chunk_bytes.unwrap_or(base.chunk_bytes),
        }
    }
}

/// `[retention]`: the appliance-wide policy, how often ferryd consolidates, and per-disk
/// overrides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub window: Span,
    pub keep_all: Span,
    pub crash_every: Span,
    pub app_every: Span,
    pub chunk_bytes: u64,
    /// How often ferryd consolidates in the background (0: only on demand).
    pub run_every: Span,
    /// Storage calls (and base chunks being sealed) in flight at once in a run: its share of
    /// the uplink and the machine beside the upload pipeline.
    pub parallel: u32,
    /// The nice value of ferryd's background consolidation threads (0-19): under load the
    /// scheduler gives ingest and uploads the CPU first, idle CPU goes to consolidation.
    pub nice: u32,
    /// Overrides by disk id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub disks: BTreeMap<Uuid, DiskPolicyOverride>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let policy = DiskPolicy::default();
        Self {
            window: policy.window,
            keep_all: policy.keep_all,
            crash_every: policy.crash_every,
            app_every: policy.app_every,
            chunk_bytes: policy.chunk_bytes,
            run_every: Span(600),
            parallel: 4,
            nice: 19,
            disks: BTreeMap::new(),
        }
    }
}

impl RetentionConfig {
    /// The appliance-wide policy.
    pub fn default_policy(&self) -> DiskPolicy {
        DiskPolicy {
            window: self.window,
            keep_all: self.keep_all,
            crash_every: self.crash_every,
            app_every: self.app_every,
            chunk_bytes: self.chunk_bytes,
        }
    }

    /// The policy of one disk: its overrides over the appliance-wide policy.
    pub fn policy_for(&self, disk_id: Uuid) -> DiskPolicy {
        match self.disks.get(&disk_id) {
            Some(overrides) => overrides.over(self.default_policy()),
            None => self.default_policy(),
        }
    }

    /// The rules, each naming its key (`retention.window`, `retention.disks.ID.keep_all`).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.default_policy()
            .validate()
            .map_err(|(key, message)| (format!("retention.{key}"), message))?;
        if self.run_every != Span(0) && self.run_every < RUN_EVERY_MIN {
            return Err((
                "retention.run_every".into(),
                format!(
                    "must be 0 (on demand only) or at least {RUN_EVERY_MIN}, got {}",
                    self.run_every
                ),
            ));
        }
        for (disk_id, overrides) in &self.disks {
            overrides
                .over(self.default_policy())
                .validate()
                .map_err(|(key, message)| (format!("retention.disks.{disk_id}.{key}"), message))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print_back() {
        for (text, secs) in [("0", 0), ("90s", 90), ("10m", 600), ("24h", 86_400), ("15d", 1_296_000)] {
            let span: Span = text.parse().unwrap();
            assert_eq!(span, Span(secs));
            assert_eq!(span.to_string(), text);
        }
        assert_eq!(Span(3_600).to_string(), "1h");
        assert_eq!(Span(2 * 86_400).to_string(), "2d");
        assert_eq!(Span(61).to_string(), "61s");
        for bad in ["", "10", "h", "-1h", "1.5h", "10 m", "1w", "99999999999999999999d"] {
            let error = bad.parse::<Span>().unwrap_err();
            assert!(error.contains("is not a duration"), "{bad}: {error}");
        }
    }

    #[test]
    fn policies_validate_and_overrides_apply() {
        let config = RetentionConfig::default();
        assert!(config.validate().is_ok());
        let long = RetentionConfig {
            window: Span(16 * 86_400),
            ..RetentionConfig::default()
        };
        assert_eq!(long.validate().unwrap_err().0, "retention.window");
        let disk = Uuid::from_u128(7);
        let mut config = RetentionConfig::default();
        config.disks.insert(
            disk,
            DiskPolicyOverride {
                keep_all: Some(Span(2 * 86_400)),
                ..Default::default()
            },
        );
        assert_eq!(
            config.validate().unwrap_err().0,
            format!("retention.disks.{disk}.keep_all"),
            "keep_all over the (inherited) window"
        );
        config.disks.get_mut(&disk).unwrap().window = Some(Span(3 * 86_400));
        assert!(config.validate().is_ok());
        assert_eq!(config.policy_for(disk).window, Span(3 * 86_400));
        assert_eq!(config.policy_for(Uuid::from_u128(8)), DiskPolicy::default());
        let text = toml::to_string(&config).unwrap();
        assert_eq!(toml::from_str::<RetentionConfig>(&text).unwrap(), config, "{text}");
    }
}
