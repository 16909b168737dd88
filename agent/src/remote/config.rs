//! `agent.toml`: where the remote agent keeps its state and which resources it fronts, with
//! their brokered credentials (read from env vars or files; they never leave this process).
//!
//! ```toml
//! state_dir = "agent-state"          # keys, certificate, event spool (relative to this file)
//! spool_max_bytes = 67108864         # unacknowledged events kept before new sessions are refused
//!
//! [[resource]]
//! name = "orders-db"
//! kind = "postgres"
//! address = "10.0.0.5:5432"
//! database = "orders"
//! credential = { username = "orders_app", password_env = "ORDERS_DB_PASSWORD" }
//! roles = { write = { username = "orders_rw", password_file = "/run/secrets/orders_rw" } }
//! tls = "verify-full"                # disable | require | verify-full (default with ca_file)
//! ca_file = "/etc/gatehouse/orders-ca.pem"
//! auth_methods = ["scram-sha-256"]   # the default; md5, password (verify-full only), trust
//!
//! [[resource]]
//! name = "cache"
//! kind = "tcp"                       # any TCP service: bytes relayed, nothing brokered
//! address = "10.0.0.7:6379"
//! ```
//!
//! Without `tls` and `ca_file` the upstream connection is plain TCP, and SCRAM-SHA-256 is still
//! the only method the upstream may ask for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_core::clock::parse_duration;
use gatehouse_core::Secret;
use serde::Deserialize;

use crate::connector::Target;
use crate::pg::{PerUserRoles, PgTarget, SecuritySettings};
use crate::tcp::TcpTarget;
use crate::tunnel::Protocol;

