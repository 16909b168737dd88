//! The credential a client command uses. The saved login: `credentials.json` (0600) under
//! [`home`], read by [`load`] and written by `save`. Or an issued token in `GATEHOUSE_TOKEN`
//! ([`TOKEN_ENV`]), which every client command then uses instead (`credential`), for the
//! gateway of `GATEHOUSE_GATEWAY` (else the saved login's), trusting `GATEHOUSE_CA_FILE` (else
//! the saved CA); what the saved file would hold about it (the PostgreSQL door, user, groups,
//! expiry) is asked of the gateway when a command needs it ([`current`], `resolve`: the
//! same two calls `gatehouse login --token-file` makes before it saves a token). And [`when`],
//! how an expiry reads.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::api::{api_error, http_client};
use crate::authn::token::{unix_now, LEEWAY_SECS};

/// The environment variable holding an issued token for every client command.
pub const TOKEN_ENV: &str = "GATEHOUSE_TOKEN";
/// The environment variable naming the gateway (`https://GATEWAY:8443`).
pub const GATEWAY_ENV: &str = "GATEHOUSE_GATEWAY";
/// The environment variable naming a PEM CA file to trust for the gateway.
pub const CA_FILE_ENV: &str = "GATEHOUSE_CA_FILE";
/// The longest token text read from `--token-file` or [`TOKEN_ENV`].
pub(super) const MAX_TOKEN_TEXT: usize = 16 * 1024;

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
pub(super) fn credentials_path() -> anyhow::Result<PathBuf> {
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
pub(super) fn save(saved: &Saved) -> anyhow::Result<PathBuf> {
    let path = credentials_path()?;
    let text = serde_json::to_vec_pretty(saved)?;
    crate::keys::write_private(&path, &text)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The credential a client command uses.
pub(super) enum Credential {
    /// The saved login (`credentials.json`).
    Saved(Saved),
    /// An issued token from [`TOKEN_ENV`].
    Env {
        gateway: String,
        ca_file: Option<PathBuf>,
        token: String,
    },
}

impl Credential {
    pub(super) fn gateway(&self) -> &str {
        match self {
            Credential::Saved(s) => &s.gateway,
            Credential::Env { gateway, .. } => gateway,
        }
    }

    pub(super) fn ca_file(&self) -> Option<&Path> {
        match self {
            Credential::Saved(s) => s.ca_file.as_deref(),
            Credential::Env { ca_file, .. } => ca_file.as_deref(),
        }
    }

    pub(super) fn token(&self) -> &str {
        match self {
            Credential::Saved(s) => &s.credential,
            Credential::Env { token, .. } => token,
        }
    }

    /// How a refusal names it: `GATEHOUSE_TOKEN`, or `the saved credential of alice`.
    pub(super) fn describe(&self) -> String {
        match self {
            Credential::Saved(s) => format!("the saved credential of {}", s.user),
            Credential::Env { .. } => TOKEN_ENV.to_string(),
        }
    }

    /// What to do about a refusal.
    pub(super) fn remedy(&self) -> &'static str {
        match self {
            Credential::Saved(_) => "run `gatehouse login`",
            Credential::Env { .. } => "ask an admin for a new token (`gatehouse token issue`)",
        }
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// [`TOKEN_ENV`], trimmed, when it is set and not empty.
pub fn env_token() -> Option<String> {
    env_nonempty(TOKEN_ENV)
}

/// The credential every client command but `login` and `connect` uses: [`TOKEN_ENV`] when set,
/// else the saved login ([`load`]).
pub(super) fn credential() -> anyhow::Result<Credential> {
    let Some(token) = env_token() else {
        return Ok(Credential::Saved(load()?));
    };
    check_token_text(&token, TOKEN_ENV)?;
    // The saved login, if any, only supplies a gateway and a CA that the environment does not.
    let saved = load().ok();
    let gateway = env_nonempty(GATEWAY_ENV)
        .or_else(|| saved.as_ref().map(|s| s.gateway.clone()))
        .with_context(|| {
            format!(
                "{TOKEN_ENV} is set, but for which gateway? set {GATEWAY_ENV}=https://GATEWAY:8443"
            )
        })?;
    let gateway = gateway_url(&gateway)?;
    let ca_file = match std::env::var_os(CA_FILE_ENV).filter(|c| !c.is_empty()) {
        Some(ca) => Some(canonical(PathBuf::from(ca))),
        None => saved.and_then(|s| s.ca_file),
    };
    Ok(Credential::Env {
        gateway,
        ca_file,
        token,
    })
}

/// A CA file's absolute path where it can be had (psql is handed it and may run elsewhere).
pub(super) fn canonical(path: PathBuf) -> PathBuf {
    std::fs::canonicalize(&path).unwrap_or(path)
}

/// A gateway URL as it is kept: `https://...`, no trailing `/`.
pub(super) fn gateway_url(gateway: &str) -> anyhow::Result<String> {
    let gateway = gateway.trim().trim_end_matches('/').to_string();
    if !gateway.starts_with("https://") {
        bail!("the gateway must be an https:// URL, got `{gateway}`");
    }
    Ok(gateway)
}

/// Refuses token text that cannot be a gateway token: empty, longer than [`MAX_TOKEN_TEXT`],
/// or with anything but visible ASCII (a JWT is base64url and dots). `what` names its source.
pub(super) fn check_token_text(token: &str, what: &str) -> anyhow::Result<()> {
    if token.is_empty() {
        bail!("{what} is empty; it should hold a token from `gatehouse token issue`");
    }
    if token.len() > MAX_TOKEN_TEXT {
        bail!(
            "{what} is longer than {} KiB; a gateway token is much shorter (is this the right file?)",
            MAX_TOKEN_TEXT / 1024
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!("{what} holds characters a gateway token never has (spaces, line breaks or non-ASCII); it should be exactly what `gatehouse token issue` printed");
    }
    Ok(())
}

/// The saved-login view of the current credential: the saved login as it is, or
/// [`TOKEN_ENV`] as the gateway sees it ([`resolve`]).
pub async fn current() -> anyhow::Result<Saved> {
    match credential()? {
        Credential::Saved(s) => Ok(s),
        Credential::Env {
            gateway,
            ca_file,
            token,
        } => {
            let http = http_client(ca_file.as_deref())?;
            let remedy = "ask an admin for a new token (`gatehouse token issue`)";
            resolve(&http, &gateway, ca_file, token, TOKEN_ENV, remedy).await
        }
    }
}

/// What a login would save for `token`, asked of the gateway: its PostgreSQL door
/// (`/api/v1/info`), then who the token names, their groups and MFA, and its expiry
/// (`/api/v1/whoami`). A refusal says the gateway refused `what`, then `remedy`.
pub(super) async fn resolve(
    http: &reqwest::Client,
    gateway: &str,
    ca_file: Option<PathBuf>,
    token: String,
    what: &str,
    remedy: &str,
) -> anyhow::Result<Saved> {
    let postgres = postgres_door(&info(http, gateway).await?)?;
    let me = whoami(http, gateway, &token, what, remedy).await?;
    let user = me
        .get("user")
        .and_then(|v| v.as_str())
        .filter(|u| !u.is_empty())
        .context("the gateway's /api/v1/whoami names no user")?
        .to_string();
    Ok(Saved {
        gateway: gateway.to_string(),
        ca_file,
        credential: token,
        user,
        groups: strings(&me, "groups"),
        mfa: me.get("mfa").and_then(|v| v.as_bool()) == Some(true),
        expires_at: me.get("expires_at").and_then(|v| v.as_u64()).unwrap_or(0),
        postgres,
    })
}

/// The strings of the array `key` of `v`.
pub(super) fn strings(v: &serde_json::Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(|g| g.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /api/v1/info` (public).
pub(super) async fn info(
    http: &reqwest::Client,
    gateway: &str,
) -> anyhow::Result<serde_json::Value> {
    http.get(format!("{gateway}/api/v1/info"))
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?
        .json()
        .await
        .context("the gateway's /api/v1/info is not JSON; is this a Gatehouse gateway?")
}

/// The PostgreSQL front door `/api/v1/info` names.
pub(super) fn postgres_door(info: &serde_json::Value) -> anyhow::Result<String> {
    info.get("postgres")
        .and_then(|v| v.as_str())
        .filter(|p| !p.is_empty())
        .map(String::from)
        .context("the gateway's /api/v1/info names no PostgreSQL front door (`postgres`)")
}

/// `GET /api/v1/whoami` with `token` as the bearer credential. A 401 is an error saying that
/// the gateway refused `what` (and why, when the token's own unverified expiry can tell),
/// then `remedy`.
pub(super) async fn whoami(
    http: &reqwest::Client,
    gateway: &str,
    token: &str,
    what: &str,
    remedy: &str,
) -> anyhow::Result<serde_json::Value> {
    let resp = http
        .get(format!("{gateway}/api/v1/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!("{}; {remedy}", refused(gateway, token, what));
    }
    if !resp.status().is_success() {
        bail!(
            "the gateway at {gateway} did not say who {what} names: {}",
            api_error(resp).await
        );
    }
    resp.json()
        .await
        .context("the gateway's /api/v1/whoami is not JSON; is this a Gatehouse gateway?")
}

/// `the gateway refused WHAT: ...`, with the likeliest reason the client can tell.
pub(super) fn refused(gateway: &str, token: &str, what: &str) -> String {
    match unverified_exp(token) {
        Some(exp) if exp.saturating_add(LEEWAY_SECS) < unix_now() => {
            format!("the gateway at {gateway} refused {what}: it expired {}", when(exp))
        }
        _ => format!(
            "the gateway at {gateway} refused {what}: it is revoked, its user is disabled, or it is not a token of this gateway"
        ),
    }
}

/// The `exp` of a JWT, read without verifying it: only to explain a refusal the gateway made.
fn unverified_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = B64URL.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_u64()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn token_text_is_checked() {
        assert!(check_token_text("aaa.bbb.ccc", "t").is_ok());
        assert!(check_token_text("", "t").is_err());
        assert!(check_token_text("aaa.bbb ccc", "t").is_err());
        assert!(check_token_text("aaa.bbb\nccc", "t").is_err());
        assert!(check_token_text("aaa.bbb.ccé", "t").is_err());
        assert!(check_token_text(&"a".repeat(MAX_TOKEN_TEXT), "t").is_ok());
        let long = check_token_text(&"a".repeat(MAX_TOKEN_TEXT + 1), "t").unwrap_err();
        assert!(long.to_string().contains("16 KiB"), "{long}");
    }

    #[test]
    fn gateway_urls_are_https_without_a_trailing_slash() {
        assert_eq!(
            gateway_url("https://gw.example:8443/").unwrap(),
            "https://gw.example:8443"
        );
        assert!(gateway_url("http://gw.example:8443").is_err());
    }

    #[test]
    fn a_refusal_says_when_the_token_expired() {
        let token = |exp: u64| {
            format!(
                "e30.{}.sig",
                B64URL.encode(format!(r#"{{"sub":"ci","exp":{exp}}}"#))
            )
        };
        let expired = refused("https://gw", &token(unix_now() - 3600), "this token");
        assert!(
            expired.contains("refused this token: it expired 1h"),
            "{expired}"
        );
        let valid = refused("https://gw", &token(unix_now() + 3600), "this token");
        assert!(valid.contains("revoked"), "{valid}");
        assert!(refused("https://gw", "garbage", "x").contains("not a token of this gateway"));
    }

    #[test]
    fn relative_times() {
        let now = unix_now();
        assert!(when(now + 7200 + 60).starts_with("in 2h 1m"));
        assert!(when(now.saturating_sub(90)).starts_with("1m 30s ago"));
    }
}
