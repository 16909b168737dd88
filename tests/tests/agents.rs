//! Remote agents end to end: a real PostgreSQL reachable only through a `gatehouse-agent`
//! process, enrolled with a join token, linked to the gateway over mutual TLS.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use gatehouse_tests::agent::{join_token, AgentProc, AgentSpec};
use gatehouse_tests::pg::ORDERS_PASSWORD;
use gatehouse_tests::{free_port, Gateway, GatewayConfig, PgServer, Pgbench, Psql, Resource};

const LINK_UP: Duration = Duration::from_secs(30);

/// A gateway with `orders-db` behind agent `dc1` and an agent listener on a fixed port (so a
/// restarted gateway is where the agent looks for it).
fn gateway_with_agent_listener(
    extra: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> anyhow::Result<Gateway> {
    let port = free_port()?;
    Gateway::start(extra(
        GatewayConfig::new()
            .set("agents", "listen", &format!("\"127.0.0.1:{port}\""))
            .resource(
                Resource::behind_agent("orders-db", "dc1")
                    .labels(&[("env", "dev"), ("data_class", "internal")]),
            ),
    ))
}

fn events(gw: &Gateway) -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(gw
        .settled_export()?
        .into_iter()
        .filter(|e| e["type"] == "event")
        .collect())
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// alice (engineering) counts the fixture's orders through the gateway.
fn assert_orders_reachable(gw: &Gateway) -> anyhow::Result<()> {
    let out = gw
        .psql_as(
            "alice",
            &["engineering"],
            "orders-db",
            "select count(*) from orders",
        )?
        .ok()?;
    assert_eq!(out.stdout.trim(), "1000");
    Ok(())
}

/// A second agent that claims to be `like`: its CA file and link copied, no key or
/// certificate yet (the caller writes `agent.crt` and `agent.key`).
fn impostor(pg: &PgServer, like: &AgentProc) -> anyhow::Result<AgentProc> {
    let other = AgentProc::prepare(AgentSpec::new("dc1").orders_db(pg, "orders-db"))?;
    std::fs::create_dir_all(other.state_dir())?;
    for f in ["ca.crt", "link.json"] {
        std::fs::copy(like.state_dir().join(f), other.state_dir().join(f))?;
    }
    Ok(other)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn postgres_behind_an_agent_works_with_psql_and_pgbench_and_no_password_reaches_the_gateway(
) -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    pg.pgbench_init("orders", 1)?;
    // Port 0: agents are told the port the listener actually got.
    let gw = Gateway::start(
        GatewayConfig::new()
            .set("agents", "listen", "\"127.0.0.1:0\"")
            .resource(
                Resource::behind_agent("orders-db", "dc1")
                    .labels(&[("env", "dev"), ("data_class", "internal")]),
            ),
    )?;

    // Before the agent exists the resource is offline, and the client is told so.
    let out = gw
        .psql_as("alice", &["engineering"], "orders-db", "select 1")?
        .err()?;
    assert!(out.stderr.contains("offline"), "{out}");

    let agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    agent.wait_connected(&gw, LINK_UP)?;

    assert_orders_reachable(&gw)?;
    let token = gw.token("bench", &["engineering"], "1h")?;
    let bench = Pgbench::new(gw.pg_addr(), "orders-db", "bench")
        .password(&token)
        .args(&["-n", "-S", "-c", "4", "-j", "2", "-T", "3"])
        .run()?;
    let tps = bench.tps().unwrap_or(0.0);
    assert!(tps > 10.0, "pgbench through the agent: {}", bench.output);

    // `gatehouse agents` shows the link, the resources and the version.
    let list = gw.cli(&["agents"])?.ok()?;
    assert!(list.stdout.contains("dc1"), "{list}");
    assert!(list.stdout.contains("up"), "{list}");
    assert!(list.stdout.contains("orders-db"), "{list}");
    assert!(list.stdout.contains(env!("CARGO_PKG_VERSION")), "{list}");

    let events = events(&gw)?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["kind"].as_str()).collect();
    for k in ["agent.join_token", "agent.enrolled", "agent.connected"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    let from_agent = events
        .iter()
        .filter(|e| e["kind"] == "db.statement" && e["detail"]["agent"] == "dc1")
        .count();
    assert!(
        from_agent > 100,
        "statements reported by the agent: {from_agent}"
    );
    assert!(events.iter().any(|e| e["kind"] == "db.statement"
        && e["actor"] == "alice"
        && e["detail"]["statement"]
            .as_str()
            .is_some_and(|s| s.contains("count(*) from orders"))));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "session.start" && e["detail"]["agent"] == "dc1"));
    // In the log a session's statements come before the agent's account of its end, and that
    // before the gateway's.
    let alice = events
        .iter()
        .find(|e| e["kind"] == "db.statement" && e["actor"] == "alice")
        .and_then(|e| e["session_id"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no statement of alice's in the log"))?;
    let seq_of = |kind: &str| -> Vec<u64> {
        events
            .iter()
            .filter(|e| e["session_id"] == alice && e["kind"] == kind)
            .filter_map(|e| e["seq"].as_u64())
            .collect()
    };
    let (statements, agent_end, end) = (
        seq_of("db.statement"),
        seq_of("session.agent_end"),
        seq_of("session.end"),
    );
    assert_eq!((agent_end.len(), end.len()), (1, 1), "{events:?}");
    assert!(statements.iter().all(|s| *s < agent_end[0]) && agent_end[0] < end[0]);
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));

    // The brokered password is nowhere on the gateway's side: config, state (store, keys),
    // logs, exports.
    let export = gw.audit_export("jsonl", &[])?.ok()?;
    let csv = gw.audit_export("csv", &[])?.ok()?;
    let mut paths = Vec::new();
    files(gw.dir(), &mut paths);
    assert!(paths.len() > 3, "{paths:?}");
    for p in &paths {
        let data = std::fs::read(p)?;
        assert!(
            !contains(&data, ORDERS_PASSWORD.as_bytes()),
            "the brokered password is in {}",
            p.display()
        );
    }
    for text in [&export.stdout, &csv.stdout, &gw.logs()] {
        assert!(!text.contains(ORDERS_PASSWORD));
    }
    Ok(())
}

