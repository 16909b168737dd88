//! The audit log streamed to a SIEM: syslog (RFC 5424, octet-counted framing of RFC 6587) over
//! TCP to `[siem] syslog_tcp`, and/or batches of JSON events POSTed to `[siem] http_url` (a
//! collector such as an HTTP event collector; a 2xx answer is its acknowledgement, so that
//! stream's cursor moves on the answer).
//!
//! The stream reads committed events from the store, never from the writer's queue, so a slow
//! or dead receiver holds nothing up: decisions are durable in the store whatever the SIEM does.
//! Delivery is at least once. TCP acknowledges nothing to the application, so an event counts
//! as delivered once the connection it went out on has stayed up for [`SETTLE`] after it; the
//! delivered seq is persisted (`siem_cursors`). A dropped connection, or a restart, sends again
//! everything after it; each frame carries its seq (`[gatehouse@32473 seq=...]`), so a receiver
//! can drop duplicates. When the undelivered events exceed `lag_alert_events`, or the oldest has
//! waited `lag_alert_after`, the gateway records `siem.lag` (level `behind`), and again
//! (`caught_up`) when the stream is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::audit::export::event_line;
use crate::audit::{AuditEvent, AuditLog, EventKind, NewEvent};
use crate::config::SiemConfig;
use crate::store::Store;

/// How long a connection must stay up after a frame for the frame to count as delivered.
pub const SETTLE: Duration = Duration::from_secs(2);
const SINK: &str = "syslog";
const PAGE: u32 = 500;
/// RFC 5424 facility 13, log audit.
const FACILITY: u8 = 13;

/// An SD-PARAM value: `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        if !c.is_control() {
            out.push(c);
        }
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// One event as an octet-counted RFC 5424 frame.
pub fn frame(e: &AuditEvent, host: &str) -> Vec<u8> {
    let severity = if matches!(e.decision.as_str(), "deny" | "refused" | "broken") {
        4
    } else {
        6
    };
    let sd = format!(
        "[gatehouse@32473 seq=\"{}\" kind=\"{}\" actor=\"{}\" resource=\"{}\" action=\"{}\" decision=\"{}\" session=\"{}\" controls=\"{}\" policies=\"{}\" hash=\"{}\"]",
        e.seq,
        sd_value(&e.kind),
        sd_value(&e.actor),
        sd_value(&e.resource),
        sd_value(&e.action),
        sd_value(&e.decision),
        sd_value(&e.session_id),
        sd_value(&e.controls.join(" ")),
        sd_value(&e.policy_ids.join(" ")),
        sd_value(&e.hash),
    );
    let msg = format!(
        "<{}>1 {} {} gatehouse {} {} {sd} {}",
        FACILITY * 8 + severity,
        header(&e.ts, 64),
        header(host, 255),
        std::process::id(),
        header(&e.kind, 32),
        event_line(e),
    );
    format!("{} {msg}", msg.len()).into_bytes()
}

struct Lag {
    sink: &'static str,
    behind: bool,
}

impl Lag {
    async fn check(
        &mut self,
        audit: &AuditLog,
        cfg: &SiemConfig,
        head: u64,
        delivered: u64,
        oldest: Option<Instant>,
    ) {
        let lag = head.saturating_sub(delivered);
        let late = oldest.is_some_and(|t| t.elapsed() >= cfg.lag_alert_after);
        let behind = lag > cfg.lag_alert_events || (late && lag > 0);
        let caught_up = lag <= cfg.lag_alert_events / 2 && !late;
        if behind && !self.behind {
            self.behind = true;
            warn!(
                sink = self.sink,
                lag, delivered, head, "the SIEM stream is behind"
            );
            self.record(audit, "behind", lag, delivered, head).await;
        } else if self.behind && caught_up {
            self.behind = false;
            info!(
                sink = self.sink,
                lag, delivered, "the SIEM stream caught up"
            );
            self.record(audit, "caught_up", lag, delivered, head).await;
        }
    }

    async fn record(&self, audit: &AuditLog, level: &str, lag: u64, delivered: u64, head: u64) {
        let mut e = NewEvent::new(EventKind::SiemLag);
        e.actor = "gatehouse".into();
        e.resource = self.sink.into();
        e.action = "stream".into();
        e.decision = level.into();
        e.reason = format!("{lag} events not yet delivered to the SIEM ({})", self.sink);
        e.detail = json!({ "sink": self.sink, "lag_events": lag, "delivered_seq": delivered, "head_seq": head });
        let _ = audit.record(e).await;
    }
}

/// Streams the log to every configured SIEM sink until the process ends.
pub async fn run(store: Store, audit: AuditLog, cfg: SiemConfig) {
    let host = crate::cli::local_hostname().unwrap_or_else(|| "gatehouse".into());
    tokio::join!(
        run_syslog(store.clone(), audit.clone(), cfg.clone(), &host),
        run_http(store, audit, cfg, &host)
    );
}

/// Events per HTTP batch.
const HTTP_BATCH: u32 = 200;

