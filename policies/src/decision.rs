//! The answer to an access request, shaped for the audit log: allowed or not,
//! which policies decided, which Annex A controls that evidences, and why;
//! and for just-in-time access, how many approvals an allowed request needs
//! and how long its grant may last.

use crate::engine::{Effect, PolicyEngine};
use crate::request::AccessRequest;
use crate::{load, ACCESS_CONTROL};

/// The outcome of [`PolicyEngine::authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The `@id` of the policies that determined the decision: the permits that
    /// allowed it, or the forbids that denied it; empty on default deny.
    /// Sorted.
    pub policy_ids: Vec<String>,
    /// The union of the `@controls` of `policy_ids`, de-duplicated and sorted
    /// in the standard's order (`5.2` before `5.15`). Always contains `5.15`
    /// (access control), even on default deny.
    pub controls: Vec<String>,
    /// Human-readable, e.g. "permitted by `dba-connect-any`", "denied by
    /// `forbid-contractors-prod`", "no policy permits `connect` on `orders-db`".
    pub reason: String,
    /// Evaluation errors. Cedar skips a policy whose evaluation errors, so a
    /// non-empty list means the decision was made without those policies.
    pub errors: Vec<String>,
    /// On an allow, the largest `@approvals` of the permits in `policy_ids`:
    /// how many distinct approvals a `request` needs. 1 when none of them
    /// says, and on every deny.
    pub approvals_required: u32,
    /// On an allow, the smallest `@max_duration` of the permits in
    /// `policy_ids`, in seconds: the longest grant a `request` or
    /// `break_glass` may get. `None` when none of them says, and on every
    /// deny.
    pub max_duration_secs: Option<u64>,
}

impl Decision {
    /// The decision Cedar reached, with `policy_ids` the determining policies.
    pub(crate) fn evaluated(
        engine: &PolicyEngine,
        request: &AccessRequest,
        allowed: bool,
        mut policy_ids: Vec<String>,
        errors: Vec<String>,
    ) -> Decision {
        policy_ids.sort();
        policy_ids.dedup();
        let mut controls = vec![ACCESS_CONTROL.to_owned()];
        for id in &policy_ids {
            if let Some(policy) = engine.policy(id) {
                controls.extend(policy.controls.iter().cloned());
            }
        }
        load::sort_controls(&mut controls);
        let (approvals_required, max_duration_secs) = if allowed {
            let permits = || {
                policy_ids
                    .iter()
                    .filter_map(|id| engine.policy(id))
                    .filter(|p| p.effect == Effect::Permit)
            };
            (
                permits().filter_map(|p| p.approvals).max().unwrap_or(1),
                permits().filter_map(|p| p.max_duration_secs).min(),
            )
        } else {
            (1, None)
        };
        let reason = match (allowed, policy_ids.is_empty()) {
            (true, _) => format!("permitted by {}", quoted(&policy_ids)),
            (false, false) => format!("denied by {}", quoted(&policy_ids)),
            (false, true) => format!(
                "no policy permits `{}` on `{}`",
                request.action, request.resource.name
            ),
        };
        Decision {
            allowed,
            policy_ids,
            controls,
            reason,
            errors,
            approvals_required,
            max_duration_secs,
        }
    }

    /// A deny for a request that could not be evaluated at all (fail closed).
    pub(crate) fn unevaluated(error: String) -> Decision {
        Decision {
            allowed: false,
            policy_ids: Vec::new(),
            controls: vec![ACCESS_CONTROL.to_owned()],
            reason: format!("denied: the request cannot be evaluated: {error}"),
            errors: vec![error],
            approvals_required: 1,
            max_duration_secs: None,
        }
    }
}

/// `a`, `b`, `c`
pub(crate) fn quoted(ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("`{id}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
