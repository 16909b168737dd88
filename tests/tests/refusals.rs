//! Refusals at the PostgreSQL front door that ARCHITECTURE.md promises, asserted by SQLSTATE
//! (through sqlx) and by message (through psql): the connection limit (53300), a client that
//! never authenticates (08006), an unknown resource or role (3D000), an unreachable upstream
//! (08001) and an audit log that cannot commit the decision (58000).

use std::time::{Duration, Instant};

use anyhow::bail;
use gatehouse_tests::{
    raw_connect, read_backend_message, read_to_close, rust_client, rust_client_options,
    startup_packet, Gateway, GatewayConfig, PgServer, Psql, PsqlOutput, Resource,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgSslMode};
use sqlx::{Connection as _, PgConnection};
use tokio::io::AsyncWriteExt;

/// What a refused sqlx client was told.
#[derive(Debug)]
struct Refused {
    code: String,
    message: String,
    detail: Option<String>,
}

/// The ErrorResponse behind a failed sqlx connect; an error if it connected or failed in a
/// way that carries no SQLSTATE (a timeout, a TLS failure).
fn refused(result: anyhow::Result<PgConnection>) -> anyhow::Result<Refused> {
    let err = match result {
        Ok(_) => bail!("the client connected, but a refusal was expected"),
        Err(e) => e,
    };
    let Some(db) = err
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
    else {
        bail!("refused without an ErrorResponse: {err:#}");
    };
    Ok(Refused {
        code: db.code().map(|c| c.into_owned()).unwrap_or_default(),
        message: db.message().to_owned(),
        detail: db
            .try_downcast_ref::<PgDatabaseError>()
            .and_then(|p| p.detail())
            .map(str::to_owned),
    })
}

/// A sqlx connect with `opts`, bounded at 30 s.
async fn connect(opts: &PgConnectOptions) -> anyhow::Result<PgConnection> {
    Ok(tokio::time::timeout(Duration::from_secs(30), PgConnection::connect_with(opts)).await??)
}

/// [`Psql`] through the gateway on tokio's blocking pool (TLS, `sslmode=require`).
async fn psql_async(
    gw: &Gateway,
    dbname: &str,
    user: &str,
    token: &str,
    sql: &str,
) -> anyhow::Result<PsqlOutput> {
    let p = Psql::new(gw.pg_addr(), dbname, user).password(token);
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || p.run(&sql)).await?
}

/// A sqlx session through the gateway that answers `select 1`.
async fn works(gw: &Gateway, dbname: &str, user: &str, token: &str) -> anyhow::Result<()> {
    let mut c = rust_client(gw.pg_addr(), dbname, user, token).await?;
    let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut c).await?;
    anyhow::ensure!(one == 1, "select 1 returned {one}");
    c.close().await?;
    Ok(())
}

