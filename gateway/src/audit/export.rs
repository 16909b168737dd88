//! Export of the log for auditors (JSONL, verifiable offline; CSV for spreadsheets) and offline
//! verification of a JSONL export with only the public key.
//!
//! A JSONL export is one JSON object per line: `event` lines in sequence order, `checkpoint`
//! lines for the signed checkpoints in range, and a final `manifest` line signed with the audit
//! key that states the range, count and boundary hashes. Without a valid manifest an export
//! fails verification, which is what makes truncation of the file detectable.

use std::io::{BufRead, Write};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::event::{now_ts, AuditEvent};
use super::verify::{ChainVerifier, VerifyError, VerifyReport};
use super::GENESIS_HASH;
use crate::keys::{PublicKey, SigningKey};
use crate::store::{Store, StoreError};

const PAGE: u32 = 5000;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // The message holds the cause; no `source()` as well, or `{:#}` prints it twice.
    #[error("cannot write export: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Io(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jsonl,
    Csv,
    /// One OCSF event per line (`audit::ocsf`), for SIEMs; no manifest, not verifiable.
    Ocsf,
}

/// The signed last line of a JSONL export.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub first_seq: u64,
    pub last_seq: u64,
    pub count: u64,
    pub first_prev_hash: String,
    pub last_hash: String,
    pub from: String,
    pub to: String,
    pub exported_at: String,
    pub key_id: String,
    pub signature: String,
}

impl Manifest {
    fn message(&self) -> Vec<u8> {
        format!(
            "gatehouse-audit-export/v1\nfirst_seq={}\nlast_seq={}\ncount={}\nfirst_prev_hash={}\nlast_hash={}\nfrom={}\nto={}\nexported_at={}\n",
            self.first_seq, self.last_seq, self.count, self.first_prev_hash, self.last_hash, self.from, self.to, self.exported_at
        )
        .into_bytes()
    }
}

/// Writes the events with `from <= ts < to` (RFC 3339 UTC text bounds) to `out`.
pub async fn export(
    store: &Store,
    key: &SigningKey,
    format: Format,
    from: Option<&str>,
    to: Option<&str>,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    if format == Format::Csv {
        writeln!(out, "seq,ts,kind,actor,resource,action,decision,reason,policy_ids,controls,session_id,detail,prev_hash,hash")?;
    }
    let checkpoints = store.audit_checkpoints().await?;
    let mut manifest = Manifest {
        first_seq: 0,
        last_seq: 0,
        count: 0,
        first_prev_hash: String::new(),
        last_hash: String::new(),
        from: from.unwrap_or("").to_string(),
        to: to.unwrap_or("").to_string(),
        exported_at: now_ts(),
        key_id: key.key_id.clone(),
        signature: String::new(),
    };
    // The range is contiguous in seq: from the first event at or after `from` to the last
    // before `to`, so the chain can be verified across it.
    let first = store.audit_events(0, 1, from, to).await?;
    let mut after = match first.first() {
        Some(e) => e.seq - 1,
        None => u64::MAX,
    };
    let mut cp_iter = checkpoints.iter().peekable();
    while after != u64::MAX {
        let page = store.audit_events(after, PAGE, None, to).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if manifest.count == 0 {
                manifest.first_seq = e.seq;
                manifest.first_prev_hash = e.prev_hash.clone();
            }
            manifest.count += 1;
            manifest.last_seq = e.seq;
            manifest.last_hash = e.hash.clone();
            match format {
                Format::Jsonl => {
                    writeln!(out, "{}", event_line(e))?;
                    while let Some(c) = cp_iter.next_if(|c| c.seq <= e.seq) {
                        if c.seq == e.seq {
                            let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
                            v["type"] = json!("checkpoint");
                            writeln!(out, "{v}")?;
                        }
                    }
                }
                Format::Csv => writeln!(out, "{}", csv_line(e))?,
                Format::Ocsf => writeln!(out, "{}", super::ocsf::event(e))?,
            }
        }
        after = page.last().map(|e| e.seq).unwrap_or(u64::MAX);
    }
    if format == Format::Jsonl {
        manifest.signature = B64.encode(key.sign(&manifest.message()));
        let mut v = serde_json::to_value(&manifest).unwrap_or(Value::Null);
        v["type"] = json!("manifest");
        writeln!(out, "{v}")?;
    }
    out.flush()?;
    Ok(manifest.count)
}

