//! The auditor's evidence bundle end to end, through the real gateway, PostgreSQL and psql:
//! a scripted period (a denied privileged connection, queries, a request with a self-approval
//! attempt and an approval that expires, break-glass with and without review, a leaver refused
//! after the disable) gives the derived checks their expected numbers; the bundle verifies
//! offline and fails naming the file when one is changed, removed or added; the SoA has the 93
//! controls of the reference data; the report opens in headless Chromium; a row planted in the
//! store by hand shows as an exception and fails verification.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gatehouse_gateway::audit::{EventKind, NewEvent};
use gatehouse_tests::pg::{ORDERS_PASSWORD, ORDERS_USER, READONLY_PASSWORD, READONLY_USER};
use gatehouse_tests::util::poll;
use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Resource, TempDir};
use serde_json::Value;

const WRITE_PW_VAR: &str = "GATEHOUSE_TEST_ORDERS_WRITE_PW";
/// The reference catalogue (ids, titles, themes), as `../shared/annex-a` ships it.
const CONTROLS_CSV: &str = include_str!("../../gateway/src/evidence/controls-2022.csv");

fn resource(pg: &PgServer, name: &str, env: &str) -> Resource {
    Resource::orders_db(pg, name)
        .labels(&[("env", env), ("data_class", "internal")])
        .credential(READONLY_USER, READONLY_PASSWORD)
        .raw(
            "roles",
            &format!("{{ write = {{ username = \"{ORDERS_USER}\", password_env = \"{WRITE_PW_VAR}\" }} }}"),
        )
}

fn psql(
    gw: &Gateway,
    home: &TempDir,
    resource: &str,
    role: &str,
    sql: &str,
) -> anyhow::Result<gatehouse_tests::CmdOutput> {
    gw.as_user(home, &["psql", resource, "--role", role, "--", "-tAc", sql])
}

fn first_field(out: &gatehouse_tests::CmdOutput, line: usize, field: usize) -> String {
    out.stdout
        .lines()
        .nth(line)
        .and_then(|l| l.split_whitespace().nth(field))
        .unwrap_or_default()
        .to_string()
}

