//! Requests and the decisions on them: [`Access::request`] (rate limit, Cedar `request` /
//! `break_glass`, the policy's longest duration; break-glass hands over to
//! [`break_glass`](super::break_glass)), [`Access::approve`] (the N-th distinct approval creates
//! the grant) and [`Access::deny`]; neither by the requester, and one person counts once.

use std::time::Duration;

use gatehouse_policies::Action;
use serde_json::json;

use super::{grant_json, human_duration, ticket, ts_of, Access, AccessError, Caller};
use crate::audit::{EventKind, NewEvent};
use crate::authn::token::unix_now;
use crate::store::access::{Approval, NewGrant, NewRequest, RequestRow};

impl Access {
    /// Creates a request (or, with `break_glass`, takes access at once where policy allows).
    pub async fn request(
        &self,
        caller: &Caller,
        resource: &str,
        role: &str,
        duration: Duration,
        reason: &str,
        break_glass: bool,
    ) -> Result<serde_json::Value, AccessError> {
        let action_name = if break_glass {
            "break_glass"
        } else {
            "request"
        };
        let detail = json!({ "role": role, "duration_secs": duration.as_secs(), "reason": reason, "break_glass": break_glass });
        let r = match self
            .resource(resource, role)
            .and_then(|r| self.check_text("reason", reason, true).map(|_| r))
        {
            Ok(r) => r.clone(),
            Err(e) => return Err(self.refuse(caller, action_name, resource, e, detail).await),
        };
        if duration.is_zero() || duration > self.config.access.max_duration {
            let e = AccessError::BadRequest(format!(
                "the duration must be between 1s and {} (access.max_duration)",
                human_duration(self.config.access.max_duration.as_secs())
            ));
            return Err(self.refuse(caller, action_name, resource, e, detail).await);
        }
        let now = unix_now() as i64;
        let recent = self.store.requests_since(&caller.user, now - 3600).await?;
        if recent >= self.config.access.requests_per_hour as i64 {
            let e = AccessError::RateLimited(format!(
                "{} requests in the last hour; the limit is {} (access.requests_per_hour)",
                recent, self.config.access.requests_per_hour
            ));
            return Err(self.refuse(caller, action_name, resource, e, detail).await);
        }
        let action = if break_glass {
            Action::BreakGlass
        } else {
            Action::Request
        };
        let decision = self.cedar(caller, action, &r, role, duration.as_secs(), "");
        if !decision.allowed {
            let e = AccessError::Forbidden(format!(
                "policy does not let {} {action_name} `{role}` on `{resource}`: {}",
                caller.user, decision.reason
            ));
            return Err(self
                .refuse_by_policy(caller, action_name, resource, e, detail, &decision)
                .await);
        }
        if let Some(max) = decision.max_duration_secs {
            if duration.as_secs() > max {
                let e = AccessError::BadRequest(format!(
                    "policy allows at most {} for `{role}` on `{resource}` (asked {})",
                    human_duration(max),
                    human_duration(duration.as_secs())
                ));
                return Err(self.refuse(caller, action_name, resource, e, detail).await);
            }
        }
        let ticket = ticket(reason);
        let ts = crate::audit::event::now_ts();
        let new = NewRequest {
            requester: caller.user.clone(),
            resource: r.name.clone(),
            role: role.to_string(),
            duration_secs: duration.as_secs() as i64,
            reason: reason.to_string(),
            ticket: ticket.clone(),
            break_glass,
            approvals_required: i64::from(decision.approvals_required.max(1)),
            created: ts.clone(),
            created_unix: now,
        };
        let mut controls = decision.controls.clone();
        if ticket.is_some() {
            controls.push("8.32".into());
        }
        if break_glass {
            return self
                .take_break_glass(caller, &r, duration, &decision, &new, controls)
                .await;
        }
        let id = self.store.create_request(&new).await?;
        let mut e = NewEvent::new(EventKind::RequestCreated);
        e.actor = caller.user.clone();
        e.resource = r.name.clone();
        e.action = "request".into();
        e.decision = "pending".into();
        e.reason = reason.to_string();
        e.policy_ids = decision.policy_ids.clone();
        e.controls = controls;
        e.detail = json!({ "request_id": id, "role": role, "duration_secs": duration.as_secs(), "approvals_required": new.approvals_required, "ticket": ticket });
        self.record(e).await?;
        self.webhook.notify(
            "request.created",
            format!(
                ":key: {} requests `{role}` on `{}` for {}: {reason} (needs {} approval{}). `gatehouse approve {id}`",
                caller.user,
                r.name,
                human_duration(duration.as_secs()),
                new.approvals_required,
                if new.approvals_required == 1 { "" } else { "s" }
            ),
            json!({ "request_id": id, "user": caller.user, "resource": r.name, "role": role }),
        );
        Ok(json!({
            "request_id": id,
            "state": "pending",
            "approvals_required": new.approvals_required,
        }))
    }

