//! The real `gatehouse` binary under test.
//!
//! [`GatewayConfig`] builds the TOML config, [`Resource`] one `[[resource]]` entry, and
//! [`Gateway::start`] writes both into a fresh temporary directory and runs
//! `gatehouse serve --config <dir>/gatehouse.toml --ready-file <dir>/ready.json`, waiting (at
//! most 30 s) until the ready file holds `{"postgres": "127.0.0.1:PORT", "pid": N}`.
//!
//! Layout of the temporary directory ([`Gateway::dir`]):
//!
//! ```text
//! gatehouse.toml          the config
//! ready.json              written by the gateway when it listens
//! state/                  state_dir: keys, TLS cert, gatehouse.db (sqlite store)
//! gatehouse.stdout.log    stdout of every run (restarts append)
//! gatehouse.stderr.log    stderr of every run
//! ```
//!
//! The gateway runs under a watchdog shell: it is SIGKILLed when the [`Gateway`] is dropped or
//! the test process dies. When a test panics, the last lines of the gateway's logs are printed
//! and the directory is kept.
//!
//! The binary is `$GATEHOUSE_BIN`, else `gatehouse` in the test binary's target directory,
//! else `<workspace>/target/debug/gatehouse` (see [`gatehouse_bin`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use crate::clients::{psql, PsqlOutput};
use crate::pg::{PgServer, ORDERS_DB, ORDERS_PASSWORD, ORDERS_USER};
use crate::util::{
    is_executable, mark_restart, poll, run_command, tail, temp_dir, workspace_root, CmdOutput,
    SpawnSpec, Supervised, TempDir, COMMAND_TIMEOUT,
};

