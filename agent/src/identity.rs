//! The machine's identity, kept owner-only under `<state_dir>/identity/`: the machine id and
//! endpoints (`machine.json`), its certificate (`cert.pem`), private key (`key.pem`) and the
//! appliance CA (`ca.pem`). Made by `ferry-agent register`; the key never leaves this machine.

use anyhow::{bail, Context};
use ferry_client::Identity;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use uuid::Uuid;

use ferry_durable::{private_dir, read_optional};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MachineFile {
    machine_id: Uuid,
    machine_name: String,
    data_endpoint: String,
    management_endpoint: String,
}

/// A registered machine, as loaded from the state directory.
#[derive(Clone, Debug)]
pub struct StoredIdentity {
    pub identity: Identity,
    pub machine_name: String,
    pub management_endpoint: String,
    /// When the certificate stops being valid (Unix seconds).
    pub not_after_unix: i64,
}

pub fn identity_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("identity")
}

pub fn exists(state_dir: &Path) -> bool {
    identity_dir(state_dir).join("machine.json").exists()
}

/// Saves a fresh registration (replacing any older one).
pub fn save(state_dir: &Path, identity: &Identity, machine_name: &str, management: &str) -> anyhow::Result<()> {
    let dir = identity_dir(state_dir);
    private_dir(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let machine = MachineFile {
        machine_id: identity.machine_id,
        machine_name: machine_name.to_string(),
        data_endpoint: identity.data_endpoint.clone(),
        management_endpoint: management.to_string(),
    };
    // The key first and machine.json last: machine.json is what marks a complete identity.
    ferry_durable::replace(&dir.join("key.pem"), identity.key_pem.as_bytes())?;
    ferry_durable::replace(&dir.join("cert.pem"), identity.cert_pem.as_bytes())?;
    ferry_durable::replace(&dir.join("ca.pem"), identity.ca_pem.as_bytes())?;
    ferry_durable::replace(&dir.join("machine.json"), &serde_json::to_vec_pretty(&machine)?)?;
    Ok(())
}

/// Records the data endpoint the configuration server placed this machine on now (a process
/// server was unreachable, or the machine was moved).
pub fn set_data_endpoint(state_dir: &Path, data_endpoint: &str) -> anyhow::Result<()> {
    let path = identity_dir(state_dir).join("machine.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut machine: MachineFile =
        serde_json::from_str(&text).with_context(|| format!("{} is damaged; register again", path.display()))?;
    machine.data_endpoint = data_endpoint.to_string();
    ferry_durable::replace(&path, &serde_json::to_vec_pretty(&machine)?)?;
    Ok(())
}

/// Loads the identity; a clear error when the machine is not registered or a file is bad.
pub fn load(state_dir: &Path) -> anyhow::Result<StoredIdentity> {
    let dir = identity_dir(state_dir);
    let read = |name: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        match read_optional(&path).with_context(|| format!("reading {}", path.display()))? {
            Some(bytes) => String::from_utf8(bytes).with_context(|| format!("{} is not text", path.display())),
            None => bail!(
                "this machine is not registered ({} is missing): run `ferry-agent register --server HOST:PORT \
                 --passphrase-file FILE` first",
                path.display()
            ),
        }
    };
    let machine: MachineFile = serde_json::from_str(&read("machine.json")?)
        .with_context(|| format!("{} is damaged; register again", dir.join("machine.json").display()))?;
    let cert_pem = read("cert.pem")?;
    let not_after_unix = certificate_not_after(&cert_pem)
        .with_context(|| format!("{} is damaged; register again", dir.join("cert.pem").display()))?;
    Ok(StoredIdentity {
        identity: Identity {
            machine_id: machine.machine_id,
            cert_pem,
            key_pem: read("key.pem")?,
            ca_pem: read("ca.pem")?,
            data_endpoint: machine.data_endpoint,
        },
        machine_name: machine.machine_name,
        management_endpoint: machine.management_endpoint,
        not_after_unix,
    })
}

impl StoredIdentity {
    /// Refuses a certificate past its end: the appliance would refuse it at the handshake with
    /// a less helpful message.
    pub fn check_current(&self, now_unix: i64) -> anyhow::Result<()> {
        if now_unix > self.not_after_unix {
            bail!(
                "this machine's certificate expired at {}; register again with `ferry-agent register`",
                ferry_format::time::format_unix_ms(self.not_after_unix.max(0) as u64 * 1000)
            );
        }
        Ok(())
    }
}

fn certificate_not_after(cert_pem: &str) -> anyhow::Result<i64> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("no certificate in PEM")?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).context("certificate does not parse")?;
    Ok(cert.validity().not_after.timestamp())
}
