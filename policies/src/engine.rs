//! The policy engine: a checked Cedar policy set with its schema, and the
//! translation of an [`AccessRequest`] into Cedar entities and a Cedar request.
//!
//! The Cedar model:
//! - principal `Gatehouse::User::"<user>"` (attribute `name`), a member of
//!   `Gatehouse::Group::"<g>"` for each of the user's groups;
//! - action `Gatehouse::Action::"<action>"`;
//! - resource `Gatehouse::Resource::"<name>"` with attributes `name`,
//!   `protocol`, `env`, `data_class` and the other labels as tags;
//! - context `{ mfa, source_ip, auth_method, hour_utc, role, has_grant,
//!   duration_secs, requester, command, forward_host, forward_port }`, the same record
//!   for every action.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use cedar_policy::{
    entities_errors::EntitiesError, Authorizer, Context, ContextCreationError, Entities, Entity,
    EntityAttrEvaluationError, EntityId, EntityTypeName, EntityUid, PolicySet, Request,
    RequestValidationError, RestrictedExpression, Schema,
};

use crate::decision::Decision;
use crate::error::{chain, PolicyError};
use crate::load;
use crate::request::{AccessRequest, Action, RequestContext, ResourceAttrs};

/// Whether a policy permits or forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// A `permit` policy.
    Permit,
    /// A `forbid` policy; it overrides every permit.
    Forbid,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Effect::Permit => "permit",
            Effect::Forbid => "forbid",
        })
    }
}

impl From<cedar_policy::Effect> for Effect {
    fn from(effect: cedar_policy::Effect) -> Self {
        match effect {
            cedar_policy::Effect::Permit => Effect::Permit,
            cedar_policy::Effect::Forbid => Effect::Forbid,
        }
    }
}

/// A loaded policy, as `gatehouse policy check` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyInfo {
    /// The `@id`.
    pub id: String,
    /// Permit or forbid.
    pub effect: Effect,
    /// The `@controls`, de-duplicated and in the standard's order.
    pub controls: Vec<String>,
    /// The file name the policy was loaded from.
    pub file: String,
    /// The 1-based line where the policy starts, if it was found.
    pub line: Option<usize>,
    /// The `@approvals`: how many approvals a request this policy permits
    /// needs. Only permits carry it.
    pub approvals: Option<u32>,
    /// The `@max_duration`, in seconds: the longest grant this policy
    /// permits. Only permits carry it.
    pub max_duration_secs: Option<u64>,
}

/// The checked policies and schema, ready to answer requests.
///
/// `Send + Sync`; load once and share it in an `Arc`. Reloading means loading
/// a new engine and swapping it in.
pub struct PolicyEngine {
    schema: Schema,
    policy_set: PolicySet,
    authorizer: Authorizer,
    policies: Vec<PolicyInfo>,
    /// `@id` to its index in `policies`.
    by_id: HashMap<String, usize>,
    types: EntityTypes,
}

impl PolicyEngine {
    /// Load the schema (`.cedarschema` text) and the policy files (`(file
    /// name, text)` for each `.cedar` file).
    ///
    /// Fails on a schema that does not parse or does not fit Gatehouse
    /// requests, a policy that does not parse, a template, a policy without
    /// `@id` or with an `@id` used before, a policy without `@controls` or
    /// naming an id that is not an Annex A 2022 control, an `@approvals` that
    /// is not a whole number from 1 to 10, a `@max_duration` that is not a
    /// duration such as `30m`, `8h` or `1d` of at most 30 days, either of
    /// those two on a forbid, and on any strict validation error against the
    /// schema. Schema warnings are ignored.
    pub fn load(
        schema_src: &str,
        policy_files: &[(String, String)],
    ) -> Result<PolicyEngine, PolicyError> {
        let schema = load::parse_schema(schema_src)?;
        let types = EntityTypes::new()?;
        check_schema_fits(&schema, &types)?;
        let (policy_set, policies) = load::load_policies(&schema, policy_files)?;
        let by_id = policies
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
        Ok(PolicyEngine {
            schema,
            policy_set,
            authorizer: Authorizer::new(),
            policies,
            by_id,
            types,
        })
    }

