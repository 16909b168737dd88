//! Runs the README's shell blocks as written, in order: [`Readme::parse`] reads the fenced
//! blocks and the directive comment before each, [`Tour`] runs them in a copy of the
//! repository and checks what they print.
//!
//! A block's directive is an HTML comment on the line before its fence (invisible on GitHub):
//!
//! - none: a ```sh block that must exit 0;
//! - `<!-- readme: illustrative -->` (any text may follow): shown, not run (other hosts,
//!   placeholders, the test command itself);
//! - `<!-- readme: background -->`: started and left running (the quickstart); the tour goes on
//!   once `deploy/quickstart/state/ready.json` and the printed banner exist;
//! - `<!-- readme: exit N -->`: must exit with status N;
//! - `<!-- readme: sign-in USER -->`: runs a `gatehouse login` and signs in as USER (password
//!   from the quickstart's `state/passwords`) in the browser it prints the URL for, as the
//!   reader does by hand;
//! - `<!-- readme: prints -->` on a ```text block: what the block before prints. Each line
//!   must appear in that block's output (stdout then stderr), in order, other lines between
//!   allowed; `<...>` stands for any text within a line.
//!
//! Each block runs in its own `bash` with `set -euo pipefail`, in the directory and with the
//! exported variables the block before left, so that `source` and `export` carry over as in a
//! terminal.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};

use crate::browser::Browser;
use crate::gateway::gatehouse_bin;
use crate::pg::pg_bin_dir;
use crate::util::{
    find_in_path, free_port, line_reader, poll, run_command, temp_dir, CmdOutput, SpawnSpec,
    Supervised,
};

/// One fenced block of the README.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The fence's info string (`sh`, `text`, `toml` ...).
    pub lang: String,
    /// The text between the fences.
    pub body: String,
    /// The directive before the fence, without `readme:` (e.g. `illustrative`, `exit 1`).
    pub directive: Option<String>,
    /// 1-based line of the opening fence.
    pub line: usize,
}

/// What to do with a shell block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Run { exit: i32 },
    Background,
    SignIn { user: String },
    Skip,
}

impl Block {
    /// What the tour does with this block (`None` for a block that is not shell).
    pub fn step(&self) -> anyhow::Result<Option<Step>> {
        if self.lang != "sh" {
            return Ok(None);
        }
        let d = self.directive.as_deref().unwrap_or("");
        let mut words = d.split_whitespace();
        let step = match words.next() {
            None => Step::Run { exit: 0 },
            Some("illustrative") => Step::Skip,
            Some("background") => Step::Background,
            Some("exit") => Step::Run {
                exit: words
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| anyhow!("README line {}: `exit` needs a number", self.line))?,
            },
            Some("sign-in") => Step::SignIn {
                user: words
                    .next()
                    .ok_or_else(|| anyhow!("README line {}: `sign-in` needs a user", self.line))?
                    .to_string(),
            },
            Some(other) => bail!(
                "README line {}: unknown directive `{other}` before a sh block",
                self.line
            ),
        };
        Ok(Some(step))
    }

    /// Whether this is a `prints` block.
    pub fn is_output(&self) -> bool {
        self.lang == "text" && self.directive.as_deref() == Some("prints")
    }
}

/// The README's fenced blocks, in order.
pub struct Readme {
    pub blocks: Vec<Block>,
}

