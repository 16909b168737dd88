//! The gateway's TOML configuration: parsed strictly (unknown keys are errors), then validated
//! into a [`Config`] before any port is bound. Secrets are read from env vars or files during
//! validation and kept in [`Secret`]s. `[[resource]]` tables are validated in `config::resource`
//! (the keys every resource has) and its per-kind modules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_core::Secret;
use serde::Deserialize;

mod resource;

pub use resource::{
    PostgresDirect, PostgresResource, Reach, RecordingMode, Resource, ResourceKind, ResourceSpec,
    RoleCredential, SshResource, TcpResource, DEFAULT_ROLE,
};

/// Reads the environment. Tests pass a map instead of mutating the process environment.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

/// The config file's name, looked for in the working directory.
pub const CONFIG_FILE: &str = "gatehouse.toml";
/// The system-wide config, looked for when the working directory has none.
pub const SYSTEM_CONFIG: &str = "/etc/gatehouse/gatehouse.toml";
/// The environment variable that names the config file (after `--config`).
pub const CONFIG_ENV: &str = "GATEHOUSE_CONFIG";

/// The config file to use when neither `--config` nor `GATEHOUSE_CONFIG` names one: the first
/// of `./gatehouse.toml` and `/etc/gatehouse/gatehouse.toml` that exists. When neither does,
/// `gatehouse.toml`, whose absence [`Config::load`] reports as [`ConfigError::NotFound`].
pub fn default_config_path() -> PathBuf {
    discover(|p| p.exists())
}

fn discover(exists: impl Fn(&Path) -> bool) -> PathBuf {
    [Path::new(CONFIG_FILE), Path::new(SYSTEM_CONFIG)]
        .into_iter()
        .find(|p| exists(p))
        .unwrap_or(Path::new(CONFIG_FILE))
        .to_path_buf()
}