fn checks(dir: &Path) -> anyhow::Result<BTreeMap<String, (u64, String)>> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("checks.json"))?)?;
    Ok(v["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap_or_default().to_string(),
                        (
                            c["count"].as_u64().unwrap_or(u64::MAX),
                            c["status"].as_str().unwrap_or_default().to_string(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Parses a CSV of the bundle (every field quoted) into rows of fields.
fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => row.push(std::mem::take(&mut field)),
            ('\n', false) => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            (c, _) => field.push(c),
        }
    }
    rows
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

#[test]
fn a_period_gives_its_derived_checks_and_a_bundle_that_verifies() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(resource(&pg, "orders-db", "dev"))
            .resource(resource(&pg, "ledger-db", "prod"))
            .env(WRITE_PW_VAR, ORDERS_PASSWORD),
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let olive = gw.engineer("olive", &["oncall"])?;
    let carol = gw.engineer("carol", &["engineering"])?;

    // A privileged connection without a grant is denied; reads are served.
    let out = psql(&gw, &bob, "orders-db", "write", "select 1")?;
    assert!(out.stderr.contains("denied by policy"), "{out}");
    assert_eq!(
        psql(&gw, &bob, "orders-db", "read", "select 41 + 1")?
            .ok()?
            .stdout
            .trim(),
        "42"
    );

    // A request: the requester's own approval is refused, a DBA approves, the grant expires.
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "orders-db",
                "--role",
                "write",
                "--for",
                "3s",
                "--reason",
                "CHG-77: reindex",
            ],
        )?
        .ok()?;
    let id = first_field(&out, 0, 1);
    let out = gw.as_user(&bob, &["approve", &id])?;
    assert!(
        !out.success() && out.stderr.contains("own request"),
        "{out}"
    );
    gw.as_user(&dana, &["approve", &id, "--comment", "ok"])?
        .ok()?;
    assert_eq!(
        psql(&gw, &bob, "orders-db", "write", "select 7")?
            .ok()?
            .stdout
            .trim(),
        "7"
    );
    gw.wait_for_event(
        |e| e["kind"] == "grant.end" && e["reason"] == "expired",
        Duration::from_secs(20),
    )?;

    // Break-glass twice: the first is signed off by a DBA, the second never is.
    let glass = [
        "request",
        "ledger-db",
        "--role",
        "write",
        "--for",
        "30m",
        "--reason",
        "INC-9: ledger stuck",
        "--break-glass",
    ];
    gw.as_user(&olive, &glass)?.ok()?;
    assert_eq!(
        psql(&gw, &olive, "ledger-db", "write", "select 9")?
            .ok()?
            .stdout
            .trim(),
        "9"
    );
    let out = gw.as_user(&olive, &["review"])?.ok()?;
    let review = first_field(&out, 1, 0);
    gw.as_user(
        &dana,
        &["review", &review, "--comment", "checked the session log"],
    )?
    .ok()?;
    gw.as_user(&olive, &glass)?.ok()?;

    // A leaver: served before the disable, refused after it.
    assert_eq!(
        psql(&gw, &carol, "orders-db", "read", "select 1")?
            .ok()?
            .stdout
            .trim(),
        "1"
    );
    gw.cli(&["users", "disable", "carol", "--reason", "left the company"])?
        .ok()?;
    let out = psql(&gw, &carol, "orders-db", "read", "select 1")?;
    assert!(!out.success(), "a disabled user is refused: {out}");

    // A policy reload (the same set, approved by a second person) and an access review in
    // which dana revokes bob's standing read access.
    gw.cli(&["policy", "reload", "--by", "alice", "--approved-by", "dana"])?
        .ok()?;
    // A second DBA, so that nobody reviews their own access.
    let erin = gw.engineer("erin", &["dba"])?;
    psql(&gw, &erin, "orders-db", "read", "select 1")?.ok()?;
    psql(&gw, &dana, "orders-db", "read", "select 1")?.ok()?;
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let out = gw.cli(&["users", "list"])?.ok()?.stdout;
        Ok((out.contains("erin") && out.contains("dana")).then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("erin and dana were not recorded"))?;
    gw.cli(&[
        "reviews",
        "start",
        "--scope",
        "resource=orders-db",
        "--reviewers",
        "group:dba",
    ])?
    .ok()?;
    let status = gw.cli(&["reviews", "status", "1"])?.ok()?;
    let row: Vec<String> = status
        .stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|f| {
            f.get(2).map(String::as_str) == Some("bob")
                && f.get(4).map(String::as_str) == Some("read")
        })
        .unwrap_or_default();
    let reviewer = if row.get(6).map(String::as_str) == Some("erin") {
        &erin
    } else {
        &dana
    };
    gw.as_user(
        reviewer,
        &[
            "reviews",
            "decide",
            &row[0],
            "--revoke",
            "--comment",
            "no longer on orders",
        ],
    )?
    .ok()?;
    let out = psql(&gw, &bob, "orders-db", "read", "select 1")?;
    assert!(
        !out.success() && out.stderr.contains("revoked by access review"),
        "{out}"
    );

    // Every session has its end event before the bundle is built.
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let ev = gw.audit_events()?;
        let n = |k: &str| ev.iter().filter(|e| e["kind"] == k).count();
        Ok((n("session.start") == n("session.end") && n("session.start") >= 6).then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the six sessions did not all end within 10 s"))?;

    let work = gatehouse_tests::util::temp_dir("evidence")?;
    let q = work.join("q4");
    let q_str = q.to_string_lossy().to_string();
    let today = &gatehouse_gateway::audit::event::now_ts()[..10];
    let out = gw
        .cli(&[
            "evidence",
            "bundle",
            "--from",
            today,
            "--out",
            &q_str,
            "--by",
            "auditor-ann",
        ])?
        .ok()?;
    assert!(out.stdout.contains("chain: intact"), "{out}");

    let c = checks(&q)?;
    let expect = [
        ("self_approvals", 0, "pass"),
        ("self_approval_attempts", 1, "info"),
        ("grants_without_approval", 0, "pass"),
        ("break_glass_unreviewed", 1, "exception"),
        ("standing_privileged_sessions", 0, "pass"),
        ("standing_privileged_permits", 0, "pass"),
        ("access_after_disable", 0, "pass"),
        ("grant_use_after_end", 0, "pass"),
        ("sessions_without_end", 0, "pass"),
        ("foreign_rows", 0, "pass"),
        ("agent_events_refused", 0, "pass"),
        ("chain", 0, "pass"),
        ("policy_changes_unapproved", 0, "pass"),
        ("review_items_overdue", 0, "pass"),
        ("review_revocations", 1, "info"),
    ];
    for (id, n, status) in expect {
        assert_eq!(
            c.get(id),
            Some(&(n, status.to_string())),
            "check {id}: {c:?}"
        );
    }
    assert!(out.stdout.contains("1 exceptions"), "{out}");

    // The registers hold the period.
    let ledger = csv_rows(&std::fs::read_to_string(q.join("jit-ledger.csv"))?);
    let col = |rows: &[Vec<String>], name: &str| {
        rows[0].iter().position(|h| h == name).unwrap_or(usize::MAX)
    };
    let (approvers, end, bg) = (
        col(&ledger, "approvers"),
        col(&ledger, "end"),
        col(&ledger, "break_glass"),
    );
    assert_eq!(ledger.len(), 4, "three requests and the header: {ledger:?}");
    let approved: Vec<&Vec<String>> = ledger
        .iter()
        .filter(|r| r.get(approvers).map(String::as_str) == Some("dana"))
        .collect();
    assert_eq!(approved.len(), 1, "{ledger:?}");
    assert_eq!(approved[0][end], "expired", "{ledger:?}");
    assert_eq!(
        ledger
            .iter()
            .filter(|r| r.get(bg).map(String::as_str) == Some("true"))
            .count(),
        2
    );
    let leavers = csv_rows(&std::fs::read_to_string(q.join("leavers.csv"))?);
    assert_eq!(leavers.len(), 2, "{leavers:?}");
    assert_eq!(leavers[1][0], "carol");
    assert_eq!(leavers[1][col(&leavers, "access_after_disable")], "0");
    let sessions = csv_rows(&std::fs::read_to_string(q.join("sessions.csv"))?);
    assert!(sessions.len() >= 7, "{sessions:?}");
    let rights = csv_rows(&std::fs::read_to_string(q.join("access-rights.csv"))?);
    let (user, res, role, through) = (
        col(&rights, "user"),
        col(&rights, "resource"),
        col(&rights, "role"),
        col(&rights, "through"),
    );
    assert!(
        rights.iter().any(|r| r[user] == "erin"
            && r[res] == "orders-db"
            && r[role] == "read"
            && r[through] == "standing policy"),
        "{rights:?}"
    );
    let access = col(&rights, "access");
    assert!(
        rights.iter().any(|r| r[user] == "bob"
            && r[res] == "orders-db"
            && r[role] == "read"
            && r[access] == "revoked"
            && r[through].starts_with("access review item")),
        "the review's revocation is in the register: {rights:?}"
    );
    assert!(
        !rights
            .iter()
            .any(|r| r[user] == "bob" && r[res] == "ledger-db"),
        "engineers reach no production resource outside a grant: {rights:?}"
    );

    // The SoA: the 93 controls of the reference data, in its order.
    let soa = csv_rows(&std::fs::read_to_string(q.join("soa.csv"))?);
    let reference: Vec<Vec<String>> = csv_rows(CONTROLS_CSV).into_iter().skip(1).collect();
    assert_eq!(soa.len(), 94);
    assert_eq!(reference.len(), 93);
    for (row, r) in soa.iter().skip(1).zip(&reference) {
        assert_eq!((&row[0], &row[1]), (&r[0], &r[1]));
    }
    let s53 = soa
        .iter()
        .find(|r| r[0] == "5.3")
        .cloned()
        .unwrap_or_default();
    assert_eq!(s53[3], "implements", "{s53:?}");
    assert!(
        s53[7].contains("no-self-approval") && s53[8].contains("request.approved"),
        "{s53:?}"
    );
    assert_eq!(
        soa.iter()
            .find(|r| r[0] == "7.1")
            .map(|r| r[3].clone())
            .as_deref(),
        Some("not served by the gateway")
    );

    // The report: every control page reachable from the index, the exception listed.
    let html = std::fs::read_to_string(q.join("report.html"))?;
    for id in ["5.3", "5.15", "5.18", "6.5", "8.2", "8.5", "8.15", "8.16"] {
        let a = format!("control-{}", id.replace('.', "-"));
        assert!(
            html.contains(&format!("href=\"#{a}\"")) && html.contains(&format!("id=\"{a}\"")),
            "{id}"
        );
    }
    assert!(html.contains("id=\"exceptions-break_glass_unreviewed\""));
    assert!(
        !html.contains("<script") && !html.contains("http://") && !html.contains("https://"),
        "self-contained, nothing fetched"
    );
    chromium_opens(&q.join("report.html"), &work.join("report.png"))?;

    // Offline verification with only the public key.
    let key = gw.cli(&["audit", "public-key"])?.ok()?.stdout;
    let key_file = work.join("audit.pub");
    std::fs::write(&key_file, key.trim())?;
    let key_arg = format!("@{}", key_file.display());
    let out =
        gatehouse_tests::gatehouse(&["evidence", "verify", &q_str, "--public-key", &key_arg])?
            .ok()?;
    assert!(out.stdout.contains("bundle intact"), "{out}");

    // Changed, removed, added: each fails, naming the file.
    for (what, file) in [
        ("changed", "report.html"),
        ("removed", "leavers.csv"),
        ("added", "notes.txt"),
        ("changed", "SHA256SUMS"),
    ] {
        let copy = work.join(format!("{what}-{file}"));
        copy_dir(&q, &copy)?;
        let path = copy.join(file);
        match what {
            "changed" => {
                let mut text = std::fs::read_to_string(&path)?;
                text = text.replacen('0', "1", 1);
                std::fs::write(&path, text)?;
            }
            "removed" => std::fs::remove_file(&path)?,
            _ => std::fs::write(&path, "an extra file")?,
        }
        let out = gatehouse_tests::gatehouse(&[
            "evidence",
            "verify",
            &copy.to_string_lossy(),
            "--public-key",
            &key_arg,
        ])?;
        assert_eq!(out.code(), Some(1), "{what} {file}: {out}");
        assert!(
            out.stdout.contains(&format!("FAILED: {file}:")),
            "{what} {file}: {out}"
        );
    }

    // Someone with write access to the store plants the leaver's access after the disable,
    // well chained but without the audit key's seal.
    let planted = plant_access_after_disable(&gw)?;
    let r2 = work.join("replanted");
    let out = gw.cli(&[
        "evidence",
        "bundle",
        "--from",
        today,
        "--out",
        &r2.to_string_lossy(),
    ])?;
    assert_eq!(out.code(), Some(1), "a broken chain fails the build: {out}");
    assert!(
        out.stdout
            .contains(&format!("BROKEN in the store: at seq {planted}")),
        "{out}"
    );
    let c = checks(&r2)?;
    assert_eq!(
        c.get("access_after_disable"),
        Some(&(1, "exception".to_string())),
        "{c:?}"
    );
    assert_eq!(c.get("chain"), Some(&(1, "exception".to_string())), "{c:?}");
    let out = gatehouse_tests::gatehouse(&[
        "evidence",
        "verify",
        &r2.to_string_lossy(),
        "--public-key",
        &key_arg,
    ])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("FAILED: bundle.json: the log did not verify"),
        "{out}"
    );
    Ok(())
}

