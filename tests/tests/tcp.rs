//! The generic TCP front door end to end: a real `redis-server` as a `kind = "tcp"` resource,
//! the real `gatehouse connect` as the client's loopback listener, real `redis-cli` through it.
//! Admission, policy denials, the audit trail and cuts work as they do for PostgreSQL.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use gatehouse_tests::agent::{AgentProc, AgentSpec};
use gatehouse_tests::util::poll;
use gatehouse_tests::{
    free_port, gatehouse_bin, redis_cli, temp_dir, Gateway, GatewayConfig, RedisServer, Resource,
    TempDir,
};

/// The Redis server as resource `name`, labelled like a dev database.
fn cache(redis: &RedisServer, name: &str, env: &str) -> Resource {
    Resource::postgres(name, redis.addr(), "unused")
        .kind("tcp")
        .database(None)
        .labels(&[("env", env), ("data_class", "internal")])
}

fn gateway(resources: Vec<Resource>) -> anyhow::Result<Gateway> {
    let mut cfg = GatewayConfig::new().set("tcp", "listen", "\"127.0.0.1:0\"");
    for r in resources {
        cfg = cfg.resource(r);
    }
    Gateway::start(cfg)
}

/// A running `gatehouse connect`, its loopback port read from its first line of output.
struct Connect {
    child: Child,
    port: u16,
    stderr: mpsc::Receiver<String>,
    _home: TempDir,
}

impl Connect {
    /// `gatehouse connect RESOURCE --door <tcp door> --ca-file <gateway cert> EXTRA` with
    /// `GATEHOUSE_TOKEN=token` and an empty home (no saved login).
    fn spawn(gw: &Gateway, resource: &str, token: &str, extra: &[&str]) -> anyhow::Result<Connect> {
        let home = temp_dir("connect-home")?;
        let ca = gw.tls_cert().to_string_lossy().into_owned();
        let mut args = vec!["--ca-file", ca.as_str()];
        args.extend_from_slice(extra);
        Connect::spawn_in(gw, resource, Some(token), home, &args)
    }

    /// `gatehouse connect RESOURCE --door <tcp door> EXTRA` as the engineer whose saved login
    /// is in `home` (see `Gateway::engineer`): its credential and CA file.
    fn spawn_in(
        gw: &Gateway,
        resource: &str,
        token: Option<&str>,
        home: TempDir,
        extra: &[&str],
    ) -> anyhow::Result<Connect> {
        let door = gw.tcp_addr()?.to_string();
        let mut cmd = Command::new(gatehouse_bin()?);
        cmd.args(["connect", resource, "--door", &door])
            .args(extra)
            .env("GATEHOUSE_HOME", home.path())
            .env_remove("GATEHOUSE_TOKEN")
            .env_remove("GATEHOUSE_CONFIG")
            .env_remove("GATEHOUSE_TCP_DOOR");
        if let Some(t) = token {
            cmd.env("GATEHOUSE_TOKEN", t);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting gatehouse connect")?;
        let (line_tx, line_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout")?;
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = line_tx.send(first);
            }
            for _ in lines {}
        });
        let (err_tx, err_rx) = mpsc::channel();
        let mut stderr = child.stderr.take().context("no stderr")?;
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            let _ = err_tx.send(s);
        });
        let mut c = Connect {
            child,
            port: 0,
            stderr: err_rx,
            _home: home,
        };
        let line = match line_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = c.child.kill();
                let _ = c.child.wait();
                let err = c
                    .stderr
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                bail!("gatehouse connect printed no listening line; stderr:\n{err}");
            }
        };
        // listening on 127.0.0.1:PORT for RESOURCE; Ctrl-C to stop
        let expected = format!(" for {resource}; Ctrl-C to stop");
        let port = line
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|rest| rest.strip_suffix(expected.as_str()))
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unexpected first line {line:?}"))?;
        c.port = port;
        Ok(c)
    }

    /// Waits (at most `timeout`) for the process to exit; its status and stderr.
    fn wait(mut self, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                let err = self
                    .stderr
                    .recv_timeout(Duration::from_secs(5))
                    .unwrap_or_default();
                return Ok((st, err));
            }
            if Instant::now() >= deadline {
                bail!("gatehouse connect did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn events_of<'a>(
    events: &'a [serde_json::Value],
    kind: &str,
    resource: &str,
) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["resource"] == resource)
        .collect()
}

