//! The appliance directory `ferryctl init` creates and `ferryd` runs from.
//!
//! ```text
//! <appliance>/ferry.toml          the configuration (owner-only: it may hold storage secrets)
//! <appliance>/vault.key           the vault key, FORMATS.md text form (owner-only)
//! <appliance>/passphrase          the agents' registration passphrase (owner-only)
//! <appliance>/pki/ca.pem|ca.key   the appliance CA that signs agents' certificates
//! <appliance>/pki/server.pem|.key the TLS certificate of the data and management endpoints
//! <appliance>/cache/              the NVMe cache (default location)
//! <appliance>/target/             the local-directory target (the embedded default)
//! <appliance>/retention-scratch/  consolidation's scratch files while it builds a base
//! <appliance>/state/join-tokens/  a configuration server's one-time join tokens (hashed)
//! <appliance>/state/process-servers/  the process servers that joined its site
//! ```
//! A scale-out process server (`ferryctl init --join`) has `pki/ca.pem` but no `ca.key` and no
//! passphrase: agents register with the configuration server.
//! The directory itself is mode 0700; every secret file 0600.

pub mod config;
pub mod layout;
pub mod pki;
pub mod retention;
pub mod site;

pub use config::{ApplianceConfig, ConfigError};
pub use layout::ApplianceLayout;
