//! Opening an authenticated upstream PostgreSQL connection with a brokered credential.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use gatehouse_core::pgwire::{self, ErrorFields, WireError};
use gatehouse_core::Secret;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::auth::md5_password;
use super::scram::{ScramClient, ScramError};

/// Largest message accepted from the upstream before the session is established.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Startup parameters a client may pass through to the upstream. Everything else (notably
/// `options`, which can set arbitrary GUCs) is dropped.
const FORWARDED_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "extra_float_digits",
    "IntervalStyle",
    "search_path",
];

/// Where and as whom to connect upstream.
#[derive(Clone, Debug)]
pub struct PgTarget {
    /// `host:port`.
    pub address: String,
    pub database: String,
    pub username: String,
    pub password: Secret<String>,
    pub connect_timeout: Duration,
}

/// Why the upstream connection could not be established. Messages are for operators and are
/// safe to show to the client: they name no secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach upstream `{address}`: {source}")]
    Unreachable {
        address: String,
        source: std::io::Error,
    },
    #[error("upstream `{0}` did not answer within the connect timeout")]
    Timeout(String),
    #[error("upstream rejected the brokered credential: {0}")]
    CredentialRejected(String),
    #[error("upstream refused the session: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields),
    #[error("upstream asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(u32),
    #[error("scram authentication with upstream failed: {0}")]
    Scram(#[from] ScramError),
    #[error("upstream protocol error: {0}")]
    Protocol(#[from] WireError),
}

/// An authenticated upstream connection, ready for queries.
pub struct Upstream {
    pub(crate) stream: TcpStream,
    /// `ParameterStatus` pairs the server sent during startup, to pass on to the client.
    pub params: Vec<(String, String)>,
    /// Raw `NoticeResponse` messages from startup, to pass on to the client.
    pub notices: Vec<bytes::Bytes>,
    peer: SocketAddr,
    backend_key: Option<(u32, u32)>,
}

impl Upstream {
    /// The authenticated connection, for [`super::relay`].
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// A handle that can cancel the query running on this connection. `None` when the server
    /// sent no `BackendKeyData`.
    pub fn cancel_handle(&self) -> Option<CancelHandle> {
        self.backend_key.map(|(pid, secret)| CancelHandle {
            peer: self.peer,
            pid,
            secret,
        })
    }
}

/// Sends a `CancelRequest` for one upstream backend. Holds the upstream's key, which the client
/// never sees: clients get gateway-issued keys.
#[derive(Clone, Debug)]
pub struct CancelHandle {
    peer: SocketAddr,
    pid: u32,
    secret: u32,
}

impl CancelHandle {
    pub async fn cancel(&self) -> std::io::Result<()> {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(self.peer))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel connect")
                })??;
        let mut buf = BytesMut::new();
        pgwire::cancel_request(&mut buf, self.pid, self.secret);
        stream.write_all(&buf).await?;
        stream.shutdown().await
    }
}

/// Connects to the target, authenticates with the brokered credential, and reads the server's
/// startup messages up to the first `ReadyForQuery`.
pub async fn connect(
    target: &PgTarget,
    client_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let connecting = TcpStream::connect(&target.address);
    let mut stream = tokio::time::timeout(target.connect_timeout, connecting)
        .await
        .map_err(|_| UpstreamError::Timeout(target.address.clone()))?
        .map_err(|source| UpstreamError::Unreachable {
            address: target.address.clone(),
            source,
        })?;
    stream.set_nodelay(true).ok();
    let peer = stream
        .peer_addr()
        .map_err(|source| UpstreamError::Unreachable {
            address: target.address.clone(),
            source,
        })?;
    let handshake = startup(&mut stream, target, client_params);
    let (params, notices, backend_key) = tokio::time::timeout(target.connect_timeout, handshake)
        .await
        .map_err(|_| UpstreamError::Timeout(target.address.clone()))??;
    Ok(Upstream {
        stream,
        params,
        notices,
        peer,
        backend_key,
    })
}

type Startup = (Vec<(String, String)>, Vec<bytes::Bytes>, Option<(u32, u32)>);

