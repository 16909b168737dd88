//! The agent's identity: enrollment with a one-time join token, and the files it leaves in the
//! state directory.
//!
//! Enrollment generates an ECDSA P-256 key pair here (the private key never leaves the agent),
//! sends the public key with the join token to the gateway's `POST /api/v1/agents/enroll`, and
//! stores what comes back: the agent's certificate (signed by the gateway's agent CA), the agent
//! CA (to authenticate the gateway's agent listener) and where that listener is.
//!
//! Files in `state_dir`: `agent.key` (0600), `agent.crt`, `ca.crt`, `link.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::spool::Spool;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("this agent is not enrolled ({0} is missing): run it once with --gateway and --token")]
    NotEnrolled(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot reach the gateway at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the gateway refused the enrollment: {0}")]
    Refused(String),
    #[error(
        "the spool holds {0} unacknowledged events from the current enrollment; start the agent \
         without --token so that they are delivered first"
    )]
    SpoolNotEmpty(usize),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What enrollment sends (the wire format of `POST /api/v1/agents/enroll`).
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub token: String,
    /// The agent's ECDSA P-256 public key: the uncompressed SEC1 point, base64.
    pub public_key: String,
    /// Proof that the agent holds the private key: an ECDSA P-256 SHA-256 (ASN.1 DER)
    /// signature over [`proof_message`]`(token)`, base64.
    pub proof: String,
    pub version: String,
    pub hostname: String,
}

/// What the enrollment proof signs: binds the key to this one join token.
pub fn proof_message(token: &str) -> Vec<u8> {
    let mut m = b"gatehouse-agent-enroll\0".to_vec();
    m.extend_from_slice(token.as_bytes());
    m
}

/// What the gateway answers.
#[derive(Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub agent: String,
    pub certificate: String,
    pub ca_certificate: String,
    /// `host:port` of the gateway's agent listener.
    pub tunnel: String,
    /// The name the agent listener's certificate carries.
    pub server_name: String,
    /// When the certificate expires (RFC 3339).
    pub expires: String,
    /// The highest event sequence number the gateway already holds from this agent name.
    pub events_acked: u64,
}

/// Where the link goes, saved next to the certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkInfo {
    pub agent: String,
    pub tunnel: String,
    pub server_name: String,
    pub gateway: String,
    pub expires: String,
}

/// The agent's credentials for the link, loaded from the state directory.
#[derive(Clone)]
pub struct Identity {
    pub link: LinkInfo,
    pub tls: Arc<rustls::ClientConfig>,
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Enrolls with `token` at `gateway` (an https URL), trusting `ca_file` for the gateway's HTTPS
/// certificate in addition to the system roots.
pub async fn enroll(
    gateway: &str,
    token: &str,
    ca_file: Option<&Path>,
    state_dir: &Path,
    spool: &Spool,
) -> Result<LinkInfo, IdentityError> {
    let (pending, _) = spool.backlog();
    if pending > 0 {
        return Err(IdentityError::SpoolNotEmpty(pending));
    }
    std::fs::create_dir_all(state_dir).map_err(io_err(state_dir))?;
    let token = token.trim();
    let (key, public_key, proof) = new_key(&proof_message(token))?;
    let request = EnrollRequest {
        token: token.to_string(),
        public_key,
        proof,
        version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: hostname(),
    };
    let mut client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none());
    if let Some(f) = ca_file {
        let pem = std::fs::read(f).map_err(io_err(f))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
            IdentityError::Invalid(format!("{}: not a PEM certificate: {e}", f.display()))
        })?;
        client = client.add_root_certificate(cert);
    }
    let client = client
        .build()
        .map_err(|e| IdentityError::Invalid(e.to_string()))?;
    let url = format!("{}/api/v1/agents/enroll", gateway.trim_end_matches('/'));
    let resp =
        client
            .post(&url)
            .json(&request)
            .send()
            .await
            .map_err(|e| IdentityError::Unreachable {
                url: url.clone(),
                why: format!("{e:#}"),
            })?;
    let status = resp.status();
    if !status.is_success() {
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let why = body["message"]
            .as_str()
            .or_else(|| body["error"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| status.to_string());
        return Err(IdentityError::Refused(why));
    }
    let answer: EnrollResponse = resp
        .json()
        .await
        .map_err(|e| IdentityError::Invalid(format!("malformed enrollment answer: {e}")))?;

    let key_path = state_dir.join("agent.key");
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    let crt = state_dir.join("agent.crt");
    std::fs::write(&crt, &answer.certificate).map_err(io_err(&crt))?;
    let ca = state_dir.join("ca.crt");
    std::fs::write(&ca, &answer.ca_certificate).map_err(io_err(&ca))?;
    let link = LinkInfo {
        agent: answer.agent,
        tunnel: answer.tunnel,
        server_name: answer.server_name,
        gateway: gateway.to_string(),
        expires: answer.expires,
    };
    let link_path = state_dir.join("link.json");
    let text =
        serde_json::to_vec_pretty(&link).map_err(|e| IdentityError::Invalid(e.to_string()))?;
    std::fs::write(&link_path, text).map_err(io_err(&link_path))?;
    spool
        .advance_to(answer.events_acked)
        .map_err(|e| IdentityError::Invalid(e.to_string()))?;
    Ok(link)
}

