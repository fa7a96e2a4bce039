//! The Ferry protocol client (PROTOCOL.md), shared by ferry-agent, ferry-perf and the tests.
//!
//! - [`register()`]: makes a key pair and CSR locally, registers with the management endpoint
//!   (pinning its certificate fingerprint, or trusting on first use), and returns the
//!   machine's [`Identity`]; the private key never leaves this process.
//! - [`DataClient`]: the data endpoint over HTTPS (HTTP/2 when offered) with the machine's
//!   client certificate: health, disks, batches.
//! - [`BatchSender`]: keeps a window of batches in flight on one connection, retries 503s and
//!   lost connections with bounded backoff (honouring Retry-After), and resumes from the
//!   server's `durable_seq`.
//! - [`groups`]: consistency groups as the control socket shows and changes them.
//! - [`commands`]: management commands ferryd queues for an agent and their outcomes.

pub mod api;
pub mod client;
pub mod clock;
pub mod commands;
pub mod control;
pub mod groups;
pub mod histogram;
pub mod logging;
pub mod register;
pub mod sender;
pub mod tls;

pub use api::{BatchAck, DiskInfo, DiskSpec};
pub use client::{ClientError, DataClient};
pub use register::{register, Identity, Registration};
pub use sender::{BatchSender, RetryPolicy, SendWindow};
