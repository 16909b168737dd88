//! TLS for the front doors: a configured certificate, or a self-signed one generated at first
//! start and persisted in the state directory. TLS 1.2 and 1.3 only, ring provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::keys::{write_private, KeyError};

// Messages hold their cause; no `source()` as well, or `{:#}` prints it twice.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("`{0}` holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("`{0}` holds no PEM private key")]
    NoKey(PathBuf),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    #[error(transparent)]
    Write(#[from] KeyError),
    #[error("invalid certificate or key: {0}")]
    Rustls(rustls::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e)
    }
}

/// Builds the acceptor from `cert`/`key`, or from the self-signed pair under `state_dir/tls`.
pub fn acceptor(
    cert: Option<&Path>,
    key: Option<&Path>,
    state_dir: &Path,
) -> Result<TlsAcceptor, TlsError> {
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        _ => {
            let dir = state_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                generate_self_signed(&c, &k)?;
            }
            (c, k)
        }
    };
    let certs = read_certs(&cert_path)?;
    let key = read_key(&key_path)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn generate_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    write_private(key, certified.key_pair.serialize_pem().as_bytes())?;
    write_private(cert, certified.cert.pem().as_bytes())?;
    tracing::info!(cert = %cert.display(), "generated a self-signed TLS certificate");
    Ok(())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.into(),
        error,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.into(),
        error,
    })?;
    match rustls_pemfile::private_key(&mut data.as_slice()) {
        Ok(Some(k)) => Ok(k),
        _ => Err(TlsError::NoKey(path.into())),
    }
}
