//! Tests of loading and deciding, against real Cedar and the shipped files.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::{parse_cases, run_cases, DEFAULT_CASES, DEFAULT_POLICIES, DEFAULT_SCHEMA};

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
        .collect()
}

fn default_engine() -> PolicyEngine {
    PolicyEngine::load(DEFAULT_SCHEMA, &files(&[DEFAULT_POLICIES])).unwrap()
}

/// The default policies plus `extra.cedar` holding `extra`.
fn load_with(extra: &str) -> Result<PolicyEngine, PolicyError> {
    PolicyEngine::load(
        DEFAULT_SCHEMA,
        &files(&[DEFAULT_POLICIES, ("extra.cedar", extra)]),
    )
}

fn request(user: &str, groups: &[&str], env: &str, data_class: &str, mfa: bool) -> AccessRequest {
    AccessRequest {
        user: user.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        action: Action::Connect,
        resource: ResourceAttrs {
            name: "orders-db".to_owned(),
            protocol: "postgres".to_owned(),
            env: env.to_owned(),
            data_class: data_class.to_owned(),
            tags: BTreeMap::new(),
        },
        context: RequestContext::new("10.0.0.5".parse().unwrap(), "token", mfa, 10),
    }
}

/// A just-in-time request: `action` for `role` over `duration_secs`.
fn jit(
    user: &str,
    groups: &[&str],
    action: Action,
    env: &str,
    role: &str,
    duration_secs: u64,
) -> AccessRequest {
    let mut req = request(user, groups, env, "confidential", true);
    req.action = action;
    req.context.role = role.to_owned();
    req.context.duration_secs = duration_secs;
    // People signed in through the identity provider (only they approve).
    req.context.auth_method = "oidc".to_owned();
    req
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_in(text: &str, needle: &str) -> usize {
    crate::source::line_of(text, text.find(needle).unwrap())
}

// === the shipped files ===

#[test]
fn default_cases_all_pass() {
    let engine = default_engine();
    let cases = parse_cases(DEFAULT_CASES.0, DEFAULT_CASES.1).unwrap();
    assert!(cases.len() >= 8, "only {} cases", cases.len());
    let failed: Vec<_> = run_cases(&engine, &cases)
        .into_iter()
        .filter(|o| !o.passed)
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

#[test]
fn default_cases_cover_allow_default_deny_forbid_and_mfa() {
    let cases = parse_cases(DEFAULT_CASES.0, DEFAULT_CASES.1).unwrap();
    let allow = cases.iter().any(|c| c.expect == crate::Expected::Allow);
    let default_deny = cases
        .iter()
        .any(|c| c.expect == crate::Expected::Deny && c.expect_policies == Some(vec![]));
    let forbid_over_permit = cases.iter().any(|c| {
        c.request.groups.iter().any(|g| g == "dba")
            && c.expect_policies
                .as_ref()
                .is_some_and(|p| p.iter().any(|id| id == "forbid-contractors-prod"))
    });
    let mfa = cases.iter().any(|c| c.request.context.mfa)
        && cases.iter().any(|c| {
            c.expect_policies
                .as_ref()
                .is_some_and(|p| p.iter().any(|id| id == "forbid-restricted-without-mfa"))
        });
    assert!(allow && default_deny && forbid_over_permit && mfa);
}

#[test]
fn default_policies_are_listed_with_effect_controls_and_place() {
    let engine = default_engine();
    let got: Vec<(String, Effect, Vec<String>)> = engine
        .policies()
        .into_iter()
        .map(|p| (p.id, p.effect, p.controls))
        .collect();
    let s = |v: &[&str]| v.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            (
                "dba-connect-any".to_owned(),
                Effect::Permit,
                s(&["5.15", "8.2", "8.3"])
            ),
            (
                "engineering-connect-nonprod".to_owned(),
                Effect::Permit,
                s(&["5.15", "8.3", "8.31"])
            ),
            (
                "forbid-contractors-prod".to_owned(),
                Effect::Forbid,
                s(&["5.15", "8.31"])
            ),
            (
                "forbid-restricted-without-mfa".to_owned(),
                Effect::Forbid,
                s(&["5.15", "8.5"])
            ),
            (
                "dba-forward-nonprod".to_owned(),
                Effect::Permit,
                s(&["5.15", "8.20"])
            ),
            (
                "ssh-session-channels".to_owned(),
                Effect::Permit,
                s(&["5.15", "8.2"])
            ),
            (
                "forbid-contractors-file-transfer-sensitive".to_owned(),
                Effect::Forbid,
                s(&["5.14", "8.12"])
            ),
            (
                "privileged-role-needs-grant".to_owned(),
                Effect::Forbid,
                s(&["5.15", "5.18", "8.2"])
            ),
            (
                "connect-under-grant".to_owned(),
                Effect::Permit,
                s(&["5.15", "8.2"])
            ),
            (
                "engineering-request-nonprod".to_owned(),
                Effect::Permit,
                s(&["5.15", "8.2"])
            ),
            (
                "engineering-request-prod".to_owned(),
                Effect::Permit,
                s(&["5.3", "5.15", "8.2"])
            ),
            (
                "dba-approve".to_owned(),
                Effect::Permit,
                s(&["5.3", "5.15", "8.2"])
            ),
            (
                "approvals-by-people".to_owned(),
                Effect::Forbid,
                s(&["5.3", "5.17"])
            ),
            ("no-self-approval".to_owned(), Effect::Forbid, s(&["5.3"])),
            (
                "oncall-break-glass".to_owned(),
                Effect::Permit,
                s(&["5.15", "5.26", "8.2"])
            ),
            (
                "auditors-read-audit".to_owned(),
                Effect::Permit,
                s(&["5.33", "5.35", "8.15", "8.34"])
            ),
        ]
    );
    let limits: Vec<(String, Option<u32>, Option<u64>)> = engine
        .policies()
        .into_iter()
        .filter(|p| p.approvals.is_some() || p.max_duration_secs.is_some())
        .map(|p| (p.id, p.approvals, p.max_duration_secs))
        .collect();
    assert_eq!(
        limits,
        vec![
            (
                "engineering-request-nonprod".to_owned(),
                Some(1),
                Some(8 * 3600)
            ),
            (
                "engineering-request-prod".to_owned(),
                Some(2),
                Some(4 * 3600)
            ),
            ("oncall-break-glass".to_owned(), None, Some(3600)),
        ]
    );
    for info in engine.policies() {
        assert_eq!(info.file, "gatehouse.cedar");
        let annotation = format!("@id(\"{}\")", info.id);
        assert_eq!(
            info.line,
            Some(line_in(DEFAULT_POLICIES.1, &annotation)),
            "{}",
            info.id
        );
    }
    assert_eq!(Effect::Permit.to_string(), "permit");
    assert_eq!(Effect::Forbid.to_string(), "forbid");
}

