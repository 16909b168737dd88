//! [`watch_grants`]: every [`GRANT_POLL`], cuts the sessions whose grant expired or was
//! revoked, and records each grant's end once; [`record_cuts`] audits the cut sessions.

use std::time::Duration;

use serde_json::json;
use tracing::{info, warn};

use super::webhook::Webhook;
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::token::unix_now;
use crate::registry::Registry;
use crate::store::Store;

/// What a session cut by the revocation of grant `id` is told, the same whichever gateway
/// process (the revoking request or a watch reading the store) cuts it.
pub(super) fn revocation_message(id: i64, by: &str, reason: &str) -> String {
    if reason.is_empty() {
        format!("access revoked: grant {id} revoked by {by}")
    } else {
        format!("access revoked: grant {id} revoked by {by}: {reason}")
    }
}

pub(super) async fn record_cuts(audit: &AuditLog, cut: &[crate::registry::CutSession], why: &str) {
    for s in cut {
        let mut e = NewEvent::new(EventKind::SessionCut);
        e.actor = s.user.clone();
        e.resource = s.resource.clone();
        e.action = "cut".into();
        e.session_id = s.id.to_string();
        e.reason = why.to_string();
        e.detail = json!({ "grant_id": s.grant });
        let _ = audit.record(e).await;
    }
}

/// How often grants are checked.
pub const GRANT_POLL: Duration = Duration::from_millis(200);

/// Ends sessions whose grant expired (from the registry's own clock, no store round trip) or
/// was revoked anywhere (from the store), and records each grant's end once.
pub async fn watch_grants(store: Store, registry: Registry, audit: AuditLog, webhook: Webhook) {
    let mut tick = tokio::time::interval(GRANT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tick.tick().await;
        rounds += 1;
        let now = unix_now() as i64;
        let expired = registry.cut_expired_grants(now);
        if !expired.is_empty() {
            for s in &expired {
                info!(session.id = %s.id, grant = ?s.grant, "grant expired: session cut");
            }
            record_cuts(&audit, &expired, "grant expired").await;
        }
        let live = registry.live_grants();
        if !live.is_empty() {
            match store.revoked_unexpired_grants(now).await {
                Ok(revoked) => {
                    for (id, by, reason) in revoked.into_iter().filter(|r| live.contains(&r.0)) {
                        let why = revocation_message(id, &by, &reason);
                        let cut = registry.cut_grant(id, &why);
                        record_cuts(&audit, &cut, &why).await;
                    }
                }
                Err(e) => warn!(error = %e, "cannot read revoked grants"),
            }
        }
        // Grant ends are recorded at most every second.
        if rounds.is_multiple_of(5) {
            match store.ended_unrecorded_grants(now).await {
                Ok(ended) => {
                    for g in ended {
                        match store.claim_grant_end(g.id).await {
                            Ok(true) => {
                                let how = if g.revoked_at.is_some() {
                                    "revoked"
                                } else {
                                    "expired"
                                };
                                let mut e = NewEvent::new(EventKind::GrantEnd);
                                e.actor = g.grantee.clone();
                                e.resource = g.resource.clone();
                                e.action = "end".into();
                                e.reason = how.into();
                                e.detail = json!({ "grant_id": g.id, "role": g.role, "expires": g.expires, "source": g.source });
                                let _ = audit.record(e).await;
                                webhook.notify(
                                    "grant.end",
                                    format!(
                                        ":hourglass: grant {} ended ({how}): {} no longer has `{}` on `{}`",
                                        g.id, g.grantee, g.role, g.resource
                                    ),
                                    json!({ "grant_id": g.id, "how": how }),
                                );
                            }
                            Ok(false) => {}
                            Err(e) => warn!(error = %e, "cannot record a grant's end"),
                        }
                    }
                }
                Err(e) => warn!(error = %e, "cannot read ended grants"),
            }
        }
    }
}
