//! Smoke tests of the harness itself: the throwaway PostgreSQL, the clients, and the gateway
//! plumbing (driven by a fake `gatehouse` script, so they pass before the real binary works).

use std::fs;
use std::os::unix::fs::PermissionsExt;

use gatehouse_tests::pg::{
    LEGACY_PASSWORD, LEGACY_USER, ORDERS_DB, ORDERS_PASSWORD, ORDERS_ROWS, ORDERS_USER,
};
use gatehouse_tests::{
    cancel_request, query_message, raw_connect, read_backend_message, read_byte, read_to_close,
    rust_client, rust_client_options, ssl_request, startup_packet, temp_dir, Gateway,
    GatewayConfig, PgServer, Pgbench, Psql, Resource,
};
use sqlx::postgres::PgSslMode;
use sqlx::Connection as _;
use tokio::io::AsyncWriteExt;

/// psql straight to the server (no TLS there).
fn direct(pg: &PgServer, user: &str, password: &str) -> Psql {
    Psql::new(pg.addr(), ORDERS_DB, user)
        .password(password)
        .sslmode("disable")
}

#[test]
fn orders_app_sees_the_fixture_rows_directly() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let out = direct(&pg, ORDERS_USER, ORDERS_PASSWORD)
        .run("select count(*) from orders")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), ORDERS_ROWS.to_string());
    // The role can write too (grants on table and sequence).
    let out = direct(&pg, ORDERS_USER, ORDERS_PASSWORD)
        .run("insert into orders (customer, amount) values ('c', 1) returning id")?
        .ok()?;
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["1001", "INSERT 0 1"]
    );
    // Its password is stored as SCRAM.
    let kind = pg.exec(
        "postgres",
        "select left(rolpassword, 14) from pg_authid where rolname = 'orders_app'",
    )?;
    assert_eq!(kind.trim(), "SCRAM-SHA-256$");
    Ok(())
}

#[test]
fn md5_role_logs_in_directly() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let out = direct(&pg, LEGACY_USER, LEGACY_PASSWORD)
        .run("select current_user, count(*) from orders")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "legacy_app|1000");
    let kind = pg.exec(
        "postgres",
        "select left(rolpassword, 3) from pg_authid where rolname = 'legacy_app'",
    )?;
    assert_eq!(kind.trim(), "md5");
    Ok(())
}

#[test]
fn wrong_password_is_refused() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let out = direct(&pg, ORDERS_USER, "not-the-password")
        .run("select 1")?
        .err()?;
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out}"
    );
    let out = direct(&pg, LEGACY_USER, "nope").run("select 1")?.err()?;
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out}"
    );
    Ok(())
}

#[test]
fn superuser_over_tcp_kill9_restart_and_stop() -> anyhow::Result<()> {
    let mut pg = PgServer::start()?;
    assert!(pg
        .superuser_url()
        .ends_with(&format!(":{}/postgres", pg.port())));
    let out = Psql::new(pg.addr(), "postgres", "postgres")
        .password("postgres-pw")
        .sslmode("disable")
        .run("select current_setting('max_connections'), current_setting('fsync')")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "250|off");

    pg.kill9()?;
    assert!(!pg.is_running());
    direct(&pg, ORDERS_USER, ORDERS_PASSWORD)
        .run("select 1")?
        .err()?;

    pg.restart()?;
    let out = direct(&pg, ORDERS_USER, ORDERS_PASSWORD)
        .run("select count(*) from orders")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "1000");

    let st = pg.stop()?;
    assert!(st.success(), "postgres exited with {st}");
    Ok(())
}

#[test]
fn servers_are_independent() -> anyhow::Result<()> {
    let a = PgServer::start()?;
    let b = PgServer::start()?;
    assert_ne!(a.port(), b.port());
    a.exec(ORDERS_DB, "delete from orders where id > 10")?;
    assert_eq!(
        a.exec(ORDERS_DB, "select count(*) from orders")?.trim(),
        "10"
    );
    assert_eq!(
        b.exec(ORDERS_DB, "select count(*) from orders")?.trim(),
        "1000"
    );
    let url = b.create_database("gatehouse_store")?;
    assert!(url.ends_with("/gatehouse_store"));
    Ok(())
}

