//! Clients: `psql`, `pgbench`, a `sqlx` connection, and raw wire-protocol helpers.
//!
//! `psql` and `pgbench` run with a clean environment (no inherited `PG*` variables, no
//! `.psqlrc`), the password in `PGPASSWORD`, and a timeout after which they are killed and the
//! helper returns an error. A client that runs but fails (bad password, policy denial, SQL
//! error) is *not* an error of the helper: check [`CmdOutput::success`] or call
//! [`CmdOutput::ok`] / [`CmdOutput::err`].
//!
//! The raw helpers build PostgreSQL frontend messages byte by byte, for tests that feed the
//! gateway malformed or hostile input.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pg::{clear_pg_env, client_tool};
use crate::util::{run_command, CmdOutput, COMMAND_TIMEOUT};

/// What `psql` printed and how it exited.
pub type PsqlOutput = CmdOutput;

/// Quotes a libpq conninfo value: `'...'` with `\` and `'` escaped.
fn conninfo_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// A `psql` invocation, built up step by step.
///
/// ```no_run
/// # use gatehouse_tests::Psql;
/// # fn f(addr: std::net::SocketAddr) -> anyhow::Result<()> {
/// let out = Psql::new(addr, "orders", "orders_app")
///     .password("orders-secret-pw")
///     .sslmode("disable")
///     .run("select count(*) from orders")?
///     .ok()?;
/// assert_eq!(out.stdout.trim(), "1000");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Psql {
    addr: SocketAddr,
    dbname: String,
    user: String,
    password: Option<String>,
    sslmode: String,
    extra_conninfo: Vec<(String, String)>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    timeout: Duration,
}

impl Psql {
    /// `psql` to `dbname` at `addr` as `user`, with `sslmode=require`, no password, a 60 s
    /// timeout, and the flags `-X -v ON_ERROR_STOP=1 -At`.
    pub fn new(addr: SocketAddr, dbname: &str, user: &str) -> Psql {
        Psql {
            addr,
            dbname: dbname.to_owned(),
            user: user.to_owned(),
            password: None,
            sslmode: "require".to_owned(),
            extra_conninfo: Vec::new(),
            args: Vec::new(),
            envs: Vec::new(),
            timeout: COMMAND_TIMEOUT,
        }
    }

    /// The password (passed as `PGPASSWORD`): a gateway token, or a database password.
    pub fn password(mut self, password: &str) -> Psql {
        self.password = Some(password.to_owned());
        self
    }

    /// The libpq `sslmode` (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`).
    pub fn sslmode(mut self, mode: &str) -> Psql {
        mode.clone_into(&mut self.sslmode);
        self
    }