#[test]
fn engine_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PolicyEngine>();
    assert_send_sync::<std::sync::Arc<PolicyEngine>>();
}

// === decisions ===

#[test]
fn permit_reports_its_id_and_controls() {
    let d = default_engine().authorize(&request("alice", &["dba"], "prod", "confidential", false));
    assert!(d.allowed);
    assert_eq!(d.policy_ids, ["dba-connect-any"]);
    assert_eq!(d.controls, ["5.15", "8.2", "8.3"]);
    assert_eq!(d.reason, "permitted by `dba-connect-any`");
    assert!(d.errors.is_empty());
}

#[test]
fn all_determining_permits_are_reported_and_controls_merged() {
    let d = default_engine().authorize(&request(
        "dave",
        &["dba", "engineering"],
        "staging",
        "internal",
        false,
    ));
    assert!(d.allowed);
    assert_eq!(
        d.policy_ids,
        ["dba-connect-any", "engineering-connect-nonprod"]
    );
    assert_eq!(d.controls, ["5.15", "8.2", "8.3", "8.31"]);
    assert_eq!(
        d.reason,
        "permitted by `dba-connect-any`, `engineering-connect-nonprod`"
    );
}

#[test]
fn forbid_overrides_permit() {
    let engine = default_engine();
    let dba = engine.authorize(&request("carol", &["dba"], "prod", "confidential", true));
    assert!(dba.allowed, "precondition: dba alone is permitted");
    let d = engine.authorize(&request(
        "carol",
        &["dba", "contractors"],
        "prod",
        "confidential",
        true,
    ));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["forbid-contractors-prod"]);
    assert_eq!(d.controls, ["5.15", "8.31"]);
    assert_eq!(d.reason, "denied by `forbid-contractors-prod`");
}