#[tokio::test]
async fn rust_client_and_raw_protocol_against_postgres() -> anyhow::Result<()> {
    let pg = PgServer::start()?;

    // sqlx with sslmode=require must fail against a server without TLS ...
    assert!(
        rust_client(pg.addr(), ORDERS_DB, ORDERS_USER, ORDERS_PASSWORD)
            .await
            .is_err()
    );
    // ... and work without TLS.
    let opts = rust_client_options(pg.addr(), ORDERS_DB, ORDERS_USER, ORDERS_PASSWORD)
        .ssl_mode(PgSslMode::Disable);
    let mut conn = sqlx::PgConnection::connect_with(&opts).await?;
    let (n,): (i64,) = sqlx::query_as("select count(*) from orders where amount >= $1::numeric")
        .bind("0")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(n, 1000);
    conn.close().await?;

    // SSLRequest: PostgreSQL without TLS answers 'N' (checked again below with TLS on).
    let mut s = raw_connect(pg.addr()).await?;
    s.write_all(&ssl_request()).await?;
    assert_eq!(read_byte(&mut s).await?, Some(b'N'));
    // Then a startup packet on the same connection: SASL (10) for the SCRAM role.
    s.write_all(&startup_packet(
        ORDERS_USER,
        ORDERS_DB,
        &[("application_name", "raw")],
    ))
    .await?;
    let m = read_backend_message(&mut s).await?;
    assert_eq!(m.auth_code(), Some(10), "{m:?}");

    // md5 (5) with a salt for the md5 role.
    let mut s = raw_connect(pg.addr()).await?;
    s.write_all(&startup_packet(LEGACY_USER, ORDERS_DB, &[]))
        .await?;
    let m = read_backend_message(&mut s).await?;
    assert_eq!(m.auth_code(), Some(5), "{m:?}");
    assert_eq!(m.body.len(), 8);

    // A query instead of a startup packet: its first bytes make an absurd length, and
    // PostgreSQL hangs up without a word.
    let mut s = raw_connect(pg.addr()).await?;
    s.write_all(&query_message("select 1")).await?;
    assert!(read_to_close(&mut s).await?.is_empty());

    // A CancelRequest for a process that does not exist: closed without an answer.
    let mut s = raw_connect(pg.addr()).await?;
    s.write_all(&cancel_request(12345, 678)).await?;
    assert!(read_to_close(&mut s).await?.is_empty());

    // With TLS on, sqlx with sslmode=require, psql with require, and SSLRequest says 'S'.
    pg.enable_tls()?;
    let mut conn = rust_client(pg.addr(), ORDERS_DB, ORDERS_USER, ORDERS_PASSWORD).await?;
    let (ssl,): (bool,) =
        sqlx::query_as("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
    assert!(ssl);
    conn.close().await?;
    direct(&pg, LEGACY_USER, LEGACY_PASSWORD)
        .sslmode("require")
        .run("select 1")?
        .ok()?;
    let mut s = raw_connect(pg.addr()).await?;
    s.write_all(&ssl_request()).await?;
    assert_eq!(read_byte(&mut s).await?, Some(b'S'));
    Ok(())
}

#[test]
fn pgbench_runs_directly() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    pg.pgbench_init(ORDERS_DB, 1)?;
    let out = Pgbench::new(pg.addr(), ORDERS_DB, ORDERS_USER)
        .password(ORDERS_PASSWORD)
        .sslmode("disable")
        .args(&["-n", "-S", "-c", "2", "-t", "50"])
        .run()?;
    assert_eq!(out.transactions(), Some(100), "{}", out.stdout());
    assert!(out.tps().is_some_and(|t| t > 0.0), "{}", out.stdout());
    assert!(out.latency_avg_ms().is_some(), "{}", out.stdout());
    Ok(())
}

/// A stand-in for `gatehouse` that speaks the CLI contract just enough to exercise the
/// harness's process handling.
const FAKE_GATEHOUSE: &str = r#"#!/bin/sh
case "$1" in
serve)
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --config) cfg="$2"; shift 2 ;;
      --ready-file) ready="$2"; shift 2 ;;
      *) shift ;;
    esac
  done
  [ "$FAKE_FAIL" = 1 ] && { echo "fake: cannot start" >&2; exit 2; }
  echo "fake serve config=$cfg password=$ORDERS_DB_PASSWORD"
  echo "fake serve stderr" >&2
  trap 'echo "fake got TERM"; exit 0' TERM
  printf '{"postgres": "127.0.0.1:%s", "pid": %s}' "$FAKE_PORT" "$$" > "$ready.tmp"
  mv "$ready.tmp" "$ready"
  while :; do sleep 0.05; done
  ;;
token)
  while [ $# -gt 0 ]; do
    case "$1" in
      --user) user="$2"; shift 2 ;;
      --groups) groups="$2"; shift 2 ;;
      --ttl) ttl="$2"; shift 2 ;;
      --config) cfg="$2"; shift 2 ;;
      *) shift ;;
    esac
  done
  echo "tok:$user:$groups:$ttl:$([ "$cfg" = "$GATEHOUSE_CONFIG" ] && echo same)"
  ;;
audit)
  case "$2" in
    export) printf '{"seq":1}\n\n{"seq":2}\n' ;;
    verify) echo "chain broken at seq 2" >&2; exit 3 ;;
  esac
  ;;
*) echo "config=$GATEHOUSE_CONFIG" ;;
esac
"#;

fn fake_gatehouse(dir: &gatehouse_tests::TempDir) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("fake-gatehouse");
    fs::write(&path, FAKE_GATEHOUSE)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[test]
