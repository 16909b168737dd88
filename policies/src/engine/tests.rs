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
        context: RequestContext {
            mfa,
            source_ip: "10.0.0.5".parse().unwrap(),
            auth_method: "token".to_owned(),
            hour_utc: 10,
        },
    }
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
