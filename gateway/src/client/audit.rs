//! The auditor's command: `gatehouse audit events`, the log's events through the API as the
//! signed-in person (who must be permitted `read_audit`; every read is recorded), as JSONL.

use std::io::Write;

use super::api::api;

/// Filters of `gatehouse audit events`.
#[derive(Debug, Default)]
pub struct EventFilters {
    pub from: Option<String>,
    pub to: Option<String>,
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub resource: Option<String>,
    pub control: Option<String>,
    pub session: Option<String>,
    /// Stop after this many events (all of them when `None`).
    pub max: Option<u64>,
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prints the matching events, one JSON object per line, following the API's cursor.
pub async fn audit_events(f: EventFilters) -> anyhow::Result<()> {
    let mut base = String::new();
    for (k, v) in [
        ("from", &f.from),
        ("to", &f.to),
        ("kind", &f.kind),
        ("actor", &f.actor),
        ("resource", &f.resource),
        ("control", &f.control),
        ("session", &f.session),
    ] {
        if let Some(v) = v {
            base.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    let mut after = 0u64;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let limit = f.max.map(|m| (m - printed).min(1000)).unwrap_or(1000);
        if limit == 0 {
            return Ok(());
        }
        let path = format!("/api/v1/audit/events?after={after}&limit={limit}{base}");
        let v = api(reqwest::Method::GET, &path, None).await?;
        for e in v["events"].as_array().into_iter().flatten() {
            writeln!(out, "{e}")?;
            printed += 1;
        }
        match v["next"].as_u64() {
            Some(n) if n > after => after = n,
            _ => return Ok(()),
        }
    }
}
