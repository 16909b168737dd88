//! Upstream trust: the gateway sends a brokered credential only to an upstream that asks for a
//! method the resource allows, and only over the TLS the resource requires. The impostors here
//! are small servers on loopback that play a hostile PostgreSQL (no real server can be made to
//! ask for cleartext and then record what it got); the md5 and TLS cases use the real one.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_tests::pg::{TestCa, LEGACY_PASSWORD, LEGACY_USER, ORDERS_USER};
use gatehouse_tests::{rust_client, temp_dir, Gateway, GatewayConfig, PgServer, Psql, Resource};
use serde_json::Value;

const DEV: &[(&str, &str)] = &[("env", "dev"), ("data_class", "internal")];

/// The brokered password the impostors must never see.
const BROKERED: &str = "brokered-secret-that-must-stay-home";

fn events_of<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["type"] == "event" && e["kind"] == kind)
        .collect()
}

/// The SQLSTATE a sqlx client gets connecting to `resource`, or `connected`.
async fn sqlstate(gw: &Gateway, resource: &str, token: &str) -> Option<String> {
    match rust_client(gw.pg_addr(), resource, "alice", token).await {
        Ok(_) => Some("connected".into()),
        Err(e) => e
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
    }
}

#[derive(Clone, Copy)]
enum Ask {
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationOk at once, then ReadyForQuery: "trust".
    Nothing,
    /// Answers `N` to SSLRequest.
    NoTls,
}

/// A hostile "PostgreSQL" that records every byte a connection sends after its startup packet.
struct Impostor {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Impostor {
    fn start(ask: Ask) -> anyhow::Result<Impostor> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let log = received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let got = play(&mut conn, ask).unwrap_or_default();
                    if let Ok(mut l) = log.lock() {
                        l.push(got);
                    }
                });
            }
        });
        Ok(Impostor { addr, received })
    }

    /// What each finished connection sent after its startup packet.
    fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn play(conn: &mut TcpStream, ask: Ask) -> std::io::Result<Vec<u8>> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    loop {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; len.saturating_sub(4).min(10_000)];
        conn.read_exact(&mut body)?;
        if body.get(..4) == Some(&80_877_103u32.to_be_bytes()[..]) {
            conn.write_all(b"N")?;
            if matches!(ask, Ask::NoTls) {
                break;
            }
            continue;
        }
        break;
    }
    match ask {
        Ask::Cleartext => conn.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])?,
        Ask::Nothing => conn.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'])?,
        Ask::NoTls => {}
    }
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    Ok(rest)
}

/// True when `bytes` holds a PostgreSQL PasswordMessage or the brokered password.
fn leaked(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'p')
        || bytes
            .windows(BROKERED.len())
            .any(|w| w == BROKERED.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impostor_upstreams_get_no_credential() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let cleartext = Impostor::start(Ask::Cleartext)?;
    let trust = Impostor::start(Ask::Nothing)?;
    let no_tls = Impostor::start(Ask::NoTls)?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(
                Resource::postgres("cleartext-db", cleartext.addr, "orders")
                    .credential(ORDERS_USER, BROKERED)
                    .labels(DEV),
            )
            .resource(
                Resource::postgres("trust-db", trust.addr, "orders")
                    .credential(ORDERS_USER, BROKERED)
                    .labels(DEV),
            )
            .resource(
                Resource::postgres("no-tls-db", no_tls.addr, "orders")
                    .credential(ORDERS_USER, BROKERED)
                    .raw("tls", "\"require\"")
                    .labels(DEV),
            )
            // The real server asks legacy_app for md5, which this resource does not allow.
            .resource(
                Resource::postgres("legacy-db", pg.addr(), "orders")
                    .credential(LEGACY_USER, LEGACY_PASSWORD)
                    .labels(DEV),
            ),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    for (db, says) in [
        ("cleartext-db", "authentication method `password`"),
        ("trust-db", "authentication method `trust`"),
        ("legacy-db", "authentication method `md5`"),
        ("no-tls-db", "refused TLS"),
    ] {
        assert_eq!(
            sqlstate(&gw, db, &token).await.as_deref(),
            Some("08004"),
            "{db}"
        );
        let out = gw.psql(db, "alice", &token, "select 1")?.err()?;
        assert!(out.stderr.contains(says), "{db}: {out}");
        assert!(!out.stderr.contains("127.0.0.1:"), "{db}: {out}");
    }

    // Every impostor connection ended without a password message or the password.
    for (name, imp, conns) in [
        ("cleartext", &cleartext, 2),
        ("trust", &trust, 2),
        ("no-tls", &no_tls, 2),
    ] {
        let got = gatehouse_tests::util::poll(
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let r = imp.received();
                Ok((r.len() >= conns).then_some(r))
            },
        )?
        .ok_or_else(|| {
            anyhow::anyhow!("{name}: the impostor saw fewer than {conns} connections")
        })?;
        for bytes in &got {
            assert!(!leaked(bytes), "{name} impostor received {bytes:?}");
        }
    }

    let events = gw.settled_export()?;
    let failed = events_of(&events, "session.failed");
    assert_eq!(failed.len(), 8, "{failed:?}");
    for method in ["`password`", "`trust`", "`md5`"] {
        assert!(
            failed
                .iter()
                .any(|e| e["reason"].as_str().is_some_and(|r| r.contains(method))),
            "no session.failed names {method}: {failed:?}"
        );
    }
    assert!(!gw.logs().contains(BROKERED));
    assert!(!gw.logs().contains(LEGACY_PASSWORD));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_upstream_tls_against_a_test_ca() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let dir = temp_dir("upstream-ca")?;
    let ca = TestCa::create(dir.path(), "upstream-ca")?;
    let other = TestCa::create(dir.path(), "other-ca")?;
    pg.enable_tls_from_ca(&ca)?;
    let path = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let gw = Gateway::start(
        GatewayConfig::new()
            // `verify-full` is the default once a CA is given.
            .resource(Resource::orders_dev(&pg, "verified-db").raw("ca_file", &path(&ca.cert)))
            .resource(
                Resource::orders_dev(&pg, "wrong-ca-db")
                    .raw("tls", "\"verify-full\"")
                    .raw("ca_file", &path(&other.cert)),
            )
            .resource(Resource::orders_dev(&pg, "encrypted-db").raw("tls", "\"require\""))
            .resource(Resource::orders_dev(&pg, "plain-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let ssl = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

    for (db, encrypted) in [
        ("verified-db", "t"),
        ("encrypted-db", "t"),
        ("plain-db", "f"),
    ] {
        let out = gw.psql(db, "alice", &token, ssl)?.ok()?;
        assert_eq!(out.stdout_trimmed(), encrypted, "{db}");
    }

    assert_eq!(
        sqlstate(&gw, "wrong-ca-db", &token).await.as_deref(),
        Some("08004")
    );
    let out = gw.psql("wrong-ca-db", "alice", &token, "select 1")?.err()?;
    assert!(out.stderr.contains("TLS with the upstream failed"), "{out}");

    // Ctrl-C reaches the query over the verified TLS upstream (the cancel request is encrypted
    // too: the cancel key never crosses the upstream network in the clear).
    let child = Psql::new(gw.pg_addr(), "verified-db", "alice")
        .password(&token)
        .spawn("select pg_sleep(60)")?;
    let pid = child.id();
    pg.wait_for_active_query("select pg_sleep(60)", 1, Duration::from_secs(10))?;
    gatehouse_tests::send_signal(pid, "INT")?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    Ok(())
}
