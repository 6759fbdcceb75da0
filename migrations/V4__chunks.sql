-- The chunk index (DESIGN §8, README "Chunk index"): every snapshot file cut
-- at fixed, aligned offsets into chunks of one size, each named by the
-- SHA-256 of its bytes. Chunks that are all zeros are holes and have no row.
-- Filled in the hashing pass of add, import and reindex; `reindex` also
-- backfills snapshots that entered the registry before this schema.

-- Every distinct chunk the registry holds, once. A row exists exactly while
-- some file lists the chunk (trigger below).
CREATE TABLE chunks (
    id     INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,    -- 'sha256:<hex>' of the chunk's uncompressed bytes
    length INTEGER NOT NULL         -- bytes; the chunk size except for a file's last chunk
) STRICT;

-- One chunk list per snapshot file, with the size it was cut at.
CREATE TABLE chunk_lists (
    id         INTEGER PRIMARY KEY,
    snapshot   TEXT NOT NULL,
    path       TEXT NOT NULL,       -- relative to snapshots/<name>/
    chunk_size INTEGER NOT NULL,
    UNIQUE (snapshot, path),
    FOREIGN KEY (snapshot, path) REFERENCES snapshot_files(snapshot, path) ON DELETE CASCADE
) STRICT;

-- The data chunks of each list: chunk `chunk` is the `length` bytes at
-- `offset` of file `path` of snapshot `snapshot`. Offsets not listed are holes.
CREATE TABLE file_chunks (
    list   INTEGER NOT NULL REFERENCES chunk_lists(id) ON DELETE CASCADE,
    offset INTEGER NOT NULL,        -- a multiple of the list's chunk_size
    chunk  INTEGER NOT NULL REFERENCES chunks(id),
    PRIMARY KEY (list, offset)
) STRICT, WITHOUT ROWID;
CREATE INDEX file_chunks_chunk ON file_chunks(chunk, list);

CREATE TRIGGER chunks_unreferenced AFTER DELETE ON file_chunks
WHEN NOT EXISTS (SELECT 1 FROM file_chunks WHERE chunk = OLD.chunk)
BEGIN
    DELETE FROM chunks WHERE id = OLD.chunk;
END;
