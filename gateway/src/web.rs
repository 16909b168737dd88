//! The HTTPS listener: single sign-on pages, the JSON API the `gatehouse` CLI talks to, and the
//! JWKS of gateway credentials.
//!
//! rustls (the same certificate handling as the PostgreSQL front door) under hyper's HTTP/1.1
//! server, with axum routing. Every request is bounded before a handler runs: header bytes
//! (`http.max_header_bytes`, refused with 431 and audited), body size, header read time, and the
//! number of connections.
//!
//! - [`login`]: `/login`, `/oidc/callback`, `/device` (GET and POST): the browser side of sign-in.
//! - [`api`]: `/api/v1/...`: credential pickup, device flow, whoami, logout, info.
//! - [`page`]: the few HTML pages, escaped.
//! - [`session`]: what a completed login becomes: a login row, a credential, audit events.
//! - [`jit`]: the just-in-time access API (requests, approvals, grants, reviews);
//!   [`openapi`] documents the whole API.

pub mod api;
pub mod audit;
pub mod evidence;
pub mod jit;
pub mod login;
pub mod openapi;
pub mod page;
pub mod session;
pub mod ssh;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{info, warn};

use crate::admission::Admission;
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::oidc::RelyingParty;
use crate::authn::pending::Pending;
use crate::authn::token::TokenAuthority;
use crate::config::Config;
use crate::listener::{self, Conn, Door, Limits, Serving};
use crate::registry::Registry;
use crate::store::Store;

/// Largest request body (JSON API and forms).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a client may take to send its request headers, and to finish the TLS handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Logins in progress kept at most, and for how long.
const MAX_PENDING: usize = 10_000;
pub const LOGIN_TTL: Duration = Duration::from_secs(600);
/// One-time codes handed to the CLI's loopback listener live this long.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Device logins live at most this long (the provider's own expiry may be shorter).
pub const DEVICE_TTL: Duration = Duration::from_secs(900);
/// A device confirmation page's form (its CSRF token) is good this long.
pub const DEVICE_FORM_TTL: Duration = Duration::from_secs(600);
/// A confirmed device login must reach `/login` within this (it is an immediate redirect).
pub const DEVICE_CONFIRM_TTL: Duration = Duration::from_secs(120);

/// Everything the HTTPS handlers share.
pub struct Web {
    pub config: Arc<Config>,
    pub tokens: Arc<TokenAuthority>,
    pub rp: Option<Arc<RelyingParty>>,
    pub audit: AuditLog,
    pub store: Store,
    pub registry: Registry,
    pub access: Arc<crate::access::Access>,
    /// The PostgreSQL front door's address as clients reach it (`host:port`).
    pub postgres_public: String,
    pub logins: Pending<login::LoginTx>,
    pub codes: Pending<session::IssuedCode>,
    pub devices: Pending<api::DeviceTx>,
    /// CSRF tokens of device confirmation pages (`GET /device`), bound to a browser cookie.
    pub device_forms: Pending<login::DeviceBinding>,
    /// Confirmed device logins (`POST /device`) waiting for `/login?device=&confirm=`.
    pub device_confirms: Pending<login::DeviceBinding>,
    /// Remote agents (enrollment); `None` without an `[agents]` section.
    pub agents: Option<Arc<crate::agents::AgentService>>,
    /// Refresh tokens of live logins by login id, for re-checks; memory only.
    pub refresh: std::sync::Mutex<HashMap<String, session::LiveLogin>>,
    /// The credential checks the front doors use, for bearer credentials.
    pub admission: Admission,
    /// The SSH keys: the user CA signs `POST /api/v1/credentials/ssh`.
    pub ssh: Arc<crate::ssh::ca::SshKeys>,
    /// The SSH front door's address as clients reach it, when it is open.
    pub ssh_public: Option<String>,
}

