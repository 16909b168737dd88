//! Break-glass: access taken at once where policy allows it (`break_glass`), with a review
//! item opened in the same transaction, and [`Access::sign_off`] of that review by someone
//! other than the person whose access it was.

use std::time::Duration;

use gatehouse_policies::{Action, Decision};
use serde_json::json;

use super::{grant_json, human_duration, ts_of, Access, AccessError, Caller};
use crate::audit::{EventKind, NewEvent};
use crate::config::Resource;
use crate::store::access::{NewGrant, NewRequest};

impl Access {
    /// The break-glass end of [`Access::request`], once every check passed: the grant starts
    /// now and a review item opens.
    pub(super) async fn take_break_glass(
        &self,
        caller: &Caller,
        r: &Resource,
        duration: Duration,
        decision: &Decision,
        new: &NewRequest,
        controls: Vec<String>,
    ) -> Result<serde_json::Value, AccessError> {
        let (role, reason, ticket) = (new.role.as_str(), new.reason.as_str(), &new.ticket);
        let (ts, now) = (&new.created, new.created_unix);
        let expires_unix = now + duration.as_secs() as i64;
        let grant = NewGrant {
            grantee: caller.user.clone(),
            resource: r.name.clone(),
            role: role.to_string(),
            starts: ts.clone(),
            expires: ts_of(expires_unix),
            expires_unix,
            source: "break_glass".into(),
            request_id: None,
            granted_by: caller.user.clone(),
            reason: reason.to_string(),
        };
        let (request_id, grant, review) = self.store.break_glass(new, &grant).await?;
        let mut e = NewEvent::new(EventKind::BreakGlass);
        e.actor = caller.user.clone();
        e.resource = r.name.clone();
        e.action = "break_glass".into();
        e.decision = "allow".into();
        e.reason = reason.to_string();
        e.policy_ids = decision.policy_ids.clone();
        e.controls = controls.clone();
        e.detail = json!({ "request_id": request_id, "grant_id": grant.id, "role": role, "expires": grant.expires, "ticket": ticket, "review_id": review });
        self.record(e).await?;
        self.grant_started(&grant, &caller.user, controls).await?;
        let mut e = NewEvent::new(EventKind::ReviewOpened);
        e.actor = caller.user.clone();
        e.resource = r.name.clone();
        e.action = "review".into();
        e.detail = json!({ "review_id": review, "grant_id": grant.id, "request_id": request_id });
        self.record(e).await?;
        self.webhook.notify(
            "breakglass.used",
            format!(
                ":rotating_light: BREAK-GLASS: {} took `{role}` on `{}` for {} ({reason}). Review #{review} is open: `gatehouse review {review} --comment ...`",
                caller.user,
                r.name,
                human_duration(duration.as_secs())
            ),
            json!({ "request_id": request_id, "grant_id": grant.id, "review_id": review, "user": caller.user, "resource": r.name, "role": role }),
        );
        Ok(json!({
            "request_id": request_id,
            "state": "approved",
            "break_glass": true,
            "grant": grant_json(&grant),
            "review_id": review,
        }))
    }

    /// Signs review item `id` off; not by the person whose access it is.
    pub async fn sign_off(
        &self,
        caller: &Caller,
        id: i64,
        comment: &str,
    ) -> Result<serde_json::Value, AccessError> {
        self.check_text("comment", comment, true)?;
        let review = self
            .store
            .review(id)
            .await?
            .ok_or_else(|| AccessError::NotFound(format!("no review item {id}")))?;
        let detail = json!({ "review_id": id, "grant_id": review.grant_id });
        if review.subject == caller.user {
            let e = AccessError::Forbidden(format!(
                "{} cannot review their own break-glass access",
                caller.user
            ));
            return Err(self.refuse(caller, "review", "", e, detail).await);
        }
        let grant = self.store.grant(review.grant_id).await?;
        let resource = grant
            .as_ref()
            .and_then(|g| self.config.resource(&g.resource).cloned());
        let allowed = match (&grant, &resource) {
            (Some(g), Some(r)) => {
                self.cedar(caller, Action::Approve, r, &g.role, 0, &g.grantee)
                    .allowed
            }
            _ => false,
        };
        let resource_name = grant.map(|g| g.resource).unwrap_or_default();
        if !allowed {
            let e = AccessError::Forbidden(format!(
                "policy does not let {} review access to `{resource_name}`",
                caller.user
            ));
            return Err(self
                .refuse(caller, "review", &resource_name, e, detail)
                .await);
        }
        let ts = crate::audit::event::now_ts();
        if !self
            .store
            .sign_off_review(id, &caller.user, comment, &ts)
            .await?
        {
            let e = AccessError::Conflict(format!("review item {id} is already signed off"));
            return Err(self
                .refuse(caller, "review", &resource_name, e, detail)
                .await);
        }
        let mut e = NewEvent::new(EventKind::ReviewSigned);
        e.actor = caller.user.clone();
        e.resource = resource_name;
        e.action = "review".into();
        e.reason = comment.to_string();
        e.detail =
            json!({ "review_id": id, "grant_id": review.grant_id, "subject": review.subject });
        self.record(e).await?;
        self.webhook.notify(
            "review.signed",
            format!(
                ":memo: {} signed off review #{id} of {}'s break-glass access: {comment}",
                caller.user, review.subject
            ),
            json!({ "review_id": id, "by": caller.user }),
        );
        Ok(json!({ "review_id": id, "signed_off": true }))
    }
}
