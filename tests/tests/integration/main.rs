//! Ferry's end-to-end tests, one binary: each module drives the real binaries.

mod agent;
mod appliance_tools;
mod appliance_units;
mod bandwidth;
mod commands;
mod control;
mod ctl_init;
mod early_answers;
mod failback;
mod failover;
mod failover_final;
mod groups;
mod ingest;
mod perf;
mod pipeline;
mod retention;
mod scale_out;
mod snapshot;
mod takeover;
