//! `gatehouse sessions`: live (and with `--all` ended) sessions, and `sessions kill`, a kill
//! request the gateway holding the session acts on within a second.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};

use super::operator::Operator;
use super::{record_from_cli, ConfigArg};
use crate::config::{Config, ProcessEnv, Secrets};
use crate::store::Store;

#[derive(Args)]
pub(super) struct SessionsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also list ended sessions (newest first).
    #[arg(long)]
    all: bool,
    #[command(subcommand)]
    action: Option<SessionsAction>,
}

#[derive(Subcommand)]
enum SessionsAction {
    /// End a live session: the client gets `57P01` with the reason and your `--by` name.
    /// Audited, naming you. An unknown or ended session, or one whose kill is already
    /// requested, is an error.
    Kill {
        /// The session id (from `gatehouse sessions`).
        id: String,
        /// Why (recorded in the audit log and told to the client).
        #[arg(long, default_value = "")]
        reason: String,
        /// Who is doing this, recorded in the audit log next to the operating-system user and
        /// host that ran the command, and told to the client (default: the operating-system
        /// user name).
        #[arg(long)]
        by: Option<String>,
    },
}

pub(super) async fn run(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config, &ProcessEnv, Secrets::Skip)?;
    let store = Store::open(&config.store_url).await?;
    let mut out = std::io::stdout().lock();
    match args.action {
        None => {
            writeln!(
                out,
                "{:<32} {:<16} {:<16} {:<6} {:<6} {:<28} {:<22} status",
                "session", "user", "resource", "role", "grant", "started", "client"
            )?;
            for s in store.sessions(args.all, 1000).await? {
                let status = match (&s.ended, &s.kill_requested_by) {
                    (Some(_), _) => format!("ended: {}", s.end_reason.as_deref().unwrap_or("")),
                    (None, Some(by)) => format!("kill requested by {by}"),
                    (None, None) => "live".to_string(),
                };
                writeln!(
                    out,
                    "{:<32} {:<16} {:<16} {:<6} {:<6} {:<28} {:<22} {status}",
                    s.id,
                    s.user,
                    s.resource,
                    s.role.as_deref().unwrap_or("read"),
                    s.grant_id
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.started,
                    s.client_addr
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(SessionsAction::Kill { id, reason, by }) => {
            if reason.len() > 1024 {
                bail!("--reason is limited to 1024 bytes");
            }
            let operator = Operator::current(by.as_deref())?;
            // Live sessions only: an ended or unknown id is refused by `request_kill` below.
            let live = store.sessions(false, u32::MAX).await?;
            if let Some(by) = live
                .iter()
                .find(|s| s.id == id)
                .and_then(|s| s.kill_requested_by.as_deref())
            {
                bail!("a kill of session `{id}` was already requested by {by}; the gateway holding it ends it within a second");
            }
            let ts = crate::audit::event::now_ts();
            let Some((user, resource)) = store
                .request_kill(&id, &operator.claimed, &reason, &ts)
                .await?
            else {
                bail!("no live session `{id}` (it ended, or never existed; see `gatehouse sessions --all`)");
            };
            let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::SessionKillRequested);
            e.actor = operator.claimed.clone();
            e.resource = resource;
            e.action = "kill".into();
            e.session_id = id.clone();
            e.reason = reason;
            e.detail = operator.detail_with(serde_json::json!({ "user": user }));
            record_from_cli(&config, &store, e).await?;
            writeln!(out, "session {id} of {user} will end within a second")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
