//! The audit log proves its own integrity: tampering with the store or with an export is
//! detected at the right sequence number, and a gateway killed with SIGKILL mid-traffic leaves
//! a log that still verifies and holds every decision that let a session start.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gatehouse_tests::{Gateway, GatewayConfig, PgServer, Pgbench, Psql, Resource};
use sqlx::Executor as _;

fn assert_fails_at(gw: &Gateway, seq: u64, what: &str) -> anyhow::Result<()> {
    let out = gw.audit_verify()?;
    assert!(!out.success(), "{what}: verify must fail: {out}");
    let expected = format!("FAILED at seq {seq}:");
    assert!(
        out.stdout.contains(&expected),
        "{what}: expected `{expected}` in {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_store_is_detected_at_the_right_seq() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    // Checkpoints every 5 events, so some survive the truncation below whatever the timing
    // (the 10 s timer alone made the forged-checkpoint step depend on how slow the run was).
    let mut gw = Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(&pg, "orders-db"))
            .checkpoint_every(5),
    )?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let script: String = (1..=10).map(|i| format!("select {i};\n")).collect();
    Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .run_script(&script)?
        .ok()?;
    gw.stop()?;
    let last = gw.audit_verify()?.ok()?;
    assert!(last.stdout.contains("intact"), "{last}");

    let mut db = gw.store_connection().await?;
    let n: i64 = sqlx::query_scalar("select max(seq) from audit_events")
        .fetch_one(&mut db)
        .await?;
    assert!(n >= 15, "expected a session's worth of events, got {n}");
    // The store itself refuses edits until someone with file access drops the guard.
    assert!(db
        .execute("update audit_events set actor = 'mallory' where seq = 5")
        .await
        .is_err());
    db.execute("drop trigger audit_events_no_update").await?;
    db.execute("drop trigger audit_events_no_delete").await?;

    // Edit one field of one event.
    let actor: String = sqlx::query_scalar("select actor from audit_events where seq = 5")
        .fetch_one(&mut db)
        .await?;
    db.execute("update audit_events set actor = 'mallory' where seq = 5")
        .await?;
    assert_fails_at(&gw, 5, "edited event")?;
    sqlx::query("update audit_events set actor = ?1 where seq = 5")
        .bind(&actor)
        .execute(&mut db)
        .await?;
    gw.audit_verify()?.ok()?;

    // Delete one event.
    db.execute("create table saved as select * from audit_events where seq = 6")
        .await?;
    db.execute("delete from audit_events where seq = 6").await?;
    assert_fails_at(&gw, 6, "deleted event")?;
    db.execute("insert into audit_events select * from saved")
        .await?;
    db.execute("drop table saved").await?;
    gw.audit_verify()?.ok()?;

    // Reorder two events (swap their positions).
    db.execute("update audit_events set seq = -1 where seq = 7")
        .await?;
    db.execute("update audit_events set seq = 7 where seq = 8")
        .await?;
    db.execute("update audit_events set seq = 8 where seq = -1")
        .await?;
    assert_fails_at(&gw, 7, "reordered events")?;
    db.execute("update audit_events set seq = -1 where seq = 8")
        .await?;
    db.execute("update audit_events set seq = 8 where seq = 7")
        .await?;
    db.execute("update audit_events set seq = 7 where seq = -1")
        .await?;
    gw.audit_verify()?.ok()?;

    // A rewritten chain (every hash recomputed by the attacker) still contradicts the signed
    // checkpoint; a forged checkpoint does not verify. (Here, while the shutdown checkpoint
    // certainly exists; the checkpoints are put back after.)
    db.execute("create table saved_cps as select * from audit_checkpoints")
        .await?;
    db.execute("update audit_checkpoints set hash = 'ab' || substr(hash, 3)")
        .await?;
    let out = gw.audit_verify()?;
    assert!(
        !out.success() && out.stdout.contains("checkpoint signature does not verify"),
        "{out}"
    );
    db.execute("delete from audit_checkpoints").await?;
    db.execute("insert into audit_checkpoints select * from saved_cps")
        .await?;
    db.execute("drop table saved_cps").await?;
    gw.audit_verify()?.ok()?;

    // Truncate the tail: the shutdown checkpoint signed the last event, so the cut shows.
    sqlx::query("delete from audit_events where seq > ?1")
        .bind(n - 3)
        .execute(&mut db)
        .await?;
    assert_fails_at(&gw, (n - 2) as u64, "truncated log")?;

    // Cut back together with the checkpoints that would give it away: the anchor file outside
    // the store still signs the old head.
    sqlx::query("delete from audit_checkpoints where seq > ?1")
        .bind(n - 3)
        .execute(&mut db)
        .await?;
    assert_fails_at(&gw, (n - 2) as u64, "truncated log and checkpoints")?;
    // Without the anchor the cut cannot be seen in the store alone, so verification fails
    // rather than pass it, unless the auditor says the anchor is not to be checked (and the
    // report says what that leaves out).
    // Which check reports it depends on the batching: the missing anchor (when a checkpoint
    // survived the cut), or the commit seals (the cut fell inside a commit).
    std::fs::remove_file(gw.state_dir().join("audit-anchor.json"))?;
    let out = gw.audit_verify()?;
    assert!(
        !out.success()
            && (out.stdout.contains("cannot read the audit anchor file")
                || out.stdout.contains("covered by no gateway's commit seal")),
        "{out}"
    );
    let cfg = gw.config_path().to_string_lossy().into_owned();
    // Without the anchor, a cut at a commit boundary passes; a cut inside a commit is still
    // caught by the commit seals (which of the two depends on how the events were batched).
    let out = gw.cli(&["audit", "verify", "--config", &cfg, "--without-anchor"])?;
    assert!(
        out.stdout.contains("not checked: the anchor file")
            && (out.stdout.contains("intact")
                || out.stdout.contains("the log was cut inside a commit")),
        "{out}"
    );
    // A damaged anchor (an empty file, as a failed write would leave) fails too.
    std::fs::write(gw.state_dir().join("audit-anchor.json"), b"")?;
    let out = gw.audit_verify()?;
    assert!(
        !out.success() && out.stdout.contains("is not a checkpoint"),
        "{out}"
    );
    std::fs::remove_file(gw.state_dir().join("audit-anchor.json"))?;

    Ok(())
}

