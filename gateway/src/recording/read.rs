//! Reading recordings back: the sessions recorded (from their `recording.chunk` events, the
//! index), each chunk loaded only after its size and SHA-256 match its event, and
//! [`verify`], which checks every recording on disk against the audit log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ring::digest::{digest, SHA256};
use serde_json::Value;

use super::format::{self, FormatError, Record};
use super::{chunk_name, stored_session_dir, SEARCH_FILE};
use crate::audit::event::hex;
use crate::audit::{AuditEvent, EventKind};
use crate::store::{Store, StoreError};

/// One chunk as its `recording.chunk` event describes it.
#[derive(Clone, Debug)]
pub struct ChunkRef {
    /// The event's sequence number.
    pub seq: u64,
    pub session: String,
    pub user: String,
    pub resource: String,
    pub n: u64,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub records: u64,
    pub from_us: u64,
    pub to_us: u64,
    pub last: bool,
    /// When the session's recording started.
    pub started: String,
    /// The search file's length and SHA-256 once this chunk was closed.
    pub search_bytes: u64,
    pub search_sha256: String,
}

impl ChunkRef {
    /// The chunk an event describes; `None` for another kind or a detail that does not parse.
    pub fn from_event(e: &AuditEvent) -> Option<ChunkRef> {
        if e.kind != EventKind::RecordingChunk.as_str() {
            return None;
        }
        let d: Value = serde_json::from_str(&e.detail).ok()?;
        let u = |k: &str| d[k].as_u64();
        let s = |k: &str| d[k].as_str().map(str::to_string);
        Some(ChunkRef {
            seq: e.seq,
            session: e.session_id.clone(),
            user: e.actor.clone(),
            resource: e.resource.clone(),
            n: u("chunk")?,
            file: s("file")?,
            sha256: s("sha256")?,
            bytes: u("bytes")?,
            records: u("records")?,
            from_us: u("from_us")?,
            to_us: u("to_us")?,
            last: d["last"].as_bool()?,
            started: s("started")?,
            search_bytes: u("search_bytes").unwrap_or(0),
            search_sha256: s("search_sha256").unwrap_or_default(),
        })
    }
}

/// A recorded session: its chunks in order.
#[derive(Clone, Debug)]
pub struct SessionRecording {
    pub id: String,
    pub user: String,
    pub resource: String,
    pub started: String,
    pub chunks: Vec<ChunkRef>,
}

impl SessionRecording {
    /// Whether the last chunk was closed (the session ended and its recording is whole).
    pub fn complete(&self) -> bool {
        self.chunks.last().is_some_and(|c| c.last)
    }

    pub fn bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.bytes).sum()
    }

    /// How long the recording runs, in microseconds.
    pub fn duration_us(&self) -> u64 {
        self.chunks.iter().map(|c| c.to_us).max().unwrap_or(0)
    }
}

/// Every `recording.chunk` event (of one session, if given), in order.
pub async fn chunk_events(
    store: &Store,
    session: Option<&str>,
) -> Result<Vec<ChunkRef>, StoreError> {
    let kind = EventKind::RecordingChunk.as_str();
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .audit_events_of_kind(kind, session, after, 1000)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        out.extend(page.iter().filter_map(ChunkRef::from_event));
    }
    Ok(out)
}

/// The recorded sessions (of one session, if given), oldest first.
pub async fn sessions(
    store: &Store,
    session: Option<&str>,
) -> Result<Vec<SessionRecording>, StoreError> {
    let mut by_id: BTreeMap<String, SessionRecording> = BTreeMap::new();
    for c in chunk_events(store, session).await? {
        let s = by_id
            .entry(c.session.clone())
            .or_insert_with(|| SessionRecording {
                id: c.session.clone(),
                user: c.user.clone(),
                resource: c.resource.clone(),
                started: c.started.clone(),
                chunks: Vec::new(),
            });
        s.chunks.push(c);
    }
    let mut all: Vec<SessionRecording> = by_id.into_values().collect();
    for s in &mut all {
        s.chunks.sort_by_key(|c| (c.n, c.seq));
    }
    all.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// Why a chunk cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the session id `{0}` in the audit log is not a session id")]
    BadSession(String),
    #[error("`{path}` is missing (chunk {n}, seq {seq})")]
    Missing { path: PathBuf, n: u64, seq: u64 },
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`{path}` is {got} bytes, its audit event (seq {seq}) says {want}: truncated or extended"
    )]
    Size {
        path: PathBuf,
        seq: u64,
        want: u64,
        got: u64,
    },
    #[error("`{path}` does not match the SHA-256 in its audit event (seq {seq}): it was altered")]
    Hash { path: PathBuf, seq: u64 },
    #[error("`{path}` names itself `{named}` in its audit event (seq {seq})")]
    Name {
        path: PathBuf,
        named: String,
        seq: u64,
    },
    #[error("`{path}` matches its event but does not decode: {source}")]
    Format { path: PathBuf, source: FormatError },
}

