//! Audit event types, the canonical encoding that is hashed, and the checkpoint and manifest
//! messages that are signed.

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// What happened. The string forms are stable: auditors filter on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A gateway token or password was rejected.
    AuthFailed,
    /// The policy decision on a connection (allow or deny).
    AccessDecision,
    /// The upstream session is established and relaying.
    SessionStart,
    /// The upstream session could not be established.
    SessionFailed,
    /// The session ended.
    SessionEnd,
    /// A statement observed in a database session.
    DbStatement,
    /// A cancel request was forwarded upstream.
    CancelForwarded,
    /// An admin disabled a user (leaver, compromised account ...).
    UserDisabled,
    /// An admin enabled a user again.
    UserEnabled,
    /// The gateway cut a live session (its user lost access, or an admin killed it).
    SessionCut,
    /// An admin asked for a live session to be ended.
    SessionKillRequested,
    GatewayStart,
    GatewayStop,
    /// A person signed in through the identity provider.
    LoginSucceeded,
    /// A sign-in failed (provider refusal, bad state or nonce, replayed code, bad redirect ...).
    LoginFailed,
    /// The gateway issued a credential after a login.
    CredentialIssued,
    /// A credential (a login) was revoked: logout, or the provider no longer vouches.
    CredentialRevoked,
    /// The token signing key was rotated.
    KeysRotated,
    /// The HTTPS listener refused a request before any handler (oversized headers ...).
    HttpRefused,
    /// Someone asked for time-boxed access.
    RequestCreated,
    /// An approver approved a request (one of the N it may need).
    RequestApproved,
    /// An approver denied a request.
    RequestDenied,
    /// A request, approval, grant, revocation or review was refused (policy, self-approval,
    /// counted twice, rate limit, bounds).
    RequestRefused,
    /// A grant began (approved request, direct grant, break-glass).
    GrantStart,
    /// A grant ended by expiry or revocation.
    GrantEnd,
    /// Someone revoked a grant before its expiry.
    GrantRevoked,
    /// Break-glass access was taken.
    BreakGlass,
    /// A review item was opened (every break-glass grant leaves one).
    ReviewOpened,
    /// Someone else signed a review item off.
    ReviewSigned,
    /// An admin issued a one-time join token for a remote agent.
    AgentJoinToken,
    /// A remote agent redeemed a join token and received its certificate.
    AgentEnrolled,
    /// An enrollment was refused (unknown, reused or expired token, bad proof of possession).
    AgentEnrollRefused,
    /// A remote agent's link came up (mutual TLS, current certificate).
    AgentConnected,
    /// A remote agent's link went down.
    AgentDisconnected,
    /// A connection to the agent listener was refused (forged, unknown, replaced or revoked
    /// certificate).
    AgentRefused,
    /// An admin revoked a remote agent.
    AgentRevoked,
    /// A remote agent's account of a session it relayed (after all of its statements).
    AgentSessionEnd,
    /// A remote agent's certificate was renewed (new key, new certificate).
    AgentRenewed,
    /// A remote agent reported an event for a session the gateway did not open on that agent
    /// (or for another user or resource than it was opened for): kept as evidence, not as the
    /// session's activity.
    AgentEventRefused,
    /// A front door refused a connection before it authenticated: a malformed or timed-out
    /// handshake, names it could not accept, the listener's limits, a cancel request that
    /// matches no session, a store that could not answer. Counted per source like
    /// [`EventKind::AuthFailed`] (a few events, then a summary).
    ConnectionRefused,
    /// The store crossed its alert level or its quota, or came back under it.
    StoreCapacity,
    /// Rows in the audit log that no gateway's commit seal covers: written into the store
    /// directly (or by something without the audit key).
    AuditForeignRows,
    /// An evidence bundle was built for a period (who, which period, the manifest's hash).
    EvidenceBundle,
    /// The gateway loaded a new policy set (or refused one and kept the old): the set's hash,
    /// the diff by policy id, who applied it and who approved it, the policy tests' result.
    PolicyChanged,
    /// Someone read the audit log through the API (or was refused): who, which filters, how
    /// many events.
    AuditRead,
    /// An admin started an access review campaign: its scope, reviewers, due date, the frozen
    /// snapshot's SHA-256 and its items.
    ReviewCampaignStarted,
    /// A reviewer kept or revoked an item of a campaign (with the event the revocation caused).
    ReviewDecision,
    /// A SIEM stream fell behind (undelivered events or their age over the alert), or caught up.
    SiemLag,
    /// What an SSH session ran: an `exec` command or a subsystem (sftp), as asked.
    SshCommand,
    /// The SSH door refused a channel or a request on one (port forwarding, agent or X11
    /// forwarding, an environment variable, a subsystem): the session goes on without it.
    SshRefused,
    /// A chunk of a session recording was written and synced: its file, size, time span and
    /// SHA-256 (what `audit verify` checks the file against). The last chunk says `last`.
    RecordingChunk,
    /// A session's recording failed (a write error, its bound reached): the session was cut
    /// (`decision` cut, a `strict` resource) or went on unrecorded (`continued`).
    RecordingFailed,
    /// What an sftp (or scp) channel did to a file: uploaded, downloaded (bytes and SHA-256),
    /// removed, renamed, listed, with the target's answer; `unobserved` where the stream could
    /// no longer be followed.
    SshFile,
}

