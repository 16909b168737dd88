//! What the API lists, as JSON: [`Access::resources`] (what the caller can reach and
//! request), [`Access::requests`], [`Access::grants`], [`Access::reviews`], and
//! [`grant_json`], a grant as every answer shows it.
//!
//! Each caller sees only their own: a request is shown to its requester and to those the
//! `approve` policy lets decide on it; a grant or a review to its subject and to those who may
//! approve that role on that resource. Reasons and tickets of other people's access are not
//! for every signed-in user.

use gatehouse_policies::Action;
use serde_json::json;

use super::{Access, AccessError, Caller};
use crate::authn::token::unix_now;
use crate::store::access::GrantRow;

impl Access {
    /// What `caller` can reach now and what they could request.
    pub async fn resources(&self, caller: &Caller) -> Result<serde_json::Value, AccessError> {
        let now = unix_now() as i64;
        let grants = self.store.grants(Some(now)).await?;
        let mut out = Vec::new();
        for r in &self.config.resources {
            let mut roles = Vec::new();
            for role in &r.role_names {
                let grant = grants
                    .iter()
                    .find(|g| g.grantee == caller.user && g.resource == r.name && &g.role == role);
                let connect =
                    self.cedar_with(caller, Action::Connect, r, role, 0, "", grant.is_some());
                let request = self.cedar(caller, Action::Request, r, role, 0, "");
                roles.push(json!({
                    "role": role,
                    "can_connect": connect.allowed,
                    "grant": grant.map(grant_json),
                    "can_request": request.allowed,
                    "approvals_required": request.approvals_required,
                    "max_duration_secs": request.max_duration_secs,
                }));
            }
            out.push(json!({
                "name": r.name,
                "kind": r.kind().as_str(),
                "env": r.env,
                "data_class": r.data_class,
                "roles": roles,
            }));
        }
        Ok(json!({ "resources": out }))
    }

    /// Requests with their approvals: pending ones (for approvers), or the caller's own.
    pub async fn requests(
        &self,
        caller: &Caller,
        pending: bool,
    ) -> Result<serde_json::Value, AccessError> {
        let rows = if pending {
            self.store.requests(true, None, 200).await?
        } else {
            self.store.requests(false, Some(&caller.user), 200).await?
        };
        let mut out = Vec::new();
        for r in rows {
            if r.requester != caller.user
                && !self.may_see(caller, &r.resource, &r.role, &r.requester, r.duration_secs)
            {
                continue;
            }
            let approvals = self.store.approvals(r.id).await?;
            out.push(json!({
                "id": r.id,
                "requester": r.requester,
                "resource": r.resource,
                "role": r.role,
                "duration_secs": r.duration_secs,
                "reason": r.reason,
                "ticket": r.ticket,
                "break_glass": r.break_glass,
                "state": r.state,
                "approvals_required": r.approvals_required,
                "approvals": approvals.iter().map(|a| json!({"approver": a.approver, "decision": a.decision, "comment": a.comment, "ts": a.ts})).collect::<Vec<_>>(),
                "created": r.created,
                "grant_id": r.grant_id,
            }));
        }
        Ok(json!({ "requests": out }))
    }

    pub async fn grants(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<serde_json::Value, AccessError> {
        let now = unix_now() as i64;
        let rows = self
            .store
            .grants(if all { None } else { Some(now) })
            .await?;
        let visible = rows.iter().filter(|g| {
            g.grantee == caller.user || self.may_see(caller, &g.resource, &g.role, &g.grantee, 0)
        });
        Ok(json!({ "grants": visible.map(grant_json).collect::<Vec<_>>() }))
    }

    pub async fn reviews(
        &self,
        caller: &Caller,
        all: bool,
    ) -> Result<serde_json::Value, AccessError> {
        let rows = self.store.reviews(!all).await?;
        let mut visible = Vec::new();
        for r in rows {
            let shown = r.subject == caller.user
                || match self.store.grant(r.grant_id).await? {
                    Some(g) => self.may_see(caller, &g.resource, &g.role, &g.grantee, 0),
                    None => false,
                };
            if shown {
                visible.push(r);
            }
        }
        let rows = visible;
        Ok(json!({ "reviews": rows.iter().map(|r| json!({
            "id": r.id, "grant_id": r.grant_id, "request_id": r.request_id, "subject": r.subject,
            "opened": r.opened, "reviewer": r.reviewer, "reviewed_at": r.reviewed_at, "comment": r.comment,
        })).collect::<Vec<_>>() }))
    }
}

impl Access {
    /// Whether `caller` may decide on (and so see) access to `role` on `resource` for
    /// `subject`: the `approve` policy, as for an approval.
    fn may_see(
        &self,
        caller: &Caller,
        resource: &str,
        role: &str,
        subject: &str,
        duration_secs: i64,
    ) -> bool {
        self.config.resource(resource).is_some_and(|r| {
            self.cedar(
                caller,
                Action::Approve,
                r,
                role,
                duration_secs.max(0) as u64,
                subject,
            )
            .allowed
        })
    }
}

pub fn grant_json(g: &GrantRow) -> serde_json::Value {
    json!({
        "id": g.id,
        "user": g.grantee,
        "resource": g.resource,
        "role": g.role,
        "starts": g.starts,
        "expires": g.expires,
        "expires_unix": g.expires_unix,
        "source": g.source,
        "request_id": g.request_id,
        "granted_by": g.granted_by,
        "reason": g.reason,
        "revoked_at": g.revoked_at,
        "revoked_by": g.revoked_by,
    })
}
