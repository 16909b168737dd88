//! The `gatehouse` command line: the server, and the admin and auditor commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod agents;
mod audit;
mod evidence;
mod keys;
mod operator;
pub(crate) use self::operator::local_hostname;
mod policy;
mod recordings;
mod reviews;
mod sessions;
mod tokens;
mod users;

use clap::{Args, Parser, Subcommand};

use self::audit::AuditCommand;
use self::evidence::EvidenceCommand;
use self::keys::KeysCommand;
use self::policy::PolicyCommand;
use self::reviews::ReviewsCommand;
use self::sessions::SessionsArgs;
use self::tokens::TokenCommand;
use self::users::UsersCommand;
use crate::config::{Config, ProcessEnv, Secrets};

pub(crate) use self::audit::record_from_cli;
pub use self::audit::{verify_store, verify_store_anchored, Anchor};

/// Exit code for configuration and usage errors (EX_CONFIG-style, as linkerd does).
const EXIT_CONFIG: u8 = 64;
/// Exit code for an input file (an export, a key file) that cannot be read (EX_NOINPUT).
const EXIT_NOINPUT: u8 = 66;
/// Exit code for a store that cannot be reached or read (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

/// A failure that ends a command with its own exit code rather than 1 (which `audit verify`
/// keeps for a log that fails verification). The message is the whole story: no `source()`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Arguments that are wrong together, or missing, where clap cannot tell (exit 64).
    #[error("{0}")]
    Usage(String),
    /// An input file cannot be read (exit 66).
    #[error("{0}")]
    NoInput(String),
    /// The store cannot be reached or read (exit 69).
    #[error("{0}")]
    Unavailable(String),
}

impl CliError {
    fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_CONFIG,
            CliError::NoInput(_) => EXIT_NOINPUT,
            CliError::Unavailable(_) => EXIT_UNAVAILABLE,
        }
    }
}

/// The exit code for a failed command: a [`CliError`]'s own; 64 for a config or policy error
/// anywhere in the chain (config errors exit 64, whichever command met them); else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CliError>() {
            return c.code();
        }
        if cause.is::<crate::config::ConfigError>() || cause.is::<crate::authz::AuthzError>() {
            return EXIT_CONFIG;
        }
    }
    1
}

