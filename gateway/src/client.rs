//! The engineer's side of the `gatehouse` command: `login`, `status`, `logout`, `psql`, `env`,
//! and `connect` ([`connect`], for `kind = "tcp"` resources).
//!
//! `login` opens the gateway's `/login` in a browser with a loopback redirect
//! (`http://127.0.0.1:PORT/callback`, RFC 8252) and its own `state` and PKCE challenge; the
//! gateway sends the browser back with a one-time code, which the CLI exchanges (with its
//! verifier) for a gateway credential. `login --device` runs the device flow for machines
//! without a browser. The credential, never the provider's tokens, is kept in
//! `credentials.json` (0600) under `$GATEHOUSE_HOME`, else `$XDG_CONFIG_HOME/gatehouse`, else
//! `~/.config/gatehouse`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::authn::token::unix_now;

pub mod connect;

/// How long `login` waits for the browser to come back.
const LOGIN_WAIT: Duration = Duration::from_secs(300);
/// Largest request the loopback listener reads.
const MAX_CALLBACK_REQUEST: usize = 16 * 1024;

/// What `login` stores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub gateway: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    pub credential: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub mfa: bool,
    pub expires_at: u64,
    /// The PostgreSQL front door, `host:port`.
    pub postgres: String,
}

/// The credential as the gateway hands it over.
#[derive(Debug, Deserialize)]
struct Issued {
    credential: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    mfa: bool,
    expires_at: u64,
    postgres: String,
}

/// The directory holding `credentials.json`.
pub fn home() -> anyhow::Result<PathBuf> {
    if let Some(h) = std::env::var_os("GATEHOUSE_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(x).join("gatehouse"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("gatehouse")),
        None => bail!("set GATEHOUSE_HOME (or HOME) to where credentials should be kept"),
    }
}

fn credentials_path() -> anyhow::Result<PathBuf> {
    Ok(home()?.join("credentials.json"))
}

