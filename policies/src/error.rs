//! Errors of loading the schema, the policies and the policy test cases.
//!
//! Each error names the file and, where there is one, the line and the policy
//! id, so that `gatehouse policy check` can point at what to fix.

use std::fmt;

/// Where a policy or a problem is in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLocation {
    /// The file name given to the loader.
    pub file: String,
    /// The 1-based line, if known.
    pub line: Option<usize>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "`{}` line {line}", self.file),
            None => write!(f, "`{}`", self.file),
        }
    }
}

/// One strict-validation error of a policy against the schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationIssue {
    /// Where the policy is.
    pub at: SourceLocation,
    /// The policy's `@id`.
    pub policy_id: String,
    /// Cedar's message.
    pub message: String,
}

impl fmt::Display for ValidationIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: policy `{}`: {}",
            self.at, self.policy_id, self.message
        )
    }
}

/// Why the schema, the policies or the test cases were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The schema does not parse or is inconsistent.
    #[error("invalid schema: {message}")]
    Schema {
        /// Cedar's message.
        message: String,
    },
    /// The schema parses but does not fit the requests Gatehouse makes (for
    /// example it lacks `Gatehouse::Resource` or a context attribute).
    #[error("the schema does not fit gatehouse requests: {message}")]
    SchemaMismatch {
        /// What did not fit.
        message: String,
    },
    /// A policy file does not parse.
    #[error("{at}: cannot parse policy: {message}")]
    Parse {
        /// The file, and the line of the statement that fails if it was found.
        at: SourceLocation,
        /// Cedar's message.
        message: String,
    },
    /// A policy file holds a template (a policy with `?principal` or `?resource`).
    #[error("{at}: policy templates are not supported")]
    Template {
        /// Where the template is.
        at: SourceLocation,
    },
    /// A policy has no `@id`, or an empty one.
    #[error("{at}: policy has no `@id` annotation")]
    MissingId {
        /// Where the policy is.
        at: SourceLocation,
    },
    /// A policy's `@id` contains whitespace or control characters.
    #[error("{at}: policy id `{id}` must not contain whitespace or control characters")]
    InvalidId {
        /// Where the policy is.
        at: SourceLocation,
        /// The id as written.
        id: String,
    },
    /// Two policies have the same `@id`.
    #[error("{at}: policy id `{id}` is already used at {first}")]
    DuplicateId {
        /// Where the second policy is.
        at: SourceLocation,
        /// The id both use.
        id: String,
        /// Where the first policy is.
        first: SourceLocation,
    },
    /// A policy has no `@controls`, or an empty one.
    #[error("{at}: policy `{id}` has no `@controls` annotation")]
    MissingControls {
        /// Where the policy is.
        at: SourceLocation,
        /// The policy's `@id`.
        id: String,
    },
    /// A policy's `@controls` names something that is not an Annex A 2022 control.
    #[error(
        "{at}: policy `{id}` lists `{control}` in `@controls`, which is not an ISO/IEC 27001:2022 Annex A control"
    )]
    UnknownControl {
        /// Where the policy is.
        at: SourceLocation,
        /// The policy's `@id`.
        id: String,
        /// The unknown control id.
        control: String,
    },
    /// A policy's `@approvals` is not a whole number from 1 to 10.
    #[error(
        "{at}: policy `{id}` has `@approvals(\"{value}\")`; it must be a whole number of approvals from 1 to 10"
    )]
    InvalidApprovals {
        /// Where the policy is.
        at: SourceLocation,
        /// The policy's `@id`.
        id: String,
        /// The value as written.
        value: String,
    },
    /// A policy's `@max_duration` is not a positive duration of at most 30
    /// days, written as a whole number and one unit (`s`, `m`, `h`, `d`).
    #[error(
        "{at}: policy `{id}` has `@max_duration(\"{value}\")`; it must be a whole number and one unit of s, m, h or d, such as `30m` or `8h`, from 1s to 30d"
    )]
    InvalidMaxDuration {
        /// Where the policy is.
        at: SourceLocation,
        /// The policy's `@id`.
        id: String,
        /// The value as written.
        value: String,
    },
    /// A forbid carries `@approvals` or `@max_duration`, which only permits
    /// can honour: a forbid never allows anything to approve or time-box.
    #[error("{at}: policy `{id}` is a forbid, and `@{annotation}` applies only to permits")]
    AnnotationOnForbid {
        /// Where the policy is.
        at: SourceLocation,
        /// The policy's `@id`.
        id: String,
        /// The annotation, e.g. `approvals`.
        annotation: String,
    },
    /// Policies fail strict validation against the schema.
    #[error("policies do not validate against the schema: {}", join(issues))]
    Validation {
        /// Every validation error, in file order.
        issues: Vec<ValidationIssue>,
    },
    /// A test case file does not parse or has an unknown key.
    #[error("`{file}`: invalid test cases: {message}")]
    Cases {
        /// The test case file.
        file: String,
        /// The TOML parser's message, with the line and the key.
        message: String,
    },
    /// A test case parses but one of its values is not acceptable.
    #[error("`{file}`: case `{case}`: key `{key}`: {message}")]
    Case {
        /// The test case file.
        file: String,
        /// The case name.
        case: String,
        /// The offending key, e.g. `context.hour_utc`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

fn join(issues: &[ValidationIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `error` and each of its sources, joined with `: `, skipping a source whose
/// message is already included. Cedar often keeps the specifics (which
/// attribute, which key) in the source of a general error.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !out.contains(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner detail")]
    struct Inner;

    #[test]
    fn chain_appends_sources() {
        assert_eq!(chain(&Outer(Inner)), "outer: inner detail");
        assert_eq!(chain(&Inner), "inner detail");
    }

    #[test]
    fn locations_name_file_and_line() {
        let at = SourceLocation {
            file: "a.cedar".to_owned(),
            line: Some(4),
        };
        assert_eq!(at.to_string(), "`a.cedar` line 4");
        let at = SourceLocation { line: None, ..at };
        assert_eq!(at.to_string(), "`a.cedar`");
    }
}
