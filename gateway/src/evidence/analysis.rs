//! One pass over a period's events: the registers written as they are found, the derived checks
//! and their exceptions, the counts and the samples the report shows.
//!
//! It reads the exported file, not the store, so everything in the report can be recomputed
//! from the bundle alone. Memory holds only what joins events (open sessions, requests and
//! grants of the period, users disabled, per-day and per-name counts), never the events, so a
//! year of statements streams through.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::csv::CsvFile;
use crate::audit::AuditEvent;

/// Samples kept per control: the first few and the latest few of the period.
const SAMPLES_FIRST: usize = 3;
const SAMPLES_LAST: usize = 2;
/// Exceptions the report lists per check; all of them are in `exceptions.csv`.
pub const EXCEPTIONS_SHOWN: usize = 50;

/// A derived check: what it counts, the controls it is evidence for, and whether any count is
/// an exception.
#[derive(Debug, Clone, Copy)]
pub struct CheckDef {
    pub id: &'static str,
    pub title: &'static str,
    pub controls: &'static [&'static str],
    /// Anything above zero is an exception (else the count is information).
    pub zero_expected: bool,
}

pub const CHECKS: &[CheckDef] = &[
    CheckDef {
        id: "self_approvals",
        title: "Approvals by the requester themselves",
        controls: &["5.3"],
        zero_expected: true,
    },
    CheckDef {
        id: "self_approval_attempts",
        title: "Self-approval attempts refused",
        controls: &["5.3"],
        zero_expected: false,
    },
    CheckDef {
        id: "grants_without_approval",
        title: "Privileged grants without the approvals their request required",
        controls: &["5.3", "8.2", "5.18"],
        zero_expected: true,
    },
    CheckDef {
        id: "break_glass_unreviewed",
        title: "Break-glass grants not signed off by someone else",
        controls: &["5.26", "8.2", "5.3"],
        zero_expected: true,
    },
    CheckDef {
        id: "standing_privileged_sessions",
        title: "Privileged sessions admitted without a grant",
        controls: &["8.2", "5.18"],
        zero_expected: true,
    },
    CheckDef {
        id: "standing_privileged_permits",
        title: "Standing privileged permits in the policies now loaded",
        controls: &["8.2", "5.15"],
        zero_expected: true,
    },
    CheckDef {
        id: "access_after_disable",
        title: "Access after the user was disabled",
        controls: &["5.18", "6.5", "5.16"],
        zero_expected: true,
    },
    CheckDef {
        id: "grant_use_after_end",
        title: "Sessions admitted under a grant after it ended",
        controls: &["5.18", "8.2"],
        zero_expected: true,
    },
    CheckDef {
        id: "sessions_without_end",
        title:
            "Sessions without an end record (still open at the period's end, or the gateway died)",
        controls: &["8.15"],
        zero_expected: true,
    },
    CheckDef {
        id: "foreign_rows",
        title: "Rows written around the gateway (audit.foreign_rows)",
        controls: &["8.15", "5.33"],
        zero_expected: true,
    },
    CheckDef {
        id: "agent_events_refused",
        title: "Agent events the gateway could not attribute to a session it opened",
        controls: &["8.15", "8.20"],
        zero_expected: true,
    },
    CheckDef {
        id: "review_items_overdue",
        title: "Access review items undecided past their due date",
        controls: &["5.18"],
        zero_expected: true,
    },
    CheckDef {
        id: "review_revocations",
        title: "Access revoked by review decisions",
        controls: &["5.18", "8.2"],
        zero_expected: false,
    },
    CheckDef {
        id: "policy_changes_unapproved",
        title: "Policy changes applied without a second person's approval",
        controls: &["8.32", "5.15", "5.3"],
        zero_expected: true,
    },
    CheckDef {
        id: "policy_changes_refused",
        title: "Policy sets refused (failed checks or tests; the old set stayed)",
        controls: &["8.32", "5.15"],
        zero_expected: false,
    },
    CheckDef {
        id: "chain",
        title: "Chain verification of the export (breaks found)",
        controls: &["5.28", "5.33", "8.15"],
        zero_expected: true,
    },
];

/// One exception: the event that shows it, and what is wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Exception {
    pub check: &'static str,
    pub seq: u64,
    pub line: u64,
    pub ts: String,
    pub actor: String,
    pub resource: String,
    pub what: String,
}

