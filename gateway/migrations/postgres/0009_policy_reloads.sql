-- `gatehouse policy reload` asks every gateway on this store to reload its policies: one row
-- per request, with who asked (a JSON object: the claimed name `by`, `os_user`, `uid`, `host`,
-- and `approved_by` when a second person approved the change). Each gateway remembers the
-- highest id it has acted on and records the outcome as a `policy.changed` event naming the
-- request's id.
CREATE TABLE policy_reloads (
    id BIGSERIAL PRIMARY KEY,
    requested_at TEXT NOT NULL,
    requested_by TEXT NOT NULL
);