/// How long [`Gateway::start`] and [`Gateway::restart`] wait for the ready file.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `gatehouse` binary: `$GATEHOUSE_BIN` (which must exist), else `gatehouse` in the
/// target directory of the running test binary (`target/<profile>/deps/..`), else
/// `<workspace>/target/debug/gatehouse`.
pub fn gatehouse_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("GATEHOUSE_BIN") {
        let bin = PathBuf::from(bin);
        if is_executable(&bin) {
            return Ok(bin);
        }
        bail!(
            "GATEHOUSE_BIN={} is not an executable file; build it with `cargo build --bin gatehouse`",
            bin.display()
        );
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test binary>
        if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
            candidates.push(profile_dir.join("gatehouse"));
        }
    }
    candidates.push(workspace_root().join("target/debug/gatehouse"));
    if let Some(found) = candidates.iter().find(|c| is_executable(c)) {
        return Ok(found.clone());
    }
    bail!(
        "the gatehouse binary was not found (looked at {}); run `cargo build --bin gatehouse` \
         or set GATEHOUSE_BIN (scripts/test does both)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Runs `gatehouse <args>` without any config (no `GATEHOUSE_CONFIG`), e.g.
/// `["policy", "test", "--dir", dir]` or an offline `audit verify --file`. 60 s timeout.
pub fn gatehouse(args: &[&str]) -> anyhow::Result<CmdOutput> {
    let mut cmd = Command::new(gatehouse_bin()?);
    cmd.args(args).env_remove("GATEHOUSE_CONFIG");
    run_command(&mut cmd, None, COMMAND_TIMEOUT)
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// `ORDERS_DB_PASSWORD` for resource `orders-db`: upper case, non-alphanumerics as `_`.
fn password_var_for(name: &str) -> String {
    let mut v: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    v.push_str("_PASSWORD");
    v
}

#[derive(Debug, Clone)]
enum Credential {
    Env {
        username: String,
        var: String,
        value: Option<String>,
    },
    File {
        username: String,
        path: PathBuf,
    },
}

/// One `[[resource]]` of the gateway config.
///
/// ```no_run
/// # use gatehouse_tests::{PgServer, Resource};
/// # fn f(pg: &PgServer) {
/// let r = Resource::orders_db(pg, "orders-db")
///     .label("env", "prod")
///     .label("data_class", "confidential");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Resource {
    name: String,
    kind: String,
    address: String,
    database: Option<String>,
    labels: BTreeMap<String, String>,
    log_parameters: Option<bool>,
    credential: Option<Credential>,
    agent: Option<String>,
    raw: Vec<(String, String)>,
}

impl Resource {
    /// A `kind = "postgres"` resource behind remote agent `agent`: no address, database or
    /// credential (the agent's `agent.toml` holds them). No labels: add them.
    pub fn behind_agent(name: &str, agent: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            kind: "postgres".to_owned(),
            address: String::new(),
            database: None,
            labels: BTreeMap::new(),
            log_parameters: None,
            credential: None,
            agent: Some(agent.to_owned()),
            raw: Vec::new(),
        }
    }

    /// A `kind = "postgres"` resource at `address` (e.g. `pg.addr()`) for `database`, without
    /// labels or credential.
    pub fn postgres(name: &str, address: impl ToString, database: &str) -> Resource {
        Resource {
            name: name.to_owned(),
            kind: "postgres".to_owned(),
            address: address.to_string(),
            database: Some(database.to_owned()),
            labels: BTreeMap::new(),
            log_parameters: None,
            credential: None,
            agent: None,
            raw: Vec::new(),
        }
    }

    /// The fixture database of `pg` as resource `name`: database `orders`, credential
    /// `orders_app` with its password in env var `<NAME>_PASSWORD` (e.g.
    /// `ORDERS_DB_PASSWORD`). No labels: add them.
    pub fn orders_db(pg: &PgServer, name: &str) -> Resource {
        Resource::postgres(name, pg.addr(), ORDERS_DB).credential(ORDERS_USER, ORDERS_PASSWORD)
    }

    /// [`orders_db`](Self::orders_db) labelled `env = "dev"`, `data_class = "internal"`: a
    /// resource the default policies let group `engineering` reach.
    pub fn orders_dev(pg: &PgServer, name: &str) -> Resource {
        Resource::orders_db(pg, name).labels(&[("env", "dev"), ("data_class", "internal")])
    }

    /// Changes `kind` (default `postgres`).
    pub fn kind(mut self, kind: &str) -> Resource {
        kind.clone_into(&mut self.kind);
        self
    }

    /// Sets or removes (`None`) the `database` key.
    pub fn database(mut self, database: Option<&str>) -> Resource {
        self.database = database.map(str::to_owned);
        self
    }

    /// Adds a label (`labels = { env = "prod", ... }`).
    pub fn label(mut self, key: &str, value: &str) -> Resource {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds several labels.
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Resource {
        for (k, v) in labels {
            self.labels.insert((*k).to_owned(), (*v).to_owned());
        }
        self
    }

    /// Sets `log_parameters` (omitted by default, so the gateway's default applies).
    pub fn log_parameters(mut self, on: bool) -> Resource {
        self.log_parameters = Some(on);
        self
    }

    /// Brokered credential `username`/`password`; the password reaches the gateway through the
    /// env var `<NAME>_PASSWORD` (`password_env` in the config), set on the child process.
    pub fn credential(self, username: &str, password: &str) -> Resource {
        let var = password_var_for(&self.name);
        self.credential_env(username, &var, Some(password))
    }

    /// Brokered credential with an explicit env var name; `value: None` leaves the variable
    /// unset (to test the gateway's error).
    pub fn credential_env(mut self, username: &str, var: &str, value: Option<&str>) -> Resource {
        self.credential = Some(Credential::Env {
            username: username.to_owned(),
            var: var.to_owned(),
            value: value.map(str::to_owned),
        });
        self
    }

    /// Brokered credential with the password read from a file (`password_file`).
    pub fn credential_file(mut self, username: &str, path: impl Into<PathBuf>) -> Resource {
        self.credential = Some(Credential::File {
            username: username.to_owned(),
            path: path.into(),
        });
        self
    }

    /// Adds a raw `key = <toml value>` line to this resource (for keys the builder does not
    /// know yet), e.g. `.raw("owner", "\"team-payments\"")`.
    pub fn raw(mut self, key: &str, toml_value: &str) -> Resource {
        self.raw.push((key.to_owned(), toml_value.to_owned()));
        self
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn to_toml(&self, out: &mut String) {
        out.push_str("\n[[resource]]\n");
        let _ = writeln!(out, "name = {}", toml_str(&self.name));
        let _ = writeln!(out, "kind = {}", toml_str(&self.kind));
        match &self.agent {
            Some(agent) => {
                let _ = writeln!(out, "agent = {}", toml_str(agent));
            }
            None => {
                let _ = writeln!(out, "address = {}", toml_str(&self.address));
            }
        }
        if let Some(db) = &self.database {
            let _ = writeln!(out, "database = {}", toml_str(db));
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_str(k), toml_str(v)))
            .collect();
        let _ = writeln!(out, "labels = {{ {} }}", labels.join(", "));
        if let Some(on) = self.log_parameters {
            let _ = writeln!(out, "log_parameters = {on}");
        }
        match &self.credential {
            Some(Credential::Env { username, var, .. }) => {
                let _ = writeln!(
                    out,
                    "credential = {{ username = {}, password_env = {} }}",
                    toml_str(username),
                    toml_str(var)
                );
            }
            Some(Credential::File { username, path }) => {
                let _ = writeln!(
                    out,
                    "credential = {{ username = {}, password_file = {} }}",
                    toml_str(username),
                    toml_path(path)
                );
            }
            None => {}
        }
        for (k, v) in &self.raw {
            let _ = writeln!(out, "{k} = {v}");
        }
    }
}

/// Builder for the gateway's TOML config and process environment.
///
/// Defaults: listen `127.0.0.1:0`, `allow_plaintext = false`, self-signed TLS, sqlite store
/// in the state dir, policies from `<workspace>/policies`, no `[audit]`/`[tokens]` sections
/// (the gateway's defaults apply), no resources.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    listen: String,
    http_listen: String,
    allow_plaintext: bool,
    tls: Option<(PathBuf, PathBuf)>,
    store_url: Option<String>,
    policies_dir: PathBuf,
    checkpoint_every: Option<u64>,
    tokens: Option<(String, String)>,
    resources: Vec<Resource>,
    envs: Vec<(OsString, OsString)>,
    options: Vec<(String, String, String)>,
    extra_toml: String,
    binary: Option<PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig::new()
    }
}