/// Reads the saved login; a clear error when there is none or it expired.
pub fn load() -> anyhow::Result<Saved> {
    let path = credentials_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("not logged in: run `gatehouse login --gateway https://GATEWAY:8443` first")
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

fn save(saved: &Saved) -> anyhow::Result<PathBuf> {
    let path = credentials_path()?;
    let text = serde_json::to_vec_pretty(saved)?;
    crate::keys::write_private(&path, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("gatehouse-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading --ca-file {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {} holds no PEM certificate", ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

fn random_b64<const N: usize>() -> String {
    B64URL.encode(gatehouse_core::random::random_bytes::<N>())
}

/// Reads an error body `{"error", "message"}` into one line.
async fn api_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    match resp.json::<serde_json::Value>().await {
        Ok(v) => format!(
            "{} ({})",
            v.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("refused"),
            v.get("error")
                .and_then(|m| m.as_str())
                .unwrap_or(status.as_str())
        ),
        Err(_) => format!("HTTP {status}"),
    }
}

/// `gatehouse login`.
pub async fn login(
    gateway: Option<String>,
    ca_file: Option<PathBuf>,
    device: bool,
    open_browser: bool,
) -> anyhow::Result<()> {
    let previous = load().ok();
    let gateway = gateway
        .or_else(|| std::env::var("GATEHOUSE_GATEWAY").ok())
        .or_else(|| previous.as_ref().map(|p| p.gateway.clone()))
        .context("which gateway? give --gateway https://GATEWAY:8443")?;
    let gateway = gateway.trim_end_matches('/').to_string();
    if !gateway.starts_with("https://") {
        bail!("--gateway must be an https:// URL, got `{gateway}`");
    }
    let ca_file = ca_file
        .or_else(|| previous.as_ref().and_then(|p| p.ca_file.clone()))
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p));
    let http = http_client(ca_file.as_deref())?;
    let info: serde_json::Value = http
        .get(format!("{gateway}/api/v1/info"))
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?
        .json()
        .await
        .context("the gateway's /api/v1/info is not JSON; is this a Gatehouse gateway?")?;
    if info.get("sso").and_then(|v| v.as_bool()) != Some(true) {
        bail!("single sign-on is not configured on {gateway}; ask an administrator for a token");
    }
    let issued = if device {
        device_login(&http, &gateway).await?
    } else {
        browser_login(&http, &gateway, open_browser).await?
    };
    let saved = Saved {
        gateway: gateway.clone(),
        ca_file,
        credential: issued.credential,
        user: issued.user,
        groups: issued.groups,
        mfa: issued.mfa,
        expires_at: issued.expires_at,
        postgres: issued.postgres,
    };
    let path = save(&saved)?;
    println!(
        "Signed in to {gateway} as {} (groups: {}; MFA: {}). The credential expires {}.",
        saved.user,
        if saved.groups.is_empty() {
            "none".to_string()
        } else {
            saved.groups.join(", ")
        },
        if saved.mfa { "yes" } else { "no" },
        when(saved.expires_at)
    );
    tracing::debug!(path = %path.display(), "credential saved");
    Ok(())
}

async fn browser_login(
    http: &reqwest::Client,
    gateway: &str,
    open_browser: bool,
) -> anyhow::Result<Issued> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port for the browser's return")?;
    let port = listener.local_addr()?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let state = random_b64::<24>();
    let verifier = random_b64::<32>();
    let challenge = B64URL.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let mut url = reqwest::Url::parse(&format!("{gateway}/login"))?;
    url.query_pairs_mut()
        .append_pair("cli_redirect", &redirect)
        .append_pair("cli_state", &state)
        .append_pair("cli_challenge", &challenge);
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "To sign in, open this URL in your browser:\n\n  {url}\n"
        );
    }
    if open_browser {
        open_in_browser(url.as_str());
    }
    let code = tokio::time::timeout(LOGIN_WAIT, wait_for_callback(&listener, &state))
        .await
        .context("timed out waiting for the browser to come back (5 minutes)")??;
    let resp = http
        .post(format!("{gateway}/api/v1/login/token"))
        .json(&serde_json::json!({ "code": code, "code_verifier": verifier }))
        .send()
        .await
        .context("cannot reach the gateway to pick up the credential")?;
    if !resp.status().is_success() {
        bail!("the gateway refused the login: {}", api_error(resp).await);
    }
    resp.json()
        .await
        .context("the gateway's answer is not a credential")
}

fn open_in_browser(url: &str) {
    let opener = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| {
            if cfg!(target_os = "macos") {
                "open".into()
            } else {
                "xdg-open".into()
            }
        });
    let spawned = std::process::Command::new(&opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_err() {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "(could not start `{opener}`; open the URL yourself)");
    }
}

/// Serves the loopback listener until a `/callback` with our `state` arrives; returns its code.
async fn wait_for_callback(
    listener: &tokio::net::TcpListener,
    state: &str,
) -> anyhow::Result<String> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_ok = loop {
            match tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break false,
                Ok(Ok(n)) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break true;
                    }
                    if buf.len() > MAX_CALLBACK_REQUEST {
                        break false;
                    }
                }
            }
        };
        if !head_ok {
            continue;
        }
        let head = String::from_utf8_lossy(&buf);
        let target = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("");
        let parsed = reqwest::Url::parse(&format!("http://127.0.0.1{target}")).ok();
        let Some(url) = parsed.filter(|u| u.path() == "/callback") else {
            respond(&mut conn, "404 Not Found", "Not found.").await;
            continue;
        };
        let param = |k: &str| {
            url.query_pairs()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.into_owned())
        };
        let state_ok = param("state")
            .map(|s| bool::from(s.as_bytes().ct_eq(state.as_bytes())))
            .unwrap_or(false);
        match (state_ok, param("code")) {
            (true, Some(code)) => {
                respond(
                    &mut conn,
                    "200 OK",
                    "Signed in to Gatehouse. You can close this window and return to your terminal.",
                )
                .await;
                return Ok(code);
            }
            _ => {
                // Not ours (a stale tab, or someone else's redirect): keep waiting.
                respond(
                    &mut conn,
                    "400 Bad Request",
                    "This sign-in does not belong to the waiting `gatehouse login`.",
                )
                .await;
            }
        }
    }
}

