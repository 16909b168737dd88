//! The recorder of one live session: records arrive over a bounded queue (a slow disk slows
//! the session, nothing is dropped), are written to the current chunk file within a second,
//! and each chunk, once full or old enough, is synced and its SHA-256 chained into the audit
//! log as a `recording.chunk` event. The last chunk's event says `last`.
//!
//! When writing fails or the session's bound is reached, a `recording.failed` event is
//! written; a `strict` resource's session is then cut through the registry with the reason,
//! and from then on records are discarded, so no sender ever waits on a dead recorder.
//!
//! The bound is kept by the senders themselves, record by record: on a `strict` resource
//! [`Recorder::record`] refuses the record that would pass it, and every one after a
//! failure, so that the session stops passing data on at once (fail closed), not only once
//! the cut arrives. A write failure is noticed by the recorder's task, so up to its queue and
//! a second's buffer may pass before the senders refuse.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_core::session::SessionId;
use ring::digest::{Context, SHA256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::format::{Kind, Record, MAGIC, MAX_RECORD};
use super::text::Stripper;
use super::{chunk_name, SEARCH_FILE};
use crate::audit::{AuditLog, EventKind, NewEvent};
use crate::registry::Registry;

/// What a strict session's cut adds to the recording's failure.
pub const NO_UNRECORDED: &str = "this resource allows no unrecorded session";

/// Records waiting for the recorder.
const QUEUE: usize = 256;

/// Written to the file once this much is buffered (or every second).
const WRITE_AT: usize = 64 * 1024;

/// How one session is recorded.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `recordings_dir/<session id>/`.
    pub dir: PathBuf,
    pub chunk_bytes: usize,
    pub chunk_interval: Duration,
    /// The most bytes one session's recording may take.
    pub max_bytes: u64,
    /// A failed recording ends the session.
    pub strict: bool,
    /// What the client types is recorded too.
    pub input: bool,
}

/// Whose recording it is, for its events.
#[derive(Clone, Debug)]
pub struct Owner {
    pub session: SessionId,
    pub user: String,
    pub resource: String,
}

/// What the recorder's task is sent.
enum Msg {
    Record(Record),
    /// A sender found that the next record would pass the session's bound.
    Bound,
}

/// What the senders and the recorder's task share.
struct Shared {
    /// Records' bytes taken so far, against [`Settings::max_bytes`].
    used: AtomicU64,
    max: u64,
    strict: bool,
    /// Why the recording failed, once it has.
    failed: OnceLock<String>,
}

/// A record the session must not pass on: its resource is `strict` and its recording has
/// failed (the reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// A handle that adds records to the session's recording; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    started: Instant,
    input: bool,
    shared: Arc<Shared>,
}

impl Recorder {
    /// Whether the client's input is recorded.
    pub fn records_input(&self) -> bool {
        self.input
    }

    /// Adds a record, stamped now. Waits while the recorder is behind.
    ///
    /// `Err` says that what this record holds must not be passed on: the resource is
    /// `strict` and the recording has failed, or this record would pass its bound. On a
    /// `best-effort` resource it is always `Ok` (a failed recording's records are dropped).
    pub async fn record(&self, channel: u32, kind: Kind, data: Bytes) -> Result<(), Refused> {
        let t_us = self.started.elapsed().as_micros() as u64;
        let mut data = data;
        loop {
            if self.shared.failed.get().is_some() {
                // Nothing more is recorded; a strict session passes nothing more on.
                return self.check();
            }
            let piece = if data.len() > MAX_RECORD {
                data.split_to(MAX_RECORD)
            } else {
                std::mem::take(&mut data)
            };
            let last = data.is_empty();
            let r = Record {
                t_us,
                channel,
                kind,
                data: piece,
            };
            let len = r.encoded_len() as u64;
            let used = self.shared.used.fetch_add(len, Ordering::AcqRel) + len;
            if used > self.shared.max {
                let why = format!(
                    "the session's recording reached its bound of {} bytes",
                    self.shared.max
                );
                // The first sender past the bound tells the task, which fails the recording.
                if self.shared.failed.set(why).is_ok() {
                    let _ = self.tx.send(Msg::Bound).await;
                }
                return self.check();
            }
            let _ = self.tx.send(Msg::Record(r)).await;
            if last {
                return Ok(());
            }
        }
    }

    /// `Err` once a strict recording has failed.
    fn check(&self) -> Result<(), Refused> {
        match self.shared.failed.get() {
            Some(why) if self.shared.strict => Err(Refused(why.clone())),
            _ => Ok(()),
        }
    }
}

/// The recorder's task; [`Recording::finish`] waits until the last chunk is chained.
pub struct Recording {
    task: tokio::task::JoinHandle<()>,
}

