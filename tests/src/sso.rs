//! Single sign-on fixture: a real PostgreSQL, the real OpenID provider ([`OidcProvider`]) and
//! the real gateway configured as its relying party, plus ways to sign in:
//!
//! - [`Sso::cli_login`]: runs the real `gatehouse login --no-browser` with its own
//!   `GATEHOUSE_HOME`, reads the sign-in URL it prints, and drives the [`Browser`] through the
//!   gateway and the provider's login form back to the CLI's loopback listener.
//! - [`Sso::browser_login`]: plays the CLI's part in-process (loopback redirect, `state`, PKCE)
//!   and returns the credential JSON; for attack tests that tamper with one step.
//!
//! Resources: `orders-db` (dev, internal: group `engineering` may connect) and `vault-db`
//! (dev, restricted: the default policies require MFA).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;

use crate::browser::{query_param, Browser};
use crate::gateway::{gatehouse_bin, Gateway, GatewayConfig, Resource};
use crate::oidc::{OidcProvider, OidcSpec, OidcUser, CLIENT_ID, CLIENT_SECRET};
use crate::pg::PgServer;
use crate::util::{free_port, line_reader, run_command, temp_dir, CmdOutput, TempDir};

/// An engineer in group `engineering` who signs in with a second factor.
pub const ERIN: &str = "erin";
pub const ERIN_PASSWORD: &str = "erin-pw";

/// `erin`: engineering, `amr` pwd + otp.
pub fn erin() -> OidcUser {
    OidcUser::new(ERIN, ERIN_PASSWORD)
        .groups(&["engineering"])
        .amr(&["pwd", "otp"])
        .email("erin@example.com")
}

/// The running trio.
pub struct Sso {
    pub pg: PgServer,
    pub op: OidcProvider,
    pub gw: Gateway,
    /// `https://127.0.0.1:PORT`, the gateway's public URL.
    pub base: String,
}

/// A CLI login: its home directory (holding `credentials.json`) and the command's output.
pub struct CliLogin {
    pub home: TempDir,
    pub output: CmdOutput,
}

impl CliLogin {
    /// The saved credential file.
    pub fn saved(&self) -> anyhow::Result<serde_json::Value> {
        let text = std::fs::read_to_string(self.home.join("credentials.json"))?;
        Ok(serde_json::from_str(&text)?)
    }

    /// The saved credential (the JWT).
    pub fn credential(&self) -> anyhow::Result<String> {
        self.saved()?["credential"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("credentials.json has no credential"))
    }
}

fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Sso {
    /// The default fixture: default users plus [`erin`], `recheck_every = 1s`.
    pub fn start() -> anyhow::Result<Sso> {
        Sso::start_with(|s| s, |c| c)
    }

    /// The fixture with the provider spec and gateway config adjusted.
    pub fn start_with(
        spec: impl FnOnce(OidcSpec) -> OidcSpec,
        cfg: impl FnOnce(GatewayConfig) -> GatewayConfig,
    ) -> anyhow::Result<Sso> {
        let pg = PgServer::start()?;
        let port = free_port()?;
        let base = format!("https://127.0.0.1:{port}");
        let op = OidcProvider::start(spec(OidcSpec::default_users().user(erin()).client(
            CLIENT_ID,
            CLIENT_SECRET,
            &[&format!("{base}/oidc/callback")],
        )))?;
        let config = GatewayConfig::new()
            .http_listen(&format!("127.0.0.1:{port}"))
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .resource(
                Resource::orders_db(&pg, "vault-db")
                    .labels(&[("env", "dev"), ("data_class", "restricted")]),
            )
            .set("http", "public_url", &toml_str(&base))
            .set("oidc", "issuer", &toml_str(op.issuer()))
            .set("oidc", "client_id", &toml_str(CLIENT_ID))
            .set(
                "oidc",
                "client_secret_env",
                &toml_str("GATEHOUSE_TEST_OIDC_SECRET"),
            )
            .set("oidc", "allow_http", "true")
            .set("oidc", "recheck_every", &toml_str("1s"))
            .env("GATEHOUSE_TEST_OIDC_SECRET", CLIENT_SECRET);
        let gw = Gateway::start(cfg(config))?;
        Ok(Sso { pg, op, gw, base })
    }

    /// A browser that trusts the gateway's self-signed certificate.
    pub fn browser(&self) -> anyhow::Result<Browser> {
        Browser::with_root_ca(self.gw.tls_cert())
    }

    /// Runs `gatehouse ARGS` as an engineer whose credentials live in `home`.
    /// The PostgreSQL password `gatehouse env RESOURCE` prints for the login in `home`.
    pub fn pg_password(&self, home: &Path, resource: &str) -> anyhow::Result<String> {
        let env = self.cli(home, &["env", resource])?.ok()?;
        env.stdout
            .lines()
            .find_map(|l| l.strip_prefix("export PGPASSWORD="))
            .map(|v| v.trim_matches('\'').to_string())
            .ok_or_else(|| anyhow!("`gatehouse env` printed no PGPASSWORD: {env}"))
    }

    pub fn cli(&self, home: &Path, args: &[&str]) -> anyhow::Result<CmdOutput> {
        let bin = gatehouse_bin()?;
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env("GATEHOUSE_HOME", home)
            .env_remove("GATEHOUSE_CONFIG")
            .env_remove("GATEHOUSE_GATEWAY");
        run_command(&mut cmd, None, Duration::from_secs(60))
    }

    /// `gatehouse login --no-browser` as `user`, driven through the browser.
    pub fn cli_login(&self, user: &str, password: &str) -> anyhow::Result<CliLogin> {
        let home = temp_dir("gh-home")?;
        let mut child = Command::new(gatehouse_bin()?)
            .args([
                "login",
                "--gateway",
                &self.base,
                "--no-browser",
                "--ca-file",
            ])
            .arg(self.gw.tls_cert())
            .env("GATEHOUSE_HOME", home.path())
            .env_remove("GATEHOUSE_GATEWAY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning gatehouse login")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (rx, reader) = line_reader(stderr);
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.trim().starts_with("https://") => break line.trim().to_string(),
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("gatehouse login printed no sign-in URL within 30 s");
                }
            }
        };
        let mut browser = self.browser()?;
        let back = browser.sign_in(&url, user, password, |u| {
            u.host_str() == Some("127.0.0.1") && u.path() == "/callback" && u.scheme() == "http"
        });
        let back = match back {
            Ok(b) => b,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.context(self.gw.logs()));
            }
        };
        // Deliver the one-time code to the CLI's loopback listener.
        let page = browser.get(back.as_str())?;
        if page.status != 200 {
            bail!("the CLI's loopback answered {}: {}", page.status, page.body);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("gatehouse login did not exit within 30 s of the callback");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        let stderr = reader.join().unwrap_or_default();
        let output = CmdOutput {
            command: "gatehouse login".into(),
            status,
            stdout,
            stderr,
        };
        Ok(CliLogin { home, output })
    }

    /// Plays the CLI's part in-process: starts `/login` with a loopback redirect, signs in as
    /// `user`, and picks the credential up with the PKCE verifier. Returns the API's JSON.
    pub fn browser_login(
        &self,
        browser: &mut Browser,
        user: &str,
        password: &str,
    ) -> anyhow::Result<serde_json::Value> {
        let flow = CliFlow::new(&self.base);
        let back = browser.sign_in(flow.login_url()?, user, password, |u| flow.is_callback(u))?;
        let code = query_param(&back, "code").ok_or_else(|| anyhow!("no code in {back}"))?;
        if query_param(&back, "state").as_deref() != Some(flow.state.as_str()) {
            bail!("the gateway returned another state: {back}");
        }
        let (status, body) = post_json(
            browser,
            &format!("{}/api/v1/login/token", self.base),
            &serde_json::json!({ "code": code, "code_verifier": flow.verifier }),
        )?;
        if status != 200 {
            bail!("credential pickup refused: {status} {body}");
        }
        Ok(body)
    }
}

/// The CLI's side of a login: its loopback redirect, `state` and PKCE pair.
pub struct CliFlow {
    pub base: String,
    pub port: u16,
    pub state: String,
    pub verifier: String,
    pub challenge: String,
}

impl CliFlow {
    pub fn new(base: &str) -> CliFlow {
        let verifier = format!("verifier-{}-{}", std::process::id(), nanos());
        let verifier = B64URL.encode(ring_sha256(verifier.as_bytes()));
        let challenge = B64URL.encode(ring_sha256(verifier.as_bytes()));
        CliFlow {
            base: base.to_string(),
            port: 40_000 + (nanos() % 20_000) as u16,
            state: format!("cli-state-{}", nanos()),
            verifier,
            challenge,
        }
    }

    pub fn redirect(&self) -> String {
        format!("http://127.0.0.1:{}/callback", self.port)
    }

    /// `/login` with this flow's parameters.
    pub fn login_url(&self) -> anyhow::Result<String> {
        self.login_url_with(&self.redirect())
    }

    /// `/login` with another `cli_redirect` (open-redirect attempts).
    pub fn login_url_with(&self, redirect: &str) -> anyhow::Result<String> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/login", self.base),
            &[
                ("cli_redirect", redirect),
                ("cli_state", &self.state),
                ("cli_challenge", &self.challenge),
            ],
        )?;
        Ok(url.to_string())
    }

    pub fn is_callback(&self, u: &reqwest::Url) -> bool {
        u.scheme() == "http" && u.host_str() == Some("127.0.0.1") && u.port() == Some(self.port)
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn ring_sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// POSTs JSON with the browser's client (and cookies); returns status and JSON body (`null`
/// when the body is not JSON).
pub fn post_json(
    browser: &Browser,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let resp = browser.client().post(url).json(body).send()?;
    let status = resp.status().as_u16();
    let text = resp.text()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// Reads `credentials.json` from a home directory.
pub fn saved_credentials(home: &Path) -> anyhow::Result<serde_json::Value> {
    let path: PathBuf = home.join("credentials.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}
