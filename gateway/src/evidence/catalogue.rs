//! What the gateway does for each ISO/IEC 27001:2022 Annex A control, in one place: the level
//! (enforces, partial, records; after `../shared/annex-a/access-evidence.md`), a sentence on how,
//! the part that stays the organisation's, and (derived, never listed twice) the event kinds
//! that are evidence for it ([`EventKind::controls`]) and the policies that name it in
//! `@controls`.
//!
//! The control ids and titles are `gatehouse_policies::annex_a`; this module adds the
//! gateway's side. The Statement of Applicability and the evidence report are rendered from
//! here.

use gatehouse_policies::{Control, CONTROLS};

use crate::audit::EventKind;

/// How much of a control the gateway carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The gateway is the technical control point for brokered resources: it blocks what
    /// breaks the rule and records evidence as a side effect.
    Enforces,
    /// The gateway carries part of the control; the rest is the IdP's, the host's or a
    /// process outside it.
    Partial,
    /// The gateway enforces nothing here; it supplies records that support the control.
    Records,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Enforces => "enforces",
            Level::Partial => "partial",
            Level::Records => "records",
        }
    }

    /// The SoA's wording: does the gateway implement, support, or record evidence for it.
    pub fn soa_role(self) -> &'static str {
        match self {
            Level::Enforces => "implements",
            Level::Partial => "supports",
            Level::Records => "records evidence",
        }
    }
}

/// The gateway's part in one control.
#[derive(Debug, Clone, Copy)]
pub struct Coverage {
    pub id: &'static str,
    pub level: Level,
    /// What the gateway does for it.
    pub does: &'static str,
    /// What stays the organisation's (the auditor will ask for it elsewhere).
    pub gap: &'static str,
}

