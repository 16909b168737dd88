//! Just-in-time access: requests, N-of-M approvals, time-boxed grants, revocation,
//! break-glass and review items. The HTTP API ([`crate::web::jit`]) calls into [`Access`];
//! [`watch_grants`] ends sessions whose grant expired or was revoked.
//!
//! Who may request, approve or break glass, how many approvals a role needs and the longest
//! duration come from the Cedar policies (actions `request`, `approve`, `break_glass`, and the
//! `@approvals`/`@max_duration` annotations of the permits that allowed it). Two rules hold
//! whatever the policies say: nobody approves their own request, and one person counts once.
//! Every outcome, refusals included, is an audit event; notifications go to the webhook.
//!
//! This module holds the service, its errors and the helpers every operation shares (the
//! resource and role check, the Cedar call, text checks, audited refusals); the operations
//! are in `requests` (request, approve, deny), `grants` (direct grant, revoke),
//! `break_glass` (break-glass and its review), `listing` (the JSON lists) and `watch`
//! ([`watch_grants`]).

mod break_glass;
pub mod campaigns;
mod grants;
mod listing;
mod requests;
mod watch;
pub mod webhook;

use std::sync::Arc;

use gatehouse_policies::{AccessRequest, Action, RequestContext, ResourceAttrs};
use serde_json::json;
use tracing::{info, warn};

use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::config::{Config, Resource};
use crate::registry::Registry;
use crate::store::access::GrantRow;
use crate::store::Store;
use webhook::Webhook;

pub use listing::grant_json;
pub use watch::{watch_grants, GRANT_POLL};

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
    pub policies: crate::authz::Policies,
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
                command: String::new(),
                forward_host: String::new(),
                forward_port: 0,
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
        self.refuse_by(caller, action, resource, err, detail, None)
            .await
    }

    /// A refusal by the policies: the event names the determining policies and their controls.
    async fn refuse_by_policy(
        &self,
        caller: &Caller,
        action: &str,
        resource: &str,
        err: AccessError,
        detail: serde_json::Value,
        decision: &gatehouse_policies::Decision,
    ) -> AccessError {
        self.refuse_by(caller, action, resource, err, detail, Some(decision))
            .await
    }

    async fn refuse_by(
        &self,
        caller: &Caller,
        action: &str,
        resource: &str,
        err: AccessError,
        detail: serde_json::Value,
        decision: Option<&gatehouse_policies::Decision>,
    ) -> AccessError {
        let mut e = NewEvent::new(EventKind::RequestRefused);
        e.actor = caller.user.clone();
        e.resource = resource.to_string();
        e.action = action.to_string();
        e.decision = "deny".into();
        e.reason = err.to_string();
        e.detail = detail;
        if let Some(d) = decision {
            e.policy_ids = d.policy_ids.clone();
            e.controls = d.controls.clone();
        }
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