#[test]
fn redis_through_gatehouse_connect_is_admitted_relayed_and_audited() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let gw = gateway(vec![cache(&redis, "cache", "dev")])?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    // One connection, two commands (`--once` exits after it, 0 because it was admitted).
    let once = Connect::spawn(&gw, "cache", &token, &["--once"])?;
    let out = redis_cli(once.port, &[], Some(b"set k v\nget k\n"))?.ok()?;
    assert_eq!(out.stdout.trim(), "OK\nv", "{out}");
    let (status, stderr) = once.wait(Duration::from_secs(10))?;
    assert!(status.success(), "{status}: {stderr}");
    // The write reached the real server.
    assert_eq!(redis.cli(&["get", "k"])?.ok()?.stdout.trim(), "v");

    // Without `--once` every local connection is carried, on the port asked for.
    let port = free_port()?;
    let port_arg = port.to_string();
    let many = Connect::spawn(&gw, "cache", &token, &["--port", &port_arg])?;
    assert_eq!(many.port, port);
    let out = redis_cli(port, &["set", "k2", "v2"], None)?.ok()?;
    assert_eq!(out.stdout.trim(), "OK", "{out}");
    let out = redis_cli(port, &["get", "k2"], None)?.ok()?;
    assert_eq!(out.stdout.trim(), "v2", "{out}");
    // Both of its sessions have ended (the client closed them) before `connect` is stopped,
    // so that stopping it cannot cut one short.
    poll(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok((events_of(&gw.audit_events()?, "session.end", "cache").len() >= 3).then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the sessions of the multi-connection run did not end"))?;
    drop(many);

    // An engineer's saved login (credential and the gateway's CA) works without flags.
    let home = gw.engineer("alice", &["engineering"])?;
    let saved = Connect::spawn_in(&gw, "cache", None, home, &["--once"])?;
    let out = redis_cli(saved.port, &["get", "k"], None)?.ok()?;
    assert_eq!(out.stdout.trim(), "v", "{out}");
    let (status, stderr) = saved.wait(Duration::from_secs(10))?;
    assert!(status.success(), "{status}: {stderr}");

    let events = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let events = gw.audit_events()?;
        Ok((events_of(&events, "session.end", "cache").len() >= 4).then_some(events))
    })?
    .ok_or_else(|| anyhow::anyhow!("four session.end events for cache expected"))?;
    let decisions = events_of(&events, "access.decision", "cache");
    assert_eq!(decisions.len(), 4, "{decisions:#?}");
    for d in &decisions {
        assert_eq!(
            (d["actor"].as_str(), d["decision"].as_str()),
            (Some("alice"), Some("allow")),
            "{d}"
        );
        assert_eq!(d["action"], "connect");
        assert_eq!(d["detail"]["role"], "read");
    }
    let starts = events_of(&events, "session.start", "cache");
    assert_eq!(starts.len(), 4);
    for s in &starts {
        assert_eq!(s["detail"]["protocol"], "tcp", "{s}");
        assert_eq!(s["detail"]["upstream"], redis.addr().to_string(), "{s}");
        assert_eq!(s["detail"]["role"], "read", "{s}");
        assert!(
            s["detail"]["client_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{s}"
        );
        assert!(s["detail"]["grant_id"].is_null(), "{s}");
        // Each session's decision came first and names the same session.
        assert!(decisions
            .iter()
            .any(|d| d["session_id"] == s["session_id"] && d["seq"].as_u64() < s["seq"].as_u64()));
    }
    for e in events_of(&events, "session.end", "cache") {
        let detail = &e["detail"];
        assert!(detail["bytes_from_client"].as_u64().unwrap_or(0) > 0, "{e}");
        assert!(detail["bytes_to_client"].as_u64().unwrap_or(0) > 0, "{e}");
        assert!(detail["duration_ms"].is_u64(), "{e}");
        assert_eq!(e["reason"], "client closed the connection", "{e}");
    }
    // The sessions table lists them, ended.
    let cfg = gw.config_path().to_string_lossy().into_owned();
    let listed = gw.cli(&["sessions", "--all", "--config", &cfg])?.ok()?;
    assert!(listed.stdout.matches("cache").count() >= 4, "{listed}");
    assert!(gw.audit_verify()?.ok()?.stdout.contains("intact"));
    Ok(())
}

