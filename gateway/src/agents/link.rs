//! The agent listener and the live links: each remote agent holds one mutual-TLS connection on
//! which the gateway is the HTTP/2 client (see `gatehouse_agent::tunnel`).
//!
//! A connection is admitted only if its client certificate chains to the agent CA *and* is the
//! current certificate of an active agent in the store (so revocation and re-enrollment take
//! effect at the next connection; a watcher also cuts a live link within a second). While up,
//! the link carries the agent's event stream (acknowledged only once the events are committed
//! to the audit log), heartbeats, and one stream per session the front door routes to it.
//!
//! This module holds the listener and each connection's life: admission, the hello, the
//! heartbeat, the 1 s re-check and certificate renewal. The live links it registers are in
//! [`super::links`]; the event stream each link carries is pumped by `super::events`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_agent::tunnel::{self, Hello, RenewCert, RenewDone, RenewKey, RenewRequest};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::ca::sha256_hex;
use super::events::events;
use super::links::{lock, open_stream, Link, LinkError};
use super::AgentService;
use crate::audit::{EventKind, NewEvent};
use crate::listener::{self, Conn, Door, Limits, Serving};

/// How often the gateway pings each agent; twice this without an answer ends the link.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a live link re-reads its agent's row (revocation, re-enrollment).
const RECHECK: Duration = Duration::from_secs(1);
/// How long the TLS handshake, the hello, and a session's opening may take.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts agent connections until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    svc: Arc<AgentService>,
    shutdown: impl Future<Output = ()>,
) {
    let tls_config = match svc.ca.listener_config(&svc.config.server_name) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot configure the agent listener; no agent can connect");
            return;
        }
    };
    let door = Arc::new(AgentDoor {
        svc: svc.clone(),
        acceptor: tokio_rustls::TlsAcceptor::from(tls_config),
    });
    // Idle or slow sockets share half the slots, 16 per address, and must pass mutual TLS
    // and the store check within the deadline; a linked agent no longer counts against them.
    let mut limits = Limits::new(svc.config.max_agents * 2, AUTH_DEADLINE);
    limits.per_source = limits.per_source.min(16);
    listener::serve(listener, door, limits, shutdown).await;
    svc.links.close_all("the gateway is shutting down");
}

/// How long an agent connection may take to pass mutual TLS and the store check.
const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// The agent listener as a [`Door`] of the shared accept loop.
struct AgentDoor {
    svc: Arc<AgentService>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl Door for AgentDoor {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn serve(self: Arc<Self>, mut conn: Conn) -> Serving {
        Box::pin(async move {
            let Some(tcp) = conn.take_stream() else {
                return;
            };
            let peer = conn.peer();
            let span = tracing::info_span!("agent", agent = tracing::field::Empty);
            connection(
                self.svc.clone(),
                self.acceptor.clone(),
                tcp,
                peer,
                &mut conn,
            )
            .instrument(span)
            .await;
        })
    }
}

fn refusal(peer: SocketAddr, agent: &str, why: &str, detail: serde_json::Value) -> NewEvent {
    let mut e = NewEvent::new(EventKind::AgentRefused);
    e.actor = if agent.is_empty() {
        String::new()
    } else {
        format!("agent:{agent}")
    };
    e.resource = agent.to_string();
    e.action = "connect".into();
    e.decision = "deny".into();
    e.reason = why.to_string();
    e.detail = detail;
    e.detail["client_addr"] = serde_json::json!(peer.to_string());
    e
}

async fn connection(
    svc: Arc<AgentService>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    conn: &mut Conn,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Err(_) => {
            info!("agent TLS handshake timed out");
            return;
        }
        Ok(Err(e)) => {
            // A certificate the CA did not sign (forged, from another gateway, expired) fails
            // here. Other failures (a port scan) are logged, not audited.
            let cert_problem = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| {
                    matches!(
                        r,
                        rustls::Error::InvalidCertificate(_)
                            | rustls::Error::NoCertificatesPresented
                            | rustls::Error::AlertReceived(_)
                    )
                });
            info!(error = %e, "agent TLS handshake failed");
            if cert_problem {
                let _ = svc
                    .audit
                    .record(refusal(
                        peer,
                        "",
                        &format!("TLS handshake refused: {e}"),
                        serde_json::json!({}),
                    ))
                    .await;
            }
            return;
        }
        Ok(Ok(s)) => s,
    };
    let fingerprint = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(c) => sha256_hex(c.as_ref()),
        None => return,
    };
    let row = match svc.store.agent_by_cert(&fingerprint).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "cannot check the agent's certificate in the store; refusing (fail closed)");
            return;
        }
    };
    let agent = match row {
        Some(r) if r.status == "active" => r.name,
        Some(r) => {
            let _ = svc
                .audit
                .record_durable(refusal(
                    peer,
                    &r.name,
                    &format!("agent `{}` is {}", r.name, r.status),
                    serde_json::json!({ "cert_sha256": fingerprint }),
                ))
                .await;
            info!(agent = %r.name, status = %r.status, "refused an agent that is not active");
            return;
        }
        None => {
            let _ = svc
                .audit
                .record_durable(refusal(
                    peer,
                    "",
                    "the certificate is not any agent's current certificate (replaced by a re-enrollment, or never issued to an agent)",
                    serde_json::json!({ "cert_sha256": fingerprint }),
                ))
                .await;
            info!("refused an agent certificate that is not current");
            return;
        }
    };
    tracing::Span::current().record("agent", agent.as_str());
    conn.authenticated();
    let why = link(&svc, &agent, &fingerprint, tls, peer).await;
    info!(reason = %why, "agent link ended");
    let ts = crate::audit::event::now_ts();
    if let Err(e) = svc.store.agent_disconnected(&agent, &ts).await {
        warn!(error = %e, "cannot record the agent's disconnection in the store");
    }
    let mut e = NewEvent::new(EventKind::AgentDisconnected);
    e.actor = format!("agent:{agent}");
    e.resource = agent.clone();
    e.action = "disconnect".into();
    e.reason = why;
    e.detail = serde_json::json!({ "client_addr": peer.to_string() });
    let _ = svc.audit.record(e).await;
}

