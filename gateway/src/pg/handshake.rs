//! The startup phase: SSLRequest / GSSENCRequest negotiation, TLS, and the startup message.
//!
//! Exactly the bytes of each startup packet are read from the socket before the TLS handshake,
//! so no plaintext byte sent after an SSLRequest is ever processed as protocol (CVE-2021-23214
//! class). A second SSLRequest inside TLS, or plaintext when it is not allowed, is refused.

use bytes::BytesMut;
use gatehouse_core::pgwire::{self, Severity, StartupPacket, WireError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// A client stream, TLS or (when allowed) plaintext.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ClientIo for T {}

pub type ClientStream = Box<dyn ClientIo>;

/// What the first packets of a connection asked for.
pub enum Opening {
    /// A session to authenticate: the stream, whether it is TLS, the startup parameters and
    /// the protocol's minor version the client asked for.
    Session {
        stream: ClientStream,
        tls: bool,
        params: Vec<(String, String)>,
        minor: u16,
    },
    /// A cancel request, answered by closing `stream` (cleanly: over TLS, with close_notify,
    /// or libpq 17+ reports the cancel as failed).
    Cancel {
        pid: u32,
        secret: u32,
        stream: ClientStream,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("tls handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("client sent a plaintext startup but the gateway requires TLS")]
    TlsRequired,
    #[error("client sent {0} after negotiating encryption")]
    Unexpected(&'static str),
}

/// Runs the startup phase on a fresh connection. Errors that the client can still read are
/// answered with an `ErrorResponse` before returning.
pub async fn open(
    mut tcp: TcpStream,
    tls: &TlsAcceptor,
    allow_plaintext: bool,
) -> Result<Opening, HandshakeError> {
    let mut gss_refused = false;
    loop {
        let packet = match pgwire::read_startup(&mut tcp).await {
            Ok(p) => p,
            Err(e) => {
                refuse(&mut tcp, "08P01", &format!("invalid startup packet: {e}")).await;
                return Err(e.into());
            }
        };
        match packet {
            StartupPacket::GssEncRequest if !gss_refused => {
                gss_refused = true;
                write_byte(&mut tcp, b'N').await?;
            }
            StartupPacket::GssEncRequest => {
                refuse(&mut tcp, "08P01", "duplicate GSSENCRequest").await;
                return Err(HandshakeError::Unexpected("a second GSSENCRequest"));
            }
            StartupPacket::SslRequest => {
                write_byte(&mut tcp, b'S').await?;
                let mut stream = tls.accept(tcp).await.map_err(HandshakeError::Tls)?;
                return match pgwire::read_startup(&mut stream).await {
                    Ok(StartupPacket::Startup { params, minor }) => Ok(Opening::Session {
                        stream: Box::new(stream),
                        tls: true,
                        params,
                        minor,
                    }),
                    Ok(StartupPacket::Cancel { pid, secret }) => Ok(Opening::Cancel {
                        pid,
                        secret,
                        stream: Box::new(stream),
                    }),
                    Ok(_) => {
                        refuse(
                            &mut stream,
                            "08P01",
                            "encryption request inside an encrypted connection",
                        )
                        .await;
                        Err(HandshakeError::Unexpected(
                            "an encryption request inside TLS",
                        ))
                    }
                    Err(e) => {
                        refuse(
                            &mut stream,
                            "08P01",
                            &format!("invalid startup packet: {e}"),
                        )
                        .await;
                        Err(e.into())
                    }
                };
            }
            StartupPacket::Cancel { pid, secret } => {
                return Ok(Opening::Cancel {
                    pid,
                    secret,
                    stream: Box::new(tcp),
                })
            }
            StartupPacket::Startup { params, minor } => {
                if !allow_plaintext {
                    refuse_with_hint(
                        &mut tcp,
                        "28000",
                        "gatehouse requires an encrypted connection",
                        "connect with sslmode=require (or verify-full with the gateway's CA)",
                    )
                    .await;
                    return Err(HandshakeError::TlsRequired);
                }
                return Ok(Opening::Session {
                    stream: Box::new(tcp),
                    tls: false,
                    params,
                    minor,
                });
            }
        }
    }
}

async fn write_byte(tcp: &mut TcpStream, b: u8) -> Result<(), HandshakeError> {
    tcp.write_all(&[b])
        .await
        .map_err(|e| HandshakeError::Wire(e.into()))
}

/// Sends a FATAL `ErrorResponse`; errors writing it are ignored (the client may be gone).
pub async fn refuse<S: AsyncWrite + Unpin + ?Sized>(s: &mut S, code: &str, message: &str) {
    send_error(s, code, message, None, None).await
}

pub async fn refuse_with_hint<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    code: &str,
    message: &str,
    hint: &str,
) {
    send_error(s, code, message, None, Some(hint)).await
}

pub async fn send_error<S: AsyncWrite + Unpin + ?Sized>(
    s: &mut S,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let mut buf = BytesMut::new();
    pgwire::error_response(&mut buf, Severity::Fatal, code, message, detail, hint);
    let _ = s.write_all(&buf).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}
