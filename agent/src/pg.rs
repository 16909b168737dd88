//! PostgreSQL sessions: connect and authenticate upstream ([`connect`]), relay with a statement
//! observer ([`relay`]), forward cancel requests ([`CancelHandle`]).

mod auth;
mod connect;
mod observer;
mod relay;
mod scram;

pub use connect::{connect, CancelHandle, PgTarget, Upstream, UpstreamError};
pub use relay::{relay, RelayOptions};