#[test]
fn mfa_decides_restricted_data() {
    let engine = default_engine();
    let without = engine.authorize(&request("alice", &["dba"], "prod", "restricted", false));
    assert!(!without.allowed);
    assert_eq!(without.policy_ids, ["forbid-restricted-without-mfa"]);
    assert_eq!(without.controls, ["5.15", "8.5"]);
    let with = engine.authorize(&request("alice", &["dba"], "prod", "restricted", true));
    assert!(with.allowed);
    assert_eq!(with.policy_ids, ["dba-connect-any"]);
}

#[test]
fn default_deny_names_no_policy_but_still_maps_to_access_control() {
    let d = default_engine().authorize(&request("bob", &["engineering"], "prod", "internal", true));
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert_eq!(d.controls, ["5.15"]);
    assert_eq!(d.reason, "no policy permits `connect` on `orders-db`");
    assert!(d.errors.is_empty());
}

#[test]
fn repeated_groups_are_harmless() {
    let d = default_engine().authorize(&request(
        "alice",
        &["dba", "dba"],
        "prod",
        "internal",
        false,
    ));
    assert!(d.allowed, "{d:?}");
}

#[test]
fn tags_reach_policies() {
    let engine = load_with(
        r#"@id("payments-owner") @controls("5.15 5.9")
        permit (principal, action == Gatehouse::Action::"connect", resource)
        when { resource.hasTag("owner") && resource.getTag("owner") == "payments" };"#,
    )
    .unwrap();
    let mut req = request("erin", &[], "prod", "internal", false);
    assert!(!engine.authorize(&req).allowed);
    req.resource
        .tags
        .insert("owner".to_owned(), "payments".to_owned());
    let d = engine.authorize(&req);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["payments-owner"]);
    assert_eq!(d.controls, ["5.9", "5.15"]);
}

#[test]
fn context_reaches_policies() {
    let engine = load_with(
        r#"@id("office-hours-from-vpn") @controls("5.15 8.20")
        permit (principal, action == Gatehouse::Action::"connect", resource)
        when {
            context.source_ip.isInRange(ip("10.0.0.0/8"))
            && context.hour_utc >= 8 && context.hour_utc < 18
            && context.auth_method == "oidc"
        };"#,
    )
    .unwrap();
    let mut req = request("erin", &[], "dev", "internal", false);
    req.context.auth_method = "oidc".to_owned();
    assert!(engine.authorize(&req).allowed);
    req.context.hour_utc = 20;
    assert!(!engine.authorize(&req).allowed);
    req.context.hour_utc = 10;
    req.context.source_ip = "192.168.1.1".parse().unwrap();
    assert!(!engine.authorize(&req).allowed);
    req.context.source_ip = "2001:db8::1".parse::<IpAddr>().unwrap();
    let d = engine.authorize(&req);
    assert!(!d.allowed && d.errors.is_empty(), "{d:?}");
}

#[test]
fn out_of_range_hour_fails_closed() {
    let mut req = request("alice", &["dba"], "prod", "internal", false);
    req.context.hour_utc = 24;
    let d = default_engine().authorize(&req);
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert_eq!(d.controls, ["5.15"]);
    assert!(d.reason.contains("hour_utc"), "{}", d.reason);
    assert_eq!(d.errors.len(), 1);
}

#[test]
fn evaluation_errors_are_listed_and_the_policy_skipped() {
    let engine = load_with(
        r#"@id("overflowing") @controls("5.15")
        permit (principal, action == Gatehouse::Action::"connect", resource)
        when { context.hour_utc * 9223372036854775807 > 0 };"#,
    )
    .unwrap();
    let d = engine.authorize(&request("erin", &[], "dev", "internal", false));
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert_eq!(d.errors.len(), 1, "{d:?}");
    assert!(d.errors[0].contains("`overflowing`"), "{}", d.errors[0]);
}

// === just-in-time access ===

#[test]
fn permits_without_limits_need_one_approval_and_set_no_duration() {
    let d = default_engine().authorize(&request("alice", &["dba"], "prod", "internal", false));
    assert!(d.allowed);
    assert_eq!(d.approvals_required, 1);
    assert_eq!(d.max_duration_secs, None);
}

