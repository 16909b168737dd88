//! The registers that describe the state at the time the bundle is built rather than events of
//! the period: who can reach what and through which policy (the policies now loaded, asked for
//! every user the gateway has seen, every resource and role), the active grants, the policy set
//! itself, and the review items.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use gatehouse_policies::PolicyEngine;

use super::csv::CsvFile;
use crate::config::Config;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write a register: {0}")]
    Io(#[from] std::io::Error),
}

/// A standing permit to a privileged role found while writing the access-rights register.
#[derive(Debug, Clone)]
pub struct StandingPermit {
    pub user: String,
    pub resource: String,
    pub role: String,
    pub policies: String,
}

/// Writes `access-rights.csv`, `policies.csv`, `reviews.csv` and `campaigns.csv`; returns rows
/// per file, the standing privileged permits and the overdue review items (an exception each).
pub async fn write(
    dir: &Path,
    config: &Config,
    engine: &PolicyEngine,
    store: &Store,
) -> Result<
    (
        Vec<(&'static str, u64)>,
        Vec<StandingPermit>,
        Vec<crate::store::campaigns::ItemRow>,
    ),
    RegisterError,
> {
    let mut standing = Vec::new();
    let mut rights = CsvFile::create(
        &dir.join("access-rights.csv"),
        &[
            "user",
            "groups",
            "user_disabled",
            "resource",
            "env",
            "data_class",
            "role",
            "access",
            "through",
            "policies",
            "mfa_needed",
            "grant_id",
            "grant_expires",
        ],
    )?;
    let now = crate::authn::token::unix_now() as i64;
    let users = store.users().await?;
    let grants = store.grants(Some(now)).await?;
    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    for u in &users {
        for r in &config.resources {
            for role in &r.role_names {
                let ask = |mfa: bool| {
                    engine.authorize(&crate::authz::connect_request(
                        &u.name,
                        &u.last_groups,
                        r,
                        any,
                        "oidc",
                        mfa,
                        role,
                        false,
                    ))
                };
                let with_mfa = ask(true);
                let without = ask(false);
                let grant = grants
                    .iter()
                    .find(|g| g.grantee == u.name && g.resource == r.name && &g.role == role);
                if !with_mfa.allowed && grant.is_none() {
                    continue;
                }
                let revoked = if with_mfa.allowed {
                    store.access_revocation(&u.name, &r.name, role).await?
                } else {
                    None
                };
                let (access, through) = match (&revoked, with_mfa.allowed) {
                    (Some((item, by)), _) => {
                        ("revoked", format!("access review item {item} (by {by})"))
                    }
                    (None, true) => ("allow", "standing policy".to_string()),
                    (None, false) => ("allow", "grant".to_string()),
                };
                if with_mfa.allowed && revoked.is_none() && role != "read" {
                    standing.push(StandingPermit {
                        user: u.name.clone(),
                        resource: r.name.clone(),
                        role: role.clone(),
                        policies: with_mfa.policy_ids.join(" "),
                    });
                }
                rights.row(&[
                    u.name.clone(),
                    u.last_groups.join(" "),
                    u.disabled_at.clone().unwrap_or_default(),
                    r.name.clone(),
                    r.env.clone(),
                    r.data_class.clone(),
                    role.clone(),
                    access.into(),
                    through,
                    if with_mfa.allowed {
                        with_mfa.policy_ids.join(" ")
                    } else {
                        "connect-under-grant".into()
                    },
                    (with_mfa.allowed && !without.allowed).to_string(),
                    grant.map(|g| g.id.to_string()).unwrap_or_default(),
                    grant.map(|g| g.expires.clone()).unwrap_or_default(),
                ])?;
            }
        }
    }
    let mut out = vec![("access-rights.csv", rights.finish()?)];

    let mut policies = CsvFile::create(
        &dir.join("policies.csv"),
        &[
            "policy_id",
            "effect",
            "controls",
            "file",
            "line",
            "approvals",
            "max_duration_secs",
        ],
    )?;
    for p in engine.policies() {
        policies.row(&[
            p.id.clone(),
            p.effect.to_string(),
            p.controls.join(" "),
            p.file.clone(),
            p.line.map(|l| l.to_string()).unwrap_or_default(),
            p.approvals.map(|a| a.to_string()).unwrap_or_default(),
            p.max_duration_secs
                .map(|a| a.to_string())
                .unwrap_or_default(),
        ])?;
    }
    out.push(("policies.csv", policies.finish()?));

    let mut reviews = CsvFile::create(
        &dir.join("reviews.csv"),
        &[
            "review_id",
            "kind",
            "subject",
            "grant_id",
            "request_id",
            "opened",
            "reviewer",
            "reviewed_at",
            "comment",
            "state",
        ],
    )?;
    for r in store.reviews(false).await? {
        let state = match (&r.reviewer, &r.reviewed_at) {
            (Some(_), Some(_)) => "signed off",
            _ => "open",
        };
        reviews.row(&[
            r.id.to_string(),
            "break-glass".into(),
            r.subject.clone(),
            r.grant_id.to_string(),
            r.request_id.map(|v| v.to_string()).unwrap_or_default(),
            r.opened.clone(),
            r.reviewer.clone().unwrap_or_default(),
            r.reviewed_at.clone().unwrap_or_default(),
            r.comment.clone().unwrap_or_default(),
            state.into(),
        ])?;
    }
    out.push(("reviews.csv", reviews.finish()?));

    let mut campaigns = CsvFile::create(
        &dir.join("campaigns.csv"),
        &[
            "item_id",
            "campaign_id",
            "subject",
            "resource",
            "role",
            "access",
            "grant_id",
            "via",
            "reviewer",
            "decision",
            "decided_at",
            "comment",
            "due",
            "overdue",
        ],
    )?;
    let mut overdue = Vec::new();
    for i in store.campaign_items(None).await? {
        let late = i.decision.is_none() && i.due_unix < now;
        if late {
            overdue.push(i.clone());
        }
        campaigns.row(&[
            i.id.to_string(),
            i.campaign_id.to_string(),
            i.subject.clone(),
            i.resource.clone(),
            i.role.clone(),
            i.access.clone(),
            i.grant_id.map(|g| g.to_string()).unwrap_or_default(),
            i.via.clone(),
            i.reviewer.clone(),
            i.decision.clone().unwrap_or_default(),
            i.decided_at.clone().unwrap_or_default(),
            i.comment.clone().unwrap_or_default(),
            i.due.clone(),
            late.to_string(),
        ])?;
    }
    out.push(("campaigns.csv", campaigns.finish()?));
    Ok((out, standing, overdue))
}
