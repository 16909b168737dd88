//! A session's record, the same for every protocol: its row in the sessions table (listed when
//! it starts, marked when it ends) and its `session.end` event. Front doors call [`list`] once
//! the session is established and [`SessionRecord::end`] with the relay's summary.

use gatehouse_core::session::{SessionId, SessionSummary};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::registry::SessionGrant;
use crate::store::sessions::SessionRow;
use crate::store::Store;

/// Who, where and how a session runs, as the sessions table lists it.
pub struct Listing<'a> {
    pub instance: &'a str,
    pub id: SessionId,
    pub user: &'a str,
    pub resource: &'a str,
    pub client_addr: std::net::SocketAddr,
    pub role: &'a str,
    pub grant: Option<SessionGrant>,
    /// `postgres`, `tcp`: recorded in the end event.
    pub protocol: &'static str,
}

/// A listed session, to be ended once.
pub struct SessionRecord {
    store: Store,
    id: SessionId,
    user: String,
    resource: String,
    protocol: &'static str,
    listed: JoinHandle<()>,
}

/// Lists the session in the sessions table (in the background: the session does not wait).
pub fn list(store: &Store, l: Listing<'_>) -> SessionRecord {
    let row = SessionRow {
        id: l.id.to_string(),
        instance: l.instance.to_string(),
        user: l.user.to_string(),
        resource: l.resource.to_string(),
        client_addr: l.client_addr.to_string(),
        started: crate::audit::event::now_ts(),
        ended: None,
        end_reason: None,
        kill_requested_by: None,
        role: Some(l.role.to_string()),
        grant_id: l.grant.map(|g| g.id),
    };
    let listed = {
        let store = store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.session_started(&row).await {
                warn!(error = %e, "cannot list the session in the sessions table");
            }
        })
    };
    SessionRecord {
        store: store.clone(),
        id: l.id,
        user: l.user.to_string(),
        resource: l.resource.to_string(),
        protocol: l.protocol,
        listed,
    }
}

impl SessionRecord {
    /// Records `session.end` (bytes each way, statements, duration, why) and marks the row
    /// ended.
    pub async fn end(self, audit: &AuditLog, summary: &SessionSummary) {
        let mut end = NewEvent::new(EventKind::SessionEnd);
        end.actor = self.user;
        end.resource = self.resource;
        end.action = "disconnect".into();
        end.session_id = self.id.to_string();
        end.reason = summary.reason.to_string();
        end.detail = serde_json::json!({
            "protocol": self.protocol,
            "bytes_from_client": summary.bytes_from_client,
            "bytes_to_client": summary.bytes_to_client,
            "statements": summary.statements,
            "duration_ms": summary.duration_ms,
        });
        let _ = audit.record(end).await;
        let _ = self.listed.await;
        if let Err(e) = self
            .store
            .session_ended(
                &self.id.to_string(),
                &crate::audit::event::now_ts(),
                &summary.reason.to_string(),
            )
            .await
        {
            warn!(error = %e, "cannot mark the session ended in the sessions table");
        }
    }
}
