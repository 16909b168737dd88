//! Vocabulary shared by the Gatehouse gateway and its agents.
//!
//! - [`secret`]: [`Secret`], a wrapper that keeps credentials out of logs and `Debug` output.
//! - [`clock`]: timestamps in the audit log's format.
//! - [`files`]: private files (keys) written 0600 and atomically.
//! - [`pgwire`]: the PostgreSQL frontend/backend protocol framing both sides speak.
//! - [`session`]: what a gateway asks an agent to open, and the events an agent reports back.

pub mod clock;
pub mod files;
pub mod pgwire;
pub mod random;
pub mod secret;
pub mod session;

pub use secret::Secret;
