//! The browser side of sign-in.
//!
//! `GET /login` starts an authorization request at the provider. Where the person is sent back
//! to afterwards is fixed here, before they leave: either the CLI's loopback listener
//! (`cli_redirect=http://127.0.0.1:PORT/callback`, RFC 8252), a relative path on the gateway
//! (`return_to=/...`), or a device login waiting for its code. Anything else is refused, so the
//! gateway is never an open redirector.
//!
//! The `state` is bound to the browser by a `__Host-` cookie holding a second random value; a
//! callback without it (a login CSRF, or a stolen callback URL) is refused. Every transaction is
//! single use: a replayed callback finds nothing.
//!
//! A device login on the gateway's own page never completes from a link: `GET /device` shows
//! where (source address) and when it was started and asks for a confirmation, a `POST /device`
//! carrying a single-use CSRF token that must match a `SameSite=Strict` cookie set with the
//! page. Only that POST yields the one-time `confirm` token without which
//! `/login?device=CODE` refuses, and the provider is then asked for a fresh sign-in
//! (`prompt=login`, `max_age=0`), so a session there does not finish it silently.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::page::{escape, login_failed, page};
use super::session::IssuedCode;
use super::Web;
use crate::audit::EventKind;
use crate::authn::pending::random_key;

/// The cookie binding a login's `state` to the browser that started it.
pub const BINDING_COOKIE: &str = "__Host-gatehouse_login";
/// The cookie binding a device confirmation (its CSRF token, then its confirmation token) to
/// the browser that was shown the confirmation page. `SameSite=Strict`: a cross-site form or
/// link does not carry it.
pub const DEVICE_COOKIE: &str = "__Host-gatehouse_device";

/// A device confirmation form (keyed by its CSRF token) or a confirmed device login (keyed by
/// its one-time confirmation token): which code, and the browser it is bound to.
pub struct DeviceBinding {
    /// SHA-256 of the [`DEVICE_COOKIE`] value.
    pub binding: [u8; 32],
    /// The normalised user code.
    pub user_code: String,
}

/// Where the person goes after signing in.
#[derive(Debug, Clone)]
pub enum Return {
    /// The CLI's loopback listener, with its own `state` and PKCE challenge.
    Cli {
        redirect: String,
        state: String,
        challenge: String,
    },
    /// A relative path on the gateway.
    Path(String),
    /// A device login (gateway-run verification page) waiting for this user code.
    Device(String),
}

/// An authorization request in flight, keyed by its `state`.
pub struct LoginTx {
    pub pkce_verifier: String,
    pub nonce: String,
    /// When a fresh sign-in at the provider was asked for (device logins; Unix seconds): the
    /// ID token's `auth_time` must be at or after it.
    pub fresh_since: Option<u64>,
    /// SHA-256 of the browser binding cookie.
    pub binding: [u8; 32],
    pub ret: Return,
}

#[derive(Debug, Deserialize)]
pub struct StartParams {
    cli_redirect: Option<String>,
    cli_state: Option<String>,
    cli_challenge: Option<String>,
    return_to: Option<String>,
    device: Option<String>,
    /// With `device`: the one-time token `POST /device` issued after the person confirmed.
    confirm: Option<String>,
}

/// The CLI's redirect: `http://127.0.0.1:PORT/callback` (or `[::1]`/`localhost`), nothing else:
/// no user info, query or fragment, an explicit port.
pub fn loopback_redirect(s: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(s) else {
        return false;
    };
    url.scheme() == "http"
        && matches!(
            url.host_str(),
            Some("127.0.0.1") | Some("[::1]") | Some("localhost")
        )
        && url.port().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/callback"
        // The parsed URL must say what the text said (no backslash or percent tricks).
        && url.as_str() == s
}

/// A relative path on the gateway: starts with one `/`, no scheme, no backslash, no control
/// characters, bounded.
pub fn relative_path(s: &str) -> bool {
    s.starts_with('/')
        && !s.starts_with("//")
        && !s.starts_with("/\\")
        && s.len() <= 512
        && !s.contains('\\')
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
        && !s.to_ascii_lowercase().contains("javascript:")
}

