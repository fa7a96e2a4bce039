//! The appliance's PKI: a CA that signs agents' certificates (PROTOCOL.md section 1), and
//! the TLS certificate the data and management endpoints present, signed by that CA.
//!
//! Keys are ECDSA P-256 (rcgen on aws-lc-rs). The CA is valid for 20 years from its
//! creation, the server certificate for 5. Agents that have not registered yet check the
//! management endpoint against the server certificate's SHA-256 fingerprint
//! ([`fingerprint_sha256`]), which `ferryctl init` prints.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(String);

impl From<rcgen::Error> for PkiError {
    fn from(e: rcgen::Error) -> Self {
        PkiError(e.to_string())
    }
}

/// A certificate and its private key, both PEM.
pub struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

/// Today's civil date (UTC) as (year, month, day).
fn today() -> (i32, u8, u8) {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let (year, month, day) = ferry_format::time::civil_from_days(days);
    (year as i32, month as u8, day as u8)
}

fn validity(params: &mut CertificateParams, years: i32) {
    let (year, month, day) = today();
    // A day of slack before now tolerates clocks a little behind the appliance's.
    params.not_before = rcgen::date_time_ymd(year, month, day.max(2) - 1);
    params.not_after = rcgen::date_time_ymd(year + years, month, day.min(28));
}

/// A new appliance CA.
pub fn generate_ca(appliance_name: &str) -> Result<(IssuedPem, rcgen::Certificate, KeyPair), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Ferry appliance CA ({appliance_name})"));
    params.distinguished_name.push(DnType::OrganizationName, "Ferry");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 20);
    let cert = params.self_signed(&key)?;
    let issued = IssuedPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    };
    Ok((issued, cert, key))
}

/// A server certificate's parameters for `names` (DNS names or IP addresses; the first is the
/// common name): server authentication only, valid for 5 years.
fn server_params(names: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "ferryd".into()),
    );
    for name in names {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.clone().try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut params, 5);
    Ok(params)
}

/// The endpoints' server certificate for `names` (DNS names or IP addresses), signed by the CA.
pub fn generate_server_cert(
    names: &[String],
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<IssuedPem, PkiError> {
    let key = KeyPair::generate()?;
    let cert = server_params(names)?.signed_by(&key, ca, ca_key)?;
    Ok(IssuedPem {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    })
}

/// SHA-256 of a certificate's DER, as colon-separated uppercase hex (as browsers show it).
pub fn fingerprint_sha256(cert_der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Signs an agent's CSR with the appliance CA. The certificate names exactly one machine: its
/// common name is `machine_id`, whatever the CSR asked for; it is for client authentication
/// only and valid for 2 years. The agent's private key never leaves the agent.
pub fn sign_agent_csr(
    csr_pem: &str,
    machine_id: &str,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<String, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, machine_id);
    params.distinguished_name.push(DnType::OrganizationName, "Ferry agent");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    validity(&mut params, 2);
    sign_csr(csr_pem, params, ca_cert_pem, ca_key_pem)
}

/// Signs the public key of `csr_pem` with the CA as `params` say (names, usages, validity;
/// nothing the CSR asked for is taken), with a random serial number.
fn sign_csr(
    csr_pem: &str,
    mut params: CertificateParams,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<String, PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let ca = CertificateParams::from_ca_cert_pem(ca_cert_pem)?.self_signed(&ca_key)?;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError(format!("the CSR is not valid: {e}")))?;
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| PkiError("the random generator failed".into()))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let request = rcgen::CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    };
    Ok(request.signed_by(&ca, &ca_key)?.pem())
}

/// Signs a process server's CSR (a scale-out process server joining this site): a server
/// certificate for `names` (DNS names or IP addresses) from the site's CA, valid for 5 years,
/// whatever names the CSR asked for. The process server's private key never leaves it.
pub fn sign_server_csr(
    csr_pem: &str,
    names: &[String],
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<String, PkiError> {
    if names.is_empty() {
        return Err(PkiError("a process server needs at least one server name".into()));
    }
    sign_csr(csr_pem, server_params(names)?, ca_cert_pem, ca_key_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_csrs_are_signed_with_the_machine_id() {
        let (ca_pem, _, _) = generate_ca("test").unwrap();
        let agent_key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&agent_key)
            .unwrap()
            .pem()
            .unwrap();
        let machine = "0f8fad5b-d9cb-469f-a165-70867728950e";
        let cert = sign_agent_csr(&csr, machine, &ca_pem.cert_pem, &ca_pem.key_pem).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(sign_agent_csr("not a csr", machine, &ca_pem.cert_pem, &ca_pem.key_pem).is_err());
    }

    #[test]
    fn ca_signs_a_server_certificate() {
        let (ca_pem, ca, ca_key) = generate_ca("test").unwrap();
        assert!(ca_pem.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca_pem.key_pem.contains("PRIVATE KEY"));
        let server = generate_server_cert(&["localhost".into(), "127.0.0.1".into()], &ca, &ca_key).unwrap();
        assert_ne!(server.cert_der, ca_pem.cert_der);
        let fp = fingerprint_sha256(&server.cert_der);
        assert_eq!(fp.len(), 32 * 3 - 1);
        let (year, month, day) = today();
        assert!(year >= 2024 && (1..=12).contains(&month) && (1..=31).contains(&day));
    }
}
