//! `kind = "ssh"` resources: an SSH server the SSH front door ([`crate::ssh`]) connects to as
//! the gateway, with a short-lived certificate from the gateway's upstream CA. They take an
//! `address`, the target's pinned `host_key`, `logins` (the role each upstream login is) and a
//! `connect_timeout`; here are their keys, their validation, and the validated
//! [`SshResource`].

use std::collections::BTreeMap;
use std::time::Duration;

use russh::keys::PublicKey;
use serde::Deserialize;

use super::{Context, ResourceKind, DEFAULT_ROLE};
use crate::config::{duration, invalid, valid_name, ConfigError};

/// An SSH server behind the gateway.
#[derive(Debug, Clone)]
pub struct SshResource {
    /// `host:port`.
    pub address: String,
    /// The target's host key: a session to a target that shows another is refused.
    pub host_key: PublicKey,
    /// Role name -> the login the gateway's certificate names upstream. Always has `read`.
    pub logins: BTreeMap<String, String>,
    pub connect_timeout: Duration,
    /// What a failed recording does to the session.
    pub recording: RecordingMode,
    /// Whether what the client types is recorded as well as what it is shown.
    pub record_input: bool,
}

/// `recording = "strict" | "best-effort"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingMode {
    /// No session goes on unrecorded: a recording that cannot start or fails ends it.
    Strict,
    /// A failed recording is audited and the session goes on.
    BestEffort,
}

impl SshResource {
    /// The role a client's `login%resource` names: a role by name, or the role whose upstream
    /// login it is.
    pub fn role_for(&self, asked: &str) -> Option<&str> {
        if let Some((role, _)) = self.logins.get_key_value(asked) {
            return Some(role);
        }
        self.logins
            .iter()
            .find(|(_, login)| login.as_str() == asked)
            .map(|(role, _)| role.as_str())
    }
}

/// The keys a `kind = "ssh"` resource takes besides the common ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshResourceFile {
    address: Option<String>,
    host_key: Option<String>,
    logins: Option<BTreeMap<String, String>>,
    connect_timeout: Option<String>,
    recording: Option<String>,
    record_input: Option<bool>,
}

const WHY_NOT: &str = " (the gateway logs in upstream with a certificate of its own upstream CA: an ssh resource brokers no password or key)";