/// The tags psql printed (queries that completed), and every tag's count among the audit
/// log's statements.
fn tags(printed: &str, prefix: &str) -> Vec<String> {
    printed
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split('|').next().unwrap_or(l).to_string())
        .collect()
}

fn statement_counts(events: &[serde_json::Value], prefix: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in events.iter().filter(|e| e["kind"] == "db.statement") {
        let Some(s) = e["detail"]["statement"].as_str() else {
            continue;
        };
        if let Some(start) = s.find(&format!("'{prefix}")) {
            let rest = &s[start + 1..];
            if let Some(end) = rest.find('\'') {
                *counts.entry(rest[..end].to_string()).or_default() += 1;
            }
        }
    }
    counts
}

#[test]
fn gateway_killed_under_20_sessions_every_query_event_arrives_once() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let mut gw = gateway_with_agent_listener(|c| c)?;
    let agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    agent.wait_connected(&gw, LINK_UP)?;

    // 20 sessions, each sending numbered queries one by one.
    let mut children = Vec::new();
    for i in 0..20 {
        let user = format!("k{i:02}");
        let token = gw.token(&user, &["engineering"], "1h")?;
        let mut cmd = Psql::new(gw.pg_addr(), "orders-db", &user)
            .password(&token)
            .command()?;
        for j in 0..400 {
            cmd.arg("-c")
                .arg(format!("select 'kq-{i}-{j}' as tag, pg_sleep(0.02)"));
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(cmd.spawn()?);
    }
    // Let them run, then kill the gateway under them: once all 20 sessions are upstream and
    // each is at least at its 6th query (5 completed, so events are flowing and some are
    // still unacknowledged), with plenty of the 400 still to go.
    const MIN_DONE: u32 = 5;
    let mut progress = String::new();
    gatehouse_tests::util::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        // Per session (`kq-<i>-`), the number of its latest query (`kq-<i>-<j>`) upstream.
        progress = pg.exec(
            "postgres",
            "select count(*), coalesce(min(j), -1) from (\
               select substring(query from 'kq-([0-9]+)-') as i, \
                      max(substring(query from 'kq-[0-9]+-([0-9]+)')::int) as j \
               from pg_stat_activity \
               where pid <> pg_backend_pid() and query like 'select ''kq-%' \
               group by 1) as s",
        )?;
        let (sessions, least) = progress.trim().split_once('|').unwrap_or(("0", "-1"));
        let sessions: usize = sessions.parse().unwrap_or(0);
        let least: i64 = least.parse().unwrap_or(-1);
        Ok((sessions >= 20 && least >= i64::from(MIN_DONE)).then_some(()))
    })?
    .ok_or_else(|| {
        anyhow::anyhow!(
            "the 20 sessions did not all get {MIN_DONE} queries done upstream within 30 s \
             (sessions|least query number: {})\n{}",
            progress.trim(),
            gw.logs()
        )
    })?;
    gw.kill9()?;
    let mut printed = String::new();
    for c in children {
        let out = c.wait_with_output()?;
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let done = tags(&printed, "kq-");
    assert!(
        done.len() >= 20,
        "queries completed before the kill: {}",
        done.len()
    );

    // The gateway comes back on the same agent port; the agent reconnects and delivers what
    // it had not had acknowledged.
    gw.restart()?;
    agent.wait_connected(&gw, LINK_UP)?;
    let events = events(&gw)?;
    let counts = statement_counts(&events, "kq-");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "events stored twice: {twice:?}");
    let missing: Vec<_> = done.iter().filter(|t| !counts.contains_key(*t)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed queries have no event, e.g. {:?}\n{}",
        missing.len(),
        done.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        agent.logs()
    );
    // Per session, the agent's order is the log's order.
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e["detail"]["agent"] == "dc1" && e["kind"] == "db.statement")
    {
        let session = e["session_id"].as_str().unwrap_or_default().to_string();
        let seq = e["detail"]["agent_seq"].as_u64().unwrap_or(0);
        let prev = last.insert(session.clone(), seq).unwrap_or(0);
        assert!(
            seq > prev,
            "session {session}: agent seq {seq} after {prev}"
        );
    }
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));
    drop(agent);
    Ok(())
}

