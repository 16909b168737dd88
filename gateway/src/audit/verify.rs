//! Verification of the hash chain, the checkpoints and (for exports) the signed manifest.
//!
//! The same [`ChainVerifier`] checks events read from the store and events read back from an
//! exported JSONL file; it stops at the first problem and names its sequence number.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::event::{AuditEvent, Checkpoint};
use crate::keys::PublicKey;

/// The first thing wrong with a log, with the sequence number where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {problem}")]
pub struct VerifyError {
    pub seq: u64,
    pub problem: String,
}

fn fail(seq: u64, problem: impl Into<String>) -> VerifyError {
    VerifyError {
        seq,
        problem: problem.into(),
    }
}

/// What a successful verification saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub checkpoints: usize,
    pub last_checkpoint: u64,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.events == 0 {
            return write!(f, "no events");
        }
        write!(
            f,
            "{} events (seq {}..={}), {} signed checkpoints, last signed seq {}",
            self.events, self.first_seq, self.last_seq, self.checkpoints, self.last_checkpoint
        )?;
        let unsigned = self.last_seq.saturating_sub(self.last_checkpoint);
        if unsigned > 0 {
            write!(
                f,
                "; {unsigned} newest events are chained but not yet covered by a checkpoint"
            )?;
        }
        Ok(())
    }
}

/// Checks events one by one against the chain and the checkpoints given up front.
pub struct ChainVerifier {
    checkpoints: BTreeMap<u64, Checkpoint>,
    expected_seq: u64,
    prev_hash: String,
    report: VerifyReport,
}

impl ChainVerifier {
    /// Expects the first event to be `first_seq` with `prev_hash`. Checkpoint signatures are
    /// checked here.
    pub fn new(
        key: &PublicKey,
        checkpoints: Vec<Checkpoint>,
        first_seq: u64,
        prev_hash: String,
    ) -> Result<Self, VerifyError> {
        let mut map = BTreeMap::new();
        for c in checkpoints {
            let sig = B64
                .decode(&c.signature)
                .map_err(|_| fail(c.seq, "checkpoint signature is not base64"))?;
            if !key.verify(&Checkpoint::message(c.seq, &c.hash, &c.ts), &sig) {
                return Err(fail(
                    c.seq,
                    format!("checkpoint signature does not verify with key {} (checkpoint forged or edited)", key.key_id),
                ));
            }
            map.insert(c.seq, c);
        }
        Ok(ChainVerifier {
            checkpoints: map,
            expected_seq: first_seq,
            prev_hash,
            report: VerifyReport {
                first_seq,
                ..Default::default()
            },
        })
    }

    pub fn push(&mut self, e: &AuditEvent) -> Result<(), VerifyError> {
        if e.seq != self.expected_seq {
            return Err(if e.seq > self.expected_seq {
                fail(
                    self.expected_seq,
                    format!(
                        "event missing: next event found is seq {} (events deleted)",
                        e.seq
                    ),
                )
            } else {
                fail(
                    self.expected_seq,
                    format!(
                        "found seq {} where seq {} belongs (events reordered or duplicated)",
                        e.seq, self.expected_seq
                    ),
                )
            });
        }
        if e.prev_hash != self.prev_hash {
            return Err(fail(e.seq, "prev_hash does not match the previous event's hash (events reordered, replaced or deleted)"));
        }
        if e.compute_hash() != e.hash {
            return Err(fail(
                e.seq,
                "hash does not match the event's contents (event edited)",
            ));
        }
        if let Some(c) = self.checkpoints.get(&e.seq) {
            if c.hash != e.hash {
                return Err(fail(
                    e.seq,
                    "event hash differs from the signed checkpoint (chain rewritten)",
                ));
            }
            self.report.checkpoints += 1;
            self.report.last_checkpoint = e.seq;
        }
        self.prev_hash = e.hash.clone();
        self.expected_seq += 1;
        self.report.events += 1;
        self.report.last_seq = e.seq;
        Ok(())
    }

    /// Ends verification: a checkpoint beyond the last event means the log was truncated.
    pub fn finish(self) -> Result<VerifyReport, VerifyError> {
        if let Some((&seq, _)) = self.checkpoints.range(self.expected_seq..).next() {
            return Err(fail(
                self.expected_seq,
                format!(
                    "log ends at seq {} but a signed checkpoint covers seq {seq} (log truncated)",
                    self.expected_seq.saturating_sub(1)
                ),
            ));
        }
        Ok(self.report)
    }

    pub fn last_hash(&self) -> &str {
        &self.prev_hash
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::audit::event::{EventKind, NewEvent};
    use crate::audit::GENESIS_HASH;
    use crate::keys::SigningKey;

    fn chain(n: u64) -> Vec<AuditEvent> {
        let mut prev = GENESIS_HASH.to_string();
        (1..=n)
            .map(|seq| {
                let mut e = NewEvent::new(EventKind::DbStatement);
                e.actor = format!("user{seq}");
                let e = e.into_event(
                    seq,
                    format!("2026-01-01T00:00:{seq:02}.000000Z"),
                    prev.clone(),
                );
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn key() -> SigningKey {
        let dir = std::env::temp_dir().join(format!(
            "gh-verify-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        SigningKey::load_or_create(&dir.join("audit.pem")).unwrap()
    }

    fn checkpoint(k: &SigningKey, e: &AuditEvent) -> Checkpoint {
        let ts = "2026-01-01T00:01:00.000000Z".to_string();
        let signature = B64.encode(k.sign(&Checkpoint::message(e.seq, &e.hash, &ts)));
        Checkpoint {
            seq: e.seq,
            hash: e.hash.clone(),
            ts,
            key_id: k.key_id.clone(),
            signature,
        }
    }

    fn verify(
        k: &SigningKey,
        events: &[AuditEvent],
        cps: Vec<Checkpoint>,
    ) -> Result<VerifyReport, VerifyError> {
        let public = k.public_key();
        let mut v = ChainVerifier::new(&public, cps, 1, GENESIS_HASH.into())?;
        for e in events {
            v.push(e)?;
        }
        v.finish()
    }

    #[test]
    fn intact_chain_verifies() {
        let k = key();
        let events = chain(5);
        let r = verify(&k, &events, vec![checkpoint(&k, &events[4])]).unwrap();
        assert_eq!((r.events, r.last_seq, r.last_checkpoint), (5, 5, 5));
    }

    #[test]
    fn each_tampering_names_the_right_seq() {
        let k = key();
        let events = chain(6);
        let cps = vec![checkpoint(&k, &events[5])];

        let mut edited = events.clone();
        edited[2].actor = "mallory".into();
        assert_eq!(verify(&k, &edited, cps.clone()).unwrap_err().seq, 3);

        let mut deleted = events.clone();
        deleted.remove(3);
        assert_eq!(verify(&k, &deleted, cps.clone()).unwrap_err().seq, 4);

        let mut reordered = events.clone();
        reordered.swap(1, 2);
        assert_eq!(verify(&k, &reordered, cps.clone()).unwrap_err().seq, 2);

        let truncated = &events[..4];
        let err = verify(&k, truncated, cps.clone()).unwrap_err();
        assert_eq!(err.seq, 5, "{err}");

        let mut forged = cps.clone();
        forged[0].hash = events[4].hash.clone();
        assert_eq!(verify(&k, &events, forged).unwrap_err().seq, 6);
    }
}
