//! Policy test cases: TOML files of access requests with the decision each
//! must get, run against a loaded engine by `gatehouse policy test`.
//!
//! ```toml
//! [[case]]
//! name = "dba may connect to prod"
//! user = "alice"
//! groups = ["dba"]                 # optional, default []
//! action = "connect"
//! resource = { name = "orders-db", protocol = "postgres", env = "prod", data_class = "confidential", tags = { owner = "payments" } }
//! context = { mfa = false, source_ip = "10.0.0.5", auth_method = "token", hour_utc = 10 }
//! expect = "allow"                 # or "deny"
//! expect_policies = ["dba-connect-any"]   # optional; [] means default deny
//!
//! [[case]]
//! name = "engineer may request write on prod, with two approvals for 4h"
//! user = "bob"
//! groups = ["engineering"]
//! action = "request"               # connect, request, approve or break_glass
//! resource = { name = "orders-db", protocol = "postgres", env = "prod", data_class = "confidential" }
//! context = { role = "write", duration_secs = 7200 }
//! expect = "allow"
//! expect_approvals = 2             # optional: Decision::approvals_required
//! expect_max_duration = "4h"       # optional: Decision::max_duration_secs; "none" for no limit
//! ```
//!
//! Every `context` key is optional: `mfa = false`, `source_ip = "127.0.0.1"`,
//! `auth_method = "token"`, `hour_utc = 12`, `role = "read"`,
//! `has_grant = false`, `duration_secs = 0`, `requester = ""`, `command = ""`,
//! `forward_host = ""`, `forward_port = 0`. `tags` is
//! optional. Unknown keys are errors, so a misspelt key cannot silently test
//! something else.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;

use crate::decision::quoted;
use crate::engine::PolicyEngine;
use crate::error::PolicyError;
use crate::request::{AccessRequest, Action, RequestContext, ResourceAttrs};
use crate::{duration, load};

/// One policy test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// The case name, unique within its file.
    pub name: String,
    /// The request to decide.
    pub request: AccessRequest,
    /// The decision it must get.
    pub expect: Expected,
    /// If given, the `@id` of exactly the policies that must determine the
    /// decision (compared as sets; empty means default deny).
    pub expect_policies: Option<Vec<String>>,
    /// If given, the
    /// [`Decision::approvals_required`](crate::Decision::approvals_required)
    /// the decision must carry (`expect_approvals`).
    pub expect_approvals: Option<u32>,
    /// If given, the
    /// [`Decision::max_duration_secs`](crate::Decision::max_duration_secs)
    /// the decision must carry (`expect_max_duration`, e.g. `"8h"` for
    /// `Some(Some(28800))`, or `"none"` for `Some(None)`).
    pub expect_max_duration_secs: Option<Option<u64>>,
}

/// The decision a test case expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expected {
    /// The request must be allowed.
    Allow,
    /// The request must be denied.
    Deny,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::Allow => "allow",
            Expected::Deny => "deny",
        })
    }
}

/// The result of one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The case name.
    pub name: String,
    /// Whether the decision met every expectation.
    pub passed: bool,
    /// What was expected and what the engine decided, with policy ids.
    pub detail: String,
}

