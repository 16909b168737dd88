//! Reloading the policy set while the gateway runs, on `gatehouse policy reload` (a request row
//! in the store, so every gateway on the store reloads) or SIGHUP. A set that does not load or
//! whose tests fail is refused and the set in use stays; live sessions are never touched (a
//! decision is taken when a session opens). Every attempt is a `policy.changed` event: the
//! set's hash before and after, the diff by policy id, who asked and who approved, the tests.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authz::Policies;
use crate::store::Store;

/// How often the store is asked for new reload requests.
const POLL: Duration = Duration::from_millis(500);

/// Reloads `policies` from `dir`, and records the outcome. `by` is who asked (the request's
/// operator object, or the signal).
pub async fn reload(
    policies: &Policies,
    dir: &std::path::Path,
    audit: &AuditLog,
    request_id: Option<i64>,
    by: Value,
) {
    let actor = by
        .get("by")
        .and_then(Value::as_str)
        .unwrap_or("SIGHUP")
        .to_string();
    let approved_by = by.get("approved_by").cloned().unwrap_or(Value::Null);
    let before = policies.current().sha256.clone();
    let mut e = NewEvent::new(EventKind::PolicyChanged);
    e.actor = actor.clone();
    e.action = "reload".into();
    match policies.reload(dir) {
        Ok((old, diff, new)) => {
            e.decision = if diff.is_empty() && old == new.sha256 {
                "unchanged"
            } else {
                "applied"
            }
            .into();
            e.detail = json!({
                "request_id": request_id,
                "requested_by": by,
                "approved_by": approved_by,
                "previous_sha256": old,
                "sha256": new.sha256,
                "added": diff.added,
                "removed": diff.removed,
                "changed": diff.changed,
                "policies": new.engine.policies().len(),
                "tests_passed": new.tests,
            });
            info!(by = %actor, added = diff.added.len(), removed = diff.removed.len(), changed = diff.changed.len(), sha256 = %new.sha256, "policies reloaded");
        }
        Err(err) => {
            e.decision = "refused".into();
            e.reason = err.to_string();
            e.detail = json!({
                "request_id": request_id,
                "requested_by": by,
                "approved_by": approved_by,
                "previous_sha256": before,
                "sha256": crate::authz::policy_set_sha256(dir).unwrap_or_default(),
            });
            warn!(by = %actor, error = %err, "policy reload refused; the policies in use stay");
        }
    }
    if let Err(err) = audit.record_durable(e).await {
        warn!(error = %err, "cannot record a policy reload");
    }
}

/// Acts on reload requests in the store and on SIGHUP until the process ends.
pub async fn watch(store: Store, policies: Policies, dir: PathBuf, audit: AuditLog) {
    // Requests from before this start are already in effect: act on the ones after them. Until
    // the store says where that is, ask again every tick.
    let mut last: Option<i64> = match store.last_policy_reload().await {
        Ok(id) => Some(id),
        Err(e) => {
            warn!(error = %e, "cannot read policy reload requests yet; retrying");
            None
        }
    };
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hupped = async {
            match hup.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hupped = std::future::pending::<Option<()>>();
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = hupped => {
                reload(&policies, &dir, &audit, None, json!({ "signal": "SIGHUP" })).await;
                continue;
            }
        }
        let Some(after) = last else {
            last = store.last_policy_reload().await.ok();
            continue;
        };
        match store.policy_reloads_after(after).await {
            Ok(reqs) => {
                for (id, by) in reqs {
                    let by: Value = serde_json::from_str(&by).unwrap_or(Value::Null);
                    reload(&policies, &dir, &audit, Some(id), by).await;
                    last = Some(id);
                }
            }
            Err(e) => warn!(error = %e, "cannot read policy reload requests"),
        }
    }
}
