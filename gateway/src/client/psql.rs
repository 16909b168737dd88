//! `gatehouse psql` and `gatehouse env`: the libpq environment for a resource from the current
//! credential (the saved login, or `GATEHOUSE_TOKEN` as the gateway sees it; [`pg_env`]),
//! handed to psql or printed for `eval`.

use std::io::Write as _;

use anyhow::{bail, Context};

use super::credentials::{current, when, Saved};
use crate::authn::token::unix_now;

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
    let env = pg_env(&saved, resource)?;
    check_psql_can_verify(&saved)?;
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
    let mut out = std::io::stdout().lock();
    for (k, v) in pg_env(&saved, resource)? {
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
        let env = pg_env(&saved, "orders-db").unwrap();
        let get = |env: &[(String, String)], k: &str| {
            env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&env, "PGSSLMODE").as_deref(), Some("verify-full"));
        assert_eq!(get(&env, "PGSSLROOTCERT").as_deref(), Some("system"));
        saved.ca_file = Some("/home/alice/.config/gatehouse/ca.pem".into());
        let env = pg_env(&saved, "orders-db").unwrap();
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
