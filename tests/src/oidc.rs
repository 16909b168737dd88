//! A real OpenID provider on loopback: the OpenID Certified `oidc-provider` npm package, run by
//! `node tests/oidc/provider.mjs` (test-only; see that file).
//!
//! [`OidcProvider::start`] writes the [`OidcSpec`] as JSON into a temporary directory, starts
//! node under the watchdog (it dies with the test) and waits for the issuer line. The provider:
//!
//! - issuer `http://127.0.0.1:<port>` (plain HTTP on loopback), discovery at
//!   `/.well-known/openid-configuration`, an RS256 key generated at start (`/jwks`);
//! - confidential clients (`client_secret_basic` and `client_secret_post` both accepted),
//!   response type `code` with PKCE `S256` REQUIRED, grant types `authorization_code`,
//!   `refresh_token` and the device flow; a refresh token is issued on every code/device grant
//!   and rotated on every use (unless [`OidcSpec::rotate_refresh_tokens`]`(false)`);
//! - scopes `openid profile email groups offline_access`; the ID token carries `sub`
//!   (= username), `acr`, `amr`, `auth_time`, `name`, `preferred_username`, `email`,
//!   `email_verified`, `groups` (array) for the scopes asked, plus `nonce` when sent;
//! - a plain-HTML login page (`username`, `password`) that checks the password, and consent
//!   granted automatically; the device flow's code entry and confirmation pages are plain forms
//!   too. [`Browser`](crate::Browser) drives all of them.
//!
//! The standard users ([`OidcSpec::default_users`]): [`ALICE`] (`engineering`, `amr` `["pwd"]`),
//! [`DANA`] (`dba`, `amr` `["pwd","otp"]`, acr [`ACR_MFA`]) and [`MALLORY`] (`contractors`,
//! `amr` `["pwd"]`). [`OidcProvider::disable_user`] makes a user unknown from then on (refresh
//! grants for them fail with `invalid_grant`).
//!
//! Needs `node` on `PATH` and `npm ci --prefix tests/oidc` done (`scripts/test` does both).

use std::ffi::OsString;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use serde_json::{json, Value};

use crate::util::{
    find_in_path, run_command, sweep_stale_dirs, tail, temp_dir, workspace_root, CmdOutput,
    SpawnSpec, Supervised, TempDir, COMMAND_TIMEOUT,
};

/// How long to wait for the provider's issuer line.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Timeout of one control request to the provider.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// `acr` of the password-only users.
pub const ACR_PWD: &str = "urn:gatehouse:acr:pwd";
/// `acr` of the multi-factor user [`DANA`].
pub const ACR_MFA: &str = "urn:gatehouse:acr:mfa";

/// Standard user: groups `["engineering"]`, amr `["pwd"]`, acr [`ACR_PWD`].
pub const ALICE: &str = "alice";
/// Password of [`ALICE`].
pub const ALICE_PASSWORD: &str = "alice-pw";
/// Standard user with MFA: groups `["dba"]`, amr `["pwd","otp"]`, acr [`ACR_MFA`].
pub const DANA: &str = "dana";
/// Password of [`DANA`].
pub const DANA_PASSWORD: &str = "dana-pw";
/// Standard user: groups `["contractors"]`, amr `["pwd"]`, acr [`ACR_PWD`].
pub const MALLORY: &str = "mallory";
/// Password of [`MALLORY`].
pub const MALLORY_PASSWORD: &str = "mallory-pw";

/// A conventional client id for the gateway (any id works).
pub const CLIENT_ID: &str = "gatehouse";
/// A conventional secret for [`CLIENT_ID`].
pub const CLIENT_SECRET: &str = "gatehouse-oidc-client-secret";

/// The `urn:ietf:params:oauth:grant-type:device_code` grant type.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A user account of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcUser {
    /// Login name, also the `sub` and `preferred_username` claims.
    pub username: String,
    /// Password checked by the login page.
    pub password: String,
    /// `email` claim.
    pub email: String,
    /// `name` claim.
    pub name: String,
    /// `groups` claim.
    pub groups: Vec<String>,
    /// `amr` of a login (e.g. `["pwd","otp"]` for MFA).
    pub amr: Vec<String>,
    /// `acr` of a login.
    pub acr: String,
}

