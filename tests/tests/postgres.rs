//! PostgreSQL through the gateway with real clients: psql, pgbench and sqlx against a real
//! PostgreSQL, and what the audit log records of it.

use std::time::{Duration, Instant};

use gatehouse_tests::pg::{LEGACY_PASSWORD, LEGACY_USER};
use gatehouse_tests::{rust_client, Gateway, GatewayConfig, PgServer, Pgbench, Psql, Resource};
use serde_json::Value;
use sqlx::{Connection as _, Executor as _, Row as _};

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["kind"] == kind)
        .collect()
}

#[test]
fn psql_queries_transactions_copy_and_large_results() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    // The engineer lands in `orders` as the brokered account, never having seen its password.
    let out = gw
        .psql(
            "orders-db",
            "alice",
            &token,
            "select current_user, current_database(), count(*) from orders",
        )?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "orders_app|orders|1000");

    // A transaction, rolled back and committed.
    let script =
        "begin;\ninsert into orders (customer, amount) values ('rolled-back', 1);\nrollback;\n\
                  begin;\ninsert into orders (customer, amount) values ('kept', 2);\ncommit;\n\
                  select count(*) from orders where customer in ('rolled-back', 'kept');\n";
    let out = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .run_script(script)?
        .ok()?;
    assert!(out.stdout.lines().any(|l| l == "1"), "{out}");

    // COPY in and out.
    let copy = "copy orders (customer, amount) from stdin;\nc1\t10\nc2\t20\n\\.\n\
                select count(*) from orders where customer in ('c1', 'c2');\n\
                copy (select customer from orders where customer in ('c1','c2') order by 1) to stdout;\n";
    let out = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .run_script(copy)?
        .ok()?;
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.contains(&"2") && lines.contains(&"c1") && lines.contains(&"c2"),
        "{out}"
    );

    // A large result: 200k rows, ~20 MB, all of it arrives.
    let out = gw
        .psql("orders-db", "alice", &token, "select count(*), sum(length(x)) from (select repeat('x', 100) || g as x from generate_series(1, 200000) g) s")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "200000|21088895");
    let out = gw
        .psql(
            "orders-db",
            "alice",
            &token,
            "select repeat('y', 100) from generate_series(1, 200000)",
        )?
        .ok()?;
    assert_eq!(out.stdout.lines().count(), 200000);

    // The audit log has each statement, in order, with the session id and controls.
    let events = gw.settled_export()?;
    let stmts: Vec<&str> = events_of(&events, "db.statement")
        .iter()
        .filter_map(|e| e["detail"]["statement"].as_str())
        .collect();
    let pos = |needle: &str| {
        stmts
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or(usize::MAX)
    };
    assert!(
        pos("current_database()") < pos("'rolled-back'"),
        "{stmts:?}"
    );
    assert!(pos("'rolled-back'") < pos("'kept'"));
    assert!(pos("'kept'") < pos("copy orders"));
    assert!(pos("copy orders") < pos("generate_series(1, 200000) g"));
    let first = events_of(&events, "db.statement")[0];
    assert_eq!(first["actor"], "alice");
    assert_eq!(first["resource"], "orders-db");
    assert!(first["controls"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == "8.15")));
    let session = first["session_id"].as_str().unwrap_or_default();
    assert_eq!(session.len(), 32);
    // The session's decision, start and end carry the same id, in that order.
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["session_id"] == session)
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds.first(), Some(&"access.decision"));
    assert_eq!(kinds.get(1), Some(&"session.start"));
    assert_eq!(kinds.last(), Some(&"session.end"));
    let decision = events
        .iter()
        .find(|e| e["session_id"] == session && e["kind"] == "access.decision")
        .cloned()
        .unwrap_or_default();
    assert_eq!(decision["decision"], "allow");
    assert_eq!(
        decision["policy_ids"],
        serde_json::json!(["engineering-connect-nonprod"])
    );
    assert!(decision["controls"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == "5.15")));
    let end = events
        .iter()
        .rfind(|e| e["kind"] == "session.end")
        .cloned()
        .unwrap_or_default();
    assert!(
        end["detail"]["bytes_to_client"].as_u64().unwrap_or(0) > 20_000_000,
        "{end}"
    );
    assert!(end["detail"]["duration_ms"].is_u64());
    assert_eq!(end["reason"], "client closed the connection");

    // No brokered password anywhere in the log.
    let raw = gw.audit_export("jsonl", &[])?.ok()?.stdout;
    assert!(!raw.contains(gatehouse_tests::pg::ORDERS_PASSWORD));
    assert!(!gw.logs().contains(gatehouse_tests::pg::ORDERS_PASSWORD));
    assert!(gw.audit_verify()?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_prepared_statements_transactions_and_copy() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db").log_parameters(true)),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let mut conn = rust_client(gw.pg_addr(), "orders-db", "alice", &token).await?;

    // Prepared statement with parameters, executed several times.
    for id in [1_i32, 2, 3] {
        let row = sqlx::query("select customer, amount::text from orders where id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await?;
        let customer: String = row.try_get(0)?;
        assert!(!customer.is_empty());
    }
    // A transaction through the extended protocol.
    let mut tx = conn.begin().await?;
    sqlx::query("insert into orders (customer, amount) values ($1, $2)")
        .bind("from-rust")
        .bind(42_i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let n: i64 = sqlx::query_scalar("select count(*) from orders where customer = $1")
        .bind("from-rust")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(n, 1);
    // A large result through the extended protocol.
    let rows = sqlx::query("select g, md5(g::text) from generate_series(1, 50000) g")
        .fetch_all(&mut conn)
        .await?;
    assert_eq!(rows.len(), 50000);
    // COPY FROM STDIN through the extended connection.
    let mut copy = conn
        .copy_in_raw("copy orders (customer, amount) from stdin")
        .await?;
    copy.send(b"rust-copy-1\t1\nrust-copy-2\t2\n".as_slice())
        .await?;
    assert_eq!(copy.finish().await?, 2);
    conn.execute("select 1").await?;
    conn.close().await?;

    let events = gw.settled_export()?;
    let execs = events_of(&events, "db.statement");
    let with_param = execs
        .iter()
        .find(|e| {
            e["action"] == "execute"
                && e["detail"]["statement"]
                    .as_str()
                    .is_some_and(|s| s.contains("where customer = $1"))
        })
        .ok_or_else(|| anyhow::anyhow!("no execute event for the count query"))?;
    assert_eq!(
        with_param["detail"]["params"],
        serde_json::json!(["from-rust"])
    );
    assert!(execs.iter().any(|e| e["detail"]["statement"]
        .as_str()
        .is_some_and(|s| s.starts_with("copy orders"))));
    Ok(())
}

#[test]
fn parameters_stay_out_of_the_log_unless_the_resource_allows() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    pg.pgbench_init("orders", 1)?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let out = Pgbench::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .args(&["-n", "-S", "-M", "prepared", "-t", "20", "-c", "2"])
        .run()?;
    assert_eq!(out.failed_transactions(), Some(0), "{}", out.stdout());
    assert_eq!(out.transactions(), Some(40));
    let events = gw.settled_export()?;
    let execs: Vec<_> = events_of(&events, "db.statement")
        .into_iter()
        .filter(|e| e["action"] == "execute")
        .collect();
    assert!(
        execs.len() >= 40,
        "every execute is audited: {}",
        execs.len()
    );
    assert!(execs.iter().all(|e| e["detail"].get("params").is_none()));
    assert!(execs.iter().any(|e| e["detail"]["statement"]
        .as_str()
        .is_some_and(|s| s.contains("pgbench_accounts"))));
    Ok(())
}

#[test]
fn policy_denial_is_a_42501_naming_the_decision_and_is_audited() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let prod = Resource::orders_db(&pg, "orders-db")
        .labels(&[("env", "prod"), ("data_class", "confidential")]);
    let gw = Gateway::start(GatewayConfig::new().resource(prod))?;

    // An engineer (permitted only outside prod) and a contractor who is also a dba (forbid wins).
    let out = gw
        .psql_as("erin", &["engineering"], "orders-db", "select 1")?
        .err()?;
    assert!(
        out.stderr
            .contains("access to resource \"orders-db\" denied by policy"),
        "{out}"
    );
    assert!(
        out.stderr.contains("decision recorded as audit event"),
        "{out}"
    );
    let out = gw
        .psql_as("carl", &["dba", "contractors"], "orders-db", "select 1")?
        .err()?;
    assert!(out.stderr.contains("forbid-contractors-prod"), "{out}");
    // A dba gets in.
    let out = gw
        .psql_as("dana", &["dba"], "orders-db", "select 1")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "1");
    // An unknown resource.
    let out = gw.psql_as("dana", &["dba"], "nope-db", "select 1")?.err()?;
    assert!(
        out.stderr.contains("resource \"nope-db\" is not known"),
        "{out}"
    );

    let events = gw.settled_export()?;
    let decisions = events_of(&events, "access.decision");
    let find = |actor: &str| {
        decisions
            .iter()
            .find(|e| e["actor"] == actor)
            .cloned()
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(find("erin")["decision"], "deny");
    assert_eq!(find("erin")["policy_ids"], serde_json::json!([]));
    assert_eq!(find("carl")["decision"], "deny");
    assert_eq!(
        find("carl")["policy_ids"],
        serde_json::json!(["forbid-contractors-prod"])
    );
    assert!(find("carl")["controls"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x == "8.31")));
    assert_eq!(find("dana")["decision"], "allow");
    // Denied sessions never started.
    assert!(events_of(&events, "session.start")
        .iter()
        .all(|e| e["actor"] == "dana"));
    Ok(())
}

