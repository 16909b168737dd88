//! `gatehouse psql` and `gatehouse env`: the libpq environment for a resource from the saved
//! login ([`pg_env`]), handed to psql or printed for `eval`.

use std::io::Write as _;

use anyhow::{bail, Context};

use super::credentials::{load, when, Saved};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
        assert_eq!(shell_quote("plain"), "'plain'");
    }
}
