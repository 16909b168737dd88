//! Just-in-time access: requests, N-of-M approvals, time-boxed grants, revocation,
//! break-glass and review items. The HTTP API ([`crate::web::jit`]) calls into [`Access`];
//! [`watch_grants`] ends sessions whose grant expired or was revoked.
//!
//! Who may request, approve or break glass, how many approvals a role needs and the longest
//! duration come from the Cedar policies (actions `request`, `approve`, `break_glass`, and the
//! `@approvals`/`@max_duration` annotations of the permits that allowed it). Two rules hold
//! whatever the policies say: nobody approves their own request, and one person counts once.
//! Every outcome, refusals included, is an audit event; notifications go to the webhook.

pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use gatehouse_policies::{AccessRequest, Action, PolicyEngine, RequestContext, ResourceAttrs};
use serde_json::json;
use tracing::{info, warn};

use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::token::unix_now;
use crate::config::{Config, Resource};
use crate::registry::Registry;
use crate::store::access::{Approval, GrantRow, NewGrant, NewRequest, RequestRow};
use crate::store::Store;
use webhook::Webhook;

/// Why an access operation was refused; maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    RateLimited(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

impl From<crate::store::StoreError> for AccessError {
    fn from(e: crate::store::StoreError) -> Self {
        AccessError::Unavailable(e.to_string())
    }
}

/// Who is calling, from their verified credential.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub groups: Vec<String>,
    pub mfa: bool,
    pub auth_method: String,
    pub ip: std::net::IpAddr,
}

/// The just-in-time access service.
pub struct Access {
    pub config: Arc<Config>,
    pub policies: Arc<PolicyEngine>,
    pub store: Store,
    pub audit: AuditLog,
    pub registry: Registry,
    pub webhook: Webhook,
}

/// The first ticket-looking word of a reason (`INC-4211`, `CHG-12`), if any.
pub fn ticket(reason: &str) -> Option<String> {
    reason
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .find(|w| {
            let Some((prefix, number)) = w.split_once('-') else {
                return false;
            };
            (2..=10).contains(&prefix.len())
                && prefix.starts_with(|c: char| c.is_ascii_uppercase())
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                && (1..=10).contains(&number.len())
                && number.chars().all(|c| c.is_ascii_digit())
        })
        .map(String::from)
}

fn ts_of(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .map(crate::audit::event::format_ts)
        .unwrap_or_default()
}

