//! The single sign-on attack suite: forged and misused credentials at both the PostgreSQL front
//! door and the HTTP API, and tampering with every step of the login flow. Every case must be
//! refused AND leave an audit event (`auth.failed`, `login.failed` or `http.refused`) whose
//! reason says what was wrong.

// The per-case report goes to stderr on purpose: CI logs show which attack did what.
#![allow(clippy::print_stderr)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use gatehouse_gateway::keys::SigningKey;
use gatehouse_tests::browser::{query_param, Browser};
use gatehouse_tests::oidc::{ALICE, ALICE_PASSWORD, CLIENT_ID, CLIENT_SECRET, DEVICE_CODE_GRANT};
use gatehouse_tests::sso::{post_json, CliFlow, Sso};
use gatehouse_tests::Psql;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const REFUSAL_KINDS: [&str; 3] = ["auth.failed", "login.failed", "http.refused"];

struct Suite<'a> {
    sso: &'a Sso,
    seen: usize,
    results: Vec<(String, bool, Option<String>)>,
}

impl Suite<'_> {
    fn refusals(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self
            .sso
            .gw
            .audit_export_jsonl()?
            .into_iter()
            .filter(|e| {
                e["type"] == "event" && REFUSAL_KINDS.contains(&e["kind"].as_str().unwrap_or(""))
            })
            .collect())
    }

    /// Runs one case: `attack` returns whether the attempt was refused; afterwards a new
    /// refusal event whose reason contains `needle` (case-insensitive) must exist.
    fn case(
        &mut self,
        name: &str,
        needle: &str,
        attack: impl FnOnce() -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let refused = attack().map_err(|e| e.context(format!("case `{name}`")))?;
        let events = self.refusals()?;
        let new = &events[self.seen.min(events.len())..];
        let hit = new
            .iter()
            .find(|e| {
                e["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_lowercase()
                    .contains(&needle.to_lowercase())
            })
            .map(|e| format!("{} seq {}: {}", e["kind"], e["seq"], e["reason"]));
        if hit.is_none() {
            eprintln!("case `{name}`: new refusal events: {new:?}");
        }
        self.seen = events.len();
        self.results.push((name.to_string(), refused, hit));
        Ok(())
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn payload(token: &str) -> anyhow::Result<Value> {
    let part = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("not a JWT"))?;
    Ok(serde_json::from_slice(&B64URL.decode(part)?)?)
}

fn raw_jwt(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string()),
        B64URL.encode(sig)
    )
}

fn signed(key: &SigningKey, typ: &str, kid: &str, claims: &Value) -> anyhow::Result<String> {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    h.typ = Some(typ.into());
    Ok(jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_ed_der(key.pkcs8_der()),
    )?)
}

/// Whether psql as `user` with `password` was refused with an authentication error.
fn pg_refused(sso: &Sso, user: &str, password: &str) -> anyhow::Result<bool> {
    let out = Psql::new(sso.gw.pg_addr(), "orders-db", user)
        .password(password)
        .run("select 1")?;
    Ok(!out.success()
        && (out.stderr.contains("authentication failed")
            || out.stderr.contains("was revoked")
            || out.stderr.contains("is disabled")))
}

/// Whether `GET /api/v1/whoami` with the bearer was refused with 401.
fn api_refused(sso: &Sso, browser: &Browser, bearer: &str) -> anyhow::Result<bool> {
    let resp = browser
        .client()
        .get(format!("{}/api/v1/whoami", sso.base))
        .bearer_auth(bearer)
        .send()?;
    Ok(resp.status().as_u16() == 401)
}

/// A PostgreSQL password derived from the API credential `bearer`
/// (`POST /api/v1/credentials/postgres`, what `gatehouse psql` sends).
fn pg_password(sso: &Sso, browser: &Browser, bearer: &str) -> anyhow::Result<String> {
    let resp = browser
        .client()
        .post(format!("{}/api/v1/credentials/postgres", sso.base))
        .bearer_auth(bearer)
        .json(&json!({}))
        .send()?;
    anyhow::ensure!(resp.status().as_u16() == 200, "{}", resp.status());
    let v: Value = resp.json()?;
    v["credential"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("no credential in {v}"))
}

