-- People and service accounts the gateway has seen, and who is disabled.
CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    first_seen      TEXT NOT NULL,
    last_login      TEXT NOT NULL,
    last_groups     TEXT NOT NULL,
    disabled_at     TEXT,
    disabled_by     TEXT,
    disabled_reason TEXT
);
