//! Forged, expired and misdirected gateway tokens at the PostgreSQL front door: each is refused
//! with 28P01, never reveals which check failed to the client, and is audited with the reason.
//! Issued service tokens are recorded (store and `credential.issued`, naming the operator),
//! listed, and revoked: a revoked token's live session is cut within a second and it is
//! refused from then on. The engineer's CLI works with an issued token, saved by
//! `gatehouse login --token-file` or given in `GATEHOUSE_TOKEN`; the gateway refuses to let an
//! issued token end itself through `/api/v1/logout`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use gatehouse_gateway::keys::SigningKey;
use gatehouse_tests::pg::{ORDERS_PASSWORD, ORDERS_USER};
use gatehouse_tests::util::COMMAND_TIMEOUT;
use gatehouse_tests::{
    gatehouse, gatehouse_bin, run_command, rust_client, temp_dir, CmdOutput, Gateway,
    GatewayConfig, PgServer, Psql, Resource,
};
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

/// The client environment a test controls; removed from every [`client`] run first.
const CLIENT_ENV: [&str; 5] = [
    "GATEHOUSE_TOKEN",
    "GATEHOUSE_GATEWAY",
    "GATEHOUSE_CA_FILE",
    "GATEHOUSE_CONFIG",
    "XDG_CONFIG_HOME",
];
const WRITE_PW_VAR: &str = "GATEHOUSE_TEST_TOKENS_WRITE_PW";

/// Runs the engineer's `gatehouse ARGS` with `GATEHOUSE_HOME=home`, only the client
/// environment in `env`, and `stdin`.
fn client(
    home: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    stdin: Option<&[u8]>,
) -> anyhow::Result<CmdOutput> {
    let mut cmd = Command::new(gatehouse_bin()?);
    cmd.args(args).env("GATEHOUSE_HOME", home);
    for k in CLIENT_ENV {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_command(&mut cmd, stdin, COMMAND_TIMEOUT)
}

/// A gateway without single sign-on, with `orders-db` (env dev) that has a `write` role to
/// request.
fn token_gateway(pg: &PgServer) -> anyhow::Result<Gateway> {
    Gateway::start(
        GatewayConfig::new()
            .resource(Resource::orders_dev(pg, "orders-db").raw(
                "roles",
                &format!(
                    "{{ write = {{ username = \"{ORDERS_USER}\", password_env = \"{WRITE_PW_VAR}\" }} }}"
                ),
            ))
            .env(WRITE_PW_VAR, ORDERS_PASSWORD),
    )
}

fn saved(home: &Path) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&std::fs::read_to_string(
        home.join("credentials.json"),
    )?)?)
}

/// `POST /api/v1/logout` with `token` as the bearer credential: the status and the body.
fn api_logout(gw: &Gateway, token: &str) -> anyhow::Result<(u16, Value)> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(gw.tls_cert())?)?;
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(30))
        .build()?;
    let resp = http
        .post(format!("{}/api/v1/logout", gw.https_url()?))
        .bearer_auth(token)
        .send()?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().unwrap_or_default()))
}