/// An ID token straight from the provider (device grant with the gateway's own client).
fn provider_id_token(sso: &Sso) -> anyhow::Result<String> {
    let disco = sso.op.discovery()?;
    let http = reqwest::blocking::Client::new();
    let start: Value = http
        .post(
            disco["device_authorization_endpoint"]
                .as_str()
                .unwrap_or_default(),
        )
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("scope", "openid profile email groups")])
        .send()?
        .json()?;
    let mut b = sso.browser()?;
    b.confirm_device(
        start["verification_uri"].as_str().unwrap_or_default(),
        start["user_code"].as_str().unwrap_or_default(),
        ALICE,
        ALICE_PASSWORD,
    )?;
    let tokens: Value = http
        .post(disco["token_endpoint"].as_str().unwrap_or_default())
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", DEVICE_CODE_GRANT),
            (
                "device_code",
                start["device_code"].as_str().unwrap_or_default(),
            ),
        ])
        .send()?
        .json()?;
    tokens["id_token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("no id_token: {tokens}"))
}

/// Starts a login as the CLI would and returns the provider's authorization URL (the browser
/// holds the binding cookie afterwards).
fn authorize_url(browser: &mut Browser, flow: &CliFlow) -> anyhow::Result<reqwest::Url> {
    let page = browser.get(flow.login_url()?)?;
    page.location()
        .filter(|_| page.is_redirect())
        .ok_or_else(|| anyhow::anyhow!("/login did not redirect: {}", page.describe()))
}

fn with_param(url: &reqwest::Url, name: &str, value: Option<&str>) -> reqwest::Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut out = url.clone();
    {
        let mut q = out.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    out
}

/// Signs in at the provider from an (altered) authorization URL and delivers the callback to
/// the gateway; true when the gateway refused the sign-in.
fn callback_refused(
    sso: &Sso,
    browser: &mut Browser,
    authorize: &reqwest::Url,
) -> anyhow::Result<bool> {
    let base = sso.base.clone();
    let back = browser.sign_in(authorize.as_str(), ALICE, ALICE_PASSWORD, move |u| {
        u.as_str().starts_with(&format!("{base}/oidc/callback"))
    })?;
    let page = browser.get(back.as_str())?;
    Ok(page.status >= 400 && page.body.contains("Sign-in failed"))
}

