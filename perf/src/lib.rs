//! Ferry's performance tooling. Today it holds the dataset generator that benchmarks and
//! (later) `ferry-perf` share, so every figure is measured on the same bytes.

pub mod datagen;
