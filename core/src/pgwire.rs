//! PostgreSQL wire protocol (v3) framing: the startup phase, message headers, and the handful of
//! messages the gateway and the agent build or inspect.
//!
//! Everything here is bounded: startup packets are 8..=10,000 bytes as in PostgreSQL itself, and
//! every other message read through [`read_message`] is checked against a caller-given limit
//! before any byte of its body is buffered.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// `SSLRequest` code.
pub const SSL_REQUEST: u32 = 80_877_103;
/// `GSSENCRequest` code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// `CancelRequest` code.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol version 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Smallest startup packet (length word + code).
pub const MIN_STARTUP_LEN: u32 = 8;
/// Largest startup packet PostgreSQL accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: u32 = 10_000;

/// A protocol violation or an I/O failure while framing.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("startup packet length {0} is outside 8..=10000")]
    StartupLength(u32),
    #[error("message `{tag}` of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { tag: char, len: usize, max: usize },
    #[error("message length {0} is below the minimum of 4")]
    BadLength(u32),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            WireError::Closed
        } else {
            WireError::Io(e)
        }
    }
}

/// The first packet of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: u32,
        secret: u32,
    },
    /// A startup message of protocol 3.`minor` (a minor version above 0 is answered with
    /// [`negotiate_protocol_version`]: the gateway speaks 3.0).
    Startup {
        params: Vec<(String, String)>,
        minor: u16,
    },
}

/// Reads and parses one startup-phase packet. Reads exactly the packet's bytes and no more, so
/// that nothing sent after an `SSLRequest` is consumed before the TLS handshake.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, WireError> {
    let len = r.read_u32().await?;
    if !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) {
        return Err(WireError::StartupLength(len));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    parse_startup(&body)
}

/// Parses a startup packet body (everything after the length word).
pub fn parse_startup(body: &[u8]) -> Result<StartupPacket, WireError> {
    let (code, rest) = split_u32(body).ok_or(WireError::Malformed("startup packet"))?;
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let (pid, rest) = split_u32(rest).ok_or(WireError::Malformed("cancel request"))?;
            let (secret, rest) = split_u32(rest).ok_or(WireError::Malformed("cancel request"))?;
            if !rest.is_empty() {
                return Err(WireError::Malformed("cancel request"));
            }
            Ok(StartupPacket::Cancel { pid, secret })
        }
        SSL_REQUEST | GSSENC_REQUEST => Err(WireError::Malformed("encryption request")),
        v if v >> 16 == 3 => {
            let minor = (v & 0xffff) as u16;
            let mut params = Vec::new();
            let mut rest = rest;
            loop {
                let (key, after) =
                    split_cstr(rest).ok_or(WireError::Malformed("startup parameters"))?;
                if key.is_empty() {
                    if !after.is_empty() {
                        return Err(WireError::Malformed("startup parameters"));
                    }
                    break;
                }
                let (value, after) =
                    split_cstr(after).ok_or(WireError::Malformed("startup parameters"))?;
                params.push((key.to_string(), value.to_string()));
                rest = after;
            }
            Ok(StartupPacket::Startup { params, minor })
        }
        other => Err(WireError::UnsupportedVersion {
            major: (other >> 16) as u16,
            minor: (other & 0xffff) as u16,
        }),
    }
}

/// Reads one tagged message whose total length must not exceed `max` bytes; returns the tag and
/// the body. The length is checked before the body is read.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<(u8, Bytes), WireError> {
    let tag = r.read_u8().await?;
    let len = r.read_u32().await?;
    if len < 4 {
        return Err(WireError::BadLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(WireError::TooLarge {
            tag: tag as char,
            len,
            max,
        });
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body).await?;
    Ok((tag, Bytes::from(body)))
}

// === message builders ===