#[test]
fn psql_sqlstate_for_denial_is_42501() -> anyhow::Result<()> {
    // psql prints no SQLSTATE by default; raw protocol shows it.
    let pg = PgServer::start()?;
    let prod = Resource::orders_db(&pg, "orders-db")
        .labels(&[("env", "prod"), ("data_class", "internal")]);
    let gw = Gateway::start(GatewayConfig::new().resource(prod))?;
    let token = gw.token("erin", &["engineering"], "1h")?;
    let rt = tokio::runtime::Runtime::new()?;
    let err = rt
        .block_on(rust_client(gw.pg_addr(), "orders-db", "erin", &token))
        .err()
        .ok_or_else(|| anyhow::anyhow!("the denied user connected"))?;
    let code = err
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
        .map(|c| c.into_owned());
    let err = (code, format!("{err:#}"));
    assert_eq!(err.0.as_deref(), Some("42501"), "{}", err.1);
    Ok(())
}

#[test]
fn md5_upstream_and_brokered_credential_failures() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let legacy = Resource::postgres("legacy-db", pg.addr(), "orders")
        .credential(LEGACY_USER, LEGACY_PASSWORD)
        .raw("auth_methods", r#"["scram-sha-256", "md5"]"#)
        .labels(&[("env", "dev"), ("data_class", "internal")]);
    let wrong = Resource::postgres("wrong-pw-db", pg.addr(), "orders")
        .credential("orders_app", "not-the-password")
        .labels(&[("env", "dev"), ("data_class", "internal")]);
    let dead_port = gatehouse_tests::pg::free_port()?;
    let down = Resource::postgres("down-db", format!("127.0.0.1:{dead_port}"), "orders")
        .credential("orders_app", "x")
        .labels(&[("env", "dev"), ("data_class", "internal")]);
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(legacy)
            .resource(wrong)
            .resource(down),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    let out = gw
        .psql("legacy-db", "alice", &token, "select current_user")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "legacy_app");

    let started = Instant::now();
    let out = gw.psql("wrong-pw-db", "alice", &token, "select 1")?.err()?;
    assert!(
        out.stderr
            .contains("rejected the gateway's brokered credential"),
        "{out}"
    );
    assert!(!out.stderr.contains("not-the-password"));
    let out = gw.psql("down-db", "alice", &token, "select 1")?.err()?;
    assert!(
        out.stderr
            .contains("could not connect to resource \"down-db\""),
        "{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "errors must come promptly, not hang"
    );

    let events = gw.settled_export()?;
    let failed = events_of(&events, "session.failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(gw.logs().contains("upstream connection failed"));
    assert!(!gw.logs().contains("not-the-password"));
    Ok(())
}

