//! Fills a SQLite store with N audit events through the real audit writer (sessions of a
//! decision, a start, six statements and an end; a sign-in every ten sessions), then builds
//! the evidence bundle for the period with `gatehouse evidence bundle` under `/usr/bin/time`,
//! and prints one Markdown row: events, build seconds, peak RSS, bundle size. Used by
//! `bench/evidence.sh`.
//!
//!   cargo run --release -p gatehouse-tests --example evidence_scale -- 1000000

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use gatehouse_gateway::audit::{AuditLog, EventKind, NewEvent};
use gatehouse_gateway::config::{Config, ProcessEnv, Secrets};
use gatehouse_gateway::keys::SigningKey;
use gatehouse_gateway::store::Store;
use gatehouse_tests::GatewayConfig;
use serde_json::json;

fn event(kind: EventKind, user: &str, session: &str, n: u64) -> NewEvent {
    let mut e = NewEvent::new(kind);
    e.actor = user.to_string();
    e.resource = "orders-db".into();
    e.session_id = session.to_string();
    match kind {
        EventKind::AccessDecision => {
            e.action = "connect".into();
            e.decision = "allow".into();
            e.policy_ids = vec!["engineering-connect-nonprod".into()];
            e.detail = json!({ "role": "read", "client_addr": "10.0.0.7:50000", "mfa": true });
        }
        EventKind::SessionStart => {
            e.action = "connect".into();
            e.detail = json!({ "role": "read", "upstream_user": "orders_ro", "client_addr": "10.0.0.7:50000" });
        }
        EventKind::DbStatement => {
            e.action = "query".into();
            e.detail = json!({ "statement": format!("select * from orders where id = {n}"), "protocol": "simple" });
        }
        EventKind::SessionEnd => {
            e.action = "disconnect".into();
            e.reason = "client closed the connection".into();
            e.detail = json!({ "protocol": "postgres", "statements": 6, "bytes_from_client": 600, "bytes_to_client": 4000, "duration_ms": 12 });
        }
        _ => {
            e.action = "login".into();
            e.decision = "allow".into();
            e.detail =
                json!({ "flow": "browser", "mfa": !n.is_multiple_of(3), "amr": ["pwd", "otp"] });
        }
    }
    e
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let bin = gatehouse_tests::gatehouse_bin()?;
    let dir = gatehouse_tests::util::temp_dir("evidence-scale")?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let config_path = dir.join("gatehouse.toml");
    std::fs::write(&config_path, GatewayConfig::new().to_toml(&state))?;
    let config = Config::load(&config_path, &ProcessEnv, Secrets::Skip)?;
    let store = Store::open(&config.store_url).await?;
    let key = Arc::new(SigningKey::load_or_create(
        &gatehouse_gateway::server::audit_key_path(&config),
    )?);
    let (log, writer) = AuditLog::spawn_anchored(
        store.clone(),
        key,
        config.audit.checkpoint_every,
        4096,
        Some(gatehouse_gateway::server::audit_anchor_path(&config)),
    );
    let fill = Instant::now();
    let mut written = 0u64;
    let mut session = 0u64;
    while written < n {
        session += 1;
        let user = format!("user{}", session % 500);
        let sid = format!("{session:032x}");
        if session.is_multiple_of(10) {
            log.record(event(EventKind::LoginSucceeded, &user, "", session))
                .await?;
            written += 1;
        }
        log.record(event(EventKind::AccessDecision, &user, &sid, session))
            .await?;
        log.record(event(EventKind::SessionStart, &user, &sid, session))
            .await?;
        for i in 0..6 {
            log.record(event(EventKind::DbStatement, &user, &sid, session * 10 + i))
                .await?;
        }
        log.record(event(EventKind::SessionEnd, &user, &sid, session))
            .await?;
        written += 9;
    }
    log.record_durable(event(EventKind::LoginSucceeded, "last", "", 0))
        .await?;
    drop(log);
    writer.await?;
    eprintln!(
        "filled {written} events in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let today = &gatehouse_gateway::audit::event::now_ts()[..10];
    let out = dir.join("bundle");
    let started = Instant::now();
    let res = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(&bin)
        .args(["evidence", "bundle", "--from", today, "--out"])
        .arg(&out)
        .env("GATEHOUSE_CONFIG", &config_path)
        .output()
        .context("running /usr/bin/time (Debian package `time`)")?;
    let secs = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&res.stderr);
    if !res.status.success() {
        bail!(
            "bundle failed: {}\n{stderr}",
            String::from_utf8_lossy(&res.stdout)
        );
    }
    let rss_kib: u64 = stderr
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .context("no RSS from /usr/bin/time")?;
    let size: u64 = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "| {written} | {secs:.1} s | {:.1} MiB | {:.1} MiB |",
        rss_kib as f64 / 1024.0,
        size as f64 / 1024.0 / 1024.0
    );
    Ok(())
}
