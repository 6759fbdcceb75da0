-- Snapshot directories whose row `rename` has renamed but whose directory it
-- has not yet moved. The row is committed together with the new name; the
-- next command that opens the registry finishes the move, so a crash never
-- leaves a row naming a directory that is not there.
CREATE TABLE pending_renames (
    digest     TEXT PRIMARY KEY,
    old_name   TEXT NOT NULL,
    new_name   TEXT NOT NULL,
    started_at INTEGER NOT NULL    -- unix seconds
) STRICT, WITHOUT ROWID;