/// The controls the gateway serves, in the standard's order.
pub const COVERAGE: &[Coverage] = &[
    Coverage {
        id: "5.3",
        level: Level::Enforces,
        does: "Nobody approves their own request (refused in code and by the no-self-approval policy); N-of-M approvals count each person once; only a person's sign-in approves; a break-glass grant opens a review that someone else must sign off.",
        gap: "Defining which duties conflict (the SoD matrix) beyond the access the gateway brokers.",
    },
    Coverage {
        id: "5.9",
        level: Level::Records,
        does: "The resource catalogue (name, kind, env and data-class labels, roles) is an inventory of the access-controlled assets behind the gateway.",
        gap: "The full asset inventory and its owners.",
    },
    Coverage {
        id: "5.14",
        level: Level::Partial,
        does: "File transfer over SSH (sftp, scp) is a policy decision per channel (the subsystem action; contractors' confidential hosts forbid it by default) and each file moved, removed or renamed is an ssh.file event with its path, size and SHA-256; port forwarding is denied unless a policy permits it.",
        gap: "Transfer agreements and the information-transfer policy; transfers by other means (mail, shared drives, the target's own network paths).",
    },
    Coverage {
        id: "5.15",
        level: Level::Partial,
        does: "Default-deny Cedar policies as code; every connection is an access.decision naming the policies that determined it; resources are reached only through the gateway's doors.",
        gap: "The topic-specific access-control policy document and its approval; systems the gateway does not front.",
    },
    Coverage {
        id: "5.16",
        level: Level::Partial,
        does: "Every session is tied to one named person (from the identity provider) or an issued service token; shared upstream accounts are mapped back to the individual; leavers are disabled at the gateway.",
        gap: "The identity provider and HR remain the source of truth for the identity lifecycle.",
    },
    Coverage {
        id: "5.17",
        level: Level::Partial,
        does: "Short-lived gateway credentials per door (credential.issued / credential.revoked); engineers never receive upstream secrets (brokered, SCRAM); signing keys rotate.",
        gap: "People's own primary credentials (password policy, MFA enrolment) at the identity provider.",
    },
    Coverage {
        id: "5.18",
        level: Level::Enforces,
        does: "Privileged access is provisioned by request and approval, time-boxed, revoked or expired by the gateway (live sessions cut); disabling a user cuts their sessions; break-glass grants are reviewed.",
        gap: "Periodic recertification of access granted outside the gateway.",
    },
    Coverage {
        id: "5.26",
        level: Level::Partial,
        does: "Kill switches during an incident (sessions kill, users disable, grant revocation, token revocation) and break-glass access with review; the chain reconstructs the timeline.",
        gap: "The incident response procedure, roles and communication.",
    },
    Coverage {
        id: "5.28",
        level: Level::Partial,
        does: "Hash-chained, commit-sealed audit log with signed checkpoints and an anchor outside the store; signed exports and evidence bundles that verify offline.",
        gap: "Forensic procedures and the assessment of legal admissibility.",
    },
    Coverage {
        id: "5.33",
        level: Level::Partial,
        does: "The log is append-only (triggers refuse updates and deletes; rows written around the gateway are named as foreign); verification proves no gap or modification.",
        gap: "The records retention schedule and storage outside the gateway.",
    },
    Coverage {
        id: "5.35",
        level: Level::Records,
        does: "Signed evidence bundles give an independent reviewer the period's log, registers and checks without live access.",
        gap: "The independent review itself.",
    },
    Coverage {
        id: "5.36",
        level: Level::Records,
        does: "The evidence report's derived checks: self-approvals, grants without approval, standing privileged access, access after disable, denials by policy.",
        gap: "The periodic compliance review by managers.",
    },
    Coverage {
        id: "6.5",
        level: Level::Records,
        does: "A leaver's disable at the gateway cuts live sessions and refuses every door at once; the leavers register shows last access against the disable time.",
        gap: "Post-employment duties (contracts, NDAs) and the HR process that triggers the disable.",
    },
    Coverage {
        id: "6.7",
        level: Level::Partial,
        does: "Remote access to internal resources goes through the gateway with single sign-on and MFA where policies require it; each decision records the client address.",
        gap: "The remote-working policy and endpoint management.",
    },
    Coverage {
        id: "8.2",
        level: Level::Enforces,
        does: "No standing privileged role: any role but read needs an active, approved, time-boxed grant (privileged-role-needs-grant); every grant's start, end and revocation is recorded.",
        gap: "Privileged access to systems the gateway does not front.",
    },
    Coverage {
        id: "8.3",
        level: Level::Enforces,
        does: "Each connection is decided on the person, groups, resource labels, role, MFA and grant, and recorded with the determining policies.",
        gap: "Restrictions inside the application's own data model.",
    },
    Coverage {
        id: "8.5",
        level: Level::Enforces,
        does: "Sign-in through the identity provider (amr/mfa recorded, restricted data needs MFA); short-lived credentials; failed attempts counted per source; no direct passwords to resources.",
        gap: "The MFA factor itself is verified by the identity provider.",
    },
    Coverage {
        id: "8.6",
        level: Level::Records,
        does: "The store's size is watched against its quota (store.capacity); over it, unauthenticated noise is only counted so access records keep their room.",
        gap: "Capacity planning for the rest of the infrastructure.",
    },
    Coverage {
        id: "8.9",
        level: Level::Records,
        does: "Every load of the gateway's policy set is a policy.changed event with the set's hash, the diff by policy id, who applied and who approved it, and the policy tests' result; a set that fails its checks or tests is refused and the old one kept.",
        gap: "Configuration management of everything else (hosts, networks, the gateway's own config file).",
    },
    Coverage {
        id: "8.15",
        level: Level::Enforces,
        does: "Every connection, decision, session and statement on brokered resources is logged in a tamper-evident chain that operators cannot edit; admin commands record who ran them.",
        gap: "Host and application logs of the resources themselves.",
    },
    Coverage {
        id: "8.16",
        level: Level::Partial,
        does: "Refusals before authentication and failed sign-ins are counted per source and class (connection.refused, auth.failed summaries); break-glass notifies; the store's capacity is watched.",
        gap: "Network-wide and host monitoring and the SOC's triage.",
    },
    Coverage {
        id: "8.17",
        level: Level::Records,
        does: "Every event carries the gateway's UTC time; gateway.start and gateway.stop bracket each run.",
        gap: "The host's time synchronisation (NTP) and its approved source.",
    },
    Coverage {
        id: "8.18",
        level: Level::Partial,
        does: "Every statement in a database session is recorded with its user; privileged roles need a grant.",
        gap: "Control of utility programs on the hosts themselves.",
    },
    Coverage {
        id: "8.20",
        level: Level::Partial,
        does: "Resources are reached only through the gateway; remote agents dial out over mutual TLS so resources accept no inbound connection; every session records its source address.",
        gap: "Firewall rules that keep resources from being reached around the gateway.",
    },
    Coverage {
        id: "8.21",
        level: Level::Partial,
        does: "Protocol-aware proxying with TLS to clients and verified TLS to upstreams where configured.",
        gap: "Security of network services the gateway does not carry.",
    },
    Coverage {
        id: "8.24",
        level: Level::Partial,
        does: "TLS on every listener; Ed25519 signing keys for credentials and the audit log, rotation recorded (keys.rotated); agent certificates from the gateway's CA.",
        gap: "The organisation's cryptography policy and key management elsewhere.",
    },
    Coverage {
        id: "8.31",
        level: Level::Partial,
        does: "Policies decide on the env label: production needs grants and more approvals, contractors never reach it.",
        gap: "Separation of the environments themselves (networks, accounts, data).",
    },
    Coverage {
        id: "8.32",
        level: Level::Partial,
        does: "Requests that cite a change ticket carry 8.32 from request to approval; the statements run during the grant are recorded.",
        gap: "The change process itself (CAB, testing, deployment).",
    },
    Coverage {
        id: "8.34",
        level: Level::Partial,
        does: "Auditors work from signed evidence bundles rather than live access to production.",
        gap: "Agreeing the audit scope and timing with management.",
    },
];