fn sha256(s: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads a cookie by name from the request headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `GET /`: what this is.
pub async fn home(State(web): State<Arc<Web>>) -> Response {
    let sso = if web.rp.is_some() {
        "<p>Sign in from your terminal: <code>gatehouse login --gateway URL</code>.</p>"
    } else {
        "<p>Single sign-on is not configured on this gateway.</p>"
    };
    page(
        StatusCode::OK,
        "Gatehouse",
        &format!("<p>An access gateway for infrastructure.</p>{sso}"),
    )
}

/// `GET /login`: validates where to return, then redirects to the provider.
pub async fn start(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<StartParams>,
) -> Response {
    let Some(rp) = web.rp.clone() else {
        return login_failed(StatusCode::NOT_FOUND, "single sign-on is not configured");
    };
    let refuse = |reason: &'static str, detail: serde_json::Value| {
        let web = web.clone();
        async move {
            web.audit_refusal(EventKind::LoginFailed, "", "login", reason, peer, detail)
                .await;
            login_failed(StatusCode::BAD_REQUEST, reason)
        }
    };
    let ret = match (&p.cli_redirect, &p.return_to, &p.device) {
        (Some(r), None, None) => {
            if !loopback_redirect(r) {
                let shown: String = r.chars().take(200).collect();
                return refuse(
                    "redirect is not the registered loopback callback",
                    serde_json::json!({ "redirect": shown }),
                )
                .await;
            }
            let (Some(state), Some(challenge)) = (&p.cli_state, &p.cli_challenge) else {
                return refuse(
                    "a CLI login needs cli_state and cli_challenge",
                    serde_json::json!({}),
                )
                .await;
            };
            if state.is_empty() || state.len() > 128 || challenge.len() != 43 {
                return refuse(
                    "cli_state or cli_challenge is malformed",
                    serde_json::json!({}),
                )
                .await;
            }
            Return::Cli {
                redirect: r.clone(),
                state: state.clone(),
                challenge: challenge.clone(),
            }
        }
        (None, Some(path), None) => {
            if !relative_path(path) {
                let shown: String = path.chars().take(200).collect();
                return refuse(
                    "return_to is not a relative path",
                    serde_json::json!({ "return_to": shown }),
                )
                .await;
            }
            Return::Path(path.clone())
        }
        (None, None, Some(code)) => {
            let code = normalize_user_code(code);
            // Only a confirmation made on the device page, in this browser, opens a device
            // sign-in: a link to `/login?device=CODE` alone does nothing.
            let confirmed = p
                .confirm
                .as_deref()
                .filter(|c| !c.is_empty() && c.len() <= 128)
                .and_then(|c| web.device_confirms.take(c))
                .is_some_and(|b| {
                    b.user_code == code
                        && cookie(&headers, DEVICE_COOKIE)
                            .is_some_and(|c| bool::from(sha256(&c).ct_eq(&b.binding)))
                });
            if !confirmed {
                web.audit_refusal(
                    EventKind::LoginFailed,
                    "",
                    "login",
                    "device sign-in not confirmed on the device page",
                    peer,
                    serde_json::json!({ "flow": "device" }),
                )
                .await;
                return login_failed(
                    StatusCode::FORBIDDEN,
                    "a device sign-in must be confirmed on the gateway's device page first: \
                     open /device on this gateway and enter the code your terminal shows",
                );
            }
            let known = web
                .devices
                .find_update(|d| d.gateway_user_code() == Some(code.as_str()), |_| ())
                .is_some();
            if !known {
                return refuse("unknown or expired device code", serde_json::json!({})).await;
            }
            Return::Device(code)
        }
        (None, None, None) => Return::Path("/".into()),
        _ => {
            return refuse(
                "give only one of cli_redirect, return_to, device",
                serde_json::json!({}),
            )
            .await
        }
    };
    if !web.logins.has_room_for(peer.ip()) {
        return login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-ins in progress from your address; finish one or wait a few minutes",
        );
    }
    // A device login always asks the provider for a fresh sign-in: an existing provider
    // session must not complete it without the person noticing.
    let fresh = matches!(ret, Return::Device(_));
    let auth = match rp.authorize(fresh).await {
        Ok(a) => a,
        Err(e) => {
            web.audit_refusal(
                EventKind::LoginFailed,
                "",
                "login",
                &e.to_string(),
                peer,
                serde_json::json!({}),
            )
            .await;
            return login_failed(
                StatusCode::BAD_GATEWAY,
                "the identity provider is unavailable; try again shortly",
            );
        }
    };
    let binding = random_key();
    let tx = LoginTx {
        pkce_verifier: auth.pkce_verifier,
        nonce: auth.nonce,
        fresh_since: fresh.then(crate::authn::token::unix_now),
        binding: sha256(&binding),
        ret,
    };
    if web.logins.insert(&auth.state, tx, peer.ip()).is_err() {
        return login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-ins in progress from your address; finish one or wait a few minutes",
        );
    }
    let mut resp = Redirect::to(&auth.url).into_response();
    let cookie = format!(
        "{BINDING_COOKIE}={binding}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        super::LOGIN_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oidc/callback`: the provider sends the browser back here.
pub async fn callback(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<CallbackParams>,
) -> Response {
    let Some(rp) = web.rp.clone() else {
        return login_failed(StatusCode::NOT_FOUND, "single sign-on is not configured");
    };
    let fail = |status: StatusCode, reason: String, user: String| {
        let web = web.clone();
        async move {
            web.audit_refusal(
                EventKind::LoginFailed,
                &user,
                "login",
                &reason,
                peer,
                serde_json::json!({ "flow": "code" }),
            )
            .await;
            login_failed(status, &reason)
        }
    };
    let Some(state) = p.state.filter(|s| !s.is_empty() && s.len() <= 512) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the callback has no state".into(),
            String::new(),
        )
        .await;
    };
    // Single use: the transaction leaves the map whatever happens next.
    let Some(tx) = web.logins.take(&state) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "unknown, expired or already used state".into(),
            String::new(),
        )
        .await;
    };
    let bound = cookie(&headers, BINDING_COOKIE)
        .map(|c| bool::from(sha256(&c).ct_eq(&tx.binding)))
        .unwrap_or(false);
    if !bound {
        return fail(
            StatusCode::BAD_REQUEST,
            "the sign-in was not started in this browser (state not bound to it)".into(),
            String::new(),
        )
        .await;
    }
    if let Some(error) = p.error {
        let desc: String = p
            .error_description
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let error: String = error.chars().take(64).collect();
        return fail(
            StatusCode::FORBIDDEN,
            format!("the identity provider refused: {error} {desc}")
                .trim()
                .to_string(),
            String::new(),
        )
        .await;
    }
    let Some(code) = p.code.filter(|c| !c.is_empty() && c.len() <= 2048) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "the callback has no code".into(),
            String::new(),
        )
        .await;
    };
    let identity = match rp
        .finish(&code, &tx.pkce_verifier, &tx.nonce, tx.fresh_since)
        .await
    {
        Ok(i) => i,
        Err(e) => return fail(StatusCode::FORBIDDEN, e.to_string(), String::new()).await,
    };
    let flow = if matches!(tx.ret, Return::Device(_)) {
        "device"
    } else {
        "code"
    };
    let credential = match web.complete_login(identity, flow, peer).await {
        Ok(c) => c,
        Err(e) => {
            return login_failed(StatusCode::FORBIDDEN, &e.to_string());
        }
    };
    let mut resp = match tx.ret {
        Return::Cli {
            redirect,
            state,
            challenge,
        } => {
            let code = random_key();
            let user = credential.user.clone();
            if web
                .codes
                .insert(
                    &code,
                    IssuedCode {
                        credential,
                        challenge,
                    },
                    peer.ip(),
                )
                .is_err()
            {
                return login_failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many sign-ins in progress",
                );
            }
            let mut url = match reqwest::Url::parse(&redirect) {
                Ok(u) => u,
                Err(_) => return login_failed(StatusCode::BAD_REQUEST, "bad redirect"),
            };
            url.query_pairs_mut()
                .append_pair("code", &code)
                .append_pair("state", &state);
            tracing::debug!(user = %user, "handing the CLI a one-time code");
            Redirect::to(url.as_str()).into_response()
        }
        Return::Path(path) => {
            let body = format!(
                "<p>Signed in as <b>{}</b>. You can close this window.</p>",
                escape(&credential.user)
            );
            if path == "/" {
                page(StatusCode::OK, "Signed in", &body)
            } else {
                Redirect::to(&path).into_response()
            }
        }
        Return::Device(user_code) => {
            let user = credential.user.clone();
            let done = web.devices.find_update(
                |d| d.gateway_user_code() == Some(user_code.as_str()),
                |d| d.complete(credential),
            );
            if done.is_none() {
                return login_failed(StatusCode::GONE, "the device login expired");
            }
            page(
                StatusCode::OK,
                "Device signed in",
                &format!(
                    "<p>Signed in as <b>{}</b>. Return to your terminal.</p>",
                    escape(&user)
                ),
            )
        }
    };
    // The binding cookie has done its job.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{BINDING_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"
    )) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

