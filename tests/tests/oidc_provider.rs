//! The OpenID provider harness against itself, without the gateway: each test plays the relying
//! party (authorization URL, redirect target that is never requested, token endpoint calls) and
//! drives the real `oidc-provider` with the harness [`Browser`].

use std::collections::HashSet;

use anyhow::{anyhow, bail, Context as _};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gatehouse_tests::browser::{query_param, Browser, Url};
use gatehouse_tests::oidc::{
    OidcClient, OidcProvider, OidcSpec, ACR_MFA, ACR_PWD, ALICE, ALICE_PASSWORD, CLIENT_ID,
    CLIENT_SECRET, DANA, DANA_PASSWORD, DEVICE_CODE_GRANT, MALLORY, MALLORY_PASSWORD,
};
use serde_json::{json, Value};

/// Never requested: every flow stops before it.
const REDIRECT: &str = "https://127.0.0.1:9/oidc/callback";
const SCOPE: &str = "openid profile email groups";

fn provider() -> anyhow::Result<OidcProvider> {
    OidcProvider::start(OidcSpec::default_users().client(CLIENT_ID, CLIENT_SECRET, &[REDIRECT]))
}

fn at_redirect(u: &Url) -> bool {
    u.as_str().starts_with(REDIRECT)
}

fn random() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| anyhow!("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// `(code_verifier, S256 code_challenge)`.
fn pkce() -> anyhow::Result<(String, String)> {
    let verifier = random()?;
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    Ok((verifier, challenge))
}

/// An authorization request for [`CLIENT_ID`]; `extra` are more parameters (e.g. the PKCE pair).
fn auth_url(
    op: &OidcProvider,
    state: &str,
    nonce: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<Url> {
    let mut params = vec![
        ("client_id", CLIENT_ID),
        ("response_type", "code"),
        ("scope", SCOPE),
        ("redirect_uri", REDIRECT),
        ("state", state),
        ("nonce", nonce),
    ];
    params.extend_from_slice(extra);
    Ok(Url::parse_with_params(&op.url("/auth"), &params)?)
}

enum ClientAuth {
    Basic,
    Post,
}

/// POSTs to the token endpoint as [`CLIENT_ID`]; returns the status and the JSON body.
fn token_call(
    op: &OidcProvider,
    auth: ClientAuth,
    form: &[(&str, &str)],
) -> anyhow::Result<(u16, Value)> {
    let http = reqwest::blocking::Client::new();
    let mut fields: Vec<(&str, &str)> = form.to_vec();
    let mut req = http.post(op.url("/token"));
    match auth {
        ClientAuth::Basic => req = req.basic_auth(CLIENT_ID, Some(CLIENT_SECRET)),
        ClientAuth::Post => {
            fields.push(("client_id", CLIENT_ID));
            fields.push(("client_secret", CLIENT_SECRET));
        }
    }
    let resp = req.form(&fields).send()?;
    let status = resp.status().as_u16();
    let text = resp.text()?;
    let body =
        serde_json::from_str(&text).with_context(|| format!("token answer {status}: {text}"))?;
    Ok((status, body))
}

fn exchange(
    op: &OidcProvider,
    auth: ClientAuth,
    code: &str,
    verifier: &str,
) -> anyhow::Result<(u16, Value)> {
    token_call(
        op,
        auth,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
}

fn refresh(op: &OidcProvider, refresh_token: &str) -> anyhow::Result<(u16, Value)> {
    token_call(
        op,
        ClientAuth::Basic,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
}

fn str_field<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow!("no string {key:?} in {v}"))
}

/// Verifies the ID token's RS256 signature with the provider's JWKS, its issuer and audience,
/// and returns its claims.
fn verified_claims(op: &OidcProvider, id_token: &str) -> anyhow::Result<Value> {
    let header = jsonwebtoken::decode_header(id_token)?;
    if header.alg != jsonwebtoken::Algorithm::RS256 {
        bail!("ID token alg is {:?}", header.alg);
    }
    let kid = header.kid.ok_or_else(|| anyhow!("ID token without kid"))?;
    let jwks: Value = reqwest::blocking::get(op.url("/jwks"))?.json()?;
    let keys = jwks["keys"]
        .as_array()
        .ok_or_else(|| anyhow!("no keys in {jwks}"))?;
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| anyhow!("kid {kid} not in {jwks}"))?;
    let key =
        jsonwebtoken::DecodingKey::from_rsa_components(str_field(jwk, "n")?, str_field(jwk, "e")?)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[CLIENT_ID]);
    validation.set_issuer(&[op.issuer()]);
    Ok(jsonwebtoken::decode::<Value>(id_token, &key, &validation)?.claims)
}

