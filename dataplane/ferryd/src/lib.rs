//! ferryd, the process server: the durable cache of received batches ([`cache`]), the HTTPS
//! endpoints ([`server`]); its state files are `ferry_durable::checked`.

pub mod admission;
pub mod alerts;
pub mod cache;
pub mod counters;
pub mod daemon;
pub mod ingest_memory;
pub mod memory_budget;
pub mod pipeline;
pub mod server;