#[derive(Debug, Deserialize)]
pub struct DeviceParams {
    user_code: Option<String>,
}

/// The code entry form of the device page; `notice` is escaped HTML shown above it.
fn device_entry(status: StatusCode, notice: &str) -> Response {
    page(
        status,
        "Sign in a device",
        &format!(
            "{notice}<p>Enter the code your terminal shows. Only continue if you started \
             <code>gatehouse login --device</code> yourself.</p>\
             <form method=\"get\" action=\"/device\"><input name=\"user_code\" autocomplete=\"off\" \
             maxlength=\"16\" autofocus> <button type=\"submit\">Continue</button></form>"
        ),
    )
}

fn ago(elapsed: std::time::Duration) -> String {
    match elapsed.as_secs() / 60 {
        0 => "less than a minute ago".into(),
        1 => "1 minute ago".into(),
        n => format!("{n} minutes ago"),
    }
}

fn device_cookie_header(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{DEVICE_COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        super::DEVICE_FORM_TTL.as_secs()
    ))
    .ok()
}

/// `GET /device`: the gateway's own verification page for device logins (used when the
/// provider has no device flow). Without a code it asks for one; with a known code it shows
/// where and when that device login was started and asks the person to confirm with a POST
/// (CSRF token in the form, bound to a `SameSite=Strict` cookie). Nothing here signs anyone
/// in: a link to this page, sent by whoever started the login, stops at the confirmation.
pub async fn device_page(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<DeviceParams>,
) -> Response {
    if web.rp.is_none() {
        return login_failed(StatusCode::NOT_FOUND, "single sign-on is not configured");
    }
    let code = match p.user_code.map(|c| normalize_user_code(&c)) {
        Some(code) if !code.is_empty() => code,
        _ => return device_entry(StatusCode::OK, ""),
    };
    let Some((source, started, elapsed)) = web.devices.find_update(
        |d| d.gateway_user_code() == Some(code.as_str()),
        |d| d.started(),
    ) else {
        return device_entry(
            StatusCode::NOT_FOUND,
            "<p><b>That code is unknown or has expired.</b> Check it, or start again with \
             <code>gatehouse login --device</code>.</p>",
        );
    };
    // Reuse this browser's binding if it has one (several tabs), else make one.
    let binding = cookie(&headers, DEVICE_COOKIE)
        .filter(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(random_key);
    let csrf = random_key();
    let form = DeviceBinding {
        binding: sha256(&binding),
        user_code: code.clone(),
    };
    if web.device_forms.insert(&csrf, form, peer.ip()).is_err() {
        return login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-ins in progress from your address; finish one or wait a few minutes",
        );
    }
    let when = started
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
        ))
        .unwrap_or_default();
    let shown_code = if code.len() == 8 {
        format!("{}-{}", &code[..4], &code[4..])
    } else {
        code.clone()
    };
    let body = format!(
        "<p>A device sign-in was started from <b>{addr}</b> at <b>{when}</b> ({ago}) with the \
         code <code>{shown}</code>.</p>\
         <p><b>Continue only if you started it yourself on your own machine.</b> If someone \
         sent you this link or code, close this page: continuing would give them your access.</p>\
         <form method=\"post\" action=\"/device\">\
         <input type=\"hidden\" name=\"user_code\" value=\"{code}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" name=\"confirm\" value=\"yes\">I started it: continue and sign in</button>\
         </form>",
        addr = escape(&source.to_string()),
        when = escape(&when),
        ago = ago(elapsed),
        shown = escape(&shown_code),
        code = escape(&code),
        csrf = escape(&csrf),
    );
    let mut resp = page(StatusCode::OK, "Confirm the device sign-in", &body);
    if let Some(v) = device_cookie_header(&binding) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Debug, Deserialize)]
