//! The small shared part of Ferry's tooling, so that `ferryctl demo` does not link the load
//! harness (ferry-perf) for it:
//!
//! - [`datagen`]: reproducible data of controlled compressibility from a seed (the demo's
//!   sample disk, every benchmark's input, ferry-perf's load);
//! - [`procs`]: a free loopback port, waiting for a child to listen, bytes under a directory,
//!   one value from ferryd's /metrics.

pub mod datagen;
pub mod procs;
