//! SQL for just-in-time access: requests, approvals, grants and review items.
//!
//! Every state change runs in one transaction that starts with a write to the row it changes
//! (`UPDATE ... SET state = state`): on PostgreSQL that locks the row, on SQLite it takes the
//! write lock before anything is read. So two approvals, or an approval and a denial, racing
//! for the same request serialise, and each sees the other's outcome: a request yields at most
//! one grant, and a revoked grant never becomes active again.

use sqlx::Row;

use super::{Store, StoreError};

/// A request as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRow {
    pub id: i64,
    pub requester: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    pub reason: String,
    pub ticket: Option<String>,
    pub break_glass: bool,
    pub approvals_required: i64,
    /// `pending`, `approved`, `denied`.
    pub state: String,
    pub created: String,
    pub decided: Option<String>,
    pub grant_id: Option<i64>,
}

/// One approver's decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow {
    pub request_id: i64,
    pub approver: String,
    pub decision: String,
    pub comment: String,
    pub ts: String,
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRow {
    pub id: i64,
    pub grantee: String,
    pub resource: String,
    pub role: String,
    pub starts: String,
    pub expires: String,
    pub expires_unix: i64,
    /// `request`, `direct`, `break_glass`.
    pub source: String,
    pub request_id: Option<i64>,
    pub granted_by: String,
    pub reason: String,
    pub revoked_at: Option<String>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

impl GrantRow {
    pub fn active_at(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_unix > now
    }
}

/// A review item (opened for every break-glass grant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReviewRow {
    pub id: i64,
    pub grant_id: i64,
    pub request_id: Option<i64>,
    /// Whose access is under review.
    pub subject: String,
    pub opened: String,
    pub reviewer: Option<String>,
    pub reviewed_at: Option<String>,
    pub comment: Option<String>,
}

/// What a new grant needs.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub grantee: String,
    pub resource: String,
    pub role: String,
    pub starts: String,
    pub expires: String,
    pub expires_unix: i64,
    pub source: String,
    pub request_id: Option<i64>,
    pub granted_by: String,
    pub reason: String,
}

/// What a new request needs.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub requester: String,
    pub resource: String,
    pub role: String,
    pub duration_secs: i64,
    pub reason: String,
    pub ticket: Option<String>,
    pub break_glass: bool,
    pub approvals_required: i64,
    pub created: String,
    pub created_unix: i64,
}

/// The outcome of an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Counted; more approvals are needed.
    Counted {
        approvals: i64,
        required: i64,
    },
    /// This approval completed the request: the grant exists.
    Granted(Box<GrantRow>),
    /// This approver already decided on the request; it counts once.
    Duplicate,
    /// The request is no longer pending (approved, denied).
    NotPending(String),
    NotFound,
}

const REQUEST_COLUMNS: &str = "id, requester, resource, role, duration_secs, reason, ticket, break_glass, approvals_required, state, created, decided, grant_id";
const GRANT_COLUMNS: &str = "id, grantee, resource, role, starts, expires, expires_unix, source, request_id, granted_by, reason, revoked_at, revoked_by, revoke_reason";
const REVIEW_COLUMNS: &str =
    "id, grant_id, request_id, subject, opened, reviewer, reviewed_at, comment";

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

