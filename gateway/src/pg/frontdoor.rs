//! The accept loop and one connection's life: handshake, the password exchange, admission
//! ([`crate::admission`]: authentication, authorisation, durable decision) with its refusals
//! as PostgreSQL errors, upstream through the agent library, relay, end event.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gatehouse_agent::pg::{self as agent, RelayOptions, UpstreamError};
use gatehouse_core::pgwire;
use gatehouse_core::session::SessionId;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use super::handshake::{self, refuse, send_error, ClientStream, HandshakeError, Opening};
use super::sink::SessionSink;
use crate::admission::{self, Admission, AdmitRequest, CredentialFault, Denial, StoreCheck};
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::token::{Door as CredentialDoor, TokenError};
use crate::config::{Config, PostgresDirect, Reach, Resource, ResourceKind};
use crate::listener::{self, Conn, Door, Limits, Refused, Serving};
use crate::registry::{Cancel, Canceller, Owner, Registry, SessionGrant};
use gatehouse_agent::pg::{startup, PgOpen, PgOpened};
use gatehouse_agent::tunnel::{OpenSession, Protocol, RefusalKind};
use gatehouse_core::random::random_bytes;

/// Largest password message (the gateway token) accepted.
const MAX_PASSWORD_MESSAGE: usize = 16 * 1024;

/// Everything a connection needs; shared by all connections.
pub struct FrontDoor {
    pub config: Arc<Config>,
    pub tls: TlsAcceptor,
    /// Authentication, authorisation and the durable decision (shared with the HTTP API).
    pub admission: Admission,
    pub audit: AuditLog,
    pub registry: Registry,
    pub store: crate::store::Store,
    /// This gateway process's id in the sessions table.
    pub instance: String,
    /// Links to remote agents (resources with `agent = ...` are reached through them).
    pub links: crate::agents::Links,
}

/// Accepts connections until `shutdown` completes, then returns (live sessions are left to the
/// caller, who ends them through the registry).
pub async fn serve(
    listener: TcpListener,
    door: Arc<FrontDoor>,
    shutdown: impl Future<Output = ()>,
) {
    // The door's own timeouts (startup handshake, then authentication) answer the client with
    // a reason; the loop's deadline is the backstop behind them.
    let t = door.config.postgres.handshake_timeout;
    let limits = Limits::new(
        door.config.postgres.max_connections,
        t * 2 + Duration::from_secs(1),
    );
    listener::serve(listener, door, limits, shutdown).await;
}

impl Door for FrontDoor {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn serve(self: Arc<Self>, mut conn: Conn) -> Serving {
        Box::pin(async move {
            let Some(tcp) = conn.take_stream() else {
                return;
            };
            let peer = conn.peer();
            self.connection(tcp, peer, &mut conn).await;
        })
    }

    /// Answers after the SSL negotiation, so that psql (which asks for TLS first) shows why.
    fn refuse(self: Arc<Self>, tcp: TcpStream, why: Refused) -> Serving {
        Box::pin(async move {
            let opening = tokio::time::timeout(
                Duration::from_secs(2),
                handshake::open(tcp, &self.tls, self.config.postgres.allow_plaintext),
            )
            .await;
            if let Ok(Ok(Opening::Session { mut stream, .. })) = opening {
                refuse(&mut stream, "53300", why.message()).await;
            }
        })
    }

    fn count_refusal(&self, peer: SocketAddr, class: &'static str, reason: &str) {
        self.admission
            .count_refusal(CredentialDoor::Postgres, peer, class, reason);
    }
}

/// A connection that passed admission, with its upstream open.
struct Ready {
    resource: Resource,
    /// The sign-in whose credential admitted the session (none for issued tokens).
    login: Option<String>,
    role: String,
    upstream_user: String,
    /// Where the session goes: `host:port` (embedded agent) or what the remote agent reports.
    upstream_addr: String,
    grant: Option<SessionGrant>,
    upstream: UpstreamConn,
}