/// Runs one admitted link until it ends; returns why.
async fn link(
    svc: &Arc<AgentService>,
    agent: &str,
    fingerprint: &str,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
) -> String {
    let handshake = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .max_concurrent_reset_streams(1024)
        .handshake::<_, Bytes>(tls);
    let (sender, mut connection) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Err(_) => return "HTTP/2 handshake timed out".into(),
        Ok(Err(e)) => return format!("HTTP/2 handshake failed: {e}"),
        Ok(Ok(x)) => x,
    };
    let ping = connection.ping_pong();
    let driver = async move {
        match connection.await {
            Ok(()) => "the agent closed the connection".to_string(),
            Err(e) => format!("connection error: {e}"),
        }
    };
    tokio::pin!(driver);

    // Hello: what the agent runs and fronts.
    let hello = async {
        let mut io = open_stream::<()>(agent, &sender, "/hello", None).await?;
        let _ = io.shutdown().await;
        tunnel::read_frame::<_, Hello>(&mut io)
            .await
            .map_err(|e| LinkError::Failed {
                agent: agent.to_string(),
                why: e.to_string(),
            })?
            .ok_or_else(|| LinkError::Failed {
                agent: agent.to_string(),
                why: "empty hello".into(),
            })
    };
    let hello = tokio::select! {
        why = &mut driver => return why,
        h = tokio::time::timeout(HANDSHAKE_TIMEOUT, hello) => match h {
            Err(_) => return "the agent did not say hello in time".into(),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(h)) => h,
        },
    };

    // Register (a newer link of the same agent replaces an older one).
    let generation = svc.links.generations.fetch_add(1, Ordering::Relaxed) + 1;
    let (close_tx, mut close_rx) = watch::channel(None::<String>);
    let previous = lock(&svc.links.inner).insert(
        agent.to_string(),
        Arc::new(Link {
            generation,
            sender: sender.clone(),
            close: close_tx,
        }),
    );
    if let Some(old) = previous {
        old.close.send_replace(Some(
            "replaced by a newer connection of the same agent".into(),
        ));
    }
    let ts = crate::audit::event::now_ts();
    let resources = serde_json::to_string(&hello.resources).unwrap_or_else(|_| "[]".into());
    if let Err(e) = svc
        .store
        .agent_connected(agent, &ts, &hello.version, &resources)
        .await
    {
        warn!(error = %e, "cannot record the agent's connection in the store");
    }
    let mut e = NewEvent::new(EventKind::AgentConnected);
    e.actor = format!("agent:{agent}");
    e.resource = agent.to_string();
    e.action = "connect".into();
    e.decision = "allow".into();
    e.detail = serde_json::json!({
        "client_addr": peer.to_string(),
        "cert_sha256": fingerprint,
        "version": hello.version,
        "resources": hello.resources,
        "spool_head": hello.spool_head,
    });
    let _ = svc.audit.record(e).await;
    info!(version = %hello.version, resources = hello.resources.len(), spool_head = hello.spool_head, "agent connected");

    let why = tokio::select! {
        why = &mut driver => why,
        why = events(svc, agent, &sender) => why,
        why = heartbeat(svc, agent, ping) => why,
        why = recheck(svc, agent, fingerprint, &sender) => why,
        why = async { loop {
            if let Some(why) = close_rx.borrow_and_update().clone() { return why; }
            if close_rx.changed().await.is_err() { return "closed".to_string(); }
        } } => why,
    };
    {
        let mut links = lock(&svc.links.inner);
        if links.get(agent).is_some_and(|l| l.generation == generation) {
            links.remove(agent);
        }
    }
    why
}