impl OidcUser {
    /// A user with email `<username>@example.test`, name = username, no groups, amr `["pwd"]`,
    /// acr [`ACR_PWD`].
    pub fn new(username: &str, password: &str) -> OidcUser {
        OidcUser {
            username: username.to_string(),
            password: password.to_string(),
            email: format!("{username}@example.test"),
            name: username.to_string(),
            groups: Vec::new(),
            amr: vec!["pwd".to_string()],
            acr: ACR_PWD.to_string(),
        }
    }

    /// Sets the `groups` claim.
    pub fn groups(mut self, groups: &[&str]) -> OidcUser {
        self.groups = groups.iter().map(|g| g.to_string()).collect();
        self
    }

    /// Sets the `amr` of this user's logins.
    pub fn amr(mut self, amr: &[&str]) -> OidcUser {
        self.amr = amr.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Sets the `acr` of this user's logins.
    pub fn acr(mut self, acr: &str) -> OidcUser {
        self.acr = acr.to_string();
        self
    }

    /// Sets the `email` claim.
    pub fn email(mut self, email: &str) -> OidcUser {
        self.email = email.to_string();
        self
    }

    /// Sets the `name` claim.
    pub fn name(mut self, name: &str) -> OidcUser {
        self.name = name.to_string();
        self
    }

    /// [`ALICE`]: `alice@example.test`, "Alice Engineer", groups `["engineering"]`, amr
    /// `["pwd"]`, acr [`ACR_PWD`].
    pub fn alice() -> OidcUser {
        OidcUser::new(ALICE, ALICE_PASSWORD)
            .name("Alice Engineer")
            .groups(&["engineering"])
    }

    /// [`DANA`]: `dana@example.test`, "Dana Admin", groups `["dba"]`, amr `["pwd","otp"]`, acr
    /// [`ACR_MFA`].
    pub fn dana() -> OidcUser {
        OidcUser::new(DANA, DANA_PASSWORD)
            .name("Dana Admin")
            .groups(&["dba"])
            .amr(&["pwd", "otp"])
            .acr(ACR_MFA)
    }

    /// [`MALLORY`]: `mallory@example.test`, "Mallory Contractor", groups `["contractors"]`, amr
    /// `["pwd"]`, acr [`ACR_PWD`].
    pub fn mallory() -> OidcUser {
        OidcUser::new(MALLORY, MALLORY_PASSWORD)
            .name("Mallory Contractor")
            .groups(&["contractors"])
    }

    fn to_json(&self) -> Value {
        json!({
            "username": self.username,
            "password": self.password,
            "email": self.email,
            "name": self.name,
            "groups": self.groups,
            "amr": self.amr,
            "acr": self.acr,
        })
    }
}

/// A confidential client of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcClient {
    /// `client_id`.
    pub client_id: String,
    /// `client_secret` (basic or post).
    pub client_secret: String,
    /// Registered redirect URIs (exact match). Without any, the client can use the device flow
    /// and refresh tokens only.
    pub redirect_uris: Vec<String>,
    /// Registered `post_logout_redirect_uris` for RP-initiated logout.
    pub post_logout_redirect_uris: Vec<String>,
}

impl OidcClient {
    /// A client with these credentials and redirect URIs.
    pub fn new(client_id: &str, client_secret: &str, redirect_uris: &[&str]) -> OidcClient {
        OidcClient {
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            redirect_uris: redirect_uris.iter().map(|u| u.to_string()).collect(),
            post_logout_redirect_uris: Vec::new(),
        }
    }

    /// Adds a `post_logout_redirect_uri`.
    pub fn post_logout_redirect_uri(mut self, uri: &str) -> OidcClient {
        self.post_logout_redirect_uris.push(uri.to_string());
        self
    }

    fn to_json(&self) -> Value {
        json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
        })
    }
}

/// What [`OidcProvider::start`] runs: clients, users and lifetimes.
#[derive(Debug, Clone)]
pub struct OidcSpec {
    clients: Vec<OidcClient>,
    users: Vec<OidcUser>,
    id_token_ttl: Duration,
    access_token_ttl: Duration,
    session_ttl: Duration,
    refresh_token_ttl: Option<Duration>,
    rotate_refresh_tokens: bool,
}

impl Default for OidcSpec {
    fn default() -> Self {
        OidcSpec::new()
    }
}

