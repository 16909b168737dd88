//! Deprovisioning: `gatehouse users disable` refuses the user at the front door and cuts their
//! live sessions within a second, with audit evidence for Annex A 5.18 and 6.5.

use std::time::{Duration, Instant};

use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Psql, Resource};
use serde_json::Value;

/// The operating-system user and host this test (and so the CLI it runs) runs as: the real uid
/// of /proc/self/status, its /etc/passwd name, the kernel's host name.
fn os_identity() -> anyhow::Result<(String, u64, String)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Uid: line in {status}"))?;
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let name = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| format!("uid {uid}"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    Ok((name, uid, host))
}

/// `e` names the operator: the claimed name as actor and `by`, and who really ran the command.
fn assert_operator(e: &Value, by: &str) -> anyhow::Result<()> {
    let (os_user, uid, host) = os_identity()?;
    let d = &e["detail"];
    assert_eq!(e["actor"], by, "{e}");
    assert_eq!(d["by"], by, "{e}");
    assert_eq!(d["os_user"], os_user.as_str(), "{e}");
    assert_eq!(d["uid"], uid, "{e}");
    assert_eq!(d["host"], host.as_str(), "{e}");
    Ok(())
}

fn count(gw: &Gateway, kind: &str) -> anyhow::Result<usize> {
    Ok(gw
        .audit_events()?
        .iter()
        .filter(|e| e["kind"] == kind)
        .count())
}

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
    assert_operator(&disabled, "hr-admin")?;
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
        "--unseen",
    ])?
    .ok()?;
    let out = gw
        .psql_as("zed", &["dba"], "orders-db", "select 1")?
        .err()?;
    assert!(out.stderr.contains("is disabled"), "{out}");
    Ok(())
}

#[test]
fn changes_that_change_nothing_are_errors_and_write_no_event() -> anyhow::Result<()> {
    let gw = Gateway::start(GatewayConfig::new())?;

    // A typo is not a disable.
    let out = gw.cli(&["users", "disable", "nobody-such", "--reason", "left"])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("nobody-such"), "{out}");
    assert!(!out.stdout.contains("disabled"), "{out}");
    let out = gw.cli(&["users", "enable", "nobody-such"])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("nobody-such"), "{out}");
    assert_eq!(count(&gw, "user.disabled")?, 0);
    assert_eq!(count(&gw, "user.enabled")?, 0);
    let list = gw.cli(&["users", "list"])?.ok()?;
    assert!(!list.stdout.contains("nobody-such"), "{list}");

    // A service account is known once a token is issued for it. Without --by the operator is
    // the operating-system user, never "unknown".
    gw.token("svc-report", &["reporting"], "1h")?;
    let out = gw
        .cli(&["users", "disable", "svc-report", "--reason", "retired"])?
        .ok()?;
    assert!(out.stdout.contains("svc-report disabled"), "{out}");
    let (os_user, _, _) = os_identity()?;
    let events = gw.audit_events()?;
    let disabled: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "user.disabled")
        .collect();
    assert_eq!(disabled.len(), 1);
    assert_operator(disabled[0], &os_user)?;
    assert_ne!(disabled[0]["actor"], "unknown");

    // Disabling again, or enabling twice, says so and fails.
    let out = gw.cli(&["users", "disable", "svc-report", "--by", "hr-admin"])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("already disabled"), "{out}");
    assert_eq!(count(&gw, "user.disabled")?, 1);
    gw.cli(&["users", "enable", "svc-report", "--by", "hr-admin"])?
        .ok()?;
    let out = gw.cli(&["users", "enable", "svc-report", "--by", "hr-admin"])?;
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(out.stderr.contains("not disabled"), "{out}");
    assert_eq!(count(&gw, "user.enabled")?, 1);
    let enabled = gw
        .audit_events()?
        .into_iter()
        .find(|e| e["kind"] == "user.enabled")
        .unwrap_or_default();
    assert_operator(&enabled, "hr-admin")?;

    // A claimed name is bounded and printable.
    for bad in [
        "evil\n[fake] user.enabled",
        &"x".repeat(129),
        "\u{1b}[2Jroot",
    ] {
        let out = gw.cli(&["users", "disable", "svc-report", "--by", bad])?;
        assert!(!out.success(), "{out}");
        assert!(out.stderr.contains("--by"), "{out}");
    }
    assert_eq!(count(&gw, "user.disabled")?, 1);

    // A leaver who never logged in is disabled on purpose.
    gw.cli(&["users", "disable", "zed", "--unseen", "--by", "hr-admin"])?
        .ok()?;
    assert_eq!(count(&gw, "user.disabled")?, 2);
    assert!(gw.audit_verify()?.success());
    Ok(())
}
