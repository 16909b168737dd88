//! SQL for remote agents: their rows (status, current certificate, heartbeat, event cursor) and
//! one-time join tokens (stored hashed).

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};

/// An agent as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    pub name: String,
    /// `pending` (a join token is out), `active`, `revoked`.
    pub status: String,
    pub created_at: String,
    pub enrolled_at: Option<String>,
    pub cert_sha256: Option<String>,
    pub cert_expires: Option<String>,
    /// A renewed certificate the agent has not connected with yet.
    pub next_cert_sha256: Option<String>,
    pub next_cert_expires: Option<String>,
    pub renew_requested: bool,
    pub hostname: Option<String>,
    pub version: Option<String>,
    /// JSON list of `{name, roles}` the agent said it fronts at its last connection.
    pub resources: String,
    pub connected_at: Option<String>,
    pub disconnected_at: Option<String>,
    pub last_seen: Option<String>,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub events_acked: i64,
}

/// Why a join token was not accepted (for the audit event; the agent hears less).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefusal {
    Unknown,
    Used,
    Expired,
    AgentRevoked,
}

impl JoinRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            JoinRefusal::Unknown => "unknown join token",
            JoinRefusal::Used => "join token already used",
            JoinRefusal::Expired => "join token expired",
            JoinRefusal::AgentRevoked => "the agent was revoked after the token was issued",
        }
    }
}

const COLUMNS: &str = "name, status, created_at, enrolled_at, cert_sha256, cert_expires, next_cert_sha256, next_cert_expires, renew_requested, hostname, version, resources, connected_at, disconnected_at, last_seen, revoked_at, revoked_by, events_acked";

fn agent_from_row(r: &sqlx::any::AnyRow) -> Result<AgentRow, StoreError> {
    Ok(AgentRow {
        name: r.try_get(0)?,
        status: r.try_get(1)?,
        created_at: r.try_get(2)?,
        enrolled_at: r.try_get(3)?,
        cert_sha256: r.try_get(4)?,
        cert_expires: r.try_get(5)?,
        next_cert_sha256: r.try_get(6)?,
        next_cert_expires: r.try_get(7)?,
        renew_requested: r.try_get::<i64, _>(8)? != 0,
        hostname: r.try_get(9)?,
        version: r.try_get(10)?,
        resources: r.try_get(11)?,
        connected_at: r.try_get(12)?,
        disconnected_at: r.try_get(13)?,
        last_seen: r.try_get(14)?,
        revoked_at: r.try_get(15)?,
        revoked_by: r.try_get(16)?,
        events_acked: r.try_get(17)?,
    })
}