#[test]
fn login_with_an_issued_token_then_status_resources_and_psql() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = token_gateway(&pg)?;
    let token = gw.token("ci-bot", &["engineering"], "1h")?;
    let claims = payload(&token)?;
    let home = temp_dir("token-login")?;
    let file = home.join("token.txt");
    // As a file would hold it: a trailing line break, trimmed away.
    std::fs::write(&file, format!("{token}\n"))?;
    let gateway = gw.https_url()?;
    let ca = gw.tls_cert().to_string_lossy().into_owned();
    let file_arg = file.to_string_lossy().into_owned();

    // This gateway has no single sign-on: the browser flow says so, the token does not care.
    let sso = client(
        home.path(),
        &[],
        &[
            "login",
            "--gateway",
            &gateway,
            "--ca-file",
            &ca,
            "--no-browser",
        ],
        None,
    )?
    .err()?;
    assert!(
        sso.stderr.contains("single sign-on is not configured"),
        "{sso}"
    );
    assert!(!home.join("credentials.json").exists());

    let out = client(
        home.path(),
        &[],
        &[
            "login",
            "--gateway",
            &gateway,
            "--ca-file",
            &ca,
            "--token-file",
            &file_arg,
        ],
        None,
    )?
    .ok()?;
    assert!(
        out.stdout
            .contains("as ci-bot (groups: engineering; MFA: no)")
            && out.stdout.contains("expires in"),
        "{out}"
    );
    assert!(
        !out.stdout.contains(&token) && !out.stderr.contains(&token),
        "{out}"
    );
    let s = saved(home.path())?;
    assert_eq!(s["credential"], token.as_str(), "{s}");
    assert_eq!(s["user"], "ci-bot", "{s}");
    assert_eq!(s["groups"], json!(["engineering"]), "{s}");
    assert_eq!(s["expires_at"], claims["exp"], "{s}");
    assert_eq!(s["gateway"], gateway.as_str(), "{s}");
    assert_eq!(s["postgres"], gw.pg_addr().to_string().as_str(), "{s}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("credentials.json"))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "credentials.json is private: {mode:o}");
    }

    let status = client(home.path(), &[], &["status"], None)?.ok()?;
    assert!(status.stdout.contains("user:     ci-bot"), "{status}");
    assert!(status.stdout.contains("source:   saved login"), "{status}");
    assert!(status.stdout.contains("groups:   engineering"), "{status}");
    let resources = client(home.path(), &[], &["resources"], None)?.ok()?;
    assert!(
        resources
            .stdout
            .lines()
            .any(|l| l.starts_with("orders-db") && l.contains("read") && l.contains("yes")),
        "{resources}"
    );
    let psql = client(
        home.path(),
        &[],
        &["psql", "orders-db", "--", "-tAc", "select 40 + 2"],
        None,
    )?
    .ok()?;
    assert_eq!(psql.stdout.trim(), "42", "{psql}");
    let events = gw.wait_for_event(
        |e| e["kind"] == "access.decision" && e["actor"] == "ci-bot",
        Duration::from_secs(5),
    )?;
    assert!(events.iter().any(|e| e["kind"] == "access.decision"
        && e["actor"] == "ci-bot"
        && e["detail"]["auth_method"] == "gateway_token"));

    // The same from stdin, into a second home.
    let other = temp_dir("token-login-stdin")?;
    client(
        other.path(),
        &[("GATEHOUSE_GATEWAY", &gateway), ("GATEHOUSE_CA_FILE", &ca)],
        &["login", "--token-file", "-"],
        Some(token.as_bytes()),
    )?
    .ok()?;
    assert_eq!(saved(other.path())?["credential"], token.as_str());
    let both = client(
        other.path(),
        &[],
        &["login", "--device", "--token-file", "-"],
        None,
    )?
    .err()?;
    assert!(both.stderr.contains("cannot be used with"), "{both}");

    // The token cannot end itself through the API (shared by several jobs, it would end for
    // all); it keeps working.
    let (code, body) = api_logout(&gw, &token)?;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"], "not_a_login", "{body}");
    assert_eq!(
        sqlstate_blocking(&gw, "ci-bot", &token)?.as_deref(),
        Some("connected")
    );
    client(home.path(), &[], &["resources"], None)?.ok()?;
    // `gatehouse logout` forgets it here and says it is not revoked.
    let out = client(home.path(), &[], &["logout"], None)?.ok()?;
    assert!(
        out.stdout.contains("Forgot the issued token of ci-bot")
            && out.stdout.contains("not revoked"),
        "{out}"
    );
    assert!(!home.join("credentials.json").exists());
    client(other.path(), &[], &["status"], None)?.ok()?;
    let list = gw.cli(&["token", "list"])?.ok()?;
    assert!(
        list.stdout
            .lines()
            .any(|l| l.starts_with(claims["jti"].as_str().unwrap_or("?")) && l.contains("active")),
        "{list}"
    );
    assert!(!gw
        .audit_events()?
        .iter()
        .any(|e| e["kind"] == "credential.revoked"));
    assert!(!gw.logs().contains(&token), "the token must not be logged");
    Ok(())
}

