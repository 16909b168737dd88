//! The SSH connector: the gateway's own SSH client to a target. It dials the resource, refuses
//! a host key other than the pinned one, and logs in as the role's login with a key made for
//! this session and a certificate from the upstream CA ([`super::ca::sign_upstream_cert`]),
//! valid minutes. Nothing a client sent reaches the target before this login succeeded, and
//! the target refuses any channel it opens towards the gateway (forwarded ports, agents).

use std::sync::Arc;

use russh::client;
use russh::keys::{PrivateKey, PublicKey, PublicKeyOrCertificate};

use crate::config::SshResource;

/// Why a target could not be reached; the text is for people (the client's terminal names
/// the resource, not the address).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the connection to the target timed out")]
    Timeout,
    #[error("the target cannot be reached: {0}")]
    Unreachable(String),
    #[error("the target's host key is not the one the gateway pins for it (it shows {shown}); the session is refused")]
    HostKeyChanged { shown: String },
    #[error("the target refused the gateway's certificate for login `{0}` (does it trust the gateway's upstream CA, `gatehouse ssh upstream-ca`?)")]
    LoginRefused(String),
    #[error("cannot sign the upstream certificate: {0}")]
    Sign(String),
}

/// The client half's handler: checks the host key; refuses channels the target opens.
pub struct Upstream {
    pinned: PublicKey,
    /// What the target showed, when it was not the pinned key.
    shown: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Upstream {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.pinned.key_data()
            }
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !ok {
            let shown = match key {
                PublicKeyOrCertificate::PublicKey { key, .. } => {
                    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
                }
                PublicKeyOrCertificate::Certificate(_) => "a host certificate".to_string(),
            };
            if let Ok(mut s) = self.shown.lock() {
                *s = Some(shown);
            }
        }
        Ok(ok)
    }
}

/// A logged-in connection to a target.
pub type Handle = client::Handle<Upstream>;

/// Dials `target` and logs in as `login`.
pub async fn connect(
    target: &SshResource,
    login: &str,
    upstream_ca: &PrivateKey,
    key_id: &str,
) -> Result<Handle, ConnectError> {
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(std::time::Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..Default::default()
    });
    let shown = Arc::new(std::sync::Mutex::new(None));
    let handler = Upstream {
        pinned: target.host_key.clone(),
        shown: shown.clone(),
    };
    let dial = async {
        let tcp = tokio::net::TcpStream::connect(&target.address)
            .await
            .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        client::connect_stream(config, tcp, handler)
            .await
            .map_err(|e| match shown.lock().ok().and_then(|s| s.clone()) {
                Some(shown) => ConnectError::HostKeyChanged { shown },
                None => ConnectError::Unreachable(e.to_string()),
            })
    };
    let mut handle = tokio::time::timeout(target.connect_timeout, dial)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let key = super::ca::new_key();
    let now = crate::authn::token::unix_now();
    let cert = super::ca::sign_upstream_cert(upstream_ca, key.public_key(), login, key_id, now)
        .map_err(|e| ConnectError::Sign(e.to_string()))?;
    let auth = tokio::time::timeout(
        target.connect_timeout,
        handle.authenticate_openssh_cert(login, Arc::new(key), cert),
    )
    .await
    .map_err(|_| ConnectError::Timeout)?
    .map_err(|e| ConnectError::Unreachable(e.to_string()))?;
    if !auth.success() {
        return Err(ConnectError::LoginRefused(login.to_string()));
    }
    Ok(handle)
}
