//! The relay: moves bytes between the client side and the upstream, frames the client's messages
//! so the observer sees every statement, and ends the session on a kill signal.
//!
//! Client-to-upstream bytes are framed: messages the observer needs (`Query`, `Parse`, `Bind`,
//! `Execute`, `Close`) are buffered whole (up to `max_message_bytes`); all others, notably
//! `CopyData`, stream through without being buffered. Upstream-to-client bytes are copied as they
//! come; only message boundaries are tracked, so that a kill can send a clean `ErrorResponse`
//! instead of cutting a message in half.

use std::sync::Mutex;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use gatehouse_core::pgwire::{self, Severity};
use gatehouse_core::session::{EndReason, EventSink, SessionSummary};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::observer::Observer;

const READ_BUF: usize = 64 * 1024;

/// Per-session relay settings.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Largest frontend message accepted; larger ones end the session with a protocol error.
    pub max_message_bytes: usize,
    /// Statement text beyond this is cut in the audit event.
    pub statement_max_bytes: usize,
    /// Whether bind parameter values are reported.
    pub log_parameters: bool,
    /// Whether fast-path `FunctionCall` messages pass (each logged); refused by default.
    pub function_calls: bool,
}

/// Relays between `upstream` (an authenticated [`super::Upstream`]'s stream, or an agent
/// tunnel) and `client` until either side closes, the client breaks the protocol, or `kill` carries a reason.
/// Never panics; every way out is a [`SessionSummary`].
pub async fn relay<U, C, S>(
    upstream: U,
    client: C,
    opts: &RelayOptions,
    sink: &S,
    mut kill: watch::Receiver<Option<String>>,
) -> SessionSummary
where
    U: AsyncRead + AsyncWrite + Send + Unpin,
    C: AsyncRead + AsyncWrite + Send + Unpin,
    S: EventSink,
{
    let started = Instant::now();
    let (mut client_rd, mut client_wr) = tokio::io::split(client);
    let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
    let mut up_count = Counter::default();
    let mut terminated = false;
    let mut down = Downstream::default();
    // Both directions feed it: the client's messages, and the server's answers that settle
    // which prepared statements exist. Locked briefly, never across an await.
    let observer = Mutex::new(
        Observer::new(opts.statement_max_bytes, opts.log_parameters)
            .allow_function_calls(opts.function_calls),
    );

    let reason = {
        let c2u = client_to_upstream(
            &mut client_rd,
            &mut up_wr,
            opts,
            &observer,
            sink,
            &mut up_count,
            &mut terminated,
        );
        let u2c = upstream_to_client(&mut up_rd, &mut client_wr, &mut down, &observer);
        let killed = crate::killed(&mut kill);
        tokio::select! {
            r = c2u => r,
            r = u2c => r,
            why = killed => EndReason::Killed(why),
        }
    };

    // Tell the client why, when the stream is at a message boundary and the client can still
    // hear it.
    let notice = match &reason {
        EndReason::Killed(why) => Some(("57P01", format!("terminating connection: {why}"))),
        EndReason::ClientProtocolError(why) => {
            Some(("08P01", format!("protocol violation: {why}")))
        }
        _ => None,
    };
    if let Some((code, message)) = notice {
        if down.at_boundary() {
            let mut buf = BytesMut::new();
            pgwire::error_response(&mut buf, Severity::Fatal, code, &message, None, None);
            let _ = client_wr.write_all(&buf).await;
            down.bytes += buf.len() as u64;
        }
    }
    let _ = client_wr.shutdown().await;
    let _ = up_wr.shutdown().await;

    SessionSummary {
        bytes_from_client: up_count.bytes,
        bytes_to_client: down.bytes,
        statements: up_count.statements,
        duration_ms: started.elapsed().as_millis() as u64,
        reason,
        client_terminated: terminated,
    }
}

fn lock(m: &Mutex<Observer>) -> std::sync::MutexGuard<'_, Observer> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Counter {
    bytes: u64,
    statements: u64,
}