/// Appends a tagged message whose body is written by `f`, fixing up the length word.
pub fn put_message(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    f(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; strip it rather than build a malformed message.
    out.extend(s.bytes().filter(|&b| b != 0));
    out.put_u8(0);
}

/// Severity of an `ErrorResponse`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

/// `ErrorResponse` with severity, SQLSTATE, message and an optional detail and hint.
pub fn error_response(
    out: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    detail: Option<&str>,
    hint: Option<&str>,
) {
    let sev = match severity {
        Severity::Error => "ERROR",
        Severity::Fatal => "FATAL",
    };
    put_message(out, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, sev);
        b.put_u8(b'V');
        put_cstr(b, sev);
        b.put_u8(b'C');
        put_cstr(b, code);
        b.put_u8(b'M');
        put_cstr(b, message);
        if let Some(d) = detail {
            b.put_u8(b'D');
            put_cstr(b, d);
        }
        if let Some(h) = hint {
            b.put_u8(b'H');
            put_cstr(b, h);
        }
        b.put_u8(0);
    });
}

/// `AuthenticationOk`.
pub fn auth_ok(out: &mut BytesMut) {
    put_message(out, b'R', |b| b.put_u32(0));
}

/// `AuthenticationCleartextPassword`.
pub fn auth_cleartext(out: &mut BytesMut) {
    put_message(out, b'R', |b| b.put_u32(3));
}

/// `NegotiateProtocolVersion`: the newest minor version of protocol 3 the gateway speaks, and
/// the `_pq_.*` options of the startup message it does not support.
pub fn negotiate_protocol_version(out: &mut BytesMut, newest_minor: u32, unsupported: &[String]) {
    put_message(out, b'v', |b| {
        b.put_u32(newest_minor);
        b.put_u32(unsupported.len() as u32);
        for o in unsupported {
            put_cstr(b, o);
        }
    });
}

/// `ParameterStatus`.
pub fn parameter_status(out: &mut BytesMut, key: &str, value: &str) {
    put_message(out, b'S', |b| {
        put_cstr(b, key);
        put_cstr(b, value);
    });
}

/// `BackendKeyData`.
pub fn backend_key_data(out: &mut BytesMut, pid: u32, secret: u32) {
    put_message(out, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

/// `ReadyForQuery` with transaction status `I`, `T` or `E`.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    put_message(out, b'Z', |b| b.put_u8(status));
}

/// A v3.0 `StartupMessage` with the given parameters.
pub fn startup_message(out: &mut BytesMut, params: &[(&str, &str)]) {
    let at = out.len();
    out.put_u32(0);
    out.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k);
        put_cstr(out, v);
    }
    out.put_u8(0);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// `CancelRequest`.
pub fn cancel_request(out: &mut BytesMut, pid: u32, secret: u32) {
    out.put_u32(16);
    out.put_u32(CANCEL_REQUEST);
    out.put_u32(pid);
    out.put_u32(secret);
}

/// `PasswordMessage` (also used for md5).
pub fn password_message(out: &mut BytesMut, password: &[u8]) {
    put_message(out, b'p', |b| {
        b.extend_from_slice(password);
        b.put_u8(0);
    });
}

/// `SASLInitialResponse`.
pub fn sasl_initial_response(out: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_message(out, b'p', |b| {
        put_cstr(b, mechanism);
        b.put_i32(data.len() as i32);
        b.extend_from_slice(data);
    });
}

/// `SASLResponse`.
pub fn sasl_response(out: &mut BytesMut, data: &[u8]) {
    put_message(out, b'p', |b| b.extend_from_slice(data));
}

/// `Terminate`.
pub fn terminate(out: &mut BytesMut) {
    put_message(out, b'X', |_| {});
}

// === message parsers ===

/// The fields of an `ErrorResponse` or `NoticeResponse` that the gateway uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut out = ErrorFields::default();
        let mut rest = body;
        while let Some((&field, after)) = rest.split_first() {
            if field == 0 {
                break;
            }
            let Some((value, after)) = split_cstr(after) else {
                break;
            };
            match field {
                b'S' => out.severity = value.to_string(),
                b'C' => out.code = value.to_string(),
                b'M' => out.message = value.to_string(),
                b'D' => out.detail = Some(value.to_string()),
                _ => {}
            }
            rest = after;
        }
        out
    }
}