pub struct DeviceConfirmForm {
    user_code: Option<String>,
    csrf: Option<String>,
}

/// `POST /device`: the person confirmed on the confirmation page. Checks the CSRF token
/// against the browser's cookie and the code, then sends the browser on to a fresh sign-in
/// at the provider with a one-time confirmation token.
pub async fn device_confirm(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::Form<DeviceConfirmForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if web.rp.is_none() {
        return login_failed(StatusCode::NOT_FOUND, "single sign-on is not configured");
    }
    let refuse = |reason: &'static str| {
        let web = web.clone();
        async move {
            web.audit_refusal(
                EventKind::LoginFailed,
                "",
                "login",
                reason,
                peer,
                serde_json::json!({ "flow": "device" }),
            )
            .await;
            login_failed(StatusCode::FORBIDDEN, reason)
        }
    };
    // A browser sends Origin with a POST; one from elsewhere is a cross-site form.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ours = reqwest::Url::parse(&web.config.http.public_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        if origin.to_str().ok() != Some(ours.as_str()) {
            return refuse("the device confirmation was not sent from the gateway's own page")
                .await;
        }
    }
    let Ok(axum::Form(f)) = form else {
        return refuse("the device confirmation form is malformed").await;
    };
    let code = normalize_user_code(f.user_code.as_deref().unwrap_or_default());
    let Some(entry) = f
        .csrf
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 128)
        .and_then(|c| web.device_forms.take(c))
    else {
        return refuse("the device confirmation form is unknown, expired or already used").await;
    };
    let Some(binding) = cookie(&headers, DEVICE_COOKIE) else {
        return refuse("the device confirmation was not made on this browser's page").await;
    };
    if !bool::from(sha256(&binding).ct_eq(&entry.binding)) || entry.user_code != code {
        return refuse("the device confirmation was not made on this browser's page").await;
    }
    let known = web
        .devices
        .find_update(|d| d.gateway_user_code() == Some(code.as_str()), |_| ())
        .is_some();
    if !known {
        return refuse("unknown or expired device code").await;
    }
    let token = random_key();
    let confirmed = DeviceBinding {
        binding: entry.binding,
        user_code: code.clone(),
    };
    if web
        .device_confirms
        .insert(&token, confirmed, peer.ip())
        .is_err()
    {
        return login_failed(
            StatusCode::TOO_MANY_REQUESTS,
            "too many sign-ins in progress from your address; finish one or wait a few minutes",
        );
    }
    let mut url = match reqwest::Url::parse("https://gatehouse.invalid/login") {
        Ok(u) => u,
        Err(_) => return login_failed(StatusCode::INTERNAL_SERVER_ERROR, "bad URL"),
    };
    url.query_pairs_mut()
        .append_pair("device", &code)
        .append_pair("confirm", &token);
    let target = format!("/login?{}", url.query().unwrap_or_default());
    let mut resp = Redirect::to(&target).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Upper-cases a user code and drops separators.