impl Store {
    /// How many requests `user` made since `since_unix` (rate limiting).
    pub async fn requests_since(&self, user: &str, since_unix: i64) -> Result<i64, StoreError> {
        let sql = self.sql(
            "SELECT COUNT(*) FROM access_requests WHERE requester = $1 AND created_unix >= $2",
        );
        let row = sqlx::query(&sql)
            .bind(user)
            .bind(since_unix)
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// Creates a pending request; returns its id.
    pub async fn create_request(&self, r: &NewRequest) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let id = insert_request(self, &mut tx, r, "pending").await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A break-glass request: the request (approved at once), its grant and a review item,
    /// in one transaction.
    pub async fn break_glass(
        &self,
        r: &NewRequest,
        g: &NewGrant,
    ) -> Result<(i64, GrantRow, i64), StoreError> {
        let mut tx = self.pool().begin().await?;
        let request_id = insert_request(self, &mut tx, r, "approved").await?;
        let mut g = g.clone();
        g.request_id = Some(request_id);
        let grant = insert_grant(self, &mut tx, &g).await?;
        let sql = self.sql("UPDATE access_requests SET grant_id = $1, decided = $2 WHERE id = $3");
        sqlx::query(&sql)
            .bind(grant.id)
            .bind(&g.starts)
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        let sql = self.sql(
            "INSERT INTO reviews (grant_id, request_id, subject, opened) VALUES ($1, $2, $3, $4) RETURNING id",
        );
        let review: i64 = sqlx::query(&sql)
            .bind(grant.id)
            .bind(request_id)
            .bind(&g.grantee)
            .bind(&g.starts)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok((request_id, grant, review))
    }

    pub async fn request(&self, id: i64) -> Result<Option<RequestRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id = $1"
        ));
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| request_from_row(&r)).transpose()
    }

    /// Requests, newest first: all pending ones (`pending`), or those of `requester`.
    pub async fn requests(
        &self,
        pending: bool,
        requester: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RequestRow>, StoreError> {
        let rows = match (pending, requester) {
            (true, _) => {
                let sql = self.sql(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE state = 'pending' ORDER BY id DESC LIMIT $1"
                ));
                sqlx::query(&sql).bind(limit).fetch_all(self.pool()).await?
            }
            (false, Some(user)) => {
                let sql = self.sql(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE requester = $1 ORDER BY id DESC LIMIT $2"
                ));
                sqlx::query(&sql)
                    .bind(user)
                    .bind(limit)
                    .fetch_all(self.pool())
                    .await?
            }
            (false, None) => {
                let sql = self.sql(&format!(
                    "SELECT {REQUEST_COLUMNS} FROM access_requests ORDER BY id DESC LIMIT $1"
                ));
                sqlx::query(&sql).bind(limit).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(request_from_row).collect()
    }

    pub async fn approvals(&self, request_id: i64) -> Result<Vec<ApprovalRow>, StoreError> {
        let sql = self.sql(
            "SELECT request_id, approver, decision, comment, ts FROM approvals WHERE request_id = $1 ORDER BY ts",
        );
        let rows = sqlx::query(&sql)
            .bind(request_id)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ApprovalRow {
                    request_id: r.try_get(0)?,
                    approver: r.try_get(1)?,
                    decision: r.try_get(2)?,
                    comment: r.try_get(3)?,
                    ts: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Records `approver`'s approval; when it is the N-th distinct one, approves the request
    /// and creates its grant (`grant` is filled in with the request's id).
    pub async fn approve(
        &self,
        request_id: i64,
        approver: &str,
        comment: &str,
        ts: &str,
        grant: NewGrant,
    ) -> Result<Approval, StoreError> {
        let mut tx = self.pool().begin().await?;
        let Some(req) = lock_request(self, &mut tx, request_id).await? else {
            return Ok(Approval::NotFound);
        };
        if req.state != "pending" {
            return Ok(Approval::NotPending(req.state));
        }
        let sql = self.sql(
            "INSERT INTO approvals (request_id, approver, decision, comment, ts) VALUES ($1, $2, 'approve', $3, $4) ON CONFLICT (request_id, approver) DO NOTHING",
        );
        let inserted = sqlx::query(&sql)
            .bind(request_id)
            .bind(approver)
            .bind(comment)
            .bind(ts)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if inserted == 0 {
            return Ok(Approval::Duplicate);
        }
        let sql = self
            .sql("SELECT COUNT(*) FROM approvals WHERE request_id = $1 AND decision = 'approve'");
        let approvals: i64 = sqlx::query(&sql)
            .bind(request_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if approvals < req.approvals_required {
            tx.commit().await?;
            return Ok(Approval::Counted {
                approvals,
                required: req.approvals_required,
            });
        }
        let mut grant = grant;
        grant.request_id = Some(request_id);
        let row = insert_grant(self, &mut tx, &grant).await?;
        let sql = self.sql(
            "UPDATE access_requests SET state = 'approved', decided = $1, grant_id = $2 WHERE id = $3 AND state = 'pending'",
        );
        sqlx::query(&sql)
            .bind(ts)
            .bind(row.id)
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Approval::Granted(Box::new(row)))
    }

    /// Records a denial; the request is denied at once. Returns `Ok(None)` on success, or the
    /// reason it could not be denied.
    pub async fn deny(
        &self,
        request_id: i64,
        approver: &str,
        comment: &str,
        ts: &str,
    ) -> Result<Option<Approval>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let Some(req) = lock_request(self, &mut tx, request_id).await? else {
            return Ok(Some(Approval::NotFound));
        };
        if req.state != "pending" {
            return Ok(Some(Approval::NotPending(req.state)));
        }
        let sql = self.sql(
            "INSERT INTO approvals (request_id, approver, decision, comment, ts) VALUES ($1, $2, 'deny', $3, $4) ON CONFLICT (request_id, approver) DO UPDATE SET decision = 'deny', comment = excluded.comment, ts = excluded.ts",
        );
        sqlx::query(&sql)
            .bind(request_id)
            .bind(approver)
            .bind(comment)
            .bind(ts)
            .execute(&mut *tx)
            .await?;
        let sql = self.sql(
            "UPDATE access_requests SET state = 'denied', decided = $1 WHERE id = $2 AND state = 'pending'",
        );
        sqlx::query(&sql)
            .bind(ts)
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(None)
    }

    /// A grant made directly by an admin.
    pub async fn create_grant(&self, g: &NewGrant) -> Result<GrantRow, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = insert_grant(self, &mut tx, g).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn grant(&self, id: i64) -> Result<Option<GrantRow>, StoreError> {
        let sql = self.sql(&format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id = $1"));
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| grant_from_row(&r)).transpose()
    }

    /// Grants that are active at `now`, or all grants (newest first).
    pub async fn grants(&self, active_at: Option<i64>) -> Result<Vec<GrantRow>, StoreError> {
        let rows = match active_at {
            Some(now) => {
                let sql = self.sql(&format!(
                    "SELECT {GRANT_COLUMNS} FROM grants WHERE revoked_at IS NULL AND expires_unix > $1 ORDER BY id DESC"
                ));
                sqlx::query(&sql).bind(now).fetch_all(self.pool()).await?
            }
            None => {
                let sql = format!("SELECT {GRANT_COLUMNS} FROM grants ORDER BY id DESC LIMIT 500");
                sqlx::query(&sql).fetch_all(self.pool()).await?
            }
        };
        rows.iter().map(grant_from_row).collect()
    }

    /// The active grant covering `user` on `resource` as `role`, longest-lived first.
    pub async fn active_grant(
        &self,
        user: &str,
        resource: &str,
        role: &str,
        now: i64,
    ) -> Result<Option<GrantRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE grantee = $1 AND resource = $2 AND role = $3 AND revoked_at IS NULL AND expires_unix > $4 ORDER BY expires_unix DESC LIMIT 1"
        ));
        let row = sqlx::query(&sql)
            .bind(user)
            .bind(resource)
            .bind(role)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| grant_from_row(&r)).transpose()
    }

    /// Revokes an active grant. Returns the grant when this call revoked it.
    pub async fn revoke_grant(
        &self,
        id: i64,
        by: &str,
        reason: &str,
        ts: &str,
        now: i64,
    ) -> Result<Option<GrantRow>, StoreError> {
        let sql = self.sql(
            "UPDATE grants SET revoked_at = $1, revoked_by = $2, revoke_reason = $3 WHERE id = $4 AND revoked_at IS NULL AND expires_unix > $5",
        );
        let done = sqlx::query(&sql)
            .bind(ts)
            .bind(by)
            .bind(reason)
            .bind(id)
            .bind(now)
            .execute(self.pool())
            .await?;
        if done.rows_affected() == 1 {
            self.grant(id).await
        } else {
            Ok(None)
        }
    }

    /// Grants revoked while still unexpired at `now`: id, who revoked, the reason.
    pub async fn revoked_unexpired_grants(
        &self,
        now: i64,
    ) -> Result<Vec<(i64, String, String)>, StoreError> {
        let sql = self.sql(
            "SELECT id, revoked_by, revoke_reason FROM grants WHERE revoked_at IS NOT NULL AND expires_unix > $1",
        );
        let rows = sqlx::query(&sql).bind(now).fetch_all(self.pool()).await?;
        rows.iter()
            .map(|r| {
                let by: Option<String> = r.try_get(1)?;
                let reason: Option<String> = r.try_get(2)?;
                Ok((
                    r.try_get::<i64, _>(0)?,
                    by.unwrap_or_default(),
                    reason.unwrap_or_default(),
                ))
            })
            .collect()
    }

    /// Grants that have ended (expired or revoked) and whose end is not yet in the audit log.
    pub async fn ended_unrecorded_grants(&self, now: i64) -> Result<Vec<GrantRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {GRANT_COLUMNS} FROM grants WHERE end_recorded = 0 AND (expires_unix <= $1 OR revoked_at IS NOT NULL) ORDER BY id LIMIT 1000"
        ));
        let rows = sqlx::query(&sql).bind(now).fetch_all(self.pool()).await?;
        rows.iter().map(grant_from_row).collect()
    }

    /// Claims the recording of a grant's end; true for exactly one caller.
    pub async fn claim_grant_end(&self, id: i64) -> Result<bool, StoreError> {
        let sql = self.sql("UPDATE grants SET end_recorded = 1 WHERE id = $1 AND end_recorded = 0");
        let done = sqlx::query(&sql).bind(id).execute(self.pool()).await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn reviews(&self, open_only: bool) -> Result<Vec<ReviewRow>, StoreError> {
        let sql = if open_only {
            format!("SELECT {REVIEW_COLUMNS} FROM reviews WHERE reviewed_at IS NULL ORDER BY id")
        } else {
            format!("SELECT {REVIEW_COLUMNS} FROM reviews ORDER BY id DESC LIMIT 500")
        };
        let rows = sqlx::query(&sql).fetch_all(self.pool()).await?;
        rows.iter().map(review_from_row).collect()
    }

    pub async fn review(&self, id: i64) -> Result<Option<ReviewRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {REVIEW_COLUMNS} FROM reviews WHERE id = $1"
        ));
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| review_from_row(&r)).transpose()
    }

    /// Signs a review item off; true when this call did.
    pub async fn sign_off_review(
        &self,
        id: i64,
        reviewer: &str,
        comment: &str,
        ts: &str,
    ) -> Result<bool, StoreError> {
        let sql = self.sql(
            "UPDATE reviews SET reviewer = $1, reviewed_at = $2, comment = $3 WHERE id = $4 AND reviewed_at IS NULL",
        );
        let done = sqlx::query(&sql)
            .bind(reviewer)
            .bind(ts)
            .bind(comment)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

async fn insert_request(
    store: &Store,
    tx: &mut Tx<'_>,
    r: &NewRequest,
    state: &str,
) -> Result<i64, StoreError> {
    let sql = store.sql(
        "INSERT INTO access_requests (requester, resource, role, duration_secs, reason, ticket, break_glass, approvals_required, state, created, created_unix) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
    );
    let id: i64 = sqlx::query(&sql)
        .bind(&r.requester)
        .bind(&r.resource)
        .bind(&r.role)
        .bind(r.duration_secs)
        .bind(&r.reason)
        .bind(r.ticket.clone())
        .bind(i64::from(r.break_glass))
        .bind(r.approvals_required)
        .bind(state)
        .bind(&r.created)
        .bind(r.created_unix)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    Ok(id)
}

async fn insert_grant(
    store: &Store,
    tx: &mut Tx<'_>,
    g: &NewGrant,
) -> Result<GrantRow, StoreError> {
    let sql = store.sql(
        "INSERT INTO grants (grantee, resource, role, starts, expires, expires_unix, source, request_id, granted_by, reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    );
    let id: i64 = sqlx::query(&sql)
        .bind(&g.grantee)
        .bind(&g.resource)
        .bind(&g.role)
        .bind(&g.starts)
        .bind(&g.expires)
        .bind(g.expires_unix)
        .bind(&g.source)
        .bind(g.request_id)
        .bind(&g.granted_by)
        .bind(&g.reason)
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)?;
    Ok(GrantRow {
        id,
        grantee: g.grantee.clone(),
        resource: g.resource.clone(),
        role: g.role.clone(),
        starts: g.starts.clone(),
        expires: g.expires.clone(),
        expires_unix: g.expires_unix,
        source: g.source.clone(),
        request_id: g.request_id,
        granted_by: g.granted_by.clone(),
        reason: g.reason.clone(),
        revoked_at: None,
        revoked_by: None,
        revoke_reason: None,
    })
}

/// Takes the write lock on the request's row first (see the module docs), then reads it.
async fn lock_request(
    store: &Store,
    tx: &mut Tx<'_>,
    id: i64,
) -> Result<Option<RequestRow>, StoreError> {
    let sql = store.sql("UPDATE access_requests SET state = state WHERE id = $1");
    sqlx::query(&sql).bind(id).execute(&mut **tx).await?;
    let sql = store.sql(&format!(
        "SELECT {REQUEST_COLUMNS} FROM access_requests WHERE id = $1"
    ));
    let row = sqlx::query(&sql).bind(id).fetch_optional(&mut **tx).await?;
    row.map(|r| request_from_row(&r)).transpose()
}

fn request_from_row(r: &sqlx::any::AnyRow) -> Result<RequestRow, StoreError> {
    let bg: i64 = r.try_get(7)?;
    Ok(RequestRow {
        id: r.try_get(0)?,
        requester: r.try_get(1)?,
        resource: r.try_get(2)?,
        role: r.try_get(3)?,
        duration_secs: r.try_get(4)?,
        reason: r.try_get(5)?,
        ticket: r.try_get(6)?,
        break_glass: bg != 0,
        approvals_required: r.try_get(8)?,
        state: r.try_get(9)?,
        created: r.try_get(10)?,
        decided: r.try_get(11)?,
        grant_id: r.try_get(12)?,
    })
}

fn grant_from_row(r: &sqlx::any::AnyRow) -> Result<GrantRow, StoreError> {
    Ok(GrantRow {
        id: r.try_get(0)?,
        grantee: r.try_get(1)?,
        resource: r.try_get(2)?,
        role: r.try_get(3)?,
        starts: r.try_get(4)?,
        expires: r.try_get(5)?,
        expires_unix: r.try_get(6)?,
        source: r.try_get(7)?,
        request_id: r.try_get(8)?,
        granted_by: r.try_get(9)?,
        reason: r.try_get(10)?,
        revoked_at: r.try_get(11)?,
        revoked_by: r.try_get(12)?,
        revoke_reason: r.try_get(13)?,
    })
}

fn review_from_row(r: &sqlx::any::AnyRow) -> Result<ReviewRow, StoreError> {
    Ok(ReviewRow {
        id: r.try_get(0)?,
        grant_id: r.try_get(1)?,
        request_id: r.try_get(2)?,
        subject: r.try_get(3)?,
        opened: r.try_get(4)?,
        reviewer: r.try_get(5)?,
        reviewed_at: r.try_get(6)?,
        comment: r.try_get(7)?,
    })
}
