//! The OpenID relying party: the gateway is a confidential client of the company's provider.
//!
//! - Discovery and the provider's JWKS are fetched lazily and cached, so the gateway starts (and
//!   serves service-account tokens) while the provider is down. An ID token signed with a `kid`
//!   the cached JWKS lacks triggers one refetch, at most every [`JWKS_REFETCH_EVERY`].
//! - Authorization code flow with PKCE (S256), `state` and a single-use `nonce`; the redirect
//!   URI is exactly `{http.public_url}/oidc/callback`.
//! - The device authorization grant (RFC 8628) against the provider, polled one request per
//!   CLI poll.
//! - Refresh token grants to re-check live logins: `invalid_grant` means the provider no longer
//!   vouches for the person.
//!
//! ID tokens are verified by the `openidconnect` crate (signature with an asymmetric algorithm
//! only, `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`); the verified payload is then read as JSON
//! for the configurable username, groups, `amr` and `acr` claims.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use openidconnect::core::{
    CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope,
    SignatureVerificationError, TokenResponse,
};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::OidcConfig;

/// Shortest interval between two JWKS refetches caused by an unknown `kid`.
pub const JWKS_REFETCH_EVERY: Duration = Duration::from_secs(60);
/// How long cached discovery metadata is used before it is fetched again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Timeout of every request to the provider.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response accepted from the provider.
const MAX_PROVIDER_RESPONSE: usize = 1 << 20;

/// Why a login failed. The reason is audited; the browser sees a generic page.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider is unreachable or misbehaving: {0}")]
    Provider(String),
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the ID token is invalid: {0}")]
    IdToken(String),
    #[error("the ID token lacks a usable `{0}` claim")]
    Claim(String),
    #[error("no ID token in the provider's token response")]
    NoIdToken,
}

/// What the gateway learned about a person from a verified ID token.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The Gatehouse (and PostgreSQL) user name, from `oidc.username_claim`.
    pub username: String,
    /// The provider's `sub`.
    pub subject: String,
    pub email: Option<String>,
    /// The provider's groups, before mapping.
    pub provider_groups: Vec<String>,
    pub amr: Vec<String>,
    pub acr: Option<String>,
    pub mfa: bool,
    /// When the ID token expires (Unix seconds).
    pub id_token_exp: u64,
    /// Kept on the gateway, never handed out; used for re-checks.
    pub refresh_token: Option<String>,
    /// When the person last authenticated at the provider (`auth_time`, Unix seconds).
    pub auth_time: Option<u64>,
}

/// Clock skew allowed between the provider and the gateway for `auth_time`.
const AUTH_TIME_LEEWAY_SECS: u64 = 30;

/// A fresh sign-in asked for at `since` must show an `auth_time` at or after it (less the
/// clock leeway); a missing `auth_time` fails, as `max_age` makes it required (OpenID Connect
/// Core 3.1.2.1).
fn check_fresh(auth_time: Option<u64>, since: u64) -> Result<(), LoginError> {
    match auth_time {
        Some(t) if t + AUTH_TIME_LEEWAY_SECS >= since => Ok(()),
        Some(t) => Err(LoginError::IdToken(format!(
            "the provider did not sign you in again (it reused a sign-in from {} s before this              login started); a device login needs a fresh sign-in",
            since - t
        ))),
        None => Err(LoginError::IdToken(
            "the provider did not say when you signed in (no auth_time), which a device login              needs to show a fresh sign-in"
                .into(),
        )),
    }
}

/// The secrets of one authorization request, kept until its callback.
pub struct AuthRequest {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

/// A started device authorization at the provider.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceStart {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// The outcome of one device token poll.
pub enum DevicePoll {
    Pending,
    SlowDown,
    Done(Box<Identity>),
}

/// The outcome of a refresh re-check.
pub enum Recheck {
    /// The provider still vouches for the person (possibly with a new refresh token).
    Valid(Option<String>),
    /// The provider refused the grant: the account or its session is gone.
    Gone(String),
}

struct Discovered {
    metadata: CoreProviderMetadata,
    device_endpoint: Option<String>,
    token_endpoint: String,
    fetched: Instant,
}

/// The relying party.
pub struct RelyingParty {
    config: OidcConfig,
    http: reqwest::Client,
    cache: Mutex<Option<std::sync::Arc<Discovered>>>,
    last_refetch: Mutex<Option<Instant>>,
}

fn provider_err(e: impl std::fmt::Display) -> LoginError {
    LoginError::Provider(e.to_string())
}

/// Algorithms accepted for ID tokens: asymmetric only, so a token "signed" with a secret the
/// attacker knows (HS256 with the client secret or a public key) is refused.
const ASYMMETRIC: [CoreJwsSigningAlgorithm; 10] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EcdsaP521Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EdDsa,
];

