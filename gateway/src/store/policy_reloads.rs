//! SQL for policy reload requests: `gatehouse policy reload` appends one, every gateway on the
//! store acts on the ones after the last it saw.

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// Appends a reload request; returns its id.
    pub async fn request_policy_reload(&self, at: &str, by: &str) -> Result<i64, StoreError> {
        let sql = self.sql(
            "INSERT INTO policy_reloads (requested_at, requested_by) VALUES ($1, $2) RETURNING id",
        );
        let row = sqlx::query(&sql)
            .bind(at)
            .bind(by)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// The newest request's id (0 when there is none).
    pub async fn last_policy_reload(&self) -> Result<i64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM policy_reloads")
            .fetch_one(self.pool())
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Requests after `id`, oldest first: (id, requested_by JSON).
    pub async fn policy_reloads_after(&self, id: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let sql = self
            .sql("SELECT id, requested_by FROM policy_reloads WHERE id > $1 ORDER BY id LIMIT 100");
        let rows = sqlx::query(&sql).bind(id).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect()
    }
}
