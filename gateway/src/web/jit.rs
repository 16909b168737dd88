//! The just-in-time access API (bearer-authenticated), over [`crate::access::Access`]:
//!
//! | method | path | body |
//! |---|---|---|
//! | GET | `/api/v1/resources` | |
//! | POST | `/api/v1/requests` | `{resource, role, duration, reason, break_glass}` |
//! | GET | `/api/v1/requests?pending=true` | |
//! | POST | `/api/v1/requests/{id}/approve`, `/deny` | `{comment}` |
//! | GET | `/api/v1/grants?all=true` | |
//! | POST | `/api/v1/grants` | `{user, resource, role, duration, reason}` |
//! | POST | `/api/v1/grants/{id}/revoke` | `{reason}` |
//! | GET | `/api/v1/reviews?all=true` | |
//! | POST | `/api/v1/reviews/{id}/sign-off` | `{comment}` |
//! | GET | `/api/v1/campaigns/items` | |
//! | POST | `/api/v1/campaigns/items/{id}` | `{decision: keep or revoke, comment}` |
//!
//! `/api/v1/openapi.json` describes all of it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::api::{authenticate, error};
use super::Web;
use crate::access::{AccessError, Caller};
use crate::config::parse_duration;

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[allow(clippy::result_large_err)]
async fn caller(
    web: &Web,
    headers: &HeaderMap,
    peer: SocketAddr,
    action: &str,
) -> Result<Caller, Response> {
    let c = authenticate(web, headers, peer, action).await?;
    Ok(Caller {
        auth_method: c.auth_method().to_string(),
        user: c.sub,
        groups: c.groups,
        mfa: c.mfa,
        ip: peer.ip(),
    })
}

fn respond(r: Result<serde_json::Value, AccessError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let (status, code) = match &e {
                AccessError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                AccessError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
                AccessError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                AccessError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
                AccessError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
                AccessError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            error(status, code, &e.to_string())
        }
    }
}

fn bad_body() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the body is not the expected JSON (see /api/v1/openapi.json)",
    )
}

#[allow(clippy::result_large_err)]
fn duration(s: &str) -> Result<std::time::Duration, Response> {
    parse_duration(s).ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("`{s}` is not a duration like `30m`, `2h`, `1d`"),
        )
    })
}

/// `GET /api/v1/resources`
pub async fn resources(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match caller(&web, &headers, peer, "resources").await {
        Ok(c) => respond(web.access.resources(&c).await),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
pub struct NewRequestBody {
    resource: String,
    role: String,
    duration: String,
    reason: String,
    #[serde(default)]
    break_glass: bool,
}

/// `POST /api/v1/requests`
pub async fn create_request(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonBody<NewRequestBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "request").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    let d = match duration(&b.duration) {
        Ok(d) => d,
        Err(r) => return r,
    };
    respond(
        web.access
            .request(&c, &b.resource, &b.role, d, &b.reason, b.break_glass)
            .await,
    )
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    pending: bool,
    #[serde(default)]
    all: bool,
}

/// `GET /api/v1/requests`
pub async fn list_requests(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    match caller(&web, &headers, peer, "requests").await {
        Ok(c) => respond(web.access.requests(&c, p.pending).await),
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct CommentBody {
    #[serde(default)]
    comment: String,
}

/// `POST /api/v1/requests/{id}/approve`
pub async fn approve(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: JsonBody<CommentBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "approve").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    respond(web.access.approve(&c, id, &b.comment).await)
}

/// `POST /api/v1/requests/{id}/deny`
pub async fn deny(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: JsonBody<CommentBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "deny").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    respond(web.access.deny(&c, id, &b.comment).await)
}

/// `GET /api/v1/grants`
pub async fn list_grants(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    match caller(&web, &headers, peer, "grants").await {
        Ok(c) => respond(web.access.grants(&c, p.all).await),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
pub struct GrantBody {
    user: String,
    resource: String,
    role: String,
    duration: String,
    reason: String,
}

/// `POST /api/v1/grants`
pub async fn create_grant(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: JsonBody<GrantBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "grant").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    let d = match duration(&b.duration) {
        Ok(d) => d,
        Err(r) => return r,
    };
    respond(
        web.access
            .direct_grant(&c, &b.user, &b.resource, &b.role, d, &b.reason)
            .await,
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct ReasonBody {
    #[serde(default)]
    reason: String,
}

/// `POST /api/v1/grants/{id}/revoke`
pub async fn revoke(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: JsonBody<ReasonBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "revoke").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    respond(web.access.revoke(&c, id, &b.reason).await)
}

/// `GET /api/v1/reviews`
pub async fn list_reviews(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<ListParams>,
) -> Response {
    match caller(&web, &headers, peer, "reviews").await {
        Ok(c) => respond(web.access.reviews(&c, p.all).await),
        Err(r) => r,
    }
}

/// `POST /api/v1/reviews/{id}/sign-off`
pub async fn sign_off(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: JsonBody<CommentBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "review").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    respond(web.access.sign_off(&c, id, &b.comment).await)
}

/// `GET /api/v1/campaigns/items`: the open access review items assigned to the caller.
pub async fn campaign_items(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let c = match caller(&web, &headers, peer, "review").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    respond(web.access.review_items(&c).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    decision: String,
    #[serde(default)]
    comment: String,
}

/// `POST /api/v1/campaigns/items/{id}`: keep or revoke.
pub async fn decide_campaign_item(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: JsonBody<DecisionBody>,
) -> Response {
    let c = match caller(&web, &headers, peer, "review").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Json(b)) = body else {
        return bad_body();
    };
    respond(
        web.access
            .decide_item(&c, id, &b.decision, &b.comment)
            .await,
    )
}

/// `GET /api/v1/openapi.json`
pub async fn openapi(State(web): State<Arc<Web>>) -> Response {
    Json(super::openapi::document(&web.config.http.public_url)).into_response()
}