impl Recording {
    /// Waits for the recording to be complete: every [`Recorder`] must be dropped first.
    pub async fn finish(self) {
        let _ = self.task.await;
    }
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the recording directory `{dir}`: {source}")]
pub struct StartError {
    dir: String,
    source: std::io::Error,
}

/// Creates the session's recording directory and starts its recorder.
pub async fn start(
    settings: Settings,
    owner: Owner,
    audit: AuditLog,
    registry: Registry,
) -> Result<(Recorder, Recording), StartError> {
    let dir = settings.dir.clone();
    let made = tokio::task::spawn_blocking(move || create_private_dir(&dir))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    if let Err(source) = made {
        return Err(StartError {
            dir: settings.dir.display().to_string(),
            source,
        });
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        used: AtomicU64::new(0),
        max: settings.max_bytes,
        strict: settings.strict,
        failed: OnceLock::new(),
    });
    let recorder = Recorder {
        tx,
        started,
        input: settings.input,
        shared: shared.clone(),
    };
    let task = Task {
        started_at: gatehouse_core::clock::now_ts(),
        settings,
        owner,
        audit,
        registry,
        shared,
        chunk: Chunk::new(0),
        files: Some(Files::default()),
        total: 0,
        failed: false,
        strippers: std::collections::HashMap::new(),
        text: Vec::new(),
        search_hash: Context::new(&SHA256),
        search_bytes: 0,
        syncing: None,
        sync_failed: Default::default(),
    };
    let task = tokio::spawn(task.run(rx));
    Ok((recorder, Recording { task }))
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        b.mode(0o700);
    }
    b.create(dir)
}

/// The chunk being written.
struct Chunk {
    n: u64,
    /// Encoded bytes not yet written to the file.
    pending: Vec<u8>,
    hash: Context,
    bytes: u64,
    records: u64,
    from_us: Option<u64>,
    to_us: u64,
    opened: Instant,
}

impl Chunk {
    fn new(n: u64) -> Chunk {
        let mut hash = Context::new(&SHA256);
        hash.update(MAGIC);
        Chunk {
            n,
            pending: MAGIC.to_vec(),
            hash,
            bytes: MAGIC.len() as u64,
            records: 0,
            from_us: None,
            to_us: 0,
            opened: Instant::now(),
        }
    }
}

/// The open files: the current chunk and the search text.
#[derive(Default)]
struct Files {
    chunk: Option<std::fs::File>,
    search: Option<std::fs::File>,
}

