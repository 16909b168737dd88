-- The audit log: append-only events chained by SHA-256, and signed checkpoints.
CREATE TABLE audit_events (
    seq        BIGINT PRIMARY KEY,
    ts         TEXT   NOT NULL,
    kind       TEXT   NOT NULL,
    actor      TEXT   NOT NULL,
    resource   TEXT   NOT NULL,
    action     TEXT   NOT NULL,
    decision   TEXT   NOT NULL,
    reason     TEXT   NOT NULL,
    policy_ids TEXT   NOT NULL,
    controls   TEXT   NOT NULL,
    session_id TEXT   NOT NULL,
    detail     TEXT   NOT NULL,
    prev_hash  TEXT   NOT NULL,
    hash       TEXT   NOT NULL
);
CREATE INDEX audit_events_ts ON audit_events (ts);
CREATE INDEX audit_events_session ON audit_events (session_id);

CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      TEXT NOT NULL,
    ts        TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    signature TEXT NOT NULL
);

-- Defence in depth: the gateway never updates or deletes audit rows.
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only';
END;
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_append_only();
