//! Remote agents, gateway side: the agent CA ([`ca`]), enrollment with one-time join tokens
//! ([`enroll`]), the links agents open to the agent listener ([`link`]), through which the
//! front doors route sessions to resources the gateway cannot reach itself, and such a session
//! as the gateway relays it ([`session`]).

pub mod ca;
pub mod enroll;
mod events;
pub mod link;
pub mod links;
pub mod session;

use std::sync::Arc;

use crate::audit::AuditLog;
use crate::config::AgentsConfig;
use crate::store::Store;

pub use links::{LinkError, Links};
pub use session::RemoteSession;

/// Everything the agent listener and the enrollment endpoint share.
pub struct AgentService {
    pub config: AgentsConfig,
    pub ca: ca::AgentCa,
    pub store: Store,
    pub audit: AuditLog,
    pub links: Links,
    /// Which agent fronts which resource, from the gateway's config: an agent's event for a
    /// session the gateway no longer remembers is accepted only if the session's resource is
    /// one this agent fronts.
    pub fronts: std::collections::HashMap<String, String>,
}

impl AgentService {
    pub fn new(
        config: AgentsConfig,
        state_dir: &std::path::Path,
        store: Store,
        audit: AuditLog,
        behind: Vec<(String, String)>,
    ) -> Result<Arc<AgentService>, ca::CaError> {
        let ca = ca::AgentCa::load_or_create(&state_dir.join("agents"))?;
        Ok(Arc::new(AgentService {
            config,
            ca,
            store,
            audit,
            links: Links::default(),
            fronts: behind.into_iter().collect(),
        }))
    }
}
