//! The SSH front door: the gateway is the SSH server engineers' plain OpenSSH clients talk to.
//!
//! A connection's life, top to bottom:
//!
//! 1. Public-key authentication with a user certificate of the gateway's user CA
//!    ([`super::ca::check_user_cert`]); plain keys and every other method are refused, each
//!    refusal counted per source ([`crate::admission::failures`]).
//! 2. The SSH user name says where to: `web-1` (role `read`) or `root%web-1` (the role whose
//!    upstream login is `root`, or the role named so). Admission verifies the certificate's
//!    credential, asks the policies and records the decision durably, as for every door.
//!    A refusal after a valid certificate is explained on the client's terminal (the SSH
//!    disconnect message), after the decision is in the log.
//! 3. The gateway logs in to the target ([`super::connector`]); only then does it accept
//!    channels. Session channels carry a pty, a shell, `exec` (each command an `ssh.command`
//!    event) and the `sftp` subsystem; environment variables only from a short list of
//!    locale and terminal names. Port forwarding (`direct-tcpip`: `ssh -L`, `ssh -W`) is its
//!    own policy decision (Cedar action `forward`), recorded durably before the channel
//!    opens. Remote forwarding, agent forwarding and X11 are refused and recorded
//!    (`ssh.refused`).
//! 4. Every channel is recorded ([`crate::recording`]): what the client is shown, with its
//!    timing, window sizes, commands and exit statuses, what it types where the resource
//!    records input, and a forwarded port's bytes. A `strict` resource (the default) takes no
//!    session whose recording cannot start, and cuts one whose recording fails.
//! 5. The registry can end the session (kill, disable, grant expiry or revocation, logout):
//!    the upstream is closed first, each open channel gets the reason on its stderr and exit
//!    status 255, then the connection is closed with the same reason; each step is bounded,
//!    so a client that reads nothing is cut all the same.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::random::random_bytes;
use gatehouse_core::session::{EndReason, SessionId, SessionSummary};
use russh::keys::{Certificate, HashAlg};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, MethodKind,
    MethodSet, Pty, Sig,
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::ca::SshKeys;
use super::connector;
use super::sftp;
use crate::admission::{Admission, AdmitRequest, CredentialFault, Denial};
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::authn::token::Door as CredentialDoor;
use crate::config::{Config, ResourceKind};
use crate::listener::{Conn, Door, Serving};
use crate::recording::format::Kind;
use crate::recording::writer::{
    self as recording_writer, Recorder, Recording, Refused, NO_UNRECORDED,
};
use crate::registry::Registry;
use crate::store::Store;
use gatehouse_policies::Action;

/// Environment variables a client may pass on: locale and terminal, nothing that changes
/// what a program loads or runs (`LD_PRELOAD`, `PATH`, `BASH_ENV` ... are refused).
const ALLOWED_ENV: &[&str] = &["LANG", "LANGUAGE", "TERM", "COLORTERM", "TZ"];

/// Commands (and subsystem names) are recorded up to this many bytes, with their full length.
const MAX_COMMAND_RECORDED: usize = 8 * 1024;

/// What a session may hold of what its client sent and its target has not taken yet, over all
/// its channels, in bytes (each message counts at least [`MESSAGE_COST`]). Past it, the
/// session's input waits: nothing is dropped, and memory stays bounded.
///
/// It must be large: russh reopens the client's window as data arrives, so while the input
/// waits the whole connection waits, window adjustments for the output included. A client
/// sending and receiving at full speed (`cat` both ways) could otherwise close the circle:
/// the target stops reading because its output is not taken, its output is not taken because
/// the client's window adjustment sits behind input that waits for the target.
const SESSION_BUFFER: usize = 16 << 20;

/// What a message other than data counts against [`SESSION_BUFFER`].
const MESSAGE_COST: usize = 64;

/// Channels one session may have open at once (OpenSSH's `MaxSessions` default).
const MAX_CHANNELS: usize = 10;

/// Everything a connection needs; shared by all connections.
pub struct SshDoor {
    pub config: Arc<Config>,
    pub admission: Admission,
    pub audit: AuditLog,
    pub registry: Registry,
    pub store: Store,
    /// This gateway process's id in the sessions table.
    pub instance: String,
    pub keys: Arc<SshKeys>,
    pub server: Arc<server::Config>,
}

/// russh's server settings for the door.
/// The listener enforces the pre-authentication deadline (`[ssh] auth_timeout`); russh needs
/// none of its own.
pub fn server_config(keys: &SshKeys) -> server::Config {
    server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-gatehouse_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![keys.host.clone()],
        max_auth_attempts: 8,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        // Bounded: a client's unread messages wait here, then back-pressure the socket.
        channel_buffer_size: 64,
        event_buffer_size: 64,
        ..server::Config::default()
    }
}

impl Door for SshDoor {
    fn name(&self) -> &'static str {
        "ssh"
    }

    fn serve(self: Arc<Self>, mut conn: Conn) -> Serving {
        Box::pin(async move {
            let Some(tcp) = conn.take_stream() else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            let peer = conn.peer();
            let live: Arc<Mutex<Option<LiveEnd>>> = Arc::default();
            let client = Client {
                door: self.clone(),
                conn,
                peer,
                session_id: SessionId(random_bytes::<16>()),
                state: State::Unauthenticated,
                live_end: live.clone(),
                channels: HashMap::new(),
                buffer: Arc::new(tokio::sync::Semaphore::new(SESSION_BUFFER)),
            };
            let running = match server::run_stream(self.server.clone(), tcp, client).await {
                Ok(r) => r,
                Err(e) => {
                    info!(error = %e, "SSH handshake failed");
                    self.count_refusal(peer, "handshake", &format!("SSH handshake failed: {e}"));
                    return;
                }
            };
            // If this future is dropped (the pre-authentication deadline), the session goes too.
            let guard = DisconnectOnDrop(Some(running.handle()));
            let _ = running.await;
            drop(guard);
            let end = live.lock().ok().and_then(|mut l| l.take());
            if let Some(end) = end {
                end.finish(&self.audit).await;
            }
        })
    }

    fn count_refusal(&self, peer: SocketAddr, class: &'static str, reason: &str) {
        self.admission
            .count_refusal(CredentialDoor::Ssh, peer, class, reason);
    }
}

