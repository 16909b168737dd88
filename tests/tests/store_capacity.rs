//! The store's quota (`[store] quota_bytes`): the gateway alerts before it is reached, and
//! over it only counts what unauthenticated clients make it write, while people with access
//! keep working and keep being recorded. Real gateway, real PostgreSQL, psql.

use std::time::Duration;

use gatehouse_tests::util::poll;
use gatehouse_tests::{
    raw_password_login, read_backend_message, Gateway, GatewayConfig, PgServer, Psql, Resource,
};
use serde_json::Value;

const QUOTA: u64 = 4 << 20;
const ALERT_PERCENT: u64 = 25;

fn capacity_events(gw: &Gateway) -> anyhow::Result<Vec<Value>> {
    Ok(gw
        .audit_events()?
        .into_iter()
        .filter(|e| e["kind"] == "store.capacity")
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_quota_the_store_alerts_and_sheds_unauthenticated_noise() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .set("store", "quota_bytes", &QUOTA.to_string())
            .set("store", "alert_percent", &ALERT_PERCENT.to_string())
            .set("store", "capacity_check_interval", "\"1s\"")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let psql = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .timeout(Duration::from_secs(120));
    // Each statement is logged as 8 KiB (its head and tail, with its hash). The alert level
    // is a quarter of the quota, so 3 MiB lie between the two levels: small steps (ten
    // statements, one psql each) until the alert, so that no step outruns a check (one a
    // second) across that whole band; then larger ones until the quota.
    let filler = format!("select 1 /* {} */;\n", "x".repeat(9000));
    let alert = poll(Duration::from_secs(240), Duration::from_millis(10), || {
        let out = psql.run_script(&filler.repeat(10))?;
        anyhow::ensure!(out.success(), "{out}");
        let events = capacity_events(&gw)?;
        anyhow::ensure!(
            !events.iter().any(|e| e["detail"]["level"] == "over_quota"),
            "over the quota with no alert before it: {events:#?}"
        );
        Ok(events
            .iter()
            .find(|e| e["detail"]["level"] == "alert")
            .cloned())
    })?
    .ok_or_else(|| anyhow::anyhow!("no alert while the store grew"))?;
    let over = poll(Duration::from_secs(240), Duration::from_millis(10), || {
        let out = psql.run_script(&filler.repeat(30))?;
        anyhow::ensure!(out.success(), "{out}");
        Ok(capacity_events(&gw)?
            .into_iter()
            .find(|e| e["detail"]["level"] == "over_quota"))
    })?
    .ok_or_else(|| anyhow::anyhow!("the store never went over its quota"))?;
    let events = capacity_events(&gw)?;
    assert!(alert["seq"].as_u64() < over["seq"].as_u64(), "{events:#?}");
    let size = alert["detail"]["size_bytes"].as_u64().unwrap_or(0);
    assert!(
        (QUOTA * ALERT_PERCENT / 100..QUOTA).contains(&size),
        "alerted at {size} bytes"
    );
    assert!(over["detail"]["size_bytes"].as_u64().unwrap_or(0) >= QUOTA);
    for c in ["8.6", "8.16"] {
        assert!(over["controls"].to_string().contains(c), "{over}");
    }
    gw.wait_for_log("the store is over its quota", Duration::from_secs(10))?;

    // Over the quota, forged credentials are only counted: no event of their own, one
    // summary with the count.
    let over_seq = over["seq"].as_u64().unwrap_or(u64::MAX);
    let flood = 40;
    for _ in 0..flood {
        let mut s = raw_password_login(gw.pg_addr(), "alice", "orders-db", b"not-a-token").await?;
        let refused = read_backend_message(&mut s).await?;
        assert_eq!(refused.sqlstate().as_deref(), Some("28P01"));
    }
    let failed_after = |gw: &Gateway| -> anyhow::Result<Vec<Value>> {
        Ok(gw
            .audit_events()?
            .into_iter()
            .filter(|e| e["kind"] == "auth.failed" && e["seq"].as_u64() > Some(over_seq))
            .collect())
    };
    let summary = poll(Duration::from_secs(25), Duration::from_millis(200), || {
        Ok(failed_after(&gw)?
            .into_iter()
            .find(|e| e["detail"]["aggregated"] == true))
    })?
    .ok_or_else(|| anyhow::anyhow!("no summary of the flood: {:#?}", failed_after(&gw)))?;
    assert_eq!(summary["detail"]["count"], flood, "{summary}");
    let single = failed_after(&gw)?
        .into_iter()
        .filter(|e| e["detail"]["aggregated"] != true)
        .count();
    assert_eq!(
        single, 0,
        "over the quota no failure is an event of its own"
    );

    // People with access are served, and recorded, as ever.
    let out = psql.run("select 'still served'")?;
    assert!(
        out.success() && out.stdout.contains("still served"),
        "{out}"
    );
    let served = gw.audit_events()?.into_iter().any(|e| {
        e["kind"] == "db.statement"
            && e["seq"].as_u64() > Some(over_seq)
            && e["detail"].to_string().contains("still served")
    });
    assert!(served, "the statement over the quota was not recorded");
    Ok(())
}

#[test]
fn a_postgres_store_is_measured_too() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let url = pg.create_database("gatehouse")?;
    // An empty PostgreSQL database already takes several MiB: over a 1 MiB quota at once.
    let gw = Gateway::start(
        GatewayConfig::new()
            .store_url(&url)
            .set("store", "quota_bytes", &(1u64 << 20).to_string())
            .set("store", "capacity_check_interval", "\"1s\"")
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let over = poll(Duration::from_secs(20), Duration::from_millis(200), || {
        Ok(capacity_events(&gw)?
            .into_iter()
            .find(|e| e["detail"]["level"] == "over_quota"))
    })?
    .ok_or_else(|| anyhow::anyhow!("no store.capacity event: {}", gw.logs()))?;
    assert!(
        over["detail"]["size_bytes"].as_u64().unwrap_or(0) > 1 << 20,
        "{over}"
    );
    assert!(!gw.logs().contains("cannot read the store's size"));
    Ok(())
}
