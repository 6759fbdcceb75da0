//! An import's spill database: what the archive held, written as each
//! member arrives, so an import's memory does not grow with the archive.
//! A plain SQLite file of its own in the import's staging directory, with
//! no journal and no sync (it is thrown away with the staging directory, and
//! a crash leaves nothing of it worth keeping), and a small page cache: the
//! member paths seen (duplicates and the count), and every staged snapshot
//! file with its digests and chunk list until install writes its rows.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::SnapshotFileRow;
use crate::model::chunk::{Chunk, ChunkList};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};

/// Pages of the spill database's cache, in KiB (SQLite's negative form).
const CACHE_KIB: i64 = -1024;

const SCHEMA: &str = "
CREATE TABLE members (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE files (
    snapshot INTEGER NOT NULL,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    digest BLOB NOT NULL,
    chunk_size INTEGER,
    chunks BLOB,
    PRIMARY KEY (snapshot, name)
) WITHOUT ROWID;
";

/// The spill database of one import.
pub struct StagingIndex {
    conn: Connection,
}

impl std::fmt::Debug for StagingIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagingIndex").finish_non_exhaustive()
    }
}

/// A snapshot's files and the chunk list of each that has one, by file name.
pub type FilesAndChunks = (Vec<SnapshotFileRow>, Vec<(String, ChunkList)>);

/// One staged snapshot file as [`StagingIndex::each_file`] yields it.
#[derive(Debug)]
pub struct SpilledFile {
    /// The snapshot's position in the archive (its manifest's order).
    pub snapshot: u32,
    /// The file, with its size and content digest.
    pub row: SnapshotFileRow,
}

impl StagingIndex {
    /// Create the spill database at `path` (which must not exist), inside one
    /// transaction that lasts as long as it does.
    pub fn create(path: &Path) -> Result<Self> {
        if path.symlink_metadata().is_ok() {
            return Err(Error::conflict(
                path.display().to_string(),
                "an import's spill database is already there",
            ));
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "OFF")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "cache_size", CACHE_KIB)?;
        conn.pragma_update(None, "temp_store", "FILE")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch("BEGIN")?;
        Ok(StagingIndex { conn })
    }

    /// Record a member path; false when it was already recorded.
    pub fn insert_member(&self, path: &str) -> Result<bool> {
        let added = self
            .conn
            .prepare_cached("INSERT OR IGNORE INTO members (path) VALUES (?1)")?
            .execute(params![path])?;
        Ok(added == 1)
    }

    /// Record file `name` of snapshot `snapshot` (its position in the
    /// archive); false when that snapshot already has a file of that name.
    pub fn insert_file(
        &self,
        snapshot: u32,
        row: &SnapshotFileRow,
        chunks: Option<&ChunkList>,
    ) -> Result<bool> {
        let added = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO files (snapshot, name, size, digest, chunk_size, chunks)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                snapshot,
                row.path,
                row.size as i64,
                row.digest.as_bytes().as_slice(),
                chunks.map(|c| c.chunk_size as i64),
                chunks.map(encode_chunks),
            ])?;
        Ok(added == 1)
    }

    /// The file `name` of snapshot `snapshot`, if staged.
    pub fn file(&self, snapshot: u32, name: &str) -> Result<Option<SnapshotFileRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT name, size, digest FROM files WHERE snapshot = ?1 AND name = ?2",
            )?
            .query_row(params![snapshot, name], file_row)
            .optional()?)
    }

    /// The files of snapshot `snapshot` by name, and the chunk list of each
    /// that has one.
    pub fn files(&self, snapshot: u32) -> Result<FilesAndChunks> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, size, digest, chunk_size, chunks FROM files WHERE snapshot = ?1 ORDER BY name",
        )?;
        let mut rows = stmt.query(params![snapshot])?;
        let (mut files, mut chunks) = (Vec::new(), Vec::new());
        while let Some(r) = rows.next()? {
            let row = file_row(r)?;
            let size: Option<i64> = r.get(3)?;
            let blob: Option<Vec<u8>> = r.get(4)?;
            if let (Some(size), Some(blob)) = (size, blob) {
                chunks.push((row.path.clone(), decode_chunks(size as u64, &blob)?));
            }
            files.push(row);
        }
        Ok((files, chunks))
    }

    /// Call `each` on every staged file, by snapshot then name, one at a time.
    pub fn each_file(&self, mut each: impl FnMut(SpilledFile) -> Result<()>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, size, digest, snapshot FROM files ORDER BY snapshot, name")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            each(SpilledFile {
                row: file_row(r)?,
                snapshot: r.get(3)?,
            })?;
        }
        Ok(())
    }
}

