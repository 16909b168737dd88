//! The generic TCP front door: any TCP service (`kind = "tcp"` resources: Redis, an HTTP admin
//! port, SSH, ...) behind the same admission, registry and audit log as PostgreSQL. The gateway
//! parses nothing of the service's protocol; what the log holds of such a session is who, what,
//! when, how long and how many bytes each way.
//!
//! # Wire protocol (version 1)
//!
//! 1. The client opens TLS to the door (`[tcp] listen`; the certificate is the PostgreSQL front
//!    door's).
//! 2. It sends ONE line of JSON, ended by `\n`, at most [`MAX_HELLO`] bytes:
//!    `{"v":1,"user":"alice","resource":"cache","role":"read","credential":"<gateway token>"}`
//!    (`role` may be left out: `read`).
//! 3. The gateway authenticates, authorises and records the decision durably
//!    ([`crate::admission`]; the Cedar action is `connect`, the resource's `protocol` is
//!    `tcp`), dials the resource (itself, or through the remote agent that fronts it) and
//!    answers ONE line of JSON:
//!    - `{"ok":true,"session":"<session id>"}`: from the next byte on, the connection carries
//!      the service's bytes both ways, unchanged, until either side closes or the gateway ends
//!      the session (user disabled, `sessions kill`, grant expired or revoked, shutdown);
//!    - `{"ok":false,"code":"...","message":"..."}`, then the gateway closes. `code` is one of
//!      `credential` (the token was refused, the user is disabled or the login revoked),
//!      `policy` (denied; the message names the audit event), `unknown_resource` (no such
//!      resource or role, or not a TCP resource), `store` (the gateway could not check or
//!      record; fail closed), `upstream` (the resource could not be reached), `protocol` (the
//!      hello was malformed, too long or of another version) and `busy` (the door's connection
//!      limits). `message` is for people.
//!
//! The client must not send service bytes before the answer: a refused session is closed and
//! anything it sent is discarded. A client that does not finish TLS, its hello and admission
//! within `[tcp] handshake_timeout` is disconnected without an answer.
//!
//! `gatehouse connect` ([`crate::client::connect`]) is the client: a loopback listener whose
//! connections it carries through this door.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_agent::tcp as agent;
use gatehouse_agent::tunnel::{OpenSession, Protocol, RefusalKind};
use gatehouse_core::random::random_bytes;
use gatehouse_core::session::SessionId;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::admission::{Admission, AdmitRequest, CredentialFault, Denial, StoreCheck};
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::config::{Config, Reach, Resource, ResourceKind};
use crate::listener::{Conn, Door, Refused, Serving};
use crate::registry::Registry;
use crate::store::Store;

/// The longest hello line accepted, newline included.
pub const MAX_HELLO: usize = 16 * 1024;

/// The protocol version this gateway speaks.
pub const VERSION: u32 = 1;

/// The client's first and only line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub v: u32,
    pub user: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub credential: String,
}

/// The gateway's only line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Answer {
    pub fn ok(session: SessionId) -> Answer {
        Answer {
            ok: true,
            session: Some(session.to_string()),
            code: None,
            message: None,
        }
    }

    pub fn refused(code: &str, message: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            session: None,
            code: Some(code.to_string()),
            message: Some(message.into()),
        }
    }

    /// The line as sent: compact JSON and `\n`.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        line.push(b'\n');
        line
    }
}

/// Why a line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("the line is longer than {0} bytes")]
    TooLong(usize),
    #[error("the connection closed before the line ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one `\n`-terminated line of at most `max` bytes (newline included), without reading
/// past it: bytes that follow stay in `r`'s buffer.
pub async fn read_line<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    max: usize,
) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(max as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(line);
    }
    if n >= max {
        Err(LineError::TooLong(max))
    } else {
        Err(LineError::Closed)
    }
}