/// Appends an allowed connection for the disabled carol at the head of the log, with the right
/// previous hash and a correct hash of its own, as a store writer without the key can; returns
/// its seq.
fn plant_access_after_disable(gw: &Gateway) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut forged = NewEvent::new(EventKind::AccessDecision);
    forged.actor = "carol".into();
    forged.resource = "orders-db".into();
    forged.action = "connect".into();
    forged.decision = "allow".into();
    forged.detail = serde_json::json!({ "role": "read" });
    let ts = gatehouse_gateway::audit::event::now_ts();
    Ok(rt.block_on(gw.append_unsealed_event(forged, &ts))?.seq)
}

/// Opens the report in headless Chromium: a screenshot is taken and the console stays quiet
/// (no error, nothing the page tried to load).
fn chromium_opens(report: &Path, png: &Path) -> anyhow::Result<()> {
    let bin = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| which(b))
        .ok_or_else(|| anyhow::anyhow!("no chromium on PATH: scripts/test installs it"))?;
    let profile = gatehouse_tests::util::temp_dir("chromium")?;
    let out = std::process::Command::new(bin)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,1600",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--screenshot={}", png.display()),
            &format!("file://{}", report.display()),
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "chromium failed: {stderr}");
    let size = std::fs::metadata(png).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "the screenshot is {size} bytes: {stderr}");
    let console: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("ERR_FILE_NOT_FOUND"))
        .collect();
    assert!(
        console.is_empty(),
        "the report wrote to the console: {console:?}"
    );
    Ok(())
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

