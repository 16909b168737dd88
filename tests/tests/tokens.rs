//! Forged, expired and misdirected gateway tokens at the PostgreSQL front door: each is refused
//! with 28P01, never reveals which check failed to the client, and is audited with the reason.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use gatehouse_gateway::keys::SigningKey;
use gatehouse_tests::{rust_client, Gateway, GatewayConfig, PgServer, Resource};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const TYP: &str = "gatehouse-access+jwt";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn claims(sub: &str) -> Value {
    let now = now();
    json!({"iss": "gatehouse", "aud": "gatehouse", "sub": sub, "groups": ["dba"], "exp": now + 600, "nbf": now - 5, "iat": now - 5, "jti": "t1"})
}

fn sign(key: &SigningKey, alg_header: Header, claims: &Value) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(
        &alg_header,
        claims,
        &EncodingKey::from_ed_der(key.pkcs8_der()),
    )?)
}

fn header(kid: &str) -> Header {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.to_string());
    h.typ = Some(TYP.to_string());
    h
}

async fn sqlstate(gw: &Gateway, user: &str, token: &str) -> Option<String> {
    match rust_client(gw.pg_addr(), "orders-db", user, token).await {
        Ok(_) => Some("connected".into()),
        Err(e) => e
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_28p01_and_are_audited() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;
    let good = gw.token("alice", &["dba"], "1h")?;
    assert_eq!(
        sqlstate(&gw, "alice", &good).await.as_deref(),
        Some("connected")
    );

    let key = SigningKey::load(&gw.state_dir().join("keys/token-signing.pem"))?;
    let kid = key.key_id.clone();
    let other_dir = gatehouse_tests::temp_dir("other-key")?;
    let other = SigningKey::load_or_create(&other_dir.join("k.pem"))?;
    let parts: Vec<&str> = good.split('.').collect();

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    let mut c = claims("alice");
    c["exp"] = json!(now() - 120);
    cases.push(("expired", sign(&key, header(&kid), &c)?, "expired"));
    let mut c = claims("alice");
    c["nbf"] = json!(now() + 600);
    cases.push((
        "not yet valid",
        sign(&key, header(&kid), &c)?,
        "not valid yet",
    ));
    let mut c = claims("alice");
    c["aud"] = json!("some-other-service");
    cases.push(("wrong audience", sign(&key, header(&kid), &c)?, "audience"));
    let mut c = claims("alice");
    c["iss"] = json!("https://evil.example");
    cases.push(("wrong issuer", sign(&key, header(&kid), &c)?, "issuer"));
    cases.push((
        "wrong key, our kid",
        sign(&other, header(&kid), &claims("alice"))?,
        "signature",
    ));
    cases.push((
        "wrong key, its kid",
        sign(&other, header(&other.key_id), &claims("alice"))?,
        "key id",
    ));
    let mut c = claims("alice");
    c.as_object_mut().map(|m| m.remove("jti"));
    cases.push((
        "missing jti",
        sign(&key, header(&kid), &c)?,
        "missing claim",
    ));
    let none = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none", "typ": TYP, "kid": kid}).to_string()),
        B64URL.encode(claims("alice").to_string())
    );
    cases.push(("alg none", none, "malformed"));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.clone());
    hs.typ = Some(TYP.into());
    let hs = jsonwebtoken::encode(
        &hs,
        &claims("alice"),
        &EncodingKey::from_secret(&key.public_key().raw),
    )?;
    cases.push(("HS256 with the public key", hs, "algorithm"));
    let mut c = claims("alice");
    c["groups"] = json!(["dba", "admins"]);
    cases.push((
        "tampered payload",
        format!("{}.{}.{}", parts[0], B64URL.encode(c.to_string()), parts[2]),
        "signature",
    ));
    let mut h = header(&kid);
    h.typ = Some("JWT".into());
    cases.push((
        "a plain JWT, not a gateway token",
        sign(&key, h, &claims("alice"))?,
        "type",
    ));
    cases.push(("garbage", "hunter2".to_string(), "malformed"));
    cases.push(("another user's token", good.clone(), "subject"));

    for (name, token, _) in &cases {
        let user = if *name == "another user's token" {
            "mallory"
        } else {
            "alice"
        };
        assert_eq!(
            sqlstate(&gw, user, token).await.as_deref(),
            Some("28P01"),
            "case `{name}`"
        );
    }

    let events = gw.settled_export()?;
    let failures: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "auth.failed")
        .collect();
    assert_eq!(failures.len(), cases.len(), "each refusal is audited");
    for ((name, token, reason), e) in cases.iter().zip(&failures) {
        let r = e["reason"].as_str().unwrap_or_default();
        assert!(
            r.contains(reason),
            "case `{name}`: audited reason `{r}` should mention `{reason}`"
        );
        assert_eq!(e["decision"], "deny");
        assert!(e["controls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "8.5")));
        // The token itself never reaches the log.
        if token.len() > 20 {
            assert!(
                !e.to_string().contains(token.as_str()),
                "case `{name}` leaked the token"
            );
        }
    }
    assert!(!gw.logs().contains(&good), "the token must not be logged");
    Ok(())
}