/// Splits a big-endian u32 off the front.
pub fn split_u32(b: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*head), rest))
}

/// Splits a big-endian i16 off the front.
pub fn split_i16(b: &[u8]) -> Option<(i16, &[u8])> {
    let (head, rest) = b.split_first_chunk::<2>()?;
    Some((i16::from_be_bytes(*head), rest))
}

/// Splits a big-endian i32 off the front.
pub fn split_i32(b: &[u8]) -> Option<(i32, &[u8])> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    Some((i32::from_be_bytes(*head), rest))
}

/// Splits a NUL-terminated string off the front; invalid UTF-8 is replaced, not rejected, since
/// the text is only logged.
pub fn split_cstr(b: &[u8]) -> Option<(std::borrow::Cow<'_, str>, &[u8])> {
    let nul = b.iter().position(|&c| c == 0)?;
    Some((String::from_utf8_lossy(&b[..nul]), &b[nul + 1..]))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
        let mut b = BytesMut::new();
        startup_message(&mut b, params);
        b.to_vec()
    }

    #[tokio::test]
    async fn startup_round_trip() {
        let bytes = startup_bytes(&[("user", "alice"), ("database", "orders-db")]);
        let got = read_startup(&mut bytes.as_slice()).await.unwrap();
        assert_eq!(
            got,
            StartupPacket::Startup {
                params: vec![
                    ("user".into(), "alice".into()),
                    ("database".into(), "orders-db".into())
                ],
                minor: 0,
            }
        );
        // Protocol 3.2 (libpq 18 with max_protocol_version=latest): read, minor version kept.
        let mut body = (PROTOCOL_3_0 + 2).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice\0\0");
        assert_eq!(
            parse_startup(&body).unwrap(),
            StartupPacket::Startup {
                params: vec![("user".into(), "alice".into())],
                minor: 2
            }
        );
    }

    #[tokio::test]
    async fn startup_length_is_bounded() {
        let mut huge = 20_000u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
        assert!(matches!(
            read_startup(&mut huge.as_slice()).await,
            Err(WireError::StartupLength(20_000))
        ));
        let tiny = 4u32.to_be_bytes();
        assert!(matches!(
            read_startup(&mut tiny.as_slice()).await,
            Err(WireError::StartupLength(4))
        ));
    }

    #[tokio::test]
    async fn ssl_request_reads_exactly_eight_bytes() {
        let mut bytes = vec![0, 0, 0, 8];
        bytes.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        bytes.extend_from_slice(b"Qplaintext");
        let mut r = bytes.as_slice();
        assert_eq!(
            read_startup(&mut r).await.unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(r, b"Qplaintext");
    }

    #[test]
    fn cancel_and_unsupported_versions() {
        let mut b = BytesMut::new();
        cancel_request(&mut b, 7, 9);
        assert_eq!(
            parse_startup(&b[4..]).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
        let v2 = 0x0002_0000u32.to_be_bytes();
        assert!(matches!(
            parse_startup(&v2),
            Err(WireError::UnsupportedVersion { major: 2, minor: 0 })
        ));
    }

    #[test]
    fn unterminated_parameters_are_malformed() {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0alice");
        assert!(matches!(parse_startup(&body), Err(WireError::Malformed(_))));
    }

    #[tokio::test]
    async fn message_length_checked_before_body() {
        let mut bytes = vec![b'Q'];
        bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
        let err = read_message(&mut bytes.as_slice(), 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, WireError::TooLarge { tag: 'Q', .. }), "{err}");
    }

    #[test]
    fn error_response_parses_back() {
        let mut b = BytesMut::new();
        error_response(
            &mut b,
            Severity::Fatal,
            "42501",
            "denied",
            Some("why"),
            None,
        );
        let fields = ErrorFields::parse(&b[5..]);
        assert_eq!(fields.code, "42501");
        assert_eq!(fields.message, "denied");
        assert_eq!(fields.severity, "FATAL");
        assert_eq!(fields.detail.as_deref(), Some("why"));
    }
}