/// Validates the keys of a `kind = "ssh"` resource.
pub(super) fn parse(
    rest: toml::Table,
    cx: &Context<'_>,
) -> Result<(SshResource, Vec<String>), ConfigError> {
    let r: SshResourceFile = cx.kind_file(rest, ResourceKind::Ssh, WHY_NOT)?;
    if let Some(agent) = cx.agent {
        return Err(invalid(
            cx.key("agent"),
            format!("ssh resources are reached by the gateway itself for now; `{agent}` cannot front one yet"),
        ));
    }
    let connect_timeout = duration(
        &cx.key("connect_timeout"),
        r.connect_timeout.as_deref(),
        "5s",
    )?;
    let address = match r.address {
        Some(a) if a.contains(':') => a,
        Some(a) => {
            return Err(invalid(
                cx.key("address"),
                format!("`{a}` must be host:port"),
            ))
        }
        None => {
            return Err(invalid(
                cx.key("address"),
                "give the SSH server's host:port",
            ))
        }
    };
    let host_key = match r.host_key {
        Some(text) => PublicKey::from_openssh(text.trim()).map_err(|e| {
            invalid(
                cx.key("host_key"),
                format!("not an OpenSSH public key line (as in the server's /etc/ssh/ssh_host_ed25519_key.pub): {e}"),
            )
        })?,
        None => {
            return Err(invalid(
                cx.key("host_key"),
                "pin the server's host key (the line of its /etc/ssh/ssh_host_ed25519_key.pub): the gateway refuses a target it cannot recognise",
            ))
        }
    };
    let recording = match r.recording.as_deref() {
        None | Some("strict") => RecordingMode::Strict,
        Some("best-effort") => RecordingMode::BestEffort,
        Some(other) => {
            return Err(invalid(
                cx.key("recording"),
                format!("`{other}` is neither \"strict\" (the default: no session goes on unrecorded) nor \"best-effort\""),
            ))
        }
    };
    let logins = r.logins.unwrap_or_default();
    if !logins.contains_key(DEFAULT_ROLE) {
        return Err(invalid(
            cx.key("logins"),
            "name the upstream login of each role, at least `read` (e.g. logins = { read = \"deploy\", admin = \"root\" })",
        ));
    }
    for (role, login) in &logins {
        if !valid_name(role) {
            return Err(invalid(
                cx.key(&format!("logins.{role}")),
                "a role name is 1-63 characters of a-z, 0-9, `-`, `_`",
            ));
        }
        let ok = !login.is_empty()
            && login.len() <= 32
            && login
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(invalid(
                cx.key(&format!("logins.{role}")),
                format!("`{login}` is not a login name (1-32 characters of a-z, A-Z, 0-9, `-`, `_`, `.`)"),
            ));
        }
    }
    let roles = logins
        .keys()
        .filter(|r| r.as_str() != DEFAULT_ROLE)
        .cloned()
        .collect();
    Ok((
        SshResource {
            address,
            host_key,
            logins,
            connect_timeout,
            recording,
            record_input: r.record_input.unwrap_or(false),
        },
        roles,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use crate::config::test_support::env;
    use crate::config::{Config, ResourceKind, Secrets};

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl host";

    fn ssh(extra: &str) -> String {
        format!(
            r#"
            state_dir = "/tmp/state"
            [[resource]]
            name = "web-1"
            kind = "ssh"
            address = "127.0.0.1:22"
            labels = {{ env = "dev", data_class = "internal" }}
            {extra}
            "#
        )
    }

    #[test]
    fn an_ssh_resource_pins_its_host_key_and_maps_roles_to_logins() {
        let text = ssh(&format!(
            "host_key = \"{KEY}\"\nlogins = {{ read = \"deploy\", admin = \"root\" }}"
        ));
        let c = Config::parse(Path::new("g.toml"), &text, &env(), Secrets::Load).unwrap();
        let r = c.resource("web-1").unwrap();
        assert_eq!(r.kind(), ResourceKind::Ssh);
        assert_eq!(r.role_names, ["read", "admin"]);
        let s = r.ssh().unwrap();
        assert_eq!(s.role_for("root"), Some("admin"));
        assert_eq!(s.role_for("admin"), Some("admin"));
        assert_eq!(s.role_for("deploy"), Some("read"));
        assert_eq!(s.role_for("nobody"), None);
        assert_eq!(r.address(), Some("127.0.0.1:22"));
        assert_eq!(s.recording, super::RecordingMode::Strict);
        assert!(!s.record_input);
        let text = ssh(&format!(
            "host_key = \"{KEY}\"\nlogins = {{ read = \"d\" }}\nrecording = \"best-effort\"\nrecord_input = true"
        ));
        let c = Config::parse(Path::new("g.toml"), &text, &env(), Secrets::Load).unwrap();
        let s = c.resource("web-1").unwrap().ssh().unwrap();
        assert_eq!(s.recording, super::RecordingMode::BestEffort);
        assert!(s.record_input);
    }

    #[test]
    fn an_ssh_resource_without_a_pinned_key_or_a_read_login_is_refused() {
        for (extra, key) in [
            ("logins = { read = \"deploy\" }".to_string(), "host_key"),
            (format!("host_key = \"{KEY}\""), "logins"),
            (
                format!("host_key = \"{KEY}\"\nlogins = {{ read = \"a b\" }}"),
                "logins.read",
            ),
            (
                "host_key = \"not a key\"\nlogins = { read = \"deploy\" }".to_string(),
                "host_key",
            ),
            (
                format!("host_key = \"{KEY}\"\nlogins = {{ read = \"d\" }}\npassword_env = \"X\""),
                "password_env",
            ),
            (
                format!("host_key = \"{KEY}\"\nlogins = {{ read = \"d\" }}\nrecording = \"off\""),
                "recording",
            ),
        ] {
            let e = Config::parse(Path::new("g.toml"), &ssh(&extra), &env(), Secrets::Load)
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("resource[0].{key}")), "{extra}: {e}");
        }
    }
}
