//! SQL for the sessions table: live sessions for admins, and kill requests.

use sqlx::Row;

use super::{Store, StoreError};

/// A session as `gatehouse sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: String,
    pub instance: String,
    pub user: String,
    pub resource: String,
    pub client_addr: String,
    pub started: String,
    pub ended: Option<String>,
    pub end_reason: Option<String>,
    pub kill_requested_by: Option<String>,
    pub role: Option<String>,
    pub grant_id: Option<i64>,
}

/// A kill request for a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    pub id: String,
    pub by: String,
    pub reason: String,
}

impl Store {
    pub async fn session_started(&self, s: &SessionRow) -> Result<(), StoreError> {
        let sql = self.sql(
            "INSERT INTO sessions (id, instance, username, resource, client_addr, started, role, grant_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        );
        sqlx::query(&sql)
            .bind(&s.id)
            .bind(&s.instance)
            .bind(&s.user)
            .bind(&s.resource)
            .bind(&s.client_addr)
            .bind(&s.started)
            .bind(s.role.clone())
            .bind(s.grant_id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn session_ended(&self, id: &str, ts: &str, reason: &str) -> Result<(), StoreError> {
        let sql = self
            .sql("UPDATE sessions SET ended = $1, end_reason = $2 WHERE id = $3 AND ended IS NULL");
        sqlx::query(&sql)
            .bind(ts)
            .bind(reason)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks the open sessions of other instances ended: used at startup on SQLite, where only
    /// one gateway can own the store, to close what a crash left open.
    pub async fn end_orphaned_sessions(&self, instance: &str, ts: &str) -> Result<u64, StoreError> {
        let sql = self.sql(
            "UPDATE sessions SET ended = $1, end_reason = 'gateway stopped without ending the session' WHERE ended IS NULL AND instance <> $2",
        );
        Ok(sqlx::query(&sql)
            .bind(ts)
            .bind(instance)
            .execute(self.pool())
            .await?
            .rows_affected())
    }

    /// Open sessions (or the newest `limit` of all sessions when `all`).
    pub async fn sessions(&self, all: bool, limit: u32) -> Result<Vec<SessionRow>, StoreError> {
        let filter = if all { "" } else { "WHERE ended IS NULL" };
        let sql = self.sql(&format!(
            "SELECT id, instance, username, resource, client_addr, started, ended, end_reason, kill_requested_by, role, grant_id \
             FROM sessions {filter} ORDER BY started DESC LIMIT $1"
        ));
        let rows = sqlx::query(&sql)
            .bind(limit as i64)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionRow {
                    id: r.try_get(0)?,
                    instance: r.try_get(1)?,
                    user: r.try_get(2)?,
                    resource: r.try_get(3)?,
                    client_addr: r.try_get(4)?,
                    started: r.try_get(5)?,
                    ended: r.try_get(6)?,
                    end_reason: r.try_get(7)?,
                    kill_requested_by: r.try_get(8)?,
                    role: r.try_get(9)?,
                    grant_id: r.try_get(10)?,
                })
            })
            .collect()
    }

    /// Requests that a live session be ended. Returns the session's user and resource, or None
    /// when no open session has that id.
    pub async fn request_kill(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        ts: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let sql = self.sql(
            "UPDATE sessions SET kill_requested_at = $1, kill_requested_by = $2, kill_reason = $3 WHERE id = $4 AND ended IS NULL",
        );
        let done = sqlx::query(&sql)
            .bind(ts)
            .bind(by)
            .bind(reason)
            .bind(id)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let sql = self.sql("SELECT username, resource FROM sessions WHERE id = $1");
        let row = sqlx::query(&sql).bind(id).fetch_one(self.pool()).await?;
        Ok(Some((row.try_get(0)?, row.try_get(1)?)))
    }

    /// Kill requests for sessions that are still open.
    pub async fn pending_kills(&self) -> Result<Vec<KillRequest>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kill_requested_by, kill_reason FROM sessions WHERE kill_requested_at IS NOT NULL AND ended IS NULL",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KillRequest {
                    id: r.try_get(0)?,
                    by: r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                    reason: r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
                })
            })
            .collect()
    }
}
