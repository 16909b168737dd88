//! The JSON API under `/api/v1`, used by the `gatehouse` CLI.
//!
//! - `POST /api/v1/login/token` `{code, code_verifier}`: the CLI picks up its credential with the
//!   one-time code its loopback listener received, proving with its PKCE verifier that it is
//!   the process that started the login.
//! - `POST /api/v1/device`, `POST /api/v1/device/token` `{device_code}`: device logins.
//! - `GET /api/v1/whoami`, `POST /api/v1/logout`: bearer-authenticated with the credential.
//! - `POST /api/v1/credentials/postgres` `{ttl_secs?}`: a PostgreSQL password derived from the
//!   caller's credential, which only the PostgreSQL door takes.
//! - `GET /api/v1/info`, `GET /.well-known/jwks.json`: public.
//!
//! Errors are `{"error": code, "message": text}` with a fitting status. Every refusal of a
//! credential or code is audited with its reason.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tracing::warn;

use super::session::{revoke_login, Credential};
use super::Web;
use crate::admission::AuthContext;
use crate::audit::{EventKind, NewEvent};
use crate::authn::oidc::DevicePoll;
use crate::authn::pending::random_key;
use crate::authn::token::{Claims, Door};
use crate::config::DeviceFlow;

/// An error response.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}

/// `GET /.well-known/jwks.json`
pub async fn jwks(State(web): State<Arc<Web>>) -> Response {
    Json(web.tokens.jwks()).into_response()
}

/// `GET /api/v1/info`
pub async fn info(State(web): State<Arc<Web>>) -> Response {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "issuer": web.tokens.issuer(),
        "audience": web.tokens.audience(),
        "postgres": web.postgres_public,
        "sso": web.rp.is_some(),
        "jwks_uri": format!("{}/.well-known/jwks.json", web.config.http.public_url),
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    code: String,
    code_verifier: String,
}

/// `POST /api/v1/login/token`
pub async fn login_token(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected JSON {code, code_verifier}",
        );
    };
    let refuse = |reason: &'static str| {
        let web = web.clone();
        async move {
            web.audit_refusal(
                EventKind::LoginFailed,
                "",
                "credential_pickup",
                reason,
                peer,
                serde_json::json!({}),
            )
            .await;
            error(StatusCode::BAD_REQUEST, "invalid_grant", reason)
        }
    };
    if req.code.len() > 128 || req.code_verifier.len() > 128 {
        return refuse("code or verifier too long").await;
    }
    // Single use: the code is gone whether or not the verifier matches.
    let Some(issued) = web.codes.take(&req.code) else {
        return refuse("unknown, expired or already used code").await;
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, req.code_verifier.as_bytes());
    let expected = B64URL.encode(digest.as_ref());
    if !bool::from(expected.as_bytes().ct_eq(issued.challenge.as_bytes())) {
        return refuse("code_verifier does not match the login's challenge").await;
    }
    Json(issued.credential).into_response()
}

/// A device login in flight, keyed by the `device_code` the CLI polls with.
pub struct DeviceTx {
    kind: DeviceKind,
    interval: Duration,
    next_poll: Instant,
    result: Option<Credential>,
    /// Where and when it was started: the confirmation page names both, so a person sent
    /// someone else's code can tell.
    source: IpAddr,
    started: time::OffsetDateTime,
    started_at: Instant,
}

enum DeviceKind {
    /// The provider runs the verification; we poll its token endpoint.
    Provider { device_code: String },
    /// The gateway's own page; a browser sign-in completes it.
    Gateway { user_code: String },
}

impl DeviceTx {
    pub fn gateway_user_code(&self) -> Option<&str> {
        match &self.kind {
            DeviceKind::Gateway { user_code } if self.result.is_none() => Some(user_code),
            _ => None,
        }
    }

    pub fn complete(&mut self, c: Credential) {
        self.result = Some(c);
    }

    /// The address that started it, when (UTC), and how long ago.
    pub fn started(&self) -> (IpAddr, time::OffsetDateTime, Duration) {
        (self.source, self.started, self.started_at.elapsed())
    }
}

