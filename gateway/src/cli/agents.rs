//! `gatehouse agents`: enroll (issue a one-time join token), list, revoke. Like the other admin
//! commands these write the store and the audit log directly; a running gateway acts on the
//! store (a revoked agent's link is cut within a second).

use std::io::Write;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use super::operator::Operator;
use super::{record_from_cli, ConfigArg};
use crate::agents::enroll::new_join_token;
use crate::audit::{EventKind, NewEvent};
use crate::config::{valid_name, Config, ProcessEnv, Secrets};
use crate::store::Store;

#[derive(Args)]
pub struct AgentsArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    action: Option<AgentsCommand>,
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AgentsCommand {
    /// Issue a one-time join token for agent NAME (new, or re-enrolling: the agent's current
    /// certificate stops working once the new one is issued). Audited.
    Enroll {
        name: String,
        /// How long the token works (default: `[agents] join_token_ttl`, 15m).
        #[arg(long)]
        ttl: Option<String>,
        /// Who is doing this, recorded in the audit log next to the operating-system user and
        /// host that ran the command (default: the operating-system user name).
        #[arg(long)]
        by: Option<String>,
    },
    /// Every agent: status, resources, version, last heartbeat.
    List,
    /// Renew agent NAME's certificate now (new key on the agent, new certificate from the agent
    /// CA) instead of when it enters the last third of its lifetime. The agent must be
    /// connected; it reconnects with the new certificate.
    Renew { name: String },
    /// Revoke agent NAME: its certificate is refused from now on and its live link (with the
    /// sessions on it) is cut within a second. Audited, naming you. An unknown or already
    /// revoked agent is an error.
    Revoke {
        name: String,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "")]
        reason: String,
        /// Who is doing this (default: the operating-system user name); see `agents enroll`.
        #[arg(long)]
        by: Option<String>,
    },
}

