//! Registration (PROTOCOL.md section 1): a key pair and CSR made here, the passphrase, and the
//! appliance's answer: the machine id, its certificate, the CA, and the data endpoint.

use crate::api::{RegisterRequest, RegisterResponse};
use crate::client::{ClientError, DataClient};
use uuid::Uuid;

/// What a registered machine keeps (owner-only) to talk to the data endpoint.
#[derive(Clone, Debug)]
pub struct Identity {
    pub machine_id: Uuid,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub data_endpoint: String,
}

impl Identity {
    /// A client for the data endpoint that verifies it against the CA and presents this
    /// machine's certificate.
    pub fn data_client(&self) -> Result<DataClient, ClientError> {
        let tls = crate::tls::ca_verified(&self.ca_pem, Some((&self.cert_pem, &self.key_pem)))?;
        Ok(DataClient::new(&self.data_endpoint, tls))
    }
}

/// A registration's outcome: the identity, and the management endpoint's certificate
/// fingerprint it was made with (what a trust-on-first-use registration trusted).
#[derive(Clone, Debug)]
pub struct Registration {
    pub identity: Identity,
    /// SHA-256, `AA:BB:...` as `ferryctl init` prints it.
    pub server_fingerprint: String,
}

/// A new key pair and a CSR for it naming `common_name` (the key never leaves this process:
/// the appliance signs the CSR).
fn key_and_csr(common_name: &str) -> Result<(rcgen::KeyPair, String), ClientError> {
    let key = rcgen::KeyPair::generate().map_err(|e| ClientError::Invalid(format!("key generation: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| ClientError::Invalid(e.to_string()))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| ClientError::Invalid(format!("CSR: {e}")))?;
    Ok((key, csr_pem))
}

/// Registers `machine_name` with the management endpoint `management` (`host:port`), whose
/// certificate must have SHA-256 `fingerprint` (or anything, on first use, when `None`).
pub async fn register(
    management: &str,
    fingerprint: Option<&str>,
    machine_name: &str,
    passphrase: &str,
) -> Result<Registration, ClientError> {
    let (key, csr_pem) = key_and_csr(machine_name)?;
    let (tls, seen) = crate::tls::pinned_recording(fingerprint)?;
    let client = DataClient::new(management, tls);
    let request = RegisterRequest {
        machine_name: machine_name.to_string(),
        passphrase: passphrase.to_string(),
        csr_pem,
    };
    let (_, answer): (u16, RegisterResponse) = client.post_json("/v1/register", &request).await?;
    let identity = Identity {
        machine_id: answer.machine_id,
        cert_pem: answer.cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: answer.ca_pem,
        data_endpoint: answer.data_endpoint,
    };
    Ok(Registration {
        identity,
        server_fingerprint: seen.get().unwrap_or_default(),
    })
}

/// What a join gave a new process server: the answer, its private key, and the configuration
/// server's certificate fingerprint it was made with.
pub struct Joined {
    pub answer: crate::api::JoinResponse,
    pub key_pem: String,
    pub server_fingerprint: String,
}

/// Joins the site whose configuration server's management endpoint is `management`
/// (`host:port`; its certificate must have SHA-256 `fingerprint`, or anything when `None`) as
/// process server `name`, reachable by `server_names`, its data endpoint `data_endpoint`.
pub async fn join(
    management: &str,
    fingerprint: Option<&str>,
    token: &str,
    name: &str,
    server_names: &[String],
    data_endpoint: &str,
) -> Result<Joined, ClientError> {
    let (key, csr_pem) = key_and_csr(name)?;
    let (tls, seen) = crate::tls::pinned_recording(fingerprint)?;
    let client = DataClient::new(management, tls);
    let request = crate::api::JoinRequest {
        token: token.trim().to_string(),
        name: name.to_string(),
        server_names: server_names.to_vec(),
        csr_pem,
        data_endpoint: data_endpoint.to_string(),
    };
    let (_, answer): (u16, crate::api::JoinResponse) = client.post_json("/v1/join", &request).await?;
    Ok(Joined {
        answer,
        key_pem: key.serialize_pem(),
        server_fingerprint: seen.get().unwrap_or_default(),
    })
}

/// The health answer (with its load) of the process server at `endpoint`, verified with the
/// site's CA, or `None` when it does not answer within `timeout`.
pub async fn probe(endpoint: &str, ca_pem: &str, timeout: std::time::Duration) -> Option<crate::api::Health> {
    let tls = crate::tls::ca_verified(ca_pem, None).ok()?;
    let client = DataClient::new(endpoint, tls);
    match tokio::time::timeout(timeout, client.health_and_load()).await {
        Ok(Ok(health)) => Some(health),
        _ => None,
    }
}

/// Whether the data endpoint `endpoint` of a site's process server answers `GET /v1/health`
/// within `timeout`, its certificate verified with the site's CA `ca_pem`.
pub async fn healthy(endpoint: &str, ca_pem: &str, timeout: std::time::Duration) -> bool {
    probe(endpoint, ca_pem, timeout).await.is_some()
}
