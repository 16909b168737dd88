//! Gateway tokens: EdDSA (Ed25519) JWTs with `kid`, checked for `iss`, `aud`, `exp`, `nbf`, `iat`
//! and `jti`, with at most 30 s of clock leeway. Only EdDSA is accepted: `none` and HMAC
//! algorithms are refused before any signature check, which rules out algorithm confusion.
//!
//! Two kinds share the format: tokens an admin issues for service accounts
//! (`gatehouse token issue`, [`TokenAuthority::issue_service`]: a login row of flow `token`
//! whose id is the token's `sid` and `jti`, so it can be listed and revoked, but no `auth`
//! claim), and credentials issued after a single sign-on login, which also carry the login id
//! (`sid`), the provider's `amr` and whether the sign-in used MFA. Both have
//! the gateway's own `typ` and `aud`, so an identity provider's token is never taken for one.
//! Keys come from the [`Keyring`]: the current key signs, retired keys still verify.
//!
//! # Doors
//!
//! A credential's `aud` says which doors take it ([`Door`]). The plain audience
//! (`tokens.audience`) is the API's: a sign-in's credential, which never leaves gatehouse's own
//! clients (they verify the gateway), and issued tokens, which also open every front door.
//! `<audience>:postgres` is a PostgreSQL password: `gatehouse psql` and `gatehouse env` get one
//! from the API ([`TokenAuthority::issue_for_door`]) for each use, and `gatehouse token issue
//! --door postgres` issues one. The PostgreSQL door refuses a sign-in's credential (a
//! PostgreSQL client sends its password to whatever server answers, so a person's API
//! credential must never be one) and the API refuses door credentials, so a password captured
//! by a spoofed server is no API bearer.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keyring::Keyring;
use crate::keys::KeyError;

/// Clock leeway for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest accepted token text; anything longer is refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 8192;
/// The JWT `typ` of gateway tokens, distinct from any identity provider's tokens.
pub const TOKEN_TYP: &str = "gatehouse-access+jwt";

/// The claims of a gateway token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    /// How the holder authenticated: absent for issued tokens, `oidc` after a login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// The login this credential belongs to (revoked together at logout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Authentication methods the provider reported (`amr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Whether the sign-in used more than one factor.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mfa: bool,
}

impl Claims {
    /// The `auth_method` policies see: `oidc` for login credentials, else `gateway_token`.
    pub fn auth_method(&self) -> &str {
        self.auth.as_deref().unwrap_or("gateway_token")
    }

    /// The login a sign-in's credential belongs to, which `logout` may end. `None` for an
    /// issued token, even one whose `sid` names its row (flow `token`): the signed claims
    /// say which it is (no `auth`), and such a token ends at its expiry or by
    /// `gatehouse token revoke`, never through the holder's own logout.
    pub fn login_sid(&self) -> Option<&str> {
        self.auth.as_ref()?;
        self.sid.as_deref()
    }
}

/// A place that takes credentials; each checks the `aud` it accepts ([`Door::accepts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The HTTPS API.
    Api,
    /// The PostgreSQL front door.
    Postgres,
    /// The generic TCP door, whose only client is `gatehouse connect`.
    Tcp,
    /// The SSH door. Its credentials travel only inside an SSH user certificate the gateway
    /// signed ([`crate::ssh::ca`]), so only a client holding that certificate's private key
    /// presents one: it takes nothing but its own audience.
    Ssh,
}

impl Door {
    pub fn as_str(self) -> &'static str {
        match self {
            Door::Api => "api",
            Door::Postgres => "postgres",
            Door::Tcp => "tcp",
            Door::Ssh => "ssh",
        }
    }

    /// The `aud` of a credential for this door alone: `<audience>:<door>`; the API's is the
    /// plain audience.
    pub fn audience(self, base: &str) -> String {
        match self {
            Door::Api => base.to_string(),
            door => format!("{base}:{}", door.as_str()),
        }
    }

    /// Whether this door takes a credential of audience `aud` (`sign_in`: a sign-in's
    /// credential rather than an issued token), against the gateway's `base` audience.
    fn accepts(self, base: &str, aud: &str, sign_in: bool) -> bool {
        if aud == self.audience(base) {
            return true;
        }
        match self {
            Door::Api => false,
            // Issued tokens of the plain audience open every door, as before doors had
            // audiences; a sign-in's credential only where gatehouse itself is the client.
            Door::Postgres => aud == base && !sign_in,
            Door::Tcp => aud == base,
            Door::Ssh => false,
        }
    }
}

