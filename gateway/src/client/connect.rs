//! `gatehouse connect RESOURCE`: a loopback listener for a `kind = "tcp"` resource. Each
//! local connection is carried over TLS to the gateway's TCP front door ([`crate::tcp`]): the
//! hello with the engineer's credential, the gateway's answer, then the bytes both ways. Point
//! any client (`redis-cli -p PORT`, a browser, `ssh -p PORT`) at the printed port.
//!
//! The credential is `GATEHOUSE_TOKEN` when set (a token from `gatehouse token issue`; the
//! user is `--user` or the token's subject), else the saved login. The door is `--door`, else
//! `GATEHOUSE_TCP_DOOR`. The gateway's certificate is verified against `--ca-file`, else the
//! CA saved by `gatehouse login`, else the system's roots.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::authn::token::unix_now;
use crate::tcp::{read_line, Answer, Hello, LineError, VERSION};

/// How long the door has to accept TCP and finish TLS.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the gateway has to answer the hello (admission and the upstream's connect).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest answer line read.
const MAX_ANSWER: usize = 16 * 1024;

/// What `gatehouse connect` was asked.
#[derive(Debug, Clone)]
pub struct ConnectArgs {
    pub resource: String,
    pub role: Option<String>,
    /// The loopback port; 0 picks a free one.
    pub port: u16,
    pub door: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub user: Option<String>,
    /// Serve one local connection, then exit: 0 when it was admitted, 1 when refused.
    pub once: bool,
}

/// Everything each local connection needs.
struct Plan {
    resource: String,
    role: Option<String>,
    user: String,
    credential: String,
    door: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
}

/// How one local connection went.
enum Outcome {
    /// Admitted and relayed to its end.
    Relayed,
    /// The gateway refused it (the message is printed).
    Refused,
}

/// `gatehouse connect`.
pub async fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let plan = Arc::new(plan(&args)?);
    let listener = TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let local = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "listening on {local} for {}; Ctrl-C to stop",
            args.resource
        )?;
        out.flush()?;
    }
    if args.once {
        let (tcp, _) = listener.accept().await?;
        return Ok(match carry(tcp, &plan).await {
            Ok(Outcome::Relayed) => ExitCode::SUCCESS,
            Ok(Outcome::Refused) => ExitCode::from(1),
            Err(e) => {
                complain(&format!("{e:#}"));
                ExitCode::from(1)
            }
        });
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    complain(&format!("accept failed: {e}"));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let plan = plan.clone();
        tokio::spawn(async move {
            if let Err(e) = carry(tcp, &plan).await {
                complain(&format!("{e:#}"));
            }
        });
    }
}

fn complain(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "gatehouse: {message}");
}

/// Resolves the credential, user, door and TLS settings once, before listening.
fn plan(args: &ConnectArgs) -> anyhow::Result<Plan> {
    let saved = super::load().ok();
    let env_token = std::env::var("GATEHOUSE_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let (credential, user) = match (env_token, &saved) {
        (Some(token), _) => {
            let user = match &args.user {
                Some(u) => u.clone(),
                None => token_subject(&token).context(
                    "GATEHOUSE_TOKEN names no subject (`sub`); give --user with the user it was issued for",
                )?,
            };
            (token, user)
        }
        (None, Some(saved)) => {
            if saved.expires_at <= unix_now() {
                bail!(
                    "the credential of {} expired {}; run `gatehouse login`",
                    saved.user,
                    super::when(saved.expires_at)
                );
            }
            let user = args.user.clone().unwrap_or_else(|| saved.user.clone());
            (saved.credential.clone(), user)
        }
        (None, None) => {
            // The saved login's error says what to do.
            super::load()?;
            bail!("no credential: run `gatehouse login` or set GATEHOUSE_TOKEN");
        }
    };
    let door = args
        .door
        .clone()
        .or_else(|| {
            std::env::var("GATEHOUSE_TCP_DOOR")
                .ok()
                .filter(|d| !d.is_empty())
        })
        .context(
            "which door? give --door HOST:PORT (the gateway's `[tcp] listen`) or set GATEHOUSE_TCP_DOOR",
        )?;
    let server_name = door_server_name(&door)?;
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| saved.as_ref().and_then(|s| s.ca_file.clone()));
    let tls = gatehouse_agent::pg::SecuritySettings {
        tls: Some("verify-full"),
        ca_file: ca_file.clone(),
        auth_methods: None,
    }
    .build()
    .map_err(|e| match &ca_file {
        Some(f) => anyhow::anyhow!("cannot use the CA file {}: {e}", f.display()),
        None => anyhow::anyhow!("cannot verify the gateway's certificate: {e}; give --ca-file"),
    })?;
    let gatehouse_agent::pg::UpstreamTls::VerifyFull(config) = tls.tls else {
        bail!("cannot set up TLS verification for the gateway");
    };
    Ok(Plan {
        resource: args.resource.clone(),
        role: args.role.clone(),
        user,
        credential,
        door,
        server_name,
        tls: TlsConnector::from(config),
    })
}