impl Readme {
    /// Parses markdown text. Fails on an unclosed fence.
    pub fn parse(text: &str) -> anyhow::Result<Readme> {
        let mut blocks = Vec::new();
        let mut last_line = "";
        let mut open: Option<(String, Option<String>, usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut open {
                Some((lang, directive, start, body)) => {
                    if line.trim_start() == "```" {
                        blocks.push(Block {
                            lang: std::mem::take(lang),
                            body: std::mem::take(body),
                            directive: directive.take(),
                            line: *start,
                        });
                        open = None;
                        last_line = "";
                    } else {
                        body.push_str(line);
                        body.push('\n');
                    }
                }
                None => {
                    if let Some(info) = line.trim_start().strip_prefix("```") {
                        let directive = last_line
                            .trim()
                            .strip_prefix("<!--")
                            .and_then(|c| c.strip_suffix("-->"))
                            .and_then(|c| c.trim().strip_prefix("readme:"))
                            .map(|d| d.trim().to_string());
                        open = Some((info.trim().to_string(), directive, i + 1, String::new()));
                    } else {
                        last_line = line;
                    }
                }
            }
        }
        if let Some((_, _, start, _)) = open {
            bail!("README line {start}: a fenced block is never closed");
        }
        Ok(Readme { blocks })
    }
}

/// Checks `output` against a `prints` block: every non-empty line of `expected` matches a line
/// of `output`, in order; `<...>` matches any text. Returns the first line that does not.
pub fn check_prints(expected: &str, output: &str) -> Result<(), String> {
    let mut lines = output.lines().map(str::trim);
    for want in expected.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pattern = Pattern::new(want);
        if !lines.any(|got| pattern.matches(got)) {
            return Err(want.to_string());
        }
    }
    Ok(())
}

/// A line with `<...>` holes.
struct Pattern<'a> {
    parts: Vec<&'a str>,
}