/// The gateway's part in control `id`, if it serves it.
pub fn coverage(id: &str) -> Option<&'static Coverage> {
    COVERAGE.iter().find(|c| c.id == id)
}

/// The event kinds that are evidence for control `id`, by name.
pub fn event_kinds(id: &str) -> Vec<&'static str> {
    EventKind::ALL
        .iter()
        .filter(|k| k.controls().contains(&id))
        .map(|k| k.as_str())
        .collect()
}

/// Every Annex A control with the gateway's part in it, in the standard's order.
pub fn controls() -> impl Iterator<Item = (&'static Control, Option<&'static Coverage>)> {
    CONTROLS.iter().map(|c| (c, coverage(c.id)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The catalogue the shared reference data ships (ids, titles, themes), copied verbatim.
    const CONTROLS_CSV: &str = include_str!("controls-2022.csv");

    #[test]
    fn the_catalogue_is_the_reference_data() {
        let mut lines = CONTROLS_CSV.lines();
        assert_eq!(lines.next(), Some("id,title,theme"));
        let rows: Vec<(String, String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (id, rest) = l.split_once(',').unwrap();
                let (title, theme) = rest.rsplit_once(',').unwrap();
                (id.into(), title.trim_matches('"').into(), theme.into())
            })
            .collect();
        assert_eq!(rows.len(), 93);
        for ((id, title, theme), c) in rows.iter().zip(CONTROLS.iter()) {
            assert_eq!((id.as_str(), title.as_str()), (c.id, c.title));
            assert_eq!(theme, &format!("{:?}", c.theme));
        }
    }

    #[test]
    fn every_covered_control_is_one_and_in_order() {
        let mut last = None;
        for c in COVERAGE {
            let pos = CONTROLS.iter().position(|x| x.id == c.id);
            assert!(pos.is_some(), "{} is no Annex A 2022 control", c.id);
            assert!(pos > last, "{} out of order", c.id);
            last = pos;
        }
    }

    #[test]
    fn every_control_an_event_names_is_covered() {
        for k in EventKind::ALL {
            for id in k.controls() {
                assert!(
                    coverage(id).is_some(),
                    "{} names {id}, which the catalogue does not cover",
                    k.as_str()
                );
            }
        }
    }

    #[test]
    fn the_primary_controls_have_their_levels() {
        assert_eq!(coverage("5.3").unwrap().level, Level::Enforces);
        assert_eq!(coverage("8.2").unwrap().level, Level::Enforces);
        assert_eq!(coverage("5.15").unwrap().level, Level::Partial);
        assert_eq!(coverage("6.5").unwrap().level, Level::Records);
        assert!(
            coverage("7.1").is_none(),
            "physical controls are never claimed"
        );
        assert!(event_kinds("5.3").contains(&"request.approved"));
    }
}
