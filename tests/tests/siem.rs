//! The audit log streamed to a SIEM: a real rsyslog on loopback receives RFC 5424 frames over
//! TCP and parses their structured data (`mmpstrucdata`); stopped for 10 s while sessions go on
//! and started again, it ends up with every event (at least once), and the gateway recorded
//! that the stream fell behind and caught up. An HTTP collector receives the same events in
//! JSON batches; one that never answers holds no session up and is recorded as behind.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gatehouse_tests::rsyslog::Rsyslog;
use gatehouse_tests::util::poll;
use gatehouse_tests::webhook::WebhookReceiver;
use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Resource, TempDir};

fn select(gw: &Gateway, home: &TempDir) -> anyhow::Result<()> {
    gw.as_user(home, &["psql", "orders-db", "--", "-tAc", "select 1"])?
        .ok()?;
    Ok(())
}

/// Waits until rsyslog holds every seq the log has now.
fn all_received(gw: &Gateway, rs: &Rsyslog, timeout: Duration) -> anyhow::Result<u64> {
    let head = gw
        .audit_events()?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    poll(timeout, Duration::from_millis(100), || {
        let got: BTreeSet<u64> = rs.received()?.iter().map(|r| r.0).collect();
        Ok((1..=head).all(|s| got.contains(&s)).then_some(()))
    })?
    .ok_or_else(|| {
        let got: BTreeSet<u64> = rs
            .received()
            .unwrap_or_default()
            .iter()
            .map(|r| r.0)
            .collect();
        let missing: Vec<u64> = (1..=head).filter(|s| !got.contains(s)).take(20).collect();
        anyhow::anyhow!("rsyslog lacks seqs {missing:?} of 1..={head} after {timeout:?}")
    })?;
    Ok(head)
}

#[test]
fn rsyslog_receives_every_event_across_a_10_s_outage() -> anyhow::Result<()> {
    let mut rs = Rsyslog::start()?;
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .set("siem", "syslog_tcp", &format!("\"{}\"", rs.addr()))
            .set("siem", "lag_alert_after", "\"3s\""),
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    for _ in 0..3 {
        select(&gw, &bob)?;
    }
    let before = all_received(&gw, &rs, Duration::from_secs(20))?;
    let got = rs.received()?;
    assert!(
        got.iter()
            .any(|(_, kind, decision, msgid)| kind == "access.decision"
                && decision == "allow"
                && msgid == "access.decision"),
        "rsyslog parsed the structured data: {got:?}"
    );

    // The receiver goes away for 10 s; sessions go on and nothing waits for it.
    rs.stop()?;
    let down = Instant::now();
    for _ in 0..5 {
        let t = Instant::now();
        select(&gw, &bob)?;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a session waited on the SIEM"
        );
    }
    // The outage itself is the scenario: it lasts 10 s whatever else happens.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    rs.start_again()?;
    let after = all_received(&gw, &rs, Duration::from_secs(30))?;
    assert!(
        after > before + 5 * 4,
        "the sessions during the outage are in the log: {before} -> {after}"
    );

    let lag: Vec<String> = gw
        .wait_for_event(
            |e| e["kind"] == "siem.lag" && e["decision"] == "caught_up",
            Duration::from_secs(20),
        )?
        .into_iter()
        .filter(|e| e["kind"] == "siem.lag")
        .map(|e| e["decision"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(lag.first().map(String::as_str), Some("behind"), "{lag:?}");
    assert!(lag.contains(&"caught_up".to_string()), "{lag:?}");
    // And the stream carries those events too.
    all_received(&gw, &rs, Duration::from_secs(20))?;
    Ok(())
}

#[test]
fn an_http_collector_gets_every_event_and_a_hung_one_holds_nothing_up() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let live = WebhookReceiver::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .set("siem", "http_url", &format!("\"{}\"", live.url())),
    )?;
    let bob = gw.engineer("bob", &["engineering"])?;
    for _ in 0..3 {
        select(&gw, &bob)?;
    }
    let head = gw
        .audit_events()?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let got: BTreeSet<u64> = live
            .bodies()
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["seq"].as_u64())
            .collect();
        Ok((1..=head).all(|s| got.contains(&s)).then_some(()))
    })?
    .ok_or_else(|| {
        anyhow::anyhow!(
            "the collector did not get seqs 1..={head}: {:?}",
            live.bodies()
        )
    })?;
    assert!(live.bodies().iter().all(|b| b["source"] == "gatehouse"));

    // A collector that accepts and never answers: sessions do not wait, the lag is recorded.
    let hung = WebhookReceiver::dead()?;
    let gw2 = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .set("siem", "http_url", &format!("\"{}\"", hung.url()))
            .set("siem", "lag_alert_after", "\"2s\""),
    )?;
    let bob2 = gw2.engineer("bob", &["engineering"])?;
    for _ in 0..3 {
        let t = Instant::now();
        select(&gw2, &bob2)?;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a session waited on the SIEM"
        );
    }
    let events = gw2.wait_for_event(
        |e| e["kind"] == "siem.lag" && e["decision"] == "behind" && e["detail"]["sink"] == "http",
        Duration::from_secs(40),
    )?;
    assert!(events.iter().any(|e| e["kind"] == "session.end"));
    Ok(())
}
