//! Verification of the hash chain, the checkpoints and (for exports) the signed manifest.
//!
//! The same [`ChainVerifier`] checks events read from the store and events read back from an
//! exported JSONL file; it stops at the first problem and names its sequence number.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::event::{AuditEvent, Checkpoint, Seal};
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
    /// Events before the first commit seal (written before sealing began).
    pub before_seals: u64,
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
        if self.before_seals > 0 {
            write!(
                f,
                "; {} events from before commit seals began",
                self.before_seals
            )?;
        }
        Ok(())
    }
}

/// Checks events one by one against the chain and the checkpoints given up front.
pub struct ChainVerifier {
    key: PublicKey,
    checkpoints: BTreeMap<u64, Checkpoint>,
    expected_seq: u64,
    prev_hash: String,
    report: VerifyReport,
    /// The last event covered by a commit seal, once one was seen.
    sealed_to: Option<u64>,
    /// Whether events after the last seal are an error (the whole log) or not (an export,
    /// which may end inside a commit).
    strict_tail: bool,
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
        let mut v = ChainVerifier {
            key: key.clone(),
            checkpoints: BTreeMap::new(),
            expected_seq: first_seq,
            prev_hash,
            report: VerifyReport {
                first_seq,
                ..Default::default()
            },
            sealed_to: None,
            strict_tail: true,
        };
        for c in checkpoints {
            v.add_checkpoint(c)?;
        }
        Ok(v)
    }

    /// Adds a checkpoint once its signature verifies; it is checked against the event at its
    /// seq when that event is pushed (so a streaming caller adds it before that push).
    pub fn add_checkpoint(&mut self, c: Checkpoint) -> Result<(), VerifyError> {
        let sig = B64
            .decode(&c.signature)
            .map_err(|_| fail(c.seq, "checkpoint signature is not base64"))?;
        if !self
            .key
            .verify(&Checkpoint::message(c.seq, &c.hash, &c.ts), &sig)
        {
            return Err(fail(
                c.seq,
                format!(
                    "checkpoint signature does not verify with key {} (checkpoint forged or edited)",
                    self.key.key_id
                ),
            ));
        }
        self.checkpoints.insert(c.seq, c);
        Ok(())
    }

    /// For a slice of the log (an export): its newest events need not be sealed yet.
    pub fn tail_may_be_unsealed(mut self) -> Self {
        self.strict_tail = false;
        self
    }

    /// Every event after the first seal must be covered by a seal, and seals must follow each
    /// other without a gap: rows a writer without the audit key added are named.
    fn check_seal(&mut self, e: &AuditEvent) -> Result<(), VerifyError> {
        let Some(text) = &e.seal else {
            return Ok(());
        };
        let seal = Seal::decode(text).ok_or_else(|| fail(e.seq, "malformed commit seal"))?;
        let sig = B64.decode(&seal.signature).unwrap_or_default();
        if seal.from > e.seq
            || !self
                .key
                .verify(&Seal::message(seal.from, e.seq, &e.hash), &sig)
        {
            return Err(fail(
                e.seq,
                format!(
                    "commit seal does not verify with key {} (seal forged or event rewritten)",
                    self.key.key_id
                ),
            ));
        }
        match self.sealed_to {
            Some(to) if seal.from != to + 1 => {
                return Err(fail(
                    to + 1,
                    format!(
                        "events {}..={} are covered by no gateway's commit seal (written into the store directly)",
                        to + 1,
                        seal.from.saturating_sub(1).max(to + 1)
                    ),
                ));
            }
            Some(_) => {}
            // The first seal: the events before its commit were written before sealing began.
            None => self.report.before_seals = seal.from.saturating_sub(self.report.first_seq),
        }
        self.sealed_to = Some(e.seq);
        Ok(())
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
        self.check_seal(e)?;
        self.prev_hash = e.hash.clone();
        self.expected_seq += 1;
        self.report.events += 1;
        self.report.last_seq = e.seq;
        Ok(())
    }

    /// Ends verification: a checkpoint beyond the last event means the log was truncated, and
    /// (for the whole log) events after the last commit seal were written by no gateway.
    pub fn finish(mut self) -> Result<VerifyReport, VerifyError> {
        if self.sealed_to.is_none() {
            // No seal at all: every event is from before sealing began.
            self.report.before_seals = self.report.events;
        }
        if let Some((&seq, _)) = self.checkpoints.range(self.expected_seq..).next() {
            return Err(fail(
                self.expected_seq,
                format!(
                    "log ends at seq {} but a signed checkpoint covers seq {seq} (log truncated)",
                    self.expected_seq.saturating_sub(1)
                ),
            ));
        }
        if let (true, Some(to)) = (self.strict_tail, self.sealed_to) {
            if self.report.last_seq > to {
                return Err(fail(
                    to + 1,
                    format!(
                        "events {}..={} are covered by no gateway's commit seal: written into the store directly, or the log was cut inside a commit",
                        to + 1,
                        self.report.last_seq
                    ),
                ));
            }
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
    use crate::audit::event::{EventKind, NewEvent, Seal};
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

    /// Seals `events[from-1..to]` as one commit (the seal on the event at `to`).
    fn seal(k: &SigningKey, events: &mut [AuditEvent], from: u64, to: u64) {
        let last = &mut events[to as usize - 1];
        let sig = B64.encode(k.sign(&Seal::message(from, to, &last.hash)));
        last.seal = Some(
            Seal {
                from,
                key_id: k.key_id.clone(),
                signature: sig,
            }
            .encode(),
        );
    }

    #[test]
    fn rows_outside_every_commit_seal_are_named() {
        let k = key();
        let mut events = chain(7);
        // Events 1-2 from before sealing began; commits 3-4 and 5-5; 6-7 appended by SQL.
        seal(&k, &mut events, 3, 4);
        seal(&k, &mut events, 5, 5);
        let r = verify(&k, &events[..5], vec![]).unwrap();
        assert_eq!(r.before_seals, 2);
        let err = verify(&k, &events, vec![]).unwrap_err();
        assert_eq!(err.seq, 6, "{err}");
        assert!(
            err.problem
                .contains("6..=7 are covered by no gateway's commit seal"),
            "{err}"
        );
        // A writer with the key sealed its own commit on top of them: still named.
        let mut on_top = events.clone();
        seal(&k, &mut on_top, 7, 7);
        let err = verify(&k, &on_top, vec![]).unwrap_err();
        assert_eq!(err.seq, 6, "{err}");
        // A seal made without the key does not verify.
        let other = SigningKey::load_or_create(
            &std::env::temp_dir()
                .join(format!("gh-verify-other-{}", std::process::id()))
                .join("audit.pem"),
        )
        .unwrap();
        let mut forged = events.clone();
        seal(&other, &mut forged, 6, 7);
        let err = verify(&k, &forged, vec![]).unwrap_err();
        assert_eq!(err.seq, 7, "{err}");
        assert!(err.problem.contains("commit seal does not verify"), "{err}");
        // An export slice may end inside a commit.
        let public = k.public_key();
        let mut v = ChainVerifier::new(&public, vec![], 1, GENESIS_HASH.into())
            .unwrap()
            .tail_may_be_unsealed();
        for e in &events[..4] {
            v.push(e).unwrap();
        }
        let mut partial = events[..4].to_vec();
        partial[3].seal = None;
        let mut v2 = ChainVerifier::new(&public, vec![], 1, GENESIS_HASH.into())
            .unwrap()
            .tail_may_be_unsealed();
        for e in &partial {
            v2.push(e).unwrap();
        }
        assert!(v.finish().is_ok() && v2.finish().is_ok());
    }
}
