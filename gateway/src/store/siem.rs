//! SQL for the SIEM streams' delivery cursors.

use super::{Store, StoreError};

impl Store {
    /// The last seq `sink` delivered (0: nothing yet).
    pub async fn siem_cursor(&self, sink: &str) -> Result<u64, StoreError> {
        let sql = self.sql("SELECT delivered_seq FROM siem_cursors WHERE sink = $1");
        let v: Option<i64> = sqlx::query_scalar(&sql)
            .bind(sink)
            .fetch_optional(self.pool())
            .await?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Moves `sink`'s cursor to `seq`.
    pub async fn set_siem_cursor(&self, sink: &str, seq: u64, at: &str) -> Result<(), StoreError> {
        let sql = self.sql(
            "INSERT INTO siem_cursors (sink, delivered_seq, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (sink) DO UPDATE SET delivered_seq = $4, updated_at = $5",
        );
        sqlx::query(&sql)
            .bind(sink)
            .bind(seq as i64)
            .bind(at)
            .bind(seq as i64)
            .bind(at)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}
