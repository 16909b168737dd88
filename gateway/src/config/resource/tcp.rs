//! `kind = "tcp"` resources: any TCP service, relayed as bytes. They take an `address` (or an
//! `agent`) and a `connect_timeout`, nothing brokered, and have only the `read` role; here are
//! their keys, their validation, and the validated [`TcpResource`].

use gatehouse_agent::tcp::TcpTarget;
use serde::Deserialize;

use super::{Context, Reach, ResourceKind};
use crate::config::{duration, invalid, ConfigError};

/// A TCP service the TCP front door ([`crate::tcp`]) relays bytes to.
#[derive(Debug, Clone)]
pub struct TcpResource {
    pub reach: Reach<TcpTarget>,
}

/// The keys a `kind = "tcp"` resource takes besides the common ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpResourceFile {
    address: Option<String>,
    connect_timeout: Option<String>,
}

/// Why a tcp resource takes nothing else, for the error that names a key it does not take.
const WHY_NOT: &str = " (the gateway relays its bytes and brokers no credential: a tcp resource has only the `read` role)";

/// Validates the keys of a `kind = "tcp"` resource.
pub(super) fn parse(rest: toml::Table, cx: &Context<'_>) -> Result<TcpResource, ConfigError> {
    let r: TcpResourceFile = cx.kind_file(rest, ResourceKind::Tcp, WHY_NOT)?;
    let connect_timeout = duration(
        &cx.key("connect_timeout"),
        r.connect_timeout.as_deref(),
        "5s",
    )?;
    let reach = match (cx.agent, r.address) {
        (Some(agent), Some(_)) => {
            return Err(invalid(
                cx.key("agent"),
                format!("a resource behind agent `{agent}` takes no `address`: it stays in the agent's agent.toml"),
            ))
        }
        // The agent's own `connect_timeout` applies there; this one is checked all the same.
        (Some(agent), None) => Reach::Agent(agent.to_string()),
        (None, Some(address)) if address.contains(':') => Reach::Direct(TcpTarget {
            address,
            connect_timeout,
        }),
        (None, Some(a)) => {
            return Err(invalid(
                cx.key("address"),
                format!("`{a}` must be host:port"),
            ))
        }
        (None, None) => {
            return Err(invalid(
                cx.key("address"),
                "give the resource's host:port (or the `agent` that fronts it)",
            ))
        }
    };
    Ok(TcpResource { reach })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::resource::keys_of;
    use crate::config::{Config, Secrets};

    use crate::config::test_support::env;

    const TCP: &str = r#"
        state_dir = "/tmp/state"
        [tcp]
        listen = "127.0.0.1:0"
        [[resource]]
        name = "cache"
        kind = "tcp"
        address = "127.0.0.1:6379"
        labels = { env = "dev", data_class = "internal" }
    "#;

    #[test]
    fn a_tcp_resource_has_an_address_labels_and_the_read_role_only() {
        let c = Config::parse(Path::new("g.toml"), TCP, &env(), Secrets::Load).unwrap();
        let r = c.resource("cache").unwrap();
        assert_eq!(r.kind(), ResourceKind::Tcp);
        assert_eq!(r.kind().as_str(), "tcp");
        assert_eq!(r.address(), Some("127.0.0.1:6379"));
        assert_eq!(r.role_names, ["read"]);
        assert!(r.postgres().is_none());
        let target = r.tcp().unwrap().reach.direct().unwrap();
        assert_eq!(target.address, "127.0.0.1:6379");
        assert_eq!(target.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.tcp.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.tcp.max_connections, 1024);
        assert_eq!(c.tcp.handshake_timeout, Duration::from_secs(3));
        assert_eq!(keys_of::<TcpResourceFile>(), ["address", "connect_timeout"]);
    }

    #[test]
    fn a_tcp_resource_refuses_the_postgres_keys_by_name() {
        let with = |line: &str| TCP.replace("kind = \"tcp\"", &format!("kind = \"tcp\"\n{line}"));
        let cases = [
            (
                with("credential = { username = \"app\", password_env = \"PW\" }"),
                "resource[0].credential",
            ),
            (with("database = \"x\""), "resource[0].database"),
            (
                with("roles = { admin = { username = \"a\", password_env = \"PW\" } }"),
                "resource[0].roles",
            ),
            (with("tls = \"require\""), "resource[0].tls"),
            (with("auth_methods = [\"md5\"]"), "resource[0].auth_methods"),
            (with("log_parameters = false"), "resource[0].log_parameters"),
            (
                TCP.replace("address = \"127.0.0.1:6379\"", ""),
                "resource[0].address",
            ),
            (
                TCP.replace("127.0.0.1:6379", "localhost"),
                "resource[0].address",
            ),
            (
                with("connect_timeout = \"soon\""),
                "resource[0].connect_timeout",
            ),
            (
                TCP.replace("listen = \"127.0.0.1:0\"", "listen = \"x\""),
                "tcp.listen",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(Path::new("g.toml"), &text, &env(), Secrets::Load)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "error `{err}` should name `{key}`");
        }
        // The error says which keys a tcp resource takes.
        let err = Config::parse(
            Path::new("g.toml"),
            &with("database = \"x\""),
            &env(),
            Secrets::Load,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("takes no `database`")
                && err.contains("it takes `address`, `connect_timeout`"),
            "{err}"
        );
        // Behind a remote agent: the agent holds the address; it has only the `read` role.
        let agents = "[agents]\nlisten = \"127.0.0.1:0\"\n";
        let behind = format!(
            "{}{agents}",
            TCP.replace("address = \"127.0.0.1:6379\"", "agent = \"dc1\"")
        );
        let c = Config::parse(Path::new("g.toml"), &behind, &env(), Secrets::Load).unwrap();
        assert_eq!(c.resources[0].agent(), Some("dc1"));
        assert_eq!(c.resources[0].address(), None);
        assert_eq!(c.resources[0].role_names, ["read"]);
        let err = Config::parse(
            Path::new("g.toml"),
            &behind.replace(
                "agent = \"dc1\"",
                "agent = \"dc1\"\nagent_roles = [\"write\"]",
            ),
            &env(),
            Secrets::Load,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("resource[0].agent_roles") && err.contains("only the `read` role"),
            "{err}"
        );
        let err = Config::parse(
            Path::new("g.toml"),
            &behind.replace(
                "agent = \"dc1\"",
                "agent = \"dc1\"\naddress = \"10.0.0.7:6379\"",
            ),
            &env(),
            Secrets::Load,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("resource[0].agent") && err.contains("agent.toml"),
            "{err}"
        );
    }
}
