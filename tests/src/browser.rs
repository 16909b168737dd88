//! A synchronous, browser-like HTTP client for sign-in flows: a cookie jar, manual redirects
//! (every hop recorded, the caller can stop before any URL), and plain HTML forms.
//!
//! It runs no JavaScript. Two kinds of script-driven pages are handled the way a browser with
//! scripts would: "auto-submit" pages (a form plus a script calling `.submit()`, e.g. the
//! `form_post` response mode) are submitted as they are. Forms are read with a small parser
//! that understands `<form>`, `<input>`, `<button>` and `<textarea>` (also outside a form,
//! through the `form="id"` attribute); that is all the harness's pages need.
//!
//! Built on `reqwest::blocking`, so do not call it on a thread that runs an async runtime (use
//! `tokio::task::spawn_blocking`, or a plain `#[test]`).
//!
//! ```no_run
//! use gatehouse_tests::oidc::{OidcProvider, OidcSpec, CLIENT_ID, CLIENT_SECRET, DANA, DANA_PASSWORD};
//! use gatehouse_tests::browser::{query_param, Browser};
//!
//! # fn main() -> anyhow::Result<()> {
//! let op = OidcProvider::start(
//!     OidcSpec::default_users().client(CLIENT_ID, CLIENT_SECRET, &["https://127.0.0.1:9/cb"]),
//! )?;
//! let mut browser = Browser::new()?;
//! let auth = format!(
//!     "{}/auth?client_id={CLIENT_ID}&response_type=code&scope=openid&redirect_uri=https://127.0.0.1:9/cb&code_challenge=...&code_challenge_method=S256",
//!     op.issuer()
//! );
//! let back = browser.sign_in(&auth, DANA, DANA_PASSWORD, |u| u.path() == "/cb")?;
//! let code = query_param(&back, "code");
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::cookie::{CookieStore as _, Jar};
use reqwest::header::HeaderMap;
pub use reqwest::Url;

/// Timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many redirects in a row.
const MAX_REDIRECTS: usize = 30;
/// At most this many pages (forms submitted) in one sign-in.
const MAX_STEPS: usize = 20;
/// How much of a page body error messages quote.
const BODY_IN_ERRORS: usize = 4000;

/// One request the browser made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// `GET` or `POST`.
    pub method: String,
    /// The requested URL.
    pub url: Url,
    /// The response status.
    pub status: u16,
    /// The resolved `Location` of a redirect.
    pub location: Option<Url>,
}

/// A response, read completely.
#[derive(Debug, Clone)]
pub struct Page {
    /// The method of the request.
    pub method: String,
    /// The requested URL (redirects are not followed by [`Browser::get`]).
    pub url: Url,
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Body (lossy UTF-8).
    pub body: String,
}

impl Page {
    /// Whether this is a 301/302/303/307/308 with a `Location`.
    pub fn is_redirect(&self) -> bool {
        matches!(self.status, 301 | 302 | 303 | 307 | 308) && self.location().is_some()
    }

    /// The `Location` header resolved against the page URL.
    pub fn location(&self) -> Option<Url> {
        let loc = self.header("location")?;
        self.url.join(loc).ok()
    }

    /// The first value of a header, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every `Set-Cookie` header value.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }

    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("{} {} is not JSON: {}", self.status, self.url, self.body))
    }

    /// The forms of the page, in document order.
    pub fn forms(&self) -> Vec<Form> {
        parse_forms(&self.body, &self.url)
    }

    /// The form with this `id`.
    pub fn form(&self, id: &str) -> Option<Form> {
        self.forms()
            .into_iter()
            .find(|f| f.id.as_deref() == Some(id))
    }

    /// The first form with an input named `name`.
    pub fn form_with_input(&self, name: &str) -> Option<Form> {
        self.forms().into_iter().find(|f| f.input(name).is_some())
    }

    /// The form of an auto-submitting page (a script calls `.submit()` on it), if this is one.
    pub fn auto_submit_form(&self) -> Option<Form> {
        let lower = self.body.to_ascii_lowercase();
        if !lower.contains("<script") || !lower.contains(".submit()") {
            return None;
        }
        self.forms().into_iter().next()
    }

    /// Status, URL and the start of the body, for error messages.
    pub fn describe(&self) -> String {
        let mut body = self.body.clone();
        if body.len() > BODY_IN_ERRORS {
            let mut cut = BODY_IN_ERRORS;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
            body.push_str("\n[...]");
        }
        format!("{} {} -> {}\n{}", self.method, self.url, self.status, body)
    }
}

