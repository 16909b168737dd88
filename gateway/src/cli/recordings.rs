//! `gatehouse recordings` (list and search recorded sessions, `export` one as asciicast v2) and
//! `gatehouse replay` (play one in the terminal as it happened). They read the store and the
//! recordings directory where the gateway runs; every chunk is checked against its audit event
//! before it is used, and every read is itself recorded (`audit.read`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use super::audit::ts_arg;
use super::operator::Operator;
use super::{record_from_cli, ConfigArg};
use crate::config::{Config, ProcessEnv, Secrets};
use crate::recording::format::Kind;
use crate::recording::guard::Guard;
use crate::recording::read::{self, Player, SessionRecording};
use crate::store::Store;

#[derive(Args)]
pub(super) struct RecordingsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only sessions of this user.
    #[arg(long)]
    user: Option<String>,
    /// Only sessions on this resource.
    #[arg(long)]
    resource: Option<String>,
    /// Only sessions that started at or after this time (RFC 3339).
    #[arg(long)]
    from: Option<String>,
    /// Only sessions that started before this time (RFC 3339).
    #[arg(long)]
    to: Option<String>,
    /// Only sessions whose output or commands contain this text (ignoring ASCII case; terminal
    /// escape sequences are not part of the text).
    #[arg(long)]
    grep: Option<String>,
    /// Who is reading, recorded in the audit.read event beside the operating-system user.
    #[arg(long)]
    by: Option<String>,
    #[command(subcommand)]
    action: Option<RecordingsAction>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// asciicast v2 (what the asciinema player plays).
    Asciicast,
}