impl<'a> Pattern<'a> {
    fn new(line: &'a str) -> Pattern<'a> {
        let mut parts = Vec::new();
        let mut rest = line;
        while let Some(open) = rest.find('<') {
            match rest[open..].find('>') {
                Some(close) => {
                    parts.push(&rest[..open]);
                    rest = &rest[open + close + 1..];
                }
                None => break,
            }
        }
        parts.push(rest);
        Pattern { parts }
    }

    /// The whole line matches: the first part is a prefix, the last a suffix, the others
    /// appear in order between them.
    fn matches(&self, line: &str) -> bool {
        let (first, last) = (self.parts[0], self.parts[self.parts.len() - 1]);
        if self.parts.len() == 1 {
            return line == first;
        }
        let Some(mut rest) = line.strip_prefix(first) else {
            return false;
        };
        for mid in &self.parts[1..self.parts.len() - 1] {
            match rest.find(mid) {
                Some(at) => rest = &rest[at + mid.len()..],
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

/// A copy of the repository where the README's blocks run, and the shell state between them.
pub struct Tour {
    /// The copy's root (blocks start here).
    pub root: PathBuf,
    state: PathBuf,
    env_file: PathBuf,
    cwd_file: PathBuf,
    base_env: Vec<(String, String)>,
    /// What each block printed, for the failure message.
    pub transcript: String,
}

/// How long one block may run (the grant-expiry step waits about a minute).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(240);

impl Tour {
    /// `root`: where the README's relative paths resolve (a copy of the repository);
    /// `base_env`: variables every block sees (ports, binaries).
    pub fn new(root: &Path, scratch: &Path, base_env: Vec<(String, String)>) -> Tour {
        Tour {
            root: root.to_path_buf(),
            state: root.join("deploy/quickstart/state"),
            env_file: scratch.join("tour.env"),
            cwd_file: scratch.join("tour.cwd"),
            base_env,
            transcript: String::new(),
        }
    }

    /// The quickstart's state directory in the copy.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// `bash -c` around a block: restores the previous block's directory and exports, runs
    /// the block, then saves them.
    fn command(&self, body: &str) -> Command {
        self.command_with(body, true)
    }

    fn command_with(&self, body: &str, save: bool) -> Command {
        let mut script = format!(
            "set -euo pipefail\nif [ -f '{env}' ]; then . '{env}'; fi\ncd \"$(cat '{cwd}' 2>/dev/null || pwd)\"\n{body}\n",
            env = self.env_file.display(),
            cwd = self.cwd_file.display(),
        );
        if save {
            script.push_str(&format!(
                "export -p > '{env}'\npwd > '{cwd}'\n",
                env = self.env_file.display(),
                cwd = self.cwd_file.display(),
            ));
        }
        let mut cmd = Command::new("bash");
        cmd.arg("-c").arg(script).current_dir(&self.root);
        for k in CLEARED_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in &self.base_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs one block to completion and checks its exit status.
    pub fn run(&mut self, block: &Block, exit: i32) -> anyhow::Result<CmdOutput> {
        let out = run_command(&mut self.command(&block.body), None, BLOCK_TIMEOUT)
            .with_context(|| format!("README line {}", block.line))?;
        self.record(block, &out);
        if out.code() != Some(exit) {
            bail!(
                "README line {}: the block exited with {} (the README says {exit})\n{}",
                block.line,
                out.status,
                self.transcript
            );
        }
        Ok(out)
    }

    /// Runs a `gatehouse login` block, signing in as `user` where it prints the URL.
    pub fn sign_in(&mut self, block: &Block, user: &str) -> anyhow::Result<CmdOutput> {
        let password = self.password(user)?;
        let mut cmd = self.command(&block.body);
        cmd.env("BROWSER", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting a sign-in block")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let (rx, reader) = line_reader(stderr);
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.trim().starts_with("https://") => break line.trim().to_string(),
                Ok(_) => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "README line {}: the block printed no sign-in URL within 60 s: {}",
                        block.line,
                        reader.join().unwrap_or_default()
                    );
                }
            }
        };
        let signed = (|| -> anyhow::Result<()> {
            let mut browser = Browser::with_root_ca(self.state.join("tls/cert.pem"))?;
            let back = browser.sign_in(&url, user, &password, |u| {
                u.scheme() == "http" && u.host_str() == Some("127.0.0.1") && u.path() == "/callback"
            })?;
            let page = browser.get(back.as_str())?;
            if page.status != 200 {
                bail!("the CLI's loopback answered {}: {}", page.status, page.body);
            }
            Ok(())
        })();
        if let Err(e) = signed {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e.context(format!("README line {}: signing in as {user}", block.line)));
        }
        let status = poll(BLOCK_TIMEOUT, Duration::from_millis(20), || {
            Ok(child.try_wait()?)
        })?;
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "README line {}: the login did not end after the sign-in",
                block.line
            );
        };
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            std::io::Read::read_to_string(&mut out, &mut stdout)?;
        }
        let out = CmdOutput {
            command: block.body.trim().to_string(),
            status,
            stdout,
            stderr: reader.join().unwrap_or_default(),
        };
        self.record(block, &out);
        if !out.success() {
            bail!(
                "README line {}: the sign-in block failed\n{}",
                block.line,
                self.transcript
            );
        }
        Ok(out)
    }

    fn password(&self, user: &str) -> anyhow::Result<String> {
        let path = self.state.join("passwords");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .find_map(|l| l.strip_prefix(user)?.strip_prefix(' ').map(str::to_string))
            .ok_or_else(|| anyhow!("{} has no password for {user}", path.display()))
    }

    fn record(&mut self, block: &Block, out: &CmdOutput) {
        self.transcript.push_str(&format!(
            "\n$ # README line {}\n{}--- exit {} ---\n{}{}",
            block.line, block.body, out.status, out.stdout, out.stderr
        ));
    }
}

/// Variables of the developer's shell that would change what the README's commands do.
const CLEARED_ENV: &[&str] = &[
    "GATEHOUSE_CONFIG",
    "GATEHOUSE_GATEWAY",
    "GATEHOUSE_CA_FILE",
    "GATEHOUSE_TOKEN",
    "GATEHOUSE_TCP_DOOR",
    "PGPASSWORD",
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
];

/// What a README run saw.
pub struct ReadmeRun {
    /// Every block run, with what it printed.
    pub transcript: String,
    /// How many shell blocks ran (not counting illustrative ones).
    pub ran: usize,
    /// The quickstart's own output (the gateway's log is its stderr), after it stopped.
    pub background_log: String,
}