/// Signs `user` in with a fresh PKCE pair, state and nonce; returns the verifier, the nonce and
/// the code.
fn code_for(
    op: &OidcProvider,
    browser: &mut Browser,
    user: &str,
    password: &str,
) -> anyhow::Result<(String, String, String)> {
    let (verifier, challenge) = pkce()?;
    let (state, nonce) = (random()?, random()?);
    let url = auth_url(
        op,
        &state,
        &nonce,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let back = browser.sign_in(url, user, password, at_redirect)?;
    assert_eq!(query_param(&back, "state").as_deref(), Some(state.as_str()));
    let code = query_param(&back, "code").ok_or_else(|| anyhow!("no code in {back}"))?;
    Ok((verifier, nonce, code))
}

/// Code flow for `user`; returns the token response.
fn tokens_for(op: &OidcProvider, user: &str, password: &str) -> anyhow::Result<Value> {
    let mut browser = Browser::new()?;
    let (verifier, _, code) = code_for(op, &mut browser, user, password)?;
    let (status, body) = exchange(op, ClientAuth::Basic, &code, &verifier)?;
    assert_eq!(status, 200, "{body}");
    Ok(body)
}

#[test]
fn discovery_document_advertises_what_the_gateway_needs() -> anyhow::Result<()> {
    let op = provider()?;
    assert!(
        op.issuer().starts_with("http://127.0.0.1:"),
        "{}",
        op.issuer()
    );
    let d = op.discovery()?;
    assert_eq!(d["issuer"], op.issuer());
    assert_eq!(d["authorization_endpoint"], op.url("/auth"));
    assert_eq!(d["token_endpoint"], op.url("/token"));
    assert_eq!(d["jwks_uri"], op.url("/jwks"));
    assert_eq!(d["userinfo_endpoint"], op.url("/me"));
    assert_eq!(d["device_authorization_endpoint"], op.url("/device/auth"));
    assert_eq!(d["revocation_endpoint"], op.url("/token/revocation"));
    assert_eq!(d["end_session_endpoint"], op.url("/session/end"));
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(d["response_types_supported"], json!(["code"]));
    assert_eq!(d["id_token_signing_alg_values_supported"], json!(["RS256"]));
    assert_eq!(
        d["token_endpoint_auth_methods_supported"],
        json!(["client_secret_basic", "client_secret_post"])
    );
    assert_eq!(
        d["grant_types_supported"],
        json!(["authorization_code", "refresh_token", DEVICE_CODE_GRANT])
    );
    let claims: HashSet<&str> = d["claims_supported"]
        .as_array()
        .ok_or_else(|| anyhow!("no claims_supported"))?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for c in [
        "sub",
        "groups",
        "email",
        "preferred_username",
        "name",
        "amr",
        "acr",
        "auth_time",
    ] {
        assert!(claims.contains(c), "claims_supported lacks {c}: {claims:?}");
    }
    assert_eq!(d["authorization_response_iss_parameter_supported"], true);
    // One RS256 signing key.
    let jwks: Value = reqwest::blocking::get(op.url("/jwks"))?.json()?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["alg"], "RS256");
    assert!(
        jwks["keys"][0]["d"].is_null(),
        "private key material published: {jwks}"
    );
    Ok(())
}

