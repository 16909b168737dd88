//! `gatehouse token`: issue, list and revoke service-account tokens.
//!
//! An issued token is a gateway token signed with the current key that names a login row of
//! flow `token` in the store (`sid`; the row's id is also the token's `jti`, the id `token list`
//! shows and `token revoke` takes). Every front door refuses it once that row is revoked, and a
//! running gateway cuts its live sessions within a second, as it does after a logout. It has no
//! `auth` claim: policies see `auth_method == "gateway_token"` (a service account, never a
//! person). Issuing and revoking are `credential.issued` / `credential.revoked` audit events
//! naming the operator; a token is printed only once both the store and the audit log hold it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::operator::Operator;
use super::{load_config, record_from_cli, ConfigArg};
use crate::audit::{EventKind, NewEvent};
use crate::authn::token::Door;
use crate::config::{try_parse_duration, Config};
use crate::store::logins::{IssuedToken, Login, TOKEN_FLOW};
use crate::store::Store;

/// `token issue --door`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum IssueDoor {
    Any,
    Postgres,
}

impl IssueDoor {
    fn door(self) -> Door {
        match self {
            IssueDoor::Any => Door::Api,
            IssueDoor::Postgres => Door::Postgres,
        }
    }
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Sign a service-account token; prints it on stdout (its id, for `token revoke`, on
    /// stderr). Use it as the password: PGPASSWORD=$(gatehouse token issue ...). Recorded in
    /// the store and as a `credential.issued` audit event naming you; nothing is printed
    /// unless both are written.
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// The user the token names (the PostgreSQL `user` must match it).
        #[arg(long)]
        user: String,
        /// Comma-separated groups, as policies see them.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m, 1h30m, 8h (at most tokens.max_ttl). Verifiers allow 30 s of
        /// clock skew: a token is still accepted up to 30 s after it expires.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Where the token works: `any` (the API and every front door) or `postgres` (only as
        /// a PostgreSQL password: the API refuses it, so a server that captures the password
        /// gains no API bearer). Give a token used only by psql or a driver `postgres`.
        #[arg(long, value_enum, default_value_t = IssueDoor::Any)]
        door: IssueDoor,
        /// Who is doing this, recorded in the audit log next to the operating-system user and
        /// host that ran the command (default: the operating-system user name).
        #[arg(long)]
        by: Option<String>,
    },
    /// Issued tokens: id, user, groups, issued, expires, issued by, status. Only usable ones
    /// (not revoked, not expired) unless `--all`.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Also revoked and expired tokens.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an issued token by its id (from `token issue` or `token list`): every front door
    /// refuses it from now on, and a running gateway cuts its live sessions within a second.
    /// Recorded as a `credential.revoked` audit event naming you. An unknown or already revoked
    /// id is an error.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// The token's id.
        id: String,
        /// Why (recorded in the audit log and told to the clients whose sessions are cut).
        #[arg(long)]
        reason: String,
        /// Who is doing this (default: the operating-system user name); see `token issue`.
        #[arg(long)]
        by: Option<String>,
    },
}

pub(super) async fn run(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Issue {
            config,
            user,
            groups,
            ttl,
            door,
            by,
        } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            issue(&config, &user, &groups, &ttl, door, by.as_deref()).await?;
        }
        TokenCommand::List { config, all } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            list(&config, all).await?;
        }
        TokenCommand::Revoke {
            config,
            id,
            reason,
            by,
        } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            revoke(&config, &id, &reason, by.as_deref()).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn issue(
    config: &Config,
    user: &str,
    groups: &[String],
    ttl: &str,
    door: IssueDoor,
    by: Option<&str>,
) -> anyhow::Result<()> {
    if user.is_empty() || user.len() > 128 || user.contains(char::is_control) {
        bail!("--user must be 1-128 printable characters");
    }
    let groups: Vec<String> = groups.iter().filter(|g| !g.is_empty()).cloned().collect();
    if groups
        .iter()
        .any(|g| g.len() > 128 || g.contains(char::is_control))
    {
        bail!("--groups: each group must be at most 128 printable characters");
    }
    let ttl = try_parse_duration(ttl).map_err(|e| anyhow::anyhow!("--ttl `{ttl}` {e}"))?;
    let operator = Operator::current(by)?;
    let authority = crate::server::token_authority(config)?;
    // A first `token issue` may come before the gateway's first start (the quickstart does
    // that): the audit key is created as `gatehouse serve` would create it.
    crate::keys::SigningKey::load_or_create(&crate::server::audit_key_path(config))
        .context("loading the audit signing key")?;
    let store = Store::open(&config.store_url)
        .await
        .context("opening the store (nothing was issued)")?;

    let id = crate::audit::event::hex(&gatehouse_core::random::random_bytes::<16>());
    let (token, claims) = authority.issue_service(user, &groups, ttl, &id, door.door())?;
    let created = crate::audit::event::now_ts();
    let expires = unix_ts(claims.exp);
    let row = IssuedToken {
        login: Login {
            id: id.clone(),
            user: user.to_string(),
            flow: TOKEN_FLOW.to_string(),
            created,
            expires: expires.clone(),
            amr: Vec::new(),
            mfa: false,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
        },
        groups: groups.clone(),
        issued_by: operator.detail(),
    };
    store
        .insert_issued_token(&row)
        .await
        .context("recording the token in the store (nothing was issued)")?;

    let mut e = NewEvent::new(EventKind::CredentialIssued);
    e.actor = operator.claimed.clone();
    e.resource = user.to_string();
    e.action = "issue".into();
    e.detail = operator.detail_with(serde_json::json!({
        "user": user,
        "groups": groups,
        "expires": expires,
        "expires_at": claims.exp,
        "ttl_secs": ttl.as_secs(),
        "login_id": id,
        "credential_id": claims.jti,
        "key_id": authority.key_id(),
        "flow": TOKEN_FLOW,
        "door": format!("{door:?}").to_lowercase(),
        "audience": claims.aud,
    }));
    if let Err(err) = record_from_cli(config, &store, e).await {
        // Nobody holds the token (it was never printed), but its row would list as issued:
        // revoke it so that the store agrees with the log.
        let _ = store
            .revoke_login(
                &id,
                &operator.claimed,
                "not issued: the audit log could not record it",
                &crate::audit::event::now_ts(),
            )
            .await;
        return Err(
            err.context("recording credential.issued in the audit log (nothing was issued)")
        );
    }

    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    out.flush()?;
    let _ = writeln!(
        std::io::stderr().lock(),
        "issued token {id} for {user} (expires {expires}); revoke it with `gatehouse token revoke {id} --reason ...`"
    );
    Ok(())
}