/// What the client is handed once established: the canceller, the upstream's parameters and
/// its startup notices.
type Established<'a> = (Option<Canceller>, &'a [(String, String)], Vec<&'a [u8]>);

/// An open upstream: a direct connection through the embedded agent, or a session stream to
/// the remote agent that holds it.
enum UpstreamConn {
    Local(agent::Upstream),
    Remote {
        session: crate::agents::RemoteSession,
        opened: PgOpened,
    },
}

/// A refusal to send to the client after authentication started.
struct Refusal {
    code: &'static str,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
}

/// How the PostgreSQL front door answers each of admission's refusals: SQLSTATE, message,
/// detail and hint. Authentication failures do not say which check failed (the audit event
/// does), beyond a revoked credential or a disabled user. An unknown resource's refusal lists
/// the PostgreSQL resources `config` has: admission refuses a resource only after the
/// credential verified, and resource names are not for unauthenticated peers.
fn refusal(denial: &Denial, config: &Config) -> Refusal {
    match denial {
        Denial::Credential { user, fault } => match fault {
            // Said only after the signature verified: the holder has a real credential, of
            // the wrong kind.
            CredentialFault::Invalid(TokenError::WrongDoor(why)) => Refusal {
                code: "28P01",
                message: format!("gateway token authentication failed for user \"{user}\": {why}"),
                detail: None,
                hint: Some("run `gatehouse psql RESOURCE`, or `eval \"$(gatehouse env RESOURCE)\"` for another client".into()),
            },
            CredentialFault::Invalid(_) => Refusal {
                code: "28P01",
                message: format!("gateway token authentication failed for user \"{user}\""),
                detail: None,
                hint: Some("use `gatehouse psql` or `gatehouse env` after `gatehouse login`, or a current token from `gatehouse token issue`, as the password".into()),
            },
            CredentialFault::Disabled => Refusal::new(
                "28000",
                format!("user \"{user}\" is disabled; ask an administrator"),
            ),
            CredentialFault::Revoked | CredentialFault::UnknownLogin => Refusal {
                code: "28P01",
                message: format!("the credential of user \"{user}\" was revoked"),
                detail: None,
                hint: Some("sign in again with `gatehouse login`".into()),
            },
        },
        Denial::UnknownResource { name } => Refusal {
            code: "3D000",
            message: format!("resource \"{name}\" is not known to the gateway"),
            detail: Some(config.known_resources(ResourceKind::Postgres)),
            hint: Some(crate::config::UNKNOWN_RESOURCE_HINT.into()),
        },
        Denial::UnknownRole {
            resource,
            role,
            roles,
        } => Refusal::new(
            "3D000",
            format!(
                "resource \"{resource}\" has no role \"{role}\" (roles: {})",
                roles.join(", ")
            ),
        ),
        Denial::Policy {
            resource,
            reason,
            seq,
            session_id,
        } => Refusal {
            code: "42501",
            message: format!("access to resource \"{resource}\" denied by policy: {reason}"),
            detail: Some(format!(
                "decision recorded as audit event {seq}, session {session_id}"
            )),
            hint: None,
        },
        Denial::Store { what, .. } => Refusal::new(
            "58000",
            match what {
                StoreCheck::User => "gatehouse cannot check the user's status; the connection is refused (fail closed)",
                StoreCheck::Login => "gatehouse cannot check the credential's status; the connection is refused (fail closed)",
                StoreCheck::Grants => "gatehouse cannot check grants; the connection is refused (fail closed)",
                StoreCheck::Decision => "gatehouse cannot record the access decision; the connection is refused (fail closed)",
            },
        ),
    }
}