impl RelyingParty {
    pub fn new(config: OidcConfig) -> Result<RelyingParty, LoginError> {
        let mut builder = reqwest::Client::builder()
            // Following redirects from the provider's endpoints invites SSRF; never do it.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .connect_timeout(PROVIDER_TIMEOUT);
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                LoginError::Provider(format!("cannot read oidc.ca_file `{}`: {e}", ca.display()))
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(provider_err)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(provider_err)?;
        Ok(RelyingParty {
            config,
            http,
            cache: Mutex::new(None),
            last_refetch: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, LoginError> {
        let resp = self.http.get(url).send().await.map_err(provider_err)?;
        let status = resp.status();
        let body = read_limited(resp).await?;
        if !status.is_success() {
            return Err(LoginError::Provider(format!("GET {url}: HTTP {status}")));
        }
        serde_json::from_slice(&body).map_err(|e| LoginError::Provider(format!("GET {url}: {e}")))
    }

    async fn fetch(&self) -> Result<Discovered, LoginError> {
        let url = format!("{}/.well-known/openid-configuration", self.config.issuer);
        let doc = self.get_json(&url).await?;
        // The issuer in the document must be exactly the configured one (OIDC Discovery 4.3).
        let issuer = doc.get("issuer").and_then(|v| v.as_str()).unwrap_or("");
        if issuer.trim_end_matches('/') != self.config.issuer {
            return Err(LoginError::Provider(format!(
                "discovery document names issuer `{issuer}`, expected `{}`",
                self.config.issuer
            )));
        }
        let device_endpoint = doc
            .get("device_authorization_endpoint")
            .and_then(|v| v.as_str())
            .map(String::from);
        let mut metadata: CoreProviderMetadata =
            serde_json::from_value(doc).map_err(provider_err)?;
        let token_endpoint = metadata
            .token_endpoint()
            .map(|u| u.to_string())
            .ok_or_else(|| LoginError::Provider("the provider has no token endpoint".into()))?;
        let jwks = self.get_json(metadata.jwks_uri().url().as_str()).await?;
        let jwks: CoreJsonWebKeySet = serde_json::from_value(jwks).map_err(provider_err)?;
        metadata = metadata.set_jwks(jwks);
        Ok(Discovered {
            metadata,
            device_endpoint,
            token_endpoint,
            fetched: Instant::now(),
        })
    }

    async fn discovered(&self) -> Result<std::sync::Arc<Discovered>, LoginError> {
        let mut cache = self.cache.lock().await;
        if let Some(d) = cache.as_ref() {
            if d.fetched.elapsed() < METADATA_TTL {
                return Ok(d.clone());
            }
        }
        let fresh = std::sync::Arc::new(self.fetch().await?);
        *cache = Some(fresh.clone());
        Ok(fresh)
    }

    /// Refetches discovery and JWKS after an unknown `kid`, unless that happened recently.
    async fn refetch_for_unknown_kid(&self) -> Result<bool, LoginError> {
        {
            let mut last = self.last_refetch.lock().await;
            if last.is_some_and(|t| t.elapsed() < JWKS_REFETCH_EVERY) {
                return Ok(false);
            }
            *last = Some(Instant::now());
        }
        let fresh = std::sync::Arc::new(self.fetch().await?);
        *self.cache.lock().await = Some(fresh);
        tracing::info!("refetched the provider's JWKS after an unknown key id");
        Ok(true)
    }

    fn client(
        &self,
        d: &Discovered,
    ) -> Result<
        CoreClient<
            openidconnect::EndpointSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointNotSet,
            openidconnect::EndpointMaybeSet,
            openidconnect::EndpointMaybeSet,
        >,
        LoginError,
    > {
        let redirect = RedirectUrl::new(self.config.redirect_url.clone()).map_err(provider_err)?;
        Ok(CoreClient::from_provider_metadata(
            d.metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            Some(ClientSecret::new(
                self.config.client_secret.expose().clone(),
            )),
        )
        .set_redirect_uri(redirect))
    }

    /// Whether the provider offers the device authorization grant.
    pub async fn provider_device_flow(&self) -> Result<bool, LoginError> {
        Ok(self.discovered().await?.device_endpoint.is_some())
    }

    /// Builds an authorization request with fresh `state`, `nonce` and PKCE verifier.
    ///
    /// With `fresh_sign_in` the provider is asked to authenticate the person again
    /// (`prompt=login`, `max_age=0`) rather than complete silently from an existing session:
    /// device logins use it, so a link alone cannot finish one for whoever is signed in.
    pub async fn authorize(&self, fresh_sign_in: bool) -> Result<AuthRequest, LoginError> {
        let d = self.discovered().await?;
        let client = self.client(&d)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(scope.clone()));
        }
        if fresh_sign_in {
            req = req
                .add_prompt(CoreAuthPrompt::Login)
                .set_max_age(Duration::from_secs(0));
        }
        let (url, state, nonce) = req.url();
        Ok(AuthRequest {
            url: url.to_string(),
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) and verifies the ID token
    /// against the expected `nonce`. `fresh_since`: the Unix time a fresh sign-in was asked
    /// for ([`authorize`](Self::authorize) with `fresh_sign_in`); the ID token's `auth_time`
    /// must then show that the person signed in at the provider since, not that an older
    /// provider session was reused by a provider that ignored `prompt=login`.
    pub async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
        fresh_since: Option<u64>,
    ) -> Result<Identity, LoginError> {
        let d = self.discovered().await?;
        let client = self.client(&d)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(provider_err)?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = response.id_token().ok_or(LoginError::NoIdToken)?.clone();
        let refresh = response.refresh_token().map(|r| r.secret().clone());
        let nonce = Nonce::new(nonce.to_string());
        let identity = self
            .verify_id_token(&id_token, Some(&nonce), refresh)
            .await?;
        if let Some(since) = fresh_since {
            check_fresh(identity.auth_time, since)?;
        }
        Ok(identity)
    }

    /// Verifies an ID token; `nonce` is `None` for grants that have none (device, refresh).
    async fn verify_id_token(
        &self,
        id_token: &CoreIdToken,
        nonce: Option<&Nonce>,
        refresh_token: Option<String>,
    ) -> Result<Identity, LoginError> {
        let mut attempt = 0;
        loop {
            let d = self.discovered().await?;
            let client = self.client(&d)?;
            let allowed: Vec<CoreJwsSigningAlgorithm> = d
                .metadata
                .id_token_signing_alg_values_supported()
                .iter()
                .filter(|a| ASYMMETRIC.contains(a))
                .cloned()
                .collect();
            let verifier = client.id_token_verifier().set_allowed_algs(allowed);
            let result = match nonce {
                Some(n) => id_token.claims(&verifier, n).map(|_| ()),
                None => id_token
                    .claims(&verifier, |_: Option<&Nonce>| Ok(()))
                    .map(|_| ()),
            };
            match result {
                Ok(()) => break,
                Err(ClaimsVerificationError::SignatureVerification(
                    SignatureVerificationError::NoMatchingKey,
                )) if attempt == 0 && self.refetch_for_unknown_kid().await? => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(LoginError::IdToken(e.to_string())),
            }
        }
        let payload = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|p| B64URL.decode(p).ok())
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
            .ok_or_else(|| LoginError::IdToken("payload is not JSON".into()))?;
        self.identity(&payload, refresh_token)
    }

    fn identity(
        &self,
        claims: &serde_json::Value,
        refresh_token: Option<String>,
    ) -> Result<Identity, LoginError> {
        let c = &self.config;
        let username = claims
            .get(&c.username_claim)
            .and_then(|v| v.as_str())
            .filter(|u| valid_username(u))
            .ok_or_else(|| LoginError::Claim(c.username_claim.clone()))?
            .to_string();
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            match v {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_str())
                    .take(256)
                    .map(String::from)
                    .collect(),
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        };
        let provider_groups = strings(claims.get(&c.groups_claim));
        let amr = strings(claims.get("amr"));
        let acr = claims.get("acr").and_then(|v| v.as_str()).map(String::from);
        let mfa = amr.iter().any(|m| c.mfa_amr.contains(m))
            || acr.as_ref().is_some_and(|a| c.mfa_acr.contains(a));
        Ok(Identity {
            username,
            subject: claims
                .get("sub")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string(),
            email: claims
                .get("email")
                .and_then(|v| v.as_str())
                .map(String::from),
            provider_groups,
            amr,
            acr,
            mfa,
            id_token_exp: claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0),
            auth_time: claims.get("auth_time").and_then(|v| v.as_u64()),
            refresh_token,
        })
    }

    fn basic_auth(&self) -> String {
        // RFC 6749 2.3.1: form-urlencode both parts before Basic encoding.
        let id = form_urlencode(&self.config.client_id);
        let secret = form_urlencode(self.config.client_secret.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    }

    /// Starts a device authorization at the provider.
    pub async fn device_start(&self) -> Result<DeviceStart, LoginError> {
        let d = self.discovered().await?;
        let endpoint = d.device_endpoint.clone().ok_or_else(|| {
            LoginError::Provider("the provider has no device authorization endpoint".into())
        })?;
        let scope = self.config.scopes.join(" ");
        let resp = self
            .http
            .post(&endpoint)
            .header("authorization", self.basic_auth())
            .form(&[("scope", scope.as_str())])
            .send()
            .await
            .map_err(provider_err)?;
        let status = resp.status();
        let body = read_limited(resp).await?;
        if !status.is_success() {
            return Err(LoginError::Refused(oauth_error(&body, status)));
        }
        serde_json::from_slice(&body).map_err(provider_err)
    }

    /// Polls the provider's token endpoint once for a device code.
    pub async fn device_poll(&self, device_code: &str) -> Result<DevicePoll, LoginError> {
        let d = self.discovered().await?;
        let resp = self
            .http
            .post(&d.token_endpoint)
            .header("authorization", self.basic_auth())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code),
            ])
            .send()
            .await
            .map_err(provider_err)?;
        let status = resp.status();
        let body = read_limited(resp).await?;
        if !status.is_success() {
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_default();
            return match error.as_str() {
                "authorization_pending" => Ok(DevicePoll::Pending),
                "slow_down" => Ok(DevicePoll::SlowDown),
                _ => Err(LoginError::Refused(oauth_error(&body, status))),
            };
        }
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(provider_err)?;
        let id_token = v
            .get("id_token")
            .and_then(|t| t.as_str())
            .ok_or(LoginError::NoIdToken)?;
        let id_token: CoreIdToken = id_token
            .parse()
            .map_err(|e: serde_json::Error| LoginError::IdToken(e.to_string()))?;
        let refresh = v
            .get("refresh_token")
            .and_then(|t| t.as_str())
            .map(String::from);
        let identity = self.verify_id_token(&id_token, None, refresh).await?;
        Ok(DevicePoll::Done(Box::new(identity)))
    }

    /// Uses a refresh token to ask the provider whether it still vouches for the person.
    pub async fn recheck(&self, refresh_token: &str) -> Result<Recheck, LoginError> {
        let d = self.discovered().await?;
        let client = self.client(&d)?;
        let token = RefreshToken::new(refresh_token.to_string());
        match client
            .exchange_refresh_token(&token)
            .map_err(provider_err)?
            .request_async(&self.http)
            .await
        {
            Ok(r) => Ok(Recheck::Valid(
                r.refresh_token().map(|t| t.secret().clone()),
            )),
            Err(openidconnect::RequestTokenError::ServerResponse(e)) => {
                Ok(Recheck::Gone(e.error().to_string()))
            }
            Err(e) => Err(token_error(e)),
        }
    }
}

