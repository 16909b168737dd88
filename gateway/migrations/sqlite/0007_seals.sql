-- Commit seals: the audit writer signs each commit's events (from the first to the last, with
-- the last one's hash) with the audit key and stores the signature on the commit's last row.
-- A row written into the store without the key is covered by no seal: the next writer raises
-- an `audit.foreign_rows` alarm and `audit verify` names the rows. NULL on rows from before
-- sealing began, and on every row but a commit's last.
ALTER TABLE audit_events ADD COLUMN seal TEXT;