async fn respond(conn: &mut tokio::net::TcpStream, status: &str, text: &str) {
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Gatehouse</title></head>\
         <body><p>{}</p></body></html>",
        crate::web::page::escape(text)
    );
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
    let _ = conn.shutdown().await;
}

async fn device_login(http: &reqwest::Client, gateway: &str) -> anyhow::Result<Issued> {
    let resp = http
        .post(format!("{gateway}/api/v1/device"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .context("cannot reach the gateway")?;
    if !resp.status().is_success() {
        bail!(
            "the gateway cannot start a device login: {}",
            api_error(resp).await
        );
    }
    let start: serde_json::Value = resp.json().await?;
    let s = |k: &str| {
        start
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let device_code = s("device_code");
    let mut interval =
        Duration::from_secs(start.get("interval").and_then(|v| v.as_u64()).unwrap_or(5));
    let expires = Duration::from_secs(
        start
            .get("expires_in")
            .and_then(|v| v.as_u64())
            .unwrap_or(600),
    );
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "To sign in, visit\n\n  {}\n\nand enter the code\n\n  {}\n",
            s("verification_uri"),
            s("user_code")
        );
        let complete = s("verification_uri_complete");
        if !complete.is_empty() {
            let _ = writeln!(err, "(or open {complete})\n");
        }
        let _ = writeln!(err, "Waiting for you to sign in...");
    }
    let deadline = Instant::now() + expires;
    loop {
        if Instant::now() > deadline {
            bail!("the device code expired before the sign-in finished; run `gatehouse login --device` again");
        }
        tokio::time::sleep(interval).await;
        let resp = http
            .post(format!("{gateway}/api/v1/device/token"))
            .json(&serde_json::json!({ "device_code": device_code }))
            .send()
            .await
            .context("cannot reach the gateway")?;
        if resp.status().is_success() {
            return resp
                .json()
                .await
                .context("the gateway's answer is not a credential");
        }
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        match v.get("error").and_then(|e| e.as_str()) {
            Some("authorization_pending") => {}
            Some("slow_down") => interval += Duration::from_secs(5),
            _ => bail!(
                "the device login failed: {}",
                v.get("message")
                    .and_then(|m| m.as_str())
                    .unwrap_or("refused")
            ),
        }
    }
}

/// `gatehouse status`.
pub async fn status() -> anyhow::Result<()> {
    let saved = load()?;
    let http = http_client(saved.ca_file.as_deref())?;
    let resp = http
        .get(format!("{}/api/v1/whoami", saved.gateway))
        .bearer_auth(&saved.credential)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", saved.gateway))?;
    if !resp.status().is_success() {
        bail!(
            "the gateway refused the saved credential of {}: {}; run `gatehouse login`",
            saved.user,
            api_error(resp).await
        );
    }
    let me: serde_json::Value = resp.json().await?;
    let groups: Vec<&str> = me
        .get("groups")
        .and_then(|g| g.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let amr: Vec<&str> = me
        .get("amr")
        .and_then(|g| g.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let exp = me.get("expires_at").and_then(|v| v.as_u64()).unwrap_or(0);
    println!("gateway:  {}", saved.gateway);
    println!(
        "user:     {}",
        me.get("user").and_then(|v| v.as_str()).unwrap_or("")
    );
    println!(
        "groups:   {}",
        if groups.is_empty() {
            "none".into()
        } else {
            groups.join(", ")
        }
    );
    println!(
        "mfa:      {}{}",
        if me.get("mfa").and_then(|v| v.as_bool()) == Some(true) {
            "yes"
        } else {
            "no"
        },
        if amr.is_empty() {
            String::new()
        } else {
            format!(" (amr: {})", amr.join(", "))
        }
    );
    println!("expires:  {}", when(exp));
    println!("postgres: {}", saved.postgres);
    Ok(())
}

/// `gatehouse logout`: revokes the login at the gateway and forgets the credential.
pub async fn logout() -> anyhow::Result<()> {
    let saved = load()?;
    let http = http_client(saved.ca_file.as_deref())?;
    let revoked = match http
        .post(format!("{}/api/v1/logout", saved.gateway))
        .bearer_auth(&saved.credential)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(api_error(r).await),
        Err(e) => Err(e.to_string()),
    };
    let path = credentials_path()?;
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    match revoked {
        Ok(()) => println!("Logged out {}: the credential is revoked and forgotten.", saved.user),
        Err(e) => println!(
            "Forgot the credential of {}, but the gateway did not confirm revoking it ({e}); it stops working at its expiry.",
            saved.user
        ),
    }
    Ok(())
}

/// The libpq environment for `resource`.
pub fn pg_env(saved: &Saved, resource: &str) -> anyhow::Result<Vec<(String, String)>> {
    if saved.expires_at <= unix_now() {
        bail!(
            "the credential of {} expired {}; run `gatehouse login`",
            saved.user,
            when(saved.expires_at)
        );
    }
    let (host, port) = saved
        .postgres
        .rsplit_once(':')
        .context("the saved postgres address is not host:port; run `gatehouse login` again")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut env = vec![
        ("PGHOST".to_string(), host.to_string()),
        ("PGPORT".to_string(), port.to_string()),
        ("PGUSER".to_string(), saved.user.clone()),
        ("PGDATABASE".to_string(), resource.to_string()),
        ("PGPASSWORD".to_string(), saved.credential.clone()),
    ];
    match &saved.ca_file {
        Some(ca) => {
            env.push(("PGSSLMODE".into(), "verify-full".into()));
            env.push(("PGSSLROOTCERT".into(), ca.display().to_string()));
        }
        // No CA file: the gateway's certificate chains to a public root, which libpq before
        // 16 cannot be told to use; encryption without verification is the most it can do.
        None => env.push(("PGSSLMODE".into(), "require".into())),
    }
    Ok(env)
}

/// `gatehouse psql RESOURCE [ARGS...]`: runs psql with the credential; never on the command line.
pub fn psql(resource: &str, args: &[String]) -> anyhow::Result<std::process::ExitCode> {
    let saved = load()?;
    let env = pg_env(&saved, resource)?;
    let mut cmd = std::process::Command::new("psql");
    cmd.args(args).envs(env);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let err = cmd.exec();
        Err(anyhow::anyhow!(err).context("cannot run psql (is it installed and on PATH?)"))
    }
    #[cfg(not(unix))]
    {
        let status = cmd.status().context("cannot run psql")?;
        Ok(std::process::ExitCode::from(
            status.code().unwrap_or(1) as u8
        ))
    }
}

/// `gatehouse env RESOURCE`: prints `export PG...=...` lines for `eval`.
pub fn env(resource: &str) -> anyhow::Result<()> {
    let saved = load()?;
    let mut out = std::io::stdout().lock();
    for (k, v) in pg_env(&saved, resource)? {
        writeln!(out, "export {k}={}", shell_quote(&v))?;
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `in 7h 59m (2026-11-28T22:00:00Z)` or `3m ago (...)`.
pub fn when(unix: u64) -> String {
    let ts = time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .map(|t| {
            let t = t.replace_nanosecond(0).unwrap_or(t);
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                t.month() as u8,
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_default();
    let now = unix_now();
    let span = |s: u64| {
        if s >= 3600 {
            format!("{}h {}m", s / 3600, (s % 3600) / 60)
        } else {
            format!("{}m {}s", s / 60, s % 60)
        }
    };
    if unix > now {
        format!("in {} ({ts})", span(unix - now))
    } else {
        format!("{} ago ({ts})", span(now - unix))
    }
}

/// Calls the gateway's API with the saved credential; errors carry the gateway's message.
async fn api(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let saved = load()?;
    let http = http_client(saved.ca_file.as_deref())?;
    let mut req = http
        .request(method, format!("{}{path}", saved.gateway))
        .bearer_auth(&saved.credential);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", saved.gateway))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!("the gateway refused your credential: run `gatehouse login`");
    }
    if !resp.status().is_success() {
        bail!("{}", api_error(resp).await);
    }
    Ok(resp.json().await?)
}

fn s<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("")
}

/// `gatehouse resources`.
pub async fn resources() -> anyhow::Result<()> {
    let v = api(reqwest::Method::GET, "/api/v1/resources", None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<20} {:<8} {:<8} {:<12} request",
        "resource", "env", "role", "access"
    )?;
    for r in v["resources"].as_array().into_iter().flatten() {
        for role in r["roles"].as_array().into_iter().flatten() {
            let access = if role["can_connect"] == true {
                match role["grant"].get("expires").and_then(|e| e.as_str()) {
                    Some(until) => format!("until {until}"),
                    None => "yes".into(),
                }
            } else {
                "no".into()
            };
            let request = if role["can_request"] == true {
                let max = role["max_duration_secs"]
                    .as_u64()
                    .map(|m| format!(", max {}", crate::access::human_duration(m)))
                    .unwrap_or_default();
                format!(
                    "yes ({} approval{}{max})",
                    role["approvals_required"],
                    if role["approvals_required"] == 1 {
                        ""
                    } else {
                        "s"
                    }
                )
            } else {
                "-".into()
            };
            writeln!(
                out,
                "{:<20} {:<8} {:<8} {:<12} {request}",
                s(r, "name"),
                s(r, "env"),
                s(role, "role"),
                access
            )?;
        }
    }
    Ok(())
}

/// `gatehouse request`.
pub async fn request(
    resource: &str,
    role: &str,
    duration: &str,
    reason: &str,
    break_glass: bool,
) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        "/api/v1/requests",
        Some(serde_json::json!({ "resource": resource, "role": role, "duration": duration, "reason": reason, "break_glass": break_glass })),
    )
    .await?;
    if break_glass {
        println!(
            "BREAK-GLASS: `{role}` on {resource} granted until {} (grant {}). Review item {} is open; this is recorded and notified.",
            s(&v["grant"], "expires"),
            v["grant"]["id"],
            v["review_id"]
        );
    } else {
        println!(
            "request {} created: `{role}` on {resource} for {duration}; it needs {} approval(s). `gatehouse requests` shows its state.",
            v["request_id"], v["approvals_required"]
        );
    }
    Ok(())
}