impl EventKind {
    /// Every kind, in declaration order (the evidence catalogue and the SoA list them).
    pub const ALL: [EventKind; 53] = [
        EventKind::AuthFailed,
        EventKind::AccessDecision,
        EventKind::SessionStart,
        EventKind::SessionFailed,
        EventKind::SessionEnd,
        EventKind::DbStatement,
        EventKind::CancelForwarded,
        EventKind::UserDisabled,
        EventKind::UserEnabled,
        EventKind::SessionCut,
        EventKind::SessionKillRequested,
        EventKind::GatewayStart,
        EventKind::GatewayStop,
        EventKind::LoginSucceeded,
        EventKind::LoginFailed,
        EventKind::CredentialIssued,
        EventKind::CredentialRevoked,
        EventKind::KeysRotated,
        EventKind::HttpRefused,
        EventKind::RequestCreated,
        EventKind::RequestApproved,
        EventKind::RequestDenied,
        EventKind::RequestRefused,
        EventKind::GrantStart,
        EventKind::GrantEnd,
        EventKind::GrantRevoked,
        EventKind::BreakGlass,
        EventKind::ReviewOpened,
        EventKind::ReviewSigned,
        EventKind::AgentJoinToken,
        EventKind::AgentEnrolled,
        EventKind::AgentEnrollRefused,
        EventKind::AgentConnected,
        EventKind::AgentDisconnected,
        EventKind::AgentRefused,
        EventKind::AgentRevoked,
        EventKind::AgentSessionEnd,
        EventKind::AgentRenewed,
        EventKind::AgentEventRefused,
        EventKind::ConnectionRefused,
        EventKind::StoreCapacity,
        EventKind::AuditForeignRows,
        EventKind::EvidenceBundle,
        EventKind::PolicyChanged,
        EventKind::AuditRead,
        EventKind::ReviewCampaignStarted,
        EventKind::ReviewDecision,
        EventKind::SiemLag,
        EventKind::SshCommand,
        EventKind::SshRefused,
        EventKind::RecordingChunk,
        EventKind::RecordingFailed,
        EventKind::SshFile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AuthFailed => "auth.failed",
            EventKind::AccessDecision => "access.decision",
            EventKind::SessionStart => "session.start",
            EventKind::SessionFailed => "session.failed",
            EventKind::SessionEnd => "session.end",
            EventKind::DbStatement => "db.statement",
            EventKind::CancelForwarded => "session.cancel",
            EventKind::UserDisabled => "user.disabled",
            EventKind::UserEnabled => "user.enabled",
            EventKind::SessionCut => "session.cut",
            EventKind::SessionKillRequested => "session.kill",
            EventKind::GatewayStart => "gateway.start",
            EventKind::GatewayStop => "gateway.stop",
            EventKind::LoginSucceeded => "login.succeeded",
            EventKind::LoginFailed => "login.failed",
            EventKind::CredentialIssued => "credential.issued",
            EventKind::CredentialRevoked => "credential.revoked",
            EventKind::KeysRotated => "keys.rotated",
            EventKind::HttpRefused => "http.refused",
            EventKind::RequestCreated => "request.created",
            EventKind::RequestApproved => "request.approved",
            EventKind::RequestDenied => "request.denied",
            EventKind::RequestRefused => "request.refused",
            EventKind::GrantStart => "grant.start",
            EventKind::GrantEnd => "grant.end",
            EventKind::GrantRevoked => "grant.revoked",
            EventKind::BreakGlass => "breakglass.used",
            EventKind::ReviewOpened => "review.opened",
            EventKind::ReviewSigned => "review.signed",
            EventKind::AgentJoinToken => "agent.join_token",
            EventKind::AgentEnrolled => "agent.enrolled",
            EventKind::AgentEnrollRefused => "agent.enroll_refused",
            EventKind::AgentConnected => "agent.connected",
            EventKind::AgentDisconnected => "agent.disconnected",
            EventKind::AgentRefused => "agent.refused",
            EventKind::AgentRevoked => "agent.revoked",
            EventKind::AgentSessionEnd => "session.agent_end",
            EventKind::AgentRenewed => "agent.renewed",
            EventKind::AgentEventRefused => "agent.event_refused",
            EventKind::AuditForeignRows => "audit.foreign_rows",
            EventKind::ConnectionRefused => "connection.refused",
            EventKind::StoreCapacity => "store.capacity",
            EventKind::EvidenceBundle => "evidence.bundle",
            EventKind::PolicyChanged => "policy.changed",
            EventKind::AuditRead => "audit.read",
            EventKind::ReviewCampaignStarted => "review.campaign_started",
            EventKind::ReviewDecision => "review.decision",
            EventKind::SiemLag => "siem.lag",
            EventKind::SshCommand => "ssh.command",
            EventKind::SshRefused => "ssh.refused",
            EventKind::RecordingChunk => "recording.chunk",
            EventKind::RecordingFailed => "recording.failed",
            EventKind::SshFile => "ssh.file",
        }
    }

    /// The Annex A controls an event of this kind is evidence for, before any policy's own.
    pub fn controls(self) -> &'static [&'static str] {
        match self {
            // Secure authentication; management of authentication information.
            EventKind::AuthFailed => &["5.17", "8.5"],
            // Access control, information access restriction, secure authentication.
            EventKind::AccessDecision => &["5.15", "8.3", "8.5"],
            // Logging of brokered activity; privileged access rights where it applies.
            EventKind::SessionStart | EventKind::SessionEnd | EventKind::SessionFailed => &["8.15"],
            EventKind::DbStatement | EventKind::CancelForwarded => &["8.15"],
            // User registration and de-registration, access rights, termination of employment.
            EventKind::UserDisabled => &["5.16", "5.18", "6.5"],
            EventKind::UserEnabled => &["5.16", "5.18"],
            EventKind::SessionCut => &["5.18", "6.5", "8.15"],
            // Removal of access rights; management of privileged access.
            EventKind::SessionKillRequested => &["5.18", "8.2"],
            // Logging and clock synchronisation (the event records the gateway's UTC time).
            EventKind::GatewayStart | EventKind::GatewayStop => &["8.15", "8.17"],
            // Secure authentication; management of authentication information.
            EventKind::LoginSucceeded | EventKind::LoginFailed => &["5.17", "8.5"],
            // Identity management (first sight registers the person), authentication information.
            EventKind::CredentialIssued => &["5.16", "5.17", "8.5"],
            // Removal of access rights; termination (a leaver's provider account is gone).
            EventKind::CredentialRevoked => &["5.17", "5.18", "6.5"],
            // Use of cryptography: key management.
            EventKind::KeysRotated => &["8.24"],
            // Networks security; secure authentication (the request never reached a handler).
            EventKind::HttpRefused => &["8.20", "8.5"],
            // Access control; privileged access rights (a ticket adds 8.32, change management).
            EventKind::RequestCreated => &["5.15", "8.2"],
            // Segregation of duties: someone other than the requester decides.
            EventKind::RequestApproved => &["5.3", "5.15", "8.2"],
            EventKind::RequestDenied | EventKind::RequestRefused => &["5.3", "5.15"],
            // Access rights are provisioned, time-boxed and removed.
            EventKind::GrantStart => &["5.15", "5.18", "8.2"],
            EventKind::GrantEnd | EventKind::GrantRevoked => &["5.18", "8.2"],
            // Emergency access is privileged access in response to an incident.
            EventKind::BreakGlass => &["5.15", "5.26", "8.2"],
            // Review of access rights, by someone else.
            EventKind::ReviewOpened => &["5.18"],
            EventKind::ReviewSigned => &["5.3", "5.18"],
            // Authentication information for a machine identity.
            EventKind::AgentJoinToken => &["5.17", "8.20"],
            // Networks security; use of cryptography (a certificate from the agent CA);
            // authentication information.
            EventKind::AgentEnrolled | EventKind::AgentEnrollRefused | EventKind::AgentRefused => {
                &["5.17", "8.20", "8.24"]
            }
            EventKind::AgentConnected => &["8.20", "8.24"],
            EventKind::AgentDisconnected => &["8.20"],
            // Removal of access rights for a machine identity.
            EventKind::AgentRevoked => &["5.17", "5.18", "8.20"],
            EventKind::AgentSessionEnd => &["8.15"],
            // Key management for a machine identity.
            EventKind::AgentRenewed => &["5.17", "8.20", "8.24"],
            // Logging (the log keeps only what it can attribute); networks security.
            EventKind::AgentEventRefused => &["8.15", "8.20"],
            EventKind::AuditForeignRows => &["8.15", "5.28"],
            // Networks security; monitoring for anomalous behaviour.
            EventKind::ConnectionRefused => &["8.16", "8.20"],
            // Capacity management; protection of the log; monitoring.
            EventKind::StoreCapacity => &["8.6", "8.15", "8.16"],
            // Collection of evidence, protection of records, independent review, audit testing
            // from an export rather than live access.
            EventKind::EvidenceBundle => &["5.28", "5.33", "5.35", "8.34"],
            // Access control policy; change management; configuration management.
            EventKind::PolicyChanged => &["5.15", "8.32", "8.9"],
            // Protection of records: access to the log is restricted and itself logged.
            EventKind::AuditRead => &["5.33", "8.15", "5.35"],
            // Review of access rights by someone other than their holder; privileged access.
            EventKind::ReviewCampaignStarted => &["5.18", "5.15"],
            EventKind::ReviewDecision => &["5.18", "5.3", "8.2"],
            // Logging and monitoring: the log's copy in the SIEM is late.
            EventKind::SiemLag => &["8.15", "8.16"],
            // Logging of brokered activity; what a session may use (information access
            // restriction, networks: no tunnel past the gateway).
            EventKind::SshCommand => &["8.15"],
            EventKind::SshRefused => &["8.3", "8.15", "8.20"],
            EventKind::RecordingChunk => &["5.28", "8.15"],
            EventKind::RecordingFailed => &["8.15", "8.16"],
            EventKind::SshFile => &["5.14", "8.15"],
        }
    }
}