pub fn normalize_user_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(16)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_loopback_callback_is_a_redirect() {
        assert!(loopback_redirect("http://127.0.0.1:53123/callback"));
        assert!(loopback_redirect("http://localhost:8000/callback"));
        for bad in [
            "https://evil.example/callback",
            "//evil.example",
            "javascript:alert(1)",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:80@evil.example/callback",
            "http://user@127.0.0.1:5000/callback",
            "http://127.0.0.1:5000/callback?x=1",
            "http://127.0.0.1:5000/callback#x",
            "http://127.0.0.1:5000/other",
            "http://127.0.0.1.evil.example:5000/callback",
            "http://127.0.0.1:5000\\@evil.example/callback",
            "http://127.0.0.1:5000/%63allback",
        ] {
            assert!(!loopback_redirect(bad), "{bad}");
        }
    }

    #[test]
    fn device_confirmation_says_how_long_ago() {
        use std::time::Duration;
        assert_eq!(ago(Duration::from_secs(30)), "less than a minute ago");
        assert_eq!(ago(Duration::from_secs(61)), "1 minute ago");
        assert_eq!(ago(Duration::from_secs(600)), "10 minutes ago");
    }

    #[test]
    fn only_relative_paths_return() {
        assert!(relative_path("/"));
        assert!(relative_path("/device"));
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "/x\nLocation: https://evil.example",
            "evil",
            "/javascript:alert(1)",
        ] {
            assert!(!relative_path(bad), "{bad}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-gatehouse_login=xyz; b=2"),
        );
        assert_eq!(cookie(&h, BINDING_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, "__Host-gatehouse"), None);
    }
}