#[test]
fn exports_verify_offline_and_one_changed_byte_fails() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .checkpoint_every(5)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    for user in ["alice", "bob", "carol"] {
        gw.psql_as(
            user,
            &["engineering"],
            "orders-db",
            "select count(*) from orders",
        )?
        .ok()?;
    }
    // A user name a spreadsheet would take for a formula, and a statement with `;` and `=`.
    gw.psql_as(
        "@mallory",
        &["engineering"],
        "orders-db",
        "select 'x;=HYPERLINK(\"http://evil\")'",
    )?
    .ok()?;
    let dir = gatehouse_tests::temp_dir("export")?;
    let export = dir.join("log.jsonl");
    let export_s = export.to_string_lossy().into_owned();
    gw.audit_export("jsonl", &["--output", &export_s])?.ok()?;
    let key = gw.audit_public_key()?;
    let key_file = dir.join("audit.pub");
    std::fs::write(&key_file, &key)?;

    // The auditor's machine: only the file and the public key.
    let out = Gateway::audit_verify_file(&export, &format!("@{}", key_file.display()))?.ok()?;
    assert!(out.stdout.contains("intact"), "{out}");

    let original = std::fs::read_to_string(&export)?;
    let lines: Vec<&str> = original.lines().collect();
    let verify_variant = |name: &str, text: String| -> anyhow::Result<gatehouse_tests::CmdOutput> {
        let path = dir.join(format!("{name}.jsonl"));
        std::fs::write(&path, text)?;
        let out = Gateway::audit_verify_file(&path, &key)?;
        assert!(!out.success(), "{name}: must fail: {out}");
        assert!(out.stdout.contains("FAILED at seq"), "{name}: {out}");
        Ok(out)
    };

    // One byte changed inside an event's statement text.
    let at = original
        .find("count(*)")
        .ok_or_else(|| anyhow::anyhow!("no statement in export"))?;
    let mut bytes = original.clone().into_bytes();
    bytes[at] = b'C';
    let out = verify_variant("one-byte", String::from_utf8(bytes)?)?;
    assert!(out.stdout.contains("event edited"), "{out}");

    // A line removed from the middle.
    let mut v = lines.clone();
    let mid = v.iter().position(|l| l.contains("\"seq\":4,")).unwrap_or(3);
    v.remove(mid);
    verify_variant("deleted-line", v.join("\n"))?;

    // The tail cut off (manifest and all).
    verify_variant("truncated", lines[..lines.len() - 4].join("\n"))?;

    // Tail events cut but the manifest kept.
    let mut v: Vec<&str> = lines[..lines.len() - 3].to_vec();
    v.push(lines[lines.len() - 1]);
    let out = verify_variant("tail-cut", v.join("\n"))?;
    assert!(out.stdout.contains("manifest"), "{out}");

    // The wrong public key.
    let other = gatehouse_tests::temp_dir("other-key")?;
    let other_key = gatehouse_gateway::keys::SigningKey::load_or_create(&other.join("k.pem"))?
        .public_key()
        .to_base64();
    let out = Gateway::audit_verify_file(&export, &other_key)?;
    assert!(!out.success(), "{out}");

    // A time-window export verifies on its own and holds only its window.
    let events: Vec<serde_json::Value> = gw
        .settled_export()?
        .into_iter()
        .filter(|e| e["type"] == "event")
        .collect();
    let from = events[3]["ts"].as_str().unwrap_or_default().to_string();
    let window = dir.join("window.jsonl");
    gw.audit_export(
        "jsonl",
        &["--from", &from, "--output", &window.to_string_lossy()],
    )?
    .ok()?;
    let out = Gateway::audit_verify_file(&window, &key)?.ok()?;
    assert!(
        out.stdout.contains(&format!("seq {}..=", events[3]["seq"])),
        "{out}"
    );

    // CSV for spreadsheets.
    let csv = gw.audit_export("csv", &[])?.ok()?;
    assert!(csv.stdout.starts_with("seq,ts,kind,actor"), "{csv}");
    assert_eq!(csv.stdout.lines().count(), events.len() + 1);
    // Every field quoted (a `;` inside stays in its cell whatever the separator); a field
    // that starts with a formula character is text.
    let mallory: Vec<&str> = csv
        .stdout
        .lines()
        .filter(|l| l.contains("mallory"))
        .collect();
    assert!(!mallory.is_empty());
    for line in &mallory {
        assert!(line.starts_with('"') && line.ends_with('"'), "{line}");
        assert!(line.contains(",\"'@mallory\","), "{line}");
        assert!(!line.contains(",@mallory"), "{line}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_with_live_sessions_leaves_a_verifiable_log_with_every_decision() -> anyhow::Result<()>
{
    let pg = PgServer::start()?;
    pg.pgbench_init("orders", 1)?;
    let mut gw = Gateway::start(
        GatewayConfig::new()
            .checkpoint_every(500)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;

    // 20 interactive sessions, each a different user, parked in a long query.
    let mut sessions = Vec::new();
    for i in 0..20 {
        let user = format!("crash{i:02}");
        let token = gw.token(&user, &["engineering"], "1h")?;
        sessions.push(
            Psql::new(gw.pg_addr(), "orders-db", &user)
                .password(&token)
                .conninfo_param("application_name", &user)
                .spawn("select pg_sleep(60)")?,
        );
    }
    // And statement traffic on top.
    let token = gw.token("bench", &["engineering"], "1h")?;
    let addr = gw.pg_addr();
    let load = std::thread::spawn(move || {
        Pgbench::new(addr, "orders-db", "bench")
            .password(&token)
            .args(&["-n", "-S", "-c", "4", "-T", "20"])
            .run()
    });

    // Wait until the upstream sees all 20 sessions: each of them got past the gateway.
    let deadline = Instant::now() + Duration::from_secs(30);
    let connected: BTreeSet<String> = loop {
        let names = pg.exec("postgres", "select string_agg(application_name, ',') from pg_stat_activity where application_name like 'crash%' and query like '%pg_sleep(60)%'")?;
        let set: BTreeSet<String> = names
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if set.len() == 20 || Instant::now() > deadline {
            break set;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        connected.len(),
        20,
        "sessions reaching the upstream: {connected:?}"
    );
    // Kill mid-traffic, once the pgbench load is in the log (asserted after the restart).
    let mut store = gw.store_connection().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logged: i64 =
            sqlx::query_scalar("select count(*) from audit_events where kind = 'db.statement'")
                .fetch_one(&mut store)
                .await?;
        if logged > 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the pgbench load was not logged within 30 s ({logged} statements)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(store);
    gw.kill9()?;
    for mut s in sessions {
        let _ = s.kill();
        let _ = s.wait();
    }
    let _ = load.join();

    gw.restart()?;
    let out = gw.audit_verify()?.ok()?;
    assert!(out.stdout.contains("intact"), "{out}");
    let events: Vec<serde_json::Value> = gw
        .settled_export()?
        .into_iter()
        .filter(|e| e["type"] == "event")
        .collect();
    for user in &connected {
        let allowed = events.iter().any(|e| {
            e["kind"] == "access.decision"
                && e["actor"] == user.as_str()
                && e["decision"] == "allow"
        });
        assert!(
            allowed,
            "{user} reached the upstream, so its allow decision must be in the log"
        );
    }
    let statements = events
        .iter()
        .filter(|e| e["kind"] == "db.statement")
        .count();
    assert!(
        statements > 100,
        "the pgbench load was logged: {statements}"
    );

    // The chain goes on after the crash and a clean stop signs it.
    gw.psql_as(
        "alice",
        &["engineering"],
        "orders-db",
        "select 'after the crash'",
    )?
    .ok()?;
    gw.stop()?;
    let out = gw.audit_verify()?.ok()?;
    assert!(
        !out.stdout.contains("not yet covered"),
        "a clean stop leaves nothing unsigned: {out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_written_into_the_store_without_the_audit_key_is_an_alarm_and_fails_verify(
) -> anyhow::Result<()> {
    use gatehouse_gateway::audit::{EventKind, NewEvent};

    let pg = PgServer::start()?;
    let mut gw =
        Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let psql = |gw: &Gateway| {
        Psql::new(gw.pg_addr(), "orders-db", "alice")
            .password(&token)
            .run("select 1")
    };
    psql(&gw)?.ok()?;
    gw.stop()?;
    gw.audit_verify()?.ok()?;

    // Someone with write access to the store appends a well-formed row: the right seq, the
    // previous hash, a correct hash of its own contents. Only the audit key is missing.
    let mut forged = NewEvent::new(EventKind::RequestApproved);
    forged.actor = "mallory".into();
    forged.resource = "orders-db".into();
    forged.action = "approve".into();
    forged.decision = "allow".into();
    let row = gw
        .append_unsealed_event(forged, "2026-12-02T00:00:00.000000Z")
        .await?;
    assert_fails_at(&gw, row.seq, "a forged row at the head")?;

    // The next gateway to write sees a head no seal covers: an alarm in the log, and the
    // forged row stays visible to verification under everything written after it.
    gw.restart()?;
    psql(&gw)?.ok()?;
    let events = gw.wait_for_event(
        |e| e["kind"] == "audit.foreign_rows",
        Duration::from_secs(10),
    )?;
    let alarm = events
        .iter()
        .find(|e| e["kind"] == "audit.foreign_rows")
        .cloned()
        .unwrap_or_default();
    assert_eq!(alarm["detail"]["first_seq"], row.seq, "{alarm}");
    assert!(gw
        .logs()
        .contains("audit rows written into the store without the audit key"));
    gw.stop()?;
    let out = gw.audit_verify()?;
    assert!(
        !out.success()
            && out.stdout.contains(&format!("FAILED at seq {}:", row.seq))
            && out.stdout.contains("covered by no gateway's commit seal"),
        "{out}"
    );
    Ok(())
}
