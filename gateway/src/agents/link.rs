//! The agent listener and the live links: each remote agent holds one mutual-TLS connection on
//! which the gateway is the HTTP/2 client (see `gatehouse_agent::tunnel`).
//!
//! A connection is admitted only if its client certificate chains to the agent CA *and* is the
//! current certificate of an active agent in the store (so revocation and re-enrollment take
//! effect at the next connection; a watcher also cuts a live link within a second). While up,
//! the link carries the agent's event stream (acknowledged only once the events are committed
//! to the audit log), heartbeats, and one stream per session the front door routes to it.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse_agent::connector::Refusal;
use gatehouse_agent::tunnel::{
    self, Cancel, EventBody, H2Io, Hello, Kill, OpenSession, Opened, RenewCert, RenewDone,
    RenewKey, RenewRequest, SpooledEvent,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn, Instrument};

use super::ca::sha256_hex;
use super::session::RemoteSession;
use super::AgentService;
use crate::audit::{AuditError, EventKind, NewEvent};
use crate::listener::{self, Conn, Door, Limits, Serving};

/// How often the gateway pings each agent; twice this without an answer ends the link.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a live link re-reads its agent's row (revocation, re-enrollment).
const RECHECK: Duration = Duration::from_secs(1);
/// How long the TLS handshake, the hello, and a session's opening may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events committed but not yet acknowledged, per link.
const IN_FLIGHT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("agent `{0}` is not connected to the gateway")]
    NotConnected(String),
    #[error("the link to agent `{agent}` failed: {why}")]
    Failed { agent: String, why: String },
    #[error("agent `{0}` did not answer in time")]
    Timeout(String),
}

struct Link {
    generation: u64,
    sender: h2::client::SendRequest<Bytes>,
    close: watch::Sender<Option<String>>,
}

/// The live links, by agent name.
#[derive(Clone, Default)]
pub struct Links {
    inner: Arc<Mutex<HashMap<String, Arc<Link>>>>,
    generations: Arc<AtomicU64>,
    /// Sessions whose front door waits for the agent's end-of-session event to be durable
    /// (it learns the agent's statement count).
    ends: Arc<Mutex<HashMap<String, oneshot::Sender<u64>>>>,
    /// Sessions opened on a link and not yet forgotten: which agent, user and resource each
    /// was opened for. An agent's events are accepted only for its own sessions.
    opened: Arc<Mutex<HashMap<String, OpenedOn>>>,
}

/// Cancels through the agent that holds the session's upstream.
struct RemoteCancel {
    links: Links,
    agent: String,
    session: String,
}

impl crate::registry::Cancel for RemoteCancel {
    fn cancel(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.links
                .cancel(&self.agent, &self.session)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Whom a session was opened for, on which agent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OpenedOn {
    agent: String,
    user: String,
    resource: String,
}

fn h2_failed(agent: &str) -> impl FnOnce(h2::Error) -> LinkError + '_ {
    move |e| LinkError::Failed {
        agent: agent.to_string(),
        why: e.to_string(),
    }
}

fn request(path: &str) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_maybe_shared(Bytes::from(format!("http://agent{path}")))
        .unwrap_or_default();
    req
}

/// Opens a stream to the agent: sends `first` as its opening frame, waits for the response head.
async fn open_stream<T: serde::Serialize>(
    agent: &str,
    sender: &h2::client::SendRequest<Bytes>,
    path: &str,
    first: Option<&T>,
) -> Result<H2Io, LinkError> {
    let mut sender = sender.clone().ready().await.map_err(h2_failed(agent))?;
    let (response, mut send) = sender
        .send_request(request(path), false)
        .map_err(h2_failed(agent))?;
    if let Some(first) = first {
        let frame = tunnel::frame(first).map_err(|e| LinkError::Failed {
            agent: agent.to_string(),
            why: e.to_string(),
        })?;
        send.send_data(Bytes::from(frame), false)
            .map_err(h2_failed(agent))?;
    }
    let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, response)
        .await
        .map_err(|_| LinkError::Timeout(agent.to_string()))?
        .map_err(h2_failed(agent))?;
    Ok(H2Io::new(send, response.into_body()))
}

