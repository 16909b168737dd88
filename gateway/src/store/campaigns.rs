//! SQL for access review campaigns: the campaign with its frozen snapshot, its items, and the
//! revocations of standing access that admission consults.

use sqlx::Row;

use super::{Store, StoreError};

/// A campaign's item to write.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub subject: String,
    pub resource: String,
    pub role: String,
    /// `standing` or `grant`.
    pub access: String,
    pub grant_id: Option<i64>,
    /// The policies that permit it, or `grant N`.
    pub via: String,
    pub reviewer: String,
}

/// A campaign as written.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub resource: String,
    pub reviewers: String,
    pub started_at: String,
    pub started_by: String,
    pub due: String,
    pub due_unix: i64,
    pub snapshot_sha256: String,
    pub snapshot: String,
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    pub id: i64,
    pub campaign_id: i64,
    pub subject: String,
    pub resource: String,
    pub role: String,
    pub access: String,
    pub grant_id: Option<i64>,
    pub via: String,
    pub reviewer: String,
    pub decision: Option<String>,
    pub decided_at: Option<String>,
    pub comment: Option<String>,
    pub due: String,
    pub due_unix: i64,
}

const ITEM_COLUMNS: &str = "i.id, i.campaign_id, i.subject, i.resource, i.role, i.access, i.grant_id, i.via, i.reviewer, i.decision, i.decided_at, i.comment, c.due, c.due_unix";

fn item(r: &sqlx::any::AnyRow) -> Result<ItemRow, StoreError> {
    Ok(ItemRow {
        id: r.try_get(0)?,
        campaign_id: r.try_get(1)?,
        subject: r.try_get(2)?,
        resource: r.try_get(3)?,
        role: r.try_get(4)?,
        access: r.try_get(5)?,
        grant_id: r.try_get(6)?,
        via: r.try_get(7)?,
        reviewer: r.try_get(8)?,
        decision: r.try_get(9)?,
        decided_at: r.try_get(10)?,
        comment: r.try_get(11)?,
        due: r.try_get(12)?,
        due_unix: r.try_get(13)?,
    })
}

impl Store {
    /// Writes a campaign and its items in one transaction; returns the campaign's id.
    pub async fn create_campaign(
        &self,
        c: &NewCampaign,
        items: &[NewItem],
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool().begin().await?;
        let sql = self.sql(
            "INSERT INTO review_campaigns (resource, reviewers, started_at, started_by, due, due_unix, snapshot_sha256, snapshot) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        );
        let id: i64 = sqlx::query(&sql)
            .bind(&c.resource)
            .bind(&c.reviewers)
            .bind(&c.started_at)
            .bind(&c.started_by)
            .bind(&c.due)
            .bind(c.due_unix)
            .bind(&c.snapshot_sha256)
            .bind(&c.snapshot)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let sql = self.sql(
            "INSERT INTO review_campaign_items (campaign_id, subject, resource, role, access, grant_id, via, reviewer) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        );
        for i in items {
            sqlx::query(&sql)
                .bind(id)
                .bind(&i.subject)
                .bind(&i.resource)
                .bind(&i.role)
                .bind(&i.access)
                .bind(i.grant_id)
                .bind(&i.via)
                .bind(&i.reviewer)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(id)
    }

    /// Items of campaign `id` (all of them when `None`), oldest first.
    pub async fn campaign_items(&self, campaign: Option<i64>) -> Result<Vec<ItemRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {ITEM_COLUMNS} FROM review_campaign_items i JOIN review_campaigns c ON c.id = i.campaign_id \
             WHERE ($1 = 0 OR i.campaign_id = $2) ORDER BY i.id"
        ));
        let c = campaign.unwrap_or(0);
        let rows = sqlx::query(&sql)
            .bind(c)
            .bind(c)
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(item).collect()
    }

    pub async fn campaign_item(&self, id: i64) -> Result<Option<ItemRow>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT {ITEM_COLUMNS} FROM review_campaign_items i JOIN review_campaigns c ON c.id = i.campaign_id WHERE i.id = $1"
        ));
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(item).transpose()
    }

    /// Records the decision on an item once; a revoke of standing access adds its revocation in
    /// the same transaction. `false` when the item was already decided.
    pub async fn decide_item(
        &self,
        item: &ItemRow,
        decision: &str,
        comment: &str,
        at: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        let sql = self.sql(
            "UPDATE review_campaign_items SET decision = $1, decided_at = $2, comment = $3 WHERE id = $4 AND decision IS NULL",
        );
        let n = sqlx::query(&sql)
            .bind(decision)
            .bind(at)
            .bind(comment)
            .bind(item.id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n != 1 {
            return Ok(false);
        }
        if decision == "revoke" && item.access == "standing" {
            let sql = self.sql(
                "INSERT INTO access_revocations (username, resource, role, item_id, revoked_at, revoked_by) VALUES ($1, $2, $3, $4, $5, $6)",
            );
            sqlx::query(&sql)
                .bind(&item.subject)
                .bind(&item.resource)
                .bind(&item.role)
                .bind(item.id)
                .bind(at)
                .bind(&item.reviewer)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The review item that revoked `user`'s standing access to `resource` as `role`, if any.
    pub async fn access_revocation(
        &self,
        user: &str,
        resource: &str,
        role: &str,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let sql = self.sql(
            "SELECT item_id, revoked_by FROM access_revocations WHERE username = $1 AND resource = $2 AND role = $3 ORDER BY id LIMIT 1",
        );
        let row = sqlx::query(&sql)
            .bind(user)
            .bind(resource)
            .bind(role)
            .fetch_optional(self.pool())
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get(0)?, r.try_get(1)?)),
            None => None,
        })
    }
}
