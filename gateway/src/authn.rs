//! Authentication: who is connecting.
//!
//! - [`token`]: gateway credentials, short-lived EdDSA JWTs signed by the gateway, used as the
//!   password at the PostgreSQL front door and as the bearer token of the HTTP API.
//! - [`keyring`]: the signing keys behind them, with rotation and the JWKS.
//! - [`oidc`]: the OpenID relying party that turns a sign-in at the company's provider into a
//!   gateway credential (authorization code + PKCE, device flow, refresh re-checks).
//! - [`pending`]: the short-lived, single-use state of logins in progress.

pub mod keyring;
pub mod oidc;
pub mod pending;
pub mod token;