struct Task {
    started_at: String,
    settings: Settings,
    owner: Owner,
    audit: AuditLog,
    registry: Registry,
    shared: Arc<Shared>,
    chunk: Chunk,
    /// `None` while a blocking write holds them.
    files: Option<Files>,
    total: u64,
    failed: bool,
    strippers: std::collections::HashMap<u32, Stripper>,
    /// Search text not yet written.
    text: Vec<u8>,
    /// Over all the search text written so far: each chunk's event carries it, so that the
    /// search file is checked like the chunks.
    search_hash: Context,
    search_bytes: u64,
    /// The last chunk's sync and event, running.
    syncing: Option<tokio::task::JoinHandle<()>>,
    sync_failed: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Msg::Record(r)) => self.add(r).await,
                    Some(Msg::Bound) => self.bound().await,
                    None => break,
                },
                _ = tick.tick() => {
                    self.check_sync().await;
                    if !self.failed {
                        self.write().await;
                        if self.chunk.records > 0
                            && self.chunk.opened.elapsed() >= self.settings.chunk_interval
                        {
                            self.roll(false).await;
                        }
                    }
                }
            }
        }
        if !self.failed {
            self.roll(true).await;
        }
        // Complete means the last chunk is synced and chained.
        if let Some(syncing) = self.syncing.take() {
            let _ = syncing.await;
        }
        self.check_sync().await;
    }

    /// The session's bound is reached (a sender found it): what was recorded up to it is
    /// kept and chained, as the last chunk, and the recording fails.
    async fn bound(&mut self) {
        if self.failed {
            return;
        }
        let why = self.shared.failed.get().cloned().unwrap_or_else(|| {
            format!(
                "the session's recording reached its bound of {} bytes",
                self.settings.max_bytes
            )
        });
        self.roll(true).await;
        if let Some(syncing) = self.syncing.take() {
            let _ = syncing.await;
        }
        if !self.failed {
            self.fail(why).await;
        }
    }

    async fn add(&mut self, r: Record) {
        if self.failed {
            return;
        }
        let len = r.encoded_len() as u64;
        match r.kind {
            Kind::Output | Kind::Stderr => {
                let s = self.strippers.entry(r.channel).or_default();
                s.push(&r.data, &mut self.text);
            }
            Kind::Exec => {
                self.text.extend_from_slice(b"\n$ ");
                let mut s = Stripper::default();
                s.push(&r.data, &mut self.text);
                self.text.push(b'\n');
            }
            _ => {}
        }
        let at = self.chunk.pending.len();
        r.encode(&mut self.chunk.pending);
        self.chunk.hash.update(&self.chunk.pending[at..]);
        self.chunk.bytes += len;
        self.chunk.records += 1;
        self.chunk.from_us.get_or_insert(r.t_us);
        self.chunk.to_us = r.t_us;
        if self.chunk.pending.len() >= WRITE_AT {
            self.write().await;
        }
        if self.chunk.bytes >= self.settings.chunk_bytes as u64 {
            self.roll(false).await;
        }
    }

    /// Writes what is pending to the files (off the async threads); `sync` also makes the
    /// chunk durable.
    async fn write_files(&mut self, sync: bool) -> std::io::Result<()> {
        let Some(mut files) = self.files.take() else {
            return Err(std::io::Error::other("the recording files are gone"));
        };
        let pending = std::mem::take(&mut self.chunk.pending);
        let text = std::mem::take(&mut self.text);
        self.search_hash.update(&text);
        self.search_bytes += text.len() as u64;
        let chunk_path = self.settings.dir.join(chunk_name(self.chunk.n));
        let search_path = self.settings.dir.join(SEARCH_FILE);
        let (files, r) = tokio::task::spawn_blocking(move || {
            let r = (|| {
                if files.chunk.is_none() {
                    files.chunk = Some(open_new(&chunk_path)?);
                }
                if files.search.is_none() {
                    files.search = Some(open_append(&search_path)?);
                }
                if let Some(f) = files.chunk.as_mut() {
                    f.write_all(&pending)?;
                    if sync {
                        f.sync_all()?;
                    }
                }
                if let Some(f) = files.search.as_mut() {
                    f.write_all(&text)?;
                }
                Ok(())
            })();
            (files, r)
        })
        .await
        .map_err(std::io::Error::other)?;
        self.files = Some(files);
        r
    }

    async fn write(&mut self) {
        if self.chunk.pending.is_empty() && self.text.is_empty() {
            return;
        }
        if let Err(e) = self.write_files(false).await {
            self.fail(format!("writing the session's recording failed: {e}"))
                .await;
        }
    }

    /// Closes the current chunk, chains its hash into the audit log and starts the next.
    ///
    /// The sync and the event happen in a task of their own (each after the one before),
    /// so that a slow disk's sync does not stop the session's records from being taken: a
    /// recorder that stops taking them would stall the session's output, and through SSH's
    /// windows its input too.
    async fn roll(&mut self, last: bool) {
        if let Err(e) = self.write_files(false).await {
            self.fail(format!("writing the session's recording failed: {e}"))
                .await;
            return;
        }
        let next = Chunk::new(self.chunk.n + 1);
        let done = std::mem::replace(&mut self.chunk, next);
        let (file, search) = match self.files.as_mut() {
            Some(files) => (
                files.chunk.take(),
                files.search.as_ref().and_then(|f| f.try_clone().ok()),
            ),
            None => (None, None),
        };
        self.total += done.bytes;
        let sha256 = crate::audit::event::hex(done.hash.finish().as_ref());
        let mut e = NewEvent::new(EventKind::RecordingChunk);
        e.actor = self.owner.user.clone();
        e.resource = self.owner.resource.clone();
        e.action = "record".into();
        e.session_id = self.owner.session.to_string();
        e.detail = serde_json::json!({
            "chunk": done.n,
            "file": chunk_name(done.n),
            "sha256": sha256,
            "bytes": done.bytes,
            "records": done.records,
            "from_us": done.from_us.unwrap_or(done.to_us),
            "to_us": done.to_us,
            "last": last,
            "started": self.started_at,
            "search_bytes": self.search_bytes,
            "search_sha256": crate::audit::event::hex(self.search_hash.clone().finish().as_ref()),
        });
        let prev = self.syncing.take();
        let audit = self.audit.clone();
        let sync_failed = self.sync_failed.clone();
        self.syncing = Some(tokio::spawn(async move {
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let synced = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                if let Some(f) = file {
                    f.sync_all()?;
                }
                if let Some(f) = search {
                    f.sync_all()?;
                }
                Ok(())
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match synced {
                Ok(()) => {
                    if audit.record(e).await.is_err() {
                        warn!("the audit log did not take a recording chunk's event");
                    }
                }
                Err(e) => {
                    if let Ok(mut f) = sync_failed.lock() {
                        f.get_or_insert(format!("syncing the session's recording failed: {e}"));
                    }
                }
            }
        }));
    }

    /// Fails the recording if a background sync failed.
    async fn check_sync(&mut self) {
        let why = self.sync_failed.lock().ok().and_then(|mut f| f.take());
        if let Some(why) = why {
            if !self.failed {
                self.fail(why).await;
            }
        }
    }

    async fn fail(&mut self, why: String) {
        self.failed = true;
        // From now on the senders refuse (strict) or drop (best-effort) their records.
        let _ = self.shared.failed.set(why.clone());
        warn!(reason = %why, strict = self.settings.strict, "session recording failed");
        let detail = serde_json::json!({
            "chunk": self.chunk.n,
            "strict": self.settings.strict,
            "recorded_bytes": self.total,
        });
        let e = failed_event(&self.owner, self.settings.strict, &why, detail);
        let _ = self.audit.record_durable(e).await;
        if self.settings.strict {
            let reason = format!("{why}; {NO_UNRECORDED}");
            if self
                .registry
                .kill_session(&self.owner.session.to_string(), &reason)
                .is_some()
            {
                info!("cut the session: its recording failed");
            }
        }
    }
}

