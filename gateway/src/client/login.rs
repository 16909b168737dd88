//! `gatehouse login`: the browser flow (a loopback redirect with its own `state` and PKCE
//! challenge, RFC 8252) and the device flow, each ending in a gateway credential that is saved;
//! or `--token-file`, an issued (service) token the gateway vouches for (`/api/v1/whoami`),
//! saved the same way without single sign-on.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::api::{api_error, http_client};
use super::credentials::{
    canonical, check_token_text, gateway_url, info, load, resolve, save, when, Saved, GATEWAY_ENV,
    MAX_TOKEN_TEXT,
};

/// How long `login` waits for the browser to come back.
const LOGIN_WAIT: Duration = Duration::from_secs(300);
/// Largest request the loopback listener reads.
const MAX_CALLBACK_REQUEST: usize = 16 * 1024;
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
fn random_b64<const N: usize>() -> String {
    B64URL.encode(gatehouse_core::random::random_bytes::<N>())
}
/// `gatehouse login`. With `token_file`, saves that issued token (`-`: read from stdin) once
/// the gateway says whom it names; else signs in through single sign-on (`device`: the device
/// flow).
pub async fn login(
    gateway: Option<String>,
    ca_file: Option<PathBuf>,
    device: bool,
    open_browser: bool,
    token_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    // Read first: a token file that cannot be one is refused before anything is asked.
    let token = token_file.as_deref().map(read_token_file).transpose()?;
    let previous = load().ok();
    let gateway = gateway
        .or_else(|| {
            std::env::var(GATEWAY_ENV)
                .ok()
                .filter(|g| !g.trim().is_empty())
        })
        .or_else(|| previous.as_ref().map(|p| p.gateway.clone()))
        .context("which gateway? give --gateway https://GATEWAY:8443")?;
    let gateway = gateway_url(&gateway).context("--gateway")?;
    let ca_file = ca_file
        .or_else(|| previous.as_ref().and_then(|p| p.ca_file.clone()))
        .map(canonical);
    let http = http_client(ca_file.as_deref())?;
    let (saved, how) = match token {
        Some(token) => {
            let saved = resolve(
                &http,
                &gateway,
                ca_file,
                token,
                "this token",
                "nothing was saved",
            )
            .await?;
            (saved, "Logged in")
        }
        None => {
            let info = info(&http, &gateway).await?;
            if info.get("sso").and_then(|v| v.as_bool()) != Some(true) {
                bail!("single sign-on is not configured on {gateway}; ask an administrator for a token and use `gatehouse login --token-file FILE`");
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
            (saved, "Signed in")
        }
    };
    let path = save(&saved)?;
    println!(
        "{how} to {gateway} as {} (groups: {}; MFA: {}). The credential expires {}.",
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

/// The token in `path` (`-`: stdin), trimmed: at most [`MAX_TOKEN_TEXT`] bytes are read, and
/// anything that cannot be a gateway token is refused.
fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let name = if path == Path::new("-") {
        "the token on stdin".to_string()
    } else {
        format!("--token-file {}", path.display())
    };
    let mut bytes = Vec::new();
    let limit = MAX_TOKEN_TEXT as u64 + 1;
    let read = if path == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    read.with_context(|| format!("reading {name}"))?;
    if bytes.len() > MAX_TOKEN_TEXT {
        bail!(
            "{name} is longer than {} KiB; a gateway token is much shorter (is this the right file?)",
            MAX_TOKEN_TEXT / 1024
        );
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        anyhow::anyhow!("{name} is not text; it should hold a token from `gatehouse token issue`")
    })?;
    let token = text.trim().to_string();
    check_token_text(&token, &name)?;
    Ok(token)
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
