//! The audit log in the Open Cybersecurity Schema Framework (OCSF 1.7.0), for SIEMs: one OCSF
//! event per audit event, in the class that fits its kind.
//!
//! | kinds | OCSF class |
//! |---|---|
//! | `login.*`, `auth.failed`, `credential.*` | Authentication 3002 |
//! | `access.decision` | Authorize Session 3003 |
//! | `request.*`, `grant.*`, `breakglass.used`, `review.*` | User Access Management 3005 |
//! | `user.disabled`, `user.enabled` | Account Change 3001 |
//! | `policy.changed`, `keys.rotated`, `agent.*` enrolment, `evidence.bundle` | Entity Management 3004 |
//! | `db.statement` | Datastore Activity 6005 |
//! | `http.refused`, `session.kill`, `audit.read` | API Activity 6003 |
//! | `session.*`, `connection.refused`, `agent.*` links | Network Activity 4001 |
//! | `gateway.start`, `gateway.stop` | Application Lifecycle 6002 |
//! | `audit.foreign_rows`, `agent.event_refused`, `store.capacity` | Detection Finding 2004 |
//!
//! Every event keeps the gateway's own record in `unmapped` (kind, seq, hash, controls,
//! policies, detail) and its seq in `metadata.uid`, so a SIEM finding leads back to the signed
//! log. OCSF lines are not verifiable on their own; the JSONL export is.

use serde_json::{json, Value};

use super::AuditEvent;

const VERSION: &str = "1.7.0";

fn time_ms(ts: &str) -> i64 {
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(0)
}

/// `ip:port` (or `[v6]:port`) as an OCSF endpoint; `None` when there is no address.
fn endpoint(addr: &str) -> Option<Value> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    Some(json!({ "ip": sa.ip().to_string(), "port": sa.port() }))
}

fn user(name: &str) -> Value {
    if name.is_empty() {
        json!({ "name": "unknown", "type_id": 0 })
    } else {
        json!({ "name": name, "type_id": 1 })
    }
}

/// (class_uid, category_uid, activity_id) for a kind.
fn class_of(kind: &str) -> (u32, u32, u32) {
    match kind {
        "login.succeeded" | "login.failed" | "auth.failed" => (3002, 3, 1),
        "credential.issued" => (3002, 3, 4),
        "credential.revoked" => (3002, 3, 2),
        "access.decision" => (3003, 3, 1),
        "request.approved" | "grant.start" | "breakglass.used" => (3005, 3, 1),
        "grant.end" | "grant.revoked" => (3005, 3, 2),
        "request.created"
        | "request.denied"
        | "request.refused"
        | "review.opened"
        | "review.signed"
        | "review.campaign_started" => (3005, 3, 99),
        "review.decision" => (3005, 3, 99),
        "user.disabled" => (3001, 3, 5),
        "user.enabled" => (3001, 3, 2),
        "policy.changed" | "keys.rotated" | "agent.renewed" => (3004, 3, 3),
        "agent.join_token" | "evidence.bundle" => (3004, 3, 1),
        "agent.enrolled" => (3004, 3, 6),
        "agent.enroll_refused" => (3004, 3, 99),
        "agent.revoked" => (3004, 3, 7),
        "db.statement" => (6005, 6, 4),
        "http.refused" => (6003, 6, 99),
        "audit.read" => (6003, 6, 2),
        "session.kill" => (6003, 6, 4),
        "session.start" | "agent.connected" => (4001, 4, 1),
        "session.end" | "session.agent_end" | "agent.disconnected" => (4001, 4, 2),
        "session.cut" => (4001, 4, 3),
        "session.failed" => (4001, 4, 4),
        "connection.refused" | "agent.refused" => (4001, 4, 5),
        "session.cancel" => (4001, 4, 99),
        "gateway.start" => (6002, 6, 3),
        "gateway.stop" => (6002, 6, 4),
        _ => (2004, 2, 1),
    }
}