#[test]
fn a_request_carries_the_limits_of_its_permit() {
    let engine = default_engine();
    let d = engine.authorize(&jit(
        "bob",
        &["engineering"],
        Action::Request,
        "prod",
        "write",
        3600,
    ));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["engineering-request-prod"]);
    assert_eq!(d.controls, ["5.3", "5.15", "8.2"]);
    assert_eq!(
        (d.approvals_required, d.max_duration_secs),
        (2, Some(4 * 3600))
    );
    let d = engine.authorize(&jit(
        "bob",
        &["engineering"],
        Action::Request,
        "dev",
        "write",
        3600,
    ));
    assert_eq!(d.policy_ids, ["engineering-request-nonprod"]);
    assert_eq!(
        (d.approvals_required, d.max_duration_secs),
        (1, Some(8 * 3600))
    );
    let d = engine.authorize(&jit(
        "olga",
        &["oncall"],
        Action::BreakGlass,
        "prod",
        "write",
        600,
    ));
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["oncall-break-glass"]);
    assert_eq!((d.approvals_required, d.max_duration_secs), (1, Some(3600)));
}

#[test]
fn the_strictest_limits_of_all_determining_permits_apply() {
    // Two permits allow the same request: the most approvals and the
    // shortest duration win, each possibly from a different policy.
    let engine = load_with(
        r#"@id("sre-request-any") @controls("5.15 8.2") @approvals("3") @max_duration("12h")
        permit (principal in Gatehouse::Group::"sre", action == Gatehouse::Action::"request", resource);
        @id("weekend-request") @controls("5.15") @max_duration("90m")
        permit (principal, action == Gatehouse::Action::"request", resource)
        when { context.hour_utc < 6 };
        @id("plain-request") @controls("5.15")
        permit (principal in Gatehouse::Group::"sre", action == Gatehouse::Action::"request", resource);"#,
    )
    .unwrap();
    let mut req = jit(
        "sam",
        &["engineering", "sre"],
        Action::Request,
        "prod",
        "write",
        3600,
    );
    let d = engine.authorize(&req);
    assert!(d.allowed, "{d:?}");
    assert_eq!(
        d.policy_ids,
        [
            "engineering-request-prod",
            "plain-request",
            "sre-request-any"
        ]
    );
    assert_eq!(d.approvals_required, 3);
    assert_eq!(d.max_duration_secs, Some(4 * 3600));
    req.context.hour_utc = 2;
    let d = engine.authorize(&req);
    assert_eq!(d.policy_ids.len(), 4, "{d:?}");
    assert_eq!(
        (d.approvals_required, d.max_duration_secs),
        (3, Some(90 * 60))
    );

    // An unannotated permit beside an annotated one takes nothing away.
    let d = engine.authorize(&jit(
        "sam",
        &["sre"],
        Action::Request,
        "prod",
        "write",
        3600,
    ));
    assert_eq!(d.policy_ids, ["plain-request", "sre-request-any"]);
    assert_eq!(
        (d.approvals_required, d.max_duration_secs),
        (3, Some(12 * 3600))
    );

    // Only an unannotated permit: one approval, no limit.
    let only_plain = PolicyEngine::load(
        DEFAULT_SCHEMA,
        &files(&[(
            "plain.cedar",
            r#"@id("plain-request") @controls("5.15")
            permit (principal, action == Gatehouse::Action::"request", resource);"#,
        )]),
    )
    .unwrap();
    let d = only_plain.authorize(&jit("sam", &[], Action::Request, "prod", "write", 3600));
    assert!(d.allowed);
    assert_eq!((d.approvals_required, d.max_duration_secs), (1, None));
}

#[test]
fn denies_need_one_approval_and_set_no_duration() {
    let engine = default_engine();
    // A forbid overrides a permit that carries limits.
    let d = engine.authorize(&jit(
        "carol",
        &["engineering", "contractors"],
        Action::Request,
        "prod",
        "write",
        3600,
    ));
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["forbid-contractors-prod"]);
    assert_eq!((d.approvals_required, d.max_duration_secs), (1, None));
    // Default deny.
    let d = engine.authorize(&jit(
        "alice",
        &["dba"],
        Action::Request,
        "prod",
        "write",
        3600,
    ));
    assert!(!d.allowed && d.policy_ids.is_empty(), "{d:?}");
    assert_eq!((d.approvals_required, d.max_duration_secs), (1, None));
    // Not evaluated at all.
    let mut req = jit(
        "bob",
        &["engineering"],
        Action::Request,
        "prod",
        "write",
        3600,
    );
    req.context.hour_utc = 99;
    let d = engine.authorize(&req);
    assert!(!d.allowed);
    assert_eq!((d.approvals_required, d.max_duration_secs), (1, None));
}