struct DisconnectOnDrop(Option<server::Handle>);

impl Drop for DisconnectOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            tokio::spawn(async move {
                let _ = h
                    .disconnect(
                        Disconnect::ByApplication,
                        "gatehouse: the connection did not authenticate in time".into(),
                        String::new(),
                    )
                    .await;
            });
        }
    }
}

/// What recording a live session's end needs once the connection is over.
struct LiveEnd {
    record: crate::session_record::SessionRecord,
    counters: Arc<Counters>,
    started: Instant,
    /// Why the gateway ended it, if it did.
    cut: Arc<Mutex<Option<String>>>,
    /// Complete once every channel task has let go of its recorder.
    recording: Option<Recording>,
    _registration: crate::registry::Registration,
}

impl LiveEnd {
    async fn finish(self, audit: &AuditLog) {
        if let Some(recording) = self.recording {
            // The channel tasks end with the connection; their last records go first.
            if tokio::time::timeout(RECORDING_FINISH, recording.finish())
                .await
                .is_err()
            {
                warn!("the session's recording is still being written as the session ends");
            }
        }
        let reason = match self.cut.lock().ok().and_then(|c| c.clone()) {
            Some(why) => EndReason::Killed(why),
            None => EndReason::ClientClosed,
        };
        let summary = SessionSummary {
            bytes_from_client: self.counters.from_client.load(Ordering::Relaxed),
            bytes_to_client: self.counters.to_client.load(Ordering::Relaxed),
            statements: self.counters.commands.load(Ordering::Relaxed),
            duration_ms: self.started.elapsed().as_millis() as u64,
            reason,
            client_terminated: true,
        };
        info!(
            reason = %summary.reason,
            bytes_from_client = summary.bytes_from_client,
            bytes_to_client = summary.bytes_to_client,
            "ssh session ended"
        );
        self.record.end(audit, &summary).await;
    }
}

#[derive(Default)]
struct Counters {
    from_client: AtomicU64,
    to_client: AtomicU64,
    commands: AtomicU64,
}

enum State {
    Unauthenticated,
    /// Authenticated, but refused: the client is told why and disconnected.
    Refused(String),
    Live(Box<Live>),
}

struct Live {
    user: String,
    resource: String,
    /// What a later decision in the session (`forward`) asks the policies.
    groups: Vec<String>,
    auth_method: String,
    mfa: bool,
    role: String,
    has_grant: bool,
    upstream: Arc<connector::Handle>,
    counters: Arc<Counters>,
    kill: tokio::sync::watch::Receiver<Option<String>>,
    cut: Arc<Mutex<Option<String>>>,
    /// The channel tasks still running.
    running: Arc<Running>,
    /// `None` only on a `best-effort` resource whose recording could not start.
    recorder: Option<Recorder>,
}

impl Live {
    /// What the tasks of client channel `id` share; `content` says whether what passes is
    /// recorded (session channels) or only counted (forwarded ports).
    fn channel_ctx(
        &self,
        id: ChannelId,
        content: bool,
        audit: &AuditLog,
        session: SessionId,
    ) -> ChannelCtx {
        ChannelCtx {
            files: content.then(|| {
                Arc::new(Files {
                    audit: audit.clone(),
                    actor: self.user.clone(),
                    resource: self.resource.clone(),
                    session,
                    observer: std::sync::Mutex::new(None),
                })
            }),
            counters: self.counters.clone(),
            kill: self.kill.clone(),
            cut: self.cut.clone(),
            running: self.running.clone(),
            rec: self.recorder.clone().map(|recorder| {
                Arc::new(ChannelRec {
                    recorder,
                    channel: u32::from(id),
                    content,
                    from_client: AtomicU64::new(0),
                    to_client: AtomicU64::new(0),
                })
            }),
        }
    }
}

/// One channel's recording.
struct ChannelRec {
    recorder: Recorder,
    channel: u32,
    /// Session channels record what passes; forwarded ports only their bytes.
    content: bool,
    from_client: AtomicU64,
    to_client: AtomicU64,
}

impl ChannelRec {
    /// `Err`: a strict session's recording has failed, and this must not be passed on.
    async fn record(&self, kind: Kind, data: Bytes) -> Result<(), Refused> {
        self.recorder.record(self.channel, kind, data).await
    }

    /// Output the client is shown (or the client's input): recorded for a session channel,
    /// counted for both.
    async fn content(&self, kind: Kind, data: &Bytes) -> Result<(), Refused> {
        let counter = if kind == Kind::Input {
            &self.from_client
        } else {
            &self.to_client
        };
        counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        let wanted = match kind {
            Kind::Input => self.recorder.records_input(),
            _ => true,
        };
        if self.content && wanted {
            return self.record(kind, data.clone()).await;
        }
        Ok(())
    }

    async fn close(&self) {
        let d = serde_json::json!({
            "from_client": self.from_client.load(Ordering::Relaxed),
            "to_client": self.to_client.load(Ordering::Relaxed),
        });
        let _ = self.record(Kind::Close, Bytes::from(d.to_string())).await;
    }
}

/// How long a session's end waits for its recording's last chunk.
const RECORDING_FINISH: Duration = Duration::from_secs(10);

/// How long each step of a cut may take (upstream close, channels' last words, disconnect).
const CUT_STEP: Duration = Duration::from_millis(300);

/// Counts a session's channel tasks, so that a cut can wait for their last words.
#[derive(Default)]
struct Running {
    count: AtomicU64,
    idle: tokio::sync::Notify,
}

