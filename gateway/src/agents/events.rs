//! The event pump: [`events`] takes a link's event stream in order, hands each event to the
//! audit writer and acknowledges it once committed (releasing a session's end wait); an event
//! is a session's activity only if [`attributable`] says the session is this agent's, else it
//! is stored as [`refused_event`].

use std::collections::HashMap;

use bytes::Bytes;
use gatehouse_agent::tunnel::{self, EventBody, SpooledEvent};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::link::HANDSHAKE_TIMEOUT;
use super::links::{open_stream, OpenedOn};
use super::AgentService;
use crate::audit::{AuditError, EventKind, NewEvent};

/// Events committed but not yet acknowledged, per link.
const IN_FLIGHT: usize = 4096;

/// Takes the agent's events in order, hands them to the audit writer, and acknowledges each
/// once it is committed.
pub(super) async fn events(
    svc: &AgentService,
    agent: &str,
    sender: &h2::client::SendRequest<Bytes>,
) -> String {
    let io = match open_stream::<()>(agent, sender, "/events", None).await {
        Ok(io) => io,
        Err(e) => return e.to_string(),
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    type Confirm = oneshot::Receiver<Result<u64, AuditError>>;
    // (agent seq, commit confirmation, the session it ends if it is an end-of-session event)
    let (tx, mut rx) = mpsc::channel::<(u64, Confirm, Option<(String, u64)>)>(IN_FLIGHT);
    let read = async {
        let mut last = 0u64;
        // Sessions of this agent already checked against the store (after a restart).
        let mut known: HashMap<String, OpenedOn> = HashMap::new();
        loop {
            let event: SpooledEvent = match tunnel::read_frame(&mut rd).await {
                Ok(Some(e)) => e,
                Ok(None) => return "the agent ended its event stream".to_string(),
                Err(e) => return format!("bad event stream: {e}"),
            };
            if event.seq <= last {
                return format!(
                    "event stream out of order ({} after {last}); the link is dropped",
                    event.seq
                );
            }
            last = event.seq;
            let seq = event.seq;
            let (audit_event, ends) = match attributable(svc, agent, &event, &mut known).await {
                Attribution::Own => {
                    let ends = match event.body {
                        EventBody::SessionEnd { statements, .. } => {
                            Some((event.session_id.clone(), statements))
                        }
                        _ => None,
                    };
                    (agent_event(agent, event), ends)
                }
                Attribution::Foreign(why) => {
                    warn!(session.id = %event.session_id, reason = %why, "the agent reported an event for a session it does not hold; recorded as refused");
                    (refused_event(agent, event, &why), None)
                }
                Attribution::Unknown(why) => return why,
            };
            let confirm = match svc.audit.record_confirmed(audit_event).await {
                Ok(c) => c,
                Err(e) => return format!("the audit log is closed: {e}"),
            };
            if tx.send((seq, confirm, ends)).await.is_err() {
                return "acknowledgements stopped".to_string();
            }
        }
    };
    let ack = async {
        while let Some((mut seq, confirm, ends)) = rx.recv().await {
            if !matches!(confirm.await, Ok(Ok(_))) {
                return "the audit log could not commit the agent's events".to_string();
            }
            if let Some((session, statements)) = ends {
                svc.links.ended(&session, statements);
            }
            // Acknowledge everything already committed in one go.
            while let Ok((next, confirm, ends)) = rx.try_recv() {
                if !matches!(confirm.await, Ok(Ok(_))) {
                    return "the audit log could not commit the agent's events".to_string();
                }
                if let Some((session, statements)) = ends {
                    svc.links.ended(&session, statements);
                }
                seq = next;
            }
            if let Err(e) = wr.write_all(&seq.to_be_bytes()).await {
                return format!("cannot acknowledge events: {e}");
            }
        }
        "acknowledgements stopped".to_string()
    };
    tokio::select! {
        why = read => why,
        why = ack => why,
    }
}

/// Sessions checked against the store that a link remembers (then it forgets them all).
const KNOWN_SESSIONS: usize = 4096;

/// Whether an agent may report an event.
enum Attribution {
    /// The session was opened on this agent, for the user and resource the event names.
    Own,
    /// It was not: the event is recorded as refused, never as the session's activity.
    Foreign(String),
    /// The store cannot say; the link drops and the agent resends later (nothing is acked).
    Unknown(String),
}

async fn attributable(
    svc: &AgentService,
    agent: &str,
    e: &SpooledEvent,
    known: &mut HashMap<String, OpenedOn>,
) -> Attribution {
    let verdict = |on: &OpenedOn| {
        if on.agent != agent {
            Attribution::Foreign(format!(
                "session {} was opened on agent `{}`, not on `{agent}`",
                e.session_id, on.agent
            ))
        } else if on.user != e.user || on.resource != e.resource {
            Attribution::Foreign(format!(
                "session {} was opened for user `{}` on `{}`, not for `{}` on `{}`",
                e.session_id, on.user, on.resource, e.user, e.resource
            ))
        } else {
            Attribution::Own
        }
    };
    if let Some(on) = svc.links.opened_on(&e.session_id) {
        return verdict(&on);
    }
    if let Some(on) = known.get(&e.session_id) {
        return verdict(on);
    }
    // The front door has forgotten the session (it ended, or the gateway restarted): the
    // durable decision that admitted it says for whom, and the config which agent fronts it.
    let lookup =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, svc.store.admitted_session(&e.session_id)).await;
    match lookup {
        Ok(Ok(Some((user, resource)))) => {
            let Some(fronting) = svc.fronts.get(&resource) else {
                return Attribution::Foreign(format!(
                    "session {} is on resource `{resource}`, which no agent fronts",
                    e.session_id
                ));
            };
            let on = OpenedOn {
                agent: fronting.clone(),
                user,
                resource,
            };
            let answer = verdict(&on);
            if known.len() >= KNOWN_SESSIONS {
                known.clear();
            }
            known.insert(e.session_id.clone(), on);
            answer
        }
        Ok(Ok(None)) => {
            Attribution::Foreign(format!("the gateway admitted no session {}", e.session_id))
        }
        Ok(Err(err)) => Attribution::Unknown(format!(
            "cannot check the agent's session against the store: {err}"
        )),
        Err(_) => Attribution::Unknown(
            "cannot check the agent's session against the store: timed out".into(),
        ),
    }
}

