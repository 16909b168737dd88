//! Access review campaigns (recertification, 5.18): an admin freezes who can reach a resource,
//! reviewers keep or revoke each item, and "revoke" acts at the gateway.
//!
//! `start` (run by `gatehouse reviews start`, in the CLI process) asks the policies now loaded,
//! for every user the gateway has seen and each role of the resource, whether they hold standing
//! access, adds the active grants, freezes that as canonical JSON whose SHA-256 goes into the
//! audit chain, and assigns each item round-robin to a member of the reviewers' group who is
//! never the item's subject. `Access::decide_item` is a reviewer's keep or revoke: a revoked
//! grant ends (its sessions cut); revoked standing access becomes a row admission consults
//! (denied from then on, its live sessions cut). Every decision is a `review.decision` event.

use serde_json::{json, Value};

use super::watch::record_cuts;
use super::{Access, AccessError, Caller};
use crate::audit::{EventKind, NewEvent};
use crate::config::Config;
use crate::store::campaigns::{NewCampaign, NewItem};
use crate::store::Store;

/// What `gatehouse reviews start` asks for.
pub struct Spec<'a> {
    pub resource: &'a str,
    /// The group whose members review.
    pub reviewers: &'a str,
    pub due_secs: u64,
    /// Who starts it (the operator's detail, JSON).
    pub started_by: Value,
}

/// A campaign ready to write: the row, its items, the frozen snapshot's hash.
pub struct Planned {
    pub campaign: NewCampaign,
    pub items: Vec<NewItem>,
}

/// Plans a campaign: the snapshot of access to `spec.resource` and who reviews each item.
pub async fn plan(
    config: &Config,
    policies: &gatehouse_policies::PolicyEngine,
    store: &Store,
    spec: &Spec<'_>,
) -> Result<Planned, AccessError> {
    let resource = config.resource(spec.resource).ok_or_else(|| {
        AccessError::NotFound(format!("no resource `{}` in the config", spec.resource))
    })?;
    let users = store.users().await?;
    let reviewers: Vec<String> = users
        .iter()
        .filter(|u| u.disabled_at.is_none() && u.last_groups.iter().any(|g| g == spec.reviewers))
        .map(|u| u.name.clone())
        .collect();
    if reviewers.is_empty() {
        return Err(AccessError::BadRequest(format!(
            "nobody in group `{}` has signed in yet; a campaign needs reviewers the gateway knows",
            spec.reviewers
        )));
    }
    let now = crate::authn::token::unix_now() as i64;
    let grants = store.grants(Some(now)).await?;
    let any = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let mut found: Vec<(String, String, String, Option<i64>, String)> = Vec::new();
    for u in users.iter().filter(|u| u.disabled_at.is_none()) {
        for role in &resource.role_names {
            let d = policies.authorize(&crate::authz::connect_request(
                &u.name,
                &u.last_groups,
                resource,
                any,
                "oidc",
                true,
                role,
                false,
            ));
            if d.allowed
                && store
                    .access_revocation(&u.name, &resource.name, role)
                    .await?
                    .is_none()
            {
                found.push((
                    u.name.clone(),
                    role.clone(),
                    "standing".into(),
                    None,
                    d.policy_ids.join(" "),
                ));
            }
        }
    }
    for g in grants.iter().filter(|g| g.resource == resource.name) {
        found.push((
            g.grantee.clone(),
            g.role.clone(),
            "grant".into(),
            Some(g.id),
            format!("grant {} ({})", g.id, g.source),
        ));
    }
    let mut items = Vec::new();
    for (next, (subject, role, access, grant_id, via)) in found.into_iter().enumerate() {
        let eligible: Vec<&String> = reviewers.iter().filter(|r| **r != subject).collect();
        let Some(reviewer) = eligible.get(next % eligible.len().max(1)).copied() else {
            return Err(AccessError::BadRequest(format!(
                "{subject}'s `{role}` access can only be reviewed by someone else, and `{}` has nobody else",
                spec.reviewers
            )));
        };
        items.push(NewItem {
            subject,
            resource: resource.name.clone(),
            role,
            access,
            grant_id,
            via,
            reviewer: reviewer.clone(),
        });
    }
    let started_at = crate::audit::event::now_ts();
    let due_unix = now + spec.due_secs as i64;
    let due = time::OffsetDateTime::from_unix_timestamp(due_unix)
        .map(crate::audit::event::format_ts)
        .unwrap_or_default();
    let snapshot = json!({
        "resource": resource.name,
        "taken_at": started_at,
        "items": items.iter().map(|i| json!({
            "subject": i.subject, "role": i.role, "access": i.access,
            "grant_id": i.grant_id, "via": i.via, "reviewer": i.reviewer,
        })).collect::<Vec<_>>(),
    });
    let snapshot = crate::audit::event::canonical_json(&snapshot);
    let sha = ring::digest::digest(&ring::digest::SHA256, snapshot.as_bytes());
    let snapshot_sha256 = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Planned {
        campaign: NewCampaign {
            resource: resource.name.clone(),
            reviewers: spec.reviewers.to_string(),
            started_at,
            started_by: spec.started_by.to_string(),
            due,
            due_unix,
            snapshot_sha256,
            snapshot,
        },
        items,
    })
}

