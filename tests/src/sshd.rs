//! A real OpenSSH `sshd` on a loopback port, the SSH target behind the gateway in the SSH
//! front door's tests.
//!
//! [`Sshd::start`] writes a fresh temporary directory holding a new ed25519 host key
//! (`ssh-keygen -q -t ed25519 -N '' -f <dir>/host_ed25519`), `trusted_user_ca.pub` (the one CA
//! whose user certificates the server accepts) and `sshd_config` ([`CONFIG`]), then runs
//! `/usr/sbin/sshd -f <dir>/sshd_config -D -e` under the watchdog shell (it dies with the
//! [`Sshd`] or the test process) on `127.0.0.1:<free port>`, and waits until the port answers
//! with an `SSH-2.0-` identification line.
//!
//! The server takes only user certificates signed by that CA: no passwords, no
//! keyboard-interactive, no `authorized_keys` (`AuthorizedKeysFile none`) and no principals
//! file (`AuthorizedPrincipalsFile none`), so a certificate gets a shell only when one of its
//! principals is the login name, [`Sshd::login`]: `root` when the tests run as root (sshd then
//! runs as root too, with `/run/sshd` as its privilege separation directory), otherwise the
//! current user, as whom sshd then runs unprivileged (it can only log that user in).
//! TCP and agent forwarding are on, X11 forwarding off, and `sftp` is `internal-sftp`.
//!
//! [`Sshd::trust_ca`] swaps the trusted CA for another (the gateway's, once it is known)
//! without a restart. [`Sshd::rotate_host_key`] replaces the host key and restarts the server on the same port,
//! for the tests of a target whose host key changed under the gateway's pin
//! ([`Sshd::host_key`]). The log ([`Sshd::log`], `sshd.log`, `LogLevel VERBOSE`) is sshd's
//! stderr, with a marker line between runs.
//!
//! Needs `/usr/sbin/sshd` (Debian: `openssh-server`) and `ssh-keygen` (Debian:
//! `openssh-client`); `scripts/test` installs both.

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _};

use crate::util::{
    find_in_path, free_port, is_executable, mark_restart, poll, run_command, tail, temp_dir,
    SpawnSpec, Supervised, TempDir, COMMAND_TIMEOUT,
};

/// The server binary. sshd re-executes itself, so it must be started by an absolute path.
const SSHD: &str = "/usr/sbin/sshd";

/// How long [`Sshd::start`] and [`Sshd::rotate_host_key`] wait for the identification line.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stop waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `sshd_config`, with `@DIR@` (the temporary directory) and `@PORT@` filled in.
pub const CONFIG: &str = "\
# Written by gatehouse-tests.
ListenAddress 127.0.0.1:@PORT@
HostKey @DIR@/host_ed25519
PidFile @DIR@/sshd.pid
TrustedUserCAKeys @DIR@/trusted_user_ca.pub
AuthorizedPrincipalsFile none
AuthorizedKeysFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin yes
AllowTcpForwarding yes
AllowAgentForwarding yes
X11Forwarding no
PrintMotd no
PrintLastLog no
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 100
";

