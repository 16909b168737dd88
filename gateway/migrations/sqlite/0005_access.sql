-- Just-in-time access: requests, the approvals and denials they collect, the time-boxed grants
-- they turn into, and review items for break-glass grants. State changes are conditional
-- updates inside transactions, so racing approvals, denials and revocations leave one outcome.
CREATE TABLE access_requests (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    requester          TEXT NOT NULL,
    resource           TEXT NOT NULL,
    role               TEXT NOT NULL,
    duration_secs      INTEGER NOT NULL,
    reason             TEXT NOT NULL,
    ticket             TEXT,
    break_glass        INTEGER NOT NULL,
    approvals_required INTEGER NOT NULL,
    state              TEXT NOT NULL,
    created            TEXT NOT NULL,
    created_unix       INTEGER NOT NULL,
    decided            TEXT,
    grant_id           INTEGER
);
CREATE INDEX access_requests_state ON access_requests (state);
CREATE INDEX access_requests_requester ON access_requests (requester, created_unix);

CREATE TABLE approvals (
    request_id INTEGER NOT NULL,
    approver   TEXT NOT NULL,
    decision   TEXT NOT NULL,
    comment    TEXT NOT NULL,
    ts         TEXT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

CREATE TABLE grants (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    grantee       TEXT NOT NULL,
    resource      TEXT NOT NULL,
    role          TEXT NOT NULL,
    starts        TEXT NOT NULL,
    expires       TEXT NOT NULL,
    expires_unix  INTEGER NOT NULL,
    source        TEXT NOT NULL,
    request_id    INTEGER,
    granted_by    TEXT NOT NULL,
    reason        TEXT NOT NULL,
    revoked_at    TEXT,
    revoked_by    TEXT,
    revoke_reason TEXT,
    end_recorded  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX grants_active ON grants (grantee, resource, role, expires_unix);

CREATE TABLE reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    grant_id    INTEGER NOT NULL,
    request_id  INTEGER,
    subject     TEXT NOT NULL,
    opened      TEXT NOT NULL,
    reviewer    TEXT,
    reviewed_at TEXT,
    comment     TEXT
);

-- Sessions know the role they run as and the grant they run under.
ALTER TABLE sessions ADD COLUMN role TEXT;
ALTER TABLE sessions ADD COLUMN grant_id INTEGER;
