//! Client TLS: verify the server against the appliance CA and present the machine's
//! certificate (data endpoint), or pin the management endpoint's certificate fingerprint
//! before the CA is known (registration).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::sync::Arc;

use crate::client::ClientError;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn invalid(what: &str) -> impl FnOnce(rustls_pki_types::pem::Error) -> ClientError + '_ {
    move |e| ClientError::Invalid(format!("{what}: {e}"))
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, ClientError> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Invalid(format!("TLS versions: {e}")))
}

/// Verifies the server against `ca_pem`; presents `cert_pem`/`key_pem` when given.
pub fn ca_verified(ca_pem: &str, client: Option<(&str, &str)>) -> Result<ClientConfig, ClientError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(invalid("CA certificate"))?)
            .map_err(|e| ClientError::Invalid(format!("CA certificate: {e}")))?;
    }
    let builder = builder()?.with_root_certificates(roots);
    // ALPN is left empty: the HTTPS connector sets it from the HTTP versions it enables.
    let config = match client {
        Some((cert_pem, key_pem)) => {
            let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid("certificate"))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(invalid("private key"))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| ClientError::Invalid(format!("client certificate: {e}")))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts the server whose certificate has this SHA-256 fingerprint (hex, colons optional),
/// or any server when `None` (trust on first use).
pub fn pinned(fingerprint: Option<&str>) -> Result<ClientConfig, ClientError> {
    Ok(pinned_recording(fingerprint)?.0)
}

/// As [`pinned`], and a record of the fingerprint the server presented (so a client that
/// trusted on first use can say what it trusted), as `AA:BB:...` like `ferryctl init` prints.
pub fn pinned_recording(fingerprint: Option<&str>) -> Result<(ClientConfig, SeenFingerprint), ClientError> {
    let expected = match fingerprint {
        Some(text) => {
            let digits: String = text.chars().filter(|c| *c != ':').collect();
            let bytes = hex::decode(digits.to_lowercase())
                .map_err(|_| ClientError::Invalid("the fingerprint is not hex".into()))?;
            if bytes.len() != 32 {
                return Err(ClientError::Invalid("a SHA-256 fingerprint is 32 bytes".into()));
            }
            Some(bytes)
        }
        None => None,
    };
    let seen = SeenFingerprint::default();
    let verifier = Arc::new(PinnedFingerprint {
        expected,
        provider: provider(),
        seen: seen.clone(),
    });
    let config = builder()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, seen))
}

/// The SHA-256 fingerprint of the last server certificate a pinned client was shown.
#[derive(Clone, Debug, Default)]
pub struct SeenFingerprint(Arc<std::sync::Mutex<Option<String>>>);

impl SeenFingerprint {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug)]
struct PinnedFingerprint {
    expected: Option<Vec<u8>>,
    provider: Arc<CryptoProvider>,
    seen: SeenFingerprint,
}

impl ServerCertVerifier for PinnedFingerprint {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let actual = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, end_entity.as_ref());
        let shown: Vec<String> = actual.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        *self.seen.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(shown.join(":"));
        let Some(expected) = &self.expected else {
            return Ok(ServerCertVerified::assertion());
        };
        if actual.as_ref() == expected.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server certificate does not have the expected SHA-256 fingerprint".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The DER bytes of the first certificate in `pem` (to print its fingerprint).
pub fn certificate_der(pem: &str) -> Result<Vec<u8>, ClientError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| ClientError::Invalid(format!("certificate: {e}")))
}