#[test]
fn agent_killed_with_unacknowledged_events_delivers_them_once_after_restart() -> anyhow::Result<()>
{
    let pg = PgServer::start()?;
    let mut store = PgServer::start()?;
    let url = store.create_database("gatehouse")?;
    let gw = gateway_with_agent_listener(|c| c.store_url(&url))?;
    let mut agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    agent.wait_connected(&gw, LINK_UP)?;

    // A session is open; then the gateway's store dies: the agent's events cannot become
    // durable, so nothing is acknowledged and they stay in the agent's spool.
    let token = gw.token("alice", &["engineering"], "1h")?;
    let mut cmd = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .command()?;
    cmd.args(["-c", "select pg_sleep(2)"]);
    for j in 0..10 {
        cmd.arg("-c").arg(format!("select 'spooled-{j}' as tag"));
    }
    cmd.args(["-c", "select pg_sleep(30)"]);
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let session = cmd.spawn()?;
    // The session is admitted and its first query runs upstream before the store dies.
    pg.wait_for_active_query("select pg_sleep(2)", 1, Duration::from_secs(30))
        .context("the session's first query never reached the upstream")?;
    store.stop()?;
    // Wait until the ten statements ran upstream (the session is in its last sleep).
    pg.wait_for_active_query("select pg_sleep(30)", 1, Duration::from_secs(30))
        .context("the session did not reach its last query")?;
    let spool = std::fs::read(agent.state_dir().join("spool/events.log"))?;
    assert!(
        contains(&spool, b"spooled-9"),
        "the statements are in the agent's spool"
    );

    // kill -9 the agent mid-session; the session ends.
    agent.kill9()?;
    let out = session.wait_with_output()?;
    assert!(!out.status.success());
    // The store returns, the agent restarts from its spool.
    store.restart()?;
    agent.restart()?;
    agent.wait_connected(&gw, LINK_UP)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let counts = loop {
        let counts = statement_counts(&events(&gw)?, "spooled-");
        if counts.len() == 10 || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let expected: BTreeMap<String, usize> = (0..10).map(|j| (format!("spooled-{j}"), 1)).collect();
    assert_eq!(counts, expected, "{}\n{}", agent.logs(), gw.logs());
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));
    Ok(())
}

