//! The audit log: typed events, a SHA-256 hash chain over a canonical encoding, Ed25519-signed
//! checkpoints, a group-committing writer, export and verification.
//!
//! Invariants:
//! - Events are numbered 1, 2, 3 ... without gaps; each carries the hash of the one before it
//!   (the first carries [`GENESIS_HASH`]).
//! - An event's hash is SHA-256 over the previous hash and [`event::canonical_bytes`]; nothing
//!   else (no JSON re-serialisation) goes into it.
//! - Only [`writer`] assigns sequence numbers and writes events.
//! - No secret reaches an event: callers pass names, ids and reasons, never credentials.

pub mod event;
pub mod export;
pub mod ocsf;
pub mod verify;
pub mod writer;

pub use event::{AuditEvent, Checkpoint, EventKind, NewEvent};
pub use writer::{AuditError, AuditLog};

/// The `prev_hash` of event 1.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
