//! PostgreSQL sessions: connect and authenticate upstream ([`connect`]), relay with a statement
//! observer ([`relay`]), forward cancel requests ([`CancelHandle`]). How far an upstream is
//! trusted (TLS, the authentication methods it may ask for) is [`UpstreamSecurity`].

mod auth;
mod connect;
mod observer;
mod relay;
mod security;

pub use connect::{connect, CancelHandle, PgTarget, Upstream, UpstreamError};
pub use relay::{relay, RelayOptions};
pub use security::{
    AuthMethod, SecuritySettings, SettingError, UpstreamSecurity, UpstreamStream, UpstreamTls,
};
