//! `gatehouse keys rotate`: retire the credential signing key and create a new one, audited.
//! `gatehouse keys ssh-upstream-ca`: the line SSH targets put in `TrustedUserCAKeys`.

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
    /// Print the gateway's upstream SSH CA public key (created if missing): put this line in
    /// each SSH target's `TrustedUserCAKeys` file, so that the gateway can log in there. Only
    /// the gateway holds certificates of this CA; people's certificates come from another.
    SshUpstreamCa {
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub(super) fn ssh_upstream_ca(config: &Config) -> anyhow::Result<String> {
    let dir = config.state_dir.join("keys");
    let keys = crate::ssh::ca::SshKeys::load_or_create(&dir)
        .with_context(|| format!("loading the SSH keys in {}", dir.display()))?;
    Ok(keys.upstream_ca_line())
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
