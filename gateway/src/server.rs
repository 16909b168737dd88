//! `gatehouse serve`: validates everything, binds, runs the front doors, and shuts down in order
//! (stop accepting, end sessions, final audit events and checkpoint).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tracing::info;

use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::oidc::RelyingParty;
use crate::authn::token::TokenAuthority;
use crate::config::Config;
use crate::keys::SigningKey;
use crate::pg::FrontDoor;
use crate::registry::Registry;
use crate::store::Store;
use crate::web::Web;

/// How long shutdown waits for sessions to record their end.
const DRAIN: Duration = Duration::from_secs(5);

/// Paths of the keys inside the state directory.
pub fn token_key_path(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("keys").join("token-signing.pem")
}

pub fn audit_key_path(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("keys").join("audit-signing.pem")
}

/// The newest signed checkpoint, kept outside the store (see `AuditLog::spawn_anchored`).
pub fn audit_anchor_path(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("audit-anchor.json")
}

pub fn token_authority(config: &Config) -> anyhow::Result<TokenAuthority> {
    Ok(TokenAuthority::new(
        config.state_dir.join("keys"),
        config.tokens.issuer.clone(),
        config.tokens.audience.clone(),
        config.tokens.max_ttl,
    )?)
}

/// Runs the gateway until SIGINT or SIGTERM.
pub async fn run(config: Config, ready_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let (loaded, tests_run) = crate::authz::load_with_tests(&config.policies_dir)
        .with_context(|| format!("loading policies from `{}`", config.policies_dir.display()))?;
    for failed in &tests_run.failed {
        tracing::warn!(test = %failed, "a policy test fails; `gatehouse policy reload` would refuse this set");
    }
    let (policy_sha, policy_tests) = (loaded.sha256.clone(), loaded.tests);
    let policies = crate::authz::Policies::new(loaded);
    let tokens = token_authority(&config)?;
    let audit_key = Arc::new(
        SigningKey::load_or_create(&audit_key_path(&config))
            .context("loading the audit signing key")?,
    );
    let tls = crate::tls::acceptor(
        config.postgres.tls_cert.as_deref(),
        config.postgres.tls_key.as_deref(),
        &config.state_dir,
    )
    .context("setting up TLS for the postgres front door")?;
    let store = Store::open(&config.store_url)
        .await
        .context("opening the store")?;
    let (audit, writer) = AuditLog::spawn_anchored(
        store.clone(),
        audit_key.clone(),
        config.audit.checkpoint_every,
        config.audit.queue,
        Some(audit_anchor_path(&config)),
    );

    let listener = TcpListener::bind(config.postgres.listen)
        .await
        .with_context(|| {
            format!(
                "binding the postgres front door to {}",
                config.postgres.listen
            )
        })?;
    let pg_addr = listener.local_addr()?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("binding the https listener to {}", config.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let http_tls = crate::tls::acceptor(
        config.http.tls_cert.as_deref(),
        config.http.tls_key.as_deref(),
        &config.state_dir,
    )
    .context("setting up TLS for the https listener")?;
    let agents_listener = match &config.agents {
        Some(a) => Some(
            TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("binding the agent listener to {}", a.listen))?,
        ),
        None => None,
    };
    let agents_addr = agents_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    // The generic TCP door, when `[tcp] listen` is set.
    let tcp_listener = match config.tcp.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the tcp front door to {addr}"))?,
        ),
        None => None,
    };
    let tcp_addr = tcp_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    // The SSH door, when `[ssh] listen` is set; its keys always (the API signs certificates).
    let ssh_keys = Arc::new(
        crate::ssh::ca::SshKeys::load_or_create(&config.state_dir.join("keys"))
            .context("loading the SSH keys")?,
    );
    let ssh_listener = match config.ssh.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the ssh front door to {addr}"))?,
        ),
        None => None,
    };
    let ssh_addr = ssh_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let agents = match (&config.agents, agents_addr) {
        (Some(a), Some(bound)) => {
            let mut a = a.clone();
            // `listen = "...:0"`: tell agents the port actually bound.
            if a.public_address.ends_with(":0") {
                a.public_address = bound.to_string();
            }
            let behind: Vec<(String, String)> = config
                .resources
                .iter()
                .filter_map(|r| r.agent().map(|agent| (r.name.clone(), agent.to_string())))
                .collect();
            Some(
                crate::agents::AgentService::new(
                    a,
                    &config.state_dir,
                    store.clone(),
                    audit.clone(),
                    behind,
                )
                .context("setting up the agent CA")?,
            )
        }
        _ => None,
    };
    let rp = match &config.oidc {
        Some(o) => Some(Arc::new(
            RelyingParty::new(o.clone()).context("setting up single sign-on")?,
        )),
        None => None,
    };

    let mut start = NewEvent::new(EventKind::GatewayStart);
    start.actor = "gatehouse".into();
    start.action = "start".into();
    start.detail = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "postgres_listen": pg_addr.to_string(),
        "https_listen": http_addr.to_string(),
        "agents_listen": agents_addr.map(|a| a.to_string()),
        "tcp_listen": tcp_addr.map(|a| a.to_string()),
        "ssh_listen": ssh_addr.map(|a| a.to_string()),
        "sso_issuer": config.oidc.as_ref().map(|o| o.issuer.clone()),
        "resources": config.resources.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        "policies": policies.policies().iter().map(|p| p.id.clone()).collect::<Vec<_>>(),
        "policy_set_sha256": policy_sha,
        "policy_tests_passed": policy_tests,
        "token_key_id": tokens.key_id(),
        "audit_key_id": audit_key.key_id,
        "pid": std::process::id(),
    });
    audit
        .record_durable(start)
        .await
        .context("recording gateway.start in the audit log")?;

    let instance = crate::audit::event::hex(&gatehouse_core::random::random_bytes::<8>());
    if store.backend() == crate::store::Backend::Sqlite {
        // One gateway owns a SQLite store: sessions still open from an earlier run are over.
        let n = store
            .end_orphaned_sessions(&instance, &crate::audit::event::now_ts())
            .await?;
        if n > 0 {
            info!(
                sessions = n,
                "marked sessions left open by an earlier run as ended"
            );
        }
    }
    let registry = Registry::default();
    let tokens = Arc::new(tokens);
    let admission = crate::admission::Admission {
        tokens: tokens.clone(),
        policies: policies.clone(),
        audit: audit.clone(),
        store: store.clone(),
        config: config.clone(),
        failures: Default::default(),
    };
    let links = agents.as_ref().map(|a| a.links.clone()).unwrap_or_default();
    let tcp_door = Arc::new(crate::tcp::TcpDoor {
        config: config.clone(),
        tls: tls.clone(),
        admission: admission.clone(),
        audit: audit.clone(),
        registry: registry.clone(),
        store: store.clone(),
        instance: instance.clone(),
        links: links.clone(),
    });
    let ssh_instance = instance.clone();
    let door = Arc::new(FrontDoor {
        config: config.clone(),
        tls,
        admission: admission.clone(),
        audit: audit.clone(),
        registry: registry.clone(),
        store: store.clone(),
        instance,
        links,
    });
    // The log's copy in the SIEM, read from the store (it never holds a decision up).
    let siem = tokio::spawn(crate::siem::run(
        store.clone(),
        audit.clone(),
        config.siem.clone(),
    ));
    // `gatehouse policy reload` (through the store) and SIGHUP swap the policy set in place.
    let policy_watch = tokio::spawn(crate::policy_reload::watch(
        store.clone(),
        admission.policies.clone(),
        config.policies_dir.clone(),
        audit.clone(),
    ));
    let watcher = tokio::spawn(watch_disabled_users(
        store.clone(),
        registry.clone(),
        audit.clone(),
    ));
    // The store's size against its quota: alerts, and shedding of unauthenticated noise.
    let capacity = tokio::spawn(crate::capacity::watch(
        store.clone(),
        audit.clone(),
        admission.failures.clone(),
        config.store_capacity,
    ));
    // Counted unauthenticated failures become one summary event per source and window; at
    // shutdown the open windows are summarised too.
    let (summaries_stop, summaries_stopped) = tokio::sync::watch::channel(false);
    let summaries = tokio::spawn(crate::admission::record_failure_summaries(
        admission.clone(),
        summaries_stopped,
    ));

    let webhook = crate::access::webhook::Webhook::spawn(
        config.access.webhook_url.clone(),
        config.access.webhook_timeout,
    );
    let access = Arc::new(crate::access::Access {
        config: config.clone(),
        policies,
        store: store.clone(),
        audit: audit.clone(),
        registry: registry.clone(),
        webhook: webhook.clone(),
    });
    let grants = tokio::spawn(crate::access::watch_grants(
        store.clone(),
        registry.clone(),
        audit.clone(),
        webhook,
    ));
    let web = Arc::new(Web::new(
        config.clone(),
        tokens.clone(),
        rp.clone(),
        audit.clone(),
        store.clone(),
        registry.clone(),
        access,
        postgres_public(&config, pg_addr),
        agents.clone(),
        admission.clone(),
        ssh_keys.clone(),
        ssh_addr.map(|a| a.to_string()),
    ));
    let (stop_agents, agents_stopped) = tokio::sync::oneshot::channel::<()>();
    let agent_listener = match (agents_listener, &agents) {
        (Some(l), Some(svc)) => Some(tokio::spawn(crate::agents::link::serve(
            l,
            svc.clone(),
            async move {
                let _ = agents_stopped.await;
            },
        ))),
        _ => None,
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let https = tokio::spawn(crate::web::serve(
        http_listener,
        http_tls,
        web.clone(),
        async move {
            let _ = http_stopped.await;
        },
    ));
    let recheck = rp.as_ref().map(|rp| {
        tokio::spawn(crate::web::session::recheck_logins(
            web.clone(),
            rp.clone(),
            rp.config().recheck_every,
        ))
    });
    let key_reload = tokio::spawn(reload_keys(tokens.clone(), audit.clone()));

    // Before the ready file: whoever waits for it may signal at once.
    let shutdown = shutdown_signal();
    if let Some(path) = ready_file {
        let ready = serde_json::json!({
            "postgres": pg_addr.to_string(),
            "https": http_addr.to_string(),
            "agents": agents_addr.map(|a| a.to_string()),
            "tcp": tcp_addr.map(|a| a.to_string()),
            "ssh": ssh_addr.map(|a| a.to_string()),
            "pid": std::process::id(),
        });
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, ready.to_string()).context("writing the ready file")?;
        std::fs::rename(&tmp, path).context("writing the ready file")?;
    }
    info!(postgres = %pg_addr, https = %http_addr, sso = rp.is_some(), resources = config.resources.len(), "gatehouse is serving");

    let (stop_ssh, ssh_stopped) = tokio::sync::oneshot::channel::<()>();
    let ssh_front = ssh_listener.map(|l| {
        let door = Arc::new(crate::ssh::frontdoor::SshDoor {
            config: config.clone(),
            admission: admission.clone(),
            audit: audit.clone(),
            registry: registry.clone(),
            store: store.clone(),
            instance: ssh_instance.clone(),
            server: Arc::new(crate::ssh::frontdoor::server_config(&ssh_keys)),
            keys: ssh_keys.clone(),
        });
        let limits =
            crate::listener::Limits::new(config.ssh.max_connections, config.ssh.auth_timeout);
        tokio::spawn(crate::listener::serve(l, door, limits, async move {
            let _ = ssh_stopped.await;
        }))
    });
    let (stop_tcp, tcp_stopped) = tokio::sync::oneshot::channel::<()>();
    let tcp_front = tcp_listener.map(|l| {
        let limits =
            crate::listener::Limits::new(config.tcp.max_connections, config.tcp.handshake_timeout);
        tokio::spawn(crate::listener::serve(l, tcp_door, limits, async move {
            let _ = tcp_stopped.await;
        }))
    });

    crate::pg::serve(listener, door, shutdown).await;
    // Stop every listener and background task at once; each listener returns as soon as it
    // stops accepting (its open connections are the registry's to end).
    let _ = stop_tcp.send(());
    let _ = stop_ssh.send(());
    let _ = stop_http.send(());
    let _ = stop_agents.send(());
    watcher.abort();
    policy_watch.abort();
    siem.abort();
    capacity.abort();
    if let Some(r) = recheck {
        r.abort();
    }
    key_reload.abort();
    grants.abort();
    summaries_stop.send_replace(true);
    if let Some(t) = tcp_front {
        let _ = t.await;
    }
    if let Some(t) = ssh_front {
        let _ = t.await;
    }
    let _ = https.await;
    if let Some(a) = agent_listener {
        let _ = a.await;
    }
    // The open failure windows become their summary events (the task returns once it has).
    let _ = tokio::time::timeout(DRAIN, summaries).await;

    info!(live = registry.len(), "shutting down: ending live sessions");
    registry.kill_all("the gateway is shutting down");
    let deadline = Instant::now() + DRAIN;
    while !registry.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stop = NewEvent::new(EventKind::GatewayStop);
    stop.actor = "gatehouse".into();
    stop.action = "stop".into();
    audit
        .record_durable(stop)
        .await
        .context("recording gateway.stop")?;
    audit
        .checkpoint()
        .await
        .context("writing the final audit checkpoint")?;
    // Close the log rather than wait for every handle to go: the HTTPS state, the agent
    // service and connections still open (an idle keep-alive) hold handles but have nothing
    // more to record. What is queued is committed and signed first.
    audit.close().await;
    drop((audit, web, agents));
    let _ = tokio::time::timeout(DRAIN, writer).await;
    store.close().await;
    info!("stopped");
    Ok(())
}

