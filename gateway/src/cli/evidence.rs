//! `gatehouse evidence`: `bundle` (the auditor's signed evidence for a period), `verify` (a
//! bundle, offline, with only the public key) and `soa` (the Statement of Applicability draft).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use super::audit::{public_key_arg, record_from_cli};
use super::operator::Operator;
use super::{load_config, CliError, ConfigArg};
use crate::audit::{EventKind, NewEvent};
use crate::evidence::bundle;
use crate::keys::SigningKey;
use crate::store::Store;

#[derive(Subcommand)]
pub(super) enum EvidenceCommand {
    /// Build the evidence bundle for a period into a new directory: the audit export with its
    /// checkpoints, the HTML report (a page per Annex A control, derived checks, exceptions,
    /// charts), the Statement of Applicability, the registers as CSV (access rights, JIT ledger,
    /// authentication, leavers, sessions, policies, reviews), and SHA256SUMS signed with the audit
    /// key. Building one is itself recorded (evidence.bundle).
    ///
    /// Exit status: 0 built (exceptions, if any, are in the report); 1 built, but the exported
    /// chain does not verify (the report says where); 64 bad arguments or config; 69 the store.
    Bundle {
        #[command(flatten)]
        config: ConfigArg,
        /// First day (2026-10-01) or instant (RFC 3339) of the period, UTC.
        #[arg(long)]
        from: String,
        /// Last day of the period, included (2026-12-31), or an instant (RFC 3339, excluded);
        /// default now.
        #[arg(long)]
        to: Option<String>,
        /// The directory to create (it must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Who builds it (recorded; default the OS user).
        #[arg(long)]
        by: Option<String>,
    },
    /// Download the bundle for a period from the gateway as the signed-in auditor (`gatehouse
    /// login`; the policies must permit `read_audit`), with no access to the store, into a new
    /// directory; then verify it with `evidence verify`. The gateway records the download.
    Download {
        /// First day (2026-10-01) or instant (RFC 3339) of the period, UTC.
        #[arg(long)]
        from: String,
        /// Last day, included, or an instant (excluded); default now.
        #[arg(long)]
        to: Option<String>,
        /// The directory to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify a bundle offline: SHA256SUMS is signed by the audit key and lists every file
    /// (none changed, removed or added), the export verifies and chains into the period's
    /// checkpoints.
    ///
    /// Exit status: 0 intact; 1 it fails, naming the file; 64 no key can be had.
    Verify {
        /// The bundle directory.
        dir: PathBuf,
        /// The audit public key (base64, or @path to a file holding it), as `gatehouse audit
        /// public-key` prints it.
        #[arg(long)]
        public_key: String,
    },
    /// Write the Statement of Applicability draft: the 93 Annex A 2022 controls, whether the
    /// gateway implements, supports or records evidence for each, the policies (@id) and event
    /// kinds that serve it, and empty columns for the organisation's decision and justification.
    Soa {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the CSV.
        #[arg(long, default_value = "soa.csv")]
        out: PathBuf,
    },
}

/// A period bound: a date (the day's start; for `--to`, the next day's, so the day is
/// included) or an RFC 3339 instant.
fn bound(flag: &str, v: &str, end: bool) -> anyhow::Result<String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(v, &Rfc3339) {
        return Ok(crate::audit::event::format_ts(t));
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let day = time::Date::parse(v, &fmt).map_err(|_| {
        CliError::Usage(format!(
            "{flag} `{v}` is neither a date like 2026-10-01 nor an RFC 3339 time like 2026-10-01T00:00:00Z"
        ))
    })?;
    let day = if end {
        day.next_day()
            .ok_or_else(|| CliError::Usage(format!("{flag} `{v}` is out of range")))?
    } else {
        day
    };
    Ok(crate::audit::event::format_ts(day.midnight().assume_utc()))
}

pub(super) async fn run(cmd: EvidenceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EvidenceCommand::Bundle {
            config,
            from,
            to,
            out,
            by,
        } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let from = bound("--from", &from, false)?;
            let to = match to {
                Some(t) => bound("--to", &t, true)?,
                None => crate::audit::event::now_ts(),
            };
            if from >= to {
                return Err(CliError::Usage(format!(
                    "the period is empty: --from {from} is not before --to {to}"
                ))
                .into());
            }
            let operator = Operator::current(by.as_deref())?;
            let key = SigningKey::load(&crate::server::audit_key_path(&config))
                .context("loading the audit signing key")?;
            let store = Store::open(&config.store_url)
                .await
                .map_err(|e| CliError::Unavailable(format!("cannot open the store: {e}")))?;
            let anchor = crate::server::audit_anchor_path(&config);
            let store_chain = match super::audit::verify_store_anchored(
                &store,
                &key.public_key(),
                super::audit::Anchor::Required(&anchor),
            )
            .await
            .map_err(|e| CliError::Unavailable(format!("cannot read the audit log: {e:#}")))?
            {
                Ok(report) => Ok(report.to_string()),
                Err(e) => Err(format!("at seq {}: {}", e.seq, e.problem)),
            };
            let spec = bundle::Spec {
                from: &from,
                to: &to,
                out: &out,
                built_by: &operator.display(),
                progress: bundle::stderr_is_terminal(),
                store_chain,
            };
            let built = bundle::build(&config, &store, &key, &spec).await?;
            let mut e = NewEvent::new(EventKind::EvidenceBundle);
            e.actor = operator.claimed.clone();
            e.action = "bundle".into();
            e.decision = if built.chain_ok { "intact" } else { "broken" }.into();
            e.detail = operator.detail_with(serde_json::json!({
                "from": from,
                "to": to,
                "events": built.events,
                "exceptions": built.exceptions,
                "chain": built.chain,
                "sha256sums_sha256": built.sums_sha256,
                "out": out.display().to_string(),
            }));
            record_from_cli(&config, &store, e).await?;
            let mut so = std::io::stdout().lock();
            writeln!(
                so,
                "evidence bundle {}: {} events from {from} to {to}, {} files",
                out.display(),
                built.events,
                built.files
            )?;
            writeln!(so, "chain: {}", built.chain)?;
            if built.exceptions == 0 {
                writeln!(so, "derived checks: no exception")?;
            } else {
                writeln!(
                    so,
                    "derived checks: {} exceptions, listed in report.html and exceptions.csv",
                    built.exceptions
                )?;
            }
            writeln!(
                so,
                "verify it anywhere: gatehouse evidence verify {} --public-key @audit.pub",
                out.display()
            )?;
            Ok(if built.chain_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        EvidenceCommand::Download { from, to, out } => {
            let from = bound("--from", &from, false)?;
            let to = match to {
                Some(t) => bound("--to", &t, true)?,
                None => crate::audit::event::now_ts(),
            };
            let n = crate::client::download_bundle(&from, &to, &out).await?;
            writeln!(
                std::io::stdout().lock(),
                "evidence bundle {}: {n} files from {from} to {to}; verify it: gatehouse evidence verify {} --public-key @audit.pub",
                out.display(),
                out.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        EvidenceCommand::Verify { dir, public_key } => {
            let key = public_key_arg(&public_key)?;
            let mut so = std::io::stdout().lock();
            match bundle::verify(&dir, &key) {
                Ok(v) => {
                    if let Some(info) = &v.info {
                        writeln!(
                            so,
                            "bundle intact: {} files, period {} to {}, built {} by {}",
                            v.files, info.from, info.to, info.built_at, info.built_by
                        )?;
                    }
                    writeln!(
                        so,
                        "export: {}; {} checkpoints of the period on its chain",
                        v.chain, v.checkpoints
                    )?;
                    let _ = v.events;
                    Ok(ExitCode::SUCCESS)
                }
                Err(p) => {
                    writeln!(so, "bundle verification FAILED: {p}")?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        EvidenceCommand::Soa { config, out } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let engine = crate::authz::load_policies(&config.policies_dir)?;
            let n = crate::evidence::soa::write(&out, &engine.policies())
                .with_context(|| format!("writing `{}`", out.display()))?;
            writeln!(
                std::io::stdout().lock(),
                "wrote {n} controls to {}",
                out.display()
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_last_day_is_included() {
        assert_eq!(
            bound("--from", "2026-10-01", false).unwrap(),
            bound("--from", "2026-10-01T00:00:00Z", false).unwrap()
        );
        assert_eq!(
            bound("--to", "2026-12-31", true).unwrap(),
            bound("--to", "2027-01-01T00:00:00Z", true).unwrap()
        );
        assert!(bound("--to", "31.12.2026", true).is_err());
    }
}
