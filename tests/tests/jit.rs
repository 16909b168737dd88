//! Just-in-time access end to end, with the real PostgreSQL and psql through the `gatehouse`
//! CLI: request, N-of-M approval, the write role's own brokered account, expiry and revocation
//! cutting live sessions, break-glass with its review item, races, refusals, the webhook.

use std::time::{Duration, Instant};

use gatehouse_tests::pg::{ORDERS_PASSWORD, ORDERS_USER, READONLY_PASSWORD, READONLY_USER};
use gatehouse_tests::webhook::WebhookReceiver;
use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Resource, TempDir};
use serde_json::Value;

const WRITE_PW_VAR: &str = "GATEHOUSE_TEST_ORDERS_WRITE_PW";

/// A resource whose `read` role is a read-only account and whose `write` role is the owner.
fn resource(pg: &PgServer, name: &str, env: &str) -> Resource {
    Resource::orders_db(pg, name)
        .labels(&[("env", env), ("data_class", "internal")])
        .credential(READONLY_USER, READONLY_PASSWORD)
        .raw(
            "roles",
            &format!("{{ write = {{ username = \"{ORDERS_USER}\", password_env = \"{WRITE_PW_VAR}\" }} }}"),
        )
}

fn gateway(
    pg: &PgServer,
    webhook: Option<&str>,
    extra: &[(&str, &str)],
) -> anyhow::Result<Gateway> {
    let mut cfg = GatewayConfig::new()
        .resource(resource(pg, "orders-db", "dev"))
        .resource(resource(pg, "ledger-db", "prod"))
        .env(WRITE_PW_VAR, ORDERS_PASSWORD);
    if let Some(url) = webhook {
        cfg = cfg.set("access", "webhook_url", &format!("\"{url}\""));
    }
    for (k, v) in extra {
        cfg = cfg.set("access", k, v);
    }
    Gateway::start(cfg)
}

/// Runs `sql` on the gateway's store; every column as text (`""` for NULL).
fn query(gw: &Gateway, sql: &str) -> anyhow::Result<Vec<Vec<String>>> {
    use sqlx::Row;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut conn = gw.store_connection().await?;
        let rows = sqlx::query(sql).fetch_all(&mut conn).await?;
        rows.iter()
            .map(|r| {
                (0..r.columns().len())
                    .map(|i| {
                        if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                            return Ok(v.map(|v| v.to_string()).unwrap_or_default());
                        }
                        Ok(r.try_get::<Option<String>, _>(i)?.unwrap_or_default())
                    })
                    .collect::<anyhow::Result<Vec<String>>>()
            })
            .collect()
    })
}