/// The PostgreSQL front door as clients reach it: the public URL's host with the listen port.
fn postgres_public(config: &Config, pg_addr: std::net::SocketAddr) -> String {
    let host = reqwest::Url::parse(&config.http.public_url)
        .ok()
        .and_then(|u| u.host_str().map(String::from))
        .unwrap_or_else(|| pg_addr.ip().to_string());
    format!("{host}:{}", pg_addr.port())
}

/// How often the token keyring is re-read (to pick up `gatehouse keys rotate`).
const KEY_RELOAD: Duration = Duration::from_secs(2);

async fn reload_keys(tokens: Arc<TokenAuthority>, audit: AuditLog) {
    let mut tick = tokio::time::interval(KEY_RELOAD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match tokens.reload() {
            Ok(Some(kid)) => {
                info!(key_id = %kid, "token signing key rotated; the previous key still verifies");
                let mut e = NewEvent::new(EventKind::KeysRotated);
                e.actor = "gatehouse".into();
                e.action = "load".into();
                e.detail = serde_json::json!({ "key_id": kid, "jwks": tokens.jwks() });
                let _ = audit.record(e).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot re-read the token keyring"),
        }
    }
}

/// How often live sessions are checked against the users table.
const USER_POLL: Duration = Duration::from_millis(250);

/// Cuts live sessions admitted through a login that was since revoked (logout, or the
/// provider no longer vouching for the person), as a disable does.
async fn cut_revoked_logins(store: &Store, registry: &Registry, audit: &AuditLog) {
    let live = registry.logins();
    let Some(oldest) = registry.oldest_started() else {
        return;
    };
    if live.is_empty() {
        return;
    }
    // Revocations since a minute before the oldest live session: any earlier one was
    // refused at admission.
    let since =
        time::OffsetDateTime::parse(&oldest, &time::format_description::well_known::Rfc3339)
            .map(|t| gatehouse_core::clock::format_ts(t - Duration::from_secs(60)))
            .unwrap_or_default();
    let revoked = match store.logins_revoked_since(&since).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read revoked logins");
            return;
        }
    };
    for (login, reason) in revoked.iter().filter(|(l, _)| live.contains(l)) {
        let why = if reason.is_empty() {
            "access revoked: the sign-in this session came from was revoked".to_string()
        } else {
            format!("access revoked: the sign-in this session came from was revoked: {reason}")
        };
        for (session, user, resource) in registry.kill_login(login, &why) {
            let mut e = NewEvent::new(EventKind::SessionCut);
            e.actor = user;
            e.resource = resource;
            e.action = "cut".into();
            e.session_id = session.to_string();
            e.reason = "login revoked".into();
            e.detail = serde_json::json!({ "login_id": login });
            let _ = audit.record(e).await;
            info!(session.id = %session, "cut a live session whose login was revoked");
        }
    }
}