/// `gatehouse requests [--pending]`.
pub async fn requests(pending: bool) -> anyhow::Result<()> {
    let path = if pending {
        "/api/v1/requests?pending=true"
    } else {
        "/api/v1/requests"
    };
    let v = api(reqwest::Method::GET, path, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<12} {:<16} {:<8} {:<8} {:<10} {:<9} reason",
        "id", "requester", "resource", "role", "for", "state", "approvals"
    )?;
    for r in v["requests"].as_array().into_iter().flatten() {
        let approvals = r["approvals"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["decision"] == "approve").count())
            .unwrap_or(0);
        writeln!(
            out,
            "{:<6} {:<12} {:<16} {:<8} {:<8} {:<10} {:<9} {}",
            r["id"],
            s(r, "requester"),
            s(r, "resource"),
            s(r, "role"),
            crate::access::human_duration(r["duration_secs"].as_u64().unwrap_or(0)),
            s(r, "state"),
            format!("{approvals}/{}", r["approvals_required"]),
            s(r, "reason")
        )?;
    }
    Ok(())
}

/// `gatehouse approve` / `gatehouse deny`.
pub async fn decide(id: i64, approve: bool, comment: &str) -> anyhow::Result<()> {
    let verb = if approve { "approve" } else { "deny" };
    let v = api(
        reqwest::Method::POST,
        &format!("/api/v1/requests/{id}/{verb}"),
        Some(serde_json::json!({ "comment": comment })),
    )
    .await?;
    match (approve, s(&v, "state")) {
        (true, "approved") => println!(
            "request {id} approved: grant {} gives {} `{}` on {} until {}",
            v["grant"]["id"],
            s(&v["grant"], "user"),
            s(&v["grant"], "role"),
            s(&v["grant"], "resource"),
            s(&v["grant"], "expires")
        ),
        (true, _) => println!(
            "approval recorded for request {id}: {} of {} approvals",
            v["approvals"], v["approvals_required"]
        ),
        (false, _) => println!("request {id} denied"),
    }
    Ok(())
}

