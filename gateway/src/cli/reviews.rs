//! `gatehouse reviews`: access review campaigns. `start` and `status` are admin commands on the
//! store (like `users disable`); `items` and `decide` are a reviewer's, through the API with
//! their sign-in.

use std::io::Write;
use std::process::ExitCode;

use clap::Subcommand;

use super::audit::record_from_cli;
use super::operator::Operator;
use super::{load_config, CliError, ConfigArg};
use crate::access::campaigns::{plan, Spec};
use crate::audit::{EventKind, NewEvent};
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum ReviewsCommand {
    /// Start a campaign: freeze who can reach the resource now (standing policy permits for
    /// every user the gateway has seen, each role; active grants), record the snapshot's
    /// SHA-256 in the audit log, and assign each item to a member of the reviewers' group who
    /// is not its subject.
    Start {
        #[command(flatten)]
        config: ConfigArg,
        /// What to review: resource=NAME.
        #[arg(long)]
        scope: String,
        /// Who reviews: group:NAME.
        #[arg(long)]
        reviewers: String,
        /// When the items are due, from now (e.g. 14d).
        #[arg(long, default_value = "14d")]
        due: String,
        /// Who starts it (recorded; default the OS user).
        #[arg(long)]
        by: Option<String>,
    },
    /// A campaign's items (all campaigns without an id): reviewer, decision, overdue.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The campaign.
        campaign: Option<i64>,
    },
    /// The review items assigned to you (signed in with `gatehouse login`).
    Items,
    /// Keep or revoke a review item assigned to you. Revoke acts at once: a grant ends; standing
    /// access is refused from then on; live sessions on it are cut.
    Decide {
        /// The item's id (see `gatehouse reviews items`).
        id: i64,
        /// Keep the access.
        #[arg(long, conflicts_with = "revoke", required_unless_present = "revoke")]
        keep: bool,
        /// Revoke the access.
        #[arg(long)]
        revoke: bool,
        /// Why (required).
        #[arg(long)]
        comment: String,
    },
}

pub(super) async fn run(cmd: ReviewsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReviewsCommand::Start {
            config,
            scope,
            reviewers,
            due,
            by,
        } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let resource = scope
                .strip_prefix("resource=")
                .ok_or_else(|| CliError::Usage(format!("--scope `{scope}`: give resource=NAME")))?;
            let group = reviewers.strip_prefix("group:").ok_or_else(|| {
                CliError::Usage(format!("--reviewers `{reviewers}`: give group:NAME"))
            })?;
            let due_secs = gatehouse_core::clock::try_parse_duration(&due)
                .map_err(|e| CliError::Usage(format!("--due `{due}`: {e}")))?
                .as_secs();
            let operator = Operator::current(by.as_deref())?;
            let engine = crate::authz::load_policies(&config.policies_dir)?;
            let store = Store::open(&config.store_url)
                .await
                .map_err(|e| CliError::Unavailable(format!("cannot open the store: {e}")))?;
            let spec = Spec {
                resource,
                reviewers: group,
                due_secs,
                started_by: operator.detail(),
            };
            let planned = plan(&config, &engine, &store, &spec)
                .await
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let id = store
                .create_campaign(&planned.campaign, &planned.items)
                .await?;
            let mut per: std::collections::BTreeMap<&str, usize> = Default::default();
            for i in &planned.items {
                *per.entry(i.reviewer.as_str()).or_default() += 1;
            }
            let mut e = NewEvent::new(EventKind::ReviewCampaignStarted);
            e.actor = operator.claimed.clone();
            e.resource = resource.to_string();
            e.action = "start".into();
            e.detail = operator.detail_with(serde_json::json!({
                "campaign_id": id,
                "reviewers": group,
                "due": planned.campaign.due,
                "snapshot_sha256": planned.campaign.snapshot_sha256,
                "items": planned.items.len(),
                "assigned": per,
            }));
            record_from_cli(&config, &store, e).await?;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "campaign {id} on {resource}: {} items, due {}, snapshot sha256 {}",
                planned.items.len(),
                planned.campaign.due,
                planned.campaign.snapshot_sha256
            )?;
            for (r, n) in per {
                writeln!(out, "  {r}: {n} items")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ReviewsCommand::Status { config, campaign } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let store = Store::open(&config.store_url)
                .await
                .map_err(|e| CliError::Unavailable(format!("cannot open the store: {e}")))?;
            let now = crate::authn::token::unix_now() as i64;
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<6} {:<9} {:<12} {:<16} {:<8} {:<9} {:<12} {:<8} due",
                "item", "campaign", "subject", "resource", "role", "access", "reviewer", "decision"
            )?;
            for i in store.campaign_items(campaign).await? {
                let decision = match (&i.decision, i.due_unix < now) {
                    (Some(d), _) => d.clone(),
                    (None, true) => "OVERDUE".into(),
                    (None, false) => "open".into(),
                };
                writeln!(
                    out,
                    "{:<6} {:<9} {:<12} {:<16} {:<8} {:<9} {:<12} {:<8} {}",
                    i.id,
                    i.campaign_id,
                    i.subject,
                    i.resource,
                    i.role,
                    i.access,
                    i.reviewer,
                    decision,
                    i.due
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        ReviewsCommand::Items => {
            crate::client::review_items().await?;
            Ok(ExitCode::SUCCESS)
        }
        ReviewsCommand::Decide {
            id,
            keep: _,
            revoke,
            comment,
        } => {
            let decision = if revoke { "revoke" } else { "keep" };
            crate::client::decide_review_item(id, decision, &comment).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
