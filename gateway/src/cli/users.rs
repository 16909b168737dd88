//! `gatehouse users`: list, show, disable (a leaver: refused at every front door, live sessions
//! cut by the gateway within a second) and enable; written to the store and the audit log.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Subcommand;

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
    /// Disable a user: refused at every front door, live sessions cut. Audited.
    Disable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Why (recorded in the audit log), e.g. "left the company 2026-11-30".
        #[arg(long, default_value = "")]
        reason: String,
        /// Who is doing this (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// Enable a disabled user again. Audited.
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
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
            name, reason, by, ..
        } => {
            if reason.len() > 1024 {
                bail!("--reason is limited to 1024 bytes");
            }
            let ts = crate::audit::event::now_ts();
            let changed = store.disable_user(&name, &by, &reason, &ts).await?;
            if changed {
                let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::UserDisabled);
                e.actor = by;
                e.resource = name.clone();
                e.action = "disable".into();
                e.reason = reason;
                record_from_cli(&config, &store, e).await?;
                writeln!(out, "user {name} disabled: new connections are refused and live sessions are cut within a second")?;
            } else {
                writeln!(out, "user {name} was already disabled")?;
            }
        }
        UsersCommand::Enable { name, by, .. } => {
            if store.enable_user(&name).await? {
                let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::UserEnabled);
                e.actor = by;
                e.resource = name.clone();
                e.action = "enable".into();
                record_from_cli(&config, &store, e).await?;
                writeln!(out, "user {name} enabled")?;
            } else {
                writeln!(out, "user {name} was not disabled")?;
            }
        }
    }
    Ok(())
}
