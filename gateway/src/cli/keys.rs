//! `gatehouse keys rotate`: retire the credential signing key and create a new one, audited.

use anyhow::Context;
use clap::Subcommand;

use super::{record_from_cli, ConfigArg};
use crate::config::Config;
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum KeysCommand {
    /// Retire the current credential signing key and create a new one. Audited.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
}

pub(super) async fn rotate(config: &Config, by: &str) -> anyhow::Result<()> {
    let keys_dir = config.state_dir.join("keys");
    let (old, new) = crate::authn::keyring::Keyring::rotate(&keys_dir)
        .with_context(|| format!("rotating the token key in {}", keys_dir.display()))?;
    let store = Store::open(&config.store_url).await?;
    let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::KeysRotated);
    e.actor = by.to_string();
    e.action = "rotate".into();
    e.detail = serde_json::json!({ "retired_key_id": old, "key_id": new });
    record_from_cli(config, &store, e).await?;
    println!("rotated the credential signing key: {old} -> {new} ({old} keeps verifying until its credentials expire)");
    Ok(())
}
