//! Access review campaigns through the real gateway, PostgreSQL and psql: a campaign freezes
//! who can reach a resource (standing permits and grants) with its hash in the log, assigns no
//! one their own access, and a reviewer's "revoke" acts at the gateway: a grant ends, standing
//! access is refused from then on and its live session is cut. Decisions are once, by the
//! assigned reviewer only; overdue items are exceptions in the evidence bundle.

use std::time::Duration;

use gatehouse_tests::pg::{ORDERS_PASSWORD, ORDERS_USER, READONLY_PASSWORD, READONLY_USER};
use gatehouse_tests::util::poll;
use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Resource, TempDir};
use serde_json::Value;

const WRITE_PW_VAR: &str = "GATEHOUSE_TEST_ORDERS_WRITE_PW";

fn select(gw: &Gateway, home: &TempDir) -> anyhow::Result<gatehouse_tests::CmdOutput> {
    gw.as_user(home, &["psql", "orders-db", "--", "-tAc", "select 1"])
}

/// `reviews status` rows: item id, subject, role, access, reviewer, decision.
fn status(gw: &Gateway) -> anyhow::Result<Vec<Vec<String>>> {
    let out = gw.cli(&["reviews", "status"])?.ok()?;
    Ok(out
        .stdout
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .map(|f| {
            vec![
                f[0].clone(),
                f[2].clone(),
                f[4].clone(),
                f[5].clone(),
                f[6].clone(),
                f[7].clone(),
            ]
        })
        .collect())
}

/// `gatehouse reviews decide ITEM --keep|--revoke --comment COMMENT` as the reviewer whose
/// home is `home`.
fn decide(
    gw: &Gateway,
    home: &TempDir,
    item: &str,
    how: &str,
    comment: &str,
) -> anyhow::Result<gatehouse_tests::CmdOutput> {
    gw.as_user(
        home,
        &["reviews", "decide", item, how, "--comment", comment],
    )
}

