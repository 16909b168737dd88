//! Throwaway Redis servers on loopback, the upstream of the generic TCP front door's tests.
//!
//! [`RedisServer::start`] runs `redis-server --port P --bind 127.0.0.1 --save '' --appendonly
//! no` on a free port in a fresh temporary directory, under the watchdog shell (it dies with
//! the [`RedisServer`] or the test process), and waits until `redis-cli -p P ping` answers
//! `PONG`. [`redis_cli`] runs `redis-cli -p PORT ARGS` against any port (the server's, or a
//! `gatehouse connect` listener in front of it).
//!
//! Needs `redis-server` and `redis-cli` on `PATH` (Debian: `redis-server`, `redis-tools`;
//! `scripts/test` installs them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::util::{
    find_in_path, free_port, run_command, tail, temp_dir, CmdOutput, SpawnSpec, Supervised,
    TempDir, COMMAND_TIMEOUT,
};

/// How long [`RedisServer::start`] waits for `PONG`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn binary(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    find_in_path(name).with_context(|| {
        format!("`{name}` is not on PATH; install it (Debian: apt-get install {package}; scripts/test does)")
    })
}

/// `redis-cli -p PORT ARGS` on 127.0.0.1, with `stdin` fed to it when given. 60 s timeout;
/// a non-zero exit is not an error here (check the output).
pub fn redis_cli(port: u16, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<CmdOutput> {
    let mut cmd = Command::new(binary("redis-cli", "redis-tools")?);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args);
    run_command(&mut cmd, stdin, COMMAND_TIMEOUT)
}

/// A running `redis-server` (see the [module docs](self)).
pub struct RedisServer {
    proc: Option<Supervised>,
    port: u16,
    log: PathBuf,
    dir: TempDir,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server on a free loopback port; retries on another port if the one picked
    /// was taken in between.
    pub fn start() -> anyhow::Result<RedisServer> {
        let server = binary("redis-server", "redis-server")?;
        binary("redis-cli", "redis-tools")?;
        let mut last = None;
        for _ in 0..3 {
            match Self::start_on(&server, free_port()?) {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn start_on(server: &std::path::Path, port: u16) -> anyhow::Result<RedisServer> {
        let dir = temp_dir("redis")?;
        let log = dir.join("redis.log");
        let proc = Supervised::spawn(SpawnSpec {
            program: server,
            args: vec![
                "--port".into(),
                port.to_string().into(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
                "--dir".into(),
                dir.path().as_os_str().to_owned(),
            ],
            envs: Vec::new(),
            env_remove: Vec::new(),
            cwd: dir.path(),
            stdout: &log,
            stderr: &log,
            pidfile: &dir.join("watchdog.pid"),
            ids: None,
            kill_signal: "KILL",
        })?;
        let mut s = RedisServer {
            proc: Some(proc),
            port,
            log,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(p) = s.proc.as_mut() {
                if let Some(st) = p.try_wait()? {
                    bail!(
                        "redis-server on port {port} exited with {st}:\n{}",
                        tail(&s.log, 20)
                    );
                }
            }
            let pong = redis_cli(port, &["ping"], None)?;
            if pong.stdout.trim() == "PONG" {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server on port {port} did not answer PONG within {START_TIMEOUT:?}:\n{}",
                    tail(&s.log, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, for a resource's `address`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis-cli` straight to this server (not through the gateway).
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CmdOutput> {
        redis_cli(self.port, args, None)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL through the watchdog before the TempDir goes.
        self.proc.take();
    }
}