/// Parse the test cases of one TOML file. `file_name` is used in errors.
pub fn parse_cases(file_name: &str, toml_src: &str) -> Result<Vec<TestCase>, PolicyError> {
    let file: RawFile = toml::from_str(toml_src).map_err(|e| PolicyError::Cases {
        file: file_name.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    if file.case.is_empty() {
        return Err(PolicyError::Cases {
            file: file_name.to_owned(),
            message: "no `[[case]]` tables".to_owned(),
        });
    }
    let mut names = HashSet::new();
    file.case
        .into_iter()
        .map(|raw| {
            let error = |key: &str, message: String| PolicyError::Case {
                file: file_name.to_owned(),
                case: raw.name.clone(),
                key: key.to_owned(),
                message,
            };
            if raw.name.trim().is_empty() {
                return Err(error("name", "must not be empty".to_owned()));
            }
            if !names.insert(raw.name.clone()) {
                return Err(error("name", "another case has the same name".to_owned()));
            }
            if raw.user.is_empty() {
                return Err(error("user", "must not be empty".to_owned()));
            }
            if raw.context.hour_utc > 23 {
                return Err(error(
                    "context.hour_utc",
                    format!("`{}` is not an hour from 0 to 23", raw.context.hour_utc),
                ));
            }
            let action = raw
                .action
                .parse::<Action>()
                .map_err(|e| error("action", e.to_string()))?;
            if let Some(n) = raw.expect_approvals {
                if !(1..=load::MAX_APPROVALS).contains(&n) {
                    return Err(error(
                        "expect_approvals",
                        format!(
                            "`{n}` is not a number of approvals from 1 to {}",
                            load::MAX_APPROVALS
                        ),
                    ));
                }
            }
            let expect_max_duration_secs = match raw.expect_max_duration.as_deref() {
                None => None,
                Some("none") => Some(None),
                Some(text) => Some(Some(duration::parse(text).ok_or_else(|| {
                    error(
                        "expect_max_duration",
                        format!(
                            "`{text}` is not `none` or a duration such as `30m` or `8h`, from 1s to 30d"
                        ),
                    )
                })?)),
            };
            Ok(TestCase {
                name: raw.name,
                request: AccessRequest {
                    user: raw.user,
                    groups: raw.groups,
                    action,
                    resource: ResourceAttrs {
                        name: raw.resource.name,
                        protocol: raw.resource.protocol,
                        env: raw.resource.env,
                        data_class: raw.resource.data_class,
                        tags: raw.resource.tags,
                    },
                    context: RequestContext {
                        mfa: raw.context.mfa,
                        source_ip: raw.context.source_ip,
                        auth_method: raw.context.auth_method,
                        hour_utc: raw.context.hour_utc,
                        role: raw.context.role,
                        has_grant: raw.context.has_grant,
                        duration_secs: raw.context.duration_secs,
                        requester: raw.context.requester,
                        command: raw.context.command,
                        forward_host: raw.context.forward_host,
                        forward_port: raw.context.forward_port,
                    },
                },
                expect: raw.expect,
                expect_policies: raw.expect_policies,
                expect_approvals: raw.expect_approvals,
                expect_max_duration_secs,
            })
        })
        .collect()
}

/// Run every case against `engine`, in order.
///
/// A case passes when the decision matches `expect`, the determining policies
/// match `expect_policies`, the approvals and longest duration match
/// `expect_approvals` and `expect_max_duration` (each if given), and no
/// policy failed to evaluate: Cedar skips a policy that errors, and a skipped
/// forbid is a hole in the policy.
pub fn run_cases(engine: &PolicyEngine, cases: &[TestCase]) -> Vec<CaseOutcome> {
    cases.iter().map(|case| run_case(engine, case)).collect()
}

fn run_case(engine: &PolicyEngine, case: &TestCase) -> CaseOutcome {
    let decision = engine.authorize(&case.request);
    let got = if decision.allowed {
        Expected::Allow
    } else {
        Expected::Deny
    };
    let mut problems = Vec::new();
    if got != case.expect {
        problems.push(format!(
            "expected {}, got {got} ({})",
            case.expect, decision.reason
        ));
    }
    if let Some(expected) = &case.expect_policies {
        let want: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
        let have: BTreeSet<&str> = decision.policy_ids.iter().map(String::as_str).collect();
        if want != have {
            let mut problem = format!(
                "expected policies [{}], got [{}]",
                quoted_set(&want),
                quoted_set(&have)
            );
            let unknown: Vec<String> = want
                .iter()
                .filter(|id| !engine.has_policy(id))
                .map(|id| (*id).to_owned())
                .collect();
            if !unknown.is_empty() {
                problem.push_str(&format!(
                    " (no policy is loaded with id {})",
                    quoted(&unknown)
                ));
            }
            problems.push(problem);
        }
    }
    if let Some(want) = case.expect_approvals {
        if decision.approvals_required != want {
            problems.push(format!(
                "expected approvals {want}, got {}",
                decision.approvals_required
            ));
        }
    }
    if let Some(want) = case.expect_max_duration_secs {
        if decision.max_duration_secs != want {
            problems.push(format!(
                "expected max duration {}, got {}",
                show_duration(want),
                show_duration(decision.max_duration_secs)
            ));
        }
    }
    if !decision.errors.is_empty() {
        problems.push(format!("evaluation errors: {}", decision.errors.join("; ")));
    }
    let passed = problems.is_empty();
    let detail = if passed {
        format!("{got}: {}", decision.reason)
    } else {
        problems.join("; ")
    };
    CaseOutcome {
        name: case.name.clone(),
        passed,
        detail,
    }
}

/// A [`Decision::max_duration_secs`](crate::Decision::max_duration_secs) as
/// test cases write it.
fn show_duration(secs: Option<u64>) -> String {
    secs.map_or_else(|| "none".to_owned(), duration::format)
}

fn quoted_set(ids: &BTreeSet<&str>) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

// === TOML shape ===

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    case: Vec<RawCase>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    action: String,
    resource: RawResource,
    #[serde(default)]
    context: RawContext,
    expect: Expected,
    expect_policies: Option<Vec<String>>,
    expect_approvals: Option<u32>,
    expect_max_duration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    protocol: String,
    env: String,
    data_class: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawContext {
    mfa: bool,
    source_ip: IpAddr,
    auth_method: String,
    hour_utc: u8,
    role: String,
    has_grant: bool,
    duration_secs: u64,
    requester: String,
    command: String,
    forward_host: String,
    forward_port: u32,
}

impl Default for RawContext {
    fn default() -> Self {
        let RequestContext {
            mfa,
            source_ip,
            auth_method,
            hour_utc,
            role,
            has_grant,
            duration_secs,
            requester,
            command,
            forward_host,
            forward_port,
        } = RequestContext::new(IpAddr::V4(Ipv4Addr::LOCALHOST), "token", false, 12);
        RawContext {
            mfa,
            source_ip,
            auth_method,
            hour_utc,
            role,
            has_grant,
            duration_secs,
            requester,
            command,
            forward_host,
            forward_port,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::{DEFAULT_POLICIES, DEFAULT_SCHEMA};

    fn engine() -> PolicyEngine {
        let files = [(DEFAULT_POLICIES.0.to_owned(), DEFAULT_POLICIES.1.to_owned())];
        PolicyEngine::load(DEFAULT_SCHEMA, &files).unwrap()
    }

    const MINIMAL: &str = r#"
[[case]]
name = "minimal"
user = "alice"
action = "connect"
resource = { name = "db", protocol = "postgres", env = "dev", data_class = "internal" }
expect = "deny"
"#;

    /// `MINIMAL` with `line` added to the case table.
    fn with(line: &str) -> String {
        format!("{MINIMAL}{line}\n")
    }

    #[test]
    fn omitted_keys_take_their_defaults() {
        let cases = parse_cases("m.toml", MINIMAL).unwrap();
        assert_eq!(cases.len(), 1);
        let case = &cases[0];
        assert_eq!(case.name, "minimal");
        assert!(case.request.groups.is_empty());
        assert!(case.request.resource.tags.is_empty());
        assert_eq!(
            case.request.context,
            RequestContext {
                mfa: false,
                source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                auth_method: "token".to_owned(),
                hour_utc: 12,
                role: "read".to_owned(),
                has_grant: false,
                duration_secs: 0,
                requester: String::new(),
                command: String::new(),
                forward_host: String::new(),
                forward_port: 0,
            }
        );
        assert_eq!(case.expect, Expected::Deny);
        assert_eq!(case.expect_policies, None);
        assert_eq!(case.expect_approvals, None);
        assert_eq!(case.expect_max_duration_secs, None);
    }

    #[test]
    fn given_keys_are_read() {
        let src = r#"
[[case]]
name = "full"
user = "alice"
groups = ["dba", "ops"]
action = "connect"
resource = { name = "db", protocol = "postgres", env = "prod", data_class = "restricted", tags = { owner = "payments" } }
context = { mfa = true, source_ip = "2001:db8::1", auth_method = "oidc", hour_utc = 23 }
expect = "allow"
expect_policies = ["dba-connect-any"]
"#;
        let case = parse_cases("f.toml", src).unwrap().remove(0);
        assert_eq!(case.request.groups, ["dba", "ops"]);
        assert_eq!(case.request.resource.env, "prod");
        assert_eq!(
            case.request.resource.tags.get("owner").map(String::as_str),
            Some("payments")
        );
        assert!(case.request.context.mfa);
        assert_eq!(
            case.request.context.source_ip,
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(case.request.context.auth_method, "oidc");
        assert_eq!(case.request.context.hour_utc, 23);
        assert_eq!(case.expect, Expected::Allow);
        assert_eq!(
            case.expect_policies,
            Some(vec!["dba-connect-any".to_owned()])
        );
    }

    #[test]
    fn just_in_time_keys_are_read() {
        let src = r#"
[[case]]
name = "approve"
user = "alice"
groups = ["dba"]
action = "approve"
resource = { name = "db", protocol = "postgres", env = "prod", data_class = "internal" }
context = { role = "write", has_grant = true, duration_secs = 14400, requester = "bob" }
expect = "allow"
expect_approvals = 2
expect_max_duration = "4h"
"#;
        let case = parse_cases("j.toml", src).unwrap().remove(0);
        assert_eq!(case.request.action, Action::Approve);
        let context = &case.request.context;
        assert_eq!(context.role, "write");
        assert!(context.has_grant);
        assert_eq!(context.duration_secs, 14_400);
        assert_eq!(context.requester, "bob");
        assert_eq!(case.expect_approvals, Some(2));
        assert_eq!(case.expect_max_duration_secs, Some(Some(14_400)));

        let none = parse_cases("n.toml", &with("expect_max_duration = \"none\""))
            .unwrap()
            .remove(0);
        assert_eq!(none.expect_max_duration_secs, Some(None));
        for action in ["request", "approve", "break_glass"] {
            let src = MINIMAL.replace("\"connect\"", &format!("\"{action}\""));
            let case = parse_cases("a.toml", &src).unwrap().remove(0);
            assert_eq!(case.request.action.as_str(), action);
        }
    }

    #[test]
    fn bad_just_in_time_values_are_rejected() {
        for line in ["expect_approvals = 0", "expect_approvals = 11"] {
            let got = case_error(&with(line));
            assert_eq!(got.1, "expect_approvals", "{line}");
        }
        for value in ["8", "0h", "31d", "8 hours", "None", ""] {
            let got = case_error(&with(&format!("expect_max_duration = \"{value}\"")));
            assert_eq!(got.1, "expect_max_duration", "{value}");
        }
        let message = cases_error(&with("context = { duration_secs = -1 }"));
        assert!(message.contains("duration_secs"), "{message}");
        let message = cases_error(&with("context = { has_grant = \"yes\" }"));
        assert!(message.contains("has_grant"), "{message}");
        let message = cases_error(&with("expect_approvals = -1"));
        assert!(message.contains("expect_approvals"), "{message}");
    }

    fn cases_error(src: &str) -> String {
        match parse_cases("bad.toml", src) {
            Err(e @ PolicyError::Cases { .. }) => e.to_string(),
            other => panic!("expected a Cases error, got {other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        for (line, key) in [
            ("colour = \"red\"", "colour"),
            ("context = { mfa_ok = true }", "mfa_ok"),
        ] {
            let message = cases_error(&with(line));
            assert!(message.starts_with("`bad.toml`: "), "{message}");
            assert!(message.contains(&format!("`{key}`")), "{message}");
        }
        let message = cases_error(&MINIMAL.replace("data_class", "class"));
        assert!(message.contains("`class`"), "{message}");
    }

    #[test]
    fn missing_required_keys_are_rejected_by_name() {
        let message = cases_error(&MINIMAL.replace("expect = \"deny\"\n", ""));
        assert!(message.contains("`expect`"), "{message}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let message = cases_error(&MINIMAL.replace("\"deny\"", "\"maybe\""));
        assert!(message.contains("maybe"), "{message}");
        let message = cases_error(&with("context = { source_ip = \"10.0.0\" }"));
        assert!(message.contains("source_ip"), "{message}");
    }

    fn case_error(src: &str) -> (String, String) {
        match parse_cases("bad.toml", src) {
            Err(PolicyError::Case { case, key, .. }) => (case, key),
            other => panic!("expected a Case error, got {other:?}"),
        }
    }

    #[test]
    fn hour_out_of_range_is_rejected() {
        let got = case_error(&with("context = { hour_utc = 24 }"));
        assert_eq!(got, ("minimal".to_owned(), "context.hour_utc".to_owned()));
    }

    #[test]
    fn unknown_action_is_rejected() {
        let got = case_error(&MINIMAL.replace("\"connect\"", "\"delete\""));
        assert_eq!(got.1, "action");
    }

    #[test]
    fn duplicate_case_names_are_rejected() {
        let got = case_error(&format!("{MINIMAL}{MINIMAL}"));
        assert_eq!(got, ("minimal".to_owned(), "name".to_owned()));
    }

    #[test]
    fn a_file_without_cases_is_rejected() {
        let message = cases_error("# nothing here\n");
        assert!(message.contains("no `[[case]]`"), "{message}");
    }

    fn run_one(src: &str) -> CaseOutcome {
        let cases = parse_cases("t.toml", src).unwrap();
        run_cases(&engine(), &cases).remove(0)
    }

    #[test]
    fn a_met_expectation_passes_with_the_reason() {
        let outcome = run_one(MINIMAL);
        assert!(outcome.passed, "{outcome:?}");
        assert_eq!(outcome.name, "minimal");
        assert_eq!(outcome.detail, "deny: no policy permits `connect` on `db`");
    }

    #[test]
    fn a_wrong_decision_fails_and_says_why() {
        let outcome = run_one(&MINIMAL.replace("\"deny\"", "\"allow\""));
        assert!(!outcome.passed);
        assert_eq!(
            outcome.detail,
            "expected allow, got deny (no policy permits `connect` on `db`)"
        );
    }

    #[test]
    fn wrong_determining_policies_fail_and_are_listed() {
        let src = MINIMAL
            .replace("user = \"alice\"", "user = \"alice\"\ngroups = [\"dba\"]")
            .replace("\"deny\"", "\"allow\"");
        let outcome = run_one(&format!(
            "{src}expect_policies = [\"engineering-connect-nonprod\"]\n"
        ));
        assert!(!outcome.passed);
        assert_eq!(
            outcome.detail,
            "expected policies [`engineering-connect-nonprod`], got [`dba-connect-any`]"
        );
        let outcome = run_one(&format!("{src}expect_policies = [\"dba-connect-all\"]\n"));
        assert!(!outcome.passed);
        assert!(
            outcome
                .detail
                .ends_with("(no policy is loaded with id `dba-connect-all`)"),
            "{}",
            outcome.detail
        );
        let outcome = run_one(&format!("{src}expect_policies = [\"dba-connect-any\"]\n"));
        assert!(outcome.passed, "{outcome:?}");
    }

    #[test]
    fn empty_expect_policies_means_default_deny() {
        let outcome = run_one(&with("expect_policies = []"));
        assert!(outcome.passed, "{outcome:?}");
        let forbidden = MINIMAL
            .replace("user = \"alice\"", "user = \"alice\"\ngroups = [\"dba\"]")
            .replace("\"internal\"", "\"restricted\"");
        let outcome = run_one(&format!("{forbidden}expect_policies = []\n"));
        assert!(!outcome.passed);
        assert!(
            outcome.detail.contains("`forbid-restricted-without-mfa`"),
            "{}",
            outcome.detail
        );
    }

    const PROD_REQUEST: &str = r#"
[[case]]
name = "prod request"
user = "bob"
groups = ["engineering"]
action = "request"
resource = { name = "db", protocol = "postgres", env = "prod", data_class = "internal" }
context = { role = "write", duration_secs = 3600 }
expect = "allow"
"#;

    #[test]
    fn approvals_and_max_duration_are_checked() {
        let pass = run_one(&format!(
            "{PROD_REQUEST}expect_approvals = 2\nexpect_max_duration = \"4h\"\n"
        ));
        assert!(pass.passed, "{pass:?}");
        let outcome = run_one(&format!("{PROD_REQUEST}expect_approvals = 1\n"));
        assert!(!outcome.passed);
        assert_eq!(outcome.detail, "expected approvals 1, got 2");
        let outcome = run_one(&format!("{PROD_REQUEST}expect_max_duration = \"8h\"\n"));
        assert!(!outcome.passed);
        assert_eq!(outcome.detail, "expected max duration 8h, got 4h");
        let outcome = run_one(&format!("{PROD_REQUEST}expect_max_duration = \"none\"\n"));
        assert!(!outcome.passed);
        assert_eq!(outcome.detail, "expected max duration none, got 4h");
        let outcome = run_one(&with("expect_max_duration = \"1h\""));
        assert!(!outcome.passed);
        assert_eq!(outcome.detail, "expected max duration 1h, got none");
    }

    #[test]
    fn evaluation_errors_fail_a_case() {
        let files = [
            (DEFAULT_POLICIES.0.to_owned(), DEFAULT_POLICIES.1.to_owned()),
            (
                "overflow.cedar".to_owned(),
                r#"@id("overflowing") @controls("5.15")
                forbid (principal, action, resource)
                when { context.hour_utc * 9223372036854775807 > 0 };"#
                    .to_owned(),
            ),
        ];
        let engine = PolicyEngine::load(DEFAULT_SCHEMA, &files).unwrap();
        let cases = parse_cases("t.toml", MINIMAL).unwrap();
        let outcome = run_cases(&engine, &cases).remove(0);
        assert!(!outcome.passed, "{outcome:?}");
        assert!(
            outcome.detail.starts_with("evaluation errors: "),
            "{}",
            outcome.detail
        );
        assert!(
            outcome.detail.contains("`overflowing`"),
            "{}",
            outcome.detail
        );
    }
}
