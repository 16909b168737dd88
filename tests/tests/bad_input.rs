//! Malformed and hostile input at the PostgreSQL front door: each closes that connection with an
//! error, and the gateway keeps serving everyone else.

use std::time::Duration;

use gatehouse_tests::{
    cancel_request, raw_connect, raw_password_login, read_backend_message, read_byte,
    read_to_close, ssl_request, startup_packet, Gateway, GatewayConfig, PgServer, Resource,
};
use tokio::io::AsyncWriteExt;

fn gateway(pg: &PgServer) -> anyhow::Result<Gateway> {
    Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(pg, "orders-db")))
}

fn still_serves(gw: &Gateway) -> anyhow::Result<()> {
    let out = gw
        .psql_as("alice", &["engineering"], "orders-db", "select 41 + 1")?
        .ok()?;
    assert_eq!(out.stdout_trimmed(), "42");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_startup_packets() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;

    // HTTP instead of PostgreSQL.
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let reply = read_to_close(&mut s).await?;
    assert_eq!(
        reply.first(),
        Some(&b'E'),
        "an ErrorResponse, then close: {reply:?}"
    );
    assert!(String::from_utf8_lossy(&reply).contains("invalid startup packet"));

    // A startup packet claiming 1 MB (PostgreSQL's limit is 10,000 bytes).
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&1_000_000u32.to_be_bytes()).await?;
    s.write_all(&196_608u32.to_be_bytes()).await?;
    let reply = read_to_close(&mut s).await?;
    assert!(
        String::from_utf8_lossy(&reply).contains("outside 8..=10000"),
        "{reply:?}"
    );

    // Plaintext startup when TLS is required: a clear 28000.
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&startup_packet("alice", "orders-db", &[]))
        .await?;
    let msg = read_backend_message(&mut s).await?;
    assert_eq!(msg.sqlstate().as_deref(), Some("28000"));
    assert!(msg
        .message()
        .unwrap_or_default()
        .contains("requires an encrypted connection"));

    // A client that connects and says nothing is dropped after the handshake timeout; the
    // others are not held up meanwhile.
    let _idle = raw_connect(gw.pg_addr()).await?;
    tokio::task::spawn_blocking({
        let addr = gw.pg_addr();
        let token = gw.token("alice", &["engineering"], "1h")?;
        move || gatehouse_tests::psql(addr, "orders-db", "alice", &token, "select 1")
    })
    .await??
    .ok()?;
    still_serves(&gw)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_ssl_request_is_never_processed() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    let mut s = raw_connect(gw.pg_addr()).await?;
    // SSLRequest immediately followed by a plaintext startup packet in the same write: the bytes
    // after the request must not be taken as protocol (they fail the TLS handshake).
    let mut bytes = ssl_request();
    bytes.extend(startup_packet("alice", "orders-db", &[]));
    s.write_all(&bytes).await?;
    assert_eq!(read_byte(&mut s).await?, Some(b'S'));
    let rest = read_to_close(&mut s).await?;
    assert!(
        !rest.contains(&b'R'),
        "no authentication request may follow: {rest:?}"
    );
    gw.wait_for_log("tls handshake failed", Duration::from_secs(5))?;
    still_serves(&gw)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_message_lengths_are_refused_before_buffering() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    // A password message claiming 1 GiB.
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&startup_packet("alice", "orders-db", &[]))
        .await?;
    let auth = read_backend_message(&mut s).await?;
    assert_eq!(auth.auth_code(), Some(3));
    s.write_all(b"p").await?;
    s.write_all(&(1u32 << 30).to_be_bytes()).await?;
    let msg = read_backend_message(&mut s).await?;
    assert_eq!(
        msg.sqlstate().as_deref(),
        Some("08P01"),
        "{:?}",
        msg.message()
    );

    // Inside an established session: a Query claiming 1 GiB ends the session with 08P01.
    let mut s = raw_password_login(gw.pg_addr(), "alice", "orders-db", token.as_bytes()).await?;
    loop {
        let m = read_backend_message(&mut s).await?;
        assert_ne!(m.tag, b'E', "login failed: {:?}", m.message());
        if m.tag == b'Z' {
            break;
        }
    }
    s.write_all(b"Q").await?;
    s.write_all(&(1u32 << 30).to_be_bytes()).await?;
    s.write_all(b"select").await?;
    let msg = read_backend_message(&mut s).await?;
    assert_eq!(
        msg.sqlstate().as_deref(),
        Some("08P01"),
        "{:?}",
        msg.message()
    );
    assert!(msg
        .message()
        .unwrap_or_default()
        .contains("exceeds the limit"));
    let _ = read_to_close(&mut s).await?;

    let events = gw.wait_for_event(|e| e["kind"] == "session.end", Duration::from_secs(5))?;
    let end = events
        .iter()
        .rfind(|e| e["kind"] == "session.end")
        .cloned()
        .unwrap_or_default();
    assert!(
        end["reason"]
            .as_str()
            .is_some_and(|r| r.contains("protocol")),
        "{end}"
    );
    still_serves(&gw)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bogus_cancel_requests_are_dropped() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway(&pg)?;
    // A long query in a real session, then cancels with wrong keys: it must keep running.
    let token = gw.token("alice", &["engineering"], "1h")?;
    let addr = gw.pg_addr();
    let long = tokio::task::spawn_blocking(move || {
        gatehouse_tests::psql(
            addr,
            "orders-db",
            "alice",
            &token,
            "select pg_sleep(2), 'survived'",
        )
    });
    // The query runs upstream before the bogus cancels go out.
    pg.wait_for_active_query("select pg_sleep(2), 'survived'", 1, Duration::from_secs(10))?;
    for (pid, secret) in [(1, 1), (0, 0), (i32::MAX, -1), (12345, 67890)] {
        let mut s = raw_connect(gw.pg_addr()).await?;
        s.write_all(&cancel_request(pid, secret)).await?;
        let reply = read_to_close(&mut s).await?;
        assert!(
            reply.is_empty(),
            "a cancel request gets no answer: {reply:?}"
        );
    }
    let out = long.await??.ok()?;
    assert!(out.stdout.contains("survived"), "{out}");
    gw.wait_for_log(
        "cancel request matches no live session",
        Duration::from_secs(5),
    )?;
    let events = gw.audit_export_jsonl()?;
    assert!(!events.iter().any(|e| e["kind"] == "session.cancel"));
    still_serves(&gw)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_is_declined_and_silent_clients_time_out() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .set("postgres", "handshake_timeout", "\"1s\"")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    // GSSENCRequest gets `N`; the client may then ask for TLS on the same connection.
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&gatehouse_tests::gssenc_request()).await?;
    assert_eq!(read_byte(&mut s).await?, Some(b'N'));
    s.write_all(&ssl_request()).await?;
    assert_eq!(read_byte(&mut s).await?, Some(b'S'));

    // A client that says nothing is dropped after the handshake timeout.
    let mut idle = raw_connect(gw.pg_addr()).await?;
    let started = std::time::Instant::now();
    let _ = read_to_close(&mut idle).await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "dropped after ~1 s, not held open"
    );
    still_serves(&gw)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_names_are_refused_before_anything_is_stored() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let before = gw.audit_events()?.len();
    let long = "u".repeat(4900);
    for (user, database) in [(long.as_str(), "orders-db"), ("alice", long.as_str())] {
        let mut s = raw_connect(gw.pg_addr()).await?;
        s.write_all(&startup_packet(user, database, &[])).await?;
        let msg = read_backend_message(&mut s).await?;
        assert_eq!(
            msg.sqlstate().as_deref(),
            Some("28000"),
            "{:?}",
            msg.message()
        );
        let _ = read_to_close(&mut s).await?;
    }
    still_serves(&gw)?;
    // Only the legitimate session's events were stored: no event carries the long names.
    let events = gw.audit_events()?;
    assert!(events.len() > before);
    assert!(
        events.iter().all(|e| !e.to_string().contains(&long[..100])),
        "a refused name reached the audit log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_credentials_is_a_few_events_and_a_count() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let failed = |gw: &Gateway| -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(gw
            .audit_events()?
            .into_iter()
            .filter(|e| e["kind"] == "auth.failed")
            .collect())
    };
    let flood = 200;
    for _ in 0..flood {
        let mut s = raw_password_login(gw.pg_addr(), "alice", "orders-db", b"not-a-token").await?;
        let refused = read_backend_message(&mut s).await?;
        assert_eq!(refused.sqlstate().as_deref(), Some("28P01"));
    }
    // Every attempt was refused; the log holds the first few as events and the rest as one
    // count, written when the source's window ends.
    let summary =
        gatehouse_tests::util::poll(Duration::from_secs(20), Duration::from_millis(200), || {
            Ok(failed(&gw)?
                .into_iter()
                .find(|e| e["detail"]["aggregated"] == true))
        })?
        .ok_or_else(|| anyhow::anyhow!("no summary of the flood: {:#?}", failed(&gw)))?;
    let single = failed(&gw)?
        .into_iter()
        .filter(|e| e["detail"]["aggregated"] != true)
        .count();
    assert_eq!(single, 5, "the first failures are events of their own");
    assert_eq!(summary["detail"]["count"], flood - 5, "{summary}");
    assert_eq!(summary["detail"]["client_addr"], "127.0.0.1", "{summary}");
    // Meanwhile a real user is served as ever.
    still_serves(&gw)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_authentication_are_counted_in_the_log() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .set("postgres", "handshake_timeout", "\"1s\"")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let refused = |gw: &Gateway| -> anyhow::Result<Vec<serde_json::Value>> {
        Ok(gw
            .audit_events()?
            .into_iter()
            .filter(|e| e["kind"] == "connection.refused")
            .collect())
    };
    // A malformed startup, a name gatehouse never issues, a cancel for no session, a client
    // that says nothing: each is answered as before, and each is now in the log.
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let _ = read_to_close(&mut s).await?;
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&startup_packet("al ice", "orders-db", &[]))
        .await?;
    let _ = read_to_close(&mut s).await?;
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&cancel_request(4242, 1)).await?;
    let _ = read_to_close(&mut s).await?;
    let mut idle = raw_connect(gw.pg_addr()).await?;
    let _ = read_to_close(&mut idle).await?;
    // A client that closes without a word (a health check) is no refusal.
    drop(raw_connect(gw.pg_addr()).await?);
    let classes = ["handshake", "names", "cancel", "timeout"];
    let seen =
        gatehouse_tests::util::poll(Duration::from_secs(10), Duration::from_millis(100), || {
            let events = refused(&gw)?;
            let all = classes
                .iter()
                .all(|c| events.iter().any(|e| e["detail"]["class"] == *c));
            Ok(all.then_some(events))
        })?
        .ok_or_else(|| anyhow::anyhow!("not every refusal was counted: {:#?}", refused(&gw)))?;
    assert_eq!(seen.len(), classes.len(), "{seen:#?}");
    for e in &seen {
        assert_eq!(e["detail"]["door"], "postgres", "{e}");
        assert_eq!(
            e["detail"]["client_addr"]
                .as_str()
                .map(|a| a.starts_with("127.0.0.1:")),
            Some(true),
            "{e}"
        );
        assert!(e["controls"].to_string().contains("8.20"), "{e}");
    }
    let cancel = seen
        .iter()
        .find(|e| e["detail"]["class"] == "cancel")
        .map(|e| e["reason"].to_string())
        .unwrap_or_default();
    assert!(cancel.contains("4242"), "{cancel}");

    // A flood of garbage is a few events and a count, like forged credentials: every
    // malformed startup (the one above and the flood) is either an event of its own or in
    // a summary's count.
    let flood = 30;
    for _ in 0..flood {
        let mut s = raw_connect(gw.pg_addr()).await?;
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").await?;
        let _ = read_to_close(&mut s).await?;
    }
    let tally = |gw: &Gateway| -> anyhow::Result<(u64, u64)> {
        let (mut single, mut counted) = (0, 0);
        for e in refused(gw)? {
            if e["detail"]["aggregated"] == true {
                assert_eq!(e["detail"]["class"], "postgres handshake", "{e}");
                counted += e["detail"]["count"].as_u64().unwrap_or(0);
            } else if e["detail"]["class"] == "handshake" {
                single += 1;
            }
        }
        Ok((single, counted))
    };
    let done =
        gatehouse_tests::util::poll(Duration::from_secs(25), Duration::from_millis(200), || {
            let (single, counted) = tally(&gw)?;
            Ok((single + counted == flood + 1).then_some(single))
        })?
        .ok_or_else(|| anyhow::anyhow!("the flood was not all counted: {:?}", tally(&gw)))?;
    assert!(done <= 10, "{done} single events for one source's flood");
    still_serves(&gw)?;
    Ok(())
}