/// A new ECDSA P-256 key pair, its public key (base64 of the uncompressed point) and a proof of
/// possession: its signature over `message` (base64).
pub fn new_key(message: &[u8]) -> Result<(rcgen::KeyPair, String, String), IdentityError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Invalid(format!("cannot generate a key pair: {e}")))?;
    let rng = ring::rand::SystemRandom::new();
    let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &key.serialize_der(),
        &rng,
    )
    .map_err(|e| IdentityError::Invalid(format!("cannot load the new key: {e}")))?;
    let proof = signer
        .sign(&rng, message)
        .map_err(|e| IdentityError::Invalid(format!("cannot sign the proof of possession: {e}")))?;
    let public_key = B64.encode(key.public_key_raw());
    Ok((key, public_key, B64.encode(proof.as_ref())))
}

/// SHA-256 (lowercase hex) of the agent's current certificate.
pub fn current_cert_sha256(state_dir: &Path) -> Result<String, IdentityError> {
    let certs = read_pem_certs(&state_dir.join("agent.crt"))?;
    let first = certs
        .first()
        .ok_or_else(|| IdentityError::Invalid("agent.crt holds no certificate".into()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, first.as_ref());
    Ok(digest.as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// Stores a renewed key and certificate (each replaced atomically) and the new expiry.
pub fn install_renewed(
    state_dir: &Path,
    key: &rcgen::KeyPair,
    certificate: &str,
    expires: &str,
) -> Result<(), IdentityError> {
    // The key first: a crash between the two leaves a key the old certificate does not match,
    // which the next start reports; the gateway still accepts the old certificate, so
    // re-enrolling recovers.
    let crt = state_dir.join("agent.crt");
    let tmp = state_dir.join("agent.crt.new");
    std::fs::write(&tmp, certificate).map_err(io_err(&tmp))?;
    write_private(&state_dir.join("agent.key"), key.serialize_pem().as_bytes())?;
    std::fs::rename(&tmp, &crt).map_err(io_err(&crt))?;
    let link_path = state_dir.join("link.json");
    let text = std::fs::read(&link_path).map_err(io_err(&link_path))?;
    let mut link: LinkInfo = serde_json::from_slice(&text)
        .map_err(|e| IdentityError::Invalid(format!("{}: {e}", link_path.display())))?;
    link.expires = expires.to_string();
    let text =
        serde_json::to_vec_pretty(&link).map_err(|e| IdentityError::Invalid(e.to_string()))?;
    std::fs::write(&link_path, text).map_err(io_err(&link_path))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), IdentityError> {
    gatehouse_core::files::write_private(path, data).map_err(io_err(path))
}

fn read_pem_certs(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, IdentityError> {
    let data = std::fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::certs(&mut &data[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(path))
}

impl Identity {
    /// Loads the enrolled identity from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<Identity, IdentityError> {
        let link_path = state_dir.join("link.json");
        let text = match std::fs::read(&link_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IdentityError::NotEnrolled(link_path))
            }
            Err(e) => return Err(io_err(&link_path)(e)),
        };
        let link: LinkInfo = serde_json::from_slice(&text)
            .map_err(|e| IdentityError::Invalid(format!("{}: {e}", link_path.display())))?;
        let chain = read_pem_certs(&state_dir.join("agent.crt"))?;
        let key_path = state_dir.join("agent.key");
        let key_pem = std::fs::read(&key_path).map_err(io_err(&key_path))?;
        let key = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(io_err(&key_path))?
            .ok_or_else(|| {
                IdentityError::Invalid(format!("{}: no private key", key_path.display()))
            })?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_pem_certs(&state_dir.join("ca.crt"))? {
            roots
                .add(c)
                .map_err(|e| IdentityError::Invalid(format!("ca.crt: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Invalid(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| IdentityError::Invalid(format!("agent certificate: {e}")))?;
        tls.alpn_protocols = vec![crate::tunnel::ALPN.to_vec()];
        Ok(Identity {
            link,
            tls: Arc::new(tls),
        })
    }
}