impl FrontDoor {
    async fn connection(&self, tcp: TcpStream, peer: SocketAddr, conn: &mut Conn) {
        let timeout = self.config.postgres.handshake_timeout;
        let opening = match tokio::time::timeout(
            timeout,
            handshake::open(tcp, &self.tls, self.config.postgres.allow_plaintext),
        )
        .await
        {
            Err(_) => {
                info!("client did not finish the startup handshake in time");
                self.count_refusal(
                    peer,
                    "timeout",
                    "the client did not finish the startup handshake in time",
                );
                return;
            }
            Ok(Err(e)) => {
                info!(error = %e, "startup handshake refused");
                // A client that closes without a word (a health check, a port scan) is no
                // refusal worth a row.
                if !matches!(e, HandshakeError::Wire(pgwire::WireError::Closed)) {
                    self.count_refusal(
                        peer,
                        "handshake",
                        &format!("startup handshake refused: {e}"),
                    );
                }
                return;
            }
            Ok(Ok(o)) => o,
        };
        match opening {
            Opening::Cancel {
                pid,
                secret,
                mut stream,
            } => {
                self.cancel(pid, secret, peer).await;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            }
            Opening::Session {
                stream,
                tls,
                params,
                minor,
            } => self.session(stream, tls, params, minor, peer, conn).await,
        }
    }

    async fn cancel(&self, pid: u32, secret: u32, peer: SocketAddr) {
        match self.registry.cancel_target(pid, secret) {
            Some((session, user, resource, handle)) => {
                let outcome = handle.cancel().await;
                let mut e = NewEvent::new(EventKind::CancelForwarded);
                e.actor = user;
                e.resource = resource;
                e.action = "cancel".into();
                e.session_id = session.to_string();
                e.detail = serde_json::json!({ "forwarded": outcome.is_ok() });
                let _ = self.audit.record(e).await;
                info!(session.id = %session, "cancel request forwarded");
            }
            // PostgreSQL answers nothing to a cancel request; neither do we.
            None => {
                warn!(pid, "cancel request matches no live session; dropped");
                self.count_refusal(
                    peer,
                    "cancel",
                    &format!("a cancel request for backend {pid} matches no live session"),
                );
            }
        }
    }

