//! The chunk index (migration V4): chunk lists of snapshot files, and the
//! set-based queries `du` is built on.

use rusqlite::{Connection, OptionalExtension, params};

use crate::chunk::{Chunk, ChunkList};
use crate::digest::Digest;
use crate::error::Result;

/// Record the chunk list of `path` of `snapshot`, whose file row must exist
/// (inside the caller's transaction).
pub fn insert_chunk_list(
    conn: &Connection,
    snapshot: &Digest,
    path: &str,
    list: &ChunkList,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO chunk_lists (snapshot, path, chunk_size) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![snapshot, path, list.chunk_size as i64])?;
    let list_id = conn.last_insert_rowid();
    let mut chunk_id = conn.prepare_cached(
        "INSERT INTO chunks (digest, length) VALUES (?1, ?2)
         ON CONFLICT (digest) DO UPDATE SET length = excluded.length
         RETURNING id",
    )?;
    let mut entry =
        conn.prepare_cached("INSERT INTO file_chunks (list, offset, chunk) VALUES (?1, ?2, ?3)")?;
    for c in &list.chunks {
        let id: i64 = chunk_id.query_row(params![c.digest, c.length as i64], |r| r.get(0))?;
        entry.execute(params![list_id, c.offset as i64, id])?;
    }
    Ok(())
}

/// The recorded chunk list of `path` of `snapshot`, if it has one.
pub fn chunk_list(conn: &Connection, snapshot: &Digest, path: &str) -> Result<Option<ChunkList>> {
    let Some((id, chunk_size)) = conn
        .prepare_cached("SELECT id, chunk_size FROM chunk_lists WHERE snapshot = ?1 AND path = ?2")?
        .query_row(params![snapshot, path], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .optional()?
    else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT f.offset, c.length, c.digest FROM file_chunks f JOIN chunks c ON c.id = f.chunk
         WHERE f.list = ?1 ORDER BY f.offset",
    )?;
    let chunks = stmt
        .query_map([id], |r| {
            Ok(Chunk {
                offset: r.get::<_, i64>(0)? as u64,
                length: r.get::<_, i64>(1)? as u64,
                digest: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(ChunkList { chunk_size, chunks }))
}

/// Snapshot files without a chunk list (recorded before the chunk index
/// existed), as (snapshot, path).
pub fn files_without_chunk_lists(conn: &Connection) -> Result<Vec<(Digest, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.snapshot, f.path FROM snapshot_files f
         WHERE NOT EXISTS (SELECT 1 FROM chunk_lists l WHERE l.snapshot = f.snapshot AND l.path = f.path)
         ORDER BY f.snapshot, f.path",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What one snapshot costs, from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// The snapshot.
    pub digest: Digest,
    /// Its name.
    pub name: String,
    /// Its parent, when that is in the registry.
    pub parent: Option<Digest>,
    /// Apparent size of its files.
    pub logical: u64,
    /// Whether every file of it has a chunk list (else the chunk figures are partial).
    pub indexed: bool,
    /// Bytes in its data chunks (holes excluded).
    pub data: u64,
    /// Bytes of its distinct chunks that no other snapshot holds.
    pub unique: u64,
    /// Bytes of its distinct chunks that its parent does not hold (all of
    /// them when the parent is absent).
    pub new: u64,
}

/// Per-snapshot usage of every snapshot, by name, in a handful of set-based
/// passes over the index (no query per snapshot).
pub fn usage(conn: &Connection) -> Result<Vec<UsageRow>> {
    let mut stmt = conn.prepare(
        "WITH sc AS MATERIALIZED (
             SELECT DISTINCT l.snapshot AS snapshot, f.chunk AS chunk
             FROM chunk_lists l JOIN file_chunks f ON f.list = l.id
         ),
         refs AS MATERIALIZED (
             SELECT chunk, count(*) AS n FROM sc GROUP BY chunk
         ),
         per AS (
             SELECT sc.snapshot AS snapshot,
                    sum(CASE WHEN refs.n = 1 THEN c.length ELSE 0 END) AS unique_bytes,
                    sum(CASE WHEN EXISTS (
                            SELECT 1 FROM chunk_lists pl JOIN file_chunks pf ON pf.list = pl.id
                            WHERE pl.snapshot = s.parent AND pf.chunk = sc.chunk
                        ) THEN 0 ELSE c.length END) AS new_bytes
             FROM sc
             JOIN refs ON refs.chunk = sc.chunk
             JOIN chunks c ON c.id = sc.chunk
             JOIN snapshots s ON s.digest = sc.snapshot
             GROUP BY sc.snapshot
         ),
         data AS (
             SELECT l.snapshot AS snapshot, sum(c.length) AS data_bytes
             FROM chunk_lists l JOIN file_chunks f ON f.list = l.id JOIN chunks c ON c.id = f.chunk
             GROUP BY l.snapshot
         ),
         files AS (
             SELECT f.snapshot AS snapshot, sum(f.size) AS logical, count(*) AS n,
                    count(l.id) AS listed
             FROM snapshot_files f
             LEFT JOIN chunk_lists l ON l.snapshot = f.snapshot AND l.path = f.path
             GROUP BY f.snapshot
         )
         SELECT s.digest, s.name, p.digest, coalesce(files.logical, 0),
                coalesce(files.n = files.listed, 1),
                coalesce(data.data_bytes, 0), coalesce(per.unique_bytes, 0),
                coalesce(per.new_bytes, 0)
         FROM snapshots s
         LEFT JOIN snapshots p ON p.digest = s.parent
         LEFT JOIN files ON files.snapshot = s.digest
         LEFT JOIN data ON data.snapshot = s.digest
         LEFT JOIN per ON per.snapshot = s.digest
         ORDER BY s.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(UsageRow {
            digest: r.get(0)?,
            name: r.get(1)?,
            parent: r.get(2)?,
            logical: r.get::<_, i64>(3)? as u64,
            indexed: r.get(4)?,
            data: r.get::<_, i64>(5)? as u64,
            unique: r.get::<_, i64>(6)? as u64,
            new: r.get::<_, i64>(7)? as u64,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Bytes of the distinct chunks of the whole registry, and how many there are.
pub fn distinct_chunks(conn: &Connection) -> Result<(u64, u64)> {
    Ok(conn
        .prepare_cached("SELECT coalesce(sum(length), 0), count(*) FROM chunks")?
        .query_row([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
}
