//! Ferry's benchmarks live in `benches/benches/`; see docs/BENCHMARKS.md for how to run
//! them and what they measured.