fn events(gw: &Gateway, kind: &str) -> anyhow::Result<Vec<Value>> {
    Ok(gw
        .settled_export()?
        .into_iter()
        .filter(|e| e["type"] == "event" && e["kind"] == kind)
        .collect())
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

/// The id printed as `request N created`.
fn request_id(out: &gatehouse_tests::CmdOutput) -> anyhow::Result<i64> {
    out.stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no request id in {out}"))
}

#[test]
fn request_approve_write_then_expiry_cuts_the_session_and_refuses_new_ones() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let hook = WebhookReceiver::start()?;
    let gw = gateway(&pg, Some(hook.url()), &[])?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let insert = "insert into orders (customer, amount) values ('jit', 1) returning 'inserted'";

    // No standing write access; the read role is a read-only account.
    let out = psql(&gw, &bob, "orders-db", "write", insert)?;
    assert!(
        !out.success() && out.stderr.contains("denied by policy"),
        "{out}"
    );
    let out = psql(&gw, &bob, "orders-db", "read", insert)?;
    assert!(
        out.stderr.contains("permission denied for table orders"),
        "{out}"
    );
    let out = gw.as_user(&bob, &["resources"])?.ok()?;
    assert!(
        out.stdout.contains("orders-db") && out.stdout.contains("write"),
        "{out}"
    );

    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "orders-db",
                "--role",
                "write",
                "--for",
                "4s",
                "--reason",
                "INC-4211: fix stuck orders",
            ],
        )?
        .ok()?;
    let id = request_id(&out)?;
    let out = gw.as_user(&bob, &["requests"])?.ok()?;
    assert!(out.stdout.contains("pending"), "{out}");
    // Nobody approves their own request.
    let out = gw.as_user(&bob, &["approve", &id.to_string()])?;
    assert!(
        !out.success() && out.stderr.contains("own request"),
        "{out}"
    );
    let out = gw.as_user(&dana, &["requests", "--pending"])?.ok()?;
    assert!(out.stdout.contains("INC-4211"), "{out}");
    let out = gw
        .as_user(
            &dana,
            &[
                "approve",
                &id.to_string(),
                "--comment",
                "ok for the incident",
            ],
        )?
        .ok()?;
    assert!(out.stdout.contains("approved"), "{out}");

    let out = psql(&gw, &bob, "orders-db", "write", insert)?.ok()?;
    assert!(out.stdout.starts_with("inserted"), "{out}");
    // A live session under the grant is cut when it expires.
    let session = std::process::Command::new(gatehouse_tests::gatehouse_bin()?)
        .args([
            "psql",
            "orders-db",
            "--role",
            "write",
            "--",
            "-c",
            "select pg_sleep(30)",
        ])
        .env("GATEHOUSE_HOME", bob.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let out = session.wait_with_output()?;
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("access expired: grant"), "{stderr}");
    assert_eq!(events(&gw, "grant.start")?.len(), 1);
    let rows = query(&gw, "SELECT expires_unix FROM grants")?;
    let expires_unix = rows[0][0].parse::<f64>()?;
    assert!(
        ended - expires_unix <= 1.0,
        "session ended {:.3}s after the grant expired",
        ended - expires_unix
    );
    let out = psql(&gw, &bob, "orders-db", "write", "select 1")?;
    assert!(out.stderr.contains("denied by policy"), "{out}");

    // The evidence: request (with the ticket's 8.32), refusal, approval, grant start and end, cut.
    let created = events(&gw, "request.created")?;
    assert!(
        created[0]["controls"].to_string().contains("8.32"),
        "{created:?}"
    );
    let refused = events(&gw, "request.refused")?;
    assert!(refused
        .iter()
        .any(|e| e["reason"].as_str().unwrap_or("").contains("own request")));
    assert!(refused[0]["controls"].to_string().contains("5.3"));
    assert_eq!(events(&gw, "request.approved")?.len(), 1);
    assert!(events(&gw, "session.cut")?
        .iter()
        .any(|e| e["actor"] == "bob"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while events(&gw, "grant.end")?.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(events(&gw, "grant.end")?.len(), 1);
    hook.wait_for("request.created", Duration::from_secs(5))?;
    let start = hook.wait_for("grant.start", Duration::from_secs(5))?;
    assert!(
        start["text"].as_str().unwrap_or("").contains("bob"),
        "{start}"
    );
    hook.wait_for("grant.end", Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn two_approvals_on_prod_each_person_once_and_only_approvers() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[])?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let eve = gw.engineer("eve", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let dave = gw.engineer("dave", &["dba"])?;
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "ledger-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "month end",
            ],
        )?
        .ok()?;
    let id = request_id(&out)?.to_string();
    // Prod allows at most 4h.
    let out = gw.as_user(
        &bob,
        &[
            "request",
            "ledger-db",
            "--role",
            "write",
            "--for",
            "8h",
            "--reason",
            "too long",
        ],
    )?;
    assert!(!out.success() && out.stderr.contains("at most 4h"), "{out}");

    let out = gw.as_user(&dana, &["approve", &id])?.ok()?;
    assert!(out.stdout.contains("1 of 2"), "{out}");
    let q = "select 1";
    assert!(
        psql(&gw, &bob, "ledger-db", "write", q)?
            .stderr
            .contains("denied"),
        "one approval is not enough"
    );
    let out = gw.as_user(&dana, &["approve", &id])?;
    assert!(
        !out.success() && out.stderr.contains("counts once"),
        "{out}"
    );
    let out = gw.as_user(&eve, &["approve", &id])?;
    assert!(
        !out.success() && out.stderr.contains("policy does not let eve approve"),
        "{out}"
    );
    let out = gw.as_user(&dave, &["approve", &id])?.ok()?;
    assert!(out.stdout.contains("approved"), "{out}");
    assert_eq!(
        psql(&gw, &bob, "ledger-db", "write", q)?
            .ok()?
            .stdout
            .trim(),
        "1"
    );

    let refused = events(&gw, "request.refused")?;
    let reasons: Vec<&str> = refused
        .iter()
        .map(|e| e["reason"].as_str().unwrap_or(""))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("counts once")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("policy does not let eve")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("at most 4h")),
        "{reasons:?}"
    );
    assert_eq!(events(&gw, "request.approved")?.len(), 2);
    Ok(())
}

