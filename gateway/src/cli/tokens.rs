//! `gatehouse token issue`: a gateway token signed with the current key, for service accounts
//! (and for people where single sign-on is not configured).

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::ConfigArg;
use crate::config::{parse_duration, Config};

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Sign a token; prints it on stdout. Use it as the password: PGPASSWORD=$(gatehouse token issue ...)
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// The user the token names (the PostgreSQL `user` must match it).
        #[arg(long)]
        user: String,
        /// Comma-separated groups, as policies see them.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 8h (at most tokens.max_ttl).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

pub(super) fn issue(
    config: &Config,
    user: &str,
    groups: &[String],
    ttl: &str,
) -> anyhow::Result<()> {
    if user.is_empty() || user.len() > 128 || user.contains(char::is_control) {
        bail!("--user must be 1-128 printable characters");
    }
    let ttl = parse_duration(ttl)
        .with_context(|| format!("--ttl `{ttl}` is not a duration like 15m, 1h, 8h"))?;
    let authority = crate::server::token_authority(config)?;
    let groups: Vec<String> = groups.iter().filter(|g| !g.is_empty()).cloned().collect();
    let (token, _) = authority.issue(user, &groups, ttl)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    Ok(())
}
