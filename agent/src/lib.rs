//! ferry-agent, the mobility service (agent/README.md): registers a machine with a Ferry
//! appliance and replicates its disks over docs/PROTOCOL.md with the shared client.
//!
//! - [`config`]: the TOML the agent runs from.
//! - [`identity`]: the machine's certificate, key and CA, owner-only.
//! - [`device`]: a block device or image file, and its stable `disk_id`.
//! - [`blockmap`]: per-block BLAKE3 digests of what the server holds (errs towards unknown).
//! - [`pass`]: one read of a whole disk that sends what differs, then a bookmark.
//! - [`session`]: a disk's setup after a (re)start, and the initial/continuous/resync decision.
//! - [`group`]: this machine's part in a consistency group's barrier (prepare, commit, abort).
//! - [`held`]: a reflink capture held at one instant with the file system frozen (a group's
//!   prepare): the clone plus what changed before the freeze.
//! - [`snapshot`]: a disk captured at one instant for a pass (reflink, LVM, or the live disk).
//! - [`quiesce`]: pre/post scripts and fsfreeze around app-consistent passes.
//! - [`commands`]: the long poll for management commands, and their outcomes.
//! - [`reprotect`]: a reprotected disk's block map seeded from the failover point's digests.
//! - [`replicate`]: the rounds on the bookmark policy (`ferry-agent run`).
//! - [`profile`]: the machine's write churn per disk from /proc/diskstats (`ferry-agent profile`).
//! - [`progress`], [`status`]: what is remembered between runs and shown by `status`.
//! - [`output`]: `out!`/`outln!`, standard output that ends quietly when its reader left.

pub mod blockmap;
pub mod commands;
pub mod config;
pub mod device;
pub mod group;
pub mod held;
pub mod identity;
pub mod moving;
pub mod output;
pub mod pass;
pub mod profile;
pub mod progress;
pub mod quiesce;
pub mod replicate;
pub mod reprotect;
pub mod session;
pub mod snapshot;
pub mod status;
pub mod unconfirmed;
