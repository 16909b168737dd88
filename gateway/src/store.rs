//! The store: one sqlx pool over SQLite (embedded default) or PostgreSQL, chosen by URL, with
//! embedded migrations per backend.
//!
//! Queries are written once with `$1`-style placeholders; [`Store::sql`] rewrites them to SQLite's
//! `?1` form. SQLite runs in WAL mode with `synchronous=FULL`, checked at startup: the audit log's
//! durability promise rests on it.

pub mod access;
pub mod agents;
pub mod audit;
pub mod campaigns;
pub mod logins;
pub mod policy_reloads;
pub mod sessions;
pub mod siem;
pub mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

// Each message holds its cause, and no variant also returns it as `source()`: printed as a
// chain (`{:#}`), a cause would show twice (sqlx's own errors, such as `Io`, do that too, so
// `Sql` does not pass its chain on).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open store `{url}`: {error}")]
    Open { url: String, error: sqlx::Error },
    #[error("store migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("sqlite store is not durable: {0}")]
    NotDurable(String),
    #[error("cannot create the store directory: {0}")]
    Dir(std::io::Error),
    #[error("{0}")]
    Sql(sqlx::Error),
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Sql(e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle to the store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens the store at `url`, creating a SQLite file when needed, and runs migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let open_err = |error| StoreError::Open {
            url: redact_url(url),
            error,
        };
        let mut options_url = url.to_string();
        if backend == Backend::Sqlite {
            if let Some(path) = sqlite_path(url) {
                if let Some(dir) = std::path::Path::new(&path).parent() {
                    std::fs::create_dir_all(dir).map_err(StoreError::Dir)?;
                }
            }
            if !options_url.contains('?') {
                options_url.push_str("?mode=rwc");
            }
        }
        let options = AnyConnectOptions::from_str(&options_url).map_err(open_err)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = FULL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(open_err)?;
        let store = Store { pool, backend };
        store.check_durability().await?;
        match backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite")
                    .run(&store.pool)
                    .await?
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres")
                    .run(&store.pool)
                    .await?
            }
        }
        Ok(store)
    }

    async fn check_durability(&self) -> Result<(), StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(());
        }
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&self.pool)
            .await?;
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&self.pool)
            .await?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotDurable(format!(
                "journal_mode is `{mode}`, expected `wal`"
            )));
        }
        // 2 = FULL, 3 = EXTRA.
        if sync < 2 {
            return Err(StoreError::NotDurable(format!(
                "synchronous is {sync}, expected 2 (FULL)"
            )));
        }
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// What the store holds, in bytes: SQLite's pages as the last commit left them (the
    /// write-ahead log beside the file adds a few MiB at most, reused after each
    /// checkpoint), PostgreSQL's `pg_database_size`.
    pub async fn size_bytes(&self) -> Result<u64, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let pages: i64 = sqlx::query_scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(&self.pool)
                .await?;
                Ok(pages.max(0) as u64)
            }
            Backend::Postgres => {
                let size: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(size.max(0) as u64)
            }
        }
    }

    /// Rewrites `$N` placeholders for the backend. For SQLite they become plain positional `?`
    /// (numbered ones make sqlx look every parameter up by name, quadratic in a multi-row
    /// insert), so every query must use its placeholders once each, in ascending order.
    pub fn sql(&self, q: &str) -> String {
        match self.backend {
            Backend::Postgres => q.to_string(),
            Backend::Sqlite => positional_placeholders(q),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `$1`, `$2` ... to `?`.
fn positional_placeholders(q: &str) -> String {
    let mut out = String::with_capacity(q.len());
    let mut chars = q.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

/// A URL with any password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_placeholders_are_positional() {
        let sqlite = positional_placeholders;
        assert_eq!(sqlite("VALUES ($1,$2),($13,$14)"), "VALUES (?,?),(?,?)");
        assert_eq!(sqlite("a$b"), "a$b");
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://gh:pw@db:5432/x"),
            "postgres://gh:<redacted>@db:5432/x"
        );
        assert_eq!(redact_url("sqlite:///tmp/a.db"), "sqlite:///tmp/a.db");
    }
}
