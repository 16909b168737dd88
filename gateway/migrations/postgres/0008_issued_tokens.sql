-- Issued service tokens (`gatehouse token issue`) are logins of flow `token`: the token's `sid`
-- (and `jti`) is the row's id, so `gatehouse token revoke` stops it at every front door and the
-- gateway cuts its live sessions, as a logout does. For those rows: the groups the token names
-- (a JSON array) and who issued it (a JSON object: the claimed name `by`, `os_user`, `uid`,
-- `host`). NULL for sign-ins.
ALTER TABLE logins ADD COLUMN token_groups TEXT;
ALTER TABLE logins ADD COLUMN issued_by TEXT;
