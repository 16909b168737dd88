//! The remote agent's on-disk event spool: every observed event is appended here, numbered,
//! before it is sent; it leaves only when the gateway acknowledges it as durable.
//!
//! Layout in the spool directory:
//! - `events.log`: records, each a 4-byte big-endian length and a JSON [`SpooledEvent`].
//!   A torn record at the end (a crash in the middle of a write) is cut off on open.
//! - `acked`: the highest sequence number the gateway acknowledged (text).
//!
//! Appends go to the file at once (`write`), so a `kill -9` of the agent loses nothing that was
//! appended; a flusher calls `fdatasync` every [`SYNC_EVERY`] while there is unsynced data, which
//! bounds what a power cut can take. Unacknowledged events are also held in memory for sending.
//! The spool is bounded: appends wait while `max_bytes` of events are unacknowledged
//! (back-pressure, never loss), and [`Spool::accepts_sessions`] turns false a little earlier, so
//! the agent refuses new sessions before live ones have to wait.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::tunnel::{EventBody, SpooledEvent, MAX_FRAME};

/// How often unsynced appends are flushed to stable storage.
pub const SYNC_EVERY: Duration = Duration::from_millis(50);

/// When the file holds only acknowledged events and is larger than this, it is emptied.
const TRUNCATE_AT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool {path}: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot encode event: {0}")]
    Encode(#[from] serde_json::Error),
}

struct State {
    dir: PathBuf,
    file: File,
    file_bytes: u64,
    dirty: bool,
    acked: u64,
    /// The acknowledged cursor as last written to the `acked` file (written by the flusher, not
    /// per acknowledgement: a stale file only means resending events the gateway already has,
    /// which it skips).
    acked_on_disk: u64,
    head: u64,
    /// Unacknowledged events: (seq, encoded record including its length prefix).
    pending: VecDeque<(u64, Bytes)>,
    pending_bytes: usize,
}

/// A handle to the spool; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    state: Arc<Mutex<State>>,
    max_bytes: usize,
    head_tx: Arc<watch::Sender<u64>>,
    space: Arc<Notify>,
}

