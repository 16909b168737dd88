//! The answer to an access request, shaped for the audit log: allowed or not,
//! which policies decided, which Annex A controls that evidences, and why.

use crate::engine::PolicyEngine;
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
            controls.extend(engine.controls_of(id).iter().cloned());
        }
        load::sort_controls(&mut controls);
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
