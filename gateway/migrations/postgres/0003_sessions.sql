-- Sessions as admins see them (`gatehouse sessions`), and kill requests for them. Any process
-- (the CLI, another replica) may request a kill; the gateway that holds the session acts on it.
CREATE TABLE sessions (
    id                TEXT PRIMARY KEY,
    instance          TEXT NOT NULL,
    username          TEXT NOT NULL,
    resource          TEXT NOT NULL,
    client_addr       TEXT NOT NULL,
    started           TEXT NOT NULL,
    ended             TEXT,
    end_reason        TEXT,
    kill_requested_at TEXT,
    kill_requested_by TEXT,
    kill_reason       TEXT
);
CREATE INDEX sessions_open ON sessions (ended);