/// Where chunk `c` lives under `dir`.
pub fn chunk_path(dir: &Path, c: &ChunkRef) -> Result<PathBuf, ReadError> {
    let d = stored_session_dir(dir, &c.session)
        .ok_or_else(|| ReadError::BadSession(c.session.clone()))?;
    Ok(d.join(chunk_name(c.n)))
}

/// The chunk's bytes, after checking them against its event.
pub fn load_checked(dir: &Path, c: &ChunkRef) -> Result<Bytes, ReadError> {
    let path = chunk_path(dir, c)?;
    if c.file != chunk_name(c.n) {
        return Err(ReadError::Name {
            path,
            named: c.file.clone(),
            seq: c.seq,
        });
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ReadError::Missing {
                path,
                n: c.n,
                seq: c.seq,
            })
        }
        Err(source) => return Err(ReadError::Io { path, source }),
    };
    if bytes.len() as u64 != c.bytes {
        return Err(ReadError::Size {
            path,
            seq: c.seq,
            want: c.bytes,
            got: bytes.len() as u64,
        });
    }
    if hex(digest(&SHA256, &bytes).as_ref()) != c.sha256 {
        return Err(ReadError::Hash { path, seq: c.seq });
    }
    Ok(Bytes::from(bytes))
}

/// The chunk's records, after checking it against its event.
pub fn load(dir: &Path, c: &ChunkRef) -> Result<Vec<Record>, ReadError> {
    let bytes = load_checked(dir, c)?;
    format::decode(&bytes).map_err(|source| ReadError::Format {
        path: chunk_path(dir, c).unwrap_or_default(),
        source,
    })
}

/// Plays a recording chunk by chunk: only one chunk is in memory at a time, and a chunk that
/// does not match its event stops the replay with the reason.
pub struct Player<'a> {
    dir: &'a Path,
    chunks: std::slice::Iter<'a, ChunkRef>,
    current: std::vec::IntoIter<Record>,
}

impl<'a> Player<'a> {
    pub fn new(dir: &'a Path, session: &'a SessionRecording) -> Player<'a> {
        Player {
            dir,
            chunks: session.chunks.iter(),
            current: Vec::new().into_iter(),
        }
    }
}

impl Iterator for Player<'_> {
    type Item = Result<Record, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.current.next() {
                return Some(Ok(r));
            }
            let c = self.chunks.next()?;
            match load(self.dir, c) {
                Ok(records) => self.current = records.into_iter(),
                Err(e) => {
                    // Nothing after a bad chunk is played.
                    self.chunks = [].iter();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The sessions (among `candidates`) whose search text contains `needle`, ignoring case.
/// The search file is checked against the SHA-256 its last chunk event carries first; a
/// session whose file does not match is searched in its verified chunks instead.
pub fn grep<'a>(
    dir: &Path,
    candidates: &'a [SessionRecording],
    needle: &str,
) -> Vec<&'a SessionRecording> {
    let needle = needle.as_bytes();
    candidates
        .iter()
        .filter(|s| {
            match search_text(dir, s) {
                Some(text) => super::text::contains_ignore_case(&text, needle),
                // No trustworthy index: read the recording itself.
                None => {
                    let mut text = Vec::new();
                    let mut strippers: BTreeMap<u32, super::text::Stripper> = BTreeMap::new();
                    for r in Player::new(dir, s).map_while(Result::ok) {
                        match r.kind {
                            format::Kind::Output | format::Kind::Stderr => strippers
                                .entry(r.channel)
                                .or_default()
                                .push(&r.data, &mut text),
                            format::Kind::Exec => {
                                text.push(b'\n');
                                text.extend_from_slice(&r.data);
                                text.push(b'\n');
                            }
                            _ => {}
                        }
                    }
                    super::text::contains_ignore_case(&text, needle)
                }
            }
        })
        .collect()
}

