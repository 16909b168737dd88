//! Join tokens and enrollment: `gatehouse agents enroll <name>` makes a one-time token (only its
//! SHA-256 is stored); the agent redeems it with its public key and a proof that it holds the
//! private key, and receives a certificate from the agent CA.

use std::net::IpAddr;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine;
use gatehouse_agent::remote::identity::{proof_message, EnrollRequest, EnrollResponse};
use tracing::info;

use super::ca::sha256_hex;
use super::AgentService;
use crate::audit::{EventKind, NewEvent};
use gatehouse_core::random::random_bytes;

/// The prefix every join token carries, so that one pasted in the wrong place is recognisable.
pub const TOKEN_PREFIX: &str = "ghj_";
/// Longest join token accepted.
const MAX_TOKEN: usize = 128;

/// A fresh join token and the hash the store keeps.
pub fn new_join_token() -> (String, String) {
    let token = format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    );
    let hash = sha256_hex(token.as_bytes());
    (token, hash)
}

/// Why an enrollment was refused. `Display` is what the agent is told: the audit event carries
/// the precise reason.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("the join token is invalid, expired or already used; ask for a new one (`gatehouse agents enroll <name>`)")]
    Token,
    #[error("malformed enrollment request: {0}")]
    Malformed(&'static str),
    #[error("the gateway cannot enroll agents right now")]
    Internal,
}

fn refused(peer: IpAddr, agent: Option<&str>, why: &str) -> NewEvent {
    let mut e = NewEvent::new(EventKind::AgentEnrollRefused);
    e.actor = agent.map(|a| format!("agent:{a}")).unwrap_or_default();
    e.resource = agent.unwrap_or_default().to_string();
    e.action = "enroll".into();
    e.decision = "deny".into();
    e.reason = why.to_string();
    e.detail = serde_json::json!({ "client_addr": peer.to_string() });
    e
}

/// Redeems a join token. Every refusal is audited with its reason.
pub async fn enroll(
    svc: &AgentService,
    req: EnrollRequest,
    peer: IpAddr,
) -> Result<EnrollResponse, EnrollError> {
    let token = req.token.trim();
    let malformed = |why: &'static str| async move {
        let _ = svc.audit.record_durable(refused(peer, None, why)).await;
        EnrollError::Malformed(why)
    };
    if token.is_empty() || token.len() > MAX_TOKEN || !token.starts_with(TOKEN_PREFIX) {
        let _ = svc
            .audit
            .record_durable(refused(peer, None, "not a join token"))
            .await;
        return Err(EnrollError::Token);
    }
    let Ok(public_key) = B64.decode(req.public_key.as_bytes()) else {
        return Err(malformed("public_key is not base64").await);
    };
    let Ok(proof) = B64.decode(req.proof.as_bytes()) else {
        return Err(malformed("proof is not base64").await);
    };
    if req.version.len() > 64 || req.hostname.len() > 255 {
        return Err(malformed("version or hostname too long").await);
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        &public_key,
    );
    if key.verify(&proof_message(token), &proof).is_err() {
        return Err(malformed("the proof of possession does not verify with the public key").await);
    }
    let hash = sha256_hex(token.as_bytes());
    let agent = match svc.store.join_token_agent(&hash).await {
        Ok(Some(a)) => a,
        Ok(None) => {
            let _ = svc
                .audit
                .record_durable(refused(peer, None, "unknown join token"))
                .await;
            return Err(EnrollError::Token);
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read join tokens");
            return Err(EnrollError::Internal);
        }
    };
    let issued = svc
        .ca
        .issue_agent(&agent, &public_key, svc.config.cert_ttl)
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot issue an agent certificate");
            EnrollError::Malformed("the public key is not a P-256 point")
        })?;
    let now = crate::authn::token::unix_now() as i64;
    let ts = crate::audit::event::now_ts();
    let redeemed = svc
        .store
        .redeem_join_token(
            &hash,
            now,
            &ts,
            &issued.sha256,
            &issued.expires,
            &req.hostname,
            &req.version,
        )
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "cannot redeem a join token");
            EnrollError::Internal
        })?;
    let row = match redeemed {
        Ok(row) => row,
        Err((why, name)) => {
            let _ = svc
                .audit
                .record_durable(refused(peer, name.as_deref(), why.as_str()))
                .await;
            info!(reason = why.as_str(), "agent enrollment refused");
            return Err(EnrollError::Token);
        }
    };
    let mut e = NewEvent::new(EventKind::AgentEnrolled);
    e.actor = format!("agent:{agent}");
    e.resource = agent.clone();
    e.action = "enroll".into();
    e.decision = "allow".into();
    e.detail = serde_json::json!({
        "client_addr": peer.to_string(),
        "cert_sha256": issued.sha256,
        "cert_expires": issued.expires,
        "hostname": req.hostname,
        "version": req.version,
    });
    if svc.audit.record_durable(e).await.is_err() {
        // The certificate is in the store but unaudited: refuse, so the agent retries with a
        // new token rather than run on an enrollment the log does not show.
        return Err(EnrollError::Internal);
    }
    info!(agent = %agent, "agent enrolled");
    Ok(EnrollResponse {
        agent,
        certificate: issued.pem,
        ca_certificate: svc.ca.cert_pem.clone(),
        tunnel: svc.config.public_address.clone(),
        server_name: svc.config.server_name.clone(),
        expires: issued.expires,
        events_acked: row.events_acked.max(0) as u64,
    })
}