/// Retries a sqlx connect every 100 ms until one gets a session that answers `select 1`, and
/// returns it; fails with the last error after `timeout`.
async fn session_within(
    gw: &Gateway,
    dbname: &str,
    user: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<PgConnection> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let mut c = rust_client(gw.pg_addr(), dbname, user, token).await?;
            let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut c).await?;
            anyhow::ensure!(one == 1, "select 1 returned {one}");
            Ok(c)
        };
        match attempt.await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("no working session within {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// [`session_within`], then closes the session.
async fn works_within(
    gw: &Gateway,
    dbname: &str,
    user: &str,
    token: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    session_within(gw, dbname, user, token, timeout)
        .await?
        .close()
        .await?;
    Ok(())
}

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_refuses_with_53300_until_a_connection_ends() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            // Plaintext too, so that sqlx (which only reads `S`/`N` after its SSLRequest) and
            // psql can read the refusal as an ErrorResponse.
            .allow_plaintext(true)
            .set("postgres", "max_connections", "2")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    // Two live sessions hold both slots.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = rust_client(gw.pg_addr(), "orders-db", "alice", &token).await?;
        let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut c).await?;
        assert_eq!(one, 1);
        held.push(c);
    }

    // The third client is refused with 53300 and a message.
    let plain = rust_client_options(gw.pg_addr(), "orders-db", "alice", &token)
        .ssl_mode(PgSslMode::Disable);
    let r = refused(connect(&plain).await)?;
    assert_eq!(r.code, "53300", "{r:?}");
    assert_eq!(r.message, "too many connections to the gateway", "{r:?}");
    let p = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .sslmode("disable");
    let out = tokio::task::spawn_blocking(move || p.run("select 1"))
        .await??
        .err()?;
    assert!(
        out.stderr.contains("too many connections to the gateway"),
        "{out}"
    );
    // Over TLS too: the gateway answers after the SSL negotiation, so psql shows the reason.
    let out = psql_async(&gw, "orders-db", "alice", &token, "select 1")
        .await?
        .err()?;
    assert!(
        out.stderr.contains("too many connections to the gateway"),
        "{out}"
    );
    let tls = rust_client_options(gw.pg_addr(), "orders-db", "alice", &token);
    let r = refused(connect(&tls).await)?;
    assert_eq!(r.code, "53300", "{r:?}");
    gw.wait_for_log(
        "connection refused: too many connections to the gateway",
        Duration::from_secs(5),
    )?;

    // The sessions that hold the slots are not disturbed.
    for c in &mut held {
        let n: i64 = sqlx::query_scalar("select count(*) from orders")
            .fetch_one(&mut *c)
            .await?;
        assert_eq!(n, 1000);
    }

    // One ends: its slot is free again (once the gateway has finished with it).
    if let Some(c) = held.pop() {
        c.close().await?;
    }
    let mut again =
        session_within(&gw, "orders-db", "alice", &token, Duration::from_secs(10)).await?;
    // ... but only one: with it taken again, the limit holds.
    let r = refused(connect(&plain).await)?;
    assert_eq!(r.code, "53300", "{r:?}");
    let one: i32 = sqlx::query_scalar("select 1").fetch_one(&mut again).await?;
    assert_eq!(one, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_its_password_gets_08006_after_the_handshake_timeout(
) -> anyhow::Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .set("postgres", "handshake_timeout", "\"3s\"")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    // A startup packet, the gateway asks for the password, and the client says nothing more.
    let mut silent = raw_connect(gw.pg_addr()).await?;
    let started = Instant::now();
    silent
        .write_all(&startup_packet("alice", "orders-db", &[]))
        .await?;
    let auth = read_backend_message(&mut silent).await?;
    assert_eq!(auth.auth_code(), Some(3), "a cleartext password request");

    // Meanwhile a normal login (TLS, psql) goes through.
    let out = psql_async(&gw, "orders-db", "alice", &token, "select 41 + 1")
        .await?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "42");
    assert!(
        started.elapsed() < TIMEOUT,
        "the normal login must finish while the silent one waits ({:?})",
        started.elapsed()
    );

    // The silent client gets 08006 once the timeout has passed, not before, and not much later.
    let msg = read_backend_message(&mut silent).await?;
    let waited = started.elapsed();
    assert_eq!(msg.tag, b'E', "{msg:?}");
    assert_eq!(msg.sqlstate().as_deref(), Some("08006"), "{msg:?}");
    assert_eq!(
        msg.message().as_deref(),
        Some("authentication timed out"),
        "{msg:?}"
    );
    assert!(
        waited >= TIMEOUT - Duration::from_millis(100),
        "refused after {waited:?}, before the {TIMEOUT:?} timeout"
    );
    assert!(
        waited < TIMEOUT + Duration::from_secs(5),
        "refused only after {waited:?}"
    );
    let rest = read_to_close(&mut silent).await?;
    assert!(rest.is_empty(), "nothing follows the refusal: {rest:?}");

    // No session was opened for it; the one that logged in is the only one.
    let events = gw.settled_export()?;
    assert_eq!(events_of(&events, "session.start").len(), 1);
    works(&gw, "orders-db", "alice", &token).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resources_and_roles_get_3d000() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    // The token and the resource are fine: the refusals below are about the names alone.
    works(&gw, "orders-db", "alice", &token).await?;

    let r = refused(rust_client(gw.pg_addr(), "nosuch-db", "alice", &token).await)?;
    assert_eq!(r.code, "3D000", "{r:?}");
    assert_eq!(
        r.message, "resource \"nosuch-db\" is not known to the gateway",
        "{r:?}"
    );
    let r = refused(rust_client(gw.pg_addr(), "orders-db:nosuchrole", "alice", &token).await)?;
    assert_eq!(r.code, "3D000", "{r:?}");
    assert_eq!(
        r.message, "resource \"orders-db\" has no role \"nosuchrole\" (roles: read)",
        "{r:?}"
    );
    // psql shows the same.
    let out = psql_async(&gw, "nosuch-db", "alice", &token, "select 1")
        .await?
        .err()?;
    assert!(
        out.stderr
            .contains("resource \"nosuch-db\" is not known to the gateway"),
        "{out}"
    );
    let out = psql_async(&gw, "orders-db:nosuchrole", "alice", &token, "select 1")
        .await?
        .err()?;
    assert!(
        out.stderr
            .contains("resource \"orders-db\" has no role \"nosuchrole\""),
        "{out}"
    );

    // Each refusal is a durable deny decision, and none opened a session.
    let events = gw.settled_export()?;
    let denied: Vec<&str> = events_of(&events, "access.decision")
        .into_iter()
        .filter(|e| e["decision"] == "deny")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        denied
            .iter()
            .filter(|r| **r == "unknown resource `nosuch-db`")
            .count(),
        2,
        "{denied:?}"
    );
    assert_eq!(
        denied
            .iter()
            .filter(|r| **r == "resource `orders-db` has no role `nosuchrole`")
            .count(),
        2,
        "{denied:?}"
    );
    assert_eq!(events_of(&events, "session.start").len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_on_a_closed_port_gets_08001_naming_no_address() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let dead_port = gatehouse_tests::pg::free_port()?;
    let down = Resource::postgres("down-db", format!("127.0.0.1:{dead_port}"), "orders")
        .credential("orders_app", "x")
        .labels(&[("env", "dev"), ("data_class", "internal")]);
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .resource(down),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    let started = Instant::now();
    let r = refused(rust_client(gw.pg_addr(), "down-db", "alice", &token).await)?;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused promptly, not after a hang: {:?}",
        started.elapsed()
    );
    assert_eq!(r.code, "08001", "{r:?}");
    assert_eq!(
        r.message, "gatehouse could not connect to resource \"down-db\"",
        "{r:?}"
    );
    let told = format!("{} {}", r.message, r.detail.as_deref().unwrap_or_default());
    assert!(
        !told.contains(&dead_port.to_string()) && !told.contains("127.0.0.1"),
        "upstream errors shown to clients name no address: {told}"
    );
    let out = psql_async(&gw, "down-db", "alice", &token, "select 1")
        .await?
        .err()?;
    assert!(
        out.stderr
            .contains("could not connect to resource \"down-db\""),
        "{out}"
    );
    assert!(!out.stderr.contains(&dead_port.to_string()), "{out}");

    // The other resource is unaffected; the failures are audited as session.failed.
    works(&gw, "orders-db", "alice", &token).await?;
    let events = gw.settled_export()?;
    let failed = events_of(&events, "session.failed");
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(failed
        .iter()
        .all(|e| e["resource"] == "down-db" && e["actor"] == "alice"));
    assert!(
        events_of(&events, "session.start")
            .iter()
            .all(|e| e["resource"] == "orders-db"),
        "no session started on down-db"
    );
    Ok(())
}