async fn heartbeat(svc: &AgentService, agent: &str, ping: Option<h2::PingPong>) -> String {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        match tokio::time::timeout(HEARTBEAT * 2, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {
                let ts = crate::audit::event::now_ts();
                if let Err(e) = svc.store.agent_seen(agent, &ts).await {
                    warn!(error = %e, "cannot record the agent's heartbeat");
                }
            }
            Ok(Err(e)) => return format!("heartbeat failed: {e}"),
            Err(_) => return "the agent stopped answering heartbeats".into(),
        }
    }
}

async fn recheck(
    svc: &AgentService,
    agent: &str,
    fingerprint: &str,
    sender: &h2::client::SendRequest<Bytes>,
) -> String {
    let mut renewal_tried = false;
    loop {
        tokio::time::sleep(RECHECK).await;
        let row = match svc.store.agent(agent).await {
            Ok(Some(r))
                if r.status == "active" && r.cert_sha256.as_deref() == Some(fingerprint) =>
            {
                r
            }
            Ok(Some(r)) if r.status != "active" => {
                return format!("agent `{agent}` was {}", r.status)
            }
            Ok(_) => {
                return "the agent's certificate was replaced (renewal or re-enrollment)".into()
            }
            Err(e) => {
                warn!(error = %e, "cannot re-check the agent in the store");
                continue;
            }
        };
        if renewal_tried || row.next_cert_sha256.is_some() {
            continue;
        }
        let threshold = time::OffsetDateTime::now_utc()
            + time::Duration::seconds((svc.config.cert_ttl.as_secs() / 3) as i64);
        let due = row
            .cert_expires
            .as_deref()
            .is_some_and(|e| e < crate::audit::event::format_ts(threshold).as_str());
        if row.renew_requested || due {
            renewal_tried = true;
            let reason = if row.renew_requested {
                "an admin asked for it"
            } else {
                "the certificate is in the last third of its lifetime"
            };
            if let Err(e) = renew(svc, agent, fingerprint, sender, reason).await {
                warn!(error = %e, "certificate renewal failed");
            }
        }
    }
}

/// Renews the agent's certificate over its link (see `gatehouse_agent::tunnel`).
async fn renew(
    svc: &AgentService,
    agent: &str,
    fingerprint: &str,
    sender: &h2::client::SendRequest<Bytes>,
    reason: &str,
) -> Result<(), String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let request = RenewRequest {
        reason: reason.to_string(),
    };
    let mut io = open_stream(agent, sender, "/renew", Some(&request))
        .await
        .map_err(|e| e.to_string())?;
    let key: RenewKey = tokio::time::timeout(HANDSHAKE_TIMEOUT, tunnel::read_frame(&mut io))
        .await
        .map_err(|_| "the agent sent no key in time".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("the agent sent no key")?;
    let public_key = b64
        .decode(key.public_key.as_bytes())
        .map_err(|e| e.to_string())?;
    let proof = b64
        .decode(key.proof.as_bytes())
        .map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &public_key)
        .verify(&tunnel::renew_proof_message(fingerprint), &proof)
        .map_err(|_| "the renewal proof does not verify with the new key".to_string())?;
    let issued = svc
        .ca
        .issue_agent(agent, &public_key, svc.config.cert_ttl)
        .map_err(|e| e.to_string())?;
    svc.store
        .set_next_cert(agent, &issued.sha256, &issued.expires)
        .await
        .map_err(|e| e.to_string())?;
    tunnel::write_frame(
        &mut io,
        &RenewCert {
            certificate: issued.pem,
            expires: issued.expires.clone(),
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let done: Option<RenewDone> =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, tunnel::read_frame(&mut io))
            .await
            .map_err(|_| "the agent did not confirm in time".to_string())?
            .map_err(|e| e.to_string())?;
    let mut e = NewEvent::new(EventKind::AgentRenewed);
    e.actor = "gatehouse".into();
    e.resource = agent.to_string();
    e.action = "renew".into();
    e.reason = reason.to_string();
    e.detail = serde_json::json!({
        "previous_cert_sha256": fingerprint,
        "cert_sha256": issued.sha256,
        "cert_expires": issued.expires,
        "agent_stored_it": done.is_some_and(|d| d.stored),
    });
    let _ = svc.audit.record(e).await;
    info!(expires = %issued.expires, "agent certificate renewed");
    Ok(())
}
