//! The HTTP client to the gateway: `reqwest` trusting the saved (or given) CA, the gateway's
//! error bodies as one line, and `api`, one call with the current credential.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use super::credentials::{credential, refused};

pub(super) fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("gatehouse-cli/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading --ca-file {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {} holds no PEM certificate", ca.display()))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b.build()?)
}

/// Reads an error body `{"error", "message"}` into one line.
pub(super) async fn api_error(resp: reqwest::Response) -> String {
    let status = resp.status();
    match resp.json::<serde_json::Value>().await {
        Ok(v) => error_line(status, &v),
        Err(_) => format!("HTTP {status}"),
    }
}

/// An error body `{"error", "message"}` as one line: `message (error)`.
pub(super) fn error_line(status: reqwest::StatusCode, body: &serde_json::Value) -> String {
    if !body.is_object() {
        return format!("HTTP {status}");
    }
    format!(
        "{} ({})",
        body.get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("refused"),
        body.get("error")
            .and_then(|m| m.as_str())
            .unwrap_or(status.as_str())
    )
}

/// Calls the gateway's API with the current credential (`GATEHOUSE_TOKEN`, else the saved
/// login); errors carry the gateway's message.
pub(super) async fn api(
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let cred = credential()?;
    let http = http_client(cred.ca_file())?;
    let gateway = cred.gateway();
    let mut req = http
        .request(method, format!("{gateway}{path}"))
        .bearer_auth(cred.token());
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the gateway at {gateway}"))?;
    if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
        bail!(
            "{}; {}",
            refused(gateway, cred.token(), &cred.describe()),
            cred.remedy()
        );
    }
    if !resp.status().is_success() {
        bail!("{}", api_error(resp).await);
    }
    Ok(resp.json().await?)
}