/// Runs the README at `readme` (in a copy of the workspace, on free ports) from its first
/// block to its last; fails at the first block that fails or prints something else than
/// the README says.
pub fn run_readme(readme: &Path) -> anyhow::Result<ReadmeRun> {
    let text =
        fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let parsed = Readme::parse(&text)?;
    let scratch = temp_dir("readme")?;
    let root = scratch.join("repo");
    copy_workspace(&crate::util::workspace_root(), &root)?;
    fs::copy(readme, root.join("README.md"))?;
    let home = scratch.join("home");
    fs::create_dir_all(&home)?;
    let mut env = vec![
        (
            "GATEHOUSE_BIN".to_string(),
            gatehouse_bin()?.display().to_string(),
        ),
        ("PG_BIN".to_string(), pg_bin_dir()?.display().to_string()),
        ("GATEHOUSE_HOME".to_string(), home.display().to_string()),
        ("BROWSER".to_string(), "true".to_string()),
    ];
    for var in [
        "QUICKSTART_PG_PORT",
        "QUICKSTART_HTTPS_PORT",
        "QUICKSTART_UPSTREAM_PORT",
        "QUICKSTART_OIDC_PORT",
    ] {
        env.push((var.to_string(), free_port()?.to_string()));
    }
    let mut tour = Tour::new(&root, scratch.path(), env);
    let mut background: Option<(Supervised, PathBuf, PathBuf)> = None;
    let mut ran = 0;
    let mut last: Option<(usize, CmdOutput)> = None;
    let result = (|| -> anyhow::Result<()> {
        for block in &parsed.blocks {
            if block.is_output() {
                let Some((line, out)) = &last else {
                    bail!(
                        "README line {}: a `prints` block follows no block that ran",
                        block.line
                    );
                };
                let all = format!("{}{}", out.stdout, out.stderr);
                if let Err(missing) = check_prints(&block.body, &all) {
                    bail!(
                        "README line {}: the block at line {line} did not print `{missing}`\n--- it printed ---\n{all}",
                        block.line
                    );
                }
                continue;
            }
            let Some(step) = block.step()? else {
                continue;
            };
            last = None;
            match step {
                Step::Skip => {}
                Step::Run { exit } => {
                    ran += 1;
                    last = Some((block.line, tour.run(block, exit)?));
                }
                Step::SignIn { user } => {
                    ran += 1;
                    last = Some((block.line, tour.sign_in(block, &user)?));
                }
                Step::Background => {
                    ran += 1;
                    if background.is_some() {
                        bail!("README line {}: a second background block", block.line);
                    }
                    background = Some(start_background(&tour, block, scratch.path())?);
                    let (proc, out, err) = background
                        .as_mut()
                        .map(|(p, o, e)| (p, o.clone(), e.clone()))
                        .context("no background")?;
                    let ready = tour.state().join("ready.json");
                    let up = poll(Duration::from_secs(600), Duration::from_millis(100), || {
                        if let Some(st) = proc.try_wait()? {
                            bail!(
                                "README line {}: the background block exited with {st}\n{}\n{}",
                                block.line,
                                fs::read_to_string(&out).unwrap_or_default(),
                                fs::read_to_string(&err).unwrap_or_default()
                            );
                        }
                        let printed = fs::read_to_string(&out).unwrap_or_default();
                        Ok((ready.exists() && printed.contains("Gatehouse is serving"))
                            .then_some(printed))
                    })?;
                    let Some(printed) = up else {
                        bail!(
                            "README line {}: the quickstart was not serving within 10 minutes",
                            block.line
                        );
                    };
                    last = Some((
                        block.line,
                        CmdOutput {
                            command: block.body.trim().to_string(),
                            status: std::os::unix::process::ExitStatusExt::from_raw(0),
                            stdout: printed,
                            stderr: String::new(),
                        },
                    ));
                }
            }
        }
        Ok(())
    })();
    let mut background_log = String::new();
    if let Some((mut proc, out, err)) = background {
        let stopped = proc.stop_with("TERM", Duration::from_secs(30));
        background_log = format!(
            "{}{}",
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default()
        );
        if result.is_ok() {
            stopped.context("stopping the quickstart")?;
        }
    }
    result.map_err(|e| {
        anyhow!(
            "{e:#}\n===== transcript =====\n{}\n===== quickstart =====\n{background_log}",
            tour.transcript
        )
    })?;
    Ok(ReadmeRun {
        transcript: tour.transcript,
        ran,
        background_log,
    })
}