#[derive(Subcommand)]
enum RecordingsAction {
    /// Write one session's recording in another format.
    Export {
        /// The session id (from `gatehouse recordings`).
        session: String,
        #[arg(long, value_enum, default_value = "asciicast")]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
pub(super) struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The session id (from `gatehouse recordings`).
    session: String,
    /// Play this many times faster (0.1 to 1000).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Shorten every pause to at most a second.
    #[arg(long)]
    skip_idle: bool,
    /// Write the recorded bytes exactly as the client received them. Without it, the
    /// sequences a session could use against your terminal are withheld (clipboard, title and
    /// other string sequences, and queries whose answers a terminal types back) and counted.
    #[arg(long)]
    raw: bool,
    /// Who is reading, recorded in the audit.read event beside the operating-system user.
    #[arg(long)]
    by: Option<String>,
}

/// The longest pause `--skip-idle` leaves.
const IDLE_CAP: Duration = Duration::from_secs(1);

async fn open(config: &ConfigArg) -> anyhow::Result<(Config, Store)> {
    let config = Config::load(&config.config, &ProcessEnv, Secrets::Skip)?;
    let store = Store::open(&config.store_url).await?;
    Ok((config, store))
}

/// Records that `operator` read recordings (`action`, of `session` if one).
async fn record_read(
    config: &Config,
    store: &Store,
    operator: &Operator,
    action: &str,
    session: &str,
    extra: serde_json::Value,
) -> anyhow::Result<()> {
    let mut e = crate::audit::NewEvent::new(crate::audit::EventKind::AuditRead);
    e.actor = operator.claimed.clone();
    e.resource = "recordings".into();
    e.action = action.into();
    e.session_id = session.into();
    e.detail = operator.detail_with(extra);
    record_from_cli(config, store, e).await?;
    Ok(())
}

async fn one(store: &Store, id: &str) -> anyhow::Result<SessionRecording> {
    if crate::recording::stored_session_dir(std::path::Path::new(""), id).is_none() {
        bail!("`{id}` is not a session id (32 hex digits, from `gatehouse recordings`)");
    }
    let mut found = read::sessions(store, Some(id)).await?;
    match found.pop() {
        Some(s) => Ok(s),
        None => bail!(
            "no recording of session `{id}` (it recorded nothing yet, or never existed; see `gatehouse recordings`)"
        ),
    }
}

pub(super) async fn run(args: RecordingsArgs) -> anyhow::Result<ExitCode> {
    let (config, store) = open(&args.config).await?;
    let operator = Operator::current(args.by.as_deref())?;
    let dir = config.recordings.dir.clone();
    match args.action {
        Some(RecordingsAction::Export {
            session,
            format: ExportFormat::Asciicast,
            out,
        }) => {
            let s = one(&store, &session).await?;
            record_read(
                &config,
                &store,
                &operator,
                "export",
                &s.id,
                serde_json::json!({ "format": "asciicast" }),
            )
            .await?;
            match out {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating `{}`", path.display()))?;
                    let mut w = std::io::BufWriter::new(file);
                    let n = crate::recording::asciicast::export(&dir, &s, &mut w)?;
                    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                    writeln!(
                        std::io::stderr().lock(),
                        "wrote {n} events to {}",
                        path.display()
                    )?;
                }
                None => {
                    let mut w = std::io::BufWriter::new(std::io::stdout().lock());
                    crate::recording::asciicast::export(&dir, &s, &mut w)?;
                    w.flush()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let from = ts_arg("--from", args.from.as_deref())?;
            let to = ts_arg("--to", args.to.as_deref())?;
            let all = read::sessions(&store, None).await?;
            let picked: Vec<SessionRecording> = all
                .into_iter()
                .filter(|s| args.user.as_ref().is_none_or(|u| &s.user == u))
                .filter(|s| args.resource.as_ref().is_none_or(|r| &s.resource == r))
                .filter(|s| from.as_ref().is_none_or(|f| &s.started >= f))
                .filter(|s| to.as_ref().is_none_or(|t| &s.started < t))
                .collect();
            record_read(
                &config,
                &store,
                &operator,
                "list",
                "",
                serde_json::json!({
                    "user": args.user, "resource": args.resource, "from": from, "to": to,
                    "grep": args.grep,
                }),
            )
            .await?;
            let shown: Vec<&SessionRecording> = match &args.grep {
                Some(text) => read::grep(&dir, &picked, text),
                None => picked.iter().collect(),
            };
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<32} {:<16} {:<16} {:<27} {:>9} {:>12} {:>6} STATUS",
                "SESSION", "USER", "RESOURCE", "STARTED", "SECONDS", "BYTES", "CHUNKS"
            )?;
            for s in shown {
                writeln!(
                    out,
                    "{:<32} {:<16} {:<16} {:<27} {:>9.1} {:>12} {:>6} {}",
                    s.id,
                    s.user,
                    s.resource,
                    s.started,
                    s.duration_us() as f64 / 1e6,
                    s.bytes(),
                    s.chunks.len(),
                    if s.complete() { "complete" } else { "open" }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(super) async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    if !(0.1..=1000.0).contains(&args.speed) {
        bail!("--speed {} is outside 0.1..=1000", args.speed);
    }
    let (config, store) = open(&args.config).await?;
    let operator = Operator::current(args.by.as_deref())?;
    let s = one(&store, &args.session).await?;
    record_read(
        &config,
        &store,
        &operator,
        "replay",
        &s.id,
        serde_json::json!({ "speed": args.speed, "skip_idle": args.skip_idle, "raw": args.raw }),
    )
    .await?;
    writeln!(
        std::io::stderr().lock(),
        "gatehouse: replaying session {} of {} on {}, started {} ({:.1} s{})",
        s.id,
        s.user,
        s.resource,
        s.started,
        s.duration_us() as f64 / 1e6,
        if s.complete() { "" } else { ", not closed" }
    )?;
    let dir = config.recordings.dir.clone();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut at_us = 0u64;
    // One guard per channel and stream: a sequence is judged whole across records.
    let mut guards: std::collections::HashMap<(u32, bool), Guard> = Default::default();
    let mut shown = Vec::new();
    for r in Player::new(&dir, &s) {
        let r = r?;
        let (to_stdout, to_stderr) = match r.kind {
            Kind::Output => (true, false),
            Kind::Stderr => (false, true),
            _ => continue,
        };
        let data: &[u8] = if args.raw {
            &r.data
        } else {
            shown.clear();
            guards
                .entry((r.channel, to_stderr))
                .or_default()
                .push(&r.data, &mut shown);
            &shown
        };
        let mut pause = Duration::from_micros(r.t_us.saturating_sub(at_us)).div_f64(args.speed);
        if args.skip_idle {
            pause = pause.min(IDLE_CAP);
        }
        at_us = at_us.max(r.t_us);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        if to_stdout {
            stdout.write_all(data)?;
            stdout.flush()?;
        }
        if to_stderr {
            stderr.write_all(data)?;
            stderr.flush()?;
        }
    }
    let withheld: u64 = guards.values().map(Guard::withheld).sum();
    if withheld > 0 {
        writeln!(
            stderr,
            "\r\ngatehouse: withheld {withheld} terminal control sequence(s) (titles, clipboard, queries); --raw writes them"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
