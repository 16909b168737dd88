//! The audit writer: the one task that numbers, chains and stores events.
//!
//! Events arrive on a bounded channel (senders wait when it is full: back-pressure, never loss).
//! The writer takes everything that is queued, up to [`MAX_BATCH`], and stores it in one
//! transaction: one fsync for many events (group commit). Callers that need durability, such as
//! a decision that lets a session start, wait for the commit; statement events do not.
//! A failed commit is retried with the same events until it succeeds, so nothing queued is lost;
//! waiting callers time out and fail closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::event::{now_ts, AuditEvent, Checkpoint, EventKind, NewEvent, Seal};
use super::GENESIS_HASH;
use crate::keys::SigningKey;
use crate::store::{Store, StoreError};

/// Most events stored in one transaction.
const MAX_BATCH: usize = 2048;
/// How long a batch that nobody waits on may wait for company.
const LINGER: Duration = Duration::from_millis(2);
/// Unsigned events get a checkpoint after this long without one.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log is closed")]
    Closed,
    #[error("the audit log did not confirm the event within {0:?}")]
    Timeout(Duration),
    #[error("the audit log could not store the event: {0}")]
    Store(String),
}

type Ack = oneshot::Sender<Result<u64, AuditError>>;

#[allow(
    clippy::large_enum_variant,
    reason = "nearly every message is an Event; boxing would allocate per event"
)]
enum Msg {
    /// An event, with whoever waits for its commit, and whether that waiter is in a hurry (a
    /// session waiting to start) or streams (an agent's events, which may linger like
    /// statements do).
    Event(NewEvent, Option<Ack>, bool),
    Checkpoint(oneshot::Sender<Result<Option<u64>, AuditError>>),
    /// Accept nothing more; commit and sign what is queued, then end (see [`AuditLog::close`]).
    Close(oneshot::Sender<()>),
}

/// A handle for appending to the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    durable_timeout: Duration,
}

impl AuditLog {
    /// Starts the writer over `store`. The task ends (after a final checkpoint) when every
    /// handle is dropped.
    pub fn spawn(
        store: Store,
        key: Arc<SigningKey>,
        checkpoint_every: u64,
        queue: usize,
    ) -> (AuditLog, JoinHandle<()>) {
        Self::spawn_anchored(store, key, checkpoint_every, queue, None)
    }

    /// Like [`spawn`](Self::spawn), and also writes each new checkpoint to `anchor`, a file
    /// outside the store: `audit verify` then notices a log cut back together with its newest
    /// checkpoints.
    pub fn spawn_anchored(
        store: Store,
        key: Arc<SigningKey>,
        checkpoint_every: u64,
        queue: usize,
        anchor: Option<std::path::PathBuf>,
    ) -> (AuditLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue);
        let writer = Writer {
            store,
            key,
            checkpoint_every,
            last_checkpoint: None,
            head_seq: 0,
            alarmed_until: 0,
            last_written: None,
            anchor,
        };
        let task = tokio::spawn(writer.run(rx));
        (
            AuditLog {
                tx,
                durable_timeout: Duration::from_secs(5),
            },
            task,
        )
    }

    /// Queues an event; waits only for queue space.
    pub async fn record(&self, event: NewEvent) -> Result<(), AuditError> {
        self.tx
            .send(Msg::Event(event, None, false))
            .await
            .map_err(|_| AuditError::Closed)
    }

    /// Queues an event and waits until it is committed; returns its sequence number.
    pub async fn record_durable(&self, event: NewEvent) -> Result<u64, AuditError> {
        let (ack, done) = oneshot::channel();
        let wait = async {
            self.tx
                .send(Msg::Event(event, Some(ack), true))
                .await
                .map_err(|_| AuditError::Closed)?;
            done.await.map_err(|_| AuditError::Closed)?
        };
        tokio::time::timeout(self.durable_timeout, wait)
            .await
            .map_err(|_| AuditError::Timeout(self.durable_timeout))?
    }

    /// Queues an event (waiting only for queue space) and returns a receiver that resolves
    /// once it is committed: many events can be in flight, each confirmed in order. Such
    /// events share commits like statements do (the batch may linger).
    pub async fn record_confirmed(
        &self,
        event: NewEvent,
    ) -> Result<oneshot::Receiver<Result<u64, AuditError>>, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Event(event, Some(ack), false))
            .await
            .map_err(|_| AuditError::Closed)?;
        Ok(done)
    }

    /// Writes a signed checkpoint over everything queued so far; returns its sequence number
    /// (None when the log is empty).
    pub async fn checkpoint(&self) -> Result<Option<u64>, AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Msg::Checkpoint(ack))
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Closes the log for every handle: what is queued already is committed and signed, then
    /// the writer ends (returns once it has); anything recorded after this fails with
    /// [`AuditError::Closed`]. For shutdown, where waiting for every handle to be dropped
    /// would wait for tasks that have nothing more to say.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
    }
}

