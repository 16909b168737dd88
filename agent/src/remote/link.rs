//! The agent's side of the link: dial the gateway with mutual TLS, serve HTTP/2 on that
//! connection (the gateway opens the streams, see [`crate::tunnel`]), reconnect with backoff.
//!
//! Sessions run the same connectors ([`crate::connector`]) as the embedded agent; their
//! statements go to the [`Spool`] and from there, in order, over the `/events` stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::session::{EventSink, SinkClosedError, Statement};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{info, warn, Instrument};

use super::config::AgentConfig;
use super::identity::{self, Identity};
use crate::connector::Refusal;
use crate::pg::CancelHandle;
use crate::spool::Spool;
use crate::tunnel::{
    self, Cancel, EventBody, H2Io, Hello, HelloResource, Kill, OpenSession, Opened, RefusalKind,
    RenewCert, RenewDone, RenewKey, RenewRequest,
};

/// How often each side pings the other; a ping unanswered for as long ends the link.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the event sender waits after new events, to send them together.
const EVENT_GATHER: Duration = Duration::from_millis(2);
/// Events sent per write on the `/events` stream.
const EVENT_BATCH: usize = 1024;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// A session this agent relays.
struct LiveSession {
    cancel: Option<CancelHandle>,
    kill: watch::Sender<Option<String>>,
}

/// A running remote agent.
pub struct Agent {
    pub config: AgentConfig,
    /// Replaced after a certificate renewal; each link uses the one current when it starts.
    identity: Mutex<Identity>,
    pub spool: Spool,
    /// Sessions being relayed: how to cancel their query and how to end them.
    live: Mutex<HashMap<String, LiveSession>>,
    /// Ends the current link so that the next one uses a renewed certificate.
    relink: tokio::sync::Notify,
}

impl Agent {
    pub fn new(config: AgentConfig, identity: Identity, spool: Spool) -> Arc<Agent> {
        Arc::new(Agent {
            config,
            identity: Mutex::new(identity),
            spool,
            live: Mutex::new(HashMap::new()),
            relink: tokio::sync::Notify::new(),
        })
    }

    fn name(&self) -> String {
        lock(&self.identity).link.agent.clone()
    }

    fn hello(&self) -> Hello {
        Hello {
            version: env!("CARGO_PKG_VERSION").to_string(),
            resources: self
                .config
                .resources
                .iter()
                .map(|r| HelloResource {
                    name: r.name.clone(),
                    roles: r.roles.keys().cloned().collect(),
                })
                .collect(),
            spool_head: self.spool.head(),
        }
    }

