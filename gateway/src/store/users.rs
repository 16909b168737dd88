//! SQL for the users table: who has logged in, with which groups, and who is disabled.

use sqlx::Row;

use super::{Store, StoreError};

/// One user as the store knows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub first_seen: String,
    pub last_login: String,
    pub last_groups: Vec<String>,
    pub disabled_at: Option<String>,
    pub disabled_by: Option<String>,
    pub disabled_reason: Option<String>,
}

const COLUMNS: &str =
    "name, first_seen, last_login, last_groups, disabled_at, disabled_by, disabled_reason";

impl Store {
    /// Records a successful login (creating the user on first sight).
    pub async fn record_login(
        &self,
        name: &str,
        groups: &[String],
        ts: &str,
    ) -> Result<(), StoreError> {
        let groups = serde_json::to_string(groups).unwrap_or_else(|_| "[]".into());
        let sql = self.sql(
            "INSERT INTO users (name, first_seen, last_login, last_groups) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET last_login = excluded.last_login, last_groups = excluded.last_groups",
        );
        sqlx::query(&sql)
            .bind(name)
            .bind(ts)
            .bind(ts)
            .bind(groups)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM users WHERE name = $1"));
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Names of every disabled user.
    pub async fn disabled_users(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT name FROM users WHERE disabled_at IS NOT NULL")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }

    /// Disables `name` (creating the record if the user never logged in, so that a leaver is
    /// refused even before a first login). Returns false when already disabled.
    pub async fn disable_user(
        &self,
        name: &str,
        by: &str,
        reason: &str,
        ts: &str,
    ) -> Result<bool, StoreError> {
        let insert = self.sql(
            "INSERT INTO users (name, first_seen, last_login, last_groups) VALUES ($1, $2, '', '[]') ON CONFLICT (name) DO NOTHING",
        );
        sqlx::query(&insert)
            .bind(name)
            .bind(ts)
            .execute(self.pool())
            .await?;
        let update = self.sql(
            "UPDATE users SET disabled_at = $1, disabled_by = $2, disabled_reason = $3 WHERE name = $4 AND disabled_at IS NULL",
        );
        let done = sqlx::query(&update)
            .bind(ts)
            .bind(by)
            .bind(reason)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Enables `name` again. Returns false when it was not disabled.
    pub async fn enable_user(&self, name: &str) -> Result<bool, StoreError> {
        let sql = self.sql(
            "UPDATE users SET disabled_at = NULL, disabled_by = NULL, disabled_reason = NULL WHERE name = $1 AND disabled_at IS NOT NULL",
        );
        let done = sqlx::query(&sql).bind(name).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }
}

fn user_from_row(r: &sqlx::any::AnyRow) -> Result<User, StoreError> {
    let groups: String = r.try_get(3)?;
    Ok(User {
        name: r.try_get(0)?,
        first_seen: r.try_get(1)?,
        last_login: r.try_get(2)?,
        last_groups: serde_json::from_str(&groups).unwrap_or_default(),
        disabled_at: r.try_get(4)?,
        disabled_by: r.try_get(5)?,
        disabled_reason: r.try_get(6)?,
    })
}