impl Msg {
    fn is_waited_on(&self) -> bool {
        match self {
            Msg::Event(_, _, urgent) => *urgent,
            Msg::Checkpoint(_) | Msg::Close(_) => true,
        }
    }
}

/// Replaces the anchor file with `cp` unless it already signs a later seq (another writer on
/// the same host may have been faster).
async fn write_anchor(path: &std::path::Path, cp: &Checkpoint) -> std::io::Result<()> {
    if let Ok(old) = tokio::fs::read_to_string(path).await {
        if let Ok(old) = serde_json::from_str::<Checkpoint>(&old) {
            if old.seq >= cp.seq {
                return Ok(());
            }
        }
    }
    // The new anchor is whole and on disk before it replaces the old one: a failed write
    // (a full disk) leaves the good anchor in place.
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_string(cp).map_err(std::io::Error::other)?;
    let written = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, text.as_bytes()).await?;
        f.sync_all().await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tokio::fs::rename(&tmp, path).await?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
    }
    Ok(())
}

/// Moves what is queued (up to [`MAX_BATCH`] messages in all) into `queued`.
fn drain(rx: &mut mpsc::Receiver<Msg>, queued: &mut Vec<Msg>) {
    while queued.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(m) => queued.push(m),
            Err(_) => break,
        }
    }
}

struct Writer {
    store: Store,
    key: Arc<SigningKey>,
    checkpoint_every: u64,
    /// Sequence number of the newest checkpoint this writer knows of.
    last_checkpoint: Option<u64>,
    head_seq: u64,
    anchor: Option<std::path::PathBuf>,
    /// Foreign rows up to this seq have been reported already.
    alarmed_until: u64,
    /// The (seq, hash) of the last row this writer committed and sealed.
    last_written: Option<(u64, String)>,
}