/// The `sub` of a JWT, read without verifying it (the gateway verifies; this only names the
/// user the hello claims to be).
fn token_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = B64URL.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("sub")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(String::from)
}

/// The host of `host:port` as the name the gateway's certificate must carry.
fn door_server_name(door: &str) -> anyhow::Result<ServerName<'static>> {
    let (host, port) = door
        .rsplit_once(':')
        .with_context(|| format!("--door `{door}` must be host:port"))?;
    if port.parse::<u16>().is_err() {
        bail!("--door `{door}` must be host:port");
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| anyhow::anyhow!("--door `{door}`: `{host}` is not a host name or address"))
}

/// Carries one local connection through the door.
async fn carry(local: TcpStream, plan: &Plan) -> anyhow::Result<Outcome> {
    local.set_nodelay(true).ok();
    let dial = async {
        let tcp = TcpStream::connect(&plan.door)
            .await
            .with_context(|| format!("cannot reach the gateway's tcp door at {}", plan.door))?;
        tcp.set_nodelay(true).ok();
        plan.tls
            .connect(plan.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS to the gateway's tcp door at {} failed", plan.door))
    };
    let tls = tokio::time::timeout(DIAL_TIMEOUT, dial)
        .await
        .with_context(|| format!("the gateway's tcp door at {} did not answer", plan.door))??;
    let mut gateway = BufReader::new(tls);
    let hello = Hello {
        v: VERSION,
        user: plan.user.clone(),
        resource: plan.resource.clone(),
        role: plan.role.clone(),
        credential: plan.credential.clone(),
    };
    let mut line = serde_json::to_vec(&hello)?;
    line.push(b'\n');
    gateway.write_all(&line).await?;
    gateway.flush().await?;
    let answer =
        match tokio::time::timeout(ANSWER_TIMEOUT, read_line(&mut gateway, MAX_ANSWER)).await {
            Err(_) => bail!("the gateway did not answer within {ANSWER_TIMEOUT:?}"),
            Ok(Err(LineError::Closed)) => {
                bail!("the gateway closed the connection without an answer (too slow to sign in?)")
            }
            Ok(Err(e)) => bail!("cannot read the gateway's answer: {e}"),
            Ok(Ok(line)) => serde_json::from_slice::<Answer>(&line)
                .context("the gateway's answer is not JSON; is this a Gatehouse tcp door?")?,
        };
    if !answer.ok {
        complain(
            answer
                .message
                .as_deref()
                .unwrap_or("the gateway refused the connection"),
        );
        return Ok(Outcome::Refused);
    }
    tracing::debug!(session = ?answer.session, "admitted");
    // Nothing ends the relay from this side but the two connections; the sender lives as long.
    let (_keep, never) = tokio::sync::watch::channel(None);
    gatehouse_agent::tcp::relay(gateway, local, never).await;
    Ok(Outcome::Relayed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_read_from_the_token() {
        let payload = B64URL.encode(br#"{"sub":"alice","exp":1}"#);
        assert_eq!(
            token_subject(&format!("e30.{payload}.sig")).as_deref(),
            Some("alice")
        );
        assert_eq!(token_subject("not-a-jwt"), None);
    }

    #[test]
    fn doors_are_host_and_port() {
        assert!(door_server_name("127.0.0.1:7000").is_ok());
        assert!(door_server_name("gw.example.com:7000").is_ok());
        assert!(door_server_name("[::1]:7000").is_ok());
        assert!(door_server_name("gw.example.com").is_err());
    }
}
