//! `gatehouse policy check` and `policy test`: validate the Cedar policies against the schema,
//! and run the policy test cases.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::{Args, Subcommand};

use super::ConfigArg;

#[derive(Subcommand)]
pub(super) enum PolicyCommand {
    /// Parse the policies, check annotations and validate them against the schema.
    Check(PolicyDir),
    /// Run the policy test cases in <dir>/tests/*.toml.
    Test(PolicyDir),
    /// Make every running gateway on this store load the policies again (policies.dir of the
    /// config), without cutting live sessions. The set is checked and tested here first; a set
    /// that fails is refused (and recorded), and the gateways keep the one they have. Each
    /// gateway records a policy.changed event: the set's hash, the diff by policy id, who
    /// applied and who approved it. SIGHUP to a gateway reloads it too.
    ///
    /// Exit status: 0 a gateway applied it (or found nothing changed); 1 the set was refused,
    /// or no gateway confirmed within --wait; 64 bad arguments or config; 69 the store.
    Reload(ReloadArgs),
}

#[derive(Args)]
pub(super) struct ReloadArgs {
    #[command(flatten)]
    pub(super) config: ConfigArg,
    /// Who applies the change (recorded; default the OS user).
    #[arg(long)]
    pub(super) by: Option<String>,
    /// The second person who reviewed and approved the change (recorded; the evidence report
    /// counts changes without one).
    #[arg(long)]
    pub(super) approved_by: Option<String>,
    /// How long to wait for a running gateway to confirm.
    #[arg(long, default_value = "10s", value_parser = humantime_secs)]
    pub(super) wait: u64,
}

fn humantime_secs(s: &str) -> Result<u64, String> {
    gatehouse_core::clock::try_parse_duration(s)
        .map(|d| d.as_secs().max(1))
        .map_err(|e| e.to_string())
}

#[derive(Args)]
pub(super) struct PolicyDir {
    /// The policy directory (default: policies.dir of the config).
    #[arg(long)]
    pub(super) dir: Option<PathBuf>,
    // The gateway config, read for policies.dir when --dir is not given.
    #[command(flatten)]
    pub(super) config: ConfigArg,
}

/// Returns Ok(false) when a policy test case fails.
pub(super) fn run(dir: &Path, test: bool) -> anyhow::Result<bool> {
    let engine = crate::authz::load_policies(dir)?;
    let mut out = std::io::stdout().lock();
    if !test {
        for p in engine.policies() {
            writeln!(
                out,
                "ok  {:<40} {:<7} controls {}  ({})",
                p.id,
                p.effect,
                p.controls.join(" "),
                p.file
            )?;
        }
        writeln!(
            out,
            "{} policies valid against the schema",
            engine.policies().len()
        )?;
        return Ok(true);
    }
    let cases = crate::authz::load_cases(dir)?;
    if cases.is_empty() {
        bail!("no policy test cases in `{}`", dir.join("tests").display());
    }
    let outcomes = gatehouse_policies::run_cases(&engine, &cases);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    for o in &outcomes {
        writeln!(
            out,
            "{}  {}  {}",
            if o.passed { "ok  " } else { "FAIL" },
            o.name,
            o.detail
        )?;
    }
    writeln!(out, "{} passed, {} failed", outcomes.len() - failed, failed)?;
    Ok(failed == 0)
}

/// `gatehouse policy reload`.
pub(super) async fn reload(args: ReloadArgs) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;

    use serde_json::{json, Value};

    use crate::audit::{EventKind, NewEvent};
    use crate::store::Store;

    let config = crate::config::Config::load(
        &args.config.config,
        &crate::config::ProcessEnv,
        crate::config::Secrets::Skip,
    )?;
    let operator = super::operator::Operator::current(args.by.as_deref())?;
    if let Some(a) = &args.approved_by {
        super::operator::check_name(a)?;
        if *a == operator.claimed {
            return Err(super::CliError::Usage(format!(
                "--approved-by {a} is the person applying the change; a change is approved by someone else"
            ))
            .into());
        }
    }
    let by = operator.detail_with(json!({ "approved_by": args.approved_by }));
    let store = Store::open(&config.store_url)
        .await
        .map_err(|e| super::CliError::Unavailable(format!("cannot open the store: {e}")))?;
    let mut out = std::io::stdout().lock();
    let dir = &config.policies_dir;
    let refused = match crate::authz::load_tested(dir) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    if let Some(why) = refused {
        let mut e = NewEvent::new(EventKind::PolicyChanged);
        e.actor = operator.claimed.clone();
        e.action = "reload".into();
        e.decision = "refused".into();
        e.reason = why.clone();
        e.detail = json!({
            "requested_by": by,
            "approved_by": args.approved_by,
            "sha256": crate::authz::policy_set_sha256(dir).unwrap_or_default(),
            "checked_by": "cli",
        });
        super::audit::record_from_cli(&config, &store, e).await?;
        writeln!(out, "policy set in `{}` refused: {why}", dir.display())?;
        writeln!(out, "the gateways keep the policies they have")?;
        return Ok(ExitCode::FAILURE);
    }
    let from_seq = store.audit_last_seq().await?;
    let id = store
        .request_policy_reload(&crate::audit::event::now_ts(), &by.to_string())
        .await?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.wait);
    let mut after = from_seq;
    loop {
        let page = store.audit_events(after, 500, None, None).await?;
        for ev in &page {
            after = ev.seq;
            if ev.kind != "policy.changed" {
                continue;
            }
            let d: Value = serde_json::from_str(&ev.detail).unwrap_or(Value::Null);
            if d.get("request_id").and_then(Value::as_i64) != Some(id) {
                continue;
            }
            let list = |k: &str| -> String {
                d.get(k)
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "-".into())
            };
            match ev.decision.as_str() {
                "refused" => {
                    writeln!(
                        out,
                        "a gateway refused the policy set (seq {}): {}",
                        ev.seq, ev.reason
                    )?;
                    return Ok(ExitCode::FAILURE);
                }
                decision => {
                    writeln!(
                        out,
                        "policies {decision} (seq {}): sha256 {}",
                        ev.seq,
                        d.get("sha256").and_then(Value::as_str).unwrap_or("")
                    )?;
                    writeln!(out, "added:   {}", list("added"))?;
                    writeln!(out, "removed: {}", list("removed"))?;
                    writeln!(out, "changed: {}", list("changed"))?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if page.is_empty() {
            if std::time::Instant::now() > deadline {
                writeln!(
                    out,
                    "reload request {id} recorded, but no running gateway confirmed it within {} s; a gateway loads the policies when it starts",
                    args.wait
                )?;
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
