//! The `gatehouse` command line: the server, and the admin and auditor commands.

use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod agents;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::export::{self, Format};
use crate::audit::verify::{ChainVerifier, VerifyError};
use crate::audit::GENESIS_HASH;
use crate::config::{parse_duration, Config, ProcessEnv, Secrets};
use crate::keys::{PublicKey, SigningKey};
use crate::store::Store;

/// Exit code for configuration errors (EX_CONFIG-style, as linkerd does).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: an access gateway for infrastructure",
    long_about = "Gatehouse: an access gateway for infrastructure.\n\n\
        Engineers connect with their own clients (psql today) through the gateway; it checks who \
        they are (a gateway token as the password), asks the Cedar policies whether they may, \
        connects upstream with a credential they never see, and writes every decision and \
        statement to a hash-chained, signed audit log that auditors can export and verify offline."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Write {"postgres": "ip:port", "pid": N} here once every listener is bound.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Issue gateway tokens (for service accounts, and for people until single sign-on).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate and test the Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Export and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Users the gateway has seen; disable a leaver (their live sessions are cut within a
    /// second and every new connection is refused) or enable them again.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Live sessions (who, what, since when); `sessions kill ID` ends one within a second.
    Sessions(SessionsArgs),
    /// Remote agents: `agents enroll NAME` prints a one-time join token for a new agent;
    /// `agents` lists them (resources, version, last heartbeat); `agents revoke NAME` cuts one
    /// off.
    Agents(agents::AgentsArgs),
    /// Rotate the key that signs gateway credentials (the old key keeps verifying until every
    /// credential it signed has expired; a running gateway picks the new key up within seconds).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign in through your company's identity provider and keep a short-lived gateway
    /// credential. Opens a browser (or prints the URL); `--device` for machines without one.
    Login {
        /// The gateway's HTTPS URL, e.g. https://gw.example.com:8443 (remembered after login;
        /// also from GATEHOUSE_GATEWAY).
        #[arg(long)]
        gateway: Option<String>,
        /// Sign in on another device: prints a URL and a code to enter there.
        #[arg(long)]
        device: bool,
        /// Only print the sign-in URL; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
        /// A PEM CA certificate to trust for the gateway (self-signed or private CA); remembered,
        /// and used by `gatehouse psql` to verify the PostgreSQL front door too.
        #[arg(long, env = "GATEHOUSE_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Who you are signed in as, your groups, MFA, and when the credential expires.
    Status,
    /// Revoke your credential at the gateway and forget it.
    Logout,
    /// Run psql against a resource through the gateway with your credential (no password to
    /// copy). Extra arguments go to psql: `gatehouse psql orders-db -- -c 'select 1'`.
    Psql {
        /// The resource name (`gatehouse resources` lists them).
        resource: String,
        /// The role to connect as (default `read`); other roles need a grant.
        #[arg(long)]
        role: Option<String>,
        /// Arguments for psql.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Open a loopback port for a TCP resource (`kind = "tcp"`: Redis, an admin port, ...):
    /// each connection to it is carried through the gateway's tcp door with your credential.
    /// `gatehouse connect cache` then `redis-cli -p PORT`.
    Connect {
        /// The resource name.
        resource: String,
        /// The role to connect as (default `read`).
        #[arg(long)]
        role: Option<String>,
        /// The local port on 127.0.0.1 (default: a free one, printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// The gateway's tcp door, HOST:PORT (also from GATEHOUSE_TCP_DOOR).
        #[arg(long)]
        door: Option<String>,
        /// A PEM CA certificate for the gateway (default: the one saved by `gatehouse login`,
        /// else the system's roots).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// The user the credential names (default: the saved login's, or GATEHOUSE_TOKEN's
        /// subject).
        #[arg(long)]
        user: Option<String>,
        /// Serve one local connection, then exit (0 when admitted, 1 when refused).
        #[arg(long)]
        once: bool,
    },
    /// Print `export PG...` lines for a resource, for `eval "$(gatehouse env orders-db)"`.
    /// The output contains your credential: do not paste it anywhere.
    Env {
        resource: String,
        #[arg(long)]
        role: Option<String>,
    },
    /// What you can reach now, and what you could request (with how many approvals, for how
    /// long at most).
    Resources,
    /// Ask for time-boxed access to a role on a resource; someone else approves it.
    /// `--break-glass` takes it at once where policy allows, notifies, and leaves a review item.
    Request {
        resource: String,
        /// The role, e.g. `write`.
        #[arg(long)]
        role: String,
        /// How long, e.g. `2h` (policy sets the maximum).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why; a ticket id such as INC-4211 is recognised and recorded.
        #[arg(long)]
        reason: String,
        #[arg(long)]
        break_glass: bool,
    },
    /// Your requests and their state; `--pending` lists every request waiting for approval.
    Requests {
        #[arg(long)]
        pending: bool,
    },
    /// Approve a request (never your own; one person counts once).
    Approve {
        id: i64,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Deny a request.
    Deny {
        id: i64,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Grant someone time-boxed access directly (audited like an approval).
    Grant {
        user: String,
        resource: String,
        #[arg(long)]
        role: String,
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[arg(long)]
        reason: String,
    },
    /// Active grants (`--all`: also ended ones).
    Grants {
        #[arg(long)]
        all: bool,
    },
    /// Revoke a grant: its live sessions end within a second.
    Revoke {
        grant: i64,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Open review items (break-glass grants); `review ID --comment ...` signs one off.
    Review {
        id: Option<i64>,
        #[arg(long, default_value = "")]
        comment: String,
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Retire the current credential signing key and create a new one. Audited.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
}

#[derive(Args)]
struct SessionsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also list ended sessions (newest first).
    #[arg(long)]
    all: bool,
    #[command(subcommand)]
    action: Option<SessionsAction>,
}

#[derive(Subcommand)]
enum SessionsAction {
    /// End a live session: the client gets `57P01` with the reason. Audited.
    Kill {
        /// The session id (from `gatehouse sessions`).
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
        /// Who is doing this (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Every user: first seen, last login, groups at last login, disabled or not.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// One user.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// Disable a user: refused at every front door, live sessions cut. Audited.
    Disable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        /// Why (recorded in the audit log), e.g. "left the company 2026-11-30".
        #[arg(long, default_value = "")]
        reason: String,
        /// Who is doing this (recorded in the audit log).
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
    /// Enable a disabled user again. Audited.
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
        #[arg(long, env = "USER", default_value = "unknown")]
        by: String,
    },
}

#[derive(Args)]
pub(crate) struct ConfigArg {
    /// The gateway config file.
    #[arg(
        long,
        env = "GATEHOUSE_CONFIG",
        default_value = "gatehouse.toml",
        global = true
    )]
    pub(crate) config: PathBuf,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a token; prints it on stdout. Use it as the password: PGPASSWORD=$(gatehouse token issue ...)
    Issue {
        #[command(flatten)]
        config: ConfigArg,
        /// The user the token names (the PostgreSQL `user` must match it).
        #[arg(long)]
        user: String,
        /// Comma-separated groups, as policies see them.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 8h (at most tokens.max_ttl).
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse the policies, check annotations and validate them against the schema.
    Check(PolicyDir),
    /// Run the policy test cases in <dir>/tests/*.toml.
    Test(PolicyDir),
}

#[derive(Args)]
struct PolicyDir {
    /// The policy directory (default: policies.dir of the config).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The gateway config file, used when --dir is not given.
    #[arg(long, env = "GATEHOUSE_CONFIG", default_value = "gatehouse.toml")]
    config: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Jsonl,
    Csv,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Write events to stdout or a file. JSONL exports end with a signed manifest and can be
    /// verified offline with `gatehouse audit verify --file`.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: FormatArg,
        /// Only events at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Verify the log in the store (default), or an exported JSONL file with only the public key.
    /// Exits 0 when intact; otherwise 1, naming the first bad sequence number.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// An exported JSONL file to verify offline.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The audit public key (base64, or @path to a file holding it). Required with --file
        /// unless the config's state directory is at hand.
        #[arg(long)]
        public_key: Option<String>,
        /// Verify the store without the anchor file (`state_dir/audit-anchor.json`, the newest
        /// checkpoint kept outside the store). Without it, a log cut back together with its
        /// newest checkpoints cannot be told from an intact one; the report says so.
        #[arg(long)]
        without_anchor: bool,
    },
    /// Print the audit public key (base64) that verifies checkpoints and exports.
    PublicKey {
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&anyhow::anyhow!(e).context("starting the async runtime"));
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

fn report(e: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {e:#}");
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    load_config_with(path, Secrets::Skip)
}

fn load_config_with(path: &Path, secrets: Secrets) -> Result<Config, ExitCode> {
    Config::load(path, &ProcessEnv, secrets).map_err(|e| {
        report(&anyhow::anyhow!(e));
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_tracing(json: bool, default: &str) {
    use std::io::IsTerminal;
    gatehouse_agent::logging::init(json, default, std::io::stderr().is_terminal());
}

async fn dispatch(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve { config, ready_file } => {
            let config = match load_config_with(&config.config, Secrets::Load) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_tracing(config.log_json, "info");
            crate::server::run(config, ready_file.as_deref()).await
        }
        Command::Token(TokenCommand::Issue {
            config,
            user,
            groups,
            ttl,
        }) => {
            init_tracing(false, "warn");
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            token_issue(&config, &user, &groups, &ttl)
        }
        Command::Policy(cmd) => {
            init_tracing(false, "warn");
            let (dir, test) = match cmd {
                PolicyCommand::Check(d) => (d, false),
                PolicyCommand::Test(d) => (d, true),
            };
            let dir = match dir.dir {
                Some(d) => d,
                None => match load_config(&dir.config) {
                    Ok(c) => c.policies_dir,
                    Err(code) => return code,
                },
            };
            match policy(&dir, test) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE,
                Err(e) => {
                    report(&e);
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
        }
        Command::Users(cmd) => {
            init_tracing(false, "warn");
            users(cmd).await
        }
        Command::Agents(args) => {
            init_tracing(false, "warn");
            agents::run(args).await
        }
        Command::Sessions(args) => {
            init_tracing(false, "warn");
            match sessions(args).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Audit(cmd) => {
            init_tracing(false, "warn");
            match audit(cmd).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Keys(KeysCommand::Rotate { config, by }) => {
            init_tracing(false, "warn");
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            keys_rotate(&config, &by).await
        }
        Command::Login {
            gateway,
            device,
            no_browser,
            ca_file,
        } => {
            init_tracing(false, "warn");
            crate::client::login(gateway, ca_file, device, !no_browser).await
        }
        Command::Status => {
            init_tracing(false, "warn");
            crate::client::status().await
        }
        Command::Logout => {
            init_tracing(false, "warn");
            crate::client::logout().await
        }
        Command::Psql {
            resource,
            role,
            args,
        } => {
            init_tracing(false, "warn");
            let target = with_role(&resource, role.as_deref());
            match crate::client::psql(&target, &args) {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Connect {
            resource,
            role,
            port,
            door,
            ca_file,
            user,
            once,
        } => {
            init_tracing(false, "warn");
            let args = crate::client::connect::ConnectArgs {
                resource,
                role,
                port,
                door,
                ca_file,
                user,
                once,
            };
            match crate::client::connect::run(args).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Env { resource, role } => {
            init_tracing(false, "warn");
            crate::client::env(&with_role(&resource, role.as_deref()))
        }
        Command::Resources => {
            init_tracing(false, "warn");
            crate::client::resources().await
        }
        Command::Request {
            resource,
            role,
            duration,
            reason,
            break_glass,
        } => {
            init_tracing(false, "warn");
            crate::client::request(&resource, &role, &duration, &reason, break_glass).await
        }
        Command::Requests { pending } => {
            init_tracing(false, "warn");
            crate::client::requests(pending).await
        }
        Command::Approve { id, comment } => {
            init_tracing(false, "warn");
            crate::client::decide(id, true, &comment).await
        }
        Command::Deny { id, comment } => {
            init_tracing(false, "warn");
            crate::client::decide(id, false, &comment).await
        }
        Command::Grant {
            user,
            resource,
            role,
            duration,
            reason,
        } => {
            init_tracing(false, "warn");
            crate::client::grant(&user, &resource, &role, &duration, &reason).await
        }
        Command::Grants { all } => {
            init_tracing(false, "warn");
            crate::client::grants(all).await
        }
        Command::Revoke { grant, reason } => {
            init_tracing(false, "warn");
            crate::client::revoke(grant, &reason).await
        }
        Command::Review { id, comment, all } => {
            init_tracing(false, "warn");
            crate::client::review(id, &comment, all).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

fn token_issue(config: &Config, user: &str, groups: &[String], ttl: &str) -> anyhow::Result<()> {
    if user.is_empty() || user.len() > 128 || user.contains(char::is_control) {
        bail!("--user must be 1-128 printable characters");
    }
    let ttl = parse_duration(ttl)
        .with_context(|| format!("--ttl `{ttl}` is not a duration like 15m, 1h, 8h"))?;
    let authority = crate::server::token_authority(config)?;
    let groups: Vec<String> = groups.iter().filter(|g| !g.is_empty()).cloned().collect();
    let (token, _) = authority.issue(user, &groups, ttl)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")?;
    Ok(())
}

/// Returns Ok(false) when a policy test case fails.
fn policy(dir: &Path, test: bool) -> anyhow::Result<bool> {
    let engine = crate::authz::load_policies(dir)?;
    let mut out = std::io::stdout().lock();
    if !test {
        for p in engine.policies() {
            writeln!(
                out,
                "ok  {:<40} {:<7} controls {}  ({})",
                p.id,
                p.effect,
                p.controls.join(" "),
                p.file
            )?;
        }
        writeln!(
            out,
            "{} policies valid against the schema",
            engine.policies().len()
        )?;
        return Ok(true);
    }
    let cases = crate::authz::load_cases(dir)?;
    if cases.is_empty() {
        bail!("no policy test cases in `{}`", dir.join("tests").display());
    }
    let outcomes = gatehouse_policies::run_cases(&engine, &cases);
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    for o in &outcomes {
        writeln!(
            out,
            "{}  {}  {}",
            if o.passed { "ok  " } else { "FAIL" },
            o.name,
            o.detail
        )?;
    }
    writeln!(out, "{} passed, {} failed", outcomes.len() - failed, failed)?;
    Ok(failed == 0)
}

fn ts_arg(flag: &str, v: Option<&str>) -> anyhow::Result<Option<String>> {
    v.map(|s| {
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .with_context(|| {
                format!("{flag} `{s}` is not an RFC 3339 time like 2026-11-01T00:00:00Z")
            })?;
        Ok(crate::audit::event::format_ts(t))
    })
    .transpose()
}

async fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Export {
            config,
            format,
            from,
            to,
            output,
        } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let from = ts_arg("--from", from.as_deref())?;
            let to = ts_arg("--to", to.as_deref())?;
            let key = SigningKey::load(&crate::server::audit_key_path(&config))
                .context("loading the audit signing key")?;
            let store = Store::open(&config.store_url).await?;
            let format = match format {
                FormatArg::Jsonl => Format::Jsonl,
                FormatArg::Csv => Format::Csv,
            };
            match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating `{}`", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = export::export(
                        &store,
                        &key,
                        format,
                        from.as_deref(),
                        to.as_deref(),
                        &mut w,
                    )
                    .await?;
                    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "exported {n} events to {}",
                        path.display()
                    );
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    export::export(&store, &key, format, from.as_deref(), to.as_deref(), &mut w)
                        .await?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify {
            config,
            file,
            public_key,
            without_anchor,
        } => {
            let key = match public_key {
                Some(k) => {
                    let text = match k.strip_prefix('@') {
                        Some(path) => std::fs::read_to_string(path)
                            .with_context(|| format!("reading `{path}`"))?,
                        None => k,
                    };
                    PublicKey::from_base64(&text)?
                }
                None => {
                    let config = match load_config(&config.config) {
                        Ok(c) => c,
                        Err(code) => return Ok(code),
                    };
                    SigningKey::load(&crate::server::audit_key_path(&config))
                        .context("loading the audit key (or pass --public-key)")?
                        .public_key()
                }
            };
            let result = match &file {
                Some(path) => {
                    let f = std::fs::File::open(path)
                        .with_context(|| format!("opening `{}`", path.display()))?;
                    export::verify_export(BufReader::new(f), &key)
                }
                None => {
                    let config = match load_config(&config.config) {
                        Ok(c) => c,
                        Err(code) => return Ok(code),
                    };
                    let store = Store::open(&config.store_url).await?;
                    let anchor = crate::server::audit_anchor_path(&config);
                    let anchored = if without_anchor {
                        Anchor::Skipped
                    } else {
                        Anchor::Required(&anchor)
                    };
                    verify_store_anchored(&store, &key, anchored).await?
                }
            };
            let mut out = std::io::stdout().lock();
            if without_anchor && file.is_none() {
                writeln!(
                    out,
                    "not checked: the anchor file (--without-anchor); a log cut back together with its newest checkpoints would pass"
                )?;
            }
            match result {
                Ok(report) => {
                    writeln!(out, "audit log intact: {report}")?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    writeln!(
                        out,
                        "audit log verification FAILED at seq {}: {}",
                        e.seq, e.problem
                    )?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::PublicKey { config } => {
            let config = match load_config(&config.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let key = SigningKey::load_or_create(&crate::server::audit_key_path(&config))?;
            writeln!(std::io::stdout().lock(), "{}", key.public_key().to_base64())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn users(cmd: UsersCommand) -> anyhow::Result<()> {
    let path = match &cmd {
        UsersCommand::List { config } | UsersCommand::Show { config, .. } => &config.config,
        UsersCommand::Disable { config, .. } | UsersCommand::Enable { config, .. } => {
            &config.config
        }
    };
    let config = Config::load(path, &ProcessEnv, Secrets::Skip)?;
    let store = Store::open(&config.store_url).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        UsersCommand::List { .. } => {
            writeln!(
                out,
                "{:<24} {:<28} {:<28} {:<10} groups",
                "user", "first seen", "last login", "status"
            )?;
            for u in store.users().await? {
                let status = if u.disabled_at.is_some() {
                    "disabled"
                } else {
                    "active"
                };
                writeln!(
                    out,
                    "{:<24} {:<28} {:<28} {:<10} {}",
                    u.name,
                    u.first_seen,
                    u.last_login,
                    status,
                    u.last_groups.join(",")
                )?;
            }
        }
        UsersCommand::Show { name, .. } => {
            let u = store
                .user(&name)
                .await?
                .with_context(|| format!("no user `{name}` has been seen"))?;
            writeln!(out, "user        {}", u.name)?;
            writeln!(out, "first seen  {}", u.first_seen)?;
            writeln!(out, "last login  {}", u.last_login)?;
            writeln!(out, "groups      {}", u.last_groups.join(", "))?;
            match &u.disabled_at {
                Some(at) => writeln!(
                    out,
                    "status      disabled at {at} by {} ({})",
                    u.disabled_by.as_deref().unwrap_or("?"),
                    u.disabled_reason.as_deref().unwrap_or("")
                )?,
                None => writeln!(out, "status      active")?,
            }
        }
        UsersCommand::Disable {
            name, reason, by, ..
        } => {
            if reason.len() > 1024 {
                bail!("--reason is limited to 1024 bytes");
            }
            let ts = crate::audit::event::now_ts();
            let changed = store.disable_user(&name, &by, &reason, &ts).await?;
            if changed {
                let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::UserDisabled);
                e.actor = by;
                e.resource = name.clone();
                e.action = "disable".into();
                e.reason = reason;
                record_from_cli(&config, &store, e).await?;
                writeln!(out, "user {name} disabled: new connections are refused and live sessions are cut within a second")?;
            } else {
                writeln!(out, "user {name} was already disabled")?;
            }
        }
        UsersCommand::Enable { name, by, .. } => {
            if store.enable_user(&name).await? {
                let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::UserEnabled);
                e.actor = by;
                e.resource = name.clone();
                e.action = "enable".into();
                record_from_cli(&config, &store, e).await?;
                writeln!(out, "user {name} enabled")?;
            } else {
                writeln!(out, "user {name} was not disabled")?;
            }
        }
    }
    Ok(())
}

async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config, &ProcessEnv, Secrets::Skip)?;
    let store = Store::open(&config.store_url).await?;
    let mut out = std::io::stdout().lock();
    match args.action {
        None => {
            writeln!(
                out,
                "{:<32} {:<16} {:<16} {:<6} {:<6} {:<28} {:<22} status",
                "session", "user", "resource", "role", "grant", "started", "client"
            )?;
            for s in store.sessions(args.all, 1000).await? {
                let status = match (&s.ended, &s.kill_requested_by) {
                    (Some(_), _) => format!("ended: {}", s.end_reason.as_deref().unwrap_or("")),
                    (None, Some(by)) => format!("kill requested by {by}"),
                    (None, None) => "live".to_string(),
                };
                writeln!(
                    out,
                    "{:<32} {:<16} {:<16} {:<6} {:<6} {:<28} {:<22} {status}",
                    s.id,
                    s.user,
                    s.resource,
                    s.role.as_deref().unwrap_or("read"),
                    s.grant_id
                        .map(|g| g.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.started,
                    s.client_addr
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(SessionsAction::Kill { id, reason, by }) => {
            if reason.len() > 1024 {
                bail!("--reason is limited to 1024 bytes");
            }
            let ts = crate::audit::event::now_ts();
            let Some((user, resource)) = store.request_kill(&id, &by, &reason, &ts).await? else {
                writeln!(out, "no live session `{id}`")?;
                return Ok(ExitCode::FAILURE);
            };
            let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::SessionKillRequested);
            e.actor = by;
            e.resource = resource;
            e.action = "kill".into();
            e.session_id = id.clone();
            e.reason = reason;
            e.detail = serde_json::json!({ "user": user });
            record_from_cli(&config, &store, e).await?;
            writeln!(out, "session {id} of {user} will end within a second")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `resource` or `resource:role`: the database name the PostgreSQL front door reads.
fn with_role(resource: &str, role: Option<&str>) -> String {
    match role {
        Some(r) if r != crate::config::DEFAULT_ROLE => format!("{resource}:{r}"),
        _ => resource.to_string(),
    }
}

async fn keys_rotate(config: &Config, by: &str) -> anyhow::Result<()> {
    let keys_dir = config.state_dir.join("keys");
    let (old, new) = crate::authn::keyring::Keyring::rotate(&keys_dir)
        .with_context(|| format!("rotating the token key in {}", keys_dir.display()))?;
    let store = Store::open(&config.store_url).await?;
    let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::KeysRotated);
    e.actor = by.to_string();
    e.action = "rotate".into();
    e.detail = serde_json::json!({ "retired_key_id": old, "key_id": new });
    record_from_cli(config, &store, e).await?;
    println!("rotated the credential signing key: {old} -> {new} ({old} keeps verifying until its credentials expire)");
    Ok(())
}

/// Appends one event from a CLI process, durably. The writer shares the store with the running
/// gateway; the chain stays linear because every commit reads the head under the store's lock.
pub(crate) async fn record_from_cli(
    config: &Config,
    store: &Store,
    e: crate::audit::NewEvent,
) -> anyhow::Result<u64> {
    let key = std::sync::Arc::new(
        SigningKey::load(&crate::server::audit_key_path(config))
            .context("loading the audit signing key")?,
    );
    let (log, writer) = crate::audit::AuditLog::spawn_anchored(
        store.clone(),
        key,
        config.audit.checkpoint_every,
        16,
        Some(crate::server::audit_anchor_path(config)),
    );
    let seq = log.record_durable(e).await?;
    drop(log);
    let _ = writer.await;
    Ok(seq)
}

/// Verifies the whole log in the store, page by page.
pub async fn verify_store(
    store: &Store,
    key: &PublicKey,
) -> anyhow::Result<Result<crate::audit::verify::VerifyReport, VerifyError>> {
    verify_store_anchored(store, key, Anchor::Skipped).await
}

/// Whether `audit verify` checks the log against the anchor file.
#[derive(Debug, Clone, Copy)]
pub enum Anchor<'a> {
    /// The file must be there (once the store holds a checkpoint) and the log must reach it.
    Required(&'a Path),
    /// Not checked (the caller says so to the person reading the result).
    Skipped,
}

/// Verifies the whole log in the store and that it still reaches the checkpoint the anchor
/// file holds (a log cut back together with its newest checkpoints fails). A missing anchor
/// fails verification once the store holds any checkpoint (the gateway writes the anchor with
/// each one); an unreadable or malformed one always does.
pub async fn verify_store_anchored(
    store: &Store,
    key: &PublicKey,
    anchor: Anchor<'_>,
) -> anyhow::Result<Result<crate::audit::verify::VerifyReport, VerifyError>> {
    let mut checkpoints = store.audit_checkpoints().await?;
    if let Anchor::Required(path) = anchor {
        match std::fs::read_to_string(path) {
            Ok(text) => match serde_json::from_str::<crate::audit::Checkpoint>(&text) {
                Ok(cp) => checkpoints.push(cp),
                Err(e) => {
                    return Ok(Err(VerifyError {
                        seq: 0,
                        problem: format!(
                            "the audit anchor file `{}` is not a checkpoint: {e}",
                            path.display()
                        ),
                    }));
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && checkpoints.is_empty() => {}
            Err(e) => {
                return Ok(Err(VerifyError {
                    seq: 0,
                    problem: format!(
                        "cannot read the audit anchor file `{}` ({e}): without it a log cut back together with its newest checkpoints cannot be told from an intact one; restore it, or verify with --without-anchor",
                        path.display()
                    ),
                }));
            }
        }
    }
    let mut chain = match ChainVerifier::new(key, checkpoints, 1, GENESIS_HASH.to_string()) {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let mut after = 0;
    loop {
        let page = store.audit_events(after, 5000, None, None).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for e in &page {
            if let Err(err) = chain.push(e) {
                return Ok(Err(err));
            }
        }
    }
    Ok(chain.finish())
}