#[test]
fn privileged_roles_need_a_grant() {
    let engine = default_engine();
    let mut req = request("alice", &["dba"], "prod", "internal", true);
    req.context.role = "write".to_owned();
    let d = engine.authorize(&req);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["privileged-role-needs-grant"]);
    assert_eq!(d.controls, ["5.15", "5.18", "8.2"]);
    req.context.has_grant = true;
    let d = engine.authorize(&req);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["connect-under-grant", "dba-connect-any"]);
    req.context.role = "read".to_owned();
    req.context.has_grant = false;
    assert_eq!(engine.authorize(&req).policy_ids, ["dba-connect-any"]);
}

#[test]
fn approvals_follow_group_duration_and_requester() {
    let engine = default_engine();
    let mut req = jit(
        "alice",
        &["dba"],
        Action::Approve,
        "prod",
        "write",
        8 * 3600,
    );
    req.context.requester = "bob".to_owned();
    let d = engine.authorize(&req);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["dba-approve"]);
    assert_eq!((d.approvals_required, d.max_duration_secs), (1, None));
    req.context.duration_secs = 8 * 3600 + 1;
    assert!(!engine.authorize(&req).allowed);
    req.context.duration_secs = 3600;
    req.context.requester = "alice".to_owned();
    let d = engine.authorize(&req);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["no-self-approval"]);
    assert_eq!(d.controls, ["5.3", "5.15"]);
    // A service token in the dba group does not approve.
    let mut token = jit("ci-bot", &["dba"], Action::Approve, "prod", "write", 3600);
    token.context.requester = "bob".to_owned();
    token.context.auth_method = "gateway_token".to_owned();
    let d = engine.authorize(&token);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["approvals-by-people"]);
    let mut engineer = jit(
        "dave",
        &["engineering"],
        Action::Approve,
        "dev",
        "write",
        3600,
    );
    engineer.context.requester = "bob".to_owned();
    assert!(!engine.authorize(&engineer).allowed);
}

#[test]
fn duration_beyond_a_cedar_long_fails_closed() {
    let mut req = jit(
        "bob",
        &["engineering"],
        Action::Request,
        "dev",
        "write",
        u64::MAX,
    );
    let d = default_engine().authorize(&req);
    assert!(!d.allowed);
    assert!(d.reason.contains("duration_secs"), "{}", d.reason);
    assert_eq!(d.errors.len(), 1);
    req.context.duration_secs = i64::MAX as u64;
    let d = default_engine().authorize(&req);
    assert!(d.allowed && d.errors.is_empty(), "{d:?}");
}

fn load_annotated(annotations: &str, effect: &str) -> Result<PolicyEngine, PolicyError> {
    load_with(&format!(
        "// extra\n@id(\"limited\") @controls(\"5.15\")\n{annotations}\n{effect} (principal, action == Gatehouse::Action::\"request\", resource);"
    ))
}

#[test]
fn good_annotation_values_load() {
    for (annotation, approvals, secs) in [
        ("@approvals(\"1\")", Some(1), None),
        ("@approvals(\"10\")", Some(10), None),
        ("@max_duration(\"45s\")", None, Some(45)),
        ("@max_duration(\"30m\")", None, Some(1800)),
        ("@max_duration(\"30d\")", None, Some(30 * 86_400)),
        (
            "@approvals(\"2\") @max_duration(\"1d\")",
            Some(2),
            Some(86_400),
        ),
    ] {
        let engine = load_annotated(annotation, "permit").unwrap();
        let info = engine
            .policies()
            .into_iter()
            .find(|p| p.id == "limited")
            .unwrap();
        assert_eq!(
            (info.approvals, info.max_duration_secs),
            (approvals, secs),
            "{annotation}"
        );
    }
}