/// One `<input>`, `<button>` or `<textarea>` of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The `name` attribute (may be empty).
    pub name: String,
    /// Lower-case `type` (`text` when absent; `submit` for a `<button>` without type,
    /// `textarea` for a textarea).
    pub kind: String,
    /// The `value` attribute (decoded).
    pub value: String,
    /// The `checked` attribute (checkboxes, radios).
    pub checked: bool,
}

/// A parsed HTML form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    /// The `id` attribute.
    pub id: Option<String>,
    /// Upper-case method (`GET` when absent).
    pub method: String,
    /// The action resolved against the page URL (the page URL when absent).
    pub action: Url,
    /// Its controls in document order (including ones outside it with `form="<id>"`).
    pub inputs: Vec<Input>,
}

impl Form {
    /// The first control named `name`.
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// The value of the first control named `name`.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.input(name).map(|i| i.value.as_str())
    }

    /// Whether the form has a control of this (lower-case) type.
    pub fn has_kind(&self, kind: &str) -> bool {
        self.inputs.iter().any(|i| i.kind == kind)
    }

    /// What submitting the form sends (without a submit button): named controls except
    /// buttons, files and unchecked checkboxes/radios.
    pub fn fields(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .filter(|i| !i.name.is_empty())
            .filter(|i| {
                !matches!(
                    i.kind.as_str(),
                    "submit" | "button" | "image" | "reset" | "file"
                )
            })
            .filter(|i| !matches!(i.kind.as_str(), "checkbox" | "radio") || i.checked)
            .map(|i| (i.name.clone(), i.value.clone()))
            .collect()
    }

    /// [`fields`](Self::fields) with `overrides` applied: a name already present gets the new
    /// value (its first occurrence), others are appended.
    pub fn fields_with(&self, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut fields = self.fields();
        for (name, value) in overrides {
            match fields.iter_mut().find(|(n, _)| n == name) {
                Some(f) => f.1 = value.to_string(),
                None => fields.push((name.to_string(), value.to_string())),
            }
        }
        fields
    }
}

/// Where [`Browser::follow`] ended.
#[derive(Debug, Clone)]
pub enum Followed {
    /// A redirect pointed at a URL the `stop` predicate matched; it was not requested.
    Stopped(Url),
    /// A response that is not a redirect.
    Page(Page),
}

impl Followed {
    /// The stopping URL, or an error quoting the page that arrived instead.
    pub fn stopped(self) -> anyhow::Result<Url> {
        match self {
            Followed::Stopped(url) => Ok(url),
            Followed::Page(p) => Err(anyhow!(
                "expected a redirect to the stop URL, got a page:\n{}",
                p.describe()
            )),
        }
    }

    /// The page, or an error naming the stopping URL.
    pub fn page(self) -> anyhow::Result<Page> {
        match self {
            Followed::Page(p) => Ok(p),
            Followed::Stopped(url) => Err(anyhow!("expected a page, stopped before {url}")),
        }
    }
}

/// The first value of query parameter `name` in `url`.
pub fn query_param(url: &Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The browser (see the [module docs](self)).
pub struct Browser {
    client: Client,
    bare: Client,
    jar: Arc<Jar>,
    root_ca: Option<PathBuf>,
    hops: Vec<Hop>,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("root_ca", &self.root_ca)
            .field("hops", &self.hops.len())
            .finish()
    }
}

