//! Throwaway PostgreSQL servers on loopback.
//!
//! [`PgServer::start`] copies a per-process template cluster (made once with `initdb`, already
//! holding the fixtures below) into a fresh temporary directory and starts `postgres` on a free
//! port of 127.0.0.1, with `fsync=off` and `max_connections=250`. When the harness runs as
//! root, the cluster belongs to and runs as `nobody`.
//!
//! Fixtures in every server:
//!
//! - superuser `postgres`, password [`SUPERUSER_PASSWORD`] (trust over the unix socket);
//! - database `orders` with table `orders(id serial primary key, customer text not null,
//!   amount numeric not null)` holding [`ORDERS_ROWS`] rows;
//! - role `orders_app` (SCRAM-SHA-256, password [`ORDERS_PASSWORD`]) and role `legacy_app`
//!   (md5, password [`LEGACY_PASSWORD`]), both with all privileges on `orders` and its
//!   sequence;
//! - `pg_hba.conf`: `local all all trust`, `host all legacy_app 127.0.0.1/32 md5`,
//!   `host all all 127.0.0.1/32 scram-sha-256`. The server has no TLS.
//!
//! The server runs under a watchdog shell, so it stops when the [`PgServer`] is dropped and
//! also when the test process dies without running destructors.

use std::ffi::OsString;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::util::{
    chown_tree, find_in_path, is_executable, run_command, sweep_stale_dirs, tail, temp_dir,
    unprivileged_ids, CmdOutput, SpawnSpec, Supervised, TempDir, COMMAND_TIMEOUT,
};

/// The superuser's name.
pub const SUPERUSER: &str = "postgres";
/// The superuser's password (for TCP connections).
pub const SUPERUSER_PASSWORD: &str = "postgres-pw";
/// The fixture database.
pub const ORDERS_DB: &str = "orders";
/// The SCRAM-SHA-256 application role.
pub const ORDERS_USER: &str = "orders_app";
/// Password of [`ORDERS_USER`].
pub const ORDERS_PASSWORD: &str = "orders-secret-pw";
/// The md5 application role.
pub const LEGACY_USER: &str = "legacy_app";
/// A SCRAM role that may only read `orders` (the `read` role of just-in-time tests).
pub const READONLY_USER: &str = "orders_ro";
pub const READONLY_PASSWORD: &str = "orders-ro-pw";
/// Password of [`LEGACY_USER`].
pub const LEGACY_PASSWORD: &str = "legacy-secret-pw";
/// Rows in the `orders` table of a fresh server.
pub const ORDERS_ROWS: i64 = 1000;

/// How long to wait for a server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

const PG_HBA: &str = "\
# Written by gatehouse-tests.
local   all   all                       trust
host    all   legacy_app  127.0.0.1/32  md5
host    all   all         127.0.0.1/32  scram-sha-256
";

const SETUP_CLUSTER: &str = "\
CREATE ROLE orders_app LOGIN PASSWORD 'orders-secret-pw';
CREATE ROLE orders_ro LOGIN PASSWORD 'orders-ro-pw';
SET password_encryption = 'md5';
CREATE ROLE legacy_app LOGIN PASSWORD 'legacy-secret-pw';
RESET password_encryption;
CREATE DATABASE orders;
";

const SETUP_ORDERS: &str = "\
CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL);
INSERT INTO orders (customer, amount)
  SELECT 'customer-' || (g % 100), round(((g * 7919) % 100000) / 100.0, 2)
  FROM generate_series(1, 1000) AS g;
GRANT ALL ON TABLE orders TO orders_app, legacy_app;
GRANT ALL ON SEQUENCE orders_id_seq TO orders_app, legacy_app;
GRANT SELECT ON TABLE orders TO orders_ro;
ANALYZE orders;
";

