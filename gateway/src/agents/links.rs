//! The live links, by agent name ([`Links`]): what the front doors route sessions through
//! ([`Links::open_session`], [`Links::cancel`], [`Links::kill`], [`Links::canceller`]), which
//! sessions were opened on which agent (for attributing the agent's events), and the waits
//! for a session's end-of-session event. The listener in [`super::link`] registers each link.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gatehouse_agent::connector::Refusal;
use gatehouse_agent::tunnel::{self, Cancel, H2Io, Kill, OpenSession, Opened};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

use super::link::HANDSHAKE_TIMEOUT;
use super::session::RemoteSession;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("agent `{0}` is not connected to the gateway")]
    NotConnected(String),
    #[error("the link to agent `{agent}` failed: {why}")]
    Failed { agent: String, why: String },
    #[error("agent `{0}` did not answer in time")]
    Timeout(String),
}

pub(super) struct Link {
    pub(super) generation: u64,
    pub(super) sender: h2::client::SendRequest<Bytes>,
    pub(super) close: watch::Sender<Option<String>>,
}

/// The live links, by agent name.
#[derive(Clone, Default)]
pub struct Links {
    pub(super) inner: Arc<Mutex<HashMap<String, Arc<Link>>>>,
    pub(super) generations: Arc<AtomicU64>,
    /// Sessions whose front door waits for the agent's end-of-session event to be durable
    /// (it learns the agent's statement count).
    ends: Arc<Mutex<HashMap<String, oneshot::Sender<u64>>>>,
    /// Sessions opened on a link and not yet forgotten: which agent, user and resource each
    /// was opened for. An agent's events are accepted only for its own sessions.
    opened: Arc<Mutex<HashMap<String, OpenedOn>>>,
}

/// Cancels through the agent that holds the session's upstream.
struct RemoteCancel {
    links: Links,
    agent: String,
    session: String,
}

impl crate::registry::Cancel for RemoteCancel {
    fn cancel(&self) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            self.links
                .cancel(&self.agent, &self.session)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Whom a session was opened for, on which agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OpenedOn {
    pub(super) agent: String,
    pub(super) user: String,
    pub(super) resource: String,
}

fn h2_failed(agent: &str) -> impl FnOnce(h2::Error) -> LinkError + '_ {
    move |e| LinkError::Failed {
        agent: agent.to_string(),
        why: e.to_string(),
    }
}

fn request(path: &str) -> http::Request<()> {
    let mut req = http::Request::new(());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = http::Uri::from_maybe_shared(Bytes::from(format!("http://agent{path}")))
        .unwrap_or_default();
    req
}

/// Opens a stream to the agent: sends `first` as its opening frame, waits for the response head.
pub(super) async fn open_stream<T: serde::Serialize>(
    agent: &str,
    sender: &h2::client::SendRequest<Bytes>,
    path: &str,
    first: Option<&T>,
) -> Result<H2Io, LinkError> {
    let mut sender = sender.clone().ready().await.map_err(h2_failed(agent))?;
    let (response, mut send) = sender
        .send_request(request(path), false)
        .map_err(h2_failed(agent))?;
    if let Some(first) = first {
        let frame = tunnel::frame(first).map_err(|e| LinkError::Failed {
            agent: agent.to_string(),
            why: e.to_string(),
        })?;
        send.send_data(Bytes::from(frame), false)
            .map_err(h2_failed(agent))?;
    }
    let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, response)
        .await
        .map_err(|_| LinkError::Timeout(agent.to_string()))?
        .map_err(h2_failed(agent))?;
    Ok(H2Io::new(send, response.into_body()))
}

impl Links {
    fn get(&self, agent: &str) -> Option<Arc<Link>> {
        lock(&self.inner).get(agent).cloned()
    }

