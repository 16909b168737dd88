//! Golden vectors for the audit log (docs/audit-format.md): the production encoding, hashing,
//! signing and verification must reproduce `tests/golden/audit-events.json` and accept
//! `tests/golden/audit-export.jsonl` byte for byte. Both files were derived independently by
//! `tests/golden/make_vectors.py`; a failure here means the format changed (or the vectors did),
//! and every log already written would stop verifying.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use gatehouse_gateway::audit::event::{canonical_bytes, canonical_json, hex};
use gatehouse_gateway::audit::export::verify_export;
use gatehouse_gateway::audit::verify::ChainVerifier;
use gatehouse_gateway::audit::{AuditEvent, Checkpoint, EventKind, NewEvent, GENESIS_HASH};
use gatehouse_gateway::keys::{PublicKey, SigningKey};
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

fn golden() -> Value {
    let text = std::fs::read_to_string(format!("{DIR}/audit-events.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn text(v: &Value, k: &str) -> String {
    v[k].as_str()
        .unwrap_or_else(|| panic!("`{k}` is not text"))
        .to_string()
}

fn list(v: &Value, k: &str) -> Vec<String> {
    v[k].as_array()
        .unwrap_or_else(|| panic!("`{k}` is not a list"))
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn kind(s: &str) -> EventKind {
    [
        EventKind::GatewayStart,
        EventKind::AuthFailed,
        EventKind::AccessDecision,
        EventKind::DbStatement,
        EventKind::SessionCut,
        EventKind::GatewayStop,
    ]
    .into_iter()
    .find(|k| k.as_str() == s)
    .unwrap_or_else(|| panic!("no EventKind `{s}` in this test's table"))
}

/// The event as stored, from the vectors' `stored` object.
fn stored(v: &Value) -> AuditEvent {
    AuditEvent {
        seq: v["seq"].as_u64().unwrap(),
        ts: text(v, "ts"),
        kind: text(v, "kind"),
        actor: text(v, "actor"),
        resource: text(v, "resource"),
        action: text(v, "action"),
        decision: text(v, "decision"),
        reason: text(v, "reason"),
        policy_ids: list(v, "policy_ids"),
        controls: list(v, "controls"),
        session_id: text(v, "session_id"),
        detail: text(v, "detail"),
        prev_hash: text(v, "prev_hash"),
        hash: text(v, "hash"),
        // Commit seals are outside the hash; the vectors carry none.
        seal: None,
    }
}

fn events(g: &Value) -> Vec<AuditEvent> {
    g["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| stored(&e["stored"]))
        .collect()
}

fn public_key(g: &Value) -> PublicKey {
    let key = PublicKey::from_base64(&text(&g["test_key"], "public_key_base64")).unwrap();
    assert_eq!(key.key_id, text(&g["test_key"], "key_id"), "key id");
    assert_eq!(hex(&key.raw), text(&g["test_key"], "public_key_hex"));
    key
}

fn checkpoint(g: &Value) -> Checkpoint {
    serde_json::from_value(g["checkpoint"]["checkpoint"].clone()).unwrap()
}

#[test]
fn golden_events_seal_encode_and_hash_as_recorded() {
    let g = golden();
    assert_eq!(text(&g, "genesis_hash"), GENESIS_HASH);
    let vectors = g["events"].as_array().unwrap();
    assert!(vectors.len() >= 6);
    let mut prev = GENESIS_HASH.to_string();
    for (i, v) in vectors.iter().enumerate() {
        let input = &v["input"];
        let want = stored(&v["stored"]);
        let at = format!("event {}", i + 1);

        // Chain linkage: seq 1, 2, 3 ... each after the previous hash, the first after genesis.
        assert_eq!(want.seq, i as u64 + 1, "{at}: seq");
        assert_eq!(
            want.prev_hash, prev,
            "{at}: prev_hash is the previous event's hash"
        );
        assert_eq!(text(input, "prev_hash"), prev, "{at}: input prev_hash");

        // The encoding of the stored event, and its hash.
        let bytes = canonical_bytes(&want);
        assert_eq!(
            bytes.len() as u64,
            v["canonical_bytes_len"].as_u64().unwrap(),
            "{at}: canonical length"
        );
        assert_eq!(
            hex(&bytes),
            text(v, "canonical_bytes_hex"),
            "{at}: canonical bytes"
        );
        assert_eq!(want.compute_hash(), want.hash, "{at}: hash");

        // Sealing the input as the writer does gives exactly the stored event: merged and
        // ordered controls, canonical detail text, the same hash.
        let mut n = NewEvent::new(kind(&text(input, "kind")));
        n.actor = text(input, "actor");
        n.resource = text(input, "resource");
        n.action = text(input, "action");
        n.decision = text(input, "decision");
        n.reason = text(input, "reason");
        n.policy_ids = list(input, "policy_ids");
        n.controls = list(input, "extra_controls");
        n.session_id = text(input, "session_id");
        n.detail = serde_json::from_str(&text(input, "detail_input")).unwrap();
        let sealed = n.seal(
            input["seq"].as_u64().unwrap(),
            text(input, "ts"),
            text(input, "prev_hash"),
        );
        assert_eq!(sealed, want, "{at}: sealed event");

        // The stored detail is a fixed point of canonicalisation (what export verification
        // relies on when it rebuilds the text from the exported object).
        let reparsed: Value = serde_json::from_str(&want.detail).unwrap();
        assert_eq!(
            canonical_json(&reparsed),
            want.detail,
            "{at}: detail round trip"
        );
        prev = want.hash.clone();
    }
}

#[test]
fn golden_checkpoint_signs_and_verifies() {
    let g = golden();
    let key = public_key(&g);
    let cp = checkpoint(&g);
    let evs = events(&g);
    let last = evs.last().unwrap();
    assert_eq!((cp.seq, cp.hash.as_str()), (last.seq, last.hash.as_str()));
    assert_eq!(cp.key_id, key.key_id);

    // What is signed.
    let msg = Checkpoint::message(cp.seq, &cp.hash, &cp.ts);
    assert_eq!(
        hex(&msg),
        text(&g["checkpoint"], "signed_message_hex"),
        "checkpoint signed message"
    );

    // The production key loader and signer give the recorded (deterministic) signature.
    let dir = std::env::temp_dir().join(format!("gh-golden-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("audit.pem");
    std::fs::write(&pem, text(&g["test_key"], "pkcs8_pem")).unwrap();
    let signer = SigningKey::load(&pem).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(signer.public_key(), key);
    assert_eq!(B64.encode(signer.sign(&msg)), cp.signature, "signature");

    // The anchor file holds the checkpoint as this JSON text.
    let anchor = text(&g["checkpoint"], "anchor_file_text");
    assert_eq!(serde_json::to_string(&cp).unwrap(), anchor, "anchor text");

    // The production verifier accepts the chain with the checkpoint, and with the anchor.
    for cps in [
        vec![cp.clone()],
        vec![serde_json::from_str::<Checkpoint>(&anchor).unwrap()],
    ] {
        let mut v = ChainVerifier::new(&key, cps, 1, GENESIS_HASH.into()).unwrap();
        for e in &evs {
            v.push(e).unwrap();
        }
        let report = v.finish().unwrap();
        assert_eq!(
            (
                report.events,
                report.last_seq,
                report.checkpoints,
                report.last_checkpoint
            ),
            (evs.len() as u64, last.seq, 1, last.seq)
        );
    }

    // ... and refuses a checkpoint whose signature or signed fields differ by one bit.
    let mut sig = B64.decode(&cp.signature).unwrap();
    sig[0] ^= 1;
    let mut bad_sig = cp.clone();
    bad_sig.signature = B64.encode(&sig);
    let mut bad_ts = cp.clone();
    bad_ts.ts = bad_ts.ts.replace("100Z", "101Z");
    for bad in [bad_sig, bad_ts] {
        let err = ChainVerifier::new(&key, vec![bad], 1, GENESIS_HASH.into())
            .err()
            .expect("a forged checkpoint must not verify");
        assert_eq!(err.seq, cp.seq);
    }
}

#[test]
fn golden_export_verifies_offline() {
    let g = golden();
    let key = public_key(&g);
    let export = std::fs::read_to_string(format!("{DIR}/audit-export.jsonl")).unwrap();
    let report = verify_export(export.as_bytes(), &key).unwrap();
    let n = g["events"].as_array().unwrap().len() as u64;
    assert_eq!((report.events, report.checkpoints), (n, 1));

    // The manifest line is the vectors' manifest, and it signs what the vectors say.
    let line = export.lines().last().unwrap();
    let mut m: Value = serde_json::from_str(line).unwrap();
    assert_eq!(m["type"], "manifest");
    m.as_object_mut().unwrap().remove("type");
    assert_eq!(m, g["manifest"]["manifest"]);
    let msg = unhex(&text(&g["manifest"], "signed_message_hex"));
    let sig = B64.decode(text(&m, "signature")).unwrap();
    assert!(
        key.verify(&msg, &sig),
        "manifest signature over the recorded message"
    );

    // One changed byte anywhere in the manifest's signed fields fails the export.
    let edited = export.replacen("\"count\":6", "\"count\":5", 1);
    assert_ne!(edited, export);
    assert!(verify_export(edited.as_bytes(), &key).is_err());
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
