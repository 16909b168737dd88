//! A real `gatehouse-agent` process next to a [`PgServer`]: enrolled through the gateway's
//! `agents enroll` command and its HTTPS endpoint, then connected out to the agent listener.
//!
//! ```no_run
//! # use gatehouse_tests::{agent::{AgentProc, AgentSpec}, Gateway, GatewayConfig, PgServer, Resource};
//! # fn f(pg: &PgServer, gw: &Gateway) -> anyhow::Result<()> {
//! let agent = AgentProc::enroll(gw, AgentSpec::new("dc1").orders_db(pg, "orders-db"))?;
//! agent.wait_connected(gw, std::time::Duration::from_secs(20))?;
//! # Ok(()) }
//! ```

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::gateway::{gatehouse_bin, Gateway};
use crate::pg::{PgServer, ORDERS_DB, ORDERS_PASSWORD, ORDERS_USER};
use crate::util::{mark_restart, temp_dir, SpawnSpec, Supervised, TempDir};

/// The `gatehouse-agent` binary: `$GATEHOUSE_AGENT_BIN`, else next to the `gatehouse` binary.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("GATEHOUSE_AGENT_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let gw = gatehouse_bin()?;
    let bin = gw.with_file_name("gatehouse-agent");
    if !bin.is_file() {
        bail!(
            "{} is missing; build it with `cargo build --bin gatehouse-agent` (scripts/test does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// One resource in `agent.toml`.
#[derive(Debug, Clone)]
struct AgentResource {
    name: String,
    /// `postgres` (with the credential below) or `tcp` (address only).
    kind: &'static str,
    address: String,
    database: String,
    username: String,
    password_var: String,
    password: String,
}

/// What the agent fronts and how it is bounded.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    name: String,
    resources: Vec<AgentResource>,
    spool_max_bytes: Option<u64>,
}

impl AgentSpec {
    pub fn new(name: &str) -> AgentSpec {
        AgentSpec {
            name: name.to_owned(),
            resources: Vec::new(),
            spool_max_bytes: None,
        }
    }

    /// The fixture database of `pg` as `resource`, credential `orders_app` (in an env var of
    /// the agent process only).
    pub fn orders_db(mut self, pg: &PgServer, resource: &str) -> AgentSpec {
        let var = format!(
            "AGENT_{}_PASSWORD",
            resource.to_ascii_uppercase().replace('-', "_")
        );
        self.resources.push(AgentResource {
            name: resource.to_owned(),
            kind: "postgres",
            address: pg.addr().to_string(),
            database: ORDERS_DB.to_owned(),
            username: ORDERS_USER.to_owned(),
            password_var: var,
            password: ORDERS_PASSWORD.to_owned(),
        });
        self
    }

    /// Any TCP service at `address` as `kind = "tcp"` resource `resource`.
    pub fn tcp(mut self, resource: &str, address: impl ToString) -> AgentSpec {
        self.resources.push(AgentResource {
            name: resource.to_owned(),
            kind: "tcp",
            address: address.to_string(),
            database: String::new(),
            username: String::new(),
            password_var: String::new(),
            password: String::new(),
        });
        self
    }

    pub fn spool_max_bytes(mut self, n: u64) -> AgentSpec {
        self.spool_max_bytes = Some(n);
        self
    }

    fn to_toml(&self, state_dir: &Path) -> String {
        let mut out = String::from("# Written by gatehouse-tests.\n");
        let _ = writeln!(out, "state_dir = {:?}", state_dir.display().to_string());
        if let Some(n) = self.spool_max_bytes {
            let _ = writeln!(out, "spool_max_bytes = {n}");
        }
        for r in &self.resources {
            if r.kind == "tcp" {
                let _ = writeln!(
                    out,
                    "\n[[resource]]\nname = {:?}\nkind = \"tcp\"\naddress = {:?}",
                    r.name, r.address
                );
                continue;
            }
            let _ = writeln!(
                out,
                "\n[[resource]]\nname = {:?}\nkind = \"postgres\"\naddress = {:?}\ndatabase = {:?}\ncredential = {{ username = {:?}, password_env = {:?} }}",
                r.name, r.address, r.database, r.username, r.password_var
            );
        }
        out
    }
}

/// A running (or stopped) `gatehouse-agent`.
pub struct AgentProc {
    pub spec: AgentSpec,
    proc: Option<Supervised>,
    bin: PathBuf,
    config_path: PathBuf,
    state_dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    runs: u32,
    /// Length of stderr when the current run started.
    log_mark: u64,
    dir: TempDir,
}

impl std::fmt::Debug for AgentProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProc")
            .field("name", &self.spec.name)
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Issues a join token for `name` with `gatehouse agents enroll` and returns it.
pub fn join_token(gw: &Gateway, name: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["agents", "enroll", name];
    args.extend_from_slice(extra);
    let out = gw.cli(&args)?.ok()?;
    out.stdout
        .split_whitespace()
        .find(|w| w.starts_with("ghj_"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no join token in `agents enroll` output: {out}"))
}

impl AgentProc {
    /// Writes `agent.toml`, gets a join token from the gateway and starts the agent with it.
    pub fn enroll(gw: &Gateway, spec: AgentSpec) -> anyhow::Result<AgentProc> {
        let token = join_token(gw, &spec.name, &[])?;
        let mut agent = AgentProc::prepare(spec)?;
        agent.spawn(Some((gw, &token)))?;
        Ok(agent)
    }

    /// Starts a prepared agent with `token` (enrollment, then the link).
    pub fn start_with_token(&mut self, gw: &Gateway, token: &str) -> anyhow::Result<()> {
        self.spawn(Some((gw, token)))
    }

    /// Writes `agent.toml` without starting anything.
    pub fn prepare(spec: AgentSpec) -> anyhow::Result<AgentProc> {
        let dir = temp_dir("agent")?;
        let state_dir = dir.join("state");
        let config_path = dir.join("agent.toml");
        fs::write(&config_path, spec.to_toml(&state_dir))?;
        Ok(AgentProc {
            spec,
            proc: None,
            bin: agent_bin()?,
            config_path,
            state_dir,
            stdout_path: dir.join("agent.stdout.log"),
            stderr_path: dir.join("agent.stderr.log"),
            runs: 0,
            log_mark: 0,
            dir,
        })
    }

    /// Runs the agent once in the foreground with `--token` (enrollment only fails fast;
    /// a success keeps running, so this is for tokens expected to be refused). Returns its
    /// output once it exits (at most 30 s).
    pub fn try_enroll(&self, gw: &Gateway, token: &str) -> anyhow::Result<crate::CmdOutput> {
        let mut cmd = std::process::Command::new(&self.bin);
        cmd.args(["--config"])
            .arg(&self.config_path)
            .args(["--gateway", &gw.https_url()?, "--token", token, "--ca-file"])
            .arg(gw.tls_cert());
        for (k, v) in self.envs() {
            cmd.env(k, v);
        }
        crate::util::run_command(&mut cmd, None, Duration::from_secs(30))
    }

    fn envs(&self) -> Vec<(OsString, OsString)> {
        let mut envs: Vec<(OsString, OsString)> = self
            .spec
            .resources
            .iter()
            .filter(|r| r.kind != "tcp")
            .map(|r| (r.password_var.clone().into(), r.password.clone().into()))
            .collect();
        envs.push(("GATEHOUSE_LOG".into(), "info,gatehouse_agent=debug".into()));
        envs
    }

    fn spawn(&mut self, enroll: Option<(&Gateway, &str)>) -> anyhow::Result<()> {
        self.runs += 1;
        if self.runs > 1 {
            mark_restart(
                &[&self.stdout_path, &self.stderr_path],
                "agent restart",
                self.runs - 1,
            );
        }
        self.log_mark = fs::metadata(&self.stderr_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let mut args: Vec<OsString> = vec!["--config".into(), self.config_path.clone().into()];
        if let Some((gw, token)) = enroll {
            args.extend([
                "--gateway".into(),
                gw.https_url()?.into(),
                "--ca-file".into(),
                gw.tls_cert().into(),
                "--token".into(),
                token.into(),
            ]);
        }
        let pidfile = self.dir.join("watchdog.pid");
        self.proc = Some(Supervised::spawn(SpawnSpec {
            program: &self.bin,
            args,
            envs: self.envs(),
            env_remove: vec!["GATEHOUSE_JOIN_TOKEN".into()],
            cwd: self.dir.path(),
            stdout: &self.stdout_path,
            stderr: &self.stderr_path,
            pidfile: &pidfile,
            ids: None,
            kill_signal: "TERM",
        })?);
        Ok(())
    }

    /// Waits until `gatehouse agents --json` shows the agent's link up (and the agent logged
    /// it), at most `timeout`.
    pub fn wait_connected(&self, gw: &Gateway, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = fs::read(&self.stderr_path).unwrap_or_default();
            let this_run =
                String::from_utf8_lossy(stderr.get(self.log_mark as usize..).unwrap_or_default());
            if this_run.contains("connected to the gateway") {
                let out = gw.cli(&["agents", "--json"])?.ok()?;
                let list: serde_json::Value = serde_json::from_str(&out.stdout)
                    .with_context(|| format!("agents --json: {out}"))?;
                let up = list.as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["name"] == self.spec.name.as_str() && x["connected"] == true)
                });
                if up {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "agent {} did not connect within {timeout:?}\n{}\n{}",
                    self.spec.name,
                    self.logs(),
                    gw.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the agent.
    pub fn kill9(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.proc
            .take()
            .ok_or_else(|| anyhow!("agent is not running"))?
            .kill9()
    }

    /// Starts the agent again from its state directory (no token).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop_with("TERM", Duration::from_secs(30))?;
        }
        self.spawn(None)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Stdout and stderr of all runs so far.
    pub fn logs(&self) -> String {
        format!(
            "--- agent stdout ---\n{}\n--- agent stderr ({}) ---\n{}",
            fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            self.stderr_path.display(),
            fs::read_to_string(&self.stderr_path).unwrap_or_default()
        )
    }
}