fn gateway_plumbing_with_a_fake_binary() -> anyhow::Result<()> {
    let tmp = temp_dir("fake")?;
    let fake = fake_gatehouse(&tmp)?;
    let pg = PgServer::start()?;
    let cfg = GatewayConfig::new()
        .binary(&fake)
        .env("FAKE_PORT", "6543")
        .checkpoint_every(10)
        .set("tokens", "max_ttl", "\"24h\"")
        .set("log", "format", "\"json\"")
        .resource(
            Resource::orders_db(&pg, "orders-db")
                .label("env", "prod")
                .label("data_class", "confidential")
                .log_parameters(false),
        )
        .resource(
            Resource::postgres("legacy \"db\"", pg.addr(), ORDERS_DB)
                .credential_file(LEGACY_USER, tmp.join("pw")),
        );
    let toml = cfg.to_toml(std::path::Path::new("/x/state"));
    assert!(toml.contains("state_dir = \"/x/state\"\n"), "{toml}");
    assert!(
        toml.contains("url = \"sqlite:///x/state/gatehouse.db\"\n"),
        "{toml}"
    );
    assert!(
        toml.contains("\n[audit]\ncheckpoint_every = 10\n"),
        "{toml}"
    );
    assert!(
        toml.contains(
            "labels = { \"data_class\" = \"confidential\", \"env\" = \"prod\" }\n\
             log_parameters = false\n\
             credential = { username = \"orders_app\", password_env = \"ORDERS_DB_PASSWORD\" }\n"
        ),
        "{toml}"
    );
    assert!(toml.contains("name = \"legacy \\\"db\\\"\"\n"), "{toml}");

    let mut gw = Gateway::start(cfg)?;
    assert_eq!(gw.pg_addr().to_string(), "127.0.0.1:6543");
    assert_eq!(gw.ready()["pid"].as_u64(), gw.pid().map(u64::from));
    assert!(
        gw.logs().contains("password=orders-secret-pw"),
        "{}",
        gw.logs()
    );
    assert!(gw.logs().contains("fake serve stderr"), "{}", gw.logs());
    assert_eq!(
        fs::read_to_string(gw.config_path())?,
        gw.config().to_toml(gw.state_dir())
    );
    assert!(gw.store_url().starts_with("sqlite:///"));

    assert_eq!(
        gw.token("alice", &["engineering", "dba"], "1h")?,
        "tok:alice:engineering,dba:1h:same"
    );
    assert_eq!(gw.token("bob", &[], "5m")?, "tok:bob::5m:same");
    let out = gw.cli(&["whatever"])?.ok()?;
    assert_eq!(
        out.stdout_trimmed(),
        format!("config={}", gw.config_path().display())
    );
    let events = gw.audit_export_jsonl()?;
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["seq"], 2);
    let verify = gw.audit_verify()?.err()?;
    assert_eq!(verify.code(), Some(3));
    assert!(verify.stderr.contains("seq 2"));

    let st = gw.stop()?;
    assert!(st.success(), "{st}");
    assert!(gw.logs().contains("fake got TERM"));
    assert!(!gw.is_running());

    gw.restart()?;
    assert!(gw.is_running());
    assert!(gw.logs().contains("restart #1"));
    let st = gw.kill9()?;
    assert_eq!(st.code(), Some(137), "{st}");
    gw.restart()?;
    Ok(())
}

#[test]
fn gateway_start_failure_reports_its_logs() -> anyhow::Result<()> {
    let tmp = temp_dir("fake")?;
    let fake = fake_gatehouse(&tmp)?;
    let err = Gateway::start(GatewayConfig::new().binary(&fake).env("FAKE_FAIL", "1"))
        .err()
        .ok_or_else(|| anyhow::anyhow!("a failing gateway must not start"))?;
    let msg = format!("{err:#}");
    assert!(msg.contains("exited with"), "{msg}");
    assert!(msg.contains("fake: cannot start"), "{msg}");
    Ok(())
}

/// The harness against the real binary: the ready-file and CLI contract it relies on.
#[tokio::test]
async fn real_gateway_contract() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let mut gw = Gateway::start(
        GatewayConfig::new().resource(
            Resource::orders_db(&pg, "orders-db")
                .label("env", "dev")
                .label("data_class", "internal"),
        ),
    )?;
    assert_eq!(gw.ready()["pid"].as_u64(), gw.pid().map(u64::from));
    let out = gw
        .psql_as(
            "alice",
            &["engineering"],
            "orders-db",
            "select count(*) from orders",
        )?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "1000");
    // sqlx over TLS (self-signed certificate, sslmode=require) with a token.
    let token = gw.token("alice", &["engineering"], "10m")?;
    let mut conn = rust_client(gw.pg_addr(), "orders-db", "alice", &token).await?;
    let (n,): (i64,) = sqlx::query_as("select count(*) from orders where id <= $1")
        .bind(10_i32)
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(n, 10);
    conn.close().await?;
    assert!(!gw.audit_events()?.is_empty());
    gw.audit_verify()?.ok()?;
    assert!(!gw.audit_public_key()?.is_empty());

    let st = gw.stop()?;
    assert!(st.success(), "{st}\n{}", gw.logs());
    gw.restart()?;
    gw.psql_as("bob", &["dba"], "orders-db", "select 1")?.ok()?;
    gw.kill9()?;
    gw.restart()?;
    gw.audit_verify()?.ok()?;
    Ok(())
}
