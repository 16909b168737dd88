//! The agent link's wire vocabulary, shared by the gateway and the remote agent.
//!
//! A remote agent dials the gateway (mutual TLS, ALPN [`ALPN`]) and then serves HTTP/2 on that
//! connection: the gateway is the HTTP/2 *client* and opens a stream per purpose:
//!
//! - `GET /hello`: the agent answers a [`Hello`] (its version and the resources it fronts).
//! - `POST /events`: one long stream. The agent writes [`SpooledEvent`] frames in sequence
//!   order; the gateway writes back 8-byte big-endian sequence numbers, each acknowledging
//!   every event up to it once those events are durable in the audit log.
//! - `POST /session`: one per session, of any [`Protocol`]. The gateway's first frame is an
//!   [`OpenSession`]; the agent answers an [`Opened`] frame, then both sides relay the
//!   protocol's raw bytes. The gateway copies them to the client without parsing them: the
//!   agent's connector observes the stream (and is the one that ends it with a protocol error).
//! - `POST /cancel`: a [`Cancel`] frame; the agent forwards a cancel request upstream.
//! - `POST /kill`: a [`Kill`] frame; the agent ends the session, telling the client why in the
//!   session's own protocol (a PostgreSQL `ErrorResponse`), and closes its stream.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON, at most
//! [`MAX_FRAME`]. [`H2Io`] turns an HTTP/2 stream pair into `AsyncRead + AsyncWrite`, with
//! HTTP/2 flow control as the back-pressure.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use gatehouse_core::session::Statement;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// TLS application protocol of the agent link.
pub const ALPN: &[u8] = b"gatehouse-agent/1";

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 1 << 20;

/// Largest chunk written to an HTTP/2 stream at once.
const MAX_CHUNK: usize = 64 * 1024;

/// What an agent says about itself when the gateway asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub version: String,
    /// Resource names and, for each, the roles the agent holds credentials for.
    pub resources: Vec<HelloResource>,
    /// The newest sequence number in the agent's spool.
    pub spool_head: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HelloResource {
    pub name: String,
    pub roles: Vec<String>,
}

/// Which connector serves a session.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// [`crate::pg`]: options are a [`crate::pg::PgOpen`], answered by a [`crate::pg::PgOpened`].
    Postgres,
    /// [`crate::tcp`]: no options.
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The gateway asks the agent to open an authorised session. Carries no credential: the agent
/// picks the brokered one for `role` itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenSession {
    pub session_id: String,
    pub user: String,
    pub resource: String,
    pub role: String,
    pub protocol: Protocol,
    /// The connector's own options, opaque to the link (see [`Protocol`]).
    #[serde(default)]
    pub options: serde_json::Value,
}

/// The agent's answer to [`OpenSession`].
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Opened {
    Ok {
        /// The upstream user the agent logged in as (a name, never a password; empty where
        /// the protocol brokers no credential).
        upstream_user: String,
        /// `host:port` the agent connected to.
        upstream: String,
        /// What the connector hands the gateway for the client, opaque to the link (see
        /// [`Protocol`]).
        #[serde(default)]
        options: serde_json::Value,
    },
    Refused {
        kind: RefusalKind,
        message: String,
        /// The upstream's SQLSTATE when it refused the session itself.
        code: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The agent fronts no such resource or role (or not for that protocol).
    UnknownResource,
    /// The upstream refused the brokered credential.
    CredentialRejected,
    /// The upstream refused the session (its own SQLSTATE in `code`).
    UpstreamRefused,
    /// The upstream failed the agent's trust checks (TLS, or an authentication method the
    /// resource does not allow); the brokered credential was not sent.
    Untrusted,
    /// The upstream is down or unreachable.
    Unreachable,
    /// The agent's event spool is full: it opens no session it could not log (fail closed).
    SpoolFull,
    /// Anything else.
    Other,
}

/// Ask the agent to cancel the query running in a session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Cancel {
    pub session_id: String,
}

/// Ask the agent to end a session (a kill, a revoked grant, a disabled user, shutdown).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kill {
    pub session_id: String,
    /// Shown to the client, e.g. in PostgreSQL's `terminating connection: ...`.
    pub reason: String,
}