#[test]
fn every_attack_is_refused_and_audited() -> anyhow::Result<()> {
    let sso = Sso::start()?;
    let mut browser = sso.browser()?;
    let good = sso.browser_login(&mut browser, ALICE, ALICE_PASSWORD)?;
    let good_token = good["credential"].as_str().unwrap_or_default().to_string();
    let good_pg = pg_password(&sso, &browser, &good_token)?;
    assert!(
        !pg_refused(&sso, ALICE, &good_pg)?,
        "the legitimate credential must work, or the suite proves nothing"
    );
    assert!(!api_refused(&sso, &browser, &good_token)?);

    let key = SigningKey::load(&sso.gw.state_dir().join("keys/token-signing.pem"))?;
    let kid = key.key_id.clone();
    let typ = "gatehouse-access+jwt";
    let claims = payload(&good_token)?;
    let other_dir = gatehouse_tests::temp_dir("other-key")?;
    let other = SigningKey::load_or_create(&other_dir.join("k.pem"))?;

    // Forged or misused credentials, each presented at both doors.
    let mut forged: Vec<(&str, &str, String)> = Vec::new();
    forged.push((
        "alg none",
        "malformed",
        raw_jwt(
            &json!({"alg": "none", "typ": typ, "kid": kid}),
            &claims,
            b"",
        ),
    ));
    let hs = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.clone());
        h.typ = Some(typ.into());
        jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_secret(&key.public_key().raw),
        )?
    };
    forged.push(("HS256 signed with the public key", "algorithm", hs));
    forged.push((
        "unknown kid",
        "key id",
        signed(&other, typ, "not-a-gateway-key", &claims)?,
    ));
    forged.push((
        "another key claiming our kid",
        "signature",
        signed(&other, typ, &kid, &claims)?,
    ));
    let mut c = claims.clone();
    c["exp"] = json!(now() - 120);
    forged.push(("expired", "expired", signed(&key, typ, &kid, &c)?));
    let mut c = claims.clone();
    c["nbf"] = json!(now() + 600);
    forged.push((
        "not yet valid",
        "not valid yet",
        signed(&key, typ, &kid, &c)?,
    ));
    let mut c = claims.clone();
    c["iss"] = json!("https://evil.example");
    forged.push(("wrong issuer", "issuer", signed(&key, typ, &kid, &c)?));
    let mut c = claims.clone();
    c["aud"] = json!(CLIENT_ID.to_string() + "-other");
    forged.push(("wrong audience", "audience", signed(&key, typ, &kid, &c)?));
    forged.push(("wrong typ", "type", signed(&key, "JWT", &kid, &claims)?));
    let parts: Vec<&str> = good_token.split('.').collect();
    let mut evil = claims.clone();
    evil["groups"] = json!(["dba"]);
    evil["mfa"] = json!(true);
    forged.push((
        "tampered payload",
        "signature",
        format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(evil.to_string()),
            parts[2]
        ),
    ));
    forged.push((
        "provider ID token as a gateway credential",
        "algorithm",
        provider_id_token(&sso)?,
    ));
    forged.push(("oversized token", "too long", "x".repeat(9000)));

    let mut suite = Suite {
        sso: &sso,
        seen: 0,
        results: Vec::new(),
    };
    suite.seen = suite.refusals()?.len();
    for (name, needle, token) in &forged {
        suite.case(&format!("psql: {name}"), needle, || {
            pg_refused(&sso, ALICE, token)
        })?;
        suite.case(&format!("api: {name}"), needle, || {
            api_refused(&sso, &browser, token)
        })?;
    }
    suite.case("psql: credential of another user", "does not match", || {
        pg_refused(&sso, "bob", &good_pg)
    })?;
    // Each door its own audience: a sign-in's API credential is no PostgreSQL password (a
    // PostgreSQL client sends its password to whoever answers), and the PostgreSQL password
    // is no API bearer.
    suite.case(
        "psql: a sign-in's API credential",
        "not a PostgreSQL password",
        || pg_refused(&sso, ALICE, &good_token),
    )?;
    suite.case("api: a PostgreSQL password", "another door", || {
        api_refused(&sso, &browser, &good_pg)
    })?;
    suite.case(
        "api: a PostgreSQL password minting another",
        "another door",
        || {
            let resp = browser
                .client()
                .post(format!("{}/api/v1/credentials/postgres", sso.base))
                .bearer_auth(&good_pg)
                .json(&json!({}))
                .send()?;
            Ok(resp.status().as_u16() == 401)
        },
    )?;

    // Revoked by logout, at both doors.
    let mut b2 = sso.browser()?;
    let second = sso.browser_login(&mut b2, ALICE, ALICE_PASSWORD)?;
    let second_token = second["credential"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let second_pg = pg_password(&sso, &b2, &second_token)?;
    let out = b2
        .client()
        .post(format!("{}/api/v1/logout", sso.base))
        .bearer_auth(&second_token)
        .send()?;
    assert_eq!(out.status().as_u16(), 200);
    suite.case("psql: revoked credential", "revoked", || {
        pg_refused(&sso, ALICE, &second_pg)
    })?;
    suite.case("api: revoked credential", "revoked", || {
        api_refused(&sso, &browser, &second_token)
    })?;

    // The login flow.
    let cb = format!("{}/oidc/callback", sso.base);
    suite.case("callback without state", "no state", || {
        let p = browser.get(format!("{cb}?code=abc"))?;
        Ok(p.status == 400)
    })?;
    suite.case(
        "callback with an unknown state",
        "unknown, expired or already used state",
        || {
            let p = browser.get(format!("{cb}?code=abc&state=forged-state"))?;
            Ok(p.status == 400)
        },
    )?;
    // A legitimate login whose callback is then replayed.
    let mut b3 = sso.browser()?;
    let flow = CliFlow::new(&sso.base);
    let auth = authorize_url(&mut b3, &flow)?;
    let first_nonce = query_param(&auth, "nonce").unwrap_or_default();
    let base = sso.base.clone();
    let callback = b3.sign_in(auth.as_str(), ALICE, ALICE_PASSWORD, move |u| {
        u.as_str().starts_with(&format!("{base}/oidc/callback"))
    })?;
    let done = b3.get(callback.as_str())?;
    assert!(done.is_redirect(), "legit callback: {}", done.describe());
    let used_code = query_param(&callback, "code").unwrap_or_default();
    suite.case(
        "replayed callback (state reuse)",
        "already used state",
        || {
            let p = b3.get(callback.as_str())?;
            Ok(p.status == 400)
        },
    )?;
    suite.case("state not bound to this browser", "not bound", || {
        let mut b = sso.browser()?;
        let flow = CliFlow::new(&sso.base);
        let auth = authorize_url(&mut b, &flow)?;
        let state = query_param(&auth, "state").unwrap_or_default();
        // The victim's browser never started this login: no binding cookie.
        let mut victim = sso.browser()?;
        let p = victim.get(format!("{cb}?code=abc&state={state}"))?;
        Ok(p.status == 400)
    })?;
    suite.case("wrong nonce", "nonce", || {
        let mut b = sso.browser()?;
        let auth = authorize_url(&mut b, &CliFlow::new(&sso.base))?;
        callback_refused(
            &sso,
            &mut b,
            &with_param(&auth, "nonce", Some("attacker-nonce")),
        )
    })?;
    suite.case("reused nonce from an earlier login", "nonce", || {
        let mut b = sso.browser()?;
        let auth = authorize_url(&mut b, &CliFlow::new(&sso.base))?;
        callback_refused(
            &sso,
            &mut b,
            &with_param(&auth, "nonce", Some(&first_nonce)),
        )
    })?;
    suite.case("authorization request without PKCE", "pkce", || {
        let mut b = sso.browser()?;
        let auth = authorize_url(&mut b, &CliFlow::new(&sso.base))?;
        let stripped = with_param(
            &with_param(&auth, "code_challenge", None),
            "code_challenge_method",
            None,
        );
        callback_refused(&sso, &mut b, &stripped)
    })?;
    suite.case("PKCE challenge substituted", "grant", || {
        let mut b = sso.browser()?;
        let auth = authorize_url(&mut b, &CliFlow::new(&sso.base))?;
        let attacker = B64URL.encode([7u8; 32]);
        callback_refused(
            &sso,
            &mut b,
            &with_param(&auth, "code_challenge", Some(&attacker)),
        )
    })?;
    suite.case("replayed authorization code", "grant", || {
        let mut b = sso.browser()?;
        let auth = authorize_url(&mut b, &CliFlow::new(&sso.base))?;
        let state = query_param(&auth, "state").unwrap_or_default();
        let p = b.get(format!("{cb}?code={used_code}&state={state}"))?;
        Ok(p.status >= 400 && p.body.contains("Sign-in failed"))
    })?;
    for (name, redirect) in [
        ("open redirect //evil.example", "//evil.example/callback"),
        (
            "open redirect javascript:",
            "javascript:alert(document.cookie)",
        ),
        ("redirect to another host", "https://evil.example/callback"),
        (
            "loopback look-alike host",
            "http://127.0.0.1.evil.example:8080/callback",
        ),
        (
            "loopback with user info",
            "http://127.0.0.1:8080@evil.example/callback",
        ),
    ] {
        suite.case(name, "redirect is not the registered loopback", || {
            let flow = CliFlow::new(&sso.base);
            let p = browser.get(flow.login_url_with(redirect)?)?;
            Ok(p.status == 400 && p.location().is_none())
        })?;
    }
    for (name, to) in [
        ("return_to //evil.example", "//evil.example"),
        ("return_to javascript:", "javascript:alert(1)"),
    ] {
        suite.case(name, "not a relative path", || {
            let url = reqwest::Url::parse_with_params(
                &format!("{}/login", sso.base),
                &[("return_to", to)],
            )?;
            let p = browser.get(url.as_str())?;
            Ok(p.status == 400 && p.location().is_none())
        })?;
    }
    suite.case("oversized headers", "too large", || {
        let resp = browser
            .client()
            .get(format!("{}/api/v1/info", sso.base))
            .header("x-filler", "a".repeat(20_000))
            .send()?;
        Ok(resp.status().as_u16() == 431)
    })?;

    // The one-time code handed to the CLI.
    let flow = CliFlow::new(&sso.base);
    let mut b4 = sso.browser()?;
    let back = b4.sign_in(flow.login_url()?, ALICE, ALICE_PASSWORD, |u| {
        flow.is_callback(u)
    })?;
    let code = query_param(&back, "code").unwrap_or_default();
    suite.case("one-time code with the wrong PKCE verifier", "code_verifier", || {
        let (status, _) = post_json(
            &b4,
            &format!("{}/api/v1/login/token", sso.base),
            &json!({"code": code, "code_verifier": "not-the-verifier-not-the-verifier-00000000"}),
        )?;
        Ok(status == 400)
    })?;
    suite.case("one-time code replayed", "already used code", || {
        let (status, _) = post_json(
            &b4,
            &format!("{}/api/v1/login/token", sso.base),
            &json!({"code": code, "code_verifier": flow.verifier}),
        )?;
        Ok(status == 400)
    })?;
    suite.case("unknown device code", "device code", || {
        let (status, _) = post_json(
            &b4,
            &format!("{}/api/v1/device/token", sso.base),
            &json!({"device_code": "guessed"}),
        )?;
        Ok(status == 400)
    })?;

    // A disabled user's still-valid credential.
    let cfg = sso.gw.config_path().to_string_lossy().into_owned();
    sso.gw
        .cli(&[
            "users", "disable", "alice", "--config", &cfg, "--by", "test",
        ])?
        .ok()?;
    suite.case("psql: credential of a disabled user", "disabled", || {
        pg_refused(&sso, ALICE, &good_pg)
    })?;
    suite.case("api: credential of a disabled user", "disabled", || {
        api_refused(&sso, &browser, &good_token)
    })?;
    suite.case("login of a disabled user", "disabled", || {
        let mut b = sso.browser()?;
        let flow = CliFlow::new(&sso.base);
        let base = sso.base.clone();
        let back = b.sign_in(flow.login_url()?, ALICE, ALICE_PASSWORD, move |u| {
            u.as_str().starts_with(&format!("{base}/oidc/callback"))
        })?;
        let p = b.get(back.as_str())?;
        Ok(p.status == 403 && p.location().is_none())
    })?;

    for (name, refused, hit) in &suite.results {
        eprintln!(
            "{name}: refused={refused} audited={}",
            hit.as_deref().unwrap_or("NO")
        );
    }
    let failures: Vec<String> = suite
        .results
        .iter()
        .filter(|(_, refused, hit)| !refused || hit.is_none())
        .map(|(name, refused, hit)| format!("{name}: refused={refused} audited={hit:?}"))
        .collect();
    assert!(
        suite.results.len() >= 30,
        "only {} cases",
        suite.results.len()
    );
    assert!(
        failures.is_empty(),
        "cases not refused or not audited:\n{}",
        failures.join("\n")
    );

    // The log still verifies after all of it.
    let verify = sso.gw.audit_verify()?;
    assert!(verify.success(), "{verify}");
    Ok(())
}

