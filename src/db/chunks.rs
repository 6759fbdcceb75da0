//! The chunk index (migration V4): chunk lists of snapshot files, and the
//! set-based queries `du` is built on.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::snapshots::{SnapshotFileRow, SnapshotRow};
use crate::model::chunk::{Chunk, ChunkList};
use crate::model::digest::Digest;
use crate::model::error::Result;

/// Record a snapshot's row, its files' rows and their chunk lists (inside
/// the caller's transaction).
pub fn insert_snapshot_with_chunks(
    conn: &Connection,
    row: &SnapshotRow,
    files: &[SnapshotFileRow],
    chunks: &[(String, ChunkList)],
) -> Result<()> {
    super::snapshots::insert_snapshot(conn, row, files)?;
    for (path, list) in chunks {
        insert_chunk_list(conn, &row.digest, path, list)?;
    }
    Ok(())
}

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
         ON CONFLICT (digest) DO UPDATE SET length = length
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

/// The length of chunk `digest`, if the registry holds it.
pub fn chunk_length(conn: &Connection, digest: &Digest) -> Result<Option<u64>> {
    Ok(conn
        .prepare_cached("SELECT length FROM chunks WHERE digest = ?1")?
        .query_row(params![digest], |r| r.get::<_, i64>(0))
        .optional()?
        .map(|l| l as u64))
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

/// Per-snapshot usage of every snapshot, by name.
///
/// Set-based: five whole-table scans, none per snapshot. The chunk entries
/// are read in the order of the `file_chunks(chunk, list)` index, so every
/// chunk arrives with all the files holding it, and each figure is settled
/// chunk by chunk in one pass (no sort, no per-row lookup).
pub fn usage(conn: &Connection) -> Result<Vec<UsageRow>> {
    let mut rows = usage_rows(conn)?;
    let index: HashMap<Digest, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.digest, i))
        .collect();
    let parent: Vec<Option<usize>> = rows
        .iter()
        .map(|r| r.parent.and_then(|p| index.get(&p).copied()))
        .collect();
    let owner = list_owners(conn, &index)?;
    let mut lengths = conn.prepare("SELECT id, length FROM chunks ORDER BY id")?;
    let mut lengths = lengths.query([])?;
    let mut length_of = |chunk: i64| -> Result<u64> {
        while let Some(r) = lengths.next()? {
            if r.get::<_, i64>(0)? == chunk {
                return Ok(r.get::<_, i64>(1)? as u64);
            }
        }
        Err(rusqlite::Error::QueryReturnedNoRows.into())
    };
    let mut entries = conn.prepare(
        "SELECT chunk, list FROM file_chunks INDEXED BY file_chunks_chunk ORDER BY chunk, list",
    )?;
    let mut entries = entries.query([])?;
    let mut current: Option<i64> = None;
    let mut holders: Vec<usize> = Vec::new();
    while let Some(r) = entries.next()? {
        let chunk: i64 = r.get(0)?;
        let list: i64 = r.get(1)?;
        if current != Some(chunk) {
            if let Some(done) = current {
                settle(length_of(done)?, &mut holders, &parent, &mut rows);
            }
            current = Some(chunk);
        }
        holders.push(owner[list as usize]);
    }
    if let Some(done) = current {
        settle(length_of(done)?, &mut holders, &parent, &mut rows);
    }
    Ok(rows)
}

/// Every snapshot by name with its logical bytes and whether all its files
/// have chunk lists; the chunk figures still zero.
fn usage_rows(conn: &Connection) -> Result<Vec<UsageRow>> {
    Ok(conn
        .prepare(
            "SELECT s.digest, s.name, p.digest, coalesce(sum(f.size), 0),
                    count(f.path) = count(l.id)
             FROM snapshots s
             LEFT JOIN snapshots p ON p.digest = s.parent
             LEFT JOIN snapshot_files f ON f.snapshot = s.digest
             LEFT JOIN chunk_lists l ON l.snapshot = f.snapshot AND l.path = f.path
             GROUP BY s.digest ORDER BY s.name",
        )?
        .query_map([], |r| {
            Ok(UsageRow {
                digest: r.get(0)?,
                name: r.get(1)?,
                parent: r.get(2)?,
                logical: r.get::<_, i64>(3)? as u64,
                indexed: r.get(4)?,
                data: 0,
                unique: 0,
                new: 0,
            })
        })?
        .collect::<rusqlite::Result<_>>()?)
}

/// For each chunk list id, the position in `index` of the snapshot that
/// owns it. List ids are dense (INTEGER PRIMARY KEY), so a vector maps them.
fn list_owners(conn: &Connection, index: &HashMap<Digest, usize>) -> Result<Vec<usize>> {
    let mut owner: Vec<usize> = Vec::new();
    let mut lists = conn.prepare("SELECT id, snapshot FROM chunk_lists")?;
    let mut lists = lists.query([])?;
    while let Some(r) = lists.next()? {
        let id = r.get::<_, i64>(0)? as usize;
        let snapshot: Digest = r.get(1)?;
        if owner.len() <= id {
            owner.resize(id + 1, usize::MAX);
        }
        owner[id] = index[&snapshot];
    }
    Ok(owner)
}

/// Count one chunk of `length` bytes for the snapshots holding it (one
/// entry per file that holds it): data for each, unique for a sole holder,
/// new for each whose parent does not hold it. Empties `holders`.
fn settle(length: u64, holders: &mut Vec<usize>, parent: &[Option<usize>], rows: &mut [UsageRow]) {
    for &s in holders.iter() {
        rows[s].data += length;
    }
    holders.sort_unstable();
    holders.dedup();
    if let [only] = holders[..] {
        rows[only].unique += length;
    }
    for &s in holders.iter() {
        if parent[s].is_none_or(|p| holders.binary_search(&p).is_err()) {
            rows[s].new += length;
        }
    }
    holders.clear();
}

/// Bytes of the distinct chunks of the whole registry, and how many there are.
pub fn distinct_chunks(conn: &Connection) -> Result<(u64, u64)> {
    Ok(conn
        .prepare_cached("SELECT coalesce(sum(length), 0), count(*) FROM chunks")?
        .query_row([], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
        })?)
}
