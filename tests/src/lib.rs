//! End-to-end test harness for Gatehouse.
//!
//! The harness starts real servers on loopback and drives real clients against them:
//!
//! - [`PgServer`] ([`pg`]): a throwaway PostgreSQL cluster per test, with the `orders`
//!   database, the SCRAM role `orders_app`, the md5 role `legacy_app` and 1000 rows in
//!   `orders`.
//! - [`Gateway`] ([`gateway`]): the real `gatehouse` binary, configured through
//!   [`GatewayConfig`] and [`Resource`], with helpers for tokens, the CLI and the audit log.
//! - [`clients`]: `psql`, `pgbench`, a `sqlx` client and raw wire-protocol helpers for
//!   bad-input tests.
//! - [`RedisServer`] ([`redis`]): a throwaway `redis-server` on loopback, the upstream of the
//!   generic TCP front door's tests, and [`redis_cli`].
//! - [`OidcProvider`] ([`oidc`]): a real OpenID provider (the OpenID Certified `oidc-provider`
//!   npm package under node, `tests/oidc/provider.mjs`) on `http://127.0.0.1:<port>`, configured
//!   through [`OidcSpec`] (clients, [`OidcUser`]s; [`OidcSpec::default_users`] has `alice`,
//!   `dana` with MFA and `mallory`), with test controls such as
//!   [`OidcProvider::disable_user`].
//! - [`Browser`] ([`browser`]): a synchronous browser-like HTTP client (cookie jar, manual
//!   redirects with a recorded history, plain HTML forms) that signs in through the provider
//!   ([`Browser::sign_in`]) and approves device logins ([`Browser::confirm_device`]).
//!
//! Nothing is skipped: when a binary is missing the helpers return an error that says what to
//! install (`scripts/test` installs everything on a fresh Debian machine).
//!
//! A typical gateway test:
//!
//! ```no_run
//! use gatehouse_tests::{psql, GatewayConfig, Gateway, PgServer, Resource};
//!
//! # fn main() -> anyhow::Result<()> {
//! let pg = PgServer::start()?;
//! let gw = Gateway::start(
//!     GatewayConfig::new()
//!         .resource(Resource::orders_db(&pg, "orders-db").label("env", "dev")),
//! )?;
//! let token = gw.token("alice", &["engineering"], "1h")?;
//! let out = psql(gw.pg_addr(), "orders-db", "alice", &token, "select count(*) from orders")?;
//! assert_eq!(out.ok()?.stdout.trim(), "1000");
//! # Ok(())
//! # }
//! ```
//!
//! All helpers are synchronous unless they return a `sqlx`/`tokio` type; they block the
//! calling thread while waiting (at most their documented timeout). Inside `#[tokio::test]`
//! that is fine as long as the test does not also run in-process servers on the same
//! current-thread runtime; use the `*_async` variants in that case.
//!
//! Environment variables the harness reads:
//!
//! - `GATEHOUSE_BIN`: the `gatehouse` binary (default: next to the test binary's target dir,
//!   then `<workspace>/target/debug/gatehouse`).
//! - `PG_BIN`: the directory holding `initdb` and `postgres` (default: the newest
//!   `/usr/lib/postgresql/*/bin`, then `PATH`).
//! - `PATH`: must hold `node` for [`OidcProvider`], which also needs `tests/oidc/node_modules`
//!   (`npm ci --prefix tests/oidc`).
//! - `GATEHOUSE_TESTS_KEEP=1`: keep every temporary directory (they are always kept, and
//!   their path printed, when a test panics).

pub mod agent;
pub mod browser;
pub mod clients;
pub mod gateway;
pub mod oidc;
pub mod pg;
pub mod readme;
pub mod redis;
pub mod rsyslog;
pub mod sshd;
pub mod sso;
pub mod util;
pub mod webhook;

pub use browser::{query_param, Browser, Followed, Form, Hop, Page};
pub use clients::{
    cancel_request, frontend_message, gssenc_request, password_message, pgbench, psql, psql_async,
    psql_script, query_message, raw_connect, raw_password_login, read_backend_message, read_byte,
    read_to_close, rust_client, rust_client_options, ssl_request, startup_packet,
    terminate_message, untagged, BackendMessage, Pgbench, PgbenchOutput, Psql, PsqlOutput,
};
pub use gateway::{gatehouse, gatehouse_bin, Gateway, GatewayConfig, Resource};
pub use oidc::{OidcClient, OidcProvider, OidcSpec, OidcUser};
pub use pg::PgServer;
pub use redis::{redis_cli, RedisServer};
pub use util::{free_port, run_command, send_signal, temp_dir, workspace_root, CmdOutput, TempDir};
