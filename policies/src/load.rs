//! Turning schema and policy text into a checked Cedar policy set.
//!
//! Every policy must carry `@id` (unique across all files; it becomes the
//! Cedar policy id, so Cedar's diagnostics and the audit log speak of it) and
//! `@controls` (Annex A 2022 ids). A permit may carry `@approvals` (a whole
//! number from 1 to 10) and `@max_duration` (a duration such as `8h`, at most
//! 30 days); a bad value is a load error, never a silent default. The whole
//! set must pass strict validation against the schema, so a type error or a
//! misspelt attribute is caught at load time and never turns into a skipped
//! policy at request time.

use std::collections::HashMap;
use std::str::FromStr;

use cedar_policy::{Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};

use crate::engine::{Effect, PolicyInfo};
use crate::error::{chain, PolicyError, SourceLocation, ValidationIssue};
use crate::source;
use crate::{annex_a, duration};

/// The annotation that names a policy.
const ID_ANNOTATION: &str = "id";
/// The annotation that lists the Annex A controls a policy implements.
const CONTROLS_ANNOTATION: &str = "controls";
/// The annotation that says how many approvals a permitted request needs.
const APPROVALS_ANNOTATION: &str = "approvals";
/// The annotation that says how long a permitted grant may last.
const MAX_DURATION_ANNOTATION: &str = "max_duration";
/// The most approvals `@approvals` may ask for.
pub(crate) const MAX_APPROVALS: u32 = 10;

/// Parse the `.cedarschema` text. Schema warnings (such as shadowed names) are
/// ignored.
pub(crate) fn parse_schema(src: &str) -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(src)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| PolicyError::Schema { message: chain(&e) })
}

/// Parse, check and validate every policy file, in order.
pub(crate) fn load_policies(
    schema: &Schema,
    files: &[(String, String)],
) -> Result<(PolicySet, Vec<PolicyInfo>), PolicyError> {
    let mut set = PolicySet::new();
    let mut infos: Vec<PolicyInfo> = Vec::new();
    let mut seen: HashMap<String, SourceLocation> = HashMap::new();
    for (file, text) in files {
        for (policy, at) in parse_file(file, text)? {
            let info = check_annotations(&policy, &at)?;
            if let Err(e) = set.add(policy.new_id(PolicyId::new(&info.id))) {
                return Err(match seen.get(&info.id) {
                    Some(first) => PolicyError::DuplicateId {
                        at,
                        id: info.id,
                        first: first.clone(),
                    },
                    // Only a duplicate id can make adding a static policy
                    // fail; report Cedar's words should that ever change.
                    None => PolicyError::Parse {
                        at,
                        message: chain(&e),
                    },
                });
            }
            seen.insert(info.id.clone(), at);
            infos.push(info);
        }
    }
    validate(schema, &set, &infos)?;
    Ok((set, infos))
}

/// The static policies of one file in source order, with their locations.
fn parse_file(file: &str, text: &str) -> Result<Vec<(Policy, SourceLocation)>, PolicyError> {
    let set = PolicySet::from_str(text).map_err(|_| parse_error(file, text))?;
    if let Some(template) = set.templates().next() {
        let line = find_line(text, 0, &template.to_cedar()).map(|(line, _)| line);
        return Err(PolicyError::Template {
            at: SourceLocation {
                file: file.to_owned(),
                line,
            },
        });
    }
    // Cedar names the policies of a parsed file `policy0`, `policy1`, ... in
    // source order; sort by that number so the text search below moves forward.
    let mut policies: Vec<&Policy> = set.policies().collect();
    policies.sort_by_key(|p| {
        AsRef::<str>::as_ref(p.id())
            .strip_prefix("policy")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    });
    let mut cursor = 0;
    let mut out = Vec::with_capacity(policies.len());
    for policy in policies {
        let line = match policy.to_cedar().and_then(|t| find_line(text, cursor, &t)) {
            Some((line, end)) => {
                cursor = end;
                Some(line)
            }
            None => None,
        };
        let at = SourceLocation {
            file: file.to_owned(),
            line,
        };
        out.push((policy.clone(), at));
    }
    Ok(out)
}

/// The line where `needle` starts in `text` at or after byte `from`, and the
/// byte offset just past it.
fn find_line(text: &str, from: usize, needle: &str) -> Option<(usize, usize)> {
    let start = from + text.get(from..)?.find(needle)?;
    Some((source::line_of(text, start), start + needle.len()))
}

/// The parse error of the first statement of `text` that fails on its own, or
/// of the whole file if no single statement does.
fn parse_error(file: &str, text: &str) -> PolicyError {
    for (offset, statement) in source::statements(text) {
        if let Err(e) = PolicySet::from_str(statement) {
            return PolicyError::Parse {
                at: SourceLocation {
                    file: file.to_owned(),
                    line: Some(source::line_of(text, offset)),
                },
                message: chain(&e),
            };
        }
    }
    let message = match PolicySet::from_str(text) {
        Err(e) => chain(&e),
        Ok(_) => "the file parses only in parts".to_owned(),
    };
    PolicyError::Parse {
        at: SourceLocation {
            file: file.to_owned(),
            line: None,
        },
        message,
    }
}

