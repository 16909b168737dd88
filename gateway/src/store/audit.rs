//! SQL for the audit log tables. Only the audit writer inserts; nothing updates or deletes.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Backend, Store, StoreError};
use crate::audit::{AuditEvent, Checkpoint};

/// Rows per multi-row INSERT (15 parameters each, well under every backend's limit).
const INSERT_CHUNK: usize = 64;

/// Parameters per inserted row.
const PER_ROW: usize = 15;

const COLUMNS: &str =
    "seq, ts, kind, actor, resource, action, decision, reason, policy_ids, controls, session_id, detail, prev_hash, hash, seal";

impl Store {
    /// Begins an audit transaction. On SQLite it takes the write lock at once (`BEGIN
    /// IMMEDIATE`, waiting up to the busy timeout): a deferred transaction that read the chain
    /// head under a snapshot another writer then advanced fails with "database is locked"
    /// instead of waiting, which made ordinary logins retry and, under load, refuse.
    pub async fn begin_audit(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend() {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Serialises writers across gateway replicas sharing a PostgreSQL store (held until the
    /// transaction ends). SQLite has one writer by construction.
    pub async fn lock_audit(&self, tx: &mut AnyConnection) -> Result<(), StoreError> {
        if self.backend() == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7472617564)")
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// The last event's sequence number, hash and commit seal.
    pub async fn audit_head(
        &self,
        tx: &mut AnyConnection,
    ) -> Result<Option<(u64, String, Option<String>)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash, seal FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get::<i64, _>(0)? as u64, r.try_get(1)?, r.try_get(2)?)),
            None => None,
        })
    }

    /// The newest event that carries a commit seal (`None`: sealing has not begun).
    pub async fn last_sealed_seq(&self, tx: &mut AnyConnection) -> Result<Option<u64>, StoreError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM audit_events WHERE seal IS NOT NULL")
                .fetch_one(&mut *tx)
                .await?;
        Ok(seq.map(|s| s as u64))
    }

    pub async fn insert_events(
        &self,
        tx: &mut AnyConnection,
        events: &[AuditEvent],
    ) -> Result<(), StoreError> {
        for chunk in events.chunks(INSERT_CHUNK) {
            let sql = self.insert_sql(chunk.len());
            let mut q = sqlx::query(&sql);
            for e in chunk {
                q = q
                    .bind(e.seq as i64)
                    .bind(&e.ts)
                    .bind(&e.kind)
                    .bind(&e.actor)
                    .bind(&e.resource)
                    .bind(&e.action)
                    .bind(&e.decision)
                    .bind(&e.reason)
                    .bind(json_list(&e.policy_ids))
                    .bind(json_list(&e.controls))
                    .bind(&e.session_id)
                    .bind(&e.detail)
                    .bind(&e.prev_hash)
                    .bind(&e.hash)
                    .bind(e.seal.as_deref());
            }
            q.execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// `INSERT ... VALUES (...), (...)` for `rows` events, placeholders in the backend's form.
    fn insert_sql(&self, rows: usize) -> String {
        use std::fmt::Write as _;
        let mut sql = String::with_capacity(100 + rows * PER_ROW * 5);
        let _ = write!(sql, "INSERT INTO audit_events ({COLUMNS}) VALUES ");
        for i in 0..rows {
            sql.push_str(if i == 0 { "(" } else { ",(" });
            for c in 0..PER_ROW {
                if c > 0 {
                    sql.push(',');
                }
                match self.backend() {
                    Backend::Sqlite => sql.push('?'),
                    Backend::Postgres => {
                        let _ = write!(sql, "${}", i * PER_ROW + c + 1);
                    }
                }
            }
            sql.push(')');
        }
        sql
    }

    pub async fn insert_checkpoint(
        &self,
        tx: &mut AnyConnection,
        c: &Checkpoint,
    ) -> Result<(), StoreError> {
        let sql = self.sql("INSERT INTO audit_checkpoints (seq, hash, ts, key_id, signature) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING");
        sqlx::query(&sql)
            .bind(c.seq as i64)
            .bind(&c.hash)
            .bind(&c.ts)
            .bind(&c.key_id)
            .bind(&c.signature)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// Up to `limit` events with `seq > after`, in order, optionally limited to `ts` in
    /// `[from, to)`.
    pub async fn audit_events(
        &self,
        after: u64,
        limit: u32,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > $1 AND ts >= $2 AND ts < $3 ORDER BY seq LIMIT $4"
        ));
        let rows = sqlx::query(&sql)
            .bind(after as i64)
            .bind(from.unwrap_or(""))
            .bind(to.unwrap_or("\u{10FFFF}"))
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Up to `limit` events of `kind` with `seq > after`, in order, optionally of one session.
    pub async fn audit_events_of_kind(
        &self,
        kind: &str,
        session: Option<&str>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE kind = $1 AND seq > $2 AND ($3 = '' OR session_id = $4) ORDER BY seq LIMIT $5"
        ));
        // SQLite's placeholders are positional: the session is bound twice.
        let rows = sqlx::query(&sql)
            .bind(kind)
            .bind(after as i64)
            .bind(session.unwrap_or(""))
            .bind(session.unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, hash, ts, key_id, signature FROM audit_checkpoints ORDER BY seq",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    seq: r.try_get::<i64, _>(0)? as u64,
                    hash: r.try_get(1)?,
                    ts: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    signature: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// The newest event's sequence number (0 for an empty log): a size for progress lines.
    pub async fn audit_last_seq(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events")
            .fetch_one(self.pool())
            .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// The newest checkpoint's sequence number, if any.
    pub async fn last_checkpoint_seq(
        &self,
        tx: &mut AnyConnection,
    ) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_checkpoints")
            .fetch_one(&mut *tx)
            .await?;
        Ok(v.map(|v| v as u64))
    }

    /// Who a session was admitted for and on which resource: the `access.decision` that allowed
    /// it (durable before any session opens, so it survives a gateway restart).
    pub async fn admitted_session(
        &self,
        session_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query(&self.sql(
            "SELECT actor, resource FROM audit_events \
             WHERE session_id = $1 AND kind = 'access.decision' AND decision = 'allow' \
             ORDER BY seq LIMIT 1",
        ))
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("actor")?, r.try_get("resource")?)),
            None => None,
        })
    }
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_string())
}

fn event_from_row(r: &AnyRow) -> Result<AuditEvent, StoreError> {
    let list = |i: usize| -> Result<Vec<String>, StoreError> {
        let s: String = r.try_get(i)?;
        // A row whose list column was edited into invalid JSON still verifies as a mismatch.
        Ok(serde_json::from_str(&s).unwrap_or_else(|_| vec![s]))
    };
    Ok(AuditEvent {
        seq: r.try_get::<i64, _>(0)? as u64,
        ts: r.try_get(1)?,
        kind: r.try_get(2)?,
        actor: r.try_get(3)?,
        resource: r.try_get(4)?,
        action: r.try_get(5)?,
        decision: r.try_get(6)?,
        reason: r.try_get(7)?,
        policy_ids: list(8)?,
        controls: list(9)?,
        session_id: r.try_get(10)?,
        detail: r.try_get(11)?,
        prev_hash: r.try_get(12)?,
        hash: r.try_get(13)?,
        seal: r.try_get(14)?,
    })
}