    /// Keeps a link to the gateway up until `shutdown` changes.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            let outcome = tokio::select! {
                r = self.clone().link_once() => r,
                _ = shutdown.changed() => return,
            };
            match outcome {
                Ok(()) => info!("the gateway closed the link"),
                Err(e) => warn!(error = %e, "link to the gateway failed"),
            }
            if started.elapsed() > Duration::from_secs(30) {
                backoff = BACKOFF_MIN;
            }
            // Jitter: up to a quarter of the backoff, so that agents cut off together do not
            // return together.
            let mut r = [0u8; 8];
            let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut r);
            let jitter =
                Duration::from_micros(u64::from_be_bytes(r) % (backoff.as_micros() as u64 / 4 + 1));
            let wait = backoff + jitter;
            info!(
                retry_in_ms = wait.as_millis() as u64,
                "reconnecting to the gateway"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn link_once(self: Arc<Self>) -> Result<(), String> {
        let identity = lock(&self.identity).clone();
        let link = &identity.link;
        let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&link.tunnel))
            .await
            .map_err(|_| format!("connecting to {} timed out", link.tunnel))?
            .map_err(|e| format!("cannot connect to {}: {e}", link.tunnel))?;
        tcp.set_nodelay(true).ok();
        let name = rustls::pki_types::ServerName::try_from(link.server_name.clone())
            .map_err(|e| format!("server name `{}`: {e}", link.server_name))?;
        let connector = tokio_rustls::TlsConnector::from(identity.tls.clone());
        let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .map_err(|_| "TLS handshake with the gateway timed out".to_string())?
            .map_err(|e| format!("TLS handshake with the gateway failed: {e}"))?;
        tracing::debug!(tunnel = %link.tunnel, "TLS with the gateway established");
        self.serve(tls).await
    }

    /// Serves the gateway's HTTP/2 streams on an established connection until it ends, a
    /// heartbeat goes unanswered, or a renewed certificate asks for a new link.
    pub async fn serve<T>(self: Arc<Self>, io: T) -> Result<(), String>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut conn = h2::server::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .max_concurrent_streams(4096)
            .max_frame_size(1 << 16)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake with the gateway failed: {e}"))?;
        // The gateway speaks only once it has checked the certificate against the store.
        info!(agent = %self.name(), "connected to the gateway");
        let mut pinger = conn.ping_pong();
        let heartbeat = async move {
            let Some(pp) = pinger.as_mut() else {
                return std::future::pending::<String>().await;
            };
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                match tokio::time::timeout(HEARTBEAT * 2, pp.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return format!("heartbeat failed: {e}"),
                    Err(_) => return "the gateway stopped answering heartbeats".to_string(),
                }
            }
        };
        tokio::pin!(heartbeat);
        loop {
            let next = tokio::select! {
                n = conn.accept() => n,
                why = &mut heartbeat => return Err(why),
                _ = self.relink.notified() => {
                    info!("reconnecting with the renewed certificate");
                    return Ok(());
                }
            };
            let (request, respond) = match next {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("link error: {e}")),
                Some(Ok(x)) => x,
            };
            let agent = self.clone();
            tokio::spawn(async move { agent.stream(request, respond).await });
        }
    }

    async fn stream(
        self: Arc<Self>,
        request: http::Request<h2::RecvStream>,
        mut respond: h2::server::SendResponse<Bytes>,
    ) {
        let path = request.uri().path().to_string();
        let recv = request.into_body();
        let ok = http::Response::builder()
            .status(200)
            .body(())
            .unwrap_or_default();
        let send = match respond.send_response(ok, false) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, path, "cannot answer a stream");
                return;
            }
        };
        let io = H2Io::new(send, recv);
        match path.as_str() {
            "/hello" => {
                let mut io = io;
                let _ = tunnel::write_frame(&mut io, &self.hello()).await;
                let _ = io.shutdown().await;
            }
            "/events" => self.events(io).await,
            "/session" => self.session(io).await,
            "/cancel" => self.cancel(io).await,
            "/kill" => self.kill(io).await,
            "/renew" => {
                if let Err(e) = self.renew(io).await {
                    warn!(error = %e, "certificate renewal failed; the current certificate stays");
                }
            }
            other => {
                warn!(path = other, "the gateway opened an unknown stream");
                let mut io = io;
                let _ = io.shutdown().await;
            }
        }
    }

    /// Sends spooled events in order from the last acknowledged one; takes acknowledgements.
    async fn events(&self, io: H2Io) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let acks = async {
            let mut buf = [0u8; 8];
            loop {
                if let Err(e) = rd.read_exact(&mut buf).await {
                    return format!("acknowledgements ended: {e}");
                }
                if let Err(e) = self.spool.ack(u64::from_be_bytes(buf)) {
                    return format!("cannot record an acknowledgement: {e}");
                }
            }
        };
        let send = async {
            let mut head = self.spool.watch_head();
            let mut sent = self.spool.acked();
            loop {
                let batch = self.spool.unsent(sent, EVENT_BATCH);
                if batch.is_empty() {
                    if head.changed().await.is_err() {
                        return "the spool closed".to_string();
                    }
                    // Gather company: one write (and one wake-up of the link) for the events
                    // of many queries rather than one each. Off the query path.
                    tokio::time::sleep(EVENT_GATHER).await;
                    continue;
                }
                let mut buf = Vec::with_capacity(batch.iter().map(|(_, b)| b.len()).sum());
                for (seq, rec) in &batch {
                    buf.extend_from_slice(rec);
                    sent = *seq;
                }
                if let Err(e) = wr.write_all(&buf).await {
                    return format!("sending events failed: {e}");
                }
            }
        };
        let why = tokio::select! {
            w = acks => w,
            w = send => w,
        };
        info!(reason = %why, "event stream ended");
    }

    async fn session(&self, mut io: H2Io) {
        let open: OpenSession = match tunnel::read_frame(&mut io).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                warn!(error = %e, "malformed session request from the gateway");
                return;
            }
        };
        let span = tracing::info_span!("session", session.id = %open.session_id, user = %open.user, resource = %open.resource, role = %open.role);
        self.session_inner(io, open).instrument(span).await
    }

    async fn session_inner(&self, mut io: H2Io, open: OpenSession) {
        let refuse = |kind: RefusalKind, message: String| Refusal {
            kind,
            message,
            code: None,
        };
        let target = self
            .config
            .resource(&open.resource)
            .and_then(|r| r.roles.get(&open.role));
        let answer = match target {
            None => Err(refuse(
                RefusalKind::UnknownResource,
                format!(
                    "agent `{}` fronts no resource `{}` with role `{}`",
                    self.name(),
                    open.resource,
                    open.role
                ),
            )),
            Some(_) if !self.spool.accepts_sessions() => {
                let (n, bytes) = self.spool.backlog();
                warn!(
                    events = n,
                    bytes, "event spool is full; refusing a new session"
                );
                Err(refuse(
                    RefusalKind::SpoolFull,
                    format!(
                        "agent `{}` cannot log more sessions until the gateway takes its \
                         {n} spooled events",
                        self.name()
                    ),
                ))
            }
            Some(t) => t
                .open(open.protocol, &open.user, &open.options)
                .await
                .map(|up| (up.upstream_user().to_string(), t.address().to_string(), up)),
        };
        let (upstream, opened) = match answer {
            Ok((upstream_user, address, up)) => {
                let opened = Opened::Ok {
                    upstream_user,
                    upstream: address,
                    options: up.opened(),
                };
                (Some(up), opened)
            }
            Err(r) => (
                None,
                Opened::Refused {
                    kind: r.kind,
                    message: r.message,
                    code: r.code,
                },
            ),
        };
        if let Err(e) = tunnel::write_frame(&mut io, &opened).await {
            warn!(error = %e, "cannot answer the gateway's session request");
            return;
        }
        let Some(upstream) = upstream else {
            if let Opened::Refused { message, .. } = &opened {
                info!(reason = %message, "session refused");
            }
            let _ = io.shutdown().await;
            return;
        };
        // The gateway ends a session with `/kill` (the relay tells the client why); closing
        // the stream ends it too, without the words.
        let (kill_tx, kill) = watch::channel(None);
        let cancel = upstream.cancel_handle();
        lock(&self.live).insert(
            open.session_id.clone(),
            LiveSession {
                cancel: cancel.clone(),
                kill: kill_tx,
            },
        );
        info!(protocol = open.protocol.as_str(), "session started");
        let sink = SpoolSink {
            spool: &self.spool,
            session_id: &open.session_id,
            user: &open.user,
            resource: &open.resource,
        };
        let summary = upstream.relay(io, &sink, kill).await;
        lock(&self.live).remove(&open.session_id);
        if let (true, Some(h)) = (summary.may_leave_a_query_running(), cancel) {
            // The gateway cut the session (or the link dropped): stop what runs upstream.
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), h.cancel()).await {
                warn!(error = %e, "cannot cancel the query of a session that was cut");
            }
        }
        let end = EventBody::SessionEnd {
            reason: summary.reason.to_string(),
            statements: summary.statements,
            bytes_from_client: summary.bytes_from_client,
            bytes_to_client: summary.bytes_to_client,
            duration_ms: summary.duration_ms,
        };
        if let Err(e) = self
            .spool
            .append(&open.session_id, &open.user, &open.resource, end)
            .await
        {
            tracing::error!(error = %e, "cannot spool the session's end");
        }
        info!(reason = %summary.reason, statements = summary.statements, "session ended");
    }

    /// Renewal: a new key here, a certificate from the gateway, both stored, then a new link.
    async fn renew(&self, mut io: H2Io) -> Result<(), String> {
        let req: RenewRequest = tunnel::read_frame(&mut io)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the gateway closed the renewal stream")?;
        info!(reason = %req.reason, "the gateway renews this agent's certificate");
        let dir = self.config.state_dir.clone();
        let current = identity::current_cert_sha256(&dir).map_err(|e| e.to_string())?;
        let (key, public_key, proof) =
            identity::new_key(&tunnel::renew_proof_message(&current)).map_err(|e| e.to_string())?;
        tunnel::write_frame(&mut io, &RenewKey { public_key, proof })
            .await
            .map_err(|e| e.to_string())?;
        let cert: RenewCert = tunnel::read_frame(&mut io)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the gateway sent no certificate")?;
        identity::install_renewed(&dir, &key, &cert.certificate, &cert.expires)
            .map_err(|e| e.to_string())?;
        let renewed = Identity::load(&dir).map_err(|e| e.to_string())?;
        *lock(&self.identity) = renewed;
        tunnel::write_frame(&mut io, &RenewDone { stored: true })
            .await
            .map_err(|e| e.to_string())?;
        let _ = io.shutdown().await;
        info!(expires = %cert.expires, "certificate renewed");
        // Let the gateway read the confirmation before the link goes.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.relink.notify_one();
        Ok(())
    }

    async fn cancel(&self, mut io: H2Io) {
        let Ok(Some(c)) = tunnel::read_frame::<_, Cancel>(&mut io).await else {
            return;
        };
        let handle = lock(&self.live)
            .get(&c.session_id)
            .and_then(|l| l.cancel.clone());
        if let Some(h) = handle {
            if let Err(e) = h.cancel().await {
                warn!(error = %e, session.id = %c.session_id, "cancel request failed");
            }
        }
        let _ = io.shutdown().await;
    }

    /// Ends a session at the gateway's word; its relay tells the client why.
    async fn kill(&self, mut io: H2Io) {
        let Ok(Some(k)) = tunnel::read_frame::<_, Kill>(&mut io).await else {
            return;
        };
        match lock(&self.live).get(&k.session_id) {
            Some(live) => {
                info!(session.id = %k.session_id, reason = %k.reason, "the gateway ends the session");
                live.kill.send_replace(Some(k.reason));
            }
            None => info!(session.id = %k.session_id, "kill for a session that is not live"),
        }
        let _ = io.shutdown().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Statements into the spool (waits while it is full; never drops).
struct SpoolSink<'a> {
    spool: &'a Spool,
    session_id: &'a str,
    user: &'a str,
    resource: &'a str,
}