fn io_err(path: &Path, source: io::Error) -> SpoolError {
    SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, keeping at most `max_bytes` of unacknowledged
    /// events.
    pub fn open(dir: &Path, max_bytes: usize) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let acked_path = dir.join("acked");
        let acked = match std::fs::read_to_string(&acked_path) {
            Ok(s) => s.trim().parse::<u64>().map_err(|e| SpoolError::Corrupt {
                path: acked_path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io_err(&acked_path, e)),
        };
        let log_path = dir.join("events.log");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| io_err(&log_path, e))?;
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut data))
            .map_err(|e| io_err(&log_path, e))?;
        let mut pending = VecDeque::new();
        let mut pending_bytes = 0;
        let mut head = acked;
        let mut pos = 0usize;
        while pos + 4 <= data.len() {
            let len = u32::from_be_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]])
                as usize;
            let end = pos + 4 + len;
            if len > MAX_FRAME || end > data.len() {
                break;
            }
            let Ok(event) = serde_json::from_slice::<SpooledEvent>(&data[pos + 4..end]) else {
                break;
            };
            head = head.max(event.seq);
            if event.seq > acked {
                pending_bytes += end - pos;
                pending.push_back((event.seq, Bytes::copy_from_slice(&data[pos..end])));
            }
            pos = end;
        }
        if pos < data.len() {
            tracing::warn!(
                path = %log_path.display(),
                kept = pos,
                cut = data.len() - pos,
                "spool ends in a torn record (the agent stopped mid-write); cutting it off"
            );
            file.set_len(pos as u64).map_err(|e| io_err(&log_path, e))?;
        }
        let (head_tx, _) = watch::channel(head);
        Ok(Spool {
            state: Arc::new(Mutex::new(State {
                dir: dir.to_path_buf(),
                file,
                file_bytes: pos as u64,
                dirty: false,
                acked,
                acked_on_disk: acked,
                head,
                pending,
                pending_bytes,
            })),
            max_bytes,
            head_tx: Arc::new(head_tx),
            space: Arc::new(Notify::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written in a way that
        // matters more than losing the agent; recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event, waiting while the spool is full. Returns its sequence number.
    pub async fn append(
        &self,
        session_id: &str,
        user: &str,
        resource: &str,
        body: EventBody,
    ) -> Result<u64, SpoolError> {
        loop {
            let waiting = self.space.notified();
            {
                let mut st = self.lock();
                if st.pending_bytes < self.max_bytes {
                    let seq = st.head + 1;
                    let event = SpooledEvent {
                        seq,
                        ts: gatehouse_core::clock::now_ts(),
                        session_id: session_id.to_string(),
                        user: user.to_string(),
                        resource: resource.to_string(),
                        body,
                    };
                    let record = Bytes::from(crate::tunnel::frame(&event)?);
                    let path = st.dir.join("events.log");
                    st.file.write_all(&record).map_err(|e| io_err(&path, e))?;
                    st.file_bytes += record.len() as u64;
                    st.dirty = true;
                    st.head = seq;
                    st.pending_bytes += record.len();
                    st.pending.push_back((seq, record));
                    drop(st);
                    self.head_tx.send_replace(seq);
                    return Ok(seq);
                }
            }
            tracing::warn!(
                max_bytes = self.max_bytes,
                "event spool is full; the session waits until the gateway acknowledges events"
            );
            waiting.await;
        }
    }

    /// Whether a new session may start: false once the unacknowledged events fill 7/8 of the
    /// spool, so that live sessions keep room to finish.
    pub fn accepts_sessions(&self) -> bool {
        self.lock().pending_bytes < self.max_bytes / 8 * 7
    }

    /// Up to `limit` encoded events after `after`, in order.
    pub fn unsent(&self, after: u64, limit: usize) -> Vec<(u64, Bytes)> {
        let st = self.lock();
        // `pending` holds consecutive sequence numbers: index straight to the first one after
        // `after` instead of scanning (the sender asks after every append).
        let Some(first) = st.pending.front().map(|(s, _)| *s) else {
            return Vec::new();
        };
        let skip = after.saturating_add(1).saturating_sub(first) as usize;
        st.pending
            .iter()
            .skip(skip)
            .skip_while(|(s, _)| *s <= after)
            .take(limit)
            .cloned()
            .collect()
    }

    /// The newest sequence number; changes are published on [`Spool::watch_head`].
    pub fn head(&self) -> u64 {
        self.lock().head
    }

    pub fn acked(&self) -> u64 {
        self.lock().acked
    }

    /// Number and bytes of unacknowledged events.
    pub fn backlog(&self) -> (usize, usize) {
        let st = self.lock();
        (st.pending.len(), st.pending_bytes)
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// The gateway holds every event up to `seq` durably: forget them.
    pub fn ack(&self, seq: u64) -> Result<(), SpoolError> {
        let mut st = self.lock();
        if seq <= st.acked {
            return Ok(());
        }
        let seq = seq.min(st.head);
        while st.pending.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, rec)) = st.pending.pop_front() {
                st.pending_bytes -= rec.len();
            }
        }
        st.acked = seq;
        if st.pending.is_empty() && st.file_bytes > TRUNCATE_AT {
            // Everything in the file is acknowledged: record that first, then empty it.
            write_acked(&mut st)?;
            let path = st.dir.join("events.log");
            st.file.set_len(0).map_err(|e| io_err(&path, e))?;
            st.file_bytes = 0;
        }
        drop(st);
        self.space.notify_waiters();
        Ok(())
    }

    /// Continues numbering after `seq` when the spool is behind it (a new enrollment of a name
    /// the gateway has events from): the gateway keeps one cursor per agent name.
    pub fn advance_to(&self, seq: u64) -> Result<(), SpoolError> {
        let mut st = self.lock();
        if st.head >= seq {
            return Ok(());
        }
        st.head = seq;
        drop(st);
        self.head_tx.send_replace(seq);
        self.ack(seq)?;
        write_acked(&mut self.lock())
    }

    /// Flushes appended events to stable storage and records the acknowledged cursor, when
    /// either changed.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let mut st = self.lock();
        if st.acked != st.acked_on_disk {
            write_acked(&mut st)?;
        }
        if !st.dirty {
            return Ok(());
        }
        let path = st.dir.join("events.log");
        st.file.sync_data().map_err(|e| io_err(&path, e))?;
        st.dirty = false;
        Ok(())
    }

    /// Runs [`Spool::sync`] every [`SYNC_EVERY`] forever.
    pub async fn run_flusher(self) {
        let mut tick = tokio::time::interval(SYNC_EVERY);
        loop {
            tick.tick().await;
            let spool = self.clone();
            match tokio::task::spawn_blocking(move || spool.sync()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot sync the event spool"),
                Err(e) => tracing::error!(error = %e, "spool flusher task failed"),
            }
        }
    }
}

