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
    /// Open a session to a resource, as `context.role`, possibly under a grant
    /// (`context.has_grant`).
    Connect,
    /// Ask for a time-boxed grant of `context.role` on a resource for
    /// `context.duration_secs`. An allow names how many approvals the grant
    /// needs and its longest duration.
    Request,
    /// Approve someone else's request (`context.requester`) for
    /// `context.role` on a resource for `context.duration_secs`.
    Approve,
    /// Take a grant at once, without approval, in an emergency.
    BreakGlass,
    /// Read the audit log and the evidence through the API (the resource is the log,
    /// `audit-log`, protocol `audit`). Every read is itself recorded.
    ReadAudit,
    /// Forward a port through a session on an SSH resource (`ssh -L`, `ssh -W`), as
    /// `context.role`. Denied unless a policy permits it.
    Forward,
    /// An interactive shell on a session channel of an SSH resource.
    Shell,
    /// A command on a session channel of an SSH resource (`context.command`).
    Exec,
    /// A subsystem (`sftp`, in `context.command`) on a session channel of an SSH resource.
    Subsystem,
    /// Ask the SSH target to listen and forward back (`ssh -R`).
    RemoteForward,
    /// Forward the client's SSH agent to the target (`ssh -A`).
    AgentForward,
    /// Forward X11 (`ssh -X`).
    X11,
}

impl Action {
    /// Every action, in a stable order.
    pub const ALL: [Action; 12] = [
        Action::Connect,
        Action::Request,
        Action::Approve,
        Action::BreakGlass,
        Action::ReadAudit,
        Action::Forward,
        Action::Shell,
        Action::Exec,
        Action::Subsystem,
        Action::RemoteForward,
        Action::AgentForward,
        Action::X11,
    ];

    /// The Cedar action id, e.g. `connect`, `break_glass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Connect => "connect",
            Action::Request => "request",
            Action::Approve => "approve",
            Action::BreakGlass => "break_glass",
            Action::ReadAudit => "read_audit",
            Action::Forward => "forward",
            Action::Shell => "shell",
            Action::Exec => "exec",
            Action::Subsystem => "subsystem",
            Action::RemoteForward => "remote_forward",
            Action::AgentForward => "agent_forward",
            Action::X11 => "x11",
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

/// Facts about the request, the Cedar `context`. Every action gets the same
/// record; a field that does not apply to an action holds its neutral value
/// (see each field).
///
/// [`RequestContext::new`] fills in the neutral values; set the rest with
/// struct update syntax:
///
/// ```
/// # use gatehouse_policies::RequestContext;
/// let context = RequestContext {
///     role: "write".to_owned(),
///     duration_secs: 4 * 3600,
///     ..RequestContext::new("10.0.0.5".parse().unwrap(), "oidc", true, 9)
/// };
/// assert!(!context.has_grant);
/// ```
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
    /// The role asked for, e.g. `read` or `write`. `connect`: the role the
    /// session runs as; `request` and `break_glass`: the role requested;
    /// `approve`: the role of the request being approved.
    pub role: String,
    /// `connect`: whether an active grant covers this user, resource and
    /// role. `false` for the other actions.
    pub has_grant: bool,
    /// `request`, `approve` and `break_glass`: the requested duration in
    /// seconds. `0` for `connect`. A value above `i64::MAX` is denied.
    pub duration_secs: u64,
    /// `approve`: the user who made the request being approved. Empty for the
    /// other actions.
    pub requester: String,
    /// `exec`: the command text; `subsystem`: its name. Empty for the other actions.
    pub command: String,
    /// `forward`: the host the tunnel goes to; `remote_forward`: the address the
    /// target is asked to listen on. Empty for the other actions.
    pub forward_host: String,
    /// `forward`, `remote_forward`: the port. `0` for the other actions.
    pub forward_port: u32,
}

impl RequestContext {
    /// A context with the given facts about the client and the neutral values
    /// of a plain connection: role `read`, no grant, duration `0`, no
    /// requester.
    pub fn new(
        source_ip: IpAddr,
        auth_method: impl Into<String>,
        mfa: bool,
        hour_utc: u8,
    ) -> RequestContext {
        RequestContext {
            mfa,
            source_ip,
            auth_method: auth_method.into(),
            hour_utc,
            role: "read".to_owned(),
            has_grant: false,
            duration_secs: 0,
            requester: String::new(),
            command: String::new(),
            forward_host: String::new(),
            forward_port: 0,
        }
    }
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
        assert_eq!(Action::Request.as_str(), "request");
        assert_eq!(Action::Approve.as_str(), "approve");
        assert_eq!(Action::BreakGlass.as_str(), "break_glass");
        assert_eq!(Action::ReadAudit.as_str(), "read_audit");
        assert_eq!(Action::Forward.as_str(), "forward");
        assert_eq!(Action::Exec.as_str(), "exec");
        assert_eq!(Action::RemoteForward.as_str(), "remote_forward");
        assert_eq!(Action::AgentForward.as_str(), "agent_forward");
        assert_eq!(Action::ALL.len(), 12);
    }

    #[test]
    fn new_context_has_the_neutral_values() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let context = RequestContext::new(ip, "oidc", true, 9);
        assert_eq!(
            context,
            RequestContext {
                mfa: true,
                source_ip: ip,
                auth_method: "oidc".to_owned(),
                hour_utc: 9,
                role: "read".to_owned(),
                has_grant: false,
                duration_secs: 0,
                requester: String::new(),
                command: String::new(),
                forward_host: String::new(),
                forward_port: 0,
            }
        );
    }

    #[test]
    fn unknown_action_is_named_in_the_error() {
        let err = "Connect".parse::<Action>().unwrap_err();
        assert_eq!(err.to_string(), "unknown action `Connect`");
        let err = "break-glass".parse::<Action>().unwrap_err();
        assert_eq!(err.to_string(), "unknown action `break-glass`");
    }
}