/// Certificate renewal (`POST /renew`), in four frames: the gateway asks ([`RenewRequest`]),
/// the agent answers with a new public key and a proof made with it ([`RenewKey`]), the gateway
/// sends the certificate ([`RenewCert`]), the agent confirms it stored it ([`RenewDone`]) and
/// then reconnects with it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewRequest {
    pub reason: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewKey {
    /// Uncompressed P-256 point, base64.
    pub public_key: String,
    /// Signature (ECDSA P-256 SHA-256, ASN.1) over [`renew_proof_message`], base64.
    pub proof: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewCert {
    pub certificate: String,
    pub expires: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewDone {
    pub stored: bool,
}

/// What a renewal proof signs: the new key is bound to the certificate it replaces.
pub fn renew_proof_message(current_cert_sha256: &str) -> Vec<u8> {
    let mut m = b"gatehouse-agent-renew\0".to_vec();
    m.extend_from_slice(current_cert_sha256.as_bytes());
    m
}

/// One event from the agent's spool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpooledEvent {
    /// Per-agent sequence number, from 1, without gaps.
    pub seq: u64,
    /// When the agent observed it (RFC 3339 UTC).
    pub ts: String,
    pub session_id: String,
    pub user: String,
    pub resource: String,
    #[serde(flatten)]
    pub body: EventBody,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventBody {
    /// An observed statement.
    Statement {
        kind: String,
        text: String,
        truncated_from: Option<usize>,
        /// SHA-256 of the full text when it was cut.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        name: Option<String>,
        params: Option<Vec<Option<String>>>,
    },
    /// The agent's relay for the session ended. Sent after every statement of the session, so
    /// once the gateway holds it, it holds the whole session.
    SessionEnd {
        reason: String,
        statements: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
        duration_ms: u64,
    },
}

impl EventBody {
    pub fn statement(s: Statement) -> EventBody {
        EventBody::Statement {
            kind: s.kind.as_str().to_string(),
            text: s.text,
            truncated_from: s.truncated_from,
            sha256: s.sha256,
            name: s.name,
            params: s.params,
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a frame.
pub fn frame<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let body = serde_json::to_vec(value)?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), FrameError> {
    let bytes = frame(value)?;
    w.write_all(&bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("h2 i/o"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e.to_string())
}

/// An HTTP/2 stream as a byte stream: reads the peer's DATA frames, writes ours.
pub struct H2Io {
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
    buf: Bytes,
    read_eof: bool,
    write_closed: bool,
}

impl H2Io {
    pub fn new(send: h2::SendStream<Bytes>, recv: h2::RecvStream) -> H2Io {
        H2Io {
            send,
            recv,
            buf: Bytes::new(),
            read_eof: false,
            write_closed: false,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(&self.buf[..n]);
                self.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.buf = data;
                }
                Some(Err(e)) => {
                    // The peer is done with the stream (NO_ERROR after its last frame, CANCEL
                    // when it drops a stream it has finished writing): an end of stream.
                    if matches!(e.reason(), Some(h2::Reason::NO_ERROR | h2::Reason::CANCEL)) {
                        self.read_eof = true;
                        continue;
                    }
                    return Poll::Ready(Err(h2_io_error(e)));
                }
                None => self.read_eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let want = data.len().min(MAX_CHUNK);
        self.send.reserve_capacity(want);
        match ready!(self.send.poll_capacity(cx)) {
            Some(Ok(0)) => {
                // Capacity was taken back; ask again, unless the peer reset the stream.
                self.send.reserve_capacity(want);
                if let Poll::Ready(r) = self.send.poll_reset(cx) {
                    let why = match r {
                        Ok(reason) => format!("stream reset by peer: {reason}"),
                        Err(e) => e.to_string(),
                    };
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionReset, why)));
                }
                Poll::Pending
            }
            Some(Ok(n)) => {
                let n = n.min(want);
                self.send
                    .send_data(Bytes::copy_from_slice(&data[..n]), false)
                    .map_err(h2_io_error)?;
                Poll::Ready(Ok(n))
            }
            Some(Err(e)) => Poll::Ready(Err(h2_io_error(e))),
            None => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.write_closed {
            self.write_closed = true;
            let _ = self.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bounds_hold() {
        let open = Cancel {
            session_id: "abc".into(),
        };
        let bytes = frame(&open).unwrap();
        let mut rd = &bytes[..];
        let back: Cancel = read_frame(&mut rd).await.unwrap().unwrap();
        assert_eq!(back.session_id, "abc");
        let mut empty: &[u8] = &[];
        assert!(read_frame::<_, Cancel>(&mut empty).await.unwrap().is_none());
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let mut rd = &huge[..];
        assert!(matches!(
            read_frame::<_, Cancel>(&mut rd).await,
            Err(FrameError::TooLarge(_))
        ));
        let mut bad = 3u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{x}");
        let mut rd = &bad[..];
        assert!(matches!(
            read_frame::<_, Cancel>(&mut rd).await,
            Err(FrameError::Json(_))
        ));
    }

    #[test]
    fn spooled_events_keep_their_shape() {
        let e = SpooledEvent {
            seq: 7,
            ts: "2026-01-01T00:00:00Z".into(),
            session_id: "s".into(),
            user: "alice".into(),
            resource: "orders-db".into(),
            body: EventBody::Statement {
                kind: "query".into(),
                text: "select 1".into(),
                truncated_from: None,
                sha256: None,
                name: None,
                params: None,
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "statement");
        assert_eq!(v["seq"], 7);
        let back: SpooledEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
