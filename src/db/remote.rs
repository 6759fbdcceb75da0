//! What the registry knows of remote OCI repositories (migration V6): the
//! blobs each holds, where each holds every chunk (a frame of a pack), and
//! where a chunk can be read locally.

use rusqlite::{Connection, OptionalExtension, params};

use super::now_unix;
use crate::model::digest::Digest;
use crate::model::error::Result;

/// Where a repository holds a chunk: a zstd frame inside a pack blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedChunk {
    /// The pack blob.
    pub pack: Digest,
    /// Offset of the frame in the pack.
    pub offset: u64,
    /// Bytes of the frame.
    pub length: u64,
    /// The chunk the frame was compressed against (its zstd prefix), if any.
    pub base: Option<Digest>,
}

/// A [`PackedChunk`] from the columns `pack, offset, length, base` from `first` on.
fn packed(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<PackedChunk> {
    Ok(PackedChunk {
        pack: r.get(first)?,
        offset: r.get::<_, i64>(first + 1)? as u64,
        length: r.get::<_, i64>(first + 2)? as u64,
        base: r.get(first + 3)?,
    })
}

/// Where `repository` of `registry` holds `chunk`, if known.
pub fn remote_chunk(
    conn: &Connection,
    registry: &str,
    repository: &str,
    chunk: &Digest,
) -> Result<Option<PackedChunk>> {
    Ok(conn
        .prepare_cached(
            "SELECT pack, offset, length, base FROM remote_chunks
             WHERE registry = ?1 AND repository = ?2 AND chunk = ?3",
        )?
        .query_row(params![registry, repository, chunk], |r| packed(r, 0))
        .optional()?)
}

/// Every chunk `repository` of `registry` is known to hold, and where.
pub fn remote_chunks_of(
    conn: &Connection,
    registry: &str,
    repository: &str,
) -> Result<std::collections::HashMap<Digest, PackedChunk>> {
    let mut stmt = conn.prepare_cached(
        "SELECT chunk, pack, offset, length, base FROM remote_chunks
         WHERE registry = ?1 AND repository = ?2",
    )?;
    let rows = stmt.query_map(params![registry, repository], |r| {
        Ok((r.get(0)?, packed(r, 1)?))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Record where `repository` of `registry` holds `chunk`.
pub fn record_remote_chunk(
    conn: &Connection,
    registry: &str,
    repository: &str,
    chunk: &Digest,
    at: &PackedChunk,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO remote_chunks (registry, repository, chunk, pack, offset, length, base)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (registry, repository, chunk) DO UPDATE
         SET pack = excluded.pack, offset = excluded.offset, length = excluded.length,
             base = excluded.base",
    )?
    .execute(params![
        registry,
        repository,
        chunk,
        at.pack,
        at.offset as i64,
        at.length as i64,
        at.base
    ])?;
    Ok(())
}

/// Another repository of `registry` known to hold `chunk`, and where.
pub fn remote_chunk_elsewhere(
    conn: &Connection,
    registry: &str,
    repository: &str,
    chunk: &Digest,
) -> Result<Option<(String, PackedChunk)>> {
    Ok(conn
        .prepare_cached(
            "SELECT repository, pack, offset, length, base FROM remote_chunks
             WHERE registry = ?1 AND repository <> ?2 AND chunk = ?3 LIMIT 1",
        )?
        .query_row(params![registry, repository, chunk], |r| {
            Ok((r.get(0)?, packed(r, 1)?))
        })
        .optional()?)
}

/// Record that `to` of `registry` holds pack `pack` (mounted from `from`)
/// with every chunk `from` is known to hold in it.
pub fn copy_pack_holdings(
    conn: &Connection,
    registry: &str,
    from: &str,
    to: &str,
    pack: &Digest,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO remote_blobs (registry, repository, blob, size, seen_at)
         SELECT registry, ?3, blob, size, ?5 FROM remote_blobs
         WHERE registry = ?1 AND repository = ?2 AND blob = ?4
         ON CONFLICT (registry, repository, blob) DO UPDATE SET seen_at = excluded.seen_at",
    )?
    .execute(params![registry, from, to, pack, now_unix()])?;
    conn.prepare_cached(
        "INSERT INTO remote_chunks (registry, repository, chunk, pack, offset, length, base)
         SELECT registry, ?3, chunk, pack, offset, length, base FROM remote_chunks
         WHERE registry = ?1 AND repository = ?2 AND pack = ?4
         ON CONFLICT (registry, repository, chunk) DO NOTHING",
    )?
    .execute(params![registry, from, to, pack])?;
    Ok(())
}

/// Whether anything is recorded as held by `repository` of `registry`.
pub fn remote_holds_any(conn: &Connection, registry: &str, repository: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM remote_blobs WHERE registry = ?1 AND repository = ?2 LIMIT 1",
        )?
        .query_row(params![registry, repository], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Whether any repository of `registry` but `repository` is recorded as
/// holding chunks (a mount could then bring some of them).
pub fn remote_chunks_elsewhere_any(
    conn: &Connection,
    registry: &str,
    repository: &str,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM remote_chunks WHERE registry = ?1 AND repository <> ?2 LIMIT 1",
        )?
        .query_row(params![registry, repository], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Whether `repository` of `registry` is known to hold `blob`.
pub fn remote_has(
    conn: &Connection,
    registry: &str,
    repository: &str,
    blob: &Digest,
) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM remote_blobs WHERE registry = ?1 AND repository = ?2 AND blob = ?3",
        )?
        .query_row(params![registry, repository, blob], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The size of `blob` as recorded for `repository` of `registry`.
pub fn remote_blob_size(
    conn: &Connection,
    registry: &str,
    repository: &str,
    blob: &Digest,
) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached(
            "SELECT size FROM remote_blobs WHERE registry = ?1 AND repository = ?2 AND blob = ?3",
        )?
        .query_row(params![registry, repository, blob], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|s| s as u64))
}

/// Another repository of `registry` known to hold `blob`, to mount it from.
pub fn remote_holder(
    conn: &Connection,
    registry: &str,
    repository: &str,
    blob: &Digest,
) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached(
            "SELECT repository FROM remote_blobs
             WHERE registry = ?1 AND blob = ?3 AND repository <> ?2
             ORDER BY seen_at DESC LIMIT 1",
        )?
        .query_row(params![registry, repository, blob], |r| r.get(0))
        .optional()?)
}

