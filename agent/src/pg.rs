//! PostgreSQL sessions: connect and authenticate upstream ([`connect`]), relay with a statement
//! observer ([`relay`]), forward cancel requests ([`CancelHandle`]). How far an upstream is
//! trusted (TLS, the authentication methods it may ask for) is [`UpstreamSecurity`].

mod auth;
mod connect;
mod observer;
pub mod per_user;
mod relay;
mod security;
pub mod startup;

use serde::{Deserialize, Serialize};

/// The options of a PostgreSQL session opened through an agent link
/// ([`crate::tunnel::OpenSession::options`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PgOpen {
    /// Startup parameters from the client (the connector forwards only its allow-list).
    pub params: Vec<(String, String)>,
    pub max_message_bytes: usize,
    pub statement_max_bytes: usize,
    pub log_parameters: bool,
    /// Whether fast-path function calls pass (logged); refused when absent.
    #[serde(default)]
    pub function_calls: bool,
}

impl PgOpen {
    pub fn relay_options(&self) -> RelayOptions {
        RelayOptions {
            max_message_bytes: self.max_message_bytes,
            statement_max_bytes: self.statement_max_bytes,
            log_parameters: self.log_parameters,
            function_calls: self.function_calls,
        }
    }
}

/// What the agent hands back for the client once the upstream is open
/// ([`crate::tunnel::Opened::Ok`]'s `options`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PgOpened {
    /// `ParameterStatus` pairs from the upstream's startup.
    pub params: Vec<(String, String)>,
    /// Raw `NoticeResponse` messages from the upstream's startup.
    pub notices: Vec<Vec<u8>>,
}

pub use connect::{connect, CancelHandle, PgTarget, Upstream, UpstreamError};
pub use per_user::{connect_as, PerUserRoles};
pub use relay::{relay, RelayOptions};
pub use security::{
    AuthMethod, SecuritySettings, SettingError, UpstreamSecurity, UpstreamStream, UpstreamTls,
};