    /// Decide `request`. Never fails: a request that cannot be put to Cedar
    /// (for example an `hour_utc` above 23) is denied, with the cause in
    /// `reason` and `errors`. An allow carries the approvals and the longest
    /// duration its permits ask for (see [`Decision`]).
    pub fn authorize(&self, request: &AccessRequest) -> Decision {
        let (cedar_request, entities) = match build(&self.schema, &self.types, request) {
            Ok(built) => built,
            Err(e) => return Decision::unevaluated(chain(&e)),
        };
        let response = self
            .authorizer
            .is_authorized(&cedar_request, &self.policy_set, &entities);
        let diagnostics = response.diagnostics();
        Decision::evaluated(
            self,
            request,
            response.decision() == cedar_policy::Decision::Allow,
            diagnostics
                .reason()
                .map(|id| AsRef::<str>::as_ref(id).to_owned())
                .collect(),
            diagnostics.errors().map(|e| chain(e)).collect(),
        )
    }

    /// Every loaded policy, in file order and then source order.
    pub fn policies(&self) -> Vec<PolicyInfo> {
        self.policies.clone()
    }

    /// The Cedar text of the policy with this `@id` (its source as loaded), for telling what a
    /// reload changed.
    pub fn policy_text(&self, id: &str) -> Option<String> {
        self.policy_set
            .policy(&cedar_policy::PolicyId::new(id))
            .map(|p| p.to_string())
    }

    /// Whether a policy with this `@id` is loaded.
    pub fn has_policy(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The loaded policy with this `@id`.
    pub(crate) fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.by_id.get(id).and_then(|&i| self.policies.get(i))
    }
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field(
                "policies",
                &self.policies.iter().map(|p| &p.id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// === impl EntityTypes ===

/// The Cedar entity type names of the Gatehouse model, parsed once.
struct EntityTypes {
    user: EntityTypeName,
    group: EntityTypeName,
    resource: EntityTypeName,
    action: EntityTypeName,
}

impl EntityTypes {
    fn new() -> Result<EntityTypes, PolicyError> {
        let parse = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| PolicyError::SchemaMismatch {
                message: format!("`{name}` is not an entity type name: {e}"),
            })
        };
        Ok(EntityTypes {
            user: parse("Gatehouse::User")?,
            group: parse("Gatehouse::Group")?,
            resource: parse("Gatehouse::Resource")?,
            action: parse("Gatehouse::Action")?,
        })
    }
}

fn uid(type_name: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name.clone(), EntityId::new(id))
}