impl Exception {
    /// Its row in `exceptions.csv`.
    fn fields(&self) -> [String; 7] {
        [
            self.check.to_string(),
            self.seq.to_string(),
            self.line.to_string(),
            self.ts.clone(),
            self.actor.clone(),
            self.resource.clone(),
            self.what.clone(),
        ]
    }
}

/// Counts `ex` for its check and keeps it for the report, up to [`EXCEPTIONS_SHOWN`] per check.
fn count_and_keep(
    counts: &mut BTreeMap<&'static str, u64>,
    shown: &mut BTreeMap<&'static str, Vec<Exception>>,
    ex: Exception,
) {
    *counts.entry(ex.check).or_default() += 1;
    let kept = shown.entry(ex.check).or_default();
    if kept.len() < EXCEPTIONS_SHOWN {
        kept.push(ex);
    }
}

/// An event shown as a sample.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub seq: u64,
    pub line: u64,
    pub ts: String,
    pub kind: String,
    pub actor: String,
    pub resource: String,
    pub decision: String,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ControlStats {
    pub events: u64,
    pub first: Vec<Sample>,
    pub last: std::collections::VecDeque<Sample>,
}

/// A request (or a grant without one) from request to end.
#[derive(Debug, Default, Clone)]
struct LedgerRow {
    request_id: Option<i64>,
    requester: String,
    resource: String,
    role: String,
    requested_at: String,
    reason: String,
    ticket: String,
    approvals_required: Option<i64>,
    approvers: Vec<(String, String)>,
    denied_by: String,
    break_glass: bool,
    review_id: Option<i64>,
    reviewed_by: String,
    grant_id: Option<i64>,
    source: String,
    granted_by: String,
    granted_at: String,
    expires: String,
    ended_at: String,
    end_how: String,
    revoked_by: String,
    seq: u64,
    line: u64,
}

#[derive(Debug, Clone)]
struct Leaver {
    user: String,
    disabled_at: String,
    by: String,
    reason: String,
    enabled_at: String,
    last_access_before: String,
    last_activity_after: String,
    access_after: u64,
}

#[derive(Debug, Clone)]
struct OpenSession {
    ts: String,
    user: String,
    resource: String,
    role: String,
    upstream_user: String,
    client_addr: String,
    seq: u64,
    line: u64,
}

/// The registers written while streaming.
struct Registers {
    policy_changes: CsvFile,
    authentication: CsvFile,
    sessions: CsvFile,
    exceptions: CsvFile,
}