fn token_error<RE: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(
    e: openidconnect::RequestTokenError<RE, T>,
) -> LoginError {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => LoginError::Refused(r.to_string()),
        openidconnect::RequestTokenError::Request(r) => LoginError::Provider(r.to_string()),
        openidconnect::RequestTokenError::Parse(p, _) => LoginError::Provider(p.to_string()),
        openidconnect::RequestTokenError::Other(o) => LoginError::Provider(o),
    }
}

fn oauth_error(body: &[u8], status: reqwest::StatusCode) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?.as_str()?.to_string();
            Some(match v.get("error_description").and_then(|d| d.as_str()) {
                Some(d) => format!("{e}: {}", d.chars().take(200).collect::<String>()),
                None => e,
            })
        })
        .unwrap_or_else(|| format!("HTTP {status}"))
}

async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>, LoginError> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_PROVIDER_RESPONSE as u64)
    {
        return Err(LoginError::Provider("response too large".into()));
    }
    let mut resp = resp;
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(provider_err)? {
        if out.len() + chunk.len() > MAX_PROVIDER_RESPONSE {
            return Err(LoginError::Provider("response too large".into()));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A user name usable as a PostgreSQL role name and in logs: 1-64 of `A-Za-z0-9._@-`.
pub fn valid_username(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 64
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(valid_username("alice"));
        assert!(valid_username("a.b-c_d@example.com"));
        assert!(!valid_username(""));
        assert!(!valid_username("alice bob"));
        assert!(!valid_username("al\"ice"));
        assert!(!valid_username(&"a".repeat(65)));
    }

    #[test]
    fn a_fresh_sign_in_needs_an_auth_time_since_the_login_started() {
        let since = 1_800_000_000;
        assert!(check_fresh(Some(since), since).is_ok());
        assert!(check_fresh(Some(since + 5), since).is_ok());
        // Clock skew between provider and gateway.
        assert!(check_fresh(Some(since - 30), since).is_ok());
        // A provider session from an hour ago, reused despite prompt=login.
        let old = check_fresh(Some(since - 3600), since)
            .unwrap_err()
            .to_string();
        assert!(old.contains("did not sign you in again"), "{old}");
        assert!(old.contains("3600 s"), "{old}");
        let none = check_fresh(None, since).unwrap_err().to_string();
        assert!(none.contains("no auth_time"), "{none}");
    }

    #[test]
    fn client_secret_is_form_encoded_for_basic_auth() {
        assert_eq!(form_urlencode("a b:c/d"), "a+b%3Ac%2Fd");
        assert_eq!(form_urlencode("AZaz09-._*"), "AZaz09-._*");
    }
}
