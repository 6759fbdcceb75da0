-- msb-registry index, schema 1. Append-only: later changes go in V2__…, V3__….

-- One row per snapshot in the registry. A row exists exactly when
-- snapshots/<name>/ is installed.
CREATE TABLE snapshots (
    digest                TEXT PRIMARY KEY,           -- 'sha256:<hex>' of the canonical manifest
    name                  TEXT NOT NULL UNIQUE,       -- directory under snapshots/
    parent                TEXT,                       -- parent digest; may name an absent snapshot ("shallow")
    image_ref             TEXT NOT NULL,              -- image reference as written in the manifest
    image_manifest_digest TEXT NOT NULL,              -- pinned image manifest digest
    format                TEXT NOT NULL,              -- 'raw' | 'qcow2'
    fstype                TEXT NOT NULL,
    upper_file            TEXT NOT NULL,
    size_bytes            INTEGER NOT NULL,           -- apparent size of the upper file
    integrity_algorithm   TEXT,                       -- NULL when the manifest records none
    integrity_digest      TEXT,
    created_at            TEXT NOT NULL,              -- RFC 3339, from the manifest
    source_sandbox        TEXT,
    labels                TEXT NOT NULL DEFAULT '{}', -- JSON object; query with json_extract / json_each
    added_at              INTEGER NOT NULL            -- unix seconds when it entered this registry
) STRICT;
CREATE INDEX snapshots_parent ON snapshots(parent);
CREATE INDEX snapshots_image ON snapshots(image_manifest_digest);
CREATE INDEX snapshots_created ON snapshots(created_at, digest);

-- Every file of a snapshot artifact, hashed when it entered the registry.
CREATE TABLE snapshot_files (
    snapshot TEXT NOT NULL REFERENCES snapshots(digest) ON DELETE CASCADE,
    path     TEXT NOT NULL,     -- relative to snapshots/<name>/
    size     INTEGER NOT NULL,  -- apparent size in bytes
    digest   TEXT NOT NULL,     -- msb-extents-sha256-v1, 'sha256:<hex>' (README: "Content digests")
    PRIMARY KEY (snapshot, path)
) STRICT, WITHOUT ROWID;

-- Images whose metadata is in the cache.
CREATE TABLE images (
    manifest_digest TEXT PRIMARY KEY,   -- image manifest digest (what snapshots pin)
    ref             TEXT,               -- normalized reference, when known
    config_digest   TEXT NOT NULL,
    metadata_file   TEXT NOT NULL       -- 'manifests/<hex>.json' under cache/
) STRICT;

-- The layers of each image, bottom (position 0) to top.
CREATE TABLE image_layers (
    image       TEXT NOT NULL REFERENCES images(manifest_digest) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    diff_id     TEXT NOT NULL,          -- names cache/layers/sha256_<hex>.erofs
    blob_digest TEXT NOT NULL,
    media_type  TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,       -- compressed blob size
    PRIMARY KEY (image, position)
) STRICT, WITHOUT ROWID;
CREATE INDEX image_layers_diff_id ON image_layers(diff_id);

-- Every file under cache/. A row exists exactly when the file is installed.
CREATE TABLE cache_files (
    path     TEXT PRIMARY KEY,      -- '<kind>/<file>' under cache/
    kind     TEXT NOT NULL CHECK (kind IN ('manifests', 'layers', 'fsmeta', 'vmdk')),
    key      TEXT NOT NULL,         -- digest in the name: ref hash, diff_id or image manifest digest
    size     INTEGER NOT NULL,
    digest   TEXT NOT NULL,         -- msb-extents-sha256-v1
    added_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX cache_files_key ON cache_files(kind, key);

-- The import journal. A row is created (committed) before the first staged
-- byte; the import is live while its lock file staging/<id>.lock is flocked.
CREATE TABLE imports (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('staging', 'promoting', 'done', 'failed')),
    source      TEXT NOT NULL,      -- archive path or '-'
    pid         INTEGER NOT NULL,
    started_at  INTEGER NOT NULL,
    finished_at INTEGER,
    error       TEXT
) STRICT;
CREATE INDEX imports_state ON imports(state);

-- Files staged by an import: the lease gc honours, and the promotion journal.
CREATE TABLE import_files (
    import      TEXT NOT NULL REFERENCES imports(id) ON DELETE CASCADE,
    member      TEXT NOT NULL,      -- archive member path
    staged_path TEXT NOT NULL,      -- relative to the root: staging/<id>/…
    final_path  TEXT NOT NULL,      -- relative to the root: snapshots/… or cache/…
    kind        TEXT NOT NULL,      -- 'snapshot' or a cache kind
    size        INTEGER NOT NULL,
    digest      TEXT NOT NULL,
    promote     INTEGER NOT NULL DEFAULT 1,  -- 0 when the final file already exists with the same content
    PRIMARY KEY (import, member)
) STRICT, WITHOUT ROWID;
CREATE INDEX import_files_final ON import_files(final_path);

-- The promotion journal: the renames an import makes, committed (with state
-- 'promoting') before the first one; after a crash they are undone in reverse.
CREATE TABLE import_moves (
    import      TEXT NOT NULL REFERENCES imports(id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    staged_path TEXT NOT NULL,      -- relative to the root
    final_path  TEXT NOT NULL,      -- relative to the root
    PRIMARY KEY (import, seq)
) STRICT, WITHOUT ROWID;
