//! The agent CA: an ECDSA P-256 key and self-signed CA certificate in `state_dir/agents/`,
//! created on first use. It signs each agent's client certificate at enrollment (from the
//! agent's public key: the agent's private key never leaves it) and the agent listener's server
//! certificate at every start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::keys::write_private;
use gatehouse_core::random::random_bytes;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    // The message holds the cause; no `source()` as well, or `{:#}` prints it twice.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("agent CA: {0}")]
    Cert(String),
    #[error("the agent's public key is not an uncompressed P-256 point")]
    BadPublicKey,
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Cert(e.to_string())
}

/// A certificate the CA issued.
pub struct Issued {
    pub pem: String,
    pub der: Vec<u8>,
    /// Lowercase hex SHA-256 of the DER: how the store names the agent's current certificate.
    pub sha256: String,
    /// RFC 3339 expiry.
    pub expires: String,
}

pub struct AgentCa {
    key: KeyPair,
    /// The CA certificate as issued (and persisted): what agents trust.
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    /// The same subject and key, re-signed in memory: rcgen's issuer handle.
    issuer: rcgen::Certificate,
}

/// An agent's public key as received at enrollment.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn ca_params() -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Gatehouse");
    dn.push(DnType::CommonName, "Gatehouse agent CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

pub fn sha256_hex(data: &[u8]) -> String {
    crate::audit::event::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

impl AgentCa {
    /// Loads the CA from `dir` (`ca.key`, `ca.crt`), creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<AgentCa, CaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| CaError::Io { path, error }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (key_path, cert_path) = (dir.join("ca.key"), dir.join("ca.crt"));
        let (key, cert_pem) = if key_path.exists() && cert_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(cert_err)?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            (key, cert_pem)
        } else {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
            let cert = ca_params()?.self_signed(&key).map_err(cert_err)?;
            write_private(&key_path, key.serialize_pem().as_bytes())
                .map_err(|e| CaError::Cert(e.to_string()))?;
            std::fs::write(&cert_path, cert.pem()).map_err(io(&cert_path))?;
            tracing::info!(path = %cert_path.display(), "created the agent CA");
            (key, cert.pem())
        };
        let cert_der = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .ok_or_else(|| CaError::Cert(format!("{}: no certificate", cert_path.display())))?
            .map_err(io(&cert_path))?;
        let issuer = ca_params()?.self_signed(&key).map_err(cert_err)?;
        Ok(AgentCa {
            key,
            cert_pem,
            cert_der,
            issuer,
        })
    }

    fn leaf_params(
        common_name: &str,
        names: Vec<String>,
        ttl: Duration,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(CertificateParams, String), CaError> {
        let mut params = CertificateParams::new(names).map_err(cert_err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gatehouse");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.serial_number = Some(SerialNumber::from_slice(&random_bytes::<16>()));
        let now = time::OffsetDateTime::now_utc();
        let ttl = time::Duration::seconds(ttl.as_secs().min(i64::MAX as u64) as i64);
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + ttl;
        let expires = crate::audit::event::format_ts(now + ttl);
        Ok((params, expires))
    }

    /// Issues agent `name`'s client certificate for `public_key` (an uncompressed P-256 point).
    pub fn issue_agent(
        &self,
        name: &str,
        public_key: &[u8],
        ttl: Duration,
    ) -> Result<Issued, CaError> {
        if public_key.len() != 65 || public_key[0] != 4 {
            return Err(CaError::BadPublicKey);
        }
        let (params, expires) = Self::leaf_params(
            &format!("agent:{name}"),
            vec![format!("{name}.agents.gatehouse.invalid")],
            ttl,
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let cert = params
            .signed_by(&RawP256(public_key.to_vec()), &self.issuer, &self.key)
            .map_err(cert_err)?;
        Ok(Issued {
            pem: cert.pem(),
            sha256: sha256_hex(cert.der()),
            der: cert.der().to_vec(),
            expires,
        })
    }

    /// The agent listener's TLS config: a fresh server certificate for `server_name`, and
    /// client certificates required and verified against this CA. Which agent a valid
    /// certificate belongs to, and whether it is still current, the listener asks the store.
    pub fn listener_config(&self, server_name: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let (params, _) = Self::leaf_params(
            "Gatehouse agent listener",
            vec![server_name.to_string()],
            Duration::from_secs(400 * 86_400),
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(cert_err)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).map_err(cert_err)?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(cert_err)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(cert_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![cert.der().clone(), self.cert_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .map_err(cert_err)?;
        config.alpn_protocols = vec![gatehouse_agent::tunnel::ALPN.to_vec()];
        Ok(Arc::new(config))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_survives_a_reload_and_issues_certificates_that_chain() {
        let dir =
            std::env::temp_dir().join(format!("gatehouse-ca-{}", sha256_hex(&random_bytes::<8>())));
        let ca = AgentCa::load_or_create(&dir).unwrap();
        let again = AgentCa::load_or_create(&dir).unwrap();
        assert_eq!(ca.cert_pem, again.cert_pem);
        let agent_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let issued = again
            .issue_agent("dc1", agent_key.public_key_raw(), Duration::from_secs(3600))
            .unwrap();
        // The certificate issued after the reload verifies against the CA created before it.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let leaf = CertificateDer::from(issued.der.clone());
        verifier
            .verify_client_cert(&leaf, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        assert_eq!(issued.sha256.len(), 64);
        assert!(matches!(
            ca.issue_agent("dc1", &[4u8; 10], Duration::from_secs(60)),
            Err(CaError::BadPublicKey)
        ));
        std::fs::remove_dir_all(dir).ok();
    }
}
