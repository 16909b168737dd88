//! The gateway's SSH keys and the certificates it signs and checks.
//!
//! Three Ed25519 keys in `state_dir/keys/` (OpenSSH format, 0600, created on first start):
//!
//! - `ssh_host_ed25519`: the SSH front door's host key (`gatehouse ssh-config` pins it);
//! - `ssh_user_ca`: signs people's user certificates (`POST /api/v1/credentials/ssh`), which
//!   only the front door trusts. Targets never trust it, so a certificate from it opens
//!   nothing but the gateway;
//! - `ssh_upstream_ca`: signs the certificate the gateway logs in upstream with, one per
//!   session, for a key made for that session, valid minutes. Targets trust it
//!   (`TrustedUserCAKeys`); no client ever holds one of its certificates.
//!
//! A user certificate carries the person's door credential (a gateway JWT of audience
//! `<aud>:ssh`, the same login) in the extension [`CREDENTIAL_EXTENSION`]: the front door
//! verifies it as every door verifies credentials, so disable, logout and revocation apply.
//! The JWT is no bearer on its own: the SSH door takes it only inside a certificate this CA
//! signed, presented with the certificate key's signature, and no other door takes it.

use std::path::Path;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{Certificate, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::keys::KeyError;

/// The extension of a user certificate that holds the door credential.
pub const CREDENTIAL_EXTENSION: &str = "credential@gatehouse";

/// How long before now a certificate's validity starts (clock skew between machines).
const BACKDATE_SECS: u64 = 60;

/// How long the certificate of an upstream login lives: it is used once, at once.
const UPSTREAM_CERT_SECS: u64 = 300;

/// The gateway's SSH keys.
pub struct SshKeys {
    pub host: PrivateKey,
    pub user_ca: PrivateKey,
    pub upstream_ca: PrivateKey,
}

impl std::fmt::Debug for SshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SshKeys(host {}, user CA {}, upstream CA {})",
            self.host.fingerprint(HashAlg::Sha256),
            self.user_ca.fingerprint(HashAlg::Sha256),
            self.upstream_ca.fingerprint(HashAlg::Sha256)
        )
    }
}

impl SshKeys {
    /// Loads the three keys from `keys_dir`, creating any that is missing.
    pub fn load_or_create(keys_dir: &Path) -> Result<SshKeys, KeyError> {
        Ok(SshKeys {
            host: load_or_create(&keys_dir.join("ssh_host_ed25519"))?,
            user_ca: load_or_create(&keys_dir.join("ssh_user_ca"))?,
            upstream_ca: load_or_create(&keys_dir.join("ssh_upstream_ca"))?,
        })
    }

    /// The line a target's `TrustedUserCAKeys` file holds.
    pub fn upstream_ca_line(&self) -> String {
        public_line(self.upstream_ca.public_key(), "gatehouse-upstream-ca")
    }

    /// The host key line a client's known_hosts holds (after the host pattern).
    pub fn host_key_line(&self) -> String {
        public_line(self.host.public_key(), "gatehouse")
    }
}

/// An OpenSSH public key line with `comment`.
pub fn public_line(key: &PublicKey, comment: &str) -> String {
    let mut k = key.clone();
    k.set_comment(comment);
    k.to_openssh().unwrap_or_default()
}

/// A fresh Ed25519 key from the one random source.
pub fn new_key() -> PrivateKey {
    let seed = gatehouse_core::random::random_bytes::<32>();
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

fn load_or_create(path: &Path) -> Result<PrivateKey, KeyError> {
    if !path.exists() {
        let text = new_key()
            .to_openssh(LineEnding::LF)
            .map_err(|_| KeyError::Format(path.into()))?;
        crate::keys::write_private(path, text.as_bytes())?;
    }
    let text = std::fs::read_to_string(path).map_err(|error| KeyError::Read {
        path: path.into(),
        error,
    })?;
    PrivateKey::from_openssh(text).map_err(|_| KeyError::Format(path.into()))
}

/// Why a certificate could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
    #[error("the certificate is a host certificate, not a user certificate")]
    NotUser,
    #[error("the certificate is not signed by the gateway's user CA")]
    UnknownCa,
    #[error("the certificate has expired")]
    Expired,
    #[error("the certificate is not valid yet")]
    NotYetValid,
    #[error("the certificate's signature does not verify")]
    BadSignature,
    #[error("the certificate has the critical option `{0}`, which the gateway does not know")]
    CriticalOption(String),
    #[error("the certificate must name exactly one principal (it names {0})")]
    Principals(usize),
    #[error("the certificate carries no gateway credential")]
    NoCredential,
}