#[test]
fn bad_approvals_are_rejected_naming_the_policy() {
    for value in [
        "0",
        "11",
        "two",
        " 2",
        "2 ",
        "+2",
        "-1",
        "",
        "1.5",
        "99999999999",
    ] {
        let err = load_annotated(&format!("@approvals(\"{value}\")"), "permit").unwrap_err();
        assert!(
            matches!(&err, PolicyError::InvalidApprovals { at, id, value: v }
                if id == "limited" && v == value && at.file == "extra.cedar" && at.line == Some(2)),
            "{value:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("`limited`")
                && message.contains("@approvals")
                && message.contains("1 to 10"),
            "{message}"
        );
    }
}

#[test]
fn bad_max_durations_are_rejected_naming_the_policy() {
    for value in [
        "0h", "31d", "721h", "8", "h", "8hours", "1h30m", "8 h", "8H", "1w", "-1h", "",
    ] {
        let err = load_annotated(&format!("@max_duration(\"{value}\")"), "permit").unwrap_err();
        assert!(
            matches!(&err, PolicyError::InvalidMaxDuration { at, id, value: v }
                if id == "limited" && v == value && at.file == "extra.cedar" && at.line == Some(2)),
            "{value:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("`limited`") && message.contains("@max_duration"),
            "{message}"
        );
    }
}

#[test]
fn limits_on_a_forbid_are_rejected() {
    for (annotation, name) in [
        ("@approvals(\"2\")", "approvals"),
        ("@max_duration(\"1h\")", "max_duration"),
    ] {
        let err = load_annotated(annotation, "forbid").unwrap_err();
        assert!(
            matches!(&err, PolicyError::AnnotationOnForbid { id, annotation, .. }
                if id == "limited" && annotation == name),
            "{err:?}"
        );
        assert!(err.to_string().contains("`limited`"), "{err}");
    }
}

#[test]
fn every_action_reaches_cedar_with_its_context() {
    let engine = load_with(
        r#"@id("echo") @controls("5.15")
        permit (principal, action, resource)
        when {
            context.role == "admin" && context.has_grant
            && context.duration_secs == 1234 && context.requester == "zoe"
        };"#,
    )
    .unwrap();
    for action in Action::ALL {
        let mut req = jit("yan", &[], action, "dev", "admin", 1234);
        req.context.has_grant = true;
        req.context.requester = "zoe".to_owned();
        let d = engine.authorize(&req);
        assert!(d.allowed && d.errors.is_empty(), "{action}: {d:?}");
        assert!(d.policy_ids.contains(&"echo".to_owned()), "{action}: {d:?}");
        req.context.requester = "zed".to_owned();
        let d = engine.authorize(&req);
        assert!(
            !d.policy_ids.contains(&"echo".to_owned()),
            "{action}: {d:?}"
        );
    }
}

// === load errors ===

