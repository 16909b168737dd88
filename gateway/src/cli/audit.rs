//! `gatehouse audit`: export, verify (the store against its anchor file, or an exported file
//! offline) and public-key; and `record_from_cli`, how every admin command appends its event.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::{load_config, CliError, ConfigArg};
use crate::audit::export::{self, Format};
use crate::audit::verify::{ChainVerifier, VerifyError};
use crate::audit::GENESIS_HASH;
use crate::config::{Config, ConfigError, ProcessEnv, Secrets};
use crate::keys::{PublicKey, SigningKey};
use crate::store::Store;

#[derive(Clone, Copy, ValueEnum)]
pub(super) enum FormatArg {
    Jsonl,
    Csv,
    /// OCSF 1.7.0 events, one per line, for SIEMs (not verifiable; the JSONL export is).
    Ocsf,
}

#[derive(Subcommand)]
pub(super) enum AuditCommand {
    /// Write events to stdout or a file. JSONL exports end with a signed manifest and can be
    /// verified offline with `gatehouse audit verify --file`; `--format ocsf` writes OCSF 1.7.0
    /// events for a SIEM (Authentication 3002, Authorize Session 3003, User Access Management
    /// 3005, Account Change 3001, Entity Management 3004, Datastore Activity 6005, API Activity
    /// 6003, Network Activity 4001, Application Lifecycle 6002, Detection Finding 2004), each
    /// naming its seq and hash in the signed log.
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
    ///
    /// Offline (`--file log.jsonl`), the key comes from `--public-key @audit.pub` (what
    /// `gatehouse audit public-key` prints where the gateway runs), else from the state
    /// directory of the config.
    ///
    /// Exit status: 0 the log (or the file) is intact; 1 it fails verification, and the
    /// report names the first bad sequence number (a missing or unreadable anchor file counts:
    /// it is what a log cut back together would leave); 2 the arguments are wrong; 64 no config
    /// can be read, or the arguments do not go together (`--file` with neither `--public-key`
    /// nor a config); 66 an input file (the export, the key) cannot be read; 69 the store
    /// cannot be reached or read.
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
    /// Read the log's events through the gateway's API as the signed-in auditor (`gatehouse
    /// login`; the policies must permit `read_audit`, by default group `auditors`), as JSON
    /// lines. Needs no access to the store; every read is recorded as an audit.read event.
    Events {
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Only this kind, e.g. access.decision.
        #[arg(long)]
        kind: Option<String>,
        /// Only events of this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only events on this resource.
        #[arg(long)]
        resource: Option<String>,
        /// Only events that are evidence for this Annex A control, e.g. 8.2.
        #[arg(long)]
        control: Option<String>,
        /// Only events of this session id.
        #[arg(long)]
        session: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        max: Option<u64>,
    },
    /// Print the audit public key (base64) that verifies checkpoints and exports.
    PublicKey {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn offline_needs_key_text() -> String {
    "verifying an export offline (--file) needs the audit public key: pass \
     `--public-key @audit.pub` (what `gatehouse audit public-key` prints where the gateway \
     runs), or a config to read it from (`--config FILE`)"
        .to_string()
}

/// `audit verify --file` without `--public-key`, and `e` is why no config could stand in.
fn offline_needs_key(e: &ConfigError) -> String {
    match e {
        ConfigError::NotFound { .. } => {
            format!("{}; no config file was found", offline_needs_key_text())
        }
        other => format!(
            "{}; the config cannot be used: {other}",
            offline_needs_key_text()
        ),
    }
}

/// `--public-key`: the key in base64, or `@path` to a file that holds it.
pub(super) fn public_key_arg(arg: &str) -> anyhow::Result<PublicKey> {
    let (text, given) = match arg.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| {
                CliError::NoInput(format!("cannot read the public key file `{path}`: {e}"))
            })?,
            format!("the file `{path}`"),
        ),
        None => (arg.to_string(), "--public-key".to_string()),
    };
    PublicKey::from_base64(&text).map_err(|e| {
        CliError::Usage(format!(
            "{given} does not hold an audit public key ({e}); use what `gatehouse audit public-key` prints"
        ))
        .into()
    })
}