impl GatewayConfig {
    /// The defaults (see the type docs).
    pub fn new() -> GatewayConfig {
        GatewayConfig {
            listen: "127.0.0.1:0".to_owned(),
            http_listen: "127.0.0.1:0".to_owned(),
            allow_plaintext: false,
            tls: None,
            store_url: None,
            policies_dir: workspace_root().join("policies"),
            checkpoint_every: None,
            tokens: None,
            resources: Vec::new(),
            envs: Vec::new(),
            options: Vec::new(),
            extra_toml: String::new(),
            binary: None,
        }
    }

    /// `[http] listen` (default `127.0.0.1:0`). Single sign-on tests pick a free port first
    /// ([`free_port`](crate::util::free_port)) because the provider must know the exact
    /// redirect URL before the gateway starts.
    pub fn http_listen(mut self, addr: &str) -> GatewayConfig {
        addr.clone_into(&mut self.http_listen);
        self
    }

    /// `[postgres] listen` (default `127.0.0.1:0`: the gateway picks a port, which changes on
    /// restart; set a fixed one to keep it).
    pub fn listen(mut self, addr: &str) -> GatewayConfig {
        addr.clone_into(&mut self.listen);
        self
    }

    /// `[postgres] allow_plaintext`.
    pub fn allow_plaintext(mut self, allow: bool) -> GatewayConfig {
        self.allow_plaintext = allow;
        self
    }

