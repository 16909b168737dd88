//! The token signing keys: one current key that signs, and retired keys that still verify until
//! every credential they signed has expired (rotation with overlap).
//!
//! On disk, under `state_dir/keys`:
//!
//! ```text
//! token-signing.pem               the current key (signs and verifies)
//! token-retired/<kid>.pem         retired keys; the file's mtime is the retirement time
//! ```
//!
//! `gatehouse keys rotate` moves the current key into `token-retired/` and creates a new one; a
//! running gateway picks the change up within seconds ([`Keyring::load`] is cheap and re-run
//! periodically). A retired key is dropped once it is older than the longest credential
//! lifetime plus leeway. The public keys of the ring are served at `/.well-known/jwks.json`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

use crate::keys::{KeyError, PublicKey, SigningKey};

/// The current signing key and the retired keys that still verify.
#[derive(Debug)]
pub struct Keyring {
    pub current: SigningKey,
    pub retired: Vec<PublicKey>,
}

/// Paths of the ring inside `keys_dir`.
pub fn current_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join("token-signing.pem")
}

fn retired_dir(keys_dir: &Path) -> PathBuf {
    keys_dir.join("token-retired")
}

impl Keyring {
    /// Loads the ring, creating the current key when absent. Retired keys older than
    /// `keep_retired` are ignored (and deleted, best effort).
    pub fn load(keys_dir: &Path, keep_retired: Duration) -> Result<Keyring, KeyError> {
        let current = SigningKey::load_or_create(&current_path(keys_dir))?;
        let mut retired = Vec::new();
        let dir = retired_dir(keys_dir);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let now = SystemTime::now();
            let mut paths: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("pem"))
                .collect();
            paths.sort();
            for path in paths {
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .unwrap_or_default();
                if age > keep_retired {
                    if std::fs::remove_file(&path).is_ok() {
                        tracing::info!(key = %path.display(), "deleted a retired token key past its overlap");
                    }
                    continue;
                }
                let key = SigningKey::load(&path)?;
                if key.key_id != current.key_id {
                    retired.push(key.public_key());
                }
            }
        }
        Ok(Keyring { current, retired })
    }

    /// Retires the current key and creates a new one. Returns (old kid, new kid).
    pub fn rotate(keys_dir: &Path) -> Result<(String, String), KeyError> {
        let path = current_path(keys_dir);
        let old = SigningKey::load_or_create(&path)?;
        let dir = retired_dir(keys_dir);
        let target = dir.join(format!("{}.pem", old.key_id));
        let data = std::fs::read(&path).map_err(|error| KeyError::Read {
            path: path.clone(),
            error,
        })?;
        crate::keys::write_private(&target, &data)?;
        std::fs::remove_file(&path).map_err(|error| KeyError::Write {
            path: path.clone(),
            error,
        })?;
        let new = SigningKey::load_or_create(&path)?;
        Ok((old.key_id, new.key_id))
    }

    /// Every key that verifies, current first.
    pub fn verifying(&self) -> impl Iterator<Item = PublicKey> + '_ {
        std::iter::once(self.current.public_key()).chain(self.retired.iter().cloned())
    }

    /// The JWKS document (RFC 8037 OKP keys).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .verifying()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": B64URL.encode(k.raw),
                    "kid": k.key_id,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_old_key_verifying_until_its_overlap_ends() {
        let dir = std::env::temp_dir().join(format!("gh-keyring-{}", std::process::id()));
        let a = Keyring::load(&dir, Duration::from_secs(3600)).unwrap();
        let (old, new) = Keyring::rotate(&dir).unwrap();
        assert_eq!(old, a.current.key_id);
        let b = Keyring::load(&dir, Duration::from_secs(3600)).unwrap();
        assert_eq!(b.current.key_id, new);
        assert_ne!(old, new);
        let kids: Vec<String> = b.verifying().map(|k| k.key_id).collect();
        assert_eq!(kids, vec![new.clone(), old.clone()]);
        let jwks = b.jwks();
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
        assert_eq!(jwks["keys"][1]["kid"], old.as_str());
        // Past the overlap the retired key is gone.
        std::thread::sleep(Duration::from_millis(1100));
        let c = Keyring::load(&dir, Duration::from_secs(1)).unwrap();
        assert!(c.retired.is_empty());
        std::fs::remove_dir_all(dir).ok();
    }
}