/// Parses and checks a hello line.
pub fn parse_hello(line: &[u8]) -> Result<Hello, String> {
    let hello: Hello =
        serde_json::from_slice(line).map_err(|e| format!("the hello is not valid JSON: {e}"))?;
    if hello.v != VERSION {
        return Err(format!(
            "hello version {} is not supported; this gateway speaks version {VERSION}",
            hello.v
        ));
    }
    if hello.user.is_empty() || hello.resource.is_empty() {
        return Err("the hello names no user or no resource".into());
    }
    crate::admission::check_names(&hello.user, &hello.resource).map_err(String::from)?;
    Ok(hello)
}

/// How the TCP door answers each of admission's refusals. An unknown resource's answer lists
/// the TCP resources `config` has: admission refuses a resource only after the credential
/// verified, and resource names are not for unauthenticated peers.
pub fn refusal(denial: &Denial, config: &Config) -> Answer {
    match denial {
        Denial::Credential { user, fault } => Answer::refused(
            "credential",
            match fault {
                CredentialFault::Invalid(_) => format!(
                    "gateway token authentication failed for user \"{user}\"; use a current token from `gatehouse token issue` (or `gatehouse login`)"
                ),
                CredentialFault::Disabled => {
                    format!("user \"{user}\" is disabled; ask an administrator")
                }
                CredentialFault::Revoked | CredentialFault::UnknownLogin => format!(
                    "the credential of user \"{user}\" was revoked; sign in again with `gatehouse login`"
                ),
            },
        ),
        Denial::UnknownResource { name } => Answer::refused(
            "unknown_resource",
            format!(
                "resource \"{name}\" is not known to the gateway ({}); {}",
                config.known_resources(ResourceKind::Tcp),
                crate::config::UNKNOWN_RESOURCE_HINT
            ),
        ),
        Denial::UnknownRole {
            resource,
            role,
            roles,
        } => Answer::refused(
            "unknown_resource",
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
        } => Answer::refused(
            "policy",
            format!(
                "access to {resource} denied by policy: {reason} (decision recorded as audit event {seq}, session {session_id})"
            ),
        ),
        Denial::Store { what, .. } => Answer::refused(
            "store",
            match what {
                StoreCheck::User => "gatehouse cannot check the user's status; the connection is refused (fail closed)",
                StoreCheck::Login => "gatehouse cannot check the credential's status; the connection is refused (fail closed)",
                StoreCheck::Grants => "gatehouse cannot check grants; the connection is refused (fail closed)",
                StoreCheck::Decision => "gatehouse cannot record the access decision; the connection is refused (fail closed)",
            },
        ),
    }
}

/// Everything a connection needs; shared by all connections.
pub struct TcpDoor {
    pub config: Arc<Config>,
    /// The PostgreSQL front door's certificate.
    pub tls: TlsAcceptor,
    pub admission: Admission,
    pub audit: AuditLog,
    pub registry: Registry,
    pub store: Store,
    /// This gateway process's id in the sessions table.
    pub instance: String,
    /// Links to remote agents (resources with `agent = ...` are reached through them).
    pub links: crate::agents::Links,
}

/// An open upstream: dialled here, or a session on the remote agent that fronts the resource.
enum Upstream {
    /// Dialled here; `address` is the resource's `host:port`.
    Local {
        tcp: TcpStream,
        address: String,
    },
    Remote(Box<crate::agents::RemoteSession>),
}

impl Door for TcpDoor {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn serve(self: Arc<Self>, mut conn: Conn) -> Serving {
        Box::pin(async move {
            let Some(tcp) = conn.take_stream() else {
                return;
            };
            let peer = conn.peer();
            let tls = match self.tls.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    self.tls_failed(peer, &e);
                    return;
                }
            };
            self.connection(BufReader::new(tls), peer, &mut conn).await;
        })
    }

    fn count_refusal(&self, peer: SocketAddr, class: &'static str, reason: &str) {
        self.admission
            .count_refusal(crate::authn::token::Door::Tcp, peer, class, reason);
    }

    fn refuse(self: Arc<Self>, tcp: TcpStream, why: Refused) -> Serving {
        Box::pin(async move {
            if let Ok(tls) = self.tls.accept(tcp).await {
                let mut stream = BufReader::new(tls);
                let _ = read_line(&mut stream, MAX_HELLO).await;
                refuse(&mut stream, &Answer::refused("busy", why.message())).await;
            }
        })
    }
}

