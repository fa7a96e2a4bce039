//! Ferry's performance tooling (perf/README.md): the reproducible dataset generator every
//! benchmark shares, and `ferry-perf`, the load harness.
//!
//! - [`datagen`]: data of controlled compressibility from a seed.
//! - [`limits`]: this machine's per-core ceilings and the ideal end-to-end ceiling.
//! - [`scenario`]: a load scenario (TOML, every key also a flag).
//! - [`server`]: the ferryd under test (started on a temporary appliance, or reached).
//! - [`load`]: the simulated agents and disks.
//! - [`histogram`]: bounded latency histograms.
//! - [`procs`]: ports, waiting for a child to listen, bytes under a directory.
//! - [`run`]: a run from start to drained backlog, and its [`run::Report`].
//! - [`report`]: the report as a table and an SVG plot.

pub mod datagen;
pub mod histogram;
pub mod limits;
pub mod load;
pub mod procs;
pub mod report;
pub mod run;
pub mod scenario;
pub mod server;