/// A running `sshd` (see the [module docs](self)).
pub struct Sshd {
    proc: Option<Supervised>,
    port: u16,
    login: String,
    bin: PathBuf,
    keygen: PathBuf,
    log: PathBuf,
    runs: u32,
    dir: TempDir,
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd")
            .field("port", &self.port)
            .field("login", &self.login)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Sshd {
    /// Starts sshd on `127.0.0.1:<free port>` trusting the user CA `trusted_ca_pub` (one
    /// OpenSSH public key line, such as `ssh-ed25519 AAAA... comment`), with a fresh ed25519
    /// host key; returns once the port answers `SSH-2.0-...` (at most 20 s). Picks another
    /// port if the one chosen was taken in between.
    pub fn start(trusted_ca_pub: &str) -> anyhow::Result<Sshd> {
        let bin = PathBuf::from(SSHD);
        if !is_executable(&bin) {
            bail!(
                "{SSHD} is not installed: scripts/test installs the Debian package openssh-server"
            );
        }
        let keygen = find_in_path("ssh-keygen")
            .or_else(|| Some(PathBuf::from("/usr/bin/ssh-keygen")).filter(|p| is_executable(p)))
            .context(
                "ssh-keygen is not installed: scripts/test installs the Debian package \
                 openssh-client",
            )?;
        let ca = one_key_line(trusted_ca_pub)?;
        let (root, login) = identity()?;
        if root {
            // The privilege separation directory a root sshd chroots its pre-auth child into.
            use std::os::unix::fs::PermissionsExt as _;
            fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))
                .context("chmod 0755 /run/sshd")?;
        }
        let dir = temp_dir("sshd")?;
        fs::write(dir.join("trusted_user_ca.pub"), format!("{ca}\n"))
            .context("writing trusted_user_ca.pub")?;
        let log = dir.join("sshd.log");
        let mut sshd = Sshd {
            proc: None,
            port: 0,
            login,
            bin,
            keygen,
            log,
            runs: 0,
            dir,
        };
        sshd.new_host_key()?;
        let mut last = None;
        for _ in 0..3 {
            sshd.port = free_port()?;
            sshd.write_config()?;
            let mark = fs::metadata(&sshd.log).map(|m| m.len()).unwrap_or(0);
            match sshd.spawn() {
                Ok(()) => return Ok(sshd),
                Err(e) => {
                    if let Some(mut p) = sshd.proc.take() {
                        let _ = p.stop_with("TERM", STOP_TIMEOUT);
                    }
                    let this_run = fs::read(&sshd.log)
                        .map(|b| {
                            let from = usize::try_from(mark).unwrap_or(0).min(b.len());
                            String::from_utf8_lossy(&b[from..]).into_owned()
                        })
                        .unwrap_or_default();
                    if !this_run.contains("Address already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("sshd did not start")))
    }

    /// Makes `ca_pub` (one OpenSSH public key line) the only trusted user CA, in place of the
    /// one given to [`start`](Self::start) or to an earlier call: the gateway's upstream CA is
    /// known only once the gateway has started, and the gateway's config pins this server's
    /// host key, so this server starts first. sshd reads `trusted_user_ca.pub` at every
    /// authentication, so this takes effect for the next connection without a restart; the
    /// file is replaced atomically (written beside it, then renamed), so no connection sees it
    /// half-written.
    pub fn trust_ca(&self, ca_pub: &str) -> anyhow::Result<()> {
        let ca = one_key_line(ca_pub)?;
        let path = self.dir.join("trusted_user_ca.pub");
        let new = self.dir.join(".trusted_user_ca.pub.new");
        fs::write(&new, format!("{ca}\n")).with_context(|| format!("writing {}", new.display()))?;
        fs::rename(&new, &path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The host public key line as in `host_ed25519.pub` (`ssh-ed25519 AAAA... comment`, no
    /// newline): what a gateway pins.
    pub fn host_key(&self) -> anyhow::Result<String> {
        let path = self.dir.join("host_ed25519.pub");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text.trim().to_string())
    }

    /// The login a certificate must name (as a principal) to get a shell here: `root` when
    /// the tests run as root (so does sshd), else the current user's name (sshd runs as that
    /// user and can log in no one else).
    pub fn login(&self) -> String {
        self.login.clone()
    }

    /// sshd's log so far (its stderr, `-e`), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Replaces the host key by a new one and restarts sshd on the same port (sessions
    /// already open stay up: they belong to their own sshd processes); returns once the port
    /// answers again (at most 20 s).
    pub fn rotate_host_key(&mut self) -> anyhow::Result<()> {
        if let Some(mut p) = self.proc.take() {
            p.stop_with("TERM", STOP_TIMEOUT)
                .context("stopping sshd before the host key rotation")?;
        }
        self.new_host_key()?;
        self.spawn()
    }

    /// Generates `host_ed25519` (mode 0600) and `host_ed25519.pub`, replacing any old pair.
    fn new_host_key(&self) -> anyhow::Result<()> {
        let key = self.dir.join("host_ed25519");
        let public = self.dir.join("host_ed25519.pub");
        for p in [&key, &public] {
            match fs::remove_file(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
            }
        }
        let mut cmd = Command::new(&self.keygen);
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key);
        run_command(&mut cmd, None, COMMAND_TIMEOUT)?
            .ok()
            .context("generating the sshd host key")?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", key.display()))?;
        Ok(())
    }

    /// Writes `sshd_config` for the current port (mode 0644: a root sshd refuses nothing it
    /// owns, but keep it not group/world-writable anyway).
    fn write_config(&self) -> anyhow::Result<()> {
        let path = self.config_path();
        let text = CONFIG
            .replace("@DIR@", &self.dir.path().display().to_string())
            .replace("@PORT@", &self.port.to_string());
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
            .with_context(|| format!("chmod 0644 {}", path.display()))?;
        Ok(())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("sshd_config")
    }

    /// Runs sshd (again) with the current config and waits for its identification line.
    fn spawn(&mut self) -> anyhow::Result<()> {
        self.runs += 1;
        if self.runs > 1 {
            mark_restart(&[&self.log], "sshd run", self.runs);
        }
        let proc = Supervised::spawn(SpawnSpec {
            program: &self.bin,
            args: vec![
                "-f".into(),
                self.config_path().into_os_string(),
                "-D".into(),
                "-e".into(),
            ],
            envs: Vec::new(),
            env_remove: Vec::new(),
            cwd: self.dir.path(),
            stdout: &self.log,
            stderr: &self.log,
            pidfile: &self.dir.join("watchdog.pid"),
            ids: None,
            kill_signal: "TERM",
        })?;
        self.proc = Some(proc);
        let port = self.port;
        let log = &self.log;
        let proc = &mut self.proc;
        let up = poll(START_TIMEOUT, Duration::from_millis(50), || {
            if let Some(p) = proc.as_mut() {
                if let Some(st) = p.try_wait()? {
                    bail!("sshd exited with {st}:\n{}", tail(log, 30));
                }
            }
            Ok(answers_ssh(port).then_some(()))
        })?;
        up.ok_or_else(|| {
            anyhow!(
                "sshd did not answer SSH-2.0- on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{}",
                tail(log, 30)
            )
        })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Stop the server before the TempDir field removes its files.
        self.proc.take();
    }
}

/// `key` without surrounding whitespace, if it is one non-empty line.
fn one_key_line(key: &str) -> anyhow::Result<&str> {
    let key = key.trim();
    ensure!(
        !key.is_empty() && !key.contains('\n'),
        "a trusted user CA must be one OpenSSH public key line, got {key:?}"
    );
    Ok(key)
}

/// Whether the tests run as root, and the login sshd can serve: `root`, or the current user.
fn identity() -> anyhow::Result<(bool, String)> {
    let uid = run_command(Command::new("id").arg("-u"), None, COMMAND_TIMEOUT)?
        .ok()
        .context("id -u")?;
    if uid.stdout_trimmed() == "0" {
        return Ok((true, "root".to_string()));
    }
    let name = run_command(Command::new("id").arg("-un"), None, COMMAND_TIMEOUT)?
        .ok()
        .context("id -un")?;
    let name = name.stdout_trimmed();
    ensure!(!name.is_empty(), "`id -un` printed no user name");
    Ok((false, name.to_string()))
}

/// Whether `127.0.0.1:<port>` accepts a connection and sends a line starting `SSH-2.0-`.
fn answers_ssh(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    if stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let mut line = String::new();
    let read = BufReader::new(stream.take(255)).read_line(&mut line);
    read.is_ok() && line.starts_with("SSH-2.0-")
}
