//! The session registry: every live session, its gateway-issued cancel key and its kill switch.
//!
//! Clients never see upstream backend keys. The gateway hands each session its own random
//! `(pid, secret)`; a `CancelRequest` is forwarded upstream only when both match a live session
//! (the secret compared in constant time). Sessions are keyed by their id; what cancelling
//! means is each protocol's own [`Cancel`] (the registry knows no protocol and no agent link).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use gatehouse_core::random::random_bytes;
use gatehouse_core::session::SessionId;
use tokio::sync::watch;

/// How to cancel what a session runs upstream (PostgreSQL's cancel request, or asking the
/// remote agent that holds the connection). Each protocol brings its own; the registry only
/// calls it for a client whose cancel key matched.
pub trait Cancel: Send + Sync {
    fn cancel(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// A session's canceller.
pub type Canceller = Arc<dyn Cancel>;

/// Who a session runs for: the person, the resource, and the login (sign-in) whose credential
/// admitted it, when it came from one (issued service tokens have none).
#[derive(Debug, Clone)]
pub struct Owner {
    pub user: String,
    pub resource: String,
    pub login: Option<String>,
}

/// What the registry knows of one live session.
pub struct LiveSession {
    pub id: SessionId,
    pub user: String,
    pub resource: String,
    pub login: Option<String>,
    pub started: String,
    /// The grant the session runs under, and when it ends (Unix seconds).
    pub grant: Option<SessionGrant>,
    secret: u32,
    cancel: Option<Canceller>,
    kill: watch::Sender<Option<String>>,
}

/// The grant a session runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionGrant {
    pub id: i64,
    pub expires_unix: i64,
}

/// A session the registry cut.
#[derive(Debug, Clone)]
pub struct CutSession {
    pub id: SessionId,
    pub user: String,
    pub resource: String,
    pub grant: Option<i64>,
}

/// Live sessions by id, and the gateway-issued cancel keys that point at them.
#[derive(Default)]
struct Sessions {
    by_id: HashMap<SessionId, LiveSession>,
    /// Cancel key pid -> session.
    keys: HashMap<u32, SessionId>,
}

#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<Sessions>>,
}

/// Removes the session from the registry when dropped.
pub struct Registration {
    registry: Registry,
    id: SessionId,
    pid: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut m = self.registry.lock();
        m.by_id.remove(&self.id);
        m.keys.remove(&self.pid);
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session; returns its gateway cancel key, the kill receiver, and a guard that
    /// deregisters it.
    pub fn register(
        &self,
        id: SessionId,
        owner: Owner,
        cancel: Option<Canceller>,
        grant: Option<SessionGrant>,
    ) -> (u32, u32, watch::Receiver<Option<String>>, Registration) {
        let (kill, kill_rx) = watch::channel(None);
        let secret = u32::from_be_bytes(random_bytes::<4>());
        let mut map = self.lock();
        let mut pid;
        loop {
            // Keep pids positive as i32, as libpq prints them signed.
            pid = u32::from_be_bytes(random_bytes::<4>()) & 0x7fff_ffff;
            if pid != 0 && !map.keys.contains_key(&pid) {
                break;
            }
        }
        map.keys.insert(pid, id);
        map.by_id.insert(
            id,
            LiveSession {
                id,
                user: owner.user,
                resource: owner.resource,
                login: owner.login,
                started: crate::audit::event::now_ts(),
                grant,
                secret,
                cancel,
                kill,
            },
        );
        (
            pid,
            secret,
            kill_rx,
            Registration {
                registry: self.clone(),
                id,
                pid,
            },
        )
    }

    /// The canceller and session for a gateway cancel key, if it matches a live session (the
    /// secret compared in constant time).
    pub fn cancel_target(
        &self,
        pid: u32,
        secret: u32,
    ) -> Option<(SessionId, String, String, Canceller)> {
        let map = self.lock();
        let s = map.by_id.get(map.keys.get(&pid)?)?;
        if !gatehouse_core::secret::constant_time_eq(&s.secret.to_be_bytes(), &secret.to_be_bytes())
        {
            return None;
        }
        Some((s.id, s.user.clone(), s.resource.clone(), s.cancel.clone()?))
    }