    /// `[postgres] tls_cert` / `tls_key` instead of the self-signed default.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> GatewayConfig {
        self.tls = Some((cert.into(), key.into()));
        self
    }

    /// `[store] url`, e.g. `pg.create_database("gatehouse")?` for a PostgreSQL store. Default:
    /// `sqlite://<state_dir>/gatehouse.db`.
    pub fn store_url(mut self, url: &str) -> GatewayConfig {
        self.store_url = Some(url.to_owned());
        self
    }

    /// `[policies] dir` (default `<workspace>/policies`).
    pub fn policies_dir(mut self, dir: impl Into<PathBuf>) -> GatewayConfig {
        self.policies_dir = dir.into();
        self
    }

    /// `[audit] checkpoint_every`.
    pub fn checkpoint_every(mut self, n: u64) -> GatewayConfig {
        self.checkpoint_every = Some(n);
        self
    }

    /// `[tokens] issuer` and `audience`.
    pub fn tokens(mut self, issuer: &str, audience: &str) -> GatewayConfig {
        self.tokens = Some((issuer.to_owned(), audience.to_owned()));
        self
    }

    /// Adds a `[[resource]]`.
    pub fn resource(mut self, resource: Resource) -> GatewayConfig {
        self.resources.push(resource);
        self
    }

    /// Sets an environment variable on the gateway process and on CLI invocations (e.g.
    /// `RUST_LOG`).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> GatewayConfig {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Sets `key = <toml value>` in `[section]` (created if needed), for settings without a
    /// dedicated method, e.g. `.set("postgres", "handshake_timeout", "\"2s\"")`,
    /// `.set("tokens", "max_ttl", "\"24h\"")`, `.set("log", "format", "\"json\"")`. The value
    /// is raw TOML: quote strings. Keys that have a dedicated method (`listen`, `url`, `dir`,
    /// `checkpoint_every` ...) must be set through it, or the file has a duplicate key.
    pub fn set(mut self, section: &str, key: &str, toml_value: &str) -> GatewayConfig {
        self.options
            .push((section.to_owned(), key.to_owned(), toml_value.to_owned()));
        self
    }

    /// Appends raw TOML at the end of the file, for sections the builder does not know yet.
    /// It must consist of whole tables (`[section]` ...), since it follows `[[resource]]`s.
    pub fn extra_toml(mut self, toml: &str) -> GatewayConfig {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self.extra_toml.push('\n');
        self
    }

    /// Runs this binary instead of [`gatehouse_bin`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> GatewayConfig {
        self.binary = Some(path.into());
        self
    }

    /// The store URL for a given state dir.
    fn store_url_for(&self, state_dir: &Path) -> String {
        self.store_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/gatehouse.db", state_dir.display()))
    }

    /// Renders the config file for `state_dir`.
    pub fn to_toml(&self, state_dir: &Path) -> String {
        let mut sections: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        let mut line = |section: &'static str, l: String| {
            sections.entry(section).or_default().push(l);
        };
        line("postgres", format!("listen = {}", toml_str(&self.listen)));
        line(
            "postgres",
            format!("allow_plaintext = {}", self.allow_plaintext),
        );
        if let Some((cert, key)) = &self.tls {
            line("postgres", format!("tls_cert = {}", toml_path(cert)));
            line("postgres", format!("tls_key = {}", toml_path(key)));
        }
        line("http", format!("listen = {}", toml_str(&self.http_listen)));
        line(
            "store",
            format!("url = {}", toml_str(&self.store_url_for(state_dir))),
        );
        line(
            "policies",
            format!("dir = {}", toml_path(&self.policies_dir)),
        );
        if let Some(n) = self.checkpoint_every {
            line("audit", format!("checkpoint_every = {n}"));
        }
        if let Some((issuer, audience)) = &self.tokens {
            line("tokens", format!("issuer = {}", toml_str(issuer)));
            line("tokens", format!("audience = {}", toml_str(audience)));
        }
        for (section, key, value) in &self.options {
            sections
                .entry(section.as_str())
                .or_default()
                .push(format!("{key} = {value}"));
        }

        let mut out = String::from("# Written by gatehouse-tests.\n");
        let _ = writeln!(out, "state_dir = {}", toml_path(state_dir));
        // Known sections in a fixed order, then any others.
        let known = [
            "postgres", "http", "store", "policies", "audit", "tokens", "log",
        ];
        let mut order: Vec<&str> = known.to_vec();
        order.extend(sections.keys().filter(|k| !known.contains(k)));
        for section in order {
            if let Some(lines) = sections.get(section) {
                let _ = writeln!(out, "\n[{section}]");
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        for r in &self.resources {
            r.to_toml(&mut out);
        }
        out.push_str(&self.extra_toml);
        out
    }

    /// Environment for the gateway and CLI: brokered passwords, then [`env`](Self::env)s.
    fn child_env(&self) -> Vec<(OsString, OsString)> {
        let mut envs = Vec::new();
        for r in &self.resources {
            if let Some(Credential::Env {
                var,
                value: Some(v),
                ..
            }) = &r.credential
            {
                envs.push((var.into(), v.into()));
            }
        }
        envs.extend(self.envs.iter().cloned());
        envs
    }

    /// Names of env vars that must *not* reach the child (credentials declared unset).
    fn child_env_remove(&self) -> Vec<OsString> {
        let mut remove = vec![OsString::from("GATEHOUSE_CONFIG")];
        for r in &self.resources {
            if let Some(Credential::Env {
                var, value: None, ..
            }) = &r.credential
            {
                remove.push(var.into());
            }
        }
        remove
    }
}

