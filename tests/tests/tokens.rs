//! Forged, expired and misdirected gateway tokens at the PostgreSQL front door: each is refused
//! with 28P01, never reveals which check failed to the client, and is audited with the reason.
//! Issued service tokens are recorded (store and `credential.issued`, naming the operator),
//! listed, and revoked: a revoked token's live session is cut within a second and it is
//! refused from then on.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use gatehouse_gateway::keys::SigningKey;
use gatehouse_tests::{gatehouse, rust_client, Gateway, GatewayConfig, PgServer, Psql, Resource};
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

/// The operating-system user and host this test (and so the CLI it runs) runs as, read the way
/// the gateway is expected to: the real uid of /proc/self/status, its /etc/passwd name, the
/// kernel's host name.
fn os_identity() -> anyhow::Result<(String, u64, String)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no Uid: line in {status}"))?;
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let name = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| format!("uid {uid}"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    Ok((name, uid, host))
}

/// The claims of a token, unverified.
fn payload(token: &str) -> anyhow::Result<Value> {
    let part = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT: {token}"))?;
    Ok(serde_json::from_slice(&B64URL.decode(part)?)?)
}

fn assert_operator(e: &Value, by: &str) -> anyhow::Result<()> {
    let (os_user, uid, host) = os_identity()?;
    let d = &e["detail"];
    assert_eq!(d["by"], by, "{e}");
    assert_eq!(d["os_user"], os_user.as_str(), "{e}");
    assert_eq!(d["uid"], uid, "{e}");
    assert_eq!(d["host"], host.as_str(), "{e}");
    assert_eq!(e["actor"], by, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_token_is_audited_listed_and_revoked_and_its_session_cut() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = Gateway::start(GatewayConfig::new().resource(Resource::orders_dev(&pg, "orders-db")))?;

    // Issue: the token on stdout, its id on stderr; the store and the log hold it.
    let out = gw
        .cli(&[
            "token",
            "issue",
            "--user",
            "ci-bot",
            "--groups",
            "engineering,deploy",
            "--ttl",
            "1h",
            "--by",
            "release-manager",
        ])?
        .ok()?;
    let token = out.stdout.trim().to_string();
    let claims = payload(&token)?;
    let id = claims["jti"].as_str().unwrap_or_default().to_string();
    assert_eq!(id.len(), 32, "{claims}");
    assert_eq!(
        claims["sid"],
        id.as_str(),
        "the login id is the jti: {claims}"
    );
    assert!(claims.get("auth").is_none(), "a service token: {claims}");
    assert!(out.stderr.contains(&id), "{out}");
    assert!(!out.stderr.contains(&token), "{out}");

    let events = gw.audit_events()?;
    let issued: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "credential.issued")
        .collect();
    assert_eq!(issued.len(), 1, "{issued:?}");
    let issued = issued[0];
    assert_operator(issued, "release-manager")?;
    let d = &issued["detail"];
    assert_eq!(d["user"], "ci-bot");
    assert_eq!(d["groups"], json!(["engineering", "deploy"]));
    assert_eq!(d["login_id"], id.as_str());
    assert_eq!(d["credential_id"], id.as_str());
    assert_eq!(d["expires_at"], claims["exp"]);
    assert!(
        d["expires"].as_str().is_some_and(|x| x.ends_with('Z')),
        "{d}"
    );
    assert!(
        !issued.to_string().contains(&token),
        "the log never holds the token"
    );

    let list = gw.cli(&["token", "list"])?.ok()?;
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_default()
        .to_string();
    for want in ["ci-bot", "engineering,deploy", "release-manager", "active"] {
        assert!(line.contains(want), "`{want}` missing: {list}");
    }

    // It works, as a service account (policies see gateway_token, not a person).
    assert_eq!(
        sqlstate(&gw, "ci-bot", &token).await.as_deref(),
        Some("connected")
    );
    let events = gw.wait_for_event(
        |e| e["kind"] == "access.decision" && e["actor"] == "ci-bot",
        Duration::from_secs(5),
    )?;
    let decision = events
        .iter()
        .find(|e| e["kind"] == "access.decision" && e["actor"] == "ci-bot")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        decision["detail"]["auth_method"], "gateway_token",
        "{decision}"
    );

    // Revoke with a live session: cut within a second, then refused.
    let session = Psql::new(gw.pg_addr(), "orders-db", "ci-bot")
        .password(&token)
        .spawn("select pg_sleep(30)")?;
    pg.wait_for_active_query("select pg_sleep(30)", 1, Duration::from_secs(30))?;
    let out = gw
        .cli(&[
            "token",
            "revoke",
            &id,
            "--reason",
            "leaked in a CI log",
            "--by",
            "secops",
        ])?
        .ok()?;
    let revoked_at = Instant::now();
    assert!(out.stdout.contains("revoked"), "{out}");
    let out = session.wait_with_output()?;
    let cut_after = revoked_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        cut_after <= Duration::from_secs(1),
        "session cut after {cut_after:?}: {stderr}"
    );
    assert!(
        stderr.contains("revoked") && stderr.contains("leaked in a CI log"),
        "{stderr}"
    );
    assert_eq!(
        sqlstate(&gw, "ci-bot", &token).await.as_deref(),
        Some("28P01")
    );

    let events = gw.wait_for_event(
        |e| e["kind"] == "session.cut" && e["actor"] == "ci-bot",
        Duration::from_secs(5),
    )?;
    let revoked = events
        .iter()
        .find(|e| e["kind"] == "credential.revoked")
        .cloned()
        .unwrap_or_default();
    assert_operator(&revoked, "secops")?;
    assert_eq!(revoked["reason"], "leaked in a CI log");
    assert_eq!(revoked["detail"]["login_id"], id.as_str());
    assert_eq!(revoked["detail"]["user"], "ci-bot");
    assert!(events.iter().any(|e| e["kind"] == "auth.failed"
        && e["actor"] == "ci-bot"
        && e["reason"].as_str().is_some_and(|r| r.contains("revoked"))));

    // A second revoke and an unknown id are errors, and write nothing.
    let again = gw.cli(&["token", "revoke", &id, "--reason", "again"])?;
    assert!(!again.success(), "{again}");
    assert!(again.stderr.contains("already revoked"), "{again}");
    let unknown = gw.cli(&[
        "token",
        "revoke",
        "0123456789abcdef0123456789abcdef",
        "--reason",
        "typo",
    ])?;
    assert!(!unknown.success(), "{unknown}");
    assert!(
        unknown
            .stderr
            .contains("no issued token `0123456789abcdef0123456789abcdef`"),
        "{unknown}"
    );
    let revocations = gw
        .audit_events()?
        .iter()
        .filter(|e| e["kind"] == "credential.revoked")
        .count();
    assert_eq!(revocations, 1);

    // The list drops it unless --all, which says who revoked it.
    let list = gw.cli(&["token", "list"])?.ok()?;
    assert!(!list.stdout.contains(&id), "{list}");
    let list = gw.cli(&["token", "list", "--all"])?.ok()?;
    let line = list
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("revoked at") && line.contains("secops"),
        "{list}"
    );
    assert!(gw.audit_verify()?.success());
    Ok(())
}

