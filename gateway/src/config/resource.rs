//! `[[resource]]` tables: the keys every resource has (`name`, `kind`, `labels`, `agent`), read
//! first; the rest of the table goes to its kind's module ([`postgres`], [`tcp`]), whose file
//! struct takes only that kind's keys (anything else is an error naming the key and the keys
//! the kind does take). Also here: labels, role names, brokered credentials, and the validated
//! [`Resource`] with its [`ResourceSpec`] and [`Reach`].
//!
//! A new kind is a module with its file struct, validation and validated type, a
//! [`ResourceKind`] and a [`ResourceSpec`] variant.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatehouse_core::Secret;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::{invalid, valid_name, ConfigError, Env, Secrets};

mod postgres;
mod ssh;
mod tcp;

pub use postgres::{PostgresDirect, PostgresResource};
pub use ssh::{RecordingMode, SshResource};
pub use tcp::TcpResource;

/// The role every resource has: its `credential` (a tcp resource's only role).
pub const DEFAULT_ROLE: &str = "read";

/// A resource the gateway fronts.
#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    pub env: String,
    pub data_class: String,
    /// Labels other than `env` and `data_class`.
    pub tags: BTreeMap<String, String>,
    /// The role names (including `read`) sessions may ask for.
    pub role_names: Vec<String>,
    /// What the resource is and how it is reached.
    pub spec: ResourceSpec,
}

/// A resource by kind, with what that kind needs.
#[derive(Debug, Clone)]
pub enum ResourceSpec {
    Postgres(PostgresResource),
    /// Any TCP service, relayed as bytes through the TCP front door ([`crate::tcp`]).
    Tcp(TcpResource),
    /// An SSH server, through the SSH front door ([`crate::ssh`]).
    Ssh(SshResource),
}

/// Where a resource is reached from: the embedded agent, with what it needs to connect, or a
/// remote agent (which holds the address and credentials in its own `agent.toml`).
#[derive(Debug, Clone)]
pub enum Reach<T> {
    Direct(T),
    /// The name of the remote agent that fronts the resource.
    Agent(String),
}

impl<T> Reach<T> {
    /// The remote agent, when the resource is behind one.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Reach::Direct(_) => None,
            Reach::Agent(agent) => Some(agent),
        }
    }

    /// What the embedded agent needs, when it reaches the resource itself.
    pub fn direct(&self) -> Option<&T> {
        match self {
            Reach::Direct(direct) => Some(direct),
            Reach::Agent(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    Postgres,
    /// Any TCP service, relayed as bytes through the TCP front door ([`crate::tcp`]).
    Tcp,
    /// An SSH server, through the SSH front door ([`crate::ssh`]).
    Ssh,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 3] =
        [ResourceKind::Postgres, ResourceKind::Tcp, ResourceKind::Ssh];

    /// The `kind` key's value, and the `protocol` policies see.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Postgres => "postgres",
            ResourceKind::Tcp => "tcp",
            ResourceKind::Ssh => "ssh",
        }
    }
}

impl ResourceSpec {
    pub fn kind(&self) -> ResourceKind {
        match self {
            ResourceSpec::Postgres(_) => ResourceKind::Postgres,
            ResourceSpec::Tcp(_) => ResourceKind::Tcp,
            ResourceSpec::Ssh(_) => ResourceKind::Ssh,
        }
    }
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        self.spec.kind()
    }

    /// The remote agent that fronts the resource; `None` when the embedded agent reaches it.
    pub fn agent(&self) -> Option<&str> {
        match &self.spec {
            ResourceSpec::Postgres(pg) => pg.reach.agent(),
            ResourceSpec::Tcp(tcp) => tcp.reach.agent(),
            ResourceSpec::Ssh(_) => None,
        }
    }

    /// The upstream `host:port` the embedded agent dials; `None` behind a remote agent.
    pub fn address(&self) -> Option<&str> {
        match &self.spec {
            ResourceSpec::Postgres(pg) => pg.reach.direct().map(|d| d.address.as_str()),
            ResourceSpec::Tcp(tcp) => tcp.reach.direct().map(|t| t.address.as_str()),
            ResourceSpec::Ssh(ssh) => Some(ssh.address.as_str()),
        }
    }

    /// The PostgreSQL part, for a `kind = "postgres"` resource.
    pub fn postgres(&self) -> Option<&PostgresResource> {
        match &self.spec {
            ResourceSpec::Postgres(pg) => Some(pg),
            _ => None,
        }
    }

    /// The SSH part, for a `kind = "ssh"` resource.
    pub fn ssh(&self) -> Option<&SshResource> {
        match &self.spec {
            ResourceSpec::Ssh(ssh) => Some(ssh),
            _ => None,
        }
    }

    /// The TCP part, for a `kind = "tcp"` resource.
    pub fn tcp(&self) -> Option<&TcpResource> {
        match &self.spec {
            ResourceSpec::Tcp(tcp) => Some(tcp),
            _ => None,
        }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.role_names.iter().any(|r| r == role)
    }
}