#[test]
fn forged_revoked_and_replayed_agent_credentials_are_refused_and_audited() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway_with_agent_listener(|c| c)?;

    // A token works once.
    let token = join_token(&gw, "dc1", &[])?;
    let mut agent = AgentProc::prepare(AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    let other = AgentProc::prepare(AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    let out = other.try_enroll(&gw, "ghj_not-a-token-at-all")?;
    assert!(!out.success(), "{out}");
    assert!(
        out.stderr.contains("invalid, expired or already used"),
        "{out}"
    );
    agent.start_with_token(&gw, &token)?;
    agent.wait_connected(&gw, LINK_UP)?;
    let out = other.try_enroll(&gw, &token)?;
    assert!(
        !out.success(),
        "a reused join token enrolled an agent: {out}"
    );
    assert!(
        out.stderr.contains("invalid, expired or already used"),
        "{out}"
    );

    // An expired token.
    let short = join_token(&gw, "dc2", &["--ttl", "1s"])?;
    // A sleep on purpose: the token must expire, which takes letting its 1 s TTL pass.
    std::thread::sleep(Duration::from_millis(2100));
    let out = other.try_enroll(&gw, &short)?;
    assert!(
        !out.success(),
        "an expired join token enrolled an agent: {out}"
    );

    // A forged certificate: same name, same CA file and link, but self-signed.
    let forged = impostor(&pg, &agent)?;
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/O=Gatehouse/CN=agent:dc1",
            "-keyout",
        ])
        .arg(forged.state_dir().join("agent.key"))
        .arg("-out")
        .arg(forged.state_dir().join("agent.crt"))
        .output()?;
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let mut forged = forged;
    forged.restart()?;
    gw.wait_for_event(
        |e| {
            e["kind"] == "agent.refused"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("TLS handshake refused"))
        },
        Duration::from_secs(20),
    )?;
    drop(forged);

    // Revoking the agent cuts its link within a second and refuses it from then on.
    let out = gw
        .cli(&["agents", "revoke", "dc1", "--reason", "host decommissioned"])?
        .ok()?;
    assert!(out.stdout.contains("revoked"), "{out}");
    let revoked_at = Instant::now();
    gw.wait_for_event(
        |e| {
            e["kind"] == "agent.disconnected"
                && e["reason"].as_str().is_some_and(|r| r.contains("revoked"))
        },
        Duration::from_secs(5),
    )?;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(3),
        "link cut after {:?}",
        revoked_at.elapsed()
    );
    let events = gw.wait_for_event(
        |e| {
            e["kind"] == "agent.refused"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("is revoked"))
        },
        Duration::from_secs(30),
    )?;
    assert!(events
        .iter()
        .any(|e| e["kind"] == "agent.revoked" && e["reason"] == "host decommissioned"));
    let out = gw
        .psql_as("alice", &["engineering"], "orders-db", "select 1")?
        .err()?;
    assert!(out.stderr.contains("offline"), "{out}");

    let refusals: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "agent.enroll_refused")
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for why in [
        "join token already used",
        "join token expired",
        "unknown join token",
    ] {
        assert!(
            refusals.iter().any(|r| r.contains(why)),
            "`{why}` not audited: {refusals:?}"
        );
    }
    for e in events
        .iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("agent.")))
    {
        let controls = e["controls"].to_string();
        assert!(controls.contains("8.20"), "{e}");
    }
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));
    Ok(())
}