#[test]
fn policy_without_id_is_rejected() {
    let extra = "// extra\n\n@controls(\"5.15\")\npermit (principal, action, resource);\n";
    let err = load_with(extra).unwrap_err();
    assert!(
        matches!(&err, PolicyError::MissingId { at } if at.file == "extra.cedar" && at.line == Some(3)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "`extra.cedar` line 3: policy has no `@id` annotation"
    );
}

#[test]
fn empty_id_is_rejected() {
    let err = load_with("@id(\"\") @controls(\"5.15\") permit (principal, action, resource);")
        .unwrap_err();
    assert!(matches!(err, PolicyError::MissingId { .. }), "{err:?}");
}

#[test]
fn id_with_whitespace_is_rejected() {
    let err =
        load_with("@id(\"two words\") @controls(\"5.15\") permit (principal, action, resource);")
            .unwrap_err();
    assert!(
        matches!(&err, PolicyError::InvalidId { id, .. } if id == "two words"),
        "{err:?}"
    );
}

#[test]
fn policy_without_controls_is_rejected() {
    let err =
        load_with("@id(\"uncontrolled\")\npermit (principal, action, resource);").unwrap_err();
    assert!(
        matches!(&err, PolicyError::MissingControls { id, at } if id == "uncontrolled" && at.line == Some(1)),
        "{err:?}"
    );
    assert!(err.to_string().contains("`uncontrolled`"), "{err}");
}

#[test]
fn empty_controls_are_rejected() {
    let err = load_with("@id(\"blank\") @controls(\"  \") permit (principal, action, resource);")
        .unwrap_err();
    assert!(
        matches!(&err, PolicyError::MissingControls { id, .. } if id == "blank"),
        "{err:?}"
    );
}

#[test]
fn bogus_control_is_rejected() {
    let err =
        load_with("@id(\"bogus\") @controls(\"5.15 9.99\") permit (principal, action, resource);")
            .unwrap_err();
    assert!(
        matches!(&err, PolicyError::UnknownControl { id, control, .. } if id == "bogus" && control == "9.99"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("`bogus`")
            && message.contains("`9.99`")
            && message.contains("extra.cedar"),
        "{message}"
    );
}

#[test]
fn control_ids_of_the_2013_edition_are_rejected() {
    let err =
        load_with("@id(\"old\") @controls(\"A.9.2.3\") permit (principal, action, resource);")
            .unwrap_err();
    assert!(matches!(err, PolicyError::UnknownControl { .. }), "{err:?}");
}

#[test]
fn duplicate_id_is_rejected_with_both_places() {
    let extra =
        "\n@id(\"dba-connect-any\") @controls(\"5.15\")\nforbid (principal, action, resource);";
    let err = load_with(extra).unwrap_err();
    match &err {
        PolicyError::DuplicateId { at, id, first } => {
            assert_eq!(id, "dba-connect-any");
            assert_eq!((at.file.as_str(), at.line), ("extra.cedar", Some(2)));
            assert_eq!(first.file, "gatehouse.cedar");
            assert_eq!(
                first.line,
                Some(line_in(DEFAULT_POLICIES.1, "@id(\"dba-connect-any\")"))
            );
        }
        other => panic!("expected DuplicateId, got {other:?}"),
    }
}

#[test]
fn duplicate_id_within_one_file_is_rejected() {
    let text = "@id(\"a\") @controls(\"5.15\") permit (principal, action, resource);\n@id(\"a\") @controls(\"5.15\") permit (principal, action, resource);";
    let err = PolicyEngine::load(DEFAULT_SCHEMA, &files(&[("one.cedar", text)])).unwrap_err();
    assert!(
        matches!(&err, PolicyError::DuplicateId { at, first, .. } if at.line == Some(2) && first.line == Some(1)),
        "{err:?}"
    );
}

#[test]
fn type_error_against_the_schema_is_rejected() {
    let extra = "\n\n@id(\"mistyped\") @controls(\"5.15\")\npermit (principal, action, resource)\nwhen { context.mfa == \"yes\" };";
    let err = load_with(extra).unwrap_err();
    match &err {
        PolicyError::Validation { issues } => {
            assert!(!issues.is_empty());
            for issue in issues {
                assert_eq!(issue.policy_id, "mistyped");
                assert_eq!(
                    (issue.at.file.as_str(), issue.at.line),
                    ("extra.cedar", Some(3))
                );
            }
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains("`mistyped`") && message.contains("`extra.cedar` line 3"),
        "{message}"
    );
}

#[test]
fn unknown_attribute_is_rejected() {
    let err = load_with(
        "@id(\"owner-attr\") @controls(\"5.15\") permit (principal, action, resource) when { resource.owner == \"x\" };",
    )
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Validation { issues } if issues[0].policy_id == "owner-attr"),
        "{err:?}"
    );
}

#[test]
fn unchecked_tag_access_is_rejected() {
    let err = load_with(
        "@id(\"raw-tag\") @controls(\"5.15\") permit (principal, action, resource) when { resource.getTag(\"owner\") == \"x\" };",
    )
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Validation { issues } if issues[0].policy_id == "raw-tag"),
        "{err:?}"
    );
}

#[test]
fn parse_error_names_file_and_line_of_the_failing_policy() {
    let extra = "@id(\"fine\") @controls(\"5.15\")\npermit (principal, action, resource);\n\n// the next one is broken; really\n@id(\"broken\") @controls(\"5.15\")\npermit (principal, action resource);\n";
    let err = load_with(extra).unwrap_err();
    assert!(
        matches!(&err, PolicyError::Parse { at, .. } if at.file == "extra.cedar" && at.line == Some(5)),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("`extra.cedar` line 5: cannot parse policy: "),
        "{err}"
    );
}