/// What a login adds to a credential.
#[derive(Debug, Clone, Default)]
pub struct LoginClaims {
    pub sid: String,
    pub amr: Vec<String>,
    pub mfa: bool,
}

/// What a signed token is.
enum Kind {
    /// An issued token the store does not know (tests, and tokens from before issue 14).
    Plain,
    /// An issued service token with its login row (`sid`, also its `jti`), for `Door`.
    Service(String, Door),
    /// A credential after a single sign-on login.
    Login(LoginClaims),
}

/// Why a token was refused. Logged and audited; the client only learns that it was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is too long")]
    TooLong,
    #[error("token algorithm `{0}` is not accepted")]
    Algorithm(String),
    #[error("token type is not a gateway token")]
    Type,
    #[error("token key id `{0}` is unknown")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("token issuer is wrong")]
    Issuer,
    #[error("token audience is wrong")]
    Audience,
    #[error("{0}")]
    WrongDoor(&'static str),
    #[error("token is missing claim `{0}`")]
    MissingClaim(String),
    #[error("token subject `{0}` does not match the user `{1}`")]
    Subject(String, String),
    #[error("cannot sign token: {0}")]
    Sign(String),
}

/// Issues and verifies gateway tokens.
pub struct TokenAuthority {
    ring: RwLock<Arc<LoadedRing>>,
    keys_dir: PathBuf,
    issuer: String,
    audience: String,
    max_ttl: Duration,
}

/// A keyring with its jsonwebtoken keys prepared.
struct LoadedRing {
    ring: Keyring,
    encoding: EncodingKey,
    decoding: Vec<(String, DecodingKey)>,
}

impl LoadedRing {
    fn new(ring: Keyring) -> LoadedRing {
        let encoding = EncodingKey::from_ed_der(ring.current.pkcs8_der());
        let decoding = ring
            .verifying()
            .map(|k| (k.key_id.clone(), DecodingKey::from_ed_der(&k.raw)))
            .collect();
        LoadedRing {
            ring,
            encoding,
            decoding,
        }
    }
}

impl TokenAuthority {
    /// Loads the keyring under `keys_dir` (creating the first key).
    pub fn new(
        keys_dir: PathBuf,
        issuer: String,
        audience: String,
        max_ttl: Duration,
    ) -> Result<Self, KeyError> {
        let ring = Keyring::load(&keys_dir, Self::overlap_for(max_ttl))?;
        Ok(TokenAuthority {
            ring: RwLock::new(Arc::new(LoadedRing::new(ring))),
            keys_dir,
            issuer,
            audience,
            max_ttl,
        })
    }

    /// How long a retired key keeps verifying: the longest lifetime plus leeway.
    fn overlap_for(max_ttl: Duration) -> Duration {
        max_ttl.max(Duration::from_secs(7 * 86_400)) + Duration::from_secs(LEEWAY_SECS)
    }