/// The state of the pass.
pub struct Analysis {
    regs: Registers,
    pub events: u64,
    pub first_ts: String,
    pub last_ts: String,
    pub kinds: BTreeMap<String, u64>,
    pub controls: BTreeMap<String, ControlStats>,
    /// Per UTC day: (allowed, denied) connection decisions.
    pub decisions_per_day: BTreeMap<String, (u64, u64)>,
    pub denials_by_policy: BTreeMap<String, u64>,
    pub approvals_by_approver: BTreeMap<String, u64>,
    pub counts: BTreeMap<&'static str, u64>,
    pub exceptions: BTreeMap<&'static str, Vec<Exception>>,
    /// Facts the report states (logins, MFA, failures ...).
    pub facts: BTreeMap<&'static str, u64>,
    ledger: BTreeMap<String, LedgerRow>,
    grant_key: HashMap<i64, String>,
    grants_ended: HashSet<i64>,
    leavers: Vec<Leaver>,
    disabled: HashMap<String, usize>,
    last_access: HashMap<String, String>,
    open: HashMap<String, OpenSession>,
    /// Leavers' seconds from disable to their last activity after it.
    pub leaver_latency: Vec<(String, i64)>,
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => x.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn i(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

fn secs_between(a: &str, b: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let a = time::OffsetDateTime::parse(a, &Rfc3339).ok()?;
    let b = time::OffsetDateTime::parse(b, &Rfc3339).ok()?;
    Some((b - a).whole_seconds())
}

impl Analysis {
    pub fn new(dir: &Path) -> std::io::Result<Analysis> {
        let regs = Registers {
            policy_changes: CsvFile::create(
                &dir.join("policy-changes.csv"),
                &[
                    "seq",
                    "ts",
                    "applied_by",
                    "outcome",
                    "reason",
                    "approved_by",
                    "previous_sha256",
                    "sha256",
                    "added",
                    "removed",
                    "changed",
                    "tests_passed",
                    "request_id",
                ],
            )?,
            authentication: CsvFile::create(
                &dir.join("authentication.csv"),
                &[
                    "seq",
                    "ts",
                    "kind",
                    "user",
                    "outcome",
                    "method",
                    "mfa",
                    "amr",
                    "client_addr",
                    "reason",
                    "count",
                ],
            )?,
            sessions: CsvFile::create(
                &dir.join("sessions.csv"),
                &[
                    "session_id",
                    "user",
                    "resource",
                    "role",
                    "upstream_user",
                    "client_addr",
                    "started",
                    "ended",
                    "end_reason",
                    "statements",
                    "bytes_from_client",
                    "bytes_to_client",
                    "protocol",
                    "start_seq",
                    "end_seq",
                ],
            )?,
            exceptions: CsvFile::create(
                &dir.join("exceptions.csv"),
                &["check", "seq", "line", "ts", "actor", "resource", "what"],
            )?,
        };
        let mut counts = BTreeMap::new();
        for c in CHECKS {
            counts.insert(c.id, 0);
        }
        Ok(Analysis {
            regs,
            events: 0,
            first_ts: String::new(),
            last_ts: String::new(),
            kinds: BTreeMap::new(),
            controls: BTreeMap::new(),
            decisions_per_day: BTreeMap::new(),
            denials_by_policy: BTreeMap::new(),
            approvals_by_approver: BTreeMap::new(),
            counts,
            exceptions: BTreeMap::new(),
            facts: BTreeMap::new(),
            ledger: BTreeMap::new(),
            grant_key: HashMap::new(),
            grants_ended: HashSet::new(),
            leavers: Vec::new(),
            disabled: HashMap::new(),
            last_access: HashMap::new(),
            open: HashMap::new(),
            leaver_latency: Vec::new(),
        })
    }

    fn fact(&mut self, k: &'static str, n: u64) {
        *self.facts.entry(k).or_default() += n;
    }

    /// Counts one for `check`; if it is an exception, records which event shows it.
    pub fn flag(
        &mut self,
        check: &'static str,
        e: Option<(&AuditEvent, u64)>,
        what: String,
    ) -> std::io::Result<()> {
        let ex = Exception {
            check,
            seq: e.map(|(e, _)| e.seq).unwrap_or(0),
            line: e.map(|(_, l)| l).unwrap_or(0),
            ts: e.map(|(e, _)| e.ts.clone()).unwrap_or_default(),
            actor: e.map(|(e, _)| e.actor.clone()).unwrap_or_default(),
            resource: e.map(|(e, _)| e.resource.clone()).unwrap_or_default(),
            what,
        };
        self.push_exception(ex)
    }

    fn sample(&mut self, e: &AuditEvent, line: u64) {
        for c in &e.controls {
            let st = self.controls.entry(c.clone()).or_default();
            st.events += 1;
            let smp = Sample {
                seq: e.seq,
                line,
                ts: e.ts.clone(),
                kind: e.kind.clone(),
                actor: e.actor.clone(),
                resource: e.resource.clone(),
                decision: e.decision.clone(),
                reason: e.reason.clone(),
            };
            if st.first.len() < SAMPLES_FIRST {
                st.first.push(smp);
            } else {
                if st.last.len() == SAMPLES_LAST {
                    st.last.pop_front();
                }
                st.last.push_back(smp);
            }
        }
    }

    fn ledger_for_grant(&mut self, grant_id: i64, request_id: Option<i64>) -> &mut LedgerRow {
        let key = match (self.grant_key.get(&grant_id), request_id) {
            (Some(k), _) => k.clone(),
            (None, Some(r)) => format!("r{r:012}"),
            (None, None) => format!("g{grant_id:012}"),
        };
        self.grant_key.insert(grant_id, key.clone());
        let row = self.ledger.entry(key).or_default();
        row.grant_id = Some(grant_id);
        if row.request_id.is_none() {
            row.request_id = request_id;
        }
        row
    }

    fn ledger_for_request(&mut self, request_id: i64) -> &mut LedgerRow {
        let row = self.ledger.entry(format!("r{request_id:012}")).or_default();
        row.request_id = Some(request_id);
        row
    }

    /// Whether `user` is disabled now (in the stream's time).
    fn is_disabled(&self, user: &str) -> Option<usize> {
        self.disabled.get(user).copied()
    }

    fn access_by(&mut self, e: &AuditEvent, line: u64, what: &str) -> std::io::Result<()> {
        if let Some(idx) = self.is_disabled(&e.actor) {
            let l = &mut self.leavers[idx];
            l.access_after += 1;
            l.last_activity_after = e.ts.clone();
            let at = l.disabled_at.clone();
            self.flag(
                "access_after_disable",
                Some((e, line)),
                format!("{what} for {}, disabled at {at}", e.actor),
            )?;
        } else {
            self.last_access.insert(e.actor.clone(), e.ts.clone());
        }
        Ok(())
    }

    /// Takes one event of the export, at `line` of the file.
    pub fn push(&mut self, e: &AuditEvent, line: u64) -> std::io::Result<()> {
        self.events += 1;
        if self.first_ts.is_empty() {
            self.first_ts = e.ts.clone();
        }
        self.last_ts = e.ts.clone();
        *self.kinds.entry(e.kind.clone()).or_default() += 1;
        self.sample(e, line);
        let d: Value = serde_json::from_str(&e.detail).unwrap_or(Value::Null);
        let count = i(&d, "count").map(|c| c.max(1) as u64).unwrap_or(1);
        match e.kind.as_str() {
            "access.decision" => {
                let day: String = e.ts.chars().take(10).collect();
                let slot = self.decisions_per_day.entry(day).or_default();
                if e.decision == "allow" {
                    slot.0 += 1;
                    let role = s(&d, "role");
                    let grant = i(&d, "grant_id");
                    if !role.is_empty() && role != "read" && grant.is_none() {
                        self.flag(
                            "standing_privileged_sessions",
                            Some((e, line)),
                            format!("{} admitted as `{role}` without a grant", e.actor),
                        )?;
                    }
                    if let Some(g) = grant {
                        if self.grants_ended.contains(&g) {
                            self.flag(
                                "grant_use_after_end",
                                Some((e, line)),
                                format!("admitted under grant {g}, which had ended"),
                            )?;
                        }
                    }
                    self.access_by(e, line, "connection allowed")?;
                    self.fact("decisions_allowed", 1);
                } else {
                    slot.1 += 1;
                    self.fact("decisions_denied", 1);
                    if e.policy_ids.is_empty() {
                        *self
                            .denials_by_policy
                            .entry("(no permit: default deny, or refused before policy)".into())
                            .or_default() += 1;
                    }
                    for p in &e.policy_ids {
                        *self.denials_by_policy.entry(p.clone()).or_default() += 1;
                    }
                }
            }
            "login.succeeded" => {
                self.fact("logins", 1);
                let mfa = d.get("mfa").and_then(Value::as_bool).unwrap_or(false);
                if mfa {
                    self.fact("logins_mfa", 1);
                }
                self.regs.authentication.row(&[
                    e.seq.to_string(),
                    e.ts.clone(),
                    e.kind.clone(),
                    e.actor.clone(),
                    "success".into(),
                    s(&d, "flow"),
                    mfa.to_string(),
                    d.get("amr").map(|a| a.to_string()).unwrap_or_default(),
                    s(&d, "client_addr"),
                    String::new(),
                    "1".into(),
                ])?;
                self.access_by(e, line, "sign-in")?;
            }
            "login.failed" | "auth.failed" => {
                self.fact("authentication_failures", count);
                self.regs.authentication.row(&[
                    e.seq.to_string(),
                    e.ts.clone(),
                    e.kind.clone(),
                    e.actor.clone(),
                    "failure".into(),
                    s(&d, "auth_method"),
                    String::new(),
                    String::new(),
                    s(&d, "client_addr"),
                    e.reason.clone(),
                    count.to_string(),
                ])?;
            }
            "connection.refused" | "http.refused" => {
                self.fact("refused_before_authentication", count)
            }
            "credential.issued" => {
                self.fact("credentials_issued", 1);
                if !e.actor.is_empty() && d.get("login_id").is_some() {
                    self.access_by(e, line, "credential issued")?;
                }
            }
            "credential.revoked" => self.fact("credentials_revoked", 1),
            "session.start" => {
                self.open.insert(
                    e.session_id.clone(),
                    OpenSession {
                        ts: e.ts.clone(),
                        user: e.actor.clone(),
                        resource: e.resource.clone(),
                        role: s(&d, "role"),
                        upstream_user: s(&d, "upstream_user"),
                        client_addr: s(&d, "client_addr"),
                        seq: e.seq,
                        line,
                    },
                );
                self.fact("sessions", 1);
            }
            "session.end" => {
                let start = self.open.remove(&e.session_id);
                let st = start.as_ref();
                let pick = |f: fn(&OpenSession) -> &String| st.map(f).cloned().unwrap_or_default();
                self.regs.sessions.row(&[
                    e.session_id.clone(),
                    e.actor.clone(),
                    e.resource.clone(),
                    pick(|o| &o.role),
                    pick(|o| &o.upstream_user),
                    pick(|o| &o.client_addr),
                    st.map(|o| o.ts.clone())
                        .unwrap_or_else(|| "(before the period)".into()),
                    e.ts.clone(),
                    e.reason.clone(),
                    s(&d, "statements"),
                    s(&d, "bytes_from_client"),
                    s(&d, "bytes_to_client"),
                    s(&d, "protocol"),
                    st.map(|o| o.seq.to_string()).unwrap_or_default(),
                    e.seq.to_string(),
                ])?;
                if let Some(idx) = self.is_disabled(&e.actor) {
                    self.leavers[idx].last_activity_after = e.ts.clone();
                }
            }
            "db.statement" => {
                self.fact("statements", 1);
                if let Some(idx) = self.is_disabled(&e.actor) {
                    self.leavers[idx].last_activity_after = e.ts.clone();
                }
            }
            "session.cut" => {
                if let Some(idx) = self.is_disabled(&e.actor) {
                    self.leavers[idx].last_activity_after = e.ts.clone();
                }
            }
            "user.disabled" => {
                let user = e.resource.clone();
                let l = Leaver {
                    user: user.clone(),
                    disabled_at: e.ts.clone(),
                    by: e.actor.clone(),
                    reason: e.reason.clone(),
                    enabled_at: String::new(),
                    last_access_before: self.last_access.get(&user).cloned().unwrap_or_default(),
                    last_activity_after: String::new(),
                    access_after: 0,
                };
                self.leavers.push(l);
                self.disabled.insert(user, self.leavers.len() - 1);
            }
            "user.enabled" => {
                if let Some(idx) = self.disabled.remove(&e.resource) {
                    self.leavers[idx].enabled_at = e.ts.clone();
                }
            }
            "request.created" => {
                let Some(id) = i(&d, "request_id") else {
                    return Ok(());
                };
                let row = self.ledger_for_request(id);
                row.requester = e.actor.clone();
                row.resource = e.resource.clone();
                row.role = s(&d, "role");
                row.requested_at = e.ts.clone();
                row.reason = e.reason.clone();
                row.ticket = s(&d, "ticket");
                row.approvals_required = i(&d, "approvals_required");
                row.seq = e.seq;
                row.line = line;
            }
            "request.approved" => {
                let requester = s(&d, "requester");
                *self
                    .approvals_by_approver
                    .entry(e.actor.clone())
                    .or_default() += 1;
                if requester == e.actor {
                    self.flag(
                        "self_approvals",
                        Some((e, line)),
                        format!(
                            "{} approved their own request {}",
                            e.actor,
                            s(&d, "request_id")
                        ),
                    )?;
                }
                if let Some(id) = i(&d, "request_id") {
                    let row = self.ledger_for_request(id);
                    if row.requester.is_empty() {
                        row.requester = requester;
                        row.resource = e.resource.clone();
                        row.role = s(&d, "role");
                        row.approvals_required = i(&d, "approvals_required");
                    }
                    row.approvers.push((e.actor.clone(), e.ts.clone()));
                }
            }
            "request.denied" => {
                if let Some(id) = i(&d, "request_id") {
                    self.ledger_for_request(id).denied_by = e.actor.clone();
                }
            }
            "request.refused" if e.action == "approve" && s(&d, "requester") == e.actor => {
                self.flag(
                    "self_approval_attempts",
                    Some((e, line)),
                    format!(
                        "{} tried to approve their own request {} (refused)",
                        e.actor,
                        s(&d, "request_id")
                    ),
                )?;
            }
            "breakglass.used" => {
                self.fact("break_glass", 1);
                if let Some(id) = i(&d, "request_id") {
                    let row = self.ledger_for_request(id);
                    row.break_glass = true;
                    row.requester = e.actor.clone();
                    row.resource = e.resource.clone();
                    row.role = s(&d, "role");
                    row.requested_at = e.ts.clone();
                    row.reason = e.reason.clone();
                    row.ticket = s(&d, "ticket");
                    row.review_id = i(&d, "review_id");
                    row.seq = e.seq;
                    row.line = line;
                }
            }
            "review.signed" => {
                let Some(grant) = i(&d, "grant_id") else {
                    return Ok(());
                };
                let row = self.ledger_for_grant(grant, None);
                row.reviewed_by = e.actor.clone();
            }
            "grant.start" => {
                let Some(g) = i(&d, "grant_id") else {
                    return Ok(());
                };
                self.fact("grants_started", 1);
                let request = i(&d, "request_id");
                let row = self.ledger_for_grant(g, request);
                row.source = s(&d, "source");
                row.granted_by = s(&d, "granted_by");
                row.granted_at = e.ts.clone();
                row.expires = s(&d, "expires");
                if row.requester.is_empty() {
                    row.requester = e.actor.clone();
                    row.resource = e.resource.clone();
                    row.role = s(&d, "role");
                    row.reason = e.reason.clone();
                }
                if row.seq == 0 {
                    row.seq = e.seq;
                    row.line = line;
                }
                if row.source == "request" {
                    if row.requested_at.is_empty() {
                        self.fact("grants_requested_before_period", 1);
                    } else {
                        let requester = row.requester.clone();
                        let approvers: BTreeSet<&String> = row
                            .approvers
                            .iter()
                            .map(|(a, _)| a)
                            .filter(|a| **a != requester)
                            .collect();
                        let have = approvers.len() as i64;
                        let need = row.approvals_required.unwrap_or(1).max(1);
                        if have < need {
                            self.flag(
                                "grants_without_approval",
                                Some((e, line)),
                                format!("grant {g} started with {have} of {need} approvals by others than the requester"),
                            )?;
                        }
                    }
                }
            }
            "grant.revoked" => {
                if let Some(g) = i(&d, "grant_id") {
                    self.fact("grants_revoked", 1);
                    let row = self.ledger_for_grant(g, None);
                    row.revoked_by = e.actor.clone();
                    self.grants_ended.insert(g);
                }
            }
            "grant.end" => {
                if let Some(g) = i(&d, "grant_id") {
                    let row = self.ledger_for_grant(g, None);
                    row.ended_at = e.ts.clone();
                    row.end_how = e.reason.clone();
                    if row.grantee_missing() {
                        row.requester = e.actor.clone();
                        row.resource = e.resource.clone();
                        row.role = s(&d, "role");
                    }
                    self.grants_ended.insert(g);
                    if e.reason == "expired" {
                        self.fact("grants_expired", 1);
                    }
                }
            }
            "policy.changed" => {
                let approver = s(&d, "approved_by");
                let list = |k: &str| -> String {
                    d.get(k)
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default()
                };
                self.regs.policy_changes.row(&[
                    e.seq.to_string(),
                    e.ts.clone(),
                    e.actor.clone(),
                    e.decision.clone(),
                    e.reason.clone(),
                    approver.clone(),
                    s(&d, "previous_sha256"),
                    s(&d, "sha256"),
                    list("added"),
                    list("removed"),
                    list("changed"),
                    s(&d, "tests_passed"),
                    s(&d, "request_id"),
                ])?;
                match e.decision.as_str() {
                    "applied" if approver.is_empty() || approver == e.actor => self.flag(
                        "policy_changes_unapproved",
                        Some((e, line)),
                        format!(
                            "policy set {} applied by {} without a second person's approval",
                            s(&d, "sha256"),
                            e.actor
                        ),
                    )?,
                    "refused" => self.flag(
                        "policy_changes_refused",
                        Some((e, line)),
                        format!("refused: {}", e.reason),
                    )?,
                    _ => {}
                }
            }
            "review.decision" if e.decision == "revoke" => {
                self.flag(
                    "review_revocations",
                    Some((e, line)),
                    format!(
                        "{} revoked {}'s `{}` access ({}): {}",
                        e.actor,
                        s(&d, "subject"),
                        s(&d, "role"),
                        s(&d, "access"),
                        e.reason
                    ),
                )?;
            }
            "audit.foreign_rows" => {
                self.flag("foreign_rows", Some((e, line)), e.reason.clone())?;
            }
            "agent.event_refused" => {
                self.flag("agent_events_refused", Some((e, line)), e.reason.clone())?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Ends the pass: what is still open becomes an exception, the ledger and leavers registers
    /// are written.
    pub fn finish(mut self, dir: &Path) -> std::io::Result<Findings> {
        let mut open: Vec<OpenSession> = self.open.drain().map(|(_, o)| o).collect();
        open.sort_by_key(|o| o.seq);
        for o in open {
            let ex = Exception {
                check: "sessions_without_end",
                seq: o.seq,
                line: o.line,
                ts: o.ts.clone(),
                actor: o.user.clone(),
                resource: o.resource.clone(),
                what: format!(
                    "session started at {} has no session.end in the period",
                    o.ts
                ),
            };
            self.push_exception(ex)?;
        }
        let rows: Vec<LedgerRow> = self.ledger.values().cloned().collect();
        for row in &rows {
            if row.break_glass && (row.reviewed_by.is_empty() || row.reviewed_by == row.requester) {
                let ex = Exception {
                    check: "break_glass_unreviewed",
                    seq: row.seq,
                    line: row.line,
                    ts: row.requested_at.clone(),
                    actor: row.requester.clone(),
                    resource: row.resource.clone(),
                    what: format!(
                        "break-glass grant {} (review {}) has no sign-off by someone else in the period",
                        row.grant_id.map(|g| g.to_string()).unwrap_or_default(),
                        row.review_id.map(|g| g.to_string()).unwrap_or_default()
                    ),
                };
                self.push_exception(ex)?;
            }
        }
        let mut ledger = CsvFile::create(
            &dir.join("jit-ledger.csv"),
            &[
                "request_id",
                "requester",
                "resource",
                "role",
                "requested_at",
                "justification",
                "ticket",
                "approvals_required",
                "approvers",
                "approved_at",
                "denied_by",
                "break_glass",
                "review_id",
                "reviewed_by",
                "grant_id",
                "grant_source",
                "granted_by",
                "granted_at",
                "expires",
                "ended_at",
                "end",
                "revoked_by",
                "seq",
            ],
        )?;
        for r in &rows {
            ledger.row(&[
                r.request_id.map(|v| v.to_string()).unwrap_or_default(),
                r.requester.clone(),
                r.resource.clone(),
                r.role.clone(),
                if r.requested_at.is_empty() && r.request_id.is_some() {
                    "(before the period)".into()
                } else {
                    r.requested_at.clone()
                },
                r.reason.clone(),
                r.ticket.clone(),
                r.approvals_required
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                r.approvers
                    .iter()
                    .map(|(a, _)| a.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                r.approvers
                    .iter()
                    .map(|(_, t)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                r.denied_by.clone(),
                r.break_glass.to_string(),
                r.review_id.map(|v| v.to_string()).unwrap_or_default(),
                r.reviewed_by.clone(),
                r.grant_id.map(|v| v.to_string()).unwrap_or_default(),
                r.source.clone(),
                r.granted_by.clone(),
                r.granted_at.clone(),
                r.expires.clone(),
                r.ended_at.clone(),
                r.end_how.clone(),
                r.revoked_by.clone(),
                r.seq.to_string(),
            ])?;
        }
        let ledger_rows = ledger.finish()?;
        let mut leavers = CsvFile::create(
            &dir.join("leavers.csv"),
            &[
                "user",
                "disabled_at",
                "disabled_by",
                "reason",
                "enabled_again_at",
                "last_access_before_disable",
                "last_activity_after_disable",
                "seconds_to_last_activity",
                "access_after_disable",
            ],
        )?;
        for l in &self.leavers {
            let latency = if l.last_activity_after.is_empty() {
                None
            } else {
                secs_between(&l.disabled_at, &l.last_activity_after)
            };
            if let Some(s) = latency {
                self.leaver_latency.push((l.user.clone(), s));
            }
            leavers.row(&[
                l.user.clone(),
                l.disabled_at.clone(),
                l.by.clone(),
                l.reason.clone(),
                l.enabled_at.clone(),
                l.last_access_before.clone(),
                l.last_activity_after.clone(),
                latency.map(|s| s.to_string()).unwrap_or_default(),
                l.access_after.to_string(),
            ])?;
        }
        let leaver_rows = leavers.finish()?;
        let Registers {
            policy_changes,
            authentication,
            sessions,
            exceptions,
        } = self.regs;
        let mut rows = BTreeMap::new();
        rows.insert("policy-changes.csv", policy_changes.finish()?);
        rows.insert("authentication.csv", authentication.finish()?);
        rows.insert("sessions.csv", sessions.finish()?);
        rows.insert("exceptions.csv", exceptions.finish()?);
        rows.insert("jit-ledger.csv", ledger_rows);
        rows.insert("leavers.csv", leaver_rows);
        Ok(Findings {
            events: self.events,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            kinds: self.kinds,
            controls: self.controls,
            decisions_per_day: self.decisions_per_day,
            denials_by_policy: self.denials_by_policy,
            approvals_by_approver: self.approvals_by_approver,
            counts: self.counts,
            exceptions: self.exceptions,
            facts: self.facts,
            leaver_latency: self.leaver_latency,
            leavers: self.leavers.len() as u64,
            rows,
        })
    }

    /// Writes `ex` to `exceptions.csv`, counts and keeps it.
    fn push_exception(&mut self, ex: Exception) -> std::io::Result<()> {
        self.regs.exceptions.row(&ex.fields())?;
        count_and_keep(&mut self.counts, &mut self.exceptions, ex);
        Ok(())
    }
}

impl LedgerRow {
    fn grantee_missing(&self) -> bool {
        self.requester.is_empty()
    }
}

/// What the pass found, for the report and `checks.json`.
#[derive(Debug)]
pub struct Findings {
    pub events: u64,
    pub first_ts: String,
    pub last_ts: String,
    pub kinds: BTreeMap<String, u64>,
    pub controls: BTreeMap<String, ControlStats>,
    pub decisions_per_day: BTreeMap<String, (u64, u64)>,
    pub denials_by_policy: BTreeMap<String, u64>,
    pub approvals_by_approver: BTreeMap<String, u64>,
    pub counts: BTreeMap<&'static str, u64>,
    pub exceptions: BTreeMap<&'static str, Vec<Exception>>,
    pub facts: BTreeMap<&'static str, u64>,
    pub leaver_latency: Vec<(String, i64)>,
    pub leavers: u64,
    /// Rows written per register file.
    pub rows: BTreeMap<&'static str, u64>,
}

impl Findings {
    /// Adds exceptions found outside the pass (the chain check, the access-rights register).
    pub fn add(&mut self, ex: Exception, dir: &Path) -> std::io::Result<()> {
        let mut f = CsvFile::append(&dir.join("exceptions.csv"))?;
        f.row(&ex.fields())?;
        f.finish()?;
        if let Some(r) = self.rows.get_mut("exceptions.csv") {
            *r += 1;
        }
        count_and_keep(&mut self.counts, &mut self.exceptions, ex);
        Ok(())
    }

    /// The derived checks as JSON (`checks.json`): id, title, controls, count, status.
    pub fn checks_json(&self) -> Value {
        let checks: Vec<Value> = CHECKS
            .iter()
            .map(|c| {
                let n = self.counts.get(c.id).copied().unwrap_or(0);
                serde_json::json!({
                    "id": c.id,
                    "title": c.title,
                    "controls": c.controls,
                    "count": n,
                    "status": status(c, n),
                })
            })
            .collect();
        serde_json::json!({ "checks": checks, "facts": self.facts, "events": self.events })
    }
}

/// `pass`, `exception` or `info` for a check with count `n`.
pub fn status(c: &CheckDef, n: u64) -> &'static str {
    match (c.zero_expected, n) {
        (true, 0) => "pass",
        (true, _) => "exception",
        (false, _) => "info",
    }
}
