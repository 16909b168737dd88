//! Ed25519 signing keys kept in the state directory: one signs gateway tokens, another signs
//! audit checkpoints and export manifests. Created on first start, 0600, PKCS#8 PEM.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use gatehouse_core::Secret;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

// Messages hold their cause; no `source()` as well, or `{:#}` prints it twice.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key `{path}`: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot write key `{path}`: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("key `{0}` is not an Ed25519 PKCS#8 PEM private key")]
    Format(PathBuf),
    #[error("public key is not base64 of 32 bytes")]
    PublicKeyFormat,
    #[error("random number generator failed")]
    Rng,
}

/// An Ed25519 private key with its key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Secret<Vec<u8>>,
    /// First 16 hex digits of SHA-256 over the public key.
    pub key_id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.key_id)
    }
}

impl SigningKey {
    /// Loads the key at `path`, creating it (and its directory) when absent.
    pub fn load_or_create(path: &Path) -> Result<SigningKey, KeyError> {
        if !path.exists() {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Rng)?;
            let pem = pem_encode("PRIVATE KEY", doc.as_ref());
            write_private(path, pem.as_bytes())?;
        }
        Self::load(path)
    }

    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let data = std::fs::read(path).map_err(|error| KeyError::Read {
            path: path.into(),
            error,
        })?;
        let der = match rustls_pemfile::private_key(&mut data.as_slice()) {
            Ok(Some(rustls::pki_types::PrivateKeyDer::Pkcs8(k))) => k.secret_pkcs8_der().to_vec(),
            _ => return Err(KeyError::Format(path.into())),
        };
        let pair = Ed25519KeyPair::from_pkcs8(&der).map_err(|_| KeyError::Format(path.into()))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(SigningKey {
            pair,
            pkcs8: Secret::new(der),
            key_id,
        })
    }

    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    pub fn public_key(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey {
            raw,
            key_id: self.key_id.clone(),
        }
    }

    /// PKCS#8 DER, for the JWT encoder.
    pub fn pkcs8_der(&self) -> &[u8] {
        self.pkcs8.expose()
    }
}

/// An Ed25519 public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    pub raw: [u8; 32],
    pub key_id: String,
}

impl PublicKey {
    /// Parses base64 of the 32 raw bytes, as printed by `gatehouse audit public-key`.
    pub fn from_base64(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|_| KeyError::PublicKeyFormat)?;
        let raw: [u8; 32] = bytes.try_into().map_err(|_| KeyError::PublicKeyFormat)?;
        Ok(PublicKey {
            key_id: key_id(&raw),
            raw,
        })
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.raw)
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, self.raw)
            .verify(msg, sig)
            .is_ok()
    }
}

fn key_id(public: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, public);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// PEM-encodes DER bytes.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a private file with mode 0600, creating parent directories (0700).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), KeyError> {
    gatehouse_core::files::write_private(path, data).map_err(|error| KeyError::Write {
        path: path.into(),
        error,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn create_load_sign_verify() {
        let dir = std::env::temp_dir().join(format!("gh-keys-{}", std::process::id()));
        let path = dir.join("k.pem");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.key_id, b.key_id, "a second start must reuse the key");
        let sig = a.sign(b"msg");
        let public = PublicKey::from_base64(&a.public_key().to_base64()).unwrap();
        assert!(public.verify(b"msg", &sig));
        assert!(!public.verify(b"msh", &sig));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
