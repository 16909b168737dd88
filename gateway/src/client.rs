//! The engineer's side of the `gatehouse` command: `login`, `status`, `logout`, `psql`, `env`,
//! and `connect` ([`connect`], for `kind = "tcp"` resources).
//!
//! `login` opens the gateway's `/login` in a browser with a loopback redirect
//! (`http://127.0.0.1:PORT/callback`, RFC 8252) and its own `state` and PKCE challenge; the
//! gateway sends the browser back with a one-time code, which the CLI exchanges (with its
//! verifier) for a gateway credential. `login --device` runs the device flow for machines
//! without a browser. The credential, never the provider's tokens, is kept in
//! `credentials.json` (0600) under `$GATEHOUSE_HOME`, else `$XDG_CONFIG_HOME/gatehouse`, else
//! `~/.config/gatehouse`. `login --token-file` saves an issued (service) token the same way,
//! and `GATEHOUSE_TOKEN` (with `GATEHOUSE_GATEWAY`, `GATEHOUSE_CA_FILE`) makes every command
//! use an issued token without saving anything (`credentials`).
pub mod audit;
pub mod connect;

mod access;
mod api;
mod credentials;
mod login;
mod psql;
pub mod ssh;
mod status;

pub use self::access::{
    decide, decide_review_item, grant, grants, request, requests, resources, review, review_items,
    revoke,
};
pub use self::audit::{audit_events, download_bundle, EventFilters};
pub use self::credentials::{current, env_token, home, load, when, Saved};
pub use self::login::login;
pub use self::psql::{env, pg_env, psql};
pub use self::status::{logout, status};
