//! What the registry knows of remote OCI registries (migration V6): the
//! blob each chunk travels as, the blobs each remote repository holds, and
//! where a chunk can be read locally.

use rusqlite::{Connection, OptionalExtension, params};

use super::now_unix;
use crate::digest::Digest;
use crate::error::Result;

/// A chunk's blob: the zstd of its bytes, by digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkBlob {
    /// SHA-256 of the compressed bytes.
    pub blob: Digest,
    /// Compressed bytes.
    pub size: u64,
}

/// The blob `chunk` was last sent or received as.
pub fn chunk_blob(conn: &Connection, chunk: &Digest) -> Result<Option<ChunkBlob>> {
    Ok(conn
        .prepare_cached("SELECT blob, blob_size FROM chunk_blobs WHERE chunk = ?1")?
        .query_row(params![chunk], |r| {
            Ok(ChunkBlob {
                blob: r.get(0)?,
                size: r.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?)
}

/// Record that `chunk` travels as `blob`.
pub fn record_chunk_blob(conn: &Connection, chunk: &Digest, blob: &ChunkBlob) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO chunk_blobs (chunk, blob, blob_size) VALUES (?1, ?2, ?3)
         ON CONFLICT (chunk) DO UPDATE SET blob = excluded.blob, blob_size = excluded.blob_size",
    )?
    .execute(params![chunk, blob.blob, blob.size as i64])?;
    Ok(())
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

/// Forget what `repository` of `registry` was known to hold: its
/// garbage collection may have deleted blobs we recorded.
pub fn forget_remote(conn: &Connection, registry: &str, repository: &str) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM remote_blobs WHERE registry = ?1 AND repository = ?2")?
        .execute(params![registry, repository])?)
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
        assert_eq!(forget_remote(conn, "r:5000", "a").unwrap(), 1);
        assert!(!remote_has(conn, "r:5000", "a", &blob).unwrap());

        let chunk = Digest::of(b"chunk");
        assert_eq!(chunk_blob(conn, &chunk).unwrap(), None);
        let cb = ChunkBlob { blob, size: 9 };
        record_chunk_blob(conn, &chunk, &cb).unwrap();
        assert_eq!(chunk_blob(conn, &chunk).unwrap(), Some(cb));
    }
}