/// The period as people live it: sign-ins through the real OpenID provider (one with a second
/// factor, one without), a connection MFA is required for and refused, a leaver whose sign-in
/// the provider no longer allows; the report's facts and checks count them.
#[test]
fn sign_ins_through_the_real_provider_are_counted_in_the_report() -> anyhow::Result<()> {
    use gatehouse_tests::oidc::{ALICE, ALICE_PASSWORD, DANA, DANA_PASSWORD};
    let sso = gatehouse_tests::sso::Sso::start()?;
    let alice = sso.cli_login(ALICE, ALICE_PASSWORD)?;
    assert!(alice.output.success(), "{}", alice.output);
    let dana = sso.cli_login(DANA, DANA_PASSWORD)?;
    assert!(dana.output.success(), "{}", dana.output);
    sso.cli(
        alice.home.path(),
        &["psql", "orders-db", "--", "-tAc", "select 1"],
    )?
    .ok()?;
    // vault-db is restricted: the default policies want MFA, which alice's sign-in lacks.
    let out = sso.cli(
        alice.home.path(),
        &["psql", "vault-db", "--", "-tAc", "select 1"],
    )?;
    assert!(
        !out.success() && out.stderr.contains("forbid-restricted-without-mfa"),
        "{out}"
    );
    sso.cli(
        dana.home.path(),
        &["psql", "vault-db", "--", "-tAc", "select 1"],
    )?
    .ok()?;
    // alice leaves: disabled at the gateway, her next connection is refused.
    sso.gw
        .cli(&["users", "disable", "alice", "--reason", "left"])?
        .ok()?;
    let out = sso.cli(
        alice.home.path(),
        &["psql", "orders-db", "--", "-tAc", "select 1"],
    )?;
    assert!(!out.success(), "{out}");
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let ev = sso.gw.audit_events()?;
        let n = |k: &str| ev.iter().filter(|e| e["kind"] == k).count();
        Ok((n("session.start") == n("session.end") && n("session.start") == 2).then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the two sessions did not end within 10 s"))?;

    let work = gatehouse_tests::util::temp_dir("evidence-sso")?;
    let q = work.join("q");
    let today = &gatehouse_gateway::audit::event::now_ts()[..10];
    sso.gw
        .cli(&[
            "evidence",
            "bundle",
            "--from",
            today,
            "--out",
            &q.to_string_lossy(),
        ])?
        .ok()?;
    let v: Value = serde_json::from_str(&std::fs::read_to_string(q.join("checks.json"))?)?;
    assert_eq!(v["facts"]["logins"], 2, "{v}");
    assert_eq!(v["facts"]["logins_mfa"], 1, "{v}");
    assert_eq!(
        v["facts"]["decisions_denied"].as_u64().map(|d| d >= 1),
        Some(true),
        "{v}"
    );
    let c = checks(&q)?;
    assert_eq!(
        c.get("access_after_disable"),
        Some(&(0, "pass".to_string())),
        "{c:?}"
    );
    let auth = csv_rows(&std::fs::read_to_string(q.join("authentication.csv"))?);
    let mfa = auth[0]
        .iter()
        .position(|h| h == "mfa")
        .unwrap_or(usize::MAX);
    let logins: Vec<(&str, &str)> = auth
        .iter()
        .skip(1)
        .filter(|r| r[2] == "login.succeeded")
        .map(|r| (r[3].as_str(), r[mfa].as_str()))
        .collect();
    assert_eq!(
        logins,
        vec![("alice", "false"), ("dana", "true")],
        "{auth:?}"
    );
    let html = std::fs::read_to_string(q.join("report.html"))?;
    assert!(
        html.contains("50.0 %"),
        "the MFA share of sign-ins is in the report"
    );
    let leavers = csv_rows(&std::fs::read_to_string(q.join("leavers.csv"))?);
    assert_eq!(
        leavers.get(1).map(|r| r[0].as_str()),
        Some("alice"),
        "{leavers:?}"
    );
    Ok(())
}