#[test]
fn an_agent_certificate_is_renewed_over_its_link_and_the_old_one_stops_working(
) -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway_with_agent_listener(|c| c)?;
    let agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    agent.wait_connected(&gw, LINK_UP)?;
    let old_cert = std::fs::read(agent.state_dir().join("agent.crt"))?;
    let old_key = std::fs::read(agent.state_dir().join("agent.key"))?;

    let out = gw.cli(&["agents", "renew", "dc1"])?.ok()?;
    assert!(out.stdout.contains("renewal requested"), "{out}");
    gw.wait_for_event(|e| e["kind"] == "agent.renewed", Duration::from_secs(10))?;
    // The agent reconnects with the new certificate.
    let deadline = Instant::now() + LINK_UP;
    loop {
        let events = gw.audit_events()?;
        if events
            .iter()
            .filter(|e| e["kind"] == "agent.connected")
            .count()
            >= 2
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no reconnection after renewal\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_cert = std::fs::read(agent.state_dir().join("agent.crt"))?;
    assert_ne!(old_cert, new_cert);
    assert_ne!(old_key, std::fs::read(agent.state_dir().join("agent.key"))?);
    assert_orders_reachable(&gw)?;

    // The old certificate and key (a copy an attacker kept) no longer get in.
    let stale = impostor(&pg, &agent)?;
    std::fs::write(stale.state_dir().join("agent.crt"), &old_cert)?;
    std::fs::write(stale.state_dir().join("agent.key"), &old_key)?;
    let mut stale = stale;
    stale.restart()?;
    gw.wait_for_event(
        |e| {
            e["kind"] == "agent.refused"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("not any agent's current certificate"))
        },
        Duration::from_secs(20),
    )?;
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));
    Ok(())
}