/// The environment the client commands read, at the end of the top-level help.
const ENV_HELP: &str = "\
Environment:
  GATEHOUSE_TOKEN    an issued token (`gatehouse token issue`) that every client command
                     uses instead of the saved login, saving nothing: service accounts, CI
                     (`gatehouse login --token-file FILE` saves one instead)
  GATEHOUSE_GATEWAY  the gateway's https:// URL, for `login` and with GATEHOUSE_TOKEN
                     (default: the saved login's)
  GATEHOUSE_CA_FILE  a PEM CA certificate to trust for the gateway, for `login` and with
                     GATEHOUSE_TOKEN (default: the saved login's)
  GATEHOUSE_HOME     where the saved login (credentials.json) is kept
  GATEHOUSE_CONFIG   the gateway's config file, for `serve` and the admin commands";

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: an access gateway for infrastructure",
    long_about = "Gatehouse: an access gateway for infrastructure.\n\n\
        Engineers connect with their own clients (psql today) through the gateway; it checks who \
        they are (a gateway token as the password), asks the Cedar policies whether they may, \
        connects upstream with a credential they never see, and writes every decision and \
        statement to a hash-chained, signed audit log that auditors can export and verify offline.",
    after_help = ENV_HELP
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
    /// Service-account tokens: `token issue` signs one (recorded in the store and the audit
    /// log), `token list` shows them, `token revoke ID` stops one at once (its live sessions are
    /// cut within a second).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Validate and test the Cedar policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Export and verify the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Access review campaigns: `reviews start --scope resource=NAME --reviewers group:NAME`
    /// freezes who can reach a resource and assigns each item to a reviewer (never its
    /// subject); `reviews items` and `reviews decide ID --keep|--revoke` are the reviewer's;
    /// `reviews status` shows progress and what is overdue.
    #[command(subcommand)]
    Reviews(ReviewsCommand),
    /// The auditor's evidence: `evidence bundle` (a signed bundle for a period: export,
    /// report per Annex A control, registers, SoA), `evidence verify DIR` (offline, with the
    /// public key), `evidence soa` (the Statement of Applicability draft).
    #[command(subcommand)]
    Evidence(EvidenceCommand),
    /// Users the gateway has seen; disable a leaver (their live sessions are cut within a
    /// second and every new connection is refused) or enable them again.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Live sessions (who, what, since when); `sessions kill ID` ends one within a second.
    Sessions(SessionsArgs),
    /// Recorded sessions (SSH): list them (`--user`, `--resource`, `--from`, `--to`, and
    /// `--grep TEXT` to search what they showed and ran); `recordings export SESSION --format
    /// asciicast` for the asciinema player. Reads the store and the recordings directory where
    /// the gateway runs; each chunk is checked against its audit event first, and each read is
    /// recorded (audit.read).
    Recordings(recordings::RecordingsArgs),
    /// Play a recorded session in the terminal as it happened (`--speed N`, `--skip-idle`).
    /// What the session's client was shown goes to stdout, its stderr to stderr.
    Replay(recordings::ReplayArgs),
    /// Remote agents: `agents enroll NAME` prints a one-time join token for a new agent;
    /// `agents` lists them (resources, version, last heartbeat); `agents revoke NAME` cuts one
    /// off.
    Agents(agents::AgentsArgs),
    /// Rotate the key that signs gateway credentials (the old key keeps verifying until every
    /// credential it signed has expired; a running gateway picks the new key up within seconds).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Sign in through your company's identity provider and keep a short-lived gateway
    /// credential. Opens a browser (or prints the URL); `--device` for machines without one;
    /// `--token-file` to keep an issued token instead (service accounts, CI, the quickstart).
    Login {
        /// The gateway's HTTPS URL, e.g. https://gw.example.com:8443 (remembered after login;
        /// also from GATEHOUSE_GATEWAY).
        #[arg(long)]
        gateway: Option<String>,
        /// Sign in on another device: prints a URL and a code to enter there.
        #[arg(long, conflicts_with = "token_file")]
        device: bool,
        /// Keep an issued token (from `gatehouse token issue`; `-` reads it from stdin) as the
        /// saved credential instead of signing in: for service accounts, CI and the
        /// quickstart, and for gateways without single sign-on. The gateway must accept it
        /// (`/api/v1/whoami`); nothing is saved otherwise. To use a token without saving it,
        /// set GATEHOUSE_TOKEN instead.
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Only print the sign-in URL; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
        /// A PEM CA certificate to trust for the gateway (self-signed or private CA); remembered,
        /// and used by `gatehouse psql` to verify the PostgreSQL front door too.
        #[arg(long, env = "GATEHOUSE_CA_FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Who you are signed in as, your groups, MFA, and when the credential expires (and
    /// whether it is the saved login or GATEHOUSE_TOKEN).
    Status,
    /// Revoke your login at the gateway and forget it (an issued token saved by `login
    /// --token-file` is only forgotten; an admin revokes it). Refused while GATEHOUSE_TOKEN
    /// is set.
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
    /// Get an SSH certificate for your credential (valid as long as it, at most 12 h): writes
    /// a key, the certificate and the gateway's host key under $GATEHOUSE_HOME/ssh/, and prints
    /// the `Host` block for ~/.ssh/config. Then plain `ssh web-1.gh` (or `ssh root%web-1@...`)
    /// goes through the gateway's SSH door.
    SshCert,
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
    /// Your requests and their state; `--pending` lists the requests waiting for approval that
    /// you may decide on (and your own).
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

#[derive(Args)]
pub(crate) struct ConfigArg {
    /// The gateway config file. Looked for in this order: --config FILE, then
    /// $GATEHOUSE_CONFIG, then ./gatehouse.toml, then /etc/gatehouse/gatehouse.toml.
    #[arg(
        long,
        value_name = "FILE",
        env = "GATEHOUSE_CONFIG",
        default_value_os_t = crate::config::default_config_path(),
        hide_default_value = true,
        global = true
    )]
    pub(crate) config: PathBuf,
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
    let _ = writeln!(stderr, "error: {}", error_text(e));
}

/// The error and its causes, `: `-separated as `{:#}` prints them, leaving out a cause whose
/// text the one printed before already holds: many errors (some in dependencies, such as
/// sqlx's) put their cause in their message and also return it as `source()`.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || (!last.is_empty() && last.contains(&text)) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
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
        Command::Token(cmd) => {
            init_tracing(false, "warn");
            match tokens::run(cmd).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Policy(cmd) => {
            init_tracing(false, "warn");
            let (dir, test) = match cmd {
                PolicyCommand::Check(d) => (d, false),
                PolicyCommand::Test(d) => (d, true),
                PolicyCommand::Reload(args) => match policy::reload(args).await {
                    Ok(code) => return code,
                    Err(e) => {
                        return ExitCode::from({
                            report(&e);
                            exit_code(&e)
                        })
                    }
                },
            };
            let dir = match dir.dir {
                Some(d) => d,
                None => match load_config(&dir.config.config) {
                    Ok(c) => c.policies_dir,
                    Err(code) => return code,
                },
            };
            match policy::run(&dir, test) {
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
            users::run(cmd).await
        }
        Command::Agents(args) => {
            init_tracing(false, "warn");
            agents::run(args).await
        }
        Command::Sessions(args) => {
            init_tracing(false, "warn");
            match sessions::run(args).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Recordings(args) => {
            init_tracing(false, "warn");
            match recordings::run(args).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Replay(args) => {
            init_tracing(false, "warn");
            match recordings::replay(args).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Audit(cmd) => {
            init_tracing(false, "warn");
            match audit::run(cmd).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Reviews(cmd) => {
            init_tracing(false, "warn");
            match reviews::run(cmd).await {
                Ok(code) => return code,
                Err(e) => Err(e),
            }
        }
        Command::Evidence(cmd) => {
            init_tracing(false, "warn");
            match evidence::run(cmd).await {
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
            keys::rotate(&config, by.as_deref()).await
        }
        Command::Keys(KeysCommand::SshUpstreamCa { config }) => {
            init_tracing(false, "warn");
            let config = match load_config_with(&config.config, Secrets::Skip) {
                Ok(c) => c,
                Err(code) => return code,
            };
            keys::ssh_upstream_ca(&config).map(|line| {
                let _ = writeln!(std::io::stdout(), "{line}");
            })
        }
        Command::Login {
            gateway,
            device,
            token_file,
            no_browser,
            ca_file,
        } => {
            init_tracing(false, "warn");
            crate::client::login(gateway, ca_file, device, !no_browser, token_file).await
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
            match crate::client::psql(&target, &args).await {
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
        Command::SshCert => {
            init_tracing(false, "warn");
            match crate::client::ssh::ssh_cert().await {
                Ok(w) => {
                    let _ = writeln!(
                        std::io::stdout(),
                        "{}",
                        crate::client::ssh::config_block(&w)
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Command::Env { resource, role } => {
            init_tracing(false, "warn");
            crate::client::env(&with_role(&resource, role.as_deref())).await
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
            ExitCode::from(exit_code(&e))
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn io_error() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the cause, once")
    }

    /// Every error of the gateway that names a cause prints it once, whether as `{}` or as
    /// the chain (`{:#}`, and [`error_text`], what `report` prints).
    #[test]
    fn no_error_prints_its_cause_twice() {
        let errors: Vec<anyhow::Error> = vec![
            crate::config::ConfigError::Read {
                path: "g.toml".into(),
                error: io_error(),
            }
            .into(),
            crate::keys::KeyError::Read {
                path: "k.pem".into(),
                error: io_error(),
            }
            .into(),
            crate::keys::KeyError::Write {
                path: "k.pem".into(),
                error: io_error(),
            }
            .into(),
            crate::authz::AuthzError::Read {
                path: "policies".into(),
                error: io_error(),
            }
            .into(),
            crate::tls::TlsError::Read {
                path: "tls.crt".into(),
                error: io_error(),
            }
            .into(),
            crate::agents::ca::CaError::Io {
                path: "ca.key".into(),
                error: io_error(),
            }
            .into(),
            crate::audit::export::ExportError::from(io_error()).into(),
            crate::store::StoreError::from(sqlx::Error::Io(io_error())).into(),
            crate::store::StoreError::Open {
                url: "sqlite:x".into(),
                error: sqlx::Error::Io(io_error()),
            }
            .into(),
            crate::tcp::LineError::from(io_error()).into(),
            anyhow::Error::from(crate::config::ConfigError::Read {
                path: "g.toml".into(),
                error: io_error(),
            })
            .context("loading the config"),
        ];
        for e in errors {
            let chain = format!("{e:#}");
            assert_eq!(chain.matches("the cause, once").count(), 1, "{chain}");
            let report = error_text(&e);
            assert_eq!(report.matches("the cause, once").count(), 1, "{report}");
        }
    }

    #[test]
    fn report_drops_a_cause_its_error_already_printed() {
        // A dependency's error that prints its cause and returns it (sqlx::Error::Io does).
        #[derive(Debug, thiserror::Error)]
        #[error("talking to the database: {0}")]
        struct Doubled(#[from] std::io::Error);
        let e = anyhow::Error::from(Doubled(io_error())).context("opening the store");
        assert_eq!(format!("{e:#}").matches("the cause, once").count(), 2);
        assert_eq!(
            error_text(&e),
            "opening the store: talking to the database: the cause, once"
        );
    }

    #[test]
    fn exit_codes_follow_the_error() {
        let config = anyhow::Error::from(crate::config::ConfigError::Invalid {
            key: "k".into(),
            message: "m".into(),
        })
        .context("reading the config");
        assert_eq!(exit_code(&config), EXIT_CONFIG);
        let policies = anyhow::Error::from(crate::authz::AuthzError::NoDirectory("p".into()))
            .context("loading policies");
        assert_eq!(exit_code(&policies), EXIT_CONFIG);
        assert_eq!(
            exit_code(&CliError::NoInput("x".into()).into()),
            EXIT_NOINPUT
        );
        assert_eq!(exit_code(&CliError::Usage("x".into()).into()), EXIT_CONFIG);
        assert_eq!(
            exit_code(&CliError::Unavailable("x".into()).into()),
            EXIT_UNAVAILABLE
        );
        assert_eq!(exit_code(&anyhow::anyhow!("anything else")), 1);
    }

    #[test]
    fn help_names_the_client_environment_and_token_file() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.render_long_help().to_string();
        for var in ["GATEHOUSE_TOKEN", "GATEHOUSE_GATEWAY", "GATEHOUSE_CA_FILE"] {
            assert!(help.contains(var), "{var} missing: {help}");
        }
        let login = cmd.find_subcommand_mut("login").unwrap();
        let help = login.render_long_help().to_string();
        assert!(
            help.contains("--token-file") && help.contains("service accounts"),
            "{help}"
        );
        let both = Cli::try_parse_from(["gatehouse", "login", "--device", "--token-file", "t"]);
        assert!(both.is_err(), "--device and --token-file conflict");
    }

    #[test]
    fn help_shows_where_the_config_is_looked_for() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let token = cmd.find_subcommand_mut("token").unwrap();
        let issue = token.find_subcommand_mut("issue").unwrap();
        let help = issue.render_long_help().to_string();
        assert!(
            help.contains(
                "--config FILE, then $GATEHOUSE_CONFIG, then ./gatehouse.toml, then /etc/gatehouse/gatehouse.toml"
            ),
            "{help}"
        );
    }
}