    /// Ends every live session admitted through login `login` (its credential was revoked:
    /// logout, or the provider no longer vouches for it); returns their ids, users, resources.
    pub fn kill_login(&self, login: &str, reason: &str) -> Vec<(SessionId, String, String)> {
        let map = self.lock();
        map.by_id
            .values()
            .filter(|s| s.login.as_deref() == Some(login) && s.kill.borrow().is_none())
            .map(|s| {
                let _ = s.kill.send(Some(reason.to_string()));
                (s.id, s.user.clone(), s.resource.clone())
            })
            .collect()
    }

    /// When the oldest live session started (a log timestamp), if any.
    pub fn oldest_started(&self) -> Option<String> {
        let map = self.lock();
        map.by_id.values().map(|s| s.started.clone()).min()
    }

    /// Logins with at least one live session.
    pub fn logins(&self) -> std::collections::BTreeSet<String> {
        let map = self.lock();
        map.by_id.values().filter_map(|s| s.login.clone()).collect()
    }

    /// Ends every live session of `user` with `reason`; returns their ids and resources.
    pub fn kill_user(&self, user: &str, reason: &str) -> Vec<(SessionId, String)> {
        let map = self.lock();
        map.by_id
            .values()
            .filter(|s| s.user == user && s.kill.borrow().is_none())
            .map(|s| {
                let _ = s.kill.send(Some(reason.to_string()));
                (s.id, s.resource.clone())
            })
            .collect()
    }

    /// Ends the live session `id` with `reason` unless it is already ending; returns its user
    /// and resource.
    pub fn kill_session(&self, id: &str, reason: &str) -> Option<(String, String)> {
        let map = self.lock();
        let s = map
            .by_id
            .values()
            .find(|s| s.id.to_string() == id && s.kill.borrow().is_none())?;
        let _ = s.kill.send(Some(reason.to_string()));
        Some((s.user.clone(), s.resource.clone()))
    }

    /// Ends every live session whose grant ended by `now` (Unix seconds).
    pub fn cut_expired_grants(&self, now: i64) -> Vec<CutSession> {
        self.cut_where(
            |g| g.expires_unix <= now,
            |g| format!("access expired: grant {} ended", g.id),
        )
    }

    /// Ends every live session running under grant `id` with `reason`.
    pub fn cut_grant(&self, id: i64, reason: &str) -> Vec<CutSession> {
        self.cut_where(|g| g.id == id, |_| reason.to_string())
    }

    /// Ends every live session of `user` on `resource` that runs on standing access (no
    /// grant), with `reason`: what an access review's revocation of standing access cuts.
    pub fn cut_standing(&self, user: &str, resource: &str, reason: &str) -> Vec<CutSession> {
        let map = self.lock();
        map.by_id
            .values()
            .filter(|s| s.user == user && s.resource == resource && s.grant.is_none())
            .filter(|s| s.kill.borrow().is_none())
            .map(|s| {
                let _ = s.kill.send(Some(reason.to_string()));
                CutSession {
                    id: s.id,
                    user: s.user.clone(),
                    resource: s.resource.clone(),
                    grant: None,
                }
            })
            .collect()
    }

    fn cut_where(
        &self,
        pred: impl Fn(&SessionGrant) -> bool,
        why: impl Fn(&SessionGrant) -> String,
    ) -> Vec<CutSession> {
        let map = self.lock();
        map.by_id
            .values()
            .filter_map(|s| {
                let g = s.grant.filter(|g| pred(g))?;
                if s.kill.borrow().is_some() {
                    return None;
                }
                let _ = s.kill.send(Some(why(&g)));
                Some(CutSession {
                    id: s.id,
                    user: s.user.clone(),
                    resource: s.resource.clone(),
                    grant: Some(g.id),
                })
            })
            .collect()
    }

    /// Ids of the grants live sessions run under.
    pub fn live_grants(&self) -> std::collections::BTreeSet<i64> {
        let map = self.lock();
        map.by_id
            .values()
            .filter_map(|s| s.grant.map(|g| g.id))
            .collect()
    }

    /// Users with at least one live session.
    pub fn users(&self) -> std::collections::BTreeSet<String> {
        let map = self.lock();
        map.by_id.values().map(|s| s.user.clone()).collect()
    }

    /// Ends every live session with `reason`; returns how many were signalled.
    pub fn kill_all(&self, reason: &str) -> usize {
        let map = self.lock();
        for s in map.by_id.values() {
            let _ = s.kill.send(Some(reason.to_string()));
        }
        map.by_id.len()
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
