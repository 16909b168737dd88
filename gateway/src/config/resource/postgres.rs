//! `kind = "postgres"` resources: the keys they take (address, database, brokered credentials
//! per role, upstream TLS and authentication methods, `log_parameters`, `function_calls`,
//! `agent_roles` behind an agent), their validation, and the validated [`PostgresResource`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_agent::pg::{PerUserRoles, PgTarget, SecuritySettings, UpstreamSecurity};
use gatehouse_core::Secret;
use serde::Deserialize;

use super::{
    check_role, Context, CredentialFile, Reach, ResourceKind, RoleCredential, DEFAULT_ROLE,
};
use crate::config::{duration, invalid, ConfigError};

/// A PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresResource {
    /// Whether bind parameters are written to the audit log with their statements.
    pub log_parameters: bool,
    /// Whether fast-path function calls (`PQfn`, large objects) pass, each logged as a
    /// `function_call` statement; refused by default.
    pub function_calls: bool,
    pub reach: Reach<PostgresDirect>,
}

/// What the embedded agent needs to reach a PostgreSQL resource itself.
#[derive(Debug, Clone)]
pub struct PostgresDirect {
    /// `host:port`.
    pub address: String,
    pub database: String,
    pub connect_timeout: Duration,
    /// Every role (including `read`) with its brokered credential.
    pub roles: BTreeMap<String, RoleCredential>,
    /// How far the upstream is trusted (TLS, authentication methods).
    pub upstream: UpstreamSecurity,
    /// Per-user upstream roles (`per_user_roles`): sessions log in as a role of their own, a
    /// member of the role credential's user; `None`: as that user itself.
    pub per_user: Option<PerUser>,
}

/// `per_user_roles`: the admin credential that creates per-user roles, and their prefix.
#[derive(Debug, Clone)]
pub struct PerUser {
    pub admin: RoleCredential,
    pub prefix: String,
}

impl PostgresDirect {
    /// Where and as whom a session in `role` connects; `None` when the resource has no such
    /// role.
    pub fn target(&self, role: &str) -> Option<PgTarget> {
        let credential = self.roles.get(role)?;
        Some(PgTarget {
            address: self.address.clone(),
            database: self.database.clone(),
            username: credential.username.clone(),
            password: credential.password.clone(),
            connect_timeout: self.connect_timeout,
            security: self.upstream.clone(),
            per_user: self.per_user.as_ref().map(|p| {
                std::sync::Arc::new(PerUserRoles {
                    admin_username: p.admin.username.clone(),
                    admin_password: p.admin.password.clone(),
                    prefix: p.prefix.clone(),
                    role: role.to_string(),
                })
            }),
        })
    }
}

/// The keys a `kind = "postgres"` resource takes besides the common ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresResourceFile {
    address: Option<String>,
    database: Option<String>,
    log_parameters: Option<bool>,
    function_calls: Option<bool>,
    connect_timeout: Option<String>,
    credential: Option<CredentialFile>,
    /// More roles than the default `read`, each with its own brokered credential.
    #[serde(default)]
    roles: BTreeMap<String, CredentialFile>,
    /// Roles beyond `read` that the agent serves (for a resource behind an agent).
    #[serde(default)]
    agent_roles: Vec<String>,
    /// Upstream TLS: `disable`, `require` or `verify-full` (the default when `ca_file` is given).
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    /// The authentication methods the upstream may ask for; default `["scram-sha-256"]`.
    auth_methods: Option<Vec<String>>,
    /// Log each person in as a role of their own (see [`PerUser`]).
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