/// Why a request could not be put to Cedar. Cedar's errors are boxed: they
/// are large, and this is the rare path.
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error("`hour_utc` is `{hour}`, not an hour from 0 to 23")]
    HourOutOfRange { hour: u8 },
    #[error("`duration_secs` is `{secs}`, more than a Cedar Long holds")]
    DurationOutOfRange { secs: u64 },
    #[error(transparent)]
    Entity(#[from] Box<EntityAttrEvaluationError>),
    #[error(transparent)]
    Entities(#[from] Box<EntitiesError>),
    #[error(transparent)]
    Context(#[from] Box<ContextCreationError>),
    #[error(transparent)]
    Request(#[from] Box<RequestValidationError>),
}

/// The Cedar request and entities for `request`, both checked against `schema`.
fn build(
    schema: &Schema,
    types: &EntityTypes,
    request: &AccessRequest,
) -> Result<(Request, Entities), BuildError> {
    let context = &request.context;
    if context.hour_utc > 23 {
        return Err(BuildError::HourOutOfRange {
            hour: context.hour_utc,
        });
    }
    let duration_secs =
        i64::try_from(context.duration_secs).map_err(|_| BuildError::DurationOutOfRange {
            secs: context.duration_secs,
        })?;
    let groups: BTreeSet<&str> = request.groups.iter().map(String::as_str).collect();
    let group_uids: Vec<EntityUid> = groups.iter().map(|g| uid(&types.group, g)).collect();

    let user_uid = uid(&types.user, &request.user);
    let user = Entity::new(
        user_uid.clone(),
        HashMap::from([(
            "name".to_owned(),
            RestrictedExpression::new_string(request.user.clone()),
        )]),
        group_uids.iter().cloned().collect::<HashSet<_>>(),
    )
    .map_err(Box::new)?;

    let attrs = &request.resource;
    let resource_uid = uid(&types.resource, &attrs.name);
    let resource = Entity::new_with_tags(
        resource_uid.clone(),
        [
            ("name", &attrs.name),
            ("protocol", &attrs.protocol),
            ("env", &attrs.env),
            ("data_class", &attrs.data_class),
        ]
        .map(|(k, v)| (k.to_owned(), RestrictedExpression::new_string(v.clone()))),
        [],
        attrs
            .tags
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
    )
    .map_err(Box::new)?;

    let entities = Entities::from_entities(
        group_uids
            .into_iter()
            .map(|g| Entity::new_no_attrs(g, HashSet::new()))
            .chain([user, resource]),
        Some(schema),
    )
    .map_err(Box::new)?;

    let cedar_context = Context::from_pairs([
        (
            "mfa".to_owned(),
            RestrictedExpression::new_bool(context.mfa),
        ),
        (
            "source_ip".to_owned(),
            RestrictedExpression::new_ip(cedar_ip(context.source_ip)),
        ),
        (
            "auth_method".to_owned(),
            RestrictedExpression::new_string(context.auth_method.clone()),
        ),
        (
            "hour_utc".to_owned(),
            RestrictedExpression::new_long(i64::from(context.hour_utc)),
        ),
        (
            "role".to_owned(),
            RestrictedExpression::new_string(context.role.clone()),
        ),
        (
            "has_grant".to_owned(),
            RestrictedExpression::new_bool(context.has_grant),
        ),
        (
            "duration_secs".to_owned(),
            RestrictedExpression::new_long(duration_secs),
        ),
        (
            "requester".to_owned(),
            RestrictedExpression::new_string(context.requester.clone()),
        ),
        (
            "command".to_owned(),
            RestrictedExpression::new_string(context.command.clone()),
        ),
        (
            "forward_host".to_owned(),
            RestrictedExpression::new_string(context.forward_host.clone()),
        ),
        (
            "forward_port".to_owned(),
            RestrictedExpression::new_long(i64::from(context.forward_port)),
        ),
    ])
    .map_err(Box::new)?;

    let cedar_request = Request::new(
        user_uid,
        uid(&types.action, request.action.as_str()),
        resource_uid,
        cedar_context,
        Some(schema),
    )
    .map_err(Box::new)?;
    Ok((cedar_request, entities))
}

/// `ip` in a form Cedar's `ip()` accepts and policies expect.
///
/// An IPv4 client of a dual-stack listener shows up as `::ffff:a.b.c.d`; it is
/// given as the IPv4 address, so `isInRange(ip("10.0.0.0/8"))` matches it.
/// Cedar rejects dotted IPv4 inside IPv6 text, so IPv6 addresses are written
/// as eight hex groups, never in a dotted form.
fn cedar_ip(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => v6.segments().map(|s| format!("{s:x}")).join(":"),
    }
}

/// Build a sample request of every action against `schema`, so that a schema
/// that does not declare what [`build`] produces is rejected at load time
/// instead of denying every request.
fn check_schema_fits(schema: &Schema, types: &EntityTypes) -> Result<(), PolicyError> {
    for action in Action::ALL {
        let sample = AccessRequest {
            user: "schema-check".to_owned(),
            groups: vec!["schema-check".to_owned()],
            action,
            resource: ResourceAttrs {
                name: "schema-check".to_owned(),
                protocol: "tcp".to_owned(),
                env: "dev".to_owned(),
                data_class: "internal".to_owned(),
                tags: BTreeMap::from([("owner".to_owned(), "schema-check".to_owned())]),
            },
            context: RequestContext {
                role: "write".to_owned(),
                has_grant: true,
                duration_secs: 3600,
                requester: "schema-requester".to_owned(),
                command: "schema-command".to_owned(),
                forward_host: "schema-host".to_owned(),
                forward_port: 22,
                ..RequestContext::new(IpAddr::V4(Ipv4Addr::LOCALHOST), "token", false, 12)
            },
        };
        build(schema, types, &sample).map_err(|e| PolicyError::SchemaMismatch {
            message: format!("action `{action}`: {}", chain(&e)),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
