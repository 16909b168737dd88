//! `POST /api/v1/credentials/ssh` `{public_key}`: a short-lived SSH user certificate for the
//! caller's key, signed by the gateway's user CA ([`crate::ssh::ca`]). It names the caller as
//! its one principal, carries a door credential of the same login (so a logout, revocation or
//! disable ends it too) and lives no longer than that credential (`[ssh] certificate_ttl`,
//! default 12 h). The answer also has the gateway's SSH host key and address, for the
//! client's known_hosts. Audited as `credential.issued` (door `ssh`) before it is answered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use russh::keys::{Algorithm, HashAlg, PublicKey};
use serde::Deserialize;
use tracing::warn;

use super::api::{authenticate, error};
use super::Web;
use crate::audit::{EventKind, NewEvent};
use crate::authn::token::Door;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBody {
    /// The client's public key, one OpenSSH line (`ssh-ed25519 AAAA...`).
    pub public_key: String,
}

pub async fn certificate(
    State(web): State<Arc<Web>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<CertificateBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let claims = match authenticate(&web, &headers, peer, "credential").await {
        Err(r) => return r,
        Ok(c) => c,
    };
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the body must be JSON: {\"public_key\": \"ssh-ed25519 AAAA...\"}",
        );
    };
    let key = match PublicKey::from_openssh(body.public_key.trim()) {
        Ok(k) if k.algorithm() == Algorithm::Ed25519 => k,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the gateway signs Ed25519 keys only (ssh-keygen -t ed25519)",
            )
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "public_key is not an OpenSSH public key line",
            )
        }
    };
    let ttl = web.config.ssh.certificate_ttl;
    let (credential, door) = match web.tokens.issue_for_door(&claims, Door::Ssh, ttl) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot sign an ssh door credential");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot sign the credential",
            );
        }
    };
    let now = crate::authn::token::unix_now();
    let cert = match crate::ssh::ca::sign_user_cert(
        &web.ssh.user_ca,
        &key,
        &door.sub,
        &credential,
        now,
        door.exp,
    ) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot sign an ssh certificate");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot sign the certificate",
            );
        }
    };
    let Ok(text) = cert.to_openssh() else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode the certificate",
        );
    };
    let mut issued = NewEvent::new(EventKind::CredentialIssued);
    issued.actor = claims.sub.clone();
    issued.action = "issue".into();
    issued.detail = serde_json::json!({
        "door": Door::Ssh.as_str(),
        "audience": door.aud,
        "login_id": claims.sid,
        "credential_id": door.jti,
        "from_credential_id": claims.jti,
        "expires_at": door.exp,
        "certificate_serial": cert.serial(),
        "certificate_key": key.fingerprint(HashAlg::Sha256).to_string(),
        "client_addr": peer.to_string(),
    });
    if web.audit.record_durable(issued).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit log cannot record the certificate; nothing was issued",
        );
    }
    Json(serde_json::json!({
        "certificate": text,
        "user": door.sub,
        "expires_at": door.exp,
        "host_key": web.ssh.host_key_line(),
        "ssh_address": web.ssh_public,
    }))
    .into_response()
}