impl OidcSpec {
    /// No clients, no users; ID and access tokens live 1 h, provider sessions (and refresh
    /// tokens) 24 h; refresh tokens rotate on every use.
    pub fn new() -> OidcSpec {
        OidcSpec {
            clients: Vec::new(),
            users: Vec::new(),
            id_token_ttl: Duration::from_secs(3600),
            access_token_ttl: Duration::from_secs(3600),
            session_ttl: Duration::from_secs(86400),
            refresh_token_ttl: None,
            rotate_refresh_tokens: true,
        }
    }

    /// [`new`](Self::new) with the standard users [`OidcUser::alice`], [`OidcUser::dana`] and
    /// [`OidcUser::mallory`].
    pub fn default_users() -> OidcSpec {
        OidcSpec::new()
            .user(OidcUser::alice())
            .user(OidcUser::dana())
            .user(OidcUser::mallory())
    }

    /// Adds a confidential client with these redirect URIs (exact match; any number).
    pub fn client(self, client_id: &str, client_secret: &str, redirect_uris: &[&str]) -> OidcSpec {
        self.with_client(OidcClient::new(client_id, client_secret, redirect_uris))
    }

    /// Adds a client built with [`OidcClient`].
    pub fn with_client(mut self, client: OidcClient) -> OidcSpec {
        self.clients.push(client);
        self
    }

    /// Adds a user.
    pub fn user(mut self, user: OidcUser) -> OidcSpec {
        self.users.push(user);
        self
    }

    /// Lifetime of ID tokens (`exp - iat`), whole seconds.
    pub fn id_token_ttl(mut self, ttl: Duration) -> OidcSpec {
        self.id_token_ttl = ttl;
        self
    }

    /// Lifetime of access tokens.
    pub fn access_token_ttl(mut self, ttl: Duration) -> OidcSpec {
        self.access_token_ttl = ttl;
        self
    }

    /// Lifetime of the provider's login session (single sign-on) and, unless
    /// [`refresh_token_ttl`](Self::refresh_token_ttl) is set, of refresh tokens.
    pub fn session_ttl(mut self, ttl: Duration) -> OidcSpec {
        self.session_ttl = ttl;
        self
    }

    /// Lifetime of refresh tokens.
    pub fn refresh_token_ttl(mut self, ttl: Duration) -> OidcSpec {
        self.refresh_token_ttl = Some(ttl);
        self
    }

    /// Whether every refresh grant returns a new refresh token and consumes the old one (default
    /// true; reusing a consumed one fails with `invalid_grant` and revokes the whole grant).
    pub fn rotate_refresh_tokens(mut self, rotate: bool) -> OidcSpec {
        self.rotate_refresh_tokens = rotate;
        self
    }

    fn to_json(&self) -> Value {
        let secs = |d: Duration| d.as_secs().max(1);
        json!({
            "port": 0,
            "clients": self.clients.iter().map(OidcClient::to_json).collect::<Vec<_>>(),
            "users": self.users.iter().map(OidcUser::to_json).collect::<Vec<_>>(),
            "id_token_ttl": secs(self.id_token_ttl),
            "access_token_ttl": secs(self.access_token_ttl),
            "session_ttl": secs(self.session_ttl),
            "refresh_token_ttl": secs(self.refresh_token_ttl.unwrap_or(self.session_ttl)),
            "rotate_refresh_tokens": self.rotate_refresh_tokens,
        })
    }
}

/// The directory holding `provider.mjs`, `package.json` and `node_modules`.
pub fn provider_dir() -> PathBuf {
    workspace_root().join("tests").join("oidc")
}

