//! Log injection: what a client controls (its user name, a token's header) cannot forge or
//! hide a line in the gateway's text log (a user name with control characters is refused
//! before it is logged at all). A hand-written wire client sends the hostile values;
//! the real gateway binary writes its log.

use std::time::Duration;

use base64::Engine as _;
use gatehouse_tests::{
    raw_connect, raw_password_login, read_backend_message, startup_packet, Gateway, GatewayConfig,
    PgServer, Resource,
};
use tokio::io::AsyncWriteExt;

const FORGED: &str = "2026-12-02T00:00:00.000000Z  INFO gatehouse: FORGED admin granted prod write";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_controlled_values_cannot_forge_log_lines() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .allow_plaintext(true)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = serde_json::json!({ "alg": "EdDSA", "typ": "gatehouse-access+jwt", "kid": format!("k\n{FORGED}") });
    let token = format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(br#"{"sub":"mallory"}"#),
        b64(&[0u8; 64])
    );
    // A user name with CR LF is refused before authentication (never logged as given).
    let user = format!("mallory\r\n{FORGED}\u{1b}[1A");
    let mut s = raw_connect(gw.pg_addr()).await?;
    s.write_all(&startup_packet(&user, "orders-db", &[]))
        .await?;
    let refused = read_backend_message(&mut s).await?;
    assert_eq!(refused.sqlstate().as_deref(), Some("28000"));
    assert!(refused
        .message()
        .unwrap_or_default()
        .contains("not one gatehouse issues credentials to"));
    // A token whose key id carries a forged line.
    let mut s = raw_password_login(gw.pg_addr(), "mallory", "orders-db", token.as_bytes()).await?;
    let refused = read_backend_message(&mut s).await?;
    assert_eq!(refused.sqlstate().as_deref(), Some("28P01"));
    gw.wait_for_event(|e| e["kind"] == "auth.failed", Duration::from_secs(10))?;

    let logs = gw.logs();
    // The refusal was logged with the token's key id (so the test looks at the right place),
    // on one line.
    let refusal: Vec<&str> = logs.lines().filter(|l| l.contains("FORGED")).collect();
    assert!(
        refusal.iter().any(|l| l.contains("token key id")),
        "the refusal naming the key id is not in the log:\n{logs}"
    );
    for line in &refusal {
        assert!(
            !line.starts_with("2026-12-02T00:00:00.000000Z"),
            "a forged line:\n{logs}"
        );
        assert!(line.contains("\\n") || line.contains("\\r"), "{line}");
        assert!(!line.contains('\u{1b}'), "a raw escape sequence: {line:?}");
    }
    Ok(())
}