/// The OCSF event for `e`.
pub fn event(e: &AuditEvent) -> Value {
    let detail: Value = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
    let (class_uid, category_uid, activity_id) = class_of(&e.kind);
    let failed = matches!(e.decision.as_str(), "deny" | "refused" | "broken")
        || matches!(
            e.kind.as_str(),
            "login.failed"
                | "auth.failed"
                | "connection.refused"
                | "session.failed"
                | "agent.refused"
                | "agent.enroll_refused"
                | "http.refused"
                | "request.refused"
        );
    let severity_id = match (class_uid, failed) {
        (2004, _) => 4,
        (_, true) => 3,
        _ => 1,
    };
    let client = detail
        .get("client_addr")
        .and_then(Value::as_str)
        .and_then(endpoint);
    let src = client
        .clone()
        .unwrap_or_else(|| json!({ "name": "gatehouse" }));
    let mut v = json!({
        "class_uid": class_uid,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "time": time_ms(&e.ts),
        "severity_id": severity_id,
        "status_id": if failed { 2 } else { 1 },
        "message": if e.reason.is_empty() { format!("{} {}", e.kind, e.decision) } else { e.reason.clone() },
        "metadata": {
            "version": VERSION,
            "uid": e.seq.to_string(),
            "log_name": "gatehouse-audit",
            "original_time": e.ts,
            "correlation_uid": if e.session_id.is_empty() { Value::Null } else { json!(e.session_id) },
            "product": { "name": "Gatehouse", "vendor_name": "Gatehouse", "version": env!("CARGO_PKG_VERSION") },
        },
        "unmapped": {
            "kind": e.kind,
            "seq": e.seq,
            "hash": e.hash,
            "prev_hash": e.prev_hash,
            "controls": e.controls,
            "policy_ids": e.policy_ids,
            "action": e.action,
            "decision": e.decision,
            "resource": e.resource,
            "detail": detail,
        },
    });
    if v["metadata"]["correlation_uid"].is_null() {
        if let Some(m) = v["metadata"].as_object_mut() {
            m.remove("correlation_uid");
        }
    }
    let actor_user = user(&e.actor);
    let set = |v: &mut Value, k: &str, x: Value| v[k] = x;
    match class_uid {
        3002 => {
            set(&mut v, "user", actor_user);
            if let Some(c) = client {
                set(&mut v, "src_endpoint", c);
            }
            if let Some(m) = detail.get("mfa").and_then(Value::as_bool) {
                set(&mut v, "is_mfa", json!(m));
            }
        }
        3003 => {
            set(&mut v, "user", actor_user);
            let groups: Vec<Value> = detail
                .get("groups")
                .and_then(Value::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .map(|n| json!({ "name": n }))
                        .collect()
                })
                .unwrap_or_default();
            if !groups.is_empty() {
                set(&mut v, "groups", json!(groups));
            }
            if let Some(c) = client {
                set(&mut v, "src_endpoint", c);
            }
            let role = detail.get("role").and_then(Value::as_str).unwrap_or("read");
            set(&mut v, "privileges", json!([role]));
        }
        3005 => {
            let grantee = detail
                .get("grantee")
                .or_else(|| detail.get("requester"))
                .or_else(|| detail.get("subject"))
                .and_then(Value::as_str)
                .unwrap_or(&e.actor);
            set(&mut v, "user", user(grantee));
            set(&mut v, "actor", json!({ "user": actor_user }));
            let role = detail.get("role").and_then(Value::as_str).unwrap_or("read");
            set(&mut v, "privileges", json!([role]));
            if !e.resource.is_empty() {
                set(
                    &mut v,
                    "resource",
                    json!({ "name": e.resource, "type": "resource" }),
                );
            }
        }
        3001 => {
            set(&mut v, "user", user(&e.resource));
            set(&mut v, "actor", json!({ "user": actor_user }));
        }
        3004 => {
            let (name, ty) = match e.kind.as_str() {
                "policy.changed" => (
                    detail
                        .get("sha256")
                        .and_then(Value::as_str)
                        .unwrap_or("policy set")
                        .to_string(),
                    "policy_set",
                ),
                "keys.rotated" => ("token signing key".to_string(), "key"),
                "evidence.bundle" => (
                    detail
                        .get("out")
                        .and_then(Value::as_str)
                        .unwrap_or("bundle")
                        .to_string(),
                    "evidence_bundle",
                ),
                _ => (e.resource.clone(), "agent"),
            };
            set(&mut v, "entity", json!({ "name": name, "type": ty }));
            set(&mut v, "actor", json!({ "user": actor_user }));
        }
        6005 => {
            set(&mut v, "actor", json!({ "user": actor_user }));
            set(&mut v, "src_endpoint", src);
            let sql = detail
                .get("statement")
                .and_then(Value::as_str)
                .unwrap_or("");
            set(&mut v, "query_info", json!({ "query_string": sql }));
            set(
                &mut v,
                "database",
                json!({ "name": e.resource, "type_id": 99, "type": "PostgreSQL" }),
            );
        }
        6003 => {
            set(&mut v, "actor", json!({ "user": actor_user }));
            set(&mut v, "src_endpoint", src);
            set(
                &mut v,
                "api",
                json!({ "operation": if e.action.is_empty() { e.kind.clone() } else { e.action.clone() } }),
            );
        }
        4001 => {
            if let Some(c) = client {
                set(&mut v, "src_endpoint", c);
            }
            if !e.resource.is_empty() {
                set(&mut v, "dst_endpoint", json!({ "name": e.resource }));
            }
            if !e.actor.is_empty() {
                set(&mut v, "actor", json!({ "user": actor_user }));
            }
        }
        6002 => {
            set(
                &mut v,
                "app",
                json!({ "name": "gatehouse", "vendor_name": "Gatehouse", "version": env!("CARGO_PKG_VERSION") }),
            );
        }
        _ => {
            set(
                &mut v,
                "finding_info",
                json!({ "uid": format!("gatehouse-{}", e.seq), "title": format!("{}: {}", e.kind, e.reason) }),
            );
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::EventKind;

    #[test]
    fn every_kind_has_a_class_and_failures_are_failures() {
        for k in EventKind::ALL {
            let (class, cat, act) = class_of(k.as_str());
            assert_eq!(class / 1000, cat, "{}", k.as_str());
            assert!(act >= 1, "{}", k.as_str());
        }
        assert_eq!(class_of("db.statement"), (6005, 6, 4));
        assert_eq!(class_of("access.decision").0, 3003);
        let mut e = crate::audit::NewEvent::new(EventKind::AuthFailed);
        e.actor = "mallory".into();
        e.decision = "deny".into();
        e.detail = json!({ "client_addr": "10.1.2.3:5555" });
        let ev = event(&e.seal(7, "2026-12-03T10:00:00.000000Z".into(), "x".into()));
        assert_eq!(ev["status_id"], 2);
        assert_eq!(ev["type_uid"], 300201);
        assert_eq!(ev["src_endpoint"]["ip"], "10.1.2.3");
        assert_eq!(ev["metadata"]["uid"], "7");
        assert_eq!(ev["time"], 1_796_292_000_000i64);
    }
}