// Each message holds its cause, and no variant also returns it as `source()`: printed as a
// chain (`{:#}`), a cause would show twice.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No config file was named, and none is where the gateway looks.
    #[error(
        "no config file found: looked for `{CONFIG_FILE}` in the working directory ({}) and \
         `{SYSTEM_CONFIG}`; point at one with `--config FILE` or `export {CONFIG_ENV}=FILE`",
        cwd.display()
    )]
    NotFound { cwd: PathBuf },
    /// The file `--config` or `GATEHOUSE_CONFIG` names does not exist.
    #[error(
        "config file `{path}` (named by {named_by}) does not exist; point at the gateway's \
         config with `--config FILE` or `export {CONFIG_ENV}=FILE`"
    )]
    Missing {
        path: PathBuf,
        named_by: &'static str,
    },
    #[error("cannot read config file `{path}`: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config `{path}`: {}", error.to_string().trim_end())]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// Why `path` could not be opened: nothing found where the gateway looks, a named file
    /// that is not there, or another read error.
    fn unreadable(path: &Path, error: std::io::Error, env: &dyn Env) -> ConfigError {
        if error.kind() != std::io::ErrorKind::NotFound {
            return ConfigError::Read {
                path: path.to_path_buf(),
                error,
            };
        }
        let from_env = env.var(CONFIG_ENV).is_some_and(|v| Path::new(&v) == path);
        if !from_env && path == Path::new(CONFIG_FILE) && !Path::new(SYSTEM_CONFIG).exists() {
            return ConfigError::NotFound {
                cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            };
        }
        ConfigError::Missing {
            path: path.to_path_buf(),
            named_by: if from_env { CONFIG_ENV } else { "--config" },
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

// === file format ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    log: LogFile,
    /// The certificate every TLS listener serves unless its own section names another.
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    postgres: PostgresFile,
    #[serde(default)]
    store: StoreFile,
    #[serde(default)]
    policies: PoliciesFile,
    #[serde(default)]
    audit: AuditFile,
    #[serde(default)]
    tokens: TokensFile,
    #[serde(default)]
    http: HttpFile,
    oidc: Option<OidcFile>,
    #[serde(default)]
    access: AccessFile,
    agents: Option<AgentsFile>,
    #[serde(default)]
    tcp: TcpFile,
    #[serde(default)]
    ssh: SshFile,
    #[serde(default)]
    siem: SiemFile,
    #[serde(default)]
    recordings: RecordingsFile,
    /// Read key by key in [`resource`]: the common keys, then the kind's own.
    #[serde(default, rename = "resource")]
    resources: Vec<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogFile {
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PostgresFile {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    allow_plaintext: Option<bool>,
    max_message_bytes: Option<u64>,
    handshake_timeout: Option<String>,
    max_connections: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFile {
    listen: Option<String>,
    max_connections: Option<u64>,
    handshake_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshFile {
    listen: Option<String>,
    max_connections: Option<u64>,
    auth_timeout: Option<String>,
    certificate_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordingsFile {
    dir: Option<PathBuf>,
    chunk_bytes: Option<u64>,
    chunk_interval: Option<String>,
    max_session_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    url: Option<String>,
    quota_bytes: Option<u64>,
    alert_percent: Option<u64>,
    capacity_check_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiemFile {
    syslog_tcp: Option<String>,
    http_url: Option<String>,
    http_authorization_env: Option<String>,
    lag_alert_events: Option<u64>,
    lag_alert_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoliciesFile {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    checkpoint_every: Option<u64>,
    statement_max_bytes: Option<u64>,
    queue: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    issuer: Option<String>,
    audience: Option<String>,
    max_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    listen: Option<String>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    max_header_bytes: Option<u64>,
    max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OidcFile {
    issuer: String,
    client_id: String,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
    scopes: Option<Vec<String>>,
    username_claim: Option<String>,
    groups_claim: Option<String>,
    #[serde(default)]
    group_map: BTreeMap<String, Vec<String>>,
    mfa_amr: Option<Vec<String>>,
    mfa_acr: Option<Vec<String>>,
    credential_ttl: Option<String>,
    recheck_every: Option<String>,
    ca_file: Option<PathBuf>,
    allow_http: Option<bool>,
    device_flow: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    listen: Option<String>,
    public_address: Option<String>,
    server_name: Option<String>,
    cert_ttl: Option<String>,
    join_token_ttl: Option<String>,
    max_agents: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessFile {
    reason_max_bytes: Option<u64>,
    requests_per_hour: Option<u64>,
    max_duration: Option<String>,
    webhook_url: Option<String>,
    webhook_timeout: Option<String>,
}

/// Whether brokered secrets are read. Only `serve` needs them; admin and auditor commands
/// run where the secrets may not be (and should not need to be) available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Load,
    Skip,
}

// === validated config ===

/// `[store] quota_bytes`, `alert_percent`, `capacity_check_interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreCapacity {
    /// The most the store may hold (SQLite: the database's pages; PostgreSQL: the database's
    /// size) before unauthenticated noise is only counted.
    pub quota_bytes: u64,
    /// The share of the quota at which the gateway alerts.
    pub alert_percent: u64,
    /// How often the size is read.
    pub check_interval: Duration,
}

/// `[siem]`: the audit log streamed to a SIEM ([`crate::siem`]).
#[derive(Debug, Clone)]
pub struct SiemConfig {
    /// `host:port` of a syslog receiver (RFC 5424 over TCP, octet-counted); `None`: no stream.
    pub syslog_tcp: Option<String>,
    /// A collector taking batches of events as JSON over HTTP(S) POST; a 2xx is delivery.
    /// `http://` only to a loopback address.
    pub http_url: Option<String>,
    /// The `Authorization` header's value for it (e.g. `Splunk <token>`), from the environment.
    pub http_authorization: Option<gatehouse_core::secret::Secret<String>>,
    /// Undelivered events above which the gateway records `siem.behind`.
    pub lag_alert_events: u64,
    /// How long the oldest undelivered event may wait before `siem.behind`.
    pub lag_alert_after: Duration,
}

/// The validated runtime configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The config file this was read from.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub log_json: bool,
    pub postgres: PostgresConfig,
    pub store_url: String,
    /// What the store may grow to ([`crate::capacity`]).
    pub store_capacity: StoreCapacity,
    pub policies_dir: PathBuf,
    pub audit: AuditConfig,
    pub tokens: TokensConfig,
    pub http: HttpConfig,
    /// Single sign-on through an OpenID provider; `None` when not configured.
    pub oidc: Option<OidcConfig>,
    pub access: AccessConfig,
    /// The listener remote agents connect to; `None` when no `[agents]` section is given.
    pub agents: Option<AgentsConfig>,
    /// The generic TCP front door (`[tcp]`); off unless `listen` is given.
    pub tcp: TcpConfig,
    /// The SSH front door (`[ssh]`); off unless `listen` is given.
    pub ssh: SshConfig,
    pub siem: SiemConfig,
    pub recordings: RecordingsConfig,
    pub resources: Vec<Resource>,
}

/// The SSH front door ([`crate::ssh`]).
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// Where it listens; `None` (the default) leaves the door closed.
    pub listen: Option<SocketAddr>,
    pub max_connections: usize,
    /// How long a client has to authenticate.
    pub auth_timeout: Duration,
    /// The longest an SSH user certificate lives (never past the credential it comes from).
    pub certificate_ttl: Duration,
}

/// `[recordings]`: where session recordings ([`crate::recording`]) are written and how.
#[derive(Debug, Clone)]
pub struct RecordingsConfig {
    /// One directory per session under it (default `state_dir/recordings`).
    pub dir: PathBuf,
    /// A chunk is closed, synced and chained into the audit log at this size...
    pub chunk_bytes: usize,
    /// ...or this long after it was opened, whichever comes first.
    pub chunk_interval: Duration,
    /// The most one session's recording may take; reaching it fails the recording.
    pub max_session_bytes: u64,
}

/// The generic TCP front door ([`crate::tcp`]).
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Where it listens; `None` (the default) leaves the door closed.
    pub listen: Option<SocketAddr>,
    pub max_connections: usize,
    /// How long a client has for TLS, its hello and admission.
    pub handshake_timeout: Duration,
}

/// Remote agents: where they connect, how long their certificates and join tokens live.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// The mutual-TLS listener agents dial.
    pub listen: SocketAddr,
    /// `host:port` agents are told to dial (default: `listen`).
    pub public_address: String,
    /// The name in the listener's certificate, which agents verify (default: the host of
    /// `public_address`).
    pub server_name: String,
    pub cert_ttl: Duration,
    pub join_token_ttl: Duration,
    pub max_agents: usize,
}

/// Just-in-time access: input bounds, rate limits, the webhook.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Longest reason or comment accepted, in bytes.
    pub reason_max_bytes: usize,
    /// Requests one user may make per hour.
    pub requests_per_hour: u64,
    /// Longest grant, whatever the policies say.
    pub max_duration: Duration,
    /// Where request, approval and grant notifications are POSTed (Slack-compatible JSON).
    pub webhook_url: Option<String>,
    pub webhook_timeout: Duration,
}

/// The HTTPS listener: login pages, the JSON API, the JWKS.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// The URL users and the provider reach the listener at (no trailing slash).
    pub public_url: String,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

/// How the device flow is run for `gatehouse login --device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceFlow {
    /// The provider's device authorization endpoint when it has one, else the gateway's page.
    Auto,
    /// Always the gateway's own verification page (browser sign-in by code flow).
    Gateway,
}

/// The OpenID relying party.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret<String>,
    /// Exactly `{public_url}/oidc/callback`.
    pub redirect_url: String,
    pub scopes: Vec<String>,
    pub username_claim: String,
    pub groups_claim: String,
    /// Provider group -> Gatehouse groups. Empty: provider groups are used as they are.
    pub group_map: BTreeMap<String, Vec<String>>,
    /// `amr` values any one of which means the sign-in used more than one factor.
    pub mfa_amr: Vec<String>,
    /// `acr` values that mean the same.
    pub mfa_acr: Vec<String>,
    pub credential_ttl: Duration,
    /// How often live logins are re-checked with the provider (refresh token grant).
    pub recheck_every: Duration,
    pub ca_file: Option<PathBuf>,
    pub allow_http: bool,
    pub device_flow: DeviceFlow,
}

impl OidcConfig {
    /// Maps provider groups to Gatehouse groups (sorted, deduplicated).
    pub fn map_groups(&self, provider: &[String]) -> Vec<String> {
        let mut out: Vec<String> = if self.group_map.is_empty() {
            provider.to_vec()
        } else {
            provider
                .iter()
                .filter_map(|g| self.group_map.get(g))
                .flatten()
                .cloned()
                .collect()
        };
        out.sort();
        out.dedup();
        out
    }
}

#[derive(Debug, Clone)]
pub struct PostgresConfig {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub allow_plaintext: bool,
    pub max_message_bytes: usize,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub checkpoint_every: u64,
    pub statement_max_bytes: usize,
    pub queue: usize,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub issuer: String,
    pub audience: String,
    pub max_ttl: Duration,
}

impl Config {
    /// Reads and validates the config file at `path`, resolving relative paths against the
    /// file's directory and reading brokered secrets through `env`.
    pub fn load(path: &Path, env: &dyn Env, secrets: Secrets) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, e, env))?;
        Self::parse(path, &text, env, secrets)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Env,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            error: Box::new(e),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };

        let state_dir = resolve(file.state_dir.as_deref().unwrap_or(Path::new("state")));
        let log_json = match file.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}` is not one of `text`, `json`"),
                ))
            }
        };

        // `[tls]`: the certificate and key the PostgreSQL door (and the tcp door, which
        // shares its acceptor) and the HTTPS listener serve, unless their own section names
        // one; without any, each listener uses the self-signed one in `state_dir/tls/`.
        if file.tls.cert.is_some() != file.tls.key.is_some() {
            return Err(invalid("tls.cert", "cert and key must be given together"));
        }
        let shared_tls = (
            file.tls.cert.as_deref().map(&resolve),
            file.tls.key.as_deref().map(&resolve),
        );
        let pg = file.postgres;
        let listen = pg.listen.as_deref().unwrap_or("127.0.0.1:6432");
        let listen: SocketAddr = listen.parse().map_err(|_| {
            invalid(
                "postgres.listen",
                format!("`{listen}` is not an ip:port address"),
            )
        })?;
        if pg.tls_cert.is_some() != pg.tls_key.is_some() {
            return Err(invalid(
                "postgres.tls_cert",
                "tls_cert and tls_key must be given together",
            ));
        }
        let max_message_bytes = pg.max_message_bytes.unwrap_or(64 << 20);
        if !(1024..=(1 << 30)).contains(&max_message_bytes) {
            return Err(invalid(
                "postgres.max_message_bytes",
                "must be between 1024 and 1073741824",
            ));
        }
        let postgres = PostgresConfig {
            listen,
            tls_cert: pg.tls_cert.as_deref().map(resolve),
            tls_key: pg.tls_key.as_deref().map(resolve),
            allow_plaintext: pg.allow_plaintext.unwrap_or(false),
            max_message_bytes: max_message_bytes as usize,
            handshake_timeout: duration(
                "postgres.handshake_timeout",
                pg.handshake_timeout.as_deref(),
                "10s",
            )?,
            max_connections: bounded(
                "postgres.max_connections",
                pg.max_connections,
                1024,
                1,
                100_000,
            )? as usize,
        };

        let store_url = match file.store.url {
            Some(url)
                if url.starts_with("sqlite:")
                    || url.starts_with("postgres:")
                    || url.starts_with("postgresql:") =>
            {
                url
            }
            Some(url) => {
                let scheme = url.split(':').next().unwrap_or_default();
                return Err(invalid(
                    "store.url",
                    format!("scheme `{scheme}` is not `sqlite` or `postgres`"),
                ));
            }
            None => format!("sqlite://{}", state_dir.join("gatehouse.db").display()),
        };

        let store_capacity = StoreCapacity {
            quota_bytes: bounded(
                "store.quota_bytes",
                file.store.quota_bytes,
                10 << 30,
                1 << 20,
                u64::MAX >> 1,
            )?,
            alert_percent: bounded("store.alert_percent", file.store.alert_percent, 80, 1, 100)?,
            check_interval: duration(
                "store.capacity_check_interval",
                file.store.capacity_check_interval.as_deref(),
                "30s",
            )?,
        };
        if store_capacity.check_interval < Duration::from_secs(1) {
            return Err(invalid(
                "store.capacity_check_interval",
                "must be at least 1s",
            ));
        }

        let policies_dir = resolve(
            file.policies
                .dir
                .as_deref()
                .unwrap_or(Path::new("policies")),
        );

        let audit = AuditConfig {
            checkpoint_every: bounded(
                "audit.checkpoint_every",
                file.audit.checkpoint_every,
                1000,
                1,
                1_000_000,
            )?,
            statement_max_bytes: bounded(
                "audit.statement_max_bytes",
                file.audit.statement_max_bytes,
                8192,
                64,
                1 << 20,
            )? as usize,
            queue: bounded("audit.queue", file.audit.queue, 16_384, 16, 1 << 20)? as usize,
        };

        let tokens = TokensConfig {
            issuer: nonempty("tokens.issuer", file.tokens.issuer, "gatehouse")?,
            audience: nonempty("tokens.audience", file.tokens.audience, "gatehouse")?,
            max_ttl: duration("tokens.max_ttl", file.tokens.max_ttl.as_deref(), "24h")?,
        };

        let mut http = http_config(file.http, &resolve)?;
        let mut postgres = postgres;
        if postgres.tls_cert.is_none() {
            (postgres.tls_cert, postgres.tls_key) = shared_tls.clone();
        }
        if http.tls_cert.is_none() {
            (http.tls_cert, http.tls_key) = shared_tls;
        }
        let oidc = match file.oidc {
            None => None,
            Some(o) => Some(oidc_config(o, &http, &resolve, env, secrets)?),
        };

        let access = access_config(file.access)?;
        let agents = file.agents.map(agents_config).transpose()?;
        let tcp = tcp_config(file.tcp)?;
        let ssh = ssh_config(file.ssh)?;
        let recordings = RecordingsConfig {
            dir: match file.recordings.dir.as_deref() {
                Some(d) => resolve(d),
                None => state_dir.join("recordings"),
            },
            chunk_bytes: bounded(
                "recordings.chunk_bytes",
                file.recordings.chunk_bytes,
                1 << 20,
                4096,
                64 << 20,
            )? as usize,
            chunk_interval: duration(
                "recordings.chunk_interval",
                file.recordings.chunk_interval.as_deref(),
                "10s",
            )?,
            max_session_bytes: bounded(
                "recordings.max_session_bytes",
                file.recordings.max_session_bytes,
                4 << 30,
                4096,
                u64::MAX,
            )?,
        };
        let siem = SiemConfig {
            syslog_tcp: match file.siem.syslog_tcp {
                Some(a) => {
                    let ok = a.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                    if !ok {
                        return Err(invalid(
                            "siem.syslog_tcp",
                            format!("`{a}` is not host:port"),
                        ));
                    }
                    Some(a)
                }
                None => None,
            },
            http_url: match file.siem.http_url {
                Some(u) => {
                    let loopback = [
                        "http://127.0.0.1:",
                        "http://127.0.0.1/",
                        "http://localhost:",
                        "http://[::1]:",
                    ]
                    .iter()
                    .any(|p| u.starts_with(p));
                    if !(u.starts_with("https://") || loopback) || reqwest::Url::parse(&u).is_err()
                    {
                        return Err(invalid(
                            "siem.http_url",
                            format!(
                                "`{u}` is not an https:// URL (http:// only to a loopback address)"
                            ),
                        ));
                    }
                    Some(u)
                }
                None => None,
            },
            http_authorization: match file.siem.http_authorization_env {
                Some(_) if secrets == Secrets::Skip => None,
                Some(var) => Some(gatehouse_core::secret::Secret::new(
                    env.var(&var).ok_or_else(|| {
                        invalid(
                            "siem.http_authorization_env",
                            format!("environment variable `{var}` is not set"),
                        )
                    })?,
                )),
                None => None,
            },
            lag_alert_events: bounded(
                "siem.lag_alert_events",
                file.siem.lag_alert_events,
                10_000,
                1,
                u64::MAX >> 1,
            )?,
            lag_alert_after: duration(
                "siem.lag_alert_after",
                file.siem.lag_alert_after.as_deref(),
                "60s",
            )?,
        };

        let resources = resource::parse(file.resources, agents.is_some(), env, secrets, &resolve)?;

        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            log_json,
            postgres,
            store_url,
            store_capacity,
            policies_dir,
            audit,
            tokens,
            http,
            oidc,
            access,
            agents,
            tcp,
            ssh,
            siem,
            recordings,
            resources,
        })
    }

    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// For a client that named no known resource (and whose credential verified: resource
    /// names are not for strangers): "known PostgreSQL resources: a, b, c", sorted, at most
    /// [`KNOWN_NAMES_SHOWN`] names, then how many more.
    pub fn known_resources(&self, kind: ResourceKind) -> String {
        let mut names: Vec<&str> = self
            .resources
            .iter()
            .filter(|r| r.kind() == kind)
            .map(|r| r.name.as_str())
            .collect();
        names.sort_unstable();
        let what = match kind {
            ResourceKind::Postgres => "PostgreSQL resources",
            ResourceKind::Tcp => "TCP resources",
            ResourceKind::Ssh => "SSH resources",
        };
        if names.is_empty() {
            return format!("the gateway has no {what}");
        }
        let more = names.len().saturating_sub(KNOWN_NAMES_SHOWN);
        names.truncate(KNOWN_NAMES_SHOWN);
        let mut text = format!("known {what}: {}", names.join(", "));
        if more > 0 {
            text.push_str(&format!(" (and {more} more)"));
        }
        text
    }
}

/// Where a client that named an unknown resource finds the ones it may use.
pub const UNKNOWN_RESOURCE_HINT: &str =
    "`gatehouse resources` lists what you can reach and what you could request";

/// How many resource names [`Config::known_resources`] shows.
pub const KNOWN_NAMES_SHOWN: usize = 20;

/// Resource and agent names: 1-63 characters of a-z, 0-9, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn tcp_config(t: TcpFile) -> Result<TcpConfig, ConfigError> {
    let listen = t
        .listen
        .as_deref()
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| invalid("tcp.listen", format!("`{text}` is not an ip:port address")))
        })
        .transpose()?;
    Ok(TcpConfig {
        listen,
        max_connections: bounded("tcp.max_connections", t.max_connections, 1024, 1, 100_000)?
            as usize,
        handshake_timeout: duration(
            "tcp.handshake_timeout",
            t.handshake_timeout.as_deref(),
            "3s",
        )?,
    })
}

fn ssh_config(t: SshFile) -> Result<SshConfig, ConfigError> {
    let listen = t
        .listen
        .as_deref()
        .map(|text| {
            text.parse::<SocketAddr>()
                .map_err(|_| invalid("ssh.listen", format!("`{text}` is not an ip:port address")))
        })
        .transpose()?;
    Ok(SshConfig {
        listen,
        max_connections: bounded("ssh.max_connections", t.max_connections, 1024, 1, 100_000)?
            as usize,
        auth_timeout: duration("ssh.auth_timeout", t.auth_timeout.as_deref(), "20s")?,
        certificate_ttl: duration("ssh.certificate_ttl", t.certificate_ttl.as_deref(), "12h")?,
    })
}

fn access_config(a: AccessFile) -> Result<AccessConfig, ConfigError> {
    let webhook_url = match a.webhook_url {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Some(u),
        Some(u) => {
            return Err(invalid(
                "access.webhook_url",
                format!("`{u}` must be an http:// or https:// URL"),
            ))
        }
        None => None,
    };
    Ok(AccessConfig {
        reason_max_bytes: bounded(
            "access.reason_max_bytes",
            a.reason_max_bytes,
            1024,
            16,
            16 * 1024,
        )? as usize,
        requests_per_hour: bounded(
            "access.requests_per_hour",
            a.requests_per_hour,
            20,
            1,
            10_000,
        )?,
        max_duration: duration("access.max_duration", a.max_duration.as_deref(), "7d")?,
        webhook_url,
        webhook_timeout: duration("access.webhook_timeout", a.webhook_timeout.as_deref(), "5s")?,
    })
}

fn agents_config(a: AgentsFile) -> Result<AgentsConfig, ConfigError> {
    let listen_text = a.listen.as_deref().unwrap_or("127.0.0.1:8444");
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "agents.listen",
            format!("`{listen_text}` is not an ip:port address"),
        )
    })?;
    let public_address = a.public_address.unwrap_or_else(|| listen.to_string());
    let Some((host, port)) = public_address.rsplit_once(':') else {
        return Err(invalid(
            "agents.public_address",
            format!("`{public_address}` must be host:port"),
        ));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid(
            "agents.public_address",
            format!("`{public_address}` must be host:port"),
        ));
    }
    let server_name = a
        .server_name
        .unwrap_or_else(|| host.trim_matches(['[', ']']).to_string());
    let cert_ttl = duration("agents.cert_ttl", a.cert_ttl.as_deref(), "30d")?;
    if cert_ttl < Duration::from_secs(3600) || cert_ttl > Duration::from_secs(400 * 86_400) {
        return Err(invalid("agents.cert_ttl", "must be between 1h and 400d"));
    }
    let join_token_ttl = duration("agents.join_token_ttl", a.join_token_ttl.as_deref(), "15m")?;
    if join_token_ttl > Duration::from_secs(7 * 86_400) {
        return Err(invalid("agents.join_token_ttl", "must be at most 7d"));
    }
    Ok(AgentsConfig {
        listen,
        public_address,
        server_name,
        cert_ttl,
        join_token_ttl,
        max_agents: bounded("agents.max_agents", a.max_agents, 256, 1, 10_000)? as usize,
    })
}

fn http_config(h: HttpFile, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<HttpConfig, ConfigError> {
    let listen_text = h.listen.as_deref().unwrap_or("127.0.0.1:8443");
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        invalid(
            "http.listen",
            format!("`{listen_text}` is not an ip:port address"),
        )
    })?;
    if h.tls_cert.is_some() != h.tls_key.is_some() {
        return Err(invalid(
            "http.tls_cert",
            "tls_cert and tls_key must be given together",
        ));
    }
    let public_url = match h.public_url {
        Some(u) => {
            let u = u.trim_end_matches('/').to_string();
            if !u.starts_with("https://") || u.len() <= "https://".len() {
                return Err(invalid(
                    "http.public_url",
                    format!("`{u}` must be an https:// URL"),
                ));
            }
            u
        }
        None => format!("https://{listen}"),
    };
    Ok(HttpConfig {
        listen,
        public_url,
        tls_cert: h.tls_cert.as_deref().map(resolve),
        tls_key: h.tls_key.as_deref().map(resolve),
        max_header_bytes: bounded(
            "http.max_header_bytes",
            h.max_header_bytes,
            16 * 1024,
            1024,
            1 << 20,
        )? as usize,
        max_connections: bounded("http.max_connections", h.max_connections, 1024, 1, 100_000)?
            as usize,
    })
}

fn oidc_config(
    o: OidcFile,
    http: &HttpConfig,
    resolve: &dyn Fn(&Path) -> PathBuf,
    env: &dyn Env,
    secrets: Secrets,
) -> Result<OidcConfig, ConfigError> {
    let allow_http = o.allow_http.unwrap_or(false);
    let issuer = o.issuer.trim_end_matches('/').to_string();
    if !(issuer.starts_with("https://") || (allow_http && issuer.starts_with("http://"))) {
        return Err(invalid(
            "oidc.issuer",
            format!("`{issuer}` must be an https:// URL (http only with `allow_http = true`, for loopback test providers)"),
        ));
    }
    if o.client_id.is_empty() {
        return Err(invalid("oidc.client_id", "must not be empty"));
    }
    let client_secret = match (o.client_secret_env, o.client_secret_file) {
        (Some(_), None) | (None, Some(_)) if secrets == Secrets::Skip => String::new(),
        (Some(var), None) => env.var(&var).ok_or_else(|| {
            invalid(
                "oidc.client_secret_env",
                format!("environment variable `{var}` is not set"),
            )
        })?,
        (None, Some(file)) => {
            let file = resolve(&file);
            std::fs::read_to_string(&file)
                .map_err(|e| {
                    invalid(
                        "oidc.client_secret_file",
                        format!("cannot read `{}`: {e}", file.display()),
                    )
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string()
        }
        _ => {
            return Err(invalid(
                "oidc.client_secret",
                "give exactly one of `client_secret_env`, `client_secret_file`",
            ))
        }
    };
    let scopes = o.scopes.unwrap_or_else(|| {
        ["openid", "profile", "email", "groups", "offline_access"]
            .map(String::from)
            .to_vec()
    });
    if !scopes.iter().any(|s| s == "openid") {
        return Err(invalid("oidc.scopes", "must include `openid`"));
    }
    let device_flow = match o.device_flow.as_deref() {
        None | Some("auto") => DeviceFlow::Auto,
        Some("gateway") => DeviceFlow::Gateway,
        Some(other) => {
            return Err(invalid(
                "oidc.device_flow",
                format!("`{other}` is not one of `auto`, `gateway`"),
            ))
        }
    };
    let credential_ttl = duration("oidc.credential_ttl", o.credential_ttl.as_deref(), "8h")?;
    if credential_ttl > Duration::from_secs(7 * 86_400) {
        return Err(invalid("oidc.credential_ttl", "must be at most 7d"));
    }
    Ok(OidcConfig {
        issuer,
        client_id: o.client_id,
        client_secret: Secret::new(client_secret),
        redirect_url: format!("{}/oidc/callback", http.public_url),
        scopes,
        username_claim: o
            .username_claim
            .unwrap_or_else(|| "preferred_username".into()),
        groups_claim: o.groups_claim.unwrap_or_else(|| "groups".into()),
        group_map: o.group_map,
        mfa_amr: o.mfa_amr.unwrap_or_else(|| {
            [
                "mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "iris", "pop",
            ]
            .map(String::from)
            .to_vec()
        }),
        mfa_acr: o.mfa_acr.unwrap_or_default(),
        credential_ttl,
        recheck_every: duration("oidc.recheck_every", o.recheck_every.as_deref(), "5m")?,
        ca_file: o.ca_file.as_deref().map(resolve),
        allow_http,
        device_flow,
    })
}

fn bounded(
    key: &str,
    v: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, format!("{v} is outside {min}..={max}")))
    }
}

fn nonempty(key: &str, v: Option<String>, default: &str) -> Result<String, ConfigError> {
    match v {
        Some(s) if s.is_empty() => Err(invalid(key, "must not be empty")),
        Some(s) => Ok(s),
        None => Ok(default.to_string()),
    }
}

fn duration(key: &str, v: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
    let s = v.unwrap_or(default);
    try_parse_duration(s).map_err(|e| invalid(key, format!("`{s}` {e}")))
}

pub use gatehouse_core::clock::{parse_duration, try_parse_duration, DurationError};

/// What the config tests of every module share.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::path::Path;

    use super::{Config, Secrets};

    /// The environment the tests read brokered secrets from: `PW`.
    pub fn env() -> BTreeMap<String, String> {
        [("PW".to_string(), "s3cret-value".to_string())].into()
    }

    /// Parses `text` as `g.toml` with [`env`]; the error as text.
    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse(Path::new("g.toml"), text, &env(), Secrets::Load).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::test_support::env;
    use super::*;

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
    fn good_config_validates_and_hides_the_secret() {
        let c = Config::parse(
            Path::new("/etc/gh/gatehouse.toml"),
            GOOD,
            &env(),
            Secrets::Load,
        )
        .unwrap();
        let r = c.resource("orders-db").unwrap();
        assert_eq!(
            (r.env.as_str(), r.data_class.as_str()),
            ("prod", "confidential")
        );
        assert_eq!(r.tags.get("owner").map(String::as_str), Some("payments"));
        let direct = r.postgres().unwrap().reach.direct().unwrap();
        assert_eq!(direct.roles["read"].password.expose(), "s3cret-value");
        assert!(!format!("{c:?}").contains("s3cret-value"));
        assert_eq!(c.policies_dir, Path::new("/etc/gh/policies"));
        assert!(c.store_url.starts_with("sqlite:///tmp/state/"));
    }

    #[test]
    fn one_tls_section_serves_every_listener_unless_one_names_its_own() {
        let text = format!("{GOOD}\n[tls]\ncert = \"tls.crt\"\nkey = \"tls.key\"\n");
        let c = Config::parse(
            Path::new("/etc/gh/gatehouse.toml"),
            &text,
            &env(),
            Secrets::Load,
        )
        .unwrap();
        assert_eq!(
            c.postgres.tls_cert.as_deref(),
            Some(Path::new("/etc/gh/tls.crt"))
        );
        assert_eq!(
            c.http.tls_key.as_deref(),
            Some(Path::new("/etc/gh/tls.key"))
        );
        let half = format!("{GOOD}\n[tls]\ncert = \"tls.crt\"\n");
        let err = Config::parse(Path::new("g.toml"), &half, &env(), Secrets::Load)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.cert"), "{err}");
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\""),
                "postgres.listen",
            ),
            (
                GOOD.replace("[postgres]", "[postgres]\nlisten_port = 1"),
                "listen_port",
            ),
            (
                GOOD.replace("password_env = \"PW\"", "password_env = \"MISSING\""),
                "resource[0].credential.password_env",
            ),
            (
                GOOD.replace("env = \"prod\", ", ""),
                "resource[0].labels.env",
            ),
            (
                GOOD.replace("kind = \"postgres\"", "kind = \"mongodb\""),
                "resource[0].kind",
            ),
            (
                format!("{GOOD}\n[audit]\ncheckpoint_every = 0\n"),
                "audit.checkpoint_every",
            ),
            (
                format!("{GOOD}\n[store]\nurl = \"mysql://x\"\n"),
                "store.url",
            ),
        ];
        for (text, key) in cases {
            let err = Config::parse(Path::new("g.toml"), &text, &env(), Secrets::Load)
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "error `{err}` should name `{key}`");
        }
        // Without `[tcp] listen` the door stays closed.
        let closed = Config::parse(Path::new("g.toml"), GOOD, &env(), Secrets::Load).unwrap();
        assert_eq!(closed.tcp.listen, None);
    }

    #[test]
    fn known_resources_are_sorted_bounded_and_of_the_kind() {
        let mut text = String::from("state_dir = \"/tmp/state\"\n");
        for i in (0..25).rev() {
            text.push_str(&format!(
                "[[resource]]\nname = \"db-{i:02}\"\nkind = \"postgres\"\naddress = \"127.0.0.1:5432\"\n\
                 database = \"d\"\nlabels = {{ env = \"dev\", data_class = \"internal\" }}\n\
                 credential = {{ username = \"app\", password_env = \"PW\" }}\n"
            ));
        }
        let c = test_support::parse(&text).unwrap();
        let known = c.known_resources(ResourceKind::Postgres);
        let names: Vec<String> = (0..20).map(|i| format!("db-{i:02}")).collect();
        assert_eq!(
            known,
            format!(
                "known PostgreSQL resources: {} (and 5 more)",
                names.join(", ")
            )
        );
        assert_eq!(
            c.known_resources(ResourceKind::Tcp),
            "the gateway has no TCP resources"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("8h"), Some(Duration::from_secs(8 * 3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn config_durations_take_compound_forms_and_say_why_a_zero_is_refused() {
        let c = test_support::parse(&format!("{GOOD}\n[tokens]\nmax_ttl = \"1d12h\"\n")).unwrap();
        assert_eq!(c.tokens.max_ttl, Duration::from_secs(36 * 3600));
        let err =
            test_support::parse(&format!("{GOOD}\n[tokens]\nmax_ttl = \"0s\"\n")).unwrap_err();
        assert!(
            err.contains("tokens.max_ttl") && err.contains("`0s` must be longer than 0"),
            "{err}"
        );
        let err =
            test_support::parse(&format!("{GOOD}\n[tokens]\nmax_ttl = \"1h 30m\"\n")).unwrap_err();
        assert!(err.contains("is not a duration like"), "{err}");
    }

    #[test]
    fn discovery_prefers_the_working_directory_then_etc() {
        let cwd_file = |p: &Path| p == Path::new(CONFIG_FILE);
        let etc_file = |p: &Path| p == Path::new(SYSTEM_CONFIG);
        assert_eq!(
            discover(|p| cwd_file(p) || etc_file(p)),
            Path::new(CONFIG_FILE)
        );
        assert_eq!(discover(etc_file), Path::new(SYSTEM_CONFIG));
        assert_eq!(discover(|_| false), Path::new(CONFIG_FILE));
    }

    /// deploy/gatehouse.toml, the complete example the README points at, stays a config the
    /// gateway accepts.
    #[test]
    fn the_deploy_example_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gatehouse.toml");
        // The files it names under /etc/gatehouse are read at load time (the upstream CA):
        // put them in a temporary directory instead.
        let dir = std::env::temp_dir().join(format!("gh-deploy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["db.internal".to_string()]).unwrap();
        std::fs::write(dir.join("orders-db-ca.pem"), ca.cert.pem()).unwrap();
        let text = std::fs::read_to_string(&example)
            .unwrap()
            .replace("/etc/gatehouse/", &format!("{}/", dir.display()));
        let path = dir.join("gatehouse.toml");
        std::fs::write(&path, text).unwrap();
        let env: BTreeMap<String, String> = [
            ("ORDERS_DB_RO_PASSWORD".to_string(), "pw".to_string()),
            ("GATEHOUSE_OIDC_SECRET".to_string(), "s".to_string()),
        ]
        .into();
        let config = Config::load(&path, &env, Secrets::Skip).unwrap();
        let names: Vec<&str> = config.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["orders-db", "ledger-db", "cache", "web-1"]);
        assert_eq!(
            config.oidc.as_ref().map(|o| o.issuer.as_str()),
            Some("https://login.example.com")
        );
        assert_eq!(
            config.agents.as_ref().map(|a| a.public_address.as_str()),
            Some("gw.example:8444")
        );
        assert_eq!(config.tcp.listen.map(|a| a.port()), Some(6380));
        assert_eq!(config.ssh.listen.map(|a| a.port()), Some(2222));
        let web = config.resource("web-1").unwrap().ssh().unwrap();
        assert_eq!(web.role_for("root"), Some("admin"));
        assert_eq!(web.recording, resource::RecordingMode::Strict);
        assert_eq!(
            config.recordings.dir,
            Path::new("/var/lib/gatehouse/recordings")
        );
        assert_eq!(config.recordings.chunk_bytes, 1 << 20);
        assert_eq!(config.recordings.chunk_interval, Duration::from_secs(10));
        assert_eq!(config.state_dir, Path::new("/var/lib/gatehouse"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `{:#}` (how the command line prints errors) shows `needle` exactly once.
    fn printed_once(e: ConfigError, needle: &str) {
        let text = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(text.matches(needle).count(), 1, "{text}");
    }

    #[test]
    fn a_missing_or_broken_config_is_explained_once() {
        let dir = std::env::temp_dir().join(format!("gh-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let named = dir.join("nope.toml");
        let no_env = BTreeMap::new();
        let err = Config::load(&named, &no_env, Secrets::Skip).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    named_by: "--config",
                    ..
                }
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("--config FILE") && text.contains(CONFIG_ENV),
            "{text}"
        );
        let env: BTreeMap<String, String> =
            [(CONFIG_ENV.to_string(), named.display().to_string())].into();
        let err = Config::load(&named, &env, Secrets::Skip).unwrap_err();
        assert!(
            err.to_string().contains("(named by GATEHOUSE_CONFIG)"),
            "{err}"
        );
        // A directory where the file should be: the OS's reason, once.
        let err = Config::load(&dir, &no_env, Secrets::Skip).unwrap_err();
        let why = std::fs::read_to_string(&dir).unwrap_err().to_string();
        printed_once(err, &why);
        // A TOML error (with its snippet), once.
        let err = Config::parse(
            Path::new("g.toml"),
            "[postgres]\nlisten_port = 1\n",
            &env,
            Secrets::Skip,
        )
        .unwrap_err();
        assert!(std::error::Error::source(&err).is_none());
        printed_once(err, "unknown field `listen_port`");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