    /// Checks that `caller` may decide on `req` (not their own; the `approve` policy).
    async fn may_decide(
        &self,
        caller: &Caller,
        req: &RequestRow,
        action: &str,
    ) -> Result<Vec<String>, AccessError> {
        let detail = json!({ "request_id": req.id, "requester": req.requester, "role": req.role });
        if caller.user == req.requester {
            let e = AccessError::Forbidden(format!(
                "{} cannot {action} their own request {}",
                caller.user, req.id
            ));
            return Err(self.refuse(caller, action, &req.resource, e, detail).await);
        }
        let Some(r) = self.config.resource(&req.resource) else {
            let e = AccessError::NotFound(format!("no resource `{}`", req.resource));
            return Err(self.refuse(caller, action, &req.resource, e, detail).await);
        };
        let decision = self.cedar(
            caller,
            Action::Approve,
            r,
            &req.role,
            req.duration_secs.max(0) as u64,
            &req.requester,
        );
        if !decision.allowed {
            let e = AccessError::Forbidden(format!(
                "policy does not let {} approve `{}` on `{}`: {}",
                caller.user, req.role, req.resource, decision.reason
            ));
            return Err(self
                .refuse_by_policy(caller, action, &req.resource, e, detail, &decision)
                .await);
        }
        Ok(decision.policy_ids)
    }

    /// Approves request `id`; the N-th distinct approval creates the grant.
    pub async fn approve(
        &self,
        caller: &Caller,
        id: i64,
        comment: &str,
    ) -> Result<serde_json::Value, AccessError> {
        self.check_text("comment", comment, false)?;
        let req = self
            .store
            .request(id)
            .await?
            .ok_or_else(|| AccessError::NotFound(format!("no request {id}")))?;
        let policy_ids = self.may_decide(caller, &req, "approve").await?;
        let now = unix_now() as i64;
        let ts = crate::audit::event::now_ts();
        let expires_unix = now + req.duration_secs;
        let grant = NewGrant {
            grantee: req.requester.clone(),
            resource: req.resource.clone(),
            role: req.role.clone(),
            starts: ts.clone(),
            expires: ts_of(expires_unix),
            expires_unix,
            source: "request".into(),
            request_id: Some(id),
            granted_by: caller.user.clone(),
            reason: req.reason.clone(),
        };
        let detail = json!({ "request_id": id, "requester": req.requester, "role": req.role, "comment": comment });
        match self
            .store
            .approve(id, &caller.user, comment, &ts, grant)
            .await?
        {
            Approval::NotFound => Err(AccessError::NotFound(format!("no request {id}"))),
            Approval::NotPending(state) => {
                let e = AccessError::Conflict(format!("request {id} is already {state}"));
                Err(self
                    .refuse(caller, "approve", &req.resource, e, detail)
                    .await)
            }
            Approval::Duplicate => {
                let e = AccessError::Conflict(format!(
                    "{} already decided on request {id}; one person counts once",
                    caller.user
                ));
                Err(self
                    .refuse(caller, "approve", &req.resource, e, detail)
                    .await)
            }
            Approval::Counted {
                approvals,
                required,
            } => {
                self.approved_event(caller, &req, comment, &policy_ids, approvals, required)
                    .await?;
                self.webhook.notify(
                    "request.approved",
                    format!(
                        ":white_check_mark: {} approved request {id} ({} `{}` on `{}`): {approvals} of {required}",
                        caller.user, req.requester, req.role, req.resource
                    ),
                    json!({ "request_id": id, "approver": caller.user, "approvals": approvals, "required": required }),
                );
                Ok(
                    json!({ "request_id": id, "state": "pending", "approvals": approvals, "approvals_required": required }),
                )
            }
            Approval::Granted(g) => {
                let required = req.approvals_required;
                self.approved_event(caller, &req, comment, &policy_ids, required, required)
                    .await?;
                let mut controls = vec![];
                if req.ticket.is_some() {
                    controls.push("8.32".to_string());
                }
                self.grant_started(&g, &caller.user, controls).await?;
                self.webhook.notify(
                    "grant.start",
                    format!(
                        ":unlock: {} approved request {id}: {} has `{}` on `{}` until {}",
                        caller.user, g.grantee, g.role, g.resource, g.expires
                    ),
                    json!({ "request_id": id, "grant_id": g.id, "user": g.grantee, "resource": g.resource, "role": g.role, "expires": g.expires }),
                );
                Ok(json!({ "request_id": id, "state": "approved", "grant": grant_json(&g) }))
            }
        }
    }