pub(crate) fn event_line(e: &AuditEvent) -> Value {
    let detail: Value =
        serde_json::from_str(&e.detail).unwrap_or_else(|_| Value::String(e.detail.clone()));
    let mut line = json!({
        "type": "event",
        "seq": e.seq,
        "ts": e.ts,
        "kind": e.kind,
        "actor": e.actor,
        "resource": e.resource,
        "action": e.action,
        "decision": e.decision,
        "reason": e.reason,
        "policy_ids": e.policy_ids,
        "controls": e.controls,
        "session_id": e.session_id,
        "detail": detail,
        "prev_hash": e.prev_hash,
        "hash": e.hash,
    });
    if let Some(seal) = &e.seal {
        line["seal"] = json!(seal);
    }
    line
}

fn csv_line(e: &AuditEvent) -> String {
    let fields = [
        e.seq.to_string(),
        e.ts.clone(),
        e.kind.clone(),
        e.actor.clone(),
        e.resource.clone(),
        e.action.clone(),
        e.decision.clone(),
        e.reason.clone(),
        e.policy_ids.join(" "),
        e.controls.join(" "),
        e.session_id.clone(),
        e.detail.clone(),
        e.prev_hash.clone(),
        e.hash.clone(),
    ];
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// Quotes a CSV field, and defuses spreadsheet formulas (a leading `=`, `+`, `-`, `@`).
/// One CSV field, safe to open in a spreadsheet whatever separator it is set to: always
/// quoted (so a `;` or `,` inside never starts a new cell), and a field that starts with a
/// formula character (after any leading spaces) is prefixed with `'` so it stays text.
pub(crate) fn csv_field(f: &str) -> String {
    let dangerous = f
        .trim_start_matches([' ', '"'])
        .starts_with(['=', '+', '-', '@', '\t', '\r', '|', '%']);
    let f = if dangerous || f.starts_with(['\t', '\r']) {
        format!("'{f}")
    } else {
        f.to_string()
    };
    format!("\"{}\"", f.replace('"', "\"\""))
}

/// Verifies a JSONL export with only the audit public key, in one streaming pass (memory does
/// not grow with the export): each event is checked against the chain as it is read, held back
/// only until the next line says whether a checkpoint signs it; the signed manifest at the end
/// must then state exactly the range, count and boundary hashes that were read.
pub fn verify_export(input: impl BufRead, key: &PublicKey) -> Result<VerifyReport, VerifyError> {
    let mut chain: Option<ChainVerifier> = None;
    let mut pending: Option<AuditEvent> = None;
    let mut manifest: Option<Manifest> = None;
    let (mut count, mut first_seq, mut first_prev, mut last_seq) =
        (0u64, 0u64, String::new(), 0u64);
    // An export is a slice: it may start and end inside a commit, so its last rows need not
    // carry a seal (the signed manifest covers them).
    let flush = |chain: &mut Option<ChainVerifier>,
                 pending: &mut Option<AuditEvent>|
     -> Result<(), VerifyError> {
        if let (Some(c), Some(e)) = (chain.as_mut(), pending.take()) {
            c.push(&e)?;
        }
        Ok(())
    };
    for (i, line) in input.lines().enumerate() {
        let at = if count == 0 { 0 } else { last_seq + 1 };
        let line = line.map_err(|e| VerifyError {
            seq: at,
            problem: format!("line {}: cannot read: {e}", i + 1),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        if manifest.is_some() {
            return Err(VerifyError {
                seq: at,
                problem: format!("line {}: data after the manifest", i + 1),
            });
        }
        let bad = |what: String| VerifyError {
            seq: at,
            problem: format!("line {}: {what} (export edited or corrupted)", i + 1),
        };
        let v: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        match v.get("type").and_then(Value::as_str) {
            Some("event") => {
                let e = event_from_line(&v).ok_or_else(|| bad("malformed event".into()))?;
                flush(&mut chain, &mut pending)?;
                if chain.is_none() {
                    first_seq = e.seq;
                    first_prev = e.prev_hash.clone();
                    chain = Some(
                        ChainVerifier::new(key, Vec::new(), e.seq.max(1), e.prev_hash.clone())?
                            .tail_may_be_unsealed(),
                    );
                }
                count += 1;
                last_seq = e.seq;
                pending = Some(e);
            }
            Some("checkpoint") => {
                let c: crate::audit::Checkpoint = serde_json::from_value(v)
                    .map_err(|e| bad(format!("malformed checkpoint: {e}")))?;
                match chain.as_mut() {
                    Some(ch) => ch.add_checkpoint(c)?,
                    None => return Err(bad("a checkpoint before any event".into())),
                }
            }
            Some("manifest") => {
                flush(&mut chain, &mut pending)?;
                manifest = Some(
                    serde_json::from_value(v)
                        .map_err(|e| bad(format!("malformed manifest: {e}")))?,
                )
            }
            _ => return Err(bad("unknown line type".into())),
        }
    }
    let next = if count == 0 { 0 } else { last_seq + 1 };
    let manifest = manifest.ok_or(VerifyError {
        seq: next,
        problem:
            "export has no manifest: file truncated or not produced by `gatehouse audit export`"
                .into(),
    })?;
    let sig = B64.decode(&manifest.signature).unwrap_or_default();
    if !key.verify(&manifest.message(), &sig) {
        return Err(VerifyError {
            seq: manifest.first_seq,
            problem: format!(
                "manifest signature does not verify with key {} (manifest edited or wrong key)",
                key.key_id
            ),
        });
    }
    if count > 0 && (first_seq != manifest.first_seq || first_prev != manifest.first_prev_hash) {
        return Err(VerifyError {
            seq: manifest.first_seq,
            problem: format!(
                "export starts at seq {first_seq} but its manifest signs a start at seq {} (events removed)",
                manifest.first_seq
            ),
        });
    }
    let chain = match chain {
        Some(c) => c,
        None => ChainVerifier::new(
            key,
            Vec::new(),
            manifest.first_seq.max(1),
            GENESIS_HASH.to_string(),
        )?
        .tail_may_be_unsealed(),
    };
    if count != manifest.count || (count > 0 && chain.last_hash() != manifest.last_hash) {
        return Err(VerifyError {
            seq: next.max(manifest.first_seq),
            problem: format!("export holds {count} events but its manifest signs {} ending at seq {} (events removed)", manifest.count, manifest.last_seq),
        });
    }
    chain.finish()
}

pub(crate) fn event_from_line(v: &Value) -> Option<AuditEvent> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let list = |k: &str| -> Option<Vec<String>> {
        v.get(k)?
            .as_array()?
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect()
    };
    Some(AuditEvent {
        seq: v.get("seq")?.as_u64()?,
        ts: s("ts")?,
        kind: s("kind")?,
        actor: s("actor")?,
        resource: s("resource")?,
        action: s("action")?,
        decision: s("decision")?,
        reason: s("reason")?,
        policy_ids: list("policy_ids")?,
        controls: list("controls")?,
        session_id: s("session_id")?,
        detail: match v.get("detail")? {
            Value::String(raw) => raw.clone(),
            other => super::event::canonical_json(other),
        },
        prev_hash: s("prev_hash")?,
        hash: s("hash")?,
        seal: s("seal"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_defuses_formulas_and_quotes() {
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("plain"), "\"plain\"");
        // With `;` as the spreadsheet's separator, a quoted field stays one cell.
        assert_eq!(
            csv_field("x;=cmd|' /C calc'!A0"),
            "\"x;=cmd|' /C calc'!A0\""
        );
        // Leading spaces or quotes do not hide a formula.
        assert_eq!(csv_field("  =1+1"), "\"'  =1+1\"");
        assert_eq!(csv_field("\"=1+1"), "\"'\"\"=1+1\"");
    }
}
