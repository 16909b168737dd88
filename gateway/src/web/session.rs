//! What a completed sign-in becomes: a row in the logins table, a gateway credential (never the
//! provider's tokens), the user's record, and `login.succeeded` + `credential.issued` events.
//! Also the periodic re-check of live logins with the provider.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tracing::{info, warn};

use super::Web;
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::oidc::{Identity, Recheck, RelyingParty};
use crate::authn::token::{unix_now, LoginClaims};
use crate::registry::Registry;
use crate::store::logins::Login;
use crate::store::Store;

/// A credential waiting for the CLI behind a one-time code.
pub struct IssuedCode {
    pub credential: Credential,
    /// The CLI's PKCE challenge (S256, base64url); the pickup must present its verifier.
    pub challenge: String,
}

/// What the CLI receives after a login.
#[derive(Debug, Clone, Serialize)]
pub struct Credential {
    pub credential: String,
    pub user: String,
    pub groups: Vec<String>,
    pub mfa: bool,
    pub amr: Vec<String>,
    /// Unix seconds.
    pub expires_at: u64,
    pub login_id: String,
    /// The PostgreSQL front door as clients reach it.
    pub postgres: String,
}

/// A live login's refresh token, kept in memory for re-checks.
pub struct LiveLogin {
    pub user: String,
    pub refresh_token: String,
    pub expires_at: u64,
}

/// Why a completed sign-in still did not yield a credential.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    #[error("user \"{0}\" is disabled")]
    Disabled(String),
    #[error("the store is unavailable: {0}")]
    Store(String),
    #[error("the audit log is unavailable")]
    Audit,
    #[error("cannot sign the credential: {0}")]
    Sign(String),
}

impl Web {
    /// Turns a verified identity into a credential; `flow` is `code` or `device`.
    pub async fn complete_login(
        &self,
        identity: Identity,
        flow: &str,
        peer: SocketAddr,
    ) -> Result<Credential, CompleteError> {
        let Some(rp) = &self.rp else {
            return Err(CompleteError::Sign(
                "single sign-on is not configured".into(),
            ));
        };
        let user = identity.username.clone();
        let disabled = self
            .store
            .user(&user)
            .await
            .map_err(|e| CompleteError::Store(e.to_string()))?
            .and_then(|u| u.disabled_at)
            .is_some();
        if disabled {
            self.audit_refusal(
                EventKind::LoginFailed,
                &user,
                "login",
                "user is disabled",
                peer,
                serde_json::json!({ "flow": flow, "amr": identity.amr }),
            )
            .await;
            return Err(CompleteError::Disabled(user));
        }
        let groups = rp.config().map_groups(&identity.provider_groups);
        let now = unix_now();
        // Never beyond the provider's session: without a refresh token to re-check it, the
        // credential ends when the ID token does.
        let mut ttl = rp.config().credential_ttl;
        if identity.refresh_token.is_none() {
            let left = identity.id_token_exp.saturating_sub(now).max(60);
            ttl = ttl.min(Duration::from_secs(left));
        }
        let sid = crate::audit::event::hex(&gatehouse_core::random::random_bytes::<16>());
        let (token, claims) = self
            .tokens
            .issue_login(
                &user,
                &groups,
                ttl,
                LoginClaims {
                    sid: sid.clone(),
                    amr: identity.amr.clone(),
                    mfa: identity.mfa,
                },
            )
            .map_err(|e| CompleteError::Sign(e.to_string()))?;
        let ts = crate::audit::event::now_ts();
        let expires = time::OffsetDateTime::from_unix_timestamp(claims.exp as i64)
            .map(crate::audit::event::format_ts)
            .unwrap_or_default();
        self.store
            .insert_login(&Login {
                id: sid.clone(),
                user: user.clone(),
                flow: flow.to_string(),
                created: ts.clone(),
                expires: expires.clone(),
                amr: identity.amr.clone(),
                mfa: identity.mfa,
                revoked_at: None,
                revoked_by: None,
                revoked_reason: None,
            })
            .await
            .map_err(|e| CompleteError::Store(e.to_string()))?;
        self.store
            .record_login(&user, &groups, &ts)
            .await
            .map_err(|e| CompleteError::Store(e.to_string()))?;

        let mut ok = NewEvent::new(EventKind::LoginSucceeded);
        ok.actor = user.clone();
        ok.action = "login".into();
        ok.decision = "allow".into();
        ok.detail = serde_json::json!({
            "flow": flow,
            "provider": rp.config().issuer,
            "subject": identity.subject,
            "email": identity.email,
            "amr": identity.amr,
            "acr": identity.acr,
            "mfa": identity.mfa,
            "provider_groups": identity.provider_groups,
            "groups": groups,
            "client_addr": peer.to_string(),
        });
        self.audit
            .record_durable(ok)
            .await
            .map_err(|_| CompleteError::Audit)?;
        let mut issued = NewEvent::new(EventKind::CredentialIssued);
        issued.actor = user.clone();
        issued.action = "issue".into();
        issued.detail = serde_json::json!({
            "login_id": sid,
            "credential_id": claims.jti,
            "expires": expires,
            "key_id": self.tokens.key_id(),
        });
        self.audit
            .record_durable(issued)
            .await
            .map_err(|_| CompleteError::Audit)?;

        if let Some(rt) = identity.refresh_token {
            if let Ok(mut live) = self.refresh.lock() {
                live.insert(
                    sid.clone(),
                    LiveLogin {
                        user: user.clone(),
                        refresh_token: rt,
                        expires_at: claims.exp,
                    },
                );
            }
        }
        info!(user = %user, flow, mfa = identity.mfa, "login succeeded; credential issued");
        Ok(Credential {
            credential: token,
            user,
            groups,
            mfa: identity.mfa,
            amr: identity.amr,
            expires_at: claims.exp,
            login_id: sid,
            postgres: self.postgres_public.clone(),
        })
    }
}

