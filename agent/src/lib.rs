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
//! [`pg`] is the PostgreSQL connector, [`tcp`] the one for any TCP service.
//! Nothing here knows about policies, tokens or the audit log.

pub mod pg;
pub mod remote;
pub mod spool;
pub mod tcp;
pub mod tunnel;
