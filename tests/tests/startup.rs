//! What a client's startup packet asks for is honoured, answered or refused by name; never
//! silently dropped. And a cancel request over TLS ends cleanly. Real psql and a real
//! PostgreSQL; a hand-written wire client where psql cannot ask (protocol 3.2, `_pq_` options,
//! a raw encrypted cancel).

use std::sync::Arc;
use std::time::Duration;

use gatehouse_tests::util::poll;
use gatehouse_tests::{
    frontend_message, query_message, raw_connect, read_backend_message, read_byte, ssl_request,
    untagged, Gateway, GatewayConfig, PgServer, Psql, Resource,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn gateway(pg: &PgServer) -> anyhow::Result<Gateway> {
    Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(pg, "orders-db")),
    )
}

#[test]
fn startup_options_are_forwarded_or_refused_by_name() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let psql = || {
        Psql::new(gw.pg_addr(), "orders-db", "alice")
            .password(&token)
            .sslmode("require")
    };

    // The client asked for a read-only session: it gets one.
    let out = psql()
        .env("PGOPTIONS", "-c default_transaction_read_only=on")
        .run("show default_transaction_read_only")?;
    assert_eq!(out.stdout.trim(), "on", "{out:?}");

    // A setting that could make the brokered role another one is refused, named.
    let out = psql()
        .env("PGOPTIONS", "-c role=postgres")
        .run("select current_user")?;
    assert!(
        out.stderr.contains("`options` asks for `role=postgres`"),
        "{out:?}"
    );
    assert!(out.stdout.trim().is_empty(), "{out:?}");

    // A replication connection is refused, not turned into an ordinary session, and the
    // refusal is in the log.
    let out = psql()
        .conninfo_param("replication", "database")
        .run("IDENTIFY_SYSTEM")?;
    assert!(
        out.stderr
            .contains("replication connections (replication=database) are not allowed"),
        "{out:?}"
    );
    let failed = poll(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(gw.audit_events()?.into_iter().find(|e| {
            e["kind"] == "session.failed"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("replication"))
        }))
    })?
    .ok_or_else(|| anyhow::anyhow!("no session.failed for the replication attempt"))?;
    assert_eq!(failed["actor"], "alice", "{failed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_protocol_and_pq_options_are_negotiated_down_as_postgresql_does(
) -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let mut s = raw_connect(gw.pg_addr()).await?;
    // Protocol 3.2 (what libpq 18 asks with max_protocol_version=latest) and an option.
    let mut body = (196_608u32 + 2).to_be_bytes().to_vec();
    for (k, v) in [
        ("user", "alice"),
        ("database", "orders-db"),
        ("_pq_.made_up", "1"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    s.write_all(&untagged(&body)).await?;
    let npv = read_backend_message(&mut s).await?;
    assert_eq!(npv.tag, b'v', "NegotiateProtocolVersion first: {npv:?}");
    assert_eq!(&npv.body[..8], &[0, 0, 0, 0, 0, 0, 0, 1], "3.0, one option");
    assert_eq!(&npv.body[8..], b"_pq_.made_up\0");
    let auth = read_backend_message(&mut s).await?;
    assert_eq!(auth.auth_code(), Some(3));
    let mut pw = token.into_bytes();
    pw.push(0);
    s.write_all(&frontend_message(b'p', &pw)).await?;
    loop {
        let m = read_backend_message(&mut s).await?;
        assert_ne!(m.tag, b'E', "{:?}", m.message());
        if m.tag == b'Z' {
            break;
        }
    }
    s.write_all(&query_message("select 'on-3.0'")).await?;
    let mut rows = Vec::new();
    loop {
        let m = read_backend_message(&mut s).await?;
        if m.tag == b'D' {
            rows.push(String::from_utf8_lossy(&m.body[6..]).into_owned());
        }
        if m.tag == b'Z' {
            break;
        }
    }
    assert_eq!(rows, ["on-3.0"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_cancel_request_ends_with_close_notify() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(gw.tls_cert())?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = raw_connect(gw.pg_addr()).await?;
    tcp.write_all(&ssl_request()).await?;
    assert_eq!(read_byte(&mut tcp).await?, Some(b'S'));
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    // A cancel for no live session: PostgreSQL answers nothing and closes; so does the gateway,
    // but cleanly, so that the client can tell a close from a cut.
    let mut body = 80_877_102_i32.to_be_bytes().to_vec();
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&9i32.to_be_bytes());
    tls.write_all(&untagged(&body)).await?;
    tls.flush().await?;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut rest)).await?;
    assert!(
        read.is_ok(),
        "the gateway closed without close_notify: {read:?}"
    );
    assert!(rest.is_empty());
    Ok(())
}
