//! The auditor's read-only API: `GET /api/v1/audit/events`, the signed log's events with
//! filters and a cursor. Who may read is a Cedar decision (action `read_audit` on the resource
//! `audit-log`, protocol `audit`; the default policies permit group `auditors`), and every read,
//! allowed or refused, is itself an `audit.read` event, committed before the answer leaves.
//!
//! Query: `from`, `to` (RFC 3339), `kind`, `actor`, `resource`, `control`, `session`, `after`
//! (the cursor: events after this seq), `limit` (1..=1000, default 100). The answer:
//! `{"events": [...], "next": seq | null}`: `next` is the cursor for the following page, `null`
//! once the log is exhausted. One request scans at most 20,000 rows; a sparse filter pages on.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gatehouse_policies::{AccessRequest, Action, RequestContext, ResourceAttrs};
use serde::Deserialize;
use serde_json::json;

use super::api::{authenticate, error};
use super::Web;
use crate::audit::export::event_line;
use crate::audit::{EventKind, NewEvent};

/// Rows one request reads from the store at most.
const SCAN_MAX: u32 = 20_000;
const PAGE: u32 = 1_000;
/// The longest filter value accepted.
const FILTER_MAX: usize = 200;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    actor: Option<String>,
    resource: Option<String>,
    control: Option<String>,
    session: Option<String>,
    after: Option<u64>,
    limit: Option<u32>,
}

/// An RFC 3339 query parameter as the log's timestamp text.
pub(crate) fn rfc3339(name: &str, v: &str) -> Result<String, String> {
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map(crate::audit::event::format_ts)
        .map_err(|_| format!("`{name}` is not an RFC 3339 time like 2026-11-01T00:00:00Z"))
}

fn ts(name: &str, v: &Option<String>) -> Result<Option<String>, String> {
    v.as_deref().map(|s| rfc3339(name, s)).transpose()
}

/// The policies' decision on `claims` reading the audit log (action `read_audit` on
/// `audit-log`). A refusal is recorded as an `audit.read` deny (`action`, `detail`) and comes
/// back as the 403 to answer.
#[allow(clippy::result_large_err)]
pub(crate) async fn authorize_read(
    web: &Web,
    claims: &crate::authn::token::Claims,
    peer: SocketAddr,
    action: &str,
    mut detail: serde_json::Value,
) -> Result<gatehouse_policies::Decision, Response> {
    let decision = web.access.policies.authorize(&AccessRequest {
        user: claims.sub.clone(),
        groups: claims.groups.clone(),
        action: Action::ReadAudit,
        resource: ResourceAttrs {
            name: "audit-log".into(),
            protocol: "audit".into(),
            env: String::new(),
            data_class: "restricted".into(),
            tags: Default::default(),
        },
        context: RequestContext::new(
            peer.ip(),
            claims.auth_method(),
            claims.mfa,
            time::OffsetDateTime::now_utc().hour(),
        ),
    });
    if decision.allowed {
        return Ok(decision);
    }
    let mut e = NewEvent::new(EventKind::AuditRead);
    e.actor = claims.sub.clone();
    e.resource = "audit-log".into();
    e.action = action.into();
    e.decision = "deny".into();
    e.reason = decision.reason.clone();
    e.policy_ids = decision.policy_ids.clone();
    e.controls = decision.controls.clone();
    detail["client_addr"] = json!(peer.to_string());
    e.detail = detail;
    let _ = web.audit.record_durable(e).await;
    Err(error(
        StatusCode::FORBIDDEN,
        "forbidden",
        &format!(
            "reading the audit log is not permitted for {} ({})",
            claims.sub, decision.reason
        ),
    ))
}

/// `GET /api/v1/audit/events`
pub async fn events(
    State(web): State<std::sync::Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let claims = match authenticate(&web, &headers, peer, "audit.read").await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "unknown or malformed query parameter (from, to, kind, actor, resource, control, session, after, limit)",
        );
    };
    let filters = [&q.kind, &q.actor, &q.resource, &q.control, &q.session];
    if filters.iter().any(|f| {
        f.as_ref()
            .is_some_and(|s| s.len() > FILTER_MAX || s.chars().any(char::is_control))
    }) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a filter is too long or holds control characters",
        );
    }
    let (from, to) = match (ts("from", &q.from), ts("to", &q.to)) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, "bad_request", &e),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let filter_detail = json!({
        "from": from, "to": to, "kind": q.kind, "actor": q.actor, "resource": q.resource,
        "control": q.control, "session": q.session, "after": q.after, "limit": limit,
    });

    let decision = match authorize_read(
        &web,
        &claims,
        peer,
        "read",
        json!({ "filters": filter_detail.clone() }),
    )
    .await
    {
        Ok(d) => d,
        Err(r) => return r,
    };
    let mut e = NewEvent::new(EventKind::AuditRead);
    e.actor = claims.sub.clone();
    e.resource = "audit-log".into();
    e.action = "read".into();
    e.policy_ids = decision.policy_ids.clone();
    e.controls = decision.controls.clone();

    let mut out = Vec::new();
    let mut after = q.after.unwrap_or(0);
    let mut scanned = 0u32;
    let mut exhausted = false;
    while out.len() < limit && scanned < SCAN_MAX {
        let page = match web
            .store
            .audit_events(after, PAGE, from.as_deref(), to.as_deref())
            .await
        {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the audit log for an auditor");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the audit log cannot be read now",
                );
            }
        };
        if page.is_empty() {
            exhausted = true;
            break;
        }
        let full = page.len() as u32 == PAGE;
        for ev in page {
            scanned += 1;
            after = ev.seq;
            let keep = q.kind.as_ref().is_none_or(|k| *k == ev.kind)
                && q.actor.as_ref().is_none_or(|a| *a == ev.actor)
                && q.resource.as_ref().is_none_or(|r| *r == ev.resource)
                && q.session.as_ref().is_none_or(|s| *s == ev.session_id)
                && q.control.as_ref().is_none_or(|c| ev.controls.contains(c));
            if keep {
                out.push(event_line(&ev));
                if out.len() == limit {
                    break;
                }
            }
        }
        if !full && out.len() < limit {
            exhausted = true;
            break;
        }
    }
    let next = if exhausted { None } else { Some(after) };
    e.decision = "allow".into();
    e.detail = json!({
        "filters": filter_detail,
        "returned": out.len(),
        "first_seq": out.first().and_then(|v| v["seq"].as_u64()),
        "last_seq": out.last().and_then(|v| v["seq"].as_u64()),
        "client_addr": peer.to_string(),
    });
    // The read is on record before anything is handed out (5.33); no record, no answer.
    if web.audit.record_durable(e).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the read cannot be recorded, so it is refused",
        );
    }
    Json(json!({ "events": out, "next": next })).into_response()
}
