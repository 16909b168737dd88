//! SQL for single sign-on logins: one row per login, revoked at logout or when the provider no
//! longer vouches for the person. Credentials name their login (`sid`); the front doors refuse a
//! credential whose login is revoked.

use sqlx::Row;

use super::{Store, StoreError};

/// One login as the store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub id: String,
    pub user: String,
    pub flow: String,
    pub created: String,
    pub expires: String,
    pub amr: Vec<String>,
    pub mfa: bool,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

const COLUMNS: &str =
    "id, username, flow, created, expires, amr, mfa, revoked_at, revoked_by, revoked_reason";

impl Store {
    pub async fn insert_login(&self, l: &Login) -> Result<(), StoreError> {
        let sql = self.sql(&format!(
            "INSERT INTO logins ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL)"
        ));
        sqlx::query(&sql)
            .bind(&l.id)
            .bind(&l.user)
            .bind(&l.flow)
            .bind(&l.created)
            .bind(&l.expires)
            .bind(serde_json::to_string(&l.amr).unwrap_or_else(|_| "[]".into()))
            .bind(i64::from(l.mfa))
            .execute(self.pool())
            .await?;
        Ok(())
    }

    pub async fn login(&self, id: &str) -> Result<Option<Login>, StoreError> {
        let sql = self.sql(&format!("SELECT {COLUMNS} FROM logins WHERE id = $1"));
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| login_from_row(&r)).transpose()
    }

    /// Logins revoked at or after `since` (a log timestamp; they sort as text): id and the
    /// reason given.
    pub async fn logins_revoked_since(
        &self,
        since: &str,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let sql = self.sql(
            "SELECT id, revoked_reason FROM logins WHERE revoked_at IS NOT NULL AND revoked_at >= $1",
        );
        let rows = sqlx::query(&sql).bind(since).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let reason: Option<String> = r.try_get(1)?;
                Ok((r.try_get::<String, _>(0)?, reason.unwrap_or_default()))
            })
            .collect()
    }

    /// Revokes a login. Returns false when it was unknown or already revoked.
    pub async fn revoke_login(
        &self,
        id: &str,
        by: &str,
        reason: &str,
        ts: &str,
    ) -> Result<bool, StoreError> {
        let sql = self.sql(
            "UPDATE logins SET revoked_at = $1, revoked_by = $2, revoked_reason = $3 WHERE id = $4 AND revoked_at IS NULL",
        );
        let done = sqlx::query(&sql)
            .bind(ts)
            .bind(by)
            .bind(reason)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Revokes every live login of `user`; returns their ids.
    pub async fn revoke_user_logins(
        &self,
        user: &str,
        by: &str,
        reason: &str,
        ts: &str,
    ) -> Result<Vec<String>, StoreError> {
        let sql = self.sql("SELECT id FROM logins WHERE username = $1 AND revoked_at IS NULL");
        let ids: Vec<String> = sqlx::query(&sql)
            .bind(user)
            .fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let mut revoked = Vec::new();
        for id in ids {
            if self.revoke_login(&id, by, reason, ts).await? {
                revoked.push(id);
            }
        }
        Ok(revoked)
    }
}

fn login_from_row(r: &sqlx::any::AnyRow) -> Result<Login, StoreError> {
    let amr: String = r.try_get(5)?;
    let mfa: i64 = r.try_get(6)?;
    Ok(Login {
        id: r.try_get(0)?,
        user: r.try_get(1)?,
        flow: r.try_get(2)?,
        created: r.try_get(3)?,
        expires: r.try_get(4)?,
        amr: serde_json::from_str(&amr).unwrap_or_default(),
        mfa: mfa != 0,
        revoked_at: r.try_get(7)?,
        revoked_by: r.try_get(8)?,
        revoked_reason: r.try_get(9)?,
    })
}