/// A client of the gateway's HTTPS listener from `source` (any 127/8 address is loopback),
/// trusting its certificate, following no redirects.
fn client_from(sso: &Sso, source: &str) -> anyhow::Result<reqwest::blocking::Client> {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(sso.gw.tls_cert())?)?;
    Ok(reqwest::blocking::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source.parse::<std::net::IpAddr>()?)
        .timeout(std::time::Duration::from_secs(20))
        .build()?)
}

#[test]
fn a_flood_of_sign_ins_from_one_address_locks_nobody_else_out() -> anyhow::Result<()> {
    let sso = Sso::start()?;
    let flood = client_from(&sso, "127.0.0.1")?;
    let person = client_from(&sso, "127.0.0.2")?;
    let login = format!("{}/login", sso.base);
    let device = format!("{}/api/v1/device", sso.base);
    // One address starts far more sign-ins and device logins than it could finish.
    let (mut started, mut refused) = (0, 0);
    for _ in 0..150 {
        match flood.get(&login).send()?.status().as_u16() {
            302 | 303 | 307 => started += 1,
            429 => refused += 1,
            other => anyhow::bail!("GET /login answered {other} to the flood"),
        }
    }
    assert_eq!(
        (started, refused),
        (64, 86),
        "one address holds at most 64 sign-ins in progress"
    );
    let (mut started, mut refused) = (0, 0);
    for _ in 0..100 {
        match flood.post(&device).send()?.status().as_u16() {
            200 => started += 1,
            429 => refused += 1,
            other => anyhow::bail!("POST /api/v1/device answered {other} to the flood"),
        }
    }
    assert_eq!((started, refused), (64, 36));
    // Someone else still gets to the provider at once.
    let resp = person.get(&login).send()?;
    assert!(
        resp.status().is_redirection(),
        "a person from another address was refused: {}",
        resp.status()
    );
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(location.starts_with(sso.op.issuer()), "{location}");
    assert_eq!(person.post(&device).send()?.status().as_u16(), 200);
    Ok(())
}