pub(super) fn ts_arg(flag: &str, v: Option<&str>) -> anyhow::Result<Option<String>> {
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
                FormatArg::Ocsf => Format::Ocsf,
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
            // The config: for the store, and for the key unless --public-key gives it.
            let config = if file.is_none() || public_key.is_none() {
                match Config::load(&config.config, &ProcessEnv, Secrets::Skip) {
                    Ok(c) => Some(c),
                    // Offline, the config only stands in for the key: say what is missing.
                    Err(e) if file.is_some() => {
                        return Err(CliError::Usage(offline_needs_key(&e)).into())
                    }
                    Err(e) => return Err(e.into()),
                }
            } else {
                None
            };
            let key = match (public_key, &config) {
                (Some(k), _) => public_key_arg(&k)?,
                (None, Some(config)) => SigningKey::load(&crate::server::audit_key_path(config))
                    .map_err(|e| {
                        CliError::NoInput(format!(
                            "cannot load the audit key from the state directory ({e}); pass \
                             `--public-key @audit.pub` instead"
                        ))
                    })?
                    .public_key(),
                (None, None) => return Err(CliError::Usage(offline_needs_key_text()).into()),
            };
            // The store, kept for the recordings' check after the chain's.
            let mut opened = None;
            let result = match (&file, &config) {
                (Some(path), _) => {
                    let f = std::fs::File::open(path).map_err(|e| {
                        CliError::NoInput(format!("cannot open `{}`: {e}", path.display()))
                    })?;
                    export::verify_export(BufReader::new(f), &key)
                }
                (None, None) => return Err(CliError::Usage(offline_needs_key_text()).into()),
                (None, Some(config)) => {
                    let unavailable = |e: anyhow::Error| {
                        CliError::Unavailable(format!(
                            "cannot read the audit log from the store: {}",
                            super::error_text(&e)
                        ))
                    };
                    let store = Store::open(&config.store_url)
                        .await
                        .map_err(|e| unavailable(e.into()))?;
                    let anchor = crate::server::audit_anchor_path(config);
                    let anchored = if without_anchor {
                        Anchor::Skipped
                    } else {
                        Anchor::Required(&anchor)
                    };
                    let r = verify_store_anchored(&store, &key, anchored)
                        .await
                        .map_err(unavailable)?;
                    opened = Some((store, config.recordings.dir.clone()));
                    r
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
                    let Some((store, dir)) = opened else {
                        return Ok(ExitCode::SUCCESS);
                    };
                    // The chain vouches for the chunk events; the files must match them.
                    let f = crate::recording::read::verify(&store, &dir)
                        .await
                        .map_err(|e| {
                            CliError::Unavailable(format!(
                                "cannot read the recordings' events from the store: {e}"
                            ))
                        })?;
                    for note in &f.notes {
                        writeln!(out, "note: {note}")?;
                    }
                    if f.problems.is_empty() {
                        writeln!(
                            out,
                            "recordings intact: {} session(s), {} chunk(s), {} bytes under {}",
                            f.sessions,
                            f.chunks,
                            f.bytes,
                            dir.display()
                        )?;
                        Ok(ExitCode::SUCCESS)
                    } else {
                        for p in &f.problems {
                            writeln!(out, "recording verification FAILED: {p}")?;
                        }
                        Ok(ExitCode::FAILURE)
                    }
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
        AuditCommand::Events {
            from,
            to,
            kind,
            actor,
            resource,
            control,
            session,
            max,
        } => {
            crate::client::audit_events(crate::client::EventFilters {
                from,
                to,
                kind,
                actor,
                resource,
                control,
                session,
                max,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
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