/// `POST /api/v1/device`
pub async fn device_start(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let Some(rp) = web.rp.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "sso_disabled",
            "single sign-on is not configured",
        );
    };
    // Checked before the provider is asked for a device authorisation.
    if !web.devices.has_room_for(peer.ip()) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many device logins in progress from your address",
        );
    }
    let handle = random_key();
    let use_provider = rp.config().device_flow == DeviceFlow::Auto
        && rp.provider_device_flow().await.unwrap_or(false);
    let (tx, body) = if use_provider {
        let start = match rp.device_start().await {
            Ok(s) => s,
            Err(e) => {
                web.audit_refusal(
                    EventKind::LoginFailed,
                    "",
                    "login",
                    &e.to_string(),
                    peer,
                    serde_json::json!({ "flow": "device" }),
                )
                .await;
                return error(StatusCode::BAD_GATEWAY, "provider_error", &e.to_string());
            }
        };
        let interval = Duration::from_secs(start.interval.unwrap_or(5).clamp(1, 60));
        let expires = start.expires_in.min(super::DEVICE_TTL.as_secs());
        (
            DeviceTx {
                kind: DeviceKind::Provider {
                    device_code: start.device_code,
                },
                interval,
                next_poll: Instant::now(),
                result: None,
                source: peer.ip().to_canonical(),
                started: time::OffsetDateTime::now_utc(),
                started_at: Instant::now(),
            },
            // No `verification_uri_complete`, here or below: a link that carries the code is
            // what an attacker would send a victim; the person types the code they see.
            serde_json::json!({
                "device_code": handle,
                "user_code": start.user_code,
                "verification_uri": start.verification_uri,
                "expires_in": expires,
                "interval": interval.as_secs(),
            }),
        )
    } else {
        let user_code = gateway_user_code();
        let verification = format!("{}/device", web.config.http.public_url);
        (
            DeviceTx {
                kind: DeviceKind::Gateway {
                    user_code: user_code.clone(),
                },
                interval: Duration::from_secs(2),
                next_poll: Instant::now(),
                result: None,
                source: peer.ip().to_canonical(),
                started: time::OffsetDateTime::now_utc(),
                started_at: Instant::now(),
            },
            serde_json::json!({
                "device_code": handle,
                "user_code": format!("{}-{}", &user_code[..4], &user_code[4..]),
                "verification_uri": verification,
                "expires_in": super::DEVICE_TTL.as_secs(),
                "interval": 2,
            }),
        )
    };
    if web.devices.insert(&handle, tx, peer.ip()).is_err() {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "busy",
            "too many device logins in progress from your address",
        );
    }
    Json(body).into_response()
}

/// Eight characters from an alphabet without vowels or look-alikes (RFC 8628 6.1).
fn gateway_user_code() -> String {
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    gatehouse_core::random::random_bytes::<8>()
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

#[derive(Debug, Deserialize)]
pub struct DeviceTokenRequest {
    device_code: String,
}

/// `POST /api/v1/device/token`
pub async fn device_token(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<DeviceTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected JSON {device_code}",
        );
    };
    let Some(rp) = web.rp.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "sso_disabled",
            "single sign-on is not configured",
        );
    };
    enum Next {
        Done(Credential),
        Wait(&'static str),
        Poll(String),
    }
    let next = web.devices.update(&req.device_code, |tx| {
        if let Some(c) = tx.result.take() {
            return (false, Next::Done(c));
        }
        let now = Instant::now();
        if now < tx.next_poll {
            tx.interval += Duration::from_secs(1);
            return (true, Next::Wait("slow_down"));
        }
        tx.next_poll = now + tx.interval;
        match &tx.kind {
            DeviceKind::Gateway { .. } => (true, Next::Wait("authorization_pending")),
            DeviceKind::Provider { device_code } => (true, Next::Poll(device_code.clone())),
        }
    });
    let pending = |code: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": code, "message": "waiting for the person to sign in" })),
        )
            .into_response()
    };
    match next {
        None => {
            web.audit_refusal(
                EventKind::LoginFailed,
                "",
                "login",
                "unknown, expired or already used device code",
                peer,
                serde_json::json!({ "flow": "device" }),
            )
            .await;
            error(
                StatusCode::BAD_REQUEST,
                "expired_token",
                "unknown, expired or already used device code",
            )
        }
        Some(Next::Done(c)) => Json(c).into_response(),
        Some(Next::Wait(code)) => pending(code),
        Some(Next::Poll(device_code)) => match rp.device_poll(&device_code).await {
            Ok(DevicePoll::Pending) => pending("authorization_pending"),
            Ok(DevicePoll::SlowDown) => {
                web.devices.update(&req.device_code, |tx| {
                    tx.interval += Duration::from_secs(5);
                    (true, ())
                });
                pending("slow_down")
            }
            Ok(DevicePoll::Done(identity)) => {
                web.devices.take(&req.device_code);
                match web.complete_login(*identity, "device", peer).await {
                    Ok(c) => Json(c).into_response(),
                    Err(e) => error(StatusCode::FORBIDDEN, "access_denied", &e.to_string()),
                }
            }
            Err(e) => {
                web.devices.take(&req.device_code);
                web.audit_refusal(
                    EventKind::LoginFailed,
                    "",
                    "login",
                    &e.to_string(),
                    peer,
                    serde_json::json!({ "flow": "device" }),
                )
                .await;
                error(StatusCode::FORBIDDEN, "access_denied", &e.to_string())
            }
        },
    }
}

/// Authenticates a bearer credential through [`crate::admission`]: signature and claims, then
/// the user's and the login's standing in the store, the same checks and timeouts as the front
/// doors. Refusals are audited and answered 401.
pub async fn authenticate(
    web: &Web,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: &str,
) -> Result<Claims, Response> {
    let unauthorized = |msg: &str| {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", msg);
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer realm=\"gatehouse\""),
        );
        r
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return Err(unauthorized(
            "a bearer credential is required (gatehouse login)",
        ));
    };
    web.admission
        .authenticate(None, token, &AuthContext::Bearer { action, peer })
        .await
        .map_err(|_| unauthorized("the credential was refused; sign in again"))
}

