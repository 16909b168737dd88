//! Grants made and taken away by hand: [`Access::direct_grant`] (by someone who may approve,
//! never to themselves, and never more than the grantee could have requested:
//! `direct_grant_within_policy`) and [`Access::revoke`] (its live sessions are cut at once).

use std::time::Duration;

use gatehouse_policies::Action;
use serde_json::json;

use super::watch::record_cuts;
use super::{grant_json, human_duration, ticket, ts_of, Access, AccessError, Caller};
use crate::audit::{EventKind, NewEvent};
use crate::authn::token::unix_now;
use crate::config::Resource;
use crate::store::access::NewGrant;

impl Access {
    /// A grant made directly by someone who may approve it; audited like an approval.
    pub async fn direct_grant(
        &self,
        caller: &Caller,
        user: &str,
        resource: &str,
        role: &str,
        duration: Duration,
        reason: &str,
    ) -> Result<serde_json::Value, AccessError> {
        let detail = json!({ "grantee": user, "role": role, "duration_secs": duration.as_secs() });
        let checks = self
            .resource(resource, role)
            .cloned()
            .and_then(|r| self.check_text("reason", reason, true).map(|_| r))
            .and_then(|r| {
                if crate::authn::oidc::valid_username(user) {
                    Ok(r)
                } else {
                    Err(AccessError::BadRequest(format!(
                        "`{user}` is not a user name"
                    )))
                }
            })
            .and_then(|r| {
                if duration.is_zero() || duration > self.config.access.max_duration {
                    Err(AccessError::BadRequest(format!(
                        "the duration must be between 1s and {}",
                        human_duration(self.config.access.max_duration.as_secs())
                    )))
                } else {
                    Ok(r)
                }
            });
        let r = match checks {
            Ok(r) => r,
            Err(e) => return Err(self.refuse(caller, "grant", resource, e, detail).await),
        };
        if caller.user == user {
            let e = AccessError::Forbidden(format!("{user} cannot grant access to themselves"));
            return Err(self.refuse(caller, "grant", resource, e, detail).await);
        }
        let decision = self.cedar(caller, Action::Approve, &r, role, duration.as_secs(), user);
        if !decision.allowed {
            let e = AccessError::Forbidden(format!(
                "policy does not let {} grant `{role}` on `{resource}`: {}",
                caller.user, decision.reason
            ));
            return Err(self
                .refuse_by_policy(caller, "grant", resource, e, detail, &decision)
                .await);
        }
        if let Err(e) = self
            .direct_grant_within_policy(caller, user, &r, role, duration)
            .await
        {
            return Err(self.refuse(caller, "grant", resource, e, detail).await);
        }
        let now = unix_now() as i64;
        let ts = crate::audit::event::now_ts();
        let expires_unix = now + duration.as_secs() as i64;
        let g = self
            .store
            .create_grant(&NewGrant {
                grantee: user.to_string(),
                resource: r.name.clone(),
                role: role.to_string(),
                starts: ts,
                expires: ts_of(expires_unix),
                expires_unix,
                source: "direct".into(),
                request_id: None,
                granted_by: caller.user.clone(),
                reason: reason.to_string(),
            })
            .await?;
        let mut controls = vec!["5.3".to_string()];
        if ticket(reason).is_some() {
            controls.push("8.32".into());
        }
        self.grant_started(&g, &caller.user, controls).await?;
        self.webhook.notify(
            "grant.start",
            format!(
                ":unlock: {} granted {} `{role}` on `{}` until {}: {reason}",
                caller.user, user, r.name, g.expires
            ),
            json!({ "grant_id": g.id, "user": user, "resource": r.name, "role": role }),
        );
        Ok(json!({ "grant": grant_json(&g) }))
    }