#[test]
fn revoke_cuts_a_live_session_within_a_second() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[])?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    // bob has signed in before (a direct grant is for someone the gateway knows the groups of).
    psql(&gw, &bob, "orders-db", "read", "select 1")?.ok()?;
    let out = gw
        .as_user(
            &dana,
            &[
                "grant",
                "bob",
                "orders-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "CHG-77 migration",
            ],
        )?
        .ok()?;
    let grant = out
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let session = std::process::Command::new(gatehouse_tests::gatehouse_bin()?)
        .args([
            "psql",
            "orders-db",
            "--role",
            "write",
            "--",
            "-c",
            "select pg_sleep(30)",
        ])
        .env("GATEHOUSE_HOME", bob.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // The session is live (its query runs upstream) before the revocation.
    pg.wait_for_active_query("select pg_sleep(30)", 1, Duration::from_secs(30))?;
    // The grantee cannot be granted by themselves, and others without the right cannot revoke.
    let out = gw.as_user(
        &bob,
        &[
            "grant",
            "bob",
            "orders-db",
            "--role",
            "write",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
    )?;
    assert!(!out.success(), "{out}");
    let out = gw
        .as_user(&dana, &["revoke", &grant, "--reason", "done early"])?
        .ok()?;
    let revoked_at = Instant::now();
    assert!(out.stdout.contains("1 live session(s) cut"), "{out}");
    let out = session.wait_with_output()?;
    assert!(
        revoked_at.elapsed() <= Duration::from_secs(1),
        "cut after {:?}",
        revoked_at.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("revoked by dana: done early"), "{stderr}");
    let out = psql(&gw, &bob, "orders-db", "write", "select 1")?;
    assert!(out.stderr.contains("denied by policy"), "{out}");
    // Revoking twice: the second is refused.
    let out = gw.as_user(&dana, &["revoke", &grant])?;
    assert!(
        !out.success() && out.stderr.contains("already ended"),
        "{out}"
    );
    assert_eq!(events(&gw, "grant.revoked")?.len(), 1);
    let start = events(&gw, "grant.start")?;
    assert!(
        start[0]["controls"].to_string().contains("5.3"),
        "a direct grant is evidence like an approval"
    );
    Ok(())
}

#[test]
fn racing_approvals_denials_and_revocations_leave_one_outcome() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[("requests_per_hour", "100")])?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let approvers: Vec<TempDir> = ["dana", "dave", "dora"]
        .iter()
        .map(|u| gw.engineer(u, &["dba"]))
        .collect::<anyhow::Result<_>>()?;

    // Three approvers race on a 2-of-M request: exactly one grant.
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "ledger-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "race",
            ],
        )?
        .ok()?;
    let id = request_id(&out)?.to_string();
    std::thread::scope(|s| {
        for home in &approvers {
            let (gw, id) = (&gw, &id);
            s.spawn(move || gw.as_user(home, &["approve", id]));
        }
    });
    // Approve and deny race on fresh 1-of-M requests.
    let mut raced = Vec::new();
    for i in 0..6 {
        let out = gw
            .as_user(
                &bob,
                &[
                    "request",
                    "orders-db",
                    "--role",
                    "write",
                    "--for",
                    "1h",
                    "--reason",
                    &format!("race {i}"),
                ],
            )?
            .ok()?;
        let id = request_id(&out)?.to_string();
        std::thread::scope(|s| {
            let (gw, id) = (&gw, &id);
            let (a, b) = (&approvers[0], &approvers[1]);
            s.spawn(move || gw.as_user(a, &["approve", id]));
            s.spawn(move || gw.as_user(b, &["deny", id]));
        });
        raced.push(id);
    }
    let rows = query(
        &gw,
        "SELECT id, state, grant_id FROM access_requests ORDER BY id",
    )?;
    let grants = query(
        &gw,
        "SELECT id, request_id, revoked_at FROM grants ORDER BY id",
    )?;
    let first: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == id).collect();
    assert_eq!(first[0][1], "approved");
    assert_eq!(
        grants.iter().filter(|g| g[1] == id).count(),
        1,
        "one grant for the 2-of-M request: {grants:?}"
    );
    for r in rows.iter().filter(|r| raced.contains(&r[0])) {
        let n = grants.iter().filter(|g| g[1] == r[0]).count();
        match r[1].as_str() {
            "approved" => assert!(n == 1 && !r[2].is_empty(), "{r:?} {grants:?}"),
            "denied" => assert!(n == 0 && r[2].is_empty(), "{r:?} {grants:?}"),
            other => anyhow::bail!("request {} left {other}", r[0]),
        }
    }
    // Two admins race to revoke the same grant: one wins, the other is told it ended.
    let g = grants
        .iter()
        .find(|g| g[1] == id)
        .map(|g| g[0].clone())
        .unwrap_or_default();
    let outs: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = approvers[..2]
            .iter()
            .map(|home| {
                let (gw, g) = (&gw, &g);
                s.spawn(move || {
                    gw.as_user(home, &["revoke", g])
                        .map(|o| o.success())
                        .unwrap_or(false)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    });
    assert_eq!(outs.iter().filter(|ok| **ok).count(), 1, "{outs:?}");
    Ok(())
}

#[test]
fn break_glass_only_where_policy_allows_and_always_leaves_a_review() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let hook = WebhookReceiver::start()?;
    let gw = gateway(&pg, Some(hook.url()), &[])?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let olive = gw.engineer("olive", &["oncall"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let args = [
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
    let out = gw.as_user(&bob, &args)?;
    assert!(
        !out.success() && out.stderr.contains("policy does not let bob break_glass"),
        "{out}"
    );
    let out = gw.as_user(&olive, &args)?.ok()?;
    assert!(out.stdout.contains("BREAK-GLASS"), "{out}");
    assert_eq!(
        psql(&gw, &olive, "ledger-db", "write", "select 7")?
            .ok()?
            .stdout
            .trim(),
        "7"
    );
    let out = gw.as_user(&olive, &["review"])?.ok()?;
    assert!(
        out.stdout.contains("OPEN") && out.stdout.contains("olive"),
        "{out}"
    );
    let review = out
        .stdout
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    let out = gw.as_user(&olive, &["review", &review, "--comment", "fine"])?;
    assert!(!out.success() && out.stderr.contains("their own"), "{out}");
    gw.as_user(
        &dana,
        &["review", &review, "--comment", "checked the session log"],
    )?
    .ok()?;
    let out = gw.as_user(&dana, &["review"])?.ok()?;
    assert!(!out.stdout.contains("OPEN"), "{out}");
    assert_eq!(events(&gw, "breakglass.used")?.len(), 1);
    assert_eq!(events(&gw, "review.opened")?.len(), 1);
    assert_eq!(events(&gw, "review.signed")?.len(), 1);
    let bg = hook.wait_for("breakglass.used", Duration::from_secs(5))?;
    assert!(
        bg["text"].as_str().unwrap_or("").contains("BREAK-GLASS"),
        "{bg}"
    );
    Ok(())
}

#[test]
fn a_dead_webhook_never_blocks_and_inputs_are_bounded() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let hook = WebhookReceiver::dead()?;
    let gw = gateway(
        &pg,
        Some(hook.url()),
        &[("requests_per_hour", "3"), ("webhook_timeout", "\"10s\"")],
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let started = Instant::now();
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "orders-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "webhook is down",
            ],
        )?
        .ok()?;
    let id = request_id(&out)?.to_string();
    gw.as_user(&dana, &["approve", &id])?.ok()?;
    assert_eq!(
        psql(&gw, &bob, "orders-db", "write", "select 5")?
            .ok()?
            .stdout
            .trim(),
        "5"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    // Bounded inputs, each refusal audited.
    let long = "x".repeat(2000);
    let out = gw.as_user(
        &bob,
        &[
            "request",
            "orders-db",
            "--role",
            "write",
            "--for",
            "1h",
            "--reason",
            &long,
        ],
    )?;
    assert!(
        !out.success() && out.stderr.contains("limited to 1024 bytes"),
        "{out}"
    );
    let out = gw.as_user(
        &bob,
        &[
            "request",
            "orders-db",
            "--role",
            "admin",
            "--for",
            "1h",
            "--reason",
            "x",
        ],
    )?;
    assert!(
        !out.success() && out.stderr.contains("no role `admin`"),
        "{out}"
    );
    let out = gw.as_user(
        &bob,
        &[
            "request",
            "orders-db",
            "--role",
            "write",
            "--for",
            "30d",
            "--reason",
            "x",
        ],
    )?;
    assert!(!out.success() && out.stderr.contains("duration"), "{out}");
    // Three requests an hour: the first above counted, two more are allowed, then 429.
    for i in 0..2 {
        gw.as_user(
            &bob,
            &[
                "request",
                "orders-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                &format!("r{i}"),
            ],
        )?
        .ok()?;
    }
    let out = gw.as_user(
        &bob,
        &[
            "request",
            "orders-db",
            "--role",
            "write",
            "--for",
            "1h",
            "--reason",
            "one too many",
        ],
    )?;
    assert!(
        !out.success() && out.stderr.contains("requests in the last hour"),
        "{out}"
    );
    let refused = events(&gw, "request.refused")?;
    assert!(refused.len() >= 4, "{refused:?}");
    Ok(())
}

#[test]
fn the_openapi_document_describes_paths_that_exist() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[])?;
    let browser = gatehouse_tests::Browser::with_root_ca(gw.tls_cert())?;
    let base = gw.https_url()?;
    let doc: Value = browser
        .client()
        .get(format!("{base}/api/v1/openapi.json"))
        .send()?
        .json()?;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"]
        .as_object()
        .map(|p| p.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    assert!(paths.len() >= 15, "{paths:?}");
    for path in paths {
        let concrete = path.replace("{id}", "1");
        for method in ["get", "post"] {
            if doc["paths"][&path].get(method).is_none() {
                continue;
            }
            let url = format!("{base}{concrete}");
            let resp = if method == "get" {
                browser.client().get(&url).send()?
            } else {
                browser
                    .client()
                    .post(&url)
                    .json(&serde_json::json!({}))
                    .send()?
            };
            let status = resp.status().as_u16();
            let body = resp.text()?;
            // 404 from a handler (e.g. SSO not configured here) is fine; the router's own 404
            // ("no such endpoint") and 405 are not.
            assert!(
                !body.contains("no such endpoint") && status != 405,
                "{method} {path} is documented but not routed: {status} {body}"
            );
        }
    }
    Ok(())
}

#[test]
fn requests_grants_revocation_and_reviews_on_a_postgres_store() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let store = PgServer::start()?;
    let url = store.create_database("gatehouse")?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .store_url(&url)
            .resource(resource(&pg, "orders-db", "dev"))
            .resource(resource(&pg, "ledger-db", "prod"))
            .env(WRITE_PW_VAR, ORDERS_PASSWORD),
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    let dave = gw.engineer("dave", &["dba"])?;
    let olive = gw.engineer("olive", &["oncall"])?;
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "ledger-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "INC-1 on pg",
            ],
        )?
        .ok()?;
    let id = request_id(&out)?.to_string();
    // Racing approvals on PostgreSQL (row locks): one grant.
    std::thread::scope(|s| {
        for home in [&dana, &dave] {
            let (gw, id) = (&gw, &id);
            s.spawn(move || gw.as_user(home, &["approve", id]));
        }
    });
    let out = gw.as_user(&dana, &["approve", &id])?;
    assert!(!out.success(), "{out}");
    assert_eq!(
        psql(&gw, &bob, "ledger-db", "write", "select 11")?
            .ok()?
            .stdout
            .trim(),
        "11"
    );
    let grants = query(&gw, "SELECT id FROM grants")?;
    assert_eq!(grants.len(), 1, "{grants:?}");
    let out = gw
        .as_user(&dana, &["revoke", &grants[0][0], "--reason", "pg"])?
        .ok()?;
    assert!(out.stdout.contains("revoked"), "{out}");
    assert!(psql(&gw, &bob, "ledger-db", "write", "select 1")?
        .stderr
        .contains("denied"));
    gw.as_user(
        &olive,
        &[
            "request",
            "ledger-db",
            "--role",
            "write",
            "--for",
            "10m",
            "--reason",
            "INC-2",
            "--break-glass",
        ],
    )?
    .ok()?;
    let out = gw.as_user(&dana, &["review"])?.ok()?;
    assert!(out.stdout.contains("OPEN"), "{out}");
    let out = gw.audit_verify()?;
    assert!(out.success(), "{out}");
    Ok(())
}

