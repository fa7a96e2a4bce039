//! A Ferry vault as it sits in target storage (FORMATS.md), read and kept with the vault key
//! alone, by ferryd and by ferryctl (which works with ferryd stopped):
//!
//! - [`disks`]: the disks of a vault.
//! - [`digests`]: a failover's 64 KiB block digests (reprotect and failback compare against them).
//! - [`log`]: a disk's change sets, the chain that covers a range of seqs, replaying it.
//! - [`base`]: base images: reading one into an image, writing a new one.
//! - [`change_point`]: a failover's point changed in place: the blocks two seqs can differ
//!   in, rewritten from the new point's image.
//! - [`failover`]: failover outputs (fixed VHD or raw files) and the failover records.
//! - [`group_points`]: a consistency group's points (the members' disks and seqs).
//! - [`image`]: image files (records in place, zeros as holes).
//! - [`owners`]: who owned a disk when (scale-out takeovers), and the fencing rule readers apply.
//! - [`points`]: a disk's recovery points, and choosing one (latest, app, by id, seq, time).
//! - [`restore`]: a disk image at a seq, from its newest base and the log after it.
//! - [`vhd`]: the fixed VHD footer (failover outputs Azure and hypervisors boot).
//! - [`sealed`]: sealed JSON objects read, written and looked for in one way.
//! - [`retention`]: which recovery points a consolidation keeps (the `[retention]` policy).

pub mod base;
pub mod change_point;
pub mod digests;
pub mod disks;
pub mod failover;
pub mod group_points;
pub mod image;
pub mod log;
pub mod owners;
pub mod points;
pub mod restore;
pub mod retention;
pub mod sealed;
pub mod vhd;
