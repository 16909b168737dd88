//! SCRAM-SHA-256 client (RFC 5802, RFC 7677) as PostgreSQL speaks it, without channel binding.
//!
//! The server's final message is verified too: an upstream that does not know the password
//! cannot complete the exchange.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::{digest, hmac, pbkdf2, rand::SecureRandom};

/// Upper bound on the iteration count a server may ask for; PostgreSQL's default is 4096.
const MAX_ITERATIONS: u32 = 10_000_000;

#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    #[error("malformed server message in SCRAM exchange")]
    Malformed,
    #[error("server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("server asked for {0} iterations")]
    Iterations(u32),
    #[error("server signature does not verify: the upstream does not know the password")]
    ServerSignature,
    #[error("server reported an error: {0}")]
    Server(String),
    #[error("random number generator failed")]
    Rng,
}

/// One SCRAM exchange, client side.
pub struct ScramClient {
    client_first_bare: String,
    client_nonce: String,
    password: Vec<u8>,
    auth_message: String,
    salted_password: Option<[u8; 32]>,
}

impl ScramClient {
    pub fn new(password: &str) -> Result<Self, ScramError> {
        let mut raw = [0u8; 18];
        ring::rand::SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| ScramError::Rng)?;
        Ok(Self::with_nonce(password, B64.encode(raw)))
    }

    fn with_nonce(password: &str, client_nonce: String) -> Self {
        ScramClient {
            client_first_bare: format!("n=,r={client_nonce}"),
            client_nonce,
            password: password.as_bytes().to_vec(),
            auth_message: String::new(),
            salted_password: None,
        }
    }

    /// The `client-first-message` (with the `n,,` GS2 header).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Consumes `server-first-message`, returns `client-final-message`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for part in server_first.split(',') {
            match part.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(B64.decode(v).map_err(|_| ScramError::Malformed)?),
                Some(("i", v)) => {
                    iterations = Some(v.parse::<u32>().map_err(|_| ScramError::Malformed)?)
                }
                _ => {}
            }
        }
        let (nonce, salt, iterations) = match (nonce, salt, iterations) {
            (Some(n), Some(s), Some(i)) => (n, s, i),
            _ => return Err(ScramError::Malformed),
        };
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let rounds = std::num::NonZeroU32::new(iterations)
            .filter(|n| n.get() <= MAX_ITERATIONS)
            .ok_or(ScramError::Iterations(iterations))?;
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            &self.password,
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        self.auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac_sha256(stored_key.as_ref(), self.auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        self.salted_password = Some(salted);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Verifies `server-final-message`.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let server_final = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed)?;
        if let Some(e) = server_final.strip_prefix("e=") {
            return Err(ScramError::Server(e.to_string()));
        }
        let v = server_final
            .strip_prefix("v=")
            .ok_or(ScramError::Malformed)?;
        let v = B64
            .decode(v.trim_end_matches(','))
            .map_err(|_| ScramError::Malformed)?;
        let salted = self.salted_password.ok_or(ScramError::Malformed)?;
        let server_key = hmac_sha256(&salted, b"Server Key");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &server_key);
        hmac::verify(&key, self.auth_message.as_bytes(), &v)
            .map_err(|_| ScramError::ServerSignature)
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The SCRAM-SHA-256 example exchange from RFC 7677 section 3.
    #[test]
    fn rfc7677_example() {
        let mut c = ScramClient::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO".into());
        // RFC uses n=user; PostgreSQL sends an empty name. Rebuild the bare message as the RFC has it.
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let fin = c
            .client_final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        assert!(matches!(
            c.verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::ServerSignature)
        ));
    }

    #[test]
    fn rejects_foreign_nonce_and_absurd_iterations() {
        let mut c = ScramClient::with_nonce("pw", "abc".into());
        assert!(matches!(
            c.client_final(b"r=xyz123,s=QUJD,i=4096"),
            Err(ScramError::NonceMismatch)
        ));
        assert!(matches!(
            c.client_final(b"r=abc123,s=QUJD,i=4000000000"),
            Err(ScramError::Iterations(_))
        ));
        assert!(matches!(
            c.client_final(b"garbage"),
            Err(ScramError::Malformed)
        ));
    }
}
