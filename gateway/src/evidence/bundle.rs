//! Building an evidence bundle for a period, and verifying one offline with only the audit
//! public key.
//!
//! A bundle is a flat directory: `audit-export.jsonl` (the period's events, their checkpoints
//! and the export's signed manifest), `checkpoints.jsonl` (the signed checkpoints inside the
//! period), `report.html`, `soa.csv`, the registers (`access-rights.csv`, `jit-ledger.csv`,
//! `authentication.csv`, `leavers.csv`, `sessions.csv`, `policies.csv`, `policy-changes.csv`,
//! `reviews.csv`, `campaigns.csv`),
//! `exceptions.csv`, `checks.json`, `bundle.json`, then `SHA256SUMS` (every other file with its
//! SHA-256, in `sha256sum` format) and `SHA256SUMS.sig` (Ed25519 over it, with the audit key).
//!
//! The report and the registers of the period are computed from the exported file, never from
//! the store, so what the auditor reads is what verifies.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::analysis::{Analysis, Exception};
use super::{registers, report, soa};
use crate::audit::event::Checkpoint;
use crate::audit::export::{self, event_from_line, verify_export, Format};
use crate::config::Config;
use crate::keys::{PublicKey, SigningKey};
use crate::store::{Store, StoreError};

pub const EXPORT: &str = "audit-export.jsonl";
pub const CHECKPOINTS: &str = "checkpoints.jsonl";
pub const SUMS: &str = "SHA256SUMS";
pub const SUMS_SIG: &str = "SHA256SUMS.sig";
const SIG_CONTEXT: &[u8] = b"gatehouse-evidence-bundle/v1\n";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("`{0}` exists and is not an empty directory; give a new one")]
    NotEmpty(PathBuf),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
    #[error(transparent)]
    Registers(#[from] registers::RegisterError),
    #[error(transparent)]
    Policies(#[from] crate::authz::AuthzError),
    #[error("cannot write the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// What to build.
pub struct Spec<'a> {
    /// RFC 3339 UTC bounds: `from <= ts < to`.
    pub from: &'a str,
    pub to: &'a str,
    pub out: &'a Path,
    /// Who built it (the operator line of admin commands).
    pub built_by: &'a str,
    /// Progress on stderr (a terminal).
    pub progress: bool,
    /// The whole log in the store verified with its seals and anchor (the caller ran it):
    /// the report, or where it broke. An export alone cannot show a row appended around the
    /// gateway at its end; the store's seals do.
    pub store_chain: Result<String, String>,
}

/// What was built.
#[derive(Debug, Serialize)]
pub struct Built {
    pub events: u64,
    pub exceptions: u64,
    pub chain_ok: bool,
    pub chain: String,
    /// SHA-256 of `SHA256SUMS`, recorded in the `evidence.bundle` event.
    pub sums_sha256: String,
    pub files: usize,
}

/// `bundle.json`: what the bundle is.
#[derive(Debug, Serialize, Deserialize)]
pub struct BundleInfo {
    pub format: String,
    pub from: String,
    pub to: String,
    pub built_at: String,
    pub built_by: String,
    pub gateway_version: String,
    pub key_id: String,
    pub events: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub policy_set_sha256: String,
    pub chain: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct SumsSignature {
    format: String,
    key_id: String,
    signature: String,
}

struct Progress {
    on: bool,
    what: &'static str,
    total: u64,
    done: u64,
}

impl Progress {
    fn tick(&mut self) {
        self.done += 1;
        if self.on && self.done.is_multiple_of(20_000) {
            let mut err = std::io::stderr().lock();
            let _ = if self.total > 0 {
                write!(
                    err,
                    "\r{}: {} of about {} events ({}%)   ",
                    self.what,
                    self.done,
                    self.total,
                    (self.done * 100 / self.total).min(100)
                )
            } else {
                write!(err, "\r{}: {} events   ", self.what, self.done)
            };
        }
    }

    fn end(&self) {
        if self.on {
            let _ = writeln!(
                std::io::stderr().lock(),
                "\r{}: {} events, done            ",
                self.what,
                self.done
            );
        }
    }
}

/// Counts the lines written through it, for the progress line.
struct LineCounter<'a, W: Write> {
    inner: W,
    progress: &'a mut Progress,
}

impl<W: Write> Write for LineCounter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for _ in buf[..n].iter().filter(|b| **b == b'\n') {
            self.progress.tick();
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(hex(ctx.finish().as_ref()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Builds the bundle for `spec` into `spec.out`.
pub async fn build(
    config: &Config,
    store: &Store,
    key: &SigningKey,
    spec: &Spec<'_>,
) -> Result<Built, BundleError> {
    let dir = spec.out;
    if dir.exists() {
        let empty = dir.is_dir() && std::fs::read_dir(dir)?.next().is_none();
        if !empty {
            return Err(BundleError::NotEmpty(dir.to_path_buf()));
        }
    }
    std::fs::create_dir_all(dir)?;
    // The bundle holds statements and names: readable by its builder only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let engine = crate::authz::load_policies(&config.policies_dir)?;
    let policies = engine.policies();
    let head = store.audit_last_seq().await?;
    let mut progress = Progress {
        on: spec.progress,
        what: "exporting",
        total: head,
        done: 0,
    };

    // 1. The export, straight from the store.
    {
        let file = File::create(dir.join(EXPORT))?;
        let mut w = LineCounter {
            inner: BufWriter::new(file),
            progress: &mut progress,
        };
        export::export(
            store,
            key,
            Format::Jsonl,
            Some(spec.from),
            Some(spec.to),
            &mut w,
        )
        .await?;
        w.inner
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
    }
    progress.end();

    // 2. One pass over the exported file.
    let mut analysis = Analysis::new(dir)?;
    let (mut first_seq, mut last_seq) = (0u64, 0u64);
    let mut progress = Progress {
        on: spec.progress,
        what: "analysing",
        total: progress.done,
        done: 0,
    };
    let reader = BufReader::new(File::open(dir.join(EXPORT))?);
    for (n, line) in reader.lines().enumerate() {
        let line = line?;
        progress.tick();
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) != Some("event") {
            continue;
        }
        let Some(e) = event_from_line(&v) else {
            continue;
        };
        if first_seq == 0 {
            first_seq = e.seq;
        }
        last_seq = e.seq;
        analysis.push(&e, n as u64 + 1)?;
    }
    progress.end();
    let mut findings = analysis.finish(dir)?;

    // 3. The chain: the export verified as an auditor would.
    let public = key.public_key();
    let exported = verify_export(BufReader::new(File::open(dir.join(EXPORT))?), &public);
    let (chain_ok, chain) = match (&spec.store_chain, exported) {
        (Err(e), _) => (false, format!("BROKEN in the store: {e}")),
        (Ok(_), Err(e)) => (
            false,
            format!("BROKEN in the export at seq {}: {}", e.seq, e.problem),
        ),
        (Ok(store), Ok(report)) => (true, format!("intact: export {report}; store {store}")),
    };
    if !chain_ok {
        findings.add(
            Exception {
                check: "chain",
                seq: 0,
                line: 0,
                ts: String::new(),
                actor: String::new(),
                resource: String::new(),
                what: chain.clone(),
            },
            dir,
        )?;
    }

    // 4. The checkpoints of the period.
    {
        let mut w = BufWriter::new(File::create(dir.join(CHECKPOINTS))?);
        for c in store.audit_checkpoints().await? {
            if findings.events > 0 && c.seq >= first_seq && c.seq <= last_seq {
                writeln!(w, "{}", serde_json::to_string(&c).unwrap_or_default())?;
            }
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }

    // 5. Registers of the state now, and the SoA.
    let (mut rows, standing, overdue) = registers::write(dir, config, &engine, store).await?;
    for i in overdue {
        findings.add(
            Exception {
                check: "review_items_overdue",
                seq: 0,
                line: 0,
                ts: i.due.clone(),
                actor: i.reviewer.clone(),
                resource: i.resource.clone(),
                what: format!(
                    "campaign {} item {} ({}'s `{}` access) undecided past its due date {}",
                    i.campaign_id, i.id, i.subject, i.role, i.due
                ),
            },
            dir,
        )?;
    }
    for p in standing {
        findings.add(
            Exception {
                check: "standing_privileged_permits",
                seq: 0,
                line: 0,
                ts: String::new(),
                actor: p.user.clone(),
                resource: p.resource.clone(),
                what: format!(
                    "{} may connect as `{}` without a grant (policies: {})",
                    p.user, p.role, p.policies
                ),
            },
            dir,
        )?;
    }
    rows.push(("soa.csv", soa::write(&dir.join("soa.csv"), &policies)?));
    let mut files: Vec<(&str, u64)> = findings.rows.iter().map(|(k, v)| (*k, *v)).collect();
    files.extend(rows);
    files.push((EXPORT, findings.events));
    files.sort();

    // 6. checks.json, bundle.json and the report.
    std::fs::write(
        dir.join("checks.json"),
        serde_json::to_string_pretty(&findings.checks_json()).unwrap_or_default(),
    )?;
    let policy_hash = crate::authz::policy_set_sha256(&config.policies_dir)?;
    let info = BundleInfo {
        format: "gatehouse-evidence-bundle/v1".into(),
        from: spec.from.into(),
        to: spec.to.into(),
        built_at: crate::audit::event::now_ts(),
        built_by: spec.built_by.into(),
        gateway_version: env!("CARGO_PKG_VERSION").into(),
        key_id: key.key_id.clone(),
        events: findings.events,
        first_seq,
        last_seq,
        policy_set_sha256: policy_hash.clone(),
        chain: chain.clone(),
    };
    std::fs::write(
        dir.join("bundle.json"),
        serde_json::to_string_pretty(&info).unwrap_or_default(),
    )?;
    {
        let mut w = BufWriter::new(File::create(dir.join("report.html"))?);
        let meta = report::Meta {
            from: spec.from,
            to: spec.to,
            built_at: &info.built_at,
            built_by: spec.built_by,
            key_id: &key.key_id,
            chain: &chain,
            chain_ok,
            policy_hash: &policy_hash,
            gateway_version: env!("CARGO_PKG_VERSION"),
            files: &files,
        };
        report::write(&mut w, &meta, &findings, &policies)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }

    // 7. The manifest over every file, signed.
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != SUMS && n != SUMS_SIG)
        .collect();
    names.sort();
    let mut sums = String::new();
    for n in &names {
        sums.push_str(&format!("{}  {n}\n", sha256_file(&dir.join(n))?));
    }
    core_write(&dir.join(SUMS), sums.as_bytes())?;
    let mut msg = SIG_CONTEXT.to_vec();
    msg.extend_from_slice(sums.as_bytes());
    let sig = SumsSignature {
        format: "gatehouse-evidence-bundle/v1".into(),
        key_id: key.key_id.clone(),
        signature: B64.encode(key.sign(&msg)),
    };
    core_write(
        &dir.join(SUMS_SIG),
        serde_json::to_string_pretty(&sig)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    let exceptions = super::analysis::CHECKS
        .iter()
        .filter(|c| c.zero_expected)
        .map(|c| findings.counts.get(c.id).copied().unwrap_or(0))
        .sum();
    Ok(Built {
        events: findings.events,
        exceptions,
        chain_ok,
        chain,
        sums_sha256: hex(ring::digest::digest(&ring::digest::SHA256, sums.as_bytes()).as_ref()),
        files: names.len() + 2,
    })
}

fn core_write(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Why a bundle fails verification, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct BundleProblem {
    pub file: String,
    pub problem: String,
}

/// What a verified bundle holds.
#[derive(Debug)]
pub struct Verified {
    pub files: usize,
    pub events: u64,
    pub checkpoints: usize,
    pub chain: String,
    pub info: Option<BundleInfo>,
}

fn problem(file: &str, p: impl Into<String>) -> BundleProblem {
    BundleProblem {
        file: file.into(),
        problem: p.into(),
    }
}

/// Verifies a bundle with only the audit public key: `SHA256SUMS` is signed by it, lists every
/// file exactly (none changed, missing or added), the export verifies and chains into the
/// period's checkpoints.
pub fn verify(dir: &Path, key: &PublicKey) -> Result<Verified, BundleProblem> {
    let sig_text = std::fs::read_to_string(dir.join(SUMS_SIG)).map_err(|e| {
        problem(
            SUMS_SIG,
            format!("cannot read: {e} (not a bundle, or the signature was removed)"),
        )
    })?;
    let sig: SumsSignature = serde_json::from_str(&sig_text)
        .map_err(|e| problem(SUMS_SIG, format!("malformed: {e}")))?;
    let sums =
        std::fs::read(dir.join(SUMS)).map_err(|e| problem(SUMS, format!("cannot read: {e}")))?;
    let mut msg = SIG_CONTEXT.to_vec();
    msg.extend_from_slice(&sums);
    let raw = B64.decode(&sig.signature).unwrap_or_default();
    if !key.verify(&msg, &raw) {
        return Err(problem(
            SUMS,
            format!("the signature in {SUMS_SIG} does not verify with key {} (manifest edited, or signed by key {})", key.key_id, sig.key_id),
        ));
    }
    let sums = String::from_utf8(sums).map_err(|_| problem(SUMS, "not UTF-8"))?;
    let mut listed: BTreeMap<String, String> = BTreeMap::new();
    for (i, line) in sums.lines().enumerate() {
        let Some((hash, name)) = line.split_once("  ") else {
            return Err(problem(SUMS, format!("line {} is not `HASH  NAME`", i + 1)));
        };
        let safe = !name.is_empty()
            && !name.contains(['/', '\\'])
            && name != "."
            && name != ".."
            && name != SUMS
            && name != SUMS_SIG;
        if !safe || hash.len() != 64 || listed.insert(name.to_string(), hash.to_string()).is_some()
        {
            return Err(problem(
                SUMS,
                format!(
                    "line {} names `{}`, which no bundle holds",
                    i + 1,
                    name.escape_debug()
                ),
            ));
        }
    }
    for name in [EXPORT, CHECKPOINTS, "report.html", "soa.csv", "bundle.json"] {
        if !listed.contains_key(name) {
            return Err(problem(
                name,
                format!("not listed in {SUMS}: every bundle has it"),
            ));
        }
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| problem(".", format!("cannot read the directory: {e}")))?;
    let mut present = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name == SUMS || name == SUMS_SIG {
            continue;
        }
        if !listed.contains_key(&name) {
            return Err(problem(&name, format!("added: not listed in {SUMS}")));
        }
        present.push(name);
    }
    for (name, hash) in &listed {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(problem(
                name,
                format!("removed: listed in {SUMS} but not in the bundle"),
            ));
        }
        let got = sha256_file(&path).map_err(|e| problem(name, format!("cannot read: {e}")))?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            got.as_bytes(),
            hash.as_bytes(),
        )) {
            return Err(problem(
                name,
                format!("changed: its SHA-256 is {got}, {SUMS} says {hash}"),
            ));
        }
    }
    let file = File::open(dir.join(EXPORT)).map_err(|e| problem(EXPORT, e.to_string()))?;
    let report = verify_export(BufReader::new(file), key).map_err(|e| {
        problem(
            EXPORT,
            format!("fails verification at seq {}: {}", e.seq, e.problem),
        )
    })?;

    // The checkpoints of the period: each signed, each on the exported chain.
    let text = std::fs::read_to_string(dir.join(CHECKPOINTS))
        .map_err(|e| problem(CHECKPOINTS, e.to_string()))?;
    let mut wanted: HashMap<u64, String> = HashMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let c: Checkpoint = serde_json::from_str(line)
            .map_err(|e| problem(CHECKPOINTS, format!("line {}: malformed: {e}", i + 1)))?;
        let sig = B64.decode(&c.signature).unwrap_or_default();
        if !key.verify(&Checkpoint::message(c.seq, &c.hash, &c.ts), &sig) {
            return Err(problem(
                CHECKPOINTS,
                format!(
                    "line {}: checkpoint at seq {} is not signed by key {}",
                    i + 1,
                    c.seq,
                    key.key_id
                ),
            ));
        }
        if c.seq < report.first_seq || c.seq > report.last_seq || report.events == 0 {
            return Err(problem(
                CHECKPOINTS,
                format!(
                    "line {}: checkpoint at seq {} is outside the export ({}..={})",
                    i + 1,
                    c.seq,
                    report.first_seq,
                    report.last_seq
                ),
            ));
        }
        wanted.insert(c.seq, c.hash);
    }
    let checkpoints = wanted.len();
    if !wanted.is_empty() {
        let file = File::open(dir.join(EXPORT)).map_err(|e| problem(EXPORT, e.to_string()))?;
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| problem(EXPORT, e.to_string()))?;
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let (Some(seq), Some(hash)) = (
                v.get("seq").and_then(Value::as_u64),
                v.get("hash").and_then(Value::as_str),
            ) else {
                continue;
            };
            if v.get("type").and_then(Value::as_str) != Some("event") {
                continue;
            }
            if let Some(want) = wanted.remove(&seq) {
                if want != hash {
                    return Err(problem(CHECKPOINTS, format!("the checkpoint at seq {seq} signs a hash the export's event does not have")));
                }
            }
        }
        if let Some(seq) = wanted.keys().min() {
            return Err(problem(
                CHECKPOINTS,
                format!("the checkpoint at seq {seq} has no event in the export"),
            ));
        }
    }
    let info: Option<BundleInfo> = std::fs::read_to_string(dir.join("bundle.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let Some(meta) = &info else {
        return Err(problem("bundle.json", "malformed"));
    };
    if !meta.chain.starts_with("intact") {
        return Err(problem(
            "bundle.json",
            format!(
                "the log did not verify when the bundle was built: {}",
                meta.chain
            ),
        ));
    }
    Ok(Verified {
        files: present.len() + 2,
        events: report.events,
        checkpoints,
        chain: report.to_string(),
        info,
    })
}

/// Whether progress goes to stderr.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}
