//! `gatehouse audit`: export, verify (the store against its anchor file, or an exported file
//! offline) and public-key; and `record_from_cli`, how every admin command appends its event.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::{load_config, ConfigArg};
use crate::audit::export::{self, Format};
use crate::audit::verify::{ChainVerifier, VerifyError};
use crate::audit::GENESIS_HASH;
use crate::config::Config;
use crate::keys::{PublicKey, SigningKey};
use crate::store::Store;

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Write events to stdout or a file. JSONL exports end with a signed manifest and can be
    /// verified offline with `gatehouse audit verify --file`.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Verify the log in the store (default), or an exported JSONL file with only the public key.
    /// Exits 0 when intact; otherwise 1, naming the first bad sequence number.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// An exported JSONL file to verify offline.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The audit public key (base64, or @path to a file holding it). Required with --file
        /// unless the config's state directory is at hand.
        #[arg(long)]
        public_key: Option<String>,
        /// Verify the store without the anchor file (`state_dir/audit-anchor.json`, the newest
        /// checkpoint kept outside the store). Without it, a log cut back together with its
        /// newest checkpoints cannot be told from an intact one; the report says so.
        #[arg(long)]
        without_anchor: bool,
    },
    /// Print the audit public key (base64) that verifies checkpoints and exports.
    PublicKey {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn ts_arg(flag: &str, v: Option<&str>) -> anyhow::Result<Option<String>> {
    v.map(|s| {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .with_context(|| {
                format!("{flag} `{s}` is not an RFC 3339 time like 2026-11-01T00:00:00Z")
            })?;
        Ok(crate::audit::event::format_ts(t))
    })
    .transpose()
}
pub(super) async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Export {
            config,
            format,
            from,
            to,
            output,
        } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let from = ts_arg("--from", from.as_deref())?;
            let to = ts_arg("--to", to.as_deref())?;
            let key = SigningKey::load(&crate::server::audit_key_path(&config))
                .context("loading the audit signing key")?;
            let store = Store::open(&config.store_url).await?;
            let format = match format {
                FormatArg::Jsonl => Format::Jsonl,
                FormatArg::Csv => Format::Csv,
            };
            match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating `{}`", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = export::export(
                        &store,
                        &key,
                        format,
                        from.as_deref(),
                        to.as_deref(),
                        &mut w,
                    )
                    .await?;
                    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "exported {n} events to {}",
                        path.display()
                    );
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    export::export(&store, &key, format, from.as_deref(), to.as_deref(), &mut w)
                        .await?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            config,
            file,
            public_key,
            without_anchor,
        } => {
            let key = match public_key {
                Some(k) => {
                    let text = match k.strip_prefix('@') {
                        Some(path) => std::fs::read_to_string(path)
                            .with_context(|| format!("reading `{path}`"))?,
                        None => k,
                    };
                    PublicKey::from_base64(&text)?
                }
                None => {
                    let config = match load_config(&config.config) {
                        Ok(c) => c,
                        Err(code) => return Ok(code),
                    };
                    SigningKey::load(&crate::server::audit_key_path(&config))
                        .context("loading the audit key (or pass --public-key)")?
                        .public_key()
                }
            };
            let result = match &file {
                Some(path) => {
                    let f = std::fs::File::open(path)
                        .with_context(|| format!("opening `{}`", path.display()))?;
                    export::verify_export(BufReader::new(f), &key)
                }
                None => {
                    let config = match load_config(&config.config) {
                        Ok(c) => c,
                        Err(code) => return Ok(code),
                    };
                    let store = Store::open(&config.store_url).await?;
                    let anchor = crate::server::audit_anchor_path(&config);
                    let anchored = if without_anchor {
                        Anchor::Skipped
                    } else {
                        Anchor::Required(&anchor)
                    };
                    verify_store_anchored(&store, &key, anchored).await?
                }
            };
            let mut out = std::io::stdout().lock();
            if without_anchor && file.is_none() {
                writeln!(
                    out,
                    "not checked: the anchor file (--without-anchor); a log cut back together with its newest checkpoints would pass"
                )?;
            }
            match result {
                Ok(report) => {
                    writeln!(out, "audit log intact: {report}")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    writeln!(
                        out,
                        "audit log verification FAILED at seq {}: {}",
                        e.seq, e.problem
                    )?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::PublicKey { config } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let key = SigningKey::load_or_create(&crate::server::audit_key_path(&config))?;
            writeln!(std::io::stdout().lock(), "{}", key.public_key().to_base64())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Appends one event from a CLI process, durably. The writer shares the store with the running
/// gateway; the chain stays linear because every commit reads the head under the store's lock.
pub(crate) async fn record_from_cli(
    config: &Config,
    store: &Store,
    e: crate::audit::NewEvent,
) -> anyhow::Result<u64> {
    let key = std::sync::Arc::new(
        SigningKey::load(&crate::server::audit_key_path(config))
            .context("loading the audit signing key")?,
    );
    let (log, writer) = crate::audit::AuditLog::spawn_anchored(
        store.clone(),
        key,
        config.audit.checkpoint_every,
        16,
        Some(crate::server::audit_anchor_path(config)),
    );
    let seq = log.record_durable(e).await?;
    drop(log);
    let _ = writer.await;
    Ok(seq)
}

/// Verifies the whole log in the store, page by page.
pub async fn verify_store(
    store: &Store,
    key: &PublicKey,
) -> anyhow::Result<Result<crate::audit::verify::VerifyReport, VerifyError>> {
    verify_store_anchored(store, key, Anchor::Skipped).await
}

/// Whether `audit verify` checks the log against the anchor file.
#[derive(Debug, Clone, Copy)]
pub enum Anchor<'a> {
    /// The file must be there (once the store holds a checkpoint) and the log must reach it.
    Required(&'a Path),
    /// Not checked (the caller says so to the person reading the result).
    Skipped,
}

/// Verifies the whole log in the store and that it still reaches the checkpoint the anchor
/// file holds (a log cut back together with its newest checkpoints fails). A missing anchor
/// fails verification once the store holds any checkpoint (the gateway writes the anchor with
/// each one); an unreadable or malformed one always does.
pub async fn verify_store_anchored(
    store: &Store,
    key: &PublicKey,
    anchor: Anchor<'_>,
) -> anyhow::Result<Result<crate::audit::verify::VerifyReport, VerifyError>> {
    let mut checkpoints = store.audit_checkpoints().await?;
    if let Anchor::Required(path) = anchor {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<crate::audit::Checkpoint>(&text) {
                Ok(cp) => checkpoints.push(cp),
                Err(e) => {
                    return Ok(Err(VerifyError {
                        seq: 0,
                        problem: format!(
                            "the audit anchor file `{}` is not a checkpoint: {e}",
                            path.display()
                        ),
                    }));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && checkpoints.is_empty() => {}
            Err(e) => {
                return Ok(Err(VerifyError {
                    seq: 0,
                    problem: format!(
                        "cannot read the audit anchor file `{}` ({e}): without it a log cut back together with its newest checkpoints cannot be told from an intact one; restore it, or verify with --without-anchor",
                        path.display()
                    ),
                }));
            }
        }
    }
    let mut chain = match ChainVerifier::new(key, checkpoints, 1, GENESIS_HASH.to_string()) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let mut after = 0;
    loop {
        let page = store.audit_events(after, 5000, None, None).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if let Err(err) = chain.push(e) {
                return Ok(Err(err));
            }
        }
    }
    Ok(chain.finish())
}