/// A running `gatehouse serve` (see the [module docs](self)).
pub struct Gateway {
    proc: Option<Supervised>,
    cfg: GatewayConfig,
    bin: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    ready_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    ready: serde_json::Value,
    pg_addr: SocketAddr,
    runs: u32,
    dir: TempDir,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("pg_addr", &self.pg_addr)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Gateway {
    /// Writes the config into a fresh temporary directory, starts `gatehouse serve` and waits
    /// (at most 30 s) for its ready file. Errors carry the gateway's logs.
    pub fn start(cfg: GatewayConfig) -> anyhow::Result<Gateway> {
        let bin = match &cfg.binary {
            Some(b) => b.clone(),
            None => gatehouse_bin()?,
        };
        let dir = temp_dir("gw")?;
        let state_dir = dir.join("state");
        let config_path = dir.join("gatehouse.toml");
        fs::write(&config_path, cfg.to_toml(&state_dir))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut gw = Gateway {
            proc: None,
            cfg,
            bin,
            ready_path: dir.join("ready.json"),
            stdout_path: dir.join("gatehouse.stdout.log"),
            stderr_path: dir.join("gatehouse.stderr.log"),
            config_path,
            state_dir,
            ready: serde_json::Value::Null,
            pg_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            runs: 0,
            dir,
        };
        gw.spawn()?;
        Ok(gw)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        if self.runs > 1 {
            mark_restart(
                &[&self.stdout_path, &self.stderr_path],
                "restart",
                self.runs - 1,
            );
        }
        let _ = fs::remove_file(&self.ready_path);
        let mut envs = self.cfg.child_env();
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            envs.insert(0, ("RUST_BACKTRACE".into(), "1".into()));
        }
        let pidfile = self.dir.join("watchdog.pid");
        let proc = Supervised::spawn(SpawnSpec {
            program: &self.bin,
            args: vec![
                "serve".into(),
                "--config".into(),
                self.config_path.clone().into(),
                "--ready-file".into(),
                self.ready_path.clone().into(),
            ],
            envs,
            env_remove: self.cfg.child_env_remove(),
            cwd: self.dir.path(),
            stdout: &self.stdout_path,
            stderr: &self.stderr_path,
            pidfile: &pidfile,
            ids: None,
            kill_signal: "KILL",
        })?;
        self.proc = Some(proc);
        let ready_path = self.ready_path.clone();
        let mut last_content = String::new();
        let waited = poll(READY_TIMEOUT, Duration::from_millis(10), || {
            if let Some(proc) = self.proc.as_mut() {
                if let Some(st) = proc.try_wait()? {
                    bail!("gatehouse serve exited with {st} before it was ready");
                }
            }
            let Ok(text) = fs::read_to_string(&ready_path) else {
                return Ok(None);
            };
            last_content.clone_from(&text);
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                return Ok(None); // still being written
            };
            match v.get("postgres").and_then(|p| p.as_str()) {
                Some(addr) => {
                    let addr: SocketAddr = addr.parse().with_context(|| {
                        format!("ready file: bad postgres address {addr:?} in {text}")
                    })?;
                    Ok(Some((v, addr)))
                }
                None => bail!("ready file has no \"postgres\" address: {text}"),
            }
        });
        match waited {
            Ok(Some((v, addr))) => {
                self.ready = v;
                self.pg_addr = addr;
                Ok(())
            }
            Ok(None) => {
                if let Some(mut p) = self.proc.take() {
                    let _ = p.kill9();
                }
                Err(anyhow!(
                    "gatehouse serve was not ready within {READY_TIMEOUT:?} (ready file: {last_content:?})\n{}",
                    self.logs()
                ))
            }
            Err(e) => {
                if let Some(mut p) = self.proc.take() {
                    let _ = p.kill9();
                }
                Err(e.context(format!("starting gatehouse serve\n{}", self.logs())))
            }
        }
    }

    /// The PostgreSQL front door, from the ready file.
    pub fn pg_addr(&self) -> SocketAddr {
        self.pg_addr
    }

    /// The HTTPS listener (login pages, API, JWKS), from the ready file.
    pub fn https_addr(&self) -> anyhow::Result<SocketAddr> {
        let addr = self
            .ready
            .get("https")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("ready file has no \"https\" address: {}", self.ready))?;
        addr.parse()
            .with_context(|| format!("ready file: bad https address {addr:?}"))
    }

    /// The generic TCP front door, from the ready file (`"tcp"`; the config must set
    /// `[tcp] listen`, e.g. `.set("tcp", "listen", "\"127.0.0.1:0\"")`).
    pub fn tcp_addr(&self) -> anyhow::Result<SocketAddr> {
        let addr = self
            .ready
            .get("tcp")
            .and_then(|v| v.as_str())
            .ok_or_else(|| anyhow!("ready file has no \"tcp\" address: {}", self.ready))?;
        addr.parse()
            .with_context(|| format!("ready file: bad tcp address {addr:?}"))
    }

    /// `https://127.0.0.1:PORT` of the HTTPS listener.
    pub fn https_url(&self) -> anyhow::Result<String> {
        Ok(format!("https://{}", self.https_addr()?))
    }

    /// A credential as a sign-in gives one to a person: a login row in the store and a 1 h
    /// credential naming it (`auth` = `oidc`), signed with this gateway's token key. The
    /// sign-in flow itself is tested against the real provider (`tests/sso*.rs`); this is the
    /// person it produces, for tests about what people do with their access. Issued tokens
    /// ([`token`](Self::token)) are service accounts.
    pub fn person_token(&self, user: &str, groups: &[&str]) -> anyhow::Result<String> {
        use gatehouse_gateway::authn::token::LoginClaims;
        use gatehouse_gateway::config::{Config, ProcessEnv, Secrets};
        use gatehouse_gateway::store::{logins::Login, Store};

        let config = Config::load(&self.config_path, &ProcessEnv, Secrets::Skip)?;
        let tokens = gatehouse_gateway::server::token_authority(&config)?;
        let sid: String = random_hex();
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let amr = vec!["pwd".to_string()];
        let (token, _) = tokens
            .issue_login(
                user,
                &groups,
                Duration::from_secs(3600),
                LoginClaims {
                    sid: sid.clone(),
                    amr: amr.clone(),
                    mfa: false,
                },
            )
            .map_err(|e| anyhow!("minting a login credential: {e}"))?;
        let now = gatehouse_gateway::audit::event::now_ts();
        let login = Login {
            id: sid,
            user: user.to_string(),
            flow: "test".into(),
            created: now.clone(),
            expires: "2099-01-01T00:00:00.000000Z".into(),
            amr,
            mfa: false,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let store = Store::open(&config.store_url).await?;
                store.insert_login(&login).await?;
                anyhow::Ok(())
            })
            .context("recording the login in the store")?;
        Ok(token)
    }

    /// A home directory for the `gatehouse` CLI holding a saved credential for `user` in
    /// `groups`, as `gatehouse login` saves it (a person's sign-in, see
    /// [`person_token`](Self::person_token)); use with [`as_user`](Self::as_user).
    pub fn engineer(&self, user: &str, groups: &[&str]) -> anyhow::Result<TempDir> {
        let token = self.person_token(user, groups)?;
        let home = temp_dir(&format!("home-{user}"))?;
        let saved = serde_json::json!({
            "gateway": self.https_url()?,
            "ca_file": self.tls_cert(),
            "credential": token,
            "user": user,
            "groups": groups,
            "mfa": false,
            "expires_at": 4_102_444_800u64,
            "postgres": self.pg_addr().to_string(),
        });
        fs::write(home.join("credentials.json"), saved.to_string())?;
        Ok(home)
    }

    /// Runs `gatehouse ARGS` as the engineer whose home is `home` (see
    /// [`engineer`](Self::engineer)).
    pub fn as_user(&self, home: &TempDir, args: &[&str]) -> anyhow::Result<CmdOutput> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("GATEHOUSE_HOME", home.path())
            .env_remove("GATEHOUSE_CONFIG");
        run_command(&mut cmd, None, COMMAND_TIMEOUT)
    }

    /// The self-signed certificate the gateway generated (both listeners use it), for clients
    /// that verify it.
    pub fn tls_cert(&self) -> PathBuf {
        self.state_dir.join("tls").join("cert.pem")
    }

    /// The whole ready file of the current run (other front doors may add fields).
    pub fn ready(&self) -> &serde_json::Value {
        &self.ready
    }

    /// The gateway's pid (not the watchdog's), if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Supervised::pid)
    }

    /// Whether the gateway process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.proc.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status if the gateway has exited on its own (for "it must crash/exit" tests).
    pub fn try_exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.proc.as_mut() {
            Some(p) => p.try_wait(),
            None => Ok(None),
        }
    }

    /// The `gatehouse <args>` command [`cli`](Self::cli) runs, for a caller that needs its
    /// raw bytes or its own timeout.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("GATEHOUSE_CONFIG", &self.config_path);
        for (k, v) in self.cfg.child_env() {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `gatehouse <args>` with `GATEHOUSE_CONFIG` set to this gateway's config (the
    /// default for `--config`) and the same env as the server. 60 s timeout. A non-zero exit
    /// is not an error here: check the output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CmdOutput> {
        run_command(&mut self.cli_command(args), None, COMMAND_TIMEOUT)
    }

    /// Like [`cli`](Self::cli) with `stdin` fed to the command.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> anyhow::Result<CmdOutput> {
        run_command(&mut self.cli_command(args), Some(stdin), COMMAND_TIMEOUT)
    }

    fn config_str(&self) -> String {
        self.config_path.to_string_lossy().into_owned()
    }

    /// `gatehouse token issue --config F --user U --groups a,b --ttl TTL` (no `--groups` when
    /// `groups` is empty); returns the token (trimmed stdout). Errors if the command fails.
    pub fn token(&self, user: &str, groups: &[&str], ttl: &str) -> anyhow::Result<String> {
        let cfg = self.config_str();
        let joined = groups.join(",");
        let mut args = vec!["token", "issue", "--config", &cfg, "--user", user];
        if !groups.is_empty() {
            args.extend(["--groups", &joined]);
        }
        args.extend(["--ttl", ttl]);
        let out = self.cli(&args)?.ok().context("gatehouse token issue")?;
        let token = out.stdout.trim().to_owned();
        if token.is_empty() {
            bail!("gatehouse token issue printed no token: {out}");
        }
        Ok(token)
    }

    /// `psql` through this gateway's PostgreSQL front door (`sslmode=require`) to resource
    /// `resource` as `user` with `password` (usually a token from [`token`](Self::token)).
    pub fn psql(
        &self,
        resource: &str,
        user: &str,
        password: &str,
        sql: &str,
    ) -> anyhow::Result<PsqlOutput> {
        psql(self.pg_addr, resource, user, password, sql)
    }

    /// Issues a 1 h token for `user` in `groups` and runs `sql` through the gateway on
    /// `resource` with it.
    pub fn psql_as(
        &self,
        user: &str,
        groups: &[&str],
        resource: &str,
        sql: &str,
    ) -> anyhow::Result<PsqlOutput> {
        let token = self.token(user, groups, "1h")?;
        self.psql(resource, user, &token, sql)
    }

    /// `gatehouse audit export --config F --format <format> <extra>` (e.g. `["--from",
    /// "2025-01-01T00:00:00Z", "--output", path]`). A non-zero exit is not an error here.
    pub fn audit_export(&self, format: &str, extra: &[&str]) -> anyhow::Result<CmdOutput> {
        let cfg = self.config_str();
        let mut args = vec!["audit", "export", "--config", &cfg, "--format", format];
        args.extend_from_slice(extra);
        self.cli(&args)
    }

    /// The whole export as JSON values (`gatehouse audit export --format jsonl`, one value per
    /// non-empty line: events and the export's other records, such as signed checkpoints).
    /// Errors if the export fails or a line is not JSON.
    pub fn audit_export_jsonl(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.audit_export("jsonl", &[])?.ok()?;
        out.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("audit export line {}: not JSON: {l}", i + 1))
            })
            .collect()
    }

    /// The audit events only: the lines of [`audit_export_jsonl`](Self::audit_export_jsonl)
    /// with `"type": "event"` (the export also carries signed checkpoints and such).
    pub fn audit_events(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(self
            .audit_export_jsonl()?
            .into_iter()
            .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("event"))
            .collect())
    }

    /// `gatehouse audit verify --config F` (exit 0 when intact).
    pub fn audit_verify(&self) -> anyhow::Result<CmdOutput> {
        let cfg = self.config_str();
        self.cli(&["audit", "verify", "--config", &cfg])
    }

    /// `gatehouse audit public-key --config F`, trimmed. Errors if the command fails.
    pub fn audit_public_key(&self) -> anyhow::Result<String> {
        let cfg = self.config_str();
        let out = self.cli(&["audit", "public-key", "--config", &cfg])?.ok()?;
        Ok(out.stdout.trim().to_owned())
    }

    /// Offline verification as an auditor does it: `gatehouse audit verify --file <export>
    /// --public-key <key>` with no config in reach (`key` is base64 or `@file`).
    pub fn audit_verify_file(export: &Path, public_key: &str) -> anyhow::Result<CmdOutput> {
        let export = export.to_string_lossy();
        gatehouse(&[
            "audit",
            "verify",
            "--file",
            &export,
            "--public-key",
            public_key,
        ])
    }

    /// SIGKILLs the gateway and waits for it. [`restart`](Self::restart) brings it back.
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        let mut proc = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("gateway is not running"))?;
        proc.kill9()
    }

    /// Sends SIGTERM and waits (at most 30 s, then SIGKILL and an error) for the gateway to
    /// exit. Returns its exit status; a graceful shutdown should be `exit 0`.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut proc = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("gateway is not running"))?;
        proc.stop_with("TERM", Duration::from_secs(30))
            .with_context(|| self.logs())
    }

    /// Starts the gateway again with the same config file, state dir and environment (after
    /// [`stop`](Self::stop) or [`kill9`](Self::kill9); stops it first if it runs) and waits
    /// for the new ready file. With the default `listen` the port changes: use
    /// [`pg_addr`](Self::pg_addr) again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            self.stop()?;
        }
        self.spawn()
    }

    /// Stdout and stderr of all runs so far.
    pub fn logs(&self) -> String {
        format!(
            "--- gatehouse stdout ({}) ---\n{}\n--- gatehouse stderr ({}) ---\n{}",
            self.stdout_path.display(),
            fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            self.stderr_path.display(),
            fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }

    /// The whole export (as [`audit_export_jsonl`](Self::audit_export_jsonl)) once the log has
    /// stopped growing for 300 ms (at most 10 s): events a session writes as it ends, and
    /// statement events still in the writer's queue, are in it.
    pub fn settled_export(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let count = |v: &[serde_json::Value]| v.iter().filter(|e| e["type"] == "event").count();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut last = self.audit_export_jsonl()?;
        loop {
            // Kept on purpose: the condition is "no new event for 300 ms", which takes letting
            // that time pass. Callers that know which event to expect use `wait_for_event`.
            std::thread::sleep(Duration::from_millis(300));
            let now = self.audit_export_jsonl()?;
            if count(&now) == count(&last) || std::time::Instant::now() > deadline {
                return Ok(now);
            }
            last = now;
        }
    }

    /// The audit events, once one of them matches `pred` (polling for at most `timeout`): a
    /// session's end event is written just after the client sees the connection close.
    pub fn wait_for_event(
        &self,
        pred: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let events = self.audit_events()?;
            if events.iter().any(&pred) {
                return Ok(events);
            }
            if std::time::Instant::now() > deadline {
                bail!("no matching audit event within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits (at most `timeout`) until the gateway's logs contain `needle`: the gateway may log
    /// an event just after the client saw its effect.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while !self.logs().contains(needle) {
            if std::time::Instant::now() > deadline {
                bail!(
                    "the gateway did not log `{needle}` within {timeout:?}:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The store URL in the config (the sqlite default or what the test set).
    pub fn store_url(&self) -> String {
        self.cfg.store_url_for(&self.state_dir)
    }

    /// A direct `sqlx` connection to the store, for tests that inspect or tamper with it.
    pub async fn store_connection(&self) -> anyhow::Result<sqlx::AnyConnection> {
        use sqlx::Connection as _;
        sqlx::any::install_default_drivers();
        let url = self.store_url();
        sqlx::AnyConnection::connect(&url)
            .await
            .with_context(|| format!("connecting to the store {url}"))
    }

    /// Appends `forged` at the head of the log as someone with write access to the store but
    /// without the audit key can: the right seq and previous hash, a correct hash of its own
    /// contents, no commit seal. Returns the row as written.
    pub async fn append_unsealed_event(
        &self,
        forged: gatehouse_gateway::audit::NewEvent,
        ts: &str,
    ) -> anyhow::Result<gatehouse_gateway::audit::AuditEvent> {
        let mut db = self.store_connection().await?;
        let (head, prev): (i64, String) =
            sqlx::query_as("select seq, hash from audit_events order by seq desc limit 1")
                .fetch_one(&mut db)
                .await?;
        let row = forged.seal(head as u64 + 1, ts.to_string(), prev);
        sqlx::query(
            "insert into audit_events (seq, ts, kind, actor, resource, action, decision, reason, policy_ids, controls, session_id, detail, prev_hash, hash) values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )
        .bind(row.seq as i64)
        .bind(&row.ts)
        .bind(&row.kind)
        .bind(&row.actor)
        .bind(&row.resource)
        .bind(&row.action)
        .bind(&row.decision)
        .bind(&row.reason)
        .bind(serde_json::to_string(&row.policy_ids)?)
        .bind(serde_json::to_string(&row.controls)?)
        .bind(&row.session_id)
        .bind(&row.detail)
        .bind(&row.prev_hash)
        .bind(&row.hash)
        .execute(&mut db)
        .await?;
        Ok(row)
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The state dir (`<dir>/state`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The temporary directory holding config, ready file, logs and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config this gateway was started with.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }
}

impl Drop for Gateway {
    #[allow(
        clippy::print_stderr,
        reason = "show the gateway's logs when a test fails"
    )]
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "gatehouse-tests: gateway in {} (last lines)\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.dir.path().display(),
                tail(&self.stdout_path, 40),
                tail(&self.stderr_path, 80)
            );
        }
        // SIGKILL via the watchdog before the TempDir field goes.
        self.proc.take();
    }
}

/// 16 random bytes as hex, for login ids.
fn random_hex() -> String {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}