#[test]
fn a_direct_grant_gives_no_more_than_a_request_and_two_people_cannot_grant_each_other(
) -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[])?;
    let alice = gw.engineer("alice", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba", "engineering"])?;
    let erin = gw.engineer("erin", &["dba", "engineering"])?;
    for home in [&alice, &dana, &erin] {
        psql(&gw, home, "orders-db", "read", "select 1")?.ok()?;
    }
    let grant = |by: &TempDir, user: &str, resource: &str, ttl: &str| {
        gw.as_user(
            by,
            &[
                "grant", user, resource, "--role", "write", "--for", ttl, "--reason", "CHG-9",
            ],
        )
    };
    // Production write needs two approvals (engineering-request-prod): one DBA cannot grant it.
    let out = grant(&dana, "alice", "ledger-db", "1h")?;
    assert!(
        !out.success() && out.stderr.contains("needs 2 approvals"),
        "{out}"
    );
    // Nor for longer than policy allows (the approve policy's 8 h bound answers first).
    let out = grant(&dana, "alice", "orders-db", "9h")?;
    assert!(
        !out.success() && out.stderr.contains("policy does not let dana grant"),
        "{out}"
    );
    // Someone the gateway has never seen sign in has no groups a request could be judged by.
    let out = grant(&dana, "nobody-yet", "orders-db", "1h")?;
    assert!(
        !out.success() && out.stderr.contains("nobody-yet could not request"),
        "{out}"
    );
    // Within policy: granted.
    grant(&dana, "alice", "orders-db", "1h")?.ok()?;
    // Two DBAs granting each other: the second needs a third person.
    grant(&dana, "erin", "orders-db", "1h")?.ok()?;
    let out = grant(&erin, "dana", "orders-db", "1h")?;
    assert!(
        !out.success() && out.stderr.contains("needs a third person"),
        "{out}"
    );
    let refused = events(&gw, "request.refused")?;
    assert!(
        refused.iter().filter(|e| e["action"] == "grant").count() >= 4,
        "each refusal is in the log: {refused:#?}"
    );
    assert_eq!(events(&gw, "grant.start")?.len(), 2);
    Ok(())
}