/// Replaces the `acked` file with the in-memory cursor.
fn write_acked(st: &mut State) -> Result<(), SpoolError> {
    let acked_path = st.dir.join("acked");
    let tmp = st.dir.join("acked.tmp");
    std::fs::write(&tmp, st.acked.to_string())
        .and_then(|_| std::fs::rename(&tmp, &acked_path))
        .map_err(|e| io_err(&acked_path, e))?;
    st.acked_on_disk = st.acked;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let mut bytes = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "gatehouse-spool-{name}-{}",
            u64::from_be_bytes(bytes)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn stmt(text: &str) -> EventBody {
        EventBody::Statement {
            kind: "query".into(),
            text: text.into(),
            truncated_from: None,
            sha256: None,
            name: None,
            params: None,
        }
    }

    #[tokio::test]
    async fn events_survive_a_reopen_until_acknowledged() {
        let dir = temp_dir("reopen");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..5 {
            let seq = spool
                .append("s1", "alice", "db", stmt(&format!("select {i}")))
                .await
                .unwrap();
            assert_eq!(seq, i + 1);
        }
        spool.ack(2).unwrap();
        spool.sync().unwrap();
        drop(spool);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.acked(), 2);
        assert_eq!(spool.head(), 5);
        let unsent = spool.unsent(2, 100);
        assert_eq!(
            unsent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        // Numbering continues after the reopen.
        assert_eq!(
            spool.append("s1", "alice", "db", stmt("x")).await.unwrap(),
            6
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_numbering_continues() {
        let dir = temp_dir("torn");
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        spool.append("s", "u", "db", stmt("one")).await.unwrap();
        spool.append("s", "u", "db", stmt("two")).await.unwrap();
        drop(spool);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("events.log"))
            .unwrap();
        f.write_all(&[0, 0, 0, 50, b'{']).unwrap();
        drop(f);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.head(), 2);
        assert_eq!(
            spool.append("s", "u", "db", stmt("three")).await.unwrap(),
            3
        );
        drop(spool);
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(spool.unsent(0, 10).len(), 3);
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn a_full_spool_refuses_sessions_and_makes_appends_wait() {
        let dir = temp_dir("full");
        let spool = Spool::open(&dir, 600).unwrap();
        assert!(spool.accepts_sessions());
        let mut n = 0;
        while spool.backlog().1 < 600 {
            spool
                .append("s", "u", "db", stmt("select 1"))
                .await
                .unwrap();
            n += 1;
        }
        assert!(!spool.accepts_sessions());
        let blocked = {
            let spool = spool.clone();
            tokio::spawn(async move { spool.append("s", "u", "db", stmt("late")).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !blocked.is_finished(),
            "an append into a full spool must wait"
        );
        spool.ack(n).unwrap();
        let seq = tokio::time::timeout(Duration::from_secs(2), blocked)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(seq, n + 1);
        assert!(spool.accepts_sessions());
        std::fs::remove_dir_all(dir).ok();
    }
}