fn item(rows: &[Vec<String>], subject: &str, role: &str, access: &str) -> Vec<String> {
    rows.iter()
        .find(|r| r[1] == subject && r[2] == role && r[3] == access)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_campaign_freezes_access_and_a_revoke_acts_at_the_gateway() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(
                Resource::orders_dev(&pg, "orders-db")
                    .credential(READONLY_USER, READONLY_PASSWORD)
                    .raw(
                        "roles",
                        &format!("{{ write = {{ username = \"{ORDERS_USER}\", password_env = \"{WRITE_PW_VAR}\" }} }}"),
                    ),
            )
            .env(WRITE_PW_VAR, ORDERS_PASSWORD),
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let carol = gw.engineer("carol", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let erin = gw.engineer("erin", &["dba"])?;
    for home in [&bob, &carol, &dana, &erin] {
        assert_eq!(select(&gw, home)?.ok()?.stdout.trim(), "1");
    }
    poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let out = gw.cli(&["users", "list"])?.ok()?;
        Ok(["bob", "carol", "dana", "erin"]
            .iter()
            .all(|u| out.stdout.contains(u))
            .then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the four users were not all recorded"))?;
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "orders-db",
                "--role",
                "write",
                "--for",
                "2h",
                "--reason",
                "CHG-5: migration",
            ],
        )?
        .ok()?;
    let req = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    gw.as_user(&dana, &["approve", &req])?.ok()?;

    // Nobody in a group that has not signed in can review.
    let out = gw.cli(&[
        "reviews",
        "start",
        "--scope",
        "resource=orders-db",
        "--reviewers",
        "group:auditors",
    ])?;
    assert!(
        !out.success() && out.stderr.contains("nobody in group `auditors`"),
        "{out}"
    );

    let out = gw
        .cli(&[
            "reviews",
            "start",
            "--scope",
            "resource=orders-db",
            "--reviewers",
            "group:dba",
            "--due",
            "14d",
            "--by",
            "ciso",
        ])?
        .ok()?;
    assert!(
        out.stdout.contains("campaign 1 on orders-db: 5 items"),
        "{out}"
    );
    let rows = status(&gw)?;
    assert_eq!(rows.len(), 5, "{rows:?}");
    for (subject, role, access) in [
        ("bob", "read", "standing"),
        ("carol", "read", "standing"),
        ("dana", "read", "standing"),
        ("erin", "read", "standing"),
        ("bob", "write", "grant"),
    ] {
        let r = item(&rows, subject, role, access);
        assert!(!r.is_empty(), "{subject} {role} {access} missing: {rows:?}");
        assert_ne!(r[4], subject, "nobody reviews their own access: {rows:?}");
        assert!(r[4] == "dana" || r[4] == "erin", "{rows:?}");
        assert_eq!(r[5], "open");
    }
    let started = gw.wait_for_event(
        |e| e["kind"] == "review.campaign_started",
        Duration::from_secs(5),
    )?;
    let ev = started
        .iter()
        .find(|e| e["kind"] == "review.campaign_started")
        .cloned()
        .unwrap_or_default();
    assert_eq!(ev["detail"]["items"], 5);
    assert_eq!(
        ev["detail"]["snapshot_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert_eq!(ev["actor"], "ciso");

    let reviewer_of = |subject: &str, role: &str, access: &str| -> (String, &TempDir) {
        let r = item(&rows, subject, role, access);
        let home = if r[4] == "dana" { &dana } else { &erin };
        (r[0].clone(), home)
    };
    let other = |home: &TempDir| {
        if std::ptr::eq(home, &dana) {
            &erin
        } else {
            &dana
        }
    };

    // carol holds a live session on her standing read access while it is revoked.
    let live = std::process::Command::new(gatehouse_tests::gatehouse_bin()?)
        .args(["psql", "orders-db", "--", "-tAc", "select pg_sleep(20)"])
        .env("GATEHOUSE_HOME", carol.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        let n = gw
            .audit_events()?
            .iter()
            .filter(|e| e["kind"] == "session.start" && e["actor"] == "carol")
            .count();
        Ok((n == 2).then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("carol's live session did not start"))?;

    let (carol_item, carol_reviewer) = reviewer_of("carol", "read", "standing");
    // Only the assigned reviewer decides.
    let out = decide(
        &gw,
        other(carol_reviewer),
        &carol_item,
        "--revoke",
        "not mine",
    )?;
    assert!(
        !out.success() && out.stderr.contains("is assigned to"),
        "{out}"
    );
    let out = gw.as_user(carol_reviewer, &["reviews", "items"])?.ok()?;
    assert!(out.stdout.contains("carol"), "{out}");
    let out = decide(
        &gw,
        carol_reviewer,
        &carol_item,
        "--revoke",
        "left the team",
    )?
    .ok()?;
    assert!(
        out.stdout.contains("revoke") && out.stdout.contains("1 live sessions cut"),
        "{out}"
    );
    let out = live.wait_with_output()?;
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("access review"),
        "{out:?}"
    );
    let out = select(&gw, &carol)?;
    assert!(
        !out.success() && out.stderr.contains("revoked by access review item"),
        "{out}"
    );
    // Once only.
    let out = decide(
        &gw,
        carol_reviewer,
        &carol_item,
        "--keep",
        "changed my mind",
    )?;
    assert!(
        !out.success() && out.stderr.contains("already decided"),
        "{out}"
    );

    // Revoking the grant ends it; keeping bob's read leaves it.
    let (grant_item, grant_reviewer) = reviewer_of("bob", "write", "grant");
    decide(
        &gw,
        grant_reviewer,
        &grant_item,
        "--revoke",
        "migration done",
    )?
    .ok()?;
    let out = gw.as_user(
        &bob,
        &[
            "psql",
            "orders-db",
            "--role",
            "write",
            "--",
            "-tAc",
            "select 1",
        ],
    )?;
    assert!(
        !out.success() && out.stderr.contains("denied by policy"),
        "{out}"
    );
    let (read_item, read_reviewer) = reviewer_of("bob", "read", "standing");
    decide(&gw, read_reviewer, &read_item, "--keep", "on the team")?.ok()?;
    assert_eq!(select(&gw, &bob)?.ok()?.stdout.trim(), "1");
    let decisions: Vec<Value> = gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == "review.decision")
        .collect();
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    assert!(gw
        .audit_events()?
        .iter()
        .any(|e| e["kind"] == "grant.revoked"
            && e["reason"].as_str().unwrap_or("").contains("access review")));

    // A second campaign already past due: its open items are exceptions in the bundle.
    gw.cli(&[
        "reviews",
        "start",
        "--scope",
        "resource=orders-db",
        "--reviewers",
        "group:dba",
        "--due",
        "1s",
    ])?
    .ok()?;
    poll(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok(gw
            .cli(&["reviews", "status", "2"])?
            .ok()?
            .stdout
            .contains("OVERDUE")
            .then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("campaign 2 never became overdue"))?;
    let work = gatehouse_tests::util::temp_dir("bundle")?;
    let q = work.join("b");
    let today = &gatehouse_gateway::audit::event::now_ts()[..10];
    gw.cli(&[
        "evidence",
        "bundle",
        "--from",
        today,
        "--out",
        &q.to_string_lossy(),
    ])?
    .ok()?;
    let checks: Value = serde_json::from_str(&std::fs::read_to_string(q.join("checks.json"))?)?;
    let count = |id: &str| {
        checks["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .and_then(|c| c["count"].as_u64())
    };
    let second = gw
        .cli(&["reviews", "status", "2"])?
        .ok()?
        .stdout
        .lines()
        .count() as u64
        - 1;
    assert!(second >= 3, "campaign 2 has items");
    assert_eq!(count("review_items_overdue"), Some(second), "{checks}");
    assert_eq!(count("review_revocations"), Some(2), "{checks}");
    let campaigns = std::fs::read_to_string(q.join("campaigns.csv"))?;
    assert_eq!(
        campaigns.lines().count() as u64,
        1 + 5 + second,
        "{campaigns}"
    );
    Ok(())
}