/// Starts a device login on the gateway's own page from the attacker's client; returns
/// `(device_code, user_code)` after checking the answer carries no link with the code in it.
fn attacker_starts_device_login(
    attacker: &reqwest::blocking::Client,
    sso: &Sso,
) -> anyhow::Result<(String, String)> {
    let resp = attacker
        .post(format!("{}/api/v1/device", sso.base))
        .json(&json!({}))
        .send()?;
    assert_eq!(resp.status().as_u16(), 200);
    let start: Value = resp.json()?;
    assert!(
        start.get("verification_uri_complete").is_none(),
        "the device start answer must not carry a one-click link: {start}"
    );
    assert_eq!(start["verification_uri"], format!("{}/device", sso.base));
    let field = |k: &str| {
        start[k]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no {k} in {start}"))
    };
    Ok((field("device_code")?, field("user_code")?))
}

/// The attacker's poll: the JSON answer of `POST /api/v1/device/token`.
fn attacker_polls(
    attacker: &reqwest::blocking::Client,
    sso: &Sso,
    device_code: &str,
) -> anyhow::Result<(u16, Value)> {
    let resp = attacker
        .post(format!("{}/api/v1/device/token", sso.base))
        .json(&json!({ "device_code": device_code }))
        .send()?;
    let status = resp.status().as_u16();
    let body: Value = serde_json::from_str(&resp.text()?).unwrap_or(Value::Null);
    Ok((status, body))
}

