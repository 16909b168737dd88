//! `gatehouse psql` and `gatehouse env`: the libpq environment for a resource from the current
//! credential (the saved login, or `GATEHOUSE_TOKEN` as the gateway sees it; [`pg_env`]),
//! handed to psql or printed for `eval`. The password is never that credential: each use asks
//! the gateway for a PostgreSQL password derived from it ([`postgres_credential`]), which the
//! API refuses, so a server on the path that captured it would hold no API bearer.

use std::io::Write as _;

use anyhow::{bail, Context};

use super::api::{api_error, http_client};
use super::credentials::{current, when, Saved};
use crate::authn::token::unix_now;

/// How long the password `gatehouse psql` gets lives: it connects at once, and psql's `\c`
/// re-uses it for a while.
const PSQL_PASSWORD_TTL_SECS: u64 = 15 * 60;

fn check_not_expired(saved: &Saved) -> anyhow::Result<()> {
    if saved.expires_at <= unix_now() {
        bail!(
            "the credential of {} expired {}; run `gatehouse login`",
            saved.user,
            when(saved.expires_at)
        );
    }
    Ok(())
}

/// A PostgreSQL password for `saved`'s holder (`POST /api/v1/credentials/postgres`), valid
/// `ttl_secs` (the gateway's default, 12 h, when `None`; never past `saved`'s expiry), with
/// its expiry.
pub async fn postgres_credential(
    saved: &Saved,
    ttl_secs: Option<u64>,
) -> anyhow::Result<(String, u64)> {
    check_not_expired(saved)?;
    let http = http_client(saved.ca_file.as_deref())?;
    let body = match ttl_secs {
        Some(t) => serde_json::json!({ "ttl_secs": t }),
        None => serde_json::json!({}),
    };
    let resp = http
        .post(format!("{}/api/v1/credentials/postgres", saved.gateway))
        .bearer_auth(&saved.credential)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {}", saved.gateway))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "the gateway refused the credential of {}; run `gatehouse login` (or, with GATEHOUSE_TOKEN, ask an admin for a token that is not limited to the PostgreSQL door)",
            saved.user
        );
    }
    if !resp.status().is_success() {
        bail!(
            "cannot get a PostgreSQL password: {}",
            api_error(resp).await
        );
    }
    let v: serde_json::Value = resp.json().await.context("the gateway's answer")?;
    match (v["credential"].as_str(), v["expires_at"].as_u64()) {
        (Some(c), Some(exp)) => Ok((c.to_string(), exp)),
        _ => bail!("the gateway's answer has no credential"),
    }
}

/// The libpq environment for `resource`, with `password` (from [`postgres_credential`]).
pub fn pg_env(
    saved: &Saved,
    resource: &str,
    password: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    check_not_expired(saved)?;
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
        ("PGPASSWORD".to_string(), password.to_string()),
    ];
    // The gateway is always verified: the credential is a password a spoofed server on the
    // path would capture. With no saved CA, its certificate must chain to the system's roots
    // (`sslrootcert=system`, libpq 16 and later).
    env.push(("PGSSLMODE".into(), "verify-full".into()));
    let roots = match &saved.ca_file {
        Some(ca) => ca.display().to_string(),
        None => "system".to_string(),
    };
    env.push(("PGSSLROOTCERT".into(), roots));
    Ok(env)
}

/// The major version `psql --version` prints (`psql (PostgreSQL) 15.18 (Debian ...)`).
fn psql_major(version: &str) -> Option<u32> {
    version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse().ok())
}

/// Refuses before running a psql whose libpq cannot verify the gateway against the system's
/// roots, rather than let it fail on a file called `system` or connect unverified.
fn check_psql_can_verify(saved: &Saved) -> anyhow::Result<()> {
    if saved.ca_file.is_some() {
        return Ok(());
    }
    let out = std::process::Command::new("psql")
        .arg("--version")
        .output()
        .context("cannot run psql (is it installed and on PATH?)")?;
    let version = String::from_utf8_lossy(&out.stdout);
    match psql_major(&version) {
        Some(major) if major >= 16 => Ok(()),
        _ => bail!(
            "{} cannot verify the gateway's certificate against the system's roots (libpq 16 or later can), and gatehouse does not connect unverified; sign in with `gatehouse login --ca-file FILE` (the gateway's CA) or use psql 16 or later",
            version.trim()
        ),
    }
}

/// `gatehouse psql RESOURCE [ARGS...]`: runs psql with the credential; never on the command line.
pub async fn psql(resource: &str, args: &[String]) -> anyhow::Result<std::process::ExitCode> {
    let saved = current().await?;
    check_psql_can_verify(&saved)?;
    let (password, _) = postgres_credential(&saved, Some(PSQL_PASSWORD_TTL_SECS)).await?;
    let env = pg_env(&saved, resource, &password)?;
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
pub async fn env(resource: &str) -> anyhow::Result<()> {
    let saved = current().await?;
    let (password, expires_at) = postgres_credential(&saved, None).await?;
    let env = pg_env(&saved, resource, &password)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# a PostgreSQL password for {resource}, valid until {}",
        when(expires_at)
    )?;
    for (k, v) in env {
        writeln!(out, "export {k}={}", shell_quote(&v))?;
    }
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn psql_versions_are_read() {
        assert_eq!(
            psql_major("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(psql_major("psql (PostgreSQL) 17.2"), Some(17));
        assert_eq!(psql_major("nonsense"), None);
    }

    #[test]
    fn the_gateway_is_always_verified() {
        let mut saved = Saved {
            gateway: "https://gw.example".into(),
            ca_file: None,
            credential: "t".into(),
            user: "alice".into(),
            groups: vec![],
            mfa: false,
            expires_at: u64::MAX,
            postgres: "gw.example:6432".into(),
        };
        let env = pg_env(&saved, "orders-db", "pw").unwrap();
        let get = |env: &[(String, String)], k: &str| {
            env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&env, "PGSSLMODE").as_deref(), Some("verify-full"));
        assert_eq!(get(&env, "PGSSLROOTCERT").as_deref(), Some("system"));
        saved.ca_file = Some("/home/alice/.config/gatehouse/ca.pem".into());
        let env = pg_env(&saved, "orders-db", "pw").unwrap();
        assert_eq!(
            get(&env, "PGSSLROOTCERT").as_deref(),
            Some("/home/alice/.config/gatehouse/ca.pem")
        );
    }

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(shell_quote("plain"), "'plain'");
    }
}
