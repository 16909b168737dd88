//! Shared plumbing: temporary directories, running commands with a timeout, and supervised
//! child processes that die with the test process.
//!
//! Everything here uses only `std` plus `sh`; signals are sent with the shell's `kill`
//! builtin so that no libc bindings are needed.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};

/// Prefix of every directory the harness creates under [`std::env::temp_dir`]; the pid of the
/// creating process follows it, which lets [`sweep_stale_dirs`] remove what dead runs left.
pub(crate) const DIR_PREFIX: &str = "gatehouse-tests-";

/// Default timeout for one client command (`psql`, `pgbench`, `gatehouse token issue` ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A directory under [`std::env::temp_dir`] that is removed on drop.
///
/// It is kept (and its path printed to stderr) when the thread is panicking, so that a failed
/// test leaves its logs and data behind, and always when `GATEHOUSE_TESTS_KEEP=1`.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `self.path().join(rel)`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for TempDir {
    #[allow(
        clippy::print_stderr,
        reason = "tell the developer where a failed test's files are"
    )]
    fn drop(&mut self) {
        let keep_env = std::env::var("GATEHOUSE_TESTS_KEEP").is_ok_and(|v| v == "1");
        if thread::panicking() || keep_env {
            eprintln!("gatehouse-tests: kept {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Creates a fresh, empty directory `gatehouse-tests-<pid>-<counter>-<nanos>-<label>` under
/// [`std::env::temp_dir`].
pub fn temp_dir(label: &str) -> anyhow::Result<TempDir> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{n}-{nanos}-{label}",
        std::process::id()
    ));
    fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(TempDir { path })
}