impl Web {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        tokens: Arc<TokenAuthority>,
        rp: Option<Arc<RelyingParty>>,
        audit: AuditLog,
        store: Store,
        registry: Registry,
        access: Arc<crate::access::Access>,
        postgres_public: String,
        agents: Option<Arc<crate::agents::AgentService>>,
        admission: Admission,
        ssh: Arc<crate::ssh::ca::SshKeys>,
        ssh_public: Option<String>,
    ) -> Web {
        Web {
            admission,
            ssh,
            ssh_public,
            agents,
            config,
            tokens,
            rp,
            audit,
            store,
            registry,
            access,
            postgres_public,
            logins: Pending::new(LOGIN_TTL, MAX_PENDING),
            codes: Pending::new(CODE_TTL, MAX_PENDING),
            devices: Pending::new(DEVICE_TTL, MAX_PENDING),
            device_forms: Pending::new(DEVICE_FORM_TTL, MAX_PENDING),
            device_confirms: Pending::new(DEVICE_CONFIRM_TTL, MAX_PENDING),
            refresh: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Records a refusal with the client's address; `actor` may be empty when unknown.
    pub async fn audit_refusal(
        &self,
        kind: EventKind,
        actor: &str,
        action: &str,
        reason: &str,
        peer: SocketAddr,
        detail: serde_json::Value,
    ) {
        // Unauthenticated and the client's to repeat: counted per source, kind and reason
        // (a few events a window, then a summary), like failed credentials.
        let class: String = format!("web {} {action} {reason}", kind.as_str())
            .chars()
            .take(80)
            .collect();
        if !self
            .admission
            .failures
            .note(kind, peer.ip(), &class, reason)
        {
            return;
        }
        let mut e = NewEvent::new(kind);
        e.actor = if actor.is_empty() {
            "-".into()
        } else {
            actor.into()
        };
        e.action = action.into();
        e.decision = "deny".into();
        e.reason = reason.into();
        let mut d = match detail {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        d.insert("client_addr".into(), peer.to_string().into());
        e.detail = serde_json::Value::Object(d);
        if let Err(err) = self.audit.record_durable(e).await {
            warn!(error = %err, "cannot record a refusal in the audit log");
        }
        info!(kind = kind.as_str(), reason, client.addr = %peer, "refused");
    }
}

/// The routes.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(login::home))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/.well-known/jwks.json", get(api::jwks))
        .route("/login", get(login::start))
        .route("/oidc/callback", get(login::callback))
        .route(
            "/device",
            get(login::device_page).post(login::device_confirm),
        )
        .route("/api/v1/info", get(api::info))
        .route("/api/v1/agents/enroll", post(api::agent_enroll))
        .route("/api/v1/login/token", post(api::login_token))
        .route("/api/v1/device", post(api::device_start))
        .route("/api/v1/device/token", post(api::device_token))
        .route("/api/v1/whoami", get(api::whoami))
        .route("/api/v1/logout", post(api::logout))
        .route("/api/v1/credentials/postgres", post(api::door_credential))
        .route(
            "/api/v1/credentials/ssh",
            post(crate::web::ssh::certificate),
        )
        .route("/api/v1/openapi.json", get(jit::openapi))
        .route("/api/v1/resources", get(jit::resources))
        .route(
            "/api/v1/requests",
            get(jit::list_requests).post(jit::create_request),
        )
        .route("/api/v1/requests/{id}/approve", post(jit::approve))
        .route("/api/v1/requests/{id}/deny", post(jit::deny))
        .route(
            "/api/v1/grants",
            get(jit::list_grants).post(jit::create_grant),
        )
        .route("/api/v1/grants/{id}/revoke", post(jit::revoke))
        .route("/api/v1/audit/events", get(audit::events))
        .route("/api/v1/evidence/bundle", get(evidence::bundle))
        .route("/api/v1/campaigns/items", get(jit::campaign_items))
        .route(
            "/api/v1/campaigns/items/{id}",
            post(jit::decide_campaign_item),
        )
        .route("/api/v1/reviews", get(jit::list_reviews))
        .route("/api/v1/reviews/{id}/sign-off", post(jit::sign_off))
        .fallback(|| async { api::error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(web.clone(), guard))
        .with_state(web)
}

/// Refuses requests whose headers exceed `http.max_header_bytes` (431, audited) and sets the
/// security headers on every response.
async fn guard(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    let header_bytes: usize = req.uri().to_string().len()
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    if header_bytes > web.config.http.max_header_bytes {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let path: String = req.uri().path().chars().take(128).collect();
        web.audit_refusal(
            EventKind::HttpRefused,
            "",
            "request",
            "request headers too large",
            peer,
            serde_json::json!({ "path": path, "header_bytes": header_bytes, "limit": web.config.http.max_header_bytes }),
        )
        .await;
        return api::error(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "request headers too large",
        );
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    resp
}

/// Accepts HTTPS connections until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    web: Arc<Web>,
    shutdown: impl Future<Output = ()>,
) {
    // hyper refuses (with 431) anything past its buffer; the guard's own limit, which audits,
    // sits below it.
    let max_buf = (web.config.http.max_header_bytes * 2).max(8192 * 2);
    let limits = Limits::new(web.config.http.max_connections, HEADER_TIMEOUT);
    let door = Arc::new(HttpsDoor {
        tls,
        admission: web.admission.clone(),
        app: router(web),
        max_buf,
    });
    listener::serve(listener, door, limits, shutdown).await;
}

/// The HTTPS listener as a [`Door`] of the shared accept loop. A connection counts as
/// unauthenticated until its TLS handshake is done; after that hyper's header read timeout
/// bounds each request.
struct HttpsDoor {
    tls: TlsAcceptor,
    /// Counts refused connections (the listener's limits, failed TLS handshakes).
    admission: Admission,
    app: Router,
    max_buf: usize,
}

impl Door for HttpsDoor {
    fn name(&self) -> &'static str {
        "https"
    }

    fn count_refusal(&self, peer: SocketAddr, class: &'static str, reason: &str) {
        self.admission
            .count_refusal(crate::authn::token::Door::Api, peer, class, reason);
    }

    fn serve(self: Arc<Self>, mut conn: Conn) -> Serving {
        Box::pin(async move {
            let Some(tcp) = conn.take_stream() else {
                return;
            };
            let peer = conn.peer();
            let stream = match tokio::time::timeout(HEADER_TIMEOUT, self.tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    self.tls_failed(peer, &e);
                    return;
                }
                Err(_) => {
                    self.count_refusal(peer, "timeout", "the TLS handshake did not finish in time");
                    return;
                }
            };
            conn.authenticated();
            let app = self.app.clone();
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(self.max_buf)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = served.await {
                tracing::debug!(error = %e, "https connection ended with an error");
            }
        })
    }
}