/// A running test OpenID provider (see the [module docs](self)).
///
/// Dropping it stops node (SIGTERM) and removes its directory, unless the thread is panicking
/// (then `provider.log` is kept and its path printed).
pub struct OidcProvider {
    proc: Option<Supervised>,
    issuer: String,
    addr: SocketAddr,
    clients: Vec<OidcClient>,
    log: PathBuf,
    dir: TempDir,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl OidcProvider {
    /// Starts the provider and waits (at most 90 s) until it listens. Needs at least one client.
    pub fn start(spec: OidcSpec) -> anyhow::Result<OidcProvider> {
        sweep_stale_dirs();
        if spec.clients.is_empty() {
            bail!("OidcSpec has no client; add one with .client(id, secret, redirect_uris)");
        }
        let node = find_in_path("node").ok_or_else(|| {
            anyhow!("`node` not found on PATH (apt-get install -y nodejs npm; scripts/test does)")
        })?;
        check_node_version(&node)?;
        let pdir = provider_dir();
        let script = pdir.join("provider.mjs");
        if !pdir.join("node_modules").join("oidc-provider").is_dir() {
            bail!(
                "{} is missing: run `npm ci --prefix tests/oidc` in {} (scripts/test does)",
                pdir.join("node_modules/oidc-provider").display(),
                workspace_root().display()
            );
        }
        let dir = temp_dir("oidc")?;
        let config = dir.join("config.json");
        fs::write(&config, serde_json::to_vec_pretty(&spec.to_json())?)
            .context("writing the provider config")?;
        let stdout = dir.join("stdout.log");
        let log = dir.join("provider.log");
        let mut proc = Supervised::spawn(SpawnSpec {
            program: &node,
            args: vec![OsString::from(&script), OsString::from(&config)],
            envs: vec![
                ("NODE_ENV".into(), "test".into()),
                ("NO_COLOR".into(), "1".into()),
            ],
            env_remove: vec!["NODE_OPTIONS".into(), "DEBUG".into()],
            cwd: &pdir,
            stdout: &stdout,
            stderr: &log,
            pidfile: &dir.join("watchdog.pid"),
            ids: None,
            kill_signal: "TERM",
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        let issuer = loop {
            let out = fs::read_to_string(&stdout).unwrap_or_default();
            if let Some(line) = out.lines().next().filter(|_| out.contains('\n')) {
                let v: Value = serde_json::from_str(line).with_context(|| {
                    format!(
                        "provider printed {line:?}, not the issuer JSON; log:\n{}",
                        tail(&log, 40)
                    )
                })?;
                let issuer = v["issuer"]
                    .as_str()
                    .ok_or_else(|| anyhow!("no issuer in the provider's line {line:?}"))?;
                break issuer.to_string();
            }
            if let Some(st) = proc.try_wait()? {
                bail!(
                    "the OpenID provider exited with {st} before listening; log:\n{}",
                    tail(&log, 40)
                );
            }
            if Instant::now() >= deadline {
                let _ = proc.kill9();
                bail!(
                    "the OpenID provider did not print its issuer within {START_TIMEOUT:?}; log:\n{}",
                    tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let addr: SocketAddr = issuer
            .strip_prefix("http://")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| anyhow!("unexpected issuer {issuer:?}"))?;
        Ok(OidcProvider {
            proc: Some(proc),
            issuer,
            addr,
            clients: spec.clients,
            log,
            dir,
        })
    }

    /// `http://127.0.0.1:<port>` (no trailing slash), exactly the `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<issuer>/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// `<issuer><path>` (e.g. `/token`, `/device/auth`, `/jwks`; discovery has them all).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// The `client_id` of the first client of the spec.
    pub fn client_id(&self) -> &str {
        self.clients
            .first()
            .map(|c| c.client_id.as_str())
            .unwrap_or_default()
    }

    /// The `client_secret` of the first client of the spec.
    pub fn client_secret(&self) -> &str {
        self.clients
            .first()
            .map(|c| c.client_secret.as_str())
            .unwrap_or_default()
    }

    /// The clients registered through the spec and [`register_client`](Self::register_client).
    pub fn clients(&self) -> &[OidcClient] {
        &self.clients
    }

    /// The discovery document.
    pub fn discovery(&self) -> anyhow::Result<Value> {
        let (status, body) = self.control("GET", "/.well-known/openid-configuration", None)?;
        if status != 200 {
            bail!("discovery answered {status}: {body}");
        }
        serde_json::from_str(&body).context("discovery document is not JSON")
    }

    /// TEST CONTROL: makes `username` unknown to the provider from now on (logins fail, and
    /// refresh grants for tokens issued to them fail with `invalid_grant`).
    pub fn disable_user(&self, username: &str) -> anyhow::Result<()> {
        self.user_switch(username, "disable")
    }

    /// TEST CONTROL: undoes [`disable_user`](Self::disable_user).
    pub fn enable_user(&self, username: &str) -> anyhow::Result<()> {
        self.user_switch(username, "enable")
    }

    fn user_switch(&self, username: &str, what: &str) -> anyhow::Result<()> {
        let path = format!("/_harness/users/{}/{what}", percent_encode(username));
        let (status, body) = self.control("POST", &path, Some(""))?;
        if status != 200 {
            bail!("{what} user {username}: provider answered {status}: {body}");
        }
        Ok(())
    }

    /// TEST CONTROL: registers a client after start, or replaces one with the same id (for a
    /// redirect URI whose port is known only once the gateway runs).
    pub fn register_client(&mut self, client: OidcClient) -> anyhow::Result<()> {
        let body = client.to_json().to_string();
        let (status, resp) = self.control("POST", "/_harness/clients", Some(&body))?;
        if status != 200 {
            bail!(
                "registering client {}: provider answered {status}: {resp}\nlog:\n{}",
                client.client_id,
                self.log_tail(20)
            );
        }
        self.clients.retain(|c| c.client_id != client.client_id);
        self.clients.push(client);
        Ok(())
    }

    /// TEST CONTROL: replaces the redirect URIs of a registered client.
    pub fn set_redirect_uris(&mut self, client_id: &str, uris: &[&str]) -> anyhow::Result<()> {
        let mut client = self
            .clients
            .iter()
            .find(|c| c.client_id == client_id)
            .cloned()
            .ok_or_else(|| anyhow!("no client {client_id}"))?;
        client.redirect_uris = uris.iter().map(|u| u.to_string()).collect();
        self.register_client(client)
    }

    /// The provider's log so far (node's stderr: one line per request, errors, logins).
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// The node process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Supervised::pid)
    }

    /// Whether node is still running.
    pub fn is_running(&mut self) -> bool {
        match self.proc.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Stops node (SIGTERM, then SIGKILL after 10 s). All sessions and tokens are lost.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let mut proc = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("provider is not running"))?;
        proc.stop_with("TERM", Duration::from_secs(10))?;
        Ok(())
    }

    /// A minimal HTTP/1.1 request to the provider over a std `TcpStream` (usable from any thread,
    /// also inside an async runtime). Returns status and body.
    fn control(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.addr, CONTROL_TIMEOUT)
            .with_context(|| format!("connecting to the provider at {}", self.addr))?;
        stream.set_read_timeout(Some(CONTROL_TIMEOUT))?;
        stream.set_write_timeout(Some(CONTROL_TIMEOUT))?;
        let body = body.unwrap_or("");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .with_context(|| format!("reading the provider's answer to {method} {path}"))?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| {
                anyhow!(
                    "malformed HTTP answer to {method} {path}: {:?}",
                    String::from_utf8_lossy(&raw)
                )
            })?;
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let rest = &raw[split + 4..];
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| anyhow!("no status in the answer to {method} {path}: {head:?}"))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .replace(' ', "")
                .starts_with("transfer-encoding:chunked")
        });
        let body = if chunked {
            dechunk(rest)
        } else {
            rest.to_vec()
        };
        let body = String::from_utf8_lossy(&body).into_owned();
        Ok((status, body))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Stop node before the TempDir field removes its files.
        self.proc.take();
    }
}

/// oidc-provider 9 needs Node.js >= 20.19 (`URL.parse`, `crypto.hash`); checked once per process.
fn check_node_version(node: &Path) -> anyhow::Result<()> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK
        .get_or_init(|| {
            let mut cmd = Command::new(node);
            cmd.args(["-p", "process.versions.node"]);
            let out = run_command(&mut cmd, None, COMMAND_TIMEOUT)
                .and_then(CmdOutput::ok)
                .map_err(|e| format!("{e:#}"))?;
            let version = out.stdout_trimmed().to_string();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) < (20, 19) {
                return Err(format!(
                    "{} is Node.js {version}; the test OpenID provider needs >= 20.19",
                    node.display()
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

/// Decodes a `Transfer-Encoding: chunked` body (best effort, for small control answers).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let data = &rest[eol + 2..];
        if n == 0 || data.len() < n {
            break;
        }
        out.extend_from_slice(&data[..n]);
        rest = data[n..].strip_prefix(b"\r\n").unwrap_or(&data[n..]);
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