async fn client_to_upstream<R, W, S>(
    rd: &mut R,
    wr: &mut W,
    opts: &RelayOptions,
    observer: &Mutex<Observer>,
    sink: &S,
    count: &mut Counter,
    terminated: &mut bool,
) -> EndReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    S: EventSink,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    // Bytes of the current message still to pass through unobserved.
    let mut skip: usize = 0;
    let mut observed = Vec::new();
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(READ_BUF);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return EndReason::ClientClosed,
            Ok(_) => {}
            Err(e) => return EndReason::IoError(format!("client: {e}")),
        }
        let mut pos = 0;
        let mut violation = None;
        while pos < buf.len() {
            if skip > 0 {
                let take = skip.min(buf.len() - pos);
                pos += take;
                skip -= take;
                continue;
            }
            let Some(header) = buf.get(pos..pos + 5) else {
                break;
            };
            let tag = header[0];
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            if len < 4 {
                violation = Some(format!(
                    "message `{}` has invalid length {len}",
                    tag as char
                ));
                break;
            }
            if len > opts.max_message_bytes {
                violation = Some(format!(
                    "message `{}` of {len} bytes exceeds the limit of {} bytes",
                    tag as char, opts.max_message_bytes
                ));
                break;
            }
            if !Observer::allowed(tag) {
                violation = Some(format!(
                    "message type `{}` is not allowed in an established session",
                    (tag as char).escape_default()
                ));
                break;
            }
            if tag == b'X' {
                *terminated = true;
            }
            if Observer::wants(tag) {
                let end = pos + 1 + len;
                if buf.len() < end {
                    buf.reserve(end - buf.len());
                    break;
                }
                let seen = lock(observer).observe(tag, &buf[pos + 5..end]);
                match seen {
                    Ok(Some(stmt)) => {
                        count.statements += 1;
                        observed.push(stmt);
                    }
                    Ok(None) => {}
                    // Not forwarded: the session ends here, and the client is told why.
                    Err(v) => {
                        violation = Some(v.0);
                        break;
                    }
                }
                pos = end;
            } else {
                skip = 1 + len;
            }
        }
        if pos > 0 {
            if let Err(e) = wr.write_all(&buf[..pos]).await {
                return EndReason::IoError(format!("upstream: {e}"));
            }
            count.bytes += pos as u64;
            buf.advance(pos);
        }
        // Report after forwarding, so that waking the audit writer is not on the query's path.
        // The relay reads nothing more from the client until these are queued, and the queue
        // applies back-pressure rather than dropping.
        for stmt in observed.drain(..) {
            if sink.statement(stmt).await.is_err() {
                return EndReason::Killed("the audit log stopped accepting events".into());
            }
        }
        if let Some(v) = violation {
            return EndReason::ClientProtocolError(v);
        }
        if *terminated && skip == 0 {
            return EndReason::ClientClosed;
        }
    }
}

/// Tracks upstream-to-client message boundaries.
#[derive(Default)]
struct Downstream {
    bytes: u64,
    /// Bytes left of the current message (0 at a boundary); header bytes of a partly read
    /// header are kept in `partial`.
    remaining: usize,
    partial: Vec<u8>,
}

impl Downstream {
    fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.partial.is_empty()
    }

    /// Follows the message boundaries in `data`; hands each message's tag to `on_tag`.
    fn track(&mut self, mut data: &[u8], mut on_tag: impl FnMut(u8)) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = self.remaining.min(data.len());
                self.remaining -= take;
                data = &data[take..];
                continue;
            }
            let need = 5 - self.partial.len();
            let take = need.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == 5 {
                let len = u32::from_be_bytes([
                    self.partial[1],
                    self.partial[2],
                    self.partial[3],
                    self.partial[4],
                ]);
                self.remaining = (len as usize).saturating_sub(4);
                on_tag(self.partial[0]);
                self.partial.clear();
            }
        }
    }
}

async fn upstream_to_client<R, W>(
    rd: &mut R,
    wr: &mut W,
    down: &mut Downstream,
    observer: &Mutex<Observer>,
) -> EndReason
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => return EndReason::UpstreamClosed,
            Ok(n) => n,
            Err(e) => return EndReason::IoError(format!("upstream: {e}")),
        };
        down.track(&buf[..n], |tag| {
            if matches!(tag, b'1' | b'3' | b'Z') {
                lock(observer).server_message(tag);
            }
        });
        if let Err(e) = wr.write_all(&buf[..n]).await {
            return EndReason::IoError(format!("client: {e}"));
        }
        if let Err(e) = wr.flush().await {
            return EndReason::IoError(format!("client: {e}"));
        }
        down.bytes += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downstream_tracks_boundaries_across_splits() {
        let mut d = Downstream::default();
        let mut msg = BytesMut::new();
        pgwire::ready_for_query(&mut msg, b'I');
        pgwire::parameter_status(&mut msg, "a", "b");
        let mut tags = Vec::new();
        for chunk in msg.chunks(3) {
            d.track(chunk, |t| tags.push(t));
        }
        assert!(d.at_boundary());
        assert_eq!(tags, b"ZS");
        d.track(&msg[..7], |_| {});
        assert!(!d.at_boundary());
    }
}
