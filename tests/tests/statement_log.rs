//! Nothing runs unlogged: the attacks on the statement log an engineer with a valid credential
//! can try through the PostgreSQL front door, with real psql and a hand-written wire client
//! (the attacker), against a real PostgreSQL.

use std::time::Duration;

use gatehouse_tests::util::poll;
use gatehouse_tests::{
    frontend_message, query_message, raw_password_login, read_backend_message, read_to_close,
    BackendMessage, Gateway, GatewayConfig, PgServer, Psql, Resource,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn gateway(pg: &PgServer) -> anyhow::Result<Gateway> {
    Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(pg, "orders-db")),
    )
}

fn statements(gw: &Gateway) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == "db.statement")
        .collect())
}

/// Waits until a `db.statement` event matches `pred`.
fn statement_where(
    gw: &Gateway,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(statements(gw)?.into_iter().find(|e| pred(e)))
    })?
    .ok_or_else(|| anyhow::anyhow!("no such db.statement event: {:#?}", statements(gw)))
}

/// A plaintext session as alice, logged in, at its first ReadyForQuery.
async fn session(gw: &Gateway) -> anyhow::Result<TcpStream> {
    let token = gw.token("alice", &["engineering"], "1h")?;
    let mut s = raw_password_login(gw.pg_addr(), "alice", "orders-db", token.as_bytes()).await?;
    until_ready(&mut s).await?;
    Ok(s)
}

/// Reads up to and including the next ReadyForQuery.
async fn until_ready(s: &mut TcpStream) -> anyhow::Result<Vec<BackendMessage>> {
    let mut got = Vec::new();
    loop {
        let m = read_backend_message(s).await?;
        let done = m.tag == b'Z';
        got.push(m);
        if done {
            return Ok(got);
        }
    }
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    frontend_message(b'P', &b)
}

fn bind(stmt: &str) -> Vec<u8> {
    let mut b = vec![0]; // unnamed portal
    b.extend_from_slice(stmt.as_bytes());
    b.push(0);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    frontend_message(b'B', &b)
}

fn execute() -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(&0i32.to_be_bytes());
    frontend_message(b'E', &b)
}

fn sync() -> Vec<u8> {
    frontend_message(b'S', &[])
}

fn data_rows(msgs: &[BackendMessage]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'D')
        .map(|m| String::from_utf8_lossy(m.body.get(6..).unwrap_or_default()).into_owned())
        .collect()
}

#[test]
fn a_fast_path_function_call_is_refused_and_nothing_runs() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let file = gatehouse_tests::temp_dir("lo")?;
    let blob = file.path().join("blob.bin");
    std::fs::write(&blob, b"smuggled bytes")?;
    // psql's \lo_import creates the large object through libpq's fast-path FunctionCall.
    let out = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .run_script(&format!("\\lo_import '{}'\n", blob.display()))?;
    assert!(
        out.stderr
            .contains("fast-path function calls are not allowed through gatehouse"),
        "{out:?}"
    );
    assert_eq!(
        pg.exec("orders", "select count(*) from pg_largeobject_metadata")?
            .trim(),
        "0",
        "no large object reached the server"
    );
    let end = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(gw
            .audit_events()?
            .into_iter()
            .find(|e| e["kind"] == "session.end"))
    })?
    .ok_or_else(|| anyhow::anyhow!("no session.end"))?;
    assert!(
        end["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fast-path function calls") && r.contains("oid")),
        "the refusal is evidence: {end}"
    );
    Ok(())
}

#[test]
fn a_resource_that_allows_fast_path_calls_logs_each_one() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(&pg, "orders-db").raw("function_calls", "true")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let file = gatehouse_tests::temp_dir("lo-allowed")?;
    let blob = file.path().join("blob.bin");
    std::fs::write(&blob, b"logged bytes")?;
    let out = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .run_script(&format!("\\lo_import '{}'\n", blob.display()))?;
    assert!(out.stdout.contains("lo_import"), "{out:?}");
    assert_eq!(
        pg.exec("orders", "select count(*) from pg_largeobject_metadata")?
            .trim(),
        "1"
    );
    let call = statement_where(&gw, |e| e["action"] == "function_call")?;
    let text = call["detail"]["statement"].as_str().unwrap_or_default();
    assert!(text.starts_with("function call: oid "), "{call}");
    Ok(())
}

#[test]
fn a_long_comment_cannot_push_the_statement_out_of_the_log() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let sql = format!("/* {} */ select 'hidden-marker'", "x".repeat(9000));
    let out = gw
        .psql_as("alice", &["engineering"], "orders-db", &sql)?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "hidden-marker");
    let e = statement_where(&gw, |e| e["detail"]["truncated_from_bytes"].is_u64())?;
    let text = e["detail"]["statement"].as_str().unwrap_or_default();
    assert!(text.starts_with("/* xxx"), "{e}");
    assert!(text.ends_with("*/ select 'hidden-marker'"), "{e}");
    assert_eq!(e["detail"]["truncated_from_bytes"], sql.len());
    let digest = ring::digest::digest(&ring::digest::SHA256, sql.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(e["detail"]["statement_sha256"], hex.as_str(), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reparse_does_not_disguise_what_the_server_runs() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let mut s = session(&gw).await?;
    s.write_all(&[parse("x1", "select 'the-real-one'"), sync()].concat())
        .await?;
    until_ready(&mut s).await?;
    // The second Parse of x1 is refused by PostgreSQL (42P05); pipelined behind it, after a
    // Sync, the attacker runs x1, hoping the log shows the decoy.
    s.write_all(
        &[
            parse("x1", "select 'the-decoy'"),
            sync(),
            bind("x1"),
            execute(),
            sync(),
        ]
        .concat(),
    )
    .await?;
    let first = until_ready(&mut s).await?;
    assert!(
        first
            .iter()
            .any(|m| m.sqlstate().as_deref() == Some("42P05")),
        "{first:?}"
    );
    let second = until_ready(&mut s).await?;
    assert_eq!(data_rows(&second), ["the-real-one"], "{second:?}");
    s.write_all(&frontend_message(b'X', &[])).await?;
    let e = statement_where(&gw, |e| e["action"] == "execute")?;
    assert_eq!(
        e["detail"]["statement"], "select 'the-real-one'",
        "the log says what the server ran: {e}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_prepared_statements_end_the_session_instead_of_blinding_the_log(
) -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let mut s = session(&gw).await?;
    let mut batch = Vec::new();
    for i in 0..4096 {
        batch.extend(parse(&format!("s{i}"), "select 1"));
    }
    batch.extend(sync());
    s.write_all(&batch).await?;
    let answers = until_ready(&mut s).await?;
    assert!(
        answers.iter().all(|m| m.tag != b'E'),
        "{:?}",
        answers.last()
    );
    // One more named statement: refused with a reason rather than tracked blind.
    s.write_all(&[parse("one-more", "select 'unseen'"), sync()].concat())
        .await?;
    let m = read_backend_message(&mut s).await?;
    assert_eq!(m.sqlstate().as_deref(), Some("08P01"), "{:?}", m.message());
    assert!(
        m.message()
            .unwrap_or_default()
            .contains("more than 4096 prepared statements"),
        "{:?}",
        m.message()
    );
    let _ = read_to_close(&mut s).await?;
    // The gateway keeps serving.
    let mut s = session(&gw).await?;
    s.write_all(&query_message("select 'still-here'")).await?;
    assert_eq!(data_rows(&until_ready(&mut s).await?), ["still-here"]);
    Ok(())
}