/// The role a bare `credential` serves.
pub const DEFAULT_ROLE: &str = "read";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{path}: `{key}`: {why}")]
    Invalid {
        path: PathBuf,
        key: String,
        why: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    spool_max_bytes: Option<u64>,
    #[serde(default)]
    resource: Vec<ResourceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    name: String,
    kind: String,
    address: String,
    database: Option<String>,
    connect_timeout: Option<String>,
    credential: Option<CredentialFile>,
    #[serde(default)]
    roles: BTreeMap<String, CredentialFile>,
    /// `disable`, `require` or `verify-full` (the default when `ca_file` is given).
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    /// What the upstream may ask for; default `["scram-sha-256"]`.
    auth_methods: Option<Vec<String>>,
    /// Each person logs in upstream as a role of their own (`crate::pg::per_user`).
    per_user_roles: Option<PerUserRolesFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PerUserRolesFile {
    /// A role with `CREATEROLE` (and, on PostgreSQL 16+, `ADMIN OPTION` on each role's user).
    admin: CredentialFile,
    /// Default `gh_`.
    prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    username: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub spool_max_bytes: usize,
    pub resources: Vec<AgentResource>,
}

/// A resource this agent fronts: one upstream target per role (a TCP resource has only
/// `read`).
#[derive(Debug, Clone)]
pub struct AgentResource {
    pub name: String,
    pub protocol: Protocol,
    pub roles: BTreeMap<String, Target>,
}

impl AgentConfig {
    /// Reads `path`, resolving relative paths against its directory and reading secrets through
    /// `env` (a lookup, so tests need not touch the process environment).
    pub fn load(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: File = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let invalid = |key: String, why: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            why,
        };
        let spool_max_bytes = file.spool_max_bytes.unwrap_or(64 << 20);
        if !(64 * 1024..=(16u64 << 30)).contains(&spool_max_bytes) {
            return Err(invalid(
                "spool_max_bytes".into(),
                "must be between 65536 and 17179869184".into(),
            ));
        }
        let mut resources: Vec<AgentResource> = Vec::new();
        for (i, r) in file.resource.into_iter().enumerate() {
            let key = |k: &str| format!("resource[{i}].{k}");
            let protocol = match r.kind.as_str() {
                "postgres" => Protocol::Postgres,
                "tcp" => Protocol::Tcp,
                other => {
                    return Err(invalid(
                        key("kind"),
                        format!("`{other}` is not supported (postgres, tcp)"),
                    ))
                }
            };
            if r.name.is_empty() || r.name.contains(':') {
                return Err(invalid(key("name"), "must be non-empty without `:`".into()));
            }
            if resources.iter().any(|x| x.name == r.name) {
                return Err(invalid(key("name"), format!("`{}` appears twice", r.name)));
            }
            if !r.address.contains(':') {
                return Err(invalid(
                    key("address"),
                    format!("`{}` must be host:port", r.address),
                ));
            }
            let connect_timeout = match r.connect_timeout.as_deref() {
                None => Duration::from_secs(5),
                Some(t) => parse_duration(t).ok_or_else(|| {
                    invalid(key("connect_timeout"), format!("`{t}` is not a duration"))
                })?,
            };
            if protocol == Protocol::Tcp {
                let given = [
                    ("credential", r.credential.is_some()),
                    ("roles", !r.roles.is_empty()),
                    ("database", r.database.is_some()),
                    ("tls", r.tls.is_some()),
                    ("ca_file", r.ca_file.is_some()),
                    ("auth_methods", r.auth_methods.is_some()),
                    ("per_user_roles", r.per_user_roles.is_some()),
                ];
                if let Some((k, _)) = given.iter().find(|(_, given)| *given) {
                    return Err(invalid(
                        key(k),
                        format!("a `kind = \"tcp\"` resource takes no `{k}`: the agent relays its bytes and brokers no credential"),
                    ));
                }
                let target = Target::Tcp(TcpTarget {
                    address: r.address,
                    connect_timeout,
                });
                resources.push(AgentResource {
                    name: r.name,
                    protocol,
                    roles: BTreeMap::from([(DEFAULT_ROLE.to_string(), target)]),
                });
                continue;
            }
            let Some(credential) = r.credential else {
                return Err(invalid(
                    key("credential"),
                    "a PostgreSQL resource needs the brokered `credential` of its `read` role"
                        .into(),
                ));
            };
            let security = SecuritySettings {
                tls: r.tls.as_deref(),
                ca_file: r.ca_file.as_deref().map(resolve),
                auth_methods: r.auth_methods.as_deref(),
            }
            .build()
            .map_err(|e| invalid(key(e.key), e.why))?;
            let database = r.database.unwrap_or_else(|| r.name.clone());
            let mut roles = BTreeMap::new();
            let mut creds = vec![(DEFAULT_ROLE.to_string(), credential, key("credential"))];
            for (role, c) in r.roles {
                let k = key(&format!("roles.{role}"));
                creds.push((role, c, k));
            }
            let read_password = |c: &CredentialFile, k: &str| {
                Ok::<_, ConfigError>(match (&c.password_env, &c.password_file) {
                    (Some(var), None) => env(var).ok_or_else(|| {
                        invalid(
                            format!("{k}.password_env"),
                            format!("environment variable `{var}` is not set"),
                        )
                    })?,
                    (None, Some(f)) => {
                        let f = resolve(f);
                        std::fs::read_to_string(&f)
                            .map_err(|e| {
                                invalid(
                                    format!("{k}.password_file"),
                                    format!("cannot read `{}`: {e}", f.display()),
                                )
                            })?
                            .trim_end_matches(['\r', '\n'])
                            .to_string()
                    }
                    _ => {
                        return Err(invalid(
                            k.to_string(),
                            "give exactly one of `password_env`, `password_file`".into(),
                        ))
                    }
                })
            };
            let per_user = match &r.per_user_roles {
                None => None,
                Some(p) => {
                    let prefix = p.prefix.clone().unwrap_or_else(|| "gh_".to_string());
                    if !crate::pg::per_user::valid_prefix(&prefix) {
                        return Err(invalid(
                            key("per_user_roles.prefix"),
                            format!("`{prefix}` must be 1-20 characters of a-z, 0-9, `_`, starting with a letter or `_`"),
                        ));
                    }
                    let k = key("per_user_roles.admin");
                    Some((
                        p.admin.username.clone(),
                        read_password(&p.admin, &k)?,
                        prefix,
                    ))
                }
            };
            for (role, c, k) in creds {
                // With per-user roles the role's user may be NOLOGIN: its password is optional.
                let password = if per_user.is_some()
                    && c.password_env.is_none()
                    && c.password_file.is_none()
                {
                    String::new()
                } else {
                    read_password(&c, &k)?
                };
                roles.insert(
                    role.clone(),
                    Target::Postgres(PgTarget {
                        address: r.address.clone(),
                        database: database.clone(),
                        username: c.username,
                        password: Secret::new(password),
                        connect_timeout,
                        security: security.clone(),
                        per_user: per_user.as_ref().map(|(admin, password, prefix)| {
                            std::sync::Arc::new(PerUserRoles {
                                admin_username: admin.clone(),
                                admin_password: Secret::new(password.clone()),
                                prefix: prefix.clone(),
                                role: role.clone(),
                            })
                        }),
                    }),
                );
            }
            resources.push(AgentResource {
                name: r.name,
                protocol,
                roles,
            });
        }
        if resources.is_empty() {
            return Err(invalid(
                "resource".into(),
                "an agent must front at least one resource".into(),
            ));
        }
        Ok(AgentConfig {
            state_dir: resolve(&file.state_dir.unwrap_or_else(|| "agent-state".into())),
            spool_max_bytes: spool_max_bytes as usize,
            resources,
        })
    }

    pub fn resource(&self, name: &str) -> Option<&AgentResource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent/agent.toml")
    }

    #[test]
    fn the_shipped_example_loads_and_secrets_come_from_the_environment() {
        let env = |k: &str| match k {
            "ORDERS_DB_RO_PASSWORD" => Some("ro-secret".to_string()),
            "ORDERS_DB_PASSWORD" => Some("rw-secret".to_string()),
            _ => None,
        };
        let c = AgentConfig::load(&example(), &env).unwrap();
        let r = c.resource("orders-db").unwrap();
        assert_eq!(r.roles.keys().collect::<Vec<_>>(), vec!["read", "write"]);
        let pg = |role: &str| match &r.roles[role] {
            Target::Postgres(t) => t.clone(),
            other => panic!("{role}: {other:?}"),
        };
        assert_eq!(pg("write").password.expose(), "rw-secret");
        assert_eq!(pg("read").username, "orders_ro");
        // Debug output never shows a password.
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn a_missing_secret_names_its_key() {
        let env = |k: &str| (k == "ORDERS_DB_RO_PASSWORD").then(|| "x".to_string());
        let err = AgentConfig::load(&example(), &env).unwrap_err().to_string();
        assert!(
            err.contains("resource[0].roles.write.password_env"),
            "{err}"
        );
        assert!(err.contains("ORDERS_DB_PASSWORD"), "{err}");
    }

    #[test]
    fn upstream_trust_settings_are_checked_and_name_their_key() {
        let dir = std::env::temp_dir().join(format!("gh-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        let env = |_: &str| Some("pw".to_string());
        let load = |extra: &str| {
            std::fs::write(
                &path,
                format!(
                    "[[resource]]\nname = \"db\"\nkind = \"postgres\"\naddress = \"db.internal:5432\"\n\
                     credential = {{ username = \"u\", password_env = \"P\" }}\n{extra}"
                ),
            )
            .unwrap();
            AgentConfig::load(&path, &env)
        };
        let security = |c: &AgentConfig| match &c.resource("db").unwrap().roles["read"] {
            Target::Postgres(t) => t.security.clone(),
            other => panic!("{other:?}"),
        };
        let c = load("").unwrap();
        let t = security(&c);
        assert_eq!(t.tls.mode(), "disable");
        assert_eq!(t.auth_methods, vec![crate::pg::AuthMethod::ScramSha256]);
        let c = load("tls = \"require\"\nauth_methods = [\"scram-sha-256\", \"md5\"]").unwrap();
        let t = security(&c);
        assert_eq!(t.tls.mode(), "require");
        assert!(t.allows(crate::pg::AuthMethod::Md5));
        for (extra, key) in [
            ("auth_methods = [\"password\"]", "resource[0].auth_methods"),
            ("tls = \"prefer\"", "resource[0].tls"),
            ("ca_file = \"missing-ca.pem\"", "resource[0].ca_file"),
        ] {
            let err = load(extra).unwrap_err().to_string();
            assert!(err.contains(key), "{extra}: {err}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_tcp_resource_takes_an_address_and_nothing_brokered() {
        let dir = std::env::temp_dir().join(format!("gh-agent-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.toml");
        let env = |_: &str| Some("pw".to_string());
        let load = |extra: &str| {
            std::fs::write(
                &path,
                format!("[[resource]]\nname = \"cache\"\nkind = \"tcp\"\naddress = \"cache.internal:6379\"\n{extra}"),
            )
            .unwrap();
            AgentConfig::load(&path, &env)
        };
        let c = load("").unwrap();
        let r = c.resource("cache").unwrap();
        assert_eq!(r.protocol, Protocol::Tcp);
        assert_eq!(r.roles.keys().collect::<Vec<_>>(), vec!["read"]);
        assert_eq!(r.roles["read"].address(), "cache.internal:6379");
        let err = load("credential = { username = \"u\", password_env = \"P\" }")
            .unwrap_err()
            .to_string();
        assert!(err.contains("resource[0].credential"), "{err}");
        assert!(err.contains("brokers no credential"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