fn sqlstate_blocking(gw: &Gateway, user: &str, token: &str) -> anyhow::Result<Option<String>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(sqlstate(gw, user, token)))
}

#[test]
fn gatehouse_token_works_for_every_client_command_without_a_saved_login() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = token_gateway(&pg)?;
    let token = gw.token("ci-bot", &["engineering"], "1h")?;
    let gateway = gw.https_url()?;
    let ca = gw.tls_cert().to_string_lossy().into_owned();
    let empty = temp_dir("token-env")?;
    let env = [
        ("GATEHOUSE_TOKEN", token.as_str()),
        ("GATEHOUSE_GATEWAY", gateway.as_str()),
        ("GATEHOUSE_CA_FILE", ca.as_str()),
    ];

    // Without a gateway there is nothing to ask: the error names the variable.
    let out = client(empty.path(), &env[..1], &["resources"], None)?.err()?;
    assert!(out.stderr.contains("GATEHOUSE_GATEWAY"), "{out}");
    // Without it, an empty home is not logged in.
    let out = client(empty.path(), &[], &["resources"], None)?.err()?;
    assert!(out.stderr.contains("not logged in"), "{out}");

    let status = client(empty.path(), &env, &["status"], None)?.ok()?;
    assert!(status.stdout.contains("user:     ci-bot"), "{status}");
    assert!(
        status.stdout.contains("source:   GATEHOUSE_TOKEN"),
        "{status}"
    );
    assert!(
        status
            .stdout
            .contains(&format!("postgres: {}", gw.pg_addr())),
        "{status}"
    );
    let resources = client(empty.path(), &env, &["resources"], None)?.ok()?;
    assert!(
        resources.stdout.lines().any(|l| l.starts_with("orders-db")
            && l.contains("write")
            && l.contains("yes (1 approval")),
        "{resources}"
    );
    let out = client(
        empty.path(),
        &env,
        &[
            "request",
            "orders-db",
            "--role",
            "write",
            "--for",
            "1h",
            "--reason",
            "INC-77 deploy migration",
        ],
        None,
    )?
    .ok()?;
    let id: i64 = out
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no request id in {out}"))?;
    let mine = client(empty.path(), &env, &["requests"], None)?.ok()?;
    let line = mine
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&id.to_string()))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("ci-bot") && line.contains("pending") && line.contains("INC-77"),
        "{mine}"
    );
    // A person who may approve sees it too.
    let dana = gw.engineer("dana", &["dba"])?;
    let pending = gw.as_user(&dana, &["requests", "--pending"])?.ok()?;
    assert!(
        pending
            .stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&id.to_string()) && l.contains("ci-bot")),
        "{pending}"
    );
    let psql = client(
        empty.path(),
        &env,
        &["psql", "orders-db", "--", "-tAc", "select 'via env'"],
        None,
    )?
    .ok()?;
    assert_eq!(psql.stdout.trim(), "via env", "{psql}");
    let vars = client(empty.path(), &env, &["env", "orders-db"], None)?.ok()?;
    assert!(vars.stdout.contains("export PGUSER='ci-bot'"), "{vars}");
    // Nothing was saved.
    assert!(
        std::fs::read_dir(empty.path())?.next().is_none(),
        "the home stays empty"
    );

    // With a saved login as well, GATEHOUSE_TOKEN wins, and `logout` refuses without asking
    // the gateway: the saved login is neither forgotten nor revoked.
    let bob = gw.engineer("bob", &["engineering"])?;
    let status = client(bob.path(), &env, &["status"], None)?.ok()?;
    assert!(status.stdout.contains("user:     ci-bot"), "{status}");
    let out = client(bob.path(), &env, &["logout"], None)?.err()?;
    assert!(
        out.stderr.contains(
            "GATEHOUSE_TOKEN is set: an issued token is revoked by an admin (`gatehouse token revoke`), unset it to log out the saved login"
        ),
        "{out}"
    );
    assert!(bob.join("credentials.json").exists());
    let status = gw.as_user(&bob, &["status"])?.ok()?;
    assert!(status.stdout.contains("user:     bob"), "{status}");
    let out = client(empty.path(), &env, &["logout"], None)?.err()?;
    assert!(out.stderr.contains("GATEHOUSE_TOKEN is set"), "{out}");
    client(empty.path(), &env, &["resources"], None)?.ok()?;
    assert!(!gw
        .audit_events()?
        .iter()
        .any(|e| e["kind"] == "credential.revoked"));

    // Revoked, the token is refused by every command, saying which credential it was.
    let jti = payload(&token)?["jti"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    gw.cli(&["token", "revoke", &jti, "--reason", "rotated"])?
        .ok()?;
    for args in [
        &["resources"][..],
        &["status"],
        &["psql", "orders-db", "--", "-c", "select 1"],
    ] {
        let out = client(empty.path(), &env, args, None)?.err()?;
        assert!(
            out.stderr.contains("refused GATEHOUSE_TOKEN") && out.stderr.contains("revoked"),
            "{out}"
        );
    }
    Ok(())
}

