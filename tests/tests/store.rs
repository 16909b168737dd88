//! The store suite, run on SQLite (the embedded default) and on a real PostgreSQL: migrations,
//! the group-committing audit writer under concurrency (two writers on one store, as two gateway
//! replicas would be), checkpoints, export and verification. Plus the gateway itself on a
//! PostgreSQL store.

use std::sync::Arc;

use gatehouse_gateway::audit::export::{export, verify_export, Format};
use gatehouse_gateway::audit::{AuditLog, EventKind, NewEvent};
use gatehouse_gateway::cli::verify_store;
use gatehouse_gateway::keys::SigningKey;
use gatehouse_gateway::store::Store;
use gatehouse_tests::{temp_dir, Gateway, GatewayConfig, PgServer, Resource};

fn event(task: usize, i: usize) -> NewEvent {
    let mut e = NewEvent::new(EventKind::DbStatement);
    e.actor = format!("user{task}");
    e.resource = "orders-db".into();
    e.action = "query".into();
    e.session_id = format!("{task:032x}");
    e.detail = serde_json::json!({ "statement": format!("select {i} -- ünïcödé, \"quotes\", \n newline"), "n": i });
    e
}

async fn suite(url: &str) -> anyhow::Result<()> {
    let dir = temp_dir("store-suite")?;
    let key = Arc::new(SigningKey::load_or_create(&dir.join("audit.pem"))?);
    let store = Store::open(url).await?;
    // Opening again runs no migration twice.
    let again = Store::open(url).await?;

    // Two writers on the same store, eight tasks each appending 150 events, half of them
    // waiting for durability.
    let (log_a, task_a) = AuditLog::spawn(store.clone(), key.clone(), 100, 1024);
    let (log_b, task_b) = AuditLog::spawn(again.clone(), key.clone(), 100, 1024);
    let mut handles = Vec::new();
    for t in 0..8 {
        let log = if t % 2 == 0 {
            log_a.clone()
        } else {
            log_b.clone()
        };
        handles.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..150 {
                if i % 2 == 0 {
                    let seq = log.record_durable(event(t, i)).await?;
                    anyhow::ensure!(
                        seq > last,
                        "durable seqs increase per task: {seq} after {last}"
                    );
                    last = seq;
                } else {
                    log.record(event(t, i)).await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    log_a.checkpoint().await?;
    log_b.checkpoint().await?;
    drop((log_a, log_b));
    // Both writers end once their handles are gone, each after a final checkpoint attempt
    // that must not collide with the other's.
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        task_a.await?;
        task_b.await
    })
    .await
    .map_err(|_| anyhow::anyhow!("audit writers did not finish"))??;

    let public = key.public_key();
    let report = verify_store(&store, &public)
        .await?
        .map_err(|e| anyhow::anyhow!("verify: {e}"))?;
    assert_eq!(report.events, 1200);
    assert_eq!(report.last_seq, 1200);
    assert!(report.checkpoints >= 12, "{report}");
    assert_eq!(report.last_checkpoint, 1200, "{report}");

    // Every event of every task is there exactly once.
    let events = store.audit_events(0, 5000, None, None).await?;
    for t in 0..8 {
        let mine: Vec<u64> = events
            .iter()
            .filter(|e| e.actor == format!("user{t}"))
            .filter_map(|e| {
                serde_json::from_str::<serde_json::Value>(&e.detail).ok()?["n"].as_u64()
            })
            .collect();
        assert_eq!(
            mine,
            (0..150).collect::<Vec<u64>>(),
            "task {t}: in order, none lost, none twice"
        );
    }

    // Export and verify offline, from the same backend.
    let mut out = Vec::new();
    let n = export(&store, &key, Format::Jsonl, None, None, &mut out).await?;
    assert_eq!(n, 1200);
    let report = verify_export(out.as_slice(), &public)
        .map_err(|e| anyhow::anyhow!("verify export: {e}"))?;
    assert_eq!(report.events, 1200);
    store.close().await;
    again.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_on_sqlite() -> anyhow::Result<()> {
    let dir = temp_dir("sqlite-store")?;
    suite(&format!(
        "sqlite://{}",
        dir.join("state/gatehouse.db").display()
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_on_postgres() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let url = pg.create_database("gatehouse_store")?;
    suite(&url).await
}

#[test]
fn gateway_runs_on_a_postgres_store() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let store = PgServer::start()?;
    let url = store.create_database("gatehouse")?;
    let mut gw = Gateway::start(
        GatewayConfig::new()
            .store_url(&url)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let out = gw
        .psql_as(
            "alice",
            &["engineering"],
            "orders-db",
            "select count(*) from orders",
        )?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "1000");
    gw.stop()?;
    let verify = gw.audit_verify()?.ok()?;
    assert!(verify.stdout.contains("intact"), "{verify}");
    let rows = store.exec(
        "gatehouse",
        "select count(*) from audit_events where kind = 'db.statement'",
    )?;
    assert_eq!(rows.trim(), "1");
    // The append-only guard holds on PostgreSQL too.
    let out = store.exec_output("gatehouse", "delete from audit_events where seq = 1")?;
    assert!(
        !out.success() && out.stderr.contains("append-only"),
        "{out}"
    );
    Ok(())
}

#[test]
fn a_dead_store_fails_closed_and_loses_nothing() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let mut store = PgServer::start()?;
    let url = store.create_database("gatehouse")?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .store_url(&url)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    // A session that is already open when the store dies keeps working; its statements wait
    // in the queue.
    let mut open = gatehouse_tests::Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .command()?;
    open.args([
        "-c",
        "select pg_sleep(3)",
        "-c",
        "select 'queued while the store was down'",
    ]);
    open.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let open = open.spawn()?;
    // The session is open, its first query running upstream, before the store dies.
    pg.wait_for_active_query("select pg_sleep(3)", 1, std::time::Duration::from_secs(30))?;

    store.stop()?;
    // Neither the user's status nor a decision can be read or made durable: a new connection
    // is refused, not let through.
    let out = gw.psql("orders-db", "alice", &token, "select 1")?.err()?;
    assert!(out.stderr.contains("(fail closed)"), "{out}");
    let out = open.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The store comes back: the gateway recovers on its own, and what was queued is stored.
    store.restart()?;
    let mut ok = false;
    for _ in 0..50 {
        if gw.psql("orders-db", "alice", &token, "select 1")?.success() {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        ok,
        "the gateway did not recover after the store returned: {}",
        gw.logs()
    );
    let events: Vec<serde_json::Value> = gw
        .settled_export()?
        .into_iter()
        .filter(|e| e["type"] == "event")
        .collect();
    assert!(
        events.iter().any(|e| e["detail"]["statement"]
            .as_str()
            .is_some_and(|s| s.contains("queued while the store was down"))),
        "a statement from the outage was lost"
    );
    assert!(gw.audit_verify()?.success());
    assert!(gw.logs().contains("refusing the connection"));
    Ok(())
}