/// The directory holding `initdb`, `postgres` and `pg_isready`: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else the directory of `initdb` on `PATH`.
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        if is_executable(&dir.join("initdb")) {
            return Ok(dir);
        }
        bail!("PG_BIN={} has no executable initdb", dir.display());
    }
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let Some(version) = e.file_name().to_str().and_then(|v| v.parse::<u32>().ok()) else {
                continue;
            };
            let bin = e.path().join("bin");
            if is_executable(&bin.join("initdb")) && best.as_ref().is_none_or(|(v, _)| version > *v)
            {
                best = Some((version, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    if let Some(initdb) = find_in_path("initdb") {
        if let Some(dir) = initdb.parent() {
            return Ok(dir.to_path_buf());
        }
    }
    bail!(
        "PostgreSQL server binaries not found (no $PG_BIN, no /usr/lib/postgresql/*/bin/initdb, \
         no initdb on PATH); install them with `apt-get install -y postgresql postgresql-client` \
         or run `scripts/test`, which does"
    )
}

/// A client tool (`psql`, `pgbench`): from `PATH`, else from [`pg_bin_dir`].
pub fn client_tool(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = find_in_path(name) {
        return Ok(p);
    }
    if let Ok(dir) = pg_bin_dir() {
        let p = dir.join(name);
        if is_executable(&p) {
            return Ok(p);
        }
    }
    bail!(
        "`{name}` not found on PATH or in the PostgreSQL bin dir; install it with \
         `apt-get install -y postgresql-client postgresql` or run `scripts/test`"
    )
}

/// Picks a free TCP port on 127.0.0.1 (bind to port 0, read it, release it).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The per-process template cluster: initialised, fixtures loaded, cleanly shut down.
struct Template {
    _dir: TempDir,
    data: PathBuf,
}

fn template() -> anyhow::Result<&'static Template> {
    static TEMPLATE: OnceLock<Result<Template, String>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| make_template().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("creating the template PostgreSQL cluster failed: {e}"))
}

fn make_template() -> anyhow::Result<Template> {
    sweep_stale_dirs();
    let bin = pg_bin_dir()?;
    let ids = unprivileged_ids()?;
    let dir = temp_dir("pgtemplate")?;
    let data = dir.join("data");
    let pwfile = dir.join("pwfile");
    fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n"))?;
    chown_tree(dir.path(), ids)?;

    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .args(["-E", "UTF8", "--locale=C", "--no-sync"])
        .current_dir(dir.path())
        .env("LC_ALL", "C");
    if let Some((uid, gid)) = ids {
        std::os::unix::process::CommandExt::uid(&mut initdb, uid);
        std::os::unix::process::CommandExt::gid(&mut initdb, gid);
    }
    run_command(&mut initdb, None, Duration::from_secs(120))?
        .ok()
        .context("initdb failed")?;
    let hba = data.join("pg_hba.conf");
    fs::write(&hba, PG_HBA).context("writing pg_hba.conf")?;
    chown_tree(&hba, ids)?;

    let sock = dir.join("sock");
    fs::create_dir(&sock)?;
    chown_tree(&sock, ids)?;
    let mut proc = start_postgres(&bin, dir.path(), &data, &sock, None, ids)?;
    let result = (|| {
        superuser_psql(&sock, proc.port, "postgres", SETUP_CLUSTER)?
            .ok()
            .context("creating roles and database")?;
        superuser_psql(&sock, proc.port, ORDERS_DB, SETUP_ORDERS)?
            .ok()
            .context("creating the orders table")?;
        anyhow::Ok(())
    })();
    let stopped = proc.proc.stop_with("INT", Duration::from_secs(30));
    result.with_context(|| format!("postgres log:\n{}", tail(&proc.log, 40)))?;
    let st = stopped.context("stopping the template server")?;
    if !st.success() {
        bail!(
            "template server exited with {st}; log:\n{}",
            tail(&proc.log, 40)
        );
    }
    Ok(Template { _dir: dir, data })
}

/// Runs a psql script as the superuser over the unix socket (trust).
fn superuser_psql(sock: &Path, port: u16, db: &str, script: &str) -> anyhow::Result<CmdOutput> {
    let mut cmd = Command::new(client_tool("psql")?);
    cmd.arg("-h")
        .arg(sock)
        .args(["-p", &port.to_string(), "-U", SUPERUSER, "-d", db])
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    clear_pg_env(&mut cmd);
    run_command(&mut cmd, Some(script.as_bytes()), COMMAND_TIMEOUT)
}

/// Removes every inherited `PG*` variable from a client command, so that the developer's
/// environment (PGHOST, PGSSLMODE, PGSERVICE ...) cannot change what a test does.
pub(crate) fn clear_pg_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(k);
        }
    }
}

/// A started postgres and where it lives.
struct Started {
    proc: Supervised,
    port: u16,
    log: PathBuf,
}