async fn startup(
    stream: &mut TcpStream,
    target: &PgTarget,
    client_params: &[(String, String)],
) -> Result<Startup, UpstreamError> {
    let mut params: Vec<(&str, &str)> =
        vec![("user", &target.username), ("database", &target.database)];
    for (k, v) in client_params {
        if FORWARDED_PARAMS.contains(&k.as_str()) {
            params.push((k, v));
        }
    }
    let mut out = BytesMut::new();
    pgwire::startup_message(&mut out, &params);
    stream.write_all(&out).await.map_err(WireError::from)?;

    let mut scram: Option<ScramClient> = None;
    let mut scram_verified = false;
    // Authentication.
    loop {
        let (tag, body) = pgwire::read_message(stream, MAX_STARTUP_MESSAGE).await?;
        match tag {
            b'R' => {
                let (code, rest) = pgwire::split_u32(&body)
                    .ok_or(WireError::Malformed("authentication request"))?;
                out.clear();
                match code {
                    0 if scram.is_some() && !scram_verified => {
                        // A server that skips SASLFinal has not proven it knows the password.
                        return Err(ScramError::ServerSignature.into());
                    }
                    0 => break,
                    3 => pgwire::password_message(&mut out, target.password.expose().as_bytes()),
                    5 => {
                        let salt: [u8; 4] = rest
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(WireError::Malformed("md5 salt"))?;
                        let hashed = md5_password(&target.username, target.password.expose(), salt);
                        pgwire::password_message(&mut out, hashed.as_bytes());
                    }
                    10 => {
                        let offers_scram = rest.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                        if !offers_scram {
                            return Err(UpstreamError::UnsupportedAuth(code));
                        }
                        let client = ScramClient::new(target.password.expose())?;
                        pgwire::sasl_initial_response(
                            &mut out,
                            "SCRAM-SHA-256",
                            client.client_first().as_bytes(),
                        );
                        scram = Some(client);
                    }
                    11 => {
                        let client = scram
                            .as_mut()
                            .ok_or(WireError::Malformed("unexpected SASLContinue"))?;
                        let fin = client.client_final(rest)?;
                        pgwire::sasl_response(&mut out, fin.as_bytes());
                    }
                    12 => {
                        let client = scram
                            .as_ref()
                            .ok_or(WireError::Malformed("unexpected SASLFinal"))?;
                        client.verify_server_final(rest)?;
                        scram_verified = true;
                        continue;
                    }
                    other => return Err(UpstreamError::UnsupportedAuth(other)),
                }
                stream.write_all(&out).await.map_err(WireError::from)?;
            }
            b'E' => {
                let fields = ErrorFields::parse(&body);
                return Err(match fields.code.as_str() {
                    "28P01" | "28000" => UpstreamError::CredentialRejected(fields.message),
                    _ => UpstreamError::Refused(fields),
                });
            }
            b'N' => {}
            _ => return Err(WireError::Malformed("message during upstream authentication").into()),
        }
    }
    // Post-authentication startup messages.
    let mut server_params = Vec::new();
    let mut notices = Vec::new();
    let mut key = None;
    loop {
        let (tag, body) = pgwire::read_message(stream, MAX_STARTUP_MESSAGE).await?;
        match tag {
            b'S' => {
                let (k, rest) =
                    pgwire::split_cstr(&body).ok_or(WireError::Malformed("parameter status"))?;
                let (v, _) =
                    pgwire::split_cstr(rest).ok_or(WireError::Malformed("parameter status"))?;
                server_params.push((k.into_owned(), v.into_owned()));
            }
            b'K' => {
                let (pid, rest) =
                    pgwire::split_u32(&body).ok_or(WireError::Malformed("backend key data"))?;
                let (secret, _) =
                    pgwire::split_u32(rest).ok_or(WireError::Malformed("backend key data"))?;
                key = Some((pid, secret));
            }
            b'N' => {
                let mut raw = BytesMut::new();
                pgwire::put_message(&mut raw, b'N', |b| b.extend_from_slice(&body));
                notices.push(raw.freeze());
            }
            b'E' => return Err(UpstreamError::Refused(ErrorFields::parse(&body))),
            b'Z' => return Ok((server_params, notices, key)),
            _ => return Err(WireError::Malformed("message during upstream startup").into()),
        }
    }
}