/// `gatehouse grant`.
pub async fn grant(
    user: &str,
    resource: &str,
    role: &str,
    duration: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        "/api/v1/grants",
        Some(serde_json::json!({ "user": user, "resource": resource, "role": role, "duration": duration, "reason": reason })),
    )
    .await?;
    println!(
        "grant {} gives {user} `{role}` on {resource} until {}",
        v["grant"]["id"],
        s(&v["grant"], "expires")
    );
    Ok(())
}

/// `gatehouse revoke`.
pub async fn revoke(id: i64, reason: &str) -> anyhow::Result<()> {
    let v = api(
        reqwest::Method::POST,
        &format!("/api/v1/grants/{id}/revoke"),
        Some(serde_json::json!({ "reason": reason })),
    )
    .await?;
    println!(
        "grant {id} revoked; {} live session(s) cut",
        v["sessions_cut"]
    );
    Ok(())
}

/// `gatehouse grants [--all]`.
pub async fn grants(all: bool) -> anyhow::Result<()> {
    let path = if all {
        "/api/v1/grants?all=true"
    } else {
        "/api/v1/grants"
    };
    let v = api(reqwest::Method::GET, path, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<12} {:<16} {:<8} {:<12} {:<28} granted by",
        "id", "user", "resource", "role", "source", "expires"
    )?;
    for g in v["grants"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<6} {:<12} {:<16} {:<8} {:<12} {:<28} {}{}",
            g["id"],
            s(g, "user"),
            s(g, "resource"),
            s(g, "role"),
            s(g, "source"),
            s(g, "expires"),
            s(g, "granted_by"),
            if g["revoked_at"].is_string() {
                format!(" (revoked by {})", s(g, "revoked_by"))
            } else {
                String::new()
            }
        )?;
    }
    Ok(())
}