#[test]
fn requests_grants_and_reasons_are_shown_only_to_their_subject_and_approvers() -> anyhow::Result<()>
{
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[])?;
    let alice = gw.engineer("alice", &["engineering"])?;
    let carol = gw.engineer("carol", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    psql(&gw, &alice, "orders-db", "read", "select 1")?.ok()?;
    let secret_reason = "INC-77: payroll anomaly under investigation";
    let out = gw
        .as_user(
            &alice,
            &[
                "request",
                "ledger-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                secret_reason,
            ],
        )?
        .ok()?;
    request_id(&out)?;
    // The requester and an approver see the request and its reason; another engineer does not.
    let pending = |home: &TempDir| gw.as_user(home, &["requests", "--pending"]);
    assert!(pending(&dana)?.ok()?.stdout.contains(secret_reason));
    let seen_by_carol = pending(&carol)?.ok()?;
    assert!(
        !seen_by_carol.stdout.contains(secret_reason)
            && !seen_by_carol.stdout.contains("ledger-db"),
        "{seen_by_carol}"
    );
    assert!(gw
        .as_user(&alice, &["requests"])?
        .ok()?
        .stdout
        .contains(secret_reason));
    // Grants likewise.
    gw.as_user(
        &dana,
        &[
            "grant",
            "alice",
            "orders-db",
            "--role",
            "write",
            "--for",
            "1h",
            "--reason",
            "CHG-12 quiet fix",
        ],
    )?
    .ok()?;
    // The listing shows the grant as `id user resource ...`: dana granted it, alice holds it.
    let shows_it = |home: &TempDir| -> anyhow::Result<bool> {
        let out = gw.as_user(home, &["grants"])?.ok()?;
        Ok(out
            .stdout
            .lines()
            .any(|l| l.contains("alice") && l.contains("orders-db") && l.contains("dana")))
    };
    assert!(shows_it(&dana)?, "the approver sees the grant");
    assert!(shows_it(&alice)?, "its holder sees the grant");
    assert!(!shows_it(&carol)?, "another engineer does not");
    Ok(())
}