impl Access {
    /// The open items assigned to `caller`.
    pub async fn review_items(&self, caller: &Caller) -> Result<Value, AccessError> {
        let now = crate::authn::token::unix_now() as i64;
        let items: Vec<Value> = self
            .store
            .campaign_items(None)
            .await?
            .into_iter()
            .filter(|i| i.reviewer == caller.user && i.decision.is_none())
            .map(|i| {
                json!({
                    "id": i.id, "campaign_id": i.campaign_id, "subject": i.subject,
                    "resource": i.resource, "role": i.role, "access": i.access,
                    "grant_id": i.grant_id, "via": i.via, "due": i.due,
                    "overdue": i.due_unix < now,
                })
            })
            .collect();
        Ok(json!({ "items": items }))
    }

    /// A reviewer keeps or revokes item `id`.
    pub async fn decide_item(
        &self,
        caller: &Caller,
        id: i64,
        decision: &str,
        comment: &str,
    ) -> Result<Value, AccessError> {
        self.check_text("comment", comment, true)?;
        if decision != "keep" && decision != "revoke" {
            return Err(AccessError::BadRequest(
                "decision is `keep` or `revoke`".into(),
            ));
        }
        let item = self
            .store
            .campaign_item(id)
            .await?
            .ok_or_else(|| AccessError::NotFound(format!("no review item {id}")))?;
        let detail =
            json!({ "item_id": id, "campaign_id": item.campaign_id, "subject": item.subject });
        if caller.user != item.reviewer || caller.user == item.subject {
            let e = AccessError::Forbidden(format!(
                "review item {id} is assigned to {}, not {}",
                item.reviewer, caller.user
            ));
            return Err(self
                .refuse(caller, "review", &item.resource, e, detail)
                .await);
        }
        if caller.auth_method != "oidc" {
            let e = AccessError::Forbidden(
                "a review decision is a person's: sign in (gatehouse login), an issued token cannot decide".into(),
            );
            return Err(self
                .refuse(caller, "review", &item.resource, e, detail)
                .await);
        }
        let at = crate::audit::event::now_ts();
        if !self
            .store
            .decide_item(&item, decision, comment, &at)
            .await?
        {
            let e = AccessError::Conflict(format!("review item {id} is already decided"));
            return Err(self
                .refuse(caller, "review", &item.resource, e, detail)
                .await);
        }
        let why = format!(
            "access revoked by access review (campaign {}, item {id}) by {}: {comment}",
            item.campaign_id, caller.user
        );
        let mut cut = 0usize;
        if decision == "revoke" {
            match (item.access.as_str(), item.grant_id) {
                ("grant", Some(g)) => {
                    // The grant may have ended since the snapshot; that is not an error here.
                    match self.end_grant(caller, g, &why, &item.resource).await {
                        Ok(v) => cut = v["sessions_cut"].as_u64().unwrap_or(0) as usize,
                        Err(AccessError::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    let sessions = self
                        .registry
                        .cut_standing(&item.subject, &item.resource, &why);
                    record_cuts(&self.audit, &sessions, &why).await;
                    cut = sessions.len();
                }
            }
        }
        let mut e = NewEvent::new(EventKind::ReviewDecision);
        e.actor = caller.user.clone();
        e.resource = item.resource.clone();
        e.action = "review".into();
        e.decision = decision.into();
        e.reason = comment.to_string();
        e.detail = json!({
            "campaign_id": item.campaign_id, "item_id": id, "subject": item.subject,
            "role": item.role, "access": item.access, "grant_id": item.grant_id,
            "via": item.via, "sessions_cut": cut,
        });
        let seq = self.record(e).await?;
        Ok(json!({ "item_id": id, "decision": decision, "seq": seq, "sessions_cut": cut }))
    }
}