    fn loaded(&self) -> Arc<LoadedRing> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the keyring (after `gatehouse keys rotate`). Returns the current key id when it
    /// changed.
    pub fn reload(&self) -> Result<Option<String>, KeyError> {
        let ring = Keyring::load(&self.keys_dir, Self::overlap_for(self.max_ttl))?;
        let before = self.loaded();
        let same = before.ring.current.key_id == ring.current.key_id
            && before.ring.retired.len() == ring.retired.len();
        if same {
            return Ok(None);
        }
        let kid = ring.current.key_id.clone();
        let loaded = Arc::new(LoadedRing::new(ring));
        match self.ring.write() {
            Ok(mut w) => *w = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        Ok((before.ring.current.key_id != kid).then_some(kid))
    }

    pub fn key_id(&self) -> String {
        self.loaded().ring.current.key_id.clone()
    }

    /// The public keys that verify gateway tokens, as a JWKS document.
    pub fn jwks(&self) -> serde_json::Value {
        self.loaded().ring.jwks()
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs a token for `user` in `groups`, valid from now for `ttl` (capped at `max_ttl`),
    /// that names no login: nothing can revoke it before it expires. `gatehouse token issue`
    /// uses [`issue_service`](Self::issue_service) instead.
    pub fn issue(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<(String, Claims), TokenError> {
        self.sign(user, groups, ttl, Kind::Plain)
    }

    /// Signs a service token for `user` in `groups` whose login is `sid` (a row in the logins
    /// table, so that revoking it stops the token at every front door); `sid` is also its
    /// `jti`. Like [`issue`](Self::issue) it has no `auth` claim: policies see
    /// `auth_method == "gateway_token"`, a service account, never a person.
    /// `door` narrows it to one front door ([`Door::Postgres`]: a PostgreSQL password that
    /// the API refuses); [`Door::Api`] is the plain audience, which every door takes.
    pub fn issue_service(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
        sid: &str,
        door: Door,
    ) -> Result<(String, Claims), TokenError> {
        self.sign(user, groups, ttl, Kind::Service(sid.to_string(), door))
    }

    /// A credential for `door` alone, derived from the verified API credential `from`: the
    /// same holder, groups, login (`sid`, so a logout or revocation ends it too), `auth`,
    /// `amr` and MFA, a fresh `jti`, valid `ttl` from now but never past `from`'s expiry.
    pub fn issue_for_door(
        &self,
        from: &Claims,
        door: Door,
        ttl: Duration,
    ) -> Result<(String, Claims), TokenError> {
        if door == Door::Api || from.aud != self.audience {
            return Err(TokenError::Sign(
                "a door credential is derived from an API credential, for another door".into(),
            ));
        }
        let now = unix_now();
        let ttl = ttl.min(self.max_ttl).as_secs();
        let claims = Claims {
            aud: door.audience(&self.audience),
            exp: (now + ttl).min(from.exp),
            nbf: now,
            iat: now,
            jti: crate::audit::event::hex(&gatehouse_core::random::random_bytes::<16>()),
            ..from.clone()
        };
        Ok((self.encode(&claims)?, claims))
    }

    /// Signs a credential after a single sign-on login.
    pub fn issue_login(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
        login: LoginClaims,
    ) -> Result<(String, Claims), TokenError> {
        self.sign(user, groups, ttl, Kind::Login(login))
    }

    fn sign(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
        kind: Kind,
    ) -> Result<(String, Claims), TokenError> {
        if ttl > self.max_ttl {
            return Err(TokenError::Sign(format!(
                "ttl {}s exceeds tokens.max_ttl {}s",
                ttl.as_secs(),
                self.max_ttl.as_secs()
            )));
        }
        if matches!(&kind, Kind::Service(sid, _) if sid.is_empty() || sid.len() > 128) {
            return Err(TokenError::Sign(
                "a service token's login id must be 1-128 bytes".into(),
            ));
        }
        let now = unix_now();
        let random_jti = || crate::audit::event::hex(&gatehouse_core::random::random_bytes::<16>());
        let (jti, auth, sid, amr, mfa, door) = match kind {
            Kind::Login(l) => (
                random_jti(),
                Some("oidc".to_string()),
                Some(l.sid),
                l.amr,
                l.mfa,
                Door::Api,
            ),
            Kind::Service(sid, door) => (sid.clone(), None, Some(sid), Vec::new(), false, door),
            Kind::Plain => (random_jti(), None, None, Vec::new(), false, Door::Api),
        };
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: door.audience(&self.audience),
            sub: user.to_string(),
            groups: groups.to_vec(),
            exp: now + ttl.as_secs(),
            nbf: now,
            iat: now,
            jti,
            auth,
            sid,
            amr,
            mfa,
        };
        Ok((self.encode(&claims)?, claims))
    }

    fn encode(&self, claims: &Claims) -> Result<String, TokenError> {
        let loaded = self.loaded();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(loaded.ring.current.key_id.clone());
        header.typ = Some(TOKEN_TYP.to_string());
        jsonwebtoken::encode(&header, claims, &loaded.encoding)
            .map_err(|e| TokenError::Sign(e.to_string()))
    }

    /// Verifies `token` for whoever its subject is (the HTTP API's bearer credentials).
    pub fn verify_bearer(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_inner(token, None, Door::Api, unix_now())
    }

    /// Verifies `token` at a front door; `user` is the name the client connected as, which
    /// must be the subject.
    pub fn verify(&self, token: &str, user: &str, door: Door) -> Result<Claims, TokenError> {
        self.verify_inner(token, Some(user), door, unix_now())
    }

    #[cfg(test)]
    fn verify_at(&self, token: &str, user: &str, now: u64) -> Result<Claims, TokenError> {
        self.verify_inner(token, Some(user), Door::Postgres, now)
    }

    fn verify_inner(
        &self,
        token: &str,
        user: Option<&str>,
        door: Door,
        now: u64,
    ) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        if header.typ.as_deref() != Some(TOKEN_TYP) {
            return Err(TokenError::Type);
        }
        let loaded = self.loaded();
        let decoding = match header.kid.as_deref() {
            Some(kid) => match loaded.decoding.iter().find(|(k, _)| k == kid) {
                Some((_, key)) => key,
                None => return Err(TokenError::UnknownKey(kid.chars().take(64).collect())),
            },
            None => return Err(TokenError::UnknownKey(String::new())),
        };
        // Signature and claim syntax first; time, issuer and audience checked below so that
        // each failure has its own reason in the audit log.
        let mut v = Validation::new(Algorithm::EdDSA);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, decoding, &v).map_err(|e| match e
                .kind()
            {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
                _ => TokenError::Malformed,
            })?;
        for claim in ["iss", "aud", "sub", "exp", "nbf", "iat", "jti"] {
            if data.claims.get(claim).is_none() {
                return Err(TokenError::MissingClaim(claim.into()));
            }
        }
        let claims: Claims =
            serde_json::from_value(data.claims).map_err(|_| TokenError::Malformed)?;
        if claims.exp + LEEWAY_SECS <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        if claims.iat > now + LEEWAY_SECS {
            return Err(TokenError::IssuedInFuture);
        }
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if !door.accepts(&self.audience, &claims.aud, claims.auth.is_some()) {
            return Err(if claims.aud == self.audience && claims.auth.is_some() {
                TokenError::WrongDoor("a sign-in's credential is not a PostgreSQL password; use `gatehouse psql` or `gatehouse env`, which send one")
            } else if claims.aud.starts_with(&format!("{}:", self.audience)) {
                TokenError::WrongDoor("the credential is for another door")
            } else {
                TokenError::Audience
            });
        }
        if let Some(user) = user {
            if claims.sub != user {
                return Err(TokenError::Subject(claims.sub, user.to_string()));
            }
        }
        Ok(claims)
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    use base64::Engine;

    use super::*;

    fn authority(name: &str) -> TokenAuthority {
        let dir = std::env::temp_dir().join(format!("gh-token-{}-{name}", std::process::id()));
        TokenAuthority::new(
            dir,
            "gatehouse".into(),
            "gatehouse".into(),
            Duration::from_secs(86_400),
        )
        .unwrap()
    }

    fn forge(header: serde_json::Value, claims: serde_json::Value, sig: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string()),
            B64URL.encode(sig)
        )
    }

    #[test]
    fn issued_token_verifies_for_its_subject_only() {
        let a = authority("ok");
        let (t, c) = a
            .issue("alice", &["dba".into()], Duration::from_secs(3600))
            .unwrap();
        assert_eq!(a.verify(&t, "alice", Door::Postgres).unwrap(), c);
        assert!(matches!(
            a.verify(&t, "bob", Door::Postgres),
            Err(TokenError::Subject(..))
        ));
    }

    #[test]
    fn a_service_token_names_its_login_but_stays_a_gateway_token() {
        let a = authority("service");
        let (t, c) = a
            .issue_service(
                "ci-bot",
                &["deploy".into()],
                Duration::from_secs(600),
                "abc123",
                Door::Api,
            )
            .unwrap();
        let verified = a.verify(&t, "ci-bot", Door::Postgres).unwrap();
        assert_eq!(verified, c);
        assert_eq!(verified.sid.as_deref(), Some("abc123"));
        assert_eq!(verified.jti, "abc123");
        assert_eq!(verified.auth, None);
        assert_eq!(verified.auth_method(), "gateway_token");
        assert_eq!(verified.login_sid(), None, "an issued token is no login");
        let (t, _) = a
            .issue_login(
                "alice",
                &[],
                Duration::from_secs(600),
                LoginClaims {
                    sid: "login1".into(),
                    ..LoginClaims::default()
                },
            )
            .unwrap();
        assert_eq!(
            a.verify(&t, "alice", Door::Tcp).unwrap().login_sid(),
            Some("login1")
        );
        assert!(verified.amr.is_empty() && !verified.mfa);
        assert!(a
            .issue_service("ci-bot", &[], Duration::from_secs(600), "", Door::Api)
            .is_err());
        assert!(a
            .issue_service("ci-bot", &[], Duration::from_secs(86_401), "abc", Door::Api)
            .is_err());
    }

    #[test]
    fn each_door_takes_only_its_audience() {
        let a = authority("doors");
        let login = LoginClaims {
            sid: "login7".into(),
            amr: vec!["pwd".into(), "otp".into()],
            mfa: true,
        };
        let (api, api_claims) = a
            .issue_login("alice", &["dba".into()], Duration::from_secs(3600), login)
            .unwrap();
        // A sign-in's credential: the API and gatehouse's own TCP client, never a PostgreSQL
        // password.
        assert!(a.verify_bearer(&api).is_ok());
        assert!(a.verify(&api, "alice", Door::Tcp).is_ok());
        assert!(matches!(
            a.verify(&api, "alice", Door::Postgres),
            Err(TokenError::WrongDoor(_))
        ));
        // Its PostgreSQL credential: the same holder and login, its own id, the door only.
        let (pg, pg_claims) = a
            .issue_for_door(&api_claims, Door::Postgres, Duration::from_secs(600))
            .unwrap();
        let verified = a.verify(&pg, "alice", Door::Postgres).unwrap();
        assert_eq!(verified, pg_claims);
        assert_eq!(verified.aud, "gatehouse:postgres");
        assert_eq!(verified.sid.as_deref(), Some("login7"));
        assert_eq!(verified.login_sid(), Some("login7"));
        assert_eq!((verified.mfa, verified.amr.len()), (true, 2));
        assert_eq!(verified.groups, vec!["dba".to_string()]);
        assert_ne!(verified.jti, api_claims.jti);
        assert!(verified.exp <= unix_now() + 600);
        assert!(matches!(
            a.verify_bearer(&pg),
            Err(TokenError::WrongDoor(_))
        ));
        assert!(matches!(
            a.verify(&pg, "alice", Door::Tcp),
            Err(TokenError::WrongDoor(_))
        ));
        // Never past its parent's expiry, and never derived from a door credential.
        let (short, short_claims) = a.issue("bob", &[], Duration::from_secs(60)).unwrap();
        let (_, derived) = a
            .issue_for_door(&short_claims, Door::Postgres, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(derived.exp, short_claims.exp);
        assert!(a
            .issue_for_door(&pg_claims, Door::Postgres, Duration::from_secs(60))
            .is_err());
        assert!(a
            .issue_for_door(&api_claims, Door::Api, Duration::from_secs(60))
            .is_err());
        // An issued token of the plain audience opens every door; one issued for the
        // PostgreSQL door is no API bearer.
        assert!(a.verify(&short, "bob", Door::Postgres).is_ok());
        assert!(a.verify_bearer(&short).is_ok());
        let (svc, _) = a
            .issue_service(
                "ci-bot",
                &[],
                Duration::from_secs(600),
                "s1",
                Door::Postgres,
            )
            .unwrap();
        assert!(a.verify(&svc, "ci-bot", Door::Postgres).is_ok());
        assert!(a.verify_bearer(&svc).is_err());
    }

    #[test]
    fn rotation_keeps_old_credentials_valid_and_signs_with_the_new_key() {
        let dir = std::env::temp_dir().join(format!("gh-token-{}-rotation", std::process::id()));
        let a = TokenAuthority::new(
            dir.clone(),
            "gatehouse".into(),
            "gatehouse".into(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let (old_token, _) = a.issue("alice", &[], Duration::from_secs(600)).unwrap();
        let old_kid = a.key_id();
        let (retired, new_kid) = Keyring::rotate(&dir).unwrap();
        assert_eq!(retired, old_kid);
        assert_eq!(a.reload().unwrap(), Some(new_kid.clone()));
        assert_eq!(a.reload().unwrap(), None, "nothing changed since");
        assert!(
            a.verify(&old_token, "alice", Door::Postgres).is_ok(),
            "overlap"
        );
        let (new_token, _) = a.issue("alice", &[], Duration::from_secs(600)).unwrap();
        let header = jsonwebtoken::decode_header(&new_token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
        let kids: Vec<String> = a.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(kids, vec![new_kid, old_kid]);
        // Once the retired key is gone, its credentials are refused.
        std::fs::remove_dir_all(dir.join("token-retired")).unwrap();
        a.reload().unwrap();
        assert!(matches!(
            a.verify(&old_token, "alice", Door::Postgres),
            Err(TokenError::UnknownKey(_))
        ));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn attacks_are_refused_with_their_reason() {
        let a = authority("attacks");
        let other = authority("other");
        let (t, c) = a.issue("alice", &[], Duration::from_secs(3600)).unwrap();
        let now = unix_now();
        let claims = serde_json::to_value(&c).unwrap();
        let kid = a.key_id().to_string();
        let parts: Vec<&str> = t.split('.').collect();

        // alg none
        let none = forge(
            serde_json::json!({"alg":"none","typ":TOKEN_TYP,"kid":kid}),
            claims.clone(),
            b"",
        );
        assert!(a.verify(&none, "alice", Door::Postgres).is_err());
        // HS256 with the public key as the secret
        let hs = jsonwebtoken::encode(
            &{
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some(kid.clone());
                h.typ = Some(TOKEN_TYP.into());
                h
            },
            &c,
            &EncodingKey::from_secret(&a.loaded().ring.current.public_key().raw),
        )
        .unwrap();
        assert_eq!(
            a.verify(&hs, "alice", Door::Postgres),
            Err(TokenError::Algorithm("HS256".into()))
        );
        // a token from another gateway key, claiming our kid
        let (foreign, _) = other
            .issue("alice", &[], Duration::from_secs(3600))
            .unwrap();
        let fparts: Vec<&str> = foreign.split('.').collect();
        let spliced = format!("{}.{}.{}", parts[0], fparts[1], fparts[2]);
        assert_eq!(
            a.verify(&spliced, "alice", Door::Postgres),
            Err(TokenError::Signature)
        );
        assert!(matches!(
            a.verify(&foreign, "alice", Door::Postgres),
            Err(TokenError::UnknownKey(_))
        ));
        // tampered payload
        let mut evil = claims.clone();
        evil["groups"] = serde_json::json!(["dba"]);
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64URL.encode(evil.to_string()),
            parts[2]
        );
        assert_eq!(
            a.verify(&tampered, "alice", Door::Postgres),
            Err(TokenError::Signature)
        );
        // time and audience checks
        let at = |offset: i64| (now as i64 + offset) as u64;
        assert_eq!(
            a.verify_at(&t, "alice", at(3600 + 31)),
            Err(TokenError::Expired)
        );
        assert!(
            a.verify_at(&t, "alice", at(3600 + 29)).is_ok(),
            "within leeway"
        );
        assert_eq!(
            a.verify_at(&t, "alice", at(-31)),
            Err(TokenError::NotYetValid)
        );
        let wrong_aud = TokenAuthority::new(
            std::env::temp_dir().join(format!("gh-token-{}-attacks", std::process::id())),
            "gatehouse".into(),
            "other".into(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(
            wrong_aud.verify(&t, "alice", Door::Postgres),
            Err(TokenError::Audience)
        );
        assert_eq!(
            a.verify("not.a.jwt", "alice", Door::Postgres),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            a.verify(&"x".repeat(MAX_TOKEN_BYTES + 1), "alice", Door::Postgres),
            Err(TokenError::TooLong)
        );
        assert!(a.issue("alice", &[], Duration::from_secs(86_401)).is_err());
    }
}