/// An event an agent may not report, as evidence of the attempt: attributed to the agent, the
/// user it named kept as a claim. Stored once like every agent event (its `origin`).
fn refused_event(agent: &str, e: SpooledEvent, why: &str) -> NewEvent {
    let what = match &e.body {
        EventBody::Statement { .. } => "statement",
        EventBody::SessionEnd { .. } => "session_end",
    };
    let mut out = NewEvent::new(EventKind::AgentEventRefused);
    out.actor = format!("agent:{agent}");
    out.resource = e.resource.clone();
    out.action = "report".into();
    out.decision = "deny".into();
    out.reason = why.to_string();
    out.session_id = e.session_id.clone();
    out.detail = serde_json::json!({
        "agent": agent,
        "agent_seq": e.seq,
        "observed_at": e.ts,
        "event": what,
        "claimed_user": e.user,
        "claimed_resource": e.resource,
    });
    out.origin = Some((agent.to_string(), e.seq));
    out
}

/// An agent's spooled event as an audit event.
fn agent_event(agent: &str, e: SpooledEvent) -> NewEvent {
    let mut out = match e.body {
        EventBody::Statement {
            kind,
            text,
            truncated_from,
            sha256,
            name,
            params,
        } => crate::pg::sink::statement_event(
            &e.user,
            &e.resource,
            &e.session_id,
            &kind,
            text,
            truncated_from,
            sha256,
            name,
            params,
        ),
        EventBody::SessionEnd {
            reason,
            statements,
            bytes_from_client,
            bytes_to_client,
            duration_ms,
        } => {
            let mut out = NewEvent::new(EventKind::AgentSessionEnd);
            out.actor = e.user.clone();
            out.resource = e.resource.clone();
            out.action = "disconnect".into();
            out.session_id = e.session_id.clone();
            out.reason = reason;
            out.detail = serde_json::json!({
                "statements": statements,
                "bytes_from_client": bytes_from_client,
                "bytes_to_client": bytes_to_client,
                "duration_ms": duration_ms,
            });
            out
        }
    };
    out.detail["agent"] = serde_json::json!(agent);
    out.detail["agent_seq"] = serde_json::json!(e.seq);
    out.detail["observed_at"] = serde_json::json!(e.ts);
    out.origin = Some((agent.to_string(), e.seq));
    out
}
