//! The auditor's evidence: the Annex A catalogue as the gateway serves it, the Statement of
//! Applicability draft, and evidence bundles for a period (the export, its checkpoints, the
//! registers, the derived checks and an HTML report, under a signed `SHA256SUMS`) that verify
//! offline with only the audit public key.
//!
//! - `catalogue`: per Annex A control, the gateway's level, what it does, what is left to the
//!   organisation; the event kinds and policies that serve it are derived, never listed twice.
//! - `soa`: the 93-row SoA CSV.
//! - `analysis`: one streaming pass over the exported events: registers, derived checks,
//!   exceptions, counts, samples.
//! - `registers`: the registers of the state at build time (access rights, policies, reviews).
//! - `report`: the self-contained HTML report.
//! - `bundle`: building a bundle and verifying one.
//! - `csv`: the CSV writer they share.

pub mod analysis;
pub mod bundle;
pub mod catalogue;
pub mod csv;
pub mod registers;
pub mod report;
pub mod soa;
pub mod tar;
