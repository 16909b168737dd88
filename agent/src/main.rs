//! `gatehouse-agent`: the remote agent binary, thin over [`gatehouse_agent::remote`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use gatehouse_agent::remote::config::AgentConfig;
use gatehouse_agent::remote::identity::{self, Identity};
use gatehouse_agent::remote::link::Agent;
use gatehouse_agent::spool::Spool;

/// Gatehouse remote agent: fronts resources in a private network and connects out to the
/// gateway, which routes sessions to it. Database passwords stay on this host.
///
/// First run (enrollment): `gatehouse-agent --gateway https://gw:8443 --token <join token>
/// --config agent.toml`. The join token comes from `gatehouse agents enroll <name>` on the
/// gateway and works once. Later runs need only `--config`.
#[derive(Parser, Debug)]
#[command(name = "gatehouse-agent", version)]
struct Cli {
    /// The agent's config file (resources, credentials, state directory).
    #[arg(long, short, env = "GATEHOUSE_AGENT_CONFIG")]
    config: PathBuf,
    /// The gateway's HTTPS URL, for enrollment.
    #[arg(long, requires = "token")]
    gateway: Option<String>,
    /// A one-time join token from `gatehouse agents enroll`; enrolls (again) before starting.
    #[arg(
        long,
        requires = "gateway",
        env = "GATEHOUSE_JOIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// A PEM certificate to trust for the gateway's HTTPS listener during enrollment (besides
    /// the system roots).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Worker threads (0: one per core). One thread avoids cross-thread wake-ups, which is
    /// faster when the agent shares a small machine with the database.
    #[arg(long, default_value_t = 0, env = "GATEHOUSE_AGENT_THREADS")]
    threads: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    let mut builder = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cli.threads > 1 {
            b.worker_threads(cli.threads);
        }
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            // 64 (EX_USAGE) for a config the agent cannot start with, as the gateway does.
            if e.downcast_ref::<gatehouse_agent::remote::config::ConfigError>()
                .is_some()
            {
                ExitCode::from(64)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_tracing(json: bool) {
    gatehouse_agent::logging::init(json, "info", false);
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = AgentConfig::load(&cli.config, &|k| std::env::var(k).ok())?;
    let spool = Spool::open(&config.state_dir.join("spool"), config.spool_max_bytes)
        .context("opening the event spool")?;
    if let (Some(gateway), Some(token)) = (&cli.gateway, &cli.token) {
        let link = identity::enroll(
            gateway,
            token,
            cli.ca_file.as_deref(),
            &config.state_dir,
            &spool,
        )
        .await
        .context("enrolling with the gateway")?;
        tracing::info!(agent = %link.agent, tunnel = %link.tunnel, expires = %link.expires, "enrolled");
    }
    let identity = Identity::load(&config.state_dir)?;
    let (pending, bytes) = spool.backlog();
    tracing::info!(
        agent = %identity.link.agent,
        resources = config.resources.len(),
        spooled_events = pending,
        spooled_bytes = bytes,
        "gatehouse-agent starting"
    );
    tokio::spawn(spool.clone().run_flusher());
    let agent = Agent::new(config, identity, spool.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(agent.run(stop_rx));
    shutdown_signal().await;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    let _ = running.await;
    spool.sync().context("syncing the event spool")?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