/// `GET /api/v1/whoami`
pub async fn whoami(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match authenticate(&web, &headers, peer, "whoami").await {
        Err(r) => r,
        Ok(c) => Json(serde_json::json!({
            "user": c.sub,
            "groups": c.groups,
            "auth": c.auth_method(),
            "mfa": c.mfa,
            "amr": c.amr,
            "expires_at": c.exp,
            "login_id": c.sid,
        }))
        .into_response(),
    }
}

/// `POST /api/v1/logout`: revokes the credential's login. Only a sign-in's credential ends
/// this way: an issued (service) token is refused with 400 `not_a_login`, so one holder of a
/// token that several jobs share cannot end it for all; an admin revokes it
/// (`gatehouse token revoke`).
pub async fn logout(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let claims = match authenticate(&web, &headers, peer, "logout").await {
        Err(r) => return r,
        Ok(c) => c,
    };
    let Some(sid) = claims.login_sid().map(str::to_string) else {
        return error(
            StatusCode::BAD_REQUEST,
            "not_a_login",
            "this is an issued token, not a login credential: it ends at its expiry, or when an \
             admin revokes it (`gatehouse token revoke`)",
        );
    };
    if let Ok(mut live) = web.refresh.lock() {
        live.remove(&sid);
    }
    match revoke_login(
        &web.store,
        &web.audit,
        &claims.sub,
        &sid,
        &claims.sub,
        "logout",
    )
    .await
    {
        Ok(_) => Json(serde_json::json!({ "revoked": sid })).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            &e.to_string(),
        ),
    }
}

/// The longest a door credential lives when the client asks for none (`gatehouse env`); never
/// past the API credential it comes from.
pub const DOOR_CREDENTIAL_DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// Body of `POST /api/v1/credentials/postgres`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoorCredentialBody {
    /// Lifetime in seconds (1 to 12 h; capped by the caller's credential).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// `POST /api/v1/credentials/postgres`: a PostgreSQL password for the caller, derived from
/// their API credential ([`TokenAuthority::issue_for_door`](crate::authn::token::TokenAuthority::issue_for_door)):
/// the same login, so a logout or revocation ends it too, but only the PostgreSQL door takes
/// it. `gatehouse psql` and `gatehouse env` send this, never the API credential, so a spoofed
/// server that captures the password gains no API bearer. Audited as `credential.issued`
/// (door `postgres`) before it is answered.
pub async fn door_credential(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<DoorCredentialBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let claims = match authenticate(&web, &headers, peer, "credential").await {
        Err(r) => return r,
        Ok(c) => c,
    };
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be JSON: {} or {\"ttl_secs\": N}",
        );
    };
    let ttl = match body.ttl_secs {
        None => DOOR_CREDENTIAL_DEFAULT_TTL,
        Some(secs @ 1..=43_200) => Duration::from_secs(secs),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "ttl_secs must be between 1 and 43200",
            )
        }
    };
    let (credential, door) = match web.tokens.issue_for_door(&claims, Door::Postgres, ttl) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot sign a door credential");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot sign the credential",
            );
        }
    };
    let mut issued = NewEvent::new(EventKind::CredentialIssued);
    issued.actor = claims.sub.clone();
    issued.action = "issue".into();
    issued.detail = serde_json::json!({
        "door": Door::Postgres.as_str(),
        "audience": door.aud,
        "login_id": claims.sid,
        "credential_id": door.jti,
        "from_credential_id": claims.jti,
        "expires_at": door.exp,
        "key_id": web.tokens.key_id(),
        "client_addr": peer.to_string(),
    });
    if web.audit.record_durable(issued).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot record the credential; nothing was issued",
        );
    }
    Json(serde_json::json!({
        "credential": credential,
        "door": Door::Postgres.as_str(),
        "user": door.sub,
        "expires_at": door.exp,
    }))
    .into_response()
}

/// `POST /api/v1/agents/enroll`: a remote agent redeems its one-time join token (no gateway
/// credential: the token is the authentication) and receives its certificate.
pub async fn agent_enroll(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Response {
    let Some(svc) = &web.agents else {
        return error(
            StatusCode::NOT_FOUND,
            "agents_disabled",
            "this gateway does not accept remote agents (its config has no [agents] section)",
        );
    };
    let request: gatehouse_agent::remote::identity::EnrollRequest =
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("malformed enrollment request: {e}"),
                )
            }
        };
    match crate::agents::enroll::enroll(svc, request, peer.ip()).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e @ crate::agents::enroll::EnrollError::Token) => {
            error(StatusCode::FORBIDDEN, "join_token_refused", &e.to_string())
        }
        Err(e @ crate::agents::enroll::EnrollError::Malformed(_)) => {
            error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string())
        }
        Err(e @ crate::agents::enroll::EnrollError::Internal) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            &e.to_string(),
        ),
    }
}
