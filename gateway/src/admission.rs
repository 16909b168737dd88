//! Admission: the one place that decides whether a credential counts and whether its holder may
//! use a resource, shared by every front door (the PostgreSQL one today) and the HTTP API.
//!
//! - [`Admission::authenticate`]: the credential (a gateway token), then the holder's standing
//!   in the store (user not disabled, login not revoked), every store read bounded by
//!   [`STORE_LOOKUP_TIMEOUT`]; refusals become `auth.failed` events.
//! - [`Admission::admit`]: authenticate, then the resource and role, the grant the user holds,
//!   the Cedar decision, and the `access.decision` event, committed before it returns (fail
//!   closed: no durable decision, no session).
//!
//! A refusal is a [`Denial`] that says which side failed ([`Side`]) and carries what the caller
//! needs to answer in its own protocol (a SQLSTATE and message for the PostgreSQL front door,
//! a 401 for the API). Admission speaks no wire protocol and opens no upstream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::session::SessionId;
use tracing::{info, warn};

use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::token::{Claims, Door, TokenAuthority, TokenError};
use crate::config::{Config, Resource};
use crate::registry::SessionGrant;
use crate::store::Store;

/// The longest resource name a client may give (a 63-character name, `:`, a 32-character
/// role, with room to spare).
pub const MAX_RESOURCE_NAME: usize = 128;

/// Checks the names a client gives before it authenticates: a user name gatehouse could have
/// issued a credential to (1-64 of `a-z A-Z 0-9 . _ @ -`) and a bounded resource name without
/// control characters. Refusals here write no audit event (nothing was authenticated and the
/// text is the client's); they are answered and logged.
pub fn check_names(user: &str, resource: &str) -> Result<(), &'static str> {
    if !crate::authn::oidc::valid_username(user) {
        return Err("the user name is not one gatehouse issues credentials to (1-64 characters of a-z, A-Z, 0-9, `.`, `_`, `@`, `-`)");
    }
    if resource.len() > MAX_RESOURCE_NAME || resource.chars().any(char::is_control) {
        return Err("the resource name is too long or has control characters");
    }
    Ok(())
}

/// Writes the counted unauthenticated failures of each ended window as one event per source
/// and class (`auth.failed`, `connection.refused`, ... as counted; detail `aggregated: true`,
/// `count`, the last reason), until `shutdown`.
pub async fn record_failure_summaries(
    admission: Admission,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
            _ = shutdown.changed() => true,
        };
        let ended = if last {
            admission.failures.drain_all()
        } else {
            admission.failures.drain()
        };
        for s in ended {
            let mut e = NewEvent::new(s.kind);
            e.actor = "-".into();
            let (action, what) = match s.kind {
                EventKind::AuthFailed => ("authenticate", "failed authentications"),
                EventKind::LoginFailed => ("login", "failed sign-ins"),
                EventKind::HttpRefused => ("request", "refused requests"),
                EventKind::ConnectionRefused => ("connect", "refused connections"),
                _ => ("connect", "refused sessions"),
            };
            e.action = action.into();
            e.decision = "deny".into();
            e.reason = format!(
                "{} more {what} from {} in {} s (last: {})",
                s.count,
                s.source,
                s.over.as_secs(),
                s.last_reason
            );
            e.detail = serde_json::json!({
                "aggregated": true,
                "class": s.class,
                "client_addr": s.source.to_string(),
                "count": s.count,
                "window_secs": s.over.as_secs(),
                "last_reason": s.last_reason,
            });
            info!(client.addr = %s.source, count = s.count, kind = s.kind.as_str(), "failures counted");
            let _ = admission.audit.record(e).await;
        }
        if last {
            return;
        }
    }
}

fn door_of(ctx: &AuthContext<'_>) -> Door {
    match *ctx {
        AuthContext::Session { door, .. } => door,
        AuthContext::Bearer { .. } => Door::Api,
    }
}

/// How long a check waits for the store (the user's status, the login's revocation, grants).
pub const STORE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

pub mod failures;

/// What admission needs; cheap to clone (every part is shared).
#[derive(Clone)]
pub struct Admission {
    pub tokens: Arc<TokenAuthority>,
    pub policies: crate::authz::Policies,
    pub audit: AuditLog,
    pub store: Store,
    pub config: Arc<Config>,
    /// Unauthenticated failures per source (see [`failures`]).
    pub failures: Arc<failures::Failures>,
}

