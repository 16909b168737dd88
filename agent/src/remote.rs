//! The remote agent process (`gatehouse-agent`): runs next to the resources, connects out to
//! the gateway, and holds the brokered credentials itself.
//!
//! - [`config`]: `agent.toml` (resources and their credentials, state directory, spool bound).
//! - [`identity`]: enrollment with a join token; the key, certificate and link files.
//! - [`link`]: the mutual-TLS HTTP/2 link to the gateway and the sessions it carries.

pub mod config;
pub mod identity;
pub mod link;
