//! Authorisation glue: reads the policy directory (`schema.cedarschema`, `*.cedar`,
//! `tests/*.toml`) and builds the Cedar request for a connection. The policy model itself is
//! `gatehouse_policies`, which does no I/O.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use gatehouse_policies::{
    AccessRequest, Action, PolicyEngine, RequestContext, ResourceAttrs, TestCase,
};

use crate::config::Resource;

// The message holds the cause; no `source()` as well, or `{:#}` prints it twice.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("policy directory `{0}` does not exist or is not a directory")]
    NoDirectory(PathBuf),
    #[error("cannot read `{path}`: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("policy directory `{0}` has no .cedar files")]
    NoPolicies(PathBuf),
    #[error(transparent)]
    Policy(#[from] gatehouse_policies::PolicyError),
}

/// Loads and validates every policy in `dir` against `dir/schema.cedarschema`.
pub fn load_policies(dir: &Path) -> Result<PolicyEngine, AuthzError> {
    if !dir.is_dir() {
        return Err(AuthzError::NoDirectory(dir.to_path_buf()));
    }
    let schema_path = dir.join("schema.cedarschema");
    let schema = read(&schema_path)?;
    let files = read_dir_with_ext(dir, "cedar")?;
    if files.is_empty() {
        return Err(AuthzError::NoPolicies(dir.to_path_buf()));
    }
    Ok(PolicyEngine::load(&schema, &files)?)
}

/// Loads the policy test cases in `dir/tests/*.toml`.
pub fn load_cases(dir: &Path) -> Result<Vec<TestCase>, AuthzError> {
    let mut cases = Vec::new();
    for (name, text) in read_dir_with_ext(&dir.join("tests"), "toml")? {
        cases.extend(gatehouse_policies::parse_cases(&name, &text)?);
    }
    Ok(cases)
}

fn read(path: &Path) -> Result<String, AuthzError> {
    std::fs::read_to_string(path).map_err(|error| AuthzError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn read_dir_with_ext(dir: &Path, ext: &str) -> Result<Vec<(String, String)>, AuthzError> {
    let entries = std::fs::read_dir(dir).map_err(|error| AuthzError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some(ext))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Ok((name, read(&p)?))
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
/// The Cedar request for `user` in `groups` connecting to `resource` from `source_ip`.
pub fn connect_request(
    user: &str,
    groups: &[String],
    resource: &Resource,
    source_ip: IpAddr,
    auth_method: &str,
    mfa: bool,
    role: &str,
    has_grant: bool,
) -> AccessRequest {
    let hour = time::OffsetDateTime::now_utc().hour();
    AccessRequest {
        user: user.to_string(),
        groups: groups.to_vec(),
        action: Action::Connect,
        resource: ResourceAttrs {
            name: resource.name.clone(),
            protocol: resource.kind().as_str().to_string(),
            env: resource.env.clone(),
            data_class: resource.data_class.clone(),
            tags: resource.tags.clone(),
        },
        context: RequestContext {
            mfa,
            role: role.to_string(),
            has_grant,
            duration_secs: 0,
            requester: String::new(),
            source_ip,
            auth_method: auth_method.to_string(),
            hour_utc: hour,
        },
    }
}
