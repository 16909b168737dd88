//! Turns the statements an agent observes into audit events for one session: in-process for
//! the embedded agent ([`SessionSink`]), or from a remote agent's event stream
//! ([`statement_event`], used by `agents::events`).

use gatehouse_core::session::{EventSink, SinkClosedError, Statement};

use crate::audit::{AuditLog, EventKind, NewEvent};

pub struct SessionSink {
    pub audit: AuditLog,
    pub session_id: String,
    pub actor: String,
    pub resource: String,
}

/// A `db.statement` event. Every origin produces the same shape, so an auditor's queries do not
/// care which agent observed the statement.
#[allow(clippy::too_many_arguments)]
pub fn statement_event(
    actor: &str,
    resource: &str,
    session_id: &str,
    kind: &str,
    text: String,
    truncated_from: Option<usize>,
    sha256: Option<String>,
    name: Option<String>,
    params: Option<Vec<Option<String>>>,
) -> NewEvent {
    let mut e = NewEvent::new(EventKind::DbStatement);
    e.actor = actor.to_string();
    e.resource = resource.to_string();
    e.action = kind.to_string();
    e.session_id = session_id.to_string();
    let mut detail = serde_json::json!({ "statement": text });
    if let Some(n) = truncated_from {
        detail["truncated_from_bytes"] = n.into();
    }
    if let Some(h) = sha256 {
        detail["statement_sha256"] = h.into();
    }
    if let Some(name) = name {
        detail["prepared_name"] = name.into();
    }
    if let Some(params) = params {
        detail["params"] = serde_json::json!(params);
    }
    e.detail = detail;
    e
}

impl EventSink for SessionSink {
    fn statement(
        &self,
        s: Statement,
    ) -> impl std::future::Future<Output = Result<(), SinkClosedError>> + Send {
        let e = statement_event(
            &self.actor,
            &self.resource,
            &self.session_id,
            s.kind.as_str(),
            s.text,
            s.truncated_from,
            s.sha256,
            s.name,
            s.params,
        );
        async move { self.audit.record(e).await.map_err(|_| SinkClosedError) }
    }
}
