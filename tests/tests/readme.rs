//! The README's commands run as written, in order, on a fresh state: the quickstart (its own
//! PostgreSQL and OpenID provider, on free ports), then the tour's blocks as alice, bob and
//! the auditor, each checked against what the README says it prints (tests/src/readme.rs).

#![allow(clippy::print_stderr)] // the transcript, shown with --nocapture

use gatehouse_tests::readme::run_readme;
use gatehouse_tests::workspace_root;

#[test]
fn the_readme_runs_as_written() -> anyhow::Result<()> {
    let run = run_readme(&workspace_root().join("README.md"))?;
    assert!(
        run.ran >= 10,
        "only {} README blocks ran:\n{}",
        run.ran,
        run.transcript
    );
    // An operator never sees ERROR for ordinary use (the quickstart's stderr is the gateway's
    // log, with the provider's and PostgreSQL's kept in their own files).
    let errors: Vec<&str> = run
        .background_log
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect();
    assert!(
        errors.is_empty(),
        "the gateway logged errors or warnings during the tour:\n{}\n===== transcript =====\n{}",
        errors.join("\n"),
        run.transcript
    );
    // Shown with --nocapture: what each block printed, for writing the README's `prints`.
    eprintln!("{}", run.transcript);
    Ok(())
}