/// Record that `repository` of `registry` holds `blob`.
pub fn record_remote(
    conn: &Connection,
    registry: &str,
    repository: &str,
    blob: &Digest,
    size: u64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO remote_blobs (registry, repository, blob, size, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (registry, repository, blob) DO UPDATE SET seen_at = excluded.seen_at",
    )?
    .execute(params![registry, repository, blob, size as i64, now_unix()])?;
    Ok(())
}

/// Forget what `repository` of `registry` was known to hold: its garbage
/// collection may have deleted blobs we recorded.
pub fn forget_remote(conn: &Connection, registry: &str, repository: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM remote_blobs WHERE registry = ?1 AND repository = ?2")?
        .execute(params![registry, repository])?;
    conn.prepare_cached("DELETE FROM remote_chunks WHERE registry = ?1 AND repository = ?2")?
        .execute(params![registry, repository])?;
    Ok(())
}

/// Where a chunk can be read locally: a snapshot file and an offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlace {
    /// The snapshot's name (its directory).
    pub name: String,
    /// The file, relative to the snapshot directory.
    pub path: String,
    /// Offset of the chunk in the file.
    pub offset: u64,
}

/// Some installed snapshot file holding `chunk`, if any does.
pub fn chunk_place(conn: &Connection, chunk: &Digest) -> Result<Option<ChunkPlace>> {
    Ok(conn
        .prepare_cached(
            "SELECT s.name, l.path, f.offset
             FROM chunks c
             JOIN file_chunks f ON f.chunk = c.id
             JOIN chunk_lists l ON l.id = f.list
             JOIN snapshots s ON s.digest = l.snapshot
             WHERE c.digest = ?1
             LIMIT 1",
        )?
        .query_row(params![chunk], |r| {
            Ok(ChunkPlace {
                name: r.get(0)?,
                path: r.get(1)?,
                offset: r.get::<_, i64>(2)? as u64,
            })
        })
        .optional()?)
}

