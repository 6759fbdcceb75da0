-- Push and pull (README "Push and pull"): what the registry knows of OCI
-- registries, so a push sends only what the other side lacks.

-- The zstd blob each chunk was sent or received as. A chunk's blob digest
-- is the SHA-256 of its compressed bytes, which only compressing it tells;
-- recording it lets a push of a child skip reading the chunks it shares
-- with its parent. Kept when the chunk leaves the registry (rows are small,
-- and the chunk may come back).
CREATE TABLE chunk_blobs (
    chunk     TEXT PRIMARY KEY,     -- 'sha256:<hex>' of the uncompressed chunk
    blob      TEXT NOT NULL,        -- 'sha256:<hex>' of the zstd blob
    blob_size INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Blobs a remote repository is known to hold: stored by a push of ours or
-- found there by a HEAD. Never a credential, only where and what.
CREATE TABLE remote_blobs (
    registry   TEXT NOT NULL,       -- host[:port]
    repository TEXT NOT NULL,
    blob       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,    -- Unix seconds
    PRIMARY KEY (registry, repository, blob)
) STRICT, WITHOUT ROWID;
CREATE INDEX remote_blobs_blob ON remote_blobs(registry, blob);
