//! `GET /api/v1/evidence/bundle?from=&to=`: the auditor downloads an evidence bundle for a
//! period as one ustar archive (`evidence::tar`), the same bundle `gatehouse evidence bundle`
//! builds where the store is. Who may is the Cedar decision on `read_audit`; the build is an
//! `evidence.bundle` event naming the reader (and a refusal an `audit.read` deny). The bundle is
//! built in a temporary directory under the state directory on a blocking thread, archived,
//! streamed and removed; one build runs at a time (another request is answered 429).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::api::{authenticate, error};
use super::audit::{authorize_read, rfc3339};
use super::Web;
use crate::audit::{EventKind, NewEvent};
use crate::evidence::bundle;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleQuery {
    from: String,
    to: Option<String>,
}

/// A response body fed from a channel of chunks (the archive as it is read from disk).
struct ChannelBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

/// `GET /api/v1/evidence/bundle`
pub async fn bundle(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<BundleQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let claims = match authenticate(&web, &headers, peer, "evidence.bundle").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give from (and optionally to), RFC 3339",
        );
    };
    let from = match rfc3339("from", &q.from) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e),
    };
    let to = match q.to.as_deref().map(|t| rfc3339("to", t)).transpose() {
        Ok(t) => t.unwrap_or_else(crate::audit::event::now_ts),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e),
    };
    if from >= to {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the period is empty: from is not before to",
        );
    }
    let decision = match authorize_read(
        &web,
        &claims,
        peer,
        "bundle",
        json!({ "from": from, "to": to }),
    )
    .await
    {
        Ok(d) => d,
        Err(r) => return r,
    };

    // One build at a time per gateway: each takes a blocking thread and minutes for a long
    // period, and any permitted reader could otherwise start many.
    static BUILDING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if BUILDING.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "an evidence bundle is being built; ask again when it is done",
        );
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            BUILDING.store(false, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let _done = Done;
    let config = web.config.clone();
    let store = web.store.clone();
    let who = claims.sub.clone();
    let (from2, to2) = (from.clone(), to.clone());
    let work = config
        .state_dir
        .join("evidence-downloads")
        .join(crate::audit::event::hex(
            &gatehouse_core::random::random_bytes::<8>(),
        ));
    let work2 = work.clone();
    let built = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Handle::current();
        rt.block_on(async move {
            let key = crate::keys::SigningKey::load(&crate::server::audit_key_path(&config))
                .map_err(|e| format!("the audit key: {e}"))?;
            let anchor = crate::server::audit_anchor_path(&config);
            let store_chain = match crate::cli::verify_store_anchored(
                &store,
                &key.public_key(),
                crate::cli::Anchor::Required(&anchor),
            )
            .await
            .map_err(|e| format!("reading the log: {e:#}"))?
            {
                Ok(r) => Ok(r.to_string()),
                Err(e) => Err(format!("at seq {}: {}", e.seq, e.problem)),
            };
            std::fs::create_dir_all(&work2).map_err(|e| e.to_string())?;
            let dir = work2.join("bundle");
            let spec = bundle::Spec {
                from: &from2,
                to: &to2,
                out: &dir,
                built_by: &format!("{who} (through the API)"),
                progress: false,
                store_chain,
            };
            let built = bundle::build(&config, &store, &key, &spec)
                .await
                .map_err(|e| e.to_string())?;
            let tar = work2.join("bundle.tar");
            let mut w =
                std::io::BufWriter::new(std::fs::File::create(&tar).map_err(|e| e.to_string())?);
            crate::evidence::tar::write_dir(&dir, &mut w).map_err(|e| e.to_string())?;
            drop(w);
            let _ = std::fs::remove_dir_all(&dir);
            Ok::<_, String>((built, tar))
        })
    })
    .await;
    let (built, tar) = match built {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&work);
            tracing::warn!(error = %e, "cannot build an evidence bundle for the API");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the bundle cannot be built now",
            );
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&work);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the bundle cannot be built now",
            );
        }
    };
    let mut e = NewEvent::new(EventKind::EvidenceBundle);
    e.actor = claims.sub.clone();
    e.action = "bundle".into();
    e.decision = if built.chain_ok { "intact" } else { "broken" }.into();
    e.policy_ids = decision.policy_ids.clone();
    e.detail = json!({
        "from": from, "to": to, "events": built.events, "exceptions": built.exceptions,
        "chain": built.chain, "sha256sums_sha256": built.sums_sha256, "via": "api",
        "client_addr": peer.to_string(),
    });
    // The download is on record before a byte of it leaves (5.33).
    if web.audit.record_durable(e).await.is_err() {
        let _ = std::fs::remove_dir_all(&work);
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the download cannot be recorded, so it is refused",
        );
    }
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        match tokio::fs::File::open(&tar).await {
            Ok(mut f) => loop {
                let mut buf = vec![0u8; 64 * 1024];
                match f.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        break;
                    }
                }
            },
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
        let _ = tokio::fs::remove_dir_all(&work).await;
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"evidence-bundle.tar\"".to_string(),
            ),
        ],
        axum::body::Body::new(ChannelBody(rx)),
    )
        .into_response()
}
