//! Opening an authenticated upstream PostgreSQL connection with a brokered credential.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use gatehouse_core::pgwire::{self, ErrorFields, WireError};
use gatehouse_core::Secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::auth::md5_password;
use super::security::{server_name, AuthMethod, UpstreamSecurity, UpstreamStream, UpstreamTls};

/// Largest message accepted from the upstream before the session is established.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Where and as whom to connect upstream.
#[derive(Clone, Debug)]
pub struct PgTarget {
    /// `host:port`.
    pub address: String,
    pub database: String,
    pub username: String,
    pub password: Secret<String>,
    pub connect_timeout: Duration,
    /// TLS and the authentication methods the server may ask for.
    pub security: UpstreamSecurity,
    /// Log in as a role of the session's own user, a member of `username`, instead of as
    /// `username` itself ([`super::per_user`]).
    pub per_user: Option<std::sync::Arc<super::per_user::PerUserRoles>>,
}

/// Why the upstream connection could not be established. Messages are safe to show to the
/// client: they name no secret and no internal address (the operator's log line adds the
/// address).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the upstream: {0}")]
    Unreachable(std::io::Error),
    #[error("the upstream did not answer within the connect timeout")]
    Timeout,
    #[error("upstream rejected the brokered credential: {0}")]
    CredentialRejected(String),
    #[error("upstream refused the session: {} ({})", .0.message, .0.code)]
    Refused(ErrorFields),
    /// The upstream asked for a method this resource does not allow: the credential was not
    /// used (an impostor asking for cleartext or md5 gets nothing).
    #[error("the upstream asked for authentication method `{0}`, which this resource does not allow; the brokered credential was not sent")]
    AuthMethodRefused(&'static str),
    #[error("upstream asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(u32),
    #[error("the upstream refused TLS, which this resource requires")]
    TlsRefused,
    #[error("TLS with the upstream failed: {0}")]
    Tls(std::io::Error),
    #[error("scram authentication with upstream failed: {0}")]
    Scram(String),
    #[error("upstream protocol error: {0}")]
    Protocol(#[from] WireError),
    /// Setting up the session's per-user upstream role failed (with the admin credential).
    #[error("cannot set up the per-user upstream role: {0}")]
    PerUserRole(Box<UpstreamError>),
}

/// An authenticated upstream connection, ready for queries.
pub struct Upstream {
    pub(crate) stream: UpstreamStream,
    /// `ParameterStatus` pairs the server sent during startup, to pass on to the client.
    pub params: Vec<(String, String)>,
    /// Raw `NoticeResponse` messages from startup, to pass on to the client.
    pub notices: Vec<bytes::Bytes>,
    peer: SocketAddr,
    address: String,
    tls: UpstreamTls,
    backend_key: Option<(u32, u32)>,
}

impl Upstream {
    /// The authenticated connection, for [`super::relay`].
    pub fn into_stream(self) -> UpstreamStream {
        self.stream
    }

    /// A handle that can cancel the query running on this connection. `None` when the server
    /// sent no `BackendKeyData`.
    pub fn cancel_handle(&self) -> Option<CancelHandle> {
        self.backend_key.map(|(pid, secret)| CancelHandle {
            peer: self.peer,
            address: self.address.clone(),
            tls: self.tls.clone(),
            pid,
            secret,
        })
    }
}

/// Sends a `CancelRequest` for one upstream backend (over TLS when the session uses TLS).
/// Holds the upstream's key, which the client never sees: clients get gateway-issued keys.
#[derive(Clone, Debug)]
pub struct CancelHandle {
    peer: SocketAddr,
    address: String,
    tls: UpstreamTls,
    pid: u32,
    secret: u32,
}

impl CancelHandle {
    pub async fn cancel(&self) -> std::io::Result<()> {
        let sending = async {
            let tcp = TcpStream::connect(self.peer).await?;
            let mut stream = secure(tcp, &self.tls, &self.address)
                .await
                .map_err(|e| match e {
                    UpstreamError::Tls(e) => e,
                    other => std::io::Error::other(other.to_string()),
                })?;
            let mut buf = BytesMut::new();
            pgwire::cancel_request(&mut buf, self.pid, self.secret);
            stream.write_all(&buf).await?;
            stream.shutdown().await
        };
        tokio::time::timeout(Duration::from_secs(5), sending)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel request"))?
    }
}

/// Connects to the target, negotiates TLS as the target requires, authenticates with the
/// brokered credential, and reads the server's startup messages up to the first
/// `ReadyForQuery`.
pub async fn connect(
    target: &PgTarget,
    client_params: &[(String, String)],
) -> Result<Upstream, UpstreamError> {
    let opening = async {
        let tcp = TcpStream::connect(&target.address)
            .await
            .map_err(UpstreamError::Unreachable)?;
        tcp.set_nodelay(true).ok();
        let peer = tcp.peer_addr().map_err(UpstreamError::Unreachable)?;
        let mut stream = secure(tcp, &target.security.tls, &target.address).await?;
        let started = startup(&mut stream, target, client_params).await?;
        Ok::<_, UpstreamError>((stream, peer, started))
    };
    let (stream, peer, (params, notices, backend_key)) =
        tokio::time::timeout(target.connect_timeout, opening)
            .await
            .map_err(|_| UpstreamError::Timeout)??;
    Ok(Upstream {
        stream,
        params,
        notices,
        peer,
        address: target.address.clone(),
        tls: target.security.tls.clone(),
        backend_key,
    })
}

/// `SSLRequest` and the TLS handshake, unless TLS is disabled.
async fn secure(
    mut tcp: TcpStream,
    tls: &UpstreamTls,
    address: &str,
) -> Result<UpstreamStream, UpstreamError> {
    let Some(config) = tls.config() else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let mut req = BytesMut::new();
    req.extend_from_slice(&8u32.to_be_bytes());
    req.extend_from_slice(&pgwire::SSL_REQUEST.to_be_bytes());
    tcp.write_all(&req).await.map_err(WireError::from)?;
    // Exactly one byte: anything the server sent after it would be unencrypted data that an
    // attacker on the path injected (CVE-2021-23222), so nothing is read ahead of the handshake.
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(WireError::from)?;
    match answer[0] {
        b'S' => {}
        b'N' => return Err(UpstreamError::TlsRefused),
        _ => return Err(WireError::Malformed("answer to SSLRequest").into()),
    }
    let name = server_name(address).ok_or_else(|| {
        UpstreamError::Tls(std::io::Error::other(
            "the address's host is not a valid TLS server name",
        ))
    })?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(UpstreamError::Tls)?;
    Ok(UpstreamStream::Tls(Box::new(stream)))
}

type Startup = (Vec<(String, String)>, Vec<bytes::Bytes>, Option<(u32, u32)>);

async fn startup(
    stream: &mut UpstreamStream,
    target: &PgTarget,
    client_params: &[(String, String)],
) -> Result<Startup, UpstreamError> {
    let mut params: Vec<(&str, &str)> =
        vec![("user", &target.username), ("database", &target.database)];
    for (k, v) in client_params {
        // Vetted by the front door (`super::startup::vet`); checked again here.
        if super::startup::forwardable(k) {
            params.push((k, v));
        }
    }
    let mut out = BytesMut::new();
    pgwire::startup_message(&mut out, &params);
    stream.write_all(&out).await.map_err(WireError::from)?;

    let security = &target.security;
    let refuse = |m: AuthMethod| UpstreamError::AuthMethodRefused(m.name());
    let mut scram: Option<ScramSha256> = None;
    let mut authenticated = false;
    // Authentication.
    loop {
        let (tag, body) = pgwire::read_message(stream, MAX_STARTUP_MESSAGE).await?;
        match tag {
            b'R' => {
                let (code, rest) = pgwire::split_u32(&body)
                    .ok_or(WireError::Malformed("authentication request"))?;
                out.clear();
                match code {
                    0 if scram.is_some() && !authenticated => {
                        // A server that skips SASLFinal has not proven it knows the password.
                        return Err(UpstreamError::Scram(
                            "the server did not prove that it knows the password".into(),
                        ));
                    }
                    0 if !authenticated && !security.allows(AuthMethod::Trust) => {
                        // A server that asks for nothing has proven nothing: it may be anyone.
                        return Err(refuse(AuthMethod::Trust));
                    }
                    0 => break,
                    3 => {
                        if !security.allows(AuthMethod::Password) {
                            return Err(refuse(AuthMethod::Password));
                        }
                        pgwire::password_message(&mut out, target.password.expose().as_bytes());
                        authenticated = true;
                    }
                    5 => {
                        if !security.allows(AuthMethod::Md5) {
                            return Err(refuse(AuthMethod::Md5));
                        }
                        let salt: [u8; 4] = rest
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(WireError::Malformed("md5 salt"))?;
                        let hashed = md5_password(&target.username, target.password.expose(), salt);
                        pgwire::password_message(&mut out, hashed.as_bytes());
                        authenticated = true;
                    }
                    10 => {
                        if !security.allows(AuthMethod::ScramSha256) {
                            return Err(refuse(AuthMethod::ScramSha256));
                        }
                        if scram.is_some() {
                            return Err(WireError::Malformed("second SASL request").into());
                        }
                        let offered = |m: &[u8]| rest.split(|&b| b == 0).any(|x| x == m);
                        // Over TLS, bind the exchange to the server's certificate
                        // (tls-server-end-point): a relay that terminates TLS with another
                        // certificate cannot pass the SCRAM exchange on to the real server.
                        let binding = match stream {
                            UpstreamStream::Tls(tls) if offered(b"SCRAM-SHA-256-PLUS") => tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|c| c.first())
                                .and_then(|c| server_end_point(c.as_ref())),
                            _ => None,
                        };
                        if binding.is_none() && matches!(security.tls, UpstreamTls::Require(_)) {
                            // `require` does not check the certificate, so without channel
                            // binding nothing shows that the server is the real one.
                            return Err(UpstreamError::Scram(
                                "the server offers no SCRAM channel binding (SCRAM-SHA-256-PLUS), which `tls = \"require\"` needs; use `verify-full`".into(),
                            ));
                        }
                        let (mechanism, binding) = match binding {
                            Some(hash) => (
                                "SCRAM-SHA-256-PLUS",
                                ChannelBinding::tls_server_end_point(hash),
                            ),
                            None if offered(b"SCRAM-SHA-256") => {
                                ("SCRAM-SHA-256", ChannelBinding::unsupported())
                            }
                            None => return Err(UpstreamError::UnsupportedAuth(code)),
                        };
                        let client = ScramSha256::new(target.password.expose().as_bytes(), binding);
                        pgwire::sasl_initial_response(&mut out, mechanism, client.message());
                        scram = Some(client);
                    }
                    11 => {
                        let mut client = scram
                            .take()
                            .ok_or(WireError::Malformed("unexpected SASLContinue"))?;
                        check_iterations(rest)?;
                        // PBKDF2 takes milliseconds of CPU: off the async workers.
                        let server_first = rest.to_vec();
                        let client = tokio::task::spawn_blocking(move || {
                            client.update(&server_first).map(|()| client)
                        })
                        .await
                        .map_err(|e| UpstreamError::Scram(e.to_string()))?
                        .map_err(|e| UpstreamError::Scram(e.to_string()))?;
                        pgwire::sasl_response(&mut out, client.message());
                        scram = Some(client);
                    }
                    12 => {
                        let client = scram
                            .as_mut()
                            .ok_or(WireError::Malformed("unexpected SASLFinal"))?;
                        client.finish(rest).map_err(|_| {
                            UpstreamError::Scram(
                                "the server's signature does not verify: it does not know the password".into(),
                            )
                        })?;
                        authenticated = true;
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

/// The `tls-server-end-point` channel binding data (RFC 5929): the certificate's hash with
/// the hash function of its signature algorithm (SHA-256 for MD5 and SHA-1). `None` for
/// algorithms without one (Ed25519) or a certificate that does not parse.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    /// One DER element: (tag, contents, rest).
    fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&first, b) = b.split_first()?;
        let (len, b) = if first < 0x80 {
            (first as usize, b)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || b.len() < n {
                return None;
            }
            let len = b[..n].iter().fold(0usize, |a, &x| (a << 8) | x as usize);
            (len, &b[n..])
        };
        (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
    }
    let (0x30, certificate, _) = element(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = element(certificate)? else {
        return None;
    };
    let (0x30, algorithm, _) = element(rest)? else {
        return None;
    };
    let (0x06, oid, _) = element(algorithm)? else {
        return None;
    };
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    let hash = match oid.split_last()? {
        (4 | 5 | 11, head) if head == RSA => &ring::digest::SHA256,
        (12, head) if head == RSA => &ring::digest::SHA384,
        (13, head) if head == RSA => &ring::digest::SHA512,
        (2, head) if head == ECDSA => &ring::digest::SHA256,
        (3, head) if head == ECDSA => &ring::digest::SHA384,
        (4, head) if head == ECDSA => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(hash, cert).as_ref().to_vec())
}

/// Upper bound on the iteration count a server may ask for (PostgreSQL's default is 4096): a
/// hostile server must not make the agent burn seconds of CPU per connection.
const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

/// Refuses a `server-first-message` whose iteration count is absurd, before PBKDF2 runs.
fn check_iterations(server_first: &[u8]) -> Result<(), UpstreamError> {
    let text = std::str::from_utf8(server_first)
        .map_err(|_| UpstreamError::Scram("malformed server-first-message".into()))?;
    let iterations = text
        .split(',')
        .find_map(|p| p.strip_prefix("i="))
        .and_then(|i| i.parse::<u32>().ok())
        .ok_or_else(|| UpstreamError::Scram("malformed server-first-message".into()))?;
    if iterations == 0 || iterations > MAX_SCRAM_ITERATIONS {
        return Err(UpstreamError::Scram(format!(
            "the server asked for {iterations} iterations"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_hashes_with_the_certificates_signature_hash() {
        let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&ecdsa)
            .unwrap();
        let der = cert.der().to_vec();
        let want = ring::digest::digest(&ring::digest::SHA256, &der);
        assert_eq!(server_end_point(&der).unwrap(), want.as_ref());
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let der = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&p384)
            .unwrap()
            .der()
            .to_vec();
        let want = ring::digest::digest(&ring::digest::SHA384, &der);
        assert_eq!(server_end_point(&der).unwrap(), want.as_ref());
        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let der = rcgen::CertificateParams::new(vec!["db".into()])
            .unwrap()
            .self_signed(&ed)
            .unwrap()
            .der()
            .to_vec();
        assert!(server_end_point(&der).is_none());
        assert!(server_end_point(b"\x30\x82garbage").is_none());
    }

    #[test]
    fn absurd_iteration_counts_are_refused_before_pbkdf2() {
        assert!(check_iterations(b"r=abc,s=QUJD,i=4096").is_ok());
        assert!(check_iterations(b"r=abc,s=QUJD,i=4000000000").is_err());
        assert!(check_iterations(b"r=abc,s=QUJD,i=0").is_err());
        assert!(check_iterations(b"garbage").is_err());
    }
}