    async fn approved_event(
        &self,
        caller: &Caller,
        req: &RequestRow,
        comment: &str,
        policy_ids: &[String],
        approvals: i64,
        required: i64,
    ) -> Result<(), AccessError> {
        let mut e = NewEvent::new(EventKind::RequestApproved);
        e.actor = caller.user.clone();
        e.resource = req.resource.clone();
        e.action = "approve".into();
        e.decision = "allow".into();
        e.reason = comment.to_string();
        e.policy_ids = policy_ids.to_vec();
        if req.ticket.is_some() {
            e.controls = vec!["8.32".into()];
        }
        e.detail = json!({ "request_id": req.id, "requester": req.requester, "role": req.role, "approvals": approvals, "approvals_required": required, "ticket": req.ticket });
        self.record(e).await?;
        Ok(())
    }

    /// Denies request `id`.
    pub async fn deny(
        &self,
        caller: &Caller,
        id: i64,
        comment: &str,
    ) -> Result<serde_json::Value, AccessError> {
        self.check_text("comment", comment, false)?;
        let req = self
            .store
            .request(id)
            .await?
            .ok_or_else(|| AccessError::NotFound(format!("no request {id}")))?;
        let policy_ids = self.may_decide(caller, &req, "deny").await?;
        let ts = crate::audit::event::now_ts();
        if let Some(outcome) = self.store.deny(id, &caller.user, comment, &ts).await? {
            let e = match outcome {
                Approval::NotPending(state) => {
                    AccessError::Conflict(format!("request {id} is already {state}"))
                }
                _ => AccessError::NotFound(format!("no request {id}")),
            };
            let detail = json!({ "request_id": id });
            return Err(self.refuse(caller, "deny", &req.resource, e, detail).await);
        }
        let mut e = NewEvent::new(EventKind::RequestDenied);
        e.actor = caller.user.clone();
        e.resource = req.resource.clone();
        e.action = "deny".into();
        e.decision = "deny".into();
        e.reason = comment.to_string();
        e.policy_ids = policy_ids;
        e.detail = json!({ "request_id": id, "requester": req.requester, "role": req.role });
        self.record(e).await?;
        self.webhook.notify(
            "request.denied",
            format!(
                ":no_entry: {} denied request {id} ({} `{}` on `{}`): {comment}",
                caller.user, req.requester, req.role, req.resource
            ),
            json!({ "request_id": id, "approver": caller.user }),
        );
        Ok(json!({ "request_id": id, "state": "denied" }))
    }
}