#[test]
fn templates_are_rejected() {
    let err = load_with(
        "\n@id(\"t\") @controls(\"5.15\") permit (principal == ?principal, action, resource);",
    )
    .unwrap_err();
    assert!(
        matches!(&err, PolicyError::Template { at } if at.file == "extra.cedar" && at.line == Some(2)),
        "{err:?}"
    );
}

#[test]
fn empty_policy_files_load_and_deny_everything() {
    let engine =
        PolicyEngine::load(DEFAULT_SCHEMA, &files(&[("empty.cedar", "// nothing\n")])).unwrap();
    assert!(engine.policies().is_empty());
    let d = engine.authorize(&request("alice", &["dba"], "dev", "internal", true));
    assert!(!d.allowed);
    assert_eq!(d.controls, ["5.15"]);
}

#[test]
fn broken_schema_is_rejected() {
    let err = PolicyEngine::load("namespace Gatehouse { entity ", &files(&[DEFAULT_POLICIES]))
        .unwrap_err();
    assert!(matches!(err, PolicyError::Schema { .. }), "{err:?}");
}

#[test]
fn schema_that_does_not_fit_requests_is_rejected() {
    // Resource without tags: the tags gatehouse sends would not conform.
    let no_tags = DEFAULT_SCHEMA.replace("} tags String;", "};");
    assert_ne!(
        no_tags, DEFAULT_SCHEMA,
        "precondition: the schema declares tags"
    );
    let err = PolicyEngine::load(&no_tags, &files(&[DEFAULT_POLICIES])).unwrap_err();
    assert!(matches!(err, PolicyError::SchemaMismatch { .. }), "{err:?}");

    // A context without hour_utc.
    let no_hour = DEFAULT_SCHEMA.replace("hour_utc: Long,", "");
    assert_ne!(
        no_hour, DEFAULT_SCHEMA,
        "precondition: the context declares hour_utc"
    );
    let err = PolicyEngine::load(&no_hour, &files(&[DEFAULT_POLICIES])).unwrap_err();
    assert!(
        matches!(&err, PolicyError::SchemaMismatch { message } if message.contains("context")),
        "{err:?}"
    );

    // A context without a just-in-time field. The default policies use it, so
    // use none: the fit check alone must catch it.
    let no_requester = DEFAULT_SCHEMA.replace("requester: String,", "");
    assert_ne!(
        no_requester, DEFAULT_SCHEMA,
        "precondition: the context declares requester"
    );
    let err = PolicyEngine::load(&no_requester, &[]).unwrap_err();
    assert!(
        matches!(&err, PolicyError::SchemaMismatch { message } if message.contains("context")),
        "{err:?}"
    );

    // A schema that lacks one of the actions.
    let no_break_glass = DEFAULT_SCHEMA.replace(", break_glass, read_audit,", ", read_audit,");
    assert_ne!(
        no_break_glass, DEFAULT_SCHEMA,
        "precondition: the schema declares break_glass"
    );
    let err = PolicyEngine::load(&no_break_glass, &[]).unwrap_err();
    assert!(
        matches!(&err, PolicyError::SchemaMismatch { message } if message.contains("break_glass")),
        "{err:?}"
    );
}

#[test]
fn ipv4_mapped_client_addresses_are_seen_as_ipv4() {
    let engine = load_with(
        r#"@id("from-vpn") @controls("5.15 8.20")
        permit (principal, action == Gatehouse::Action::"connect", resource)
        when { context.source_ip.isInRange(ip("10.0.0.0/8")) };"#,
    )
    .unwrap();
    let mut req = request("erin", &[], "dev", "internal", false);
    req.context.source_ip = "::ffff:10.1.2.3".parse().unwrap();
    let d = engine.authorize(&req);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["from-vpn"]);
}

#[test]
fn every_ipv6_form_reaches_cedar() {
    let engine = default_engine();
    for ip in [
        "::1",
        "::",
        "fe80::1",
        "2001:db8::ffff:1.2.3.4",
        "::1.2.3.4",
        "::ffff:0.0.0.0",
    ] {
        let mut req = request("alice", &["dba"], "prod", "internal", false);
        req.context.source_ip = ip.parse().unwrap();
        let d = engine.authorize(&req);
        assert!(d.allowed && d.errors.is_empty(), "{ip}: {d:?}");
    }
}