/// Who presents a credential; decides what a refusal's `auth.failed` event records.
#[derive(Debug, Clone, Copy)]
pub enum AuthContext<'a> {
    /// A front door session: the event names the resource as the client named it, the action,
    /// the session, the client's address and whether it came over TLS.
    Session {
        resource: &'a str,
        action: &'a str,
        session_id: SessionId,
        peer: SocketAddr,
        tls: bool,
        /// The front door, whose credential audience applies.
        door: Door,
    },
    /// A bearer credential on the HTTP API, for `action` (`whoami`, `logout`, ...).
    Bearer { action: &'a str, peer: SocketAddr },
}

/// A front door's request to use a resource.
#[derive(Debug, Clone, Copy)]
pub struct AdmitRequest<'a> {
    /// The user the client connected as; the credential's subject must be this user.
    pub user: &'a str,
    /// The credential as given (already trimmed).
    pub credential: &'a str,
    /// The resource's name.
    pub resource: &'a str,
    /// The role the session asks for (`read` unless the client named another).
    pub role: &'a str,
    /// The target as the client spelt it (`orders` or `orders:admin`): credential refusals
    /// and the policy denial name it so.
    pub named_as: &'a str,
    /// What the events record as the action; front doors ask Cedar for `connect`.
    pub action: &'a str,
    pub peer: SocketAddr,
    pub tls: bool,
    pub session_id: SessionId,
    /// The front door, whose credential audience applies ([`Door`]); the logs name
    /// it. Cedar sees the resource's kind.
    pub door: Door,
}

/// An admitted request: the decision to allow it is in the audit log.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub claims: Claims,
    pub resource: Resource,
    pub role: String,
    /// The grant the session runs under, if the user holds one for this role.
    pub grant: Option<SessionGrant>,
    /// The audit sequence number of the `access.decision` event.
    pub seq: u64,
}

/// Which side a refusal comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What the client presented or asked for: the credential, the resource, the role.
    Client,
    /// The policies said no.
    Policy,
    /// The gateway could not check or record (store or audit log); it fails closed.
    Store,
}

/// Why a credential does not count. The audit event says which; the client is told only that
/// its credential was refused (and, for these two, that it was revoked or the user disabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialFault {
    /// Malformed, badly signed, expired, for another subject, ...
    Invalid(TokenError),
    /// The user is disabled.
    Disabled,
    /// The login the credential belongs to was revoked.
    Revoked,
    /// The login the credential names is not in the store.
    UnknownLogin,
}

/// What the gateway could not check or record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCheck {
    /// The user's status (disabled or not).
    User,
    /// The credential's login (revoked or not).
    Login,
    /// The grants the user holds.
    Grants,
    /// The `access.decision` event could not be committed.
    Decision,
}

impl StoreCheck {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreCheck::User => "the user's status",
            StoreCheck::Login => "the credential's login",
            StoreCheck::Grants => "grants",
            StoreCheck::Decision => "the access decision",
        }
    }
}

/// A refusal, with what the caller needs to explain it in its own protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// The credential was refused, or its holder may no longer use it.
    Credential {
        user: String,
        fault: CredentialFault,
    },
    /// No resource of that name.
    UnknownResource { name: String },
    /// The resource has no such role; `roles` are the ones it has.
    UnknownRole {
        resource: String,
        role: String,
        roles: Vec<String>,
    },
    /// The policies denied it; the decision is audit event `seq`.
    Policy {
        /// The target as the client named it.
        resource: String,
        reason: String,
        seq: u64,
        session_id: SessionId,
    },
    /// The store or the audit log failed; refused rather than unchecked (fail closed).
    Store { what: StoreCheck, error: String },
}

impl Denial {
    pub fn side(&self) -> Side {
        match self {
            Denial::Credential { .. }
            | Denial::UnknownResource { .. }
            | Denial::UnknownRole { .. } => Side::Client,
            Denial::Policy { .. } => Side::Policy,
            Denial::Store { .. } => Side::Store,
        }
    }
}