/// Validates the PostgreSQL keys of a resource; returns it with its role names beyond `read`.
pub(super) fn parse(
    rest: toml::Table,
    cx: &Context<'_>,
) -> Result<(PostgresResource, Vec<String>), ConfigError> {
    let r: PostgresResourceFile = cx.kind_file(rest, ResourceKind::Postgres, "")?;
    let connect_timeout = duration(
        &cx.key("connect_timeout"),
        r.connect_timeout.as_deref(),
        "5s",
    )?;
    let log_parameters = r.log_parameters.unwrap_or(false);
    let function_calls = r.function_calls.unwrap_or(false);

    if let Some(agent) = cx.agent {
        if r.address.is_some()
            || r.credential.is_some()
            || !r.roles.is_empty()
            || r.database.is_some()
            || r.tls.is_some()
            || r.ca_file.is_some()
            || r.auth_methods.is_some()
            || r.per_user_roles.is_some()
        {
            return Err(invalid(
                cx.key("agent"),
                format!("a resource behind agent `{agent}` takes no `address`, `database`, `credential`, `roles`, `tls`, `ca_file`, `auth_methods` or `per_user_roles`: they stay in the agent's agent.toml"),
            ));
        }
        // The agent holds the credentials; these are the roles it serves.
        for role in &r.agent_roles {
            check_role(role, cx.key("agent_roles"))?;
        }
        let pg = PostgresResource {
            log_parameters,
            function_calls,
            reach: Reach::Agent(agent.to_string()),
        };
        return Ok((pg, r.agent_roles));
    }

    if !r.agent_roles.is_empty() {
        return Err(invalid(
            cx.key("agent_roles"),
            "only a resource behind an `agent` takes `agent_roles`; give `roles` with credentials",
        ));
    }
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
                "give the resource's host:port (or the `agent` that fronts it)",
            ))
        }
    };
    let upstream = SecuritySettings {
        tls: r.tls.as_deref(),
        ca_file: r.ca_file.as_deref().map(cx.resolve),
        auth_methods: r.auth_methods.as_deref(),
    }
    .build()
    .map_err(|e| invalid(cx.key(e.key), e.why))?;

    let Some(credential) = &r.credential else {
        return Err(invalid(
            cx.key("credential"),
            "give the brokered `credential` (or the `agent` that holds it)",
        ));
    };
    let per_user = match &r.per_user_roles {
        None => None,
        Some(p) => {
            let prefix = p.prefix.clone().unwrap_or_else(|| "gh_".to_string());
            if !valid_prefix(&prefix) {
                return Err(invalid(
                    cx.key("per_user_roles.prefix"),
                    format!("`{prefix}` must be 1-20 characters of a-z, 0-9, `_`, starting with a letter or `_`"),
                ));
            }
            Some(PerUser {
                admin: cx.credential(&cx.key("per_user_roles.admin"), &p.admin)?,
                prefix,
            })
        }
    };
    // With per-user roles, a role's credential names the role sessions become members of;
    // its password is used only when given (the role may be NOLOGIN).
    let role_credential = |key: &str, c: &CredentialFile| {
        if per_user.is_some() && c.password_env.is_none() && c.password_file.is_none() {
            Ok(RoleCredential {
                username: c.username.clone(),
                password: Secret::new(String::new()),
            })
        } else {
            cx.credential(key, c)
        }
    };
    let mut roles = BTreeMap::new();
    roles.insert(
        DEFAULT_ROLE.to_string(),
        role_credential(&cx.key("credential"), credential)?,
    );
    let mut more = Vec::new();
    for (role, cred) in &r.roles {
        let key = cx.key(&format!("roles.{role}"));
        check_role(role, key.clone())?;
        roles.insert(role.clone(), role_credential(&key, cred)?);
        more.push(role.clone());
    }
    let direct = PostgresDirect {
        address,
        database: r.database.unwrap_or_else(|| cx.name.to_string()),
        connect_timeout,
        roles,
        upstream,
        per_user,
    };
    let pg = PostgresResource {
        log_parameters,
        function_calls,
        reach: Reach::Direct(direct),
    };
    Ok((pg, more))
}

