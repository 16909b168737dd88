//! The PostgreSQL front door: speaks the PostgreSQL protocol to clients (psql, pgbench, drivers),
//! terminates TLS, authenticates the gateway token given as the password, asks Cedar, records the
//! decision durably, and hands the session to the agent library.
//!
//! Every refusal reaches the client as a PostgreSQL `ErrorResponse` with a SQLSTATE and a reason,
//! never as a bare reset, except where the protocol gives no way to answer (inside a failed TLS
//! handshake, or a cancel request).

mod frontdoor;
mod handshake;
pub mod sink;

pub use frontdoor::{serve, FrontDoor};