#[test]
fn login_refuses_garbage_forged_expired_and_revoked_tokens_and_saves_nothing() -> anyhow::Result<()>
{
    let pg = PgServer::start()?;
    let gw = token_gateway(&pg)?;
    let gateway = gw.https_url()?;
    let ca = gw.tls_cert().to_string_lossy().into_owned();
    let env = [
        ("GATEHOUSE_GATEWAY", gateway.as_str()),
        ("GATEHOUSE_CA_FILE", ca.as_str()),
    ];
    let home = temp_dir("token-refused")?;
    let file = home.join("token.txt");
    let file_arg = file.to_string_lossy().into_owned();
    let login = |text: &[u8]| -> anyhow::Result<CmdOutput> {
        std::fs::write(&file, text)?;
        client(
            home.path(),
            &env,
            &["login", "--token-file", &file_arg],
            None,
        )
    };

    // Refused before the gateway is asked.
    let local: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", b"\n \n".to_vec(), "is empty"),
        ("too long", vec![b'a'; 16 * 1024 + 1], "longer than 16 KiB"),
        (
            "two lines",
            b"aaa.bbb\nccc.ddd\n".to_vec(),
            "characters a gateway token never has",
        ),
        ("not text", vec![0xff, 0xfe, b'a'], "not text"),
    ];
    for (name, text, want) in &local {
        let out = login(text)?.err()?;
        assert!(out.stderr.contains(want), "case `{name}`: {out}");
        assert!(!home.join("credentials.json").exists(), "case `{name}`");
    }
    let missing = client(
        home.path(),
        &env,
        &[
            "login",
            "--token-file",
            &home.join("nope").to_string_lossy(),
        ],
        None,
    )?
    .err()?;
    assert!(missing.stderr.contains("reading --token-file"), "{missing}");

    // Refused by the gateway.
    let key = SigningKey::load(&gw.state_dir().join("keys/token-signing.pem"))?;
    let other_dir = temp_dir("token-refused-key")?;
    let other = SigningKey::load_or_create(&other_dir.join("k.pem"))?;
    let mut expired = claims("ci-bot");
    expired["exp"] = json!(now() - 3600);
    let refused: Vec<(&str, String, &str)> = vec![
        (
            "garbage",
            "hunter2".to_string(),
            "not a token of this gateway",
        ),
        (
            "forged",
            sign(&other, header(&key.key_id), &claims("ci-bot"))?,
            "not a token of this gateway",
        ),
        (
            "expired",
            sign(&key, header(&key.key_id), &expired)?,
            "it expired 1h",
        ),
    ];
    for (name, token, want) in &refused {
        let out = login(token.as_bytes())?.err()?;
        assert!(
            out.stderr.contains("refused this token") && out.stderr.contains(want),
            "case `{name}`: {out}"
        );
        assert!(
            out.stderr.contains("nothing was saved"),
            "case `{name}`: {out}"
        );
        assert!(!home.join("credentials.json").exists(), "case `{name}`");
    }

    // A revoked token is refused, and a saved login is left as it was.
    let good = gw.token("ci-bot", &["engineering"], "1h")?;
    login(good.as_bytes())?.ok()?;
    let before = std::fs::read(home.join("credentials.json"))?;
    let revoked = gw.token("ci-bot", &["engineering"], "1h")?;
    let jti = payload(&revoked)?["jti"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    gw.cli(&["token", "revoke", &jti, "--reason", "leaked"])?
        .ok()?;
    let out = login(revoked.as_bytes())?.err()?;
    assert!(
        out.stderr.contains("refused this token: it is revoked"),
        "{out}"
    );
    assert_eq!(std::fs::read(home.join("credentials.json"))?, before);
    let status = client(home.path(), &[], &["status"], None)?.ok()?;
    assert!(status.stdout.contains("user:     ci-bot"), "{status}");
    // Each refusal at the gateway is audited, without the token.
    let events = gw.audit_events()?;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "auth.failed" && e["action"] == "whoami")
        .collect();
    assert_eq!(failed.len(), refused.len() + 1, "{failed:?}");
    for (_, token, _) in &refused {
        assert!(!failed
            .iter()
            .any(|e| e.to_string().contains(token.as_str())));
    }
    Ok(())
}