/// What a checked user certificate says.
#[derive(Debug, Clone)]
pub struct UserCert {
    /// The person (the certificate's one principal).
    pub user: String,
    /// The door credential from [`CREDENTIAL_EXTENSION`].
    pub credential: String,
    pub serial: u64,
    pub key_id: String,
    /// SHA-256 fingerprint of the certificate's key.
    pub key_fingerprint: String,
}

/// Signs a user certificate for `subject`, the key a person's client holds.
pub fn sign_user_cert(
    ca: &PrivateKey,
    subject: &PublicKey,
    user: &str,
    credential: &str,
    now: u64,
    valid_before: u64,
) -> Result<Certificate, CertError> {
    let sign = |e: russh::keys::ssh_key::Error| CertError::Sign(e.to_string());
    let serial = u64::from_be_bytes(gatehouse_core::random::random_bytes::<8>());
    let nonce = gatehouse_core::random::random_bytes::<32>();
    let mut b = Builder::new(
        nonce.to_vec(),
        subject.key_data().clone(),
        now.saturating_sub(BACKDATE_SECS),
        valid_before,
    )
    .map_err(sign)?;
    b.serial(serial).map_err(sign)?;
    b.key_id(format!("gatehouse user {user} serial {serial:016x}"))
        .map_err(sign)?;
    b.cert_type(CertType::User).map_err(sign)?;
    b.valid_principal(user).map_err(sign)?;
    b.extension(CREDENTIAL_EXTENSION, credential)
        .map_err(sign)?;
    b.extension("permit-pty", "").map_err(sign)?;
    b.comment(format!("gatehouse {user}")).map_err(sign)?;
    b.sign(ca).map_err(sign)
}

/// Checks a user certificate the client proved it holds the key of (russh verified that
/// signature): type, CA, validity, signature, critical options, one principal, the credential.
pub fn check_user_cert(
    cert: &Certificate,
    ca: &PublicKey,
    now: u64,
) -> Result<UserCert, CertError> {
    if cert.cert_type() != CertType::User {
        return Err(CertError::NotUser);
    }
    if cert.signature_key() != ca.key_data() {
        return Err(CertError::UnknownCa);
    }
    if now < cert.valid_after() {
        return Err(CertError::NotYetValid);
    }
    if now >= cert.valid_before() {
        return Err(CertError::Expired);
    }
    if cert.verify_signature().is_err() {
        return Err(CertError::BadSignature);
    }
    if let Some((name, _)) = cert.critical_options().iter().next() {
        return Err(CertError::CriticalOption(name.clone()));
    }
    let principals = cert.valid_principals();
    let [user] = principals else {
        return Err(CertError::Principals(principals.len()));
    };
    let credential = cert
        .extensions()
        .get(CREDENTIAL_EXTENSION)
        .filter(|c| !c.is_empty())
        .ok_or(CertError::NoCredential)?;
    Ok(UserCert {
        user: user.clone(),
        credential: credential.clone(),
        serial: cert.serial(),
        key_id: cert.key_id().to_string(),
        key_fingerprint: PublicKey::new(cert.public_key().clone(), "")
            .fingerprint(HashAlg::Sha256)
            .to_string(),
    })
}