    async fn session(
        &self,
        mut stream: ClientStream,
        tls: bool,
        params: Vec<(String, String)>,
        minor: u16,
        peer: SocketAddr,
        conn: &mut Conn,
    ) {
        let param = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let Some(user) = param("user").filter(|u| !u.is_empty()) else {
            refuse(
                &mut stream,
                "28000",
                "no user name given in the startup packet",
            )
            .await;
            self.count_refusal(peer, "names", "no user name given in the startup packet");
            return;
        };
        let resource_name = param("database")
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        // Bounded and checked before anything is authenticated or stored: a failed login
        // must not be a way to write kilobytes of chosen text into the audit log.
        if let Err(why) = crate::admission::check_names(&user, &resource_name) {
            info!(reason = why, "startup refused before authentication");
            refuse(&mut stream, "28000", why).await;
            self.count_refusal(peer, "names", why);
            return;
        }
        tracing::Span::current().record("user", user.as_str());
        let session_id = SessionId(random_bytes::<16>());
        tracing::Span::current().record("session.id", tracing::field::display(session_id));

        let timeout = self.config.postgres.handshake_timeout;
        let ready = tokio::time::timeout(
            timeout,
            self.admit(
                &mut stream,
                &user,
                &resource_name,
                tls,
                peer,
                session_id,
                &params,
                minor,
            ),
        )
        .await;
        let admitted = match ready {
            Err(_) => {
                info!("client did not authenticate in time");
                refuse(&mut stream, "08006", "authentication timed out").await;
                self.count_refusal(peer, "timeout", "the client did not authenticate in time");
                return;
            }
            Ok(Err(r)) => {
                send_error(
                    &mut stream,
                    r.code,
                    &r.message,
                    r.detail.as_deref(),
                    r.hint.as_deref(),
                )
                .await;
                return;
            }
            Ok(Ok(x)) => x,
        };
        // Admitted: the connection no longer counts against the pre-authentication limits.
        conn.authenticated();
        let Ready {
            resource,
            login,
            role,
            upstream_user,
            upstream_addr,
            grant,
            upstream,
        } = admitted;

        // Established: hand the client the upstream's parameters and our own cancel key.
        let cancel_on_cut = match &upstream {
            UpstreamConn::Local(up) => up.cancel_handle(),
            UpstreamConn::Remote { .. } => None,
        };
        let (canceller, params, notices): Established<'_> = match &upstream {
            UpstreamConn::Local(up) => (
                up.cancel_handle()
                    .map(|h| Arc::new(PgCancel(h)) as Canceller),
                &up.params,
                up.notices.iter().map(|n| &n[..]).collect(),
            ),
            UpstreamConn::Remote { session, opened } => (
                Some(session.canceller()),
                &opened.params,
                opened.notices.iter().map(|n| &n[..]).collect(),
            ),
        };
        let owner = Owner {
            user: user.clone(),
            resource: resource.name.clone(),
            login,
        };
        let (pid, secret, kill, _registration) =
            self.registry.register(session_id, owner, canceller, grant);
        let mut out = BytesMut::new();
        pgwire::auth_ok(&mut out);
        for (k, v) in params {
            pgwire::parameter_status(&mut out, k, v);
        }
        for n in notices {
            out.extend_from_slice(n);
        }
        pgwire::backend_key_data(&mut out, pid, secret);
        pgwire::ready_for_query(&mut out, b'I');
        if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
            return;
        }

        let mut start = NewEvent::new(EventKind::SessionStart);
        start.actor = user.clone();
        start.resource = resource.name.clone();
        start.action = "connect".into();
        start.session_id = session_id.to_string();
        start.detail = serde_json::json!({
            "upstream": upstream_addr,
            "upstream_user": upstream_user,
            "agent": resource.agent(),
            "role": role,
            "grant_id": grant.map(|g| g.id),
            "client_addr": peer.to_string(),
            "tls": tls,
            "application_name": param("application_name").unwrap_or_default(),
        });
        if self.audit.record(start).await.is_err() {
            return;
        }
        let record = crate::session_record::list(
            &self.store,
            crate::session_record::Listing {
                instance: &self.instance,
                id: session_id,
                user: &user,
                resource: &resource.name,
                client_addr: peer,
                role: &role,
                grant,
                protocol: "postgres",
            },
        );
        info!(resource = %resource.name, "session started");

        let opts = RelayOptions {
            max_message_bytes: self.config.postgres.max_message_bytes,
            statement_max_bytes: self.config.audit.statement_max_bytes,
            log_parameters: resource.postgres().is_some_and(|pg| pg.log_parameters),
            // Fast-path calls run functions outside SQL: refused (a protocol error naming
            // them) unless the resource lets them through, each logged.
            function_calls: resource.postgres().is_some_and(|pg| pg.function_calls),
        };
        let sink = SessionSink {
            audit: self.audit.clone(),
            session_id: session_id.to_string(),
            actor: user.clone(),
            resource: resource.name.clone(),
        };
        let summary = match upstream {
            UpstreamConn::Local(up) => {
                let summary = agent::relay(up.into_stream(), stream, &opts, &sink, kill).await;
                if let (true, Some(h)) = (summary.may_leave_a_query_running(), cancel_on_cut) {
                    // Cut or vanished client: stop what runs upstream, or PostgreSQL keeps
                    // running it until it next writes to the closed socket.
                    if let Ok(Err(e)) =
                        tokio::time::timeout(Duration::from_secs(2), h.cancel()).await
                    {
                        warn!(error = %e, "cannot cancel the query of a session that was cut");
                    }
                }
                summary
            }
            // The remote agent parses, observes and logs the session (and tells the client
            // why when it is cut); the gateway splices the bytes.
            UpstreamConn::Remote { session, .. } => session.relay(stream, kill).await,
        };

        record.end(&self.audit, &summary).await;
        info!(reason = %summary.reason, statements = summary.statements, "session ended");
    }

    /// Reads the password (the gateway credential), has admission authenticate, authorise and
    /// record the decision durably, then opens the upstream.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        stream: &mut ClientStream,
        user: &str,
        resource_name: &str,
        tls: bool,
        peer: SocketAddr,
        session_id: SessionId,
        params: &[(String, String)],
        minor: u16,
    ) -> Result<Ready, Refusal> {
        // 1. The cleartext password exchange: the password is a gateway token. Before it, as
        // PostgreSQL does, the protocol version and options the gateway does not speak.
        let mut out = BytesMut::new();
        let protocol_options = startup::protocol_options(params);
        if minor > 0 || !protocol_options.is_empty() {
            pgwire::negotiate_protocol_version(&mut out, 0, &protocol_options);
        }
        pgwire::auth_cleartext(&mut out);
        stream
            .write_all(&out)
            .await
            .map_err(|_| Refusal::new("08006", "connection lost"))?;
        stream
            .flush()
            .await
            .map_err(|_| Refusal::new("08006", "connection lost"))?;
        let (tag, body) = pgwire::read_message(stream, MAX_PASSWORD_MESSAGE)
            .await
            .map_err(|e| Refusal::new("08P01", format!("invalid password message: {e}")))?;
        if tag != b'p' {
            return Err(Refusal::new(
                "08P01",
                format!("expected a password message, got `{}`", tag as char),
            ));
        }
        let token = body.strip_suffix(&[0]).unwrap_or(&body);
        let token = String::from_utf8_lossy(token);

        // 2. Admission: credential, standing, resource and role, grant, Cedar, durable decision.
        // `dbname` is `resource` (the `read` role) or `resource:role`.
        let (name, role) = match resource_name.split_once(':') {
            Some((n, r)) => (n, r),
            None => (resource_name, crate::config::DEFAULT_ROLE),
        };
        let admitted = self
            .admission
            .admit(AdmitRequest {
                user,
                credential: token.trim(),
                resource: name,
                role,
                named_as: resource_name,
                action: "connect",
                peer,
                tls,
                session_id,
                door: crate::authn::token::Door::Postgres,
            })
            .await
            .map_err(|d| refusal(&d, &self.config))?;
        let admission::Admitted {
            resource,
            grant,
            claims,
            ..
        } = admitted;

        // 3. What the startup packet asks of the upstream session: forwarded, or refused by
        // name (never silently dropped). Refused after authentication, so the refusal is
        // attributed in the log.
        let settings = match startup::vet(params) {
            Ok(v) => Ok(v.settings),
            Err(r) => Err((
                r.to_string(),
                Refusal {
                    code: "0A000",
                    message: r.to_string(),
                    detail: None,
                    hint: Some("connect without it (e.g. unset PGOPTIONS)".into()),
                },
            )),
        };

        // 4. Upstream through the agent library, with the brokered credential: in this process,
        // or in the remote agent that fronts the resource.
        let opened = match (settings, resource.postgres().map(|pg| &pg.reach)) {
            (Err(refused), _) => Err(refused),
            (Ok(_), None) => Err(not_postgres(&resource)),
            (Ok(settings), Some(Reach::Direct(direct))) => {
                self.open_local(&resource.name, direct, role, user, &settings)
                    .await
            }
            (Ok(settings), Some(Reach::Agent(agent_name))) => {
                self.open_remote(&resource, agent_name, role, user, session_id, &settings)
                    .await
            }
        };
        match opened {
            Ok((upstream_user, upstream_addr, upstream)) => Ok(Ready {
                resource,
                login: claims.sid.clone(),
                role: role.to_string(),
                upstream_user,
                upstream_addr,
                grant,
                upstream,
            }),
            Err((why, refusal)) => {
                let mut e = NewEvent::new(EventKind::SessionFailed);
                e.actor = user.to_string();
                e.resource = resource.name.clone();
                e.action = "connect".into();
                e.session_id = session_id.to_string();
                e.reason = why;
                if let Some(agent) = resource.agent() {
                    e.detail = serde_json::json!({ "agent": agent });
                }
                let _ = self.audit.record(e).await;
                Err(refusal)
            }
        }
    }

    /// Connects to PostgreSQL resource `name` from this process, as `role`, for `user`.
    async fn open_local(
        &self,
        name: &str,
        direct: &PostgresDirect,
        role: &str,
        user: &str,
        params: &[(String, String)],
    ) -> Result<(String, String, UpstreamConn), (String, Refusal)> {
        let Some(target) = direct.target(role) else {
            return Err((
                format!("no credential for role `{role}`"),
                Refusal::new(
                    "3D000",
                    format!("resource \"{name}\" has no role \"{role}\""),
                ),
            ));
        };
        match agent::connect_as(&target, user, params).await {
            Ok((up, upstream_user)) => Ok((upstream_user, target.address, UpstreamConn::Local(up))),
            Err(err) => {
                warn!(upstream = %target.address, error = %err, "upstream connection failed");
                Err((err.to_string(), upstream_refusal(name, &err)))
            }
        }
    }

    async fn open_remote(
        &self,
        resource: &Resource,
        agent_name: &str,
        role: &str,
        user: &str,
        session_id: SessionId,
        params: &[(String, String)],
    ) -> Result<(String, String, UpstreamConn), (String, Refusal)> {
        let options = PgOpen {
            params: params.to_vec(),
            max_message_bytes: self.config.postgres.max_message_bytes,
            statement_max_bytes: self.config.audit.statement_max_bytes,
            log_parameters: resource.postgres().is_some_and(|pg| pg.log_parameters),
            // Fast-path calls run functions outside SQL: refused (a protocol error naming
            // them) unless the resource lets them through, each logged.
            function_calls: resource.postgres().is_some_and(|pg| pg.function_calls),
        };
        let open = OpenSession {
            session_id: session_id.to_string(),
            user: user.to_string(),
            resource: resource.name.clone(),
            role: role.to_string(),
            protocol: Protocol::Postgres,
            options: serde_json::to_value(options).unwrap_or_default(),
        };
        let name = &resource.name;
        match self.links.open_session(agent_name, &open).await {
            Ok(Ok(session)) => {
                let opened: PgOpened = match serde_json::from_value(session.options.clone()) {
                    Ok(o) => o,
                    Err(e) => {
                        let why = format!("agent `{agent_name}` answered a malformed session: {e}");
                        warn!(reason = %why, "cannot use the agent's session");
                        return Err((
                            why,
                            Refusal::new(
                                "08001",
                                format!("agent \"{agent_name}\" answered the session request with something this gateway cannot use"),
                            ),
                        ));
                    }
                };
                Ok((
                    session.upstream_user.clone(),
                    format!("{} via agent {agent_name}", session.upstream),
                    UpstreamConn::Remote { session, opened },
                ))
            }
            Ok(Err(gatehouse_agent::connector::Refusal {
                kind,
                message,
                code,
            })) => {
                warn!(agent = agent_name, reason = %message, "the agent refused the session");
                let refusal = match kind {
                    RefusalKind::UnknownResource => Refusal::new("3D000", format!("agent \"{agent_name}\" does not front resource \"{name}\" with role \"{role}\"")),
                    RefusalKind::CredentialRejected => Refusal {
                        code: "08004",
                        message: format!("resource \"{name}\" rejected the agent's brokered credential"),
                        detail: Some(message.clone()),
                        hint: Some("this is an agent configuration problem, not your token; tell the resource's admin".into()),
                    },
                    RefusalKind::Untrusted => untrusted_refusal(name, &message),
                    RefusalKind::UpstreamRefused => Refusal {
                        code: "08004",
                        message: format!("resource \"{name}\" refused the session: {message}"),
                        detail: code.map(|c| format!("upstream SQLSTATE {c}")),
                        hint: None,
                    },
                    RefusalKind::SpoolFull => Refusal {
                        code: "53400",
                        message: format!("agent \"{agent_name}\" cannot log new sessions right now (its event spool is full); the session is refused rather than unlogged"),
                        detail: Some(message.clone()),
                        hint: Some("try again later; the agent's admin should check its link to the gateway".into()),
                    },
                    RefusalKind::Unreachable | RefusalKind::Other => Refusal {
                        code: "08001",
                        message: format!("agent \"{agent_name}\" could not connect to resource \"{name}\""),
                        detail: Some(message.clone()),
                        hint: Some("the resource may be down; try again later or tell its admin".into()),
                    },
                };
                Err((format!("agent refused: {message}"), refusal))
            }
            Err(e) => {
                warn!(error = %e, "cannot open a session through the agent");
                let refusal = Refusal {
                    code: "08001",
                    message: format!("gatehouse cannot reach resource \"{name}\": {e}"),
                    detail: None,
                    hint: Some("the resource's agent is offline; try again later or tell its admin (`gatehouse agents`)".into()),
                };
                Err((e.to_string(), refusal))
            }
        }
    }
}