impl Store {
    /// Records a join token for `agent` (creating the agent row as `pending` when new). A
    /// revoked agent becomes `pending` again: re-enrolling is how a revoked agent comes back.
    pub async fn add_join_token(
        &self,
        agent: &str,
        token_sha256: &str,
        by: &str,
        ts: &str,
        expires_unix: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        let sql =
            self.sql("UPDATE agents SET status = 'pending' WHERE name = $1 AND status = 'revoked'");
        sqlx::query(&sql).bind(agent).execute(&mut *tx).await?;
        let sql = self.sql("SELECT COUNT(*) FROM agents WHERE name = $1");
        let n: i64 = sqlx::query(&sql)
            .bind(agent)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if n == 0 {
            let sql = self.sql(&format!(
                "INSERT INTO agents ({COLUMNS}) VALUES ($1, 'pending', $2, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, '[]', NULL, NULL, NULL, NULL, NULL, 0)"
            ));
            sqlx::query(&sql)
                .bind(agent)
                .bind(ts)
                .execute(&mut *tx)
                .await?;
        }
        let sql = self.sql("INSERT INTO agent_join_tokens (token_sha256, agent, created_at, created_by, expires_unix, used_at) VALUES ($1, $2, $3, $4, $5, NULL)");
        sqlx::query(&sql)
            .bind(token_sha256)
            .bind(agent)
            .bind(ts)
            .bind(by)
            .bind(expires_unix)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The agent a join token was issued for (spent or not).
    pub async fn join_token_agent(&self, token_sha256: &str) -> Result<Option<String>, StoreError> {
        let sql = self.sql("SELECT agent FROM agent_join_tokens WHERE token_sha256 = $1");
        let row = sqlx::query(&sql)
            .bind(token_sha256)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Spends a join token and installs the agent's new certificate, in one transaction.
    /// Returns the agent row after enrollment, or why the token was refused.
    #[allow(clippy::too_many_arguments)]
    pub async fn redeem_join_token(
        &self,
        token_sha256: &str,
        now_unix: i64,
        ts: &str,
        cert_sha256: &str,
        cert_expires: &str,
        hostname: &str,
        version: &str,
    ) -> Result<Result<AgentRow, (JoinRefusal, Option<String>)>, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Write first: the row lock (PostgreSQL) or write lock (SQLite) makes a racing second
        // use of the same token wait and then see it used.
        let sql =
            self.sql("UPDATE agent_join_tokens SET used_at = used_at WHERE token_sha256 = $1");
        sqlx::query(&sql)
            .bind(token_sha256)
            .execute(&mut *tx)
            .await?;
        let sql = self.sql(
            "SELECT agent, expires_unix, used_at FROM agent_join_tokens WHERE token_sha256 = $1",
        );
        let Some(row) = sqlx::query(&sql)
            .bind(token_sha256)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Err((JoinRefusal::Unknown, None)));
        };
        let agent: String = row.try_get(0)?;
        let expires: i64 = row.try_get(1)?;
        let used: Option<String> = row.try_get(2)?;
        if used.is_some() {
            return Ok(Err((JoinRefusal::Used, Some(agent))));
        }
        if expires <= now_unix {
            return Ok(Err((JoinRefusal::Expired, Some(agent))));
        }
        let sql = self.sql("SELECT status FROM agents WHERE name = $1");
        let status: Option<String> = sqlx::query(&sql)
            .bind(&agent)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        if status.as_deref() != Some("pending") && status.as_deref() != Some("active") {
            return Ok(Err((JoinRefusal::AgentRevoked, Some(agent))));
        }
        let sql = self.sql("UPDATE agent_join_tokens SET used_at = $1 WHERE token_sha256 = $2");
        sqlx::query(&sql)
            .bind(ts)
            .bind(token_sha256)
            .execute(&mut *tx)
            .await?;
        let sql = self.sql("UPDATE agents SET status = 'active', enrolled_at = $1, cert_sha256 = $2, cert_expires = $3, hostname = $4, version = $5, revoked_at = NULL, revoked_by = NULL, next_cert_sha256 = NULL, next_cert_expires = NULL, renew_requested = 0 WHERE name = $6");
        sqlx::query(&sql)
            .bind(ts)
            .bind(cert_sha256)
            .bind(cert_expires)
            .bind(hostname)
            .bind(version)
            .bind(&agent)
            .execute(&mut *tx)
            .await?;
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM agents WHERE name = $1"));
        let row = sqlx::query(&sql).bind(&agent).fetch_one(&mut *tx).await?;
        let out = agent_from_row(&row)?;
        tx.commit().await?;
        Ok(Ok(out))
    }

    pub async fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM agents ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(agent_from_row).collect()
    }

    pub async fn agent(&self, name: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM agents WHERE name = $1"));
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    /// The agent whose current (or renewed, not yet used) certificate has this fingerprint. A
    /// renewed certificate becomes the current one here, and the previous one stops working.
    pub async fn agent_by_cert(&self, cert_sha256: &str) -> Result<Option<AgentRow>, StoreError> {
        let sql = self.sql("UPDATE agents SET cert_sha256 = next_cert_sha256, cert_expires = next_cert_expires, next_cert_sha256 = NULL, next_cert_expires = NULL WHERE next_cert_sha256 = $1 AND status = 'active'");
        sqlx::query(&sql)
            .bind(cert_sha256)
            .execute(self.pool())
            .await?;
        let sql = self.sql(&format!(
            "SELECT {COLUMNS} FROM agents WHERE cert_sha256 = $1"
        ));
        let row = sqlx::query(&sql)
            .bind(cert_sha256)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| agent_from_row(&r)).transpose()
    }

    /// Records a renewed certificate for the agent (accepted from its next connection on).
    pub async fn set_next_cert(
        &self,
        name: &str,
        cert_sha256: &str,
        cert_expires: &str,
    ) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE agents SET next_cert_sha256 = $1, next_cert_expires = $2, renew_requested = 0 WHERE name = $3");
        sqlx::query(&sql)
            .bind(cert_sha256)
            .bind(cert_expires)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Asks the gateway holding the agent's link to renew its certificate now. Returns false
    /// for an unknown or inactive agent.
    pub async fn request_agent_renewal(&self, name: &str) -> Result<bool, StoreError> {
        let sql =
            self.sql("UPDATE agents SET renew_requested = 1 WHERE name = $1 AND status = 'active'");
        let done = sqlx::query(&sql).bind(name).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes an agent; returns false when it was unknown or already revoked.
    pub async fn revoke_agent(&self, name: &str, by: &str, ts: &str) -> Result<bool, StoreError> {
        let sql = self.sql("UPDATE agents SET status = 'revoked', revoked_at = $1, revoked_by = $2 WHERE name = $3 AND status <> 'revoked'");
        let done = sqlx::query(&sql)
            .bind(ts)
            .bind(by)
            .bind(name)
            .execute(self.pool())
            .await?;
        // Outstanding join tokens die with it.
        let sql = self
            .sql("UPDATE agent_join_tokens SET used_at = $1 WHERE agent = $2 AND used_at IS NULL");
        sqlx::query(&sql)
            .bind(ts)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn agent_connected(
        &self,
        name: &str,
        ts: &str,
        version: &str,
        resources: &str,
    ) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE agents SET connected_at = $1, last_seen = $2, version = $3, resources = $4 WHERE name = $5");
        sqlx::query(&sql)
            .bind(ts)
            .bind(ts)
            .bind(version)
            .bind(resources)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn agent_seen(&self, name: &str, ts: &str) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE agents SET last_seen = $1 WHERE name = $2");
        sqlx::query(&sql)
            .bind(ts)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn agent_disconnected(&self, name: &str, ts: &str) -> Result<(), StoreError> {
        let sql = self.sql("UPDATE agents SET disconnected_at = $1 WHERE name = $2");
        sqlx::query(&sql)
            .bind(ts)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Inside the audit writer's transaction: the agent's event cursor, `None` for an unknown
    /// agent.
    pub async fn agent_cursor(
        &self,
        tx: &mut AnyConnection,
        name: &str,
    ) -> Result<Option<u64>, StoreError> {
        let sql = self.sql("SELECT events_acked FROM agents WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        Ok(row
            .map(|r| r.try_get::<i64, _>(0))
            .transpose()?
            .map(|n| n.max(0) as u64))
    }

    /// Inside the audit writer's transaction: moves the agent's event cursor forward.
    pub async fn set_agent_cursor(
        &self,
        tx: &mut AnyConnection,
        name: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        let sql =
            self.sql("UPDATE agents SET events_acked = $1 WHERE name = $2 AND events_acked < $3");
        sqlx::query(&sql)
            .bind(seq as i64)
            .bind(name)
            .bind(seq as i64)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}