#[test]
fn no_token_is_printed_when_the_audit_log_cannot_record_it() -> anyhow::Result<()> {
    let gw = Gateway::start(GatewayConfig::new())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let block = "create trigger test_block_audit before insert on audit_events \
                 begin select raise(abort, 'audit blocked by the test'); end";
    rt.block_on(async {
        use sqlx::Executor as _;
        let mut db = gw.store_connection().await?;
        db.execute(block).await?;
        anyhow::Ok(())
    })?;
    let out = gw.cli(&["token", "issue", "--user", "ci-bot", "--ttl", "1h"])?;
    assert!(!out.success(), "{out}");
    assert!(out.stdout.trim().is_empty(), "a token was printed: {out}");
    assert!(out.stderr.contains("nothing was issued"), "{out}");
    rt.block_on(async {
        use sqlx::Executor as _;
        let mut db = gw.store_connection().await?;
        db.execute("drop trigger test_block_audit").await?;
        anyhow::Ok(())
    })?;
    // Its row says it was never issued, and it is not usable.
    let list = gw.cli(&["token", "list"])?.ok()?;
    assert!(!list.stdout.contains("ci-bot"), "{list}");
    let list = gw.cli(&["token", "list", "--all"])?.ok()?;
    assert!(list.stdout.contains("not issued"), "{list}");
    assert!(!gw
        .audit_events()?
        .iter()
        .any(|e| e["kind"] == "credential.issued"));
    Ok(())
}

#[test]
fn a_token_can_be_issued_before_the_gateway_first_starts() -> anyhow::Result<()> {
    // As the quickstart does: the CLI creates what it needs (store, keys) the way `serve` would.
    let dir = gatehouse_tests::temp_dir("first-token")?;
    let config = dir.join("gatehouse.toml");
    std::fs::write(&config, GatewayConfig::new().to_toml(&dir.join("state")))?;
    let config = config.to_string_lossy().into_owned();
    let out = gatehouse(&[
        "token",
        "issue",
        "--config",
        &config,
        "--user",
        "alice",
        "--groups",
        "engineering",
    ])?
    .ok()?;
    let claims = payload(out.stdout.trim())?;
    let list = gatehouse(&["token", "list", "--config", &config])?.ok()?;
    assert!(
        list.stdout
            .contains(claims["jti"].as_str().unwrap_or("no jti")),
        "{list}"
    );
    let verify = gatehouse(&["audit", "verify", "--config", &config])?.ok()?;
    assert!(verify.stdout.contains("intact"), "{verify}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_on_a_postgres_store() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let url = pg.create_database("gatehouse")?;
    let gw = Gateway::start(
        GatewayConfig::new()
            .store_url(&url)
            .resource(Resource::orders_dev(&pg, "orders-db")),
    )?;
    let token = gw.token("ci-bot", &["engineering"], "1h")?;
    let id = payload(&token)?["jti"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        sqlstate(&gw, "ci-bot", &token).await.as_deref(),
        Some("connected")
    );
    let list = gw.cli(&["token", "list"])?.ok()?;
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("engineering")),
        "{list}"
    );
    gw.cli(&["token", "revoke", &id, "--reason", "rotated"])?
        .ok()?;
    assert_eq!(
        sqlstate(&gw, "ci-bot", &token).await.as_deref(),
        Some("28P01")
    );
    assert!(!gw
        .cli(&["token", "revoke", &id, "--reason", "x"])?
        .success());
    let list = gw.cli(&["token", "list", "--all"])?.ok()?;
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("rotated")),
        "{list}"
    );
    // A user known only by an issued token (it never connected) can be disabled; a name
    // nobody has seen cannot.
    let svc = gw.token("svc-never-connected", &[], "5m")?;
    assert!(!svc.is_empty());
    gw.cli(&[
        "users",
        "disable",
        "svc-never-connected",
        "--reason",
        "unused",
    ])?
    .ok()?;
    assert!(!gw
        .cli(&["users", "disable", "no-such-user", "--reason", "typo"])?
        .success());
    assert!(gw.audit_verify()?.success());
    Ok(())
}
