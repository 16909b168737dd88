//! `gatehouse keys rotate`: retire the credential signing key and create a new one, audited.

use anyhow::Context;
use clap::Subcommand;

use super::operator::Operator;
use super::{record_from_cli, ConfigArg};
use crate::config::Config;
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Retire the current credential signing key and create a new one. Audited, naming you.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// Who is doing this, recorded in the audit log next to the operating-system user and
        /// host that ran the command (default: the operating-system user name).
        #[arg(long)]
        by: Option<String>,
    },
}

pub(super) async fn rotate(config: &Config, by: Option<&str>) -> anyhow::Result<()> {
    let operator = Operator::current(by)?;
    let keys_dir = config.state_dir.join("keys");
    let (old, new) = crate::authn::keyring::Keyring::rotate(&keys_dir)
        .with_context(|| format!("rotating the token key in {}", keys_dir.display()))?;
    let store = Store::open(&config.store_url).await?;
    let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::KeysRotated);
    e.actor = operator.claimed.clone();
    e.action = "rotate".into();
    e.detail = operator.detail_with(serde_json::json!({ "retired_key_id": old, "key_id": new }));
    record_from_cli(config, &store, e).await?;
    println!("rotated the credential signing key: {old} -> {new} ({old} keeps verifying until its credentials expire)");
    Ok(())
}