/// A resource of another kind, asked for at the PostgreSQL front door.
fn not_postgres(resource: &Resource) -> (String, Refusal) {
    let (name, kind) = (&resource.name, resource.kind().as_str());
    (
        format!("resource `{name}` is a {kind} resource, not PostgreSQL"),
        Refusal {
            code: "3D000",
            message: format!("resource \"{name}\" is a {kind} resource, not a PostgreSQL database"),
            detail: None,
            hint: Some(format!("use `gatehouse connect {name}`")),
        },
    )
}

fn upstream_refusal(resource: &str, err: &UpstreamError) -> Refusal {
    match err {
        UpstreamError::CredentialRejected(_) | UpstreamError::Scram(_) => Refusal {
            code: "08004",
            message: format!("resource \"{resource}\" rejected the gateway's brokered credential"),
            detail: Some(err.to_string()),
            hint: Some("this is a gateway configuration problem, not your token; tell the resource's admin".into()),
        },
        UpstreamError::Refused(fields) => Refusal {
            code: "08004",
            message: format!("resource \"{resource}\" refused the session: {}", fields.message),
            detail: Some(format!("upstream SQLSTATE {}", fields.code)),
            hint: None,
        },
        UpstreamError::AuthMethodRefused(_)
        | UpstreamError::TlsRefused
        | UpstreamError::Tls(_) => untrusted_refusal(resource, &err.to_string()),
        UpstreamError::PerUserRole(_) => Refusal {
            code: "08004",
            message: format!("resource \"{resource}\" could not set up your upstream role"),
            detail: Some(err.to_string()),
            hint: Some("this is a gateway configuration problem (the resource's per_user_roles admin); tell the resource's admin".into()),
        },
        _ => Refusal {
            code: "08001",
            message: format!("gatehouse could not connect to resource \"{resource}\""),
            detail: Some(err.to_string()),
            hint: Some("the resource may be down; try again later or tell its admin".into()),
        },
    }
}

/// The upstream failed a trust check (TLS, or an authentication method the resource does not
/// allow): the brokered credential was not sent, and the client learns which check failed.
fn untrusted_refusal(resource: &str, why: &str) -> Refusal {
    Refusal {
        code: "08004",
        message: format!("resource \"{resource}\" failed the gateway's upstream checks: {why}"),
        detail: None,
        hint: Some("the server at the resource's address may not be the real one; tell the resource's admin".into()),
    }
}

/// PostgreSQL's own cancel request, to the backend the session runs on.
struct PgCancel(agent::CancelHandle);

impl Cancel for PgCancel {
    fn cancel(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move { self.0.cancel().await.map_err(|e| e.to_string()) })
    }
}
