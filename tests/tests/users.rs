//! Deprovisioning: `gatehouse users disable` refuses the user at the front door and cuts their
//! live sessions within a second, with audit evidence for Annex A 5.18 and 6.5.

use std::time::{Duration, Instant};

use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Psql, Resource};

#[test]
fn disabling_a_user_cuts_live_sessions_within_a_second() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "8h")?;
    let bob = gw.token("bob", &["engineering"], "8h")?;
    let cfg = gw.config_path().to_string_lossy().into_owned();

    let long = |user: &str, token: &str| -> anyhow::Result<std::process::Child> {
        Psql::new(gw.pg_addr(), "orders-db", user)
            .password(token)
            .spawn("select pg_sleep(30)")
    };
    let alice_session = long("alice", &token)?;
    let bob_session = long("bob", &bob)?;
    // Both sessions are live, their queries running upstream, before the disable.
    pg.wait_for_active_query("select pg_sleep(30)", 2, Duration::from_secs(30))?;

    let out = gw
        .cli(&[
            "users",
            "disable",
            "alice",
            "--config",
            &cfg,
            "--reason",
            "left the company",
            "--by",
            "hr-admin",
        ])?
        .ok()?;
    let disabled_at = Instant::now();
    assert!(out.stdout.contains("alice disabled"), "{out}");
    let out = alice_session.wait_with_output()?;
    let cut_after = disabled_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        cut_after <= Duration::from_secs(1),
        "session cut after {cut_after:?}"
    );
    assert!(
        stderr.contains("access revoked: user alice was disabled"),
        "{stderr}"
    );

    // The cut also stops alice's query upstream (PostgreSQL would otherwise sleep on until
    // it next wrote to the closed socket): only bob's sleep is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sleeping = pg.exec(
            "postgres",
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'",
        )?;
        if sleeping.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice's query still runs upstream after the cut ({} sleeping)",
            sleeping.trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A new connection is refused, even with a token that is otherwise valid.
    let out = gw.psql("orders-db", "alice", &token, "select 1")?.err()?;
    assert!(out.stderr.contains("user \"alice\" is disabled"), "{out}");
    // Bob is untouched.
    assert!(gw.psql("orders-db", "bob", &bob, "select 1")?.success());

    let events: Vec<serde_json::Value> = gw
        .settled_export()?
        .into_iter()
        .filter(|e| e["type"] == "event")
        .collect();
    let disabled = events
        .iter()
        .find(|e| e["kind"] == "user.disabled")
        .cloned()
        .unwrap_or_default();
    assert_eq!(disabled["actor"], "hr-admin");
    assert_eq!(disabled["resource"], "alice");
    assert_eq!(disabled["reason"], "left the company");
    for c in ["5.18", "6.5"] {
        assert!(
            disabled["controls"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|x| x == c)),
            "{disabled}"
        );
    }
    let cut: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "session.cut")
        .collect();
    assert_eq!(cut.len(), 1, "only alice's session is cut: {cut:?}");
    assert_eq!(cut[0]["actor"], "alice");
    assert!(events.iter().any(|e| e["kind"] == "auth.failed"
        && e["actor"] == "alice"
        && e["reason"] == "user is disabled"));

    let list = gw.cli(&["users", "list", "--config", &cfg])?.ok()?;
    let alice_line = list
        .stdout
        .lines()
        .find(|l| l.starts_with("alice "))
        .unwrap_or_default()
        .to_string();
    assert!(
        alice_line.contains("disabled") && alice_line.contains("engineering"),
        "{list}"
    );
    let show = gw
        .cli(&["users", "show", "alice", "--config", &cfg])?
        .ok()?;
    assert!(
        show.stdout.contains("disabled at") && show.stdout.contains("hr-admin"),
        "{show}"
    );

    // Enabled again, alice gets back in.
    gw.cli(&[
        "users", "enable", "alice", "--config", &cfg, "--by", "hr-admin",
    ])?
    .ok()?;
    assert!(gw.psql("orders-db", "alice", &token, "select 1")?.success());
    assert!(gw
        .audit_events()?
        .iter()
        .any(|e| e["kind"] == "user.enabled"));
    assert!(
        gw.audit_verify()?.success(),
        "the CLI and the gateway share one intact chain"
    );

    let mut bob_session = bob_session;
    let _ = bob_session.kill();
    let _ = bob_session.wait();
    Ok(())
}

#[test]
fn a_leaver_who_never_logged_in_is_refused_from_the_start() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let cfg = gw.config_path().to_string_lossy().into_owned();
    gw.cli(&[
        "users",
        "disable",
        "zed",
        "--config",
        &cfg,
        "--reason",
        "offboarded before first day",
    ])?
    .ok()?;
    let out = gw
        .psql_as("zed", &["dba"], "orders-db", "select 1")?
        .err()?;
    assert!(out.stderr.contains("is disabled"), "{out}");
    Ok(())
}
