//! `gatehouse sessions`: admins see live sessions and can end one within a second, audited.

use std::time::{Duration, Instant};

use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Psql, Resource};

#[test]
fn admins_list_and_kill_live_sessions() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let mut gw =
        Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let cfg = gw.config_path().to_string_lossy().into_owned();
    let token = gw.token("alice", &["engineering"], "1h")?;
    let session = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .spawn("select pg_sleep(30)")?;

    // The session shows up as live, with who, what and since when.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let out = gw.cli(&["sessions", "--config", &cfg])?.ok()?;
        if let Some(l) = out.stdout.lines().find(|l| l.contains("alice")) {
            break l.to_string();
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the session never appeared: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        line.contains("orders-db") && line.ends_with("live"),
        "{line}"
    );
    let id = line
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 32, "{line}");

    let out = gw
        .cli(&[
            "sessions",
            "kill",
            &id,
            "--config",
            &cfg,
            "--reason",
            "INC-9: runaway query",
            "--by",
            "oncall",
        ])?
        .ok()?;
    let killed = Instant::now();
    assert!(out.stdout.contains("will end within a second"), "{out}");
    let out = session.wait_with_output()?;
    assert!(
        killed.elapsed() <= Duration::from_secs(1),
        "ended after {:?}",
        killed.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("killed by oncall: INC-9: runaway query"),
        "{stderr}"
    );

    // Killing it again, or an unknown id, says so.
    assert!(!gw
        .cli(&["sessions", "kill", &id, "--config", &cfg])?
        .success());
    assert!(!gw
        .cli(&[
            "sessions",
            "kill",
            "0123456789abcdef0123456789abcdef",
            "--config",
            &cfg
        ])?
        .success());

    let events = gw.wait_for_event(
        |e| e["kind"] == "session.end" && e["session_id"] == id.as_str(),
        Duration::from_secs(5),
    )?;
    let kill = events
        .iter()
        .find(|e| e["kind"] == "session.kill")
        .cloned()
        .unwrap_or_default();
    assert_eq!(kill["actor"], "oncall");
    assert_eq!(kill["session_id"], id.as_str());
    assert!(events
        .iter()
        .any(|e| e["kind"] == "session.cut" && e["session_id"] == id.as_str()));
    let end = events
        .iter()
        .find(|e| e["kind"] == "session.end" && e["session_id"] == id.as_str())
        .cloned()
        .unwrap_or_default();
    assert!(
        end["reason"]
            .as_str()
            .is_some_and(|r| r.contains("killed by oncall")),
        "{end}"
    );

    // After the session ended it is listed as ended; after a crash nothing stays "live".
    let all = gw.cli(&["sessions", "--all", "--config", &cfg])?.ok()?;
    assert!(
        all.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("ended")),
        "{all}"
    );
    let orphan = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .spawn("select pg_sleep(30)")?;
    // The orphan is listed as live before the crash, so the restart has something to clean up.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = gw.cli(&["sessions", "--config", &cfg])?.ok()?;
        if out
            .stdout
            .lines()
            .any(|l| l.contains("alice") && l.ends_with("live"))
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the second session never appeared: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    gw.kill9()?;
    let mut orphan = orphan;
    let _ = orphan.kill();
    let _ = orphan.wait();
    gw.restart()?;
    let live = gw.cli(&["sessions", "--config", &cfg])?.ok()?;
    assert_eq!(
        live.stdout.lines().count(),
        1,
        "only the header after a restart: {live}"
    );
    assert!(gw.audit_verify()?.success());
    Ok(())
}
