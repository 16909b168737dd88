//! The Gatehouse agent library.
//!
//! An agent sits next to the resources. Given a session the gateway has already authenticated and
//! authorised, it opens the upstream connection with the brokered credential (which only the
//! agent holds), relays bytes both ways and reports every statement it observes to an
//! [`gatehouse_core::session::EventSink`].
//!
//! The gateway embeds this library in-process; a remote agent (`gatehouse-agent`, [`remote`])
//! runs the same code next to the resources and reaches the gateway over an outbound link
//! ([`tunnel`]), spooling its events on disk ([`spool`]) until the gateway holds them.
//! [`pg`] is the PostgreSQL connector, [`tcp`] the one for any TCP service; [`connector`] is the
//! seam that dispatches a session to its protocol's connector.
//! Nothing here knows about policies, tokens or the audit log.

pub mod connector;
pub mod logging;
pub mod pg;
pub mod remote;
pub mod spool;
pub mod tcp;
pub mod tunnel;

/// Resolves with the reason once the gateway ends a session through its kill switch (the
/// registry's watch); a dropped sender means the gateway is shutting down. Every connector's
/// relay selects on it.
pub async fn killed(kill: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(why) = kill.borrow_and_update().clone() {
            return why;
        }
        if kill.changed().await.is_err() {
            return "the gateway is shutting down".to_string();
        }
    }
}
