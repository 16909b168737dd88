//! The auditor's read-only API through the real gateway: reading the log is a Cedar decision
//! (group `auditors` by default, nobody else), every read, allowed or refused, is an
//! `audit.read` event, filters and the cursor return each matching event exactly once, and
//! `gatehouse audit events` does it for a signed-in auditor without access to the store.

use std::collections::BTreeSet;

use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Resource};
use serde_json::Value;

fn client(gw: &Gateway) -> anyhow::Result<reqwest::blocking::Client> {
    let pem = std::fs::read(gw.tls_cert())?;
    Ok(reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?)
}

fn get(gw: &Gateway, token: &str, query: &str) -> anyhow::Result<(u16, Value)> {
    let url = format!("{}/api/v1/audit/events?{query}", gw.https_url()?);
    let resp = client(gw)?.get(url).bearer_auth(token).send()?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().unwrap_or(Value::Null)))
}

#[test]
fn auditors_read_the_log_page_by_page_and_every_read_is_recorded() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let olga = gw.engineer("olga", &["auditors"])?;
    gw.as_user(&bob, &["psql", "orders-db", "--", "-tAc", "select 1"])?
        .ok()?;
    let bob_token = gw.person_token("bob", &["engineering"])?;
    let olga_token = gw.person_token("olga", &["auditors"])?;

    // An engineer may not read the log; the refusal is on record.
    let (status, body) = get(&gw, &bob_token, "limit=10")?;
    assert_eq!(status, 403, "{body}");
    assert!(body.to_string().contains("not permitted"), "{body}");
    let out = gw.as_user(&bob, &["audit", "events"])?;
    assert!(
        !out.success() && out.stderr.contains("not permitted"),
        "{out}"
    );
    let denied: Vec<Value> = gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == "audit.read" && e["actor"] == "bob")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert!(denied.iter().all(|e| e["decision"] == "deny"));

    // Page by page, two at a time: every event once, in order.
    let total = gw.audit_events()?.len() as u64;
    let mut seen = Vec::new();
    let mut after = 0u64;
    let mut pages = 0;
    loop {
        let (status, body) = get(&gw, &olga_token, &format!("limit=2&after={after}"))?;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for e in body["events"].as_array().into_iter().flatten() {
            seen.push(e["seq"].as_u64().unwrap_or(0));
        }
        match body["next"].as_u64() {
            Some(n) => after = n,
            None => break,
        }
        assert!(pages < 500, "the cursor does not end");
    }
    let unique: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event came twice: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        seen.len() as u64 >= total && seen.first() == Some(&1),
        "{} of {total}",
        seen.len()
    );

    // Filters: by kind, and by Annex A control.
    let (_, body) = get(&gw, &olga_token, "kind=access.decision")?;
    let decisions = body["events"].as_array().cloned().unwrap_or_default();
    assert!(
        !decisions.is_empty() && decisions.iter().all(|e| e["kind"] == "access.decision"),
        "{body}"
    );
    let (_, body) = get(&gw, &olga_token, "control=8.17")?;
    let clock = body["events"].as_array().cloned().unwrap_or_default();
    assert!(!clock.is_empty(), "gateway.start is 8.17 evidence");
    assert!(
        clock.iter().all(|e| e["controls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "8.17"))),
        "{body}"
    );
    let (status, _) = get(&gw, &olga_token, "colour=blue")?;
    assert_eq!(status, 400);

    // Every allowed read is recorded with what it returned.
    let reads: Vec<Value> = gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == "audit.read" && e["actor"] == "olga")
        .collect();
    assert_eq!(reads.len(), pages + 2, "{reads:?}");
    let returned: u64 = reads
        .iter()
        .take(pages)
        .filter_map(|e| e["detail"]["returned"].as_u64())
        .sum();
    assert_eq!(returned, seen.len() as u64);
    assert!(reads.iter().all(|e| e["decision"] == "allow"
        && e["policy_ids"] == serde_json::json!(["auditors-read-audit"])));

    // The auditor's command: JSON lines, filtered.
    let out = gw
        .as_user(
            &olga,
            &[
                "audit",
                "events",
                "--kind",
                "session.start",
                "--actor",
                "bob",
            ],
        )?
        .ok()?;
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["resource"], "orders-db");

    // The evidence bundle, downloaded by the auditor and verified offline; not by an engineer.
    let today = &gatehouse_gateway::audit::event::now_ts()[..10];
    let work = gatehouse_tests::util::temp_dir("download")?;
    let out = gw.as_user(
        &bob,
        &[
            "evidence",
            "download",
            "--from",
            today,
            "--out",
            &work.join("bob").to_string_lossy(),
        ],
    )?;
    assert!(
        !out.success() && out.stderr.contains("not permitted"),
        "{out}"
    );
    let q = work.join("q");
    let out = gw
        .as_user(
            &olga,
            &[
                "evidence",
                "download",
                "--from",
                today,
                "--out",
                &q.to_string_lossy(),
            ],
        )?
        .ok()?;
    assert!(out.stdout.contains("files from"), "{out}");
    let key = gw.cli(&["audit", "public-key"])?.ok()?.stdout;
    std::fs::write(work.join("audit.pub"), key.trim())?;
    let out = gatehouse_tests::gatehouse(&[
        "evidence",
        "verify",
        &q.to_string_lossy(),
        "--public-key",
        &format!("@{}", work.join("audit.pub").display()),
    ])?
    .ok()?;
    assert!(out.stdout.contains("bundle intact"), "{out}");
    let events = gw.audit_events()?;
    assert!(events.iter().any(|e| e["kind"] == "evidence.bundle"
        && e["actor"] == "olga"
        && e["detail"]["via"] == "api"));
    assert!(events.iter().any(|e| e["kind"] == "audit.read"
        && e["actor"] == "bob"
        && e["action"] == "bundle"
        && e["decision"] == "deny"));
    Ok(())
}
