//! Turns the statements the agent observes into audit events for one session.

use gatehouse_core::session::{EventSink, SinkClosedError, Statement};

use crate::audit::{AuditLog, EventKind, NewEvent};

pub struct SessionSink {
    pub audit: AuditLog,
    pub session_id: String,
    pub actor: String,
    pub resource: String,
}

impl EventSink for SessionSink {
    fn statement(
        &self,
        s: Statement,
    ) -> impl std::future::Future<Output = Result<(), SinkClosedError>> + Send {
        let mut e = NewEvent::new(EventKind::DbStatement);
        e.actor = self.actor.clone();
        e.resource = self.resource.clone();
        e.action = s.kind.as_str().to_string();
        e.session_id = self.session_id.clone();
        let mut detail = serde_json::json!({ "statement": s.text });
        if let Some(n) = s.truncated_from {
            detail["truncated_from_bytes"] = n.into();
        }
        if let Some(name) = s.name {
            detail["prepared_name"] = name.into();
        }
        if let Some(params) = s.params {
            detail["params"] = serde_json::json!(params);
        }
        e.detail = detail;
        async move { self.audit.record(e).await.map_err(|_| SinkClosedError) }
    }
}
