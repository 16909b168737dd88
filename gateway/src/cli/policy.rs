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