/// Awaits a store read for at most [`STORE_LOOKUP_TIMEOUT`]; the error as text.
async fn bounded<T, E: std::fmt::Display>(
    read: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::time::timeout(STORE_LOOKUP_TIMEOUT, read)
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
}

impl Admission {
    /// Verifies `credential` and its holder's standing in the store. `user` is the name the
    /// client connected as, which must be the credential's subject; `None` where the
    /// credential alone names its holder (a bearer on the HTTP API). Refusals are audited as
    /// `ctx` says.
    pub async fn authenticate(
        &self,
        user: Option<&str>,
        credential: &str,
        ctx: &AuthContext<'_>,
    ) -> Result<Claims, Denial> {
        let door = door_of(ctx);
        let verified = match user {
            Some(user) => self.tokens.verify(credential, user, door),
            None => self.tokens.verify_bearer(credential),
        };
        let claims = match verified {
            Ok(c) => c,
            Err(why) => {
                let user = user.unwrap_or_default().to_string();
                let denial = Denial::Credential {
                    user,
                    fault: CredentialFault::Invalid(why),
                };
                self.audit_refusal(&denial, None, ctx).await;
                return Err(denial);
            }
        };
        match self.standing(&claims).await {
            Ok(()) => Ok(claims),
            Err(denial) => {
                self.audit_refusal(&denial, Some(&claims), ctx).await;
                Err(denial)
            }
        }
    }

