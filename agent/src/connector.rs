//! The connectors behind one seam: what an agent (the remote one, and the gateway's embedded
//! one) needs to open a session of any protocol with the brokered credential, relay and
//! observe it, cancel and kill it.
//!
//! Each protocol is one module ([`crate::pg`], [`crate::tcp`]) with its own `connect` and
//! `relay`; this module only dispatches on [`Target`] and [`Upstream`], so that adding a
//! protocol is adding its module and one variant to each. (An enum rather than a trait object:
//! the relays are generic over the [`EventSink`], which is not object-safe, and the set of
//! connectors is closed inside this crate.)

use gatehouse_core::session::{EventSink, SessionSummary};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::warn;

use crate::pg::{self, CancelHandle, PgOpen, PgOpened, PgTarget, RelayOptions, UpstreamError};
use crate::tcp::{self, TcpTarget};
use crate::tunnel::{Protocol, RefusalKind};

/// Where a resource's role is reached, with which brokered credential.
#[derive(Clone, Debug)]
pub enum Target {
    Postgres(PgTarget),
    Tcp(TcpTarget),
}

/// Why a session could not be opened, in the link's vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// Safe to show to the client: names no internal address.
    pub message: String,
    /// The upstream's own error code, when it refused the session itself.
    pub code: Option<String>,
}

impl Refusal {
    fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
            code: None,
        }
    }
}

/// An open upstream, ready to relay.
pub enum Upstream {
    Postgres {
        upstream: pg::Upstream,
        /// The upstream role the session logged in as (per-user or shared).
        user: String,
        opts: RelayOptions,
    },
    Tcp(TcpStream),
}

impl Target {
    pub fn protocol(&self) -> Protocol {
        match self {
            Target::Postgres(_) => Protocol::Postgres,
            Target::Tcp(_) => Protocol::Tcp,
        }
    }

    /// `host:port`.
    pub fn address(&self) -> &str {
        match self {
            Target::Postgres(t) => &t.address,
            Target::Tcp(t) => &t.address,
        }
    }

    /// Opens the upstream for a session the gateway admitted for `user`, with the protocol's
    /// `options` from [`crate::tunnel::OpenSession`].
    pub async fn open(
        &self,
        protocol: Protocol,
        user: &str,
        options: &serde_json::Value,
    ) -> Result<Upstream, Refusal> {
        if protocol != self.protocol() {
            return Err(Refusal::new(
                RefusalKind::UnknownResource,
                format!(
                    "the resource is a {} resource here, not {}",
                    self.protocol().as_str(),
                    protocol.as_str()
                ),
            ));
        }
        match self {
            Target::Postgres(t) => {
                let open: PgOpen = serde_json::from_value(options.clone()).map_err(|e| {
                    Refusal::new(
                        RefusalKind::Other,
                        format!("malformed PostgreSQL session options: {e}"),
                    )
                })?;
                let (upstream, user) = pg::connect_as(t, user, &open.params)
                    .await
                    .map_err(|e| pg_refusal(&t.address, &e))?;
                Ok(Upstream::Postgres {
                    upstream,
                    user,
                    opts: open.relay_options(),
                })
            }
            Target::Tcp(t) => tcp::connect(t).await.map(Upstream::Tcp).map_err(|e| {
                warn!(upstream = %t.address, error = %e, "upstream connection failed");
                Refusal::new(RefusalKind::Unreachable, e.to_string())
            }),
        }
    }
}

impl Upstream {
    /// The upstream user the brokered credential logged in as (empty: none is brokered).
    pub fn upstream_user(&self) -> &str {
        match self {
            Upstream::Postgres { user, .. } => user,
            Upstream::Tcp(_) => "",
        }
    }

    /// What the gateway needs for the client ([`crate::tunnel::Opened::Ok`]'s `options`).
    pub fn opened(&self) -> serde_json::Value {
        match self {
            Upstream::Postgres { upstream, .. } => serde_json::to_value(PgOpened {
                params: upstream.params.clone(),
                notices: upstream.notices.iter().map(|n| n.to_vec()).collect(),
            })
            .unwrap_or_default(),
            Upstream::Tcp(_) => serde_json::Value::Null,
        }
    }

    /// How to cancel what runs upstream without ending the session, where the protocol can.
    pub fn cancel_handle(&self) -> Option<CancelHandle> {
        match self {
            Upstream::Postgres { upstream, .. } => upstream.cancel_handle(),
            Upstream::Tcp(_) => None,
        }
    }

    /// Relays until either side closes or `kill` says why the gateway ends the session (the
    /// client is told in its protocol where it has a way to say it).
    pub async fn relay<C, S>(
        self,
        client: C,
        sink: &S,
        kill: watch::Receiver<Option<String>>,
    ) -> SessionSummary
    where
        C: AsyncRead + AsyncWrite + Send + Unpin,
        S: EventSink,
    {
        match self {
            Upstream::Postgres { upstream, opts, .. } => {
                pg::relay(upstream.into_stream(), client, &opts, sink, kill).await
            }
            Upstream::Tcp(stream) => tcp::relay(stream, client, kill).await,
        }
    }
}

/// A PostgreSQL upstream's failure in the link's vocabulary.
pub fn pg_refusal(address: &str, e: &UpstreamError) -> Refusal {
    let (kind, code) = match e {
        UpstreamError::CredentialRejected(_) | UpstreamError::Scram(_) => {
            (RefusalKind::CredentialRejected, None)
        }
        UpstreamError::AuthMethodRefused(_) | UpstreamError::TlsRefused | UpstreamError::Tls(_) => {
            (RefusalKind::Untrusted, None)
        }
        UpstreamError::Refused(f) => (RefusalKind::UpstreamRefused, Some(f.code.clone())),
        UpstreamError::Unreachable(_) | UpstreamError::Timeout => (RefusalKind::Unreachable, None),
        _ => (RefusalKind::Other, None),
    };
    let message = match e {
        UpstreamError::Refused(f) => f.message.clone(),
        other => other.to_string(),
    };
    warn!(upstream = address, error = %e, "upstream connection failed");
    Refusal {
        kind,
        message,
        code,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_session_of_another_protocol_is_refused_before_anything_is_dialled() {
        // Port 1 is closed: a dial would say "unreachable", not "unknown resource".
        let tcp = Target::Tcp(TcpTarget {
            address: "127.0.0.1:1".into(),
            connect_timeout: Duration::from_secs(1),
        });
        let refused = tcp
            .open(Protocol::Postgres, "alice", &serde_json::Value::Null)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.kind, RefusalKind::UnknownResource);
        assert!(
            refused.message.contains("tcp resource here, not postgres"),
            "{}",
            refused.message
        );
        let refused = tcp
            .open(Protocol::Tcp, "alice", &serde_json::Value::Null)
            .await
            .err()
            .unwrap();
        assert_eq!(refused.kind, RefusalKind::Unreachable);
        assert!(
            !refused.message.contains("127.0.0.1"),
            "{}",
            refused.message
        );
    }
}