fn assert_no_credential(status: u16, body: &Value, when: &str) {
    assert!(
        status != 200 && body.get("credential").is_none() && body.get("token").is_none(),
        "{when}: the attacker's poll yielded {status} {body}"
    );
    assert!(
        matches!(
            body["error"].as_str(),
            Some("authorization_pending") | Some("slow_down")
        ),
        "{when}: {body}"
    );
}

#[test]
fn a_device_login_link_sent_to_a_signed_in_victim_does_not_complete() -> anyhow::Result<()> {
    let sso = Sso::start_with(|s| s, |c| c.set("oidc", "device_flow", "\"gateway\""))?;
    // The victim is signed in at the provider (a session cookie in their browser).
    let mut victim = sso.browser()?;
    sso.browser_login(&mut victim, ALICE, ALICE_PASSWORD)?;
    let attacker = client_from(&sso, "127.0.0.9")?;
    let to_provider = |u: &reqwest::Url| u.as_str().starts_with(sso.op.issuer());

    // 1. The device page link, opened by the victim, stops at a confirmation naming the
    //    attacker's address; nothing reaches the provider, nothing completes.
    let (device_code, user_code) = attacker_starts_device_login(&attacker, &sso)?;
    let link = format!("{}/device?user_code={user_code}", sso.base);
    victim.clear_hops();
    let shown = victim
        .follow(&link, |u| u.path() == "/oidc/callback")?
        .page()?;
    assert_eq!(shown.status, 200, "{}", shown.describe());
    assert!(
        shown.body.contains("started from <b>127.0.0.9</b>")
            && shown
                .body
                .contains("Continue only if you started it yourself on your own machine"),
        "the confirmation names where the login started:\n{}",
        shown.describe()
    );
    assert!(
        !victim.hops().iter().any(|h| to_provider(&h.url)),
        "opening the link alone went to the provider: {:?}",
        victim.hops()
    );
    let (status, body) = attacker_polls(&attacker, &sso, &device_code)?;
    assert_no_credential(status, &body, "after the victim opened the device link");
    let confirm = shown
        .forms()
        .into_iter()
        .find(|f| f.method == "POST" && f.value("confirm").is_some())
        .ok_or_else(|| anyhow::anyhow!("no confirmation form:\n{}", shown.describe()))?;
    assert!(confirm.value("csrf").is_some_and(|v| v.len() >= 43));
    let set_cookie = shown.set_cookies().join("\n");
    assert!(
        set_cookie.contains("__Host-gatehouse_device=")
            && set_cookie.contains("SameSite=Strict")
            && set_cookie.contains("HttpOnly")
            && set_cookie.contains("Secure"),
        "{set_cookie}"
    );

    // 2. A cross-site form POST (the attacker's own CSRF token, the victim's browser without
    //    the matching cookie) is refused and audited.
    let mut other = sso.browser()?;
    let attackers_page = other.get(&link)?;
    let attackers_form = attackers_page
        .form_with_input("csrf")
        .ok_or_else(|| anyhow::anyhow!("{}", attackers_page.describe()))?;
    let forged = victim.post_form(
        format!("{}/device", sso.base),
        &[
            ("user_code", user_code.as_str()),
            ("csrf", attackers_form.value("csrf").unwrap_or_default()),
        ],
    )?;
    assert_eq!(forged.status, 403, "{}", forged.describe());
    // Without the cookie at all (a form on another site: SameSite=Strict keeps it back),
    // even with a token from the victim's own page (a second tab; the first stays usable).
    let second_tab = victim.get(&link)?;
    let second = second_tab
        .form_with_input("csrf")
        .ok_or_else(|| anyhow::anyhow!("{}", second_tab.describe()))?;
    let no_cookie = victim.post_form_without_cookies(
        format!("{}/device", sso.base),
        &[
            ("user_code", user_code.as_str()),
            ("csrf", second.value("csrf").unwrap_or_default()),
        ],
    )?;
    assert_eq!(no_cookie.status, 403, "{}", no_cookie.describe());
    let (status, body) = attacker_polls(&attacker, &sso, &device_code)?;
    assert_no_credential(status, &body, "after the forged confirmations");

    // 3. A crafted `/login?device=CODE` link (a second device login) is refused with a page.
    let (device_code2, user_code2) = attacker_starts_device_login(&attacker, &sso)?;
    victim.clear_hops();
    let crafted = format!("{}/login?device={user_code2}", sso.base);
    let refused = victim
        .follow(&crafted, |u| u.path() == "/oidc/callback")?
        .page()?;
    assert_eq!(refused.status, 403, "{}", refused.describe());
    assert!(
        refused.body.contains("must be confirmed"),
        "{}",
        refused.describe()
    );
    assert!(!victim.hops().iter().any(|h| to_provider(&h.url)));
    // A made-up confirmation token does no better.
    let guessed = victim.get(format!(
        "{}/login?device={user_code2}&confirm=guessed",
        sso.base
    ))?;
    assert_eq!(guessed.status, 403, "{}", guessed.describe());
    let (status, body) = attacker_polls(&attacker, &sso, &device_code2)?;
    assert_no_credential(
        status,
        &body,
        "after the victim opened the crafted login link",
    );
    let events = sso.gw.audit_export_jsonl()?;
    let refusals: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["kind"] == "login.failed"
                && e["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("device sign-in not confirmed"))
        })
        .collect();
    assert_eq!(refusals.len(), 2, "{events:?}");
    assert!(events.iter().any(|e| e["kind"] == "login.failed"
        && e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not made on this browser's page"))));

    // 4. Only when the victim confirms and signs in again at the provider (their session is
    //    not enough: a fresh sign-in is demanded) does it complete.
    let redirected = victim.submit(&confirm, &[])?;
    assert_eq!(redirected.status, 303, "{}", redirected.describe());
    let next = redirected
        .location()
        .ok_or_else(|| anyhow::anyhow!("{}", redirected.describe()))?;
    assert!(query_param(&next, "confirm").is_some(), "{next}");
    victim.clear_hops();
    let at_provider = victim.follow(next.as_str(), |u| u.path() == "/oidc/callback")?;
    let login_form = at_provider.page()?;
    assert!(
        login_form.forms().iter().any(|f| f.has_kind("password")),
        "the provider did not ask for a fresh sign-in:\n{}",
        login_form.describe()
    );
    let auth = victim
        .hops()
        .iter()
        .find(|h| h.url.path().ends_with("/auth"))
        .map(|h| h.url.clone())
        .ok_or_else(|| anyhow::anyhow!("{:?}", victim.hops()))?;
    assert_eq!(query_param(&auth, "prompt").as_deref(), Some("login"));
    assert_eq!(query_param(&auth, "max_age").as_deref(), Some("0"));
    let (status, body) = attacker_polls(&attacker, &sso, &device_code)?;
    assert_no_credential(status, &body, "before the victim signed in again");
    // The confirmation token is single use.
    let replay = victim.get(next.as_str())?;
    assert_eq!(replay.status, 403, "{}", replay.describe());
    // The victim signs in again on the provider's form.
    let form = login_form
        .form("login")
        .ok_or_else(|| anyhow::anyhow!("{}", login_form.describe()))?;
    let posted = victim.submit(&form, &[("username", ALICE), ("password", ALICE_PASSWORD)])?;
    let callback = victim
        .follow_from(posted, &|u: &reqwest::Url| u.path() == "/oidc/callback")?
        .stopped()?;
    let done = victim.get(callback.as_str())?;
    assert_eq!(done.status, 200, "{}", done.describe());
    let credential = gatehouse_tests::util::poll(
        std::time::Duration::from_secs(6),
        std::time::Duration::from_millis(300),
        || {
            let (status, body) = attacker_polls(&attacker, &sso, &device_code)?;
            Ok((status == 200).then_some(body))
        },
    )?
    .ok_or_else(|| anyhow::anyhow!("the confirmed device login did not complete"))?;
    assert!(credential.to_string().contains("alice"), "{credential}");
    // The second, never confirmed, device login is still pending.
    let (status, body) = attacker_polls(&attacker, &sso, &device_code2)?;
    assert_no_credential(status, &body, "the unconfirmed login at the end");
    Ok(())
}
