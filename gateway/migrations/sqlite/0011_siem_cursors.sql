-- How far each SIEM stream has delivered the audit log: events after `delivered_seq` are sent
-- again after a restart or a lost connection (at least once; each carries its seq).
CREATE TABLE siem_cursors (
    sink TEXT PRIMARY KEY,
    delivered_seq INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