/// The brokered credential a role connects upstream with.
#[derive(Debug, Clone)]
pub struct RoleCredential {
    pub username: String,
    pub password: Secret<String>,
}

// === file format ===

/// The keys every `[[resource]]` takes, whatever its kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonFile {
    name: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// The remote agent that fronts this resource (it holds the address and credentials).
    agent: Option<String>,
}

/// A brokered credential: a username and where its password is read from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialFile {
    username: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
}

/// What a kind's validation needs besides its own keys.
struct Context<'a> {
    /// The resource's place in the file, for `resource[N].key`.
    index: usize,
    name: &'a str,
    /// The remote agent the resource is behind (already checked to be a valid name).
    agent: Option<&'a str>,
    env: &'a dyn Env,
    secrets: Secrets,
    resolve: &'a dyn Fn(&Path) -> PathBuf,
}

impl Context<'_> {
    /// `resource[N].k`.
    fn key(&self, k: &str) -> String {
        format!("resource[{}].{k}", self.index)
    }

    /// Deserializes the kind's keys: first a key the kind does not take is refused by name, with
    /// the keys it does take and `why_not` (what the kind is, in a few words); then type errors
    /// name their key too.
    fn kind_file<T: DeserializeOwned>(
        &self,
        rest: toml::Table,
        kind: ResourceKind,
        why_not: &str,
    ) -> Result<T, ConfigError> {
        let takes = keys_of::<T>();
        if let Some(k) = rest.keys().find(|k| !takes.contains(&k.as_str())) {
            let list = |keys: &[&str]| {
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(invalid(
                self.key(k),
                format!(
                    "resource `{}`: a `kind = \"{}\"` resource takes no `{k}`; it takes {}, besides the common {}{why_not}",
                    self.name,
                    kind.as_str(),
                    list(takes),
                    list(keys_of::<CommonFile>()),
                ),
            ));
        }
        from_table(rest, self.index)
    }

    /// The role's credential, its password read through [`read_secret`].
    fn credential(&self, key: &str, c: &CredentialFile) -> Result<RoleCredential, ConfigError> {
        let password = read_secret(key, c, self.env, self.secrets, self.resolve)?;
        Ok(RoleCredential {
            username: c.username.clone(),
            password: Secret::new(password),
        })
    }
}

