//! Authorisation glue: reads the policy directory (`schema.cedarschema`, `*.cedar`,
//! `tests/*.toml`), holds the policy set the gateway decides with (`Policies`, swapped whole on
//! a reload that passed its checks and tests) and builds the Cedar request for a connection.
//! The policy model itself is `gatehouse_policies`, which does no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use gatehouse_policies::{
    AccessRequest, Action, Decision, PolicyEngine, PolicyInfo, RequestContext, ResourceAttrs,
    TestCase,
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
    #[error("{failed} of {total} policy tests fail: {first}")]
    Tests {
        failed: usize,
        total: usize,
        first: String,
    },
}

/// A loaded, tested policy set and what identifies it.
pub struct Loaded {
    pub engine: PolicyEngine,
    /// [`policy_set_sha256`] of the directory it was loaded from.
    pub sha256: String,
    /// The policy tests that passed (all of them, or the set would not be loaded).
    pub tests: usize,
}

/// What a reload changed, by policy `@id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl PolicyDiff {
    pub fn between(old: &PolicyEngine, new: &PolicyEngine) -> PolicyDiff {
        let ids = |e: &PolicyEngine| -> BTreeMap<String, (PolicyInfo, Option<String>)> {
            e.policies()
                .into_iter()
                .map(|p| {
                    let text = e.policy_text(&p.id);
                    (p.id.clone(), (p, text))
                })
                .collect()
        };
        let (a, b) = (ids(old), ids(new));
        let mut d = PolicyDiff::default();
        for (id, (pa, ta)) in &a {
            match b.get(id) {
                None => d.removed.push(id.clone()),
                Some((pb, tb)) => {
                    let same = ta == tb
                        && pa.effect == pb.effect
                        && pa.controls == pb.controls
                        && pa.approvals == pb.approvals
                        && pa.max_duration_secs == pb.max_duration_secs;
                    if !same {
                        d.changed.push(id.clone());
                    }
                }
            }
        }
        d.added = b
            .keys()
            .filter(|id| !a.contains_key(*id))
            .cloned()
            .collect();
        d
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// The policy set the gateway decides with. Cloning shares it; a reload swaps the whole set at
/// once, so a decision sees either the old set or the new one, never a mix. Live sessions keep
/// running: a decision is taken when a session opens.
#[derive(Clone)]
pub struct Policies {
    inner: Arc<RwLock<Arc<Loaded>>>,
}

impl Policies {
    pub fn new(loaded: Loaded) -> Policies {
        Policies {
            inner: Arc::new(RwLock::new(Arc::new(loaded))),
        }
    }

    /// A set for tests and tools that have an engine and no directory.
    pub fn from_engine(engine: PolicyEngine) -> Policies {
        Policies::new(Loaded {
            engine,
            sha256: String::new(),
            tests: 0,
        })
    }

    pub fn current(&self) -> Arc<Loaded> {
        match self.inner.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn authorize(&self, request: &AccessRequest) -> Decision {
        self.current().engine.authorize(request)
    }

    pub fn policies(&self) -> Vec<PolicyInfo> {
        self.current().engine.policies()
    }

    /// Loads and tests the set in `dir`; if it passes, swaps it in and returns the old set's
    /// hash and the diff. On any failure the set in use stays.
    pub fn reload(&self, dir: &Path) -> Result<(String, PolicyDiff, Arc<Loaded>), AuthzError> {
        let new = Arc::new(load_tested(dir)?);
        let mut guard = match self.inner.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let old = guard.clone();
        let diff = PolicyDiff::between(&old.engine, &new.engine);
        *guard = new.clone();
        Ok((old.sha256.clone(), diff, new))
    }
}

/// The policy tests of a set: how many ran, and the failures (`name: detail`).
#[derive(Debug, Clone, Default)]
pub struct TestsRun {
    pub total: usize,
    pub failed: Vec<String>,
}

/// Loads the policies in `dir` and runs their tests (`dir/tests/*.toml`; none is zero tests).
pub fn load_with_tests(dir: &Path) -> Result<(Loaded, TestsRun), AuthzError> {
    let engine = load_policies(dir)?;
    let cases = if dir.join("tests").is_dir() {
        load_cases(dir)?
    } else {
        Vec::new()
    };
    let outcomes = gatehouse_policies::run_cases(&engine, &cases);
    let run = TestsRun {
        total: outcomes.len(),
        failed: outcomes
            .iter()
            .filter(|o| !o.passed)
            .map(|o| format!("{}: {}", o.name, o.detail))
            .collect(),
    };
    let sha256 = policy_set_sha256(dir).map_err(|error| AuthzError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    let loaded = Loaded {
        engine,
        sha256,
        tests: run.total - run.failed.len(),
    };
    Ok((loaded, run))
}

/// Loads the policies in `dir` and runs their tests; every test must pass.
pub fn load_tested(dir: &Path) -> Result<Loaded, AuthzError> {
    let (loaded, run) = load_with_tests(dir)?;
    if let Some(first) = run.failed.first() {
        return Err(AuthzError::Tests {
            failed: run.failed.len(),
            total: run.total,
            first: first.clone(),
        });
    }
    Ok(loaded)
}

/// SHA-256 over the policy directory's files (`*.cedar`, the schema, `tests/*.toml`), by name
/// and content in name order: the identity of the policy set the gateway decides with.
pub fn policy_set_sha256(dir: &Path) -> std::io::Result<String> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for (sub, prefix) in [(dir.to_path_buf(), ""), (dir.join("tests"), "tests/")] {
        let Ok(rd) = std::fs::read_dir(&sub) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            if p.is_file() && matches!(ext, "cedar" | "cedarschema" | "toml") {
                files.push((format!("{prefix}{}", e.file_name().to_string_lossy()), p));
            }
        }
    }
    files.sort();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for (name, p) in files {
        let body = std::fs::read(&p)?;
        ctx.update(format!("{name}\n{}\n", body.len()).as_bytes());
        ctx.update(&body);
    }
    Ok(ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
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
            command: String::new(),
            forward_host: String::new(),
            forward_port: 0,
            source_ip,
            auth_method: auth_method.to_string(),
            hour_utc: hour,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn engine(edit: impl Fn(String) -> String) -> PolicyEngine {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let schema = std::fs::read_to_string(dir.join("schema.cedarschema")).unwrap();
        let text = edit(std::fs::read_to_string(dir.join("gatehouse.cedar")).unwrap());
        PolicyEngine::load(&schema, &[("gatehouse.cedar".into(), text)]).unwrap()
    }

    #[test]
    fn a_diff_names_added_removed_and_changed_policies() {
        let old = engine(|t| t);
        assert!(PolicyDiff::between(&old, &engine(|t| t)).is_empty());
        let new = engine(|t| {
            t.replace("@id(\"dba-connect-any\")", "@id(\"dba-connect-all\")")
                .replace(
                    "resource.env != \"prod\" };",
                    "resource.env != \"production\" };",
                )
        });
        let d = PolicyDiff::between(&old, &new);
        assert_eq!(d.added, vec!["dba-connect-all".to_string()]);
        assert_eq!(d.removed, vec!["dba-connect-any".to_string()]);
        assert!(
            d.changed
                .contains(&"engineering-connect-nonprod".to_string()),
            "{d:?}"
        );
    }
}