/// Writes a refusal and closes gracefully: close_notify, then a short drain of whatever the
/// client still sends, so that a reset does not eat the answer.
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, answer: &Answer) {
    if stream.write_all(&answer.to_line()).await.is_err() || stream.flush().await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

impl TcpDoor {
    async fn connection<S>(&self, mut stream: BufReader<S>, peer: SocketAddr, conn: &mut Conn)
    where
        S: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let hello = match read_line(&mut stream, MAX_HELLO).await {
            Ok(line) => match parse_hello(&line) {
                Ok(h) => h,
                Err(why) => {
                    info!(reason = %why, "hello refused");
                    self.count_refusal(peer, "handshake", &format!("hello refused: {why}"));
                    refuse(&mut stream, &Answer::refused("protocol", why)).await;
                    return;
                }
            },
            Err(LineError::TooLong(max)) => {
                info!("hello refused: longer than {max} bytes");
                let why = format!("the hello line is longer than {max} bytes");
                self.count_refusal(peer, "handshake", &why);
                refuse(&mut stream, &Answer::refused("protocol", why)).await;
                return;
            }
            Err(LineError::Closed) => {
                info!("the client closed before its hello");
                return;
            }
            Err(e) => {
                info!(error = %e, "no hello");
                self.count_refusal(peer, "handshake", &format!("no hello: {e}"));
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("user", hello.user.as_str());
        let session_id = SessionId(random_bytes::<16>());
        span.record("session.id", tracing::field::display(session_id));
        let role = hello
            .role
            .clone()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| crate::config::DEFAULT_ROLE.to_string());
        let named_as = if role == crate::config::DEFAULT_ROLE {
            hello.resource.clone()
        } else {
            format!("{}:{role}", hello.resource)
        };

        let admitted = self
            .admission
            .admit(AdmitRequest {
                user: &hello.user,
                credential: hello.credential.trim(),
                resource: &hello.resource,
                role: &role,
                named_as: &named_as,
                action: "connect",
                peer,
                tls: true,
                session_id,
                door: crate::authn::token::Door::Tcp,
            })
            .await;
        let admitted = match admitted {
            Ok(a) => a,
            Err(denial) => {
                refuse(&mut stream, &refusal(&denial, &self.config)).await;
                return;
            }
        };
        conn.authenticated();
        let user = hello.user;
        let resource = admitted.resource;
        let grant = admitted.grant;
        let login = admitted.claims.sid.clone();

        let upstream = match self.open(&resource, &user, session_id).await {
            Ok(up) => up,
            Err((why, answer)) => {
                let mut e = NewEvent::new(EventKind::SessionFailed);
                e.actor = user.clone();
                e.resource = resource.name.clone();
                e.action = "connect".into();
                e.session_id = session_id.to_string();
                e.reason = why;
                e.detail = match resource.agent() {
                    Some(agent) => serde_json::json!({ "protocol": "tcp", "agent": agent }),
                    None => {
                        serde_json::json!({ "protocol": "tcp", "upstream": resource.address() })
                    }
                };
                let _ = self.audit.record(e).await;
                refuse(&mut stream, &answer).await;
                return;
            }
        };

        let owner = crate::registry::Owner {
            user: user.clone(),
            resource: resource.name.clone(),
            login,
        };
        let upstream_addr = match &upstream {
            Upstream::Local { address, .. } => address.clone(),
            Upstream::Remote(s) => format!("{} via agent {}", s.upstream, s.agent()),
        };
        let (_pid, _secret, kill, _registration) =
            self.registry.register(session_id, owner, None, grant);
        let mut start = NewEvent::new(EventKind::SessionStart);
        start.actor = user.clone();
        start.resource = resource.name.clone();
        start.action = "connect".into();
        start.session_id = session_id.to_string();
        start.detail = serde_json::json!({
            "protocol": "tcp",
            "upstream": upstream_addr,
            "agent": resource.agent(),
            "role": role,
            "grant_id": grant.map(|g| g.id),
            "client_addr": peer.to_string(),
            "tls": true,
        });
        if self.audit.record(start).await.is_err() {
            return;
        }
        let answered = stream
            .write_all(&Answer::ok(session_id).to_line())
            .await
            .is_ok()
            && stream.flush().await.is_ok();
        if !answered {
            // The relay notices at once; the session still gets its end event below.
            info!("the client left before the answer");
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
                protocol: "tcp",
            },
        );
        info!(resource = %resource.name, "tcp session started");

        let summary = match upstream {
            Upstream::Local { tcp, .. } => agent::relay(tcp, stream, kill).await,
            Upstream::Remote(session) => session.relay(stream, kill).await,
        };

        record.end(&self.audit, &summary).await;
        info!(
            reason = %summary.reason,
            bytes_from_client = summary.bytes_from_client,
            bytes_to_client = summary.bytes_to_client,
            "tcp session ended"
        );
    }

    /// Dials an admitted resource, or has its agent dial it; on failure, the reason for the log
    /// and the client's answer.
    async fn open(
        &self,
        resource: &Resource,
        user: &str,
        session_id: SessionId,
    ) -> Result<Upstream, (String, Answer)> {
        let name = &resource.name;
        let Some(tcp) = resource.tcp() else {
            let kind = resource.kind().as_str();
            return Err((
                format!("resource is of kind `{kind}`, not `tcp`"),
                Answer::refused(
                    "unknown_resource",
                    format!(
                        "resource \"{name}\" is a {kind} resource, not a tcp one; use its own front door"
                    ),
                ),
            ));
        };
        let target = match &tcp.reach {
            Reach::Direct(target) => target,
            Reach::Agent(agent_name) => {
                return self
                    .open_remote(resource, agent_name, user, session_id)
                    .await
                    .map(|s| Upstream::Remote(Box::new(s)))
            }
        };
        agent::connect(target)
            .await
            .map(|tcp| Upstream::Local {
                tcp,
                address: target.address.clone(),
            })
            .map_err(|e| {
                warn!(upstream = %target.address, error = %e, "upstream connection failed");
                (
                    e.to_string(),
                    Answer::refused(
                        "upstream",
                        format!("gatehouse could not connect to resource \"{name}\": {e}"),
                    ),
                )
            })
    }

    async fn open_remote(
        &self,
        resource: &Resource,
        agent_name: &str,
        user: &str,
        session_id: SessionId,
    ) -> Result<crate::agents::RemoteSession, (String, Answer)> {
        let name = &resource.name;
        let open = OpenSession {
            session_id: session_id.to_string(),
            user: user.to_string(),
            resource: name.clone(),
            role: crate::config::DEFAULT_ROLE.to_string(),
            protocol: Protocol::Tcp,
            options: serde_json::Value::Null,
        };
        match self.links.open_session(agent_name, &open).await {
            Ok(Ok(session)) => Ok(session),
            Ok(Err(refused)) => {
                warn!(agent = agent_name, reason = %refused.message, "the agent refused the session");
                let answer = match refused.kind {
                    RefusalKind::UnknownResource => Answer::refused(
                        "unknown_resource",
                        format!("agent \"{agent_name}\" does not front tcp resource \"{name}\""),
                    ),
                    RefusalKind::SpoolFull => Answer::refused(
                        "upstream",
                        format!("agent \"{agent_name}\" cannot log new sessions right now (its event spool is full); the session is refused rather than unlogged"),
                    ),
                    _ => Answer::refused(
                        "upstream",
                        format!("agent \"{agent_name}\" could not connect to resource \"{name}\": {}", refused.message),
                    ),
                };
                Err((format!("agent refused: {}", refused.message), answer))
            }
            Err(e) => {
                warn!(error = %e, "cannot open a session through the agent");
                Err((
                    e.to_string(),
                    Answer::refused(
                        "upstream",
                        format!(
                            "gatehouse cannot reach resource \"{name}\": {e}; its agent is offline"
                        ),
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn line_of(input: &[u8], max: usize) -> (Result<Vec<u8>, LineError>, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(input).await.unwrap();
        drop(client);
        let mut r = BufReader::new(server);
        let line = read_line(&mut r, max).await;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        (line, rest)
    }

    #[tokio::test]
    async fn a_line_is_read_without_the_bytes_after_it() {
        let (line, rest) = line_of(b"{\"v\":1}\nPING\r\n", 64).await;
        assert_eq!(line.unwrap(), b"{\"v\":1}");
        assert_eq!(rest, b"PING\r\n");
    }

    #[tokio::test]
    async fn a_line_is_bounded() {
        let long = vec![b'x'; 100];
        assert!(matches!(
            line_of(&long, 64).await.0,
            Err(LineError::TooLong(64))
        ));
        // Exactly at the bound, newline included, is fine.
        let mut exact = vec![b'x'; 63];
        exact.push(b'\n');
        assert_eq!(line_of(&exact, 64).await.0.unwrap().len(), 63);
        assert!(matches!(
            line_of(b"{\"v\":1", 64).await.0,
            Err(LineError::Closed)
        ));
    }

    #[test]
    fn hellos_are_checked() {
        let good = br#"{"v":1,"user":"alice","resource":"cache","credential":"t"}"#;
        let h = parse_hello(good).unwrap();
        assert_eq!((h.user.as_str(), h.role), ("alice", None));
        let v2 = br#"{"v":2,"user":"alice","resource":"cache","credential":"t"}"#;
        assert!(parse_hello(v2).unwrap_err().contains("version 2"));
        assert!(parse_hello(b"not json").is_err());
        let nobody = br#"{"v":1,"user":"","resource":"cache","credential":"t"}"#;
        assert!(parse_hello(nobody).is_err());
    }

    #[test]
    fn answers_are_one_compact_line() {
        let ok = Answer::ok(SessionId([1; 16])).to_line();
        assert_eq!(ok.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v["ok"], true);
        assert!(v.get("code").is_none());
        let config = crate::config::test_support::parse("").unwrap();
        let denied = refusal(
            &Denial::Policy {
                resource: "cache".into(),
                reason: "no policy permits it".into(),
                seq: 7,
                session_id: SessionId([2; 16]),
            },
            &config,
        );
        let v: serde_json::Value = serde_json::from_slice(&denied.to_line()).unwrap();
        assert_eq!(
            (v["ok"].clone(), v["code"].clone()),
            (false.into(), "policy".into())
        );
        assert!(v["message"]
            .as_str()
            .unwrap()
            .starts_with("access to cache denied by policy: no policy permits it"));
    }

    #[test]
    fn an_unknown_resource_is_answered_with_the_tcp_resources_there_are() {
        let config = crate::config::test_support::parse(
            "[[resource]]\nname = \"cache\"\nkind = \"tcp\"\naddress = \"127.0.0.1:6379\"\n\
             labels = { env = \"dev\", data_class = \"internal\" }\n\
             [[resource]]\nname = \"admin\"\nkind = \"tcp\"\naddress = \"127.0.0.1:8080\"\n\
             labels = { env = \"dev\", data_class = \"internal\" }\n",
        )
        .unwrap();
        let answer = refusal(
            &Denial::UnknownResource {
                name: "cahce".into(),
            },
            &config,
        );
        assert_eq!(answer.code.as_deref(), Some("unknown_resource"));
        let message = answer.message.unwrap();
        assert!(
            message.starts_with("resource \"cahce\" is not known to the gateway (known TCP resources: admin, cache)"),
            "{message}"
        );
        assert!(message.contains("gatehouse resources"), "{message}");
    }
}
