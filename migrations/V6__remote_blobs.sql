-- Push and pull (README "Push and pull"): what the registry knows of OCI
-- registries, so a push sends only what the other side lacks. Never a
-- credential: only where things are.

-- Blobs a remote repository is known to hold (packs, chunk maps, configs,
-- image cache files): stored by a push of ours or found there.
CREATE TABLE remote_blobs (
    registry   TEXT NOT NULL,       -- host[:port]
    repository TEXT NOT NULL,
    blob       TEXT NOT NULL,       -- 'sha256:<hex>'
    size       INTEGER NOT NULL,
    seen_at    INTEGER NOT NULL,    -- Unix seconds
    PRIMARY KEY (registry, repository, blob)
) STRICT, WITHOUT ROWID;
CREATE INDEX remote_blobs_blob ON remote_blobs(registry, blob);

-- Where a remote repository holds each chunk: the zstd frame of `length`
-- bytes at `offset` of pack blob `pack`, compressed with chunk `base` as
-- its prefix when `base` is set (a delta against the parent's chunk at the
-- same offset). Learnt from our pushes and from the chunk maps pulls (and
-- pushes of children) read.
CREATE TABLE remote_chunks (
    registry   TEXT NOT NULL,
    repository TEXT NOT NULL,
    chunk      TEXT NOT NULL,       -- 'sha256:<hex>' of the uncompressed chunk
    pack       TEXT NOT NULL,
    offset     INTEGER NOT NULL,
    length     INTEGER NOT NULL,
    base       TEXT,                -- 'sha256:<hex>' of the prefix chunk, or NULL
    PRIMARY KEY (registry, repository, chunk)
) STRICT, WITHOUT ROWID;
CREATE INDEX remote_chunks_chunk ON remote_chunks(registry, chunk);
CREATE INDEX remote_chunks_pack ON remote_chunks(registry, repository, pack);