/// The session's search text up to what its last chunk event vouches for, if it matches.
fn search_text(dir: &Path, s: &SessionRecording) -> Option<Vec<u8>> {
    let last = s.chunks.last()?;
    if last.search_sha256.is_empty() {
        return None;
    }
    let path = stored_session_dir(dir, &s.id)?.join(SEARCH_FILE);
    let mut text = std::fs::read(path).ok()?;
    if (text.len() as u64) < last.search_bytes {
        return None;
    }
    text.truncate(last.search_bytes as usize);
    (hex(digest(&SHA256, &text).as_ref()) == last.search_sha256).then_some(text)
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Each one fails verification: it names the file and the event.
    pub problems: Vec<String>,
    /// Worth saying, not a failure (a live session's chunk not yet closed).
    pub notes: Vec<String>,
    pub sessions: usize,
    pub chunks: usize,
    pub bytes: u64,
}

/// Checks every recording in the audit log against the files under `dir`, and every file
/// under `dir` against the log: a missing, truncated, edited or renamed chunk, a chunk event
/// chained twice, a gap in a session's chunks, a search file that does not match, and a file
/// the log does not know are problems. The trailing chunk of a session whose recording has no
/// `last` chunk yet (live, or the gateway stopped first) was never chained: a note.
pub async fn verify(store: &Store, dir: &Path) -> Result<Findings, StoreError> {
    let sessions = sessions(store, None).await?;
    let dir = dir.to_path_buf();
    let f = tokio::task::spawn_blocking(move || verify_files(&dir, &sessions))
        .await
        .unwrap_or_else(|e| Findings {
            problems: vec![format!("the verification did not finish: {e}")],
            ..Findings::default()
        });
    Ok(f)
}

fn verify_files(dir: &Path, sessions: &[SessionRecording]) -> Findings {
    let mut f = Findings {
        sessions: sessions.len(),
        ..Findings::default()
    };
    let mut known = std::collections::BTreeSet::new();
    for s in sessions {
        known.insert(s.id.clone());
        let Some(sdir) = stored_session_dir(dir, &s.id) else {
            f.problems.push(format!(
                "the audit log names a recording of `{}`, which is not a session id",
                s.id
            ));
            continue;
        };
        let mut expected = 0u64;
        let mut chained = std::collections::BTreeSet::new();
        for c in &s.chunks {
            f.chunks += 1;
            f.bytes += c.bytes;
            if !chained.insert(c.n) {
                f.problems.push(format!(
                    "session {}: chunk {} is chained twice (again at seq {})",
                    s.id, c.n, c.seq
                ));
                continue;
            }
            if c.n != expected {
                f.problems.push(format!(
                    "session {}: chunks {expected}..{} have no event in the audit log (next is seq {})",
                    s.id,
                    c.n.saturating_sub(1),
                    c.seq
                ));
            }
            expected = c.n + 1;
            if let Err(e) = load_checked(dir, c) {
                f.problems.push(e.to_string());
            }
        }
        if let Some(last) = s.chunks.last() {
            if !last.search_sha256.is_empty() && search_text(dir, s).is_none() {
                f.problems.push(format!(
                    "`{}` does not match the SHA-256 of the search text in seq {}",
                    sdir.join(SEARCH_FILE).display(),
                    last.seq
                ));
            }
        }
        // Files the log does not know.
        let Ok(entries) = std::fs::read_dir(&sdir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == SEARCH_FILE {
                continue;
            }
            let n = name
                .strip_suffix(".rec")
                .and_then(|n| n.parse::<u64>().ok());
            match n {
                Some(n) if chained.contains(&n) && chunk_name(n) == name => {}
                Some(n) if n == expected && !s.complete() && chunk_name(n) == name => {
                    f.notes.push(format!(
                        "`{}`: the last chunk of session {} is not closed yet (the session is live, the gateway stopped before closing it, or writing it failed: see recording.failed); it is not chained",
                        entry.path().display(),
                        s.id
                    ));
                }
                _ => f.problems.push(format!(
                    "`{}` is not in the audit log",
                    entry.path().display()
                )),
            }
        }
    }
    // Directories the log does not know: a session whose first chunk is not closed yet
    // holds only that chunk and its search text.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let files: Vec<String> = std::fs::read_dir(entry.path())
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            let first_only = stored_session_dir(dir, &name).is_some()
                && files.iter().any(|n| *n == chunk_name(0))
                && files
                    .iter()
                    .all(|n| *n == chunk_name(0) || n == SEARCH_FILE);
            if first_only {
                f.notes.push(format!(
                    "`{}`: a recording whose first chunk is not closed yet (the session is live, the gateway stopped before closing it, or writing it failed: see recording.failed)",
                    entry.path().display()
                ));
            } else {
                f.problems.push(format!(
                    "`{}` is not a recording in the audit log",
                    entry.path().display()
                ));
            }
        }
    }
    f
}
