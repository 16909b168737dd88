//! `gatehouse users`: list, show, disable (a leaver: refused at every front door, live sessions
//! cut by the gateway within a second) and enable; written to the store and the audit log,
//! with the operator (`--by` and the operating-system user and host, see [`Operator`]).
//! Asking for a change that would change nothing (an unknown user, one already disabled or not
//! disabled) is an error that says so, never a success.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;

use super::operator::Operator;
use super::{record_from_cli, ConfigArg};
use crate::config::{Config, ProcessEnv, Secrets};
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum UsersCommand {
    /// Every user: first seen, last login, groups at last login, disabled or not.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// One user.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// Disable a user: refused at every front door, live sessions cut. Audited, naming you.
    /// A user the gateway has never seen (no login, no issued token) is an error unless
    /// `--unseen`; an already disabled user is an error that says since when.
    Disable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Why (recorded in the audit log), e.g. "left the company 2026-11-30".
        #[arg(long, default_value = "")]
        reason: String,
        /// Who is doing this, recorded in the audit log next to the operating-system user and
        /// host that ran the command (default: the operating-system user name).
        #[arg(long)]
        by: Option<String>,
        /// Disable a user the gateway has not seen yet (a leaver who never logged in), so that
        /// they are refused from their first attempt. Without it an unknown name is an error,
        /// which catches typos.
        #[arg(long)]
        unseen: bool,
    },
    /// Enable a disabled user again. Audited, naming you. A user who is not disabled is an
    /// error.
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Who is doing this (default: the operating-system user name); see `users disable`.
        #[arg(long)]
        by: Option<String>,
    },
}

pub(super) async fn run(cmd: UsersCommand) -> anyhow::Result<()> {
    let path = match &cmd {
        UsersCommand::List { config } | UsersCommand::Show { config, .. } => &config.config,
        UsersCommand::Disable { config, .. } | UsersCommand::Enable { config, .. } => {
            &config.config
        }
    };
    let config = Config::load(path, &ProcessEnv, Secrets::Skip)?;
    let store = Store::open(&config.store_url).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        UsersCommand::List { .. } => {
            writeln!(
                out,
                "{:<24} {:<28} {:<28} {:<10} groups",
                "user", "first seen", "last login", "status"
            )?;
            for u in store.users().await? {
                let status = if u.disabled_at.is_some() {
                    "disabled"
                } else {
                    "active"
                };
                writeln!(
                    out,
                    "{:<24} {:<28} {:<28} {:<10} {}",
                    u.name,
                    u.first_seen,
                    u.last_login,
                    status,
                    u.last_groups.join(",")
                )?;
            }
        }
        UsersCommand::Show { name, .. } => {
            let u = store
                .user(&name)
                .await?
                .with_context(|| format!("no user `{name}` has been seen"))?;
            writeln!(out, "user        {}", u.name)?;
            writeln!(out, "first seen  {}", u.first_seen)?;
            writeln!(out, "last login  {}", u.last_login)?;
            writeln!(out, "groups      {}", u.last_groups.join(", "))?;
            match &u.disabled_at {
                Some(at) => writeln!(
                    out,
                    "status      disabled at {at} by {} ({})",
                    u.disabled_by.as_deref().unwrap_or("?"),
                    u.disabled_reason.as_deref().unwrap_or("")
                )?,
                None => writeln!(out, "status      active")?,
            }
        }
        UsersCommand::Disable {
            name,
            reason,
            by,
            unseen,
            ..
        } => {
            if reason.len() > 1024 {
                bail!("--reason is limited to 1024 bytes");
            }
            let operator = Operator::current(by.as_deref())?;
            match store.user(&name).await? {
                Some(u) if u.disabled_at.is_some() => bail!(
                    "user {name} is already disabled (since {} by {}); nothing changed",
                    u.disabled_at.as_deref().unwrap_or("?"),
                    u.disabled_by.as_deref().unwrap_or("?")
                ),
                Some(_) => {}
                None if unseen || store.user_has_logins(&name).await? => {}
                None => bail!(
                    "no user `{name}` has been seen (no login, no issued token; see `gatehouse users list`); nothing was disabled. To refuse a user before their first login, add --unseen"
                ),
            }
            let ts = crate::audit::event::now_ts();
            if !store
                .disable_user(&name, &operator.claimed, &reason, &ts)
                .await?
            {
                bail!("user {name} is already disabled; nothing changed");
            }
            let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::UserDisabled);
            e.actor = operator.claimed.clone();
            e.resource = name.clone();
            e.action = "disable".into();
            e.reason = reason;
            e.detail = operator.detail();
            record_from_cli(&config, &store, e).await?;
            writeln!(out, "user {name} disabled: new connections are refused and live sessions are cut within a second")?;
        }
        UsersCommand::Enable { name, by, .. } => {
            let operator = Operator::current(by.as_deref())?;
            match store.user(&name).await? {
                None => bail!(
                    "no user `{name}` has been seen (see `gatehouse users list`); nothing was enabled"
                ),
                Some(u) if u.disabled_at.is_none() => {
                    bail!("user {name} is not disabled; nothing changed")
                }
                Some(_) => {}
            }
            if !store.enable_user(&name).await? {
                bail!("user {name} is not disabled; nothing changed");
            }
            let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::UserEnabled);
            e.actor = operator.claimed.clone();
            e.resource = name.clone();
            e.action = "enable".into();
            e.detail = operator.detail();
            record_from_cli(&config, &store, e).await?;
            writeln!(out, "user {name} enabled")?;
        }
    }
    Ok(())
}