fn file_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotFileRow> {
    let size: i64 = r.get(1)?;
    let digest: [u8; 32] = r.get(2)?;
    Ok(SnapshotFileRow {
        path: r.get(0)?,
        size: size as u64,
        digest: Digest::from_bytes(digest),
    })
}

/// Bytes of one chunk in the spill: offset, length, digest.
const CHUNK_RECORD: usize = 8 + 8 + 32;

fn encode_chunks(list: &ChunkList) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.chunks.len() * CHUNK_RECORD);
    for c in &list.chunks {
        out.extend_from_slice(&c.offset.to_le_bytes());
        out.extend_from_slice(&c.length.to_le_bytes());
        out.extend_from_slice(c.digest.as_bytes());
    }
    out
}

fn decode_chunks(chunk_size: u64, blob: &[u8]) -> Result<ChunkList> {
    if !blob.len().is_multiple_of(CHUNK_RECORD) {
        return Err(Error::integrity(
            "import spill database",
            "a chunk list is cut short",
        ));
    }
    let chunks = blob
        .chunks_exact(CHUNK_RECORD)
        .map(|r| Chunk {
            offset: u64::from_le_bytes(r[..8].try_into().expect("8 bytes")),
            length: u64::from_le_bytes(r[8..16].try_into().expect("8 bytes")),
            digest: Digest::from_bytes(r[16..].try_into().expect("32 bytes")),
        })
        .collect();
    Ok(ChunkList { chunk_size, chunks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_chunk_lists_come_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let index = StagingIndex::create(&dir.path().join("spill.sqlite")).unwrap();
        assert!(
            index
                .insert_member("sha256-0123456789abcdef/manifest.json")
                .unwrap()
        );
        assert!(
            !index
                .insert_member("sha256-0123456789abcdef/manifest.json")
                .unwrap()
        );
        let row = |path: &str, n: u8| SnapshotFileRow {
            path: path.into(),
            size: 1 << 20,
            digest: Digest::from_bytes([n; 32]),
        };
        let list = ChunkList {
            chunk_size: 128 * 1024,
            chunks: vec![Chunk {
                offset: 256 * 1024,
                length: 1000,
                digest: Digest::from_bytes([9; 32]),
            }],
        };
        assert!(
            index
                .insert_file(3, &row("upper.ext4", 1), Some(&list))
                .unwrap()
        );
        assert!(
            index
                .insert_file(3, &row("manifest.json", 2), None)
                .unwrap()
        );
        assert!(!index.insert_file(3, &row("upper.ext4", 7), None).unwrap());
        let (files, chunks) = index.files(3).unwrap();
        assert_eq!(files, vec![row("manifest.json", 2), row("upper.ext4", 1)]);
        assert_eq!(chunks, vec![("upper.ext4".to_string(), list)]);
        assert_eq!(
            index.file(3, "upper.ext4").unwrap(),
            Some(row("upper.ext4", 1))
        );
        assert_eq!(index.file(4, "upper.ext4").unwrap(), None);
        let mut seen = Vec::new();
        index
            .each_file(|f| {
                seen.push((f.snapshot, f.row.path));
                Ok(())
            })
            .unwrap();
        assert_eq!(seen.len(), 2);
    }
}