impl Writer {
    /// Whether `seal` is a valid commit seal by the audit key for the event at `seq`.
    fn sealed_by_us(&self, seal: &Option<String>, seq: u64, hash: &str) -> bool {
        // The head this writer committed last needs no signature check.
        if self
            .last_written
            .as_ref()
            .is_some_and(|(s, h)| *s == seq && h == hash)
        {
            return true;
        }
        let Some(seal) = seal.as_deref().and_then(Seal::decode) else {
            return false;
        };
        let sig = B64.decode(&seal.signature).unwrap_or_default();
        seal.from <= seq
            && self
                .key
                .public_key()
                .verify(&Seal::message(seal.from, seq, hash), &sig)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(CHECKPOINT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut close_waiters = Vec::new();
        loop {
            let first = tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => m,
                    None => break,
                },
                _ = tick.tick() => {
                    if self.head_seq > self.last_checkpoint.unwrap_or(0) {
                        self.commit_with_retry(Vec::new(), true).await;
                    }
                    continue;
                }
            };
            let mut events = Vec::new();
            let mut acks = Vec::new();
            let mut checkpoint_waiters = Vec::new();
            let mut queued = vec![first];
            drain(&mut rx, &mut queued);
            // Nobody waits on this batch: linger briefly so that a steady trickle of statement
            // events shares one commit instead of paying one each.
            if queued.len() < MAX_BATCH && !queued.iter().any(Msg::is_waited_on) {
                tokio::time::sleep(LINGER).await;
                drain(&mut rx, &mut queued);
            }
            for m in queued {
                match m {
                    Msg::Event(e, ack, _) => {
                        events.push(e);
                        acks.push(ack);
                    }
                    Msg::Checkpoint(w) => checkpoint_waiters.push(w),
                    Msg::Close(w) => {
                        // What is queued still comes out of `rx`; nothing more goes in.
                        rx.close();
                        close_waiters.push(w);
                    }
                }
            }
            let force = !checkpoint_waiters.is_empty();
            let (first_seq, kept) = self.commit_with_retry(events, force).await;
            let mut next = first_seq;
            for (ack, kept) in acks.into_iter().zip(kept) {
                // A duplicate from an agent was stored before: it is durable, under an
                // earlier seq; 0 says so.
                let seq = if kept {
                    next += 1;
                    next - 1
                } else {
                    0
                };
                if let Some(ack) = ack {
                    let _ = ack.send(Ok(seq));
                }
            }
            for w in checkpoint_waiters {
                let _ = w.send(Ok((self.head_seq > 0).then_some(self.head_seq)));
            }
        }
        // Every handle is gone, or the log was closed: sign what is unsigned.
        if self.head_seq > self.last_checkpoint.unwrap_or(0) {
            self.commit_with_retry(Vec::new(), true).await;
        }
        for w in close_waiters {
            let _ = w.send(());
        }
    }

    /// Commits `events`, retrying until the store takes them: queued events are never dropped.
    /// A commit with no events (a checkpoint only) gives up after a few tries. Returns the first
    /// new seq and, per event, whether it was stored (false: an agent's duplicate).
    async fn commit_with_retry(
        &mut self,
        events: Vec<NewEvent>,
        force_checkpoint: bool,
    ) -> (u64, Vec<bool>) {
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.commit(&events, force_checkpoint).await {
                Ok(first) => return first,
                Err(e) if events.is_empty() && attempts >= 5 => {
                    tracing::error!(error = %e, "audit checkpoint failed; giving up on this checkpoint");
                    return (self.head_seq + 1, Vec::new());
                }
                Err(e) => {
                    tracing::error!(error = %e, pending = events.len(), "audit log commit failed; retrying, sessions that need a durable decision are refused meanwhile");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn commit(
        &mut self,
        events: &[NewEvent],
        force_checkpoint: bool,
    ) -> Result<(u64, Vec<bool>), StoreError> {
        let mut tx = self.store.begin_audit().await?;
        self.store.lock_audit(&mut tx).await?;
        let (mut seq, mut prev, head_seal) =
            self.store
                .audit_head(&mut tx)
                .await?
                .unwrap_or((0, GENESIS_HASH.to_string(), None));
        // The head must be the end of a sealed commit (ours or another writer's with the
        // audit key); rows past the last seal were written some other way.
        let foreign = if seq > 0 && !self.sealed_by_us(&head_seal, seq, &prev) {
            match self.store.last_sealed_seq(&mut tx).await? {
                // Sealing has not begun (a log from before seals): nothing to compare with.
                None => None,
                Some(last) if last < seq => Some(last + 1),
                // The head carries a seal that does not verify: a forged one.
                Some(_) => Some(seq),
            }
        } else {
            None
        };
        if self.last_checkpoint.is_none() {
            self.last_checkpoint =
                Some(self.store.last_checkpoint_seq(&mut tx).await?.unwrap_or(0));
        }
        let first = seq + 1;
        // Events from remote agents: each (agent, seq) once. The cursor moves in this
        // transaction, so a resend after a lost acknowledgement finds it already moved.
        let mut cursors: HashMap<String, u64> = HashMap::new();
        let mut kept = Vec::with_capacity(events.len());
        for e in events {
            let Some((agent, agent_seq)) = &e.origin else {
                kept.push(true);
                continue;
            };
            let cursor = match cursors.get(agent) {
                Some(c) => *c,
                None => self.store.agent_cursor(&mut tx, agent).await?.unwrap_or(0),
            };
            if *agent_seq <= cursor {
                kept.push(false);
                continue;
            }
            cursors.insert(agent.clone(), *agent_seq);
            kept.push(true);
        }
        for (agent, agent_seq) in &cursors {
            self.store
                .set_agent_cursor(&mut tx, agent, *agent_seq)
                .await?;
        }
        let mut sealed: Vec<AuditEvent> = Vec::with_capacity(events.len() + 1);
        if let Some(from) = foreign.filter(|from| *from > self.alarmed_until) {
            let mut alarm = NewEvent::new(EventKind::AuditForeignRows);
            alarm.actor = "gatehouse".into();
            alarm.decision = "alarm".into();
            alarm.reason = format!(
                "audit events {from}..={seq} are covered by no gateway's commit seal: they were written into the store without the audit key"
            );
            alarm.detail = serde_json::json!({ "first_seq": from, "last_seq": seq });
            tracing::error!(first_seq = from, last_seq = seq, "audit rows written into the store without the audit key; recorded as audit.foreign_rows");
            self.alarmed_until = seq;
            seq += 1;
            let event = alarm.seal(seq, now_ts(), prev);
            prev = event.hash.clone();
            sealed.push(event);
        }
        let commit_from = seq + 1 - sealed.len() as u64;
        for (e, _) in events.iter().zip(&kept).filter(|(_, k)| **k) {
            seq += 1;
            let event = e.seal(seq, now_ts(), prev);
            prev = event.hash.clone();
            sealed.push(event);
        }
        // The commit's seal, on its last row.
        if let Some(last) = sealed.last_mut() {
            let sig = self
                .key
                .sign(&Seal::message(commit_from, last.seq, &last.hash));
            last.seal = Some(
                Seal {
                    from: commit_from,
                    key_id: self.key.key_id.clone(),
                    signature: B64.encode(sig),
                }
                .encode(),
            );
        }
        self.store.insert_events(&mut tx, &sealed).await?;
        let crossed = seq / self.checkpoint_every > (first - 1) / self.checkpoint_every;
        let mut new_cp = None;
        // Another writer on a shared store may have signed this head already: ask the store,
        // under the lock, rather than trust what this writer remembers.
        let wants_checkpoint = crossed || force_checkpoint;
        let last_cp = if wants_checkpoint {
            self.store.last_checkpoint_seq(&mut tx).await?.unwrap_or(0)
        } else {
            self.last_checkpoint.unwrap_or(0)
        };
        if seq > last_cp && wants_checkpoint {
            let ts = now_ts();
            let sig = self.key.sign(&Checkpoint::message(seq, &prev, &ts));
            let cp = Checkpoint {
                seq,
                hash: prev.clone(),
                ts,
                key_id: self.key.key_id.clone(),
                signature: B64.encode(sig),
            };
            self.store.insert_checkpoint(&mut tx, &cp).await?;
            new_cp = Some(cp);
        }
        tx.commit().await?;
        if let Some(last) = sealed.last() {
            self.last_written = Some((last.seq, last.hash.clone()));
        }
        if let (Some(cp), Some(path)) = (&new_cp, &self.anchor) {
            if let Err(e) = write_anchor(path, cp).await {
                tracing::warn!(error = %e, path = %path.display(), "cannot write the audit anchor file");
            }
        }
        let new_cp = new_cp.map(|c| c.seq);
        self.head_seq = seq;
        self.last_checkpoint = Some(
            new_cp
                .unwrap_or(last_cp)
                .max(self.last_checkpoint.unwrap_or(0)),
        );
        Ok((first, kept))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_commits_what_is_queued_and_ends_the_writer_while_handles_live_on() {
        let dir = std::env::temp_dir().join(format!(
            "gh-writer-{}-{}",
            std::process::id(),
            crate::audit::event::hex(&gatehouse_core::random::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&format!("sqlite:{}", dir.join("store.db").display()))
            .await
            .unwrap();
        let key = Arc::new(SigningKey::load_or_create(&dir.join("audit.pem")).unwrap());
        let (audit, writer) = AuditLog::spawn(store.clone(), key, 1000, 64);
        // A handle some task still holds (an idle HTTPS connection's, say).
        let held = audit.clone();
        let mut e = NewEvent::new(EventKind::GatewayStop);
        e.actor = "gatehouse".into();
        e.action = "stop".into();
        // Queued, not waited on: close still commits it.
        audit.record(e).await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), audit.close())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .unwrap()
            .unwrap();
        let stored = store.audit_events(0, 10, None, None).await.unwrap();
        assert_eq!(stored.len(), 1);
        // The event is signed by a checkpoint, and nothing more is accepted.
        assert_eq!(store.audit_checkpoints().await.unwrap().len(), 1);
        let mut late = NewEvent::new(EventKind::GatewayStop);
        late.actor = "gatehouse".into();
        assert!(matches!(held.record(late).await, Err(AuditError::Closed)));
        drop(held);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