/// Cuts live sessions that lost their right to run: users an admin disabled, and sessions an
/// admin killed (on any replica, or through the CLI). Polling the store keeps this correct
/// across processes; the poll period bounds the delay.
async fn watch_disabled_users(store: Store, registry: Registry, audit: AuditLog) {
    let mut tick = tokio::time::interval(USER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let live = registry.users();
        if live.is_empty() {
            continue;
        }
        match store.pending_kills().await {
            Ok(kills) => {
                for k in kills {
                    let why = if k.reason.is_empty() {
                        format!("killed by {}", k.by)
                    } else {
                        format!("killed by {}: {}", k.by, k.reason)
                    };
                    if let Some((user, resource)) = registry.kill_session(&k.id, &why) {
                        let mut e = NewEvent::new(EventKind::SessionCut);
                        e.actor = user;
                        e.resource = resource;
                        e.action = "cut".into();
                        e.session_id = k.id.clone();
                        e.reason = why;
                        let _ = audit.record(e).await;
                        info!(session.id = %k.id, "cut a session an admin killed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read session kill requests"),
        }
        cut_revoked_logins(&store, &registry, &audit).await;
        let disabled = match store.disabled_users().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read disabled users");
                continue;
            }
        };
        for user in disabled.iter().filter(|u| live.contains(*u)) {
            for (session, resource) in
                registry.kill_user(user, &format!("access revoked: user {user} was disabled"))
            {
                let mut e = NewEvent::new(EventKind::SessionCut);
                e.actor = user.clone();
                e.resource = resource;
                e.action = "cut".into();
                e.session_id = session.to_string();
                e.reason = "user disabled".into();
                let _ = audit.record(e).await;
                info!(user = %user, session.id = %session, "cut a live session of a disabled user");
            }
        }
    }
}

/// Registers for SIGINT and SIGTERM at once (so that a signal arriving any time after the
/// ready file is written stops the gateway in order) and returns the future that completes on
/// the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        async move {
            match (int, term) {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
