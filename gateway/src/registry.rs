//! The session registry: every live session, its gateway-issued cancel key and its kill switch.
//!
//! Clients never see upstream backend keys. The gateway hands each session its own random
//! `(pid, secret)`; a `CancelRequest` is forwarded upstream only when both match a live session
//! (the secret compared in constant time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gatehouse_agent::pg::CancelHandle;
use gatehouse_core::random::random_bytes;
use gatehouse_core::session::SessionId;
use tokio::sync::watch;

/// How to cancel the query running in a session: through the embedded agent, straight to
/// the upstream, or by asking the remote agent that holds the upstream connection.
#[derive(Clone)]
pub enum Canceller {
    Local(CancelHandle),
    Remote {
        links: crate::agents::Links,
        agent: String,
        session: String,
    },
}

impl Canceller {
    pub async fn cancel(&self) -> Result<(), String> {
        match self {
            Canceller::Local(h) => h.cancel().await.map_err(|e| e.to_string()),
            Canceller::Remote {
                links,
                agent,
                session,
            } => links
                .cancel(agent, session)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

/// What the registry knows of one live session.
pub struct LiveSession {
    pub id: SessionId,
    pub user: String,
    pub resource: String,
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

#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<u32, LiveSession>>>,
}

/// Removes the session from the registry when dropped.
pub struct Registration {
    registry: Registry,
    pid: u32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.inner.lock() {
            m.remove(&self.pid);
        }
    }
}

impl Registry {
    /// Registers a session; returns its gateway cancel key, the kill receiver, and a guard that
    /// deregisters it.
    pub fn register(
        &self,
        id: SessionId,
        user: &str,
        resource: &str,
        cancel: Option<Canceller>,
        grant: Option<SessionGrant>,
    ) -> (u32, u32, watch::Receiver<Option<String>>, Registration) {
        let (kill, kill_rx) = watch::channel(None);
        let secret = u32::from_be_bytes(random_bytes::<4>());
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut pid;
        loop {
            // Keep pids positive as i32, as libpq prints them signed.
            pid = u32::from_be_bytes(random_bytes::<4>()) & 0x7fff_ffff;
            if pid != 0 && !map.contains_key(&pid) {
                break;
            }
        }
        map.insert(
            pid,
            LiveSession {
                id,
                user: user.to_string(),
                resource: resource.to_string(),
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
                pid,
            },
        )
    }

    /// The upstream cancel handle and session for a gateway cancel key, if it matches a live
    /// session.
    pub fn cancel_target(
        &self,
        pid: u32,
        secret: u32,
    ) -> Option<(SessionId, String, String, Canceller)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get(&pid)?;
        if !gatehouse_core::secret::constant_time_eq(&s.secret.to_be_bytes(), &secret.to_be_bytes())
        {
            return None;
        }
        Some((s.id, s.user.clone(), s.resource.clone(), s.cancel.clone()?))
    }

    /// Ends every live session of `user` with `reason`; returns their ids and resources.
    pub fn kill_user(&self, user: &str, reason: &str) -> Vec<(SessionId, String)> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
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
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let s = map
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

    fn cut_where(
        &self,
        pred: impl Fn(&SessionGrant) -> bool,
        why: impl Fn(&SessionGrant) -> String,
    ) -> Vec<CutSession> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values()
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
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(|s| s.grant.map(|g| g.id)).collect()
    }

    /// Users with at least one live session.
    pub fn users(&self) -> std::collections::BTreeSet<String> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|s| s.user.clone()).collect()
    }

    /// Ends every live session with `reason`; returns how many were signalled.
    pub fn kill_all(&self, reason: &str) -> usize {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in map.values() {
            let _ = s.kill.send(Some(reason.to_string()));
        }
        map.len()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
