//! TLS for the two endpoints (rustls on aws-lc-rs).
//!
//! - Data endpoint: the appliance's server certificate; client certificates are verified
//!   against the appliance CA when presented (a certificate from another CA, or expired, fails
//!   the handshake) and optional at the TLS layer so `GET /v1/health` works without one; every
//!   other request without a certificate gets 401.
//! - Management endpoint: the same server certificate; agents that have not registered yet
//!   pin its SHA-256 fingerprint. Client certificates are verified when presented.
//!
//! ALPN offers `h2` and `http/1.1`. The machine identity is the certificate's common name, a
//! machine_id UUID written there when the appliance signed the agent's CSR.

use anyhow::{Context, Result};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not PEM certificates", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).with_context(|| format!("{} is not a PEM private key", path.display()))
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The server configuration shared by both endpoints.
pub fn server_config(ca_cert: &Path, server_cert: &Path, server_key: &Path) -> Result<Arc<ServerConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(ca_cert)? {
        roots.add(cert).context("the appliance CA certificate is not usable")?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .context("cannot build the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(server_cert)?, read_key(server_key)?)
        .context("the server certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The machine a verified client certificate names (its common name), if any.
pub fn machine_of(certificates: Option<&[CertificateDer<'_>]>) -> Option<Uuid> {
    let first = certificates?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(first.as_ref()).ok()?;
    let common_name = parsed.subject().iter_common_name().next()?.as_str().ok()?;
    ferry_format::ids::parse_canonical_uuid(common_name)
}
