-- Snapshot directories whose rows `rm` has deleted but whose files it has not
-- yet moved out of snapshots/. The row is committed together with the
-- snapshot's deletion; the next command that opens the registry finishes the
-- move, so a crash never leaves a directory holding a name without a row.
CREATE TABLE pending_removals (
    digest     TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    started_at INTEGER NOT NULL    -- unix seconds
) STRICT, WITHOUT ROWID;
