//! ISO/IEC 27001:2022 Annex A reference data: the 93 control ids with their
//! short titles and themes.
//!
//! Policies name the controls they implement in `@controls`; the engine accepts
//! only ids from this table, so a typo or a 2013-edition id (such as `9.2.3`)
//! is caught when the policies are loaded rather than in an audit.
//! Only ids and titles are shipped; the standard's control text is copyrighted.

/// The four themes that group the Annex A 2022 controls (clauses 5 to 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Theme {
    /// Clause 5, organisational controls.
    Organizational,
    /// Clause 6, people controls.
    People,
    /// Clause 7, physical controls.
    Physical,
    /// Clause 8, technological controls.
    Technological,
}

/// One Annex A 2022 control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    /// The control id, e.g. `5.15`.
    pub id: &'static str,
    /// The short title in Annex A wording, e.g. `Access control`.
    pub title: &'static str,
    /// The theme (clause) the control belongs to.
    pub theme: Theme,
}

/// Every Annex A 2022 control, in the standard's order.
pub const CONTROLS: [Control; 93] = [
    Control { id: "5.1", title: "Policies for information security", theme: Theme::Organizational },
    Control { id: "5.2", title: "Information security roles and responsibilities", theme: Theme::Organizational },
    Control { id: "5.3", title: "Segregation of duties", theme: Theme::Organizational },
    Control { id: "5.4", title: "Management responsibilities", theme: Theme::Organizational },
    Control { id: "5.5", title: "Contact with authorities", theme: Theme::Organizational },
    Control { id: "5.6", title: "Contact with special interest groups", theme: Theme::Organizational },
    Control { id: "5.7", title: "Threat intelligence", theme: Theme::Organizational },
    Control { id: "5.8", title: "Information security in project management", theme: Theme::Organizational },
    Control { id: "5.9", title: "Inventory of information and other associated assets", theme: Theme::Organizational },
    Control { id: "5.10", title: "Acceptable use of information and other associated assets", theme: Theme::Organizational },
    Control { id: "5.11", title: "Return of assets", theme: Theme::Organizational },
    Control { id: "5.12", title: "Classification of information", theme: Theme::Organizational },
    Control { id: "5.13", title: "Labelling of information", theme: Theme::Organizational },
    Control { id: "5.14", title: "Information transfer", theme: Theme::Organizational },
    Control { id: "5.15", title: "Access control", theme: Theme::Organizational },
    Control { id: "5.16", title: "Identity management", theme: Theme::Organizational },
    Control { id: "5.17", title: "Authentication information", theme: Theme::Organizational },
    Control { id: "5.18", title: "Access rights", theme: Theme::Organizational },
    Control { id: "5.19", title: "Information security in supplier relationships", theme: Theme::Organizational },
    Control { id: "5.20", title: "Addressing information security within supplier agreements", theme: Theme::Organizational },
    Control { id: "5.21", title: "Managing information security in the information and communication technology (ICT) supply chain", theme: Theme::Organizational },
    Control { id: "5.22", title: "Monitoring, review and change management of supplier services", theme: Theme::Organizational },
    Control { id: "5.23", title: "Information security for use of cloud services", theme: Theme::Organizational },
    Control { id: "5.24", title: "Information security incident management planning and preparation", theme: Theme::Organizational },
    Control { id: "5.25", title: "Assessment and decision on information security events", theme: Theme::Organizational },
    Control { id: "5.26", title: "Response to information security incidents", theme: Theme::Organizational },
    Control { id: "5.27", title: "Learning from information security incidents", theme: Theme::Organizational },
    Control { id: "5.28", title: "Collection of evidence", theme: Theme::Organizational },
    Control { id: "5.29", title: "Information security during disruption", theme: Theme::Organizational },
    Control { id: "5.30", title: "ICT readiness for business continuity", theme: Theme::Organizational },
    Control { id: "5.31", title: "Legal, statutory, regulatory and contractual requirements", theme: Theme::Organizational },
    Control { id: "5.32", title: "Intellectual property rights", theme: Theme::Organizational },
    Control { id: "5.33", title: "Protection of records", theme: Theme::Organizational },
    Control { id: "5.34", title: "Privacy and protection of personal identifiable information (PII)", theme: Theme::Organizational },
    Control { id: "5.35", title: "Independent review of information security", theme: Theme::Organizational },
    Control { id: "5.36", title: "Compliance with policies, rules and standards for information security", theme: Theme::Organizational },
    Control { id: "5.37", title: "Documented operating procedures", theme: Theme::Organizational },
    Control { id: "6.1", title: "Screening", theme: Theme::People },
    Control { id: "6.2", title: "Terms and conditions of employment", theme: Theme::People },
    Control { id: "6.3", title: "Information security awareness, education and training", theme: Theme::People },
    Control { id: "6.4", title: "Disciplinary process", theme: Theme::People },
    Control { id: "6.5", title: "Responsibilities after termination or change of employment", theme: Theme::People },
    Control { id: "6.6", title: "Confidentiality or non-disclosure agreements", theme: Theme::People },
    Control { id: "6.7", title: "Remote working", theme: Theme::People },
    Control { id: "6.8", title: "Information security event reporting", theme: Theme::People },
    Control { id: "7.1", title: "Physical security perimeters", theme: Theme::Physical },
    Control { id: "7.2", title: "Physical entry", theme: Theme::Physical },
    Control { id: "7.3", title: "Securing offices, rooms and facilities", theme: Theme::Physical },
    Control { id: "7.4", title: "Physical security monitoring", theme: Theme::Physical },
    Control { id: "7.5", title: "Protecting against physical and environmental threats", theme: Theme::Physical },
    Control { id: "7.6", title: "Working in secure areas", theme: Theme::Physical },
    Control { id: "7.7", title: "Clear desk and clear screen", theme: Theme::Physical },
    Control { id: "7.8", title: "Equipment siting and protection", theme: Theme::Physical },
    Control { id: "7.9", title: "Security of assets off-premises", theme: Theme::Physical },
    Control { id: "7.10", title: "Storage media", theme: Theme::Physical },
    Control { id: "7.11", title: "Supporting utilities", theme: Theme::Physical },
    Control { id: "7.12", title: "Cabling security", theme: Theme::Physical },
    Control { id: "7.13", title: "Equipment maintenance", theme: Theme::Physical },
    Control { id: "7.14", title: "Secure disposal or re-use of equipment", theme: Theme::Physical },
    Control { id: "8.1", title: "User end point devices", theme: Theme::Technological },
    Control { id: "8.2", title: "Privileged access rights", theme: Theme::Technological },
    Control { id: "8.3", title: "Information access restriction", theme: Theme::Technological },
    Control { id: "8.4", title: "Access to source code", theme: Theme::Technological },
    Control { id: "8.5", title: "Secure authentication", theme: Theme::Technological },
    Control { id: "8.6", title: "Capacity management", theme: Theme::Technological },
    Control { id: "8.7", title: "Protection against malware", theme: Theme::Technological },
    Control { id: "8.8", title: "Management of technical vulnerabilities", theme: Theme::Technological },
    Control { id: "8.9", title: "Configuration management", theme: Theme::Technological },
    Control { id: "8.10", title: "Information deletion", theme: Theme::Technological },
    Control { id: "8.11", title: "Data masking", theme: Theme::Technological },
    Control { id: "8.12", title: "Data leakage prevention", theme: Theme::Technological },
    Control { id: "8.13", title: "Information backup", theme: Theme::Technological },
    Control { id: "8.14", title: "Redundancy of information processing facilities", theme: Theme::Technological },
    Control { id: "8.15", title: "Logging", theme: Theme::Technological },
    Control { id: "8.16", title: "Monitoring activities", theme: Theme::Technological },
    Control { id: "8.17", title: "Clock synchronization", theme: Theme::Technological },
    Control { id: "8.18", title: "Use of privileged utility programs", theme: Theme::Technological },
    Control { id: "8.19", title: "Installation of software on operational systems", theme: Theme::Technological },
    Control { id: "8.20", title: "Networks security", theme: Theme::Technological },
    Control { id: "8.21", title: "Security of network services", theme: Theme::Technological },
    Control { id: "8.22", title: "Segregation of networks", theme: Theme::Technological },
    Control { id: "8.23", title: "Web filtering", theme: Theme::Technological },
    Control { id: "8.24", title: "Use of cryptography", theme: Theme::Technological },
    Control { id: "8.25", title: "Secure development life cycle", theme: Theme::Technological },
    Control { id: "8.26", title: "Application security requirements", theme: Theme::Technological },
    Control { id: "8.27", title: "Secure system architecture and engineering principles", theme: Theme::Technological },
    Control { id: "8.28", title: "Secure coding", theme: Theme::Technological },
    Control { id: "8.29", title: "Security testing in development and acceptance", theme: Theme::Technological },
    Control { id: "8.30", title: "Outsourced development", theme: Theme::Technological },
    Control { id: "8.31", title: "Separation of development, test and production environments", theme: Theme::Technological },
    Control { id: "8.32", title: "Change management", theme: Theme::Technological },
    Control { id: "8.33", title: "Test information", theme: Theme::Technological },
    Control { id: "8.34", title: "Protection of information systems during audit testing", theme: Theme::Technological },
];