/// Validates the `[[resource]]` tables; `agents_section`: whether `[agents]` is configured, which
/// a resource behind an agent needs.
pub(super) fn parse(
    tables: Vec<toml::Table>,
    agents_section: bool,
    env: &dyn Env,
    secrets: Secrets,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<Resource>, ConfigError> {
    let mut resources: Vec<Resource> = Vec::new();
    for (index, table) in tables.into_iter().enumerate() {
        let key = |k: &str| format!("resource[{index}].{k}");
        let common_keys = keys_of::<CommonFile>();
        let (common, rest): (toml::Table, toml::Table) = table
            .into_iter()
            .partition(|(k, _)| common_keys.contains(&k.as_str()));
        let common: CommonFile = from_table(common, index)?;

        let name = common
            .name
            .ok_or_else(|| invalid(key("name"), "every resource needs a `name`"))?;
        if !valid_name(&name) {
            return Err(invalid(
                key("name"),
                format!("`{name}` must be 1-63 characters of a-z, 0-9, `-`, `_`"),
            ));
        }
        if resources.iter().any(|x| x.name == name) {
            return Err(invalid(key("name"), format!("`{name}` is defined twice")));
        }
        let kinds = ResourceKind::ALL
            .iter()
            .map(|k| format!("`{}`", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        let kind_text = common.kind.ok_or_else(|| {
            invalid(
                key("kind"),
                format!("every resource needs a `kind` ({kinds})"),
            )
        })?;
        let kind = ResourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind_text)
            .ok_or_else(|| {
                invalid(
                    key("kind"),
                    format!("`{kind_text}` is not a supported kind ({kinds})"),
                )
            })?;
        if let Some(agent) = &common.agent {
            if !valid_name(agent) {
                return Err(invalid(
                    key("agent"),
                    format!("`{agent}` must be 1-63 characters of a-z, 0-9, `-`, `_`"),
                ));
            }
        }
        let mut labels = common.labels;
        let env_label = labels
            .remove("env")
            .ok_or_else(|| invalid(key("labels.env"), "every resource needs an `env` label"))?;
        let data_class = labels.remove("data_class").ok_or_else(|| {
            invalid(
                key("labels.data_class"),
                "every resource needs a `data_class` label",
            )
        })?;

        let cx = Context {
            index,
            name: &name,
            agent: common.agent.as_deref(),
            env,
            secrets,
            resolve,
        };
        let mut role_names = vec![DEFAULT_ROLE.to_string()];
        let spec = match kind {
            ResourceKind::Postgres => {
                let (pg, roles) = postgres::parse(rest, &cx)?;
                role_names.extend(roles);
                ResourceSpec::Postgres(pg)
            }
            ResourceKind::Tcp => ResourceSpec::Tcp(tcp::parse(rest, &cx)?),
            ResourceKind::Ssh => {
                let (ssh, roles) = ssh::parse(rest, &cx)?;
                role_names.extend(roles);
                ResourceSpec::Ssh(ssh)
            }
        };
        resources.push(Resource {
            name,
            env: env_label,
            data_class,
            tags: labels,
            role_names,
            spec,
        });
    }

    if !agents_section {
        if let Some((i, r)) = resources
            .iter()
            .enumerate()
            .find(|(_, r)| r.agent().is_some())
        {
            return Err(invalid(
                format!("resource[{i}].agent"),
                format!(
                    "resource `{}` is behind an agent, but there is no `[agents]` section for agents to connect to",
                    r.name
                ),
            ));
        }
    }
    Ok(resources)
}

/// Role names beyond `read`: 1-32 characters of a-z, `-`, `_`; `key` names where it was given.
fn check_role(role: &str, key: String) -> Result<(), ConfigError> {
    if role.is_empty()
        || role.len() > 32
        || !role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '_' || c == '-')
    {
        return Err(invalid(
            key,
            "role names are 1-32 characters of a-z, `-`, `_`",
        ));
    }
    if role == DEFAULT_ROLE {
        return Err(invalid(
            key,
            "`read` is the resource's `credential`; do not repeat it under roles",
        ));
    }
    Ok(())
}

/// Reads a brokered password from its env var or file (or nothing, for admin commands).
fn read_secret(
    key: &str,
    c: &CredentialFile,
    env: &dyn Env,
    secrets: Secrets,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<String, ConfigError> {
    match (&c.password_env, &c.password_file) {
        (Some(_), None) | (None, Some(_)) if secrets == Secrets::Skip => Ok(String::new()),
        (Some(var), None) => env.var(var).ok_or_else(|| {
            invalid(
                format!("{key}.password_env"),
                format!("environment variable `{var}` is not set"),
            )
        }),
        (None, Some(file)) => {
            let file = resolve(file);
            Ok(std::fs::read_to_string(&file)
                .map_err(|e| {
                    invalid(
                        format!("{key}.password_file"),
                        format!("cannot read `{}`: {e}", file.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string())
        }
        _ => Err(invalid(
            key,
            "give exactly one of `password_env`, `password_file`",
        )),
    }
}

/// Deserializes part of resource `index`'s table; a type error names its key
/// (`resource[N].credential.username`).
fn from_table<T: DeserializeOwned>(table: toml::Table, index: usize) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(table).map_err(|e| {
        let key = match e.path().iter().next() {
            None => format!("resource[{index}]"),
            Some(_) => format!("resource[{index}].{}", e.path()),
        };
        invalid(key, e.inner().message())
    })
}

/// The keys a file struct takes, as serde names them (so the keys an error lists cannot drift
/// from the struct): its derived `Deserialize` hands them to `deserialize_struct`.
fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    struct Probe<'a>(&'a mut &'static [&'static str]);

    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("probed"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;

    use crate::config::test_support::{env, parse};

    const GOOD: &str = r#"
        state_dir = "/tmp/state"
        [postgres]
        listen = "127.0.0.1:0"
        [[resource]]
        name = "orders-db"
        kind = "postgres"
        address = "127.0.0.1:5432"
        database = "orders"
        labels = { env = "prod", data_class = "confidential", owner = "payments" }
        credential = { username = "app", password_env = "PW" }
    "#;

    #[test]
    fn the_keys_of_a_file_struct_are_its_fields() {
        assert_eq!(keys_of::<CommonFile>(), ["name", "kind", "labels", "agent"]);
        assert_eq!(
            keys_of::<CredentialFile>(),
            ["username", "password_env", "password_file"]
        );
    }

    #[test]
    fn common_errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("env = \"prod\", ", ""),
                "resource[0].labels.env",
            ),
            (
                GOOD.replace("data_class = \"confidential\", ", ""),
                "resource[0].labels.data_class",
            ),
            (
                GOOD.replace("kind = \"postgres\"", "kind = \"mongodb\""),
                "resource[0].kind",
            ),
            (GOOD.replace("kind = \"postgres\"", ""), "resource[0].kind"),
            (GOOD.replace("name = \"orders-db\"", ""), "resource[0].name"),
            (
                GOOD.replace("name = \"orders-db\"", "name = \"Orders DB\""),
                "resource[0].name",
            ),
            (
                GOOD.replace("name = \"orders-db\"", "name = 5"),
                "resource[0].name",
            ),
            (
                GOOD.replace("owner = \"payments\"", "owner = 5"),
                "resource[0].labels.owner",
            ),
            (
                GOOD.replace("username = \"app\"", "username = 5"),
                "resource[0].credential.username",
            ),
            (
                format!("{GOOD}\n[[resource]]\nname = \"orders-db\"\nkind = \"postgres\"\n"),
                "resource[1].name",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(key), "error `{err}` should name `{key}`");
        }
        let err = parse(&GOOD.replace("kind = \"postgres\"", "kind = \"mongodb\"")).unwrap_err();
        assert!(err.contains("`postgres`, `tcp`"), "{err}");
    }

    #[test]
    fn a_resource_behind_an_agent_needs_the_agents_section() {
        let behind = r#"
            [[resource]]
            name = "orders-db"
            kind = "postgres"
            agent = "dc1"
            labels = { env = "prod", data_class = "confidential" }
        "#;
        let err = parse(behind).unwrap_err();
        assert!(
            err.contains("resource[0].agent") && err.contains("`[agents]`"),
            "{err}"
        );
        let c = parse(&format!("{behind}\n[agents]\nlisten = \"127.0.0.1:0\"\n")).unwrap();
        let r = c.resource("orders-db").unwrap();
        assert_eq!(r.agent(), Some("dc1"));
        assert_eq!(r.address(), None);
        assert_eq!(r.kind().as_str(), "postgres");
        let err = parse(&behind.replace("\"dc1\"", "\"DC 1\"")).unwrap_err();
        assert!(err.contains("resource[0].agent"), "{err}");
    }

    #[test]
    fn secrets_are_read_only_when_asked_for() {
        let missing = GOOD.replace("password_env = \"PW\"", "password_env = \"MISSING\"");
        let c = Config::parse(Path::new("g.toml"), &missing, &env(), Secrets::Skip).unwrap();
        let pg = c.resource("orders-db").unwrap().postgres().unwrap();
        let direct = pg.reach.direct().unwrap();
        assert_eq!(direct.roles["read"].username, "app");
        assert_eq!(direct.roles["read"].password.expose(), "");
        let err = parse(&missing).unwrap_err();
        assert!(err.contains("resource[0].credential.password_env"), "{err}");
        let both = GOOD.replace(
            "password_env = \"PW\"",
            "password_env = \"PW\", password_file = \"pw\"",
        );
        let err = parse(&both).unwrap_err();
        assert!(
            err.contains("resource[0].credential") && err.contains("exactly one"),
            "{err}"
        );
    }
}