/// `2h`, `90s`, `2d`.
pub fn human_duration(secs: u64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Access {
    fn resource(&self, name: &str, role: &str) -> Result<&Resource, AccessError> {
        let r = self
            .config
            .resource(name)
            .ok_or_else(|| AccessError::NotFound(format!("no resource `{name}`")))?;
        if !r.has_role(role) {
            let roles: Vec<&str> = r.role_names.iter().map(String::as_str).collect();
            return Err(AccessError::BadRequest(format!(
                "resource `{name}` has no role `{role}` (roles: {})",
                roles.join(", ")
            )));
        }
        Ok(r)
    }

    fn cedar(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        role: &str,
        duration_secs: u64,
        requester: &str,
    ) -> gatehouse_policies::Decision {
        self.cedar_with(
            caller,
            action,
            resource,
            role,
            duration_secs,
            requester,
            false,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn cedar_with(
        &self,
        caller: &Caller,
        action: Action,
        resource: &Resource,
        role: &str,
        duration_secs: u64,
        requester: &str,
        has_grant: bool,
    ) -> gatehouse_policies::Decision {
        let req = AccessRequest {
            user: caller.user.clone(),
            groups: caller.groups.clone(),
            action,
            resource: ResourceAttrs {
                name: resource.name.clone(),
                protocol: resource.kind().as_str().to_string(),
                env: resource.env.clone(),
                data_class: resource.data_class.clone(),
                tags: resource.tags.clone(),
            },
            context: RequestContext {
                mfa: caller.mfa,
                source_ip: caller.ip,
                auth_method: caller.auth_method.clone(),
                hour_utc: time::OffsetDateTime::now_utc().hour(),
                role: role.to_string(),
                has_grant,
                duration_secs,
                requester: requester.to_string(),
            },
        };
        self.policies.authorize(&req)
    }

    fn check_text(&self, what: &str, text: &str, required: bool) -> Result<(), AccessError> {
        if required && text.trim().is_empty() {
            return Err(AccessError::BadRequest(format!("a {what} is required")));
        }
        if text.len() > self.config.access.reason_max_bytes {
            return Err(AccessError::BadRequest(format!(
                "the {what} is limited to {} bytes",
                self.config.access.reason_max_bytes
            )));
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(AccessError::BadRequest(format!(
                "the {what} contains control characters"
            )));
        }
        Ok(())
    }

    /// Records a refusal and returns it.
    async fn refuse(
        &self,
        caller: &Caller,
        action: &str,
        resource: &str,
        err: AccessError,
        detail: serde_json::Value,
    ) -> AccessError {
        let mut e = NewEvent::new(EventKind::RequestRefused);
        e.actor = caller.user.clone();
        e.resource = resource.to_string();
        e.action = action.to_string();
        e.decision = "deny".into();
        e.reason = err.to_string();
        e.detail = detail;
        if let Err(err) = self.audit.record_durable(e).await {
            warn!(error = %err, "cannot record a refusal");
        }
        info!(user = %caller.user, action, reason = %err, "access operation refused");
        err
    }

    async fn record(&self, e: NewEvent) -> Result<u64, AccessError> {
        self.audit
            .record_durable(e)
            .await
            .map_err(|e| AccessError::Unavailable(format!("audit log: {e}")))
    }

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
            return Err(self.refuse(caller, action_name, resource, e, detail).await);
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
            let (request_id, grant, review) = self.store.break_glass(&new, &grant).await?;
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
            e.detail =
                json!({ "review_id": review, "grant_id": grant.id, "request_id": request_id });
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
            return Ok(json!({
                "request_id": request_id,
                "state": "approved",
                "break_glass": true,
                "grant": grant_json(&grant),
                "review_id": review,
            }));
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

    async fn grant_started(
        &self,
        g: &GrantRow,
        by: &str,
        controls: Vec<String>,
    ) -> Result<(), AccessError> {
        let mut e = NewEvent::new(EventKind::GrantStart);
        e.actor = g.grantee.clone();
        e.resource = g.resource.clone();
        e.action = "grant".into();
        e.decision = "allow".into();
        e.reason = g.reason.clone();
        e.controls = controls;
        e.detail = json!({ "grant_id": g.id, "role": g.role, "expires": g.expires, "source": g.source, "request_id": g.request_id, "granted_by": by });
        self.record(e).await?;
        Ok(())
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
            return Err(self.refuse(caller, action, &req.resource, e, detail).await);
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
            return Err(self.refuse(caller, "grant", resource, e, detail).await);
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
        let now = unix_now() as i64;
        let ts = crate::audit::event::now_ts();
        let Some(g) = self
            .store
            .revoke_grant(id, &caller.user, reason, &ts, now)
            .await?
        else {
            let e = AccessError::Conflict(format!("grant {id} has already ended"));
            let detail = json!({ "grant_id": id });
            return Err(self.refuse(caller, "revoke", &g.resource, e, detail).await);
        };
        let mut e = NewEvent::new(EventKind::GrantRevoked);
        e.actor = caller.user.clone();
        e.resource = g.resource.clone();
        e.action = "revoke".into();
        e.reason = reason.to_string();
        e.detail = json!({ "grant_id": id, "grantee": g.grantee, "role": g.role });
        self.record(e).await?;
        let why = if reason.is_empty() {
            format!("access revoked: grant {id} revoked by {}", caller.user)
        } else {
            format!(
                "access revoked: grant {id} revoked by {}: {reason}",
                caller.user
            )
        };
        let cut = self.registry.cut_grant(id, &why);
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

    pub async fn grants(&self, all: bool) -> Result<serde_json::Value, AccessError> {
        let now = unix_now() as i64;
        let rows = self
            .store
            .grants(if all { None } else { Some(now) })
            .await?;
        Ok(json!({ "grants": rows.iter().map(grant_json).collect::<Vec<_>>() }))
    }

    pub async fn reviews(&self, all: bool) -> Result<serde_json::Value, AccessError> {
        let rows = self.store.reviews(!all).await?;
        Ok(json!({ "reviews": rows.iter().map(|r| json!({
            "id": r.id, "grant_id": r.grant_id, "request_id": r.request_id, "subject": r.subject,
            "opened": r.opened, "reviewer": r.reviewer, "reviewed_at": r.reviewed_at, "comment": r.comment,
        })).collect::<Vec<_>>() }))
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

async fn record_cuts(audit: &AuditLog, cut: &[crate::registry::CutSession], why: &str) {
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
                    for id in revoked.into_iter().filter(|id| live.contains(id)) {
                        let why = format!("access revoked: grant {id} was revoked");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_found_in_reasons() {
        assert_eq!(
            ticket("INC-4211: fix stuck orders").as_deref(),
            Some("INC-4211")
        );
        assert_eq!(ticket("see CHG-12, then").as_deref(), Some("CHG-12"));
        assert_eq!(ticket("fix stuck orders"), None);
        assert_eq!(ticket("in-4211 lower case"), None);
        assert_eq!(ticket("X-1 too short prefix"), None);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(90), "90s");
        assert_eq!(human_duration(86_400 * 2), "2d");
    }
}
