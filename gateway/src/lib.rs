//! The Gatehouse gateway library; `src/main.rs` is a thin wrapper around [`cli::main`].
//!
//! A connection flows: [`pg`] front door (TLS, PostgreSQL handshake) -> [`admission`]:
//! [`authn`] (who) -> [`authz`] (Cedar, may they) -> [`audit`] (the decision, durable before
//! anything else) -> `gatehouse_agent` (upstream with the brokered credential, relay, statement
//! observer) -> [`audit`] (statements, session end). [`registry`] holds live sessions for cancel
//! and kill.
//!
//! [`web`] is the HTTPS side: single sign-on through [`authn::oidc`], the JSON API the CLI
//! uses, and the JWKS of gateway credentials.

pub mod access;
pub mod admission;
pub mod agents;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod capacity;
pub mod cli;
pub mod client;
pub mod config;
pub mod evidence;
pub mod keys;
pub mod listener;
pub mod pg;
pub mod policy_reload;
pub mod recording;
pub mod registry;
pub mod server;
pub mod session_record;
pub mod siem;
pub mod ssh;
pub mod store;
pub mod tcp;
pub mod tls;
pub mod web;