impl Links {
    fn get(&self, agent: &str) -> Option<Arc<Link>> {
        lock(&self.inner).get(agent).cloned()
    }

    /// Asks `agent` to open a session: the open session, or the agent's refusal.
    pub async fn open_session(
        &self,
        agent: &str,
        open: &OpenSession,
    ) -> Result<Result<RemoteSession, Refusal>, LinkError> {
        let link = self
            .get(agent)
            .ok_or_else(|| LinkError::NotConnected(agent.to_string()))?;
        // Known before the agent hears of it, so its first event finds the session, and its
        // end (which may come before the front door is done) finds the waiter.
        lock(&self.opened).insert(
            open.session_id.clone(),
            OpenedOn {
                agent: agent.to_string(),
                user: open.user.clone(),
                resource: open.resource.clone(),
            },
        );
        let (end_tx, end) = oneshot::channel();
        lock(&self.ends).insert(open.session_id.clone(), end_tx);
        let mut session = RemoteSession {
            upstream_user: String::new(),
            upstream: String::new(),
            options: serde_json::Value::Null,
            links: self.clone(),
            agent: agent.to_string(),
            session_id: open.session_id.clone(),
            io: None,
            end: Some(end),
        };
        // From here on, dropping `session` forgets the session.
        let (opened, io) = self.open_on(agent, &link, open).await?;
        Ok(match opened {
            Opened::Ok {
                upstream_user,
                upstream,
                options,
            } => {
                session.upstream_user = upstream_user;
                session.upstream = upstream;
                session.options = options;
                session.io = Some(io);
                Ok(session)
            }
            Opened::Refused {
                kind,
                message,
                code,
            } => Err(Refusal {
                kind,
                message,
                code,
            }),
        })
    }