#[test]
fn a_token_issued_for_the_postgres_door_is_no_api_credential() -> anyhow::Result<()> {
    let pg = PgServer::start()?;
    let gw = token_gateway(&pg)?;
    let cfg = gw.config_path().to_string_lossy().into_owned();
    let out = gw
        .cli(&[
            "token",
            "issue",
            "--config",
            &cfg,
            "--user",
            "etl",
            "--groups",
            "engineering",
            "--door",
            "postgres",
            "--ttl",
            "10m",
        ])?
        .ok()?;
    let token = out.stdout.trim().to_string();
    assert_eq!(payload(&token)?["aud"], "gatehouse:postgres");
    // A PostgreSQL password: psql works with it.
    let q = gw.psql("orders-db", "etl", &token, "select 5")?;
    assert!(q.success() && q.stdout.contains('5'), "{q}");
    // The API refuses it, as a bearer and for a saved login; nothing is saved.
    let (status, _) = api_logout(&gw, &token)?;
    assert_eq!(status, 401);
    let home = temp_dir("door-token")?;
    let gateway = gw.https_url()?;
    let ca = gw.tls_cert().to_string_lossy().into_owned();
    let out = client(
        home.path(),
        &[],
        &[
            "login",
            "--gateway",
            &gateway,
            "--ca-file",
            &ca,
            "--token-file",
            "-",
        ],
        Some(token.as_bytes()),
    )?;
    assert!(!out.success(), "{out}");
    assert!(!home.path().join("credentials.json").exists());
    // The refusal names the door, and issuing it recorded which door.
    let events = gw.settled_export()?;
    assert!(
        events.iter().any(|e| e["kind"] == "auth.failed"
            && e["reason"].as_str().unwrap_or("").contains("another door")),
        "no refusal names the door"
    );
    let issued = events
        .iter()
        .find(|e| e["kind"] == "credential.issued" && e["resource"] == "etl")
        .ok_or_else(|| anyhow::anyhow!("no credential.issued for etl"))?;
    assert_eq!(issued["detail"]["door"], "postgres", "{issued}");
    Ok(())
}