/// An event as the rest of the gateway hands it to the writer.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: EventKind,
    pub actor: String,
    pub resource: String,
    pub action: String,
    pub decision: String,
    pub reason: String,
    pub policy_ids: Vec<String>,
    /// Extra controls (from policies); the kind's own are added by [`NewEvent::into_event`].
    pub controls: Vec<String>,
    pub session_id: String,
    pub detail: serde_json::Value,
    /// For an event a remote agent sent: the agent and its sequence number. The writer stores
    /// each (agent, seq) once, advancing the agent's cursor in the same transaction.
    pub origin: Option<(String, u64)>,
}

impl NewEvent {
    pub fn new(kind: EventKind) -> NewEvent {
        NewEvent {
            kind,
            actor: String::new(),
            resource: String::new(),
            action: String::new(),
            decision: String::new(),
            reason: String::new(),
            policy_ids: Vec::new(),
            controls: Vec::new(),
            session_id: String::new(),
            detail: serde_json::Value::Object(Default::default()),
            origin: None,
        }
    }

    /// Seals the event at `seq` after `prev_hash`.
    pub fn into_event(self, seq: u64, ts: String, prev_hash: String) -> AuditEvent {
        self.seal(seq, ts, prev_hash)
    }

    /// Seals a copy of the event at `seq` after `prev_hash`, leaving `self` for a retry.
    pub fn seal(&self, seq: u64, ts: String, prev_hash: String) -> AuditEvent {
        let mut controls: Vec<String> =
            self.kind.controls().iter().map(|c| c.to_string()).collect();
        controls.extend(self.controls.iter().cloned());
        controls.sort_by_key(|c| control_order(c));
        controls.dedup();
        let detail = match &self.detail {
            serde_json::Value::Object(_) => canonical_json(&self.detail),
            other => canonical_json(&serde_json::json!({ "value": other })),
        };
        let mut e = AuditEvent {
            seq,
            ts,
            kind: self.kind.as_str().to_string(),
            actor: self.actor.clone(),
            resource: self.resource.clone(),
            action: self.action.clone(),
            decision: self.decision.clone(),
            reason: self.reason.clone(),
            policy_ids: self.policy_ids.clone(),
            controls,
            session_id: self.session_id.clone(),
            detail,
            prev_hash,
            hash: String::new(),
            seal: None,
        };
        e.hash = e.compute_hash();
        e
    }
}