/// Whether what remote repositories hold can be recorded in the index:
/// not when it was opened read-only (a read-only root).
pub fn holdings_writable(conn: &Connection) -> Result<bool> {
    let query_only: bool = conn.query_row("PRAGMA query_only", [], |r| r.get(0))?;
    Ok(!query_only && !conn.is_readonly(rusqlite::MAIN_DB)?)
}

/// Keep what remote repositories of `registry` hold in memory for this
/// connection: temporary tables that shadow the index's (SQLite resolves
/// a table name in `temp` first), filled from it. Every query and record
/// of this module then works unchanged, and nothing is written to the
/// index: for a push from a read-only root.
pub fn hold_in_memory(conn: &Connection, registry: &str) -> Result<()> {
    conn.pragma_update(None, "query_only", false)?;
    conn.execute_batch(
        "CREATE TEMP TABLE remote_blobs (
             registry TEXT NOT NULL, repository TEXT NOT NULL, blob TEXT NOT NULL,
             size INTEGER NOT NULL, seen_at INTEGER NOT NULL,
             PRIMARY KEY (registry, repository, blob)
         ) STRICT, WITHOUT ROWID;
         CREATE INDEX temp.remote_blobs_blob ON remote_blobs(registry, blob);
         CREATE TEMP TABLE remote_chunks (
             registry TEXT NOT NULL, repository TEXT NOT NULL, chunk TEXT NOT NULL,
             pack TEXT NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, base TEXT,
             PRIMARY KEY (registry, repository, chunk)
         ) STRICT, WITHOUT ROWID;
         CREATE INDEX temp.remote_chunks_chunk ON remote_chunks(registry, chunk);
         CREATE INDEX temp.remote_chunks_pack ON remote_chunks(registry, repository, pack);",
    )?;
    conn.execute(
        "INSERT INTO temp.remote_blobs SELECT * FROM main.remote_blobs WHERE registry = ?1",
        [registry],
    )?;
    conn.execute(
        "INSERT INTO temp.remote_chunks SELECT * FROM main.remote_chunks WHERE registry = ?1",
        [registry],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn remote_holdings_are_per_repository_and_can_be_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("registry.db")).unwrap();
        let conn = db.conn();
        let blob = Digest::of(b"blob");
        assert!(!remote_has(conn, "r:5000", "a", &blob).unwrap());
        record_remote(conn, "r:5000", "a", &blob, 4).unwrap();
        assert!(remote_has(conn, "r:5000", "a", &blob).unwrap());
        assert!(!remote_has(conn, "r:5000", "b", &blob).unwrap());
        assert_eq!(
            remote_holder(conn, "r:5000", "b", &blob)
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert_eq!(remote_holder(conn, "r:5000", "a", &blob).unwrap(), None);

        let chunk = Digest::of(b"chunk");
        let at = PackedChunk {
            pack: blob,
            offset: 10,
            length: 9,
            base: Some(Digest::of(b"base")),
        };
        assert_eq!(remote_chunk(conn, "r:5000", "a", &chunk).unwrap(), None);
        record_remote_chunk(conn, "r:5000", "a", &chunk, &at).unwrap();
        assert_eq!(remote_chunk(conn, "r:5000", "a", &chunk).unwrap(), Some(at));
        assert_eq!(remote_chunk(conn, "r:5000", "b", &chunk).unwrap(), None);

        let (from, found) = remote_chunk_elsewhere(conn, "r:5000", "b", &chunk)
            .unwrap()
            .unwrap();
        assert_eq!((from.as_str(), found), ("a", at));
        assert_eq!(
            remote_chunk_elsewhere(conn, "r:5000", "a", &chunk).unwrap(),
            None
        );
        copy_pack_holdings(conn, "r:5000", "a", "b", &blob).unwrap();
        assert_eq!(remote_chunk(conn, "r:5000", "b", &chunk).unwrap(), Some(at));
        assert!(remote_has(conn, "r:5000", "b", &blob).unwrap());

        forget_remote(conn, "r:5000", "a").unwrap();
        assert!(!remote_has(conn, "r:5000", "a", &blob).unwrap());
        assert_eq!(remote_chunk(conn, "r:5000", "a", &chunk).unwrap(), None);
    }
}
