//! ferryd, the process server. Where each piece lives, from the bottom up:
//!
//! - [`counters`]: hot-path counters (one atomic add) that the pipeline and the server write.
//! - [`cache`]: the durable NVMe cache of received batches (segments, group commit through
//!   io_uring or pwritev, recovery after a crash); [`memory_budget`] shares out
//!   `pipeline.memory_budget_bytes`, [`ingest_memory`] holds batch bodies to their share.
//! - [`pipeline`]: cut change sets from the cache, read them back (`reader`), seal them on a
//!   worker pool (`worker`), upload them at the bandwidth cap, then write recovery points and
//!   release the cache (`calls`, `ledger`); `tuning` holds what `ferryctl tune` changes.
//! - [`retention`]: consolidation of the vault (`ferry_vault`) in the background and on
//!   demand, one run at a time, and what the last run found; it and the data endpoint run on
//!   [`niced_runtime`]s, at a lower CPU weight than sealing and uploads.
//! - [`server`]: the endpoints: data (mTLS, HTTP/2), management (registration), the control
//!   socket (status, tune, drain) and `/metrics`; [`admission`] says whether new data is taken,
//!   [`alerts`] computes health.
//! - [`commands`]: management commands queued for each machine's agent (long poll).
//! - [`groups`]: consistency groups (which machines take points together, how often);
//!   [`group_points`]: the barrier across their agents and the group points it writes.
//! - [`ownership`]: which disks this process server holds the storage lease of, in which owner
//!   epoch (scale-out: one writer per disk, takeovers fenced by epoch-named objects).
//! - [`failed_over`]: disks of committed failovers, whose new batches are refused.
//! - [`daemon`]: start-up and shut-down wiring (config, cache, target, listeners, drain).
//!
//! Its state files are `ferry_durable::checked`; its wire and storage types come from
//! `ferry_format` and `ferry_client`.

pub mod admission;
pub mod alerts;
pub mod cache;
pub mod commands;
pub mod counters;
pub mod daemon;
pub mod failed_over;
pub mod group_points;
pub mod groups;
pub mod ingest_memory;
pub mod memory_budget;
pub mod niced_runtime;
pub mod ownership;
pub mod pipeline;
pub mod reprotect;
pub mod retention;
pub mod server;
pub mod warm_blocks;