    async fn open_on(
        &self,
        agent: &str,
        link: &Link,
        open: &OpenSession,
    ) -> Result<(Opened, H2Io), LinkError> {
        let mut io = open_stream(agent, &link.sender, "/session", Some(open)).await?;
        let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT * 3, tunnel::read_frame(&mut io))
            .await
            .map_err(|_| LinkError::Timeout(agent.to_string()))?
            .map_err(|e| LinkError::Failed {
                agent: agent.to_string(),
                why: e.to_string(),
            })?
            .ok_or_else(|| LinkError::Failed {
                agent: agent.to_string(),
                why: "the agent closed the session stream without an answer".into(),
            })?;
        Ok((opened, io))
    }

    /// Asks `agent` to cancel the query running in `session_id`.
    pub async fn cancel(&self, agent: &str, session_id: &str) -> Result<(), LinkError> {
        let link = self
            .get(agent)
            .ok_or_else(|| LinkError::NotConnected(agent.to_string()))?;
        let cancel = Cancel {
            session_id: session_id.to_string(),
        };
        let mut io = open_stream(agent, &link.sender, "/cancel", Some(&cancel)).await?;
        let _ = io.shutdown().await;
        Ok(())
    }

    /// Asks `agent` to end `session_id`, telling its client `reason`.
    pub async fn kill(&self, agent: &str, session_id: &str, reason: &str) -> Result<(), LinkError> {
        let link = self
            .get(agent)
            .ok_or_else(|| LinkError::NotConnected(agent.to_string()))?;
        let kill = Kill {
            session_id: session_id.to_string(),
            reason: reason.to_string(),
        };
        let mut io = open_stream(agent, &link.sender, "/kill", Some(&kill)).await?;
        let _ = io.shutdown().await;
        Ok(())
    }

    /// A canceller for a session on `agent`'s link: asks the agent, which holds the upstream.
    pub fn canceller(&self, agent: &str, session_id: &str) -> crate::registry::Canceller {
        Arc::new(RemoteCancel {
            links: self.clone(),
            agent: agent.to_string(),
            session: session_id.to_string(),
        })
    }

    /// Stops waiting for `session_id`'s end (it arrived, or the front door gave up). Events
    /// the agent sends for it later are checked against the store instead.
    pub fn forget_end(&self, session_id: &str) {
        lock(&self.ends).remove(session_id);
        lock(&self.opened).remove(session_id);
    }

    fn opened_on(&self, session_id: &str) -> Option<OpenedOn> {
        lock(&self.opened).get(session_id).cloned()
    }

    fn ended(&self, session_id: &str, statements: u64) {
        if let Some(tx) = lock(&self.ends).remove(session_id) {
            let _ = tx.send(statements);
        }
    }

    /// Ends every link (shutdown).
    pub fn close_all(&self, why: &str) {
        for link in lock(&self.inner).values() {
            link.close.send_replace(Some(why.to_string()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

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

/// Takes the agent's events in order, hands them to the audit writer, and acknowledges each
/// once it is committed.
async fn events(
    svc: &AgentService,
    agent: &str,
    sender: &h2::client::SendRequest<Bytes>,
) -> String {
    let io = match open_stream::<()>(agent, sender, "/events", None).await {
        Ok(io) => io,
        Err(e) => return e.to_string(),
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    type Confirm = oneshot::Receiver<Result<u64, AuditError>>;
    // (agent seq, commit confirmation, the session it ends if it is an end-of-session event)
    let (tx, mut rx) = mpsc::channel::<(u64, Confirm, Option<(String, u64)>)>(IN_FLIGHT);
    let read = async {
        let mut last = 0u64;
        // Sessions of this agent already checked against the store (after a restart).
        let mut known: HashMap<String, OpenedOn> = HashMap::new();
        loop {
            let event: SpooledEvent = match tunnel::read_frame(&mut rd).await {
                Ok(Some(e)) => e,
                Ok(None) => return "the agent ended its event stream".to_string(),
                Err(e) => return format!("bad event stream: {e}"),
            };
            if event.seq <= last {
                return format!(
                    "event stream out of order ({} after {last}); the link is dropped",
                    event.seq
                );
            }
            last = event.seq;
            let seq = event.seq;
            let (audit_event, ends) = match attributable(svc, agent, &event, &mut known).await {
                Attribution::Own => {
                    let ends = match event.body {
                        EventBody::SessionEnd { statements, .. } => {
                            Some((event.session_id.clone(), statements))
                        }
                        _ => None,
                    };
                    (agent_event(agent, event), ends)
                }
                Attribution::Foreign(why) => {
                    warn!(session.id = %event.session_id, reason = %why, "the agent reported an event for a session it does not hold; recorded as refused");
                    (refused_event(agent, event, &why), None)
                }
                Attribution::Unknown(why) => return why,
            };
            let confirm = match svc.audit.record_confirmed(audit_event).await {
                Ok(c) => c,
                Err(e) => return format!("the audit log is closed: {e}"),
            };
            if tx.send((seq, confirm, ends)).await.is_err() {
                return "acknowledgements stopped".to_string();
            }
        }
    };
    let ack = async {
        while let Some((mut seq, confirm, ends)) = rx.recv().await {
            if !matches!(confirm.await, Ok(Ok(_))) {
                return "the audit log could not commit the agent's events".to_string();
            }
            if let Some((session, statements)) = ends {
                svc.links.ended(&session, statements);
            }
            // Acknowledge everything already committed in one go.
            while let Ok((next, confirm, ends)) = rx.try_recv() {
                if !matches!(confirm.await, Ok(Ok(_))) {
                    return "the audit log could not commit the agent's events".to_string();
                }
                if let Some((session, statements)) = ends {
                    svc.links.ended(&session, statements);
                }
                seq = next;
            }
            if let Err(e) = wr.write_all(&seq.to_be_bytes()).await {
                return format!("cannot acknowledge events: {e}");
            }
        }
        "acknowledgements stopped".to_string()
    };
    tokio::select! {
        why = read => why,
        why = ack => why,
    }
}

/// Sessions checked against the store that a link remembers (then it forgets them all).
const KNOWN_SESSIONS: usize = 4096;

/// Whether an agent may report an event.
enum Attribution {
    /// The session was opened on this agent, for the user and resource the event names.
    Own,
    /// It was not: the event is recorded as refused, never as the session's activity.
    Foreign(String),
    /// The store cannot say; the link drops and the agent resends later (nothing is acked).
    Unknown(String),
}

async fn attributable(
    svc: &AgentService,
    agent: &str,
    e: &SpooledEvent,
    known: &mut HashMap<String, OpenedOn>,
) -> Attribution {
    let verdict = |on: &OpenedOn| {
        if on.agent != agent {
            Attribution::Foreign(format!(
                "session {} was opened on agent `{}`, not on `{agent}`",
                e.session_id, on.agent
            ))
        } else if on.user != e.user || on.resource != e.resource {
            Attribution::Foreign(format!(
                "session {} was opened for user `{}` on `{}`, not for `{}` on `{}`",
                e.session_id, on.user, on.resource, e.user, e.resource
            ))
        } else {
            Attribution::Own
        }
    };
    if let Some(on) = svc.links.opened_on(&e.session_id) {
        return verdict(&on);
    }
    if let Some(on) = known.get(&e.session_id) {
        return verdict(on);
    }
    // The front door has forgotten the session (it ended, or the gateway restarted): the
    // durable decision that admitted it says for whom, and the config which agent fronts it.
    let lookup =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, svc.store.admitted_session(&e.session_id)).await;
    match lookup {
        Ok(Ok(Some((user, resource)))) => {
            let Some(fronting) = svc.fronts.get(&resource) else {
                return Attribution::Foreign(format!(
                    "session {} is on resource `{resource}`, which no agent fronts",
                    e.session_id
                ));
            };
            let on = OpenedOn {
                agent: fronting.clone(),
                user,
                resource,
            };
            let answer = verdict(&on);
            if known.len() >= KNOWN_SESSIONS {
                known.clear();
            }
            known.insert(e.session_id.clone(), on);
            answer
        }
        Ok(Ok(None)) => {
            Attribution::Foreign(format!("the gateway admitted no session {}", e.session_id))
        }
        Ok(Err(err)) => Attribution::Unknown(format!(
            "cannot check the agent's session against the store: {err}"
        )),
        Err(_) => Attribution::Unknown(
            "cannot check the agent's session against the store: timed out".into(),
        ),
    }
}

/// An event an agent may not report, as evidence of the attempt: attributed to the agent, the
/// user it named kept as a claim. Stored once like every agent event (its `origin`).
fn refused_event(agent: &str, e: SpooledEvent, why: &str) -> NewEvent {
    let what = match &e.body {
        EventBody::Statement { .. } => "statement",
        EventBody::SessionEnd { .. } => "session_end",
    };
    let mut out = NewEvent::new(EventKind::AgentEventRefused);
    out.actor = format!("agent:{agent}");
    out.resource = e.resource.clone();
    out.action = "report".into();
    out.decision = "deny".into();
    out.reason = why.to_string();
    out.session_id = e.session_id.clone();
    out.detail = serde_json::json!({
        "agent": agent,
        "agent_seq": e.seq,
        "observed_at": e.ts,
        "event": what,
        "claimed_user": e.user,
        "claimed_resource": e.resource,
    });
    out.origin = Some((agent.to_string(), e.seq));
    out
}

/// An agent's spooled event as an audit event.
fn agent_event(agent: &str, e: SpooledEvent) -> NewEvent {
    let mut out = match e.body {
        EventBody::Statement {
            kind,
            text,
            truncated_from,
            sha256,
            name,
            params,
        } => crate::pg::sink::statement_event(
            &e.user,
            &e.resource,
            &e.session_id,
            &kind,
            text,
            truncated_from,
            sha256,
            name,
            params,
        ),
        EventBody::SessionEnd {
            reason,
            statements,
            bytes_from_client,
            bytes_to_client,
            duration_ms,
        } => {
            let mut out = NewEvent::new(EventKind::AgentSessionEnd);
            out.actor = e.user.clone();
            out.resource = e.resource.clone();
            out.action = "disconnect".into();
            out.session_id = e.session_id.clone();
            out.reason = reason;
            out.detail = serde_json::json!({
                "statements": statements,
                "bytes_from_client": bytes_from_client,
                "bytes_to_client": bytes_to_client,
                "duration_ms": duration_ms,
            });
            out
        }
    };
    out.detail["agent"] = serde_json::json!(agent);
    out.detail["agent_seq"] = serde_json::json!(e.seq);
    out.detail["observed_at"] = serde_json::json!(e.ts);
    out.origin = Some((agent.to_string(), e.seq));
    out
}
