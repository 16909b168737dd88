-- Access review campaigns (recertification, 5.18). A campaign freezes who can reach a resource
-- (standing policy permits per user and role, active grants) into `snapshot` (canonical JSON,
-- its SHA-256 in the audit chain) and assigns each item to a reviewer who is never its subject.
-- A "revoke" ends the grant, or for standing access adds a row to `access_revocations`, which
-- every admission consults: the user's standing access to that resource and role is denied
-- from then on (an approved grant still opens it, by its own approval).
CREATE TABLE review_campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource TEXT NOT NULL,
    reviewers TEXT NOT NULL,
    started_at TEXT NOT NULL,
    started_by TEXT NOT NULL,
    due TEXT NOT NULL,
    due_unix INTEGER NOT NULL,
    snapshot_sha256 TEXT NOT NULL,
    snapshot TEXT NOT NULL
);
CREATE TABLE review_campaign_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id INTEGER NOT NULL REFERENCES review_campaigns (id),
    subject TEXT NOT NULL,
    resource TEXT NOT NULL,
    role TEXT NOT NULL,
    access TEXT NOT NULL,
    grant_id INTEGER,
    via TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    decision TEXT,
    decided_at TEXT,
    comment TEXT
);
CREATE INDEX review_campaign_items_reviewer ON review_campaign_items (reviewer, decision);
CREATE TABLE access_revocations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    resource TEXT NOT NULL,
    role TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES review_campaign_items (id),
    revoked_at TEXT NOT NULL,
    revoked_by TEXT NOT NULL
);
CREATE INDEX access_revocations_user ON access_revocations (username, resource, role);
