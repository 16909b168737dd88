//! The saved login: `credentials.json` (0600) under [`home`], read by [`load`] and written by
//! `save`; and [`when`], how an expiry reads.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::authn::token::unix_now;

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
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = unix_now();
        assert!(when(now + 7200 + 60).starts_with("in 2h 1m"));
        assert!(when(now.saturating_sub(90)).starts_with("1m 30s ago"));
    }
}
