//! SQL for logins: one row per single sign-on login, revoked at logout or when the provider no
//! longer vouches for the person, and one per issued service token (flow [`TOKEN_FLOW`], with
//! its groups and issuer), revoked by `gatehouse token revoke`. Credentials name their login
//! (`sid`); the front doors refuse a credential whose login is revoked or unknown.

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

/// The `flow` of an issued service token's login row.
pub const TOKEN_FLOW: &str = "token";

/// An issued service token: its login row, the groups it names and who issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// `login.flow` is [`TOKEN_FLOW`]; `login.id` is the token's `sid` and `jti`.
    pub login: Login,
    pub groups: Vec<String>,
    /// Who issued it, as recorded (a JSON object: `by`, `os_user`, `uid`, `host`).
    pub issued_by: serde_json::Value,
}

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

    /// Records an issued service token (flow [`TOKEN_FLOW`] whatever `t.login.flow` says).
    pub async fn insert_issued_token(&self, t: &IssuedToken) -> Result<(), StoreError> {
        let l = &t.login;
        let sql = self.sql(&format!(
            "INSERT INTO logins ({COLUMNS}, token_groups, issued_by) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, NULL, NULL, $8, $9)"
        ));
        sqlx::query(&sql)
            .bind(&l.id)
            .bind(&l.user)
            .bind(TOKEN_FLOW)
            .bind(&l.created)
            .bind(&l.expires)
            .bind(serde_json::to_string(&l.amr).unwrap_or_else(|_| "[]".into()))
            .bind(i64::from(l.mfa))
            .bind(serde_json::to_string(&t.groups).unwrap_or_else(|_| "[]".into()))
            .bind(t.issued_by.to_string())
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The issued service token whose login id is `id`, if there is one (a sign-in's login is
    /// not one).
    pub async fn issued_token(&self, id: &str) -> Result<Option<IssuedToken>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {COLUMNS}, token_groups, issued_by FROM logins WHERE id = $1 AND flow = $2"
        ));
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(TOKEN_FLOW)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| issued_token_from_row(&r)).transpose()
    }

    /// Issued service tokens, oldest first: those neither revoked nor expired at `now` (a log
    /// timestamp), or every one when `all`.
    pub async fn issued_tokens(
        &self,
        all: bool,
        now: &str,
    ) -> Result<Vec<IssuedToken>, StoreError> {
        let filter = if all {
            ""
        } else {
            " AND revoked_at IS NULL AND expires > $2"
        };
        let sql = self.sql(&format!(
            "SELECT {COLUMNS}, token_groups, issued_by FROM logins WHERE flow = $1{filter} ORDER BY created, id"
        ));
        let mut q = sqlx::query(&sql).bind(TOKEN_FLOW);
        if !all {
            q = q.bind(now);
        }
        let rows = q.fetch_all(self.pool()).await?;
        rows.iter().map(issued_token_from_row).collect()
    }

    /// Whether `user` has any login row (a sign-in or an issued token, revoked or not).
    pub async fn user_has_logins(&self, user: &str) -> Result<bool, StoreError> {
        let sql = self.sql("SELECT COUNT(*) FROM logins WHERE username = $1");
        let n: i64 = sqlx::query(&sql)
            .bind(user)
            .fetch_one(self.pool())
            .await?
            .try_get(0)?;
        Ok(n > 0)
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

fn issued_token_from_row(r: &sqlx::any::AnyRow) -> Result<IssuedToken, StoreError> {
    let groups: Option<String> = r.try_get(10)?;
    let issued_by: Option<String> = r.try_get(11)?;
    Ok(IssuedToken {
        login: login_from_row(r)?,
        groups: groups
            .and_then(|g| serde_json::from_str(&g).ok())
            .unwrap_or_default(),
        issued_by: issued_by
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null),
    })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn login(id: &str, user: &str, flow: &str, expires: &str) -> Login {
        Login {
            id: id.into(),
            user: user.into(),
            flow: flow.into(),
            created: "2026-01-01T00:00:00.000000Z".into(),
            expires: expires.into(),
            amr: Vec::new(),
            mfa: false,
            revoked_at: None,
            revoked_by: None,
            revoked_reason: None,
        }
    }

    #[tokio::test]
    async fn issued_tokens_are_logins_with_groups_and_issuer() {
        let dir = std::env::temp_dir().join(format!(
            "gh-logins-{}-{}",
            std::process::id(),
            crate::audit::event::hex(&gatehouse_core::random::random_bytes::<4>())
        ));
        let store = Store::open(&format!("sqlite://{}", dir.join("g.db").display()))
            .await
            .unwrap();
        let by = serde_json::json!({"by": "hr", "os_user": "root", "uid": 0, "host": "gw1"});
        let live = IssuedToken {
            login: login("t1", "ci-bot", "ignored", "2099-01-01T00:00:00.000000Z"),
            groups: vec!["deploy".into(), "dba".into()],
            issued_by: by.clone(),
        };
        let old = IssuedToken {
            login: login("t2", "ci-bot", TOKEN_FLOW, "2026-01-01T01:00:00.000000Z"),
            groups: Vec::new(),
            issued_by: by.clone(),
        };
        store.insert_issued_token(&live).await.unwrap();
        store.insert_issued_token(&old).await.unwrap();
        // A sign-in is a login but not an issued token.
        store
            .insert_login(&login("s1", "alice", "code", "2099-01-01T00:00:00.000000Z"))
            .await
            .unwrap();

        let got = store.issued_token("t1").await.unwrap().unwrap();
        assert_eq!(got.login.flow, TOKEN_FLOW);
        assert_eq!(got.groups, live.groups);
        assert_eq!(got.issued_by, by);
        assert!(store.issued_token("s1").await.unwrap().is_none());
        assert!(store.issued_token("nope").await.unwrap().is_none());
        assert_eq!(store.login("t1").await.unwrap().unwrap().user, "ci-bot");

        let now = "2026-06-01T00:00:00.000000Z";
        let ids = |v: Vec<IssuedToken>| v.into_iter().map(|t| t.login.id).collect::<Vec<_>>();
        assert_eq!(ids(store.issued_tokens(false, now).await.unwrap()), ["t1"]);
        assert_eq!(
            ids(store.issued_tokens(true, now).await.unwrap()),
            ["t1", "t2"]
        );
        assert!(store.revoke_login("t1", "hr", "leaked", now).await.unwrap());
        assert!(!store.revoke_login("t1", "hr", "again", now).await.unwrap());
        assert!(store.issued_tokens(false, now).await.unwrap().is_empty());
        let got = store.issued_token("t1").await.unwrap().unwrap();
        assert_eq!(got.login.revoked_reason.as_deref(), Some("leaked"));
        assert_eq!(store.logins_revoked_since(now).await.unwrap()[0].0, "t1");

        assert!(store.user_has_logins("ci-bot").await.unwrap());
        assert!(store.user_has_logins("alice").await.unwrap());
        assert!(!store.user_has_logins("nobody-such").await.unwrap());
        store.close().await;
        std::fs::remove_dir_all(dir).ok();
    }
}
