//! `ferry-perf`, Ferry's load harness (perf/README.md). The dataset generator and the process
//! helpers it shares with `ferryctl demo`, the benchmarks and the tests are in ferry-harness
//! (re-exported here as [`datagen`] and [`procs`]).
//!
//! - [`limits`]: this machine's per-core ceilings and the ideal end-to-end ceiling.
//! - [`scenario`]: a load scenario (TOML, every key also a flag).
//! - [`server`]: the ferryd under test (started on a temporary appliance, or reached).
//! - [`load`]: the simulated agents and disks.
//! - latency histograms: bounded, from [`ferry_client::histogram`] (used by [`load`]).
//! - [`run`]: a run from start to drained backlog, and its [`run::Report`].
//! - [`report`]: the report as a table and an SVG plot.

pub use ferry_harness::datagen;
pub mod limits;
pub mod load;
pub use ferry_harness::procs;
pub mod report;
pub mod run;
pub mod scenario;
pub mod server;
pub mod threads;