impl Running {
    fn enter(self: &Arc<Self>) -> RunningGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        RunningGuard(self.clone())
    }

    /// Waits until no task runs, at most `limit`.
    async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let idle = self.idle.notified();
                if self.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        })
        .await;
    }
}

struct RunningGuard(Arc<Running>);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Resolves once the registry ended the session (never, if it ends otherwise).
async fn cut_signal(mut kill: tokio::sync::watch::Receiver<Option<String>>) {
    loop {
        if kill.borrow_and_update().is_some() {
            return;
        }
        if kill.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a channel's two tasks share with the session.
#[derive(Clone)]
struct ChannelCtx {
    counters: Arc<Counters>,
    kill: tokio::sync::watch::Receiver<Option<String>>,
    cut: Arc<Mutex<Option<String>>>,
    running: Arc<Running>,
    rec: Option<Arc<ChannelRec>>,
    /// A session channel's file operations, once it runs sftp.
    files: Option<Arc<Files>>,
}

/// Follows an sftp channel and records what it does to files as `ssh.file` events
/// (recorded or not, the channel's files are evidence of information transfer).
struct Files {
    audit: AuditLog,
    actor: String,
    resource: String,
    session: SessionId,
    /// Held only while a packet is parsed, never across an await.
    observer: std::sync::Mutex<Option<sftp::Observer>>,
}

impl Files {
    /// The channel runs the named subsystem: sftp is followed from here on.
    fn subsystem(&self, name: &str) {
        if name == "sftp" {
            if let Ok(mut o) = self.observer.lock() {
                o.get_or_insert_with(sftp::Observer::default);
            }
        }
    }

    async fn client_sent(&self, data: &[u8]) {
        let ops = self.with(|o| o.from_client(data));
        self.emit(ops).await;
    }

    async fn target_sent(&self, data: &[u8]) {
        let ops = self.with(|o| o.from_server(data));
        self.emit(ops).await;
    }

    /// The channel ended: files still open are recorded as `closed`.
    async fn finish(&self) {
        let ops = self.with(|o| o.finish());
        self.emit(ops).await;
    }

    fn with(&self, f: impl FnOnce(&mut sftp::Observer) -> Vec<sftp::FileOp>) -> Vec<sftp::FileOp> {
        match self.observer.lock() {
            Ok(mut o) => o.as_mut().map(f).unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn emit(&self, ops: Vec<sftp::FileOp>) {
        for op in ops {
            let mut e = NewEvent::new(EventKind::SshFile);
            e.actor = self.actor.clone();
            e.resource = self.resource.clone();
            e.action = op.op.into();
            e.reason = op.status.clone();
            e.session_id = self.session.to_string();
            e.detail = serde_json::to_value(&op).unwrap_or_default();
            if self.audit.record(e).await.is_err() {
                warn!("an ssh.file event could not be queued");
            }
        }
    }
}

/// One client connection.
struct Client {
    door: Arc<SshDoor>,
    conn: Conn,
    peer: SocketAddr,
    session_id: SessionId,
    state: State,
    live_end: Arc<Mutex<Option<LiveEnd>>>,
    channels: HashMap<ChannelId, mpsc::UnboundedSender<Queued>>,
    /// [`SESSION_BUFFER`], shared by the session's channels.
    buffer: Arc<tokio::sync::Semaphore>,
}

/// A [`Cmd`] with its share of the session's buffer, given back once it is passed on.
struct Queued {
    cmd: Cmd,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What a client channel asks of its upstream channel.
enum Cmd {
    Data(Bytes),
    Eof,
    Close,
    Pty {
        term: String,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: Vec<(Pty, u32)>,
    },
    Env(String, String),
    Shell,
    Exec(Vec<u8>),
    Subsystem(String),
    WindowChange(u32, u32, u32, u32),
    Signal(Sig),
}

/// A request of a live session for the policies to decide ([`Client::decide`]).
struct Asked {
    action: Action,
    /// How the client is told what was refused, e.g. `exec`, `port forwarding`.
    what: &'static str,
    command: String,
    host: String,
    port: u32,
    /// Whether the gateway carries it when a policy permits it.
    supported: bool,
    detail: serde_json::Value,
}

/// `root%web-1` -> (`root`, `web-1`); `web-1` -> (None, `web-1`).
pub fn parse_target(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once('%') {
        Some((login, resource)) => (Some(login), resource),
        None => (None, name),
    }
}

/// What the client's terminal shows for a refusal after its certificate was valid.
fn refusal_text(denial: &Denial, config: &Config) -> String {
    match denial {
        Denial::Credential { fault, .. } => match fault {
            CredentialFault::Invalid(_) => "gatehouse: the certificate's credential is not valid any more; run `gatehouse ssh-cert` for a new one".into(),
            CredentialFault::Disabled => "gatehouse: your user is disabled; ask an administrator".into(),
            CredentialFault::Revoked | CredentialFault::UnknownLogin => "gatehouse: your sign-in was revoked; run `gatehouse login` and `gatehouse ssh-cert` again".into(),
        },
        Denial::UnknownResource { name } => format!(
            "gatehouse: resource \"{name}\" is not known to the gateway ({})",
            config.known_resources(ResourceKind::Ssh)
        ),
        Denial::UnknownRole { resource, role, roles } => format!(
            "gatehouse: resource \"{resource}\" has no login or role \"{role}\" (roles: {})",
            roles.join(", ")
        ),
        Denial::Policy { resource, reason, seq, session_id } => format!(
            "gatehouse: access to {resource} denied by policy: {reason} (decision recorded as audit event {seq}, session {session_id})"
        ),
        Denial::Store { .. } => "gatehouse: the gateway cannot check or record this access right now; the connection is refused (fail closed)".into(),
    }
}

impl Client {
    fn refuse_auth(&self, reason: &str) -> Auth {
        info!(reason = %reason, "ssh authentication refused");
        self.door
            .admission
            .count_refusal(CredentialDoor::Ssh, self.peer, "credential", reason);
        Auth::reject()
    }

    fn refused(&mut self, why: String) -> Auth {
        // The certificate was good: the client authenticated, and is told why it goes no
        // further (in `auth_succeeded`), once the reason is in the log.
        self.conn.authenticated();
        self.state = State::Refused(why);
        Auth::Accept
    }

    async fn record(
        &self,
        kind: EventKind,
        action: &str,
        reason: String,
        detail: serde_json::Value,
    ) {
        let (user, resource) = match &self.state {
            State::Live(l) => (l.user.clone(), l.resource.clone()),
            _ => ("-".to_string(), String::new()),
        };
        let mut e = NewEvent::new(kind);
        e.actor = user;
        e.resource = resource;
        e.action = action.into();
        e.reason = reason;
        e.session_id = self.session_id.to_string();
        e.detail = detail;
        let _ = self.door.audit.record(e).await;
    }

    async fn refuse_request(&self, what: &str, detail: serde_json::Value) {
        info!(what, "ssh request refused");
        self.record(
            EventKind::SshRefused,
            what,
            format!("{what} is not allowed through the gateway"),
            detail,
        )
        .await;
    }

    /// Decides a request of the live session with the policies (its role and grant as at
    /// admission), and records the decision durably before anything is passed on: an
    /// `ssh.command` allow or an `ssh.refused` deny, with the policy ids and controls.
    /// `Err` carries what the client is told. A request the gateway does not carry is
    /// refused even where a policy permits it, and says so.
    async fn decide(&self, asked: Asked) -> Result<(), String> {
        let State::Live(live) = &self.state else {
            return Err("gatehouse: the session is not open".into());
        };
        let Some(resource) = self.door.config.resource(&live.resource) else {
            return Err("gatehouse: the resource is no longer configured".into());
        };
        let mut request = crate::authz::connect_request(
            &live.user,
            &live.groups,
            resource,
            self.peer.ip(),
            &live.auth_method,
            live.mfa,
            &live.role,
            live.has_grant,
        );
        request.action = asked.action;
        request.context.command = asked.command;
        request.context.forward_host = asked.host;
        request.context.forward_port = asked.port;
        let decision = self.door.admission.policies.authorize(&request);
        let allowed = decision.allowed && asked.supported;
        let reason = if decision.allowed && !asked.supported {
            format!(
                "{} is permitted by policy, but the gateway does not carry it",
                asked.what
            )
        } else {
            decision.reason.clone()
        };
        let mut e = NewEvent::new(if allowed {
            EventKind::SshCommand
        } else {
            EventKind::SshRefused
        });
        e.actor = live.user.clone();
        e.resource = live.resource.clone();
        e.action = asked.action.as_str().into();
        e.decision = if allowed { "allow" } else { "deny" }.into();
        e.reason = reason.clone();
        e.policy_ids = decision.policy_ids.clone();
        e.controls = decision.controls.clone();
        e.session_id = self.session_id.to_string();
        e.detail = asked.detail;
        let recorded = self.door.audit.record_durable(e).await.is_ok();
        if !recorded {
            return Err(
                "gatehouse: the audit log cannot record this request; refused (fail closed)".into(),
            );
        }
        if allowed {
            return Ok(());
        }
        info!(action = asked.action.as_str(), reason = %reason, "ssh request refused");
        Err(if decision.allowed {
            format!("gatehouse: {reason}")
        } else {
            format!("gatehouse: {} denied by policy: {reason}", asked.what)
        })
    }

    /// Refuses a session channel's request: the reason on the channel's stderr, then the
    /// failure reply.
    fn refuse_on_channel(
        session: &mut Session,
        channel: ChannelId,
        why: &str,
    ) -> Result<(), russh::Error> {
        let text = format!("{why}\r\n");
        session.extended_data(channel, 1, text.into_bytes())?;
        session.channel_failure(channel)
    }

    async fn send(&mut self, channel: ChannelId, cmd: Cmd) {
        let Some(tx) = self.channels.get(&channel) else {
            return;
        };
        let cost = match &cmd {
            Cmd::Data(b) => b.len().max(MESSAGE_COST),
            _ => MESSAGE_COST,
        }
        .min(SESSION_BUFFER) as u32;
        let Ok(permit) = self.buffer.clone().acquire_many_owned(cost).await else {
            return;
        };
        if tx
            .send(Queued {
                cmd,
                _permit: permit,
            })
            .is_err()
        {
            self.channels.remove(&channel);
        }
    }

    async fn admit(&mut self, name: &str, cert: &Certificate) -> Auth {
        let door = self.door.clone();
        let now = crate::authn::token::unix_now();
        let checked = match super::ca::check_user_cert(cert, door.keys.user_ca.public_key(), now) {
            Ok(c) => c,
            Err(e) => return self.refuse_auth(&e.to_string()),
        };
        let span = tracing::Span::current();
        span.record("user", checked.user.as_str());
        span.record("session.id", tracing::field::display(self.session_id));
        let (asked, resource_name) = parse_target(name);
        let role = match (
            asked,
            door.config.resource(resource_name).and_then(|r| r.ssh()),
        ) {
            (None, _) => crate::config::DEFAULT_ROLE.to_string(),
            (Some(a), Some(ssh)) => ssh.role_for(a).unwrap_or(a).to_string(),
            (Some(a), None) => a.to_string(),
        };
        if crate::admission::check_names(&checked.user, resource_name).is_err() {
            return self.refuse_auth("the SSH user name is not `[login%]resource`");
        }
        let admitted = door
            .admission
            .admit(AdmitRequest {
                user: &checked.user,
                credential: &checked.credential,
                resource: resource_name,
                role: &role,
                named_as: name,
                action: "connect",
                peer: self.peer,
                tls: true,
                session_id: self.session_id,
                door: CredentialDoor::Ssh,
            })
            .await;
        let admitted = match admitted {
            Ok(a) => a,
            Err(Denial::Credential {
                fault: CredentialFault::Invalid(_),
                ..
            }) => {
                // A certificate whose credential does not verify is no valid certificate.
                return Auth::reject();
            }
            Err(denial) => return self.refused(refusal_text(&denial, &door.config)),
        };
        let resource = admitted.resource;
        let Some(ssh) = resource.ssh() else {
            let kind = resource.kind().as_str();
            return self.refused(format!(
                "gatehouse: resource \"{}\" is a {kind} resource, not an ssh one; use its own front door",
                resource.name
            ));
        };
        let Some(login) = ssh.logins.get(&admitted.role).cloned() else {
            return self.refused(format!(
                "gatehouse: resource \"{}\" has no login for role \"{}\"",
                resource.name, admitted.role
            ));
        };
        let key_id = format!(
            "gatehouse session {} user {} cert {}",
            self.session_id, checked.user, checked.key_fingerprint
        );
        let upstream = match connector::connect(ssh, &login, &door.keys.upstream_ca, &key_id).await
        {
            Ok(h) => h,
            Err(e) => {
                warn!(upstream = %ssh.address, error = %e, "ssh upstream failed");
                let mut ev = NewEvent::new(EventKind::SessionFailed);
                ev.actor = checked.user.clone();
                ev.resource = resource.name.clone();
                ev.action = "connect".into();
                ev.session_id = self.session_id.to_string();
                ev.reason = e.to_string();
                ev.detail = serde_json::json!({ "protocol": "ssh", "upstream": ssh.address, "login": login });
                let _ = door.audit.record(ev).await;
                return self.refused(format!(
                    "gatehouse: cannot open resource \"{}\": {e}",
                    resource.name
                ));
            }
        };
        let strict = ssh.recording == crate::config::RecordingMode::Strict;
        let rec_owner = recording_writer::Owner {
            session: self.session_id,
            user: checked.user.clone(),
            resource: resource.name.clone(),
        };
        let settings = recording_writer::Settings {
            dir: crate::recording::session_dir(&door.config.recordings.dir, &self.session_id),
            chunk_bytes: door.config.recordings.chunk_bytes,
            chunk_interval: door.config.recordings.chunk_interval,
            max_bytes: door.config.recordings.max_session_bytes,
            strict,
            input: ssh.record_input,
        };
        let (recorder, recording) = match recording_writer::start(
            settings,
            rec_owner.clone(),
            door.audit.clone(),
            door.registry.clone(),
        )
        .await
        {
            Ok((r, g)) => (Some(r), Some(g)),
            Err(e) => {
                warn!(error = %e, strict, "the session's recording cannot start");
                let why = e.to_string();
                let ev = recording_writer::failed_event(
                    &rec_owner,
                    strict,
                    &why,
                    serde_json::json!({ "strict": strict, "at": "start" }),
                );
                let recorded = door.audit.record_durable(ev).await.is_ok();
                if strict || !recorded {
                    return self.refused(format!(
                        "gatehouse: resource \"{}\" allows no unrecorded session, and this one cannot be recorded: {why}",
                        resource.name
                    ));
                }
                (None, None)
            }
        };
        self.conn.authenticated();
        let owner = crate::registry::Owner {
            user: checked.user.clone(),
            resource: resource.name.clone(),
            login: admitted.claims.sid.clone(),
        };
        let (_pid, _secret, kill, registration) =
            door.registry
                .register(self.session_id, owner, None, admitted.grant);
        let mut start = NewEvent::new(EventKind::SessionStart);
        start.actor = checked.user.clone();
        start.resource = resource.name.clone();
        start.action = "connect".into();
        start.session_id = self.session_id.to_string();
        start.detail = serde_json::json!({
            "protocol": "ssh",
            "upstream": ssh.address,
            "login": login,
            "role": admitted.role,
            "grant_id": admitted.grant.map(|g| g.id),
            "client_addr": self.peer.to_string(),
            "certificate_serial": checked.serial,
            "certificate_key": checked.key_fingerprint,
        });
        if door.audit.record(start).await.is_err() {
            return self.refused(
                "gatehouse: the audit log cannot record the session; refused (fail closed)".into(),
            );
        }
        let record = crate::session_record::list(
            &door.store,
            crate::session_record::Listing {
                instance: &door.instance,
                id: self.session_id,
                user: &checked.user,
                resource: &resource.name,
                client_addr: self.peer,
                role: &admitted.role,
                grant: admitted.grant,
                protocol: "ssh",
            },
        );
        let counters = Arc::new(Counters::default());
        let cut = Arc::new(Mutex::new(None));
        if let Ok(mut slot) = self.live_end.lock() {
            *slot = Some(LiveEnd {
                record,
                counters: counters.clone(),
                started: Instant::now(),
                cut: cut.clone(),
                recording,
                _registration: registration,
            });
        }
        info!(resource = %resource.name, login = %login, "ssh session started");
        self.state = State::Live(Box::new(Live {
            user: checked.user,
            resource: resource.name.clone(),
            groups: admitted.claims.groups.clone(),
            auth_method: admitted.claims.auth_method().to_string(),
            mfa: admitted.claims.mfa,
            role: admitted.role.clone(),
            has_grant: admitted.grant.is_some(),
            upstream: Arc::new(upstream),
            counters,
            kill,
            cut,
            running: Arc::default(),
            recorder,
        }));
        Auth::Accept
    }
}

impl Client {
    /// Accepts a client channel whose upstream channel is open, and starts carrying both.
    async fn open_channel(
        &mut self,
        channel: Channel<Msg>,
        up: Channel<russh::client::Msg>,
        reply: ChannelOpenHandle,
        cx: ChannelCtx,
        what: String,
    ) {
        let id = channel.id();
        if let Some(rec) = &cx.rec {
            if let Err(Refused(why)) = rec.record(Kind::Open, Bytes::from(what)).await {
                // A strict session whose recording failed opens nothing more; its cut follows.
                info!(reason = %why, "channel refused: the session's recording failed");
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return;
            }
        }
        // What the client sends arrives through the handler's callbacks; the channel's own
        // copy of it is not read (its receiver dropped, russh skips it).
        let (_unread, client_write) = channel.split();
        let (up_read, up_write) = up.split();
        let (tx, rx) = mpsc::unbounded_channel();
        self.channels.insert(id, tx);
        reply.accept().await;
        tokio::spawn(to_upstream(up_write, rx, cx.clone()));
        tokio::spawn(to_client(up_read, client_write, cx));
    }
}

impl server::Handler for Client {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256);
        Ok(self.refuse_auth(&format!(
            "a plain public key ({fp}) was offered; the gateway takes only its own certificates (`gatehouse ssh-cert`)"
        )))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        if !matches!(self.state, State::Unauthenticated) {
            return Ok(Auth::reject());
        }
        Ok(self.admit(user, certificate).await)
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let handle = session.handle();
        match &self.state {
            State::Refused(why) => {
                // Queued right behind the success, before anything else the client sends is
                // read: a channel it opens at once must not be answered first (the client
                // would show "administratively prohibited" instead of the reason).
                let why = why.clone();
                session.disconnect(Disconnect::ByApplication, &why, "")?;
            }
            State::Live(live) => {
                // The registry's kill. The upstream goes first, so that nothing the client
                // still sends reaches the target and no task waits on it any more; each
                // channel's task then writes the reason to the client's stderr with exit
                // status 255 and closes it; then the connection, with the reason. Every step
                // is bounded: a client that reads nothing is cut all the same.
                let mut kill = live.kill.clone();
                let cut = live.cut.clone();
                let upstream = live.upstream.clone();
                let running = live.running.clone();
                tokio::spawn(async move {
                    let why = loop {
                        if let Some(why) = kill.borrow_and_update().clone() {
                            break why;
                        }
                        if kill.changed().await.is_err() {
                            return;
                        }
                    };
                    if let Ok(mut c) = cut.lock() {
                        *c = Some(why.clone());
                    }
                    info!(reason = %why, "ssh session cut");
                    let _ = tokio::time::timeout(
                        CUT_STEP,
                        upstream.disconnect(
                            Disconnect::ByApplication,
                            "session ended by the gateway",
                            "",
                        ),
                    )
                    .await;
                    running.wait_idle(CUT_STEP).await;
                    let _ = tokio::time::timeout(
                        CUT_STEP,
                        handle.disconnect(
                            Disconnect::ByApplication,
                            format!("gatehouse: session ended: {why}"),
                            String::new(),
                        ),
                    )
                    .await;
                });
            }
            State::Unauthenticated => {}
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No new channel once the session is being cut, nor past the limit.
        let live = match &self.state {
            State::Live(live)
                if live.kill.borrow().is_none() && self.channels.len() < MAX_CHANNELS =>
            {
                live
            }
            _ => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
        };
        let up = match live.upstream.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "the target refused a session channel");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let cx = live.channel_ctx(channel.id(), true, &self.door.audit, self.session_id);
        self.open_channel(channel, up, reply, cx, "session".into())
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let to = format!("{}:{port}", host.chars().take(255).collect::<String>());
        let live = match &self.state {
            State::Live(live)
                if live.kill.borrow().is_none() && self.channels.len() < MAX_CHANNELS =>
            {
                live
            }
            _ => {
                reply
                    .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                    .await;
                return Ok(());
            }
        };
        // Forwarding reaches past the target: its own policy decision (`forward`).
        let asked = Asked {
            action: Action::Forward,
            what: "port forwarding",
            command: String::new(),
            host: host.chars().take(255).collect(),
            port,
            supported: true,
            detail: serde_json::json!({ "request": "direct-tcpip", "channel": "direct-tcpip", "to": to }),
        };
        let allowed = self.decide(asked).await.is_ok();
        if !allowed {
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let up = match live
            .upstream
            .channel_open_direct_tcpip(host, port, originator, originator_port)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                info!(to = %to, error = %e, "the target could not forward");
                reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let cx = live.channel_ctx(channel.id(), false, &self.door.audit, self.session_id);
        self.open_channel(channel, up, reply, cx, format!("direct-tcpip {to}"))
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        _socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        self.refuse_request(
            "socket forwarding",
            serde_json::json!({ "channel": "direct-streamlocal" }),
        )
        .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        self.refuse_request("X11 forwarding", serde_json::json!({ "channel": "x11" }))
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let host: String = address.chars().take(255).collect();
        let asked = Asked {
            action: Action::RemoteForward,
            what: "remote port forwarding",
            command: String::new(),
            detail: serde_json::json!({ "request": "tcpip-forward", "listen": format!("{host}:{port}") }),
            host,
            port: *port,
            supported: false,
        };
        let _ = self.decide(asked).await;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        _path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refuse_request(
            "remote socket forwarding",
            serde_json::json!({ "request": "streamlocal-forward" }),
        )
        .await;
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let asked = Asked {
            action: Action::AgentForward,
            what: "agent forwarding",
            command: String::new(),
            host: String::new(),
            port: 0,
            supported: false,
            detail: serde_json::json!({ "request": "auth-agent-req@openssh.com" }),
        };
        let _ = self.decide(asked).await;
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let asked = Asked {
            action: Action::X11,
            what: "X11 forwarding",
            command: String::new(),
            host: String::new(),
            port: 0,
            supported: false,
            detail: serde_json::json!({ "request": "x11-req", "channel": channel_number(channel) }),
        };
        let _ = self.decide(asked).await;
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let cmd = Cmd::Pty {
            term: term.chars().take(64).collect(),
            cols,
            rows,
            pix_width,
            pix_height,
            modes: modes.to_vec(),
        };
        self.send(channel, cmd).await;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let allowed = ALLOWED_ENV.contains(&name) || (name.starts_with("LC_") && name.len() <= 32);
        if !allowed || value.len() > 1024 {
            session.channel_failure(channel)?;
            self.refuse_request(
                "environment variable",
                serde_json::json!({ "request": "env", "name": name.chars().take(64).collect::<String>() }),
            )
            .await;
            return Ok(());
        }
        session.channel_success(channel)?;
        self.send(channel, Cmd::Env(name.to_string(), value.to_string()))
            .await;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let asked = Asked {
            action: Action::Shell,
            what: "a shell",
            command: String::new(),
            host: String::new(),
            port: 0,
            supported: true,
            detail: serde_json::json!({ "request": "shell", "channel": channel_number(channel) }),
        };
        if let Err(why) = self.decide(asked).await {
            return Client::refuse_on_channel(session, channel, &why);
        }
        session.channel_success(channel)?;
        self.send(channel, Cmd::Shell).await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let shown = &data[..data.len().min(MAX_COMMAND_RECORDED)];
        let command = String::from_utf8_lossy(shown).into_owned();
        let asked = Asked {
            action: Action::Exec,
            what: "the command",
            command: command.clone(),
            host: String::new(),
            port: 0,
            supported: true,
            detail: serde_json::json!({
                "request": "exec",
                "command": command,
                "command_bytes": data.len(),
                "truncated": data.len() > MAX_COMMAND_RECORDED,
                "channel": channel_number(channel),
            }),
        };
        // A command longer than what policies see is refused rather than judged by its start.
        let asked = if data.len() > MAX_COMMAND_RECORDED {
            Asked {
                supported: false,
                what: "a command over 8 KiB",
                ..asked
            }
        } else {
            asked
        };
        if let Err(why) = self.decide(asked).await {
            return Client::refuse_on_channel(session, channel, &why);
        }
        session.channel_success(channel)?;
        if let State::Live(l) = &self.state {
            l.counters.commands.fetch_add(1, Ordering::Relaxed);
        }
        self.send(channel, Cmd::Exec(data.to_vec())).await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let name: String = name.chars().take(64).collect();
        let asked = Asked {
            action: Action::Subsystem,
            what: "the subsystem",
            command: name.clone(),
            host: String::new(),
            port: 0,
            // Only sftp is carried (scp and sftp both use it).
            supported: name == "sftp",
            detail: serde_json::json!({ "request": "subsystem", "name": name, "channel": channel_number(channel) }),
        };
        if let Err(why) = self.decide(asked).await {
            return Client::refuse_on_channel(session, channel, &why);
        }
        session.channel_success(channel)?;
        if let State::Live(l) = &self.state {
            l.counters.commands.fetch_add(1, Ordering::Relaxed);
        }
        self.send(channel, Cmd::Subsystem(name)).await;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(
            channel,
            Cmd::WindowChange(cols, rows, pix_width, pix_height),
        )
        .await;
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Cmd::Signal(signal)).await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let State::Live(l) = &self.state {
            l.counters
                .from_client
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        self.send(channel, Cmd::Data(Bytes::copy_from_slice(data)))
            .await;
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Cmd::Eof).await;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.send(channel, Cmd::Close).await;
        self.channels.remove(&channel);
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let State::Live(live) = &self.state {
            let upstream = live.upstream.clone();
            tokio::spawn(async move {
                let _ = upstream
                    .disconnect(Disconnect::ByApplication, "client left", "")
                    .await;
            });
        }
    }
}

fn channel_number(id: ChannelId) -> String {
    format!("{id}")
}

/// Carries what the client asks of one session channel to its upstream channel, in order.
/// Writes wait for the target's window, so a slow target slows the client (through
/// [`SESSION_BUFFER`] and russh's own bounded queue), and nothing piles up in memory.
async fn to_upstream(
    up: ChannelWriteHalf<russh::client::Msg>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    cx: ChannelCtx,
) {
    let _running = cx.running.enter();
    let cut = cut_signal(cx.kill.clone());
    tokio::pin!(cut);
    loop {
        let cmd = tokio::select! {
            cmd = rx.recv() => cmd,
            _ = &mut cut => return,
        };
        let Some(Queued { cmd, _permit }) = cmd else {
            break;
        };
        if let Some(rec) = &cx.rec {
            if record_request(rec, &cmd).await.is_err() {
                // Unrecorded input is not passed on (strict); the session's cut follows.
                return;
            }
        }
        // Observed only once it is certain to be passed on.
        if let Some(files) = &cx.files {
            match &cmd {
                Cmd::Subsystem(name) => files.subsystem(name),
                Cmd::Data(b) => files.client_sent(b).await,
                _ => {}
            }
        }
        let send = async {
            match cmd {
                Cmd::Close => Err(russh::Error::Disconnect),
                Cmd::Data(b) => up.data_bytes(b).await,
                Cmd::Eof => up.eof().await,
                Cmd::Pty {
                    term,
                    cols,
                    rows,
                    pix_width,
                    pix_height,
                    modes,
                } => {
                    up.request_pty(false, &term, cols, rows, pix_width, pix_height, &modes)
                        .await
                }
                Cmd::Env(k, v) => up.set_env(false, k, v).await,
                Cmd::Shell => up.request_shell(true).await,
                Cmd::Exec(c) => up.exec(true, c).await,
                Cmd::Subsystem(n) => up.request_subsystem(true, n).await,
                Cmd::WindowChange(c, r, w, h) => up.window_change(c, r, w, h).await,
                Cmd::Signal(s) => up.signal(s).await,
            }
        };
        // A write waiting for the target's window gives way to a cut.
        let r = tokio::select! {
            r = send => r,
            _ = &mut cut => return,
        };
        if r.is_err() {
            break;
        }
    }
    let _ = up.close().await;
}

/// What the client is told when the target refuses a channel request.
const REFUSED_BY_TARGET: &str = "gatehouse: the target refused the request\r\n";

/// Records what the client asks of a channel, before it is passed on.
async fn record_request(rec: &ChannelRec, cmd: &Cmd) -> Result<(), Refused> {
    match cmd {
        Cmd::Data(b) => rec.content(Kind::Input, b).await,
        Cmd::Pty {
            term, cols, rows, ..
        } => {
            let d = serde_json::json!({ "term": term, "cols": cols, "rows": rows });
            rec.record(Kind::Pty, Bytes::from(d.to_string())).await
        }
        Cmd::Shell => rec.record(Kind::Shell, Bytes::new()).await,
        Cmd::Exec(c) => rec.record(Kind::Exec, Bytes::copy_from_slice(c)).await,
        Cmd::Subsystem(n) => rec.record(Kind::Subsystem, Bytes::from(n.clone())).await,
        Cmd::WindowChange(c, r, _, _) => {
            rec.record(Kind::Resize, crate::recording::format::size(*c, *r))
                .await
        }
        Cmd::Eof | Cmd::Close | Cmd::Env(..) | Cmd::Signal(_) => Ok(()),
    }
}

/// Records what the target sends on a channel, before the client is sent it.
async fn record_reply(rec: &ChannelRec, msg: &Option<ChannelMsg>) -> Result<(), Refused> {
    match msg {
        Some(ChannelMsg::Data { data }) => rec.content(Kind::Output, data).await,
        Some(ChannelMsg::ExtendedData { data, .. }) => rec.content(Kind::Stderr, data).await,
        Some(ChannelMsg::Eof) => rec.record(Kind::Eof, Bytes::new()).await,
        Some(ChannelMsg::ExitStatus { exit_status }) => {
            let b = Bytes::copy_from_slice(&exit_status.to_be_bytes());
            rec.record(Kind::Exit, b).await
        }
        Some(ChannelMsg::Failure) => {
            let text = Bytes::from_static(REFUSED_BY_TARGET.as_bytes());
            rec.content(Kind::Stderr, &text).await?;
            rec.record(Kind::Exit, Bytes::copy_from_slice(&255u32.to_be_bytes()))
                .await
        }
        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
            let note = format!("the program was killed by signal {signal_name:?}");
            rec.record(Kind::Note, Bytes::from(note)).await?;
            rec.record(Kind::Exit, Bytes::copy_from_slice(&255u32.to_be_bytes()))
                .await
        }
        _ => Ok(()),
    }
}

/// Carries what the target sends on one session channel to the client, until it closes.
/// Writes wait for the client's window: a client that stops reading stops the target's
/// output (the target's window closes), it does not fill the gateway's memory.
async fn to_client(mut up: ChannelReadHalf, client: ChannelWriteHalf<Msg>, cx: ChannelCtx) {
    let _running = cx.running.enter();
    let counters = &cx.counters;
    let cut = cut_signal(cx.kill.clone());
    tokio::pin!(cut);
    // Set when a strict session's recording failed: nothing unrecorded reaches the client.
    let mut refused = None;
    loop {
        let msg = tokio::select! {
            m = up.wait() => m,
            _ = &mut cut => break,
        };
        if let Some(rec) = &cx.rec {
            if let Err(Refused(why)) = record_reply(rec, &msg).await {
                refused = Some(format!("{why}; {NO_UNRECORDED}"));
                break;
            }
        }
        if let (Some(files), Some(ChannelMsg::Data { data })) = (&cx.files, &msg) {
            files.target_sent(data).await;
        }
        let write = async {
            match msg {
                None | Some(ChannelMsg::Close) => return false,
                Some(ChannelMsg::Data { data }) => {
                    counters
                        .to_client
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    return client.data_bytes(data).await.is_ok();
                }
                Some(ChannelMsg::ExtendedData { data, ext }) => {
                    counters
                        .to_client
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    return client.extended_data_bytes(ext, data).await.is_ok();
                }
                Some(ChannelMsg::Eof) => {
                    let _ = client.eof().await;
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    let _ = client.exit_status(exit_status).await;
                }
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    // 255 says "ended abnormally"; the signal is in the gateway's log.
                    warn!(signal = ?signal_name, "the target's program was killed by a signal");
                    let _ = client.exit_status(255).await;
                }
                Some(ChannelMsg::Failure) => {
                    let text = Bytes::from_static(REFUSED_BY_TARGET.as_bytes());
                    let _ = client.extended_data_bytes(1, text).await;
                    let _ = client.exit_status(255).await;
                    let _ = client.eof().await;
                    return false;
                }
                Some(_) => {}
            }
            true
        };
        // A write waiting for the client's window gives way to a cut.
        let go_on = tokio::select! {
            go_on = write => go_on,
            _ = &mut cut => break,
        };
        if !go_on {
            break;
        }
    }
    // The reason from the registry's signal itself: the kill task may not have noted it yet.
    let why = cx
        .kill
        .borrow()
        .clone()
        .or_else(|| cx.cut.lock().ok().and_then(|c| c.clone()))
        .or(refused);
    if let Some(why) = why {
        // The last words of a cut, bounded: a client that reads nothing is closed anyway.
        let last = async {
            let text = Bytes::from(format!("\r\ngatehouse: this session was ended: {why}\r\n"));
            if let Some(rec) = &cx.rec {
                // Refused when the recording is what failed; the words go out all the same.
                let _ = rec.content(Kind::Stderr, &text).await;
                let _ = rec
                    .record(Kind::Exit, Bytes::copy_from_slice(&255u32.to_be_bytes()))
                    .await;
            }
            let _ = client.extended_data_bytes(1, text).await;
            let _ = client.exit_status(255).await;
            let _ = client.eof().await;
        };
        let _ = tokio::time::timeout(CUT_STEP, last).await;
    }
    if let Some(rec) = &cx.rec {
        let _ = tokio::time::timeout(CUT_STEP, rec.close()).await;
    }
    if let Some(files) = &cx.files {
        let _ = tokio::time::timeout(CUT_STEP, files.finish()).await;
    }
    let _ = client.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_name_names_login_and_resource() {
        assert_eq!(parse_target("web-1"), (None, "web-1"));
        assert_eq!(parse_target("root%web-1"), (Some("root"), "web-1"));
        assert_eq!(parse_target("a%b%web-1"), (Some("a%b"), "web-1"));
    }
}
