//! What the gateway asks the policy engine: who wants to do what to which
//! resource, in which context.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// One access request, evaluated by [`PolicyEngine::authorize`](crate::PolicyEngine::authorize).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// The authenticated user (the Cedar principal `Gatehouse::User::"<user>"`).
    pub user: String,
    /// The user's groups from the identity provider (`Gatehouse::Group::"<g>"`).
    pub groups: Vec<String>,
    /// What the user wants to do.
    pub action: Action,
    /// The resource and its labels.
    pub resource: ResourceAttrs,
    /// Facts about the request itself.
    pub context: RequestContext,
}

/// The actions policies can permit or forbid (`Gatehouse::Action::"<name>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Open a session to a resource.
    Connect,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 1] = [Action::Connect];

    /// The Cedar action id, e.g. `connect`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = ParseActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| ParseActionError {
                action: s.to_owned(),
            })
    }
}

/// A string that names no [`Action`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action `{action}`")]
pub struct ParseActionError {
    /// The string that was given.
    pub action: String,
}

/// A resource as policies see it (`Gatehouse::Resource::"<name>"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceAttrs {
    /// The resource name from the catalogue, e.g. `orders-db`.
    pub name: String,
    /// The protocol, e.g. `postgres`, `ssh`, `http`.
    pub protocol: String,
    /// The environment label, e.g. `prod`, `staging`, `dev`.
    pub env: String,
    /// The data classification label, e.g. `internal`, `confidential`, `restricted`.
    pub data_class: String,
    /// Every other label of the resource, as Cedar tags.
    pub tags: BTreeMap<String, String>,
}

/// Facts about the request, the Cedar `context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// Whether the user authenticated with a second factor.
    pub mfa: bool,
    /// The client address as the gateway saw it.
    pub source_ip: IpAddr,
    /// How the user authenticated, e.g. `token`, `oidc`, `ssh-cert`.
    pub auth_method: String,
    /// The hour of the request in UTC, 0 to 23. A value above 23 is denied.
    pub hour_utc: u8,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_their_names() {
        for action in Action::ALL {
            assert_eq!(action.as_str().parse::<Action>(), Ok(action));
            assert_eq!(action.to_string(), action.as_str());
        }
        assert_eq!(Action::Connect.as_str(), "connect");
    }

    #[test]
    fn unknown_action_is_named_in_the_error() {
        let err = "Connect".parse::<Action>().unwrap_err();
        assert_eq!(err.to_string(), "unknown action `Connect`");
    }
}