/// Starts postgres on `port` (or on a free port, retrying on bind races) and waits until it
/// accepts connections on its unix socket (which postgres creates only after its TCP socket).
fn start_postgres(
    bin: &Path,
    base: &Path,
    data: &Path,
    sock: &Path,
    port: Option<u16>,
    ids: Option<(u32, u32)>,
) -> anyhow::Result<Started> {
    let log = base.join("postgres.log");
    let pidfile = base.join("watchdog.pid");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        let args: Vec<OsString> = vec![
            "-D".into(),
            data.into(),
            "-p".into(),
            port.to_string().into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-k".into(),
            sock.into(),
            "-c".into(),
            "fsync=off".into(),
            "-c".into(),
            "max_connections=250".into(),
        ];
        let postgres = bin.join("postgres");
        let mut proc = Supervised::spawn(SpawnSpec {
            program: &postgres,
            args,
            envs: vec![("LC_ALL".into(), "C".into())],
            env_remove: Vec::new(),
            cwd: base,
            stdout: &log,
            stderr: &log,
            pidfile: &pidfile,
            ids,
            kill_signal: "QUIT",
        })?;
        let ready = wait_ready(bin, &mut proc, sock, port, deadline)?;
        match ready {
            Ready::Yes => return Ok(Started { proc, port, log }),
            Ready::Exited(st) => {
                let log_tail = tail(&log, 30);
                let retryable = log_tail.contains("could not bind")
                    || log_tail.contains("already in use")
                    || log_tail.contains("pre-existing shared memory block")
                    || log_tail.contains("lock file");
                if retryable && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100 * attempt.min(5)));
                    continue;
                }
                bail!("postgres on port {port} exited with {st} before accepting connections; log:\n{log_tail}");
            }
            Ready::TimedOut => {
                let _ = proc.kill9();
                bail!(
                    "postgres on port {port} did not accept connections within {START_TIMEOUT:?}; log:\n{}",
                    tail(&log, 30)
                );
            }
        }
    }
}

enum Ready {
    Yes,
    Exited(ExitStatus),
    TimedOut,
}