#[test]
fn a_policy_denial_is_told_on_stderr_and_recorded() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let gw = gateway(vec![cache(&redis, "cache-prod", "prod")])?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    let c = Connect::spawn(&gw, "cache-prod", &token, &["--once"])?;
    let out = redis_cli(c.port, &["set", "k", "v"], None)?;
    assert!(!out.stdout.contains("OK"), "{out}");
    let (status, stderr) = c.wait(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gatehouse: access to cache-prod denied by policy"),
        "{stderr}"
    );
    assert!(stderr.contains("audit event"), "{stderr}");
    // Nothing reached the server.
    assert_eq!(redis.cli(&["exists", "k"])?.ok()?.stdout.trim(), "0");

    let events = gw.audit_events()?;
    let decisions = events_of(&events, "access.decision", "cache-prod");
    assert_eq!(decisions.len(), 1, "{events:#?}");
    assert_eq!(decisions[0]["decision"], "deny");
    assert_eq!(decisions[0]["actor"], "alice");
    assert!(events_of(&events, "session.start", "cache-prod").is_empty());

    // A bad credential is a credential refusal, not a policy one.
    let c = Connect::spawn(
        &gw,
        "cache-prod",
        "not-a-token",
        &["--once", "--user", "alice"],
    )?;
    let _ = redis_cli(c.port, &["ping"], None)?;
    let (status, stderr) = c.wait(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gateway token authentication failed for user \"alice\""),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_dead_upstream_is_a_failed_session_and_an_upstream_refusal() -> anyhow::Result<()> {
    // Nothing listens on the resource's port.
    let gone = Resource::postgres("gone", format!("127.0.0.1:{}", free_port()?), "unused")
        .kind("tcp")
        .database(None)
        .labels(&[("env", "dev"), ("data_class", "internal")]);
    let gw = gateway(vec![gone])?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let c = Connect::spawn(&gw, "gone", &token, &["--once"])?;
    let _ = redis_cli(c.port, &["ping"], None)?;
    let (status, stderr) = c.wait(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gatehouse: gatehouse could not connect to resource \"gone\""),
        "{stderr}"
    );
    let events = gw.wait_for_event(
        |e| e["kind"] == "session.failed" && e["resource"] == "gone",
        Duration::from_secs(5),
    )?;
    assert_eq!(
        events_of(&events, "access.decision", "gone")[0]["decision"],
        "allow"
    );
    assert!(events_of(&events, "session.start", "gone").is_empty());
    // psql to a TCP resource says what it is instead of a missing role.
    let out = gw.psql("gone", "alice", &token, "select 1")?.err()?;
    assert!(
        out.stderr
            .contains("resource \"gone\" is a tcp resource, not a PostgreSQL database"),
        "{out}"
    );
    assert!(out.stderr.contains("gatehouse connect gone"), "{out}");
    Ok(())
}