    /// Adds `key=value` to the conninfo string (e.g. `application_name`, `sslrootcert`,
    /// `options`).
    pub fn conninfo_param(mut self, key: &str, value: &str) -> Psql {
        self.extra_conninfo.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a command-line argument (after the default flags).
    pub fn arg(mut self, arg: impl Into<OsString>) -> Psql {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable for psql.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Psql {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Replaces the 60 s timeout.
    pub fn timeout(mut self, timeout: Duration) -> Psql {
        self.timeout = timeout;
        self
    }

    /// The conninfo string, e.g. `host='127.0.0.1' port='6432' dbname='orders-db' user='alice'
    /// sslmode='require'`.
    pub fn conninfo(&self) -> String {
        let mut parts = vec![
            format!("host={}", conninfo_value(&self.addr.ip().to_string())),
            format!("port={}", conninfo_value(&self.addr.port().to_string())),
            format!("dbname={}", conninfo_value(&self.dbname)),
            format!("user={}", conninfo_value(&self.user)),
            format!("sslmode={}", conninfo_value(&self.sslmode)),
        ];
        for (k, v) in &self.extra_conninfo {
            parts.push(format!("{k}={}", conninfo_value(v)));
        }
        parts.join(" ")
    }

    /// The `Command` that [`run`](Self::run) would start, without the `-c`/`-f` part, for
    /// tests that need to drive psql themselves.
    pub fn command(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(client_tool("psql")?);
        clear_pg_env(&mut cmd);
        cmd.arg(self.conninfo())
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At"])
            .args(&self.args)
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    /// Runs `psql -c <sql>`. Several `;`-separated statements in `sql` travel as one simple
    /// Query message.
    pub fn run(&self, sql: &str) -> anyhow::Result<PsqlOutput> {
        let mut cmd = self.command()?;
        cmd.arg("-c").arg(sql);
        run_command(&mut cmd, None, self.timeout)
    }

    /// Runs `psql -f -` with `script` on stdin (statements are sent one by one; psql
    /// meta-commands such as `\bind` work).
    pub fn run_script(&self, script: &str) -> anyhow::Result<PsqlOutput> {
        let mut cmd = self.command()?;
        cmd.args(["-f", "-"]);
        run_command(&mut cmd, Some(script.as_bytes()), self.timeout)
    }

    /// Starts `psql -c <sql>` in the background with its output piped, for tests that act on a
    /// session while it runs (cancel it, cut it, kill the gateway under it).
    pub fn spawn(&self, sql: &str) -> anyhow::Result<std::process::Child> {
        let mut cmd = self.command()?;
        cmd.arg("-c")
            .arg(sql)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd.spawn().context("starting psql")
    }

    /// Runs `psql -f <path>`.
    pub fn run_file(&self, path: &std::path::Path) -> anyhow::Result<PsqlOutput> {
        let mut cmd = self.command()?;
        cmd.arg("-f").arg(path);
        run_command(&mut cmd, None, self.timeout)
    }
}

/// `psql "host=127.0.0.1 port=P dbname=D user=U sslmode=require" -X -v ON_ERROR_STOP=1 -At -c
/// SQL` with `PGPASSWORD=password`; 60 s timeout.
pub fn psql(
    addr: SocketAddr,
    dbname: &str,
    user: &str,
    password: &str,
    sql: &str,
) -> anyhow::Result<PsqlOutput> {
    Psql::new(addr, dbname, user).password(password).run(sql)
}

/// Like [`psql`] but feeds `script` on stdin (`-f -`).
pub fn psql_script(
    addr: SocketAddr,
    dbname: &str,
    user: &str,
    password: &str,
    script: &str,
) -> anyhow::Result<PsqlOutput> {
    Psql::new(addr, dbname, user)
        .password(password)
        .run_script(script)
}

/// [`psql`] on tokio's blocking pool, for async tests that run other tasks concurrently.
pub async fn psql_async(
    addr: SocketAddr,
    dbname: &str,
    user: &str,
    password: &str,
    sql: &str,
) -> anyhow::Result<PsqlOutput> {
    let p = Psql::new(addr, dbname, user).password(password);
    let sql = sql.to_owned();
    tokio::task::spawn_blocking(move || p.run(&sql))
        .await
        .context("psql task panicked")?
}

/// A `pgbench` invocation (`pgbench -h 127.0.0.1 -p P -U U <args> <dbname>` with
/// `PGPASSWORD` and `PGSSLMODE`).
#[derive(Debug, Clone)]
pub struct Pgbench {
    addr: SocketAddr,
    dbname: String,
    user: String,
    password: Option<String>,
    sslmode: String,
    args: Vec<String>,
    timeout: Option<Duration>,
}

impl Pgbench {
    /// `pgbench` against `dbname` at `addr` as `user` with `sslmode=require`.
    pub fn new(addr: SocketAddr, dbname: &str, user: &str) -> Pgbench {
        Pgbench {
            addr,
            dbname: dbname.to_owned(),
            user: user.to_owned(),
            password: None,
            sslmode: "require".to_owned(),
            args: Vec::new(),
            timeout: None,
        }
    }

    /// The password (`PGPASSWORD`).
    pub fn password(mut self, password: &str) -> Pgbench {
        self.password = Some(password.to_owned());
        self
    }

    /// `PGSSLMODE`.
    pub fn sslmode(mut self, mode: &str) -> Pgbench {
        mode.clone_into(&mut self.sslmode);
        self
    }

    /// Adds pgbench arguments, e.g. `["-n", "-S", "-c", "8", "-T", "10"]`.
    pub fn args(mut self, args: &[&str]) -> Pgbench {
        self.args.extend(args.iter().map(|s| (*s).to_owned()));
        self
    }

    /// Replaces the default timeout (60 s plus the `-T` duration, if any).
    pub fn timeout(mut self, timeout: Duration) -> Pgbench {
        self.timeout = Some(timeout);
        self
    }

    /// Runs pgbench; errors if it cannot run, times out or exits non-zero (with its output).
    pub fn run(&self) -> anyhow::Result<PgbenchOutput> {
        let mut cmd = Command::new(client_tool("pgbench")?);
        clear_pg_env(&mut cmd);
        cmd.args(["-h", &self.addr.ip().to_string()])
            .args(["-p", &self.addr.port().to_string()])
            .args(["-U", &self.user])
            .args(&self.args)
            .arg(&self.dbname)
            .env("PGSSLMODE", &self.sslmode)
            .env("PGCONNECT_TIMEOUT", "10");
        if let Some(pw) = &self.password {
            cmd.env("PGPASSWORD", pw);
        }
        let timeout = self.timeout.unwrap_or_else(|| {
            let secs = self
                .args
                .iter()
                .position(|a| a == "-T")
                .and_then(|i| self.args.get(i + 1))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
            COMMAND_TIMEOUT + Duration::from_secs(secs)
        });
        let out = run_command(&mut cmd, None, timeout)?.ok()?;
        Ok(PgbenchOutput { output: out })
    }
}

/// `pgbench -h 127.0.0.1 -p P -U user <args> dbname` over TLS (`sslmode=require`) with
/// `PGPASSWORD=password`. Errors unless pgbench exits 0.
///
/// ```no_run
/// # fn f(addr: std::net::SocketAddr, token: &str) -> anyhow::Result<()> {
/// let out = gatehouse_tests::pgbench(addr, "orders-db", "alice", token,
///     &["-n", "-S", "-c", "8", "-j", "2", "-T", "10"])?;
/// let tps = out.tps().expect("tps line");
/// # Ok(()) }
/// ```
pub fn pgbench(
    addr: SocketAddr,
    dbname: &str,
    user: &str,
    password: &str,
    args: &[&str],
) -> anyhow::Result<PgbenchOutput> {
    Pgbench::new(addr, dbname, user)
        .password(password)
        .args(args)
        .run()
}

/// Output of a successful pgbench run, with parsers for its summary.
#[derive(Debug, Clone)]
pub struct PgbenchOutput {
    /// The raw output.
    pub output: CmdOutput,
}

impl PgbenchOutput {
    /// Standard output.
    pub fn stdout(&self) -> &str {
        &self.output.stdout
    }

    fn field(&self, prefix: &str) -> Option<&str> {
        self.output
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    }

    /// `tps = N (without initial connection time)`.
    pub fn tps(&self) -> Option<f64> {
        self.field("tps = ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// `latency average = N ms`, in milliseconds.
    pub fn latency_avg_ms(&self) -> Option<f64> {
        self.field("latency average = ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// `number of transactions actually processed: N` (the part before any `/`).
    pub fn transactions(&self) -> Option<u64> {
        self.field("number of transactions actually processed: ")?
            .split('/')
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// `number of failed transactions: N`.
    pub fn failed_transactions(&self) -> Option<u64> {
        self.field("number of failed transactions: ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// Options for a `sqlx` connection to `dbname` at `addr` as `user` with `sslmode=require`
/// (sqlx does not verify the certificate in that mode). Adjust and connect with
/// `PgConnection::connect_with`.
pub fn rust_client_options(
    addr: SocketAddr,
    dbname: &str,
    user: &str,
    password: &str,
) -> PgConnectOptions {
    PgConnectOptions::new()
        .host(&addr.ip().to_string())
        .port(addr.port())
        .database(dbname)
        .username(user)
        .password(password)
        .ssl_mode(PgSslMode::Require)
}

/// A `sqlx` connection from [`rust_client_options`] (extended query protocol, TLS), with a
/// 30 s connect timeout.
pub async fn rust_client(
    addr: SocketAddr,
    dbname: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<PgConnection> {
    let opts = rust_client_options(addr, dbname, user, password);
    tokio::time::timeout(Duration::from_secs(30), PgConnection::connect_with(&opts))
        .await
        .map_err(|_| anyhow!("sqlx connect to {addr}/{dbname} as {user} timed out"))?
        .with_context(|| format!("sqlx connect to {addr}/{dbname} as {user}"))
}

/// Opens a plain TCP connection to `addr` (10 s timeout, `TCP_NODELAY`), for raw protocol
/// tests.
pub async fn raw_connect(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A plaintext session attempt to a gateway that allows plaintext: the startup packet for
/// `user` and `database`, the cleartext password request (asserted), then `password` as the
/// PasswordMessage. Returns the stream with the gateway's answer to the password unread.
pub async fn raw_password_login(
    addr: SocketAddr,
    user: &str,
    database: &str,
    password: &[u8],
) -> anyhow::Result<TcpStream> {
    let mut s = raw_connect(addr).await?;
    s.write_all(&startup_packet(user, database, &[])).await?;
    let auth = read_backend_message(&mut s).await?;
    if auth.auth_code() != Some(3) {
        bail!("expected the cleartext password request, got {auth:?}");
    }
    let mut pw = password.to_vec();
    pw.push(0);
    s.write_all(&frontend_message(b'p', &pw)).await?;
    Ok(s)
}

/// A protocol-3.0 StartupMessage: `int32 len, int32 196608, (name\0 value\0)*, \0` with
/// `user`, `database` and `params`.
pub fn startup_packet(user: &str, database: &str, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608_i32.to_be_bytes());
    let all = [("user", user), ("database", database)];
    for (k, v) in all.iter().chain(params) {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    untagged(&body)
}

/// SSLRequest: `int32 8, int32 80877103`. The server answers one byte, `S` or `N`.
pub fn ssl_request() -> Vec<u8> {
    untagged(&80_877_103_i32.to_be_bytes())
}

/// GSSENCRequest: `int32 8, int32 80877104`. The server answers one byte, `G` or `N`.
pub fn gssenc_request() -> Vec<u8> {
    untagged(&80_877_104_i32.to_be_bytes())
}

/// CancelRequest: `int32 16, int32 80877102, int32 pid, int32 secret`.
pub fn cancel_request(pid: i32, secret: i32) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&80_877_102_i32.to_be_bytes());
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&secret.to_be_bytes());
    untagged(&body)
}

/// A message without a type byte: `int32 len (including itself), body`.
pub fn untagged(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 4);
    m.extend_from_slice(&len_prefix(body.len() + 4));
    m.extend_from_slice(body);
    m
}

/// A typed frontend message: `tag, int32 len (including itself), body`.
pub fn frontend_message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(body.len() + 5);
    m.push(tag);
    m.extend_from_slice(&len_prefix(body.len() + 4));
    m.extend_from_slice(body);
    m
}

fn len_prefix(len: usize) -> [u8; 4] {
    i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes()
}

/// PasswordMessage `p` carrying a cleartext password (what the gateway asks for tokens).
pub fn password_message(password: &str) -> Vec<u8> {
    let mut body = password.as_bytes().to_vec();
    body.push(0);
    frontend_message(b'p', &body)
}

/// Simple Query `Q`.
pub fn query_message(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    frontend_message(b'Q', &body)
}

/// Terminate `X`.
pub fn terminate_message() -> Vec<u8> {
    frontend_message(b'X', &[])
}

/// One backend message: type byte and body (without the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendMessage {
    /// Message type, e.g. `b'R'` (authentication), `b'E'` (error), `b'Z'` (ready).
    pub tag: u8,
    /// The body after the length word.
    pub body: Vec<u8>,
}

impl BackendMessage {
    /// For `R` messages, the authentication request code (0 ok, 3 cleartext, 5 md5, 10 SASL).
    pub fn auth_code(&self) -> Option<i32> {
        if self.tag != b'R' {
            return None;
        }
        let b: [u8; 4] = self.body.get(..4)?.try_into().ok()?;
        Some(i32::from_be_bytes(b))
    }

    /// For `E`/`N` messages, the fields as `(code, value)`, e.g. `(b'C', "28P01")`.
    pub fn fields(&self) -> Vec<(u8, String)> {
        if self.tag != b'E' && self.tag != b'N' {
            return Vec::new();
        }
        self.body
            .split(|b| *b == 0)
            .filter(|f| !f.is_empty())
            .filter_map(|f| {
                let (code, value) = f.split_first()?;
                Some((*code, String::from_utf8_lossy(value).into_owned()))
            })
            .collect()
    }

    /// For `E`/`N` messages, the SQLSTATE (`C` field).
    pub fn sqlstate(&self) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, v)| v)
    }

    /// For `E`/`N` messages, the message text (`M` field).
    pub fn message(&self) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(c, _)| *c == b'M')
            .map(|(_, v)| v)
    }
}

/// Reads one backend message (10 s timeout; bodies over 64 MiB are refused). Works on any
/// stream, e.g. a `TcpStream` or a TLS stream.
pub async fn read_backend_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> anyhow::Result<BackendMessage> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let tag = stream.read_u8().await.context("reading message type")?;
        let len = stream.read_i32().await.context("reading message length")?;
        if !(4..=64 << 20).contains(&len) {
            bail!("backend message {:?} has bad length {len}", tag as char);
        }
        let mut body = vec![0; usize::try_from(len - 4)?];
        stream
            .read_exact(&mut body)
            .await
            .context("reading message body")?;
        Ok(BackendMessage { tag, body })
    })
    .await
    .map_err(|_| anyhow!("no backend message within 10 s"))?
}

/// Reads a single byte (the answer to an SSLRequest or GSSENCRequest), 10 s timeout.
/// `Ok(None)` if the peer closed the connection.
pub async fn read_byte<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<Option<u8>> {
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut b))
        .await
        .map_err(|_| anyhow!("no byte within 10 s"))??;
    Ok((n == 1).then_some(b[0]))
}

/// Reads until the peer closes the connection (10 s timeout) and returns what it sent; for
/// asserting that the gateway hangs up on bad input.
pub async fn read_to_close<S: AsyncRead + Unpin>(stream: &mut S) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .map_err(|_| anyhow!("peer did not close the connection within 10 s"))?
        .context("reading until close")?;
    Ok(buf)
}