#[test]
fn code_flow_with_pkce_gives_dana_an_id_token_with_mfa_and_groups() -> anyhow::Result<()> {
    let op = provider()?;
    let mut browser = Browser::new()?;
    let (verifier, challenge) = pkce()?;
    let (state, nonce) = (random()?, random()?);
    let url = auth_url(
        &op,
        &state,
        &nonce,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let back = browser.sign_in(url.as_str(), DANA, DANA_PASSWORD, at_redirect)?;
    assert!(back.as_str().starts_with(REDIRECT), "{back}");
    assert_eq!(query_param(&back, "state").as_deref(), Some(state.as_str()));
    assert_eq!(query_param(&back, "iss").as_deref(), Some(op.issuer()));
    let code = query_param(&back, "code").ok_or_else(|| anyhow!("no code in {back}"))?;
    // The browser went through the login form, and never requested the redirect URI.
    let hops = browser.hops();
    assert!(
        hops.iter()
            .any(|h| h.method == "POST" && h.url.path().ends_with("/login") && h.status == 303),
        "{hops:#?}"
    );
    assert!(hops.iter().all(|h| !at_redirect(&h.url)), "{hops:#?}");
    assert_eq!(
        hops.last().and_then(|h| h.location.clone()),
        Some(back.clone())
    );

    let (status, tokens) = exchange(&op, ClientAuth::Basic, &code, &verifier)?;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    assert_eq!(tokens["scope"], SCOPE);
    let claims = verified_claims(&op, str_field(&tokens, "id_token")?)?;
    assert_eq!(claims["sub"], DANA);
    assert_eq!(claims["preferred_username"], DANA);
    assert_eq!(claims["name"], "Dana Admin");
    assert_eq!(claims["email"], "dana@example.test");
    assert_eq!(claims["groups"], json!(["dba"]));
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    assert_eq!(claims["acr"], ACR_MFA);
    assert_eq!(claims["nonce"], nonce.as_str());
    let auth_time = claims["auth_time"]
        .as_i64()
        .ok_or_else(|| anyhow!("no auth_time"))?;
    let iat = claims["iat"].as_i64().ok_or_else(|| anyhow!("no iat"))?;
    assert!(
        auth_time <= iat && iat - auth_time < 60,
        "auth_time {auth_time}, iat {iat}"
    );
    assert_eq!(claims["exp"].as_i64().map(|e| e - iat), Some(3600));

    // The access token works at the userinfo endpoint.
    let info: Value = reqwest::blocking::Client::new()
        .get(op.url("/me"))
        .bearer_auth(str_field(&tokens, "access_token")?)
        .send()?
        .json()?;
    assert_eq!(info["sub"], DANA);
    assert_eq!(info["groups"], json!(["dba"]));

    // A code is single-use.
    let (status, again) = exchange(&op, ClientAuth::Basic, &code, &verifier)?;
    assert_eq!(
        (status, &again["error"]),
        (400, &json!("invalid_grant")),
        "{again}"
    );

    // Single sign-on: the same browser gets a second code without a login form; the client can
    // authenticate with client_secret_post too.
    browser.clear_hops();
    let (verifier2, nonce2, code2) = code_for(&op, &mut browser, DANA, "not-asked")?;
    assert!(
        browser.hops().iter().all(|h| h.method == "GET"),
        "{:#?}",
        browser.hops()
    );
    let (status, tokens2) = exchange(&op, ClientAuth::Post, &code2, &verifier2)?;
    assert_eq!(status, 200, "{tokens2}");
    let claims2 = verified_claims(&op, str_field(&tokens2, "id_token")?)?;
    assert_eq!(claims2["sub"], DANA);
    assert_eq!(claims2["nonce"], nonce2.as_str());
    assert_eq!(claims2["auth_time"], claims["auth_time"]);
    Ok(())
}

#[test]
fn wrong_password_shows_the_form_again_and_issues_no_code() -> anyhow::Result<()> {
    let op = provider()?;
    let (_, challenge) = pkce()?;
    let url = auth_url(
        &op,
        "s",
        "n",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;

    // sign_in reports the refusal with the page.
    let mut browser = Browser::new()?;
    let err = browser
        .sign_in(url.as_str(), ALICE, "not-alices-password", at_redirect)
        .err()
        .ok_or_else(|| anyhow!("sign-in with a wrong password succeeded"))?;
    let msg = format!("{err:#}");
    assert!(msg.contains("was refused"), "{msg}");
    assert!(msg.contains("Invalid username or password"), "{msg}");

    // By hand: the form comes back with 401 and an error; the right password then works on
    // the same interaction.
    let mut browser = Browser::new()?;
    let page = browser.follow(url.as_str(), at_redirect)?.page()?;
    assert_eq!(page.status, 200, "{}", page.describe());
    let form = page
        .form("login")
        .ok_or_else(|| anyhow!("no login form: {}", page.describe()))?;
    assert_eq!(form.method, "POST");
    for (user, password) in [(ALICE, "wrong"), ("nobody", "x"), (ALICE, "")] {
        let refused = browser.submit(&form, &[("username", user), ("password", password)])?;
        assert_eq!(refused.status, 401, "{}", refused.describe());
        assert!(refused.location().is_none());
        assert!(
            refused.body.contains("Invalid username or password"),
            "{}",
            refused.describe()
        );
        assert!(
            refused.form_with_input("password").is_some(),
            "{}",
            refused.describe()
        );
    }
    assert!(browser
        .hops()
        .iter()
        .all(|h| h.location.as_ref().is_none_or(|l| !at_redirect(l))));
    let ok = browser.submit(&form, &[("username", ALICE), ("password", ALICE_PASSWORD)])?;
    let back = browser.follow_from(ok, &at_redirect)?.stopped()?;
    assert!(query_param(&back, "code").is_some(), "{back}");
    Ok(())
}

#[test]
fn pkce_is_required_and_checked() -> anyhow::Result<()> {
    let op = provider()?;
    let mut browser = Browser::new()?;

    // Without code_challenge the provider refuses at the authorization endpoint: it redirects
    // to the client with error=invalid_request, before any login page.
    let url = auth_url(&op, "st", "n", &[])?;
    let back = browser.follow(url.as_str(), at_redirect)?.stopped()?;
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request"),
        "{back}"
    );
    let desc = query_param(&back, "error_description").unwrap_or_default();
    assert!(desc.contains("PKCE"), "{desc}");
    assert_eq!(query_param(&back, "state").as_deref(), Some("st"));
    assert!(query_param(&back, "code").is_none());
    assert_eq!(browser.hops().len(), 1, "{:#?}", browser.hops());

    // The plain method is not supported.
    let url = auth_url(
        &op,
        "st",
        "n",
        &[
            ("code_challenge", "x".repeat(43).as_str()),
            ("code_challenge_method", "plain"),
        ],
    )?;
    let back = browser.follow(url.as_str(), at_redirect)?.stopped()?;
    assert_eq!(
        query_param(&back, "error").as_deref(),
        Some("invalid_request"),
        "{back}"
    );

    // A code bound to a challenge needs the matching verifier; failed attempts do not use it up.
    let (verifier, _, code) = code_for(&op, &mut browser, DANA, DANA_PASSWORD)?;
    let (status, body) = token_call(
        &op,
        ClientAuth::Basic,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    let (status, body) = exchange(&op, ClientAuth::Basic, &code, &random()?)?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    let (status, body) = exchange(&op, ClientAuth::Basic, &code, &verifier)?;
    assert_eq!(status, 200, "{body}");
    Ok(())
}

/// Starts a device authorization for [`CLIENT_ID`].
fn device_authorization(op: &OidcProvider) -> anyhow::Result<Value> {
    let resp = reqwest::blocking::Client::new()
        .post(op.url("/device/auth"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&[("scope", SCOPE)])
        .send()?;
    let status = resp.status().as_u16();
    let body: Value = resp.json()?;
    assert_eq!(status, 200, "{body}");
    Ok(body)
}

fn poll_device(op: &OidcProvider, device_code: &str) -> anyhow::Result<(u16, Value)> {
    token_call(
        op,
        ClientAuth::Basic,
        &[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", device_code),
        ],
    )
}

#[test]
fn device_flow_signs_alice_in() -> anyhow::Result<()> {
    let op = provider()?;
    let da = device_authorization(&op)?;
    let device_code = str_field(&da, "device_code")?;
    let user_code = str_field(&da, "user_code")?;
    assert_eq!(da["verification_uri"], op.url("/device"));
    assert_eq!(
        da["verification_uri_complete"],
        format!("{}?user_code={user_code}", op.url("/device"))
    );
    assert_eq!(user_code.len(), 9, "{user_code}");
    assert!(da["expires_in"].as_u64().is_some_and(|e| e > 0), "{da}");

    let (status, pending) = poll_device(&op, device_code)?;
    assert_eq!(
        (status, &pending["error"]),
        (400, &json!("authorization_pending")),
        "{pending}"
    );

    let mut browser = Browser::new()?;
    let page = browser.confirm_device(
        str_field(&da, "verification_uri")?,
        user_code,
        ALICE,
        ALICE_PASSWORD,
    )?;
    assert!(page.body.contains("Sign-in Success"), "{}", page.describe());
    // Code entry, confirmation and login were all plain form posts.
    let posts: Vec<&str> = browser
        .hops()
        .iter()
        .filter(|h| h.method == "POST")
        .map(|h| h.url.path())
        .collect();
    assert_eq!(posts.len(), 3, "{:#?}", browser.hops());
    assert_eq!(&posts[..2], ["/device", "/device"]);
    assert!(
        posts[2].starts_with("/interaction/") && posts[2].ends_with("/login"),
        "{posts:?}"
    );

    let (status, tokens) = poll_device(&op, device_code)?;
    assert_eq!(status, 200, "{tokens}");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    let claims = verified_claims(&op, str_field(&tokens, "id_token")?)?;
    assert_eq!(claims["sub"], ALICE);
    assert_eq!(claims["groups"], json!(["engineering"]));
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["acr"], ACR_PWD);
    assert_eq!(claims["email"], "alice@example.test");
    assert!(claims["nonce"].is_null(), "{claims}");

    // A device code is single-use.
    let (status, again) = poll_device(&op, device_code)?;
    assert_eq!(
        (status, &again["error"]),
        (400, &json!("invalid_grant")),
        "{again}"
    );

    // A wrong user code is refused on the entry page.
    let da2 = device_authorization(&op)?;
    let err = Browser::new()?
        .confirm_device(
            str_field(&da2, "verification_uri")?,
            "BCDF-GHJK",
            ALICE,
            ALICE_PASSWORD,
        )
        .err()
        .ok_or_else(|| anyhow!("a wrong user code was accepted"))?;
    assert!(format!("{err:#}").contains("was refused"), "{err:#}");
    let (status, pending) = poll_device(&op, str_field(&da2, "device_code")?)?;
    assert_eq!(
        (status, &pending["error"]),
        (400, &json!("authorization_pending")),
        "{pending}"
    );
    Ok(())
}

#[test]
fn refresh_fails_with_invalid_grant_once_the_user_is_disabled() -> anyhow::Result<()> {
    let op = provider()?;
    let alice = tokens_for(&op, ALICE, ALICE_PASSWORD)?;
    let mallory = tokens_for(&op, MALLORY, MALLORY_PASSWORD)?;

    // Refresh works, rotates the refresh token and gives a fresh ID token.
    let rt1 = str_field(&alice, "refresh_token")?;
    let (status, refreshed) = refresh(&op, rt1)?;
    assert_eq!(status, 200, "{refreshed}");
    let rt2 = str_field(&refreshed, "refresh_token")?;
    assert_ne!(rt1, rt2);
    let claims = verified_claims(&op, str_field(&refreshed, "id_token")?)?;
    assert_eq!(claims["sub"], ALICE);
    assert_eq!(claims["groups"], json!(["engineering"]));

    op.disable_user(ALICE)?;
    let (status, body) = refresh(&op, rt2)?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    assert!(
        op.logs().contains("referenced account not found"),
        "{}",
        op.logs()
    );
    // Other users are unaffected.
    let (status, body) = refresh(&op, str_field(&mallory, "refresh_token")?)?;
    assert_eq!(status, 200, "{body}");
    // And alice cannot sign in again.
    let (_, challenge) = pkce()?;
    let url = auth_url(
        &op,
        "s",
        "n",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let err = Browser::new()?
        .sign_in(url.as_str(), ALICE, ALICE_PASSWORD, at_redirect)
        .err()
        .ok_or_else(|| anyhow!("a disabled user signed in"))?;
    assert!(format!("{err:#}").contains("was refused"), "{err:#}");
    Ok(())
}

#[test]
fn reusing_a_rotated_refresh_token_revokes_the_grant() -> anyhow::Result<()> {
    let op = provider()?;
    let tokens = tokens_for(&op, MALLORY, MALLORY_PASSWORD)?;
    let rt1 = str_field(&tokens, "refresh_token")?;
    let (status, refreshed) = refresh(&op, rt1)?;
    assert_eq!(status, 200, "{refreshed}");
    let rt2 = str_field(&refreshed, "refresh_token")?;
    let (status, body) = refresh(&op, rt1)?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    let (status, body) = refresh(&op, rt2)?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    Ok(())
}

#[test]
fn redirect_uris_can_be_registered_after_start() -> anyhow::Result<()> {
    // The gateway's port is known only once it runs: start with a device-only client.
    let mut op =
        OidcProvider::start(OidcSpec::default_users().client(CLIENT_ID, CLIENT_SECRET, &[]))?;
    assert_eq!(
        (op.client_id(), op.client_secret()),
        (CLIENT_ID, CLIENT_SECRET)
    );
    let (_, challenge) = pkce()?;
    let url = auth_url(
        &op,
        "s",
        "n",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let mut browser = Browser::new()?;
    let page = browser.follow(url.as_str(), at_redirect)?.page()?;
    assert_eq!(page.status, 400, "{}", page.describe());

    op.set_redirect_uris(CLIENT_ID, &[REDIRECT])?;
    let back = browser.sign_in(url.as_str(), DANA, DANA_PASSWORD, at_redirect)?;
    assert!(query_param(&back, "code").is_some(), "{back}");

    // A second client, added whole.
    op.register_client(OidcClient::new(
        "other",
        "other-secret",
        &["https://127.0.0.1:9/other"],
    ))?;
    assert_eq!(op.clients().len(), 2);
    let other = Url::parse_with_params(
        &op.url("/auth"),
        &[
            ("client_id", "other"),
            ("response_type", "code"),
            ("scope", "openid"),
            ("redirect_uri", "https://127.0.0.1:9/other"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let back = browser.sign_in(other.as_str(), DANA, DANA_PASSWORD, |u| {
        u.path() == "/other"
    })?;
    assert!(query_param(&back, "code").is_some(), "{back}");
    // Still the first client.
    assert_eq!(op.client_id(), CLIENT_ID);
    Ok(())
}

#[test]
fn browser_cookie_helpers_see_the_provider_session() -> anyhow::Result<()> {
    let op = provider()?;
    let mut browser = Browser::new()?;
    assert_eq!(browser.cookie_header(op.issuer())?, None);
    tokens_for(&op, DANA, DANA_PASSWORD)?; // another browser; ours stays empty
    assert_eq!(browser.cookie_header(op.issuer())?, None);
    let (_, _, _) = code_for(&op, &mut browser, DANA, DANA_PASSWORD)?;
    let session = browser.cookie(op.issuer(), "_session")?;
    assert!(
        session.is_some(),
        "{:?}",
        browser.cookie_header(op.issuer())
    );
    // Without cookies the provider does not know the browser: the login form appears.
    let (_, challenge) = pkce()?;
    let url = auth_url(
        &op,
        "s",
        "n",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let first = browser.get_without_cookies(url.as_str())?;
    assert_eq!(first.status, 303);
    let mut fresh = browser.fresh()?;
    let page = fresh.follow(url.as_str(), at_redirect)?.page()?;
    assert!(
        page.form_with_input("password").is_some(),
        "{}",
        page.describe()
    );
    // With them it does not.
    let back = browser.follow(url.as_str(), at_redirect)?.stopped()?;
    assert!(query_param(&back, "code").is_some());
    browser.clear_cookies()?;
    assert_eq!(browser.cookie_header(op.issuer())?, None);
    Ok(())
}

#[test]
fn prompt_login_switches_user_in_the_same_browser() -> anyhow::Result<()> {
    let op = provider()?;
    let mut browser = Browser::new()?;
    code_for(&op, &mut browser, DANA, DANA_PASSWORD)?;
    // Without prompt=login the provider's session answers for dana again; with it the login
    // form comes back, and signing in as another user ends dana's provider session first (an
    // auto-submitting form the browser posts).
    browser.clear_hops();
    let (verifier, challenge) = pkce()?;
    let url = auth_url(
        &op,
        "s",
        "n",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("prompt", "login"),
        ],
    )?;
    let back = browser.sign_in(url.as_str(), MALLORY, MALLORY_PASSWORD, at_redirect)?;
    assert!(
        browser
            .hops()
            .iter()
            .any(|h| h.method == "POST" && h.url.path() == "/session/end/confirm"),
        "{:#?}",
        browser.hops()
    );
    let code = query_param(&back, "code").ok_or_else(|| anyhow!("no code in {back}"))?;
    let (status, tokens) = exchange(&op, ClientAuth::Basic, &code, &verifier)?;
    assert_eq!(status, 200, "{tokens}");
    let claims = verified_claims(&op, str_field(&tokens, "id_token")?)?;
    assert_eq!(claims["sub"], MALLORY);
    assert_eq!(claims["groups"], json!(["contractors"]));
    Ok(())
}

#[test]
fn rp_initiated_logout_ends_the_provider_session() -> anyhow::Result<()> {
    const AFTER_LOGOUT: &str = "https://127.0.0.1:9/signed-out";
    let op = OidcProvider::start(
        OidcSpec::default_users().with_client(
            OidcClient::new(CLIENT_ID, CLIENT_SECRET, &[REDIRECT])
                .post_logout_redirect_uri(AFTER_LOGOUT),
        ),
    )?;
    let mut browser = Browser::new()?;
    let (verifier, _, code) = code_for(&op, &mut browser, DANA, DANA_PASSWORD)?;
    let (status, tokens) = exchange(&op, ClientAuth::Basic, &code, &verifier)?;
    assert_eq!(status, 200, "{tokens}");

    let logout = Url::parse_with_params(
        &op.url("/session/end"),
        &[
            ("id_token_hint", str_field(&tokens, "id_token")?),
            ("post_logout_redirect_uri", AFTER_LOGOUT),
            ("state", "bye"),
        ],
    )?;
    let page = browser.follow(logout.as_str(), |_| false)?.page()?;
    let form = page
        .form("op.logoutForm")
        .ok_or_else(|| anyhow!("no logout form: {}", page.describe()))?;
    assert_eq!(form.value("logout"), Some("yes"));
    let done = browser.submit(&form, &[])?;
    let back = browser
        .follow_from(done, &|u: &Url| u.as_str().starts_with(AFTER_LOGOUT))?
        .stopped()?;
    assert_eq!(query_param(&back, "state").as_deref(), Some("bye"));

    // The provider asks for a password again; the refresh token died with the session.
    let (_, challenge) = pkce()?;
    let url = auth_url(
        &op,
        "s",
        "n",
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )?;
    let page = browser.follow(url.as_str(), at_redirect)?.page()?;
    assert!(
        page.form_with_input("password").is_some(),
        "{}",
        page.describe()
    );
    let (status, body) = refresh(&op, str_field(&tokens, "refresh_token")?)?;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_grant")),
        "{body}"
    );
    Ok(())
}
