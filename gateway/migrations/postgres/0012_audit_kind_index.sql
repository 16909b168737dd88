-- Events by kind (recording chunks, grants, decisions): what replay, search and verify read.
CREATE INDEX audit_events_kind ON audit_events (kind, seq);