#[test]
fn disabling_the_user_cuts_a_live_tcp_session() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let gw = gateway(vec![cache(&redis, "cache", "dev")])?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let c = Connect::spawn(&gw, "cache", &token, &["--once"])?;

    // A session that lasts until something ends it.
    let mut subscriber = subscribe(c.port)?;
    gw.wait_for_event(
        |e| e["kind"] == "session.start" && e["resource"] == "cache",
        Duration::from_secs(10),
    )?;
    // The subscription is live upstream.
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        Ok((subscribers(&redis)? == "1").then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the subscription never reached redis"))?;
    assert!(subscriber.try_wait()?.is_none());

    let cfg = gw.config_path().to_string_lossy().into_owned();
    let out = gw
        .cli(&[
            "users", "disable", "alice", "--config", &cfg, "--reason", "left", "--by", "hr-admin",
        ])?
        .ok()?;
    assert!(out.stdout.contains("alice disabled"), "{out}");
    let disabled_at = Instant::now();
    let deadline = disabled_at + Duration::from_secs(5);
    while subscriber.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = subscriber.kill();
            bail!("the subscriber still runs 5 s after the disable");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, stderr) = c.wait(Duration::from_secs(5))?;
    assert!(status.success(), "{status}: {stderr}");

    let events = gw.wait_for_event(
        |e| e["kind"] == "session.end" && e["resource"] == "cache",
        Duration::from_secs(5),
    )?;
    let end = events_of(&events, "session.end", "cache")[0];
    let reason = end["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ended by the gateway") && reason.contains("alice was disabled"),
        "{end}"
    );
    assert!(
        end["detail"]["bytes_from_client"].as_u64().unwrap_or(0) > 0,
        "{end}"
    );
    assert!(events
        .iter()
        .any(|e| e["kind"] == "session.cut" && e["actor"] == "alice" && e["resource"] == "cache"));
    // Upstream the subscription is gone too.
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok((subscribers(&redis)? == "0").then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the subscription outlived the cut"))?;

    // And a new connection is refused as a disabled user.
    let c = Connect::spawn(&gw, "cache", &token, &["--once"])?;
    let _ = redis_cli(c.port, &["ping"], None)?;
    let (status, stderr) = c.wait(Duration::from_secs(10))?;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("user \"alice\" is disabled"), "{stderr}");
    Ok(())
}

#[test]
fn a_graceful_stop_ends_live_tcp_sessions() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let mut gw = gateway(vec![cache(&redis, "cache", "dev")])?;
    let token = gw.token("alice", &["engineering"], "1h")?;
    let c = Connect::spawn(&gw, "cache", &token, &["--once"])?;
    let mut blocked = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port.to_string(),
            "blpop",
            "nothing",
            "0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting redis-cli blpop")?;
    let events = gw.wait_for_event(
        |e| e["kind"] == "session.start" && e["resource"] == "cache",
        Duration::from_secs(10),
    )?;
    let session = events_of(&events, "session.start", "cache")[0]["session_id"].clone();
    let status = gw.stop()?;
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while blocked.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = blocked.kill();
            bail!("redis-cli still blocked after the gateway stopped");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(c);
    let events = gw.audit_events()?;
    let end = events
        .iter()
        .find(|e| e["kind"] == "session.end" && e["session_id"] == session)
        .with_context(|| format!("no session.end for {session}: {events:#?}"))?;
    assert_eq!(
        end["reason"], "ended by the gateway: the gateway is shutting down",
        "{end}"
    );
    let stop = events.iter().position(|e| e["kind"] == "gateway.stop");
    let ended = events.iter().position(|e| e["kind"] == "session.end");
    assert!(
        ended < stop,
        "the session's end is recorded before gateway.stop"
    );
    Ok(())
}

/// `redis-cli subscribe ch` through the local port of a `gatehouse connect`: a session that
/// lasts until something ends it.
fn subscribe(port: u16) -> anyhow::Result<Child> {
    Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "subscribe",
            "ch",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting redis-cli subscribe")
}