#[test]
fn a_service_token_does_not_supply_an_approval() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg, None, &[])?;
    let bob = gw.engineer("bob", &["engineering"])?;
    let dana = gw.engineer("dana", &["dba"])?;
    // A service account in the approvers' group, its issued token saved like a login (what a
    // person holding it would do to add a second approval).
    let bot = gatehouse_tests::temp_dir("home-ci-bot")?;
    let token = gw.token("ci-bot", &["dba"], "1h")?;
    std::fs::write(
        bot.join("credentials.json"),
        serde_json::json!({
            "gateway": gw.https_url()?, "ca_file": gw.tls_cert(), "credential": token,
            "user": "ci-bot", "groups": ["dba"], "mfa": false,
            "expires_at": 4_102_444_800u64, "postgres": gw.pg_addr().to_string(),
        })
        .to_string(),
    )?;
    let out = gw
        .as_user(
            &bob,
            &[
                "request",
                "ledger-db",
                "--role",
                "write",
                "--for",
                "1h",
                "--reason",
                "INC-5",
            ],
        )?
        .ok()?;
    let id = request_id(&out)?.to_string();
    gw.as_user(&dana, &["approve", &id])?.ok()?;
    let out = gw.as_user(&bot, &["approve", &id])?;
    assert!(
        !out.success() && out.stderr.contains("policy does not let ci-bot"),
        "{out}"
    );
    // Still one approval of two: no grant.
    let out = gw.as_user(&bob, &["requests"])?.ok()?;
    assert!(out.stdout.contains("1/2"), "{out}");
    let refused = events(&gw, "request.refused")?;
    assert!(
        refused.iter().any(|e| e["actor"] == "ci-bot"
            && e["policy_ids"] == serde_json::json!(["approvals-by-people"])
            && e["controls"].to_string().contains("5.17")),
        "{refused:#?}"
    );
    assert!(events(&gw, "grant.start")?.is_empty());
    Ok(())
}