pub async fn run(args: AgentsArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config.config, &ProcessEnv, Secrets::Skip)?;
    let Some(agents) = config.agents.clone() else {
        bail!(
            "{} has no [agents] section: add one (at least `listen`) for remote agents to connect to",
            config.path.display()
        );
    };
    let store = Store::open(&config.store_url).await?;
    let mut out = std::io::stdout().lock();
    match args.action.unwrap_or(AgentsCommand::List) {
        AgentsCommand::Enroll { name, ttl, by } => {
            if !valid_name(&name) {
                bail!("agent names are 1-63 characters of a-z, 0-9, `-`, `_`");
            }
            let ttl = match ttl {
                Some(t) => crate::config::parse_duration(&t)
                    .with_context(|| format!("--ttl `{t}` is not a duration like 15m or 1h"))?,
                None => agents.join_token_ttl,
            };
            if ttl > std::time::Duration::from_secs(7 * 86_400) {
                bail!("--ttl is at most 7d");
            }
            let operator = Operator::current(by.as_deref())?;
            let (token, hash) = new_join_token();
            let ts = crate::audit::event::now_ts();
            let expires = crate::authn::token::unix_now() as i64 + ttl.as_secs() as i64;
            store
                .add_join_token(&name, &hash, &operator.claimed, &ts, expires)
                .await
                .context("recording the join token")?;
            let mut e = NewEvent::new(EventKind::AgentJoinToken);
            e.actor = operator.claimed.clone();
            e.resource = name.clone();
            e.action = "enroll".into();
            // The token's hash only: the log never holds a working token.
            e.detail = operator.detail_with(
                serde_json::json!({ "token_sha256": hash, "expires_in_secs": ttl.as_secs() }),
            );
            record_from_cli(&config, &store, e).await?;
            let ca_hint = if config.http.tls_cert.is_none() {
                format!(
                    " --ca-file {}",
                    config.state_dir.join("tls").join("cert.pem").display()
                )
            } else {
                String::new()
            };
            writeln!(
                out,
                "Join token for agent `{name}` (works once, for {}s):\n\n  {token}\n\nOn the agent's host:\n\n  gatehouse-agent --gateway {}{ca_hint} --token {token} --config agent.toml\n",
                ttl.as_secs(),
                config.http.public_url,
            )?;
        }
        AgentsCommand::List => {
            let rows = store.agents().await?;
            if args.json {
                let list: Vec<serde_json::Value> = rows
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "name": a.name,
                            "status": a.status,
                            "connected": connected(a),
                            "version": a.version,
                            "hostname": a.hostname,
                            "resources": serde_json::from_str::<serde_json::Value>(&a.resources).unwrap_or_default(),
                            "enrolled_at": a.enrolled_at,
                            "cert_expires": a.cert_expires,
                            "last_seen": a.last_seen,
                            "events_acked": a.events_acked,
                        })
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<16} {:<8} {:<9} {:<8} {:<28} {:<28} resources",
                "agent", "status", "link", "version", "last heartbeat", "certificate expires"
            )?;
            for a in rows {
                let resources: Vec<String> =
                    serde_json::from_str::<Vec<serde_json::Value>>(&a.resources)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|r| r["name"].as_str().map(String::from))
                        .collect();
                writeln!(
                    out,
                    "{:<16} {:<8} {:<9} {:<8} {:<28} {:<28} {}",
                    a.name,
                    a.status,
                    if connected(&a) { "up" } else { "down" },
                    a.version.as_deref().unwrap_or("-"),
                    a.last_seen.as_deref().unwrap_or("-"),
                    a.cert_expires.as_deref().unwrap_or("-"),
                    resources.join(",")
                )?;
            }
        }
        AgentsCommand::Renew { name } => {
            if store.request_agent_renewal(&name).await? {
                writeln!(out, "agent {name}: renewal requested; the gateway holding its link renews it within a second (`agent.renewed` in the audit log)")?;
            } else {
                bail!("no active agent `{name}` (see `gatehouse agents`)");
            }
        }
        AgentsCommand::Revoke { name, reason, by } => {
            if reason.len() > 1024 {
                bail!("--reason is limited to 1024 bytes");
            }
            let operator = Operator::current(by.as_deref())?;
            // Checked before anything is written: revoking also spends the agent's outstanding
            // join tokens, which must not happen quietly under an error.
            match store.agent(&name).await? {
                None => bail!("no agent `{name}` (see `gatehouse agents`); nothing was revoked"),
                Some(a) if a.status == "revoked" => bail!(
                    "agent {name} is already revoked{}; nothing changed",
                    a.revoked_at
                        .as_deref()
                        .map(|at| format!(" (since {at})"))
                        .unwrap_or_default()
                ),
                Some(_) => {}
            }
            let ts = crate::audit::event::now_ts();
            if !store.revoke_agent(&name, &operator.claimed, &ts).await? {
                bail!("agent {name} is already revoked; nothing changed");
            }
            let mut e = NewEvent::new(EventKind::AgentRevoked);
            e.actor = operator.claimed.clone();
            e.resource = name.clone();
            e.action = "revoke".into();
            e.reason = reason;
            e.detail = operator.detail();
            record_from_cli(&config, &store, e).await?;
            writeln!(out, "agent {name} revoked: its certificate is refused and its link is cut within a second")?;
        }
    }
    Ok(())
}

/// Whether the agent's link is up, as far as the store can tell: connected after its last
/// disconnection, with a heartbeat in the last 30 s (a gateway killed with -9 records no
/// disconnection).
fn connected(a: &crate::store::agents::AgentRow) -> bool {
    let (Some(conn), Some(seen)) = (&a.connected_at, &a.last_seen) else {
        return false;
    };
    if a.status != "active" || a.disconnected_at.as_ref().is_some_and(|d| d >= conn) {
        return false;
    }
    let fresh = time::OffsetDateTime::now_utc() - time::Duration::seconds(30);
    seen.as_str() >= crate::audit::event::format_ts(fresh).as_str()
}