    /// Asks `agent` to open a session: the open session, or the agent's refusal.
    pub async fn open_session(
        &self,
        agent: &str,
        open: &OpenSession,
    ) -> Result<Result<RemoteSession, Refusal>, LinkError> {
        let link = self
            .get(agent)
            .ok_or_else(|| LinkError::NotConnected(agent.to_string()))?;
        // Known before the agent hears of it, so its first event finds the session, and its
        // end (which may come before the front door is done) finds the waiter.
        lock(&self.opened).insert(
            open.session_id.clone(),
            OpenedOn {
                agent: agent.to_string(),
                user: open.user.clone(),
                resource: open.resource.clone(),
            },
        );
        let (end_tx, end) = oneshot::channel();
        lock(&self.ends).insert(open.session_id.clone(), end_tx);
        let mut session = RemoteSession {
            upstream_user: String::new(),
            upstream: String::new(),
            options: serde_json::Value::Null,
            links: self.clone(),
            agent: agent.to_string(),
            session_id: open.session_id.clone(),
            io: None,
            end: Some(end),
        };
        // From here on, dropping `session` forgets the session.
        let (opened, io) = self.open_on(agent, &link, open).await?;
        Ok(match opened {
            Opened::Ok {
                upstream_user,
                upstream,
                options,
            } => {
                session.upstream_user = upstream_user;
                session.upstream = upstream;
                session.options = options;
                session.io = Some(io);
                Ok(session)
            }
            Opened::Refused {
                kind,
                message,
                code,
            } => Err(Refusal {
                kind,
                message,
                code,
            }),
        })
    }

    async fn open_on(
        &self,
        agent: &str,
        link: &Link,
        open: &OpenSession,
    ) -> Result<(Opened, H2Io), LinkError> {
        let mut io = open_stream(agent, &link.sender, "/session", Some(open)).await?;
        let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT * 3, tunnel::read_frame(&mut io))
            .await
            .map_err(|_| LinkError::Timeout(agent.to_string()))?
            .map_err(|e| LinkError::Failed {
                agent: agent.to_string(),
                why: e.to_string(),
            })?
            .ok_or_else(|| LinkError::Failed {
                agent: agent.to_string(),
                why: "the agent closed the session stream without an answer".into(),
            })?;
        Ok((opened, io))
    }

    /// Asks `agent` to cancel the query running in `session_id`.
    pub async fn cancel(&self, agent: &str, session_id: &str) -> Result<(), LinkError> {
        let link = self
            .get(agent)
            .ok_or_else(|| LinkError::NotConnected(agent.to_string()))?;
        let cancel = Cancel {
            session_id: session_id.to_string(),
        };
        let mut io = open_stream(agent, &link.sender, "/cancel", Some(&cancel)).await?;
        let _ = io.shutdown().await;
        Ok(())
    }

    /// Asks `agent` to end `session_id`, telling its client `reason`.
    pub async fn kill(&self, agent: &str, session_id: &str, reason: &str) -> Result<(), LinkError> {
        let link = self
            .get(agent)
            .ok_or_else(|| LinkError::NotConnected(agent.to_string()))?;
        let kill = Kill {
            session_id: session_id.to_string(),
            reason: reason.to_string(),
        };
        let mut io = open_stream(agent, &link.sender, "/kill", Some(&kill)).await?;
        let _ = io.shutdown().await;
        Ok(())
    }

    /// A canceller for a session on `agent`'s link: asks the agent, which holds the upstream.
    pub fn canceller(&self, agent: &str, session_id: &str) -> crate::registry::Canceller {
        Arc::new(RemoteCancel {
            links: self.clone(),
            agent: agent.to_string(),
            session: session_id.to_string(),
        })
    }

    /// Stops waiting for `session_id`'s end (it arrived, or the front door gave up). Events
    /// the agent sends for it later are checked against the store instead.
    pub fn forget_end(&self, session_id: &str) {
        lock(&self.ends).remove(session_id);
        lock(&self.opened).remove(session_id);
    }

    pub(super) fn opened_on(&self, session_id: &str) -> Option<OpenedOn> {
        lock(&self.opened).get(session_id).cloned()
    }

    pub(super) fn ended(&self, session_id: &str, statements: u64) {
        if let Some(tx) = lock(&self.ends).remove(session_id) {
            let _ = tx.send(statements);
        }
    }

    /// Ends every link (shutdown).
    pub fn close_all(&self, why: &str) {
        for link in lock(&self.inner).values() {
            link.close.send_replace(Some(why.to_string()));
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