/// Removes `gatehouse-tests-<pid>-*` directories whose process no longer exists (left behind by
/// crashed or failed runs). Runs at most once per process.
pub(crate) fn sweep_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Finds an executable named `name` on `PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

pub(crate) fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The uid/gid that server processes must run as: `None` when not root, the ids of `nobody`
/// when root (PostgreSQL refuses to run as root).
pub(crate) fn unprivileged_ids() -> anyhow::Result<Option<(u32, u32)>> {
    static IDS: OnceLock<Result<Option<(u32, u32)>, String>> = OnceLock::new();
    IDS.get_or_init(|| {
        let euid = command_stdout(Command::new("id").arg("-u"))?;
        if euid.trim() != "0" {
            return Ok(None);
        }
        let entry = command_stdout(Command::new("getent").args(["passwd", "nobody"]))?;
        let fields: Vec<&str> = entry.trim().split(':').collect();
        let (Some(uid), Some(gid)) = (fields.get(2), fields.get(3)) else {
            return Err(format!(
                "unexpected `getent passwd nobody` output: {entry:?}"
            ));
        };
        let uid = uid
            .parse::<u32>()
            .map_err(|e| format!("uid of nobody: {e}"))?;
        let gid = gid
            .parse::<u32>()
            .map_err(|e| format!("gid of nobody: {e}"))?;
        Ok(Some((uid, gid)))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn command_stdout(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `chown -R`-like: gives `path` (and everything below it) to `ids`, if any.
pub(crate) fn chown_tree(path: &Path, ids: Option<(u32, u32)>) -> anyhow::Result<()> {
    let Some((uid, gid)) = ids else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if fs::symlink_metadata(path)?.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), ids)?;
        }
    }
    Ok(())
}

/// What a finished command printed, and how it exited.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// The command line, for messages.
    pub command: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, `None` if killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// `Ok(self)` if the command succeeded, otherwise an error carrying the whole output.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.success() {
            Ok(self)
        } else {
            Err(anyhow!("command failed: {self}"))
        }
    }

    /// `Ok(self)` if the command failed, otherwise an error carrying the whole output. For tests
    /// that expect a refusal.
    pub fn err(self) -> anyhow::Result<Self> {
        if self.success() {
            Err(anyhow!("command unexpectedly succeeded: {self}"))
        } else {
            Ok(self)
        }
    }

    /// Standard output with surrounding whitespace removed.
    pub fn stdout_trimmed(&self) -> &str {
        self.stdout.trim()
    }
}

impl fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Renders a command line for messages (program and arguments, lossily).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with `stdin` as its input, capturing stdout and stderr. Kills it
/// and returns an error (with what it printed so far) after `timeout`.
pub fn run_command(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> anyhow::Result<CmdOutput> {
    let command = describe(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{command}`"))?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => {
            let input = input.to_vec();
            Some(thread::spawn(move || {
                // The child may exit without reading everything; that is its business.
                let _ = pipe.write_all(&input);
            }))
        }
        _ => None,
    };
    let out_reader = child.stdout.take().map(spawn_reader);
    let err_reader = child.stderr.take().map(spawn_reader);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let stdout = join_reader(out_reader);
    let stderr = join_reader(err_reader);
    match status {
        Some(status) => Ok(CmdOutput {
            command,
            status,
            stdout,
            stderr,
        }),
        None => Err(anyhow!(
            "`{command}` timed out after {timeout:?} and was killed\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )),
    }
}

fn spawn_reader(mut r: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(h: Option<thread::JoinHandle<Vec<u8>>>) -> String {
    h.and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Sends `signal` (a name such as `TERM`, `INT`, `KILL`) to `pid` with the shell's `kill`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let out = Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\"",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .output()
        .context("running sh -c kill")?;
    if !out.status.success() {
        bail!(
            "kill -s {signal} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The watchdog around every long-running child. `$0 "$@"` is the real program. It runs in
/// the background with stdin from /dev/null; a watcher subshell reads the test's pipe and,
/// once the pipe closes (the supervising handle was dropped, or the test process died in any
/// way), sends `$GATEHOUSE_TESTS_KILLSIG` to the program every 100 ms, and SIGKILL after 5 s.
/// Repeating matters: a background job of a non-interactive shell starts with SIGINT and
/// SIGQUIT ignored, so a signal that arrives before the program installs its handlers is lost.
/// The shell exits with the program's status (128+n when killed by signal n) and then stops
/// the watcher, so the watcher never signals a recycled pid.
const WATCHDOG: &str = r#"exec 3<&0 </dev/null
"$0" "$@" 3<&- &
pid=$!
echo "$pid" > "$GATEHOUSE_TESTS_PIDFILE"
( read -r _ <&3
  n=0
  while kill -s "$GATEHOUSE_TESTS_KILLSIG" "$pid" 2>/dev/null; do
    n=$((n + 1))
    if [ "$n" -ge 50 ]; then kill -s KILL "$pid" 2>/dev/null; break; fi
    sleep 0.1
  done ) &
w=$!
exec 3<&-
wait "$pid"
st=$?
kill "$w" 2>/dev/null
exit "$st"
"#;

/// Appends `===== gatehouse-tests: <what> #n =====` to each log, so that a restarted
/// process's output can be told from the run before it.
pub(crate) fn mark_restart(logs: &[&Path], what: &str, n: u32) {
    let marker = format!("\n===== gatehouse-tests: {what} #{n} =====\n");
    for p in logs {
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, marker.as_bytes()));
    }
}

/// How to start a supervised process.
pub(crate) struct SpawnSpec<'a> {
    pub program: &'a Path,
    pub args: Vec<OsString>,
    pub envs: Vec<(OsString, OsString)>,
    pub env_remove: Vec<OsString>,
    pub cwd: &'a Path,
    pub stdout: &'a Path,
    pub stderr: &'a Path,
    pub pidfile: &'a Path,
    /// Run as this uid/gid (the pidfile's directory must be writable by it).
    pub ids: Option<(u32, u32)>,
    /// Signal the watchdog sends when the test side goes away.
    pub kill_signal: &'a str,
}

/// A long-running child process (PostgreSQL, the gateway) wrapped in the [`WATCHDOG`] shell.
///
/// Dropping it closes the watchdog pipe (the program receives its kill signal) and waits up
/// to 10 s for it to exit.
#[derive(Debug)]
pub(crate) struct Supervised {
    shell: Child,
    pipe: Option<ChildStdin>,
    pid: u32,
    exit: Option<ExitStatus>,
}

impl Supervised {
    pub(crate) fn spawn(spec: SpawnSpec<'_>) -> anyhow::Result<Supervised> {
        let _ = fs::remove_file(spec.pidfile);
        let stdout = open_append(spec.stdout)?;
        let stderr = open_append(spec.stderr)?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WATCHDOG)
            .arg(spec.program)
            .args(&spec.args)
            .current_dir(spec.cwd)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .env("GATEHOUSE_TESTS_PIDFILE", spec.pidfile)
            .env("GATEHOUSE_TESTS_KILLSIG", spec.kill_signal);
        for k in &spec.env_remove {
            cmd.env_remove(k);
        }
        for (k, v) in &spec.envs {
            cmd.env(k, v);
        }
        if let Some((uid, gid)) = spec.ids {
            cmd.uid(uid).gid(gid);
        }
        let what = format!("{} {:?}", spec.program.display(), spec.args);
        let mut shell = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pipe = shell.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let Ok(s) = fs::read_to_string(spec.pidfile) {
                if let Ok(pid) = s.trim().parse::<u32>() {
                    break pid;
                }
            }
            if let Some(st) = shell.try_wait()? {
                bail!("watchdog shell for {what} exited early with {st}");
            }
            if Instant::now() >= deadline {
                let _ = shell.kill();
                let _ = shell.wait();
                bail!(
                    "watchdog for {what} did not write {}",
                    spec.pidfile.display()
                );
            }
            thread::sleep(Duration::from_millis(2));
        };
        Ok(Supervised {
            shell,
            pipe,
            pid,
            exit: None,
        })
    }

    /// The program's pid (not the watchdog shell's).
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// The program's exit status if it has exited.
    pub(crate) fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.shell.try_wait()?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the program to exit.
    pub(crate) fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` to the program (no-op if it already exited).
    pub(crate) fn signal(&mut self, signal: &str) -> anyhow::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        send_signal(self.pid, signal)
    }

    /// Sends `signal`, waits up to `timeout`, then SIGKILLs. Returns the exit status.
    pub(crate) fn stop_with(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> anyhow::Result<ExitStatus> {
        self.signal(signal)?;
        if let Some(st) = self.wait_timeout(timeout)? {
            return Ok(st);
        }
        self.kill9()?;
        bail!(
            "pid {} ignored SIG{signal} for {timeout:?}; killed it",
            self.pid
        )
    }

    /// SIGKILLs the program and waits for it.
    pub(crate) fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal("KILL")?;
        self.wait_timeout(Duration::from_secs(10))?
            .ok_or_else(|| anyhow!("pid {} survived SIGKILL for 10 s", self.pid))
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog send the kill signal.
        self.pipe.take();
        if self.exit.is_none() && !matches!(self.wait_timeout(Duration::from_secs(10)), Ok(Some(_)))
        {
            let _ = send_signal(self.pid, "KILL");
            let _ = self.shell.kill();
            let _ = self.shell.wait();
        }
    }
}

fn open_append(p: &Path) -> anyhow::Result<File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .with_context(|| format!("opening {}", p.display()))
}

/// Reads `stream` line by line on a thread: each line is sent on the receiver as it arrives
/// (for waiting on one with a deadline, `recv_timeout`), and the thread returns all of it.
pub fn line_reader<R: Read + Send + 'static>(
    stream: R,
) -> (
    std::sync::mpsc::Receiver<String>,
    thread::JoinHandle<String>,
) {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    (rx, reader)
}

/// Polls `f` every `every` until it returns `Ok(Some(_))`, an error, or `timeout` passes.
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(every);
    }
}

/// The last `n` lines of a file (empty string if it cannot be read).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound and released). For servers that
/// must know their address before they start, such as the gateway's HTTPS listener whose
/// callback URL the identity provider needs up front.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a probe port")?;
    Ok(l.local_addr()?.port())
}
