//! Benchmark: 200 live sessions under a grant that expires at one moment; how long after the
//! expiry each session is cut (p50, p99, max). Real PostgreSQL, the real gateway, 200 sqlx
//! connections as `dbname=orders-db:write`.
//!
//!   cargo run --release -p gatehouse-tests --example grant_expiry [sessions]
//!
//! (`GATEHOUSE_BIN` picks the gateway binary; build it in release for numbers you quote.)
//! Prints one Markdown table row; `bench/grant_expiry.sh` runs it and records it in
//! BENCHMARKS.md. Not part of the test suite: speed is measured here, never asserted.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_tests::pg::{ORDERS_PASSWORD, ORDERS_USER, READONLY_PASSWORD, READONLY_USER};
use gatehouse_tests::{rust_client, Gateway, GatewayConfig, PgServer, Resource};

fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let sessions: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .resource(
                Resource::orders_db(&pg, "orders-db")
                    .labels(&[("env", "dev"), ("data_class", "internal")])
                    .credential(READONLY_USER, READONLY_PASSWORD)
                    .raw(
                        "roles",
                        &format!("{{ write = {{ username = \"{ORDERS_USER}\", password_env = \"BENCH_WRITE_PW\" }} }}"),
                    ),
            )
            .set("postgres", "max_connections", "1000")
            .env("BENCH_WRITE_PW", ORDERS_PASSWORD),
    )?;
    let dana = gw.engineer("dana", &["dba"])?;
    // bob signs in once, so that a direct grant can be judged by his groups.
    let token = gw.token("bob", &["engineering"], "1h")?;
    gatehouse_tests::Psql::new(gw.pg_addr(), "orders-db", "bob")
        .password(&token)
        .run("select 1")?
        .ok()?;
    // Long enough to open every session first.
    let lifetime = 10 + sessions / 20;
    gw.as_user(
        &dana,
        &[
            "grant",
            "bob",
            "orders-db",
            "--role",
            "write",
            "--for",
            &format!("{lifetime}s"),
            "--reason",
            "bench",
        ],
    )?
    .ok()?;
    let expires_unix = {
        let out = gw.as_user(&dana, &["grants"])?.ok()?;
        let line = out.stdout.lines().nth(1).unwrap_or_default().to_string();
        let expires = line
            .split_whitespace()
            .nth(5)
            .unwrap_or_default()
            .to_string();
        // 2026-11-28T23:59:59.000000Z -> seconds since the epoch (UTC).
        parse_ts(&expires)
            .ok_or_else(|| anyhow::anyhow!("cannot parse grant expiry from {line:?}"))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = gw.pg_addr();
    let lags: Vec<f64> = rt.block_on(async move {
        let mut conns = Vec::new();
        for _ in 0..sessions {
            conns.push(rust_client(addr, "orders-db:write", "bob", &token).await?);
        }
        eprintln!(
            "{sessions} sessions open; grant expires in {:.1}s",
            expires_unix - now_f64()
        );
        let mut tasks = Vec::new();
        for mut c in conns {
            tasks.push(tokio::spawn(async move {
                let _ = sqlx::query("select pg_sleep(120)").execute(&mut c).await;
                now_f64()
            }));
        }
        let mut lags = Vec::new();
        for t in tasks {
            lags.push(t.await? - expires_unix);
        }
        anyhow::Ok(lags)
    })?;
    let mut lags = lags;
    lags.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lags[((lags.len() as f64 * p).ceil() as usize).clamp(1, lags.len()) - 1];
    println!(
        "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
        lags.len(),
        pct(0.5) * 1000.0,
        pct(0.99) * 1000.0,
        lags[lags.len() - 1] * 1000.0,
        lags[0] * 1000.0
    );
    drop(gw);
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` to Unix seconds.
fn parse_ts(s: &str) -> Option<f64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = rest.trim_end_matches('Z');
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}