#[test]
fn cancel_and_cut_reach_the_upstream_behind_the_agent() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway_with_agent_listener(|c| c)?;
    let agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    agent.wait_connected(&gw, LINK_UP)?;

    // Ctrl-C in psql: the cancel request goes to the gateway, which asks the agent, which
    // cancels the query upstream.
    let token = gw.token("alice", &["engineering"], "1h")?;
    let child = Psql::new(gw.pg_addr(), "orders-db", "alice")
        .password(&token)
        .spawn("select pg_sleep(60)")?;
    // Ctrl-C only once the query is running upstream, so there is something to cancel.
    pg.wait_for_active_query("select pg_sleep(60)", 1, Duration::from_secs(20))
        .context("alice's query never reached the upstream")?;
    let started = Instant::now();
    gatehouse_tests::send_signal(child.id(), "INT")?;
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // Disabling a user cuts their session behind the agent within a second, and the agent
    // closes the upstream connection too.
    let token = gw.token("bob", &["engineering"], "1h")?;
    let child = Psql::new(gw.pg_addr(), "orders-db", "bob")
        .password(&token)
        .conninfo_param("application_name", "bob-long")
        .spawn("select pg_sleep(60)")?;
    let upstream_sessions = || -> anyhow::Result<String> {
        Ok(pg
            .exec(
                "postgres",
                "select count(*) from pg_stat_activity where application_name = 'bob-long'",
            )?
            .trim()
            .to_string())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while upstream_sessions()? != "1" {
        assert!(
            Instant::now() < deadline,
            "bob's session never reached the upstream"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cut = Instant::now();
    gw.cli(&["users", "disable", "bob", "--reason", "left"])?
        .ok()?;
    let out = child.wait_with_output()?;
    assert!(
        cut.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        cut.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The agent, which parses the stream (the gateway only splices it), tells psql why.
    assert!(
        stderr.contains("terminating connection") && stderr.contains("disabled"),
        "{stderr}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_sessions()? != "0" {
        assert!(
            Instant::now() < deadline,
            "the agent left bob's upstream session open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let events = events(&gw)?;
    assert!(events
        .iter()
        .any(|e| e["kind"] == "session.cancel" && e["detail"]["forwarded"] == true));
    assert!(events
        .iter()
        .any(|e| e["kind"] == "session.cut" && e["actor"] == "bob"));
    assert!(
        events.iter().any(|e| e["kind"] == "session.agent_end"
            && e["actor"] == "bob"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("ended by the gateway"))),
        "the agent ended bob's session on the gateway's word"
    );
    Ok(())
}

#[test]
fn the_agent_explains_a_bad_config_and_a_missing_enrollment() -> anyhow::Result<()> {
    let dir = gatehouse_tests::temp_dir("agent-cli")?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "state_dir = \"state\"\n[[resource]]\nname = \"db\"\nkind = \"postgres\"\naddress = \"127.0.0.1:5432\"\ncredential = { username = \"u\", password_env = \"GATEHOUSE_TEST_UNSET_PW\" }\n",
    )?;
    let bin = gatehouse_tests::agent::agent_bin()?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--config")
        .arg(&config)
        .env_remove("GATEHOUSE_TEST_UNSET_PW");
    let out = gatehouse_tests::run_command(&mut cmd, None, Duration::from_secs(30))?;
    assert_eq!(out.code(), Some(64), "{out}");
    assert!(
        out.stderr.contains("resource[0].credential.password_env"),
        "{out}"
    );

    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--config")
        .arg(&config)
        .env("GATEHOUSE_TEST_UNSET_PW", "x");
    let out = gatehouse_tests::run_command(&mut cmd, None, Duration::from_secs(30))?;
    assert!(!out.success(), "{out}");
    assert!(out.stderr.contains("not enrolled"), "{out}");
    assert!(out.stderr.contains("--token"), "{out}");
    Ok(())
}

/// The records of an agent's spool file (`events.log`: a 4-byte big-endian length, then JSON).
fn spool_records(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let data = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 4 <= data.len() {
        let len = u32::from_be_bytes(data[pos..pos + 4].try_into()?) as usize;
        let end = pos + 4 + len;
        anyhow::ensure!(end <= data.len(), "torn record at {pos}");
        out.push(serde_json::from_slice(&data[pos + 4..end])?);
        pos = end;
    }
    Ok(out)
}

fn append_spool_record(path: &Path, record: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let body = serde_json::to_vec(record)?;
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(&(body.len() as u32).to_be_bytes())?;
    f.write_all(&body)?;
    Ok(())
}

#[test]
fn an_agent_reporting_sessions_it_does_not_hold_is_refused_and_audited() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = gateway_with_agent_listener(|c| c)?;
    let mut agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").orders_db(&pg, "orders-db"))?;
    agent.wait_connected(&gw, LINK_UP)?;

    // A real session of alice's, whose id a compromised agent could misuse.
    gw.psql_as(
        "alice",
        &["engineering"],
        "orders-db",
        "select 'real-1' as tag",
    )?
    .ok()?;
    let spool = agent.state_dir().join("spool/events.log");
    let records = gatehouse_tests::util::poll(LINK_UP, Duration::from_millis(100), || {
        let r = spool_records(&spool)?;
        Ok(r.iter().any(|e| e["event"] == "session_end").then_some(r))
    })?
    .ok_or_else(|| anyhow::anyhow!("alice's session never reached the agent's spool"))?;
    let statement = records
        .iter()
        .find(|e| {
            e["event"] == "statement" && e["text"].as_str().is_some_and(|t| t.contains("real-1"))
        })
        .ok_or_else(|| anyhow::anyhow!("no statement record in the spool: {records:?}"))?
        .clone();
    let end = records
        .iter()
        .find(|e| e["event"] == "session_end")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no session_end record"))?;
    let real_session = statement["session_id"].clone();
    // Wait until the gateway has stored the real session's end, then take the host over:
    // forged records go into the spool, with the next sequence numbers.
    gatehouse_tests::util::poll(LINK_UP, Duration::from_millis(100), || {
        Ok(events(&gw)?
            .iter()
            .any(|e| e["kind"] == "session.agent_end")
            .then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the agent's end of alice's session never arrived"))?;
    agent.kill9()?;
    let mut seq = spool_records(&spool)?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let made_up = "00112233445566778899aabbccddeeff";
    let mut forge =
        |mut r: serde_json::Value, session: serde_json::Value, user: &str, text: Option<&str>| {
            seq += 1;
            r["seq"] = seq.into();
            r["session_id"] = session;
            r["user"] = user.into();
            if let Some(t) = text {
                r["text"] = t.into();
            }
            append_spool_record(&spool, &r)
        };
    // A session the gateway never opened; alice's real session under another user's name; an
    // end for the made-up session (it must release nothing); a statement for another resource.
    forge(
        statement.clone(),
        made_up.into(),
        "mallory",
        Some("select 'forged-unknown'"),
    )?;
    forge(
        statement.clone(),
        real_session.clone(),
        "bob",
        Some("select 'forged-other-user'"),
    )?;
    forge(end.clone(), made_up.into(), "mallory", None)?;
    let mut other_resource = statement.clone();
    other_resource["resource"] = "ledger-db".into();
    forge(
        other_resource,
        real_session.clone(),
        "alice",
        Some("select 'forged-other-resource'"),
    )?;

    agent.restart()?;
    agent.wait_connected(&gw, LINK_UP)?;
    let refused = gatehouse_tests::util::poll(LINK_UP, Duration::from_millis(200), || {
        let refused: Vec<serde_json::Value> = events(&gw)?
            .into_iter()
            .filter(|e| e["kind"] == "agent.event_refused")
            .collect();
        Ok((refused.len() >= 4).then_some(refused))
    })?
    .ok_or_else(|| anyhow::anyhow!("the forged events were not refused\n{}", gw.logs()))?;
    assert_eq!(refused.len(), 4, "{refused:?}");
    for e in &refused {
        assert_eq!(e["actor"], "agent:dc1", "{e}");
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["detail"]["agent"], "dc1", "{e}");
        assert!(!e["reason"].as_str().unwrap_or("").is_empty(), "{e}");
        assert!(
            e["controls"]
                .as_array()
                .is_some_and(|c| c.contains(&"8.15".into())),
            "{e}"
        );
    }
    assert!(refused.iter().any(|e| e["detail"]["claimed_user"] == "bob"));

    // None of it became a session's activity, and other sessions go on as before.
    let all = events(&gw)?;
    assert!(
        statement_counts(&all, "forged-").is_empty(),
        "{:?}",
        statement_counts(&all, "forged-")
    );
    assert_eq!(
        all.iter()
            .filter(|e| e["kind"] == "session.agent_end")
            .count(),
        1,
        "the forged end was stored as a session end"
    );
    gw.psql_as(
        "alice",
        &["engineering"],
        "orders-db",
        "select 'after-forgery' as tag",
    )?
    .ok()?;
    let after = gatehouse_tests::util::poll(LINK_UP, Duration::from_millis(200), || {
        let c = statement_counts(&events(&gw)?, "after-forgery");
        Ok((!c.is_empty()).then_some(c))
    })?;
    assert!(
        after.is_some(),
        "a later session's statements were not logged"
    );
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));
    Ok(())
}