fn control_order(c: &str) -> (u32, u32) {
    let mut it = c.split('.').map(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    (it.next().unwrap_or(u32::MAX), it.next().unwrap_or(u32::MAX))
}

/// A sealed event, as stored and exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub seq: u64,
    /// UTC, RFC 3339 with microseconds: `2026-11-28T19:01:02.123456Z`.
    pub ts: String,
    pub kind: String,
    pub actor: String,
    pub resource: String,
    pub action: String,
    pub decision: String,
    pub reason: String,
    pub policy_ids: Vec<String>,
    pub controls: Vec<String>,
    pub session_id: String,
    /// Canonical JSON object text (sorted keys, no whitespace).
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
    /// On a commit's last event: the writer's [`Seal`] over the commit (not part of the hash).
    pub seal: Option<String>,
}

/// A writer's signature over one commit: the events `from..=to` (the row that carries it),
/// with the last one's hash. Every commit of a writer that holds the audit key ends with one,
/// so a row written into the store some other way is covered by none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub from: u64,
    pub key_id: String,
    /// Ed25519 over [`Seal::message`], base64.
    pub signature: String,
}

impl Seal {
    pub fn message(from: u64, to: u64, hash: &str) -> Vec<u8> {
        let mut m = b"gatehouse-audit-seal/1\0".to_vec();
        m.extend_from_slice(&from.to_be_bytes());
        m.extend_from_slice(&to.to_be_bytes());
        m.extend_from_slice(hash.as_bytes());
        m
    }