/// The subscriber count of channel `ch` on the real server.
fn subscribers(redis: &RedisServer) -> anyhow::Result<String> {
    Ok(redis
        .cli(&["pubsub", "numsub", "ch"])?
        .stdout
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

#[test]
fn a_tcp_resource_behind_a_remote_agent_is_reached_audited_and_cut_through_it() -> anyhow::Result<()>
{
    let redis = RedisServer::start()?;
    let agents_port = free_port()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .set("tcp", "listen", "\"127.0.0.1:0\"")
            .set("agents", "listen", &format!("\"127.0.0.1:{agents_port}\""))
            .resource(
                Resource::behind_agent("cache", "dc1")
                    .kind("tcp")
                    .labels(&[("env", "dev"), ("data_class", "internal")]),
            ),
    )?;
    let agent = AgentProc::enroll(&gw, AgentSpec::new("dc1").tcp("cache", redis.addr()))?;
    agent.wait_connected(&gw, Duration::from_secs(30))?;
    let token = gw.token("alice", &["engineering"], "1h")?;

    let once = Connect::spawn(&gw, "cache", &token, &["--once"])?;
    let out = redis_cli(once.port, &[], Some(b"set k behind-agent\nget k\n"))?.ok()?;
    assert_eq!(out.stdout.trim(), "OK\nbehind-agent", "{out}");
    let (status, stderr) = once.wait(Duration::from_secs(10))?;
    assert!(status.success(), "{status}: {stderr}");
    assert_eq!(
        redis.cli(&["get", "k"])?.ok()?.stdout.trim(),
        "behind-agent"
    );
    // The agent's end of the session (its byte counts) is in the log before the gateway's.
    let events = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let events = gw.audit_events()?;
        Ok((!events_of(&events, "session.end", "cache").is_empty()).then_some(events))
    })?
    .ok_or_else(|| anyhow::anyhow!("the session behind the agent never ended"))?;
    let start = events_of(&events, "session.start", "cache")[0];
    assert_eq!(start["detail"]["agent"], "dc1", "{start}");
    assert_eq!(
        start["detail"]["upstream"],
        format!("{} via agent dc1", redis.addr()),
        "{start}"
    );
    let agent_end = events_of(&events, "session.agent_end", "cache");
    assert_eq!(agent_end.len(), 1, "{events:#?}");
    assert_eq!(agent_end[0]["session_id"], start["session_id"]);
    assert!(
        agent_end[0]["detail"]["bytes_from_client"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{}",
        agent_end[0]
    );
    let seq = |e: &serde_json::Value| e["seq"].as_u64().unwrap_or(0);
    let end = events_of(&events, "session.end", "cache")[0];
    assert!(seq(agent_end[0]) < seq(end), "{} / {end}", agent_end[0]);

    // A long session is cut by a disable: the gateway asks the agent, which ends it (its end
    // event says so) and closes the upstream connection.
    let c = Connect::spawn(&gw, "cache", &token, &["--once"])?;
    let mut subscriber = subscribe(c.port)?;
    poll(Duration::from_secs(10), Duration::from_millis(20), || {
        Ok((subscribers(&redis)? == "1").then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the subscription never reached redis through the agent"))?;
    gw.cli(&["users", "disable", "alice", "--reason", "left"])?
        .ok()?;
    let cut = poll(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok(subscriber.try_wait()?)
    })?;
    if cut.is_none() {
        let _ = subscriber.kill();
        bail!("the subscriber behind the agent still runs 5 s after the disable");
    }
    let (status, stderr) = c.wait(Duration::from_secs(5))?;
    assert!(status.success(), "{status}: {stderr}");
    poll(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok((subscribers(&redis)? == "0").then_some(()))
    })?
    .ok_or_else(|| anyhow::anyhow!("the agent left the upstream subscription open"))?;
    let events = poll(Duration::from_secs(10), Duration::from_millis(100), || {
        let events = gw.audit_events()?;
        Ok((events_of(&events, "session.agent_end", "cache").len() >= 2).then_some(events))
    })?
    .ok_or_else(|| anyhow::anyhow!("the agent never reported the cut session's end"))?;
    let agent_end = events_of(&events, "session.agent_end", "cache")[1];
    let reason = agent_end["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("ended by the gateway") && reason.contains("alice was disabled"),
        "the agent ended the session on the gateway's word: {agent_end}"
    );
    Ok(())
}