#[test]
fn ctrl_c_in_psql_cancels_only_through_the_gateway_key() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let child = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .spawn("select pg_sleep(60)")?;
    let pid = child.id();
    // Ctrl-C while the query runs upstream.
    pg.wait_for_active_query("select pg_sleep(60)", 1, Duration::from_secs(30))?;
    let started = Instant::now();
    gatehouse_tests::send_signal(pid, "INT")?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let events = gw.settled_export()?;
    assert_eq!(events_of(&events, "session.cancel").len(), 1);
    Ok(())
}

#[test]
fn sigterm_ends_sessions_with_a_message_and_a_final_checkpoint() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let mut gw =
        Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let child = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .spawn("select pg_sleep(60)")?;
    // The session is live (its query runs upstream) when the gateway is told to stop.
    pg.wait_for_active_query("select pg_sleep(60)", 1, Duration::from_secs(30))?;
    let status = gw.stop()?;
    assert!(
        status.success(),
        "graceful stop exits 0: {status:?}\n{}",
        gw.logs()
    );
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the gateway is shutting down"), "{stderr}");
    gw.restart()?;
    let verify = gw.audit_verify()?.ok()?;
    assert!(verify.stdout.contains("intact"), "{verify}");
    let events = gw.settled_export()?;
    let end = events_of(&events, "session.end");
    assert!(end.iter().any(|e| e["reason"]
        .as_str()
        .is_some_and(|r| r.contains("shutting down"))));
    // The log up to gateway.stop is covered by a checkpoint.
    let stop = events_of(&events, "gateway.stop")[0]["seq"]
        .as_u64()
        .unwrap_or(0);
    assert!(events
        .iter()
        .any(|e| e["type"] == "checkpoint" && e["seq"].as_u64() == Some(stop)));
    Ok(())
}