/// The short title of Annex A 2022 control `id`, or `None` if `id` is not one.
pub fn control_title(id: &str) -> Option<&'static str> {
    control(id).map(|c| c.title)
}

/// Whether `id` is an Annex A 2022 control id (`5.1` to `8.34`).
pub fn is_control(id: &str) -> bool {
    control(id).is_some()
}

/// The control with id `id`, or `None` if `id` is not an Annex A 2022 id.
pub fn control(id: &str) -> Option<&'static Control> {
    CONTROLS.iter().find(|c| c.id == id)
}

/// Position of `id` in [`CONTROLS`]: the standard's order, in which `5.2`
/// comes before `5.15`. Used to sort control lists for people to read.
pub(crate) fn position(id: &str) -> Option<usize> {
    CONTROLS.iter().position(|c| c.id == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_holds_every_2022_control_once() {
        let expected: Vec<String> = [(5, 37), (6, 8), (7, 14), (8, 34)]
            .iter()
            .flat_map(|&(clause, last)| (1..=last).map(move |n| format!("{clause}.{n}")))
            .collect();
        let ids: Vec<&str> = CONTROLS.iter().map(|c| c.id).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn themes_follow_clauses() {
        for c in CONTROLS {
            let theme = match c.id.split('.').next() {
                Some("5") => Theme::Organizational,
                Some("6") => Theme::People,
                Some("7") => Theme::Physical,
                _ => Theme::Technological,
            };
            assert_eq!(c.theme, theme, "control {}", c.id);
        }
    }

    #[test]
    fn titles_are_looked_up_by_id() {
        assert_eq!(control_title("5.15"), Some("Access control"));
        assert_eq!(
            control_title("8.31"),
            Some("Separation of development, test and production environments")
        );
        assert_eq!(control_title("8.34").map(str::is_empty), Some(false));
    }

    #[test]
    fn non_controls_are_rejected() {
        for id in [
            "9.99", "5.0", "5.38", "8.35", "A.5.15", "9.2.3", "", " 5.15", "5.15 ",
        ] {
            assert!(!is_control(id), "{id:?} must not be a control");
        }
        assert!(is_control("5.1"));
        assert!(is_control("8.34"));
    }

    #[test]
    fn position_orders_numerically() {
        assert!(position("5.2") < position("5.15"));
        assert!(position("5.37") < position("6.1"));
        assert_eq!(position("9.99"), None);
    }
}
