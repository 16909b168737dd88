//! The Cedar policy model of Gatehouse: the schema, policy loading with the
//! `@id`, `@controls`, `@approvals` and `@max_duration` annotations, access
//! decisions, and policy test cases.
//!
//! [`PolicyEngine::load`] takes the schema and the policy files as text,
//! checks every policy (parse, `@id`, `@controls` against Annex A,
//! `@approvals` and `@max_duration` values, strict validation against the
//! schema) and pre-builds what evaluation needs. [`PolicyEngine::authorize`]
//! then turns an [`AccessRequest`] into a [`Decision`] that names the
//! determining policies and their Annex A controls, ready for the audit log.
//!
//! Just-in-time access uses the actions `request`, `approve` and
//! `break_glass` beside `connect`. Policies decide who may request, approve or
//! break glass; an allowed `request` also carries the approvals it needs (the
//! largest `@approvals` of its permits) and the longest grant (the smallest
//! `@max_duration`). Who has approved, self-approval and grant expiry are the
//! gateway's to track; it tells policies through the context (`has_grant`,
//! `requester`, `duration_secs`).
//!
//! [`parse_cases`] and [`run_cases`] back `gatehouse policy test`.
//!
//! Architecture invariant: this crate performs no I/O and depends on no other
//! workspace crate. Callers read the files and pass their contents in.
//!
//! The default schema, policies and test cases ship beside this crate as
//! [`DEFAULT_SCHEMA`], [`DEFAULT_POLICIES`] and [`DEFAULT_CASES`].

mod annex_a;
mod cases;
mod decision;
mod duration;
mod engine;
mod error;
mod load;
mod request;
mod source;

pub use annex_a::{control, control_title, is_control, Control, Theme, CONTROLS};
pub use cases::{parse_cases, run_cases, CaseOutcome, Expected, TestCase};
pub use decision::Decision;
pub use engine::{Effect, PolicyEngine, PolicyInfo};
pub use error::{PolicyError, SourceLocation, ValidationIssue};
pub use request::{AccessRequest, Action, ParseActionError, RequestContext, ResourceAttrs};

/// The default Cedar schema (`policies/schema.cedarschema`).
pub const DEFAULT_SCHEMA: &str = include_str!("../schema.cedarschema");

/// The default policies (`policies/gatehouse.cedar`), as `(file name, text)`.
pub const DEFAULT_POLICIES: (&str, &str) = ("gatehouse.cedar", include_str!("../gatehouse.cedar"));

/// The test cases of the default policies (`policies/tests/default.toml`), as
/// `(file name, text)`.
pub const DEFAULT_CASES: (&str, &str) = ("default.toml", include_str!("../tests/default.toml"));

/// The Annex A control every access decision maps to, whatever determined it:
/// 5.15, access control.
pub const ACCESS_CONTROL: &str = "5.15";