/// Revokes a login and records `credential.revoked`.
pub async fn revoke_login(
    store: &Store,
    audit: &AuditLog,
    user: &str,
    sid: &str,
    by: &str,
    reason: &str,
) -> Result<bool, crate::store::StoreError> {
    let done = store
        .revoke_login(sid, by, reason, &crate::audit::event::now_ts())
        .await?;
    if done {
        let mut e = NewEvent::new(EventKind::CredentialRevoked);
        e.actor = user.to_string();
        e.action = "revoke".into();
        e.reason = reason.to_string();
        e.detail = serde_json::json!({ "login_id": sid, "by": by });
        let _ = audit.record_durable(e).await;
    }
    Ok(done)
}

/// Re-checks every live login with the provider every `every`. A refused refresh grant means
/// the provider no longer vouches for the person: their logins are revoked and their live
/// sessions cut.
pub async fn recheck_logins(web: Arc<Web>, rp: Arc<RelyingParty>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let now = unix_now();
        let live: Vec<(String, String, String)> = match web.refresh.lock() {
            Ok(mut map) => {
                map.retain(|_, l| l.expires_at > now);
                map.iter()
                    .map(|(sid, l)| (sid.clone(), l.user.clone(), l.refresh_token.clone()))
                    .collect()
            }
            Err(_) => continue,
        };
        for (sid, user, rt) in live {
            match rp.recheck(&rt).await {
                Ok(Recheck::Valid(new)) => {
                    if let (Some(new), Ok(mut map)) = (new, web.refresh.lock()) {
                        if let Some(l) = map.get_mut(&sid) {
                            l.refresh_token = new;
                        }
                    }
                }
                Ok(Recheck::Gone(why)) => {
                    if let Ok(mut map) = web.refresh.lock() {
                        map.retain(|_, l| l.user != user);
                    }
                    provider_gone(&web.store, &web.audit, &web.registry, &user, &why).await;
                }
                Err(e) => {
                    // The provider is down: keep the login (its credential still expires), try
                    // again next round.
                    warn!(user = %user, error = %e, "cannot re-check a login with the provider");
                }
            }
        }
    }
}

async fn provider_gone(
    store: &Store,
    audit: &AuditLog,
    registry: &Registry,
    user: &str,
    why: &str,
) {
    let reason = format!("the identity provider no longer vouches for the user ({why})");
    let ts = crate::audit::event::now_ts();
    match store
        .revoke_user_logins(user, "identity-provider", &reason, &ts)
        .await
    {
        Ok(ids) => {
            for sid in ids {
                let mut e = NewEvent::new(EventKind::CredentialRevoked);
                e.actor = user.to_string();
                e.action = "revoke".into();
                e.reason = reason.clone();
                e.detail = serde_json::json!({ "login_id": sid, "by": "identity-provider" });
                let _ = audit.record_durable(e).await;
            }
        }
        Err(e) => warn!(user = %user, error = %e, "cannot revoke logins"),
    }
    for (session, resource) in registry.kill_user(
        user,
        &format!("access revoked: the identity provider no longer vouches for {user}"),
    ) {
        let mut e = NewEvent::new(EventKind::SessionCut);
        e.actor = user.to_string();
        e.resource = resource;
        e.action = "cut".into();
        e.session_id = session.to_string();
        e.reason = "identity provider revoked the login".into();
        let _ = audit.record(e).await;
    }
    info!(user = %user, "provider refused a re-check: logins revoked, sessions cut");
}
