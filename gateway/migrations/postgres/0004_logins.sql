-- Single sign-on logins. A login credential carries the login's id (`sid`); revoking the row
-- (logout, or the provider no longer vouching for the person) makes every credential of that
-- login stop working at every front door. The provider's tokens are never stored here.
CREATE TABLE logins (
    id             TEXT PRIMARY KEY,
    username       TEXT NOT NULL,
    flow           TEXT NOT NULL,
    created        TEXT NOT NULL,
    expires        TEXT NOT NULL,
    amr            TEXT NOT NULL,
    mfa            BIGINT NOT NULL,
    revoked_at     TEXT,
    revoked_by     TEXT,
    revoked_reason TEXT
);
CREATE INDEX logins_user ON logins (username);