/// POSTs batches of events (`{"source": "gatehouse", "host": ..., "events": [...]}`) to the
/// collector; the cursor moves when it answers 2xx.
async fn run_http(store: Store, audit: AuditLog, cfg: SiemConfig, host: &str) {
    const SINK_HTTP: &str = "http";
    let Some(url) = cfg.http_url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot build the SIEM's HTTP client; no HTTP stream");
            return;
        }
    };
    let mut lag = Lag {
        sink: SINK_HTTP,
        behind: false,
    };
    let mut backoff = Duration::from_millis(250);
    let mut waiting_since: Option<Instant> = None;
    loop {
        let delivered = match store.siem_cursor(SINK_HTTP).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the SIEM cursor");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let page = match store.audit_events(delivered, HTTP_BATCH, None, None).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "cannot read the audit log for the SIEM");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let head = store.audit_last_seq().await.unwrap_or(delivered);
        if page.is_empty() {
            waiting_since = None;
            lag.check(&audit, &cfg, head, delivered, None).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        let body = json!({
            "source": "gatehouse",
            "host": host,
            "events": page.iter().map(event_line).collect::<Vec<_>>(),
        });
        let mut req = client.post(&url).json(&body);
        if let Some(a) = &cfg.http_authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a.expose().as_str());
        }
        let last = page.last().map(|e| e.seq).unwrap_or(delivered);
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                match store
                    .set_siem_cursor(SINK_HTTP, last, &crate::audit::event::now_ts())
                    .await
                {
                    Ok(()) => {
                        backoff = Duration::from_millis(250);
                        waiting_since = None;
                        lag.check(&audit, &cfg, head, last, None).await;
                    }
                    Err(e) => warn!(error = %e, "cannot save the SIEM cursor"),
                }
                continue;
            }
            Ok(r) => warn!(status = %r.status(), "the SIEM collector refused a batch; retrying"),
            Err(e) => warn!(error = %e, "cannot deliver to the SIEM collector; retrying"),
        }
        lag.check(&audit, &cfg, head, delivered, Some(since)).await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Streams the log to the syslog receiver until the process ends.
async fn run_syslog(store: Store, audit: AuditLog, cfg: SiemConfig, host: &str) {
    let Some(addr) = cfg.syslog_tcp.clone() else {
        return;
    };
    let mut lag = Lag {
        sink: SINK,
        behind: false,
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        let delivered = match store.siem_cursor(SINK).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the SIEM cursor");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&addr),
        )
        .await;
        let stream = match conn {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(addr = %addr, error = %e, "cannot reach the SIEM's syslog receiver; retrying");
                let head = store.audit_last_seq().await.unwrap_or(delivered);
                lag.check(
                    &audit,
                    &cfg,
                    head,
                    delivered,
                    Some(Instant::now() - backoff),
                )
                .await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
            Err(_) => {
                warn!(addr = %addr, "the SIEM's syslog receiver did not answer in 5 s; retrying");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        let _ = stream.set_nodelay(true);
        info!(addr = %addr, from_seq = delivered + 1, "streaming the audit log to the SIEM");
        let (mut rd, mut wr) = stream.into_split();
        // A receiver never writes; a read that ends means the connection is gone.
        let closed = Arc::new(AtomicBool::new(false));
        let watcher = {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                closed.store(true, Ordering::SeqCst);
            })
        };
        let mut sent = delivered;
        let mut acked = delivered;
        let mut inflight: std::collections::VecDeque<(u64, Instant)> = Default::default();
        let mut last_commit = acked;
        loop {
            if closed.load(Ordering::SeqCst) {
                break;
            }
            let page = match store.audit_events(sent, PAGE, None, None).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "cannot read the audit log for the SIEM");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut failed = false;
            if !page.is_empty() {
                let mut buf = Vec::with_capacity(page.len() * 512);
                for e in &page {
                    buf.extend_from_slice(&frame(e, host));
                }
                match tokio::time::timeout(Duration::from_secs(10), wr.write_all(&buf)).await {
                    Ok(Ok(())) => {
                        let now = Instant::now();
                        for e in &page {
                            inflight.push_back((e.seq, now));
                        }
                        sent = page.last().map(|e| e.seq).unwrap_or(sent);
                    }
                    _ => failed = true,
                }
            }
            if failed {
                break;
            }
            while let Some((seq, at)) = inflight.front().copied() {
                if at.elapsed() < SETTLE || closed.load(Ordering::SeqCst) {
                    break;
                }
                acked = seq;
                inflight.pop_front();
            }
            if acked != last_commit {
                match store
                    .set_siem_cursor(SINK, acked, &crate::audit::event::now_ts())
                    .await
                {
                    Ok(()) => last_commit = acked,
                    Err(e) => warn!(error = %e, "cannot save the SIEM cursor"),
                }
            }
            let head = store.audit_last_seq().await.unwrap_or(sent);
            lag.check(&audit, &cfg, head, acked, inflight.front().map(|(_, t)| *t))
                .await;
            if page.len() < PAGE as usize {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        watcher.abort();
        warn!(addr = %addr, delivered = acked, resend_from = acked + 1, "the SIEM connection dropped; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_octet_counted_rfc5424_with_escaped_sd() {
        let mut e = NewEvent::new(EventKind::AccessDecision);
        e.actor = "bo\"b]".into();
        e.decision = "deny".into();
        e.controls = vec!["5.15".into()];
        let ev = e.seal(42, "2026-12-03T10:00:00.000001Z".into(), "00".into());
        let f = String::from_utf8(frame(&ev, "gw 1")).unwrap_or_default();
        let (len, msg) = f.split_once(' ').unwrap_or_default();
        assert_eq!(len.parse::<usize>().ok(), Some(msg.len()));
        assert!(
            msg.starts_with("<108>1 2026-12-03T10:00:00.000001Z gw1 gatehouse "),
            "{msg}"
        );
        assert!(msg.contains(" access.decision [gatehouse@32473 seq=\"42\" kind=\"access.decision\" actor=\"bo\\\"b\\]\""), "{msg}");
        assert!(msg.contains("controls=\"5.15 8.3 8.5\""), "{msg}");
    }
}