/// The certificate the gateway logs in upstream with: for a key made for this session,
/// naming the upstream login, valid [`UPSTREAM_CERT_SECS`].
pub fn sign_upstream_cert(
    ca: &PrivateKey,
    session_key: &PublicKey,
    login: &str,
    key_id: &str,
    now: u64,
) -> Result<Certificate, CertError> {
    let sign = |e: russh::keys::ssh_key::Error| CertError::Sign(e.to_string());
    let nonce = gatehouse_core::random::random_bytes::<32>();
    let mut b = Builder::new(
        nonce.to_vec(),
        session_key.key_data().clone(),
        now.saturating_sub(BACKDATE_SECS),
        now + UPSTREAM_CERT_SECS,
    )
    .map_err(sign)?;
    b.serial(u64::from_be_bytes(
        gatehouse_core::random::random_bytes::<8>(),
    ))
    .map_err(sign)?;
    b.key_id(key_id).map_err(sign)?;
    b.cert_type(CertType::User).map_err(sign)?;
    b.valid_principal(login).map_err(sign)?;
    b.extension("permit-pty", "").map_err(sign)?;
    // The gateway decides forwarding (Cedar `forward`) before it asks the target for it;
    // the target must not refuse what was allowed. Agent and X11 forwarding stay off.
    b.extension("permit-port-forwarding", "").map_err(sign)?;
    b.sign(ca).map_err(sign)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn user_cert(ca: &PrivateKey, subject: &PublicKey, valid_before: u64) -> Certificate {
        sign_user_cert(ca, subject, "alice", "jwt", NOW, valid_before).unwrap()
    }

    #[test]
    fn a_user_certificate_checks_only_against_its_ca_and_in_its_time() {
        let (ca, other_ca, key) = (new_key(), new_key(), new_key());
        let cert = user_cert(&ca, key.public_key(), NOW + 600);
        let ok = check_user_cert(&cert, ca.public_key(), NOW).unwrap();
        assert_eq!((ok.user.as_str(), ok.credential.as_str()), ("alice", "jwt"));
        assert_eq!(
            check_user_cert(&cert, other_ca.public_key(), NOW).unwrap_err(),
            CertError::UnknownCa
        );
        assert_eq!(
            check_user_cert(&cert, ca.public_key(), NOW + 600).unwrap_err(),
            CertError::Expired
        );
        assert_eq!(
            check_user_cert(&cert, ca.public_key(), NOW - 3600).unwrap_err(),
            CertError::NotYetValid
        );
        // The upstream CA's certificates are for targets, not for the gateway.
        let upstream = sign_upstream_cert(&other_ca, key.public_key(), "root", "k", NOW).unwrap();
        assert_eq!(
            check_user_cert(&upstream, ca.public_key(), NOW).unwrap_err(),
            CertError::UnknownCa
        );
        let no_credential = sign_upstream_cert(&ca, key.public_key(), "root", "k", NOW).unwrap();
        assert_eq!(
            check_user_cert(&no_credential, ca.public_key(), NOW).unwrap_err(),
            CertError::NoCredential
        );
    }

    #[test]
    fn host_certificates_critical_options_and_many_principals_are_refused() {
        let (ca, key) = (new_key(), new_key());
        let build_as = |t: CertType, f: &dyn Fn(&mut Builder)| {
            let mut b = Builder::new(
                vec![0; 32],
                key.public_key().key_data().clone(),
                NOW - 1,
                NOW + 60,
            )
            .unwrap();
            b.cert_type(t).unwrap();
            b.extension(CREDENTIAL_EXTENSION, "jwt").unwrap();
            f(&mut b);
            b.sign(&ca).unwrap()
        };
        let build = |f: &dyn Fn(&mut Builder)| build_as(CertType::User, f);
        let host = build_as(CertType::Host, &|b| {
            b.valid_principal("alice").unwrap();
        });
        assert_eq!(
            check_user_cert(&host, ca.public_key(), NOW).unwrap_err(),
            CertError::NotUser
        );
        let forced = build(&|b| {
            b.valid_principal("alice").unwrap();
            b.critical_option("force-command", "id").unwrap();
        });
        assert_eq!(
            check_user_cert(&forced, ca.public_key(), NOW).unwrap_err(),
            CertError::CriticalOption("force-command".into())
        );
        let two = build(&|b| {
            b.valid_principal("alice").unwrap();
            b.valid_principal("bob").unwrap();
        });
        assert_eq!(
            check_user_cert(&two, ca.public_key(), NOW).unwrap_err(),
            CertError::Principals(2)
        );
        let none = build(&|b| {
            b.all_principals_valid().unwrap();
        });
        assert_eq!(
            check_user_cert(&none, ca.public_key(), NOW).unwrap_err(),
            CertError::Principals(0)
        );
    }

    #[test]
    fn keys_are_created_once_and_private() {
        let dir = std::env::temp_dir().join(format!("gh-ssh-keys-{}", std::process::id()));
        let a = SshKeys::load_or_create(&dir).unwrap();
        let b = SshKeys::load_or_create(&dir).unwrap();
        assert_eq!(a.host_key_line(), b.host_key_line());
        assert_ne!(a.user_ca.public_key(), a.upstream_ca.public_key());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ssh_user_ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!format!("{a:?}").contains("PRIVATE"));
        std::fs::remove_dir_all(dir).ok();
    }
}