/// `gatehouse review [ID --comment]`: lists open review items, or signs one off.
pub async fn review(id: Option<i64>, comment: &str, all: bool) -> anyhow::Result<()> {
    if let Some(id) = id {
        api(
            reqwest::Method::POST,
            &format!("/api/v1/reviews/{id}/sign-off"),
            Some(serde_json::json!({ "comment": comment })),
        )
        .await?;
        println!("review item {id} signed off");
        return Ok(());
    }
    let path = if all {
        "/api/v1/reviews?all=true"
    } else {
        "/api/v1/reviews"
    };
    let v = api(reqwest::Method::GET, path, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<6} {:<8} {:<12} {:<28} reviewed",
        "id", "grant", "user", "opened"
    )?;
    for r in v["reviews"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<6} {:<8} {:<12} {:<28} {}",
            r["id"],
            r["grant_id"],
            s(r, "subject"),
            s(r, "opened"),
            if r["reviewed_at"].is_string() {
                format!(
                    "by {} at {}: {}",
                    s(r, "reviewer"),
                    s(r, "reviewed_at"),
                    s(r, "comment")
                )
            } else {
                "OPEN".into()
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(shell_quote("plain"), "'plain'");
    }

    #[test]
    fn relative_times() {
        let now = unix_now();
        assert!(when(now + 7200 + 60).starts_with("in 2h 1m"));
        assert!(when(now.saturating_sub(90)).starts_with("1m 30s ago"));
    }
}
