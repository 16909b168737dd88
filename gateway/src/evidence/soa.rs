//! The Statement of Applicability draft: all 93 Annex A 2022 controls, for each whether the
//! gateway implements, supports or records evidence for it, the policies (by `@id`) and event
//! kinds that serve it, and empty columns for the organisation's decision and justification.

use std::path::Path;

use gatehouse_policies::PolicyInfo;

use super::catalogue;
use super::csv::CsvFile;

pub const HEADER: &[&str] = &[
    "control_id",
    "title",
    "theme",
    "gateway_role",
    "gateway_level",
    "what_the_gateway_does",
    "left_to_the_organisation",
    "policies",
    "event_kinds",
    "applicable",
    "justification",
];

/// Writes the SoA to `path`; returns the number of controls (93).
pub fn write(path: &Path, policies: &[PolicyInfo]) -> std::io::Result<u64> {
    let mut f = CsvFile::create(path, HEADER)?;
    for (c, cov) in catalogue::controls() {
        let serving: Vec<&str> = policies
            .iter()
            .filter(|p| p.controls.iter().any(|x| x == c.id))
            .map(|p| p.id.as_str())
            .collect();
        let kinds = catalogue::event_kinds(c.id);
        f.row(&[
            c.id.to_string(),
            c.title.to_string(),
            format!("{:?}", c.theme),
            cov.map(|v| v.level.soa_role())
                .unwrap_or("not served by the gateway")
                .to_string(),
            cov.map(|v| v.level.as_str()).unwrap_or("").to_string(),
            cov.map(|v| v.does).unwrap_or("").to_string(),
            cov.map(|v| v.gap).unwrap_or("").to_string(),
            serving.join(" "),
            kinds.join(" "),
            String::new(),
            String::new(),
        ])?;
    }
    f.finish()
}