/// A trigger that makes every insert into `audit_events` fail, while every read (users,
/// grants, the chain head) still works.
const BLOCK_AUDIT_INSERTS: &str = "\
CREATE FUNCTION tests_refuse_audit_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'gatehouse-tests: audit inserts are blocked';
END;
$$;
CREATE TRIGGER tests_refuse_audit_insert BEFORE INSERT ON audit_events
FOR EACH ROW EXECUTE FUNCTION tests_refuse_audit_insert();";

const UNBLOCK_AUDIT_INSERTS: &str = "\
DROP TRIGGER tests_refuse_audit_insert ON audit_events;
DROP FUNCTION tests_refuse_audit_insert();";

const FAIL_CLOSED: &str =
    "gatehouse cannot record the access decision; the connection is refused (fail closed)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_that_cannot_be_committed_gets_58000_and_opens_nothing() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let store = PgServer::start()?;
    let url = store.create_database("gatehouse")?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .store_url(&url)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    works(&gw, "orders-db", "alice", &token).await?;
    // Count the upstream logins of the brokered account from here on.
    pg.exec(
        "postgres",
        "ALTER SYSTEM SET log_connections = on; SELECT pg_reload_conf();",
    )?;
    let upstream_logins = || pg.log().matches("authorized: user=orders_app").count();
    let logins_before = upstream_logins();
    let sessions = || -> anyhow::Result<String> {
        Ok(store
            .exec("gatehouse", "select count(*) from sessions")?
            .trim()
            .to_owned())
    };
    assert_eq!(sessions()?, "1");

    store.exec("gatehouse", BLOCK_AUDIT_INSERTS)?;
    // Reads still work: the user is there to be looked up.
    assert_eq!(
        store
            .exec(
                "gatehouse",
                "select count(*) from users where name = 'alice' and disabled_at is null"
            )?
            .trim(),
        "1"
    );

    let started = Instant::now();
    let r = refused(rust_client(gw.pg_addr(), "orders-db", "alice", &token).await)?;
    assert_eq!(r.code, "58000", "{r:?}");
    assert_eq!(r.message, FAIL_CLOSED, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "refused after {:?}",
        started.elapsed()
    );
    let out = psql_async(&gw, "orders-db", "alice", &token, "select 1")
        .await?
        .err()?;
    assert!(out.stderr.contains(FAIL_CLOSED), "{out}");
    gw.wait_for_log(
        "access decision could not be recorded; refusing the connection",
        Duration::from_secs(5),
    )?;
    // Nothing was opened: no upstream login, no session row.
    assert_eq!(upstream_logins(), logins_before, "{}", pg.log());
    assert_eq!(sessions()?, "1");

    // The obstacle goes: logins work again once the writer's retry gets through.
    store.exec("gatehouse", UNBLOCK_AUDIT_INSERTS)?;
    works_within(&gw, "orders-db", "alice", &token, Duration::from_secs(30)).await?;
    assert_eq!(upstream_logins(), logins_before + 1, "{}", pg.log());
    assert_eq!(sessions()?, "2");
    let events = gw.settled_export()?;
    assert_eq!(
        events_of(&events, "session.start").len(),
        2,
        "only the two sessions that were let in started"
    );
    // The refused decisions reach the log once the store is back, each followed by a
    // session.failed for the same session saying it was refused: no "allow" stands alone.
    let allowed_without_start: Vec<&Value> = events_of(&events, "access.decision")
        .into_iter()
        .filter(|d| d["decision"] == "allow")
        .filter(|d| {
            !events_of(&events, "session.start")
                .iter()
                .any(|s| s["session_id"] == d["session_id"])
        })
        .collect();
    assert!(
        !allowed_without_start.is_empty(),
        "the queued decisions never arrived"
    );
    for d in &allowed_without_start {
        let failed = events_of(&events, "session.failed")
            .into_iter()
            .find(|f| f["session_id"] == d["session_id"])
            .ok_or_else(|| anyhow::anyhow!("no session.failed follows {d}"))?;
        assert!(
            failed["seq"].as_u64() > d["seq"].as_u64(),
            "{failed} before {d}"
        );
        assert!(
            failed["reason"]
                .as_str()
                .is_some_and(|r| r.contains("could not be committed in time")),
            "{failed}"
        );
    }
    let verify = gw.audit_verify()?.ok()?;
    assert!(verify.stdout.contains("intact"), "{verify}");
    Ok(())
}