impl EventSink for SpoolSink<'_> {
    async fn statement(&self, statement: Statement) -> Result<(), SinkClosedError> {
        self.spool
            .append(
                self.session_id,
                self.user,
                self.resource,
                EventBody::statement(statement),
            )
            .await
            .map(|_| ())
            .map_err(|e| {
                tracing::error!(error = %e, "cannot append to the event spool; ending the session");
                SinkClosedError
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::pg::PgOpen;
    use crate::remote::identity::LinkInfo;
    use crate::tunnel::{frame, Protocol};

    fn agent(dir: &std::path::Path, spool_max: usize) -> Arc<Agent> {
        let toml = format!(
            "state_dir = {:?}\n[[resource]]\nname = \"db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:1\"\ncredential = {{ username = \"u\", password_env = \"PW\" }}\n",
            dir.display().to_string()
        );
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("agent.toml");
        std::fs::write(&path, toml).unwrap();
        let config = AgentConfig::load(&path, &|_| Some("pw".into())).unwrap();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let identity = Identity {
            link: LinkInfo {
                agent: "dc-test".into(),
                tunnel: "127.0.0.1:1".into(),
                server_name: "localhost".into(),
                gateway: "https://127.0.0.1:1".into(),
                expires: String::new(),
            },
            tls: Arc::new(tls),
        };
        let spool = Spool::open(&dir.join("spool"), spool_max).unwrap();
        Agent::new(config, identity, spool)
    }

    /// The gateway's side of a link to `agent`, in memory.
    async fn gateway_side(agent: Arc<Agent>) -> h2::client::SendRequest<Bytes> {
        let (gw_io, agent_io) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move { agent.serve(agent_io).await });
        let (send, conn) = h2::client::handshake(gw_io).await.unwrap();
        tokio::spawn(conn);
        send
    }

    async fn open(
        send: &h2::client::SendRequest<Bytes>,
        path: &str,
        first: Option<Vec<u8>>,
    ) -> H2Io {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::post(format!("http://agent{path}"))
            .body(())
            .unwrap();
        let (resp, mut body) = send.send_request(req, false).unwrap();
        if let Some(f) = first {
            body.send_data(Bytes::from(f), false).unwrap();
        }
        let resp = resp.await.unwrap();
        H2Io::new(body, resp.into_body())
    }

    fn open_session(resource: &str) -> Vec<u8> {
        frame(&OpenSession {
            session_id: "s1".into(),
            user: "alice".into(),
            resource: resource.into(),
            role: "read".into(),
            protocol: Protocol::Postgres,
            options: serde_json::to_value(PgOpen {
                params: vec![],
                max_message_bytes: 1 << 20,
                statement_max_bytes: 4096,
                log_parameters: false,
                function_calls: false,
            })
            .unwrap(),
        })
        .unwrap()
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let mut b = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
        std::env::temp_dir().join(format!("gatehouse-link-{name}-{}", u64::from_be_bytes(b)))
    }

    #[tokio::test]
    async fn hello_names_the_resources_and_unknown_ones_are_refused() {
        let dir = temp("hello");
        let send = gateway_side(agent(&dir, 1 << 20)).await;
        let mut io = open(&send, "/hello", None).await;
        let hello: Hello = tunnel::read_frame(&mut io).await.unwrap().unwrap();
        assert_eq!(hello.resources[0].name, "db");
        assert_eq!(hello.resources[0].roles, vec!["read".to_string()]);
        let mut io = open(&send, "/session", Some(open_session("other"))).await;
        let answer: Opened = tunnel::read_frame(&mut io).await.unwrap().unwrap();
        assert!(
            matches!(
                answer,
                Opened::Refused {
                    kind: RefusalKind::UnknownResource,
                    ..
                }
            ),
            "{answer:?}"
        );
        // The upstream at 127.0.0.1:1 is down: a clear refusal, not a hang.
        let mut io = open(&send, "/session", Some(open_session("db"))).await;
        let answer: Opened = tunnel::read_frame(&mut io).await.unwrap().unwrap();
        assert!(
            matches!(
                answer,
                Opened::Refused {
                    kind: RefusalKind::Unreachable,
                    ..
                }
            ),
            "{answer:?}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_full_spool_refuses_new_sessions_until_the_gateway_acknowledges() {
        let dir = temp("full");
        let agent = agent(&dir, 64 * 1024);
        while agent.spool.accepts_sessions() {
            agent
                .spool
                .append(
                    "old",
                    "bob",
                    "db",
                    EventBody::SessionEnd {
                        reason: "x".repeat(512),
                        statements: 0,
                        bytes_from_client: 0,
                        bytes_to_client: 0,
                        duration_ms: 0,
                    },
                )
                .await
                .unwrap();
        }
        let head = agent.spool.head();
        let send = gateway_side(agent.clone()).await;
        let mut io = open(&send, "/session", Some(open_session("db"))).await;
        let answer: Opened = tunnel::read_frame(&mut io).await.unwrap().unwrap();
        match answer {
            Opened::Refused { kind, message, .. } => {
                assert_eq!(kind, RefusalKind::SpoolFull);
                assert!(message.contains("spooled events"), "{message}");
            }
            other => panic!("a session opened with a full spool: {other:?}"),
        }
        // The gateway takes the events in order and acknowledges them: the spool drains and
        // sessions are accepted again (the next refusal is about the dead upstream).
        let mut events = open(&send, "/events", None).await;
        let mut last = 0;
        while last < head {
            let e: tunnel::SpooledEvent = tunnel::read_frame(&mut events).await.unwrap().unwrap();
            assert_eq!(e.seq, last + 1, "events arrive in order without gaps");
            last = e.seq;
        }
        events.write_all(&head.to_be_bytes()).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !agent.spool.accepts_sessions() {
            assert!(
                std::time::Instant::now() < deadline,
                "the acknowledgement was not applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut io = open(&send, "/session", Some(open_session("db"))).await;
        let answer: Opened = tunnel::read_frame(&mut io).await.unwrap().unwrap();
        assert!(
            matches!(
                answer,
                Opened::Refused {
                    kind: RefusalKind::Unreachable,
                    ..
                }
            ),
            "{answer:?}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