fn wait_ready(
    bin: &Path,
    proc: &mut Supervised,
    sock: &Path,
    port: u16,
    deadline: Instant,
) -> anyhow::Result<Ready> {
    let isready = bin.join("pg_isready");
    let isready = if is_executable(&isready) {
        isready
    } else {
        client_tool("pg_isready")?
    };
    loop {
        if let Some(st) = proc.try_wait()? {
            return Ok(Ready::Exited(st));
        }
        let mut cmd = Command::new(&isready);
        cmd.arg("-h").arg(sock).args([
            "-p",
            &port.to_string(),
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
            "-t",
            "2",
            "-q",
        ]);
        clear_pg_env(&mut cmd);
        let out = run_command(&mut cmd, None, Duration::from_secs(10))?;
        if out.success() {
            return Ok(Ready::Yes);
        }
        if Instant::now() >= deadline {
            return Ok(Ready::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

/// A running throwaway PostgreSQL server (see the [module docs](self) for its fixtures).
///
/// Dropping it stops the server (SIGQUIT) and removes its directory, unless the thread is
/// panicking (then the directory, including `postgres.log`, is kept and its path printed).
pub struct PgServer {
    proc: Option<Supervised>,
    port: u16,
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    dir: TempDir,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl PgServer {
    /// Starts a fresh server with the fixtures, waiting (at most 30 s) until it accepts
    /// connections. The first call in a process also runs `initdb` for the template (a few
    /// seconds); later calls copy it.
    pub fn start() -> anyhow::Result<PgServer> {
        let tpl = template()?;
        let bin = pg_bin_dir()?;
        let ids = unprivileged_ids()?;
        let dir = temp_dir("pg")?;
        let data = dir.join("data");
        let cp = run_command(
            Command::new("cp").arg("-a").arg(&tpl.data).arg(&data),
            None,
            COMMAND_TIMEOUT,
        )?;
        cp.ok().context("copying the template cluster")?;
        let sock = dir.join("sock");
        fs::create_dir(&sock)?;
        if let Some((uid, gid)) = ids {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            std::os::unix::fs::chown(&sock, Some(uid), Some(gid))?;
        }
        let started = start_postgres(&bin, dir.path(), &data, &sock, None, ids)?;
        Ok(PgServer {
            proc: Some(started.proc),
            port: started.port,
            bin,
            ids,
            data,
            sock,
            log: started.log,
            dir,
        })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `postgres://postgres:postgres-pw@127.0.0.1:<port>/postgres` (TCP, SCRAM).
    pub fn superuser_url(&self) -> String {
        self.database_url("postgres")
    }

    /// The superuser's URL for database `db`.
    pub fn database_url(&self, db: &str) -> String {
        self.url(SUPERUSER, SUPERUSER_PASSWORD, db)
    }

    /// `postgres://<user>:<password>@127.0.0.1:<port>/<db>`. Only for names and passwords that
    /// need no percent-encoding (all the fixtures).
    pub fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// The directory of the unix socket (superuser connects there with trust).
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log so far (stderr of postgres).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The postmaster's pid, if running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Supervised::pid)
    }

    /// Whether the postmaster is still running.
    pub fn is_running(&mut self) -> bool {
        match self.proc.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs `sql` (one or more statements, each run on its own as psql does with a script) as
    /// superuser in database `db` over the unix socket, with `ON_ERROR_STOP`, and returns the
    /// unaligned, tuples-only output (`psql -At`). Fails if psql fails.
    pub fn exec(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let out = superuser_psql(&self.sock, self.port, db, sql)?
            .ok()
            .with_context(|| format!("running as superuser in {db}: {sql}"))?;
        Ok(out.stdout)
    }

    /// How many backends are running exactly `query` right now (`state = 'active'` in
    /// `pg_stat_activity`, any database, not counting the backend asking).
    pub fn active_queries(&self, query: &str) -> anyhow::Result<usize> {
        anyhow::ensure!(
            !query.contains("$gh$"),
            "the query text must not contain the quote tag $gh$"
        );
        let out = self.exec(
            "postgres",
            &format!(
                "select count(*) from pg_stat_activity where state = 'active' \
                 and pid <> pg_backend_pid() and query = $gh${query}$gh$"
            ),
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("counting active queries: {out:?}"))
    }

    /// Waits (polling every 50 ms, at most `timeout`) until at least `n` backends run exactly
    /// `query` ([`active_queries`](Self::active_queries)): the sessions got through the gateway
    /// and their statement reached the server. Errors, naming what it saw, if that never
    /// happens, so a test fails instead of racing on.
    pub fn wait_for_active_query(
        &self,
        query: &str,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut seen = 0;
        let found = crate::util::poll(timeout, Duration::from_millis(50), || {
            seen = self.active_queries(query)?;
            Ok((seen >= n).then_some(()))
        })?;
        found.ok_or_else(|| {
            anyhow!("{seen} (not {n}) backends were running `{query}` after {timeout:?}")
        })
    }

    /// Like [`exec`](Self::exec) but returns the output whether or not psql succeeded.
    pub fn exec_output(&self, db: &str, sql: &str) -> anyhow::Result<CmdOutput> {
        superuser_psql(&self.sock, self.port, db, sql)
    }

    /// Creates database `name` (owned by the superuser) and returns its superuser URL, e.g. for
    /// a PostgreSQL-backed gateway store.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.exec("postgres", &format!("CREATE DATABASE \"{name}\";"))?;
        Ok(self.database_url(name))
    }

    /// Runs `pgbench -i -s <scale>` as superuser in `db` and grants the pgbench tables to
    /// `orders_app` and `legacy_app`, so that `pgbench -S` works for them (also through the
    /// gateway).
    pub fn pgbench_init(&self, db: &str, scale: u32) -> anyhow::Result<()> {
        let mut cmd = Command::new(client_tool("pgbench")?);
        cmd.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER])
            .args(["-i", "-q", "-s", &scale.to_string(), db]);
        clear_pg_env(&mut cmd);
        run_command(&mut cmd, None, Duration::from_secs(600))?
            .ok()
            .context("pgbench -i")?;
        self.exec(
            db,
            "GRANT ALL ON pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history \
             TO orders_app, legacy_app;",
        )?;
        Ok(())
    }

    /// Turns on TLS (`ssl = on`, reloaded, no restart): a fresh self-signed P-256 certificate
    /// for `localhost` made with the `openssl` command goes to `server.crt`/`server.key` in
    /// the data directory. Waits (at most 10 s) until `sslmode=require` connections work.
    /// Plain connections keep working too (pg_hba uses `host`). Returns the certificate path.
    pub fn enable_tls(&self) -> anyhow::Result<PathBuf> {
        let cert = self.data.join("server.crt");
        let key = self.data.join("server.key");
        let mut cmd = openssl()?;
        cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        run_command(&mut cmd, None, COMMAND_TIMEOUT)?
            .ok()
            .context("generating the server certificate")?;
        self.install_tls(&cert, &key)?;
        Ok(cert)
    }

    /// Turns on TLS like [`enable_tls`](Self::enable_tls), with a server certificate for
    /// `localhost` and `127.0.0.1` issued by `ca` (as a real deployment has it, so a client can
    /// verify the server against the CA).
    pub fn enable_tls_from_ca(&self, ca: &TestCa) -> anyhow::Result<()> {
        let (cert, key) = ca.issue_server(&self.data, "server")?;
        self.install_tls(&cert, &key)
    }

    fn install_tls(&self, cert: &Path, key: &Path) -> anyhow::Result<()> {
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(key, fs::Permissions::from_mode(0o600))?;
        }
        chown_tree(cert, self.ids)?;
        chown_tree(key, self.ids)?;
        let (cert, key) = (cert.display(), key.display());
        self.exec(
            "postgres",
            &format!(
                "ALTER SYSTEM SET ssl_cert_file = '{cert}';\nALTER SYSTEM SET ssl_key_file = '{key}';\n\
                 ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();"
            ),
        )?;
        let ready = crate::util::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            let out = crate::clients::Psql::new(self.addr(), "postgres", SUPERUSER)
                .password(SUPERUSER_PASSWORD)
                .run("select ssl from pg_stat_ssl where pid = pg_backend_pid()")?;
            Ok((out.success() && out.stdout_trimmed() == "t").then_some(()))
        })?;
        ready.ok_or_else(|| {
            anyhow!(
                "TLS did not come up within 10 s; log:\n{}",
                tail(&self.log, 20)
            )
        })
    }

    /// Stops the server gracefully (SIGINT, fast shutdown: open sessions are terminated) and
    /// waits for it (at most 30 s, then SIGKILL). Returns its exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut proc = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        proc.stop_with("INT", Duration::from_secs(30))
    }

    /// Kills the postmaster with SIGKILL and waits for it (its backends exit on their own
    /// shortly after, noticing the postmaster's death).
    pub fn kill9(&mut self) -> anyhow::Result<ExitStatus> {
        let mut proc = self
            .proc
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        proc.kill9()
    }

    /// Starts the server again on the same port and data directory after [`stop`](Self::stop)
    /// or [`kill9`](Self::kill9) (crash recovery runs after a kill), waiting until it accepts
    /// connections. Stops it first if it is running.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            self.stop()?;
        }
        let started = start_postgres(
            &self.bin,
            self.dir.path(),
            &self.data,
            &self.sock,
            Some(self.port),
            self.ids,
        )?;
        self.proc = Some(started.proc);
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Stop the server before the TempDir field removes its files.
        self.proc.take();
    }
}

