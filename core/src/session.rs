//! What a gateway asks an agent to open and what the agent reports back.
//!
//! These types cross the gateway/agent boundary: in-process today, over the agent tunnel later.
//! They carry no credentials: brokered secrets live with the agent.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A session id: 128 random bits, printed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// How a statement reached the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementKind {
    /// A simple-protocol `Query` message (may hold several statements).
    Query,
    /// An extended-protocol `Parse` that names a prepared statement.
    Prepare,
    /// An extended-protocol `Execute` of a bound portal.
    Execute,
    /// A fast-path `FunctionCall` (a function by OID, outside SQL), where the resource allows
    /// them; the text names the OID and the argument sizes.
    FunctionCall,
}

impl StatementKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StatementKind::Query => "query",
            StatementKind::Prepare => "prepare",
            StatementKind::Execute => "execute",
            StatementKind::FunctionCall => "function_call",
        }
    }
}

/// One observed statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub kind: StatementKind,
    /// Statement text. Over the configured bound, its head and its tail (each half the bound,
    /// on character boundaries) around a line that says how much was left out, so that a long
    /// comment in front cannot push the statement itself out of the log.
    pub text: String,
    /// Length in bytes of the full text when it was cut.
    pub truncated_from: Option<usize>,
    /// SHA-256 (hex) of the full text when it was cut.
    pub sha256: Option<String>,
    /// Prepared statement name, when not the unnamed one.
    pub name: Option<String>,
    /// Bind parameters rendered as text, only when the resource allows it.
    pub params: Option<Vec<Option<String>>>,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// The client sent Terminate or closed its connection.
    ClientClosed,
    /// The upstream server closed the connection.
    UpstreamClosed,
    /// The gateway ended the session (shutdown, kill, grant expiry ...); the text says why.
    Killed(String),
    /// The client broke the protocol (oversized or malformed message).
    ClientProtocolError(String),
    /// An I/O error on either side.
    IoError(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ClientClosed => f.write_str("client closed the connection"),
            EndReason::UpstreamClosed => f.write_str("upstream closed the connection"),
            EndReason::Killed(why) => write!(f, "ended by the gateway: {why}"),
            EndReason::ClientProtocolError(why) => write!(f, "client protocol error: {why}"),
            EndReason::IoError(why) => write!(f, "i/o error: {why}"),
        }
    }
}

/// What the relay counted over a session's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub statements: u64,
    pub duration_ms: u64,
    pub reason: EndReason,
    /// Whether the client said goodbye (`Terminate`). A session that ended any other way may
    /// have left a query running upstream, which the caller should cancel.
    pub client_terminated: bool,
}

impl SessionSummary {
    /// The session ended without the client's `Terminate` and not by the upstream: a query may
    /// still run upstream (PostgreSQL notices a closed socket only when it next writes).
    pub fn may_leave_a_query_running(&self) -> bool {
        !self.client_terminated && self.reason != EndReason::UpstreamClosed
    }
}

/// Where an agent sends what it observes during a session.
///
/// `emit` may wait (back-pressure) but must not drop: the audit log promises every statement.
pub trait EventSink: Send + Sync {
    fn statement(
        &self,
        statement: Statement,
    ) -> impl std::future::Future<Output = Result<(), SinkClosedError>> + Send;
}

/// The audit pipeline behind an [`EventSink`] is gone; the session must end.
#[derive(Debug, thiserror::Error)]
#[error("the audit log is not accepting events")]
pub struct SinkClosedError;