/// Opens `n` sockets to `addr` from source address `from`, each sending two bytes and then
/// holding still (the slow-loris probe of the outside review).
async fn hold_idle_sockets(
    addr: std::net::SocketAddr,
    from: std::net::IpAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(from, 0))?;
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(5), socket.connect(addr)).await
        else {
            continue;
        };
        let _ = s.write_all(&[0, 0]).await;
        held.push(s);
    }
    Ok(held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_lock_nobody_else_out() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .set("postgres", "max_connections", "200")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    // 400 sockets from 127.0.0.2: more than every slot of the listener.
    let attacker: std::net::IpAddr = "127.0.0.2".parse()?;
    let held = hold_idle_sockets(gw.pg_addr(), attacker, 400).await?;
    assert!(held.len() >= 100, "only {} sockets connected", held.len());

    // Someone else (127.0.0.1) still signs in at once, over TLS, while they are held.
    let started = Instant::now();
    let out = psql_async(
        &gw,
        "orders-db",
        "alice",
        &token,
        "select count(*) from orders",
    )
    .await?
    .ok()?;
    assert_eq!(out.stdout_trimmed(), "1000");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the login took {:?} while idle sockets were held",
        started.elapsed()
    );
    // The refusals are logged, but not a line each.
    gw.wait_for_log("connection refused", Duration::from_secs(5))?;
    let lines = gw
        .logs()
        .lines()
        .filter(|l| l.contains("connection refused"))
        .count();
    assert!(
        lines < 50,
        "{lines} refusal lines for at most 400 refused sockets: not rate-limited"
    );
    drop(held);
    Ok(())
}