/// Check `@id`, `@controls`, `@approvals` and `@max_duration` and describe
/// the policy.
fn check_annotations(policy: &Policy, at: &SourceLocation) -> Result<PolicyInfo, PolicyError> {
    let id = policy
        .annotation(ID_ANNOTATION)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| PolicyError::MissingId { at: at.clone() })?;
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(PolicyError::InvalidId {
            at: at.clone(),
            id: id.to_owned(),
        });
    }
    let missing_controls = || PolicyError::MissingControls {
        at: at.clone(),
        id: id.to_owned(),
    };
    let listed = policy
        .annotation(CONTROLS_ANNOTATION)
        .ok_or_else(missing_controls)?;
    let mut controls: Vec<String> = Vec::new();
    for control in listed.split_whitespace() {
        if !annex_a::is_control(control) {
            return Err(PolicyError::UnknownControl {
                at: at.clone(),
                id: id.to_owned(),
                control: control.to_owned(),
            });
        }
        controls.push(control.to_owned());
    }
    if controls.is_empty() {
        return Err(missing_controls());
    }
    sort_controls(&mut controls);
    let effect = Effect::from(policy.effect());
    if effect == Effect::Forbid {
        for annotation in [APPROVALS_ANNOTATION, MAX_DURATION_ANNOTATION] {
            if policy.annotation(annotation).is_some() {
                return Err(PolicyError::AnnotationOnForbid {
                    at: at.clone(),
                    id: id.to_owned(),
                    annotation: annotation.to_owned(),
                });
            }
        }
    }
    let approvals = match policy.annotation(APPROVALS_ANNOTATION) {
        None => None,
        Some(value) => {
            Some(
                parse_approvals(value).ok_or_else(|| PolicyError::InvalidApprovals {
                    at: at.clone(),
                    id: id.to_owned(),
                    value: value.to_owned(),
                })?,
            )
        }
    };
    let max_duration_secs = match policy.annotation(MAX_DURATION_ANNOTATION) {
        None => None,
        Some(value) => {
            Some(
                duration::parse(value).ok_or_else(|| PolicyError::InvalidMaxDuration {
                    at: at.clone(),
                    id: id.to_owned(),
                    value: value.to_owned(),
                })?,
            )
        }
    };
    Ok(PolicyInfo {
        id: id.to_owned(),
        effect,
        controls,
        file: at.file.clone(),
        line: at.line,
        approvals,
        max_duration_secs,
    })
}

/// The number in an `@approvals` value: ASCII digits only, 1 to
/// [`MAX_APPROVALS`].
fn parse_approvals(value: &str) -> Option<u32> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_APPROVALS).contains(n))
}

/// Strict validation of the whole set against the schema; warnings are ignored.
fn validate(schema: &Schema, set: &PolicySet, infos: &[PolicyInfo]) -> Result<(), PolicyError> {
    let result = Validator::new(schema.clone()).validate(set, ValidationMode::Strict);
    if result.validation_passed() {
        return Ok(());
    }
    let position: HashMap<&str, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, info)| (info.id.as_str(), i))
        .collect();
    let mut issues: Vec<(usize, ValidationIssue)> = result
        .validation_errors()
        .map(|e| {
            let id: &str = e.policy_id().as_ref();
            let index = position.get(id).copied().unwrap_or(usize::MAX);
            let at = infos.get(index).map_or_else(
                || SourceLocation {
                    file: String::new(),
                    line: None,
                },
                |info| SourceLocation {
                    file: info.file.clone(),
                    line: info.line,
                },
            );
            // Some Cedar messages start by naming the policy; the issue names
            // it already.
            let message = chain(e);
            let prefix = format!("for policy `{id}`, ");
            let message = message
                .strip_prefix(&prefix)
                .map_or_else(|| message.clone(), str::to_owned);
            let issue = ValidationIssue {
                at,
                policy_id: id.to_owned(),
                message,
            };
            (index, issue)
        })
        .collect();
    issues.sort_by_key(|(index, _)| *index);
    Err(PolicyError::Validation {
        issues: issues.into_iter().map(|(_, issue)| issue).collect(),
    })
}

/// Sort control ids in the standard's order (`5.2` before `5.15`) and drop
/// duplicates. Ids that are not controls go last, in string order.
pub(crate) fn sort_controls(controls: &mut Vec<String>) {
    controls.sort_by(|a, b| {
        let key = |id: &str| annex_a::position(id).unwrap_or(usize::MAX);
        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
    });
    controls.dedup();
}