async fn list(config: &Config, all: bool) -> anyhow::Result<()> {
    let store = Store::open(&config.store_url).await?;
    let now = crate::audit::event::now_ts();
    let tokens = store.issued_tokens(all, &now).await?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<32} {:<20} {:<20} {:<27} {:<27} {:<28} status",
        "id", "user", "groups", "issued", "expires", "issued by"
    )?;
    for t in tokens {
        let l = &t.login;
        let status = match &l.revoked_at {
            Some(at) => format!(
                "revoked at {at} by {}{}",
                l.revoked_by.as_deref().unwrap_or("?"),
                l.revoked_reason
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            None if l.expires <= now => "expired".to_string(),
            None => "active".to_string(),
        };
        let groups = if t.groups.is_empty() {
            "-".to_string()
        } else {
            t.groups.join(",")
        };
        writeln!(
            out,
            "{:<32} {:<20} {:<20} {:<27} {:<27} {:<28} {}",
            l.id,
            l.user,
            groups,
            l.created,
            l.expires,
            issued_by(&t.issued_by),
            status
        )?;
    }
    Ok(())
}

/// `by (os_user@host)` from the recorded issuer.
fn issued_by(v: &serde_json::Value) -> String {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_string();
    if v.is_null() {
        return "?".into();
    }
    Operator {
        claimed: s("by"),
        os_user: s("os_user"),
        uid: v
            .get("uid")
            .and_then(serde_json::Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(u32::MAX),
        host: s("host"),
    }
    .display()
}

async fn revoke(config: &Config, id: &str, reason: &str, by: Option<&str>) -> anyhow::Result<()> {
    if reason.trim().is_empty() {
        bail!("--reason must say why (it is recorded and told to the clients that are cut)");
    }
    if reason.len() > 1024 || reason.contains(char::is_control) {
        bail!("--reason is limited to 1024 bytes of printable characters");
    }
    let operator = Operator::current(by)?;
    let store = Store::open(&config.store_url).await?;
    let Some(t) = store.issued_token(id).await? else {
        bail!("no issued token `{id}` (see `gatehouse token list --all`)");
    };
    if let Some(at) = &t.login.revoked_at {
        bail!(
            "token `{id}` of {} was already revoked at {at} by {}",
            t.login.user,
            t.login.revoked_by.as_deref().unwrap_or("?")
        );
    }
    let ts = crate::audit::event::now_ts();
    if !store
        .revoke_login(id, &operator.claimed, reason, &ts)
        .await?
    {
        // Someone else revoked it between the read and the update.
        bail!("token `{id}` was already revoked (see `gatehouse token list --all`)");
    }
    let mut e = NewEvent::new(EventKind::CredentialRevoked);
    e.actor = operator.claimed.clone();
    e.resource = t.login.user.clone();
    e.action = "revoke".into();
    e.reason = reason.to_string();
    e.detail = operator.detail_with(serde_json::json!({
        "user": t.login.user,
        "login_id": id,
        "credential_id": id,
        "flow": TOKEN_FLOW,
        "expires": t.login.expires,
    }));
    record_from_cli(config, &store, e).await.context(
        "the token IS revoked in the store, but the audit log could not record credential.revoked",
    )?;
    let expired = if t.login.expires <= ts {
        " (it had already expired)"
    } else {
        ""
    };
    writeln!(
        std::io::stdout().lock(),
        "token {id} of {} revoked{expired}: every front door refuses it and its live sessions are cut within a second",
        t.login.user
    )?;
    Ok(())
}

/// A unix time as a log timestamp.
fn unix_ts(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map(crate::audit::event::format_ts)
        .unwrap_or_default()
}
