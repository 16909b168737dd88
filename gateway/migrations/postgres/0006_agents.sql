-- Remote agents. An agent is known by name; its current certificate is identified by the
-- SHA-256 of its DER encoding, which the agent listener checks on every connection (a
-- revoked agent, or a certificate replaced by a re-enrollment, is refused even though the
-- agent CA signed it). `events_acked` is the highest agent sequence number whose event is in
-- the audit log: the audit writer advances it in the same transaction as the events, so each
-- (agent, seq) is stored once. A renewal issues `next_cert_sha256`; both are accepted until
-- the agent connects with the new one, which then becomes current.
CREATE TABLE agents (
    name          TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    enrolled_at   TEXT,
    cert_sha256   TEXT,
    cert_expires  TEXT,
    next_cert_sha256 TEXT,
    next_cert_expires TEXT,
    renew_requested BIGINT NOT NULL,
    hostname      TEXT,
    version       TEXT,
    resources     TEXT NOT NULL,
    connected_at  TEXT,
    disconnected_at TEXT,
    last_seen     TEXT,
    revoked_at    TEXT,
    revoked_by    TEXT,
    events_acked  BIGINT NOT NULL
);

-- One-time join tokens, stored as the SHA-256 of the token: the store never holds one that
-- works.
CREATE TABLE agent_join_tokens (
    token_sha256  TEXT PRIMARY KEY,
    agent         TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    expires_unix  BIGINT NOT NULL,
    used_at       TEXT
);