fn start_background(
    tour: &Tour,
    block: &Block,
    scratch: &Path,
) -> anyhow::Result<(Supervised, PathBuf, PathBuf)> {
    let bash = find_in_path("bash").context("no bash on PATH")?;
    // One command, exec'd: the supervisor's signal must reach it, not a shell around it.
    let lines: Vec<&str> = block
        .body
        .lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines[..] else {
        bail!(
            "README line {}: a background block must be one command",
            block.line
        );
    };
    let cmd = tour.command_with(&format!("exec {line}"), false);
    let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
    let envs = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
        .collect();
    let (out, err) = (
        scratch.join("background.out"),
        scratch.join("background.err"),
    );
    let proc = Supervised::spawn(SpawnSpec {
        program: &bash,
        args,
        envs,
        env_remove: CLEARED_ENV.iter().map(Into::into).collect(),
        cwd: &tour.root,
        stdout: &out,
        stderr: &err,
        pidfile: &scratch.join("background.pid"),
        ids: None,
        kill_signal: "TERM",
    })?;
    Ok((proc, out, err))
}

/// Copies what the README's commands use (deploy/, policies/, scripts/, tests/oidc) to `to`;
/// the provider's node_modules is linked, not copied, and no quickstart state comes along.
fn copy_workspace(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(to.join("tests/oidc"))?;
    let out = Command::new("cp")
        .arg("-a")
        .args(["deploy", "policies", "scripts"].map(|d| from.join(d)))
        .arg(to)
        .output()
        .context("running cp")?;
    if !out.status.success() {
        bail!("cp failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let _ = fs::remove_dir_all(to.join("deploy/quickstart/state"));
    for entry in fs::read_dir(from.join("tests/oidc"))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "node_modules" {
            std::os::unix::fs::symlink(entry.path(), to.join("tests/oidc").join(&name))?;
        } else if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join("tests/oidc").join(&name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn directives_and_blocks() {
        let md = "text\n<!-- readme: illustrative (elsewhere) -->\n```sh\nls\n```\n\n```sh\necho hi\n```\n<!-- readme: prints -->\n```text\nhi\n```\n<!-- readme: exit 3 -->\n```sh\nexit 3\n```\n";
        let r = Readme::parse(md).unwrap();
        assert_eq!(r.blocks.len(), 4);
        assert_eq!(r.blocks[0].step().unwrap(), Some(Step::Skip));
        assert_eq!(r.blocks[1].step().unwrap(), Some(Step::Run { exit: 0 }));
        assert_eq!(r.blocks[1].line, 7);
        assert!(r.blocks[2].is_output());
        assert_eq!(r.blocks[3].step().unwrap(), Some(Step::Run { exit: 3 }));
        assert!(Readme::parse("```sh\nls\n").is_err());
        let bad = Readme::parse("<!-- readme: sometimes -->\n```sh\nls\n```\n").unwrap();
        assert!(bad.blocks[0].step().is_err());
    }

    #[test]
    fn prints_lines_in_order_with_holes() {
        let out = "request 12 pending\nsomething else\n  alice (engineering) expires in 7h 59m\n";
        assert_eq!(
            check_prints("request <id> pending\nalice (<groups>) expires <when>", out),
            Ok(())
        );
        assert_eq!(
            check_prints("alice (<groups>) expires <when>\nrequest <id> pending", out),
            Err("request <id> pending".into())
        );
        assert_eq!(
            check_prints("request 13 pending", out),
            Err("request 13 pending".into())
        );
        assert_eq!(check_prints("something", out), Err("something".into()));
    }
}
