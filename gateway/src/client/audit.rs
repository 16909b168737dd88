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

/// `gatehouse evidence download`: the bundle for `from..to` (RFC 3339) built by the gateway,
/// unpacked into the new directory `out`. Verify it with `gatehouse evidence verify`.
pub async fn download_bundle(from: &str, to: &str, out: &std::path::Path) -> anyhow::Result<usize> {
    use anyhow::{bail, Context};
    use tokio::io::AsyncWriteExt;

    let cred = super::credentials::credential()?;
    // A year's bundle takes minutes to build and to send: no 30 s limit here.
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(6 * 3600));
    if let Some(ca) = cred.ca_file() {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    let http = b.build()?;
    let gateway = cred.gateway();
    let url = format!(
        "{gateway}/api/v1/evidence/bundle?from={}&to={}",
        encode(from),
        encode(to)
    );
    let mut resp = http
        .get(url)
        .bearer_auth(cred.token())
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    if !resp.status().is_success() {
        bail!("{}", super::api::api_error(resp).await);
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!(
            "`{}` exists and is not empty; give a new directory",
            out.display()
        );
    }
    std::fs::create_dir_all(out)?;
    let tar = out.with_extension("tar.part");
    let mut f = tokio::fs::File::create(&tar).await?;
    while let Some(chunk) = resp.chunk().await? {
        f.write_all(&chunk).await?;
    }
    f.sync_all().await?;
    drop(f);
    let mut r = std::io::BufReader::new(std::fs::File::open(&tar)?);
    let n = crate::evidence::tar::unpack(&mut r, out, 1 << 33)
        .with_context(|| format!("unpacking the bundle into {}", out.display()))?;
    let _ = std::fs::remove_file(&tar);
    Ok(n)
}