fn build_client(root_ca: Option<&Path>, jar: Option<Arc<Jar>>) -> anyhow::Result<Client> {
    let mut b = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .user_agent("gatehouse-tests-browser/1");
    if let Some(jar) = jar {
        b = b.cookie_provider(jar);
    }
    if let Some(path) = root_ca {
        let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("parsing the PEM certificates in {}", path.display()))?;
        if certs.is_empty() {
            bail!("no certificate in {}", path.display());
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().context("building the HTTP client")
}

impl Browser {
    /// A browser with an empty cookie jar that trusts the system roots.
    pub fn new() -> anyhow::Result<Browser> {
        Browser::build(None)
    }

    /// A browser that also trusts the certificate(s) in the PEM file `pem_path` (e.g. the
    /// gateway's self-signed certificate; it must not be a CA certificate used as a server
    /// certificate).
    pub fn with_root_ca(pem_path: impl AsRef<Path>) -> anyhow::Result<Browser> {
        Browser::build(Some(pem_path.as_ref().to_path_buf()))
    }

    fn build(root_ca: Option<PathBuf>) -> anyhow::Result<Browser> {
        let jar = Arc::new(Jar::default());
        Ok(Browser {
            client: build_client(root_ca.as_deref(), Some(jar.clone()))?,
            bare: build_client(root_ca.as_deref(), None)?,
            jar,
            root_ca,
            hops: Vec::new(),
        })
    }

    /// Another browser with the same trusted roots, an empty cookie jar and no history (e.g.
    /// the attacker's browser in a login-CSRF test).
    pub fn fresh(&self) -> anyhow::Result<Browser> {
        Browser::build(self.root_ca.clone())
    }

    /// Empties the cookie jar (history is kept).
    pub fn clear_cookies(&mut self) -> anyhow::Result<()> {
        let jar = Arc::new(Jar::default());
        self.client = build_client(self.root_ca.as_deref(), Some(jar.clone()))?;
        self.jar = jar;
        Ok(())
    }

    /// The `Cookie` header this browser would send to `url`, if any.
    pub fn cookie_header(&self, url: impl AsRef<str>) -> anyhow::Result<Option<String>> {
        let url = parse_url(url.as_ref())?;
        Ok(self
            .jar
            .cookies(&url)
            .and_then(|v| v.to_str().ok().map(str::to_string)))
    }

    /// The value of cookie `name` as it would be sent to `url`.
    pub fn cookie(&self, url: impl AsRef<str>, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.cookie_header(url)?.and_then(|h| {
            h.split(';')
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }))
    }

    /// Stores a cookie as if `url` had answered `Set-Cookie: <set_cookie>`.
    pub fn set_cookie(&self, url: impl AsRef<str>, set_cookie: &str) -> anyhow::Result<()> {
        let url = parse_url(url.as_ref())?;
        self.jar.add_cookie_str(set_cookie, &url);
        Ok(())
    }

    /// Every request made so far, in order (including ones made without cookies).
    pub fn hops(&self) -> &[Hop] {
        &self.hops
    }

    /// Forgets the history.
    pub fn clear_hops(&mut self) {
        self.hops.clear();
    }

    /// The underlying client (with this browser's cookies, no redirects) for other requests;
    /// they are not recorded in [`hops`](Self::hops).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `GET url` with cookies; redirects are not followed.
    pub fn get(&mut self, url: impl AsRef<str>) -> anyhow::Result<Page> {
        let url = parse_url(url.as_ref())?;
        let req = self.client.get(url.clone());
        self.send("GET", url, req)
    }

    /// `GET url` without sending or storing any cookie; redirects are not followed.
    pub fn get_without_cookies(&mut self, url: impl AsRef<str>) -> anyhow::Result<Page> {
        let url = parse_url(url.as_ref())?;
        let req = self.bare.get(url.clone());
        self.send("GET", url, req)
    }

    /// `POST url` with an `application/x-www-form-urlencoded` body, with cookies; redirects are
    /// not followed.
    pub fn post_form(
        &mut self,
        url: impl AsRef<str>,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<Page> {
        let url = parse_url(url.as_ref())?;
        let req = self.client.post(url.clone()).form(fields);
        self.send("POST", url, req)
    }

    /// Like [`post_form`](Self::post_form) but without sending or storing any cookie.
    pub fn post_form_without_cookies(
        &mut self,
        url: impl AsRef<str>,
        fields: &[(&str, &str)],
    ) -> anyhow::Result<Page> {
        let url = parse_url(url.as_ref())?;
        let req = self.bare.post(url.clone()).form(fields);
        self.send("POST", url, req)
    }

    /// Submits `form` with `overrides` applied (see [`Form::fields_with`]); redirects are not
    /// followed.
    pub fn submit(&mut self, form: &Form, overrides: &[(&str, &str)]) -> anyhow::Result<Page> {
        let fields = form.fields_with(overrides);
        if form.method == "POST" {
            let req = self.client.post(form.action.clone()).form(&fields);
            self.send("POST", form.action.clone(), req)
        } else {
            let mut url = form.action.clone();
            url.query_pairs_mut().clear().extend_pairs(&fields);
            let req = self.client.get(url.clone());
            self.send("GET", url, req)
        }
    }

    fn send(&mut self, method: &str, url: Url, req: RequestBuilder) -> anyhow::Result<Page> {
        let resp = req
            .send()
            .with_context(|| format!("{method} {url} failed"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .with_context(|| format!("reading the body of {method} {url}"))?;
        let page = Page {
            method: method.to_string(),
            url,
            status,
            headers,
            body,
        };
        self.hops.push(Hop {
            method: page.method.clone(),
            url: page.url.clone(),
            status,
            location: page.location().filter(|_| page.is_redirect()),
        });
        Ok(page)
    }

    /// `GET url`, then follows redirects (with `GET`) until `stop(next)` is true for the next URL
    /// (returned without requesting it) or a response is not a redirect. `stop` is not asked
    /// about `url` itself.
    pub fn follow(
        &mut self,
        url: impl AsRef<str>,
        stop: impl Fn(&Url) -> bool,
    ) -> anyhow::Result<Followed> {
        let page = self.get(url)?;
        self.follow_from(page, &stop)
    }

    /// Follows the redirects starting at `page` (a response already received) like
    /// [`follow`](Self::follow).
    pub fn follow_from(
        &mut self,
        mut page: Page,
        stop: &dyn Fn(&Url) -> bool,
    ) -> anyhow::Result<Followed> {
        for _ in 0..MAX_REDIRECTS {
            let Some(next) = page.location().filter(|_| page.is_redirect()) else {
                return Ok(Followed::Page(page));
            };
            if stop(&next) {
                return Ok(Followed::Stopped(next));
            }
            if page.method == "POST" && matches!(page.status, 307 | 308) {
                bail!(
                    "{} after POST {} would repeat the POST; not supported",
                    page.status,
                    page.url
                );
            }
            page = self.get(next.as_str())?;
        }
        bail!(
            "more than {MAX_REDIRECTS} redirects; last: {}",
            page.describe()
        )
    }

    /// Signs in through the provider: follows from `start_url` (e.g. the gateway's login URL
    /// that redirects to the provider), fills and submits the login form (any form with a
    /// password input: `username`/`password`), submits auto-submit pages, and follows the
    /// redirects back until `stop` matches; returns that URL (not requested). When the provider
    /// still has a session for this browser no login form appears (single sign-on).
    ///
    /// Fails, quoting the last page, when the login is refused (the form comes back) or the
    /// flow ends on a page instead of a URL matching `stop`.
    pub fn sign_in(
        &mut self,
        start_url: impl AsRef<str>,
        username: &str,
        password: &str,
        stop: impl Fn(&Url) -> bool,
    ) -> anyhow::Result<Url> {
        let first = self.follow(start_url, &stop)?;
        match self.drive(first, Some((username, password)), None, &stop)? {
            Followed::Stopped(url) => Ok(url),
            Followed::Page(page) => Err(anyhow!(
                "sign-in of {username} ended on a page, not at the stop URL:\n{}",
                page.describe()
            )),
        }
    }

    /// Approves a device authorization: opens `verification_uri` (the provider's code entry
    /// page), submits `user_code`, confirms, signs in as `username` if the provider asks, and
    /// checks that the success page arrives, which it returns.
    pub fn confirm_device(
        &mut self,
        verification_uri: impl AsRef<str>,
        user_code: &str,
        username: &str,
        password: &str,
    ) -> anyhow::Result<Page> {
        let never = |_: &Url| false;
        let first = self.follow(verification_uri, never)?;
        let last = self.drive(first, Some((username, password)), Some(user_code), &never)?;
        let page = last.page()?;
        if page.status != 200 || !page.body.contains("device-success") {
            bail!(
                "device confirmation for {username} did not reach the success page:\n{}",
                page.describe()
            );
        }
        Ok(page)
    }

    /// The page loop of [`sign_in`](Self::sign_in) and [`confirm_device`](Self::confirm_device):
    /// answers login forms, the device code form, device confirmation and auto-submit pages,
    /// and returns the first page it cannot answer (or the stop URL).
    fn drive(
        &mut self,
        mut at: Followed,
        creds: Option<(&str, &str)>,
        user_code: Option<&str>,
        stop: &dyn Fn(&Url) -> bool,
    ) -> anyhow::Result<Followed> {
        let mut login_sent = false;
        let mut code_sent = false;
        for _ in 0..MAX_STEPS {
            let page = match at {
                Followed::Stopped(url) => return Ok(Followed::Stopped(url)),
                Followed::Page(p) => p,
            };
            let forms = page.forms();
            let next = if let Some(form) = forms.iter().find(|f| f.has_kind("password")) {
                let Some((username, password)) = creds else {
                    return Ok(Followed::Page(page));
                };
                if login_sent {
                    bail!(
                        "the login of {username} was refused (the login form came back):\n{}",
                        page.describe()
                    );
                }
                login_sent = true;
                let user_field = form
                    .inputs
                    .iter()
                    .find(|i| matches!(i.kind.as_str(), "text" | "email") && !i.name.is_empty())
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| "username".to_string());
                let pass_field = form
                    .inputs
                    .iter()
                    .find(|i| i.kind == "password")
                    .map(|i| i.name.clone())
                    .unwrap_or_else(|| "password".to_string());
                self.submit(form, &[(&user_field, username), (&pass_field, password)])?
            } else if let (Some(code), Some(form)) = (
                user_code,
                forms
                    .iter()
                    .find(|f| f.input("user_code").is_some_and(|i| i.kind == "text")),
            ) {
                if code_sent {
                    bail!(
                        "the user code {code} was refused (the code form came back):\n{}",
                        page.describe()
                    );
                }
                code_sent = true;
                self.submit(form, &[("user_code", code)])?
            } else if let Some(form) = forms
                .iter()
                .find(|f| f.method == "POST" && f.value("confirm").is_some())
            {
                self.submit(form, &[])?
            } else if let Some(form) = page.auto_submit_form() {
                self.submit(&form, &[])?
            } else {
                return Ok(Followed::Page(page));
            };
            at = self.follow_from(next, stop)?;
        }
        bail!("more than {MAX_STEPS} pages without reaching the end of the flow")
    }
}

fn parse_url(s: &str) -> anyhow::Result<Url> {
    Url::parse(s).with_context(|| format!("invalid URL {s:?}"))
}

// ---------------------------------------------------------------------------------------------
// A tiny HTML form parser: enough for the forms of the harness's pages, not a general parser.

struct Tag {
    name: String,
    closing: bool,
    attrs: Vec<(String, String)>,
}

impl Tag {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.attrs.iter().any(|(k, _)| k == name)
    }
}

/// Parses the tag starting at `html[start] == '<'`; returns it and the index after `>`.
fn parse_tag(html: &str, start: usize) -> Option<(Tag, usize)> {
    let bytes = html.as_bytes();
    let mut i = start + 1;
    let closing = bytes.get(i) == Some(&b'/');
    if closing {
        i += 1;
    }
    let name_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'-') {
        i += 1;
    }
    if i == name_start {
        return None;
    }
    let name = html[name_start..i].to_ascii_lowercase();
    let mut attrs = Vec::new();
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        match bytes.get(i) {
            None => return None,
            Some(b'>') => {
                return Some((
                    Tag {
                        name,
                        closing,
                        attrs,
                    },
                    i + 1,
                ))
            }
            _ => {}
        }
        let an_start = i;
        while i < bytes.len()
            && !bytes[i].is_ascii_whitespace()
            && !matches!(bytes[i], b'=' | b'>' | b'/')
        {
            i += 1;
        }
        let an = html[an_start..i].to_ascii_lowercase();
        if an.is_empty() {
            i += 1;
            continue;
        }
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if bytes.get(i) == Some(&b'=') {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            match bytes.get(i) {
                Some(&q) if q == b'"' || q == b'\'' => {
                    let vs = i + 1;
                    let ve = html[vs..].find(q as char).map(|p| vs + p)?;
                    value = decode_entities(&html[vs..ve]);
                    i = ve + 1;
                }
                _ => {
                    let vs = i;
                    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                        i += 1;
                    }
                    value = decode_entities(&html[vs..i]);
                }
            }
        }
        attrs.push((an, value));
    }
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let entity = &rest[1..semi];
            let ch = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => entity.strip_prefix('#').and_then(|num| {
                    let code = match num.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => num.parse::<u32>().ok(),
                    };
                    code.and_then(char::from_u32)
                }),
            };
            ch.map(|c| (c, semi + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Finds the end (exclusive of the closing tag) of raw-text content such as `<script>`.
fn skip_raw(html: &str, from: usize, tag: &str) -> (usize, usize) {
    let lower = html[from..].to_ascii_lowercase();
    match lower.find(&format!("</{tag}")) {
        Some(p) => {
            let end = from + p;
            let after = html[end..]
                .find('>')
                .map(|q| end + q + 1)
                .unwrap_or(html.len());
            (end, after)
        }
        None => (html.len(), html.len()),
    }
}

fn parse_forms(html: &str, base: &Url) -> Vec<Form> {
    let mut forms: Vec<Form> = Vec::new();
    // Controls outside their form, attached by id afterwards.
    let mut detached: Vec<(String, Input)> = Vec::new();
    let mut current: Option<usize> = None;
    let mut i = 0;
    while let Some(p) = html[i..].find('<') {
        let start = i + p;
        if html[start..].starts_with("<!--") {
            i = html[start..]
                .find("-->")
                .map(|q| start + q + 3)
                .unwrap_or(html.len());
            continue;
        }
        let Some((tag, after)) = parse_tag(html, start) else {
            i = start + 1;
            continue;
        };
        i = after;
        if tag.closing {
            if tag.name == "form" {
                current = None;
            }
            continue;
        }
        match tag.name.as_str() {
            "script" | "style" => {
                i = skip_raw(html, after, &tag.name).1;
            }
            "form" => {
                let action = tag
                    .attr("action")
                    .filter(|a| !a.trim().is_empty())
                    .and_then(|a| base.join(a.trim()).ok())
                    .unwrap_or_else(|| base.clone());
                forms.push(Form {
                    id: tag.attr("id").map(str::to_string),
                    method: tag.attr("method").unwrap_or("get").to_ascii_uppercase(),
                    action,
                    inputs: Vec::new(),
                });
                current = Some(forms.len() - 1);
            }
            "input" | "button" | "textarea" => {
                let kind = match tag.name.as_str() {
                    "input" => tag.attr("type").unwrap_or("text").to_ascii_lowercase(),
                    "button" => tag.attr("type").unwrap_or("submit").to_ascii_lowercase(),
                    _ => "textarea".to_string(),
                };
                let value = if tag.name == "textarea" {
                    let (end, next) = skip_raw(html, after, "textarea");
                    i = next;
                    decode_entities(&html[after..end])
                } else {
                    tag.attr("value").unwrap_or("").to_string()
                };
                let input = Input {
                    name: tag.attr("name").unwrap_or("").to_string(),
                    kind,
                    value,
                    checked: tag.has("checked"),
                };
                match (tag.attr("form"), current) {
                    (Some(owner), _) => detached.push((owner.to_string(), input)),
                    (None, Some(f)) => {
                        if let Some(form) = forms.get_mut(f) {
                            form.inputs.push(input);
                        }
                    }
                    (None, None) => {}
                }
            }
            _ => {}
        }
    }
    for (owner, input) in detached {
        if let Some(form) = forms.iter_mut().find(|f| f.id.as_deref() == Some(&owner)) {
            form.inputs.push(input);
        }
    }
    forms
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms_inputs_and_entities() {
        let base = Url::parse("http://127.0.0.1:1/device?x=1").unwrap();
        let html = r#"<html><script>var s = "<form>";</script>
<!-- <form id="commented"> -->
<form id="op.deviceInputForm" novalidate method="post" action="http://127.0.0.1:1/device">
  <input type="hidden" name="xsrf" value="a&amp;b&#39;c"/>
  <input
    type="text" name="user_code" placeholder="Enter code" autofocus autocomplete="off"></input>
  <input type=checkbox name=remember>
  <textarea name="note">x &lt; y</textarea>
</form>
<button type="submit" form="op.deviceInputForm">Continue</button>
<input type="hidden" name="logout" value="yes" form="op.deviceInputForm">
<FORM ACTION='/other'><INPUT NAME='q' VALUE='1'></FORM>"#;
        let forms = parse_forms(html, &base);
        assert_eq!(forms.len(), 2);
        let f = &forms[0];
        assert_eq!(f.id.as_deref(), Some("op.deviceInputForm"));
        assert_eq!(f.method, "POST");
        assert_eq!(f.value("xsrf"), Some("a&b'c"));
        assert_eq!(f.input("user_code").map(|i| i.kind.as_str()), Some("text"));
        assert_eq!(f.value("note"), Some("x < y"));
        assert!(f.has_kind("submit"));
        assert_eq!(
            f.fields_with(&[("user_code", "ABCD-EFGH")]),
            vec![
                ("xsrf".to_string(), "a&b'c".to_string()),
                ("user_code".to_string(), "ABCD-EFGH".to_string()),
                ("note".to_string(), "x < y".to_string()),
                ("logout".to_string(), "yes".to_string()),
            ]
        );
        let g = &forms[1];
        assert_eq!(g.method, "GET");
        assert_eq!(g.action.as_str(), "http://127.0.0.1:1/other");
        assert_eq!(g.value("q"), Some("1"));
    }

    #[test]
    fn decodes_numeric_entities_and_leaves_stray_ampersands() {
        assert_eq!(
            decode_entities("a&#x2F;b&#47;c & d &bogus; e"),
            "a/b/c & d &bogus; e"
        );
    }
}