fn openssl() -> anyhow::Result<Command> {
    let openssl = find_in_path("openssl")
        .ok_or_else(|| anyhow!("`openssl` not found on PATH (apt-get install -y openssl)"))?;
    Ok(Command::new(openssl))
}

/// A throwaway certificate authority made with the `openssl` command (P-256, 2 days), for
/// servers whose certificates a client verifies.
pub struct TestCa {
    pub cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    /// A new CA named `name`, its files in `dir`.
    pub fn create(dir: &Path, name: &str) -> anyhow::Result<TestCa> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let mut cmd = openssl()?;
        cmd.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert);
        run_command(&mut cmd, None, COMMAND_TIMEOUT)?
            .ok()
            .context("generating a test CA")?;
        Ok(TestCa { cert, key })
    }

    /// A server certificate for `localhost` and `127.0.0.1` signed by this CA:
    /// `dir/<stem>.crt` and `dir/<stem>.key`.
    pub fn issue_server(&self, dir: &Path, stem: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        let csr = dir.join(format!("{stem}.csr"));
        let ext = dir.join(format!("{stem}.ext"));
        fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )?;
        let mut cmd = openssl()?;
        cmd.args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr);
        run_command(&mut cmd, None, COMMAND_TIMEOUT)?
            .ok()
            .context("generating a server key and request")?;
        let mut cmd = openssl()?;
        cmd.args(["x509", "-req", "-days", "2", "-set_serial", "2"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&self.cert)
            .arg("-CAkey")
            .arg(&self.key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert);
        run_command(&mut cmd, None, COMMAND_TIMEOUT)?
            .ok()
            .context("signing the server certificate")?;
        Ok((cert, key))
    }
}