    /// `FROM:KEY_ID:SIGNATURE`, as stored in the `seal` column and exported.
    pub fn encode(&self) -> String {
        format!("{}:{}:{}", self.from, self.key_id, self.signature)
    }

    pub fn decode(text: &str) -> Option<Seal> {
        let (from, rest) = text.split_once(':')?;
        let (key_id, signature) = rest.rsplit_once(':')?;
        Some(Seal {
            from: from.parse().ok()?,
            key_id: key_id.to_string(),
            signature: signature.to_string(),
        })
    }
}

impl AuditEvent {
    /// SHA-256 over `prev_hash` and the canonical encoding, hex.
    pub fn compute_hash(&self) -> String {
        let mut ctx = Context::new(&SHA256);
        ctx.update(&canonical_bytes(self));
        hex(ctx.finish().as_ref())
    }
}

/// The canonical encoding: a version tag, then every field in a fixed order, integers as 8-byte
/// big-endian, strings as a 4-byte big-endian length and UTF-8 bytes, lists as a count and their
/// strings. `hash` itself is excluded; `prev_hash` is included, which chains the events.
pub fn canonical_bytes(e: &AuditEvent) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    fn list(out: &mut Vec<u8>, v: &[String]) {
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        for x in v {
            s(out, x);
        }
    }
    let mut out = Vec::with_capacity(256 + e.detail.len() + e.reason.len());
    s(&mut out, "gatehouse-audit-event/v1");
    s(&mut out, &e.prev_hash);
    out.extend_from_slice(&e.seq.to_be_bytes());
    for f in [
        &e.ts,
        &e.kind,
        &e.actor,
        &e.resource,
        &e.action,
        &e.decision,
        &e.reason,
    ] {
        s(&mut out, f);
    }
    list(&mut out, &e.policy_ids);
    list(&mut out, &e.controls);
    s(&mut out, &e.session_id);
    s(&mut out, &e.detail);
    out
}

