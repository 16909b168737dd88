//! A session behind a remote agent, from the gateway's side: the bytes are spliced between the
//! client and the agent's session stream without being parsed (the agent's connector parses,
//! observes and logs them), a kill is forwarded for the agent to tell the client why in the
//! session's protocol, and the end waits for the agent's end-of-session event so that the log
//! shows the session's activity before its end.

use std::time::Duration;

use gatehouse_agent::tunnel::H2Io;
use gatehouse_core::session::SessionSummary;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::Links;
use crate::registry::Canceller;

/// How long a session's end waits for the agent's end-of-session event.
const AGENT_END_WAIT: Duration = Duration::from_secs(3);
/// How long after a kill the agent has to tell the client why and close, before the gateway
/// cuts the client off itself.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// A session the agent opened: what it reported, and the stream that carries its bytes.
pub struct RemoteSession {
    /// The upstream user the agent logged in as (empty where nothing is brokered).
    pub upstream_user: String,
    /// `host:port` the agent connected to.
    pub upstream: String,
    /// The connector's answer for the client (for PostgreSQL a `PgOpened`).
    pub options: serde_json::Value,
    pub(super) links: Links,
    pub(super) agent: String,
    pub(super) session_id: String,
    pub(super) io: Option<H2Io>,
    /// Fires with the agent's statement count once its end event is durable.
    pub(super) end: Option<oneshot::Receiver<u64>>,
}

impl RemoteSession {
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// Cancels the running query through the agent, which holds the upstream.
    pub fn canceller(&self) -> Canceller {
        self.links.canceller(&self.agent, &self.session_id)
    }

    /// Splices `client` and the agent's stream until either closes or `kill` ends the session.
    /// The summary's byte counts are the gateway's; its statement count is the agent's.
    pub async fn relay<C>(
        mut self,
        client: C,
        kill: watch::Receiver<Option<String>>,
    ) -> SessionSummary
    where
        C: AsyncRead + AsyncWrite + Send + Unpin,
    {
        let Some(io) = self.io.take() else {
            return SessionSummary {
                bytes_from_client: 0,
                bytes_to_client: 0,
                statements: 0,
                duration_ms: 0,
                reason: gatehouse_core::session::EndReason::IoError(
                    "the session stream was already used".into(),
                ),
                client_terminated: false,
            };
        };
        let links = self.links.clone();
        let (agent, session) = (self.agent.clone(), self.session_id.clone());
        let ask_agent = move |why: String| async move {
            if let Err(e) = links.kill(&agent, &session, &why).await {
                warn!(error = %e, "cannot ask the agent to end the session; cutting it here");
            }
        };
        let mut summary =
            gatehouse_agent::tcp::splice(io, client, kill, ask_agent, KILL_GRACE).await;
        if let Some(end) = self.end.take() {
            match tokio::time::timeout(AGENT_END_WAIT, end).await {
                Ok(Ok(statements)) => summary.statements = statements,
                _ => info!("the agent's end of the session is not in the log yet; recording the gateway's end now"),
            }
        }
        summary
    }
}

impl Drop for RemoteSession {
    fn drop(&mut self) {
        self.links.forget_end(&self.session_id);
    }
}