/// The `recording.failed` event: `decision` says what became of the session.
pub fn failed_event(owner: &Owner, strict: bool, why: &str, detail: serde_json::Value) -> NewEvent {
    let mut e = NewEvent::new(EventKind::RecordingFailed);
    e.actor = owner.user.clone();
    e.resource = owner.resource.clone();
    e.action = "record".into();
    e.session_id = owner.session.to_string();
    e.reason = why.to_string();
    e.decision = if strict { "cut" } else { "continued" }.into();
    e.detail = detail;
    e
}

fn open_new(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    o.open(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;
    use crate::store::Store;

    async fn recorder(
        dir: &std::path::Path,
        strict: bool,
        max: u64,
    ) -> (Recorder, Recording, Store) {
        let store = Store::open(&format!("sqlite:{}", dir.join("store.db").display()))
            .await
            .unwrap();
        let key = Arc::new(SigningKey::load_or_create(&dir.join("audit.pem")).unwrap());
        let (audit, _writer) = AuditLog::spawn(store.clone(), key, 1000, 64);
        let settings = Settings {
            dir: dir.join("rec"),
            chunk_bytes: 1 << 20,
            chunk_interval: Duration::from_secs(60),
            max_bytes: max,
            strict,
            input: false,
        };
        let owner = Owner {
            session: SessionId([7; 16]),
            user: "alice".into(),
            resource: "web-1".into(),
        };
        let (r, rec) = start(settings, owner, audit, Registry::default())
            .await
            .unwrap();
        (r, rec, store)
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gh-rec-{name}-{}-{}",
            std::process::id(),
            crate::audit::event::hex(&gatehouse_core::random::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// On a strict resource the record that would pass the bound is refused at once, by the
    /// sender, and so is every one after it; the failure is audited once.
    #[tokio::test]
    async fn a_strict_recording_refuses_the_record_past_its_bound_and_every_one_after() {
        let dir = temp("strict");
        let piece = Bytes::from(vec![b'x'; 1000]);
        let one = Record {
            t_us: 0,
            channel: 0,
            kind: Kind::Output,
            data: piece.clone(),
        }
        .encoded_len() as u64;
        // Room for exactly three records.
        let (r, rec, store) = recorder(&dir, true, 3 * one).await;
        for _ in 0..3 {
            assert_eq!(r.record(0, Kind::Output, piece.clone()).await, Ok(()));
        }
        let refused = r.record(0, Kind::Output, piece.clone()).await.unwrap_err();
        assert!(
            refused.0.contains(&format!("bound of {} bytes", 3 * one)),
            "{refused:?}"
        );
        // Even a record that would fit is refused now: the recording has failed.
        assert!(r.record(0, Kind::Eof, Bytes::new()).await.is_err());
        drop(r);
        tokio::time::timeout(Duration::from_secs(10), rec.finish())
            .await
            .unwrap();
        let failed = store
            .audit_events_of_kind("recording.failed", None, 0, 10)
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].decision, "cut");
        // What was recorded up to the bound is kept and chained.
        let chunks = store
            .audit_events_of_kind("recording.chunk", None, 0, 10)
            .await
            .unwrap();
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        assert!(
            chunks[0].detail.contains("\"records\":3"),
            "{}",
            chunks[0].detail
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// On a best-effort resource the session goes on: nothing is refused, the failure is
    /// audited as `continued`.
    #[tokio::test]
    async fn a_best_effort_recording_past_its_bound_refuses_nothing() {
        let dir = temp("best-effort");
        let (r, rec, store) = recorder(&dir, false, 100).await;
        for _ in 0..5 {
            assert_eq!(
                r.record(0, Kind::Output, Bytes::from(vec![b'y'; 64])).await,
                Ok(())
            );
        }
        drop(r);
        tokio::time::timeout(Duration::from_secs(10), rec.finish())
            .await
            .unwrap();
        let failed = store
            .audit_events_of_kind("recording.failed", None, 0, 10)
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].decision, "continued");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
