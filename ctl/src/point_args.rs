//! The flags that say which state of a disk a command wants (`restore`, `failover`), one way
//! for every command, turned into a [`ferry_vault::points::Selector`].

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry_vault::points::Selector;

#[derive(Args, Debug, Clone, Default)]
#[group(id = "which_point", required = true, multiple = false)]
pub struct PointArgs {
    /// The newest recovery point (with `failover --config` naming a running ferryd, after
    /// waiting until what the disk has cached now is uploaded: the lowest RPO).
    #[arg(long)]
    pub latest: bool,
    /// The newest recovery point already in storage, without waiting for anything cached
    /// (lowest RTO); the same as --latest for commands that never wait.
    #[arg(long)]
    pub latest_processed: bool,
    /// The newest app-consistent recovery point.
    #[arg(long)]
    pub latest_app: bool,
    /// The recovery point with this bookmark id.
    #[arg(long, value_name = "BOOKMARK")]
    pub point: Option<String>,
    /// The state after this batch (for a write-ordered disk every seq is crash-consistent).
    #[arg(long, value_name = "N")]
    pub seq: Option<u64>,
    /// The newest recovery point whose source time is at or before this RFC 3339 time
    /// (`2026-12-03T21:00:00Z`, or with an offset).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

impl PointArgs {
    pub fn selector(&self) -> Result<Selector> {
        Ok(if let Some(seq) = self.seq {
            if seq == 0 {
                bail!("--seq counts from 1");
            }
            Selector::Seq(seq)
        } else if let Some(id) = &self.point {
            Selector::Bookmark(id.clone())
        } else if let Some(at) = &self.at {
            Selector::At(parse_time(at)?)
        } else if self.latest_app {
            Selector::LatestApp
        } else if self.latest || self.latest_processed {
            Selector::Latest
        } else {
            bail!("say which point: --latest, --latest-processed, --latest-app, --point BOOKMARK, --seq N or --at TIME")
        })
    }
}

/// Unix milliseconds of an RFC 3339 time.
fn parse_time(text: &str) -> Result<u64> {
    let time = chrono::DateTime::parse_from_rfc3339(text.trim())
        .with_context(|| format!("--at {text:?} is not an RFC 3339 time such as 2026-12-03T21:00:00Z"))?;
    u64::try_from(time.timestamp_millis()).with_context(|| format!("--at {text:?} is before 1970"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_zones_and_bad_ones_are_named() {
        assert_eq!(parse_time("2026-12-03T21:00:00Z").unwrap(), 1_796_331_600_000);
        assert_eq!(parse_time("2026-12-03T22:00:00+01:00").unwrap(), 1_796_331_600_000);
        assert!(parse_time("yesterday").unwrap_err().to_string().contains("RFC 3339"));
        assert!(parse_time("1969-12-31T23:59:59Z").is_err());
        let args = PointArgs {
            at: Some("2026-12-03T21:00:00.500Z".into()),
            ..Default::default()
        };
        assert_eq!(args.selector().unwrap(), Selector::At(1_796_331_600_500));
        assert!(PointArgs::default().selector().is_err());
    }
}