    /// A direct grant gives no more than the request it stands in for could: the request
    /// policy, evaluated for the grantee (with the groups of their last sign-in), must allow
    /// the role with at most one approval and for at least `duration`. And two people cannot
    /// grant each other: a grant to someone who holds a live direct grant from the grantee on
    /// the same resource needs a third person.
    async fn direct_grant_within_policy(
        &self,
        caller: &Caller,
        grantee: &str,
        r: &Resource,
        role: &str,
        duration: Duration,
    ) -> Result<(), AccessError> {
        let groups = self
            .store
            .user(grantee)
            .await?
            .map(|u| u.last_groups)
            .unwrap_or_default();
        // What the request policy asks of approvals and duration; the grantee's own sign-in
        // (MFA, source) is checked by `connect` when they use the grant.
        let as_grantee = Caller {
            user: grantee.to_string(),
            groups,
            mfa: true,
            auth_method: "oidc".into(),
            ip: caller.ip,
        };
        let request = self.cedar(
            &as_grantee,
            Action::Request,
            r,
            role,
            duration.as_secs(),
            "",
        );
        if !request.allowed {
            return Err(AccessError::Forbidden(format!(
                "{grantee} could not request `{role}` on `{}` ({}); a direct grant gives no more than a request",
                r.name, request.reason
            )));
        }
        if request.approvals_required > 1 {
            return Err(AccessError::Forbidden(format!(
                "`{role}` on `{}` needs {} approvals; {grantee} should `gatehouse request` it and approvers approve",
                r.name, request.approvals_required
            )));
        }
        if let Some(max) = request.max_duration_secs {
            if duration.as_secs() > max {
                return Err(AccessError::BadRequest(format!(
                    "policy allows at most {} for `{role}` on `{}` (asked {})",
                    human_duration(max),
                    r.name,
                    human_duration(duration.as_secs())
                )));
            }
        }
        let now = unix_now() as i64;
        let reciprocal = self.store.grants(Some(now)).await?.into_iter().find(|g| {
            g.source == "direct"
                && g.grantee == caller.user
                && g.granted_by == grantee
                && g.resource == r.name
        });
        if let Some(g) = reciprocal {
            return Err(AccessError::Forbidden(format!(
                "{grantee} granted {} access to `{}` (grant {}); granting back needs a third person",
                caller.user, r.name, g.id
            )));
        }
        Ok(())
    }

    /// Revokes grant `id`: its live sessions end within a second.
    pub async fn revoke(
        &self,
        caller: &Caller,
        id: i64,
        reason: &str,
    ) -> Result<serde_json::Value, AccessError> {
        self.check_text("reason", reason, false)?;
        let g = self
            .store
            .grant(id)
            .await?
            .ok_or_else(|| AccessError::NotFound(format!("no grant {id}")))?;
        // The grantee may give access back; anyone else needs the right to approve it.
        if caller.user != g.grantee {
            let r = self.config.resource(&g.resource).cloned();
            let allowed = r.is_some_and(|r| {
                self.cedar(caller, Action::Approve, &r, &g.role, 0, &g.grantee)
                    .allowed
            });
            if !allowed {
                let e = AccessError::Forbidden(format!(
                    "policy does not let {} revoke grant {id}",
                    caller.user
                ));
                let detail = json!({ "grant_id": id });
                return Err(self.refuse(caller, "revoke", &g.resource, e, detail).await);
            }
        }
        self.end_grant(caller, id, reason, &g.resource).await
    }

    /// Revokes grant `id` for `caller`, who was found allowed to: the store, the event, the
    /// live sessions under it cut, the webhook.
    pub(crate) async fn end_grant(
        &self,
        caller: &Caller,
        id: i64,
        reason: &str,
        resource: &str,
    ) -> Result<serde_json::Value, AccessError> {
        let now = unix_now() as i64;
        let ts = crate::audit::event::now_ts();
        let why = super::watch::revocation_message(id, &caller.user, reason);
        // Cut first: the grant watch reads revocations from the store and would otherwise cut
        // these sessions itself between the commit and here, leaving this answer to count none.
        // A session under a grant that turns out to have ended already is cut rightly too.
        let cut = self.registry.cut_grant(id, &why);
        let revoked = self
            .store
            .revoke_grant(id, &caller.user, reason, &ts, now)
            .await;
        let g = match revoked {
            Ok(Some(g)) => g,
            Ok(None) => {
                record_cuts(&self.audit, &cut, &why).await;
                let e = AccessError::Conflict(format!("grant {id} has already ended"));
                let detail = json!({ "grant_id": id });
                return Err(self.refuse(caller, "revoke", resource, e, detail).await);
            }
            Err(e) => {
                record_cuts(&self.audit, &cut, &why).await;
                return Err(e.into());
            }
        };
        let mut e = NewEvent::new(EventKind::GrantRevoked);
        e.actor = caller.user.clone();
        e.resource = g.resource.clone();
        e.action = "revoke".into();
        e.reason = reason.to_string();
        e.detail = json!({ "grant_id": id, "grantee": g.grantee, "role": g.role });
        self.record(e).await?;
        record_cuts(&self.audit, &cut, &why).await;
        self.webhook.notify(
            "grant.revoked",
            format!(
                ":lock: {} revoked grant {id} ({} `{}` on `{}`)",
                caller.user, g.grantee, g.role, g.resource
            ),
            json!({ "grant_id": id, "by": caller.user }),
        );
        Ok(json!({ "grant_id": id, "revoked": true, "sessions_cut": cut.len() }))
    }
}