    /// Whether the holder of valid `claims` may still use them: user enabled (checked in the
    /// store, so a disable by any replica or by the CLI counts at once), login not revoked.
    async fn standing(&self, claims: &Claims) -> Result<(), Denial> {
        let credential = |fault| Denial::Credential {
            user: claims.sub.clone(),
            fault,
        };
        let user = match bounded(self.store.user(&claims.sub)).await {
            Ok(u) => u,
            Err(error) => {
                warn!(error = %error, "cannot read the users table; refusing the connection");
                return Err(Denial::Store {
                    what: StoreCheck::User,
                    error,
                });
            }
        };
        if user.and_then(|u| u.disabled_at).is_some() {
            return Err(credential(CredentialFault::Disabled));
        }
        if let Some(sid) = &claims.sid {
            match bounded(self.store.login(sid)).await {
                Ok(Some(l)) if l.revoked_at.is_some() => {
                    return Err(credential(CredentialFault::Revoked))
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(credential(CredentialFault::UnknownLogin)),
                Err(error) => {
                    warn!(error = %error, "cannot read the logins table; refusing the connection");
                    return Err(Denial::Store {
                        what: StoreCheck::Login,
                        error,
                    });
                }
            }
        }
        Ok(())
    }

    /// Records a refused credential (`claims` when it verified but its holder may not use it).
    async fn audit_refusal(&self, denial: &Denial, claims: Option<&Claims>, ctx: &AuthContext<'_>) {
        match *ctx {
            AuthContext::Session {
                resource,
                action,
                session_id,
                peer,
                tls,
                ..
            } => {
                // A store that cannot answer is logged (above), answered, and counted as a
                // refused connection (the store may be what cannot record it).
                let (user, fault) = match denial {
                    Denial::Credential { user, fault } => (user, fault),
                    Denial::Store { what, error } => {
                        let who = claims.map(|c| c.sub.as_str()).unwrap_or("-");
                        self.store_refusal(who, resource, action, session_id, peer, *what, error)
                            .await;
                        return;
                    }
                    _ => return,
                };
                let mut e = NewEvent::new(EventKind::AuthFailed);
                e.actor = user.clone();
                e.resource = resource.to_string();
                e.action = action.into();
                e.decision = "deny".into();
                e.session_id = session_id.to_string();
                let auth_method = claims.map(Claims::auth_method).unwrap_or("gateway_token");
                match fault {
                    CredentialFault::Invalid(why) => {
                        let class = format!("{:?}", std::mem::discriminant(why));
                        if !self.failures.note(
                            EventKind::AuthFailed,
                            peer.ip(),
                            &class,
                            &why.to_string(),
                        ) {
                            return;
                        }
                        e.reason = why.to_string();
                        e.detail = serde_json::json!({ "client_addr": peer.to_string(), "auth_method": "gateway_token", "tls": tls });
                        info!(reason = %why, "authentication failed");
                    }
                    CredentialFault::Disabled => {
                        e.reason = "user is disabled".into();
                        e.controls = vec!["5.18".into(), "6.5".into()];
                        e.detail = serde_json::json!({ "client_addr": peer.to_string(), "auth_method": auth_method, "token_id": claims.map(|c| c.jti.as_str()) });
                        info!("refused: user is disabled");
                    }
                    CredentialFault::Revoked | CredentialFault::UnknownLogin => {
                        e.reason = "the credential's login was revoked".into();
                        e.controls = vec!["5.18".into()];
                        e.detail = serde_json::json!({ "client_addr": peer.to_string(), "auth_method": auth_method, "login_id": claims.and_then(|c| c.sid.as_deref()) });
                        info!("refused: credential revoked");
                    }
                }
                let _ = self.audit.record_durable(e).await;
            }
            AuthContext::Bearer { action, peer } => {
                let reason = match denial {
                    Denial::Credential { fault, .. } => match fault {
                        CredentialFault::Invalid(why) => why.to_string(),
                        CredentialFault::Disabled => "user is disabled".into(),
                        CredentialFault::Revoked => "the credential was revoked".into(),
                        CredentialFault::UnknownLogin => "the credential's login is unknown".into(),
                    },
                    Denial::Store { error, .. } => format!("store unavailable: {error}"),
                    other => format!("{other:?}"),
                };
                if let Denial::Credential {
                    fault: CredentialFault::Invalid(why),
                    ..
                } = denial
                {
                    let class = format!("bearer {:?}", std::mem::discriminant(why));
                    if !self
                        .failures
                        .note(EventKind::AuthFailed, peer.ip(), &class, &reason)
                    {
                        return;
                    }
                }
                let kind = EventKind::AuthFailed;
                let mut e = NewEvent::new(kind);
                e.actor = "-".into();
                e.action = action.into();
                e.decision = "deny".into();
                e.reason = reason.clone();
                e.detail =
                    serde_json::json!({ "auth_method": "bearer", "client_addr": peer.to_string() });
                if let Err(err) = self.audit.record_durable(e).await {
                    warn!(error = %err, "cannot record a refusal in the audit log");
                }
                info!(kind = kind.as_str(), reason, client.addr = %peer, "refused");
            }
        }
    }

    /// Records a session refused because the store could not answer a check in time, as
    /// `session.failed` (queued, never awaited past [`STORE_LOOKUP_TIMEOUT`]: the store may
    /// be what is slow), counted per source like failed authentications.
    #[allow(clippy::too_many_arguments)]
    async fn store_refusal(
        &self,
        user: &str,
        resource: &str,
        action: &str,
        session_id: SessionId,
        peer: SocketAddr,
        what: StoreCheck,
        error: &str,
    ) {
        let reason = format!(
            "gatehouse could not check {} in time ({error}); the connection was refused (fail closed)",
            what.as_str()
        );
        if !self.failures.note(
            EventKind::SessionFailed,
            peer.ip(),
            &format!("store {}", what.as_str()),
            &reason,
        ) {
            return;
        }
        let mut e = NewEvent::new(EventKind::SessionFailed);
        e.actor = user.to_string();
        e.resource = resource.to_string();
        e.action = action.to_string();
        e.decision = "deny".into();
        e.session_id = session_id.to_string();
        e.reason = reason;
        e.detail =
            serde_json::json!({ "client_addr": peer.to_string(), "store_check": what.as_str() });
        let _ = tokio::time::timeout(STORE_LOOKUP_TIMEOUT, self.audit.record(e)).await;
    }

    /// Counts a connection that `door` refused before it authenticated (`class`: what went
    /// wrong, e.g. `handshake`, `timeout`, `names`, `limit`, `cancel`, `store`), as a
    /// `connection.refused` event while its source is under [`failures::PER_WINDOW`] in the
    /// window, else in the window's summary. Never waits: the event is queued, not committed.
    pub fn count_refusal(&self, door: Door, peer: SocketAddr, class: &str, reason: &str) {
        let key = format!("{} {class}", door.as_str());
        if !self
            .failures
            .note(EventKind::ConnectionRefused, peer.ip(), &key, reason)
        {
            return;
        }
        let mut e = NewEvent::new(EventKind::ConnectionRefused);
        e.actor = "-".into();
        e.action = "connect".into();
        e.decision = "deny".into();
        e.reason = reason.chars().take(300).collect();
        e.detail = serde_json::json!({
            "door": door.as_str(),
            "class": class,
            "client_addr": peer.to_string(),
        });
        let audit = self.audit.clone();
        tokio::spawn(async move {
            let _ = audit.record(e).await;
        });
    }

    /// Authenticates, finds the resource and role, reads the user's grant, asks Cedar and
    /// commits the decision. Only an `Ok` lets the caller open anything.
    pub async fn admit(&self, req: AdmitRequest<'_>) -> Result<Admitted, Denial> {
        let AdmitRequest {
            user,
            credential,
            resource: name,
            role,
            named_as,
            action,
            peer,
            tls,
            session_id,
            door,
        } = req;
        let ctx = AuthContext::Session {
            resource: named_as,
            action,
            session_id,
            peer,
            tls,
            door,
        };
        let claims = self.authenticate(Some(user), credential, &ctx).await?;
        {
            let store = self.store.clone();
            let (name, groups, ts) = (
                user.to_string(),
                claims.groups.clone(),
                crate::audit::event::now_ts(),
            );
            tokio::spawn(async move {
                if let Err(e) = store.record_login(&name, &groups, &ts).await {
                    warn!(error = %e, "cannot record the login in the users table");
                }
            });
        }

        let mut decision_event = NewEvent::new(EventKind::AccessDecision);
        decision_event.actor = user.to_string();
        decision_event.resource = name.to_string();
        decision_event.action = action.into();
        decision_event.session_id = session_id.to_string();
        decision_event.detail = serde_json::json!({
            "groups": claims.groups,
            "client_addr": peer.to_string(),
            "auth_method": claims.auth_method(),
            "mfa": claims.mfa,
            "amr": claims.amr,
            "login_id": claims.sid,
            "token_id": claims.jti,
            "tls": tls,
            "role": role,
        });
        let Some(resource) = self.config.resource(name).cloned() else {
            decision_event.decision = "deny".into();
            decision_event.reason = format!("unknown resource `{name}`");
            let _ = self.audit.record_durable(decision_event).await;
            return Err(Denial::UnknownResource { name: name.into() });
        };
        if !resource.has_role(role) {
            decision_event.decision = "deny".into();
            decision_event.reason = format!("resource `{name}` has no role `{role}`");
            let _ = self.audit.record_durable(decision_event).await;
            return Err(Denial::UnknownRole {
                resource: name.into(),
                role: role.into(),
                roles: resource.role_names.clone(),
            });
        }
        // The grant this user holds for this role, if any (read from the store, so a grant
        // made or revoked anywhere counts at once).
        let now = crate::authn::token::unix_now() as i64;
        let grant = match bounded(self.store.active_grant(user, name, role, now)).await {
            Ok(g) => g,
            Err(error) => {
                warn!(error = %error, "cannot read grants; refusing the connection");
                self.store_refusal(
                    user,
                    named_as,
                    action,
                    session_id,
                    peer,
                    StoreCheck::Grants,
                    &error,
                )
                .await;
                return Err(Denial::Store {
                    what: StoreCheck::Grants,
                    error,
                });
            }
        };
        if let Some(g) = &grant {
            decision_event.detail["grant_id"] = serde_json::json!(g.id);
            decision_event.detail["grant_expires"] = serde_json::json!(g.expires);
        }
        // Standing access an access review revoked stays revoked, whatever the policies say
        // (a grant, approved on its own, still opens it).
        if grant.is_none() {
            match bounded(self.store.access_revocation(user, name, role)).await {
                Ok(None) => {}
                Ok(Some((item, by))) => {
                    decision_event.decision = "deny".into();
                    decision_event.reason = format!(
                        "standing access revoked by access review item {item} (reviewer {by})"
                    );
                    decision_event.detail["review_item"] = serde_json::json!(item);
                    let reason = decision_event.reason.clone();
                    let seq = match self.audit.record_durable(decision_event).await {
                        Ok(seq) => seq,
                        Err(e) => {
                            return Err(Denial::Store {
                                what: StoreCheck::Decision,
                                error: e.to_string(),
                            })
                        }
                    };
                    info!(reason = %reason, "access denied");
                    return Err(Denial::Policy {
                        resource: named_as.to_string(),
                        reason,
                        seq,
                        session_id,
                    });
                }
                Err(error) => {
                    warn!(error = %error, "cannot read access revocations; refusing the connection");
                    return Err(Denial::Store {
                        what: StoreCheck::Grants,
                        error,
                    });
                }
            }
        }
        let request = crate::authz::connect_request(
            user,
            &claims.groups,
            &resource,
            peer.ip(),
            claims.auth_method(),
            claims.mfa,
            role,
            grant.is_some(),
        );
        let decision = self.policies.authorize(&request);
        decision_event.decision = if decision.allowed { "allow" } else { "deny" }.into();
        decision_event.reason = decision.reason.clone();
        decision_event.policy_ids = decision.policy_ids.clone();
        decision_event.controls = decision.controls.clone();
        if !decision.errors.is_empty() {
            decision_event.detail["policy_errors"] = serde_json::json!(decision.errors);
        }

        // The decision is durable before anything else happens (fail closed).
        let mut refused = NewEvent::new(EventKind::SessionFailed);
        refused.actor = decision_event.actor.clone();
        refused.resource = decision_event.resource.clone();
        refused.action = decision_event.action.clone();
        refused.session_id = decision_event.session_id.clone();
        let seq = match self.audit.record_durable(decision_event).await {
            Ok(seq) => seq,
            Err(e) => {
                warn!(error = %e, "access decision could not be recorded; refusing the connection");
                // The decision stays queued and is committed once the store returns; what
                // follows it in the log says that no session came of it, so an "allow" there
                // never reads as access that happened.
                refused.reason = format!(
                    "the access decision could not be committed in time ({e}); the connection was refused (fail closed)"
                );
                let _ =
                    tokio::time::timeout(STORE_LOOKUP_TIMEOUT, self.audit.record(refused)).await;
                return Err(Denial::Store {
                    what: StoreCheck::Decision,
                    error: e.to_string(),
                });
            }
        };
        if !decision.allowed {
            info!(reason = %decision.reason, "access denied");
            return Err(Denial::Policy {
                resource: named_as.into(),
                reason: decision.reason,
                seq,
                session_id,
            });
        }
        tracing::debug!(door = door.as_str(), resource = name, role, seq, "admitted");
        Ok(Admitted {
            claims,
            resource,
            role: role.to_string(),
            grant: grant.map(|g| SessionGrant {
                id: g.id,
                expires_unix: g.expires_unix,
            }),
            seq,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::audit::event::AuditEvent;
    use crate::authn::token::LoginClaims;
    use crate::config::Secrets;

    const CONFIG: &str = r#"
        state_dir = "/tmp/unused"
        [postgres]
        listen = "127.0.0.1:0"
        [[resource]]
        name = "dev-db"
        kind = "postgres"
        address = "127.0.0.1:5432"
        database = "dev"
        labels = { env = "dev", data_class = "internal" }
        credential = { username = "app", password_env = "PW" }
        roles = { admin = { username = "app_admin", password_env = "PW" } }
    "#;

    /// An admission over a fresh SQLite store in a temp dir, the repository's policies and a
    /// token authority of its own.
    async fn admission(name: &str) -> (Admission, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "gh-admission-{}-{name}-{}",
            std::process::id(),
            crate::audit::event::hex(&gatehouse_core::random::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let env: BTreeMap<String, String> = [("PW".to_string(), "pw".to_string())].into();
        let config =
            Config::parse(&dir.join("gatehouse.toml"), CONFIG, &env, Secrets::Load).unwrap();
        let policies =
            crate::authz::load_policies(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
                .unwrap();
        let tokens = TokenAuthority::new(
            dir.join("keys"),
            "gatehouse".into(),
            "gatehouse".into(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let store = Store::open(&format!("sqlite:{}", dir.join("store.db").display()))
            .await
            .unwrap();
        let key = crate::keys::SigningKey::load_or_create(&dir.join("audit.pem")).unwrap();
        let (audit, _writer) = AuditLog::spawn(store.clone(), Arc::new(key), 1000, 64);
        let admission = Admission {
            tokens: Arc::new(tokens),
            policies: crate::authz::Policies::from_engine(policies),
            audit,
            store,
            config: Arc::new(config),
            failures: Default::default(),
        };
        (admission, dir)
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn request<'a>(credential: &'a str, named_as: &'a str) -> AdmitRequest<'a> {
        let (resource, role) = named_as.split_once(':').unwrap_or((named_as, "read"));
        AdmitRequest {
            user: "alice",
            credential,
            resource,
            role,
            named_as,
            action: "connect",
            peer: peer(),
            tls: true,
            session_id: SessionId([7; 16]),
            door: Door::Postgres,
        }
    }

    fn token(a: &Admission, user: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        a.tokens
            .issue(user, &groups, Duration::from_secs(600))
            .unwrap()
            .0
    }

    async fn events(a: &Admission) -> Vec<AuditEvent> {
        a.store.audit_events(0, 1000, None, None).await.unwrap()
    }

    fn detail(e: &AuditEvent) -> serde_json::Value {
        serde_json::from_str(&e.detail).unwrap()
    }

    #[tokio::test]
    async fn an_allowed_connection_is_admitted_after_its_decision_is_durable() {
        let (a, _dir) = admission("allow").await;
        let t = token(&a, "alice", &["engineering"]);
        let admitted = a.admit(request(&t, "dev-db")).await.unwrap();
        assert_eq!(admitted.resource.name, "dev-db");
        assert_eq!(admitted.role, "read");
        assert_eq!(admitted.grant, None);
        assert_eq!(admitted.claims.sub, "alice");
        let events = events(&a).await;
        let e = events.iter().find(|e| e.seq == admitted.seq).unwrap();
        assert_eq!(e.kind, "access.decision");
        assert_eq!(
            (e.actor.as_str(), e.resource.as_str(), e.decision.as_str()),
            ("alice", "dev-db", "allow")
        );
        assert_eq!(e.session_id, SessionId([7; 16]).to_string());
        let d = detail(e);
        assert_eq!(d["role"], "read");
        assert_eq!(d["tls"], true);
        assert_eq!(d["client_addr"], "127.0.0.1:40000");
        assert_eq!(d["auth_method"], "gateway_token");
    }

    #[tokio::test]
    async fn a_bad_credential_is_a_client_side_denial_and_an_auth_failed_event() {
        let (a, _dir) = admission("bad").await;
        let t = token(&a, "bob", &["engineering"]);
        let d = a.admit(request(&t, "dev-db:admin")).await.unwrap_err();
        assert_eq!(d.side(), Side::Client);
        assert!(matches!(
            &d,
            Denial::Credential { user, fault: CredentialFault::Invalid(TokenError::Subject(..)) } if user == "alice"
        ));
        let events = events(&a).await;
        let e = events.iter().find(|e| e.kind == "auth.failed").unwrap();
        assert_eq!(e.resource, "dev-db:admin");
        assert_eq!(e.action, "connect");
        assert!(e.reason.contains("does not match"), "{}", e.reason);
        assert_eq!(
            detail(e),
            serde_json::json!({ "auth_method": "gateway_token", "client_addr": "127.0.0.1:40000", "tls": true })
        );
        assert!(!events.iter().any(|e| e.kind == "access.decision"));
    }

    #[tokio::test]
    async fn a_disabled_user_is_refused_on_both_paths() {
        let (a, _dir) = admission("disabled").await;
        a.store
            .disable_user("alice", "admin", "left", &crate::audit::event::now_ts())
            .await
            .unwrap();
        let t = token(&a, "alice", &["engineering"]);
        let d = a.admit(request(&t, "dev-db")).await.unwrap_err();
        assert_eq!(
            d,
            Denial::Credential {
                user: "alice".into(),
                fault: CredentialFault::Disabled
            }
        );
        let ctx = AuthContext::Bearer {
            action: "whoami",
            peer: peer(),
        };
        assert_eq!(a.authenticate(None, &t, &ctx).await.unwrap_err(), d);
        let events = events(&a).await;
        let refused: Vec<_> = events.iter().filter(|e| e.kind == "auth.failed").collect();
        assert_eq!(refused.len(), 2);
        assert_eq!(refused[0].reason, "user is disabled");
        // The writer adds the kind's own controls to the event's.
        for c in ["5.18", "6.5"] {
            assert!(refused[0].controls.iter().any(|x| x == c), "{c}");
        }
        assert_eq!(
            detail(refused[0])["token_id"],
            a.tokens.verify(&t, "alice", Door::Postgres).unwrap().jti
        );
        assert_eq!(
            (refused[1].actor.as_str(), refused[1].action.as_str()),
            ("-", "whoami")
        );
        assert_eq!(refused[1].reason, "user is disabled");
        assert_eq!(
            detail(refused[1]),
            serde_json::json!({ "auth_method": "bearer", "client_addr": "127.0.0.1:40000" })
        );
    }

    #[tokio::test]
    async fn a_credential_of_an_unknown_login_counts_as_revoked() {
        let (a, _dir) = admission("login").await;
        let login = LoginClaims {
            sid: "no-such-login".into(),
            amr: vec![],
            mfa: false,
        };
        let (t, claims) = a
            .tokens
            .issue_login("alice", &[], Duration::from_secs(600), login)
            .unwrap();
        // At the PostgreSQL door, its password (a sign-in's credential is not one).
        let (pg, _) = a
            .tokens
            .issue_for_door(&claims, Door::Postgres, Duration::from_secs(60))
            .unwrap();
        let d = a.admit(request(&pg, "dev-db")).await.unwrap_err();
        assert!(matches!(
            d,
            Denial::Credential {
                fault: CredentialFault::UnknownLogin,
                ..
            }
        ));
        let ctx = AuthContext::Bearer {
            action: "logout",
            peer: peer(),
        };
        a.authenticate(None, &t, &ctx).await.unwrap_err();
        let events = events(&a).await;
        let reasons: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "auth.failed")
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "the credential's login was revoked",
                "the credential's login is unknown"
            ]
        );
    }

    #[tokio::test]
    async fn unknown_resources_and_roles_are_recorded_denials() {
        let (a, _dir) = admission("unknown").await;
        let t = token(&a, "alice", &["engineering"]);
        let d = a.admit(request(&t, "nope")).await.unwrap_err();
        assert_eq!(
            d,
            Denial::UnknownResource {
                name: "nope".into()
            }
        );
        let d = a.admit(request(&t, "dev-db:owner")).await.unwrap_err();
        assert_eq!(
            d,
            Denial::UnknownRole {
                resource: "dev-db".into(),
                role: "owner".into(),
                roles: vec!["read".into(), "admin".into()],
            }
        );
        assert_eq!(d.side(), Side::Client);
        let events = events(&a).await;
        let reasons: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "access.decision" && e.decision == "deny")
            .map(|e| e.reason.as_str())
            .collect();
        assert_eq!(
            reasons,
            [
                "unknown resource `nope`",
                "resource `dev-db` has no role `owner`"
            ]
        );
    }

    #[tokio::test]
    async fn a_policy_denial_names_its_decision_event() {
        let (a, _dir) = admission("policy").await;
        let t = token(&a, "alice", &["engineering"]);
        let d = a.admit(request(&t, "dev-db:admin")).await.unwrap_err();
        assert_eq!(d.side(), Side::Policy);
        let seq = match &d {
            Denial::Policy {
                resource,
                seq,
                session_id,
                ..
            } if resource == "dev-db:admin" && *session_id == SessionId([7; 16]) => *seq,
            other => unreachable!("expected a policy denial of dev-db:admin, got {other:?}"),
        };
        let events = events(&a).await;
        let e = events.iter().find(|e| e.seq == seq).unwrap();
        assert_eq!(
            (e.kind.as_str(), e.decision.as_str()),
            ("access.decision", "deny")
        );
        assert_eq!(e.resource, "dev-db");
        assert!(e
            .policy_ids
            .iter()
            .any(|p| p == "privileged-role-needs-grant"));
    }

    #[tokio::test]
    async fn a_store_that_cannot_answer_is_a_store_side_denial() {
        let (a, _dir) = admission("store").await;
        let t = token(&a, "alice", &["engineering"]);
        a.store.close().await;
        let d = a.admit(request(&t, "dev-db")).await.unwrap_err();
        assert_eq!(d.side(), Side::Store);
        assert!(matches!(
            d,
            Denial::Store {
                what: StoreCheck::User,
                ..
            }
        ));
    }
}