/// A signed statement that the log's event `seq` has hash `hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub ts: String,
    pub key_id: String,
    /// Base64 Ed25519 signature over [`Checkpoint::message`].
    pub signature: String,
}

impl Checkpoint {
    pub fn message(seq: u64, hash: &str, ts: &str) -> Vec<u8> {
        format!("gatehouse-audit-checkpoint/v1\nseq={seq}\nhash={hash}\nts={ts}\n").into_bytes()
    }
}

/// JSON text with object keys sorted at every level and no whitespace. Parsing this text and
/// writing it again with this function gives the same bytes, whatever order a JSON library
/// keeps keys in.
pub fn canonical_json(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(x) = map.get(k) {
                        write(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub use gatehouse_core::clock::{format_ts, now_ts};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> AuditEvent {
        let mut n = NewEvent::new(EventKind::AccessDecision);
        n.actor = "alice".into();
        n.controls = vec!["8.2".into(), "5.15".into()];
        n.detail = serde_json::json!({"b": 1, "a": "x"});
        n.into_event(
            1,
            "2026-11-28T00:00:00.000000Z".into(),
            crate::audit::GENESIS_HASH.into(),
        )
    }

    #[test]
    fn all_lists_every_kind_once() {
        // Adding a kind fails to compile here until it is given its place in `ALL`.
        fn index(k: EventKind) -> usize {
            match k {
                EventKind::AuthFailed => 0,
                EventKind::AccessDecision => 1,
                EventKind::SessionStart => 2,
                EventKind::SessionFailed => 3,
                EventKind::SessionEnd => 4,
                EventKind::DbStatement => 5,
                EventKind::CancelForwarded => 6,
                EventKind::UserDisabled => 7,
                EventKind::UserEnabled => 8,
                EventKind::SessionCut => 9,
                EventKind::SessionKillRequested => 10,
                EventKind::GatewayStart => 11,
                EventKind::GatewayStop => 12,
                EventKind::LoginSucceeded => 13,
                EventKind::LoginFailed => 14,
                EventKind::CredentialIssued => 15,
                EventKind::CredentialRevoked => 16,
                EventKind::KeysRotated => 17,
                EventKind::HttpRefused => 18,
                EventKind::RequestCreated => 19,
                EventKind::RequestApproved => 20,
                EventKind::RequestDenied => 21,
                EventKind::RequestRefused => 22,
                EventKind::GrantStart => 23,
                EventKind::GrantEnd => 24,
                EventKind::GrantRevoked => 25,
                EventKind::BreakGlass => 26,
                EventKind::ReviewOpened => 27,
                EventKind::ReviewSigned => 28,
                EventKind::AgentJoinToken => 29,
                EventKind::AgentEnrolled => 30,
                EventKind::AgentEnrollRefused => 31,
                EventKind::AgentConnected => 32,
                EventKind::AgentDisconnected => 33,
                EventKind::AgentRefused => 34,
                EventKind::AgentRevoked => 35,
                EventKind::AgentSessionEnd => 36,
                EventKind::AgentRenewed => 37,
                EventKind::AgentEventRefused => 38,
                EventKind::ConnectionRefused => 39,
                EventKind::StoreCapacity => 40,
                EventKind::AuditForeignRows => 41,
                EventKind::EvidenceBundle => 42,
                EventKind::PolicyChanged => 43,
                EventKind::AuditRead => 44,
                EventKind::ReviewCampaignStarted => 45,
                EventKind::ReviewDecision => 46,
                EventKind::SiemLag => 47,
                EventKind::SshCommand => 48,
                EventKind::SshRefused => 49,
                EventKind::RecordingChunk => 50,
                EventKind::RecordingFailed => 51,
                EventKind::SshFile => 52,
            }
        }
        for (i, k) in EventKind::ALL.iter().enumerate() {
            assert_eq!(index(*k), i, "{}", k.as_str());
        }
        let names: std::collections::BTreeSet<_> =
            EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len());
    }

    #[test]
    fn controls_are_merged_sorted_and_unique() {
        assert_eq!(sample().controls, ["5.15", "8.2", "8.3", "8.5"]);
    }

    #[test]
    fn detail_is_canonical_json() {
        assert_eq!(sample().detail, r#"{"a":"x","b":1}"#);
        let nested = serde_json::json!({"z": [{"y": 1, "x": "é\"q"}], "a": null});
        let text = canonical_json(&nested);
        assert_eq!(text, r#"{"a":null,"z":[{"x":"é\"q","y":1}]}"#);
        let reparsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(canonical_json(&reparsed), text);
    }

    #[test]
    fn every_field_changes_the_hash() {
        let e = sample();
        assert_eq!(e.hash, e.compute_hash());
        let mut variants = Vec::new();
        let mut v = e.clone();
        v.seq = 2;
        variants.push(v);
        let mut v = e.clone();
        v.actor = "mallory".into();
        variants.push(v);
        let mut v = e.clone();
        v.prev_hash = "1".repeat(64);
        variants.push(v);
        let mut v = e.clone();
        v.controls.pop();
        variants.push(v);
        let mut v = e.clone();
        v.detail = r#"{"a":"y","b":1}"#.into();
        variants.push(v);
        // Field boundaries are unambiguous: moving a character between fields changes the hash.
        let mut a = e.clone();
        a.actor = "ab".into();
        a.resource = "c".into();
        let mut b = e.clone();
        b.actor = "a".into();
        b.resource = "bc".into();
        assert_ne!(a.compute_hash(), b.compute_hash());
        for v in variants {
            assert_ne!(v.compute_hash(), e.hash, "{v:?}");
        }
    }

    #[test]
    fn timestamps_sort_as_text() {
        let a = format_ts(time::macros::datetime!(2026-01-02 03:04:05.000007 UTC));
        assert_eq!(a, "2026-01-02T03:04:05.000007Z");
        let b = format_ts(time::macros::datetime!(2026-01-02 03:04:05.000010 UTC));
        assert!(a < b);
    }
}