/// A per-user role prefix: short enough to leave room for the person's name in PostgreSQL's
/// 63 bytes, and plain enough to need no quoting.
fn valid_prefix(p: &str) -> bool {
    (1..=20).contains(&p.len())
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::test_support::parse;

    const GOOD: &str = r#"
        state_dir = "/tmp/state"
        [[resource]]
        name = "orders-db"
        kind = "postgres"
        address = "127.0.0.1:5432"
        database = "orders"
        labels = { env = "prod", data_class = "confidential", owner = "payments" }
        credential = { username = "app", password_env = "PW" }
    "#;

    const AGENTS: &str = "\n[agents]\nlisten = \"127.0.0.1:0\"\n";

    #[test]
    fn a_postgres_resource_has_its_address_database_and_credentials() {
        let with_roles = GOOD.replace(
            "credential = {",
            "roles = { write = { username = \"rw\", password_env = \"PW\" } }\ncredential = {",
        );
        let c = parse(&with_roles).unwrap();
        let r = c.resource("orders-db").unwrap();
        assert_eq!(r.kind(), ResourceKind::Postgres);
        assert_eq!(r.role_names, ["read", "write"]);
        assert!(r.has_role("write") && !r.has_role("admin"));
        assert_eq!(r.agent(), None);
        assert_eq!(r.address(), Some("127.0.0.1:5432"));
        let pg = r.postgres().unwrap();
        assert!(!pg.log_parameters);
        let direct = pg.reach.direct().unwrap();
        assert_eq!(direct.database, "orders");
        assert_eq!(direct.connect_timeout, Duration::from_secs(5));
        assert_eq!(direct.upstream.tls.mode(), "disable");
        let target = direct.target("write").unwrap();
        assert_eq!(
            (target.address.as_str(), target.database.as_str()),
            ("127.0.0.1:5432", "orders")
        );
        assert_eq!(target.username, "rw");
        assert_eq!(target.password.expose(), "s3cret-value");
        assert!(direct.target("admin").is_none());
        assert!(!format!("{r:?}").contains("s3cret-value"));
        // `database` defaults to the resource's name.
        let c = parse(&GOOD.replace("database = \"orders\"", "")).unwrap();
        let direct = c.resources[0].postgres().unwrap().reach.direct().unwrap();
        assert_eq!(direct.database, "orders-db");
    }

    #[test]
    fn per_user_roles_take_an_admin_and_a_plain_prefix() {
        let per_user = GOOD.replace(
            "credential = { username = \"app\", password_env = \"PW\" }",
            "credential = { username = \"app\" }\n\
             per_user_roles = { admin = { username = \"gh_admin\", password_env = \"PW\" } }",
        );
        let c = parse(&per_user).unwrap();
        let direct = c.resources[0].postgres().unwrap().reach.direct().unwrap();
        let target = direct.target("read").unwrap();
        // The role's user is what sessions become members of; no password needed for it.
        assert_eq!(target.username, "app");
        assert_eq!(target.password.expose(), "");
        let p = target.per_user.unwrap();
        assert_eq!(
            (
                p.admin_username.as_str(),
                p.prefix.as_str(),
                p.role.as_str()
            ),
            ("gh_admin", "gh_", "read")
        );
        assert_eq!(p.admin_password.expose(), "s3cret-value");
        // Without per-user roles, the role's password stays required.
        let err = parse(&GOOD.replace(", password_env = \"PW\" }", " }")).unwrap_err();
        assert!(err.contains("resource[0].credential"), "{err}");
        // A prefix that would need quoting, or leave no room for a name.
        for bad in ["\"GH-\"", "\"\"", "\"1x_\"", "\"averyveryverylongprefix_\""] {
            let text = per_user.replace(
                "password_env = \"PW\" } }",
                &format!("password_env = \"PW\" }}, prefix = {bad} }}"),
            );
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains("resource[0].per_user_roles.prefix"),
                "{bad}: {err}"
            );
        }
        let err =
            parse(&per_user.replace("password_env = \"PW\" } }", "password_env = \"NOPE\" } }"))
                .unwrap_err();
        assert!(
            err.contains("resource[0].per_user_roles.admin.password_env"),
            "{err}"
        );
    }

    #[test]
    fn postgres_errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("password_env = \"PW\"", "password_env = \"MISSING\""),
                "resource[0].credential.password_env",
            ),
            (
                GOOD.replace(
                    "credential = { username = \"app\", password_env = \"PW\" }",
                    "",
                ),
                "resource[0].credential",
            ),
            (
                GOOD.replace("address = \"127.0.0.1:5432\"", ""),
                "resource[0].address",
            ),
            (
                GOOD.replace("127.0.0.1:5432", "localhost"),
                "resource[0].address",
            ),
            (
                GOOD.replace("database = \"orders\"", "database = 5"),
                "resource[0].database",
            ),
            (
                GOOD.replace("database = \"orders\"", "connect_timeout = \"soon\""),
                "resource[0].connect_timeout",
            ),
            (
                GOOD.replace("database = \"orders\"", "tls = \"sometimes\""),
                "resource[0].tls",
            ),
            (
                GOOD.replace(
                    "database = \"orders\"",
                    "ca_file = \"ca.pem\"\ntls = \"require\"",
                ),
                "resource[0].ca_file",
            ),
            (
                GOOD.replace("database = \"orders\"", "agent_roles = [\"write\"]"),
                "resource[0].agent_roles",
            ),
            (
                GOOD.replace(
                    "database = \"orders\"",
                    "roles = { Admin = { username = \"a\", password_env = \"PW\" } }",
                ),
                "resource[0].roles.Admin",
            ),
            (
                GOOD.replace(
                    "database = \"orders\"",
                    "roles = { read = { username = \"a\", password_env = \"PW\" } }",
                ),
                "resource[0].roles.read",
            ),
            (
                GOOD.replace(
                    "database = \"orders\"",
                    "roles = { write = { username = \"a\" } }",
                ),
                "resource[0].roles.write",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(key), "error `{err}` should name `{key}`");
        }
    }

    #[test]
    fn a_key_postgres_does_not_take_is_refused_by_name_with_the_keys_it_takes() {
        let err = parse(&GOOD.replace("database = \"orders\"", "listen_port = 1")).unwrap_err();
        assert!(
            err.contains("resource[0].listen_port")
                && err.contains("`kind = \"postgres\"` resource takes no `listen_port`")
                && err.contains("`address`, `database`, `log_parameters`")
                && err.contains("`agent_roles`"),
            "{err}"
        );
    }

    #[test]
    fn behind_an_agent_a_postgres_resource_names_its_roles_only() {
        let behind = format!(
            "{}{AGENTS}",
            GOOD.replace("address = \"127.0.0.1:5432\"", "agent = \"dc1\"")
                .replace("database = \"orders\"", "agent_roles = [\"write\"]")
                .replace(
                    "credential = { username = \"app\", password_env = \"PW\" }",
                    "log_parameters = true"
                )
        );
        let c = parse(&behind).unwrap();
        let r = c.resource("orders-db").unwrap();
        assert_eq!(r.agent(), Some("dc1"));
        assert_eq!(r.role_names, ["read", "write"]);
        let pg = r.postgres().unwrap();
        assert!(pg.log_parameters);
        assert!(pg.reach.direct().is_none());
        for given in [
            "address = \"10.0.0.1:5432\"",
            "database = \"orders\"",
            "credential = { username = \"app\", password_env = \"PW\" }",
            "roles = { admin = { username = \"a\", password_env = \"PW\" } }",
            "tls = \"require\"",
            "ca_file = \"ca.pem\"",
            "auth_methods = [\"md5\"]",
        ] {
            let err = parse(&behind.replace("log_parameters = true", given)).unwrap_err();
            assert!(
                err.contains("resource[0].agent") && err.contains("agent.toml"),
                "`{given}`: {err}"
            );
        }
        let err = parse(&behind.replace("[\"write\"]", "[\"read\"]")).unwrap_err();
        assert!(err.contains("resource[0].agent_roles"), "{err}");
    }
}
