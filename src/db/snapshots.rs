//! Queries about snapshots, their files, and their lineage.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::manifest::ParsedManifest;

/// A snapshot as the index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotRow {
    /// Identity.
    pub digest: Digest,
    /// Directory name under `snapshots/`.
    pub name: String,
    /// Parent digest, possibly absent from the registry.
    pub parent: Option<Digest>,
    /// Image reference from the manifest.
    pub image_ref: String,
    /// Pinned image manifest digest.
    pub image_manifest_digest: Digest,
    /// `raw` or `qcow2`.
    pub format: String,
    /// File system inside the upper.
    pub fstype: String,
    /// Upper file name.
    pub upper_file: String,
    /// Apparent size of the upper.
    pub size_bytes: u64,
    /// Recorded integrity algorithm.
    pub integrity_algorithm: Option<String>,
    /// Recorded integrity digest.
    pub integrity_digest: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Originating sandbox.
    pub source_sandbox: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Unix seconds when it entered this registry.
    pub added_at: i64,
}

/// One file of a snapshot artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotFileRow {
    /// Path relative to the snapshot directory.
    pub path: String,
    /// Apparent size.
    pub size: u64,
    /// msb-extents-sha256-v1 content digest.
    pub digest: Digest,
}

/// One step of a lineage walk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineageRow {
    /// The snapshot digest.
    pub digest: Digest,
    /// Its name, `None` when the snapshot is absent from the registry.
    pub name: Option<String>,
    /// Distance from the starting snapshot.
    pub depth: u64,
    /// Its parent (for descendant trees).
    pub parent: Option<Digest>,
}

const COLUMNS: &str = "digest, name, parent, image_ref, image_manifest_digest, format, fstype, \
    upper_file, size_bytes, integrity_algorithm, integrity_digest, created_at, source_sandbox, \
    labels, added_at";

fn map_snapshot(r: &Row<'_>) -> rusqlite::Result<SnapshotRow> {
    let labels: String = r.get(13)?;
    Ok(SnapshotRow {
        digest: r.get(0)?,
        name: r.get(1)?,
        parent: r.get(2)?,
        image_ref: r.get(3)?,
        image_manifest_digest: r.get(4)?,
        format: r.get(5)?,
        fstype: r.get(6)?,
        upper_file: r.get(7)?,
        size_bytes: r.get::<_, u64>(8)?,
        integrity_algorithm: r.get(9)?,
        integrity_digest: r.get(10)?,
        created_at: r.get(11)?,
        source_sandbox: r.get(12)?,
        labels: serde_json::from_str(&labels).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(13, rusqlite::types::Type::Text, Box::new(e))
        })?,
        added_at: r.get(14)?,
    })
}

fn map_file(r: &Row<'_>) -> rusqlite::Result<SnapshotFileRow> {
    Ok(SnapshotFileRow {
        path: r.get(0)?,
        size: r.get::<_, u64>(1)?,
        digest: r.get(2)?,
    })
}

impl SnapshotRow {
    /// The row a manifest describes, under `name`.
    pub fn from_manifest(parsed: &ParsedManifest, name: &str, added_at: i64) -> Self {
        let m = &parsed.manifest;
        SnapshotRow {
            digest: parsed.digest,
            name: name.to_string(),
            parent: m.parent,
            image_ref: m.image.reference.clone(),
            image_manifest_digest: m.image.manifest_digest,
            format: m.format.as_str().to_string(),
            fstype: m.fstype.clone(),
            upper_file: m.upper.file.clone(),
            size_bytes: m.upper.size_bytes,
            integrity_algorithm: m.upper.integrity.as_ref().map(|i| i.algorithm.clone()),
            integrity_digest: m.upper.integrity.as_ref().map(|i| i.digest.clone()),
            created_at: m.created_at.clone(),
            source_sandbox: m.source_sandbox.clone(),
            labels: m.labels.clone(),
            added_at,
        }
    }
}

#[cfg(test)]
impl SnapshotRow {
    /// A row for unit tests: `digest` named `name`, a raw ext4 upper of
    /// `size_bytes` without integrity, pinning `python:3.12` at `image`.
    pub(crate) fn fixture(
        digest: Digest,
        name: &str,
        parent: Option<Digest>,
        image: Digest,
        size_bytes: u64,
    ) -> SnapshotRow {
        SnapshotRow {
            digest,
            name: name.into(),
            parent,
            image_ref: "python:3.12".into(),
            image_manifest_digest: image,
            format: "raw".into(),
            fstype: "ext4".into(),
            upper_file: "upper.ext4".into(),
            size_bytes,
            integrity_algorithm: None,
            integrity_digest: None,
            created_at: "2026-10-01T09:00:00Z".into(),
            source_sandbox: None,
            labels: Default::default(),
            added_at: 0,
        }
    }
}

/// Insert a snapshot and its files (inside the caller's transaction).
pub fn insert_snapshot(
    conn: &Connection,
    row: &SnapshotRow,
    files: &[SnapshotFileRow],
) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        row.digest,
        row.name,
        row.parent,
        row.image_ref,
        row.image_manifest_digest,
        row.format,
        row.fstype,
        row.upper_file,
        row.size_bytes as i64,
        row.integrity_algorithm,
        row.integrity_digest,
        row.created_at,
        row.source_sandbox,
        serde_json::to_string(&row.labels).expect("labels serialize"),
        row.added_at,
    ])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO snapshot_files (snapshot, path, size, digest) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for f in files {
        insert.execute(params![row.digest, f.path, f.size as i64, f.digest])?;
    }
    Ok(())
}

/// Delete a snapshot's rows (files cascade).
pub fn delete_snapshot(conn: &Connection, digest: &Digest) -> Result<bool> {
    Ok(conn
        .prepare_cached("DELETE FROM snapshots WHERE digest = ?1")?
        .execute([digest])?
        > 0)
}

/// The snapshot with this digest.
pub fn snapshot_by_digest(conn: &Connection, digest: &Digest) -> Result<Option<SnapshotRow>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM snapshots WHERE digest = ?1"
        ))?
        .query_row([digest], map_snapshot)
        .optional()?)
}

/// The snapshot with this name.
pub fn snapshot_by_name(conn: &Connection, name: &str) -> Result<Option<SnapshotRow>> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM snapshots WHERE name = ?1"))?
        .query_row([name], map_snapshot)
        .optional()?)
}

/// Digests starting with `sha256:<hex_prefix>`, at most `limit` of them.
pub fn digests_with_prefix(conn: &Connection, hex_prefix: &str, limit: u32) -> Result<Vec<Digest>> {
    let lo = format!("sha256:{hex_prefix}");
    let hi = format!("sha256:{hex_prefix}\u{7f}");
    let mut stmt = conn.prepare_cached(
        "SELECT digest FROM snapshots WHERE digest >= ?1 AND digest < ?2 ORDER BY digest LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![lo, hi, limit], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every snapshot, newest first.
pub fn all_snapshots(conn: &Connection) -> Result<Vec<SnapshotRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM snapshots ORDER BY created_at DESC, digest"
    ))?;
    let rows = stmt.query_map([], map_snapshot)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The files of a snapshot, by path.
pub fn snapshot_files(conn: &Connection, digest: &Digest) -> Result<Vec<SnapshotFileRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, size, digest FROM snapshot_files WHERE snapshot = ?1 ORDER BY path",
    )?;
    let rows = stmt.query_map([digest], map_file)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// How many snapshots name `digest` as parent.
pub fn children_count(conn: &Connection, digest: &Digest) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM snapshots WHERE parent = ?1")?
        .query_row([digest], |r| r.get::<_, i64>(0))? as u64)
}

/// The ancestry of `head`, root first and `head` last, in one recursive query.
/// An ancestor absent from the index is the first row, with no name.
///
/// Each step carries the name and parent along, so the walk costs one
/// primary-key lookup per generation and no sort. A chain cannot be longer
/// than the index has rows, so the walk stops there: a damaged index whose
/// parents loop is reported as corruption instead of walked for ever.
pub fn ancestors(conn: &Connection, head: &Digest) -> Result<Vec<LineageRow>> {
    let rows = snapshot_count(conn)?;
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE chain(digest, name, parent, depth) AS (
             SELECT digest, name, parent, 0 FROM snapshots WHERE digest = ?1
             UNION ALL
             SELECT chain.parent, s.name, s.parent, chain.depth + 1
             FROM chain LEFT JOIN snapshots s ON s.digest = chain.parent
             WHERE chain.parent IS NOT NULL AND chain.name IS NOT NULL
               AND chain.depth < ?2
         )
         SELECT digest, name, depth, parent FROM chain",
    )?;
    let rows_walked = stmt.query_map(params![head, rows], map_lineage)?;
    let mut chain = rows_walked.collect::<rusqlite::Result<Vec<_>>>()?;
    if chain
        .last()
        .is_some_and(|r| r.name.is_some() && r.depth >= rows as u64)
    {
        return Err(parent_cycle(head));
    }
    chain.reverse();
    Ok(chain)
}

/// `root` and every snapshot descending from it, breadth first. A root
/// whose own ancestry loops would descend from itself for ever: that is
/// reported as corruption before the walk.
pub fn descendants(conn: &Connection, root: &Digest) -> Result<Vec<LineageRow>> {
    ancestors(conn, root)?;
    let rows = snapshot_count(conn)?;
    let mut stmt = conn.prepare_cached(
        "WITH RECURSIVE sub(digest, depth) AS (
             SELECT ?1, 0
             UNION ALL
             SELECT s.digest, sub.depth + 1
             FROM sub JOIN snapshots s ON s.parent = sub.digest
             WHERE sub.depth < ?2
         )
         SELECT sub.digest, s.name, sub.depth, s.parent
         FROM sub JOIN snapshots s ON s.digest = sub.digest
         ORDER BY sub.depth, s.name",
    )?;
    let walked = stmt.query_map(params![root, rows], map_lineage)?;
    let tree = walked.collect::<rusqlite::Result<Vec<LineageRow>>>()?;
    if tree.last().is_some_and(|r| r.depth >= rows as u64) {
        return Err(parent_cycle(root));
    }
    Ok(tree)
}

fn snapshot_count(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM snapshots")?
        .query_row([], |r| r.get(0))?)
}

fn parent_cycle(at: &Digest) -> Error {
    Error::integrity(
        format!("snapshots.parent of {at}"),
        "the parent links loop back on themselves; the index is damaged: run `msb-registry reindex` to rebuild it from the manifests",
    )
}

fn map_lineage(r: &Row<'_>) -> rusqlite::Result<LineageRow> {
    Ok(LineageRow {
        digest: r.get(0)?,
        name: r.get(1)?,
        depth: r.get::<_, u64>(2)?,
        parent: r.get(3)?,
    })
}

/// Record, in the transaction that deletes its rows, that snapshot `digest`'s
/// directory `name` still has to be moved out of `snapshots/`.
pub fn insert_pending_removal(
    conn: &Connection,
    digest: &Digest,
    name: &str,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO pending_removals (digest, name, started_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(rusqlite::params![digest, name, now])?;
    Ok(())
}

/// Removals whose directory move has not been confirmed, oldest first.
pub fn pending_removals(conn: &Connection) -> Result<Vec<(Digest, String)>> {
    let mut stmt = conn
        .prepare_cached("SELECT digest, name FROM pending_removals ORDER BY started_at, digest")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forget a finished removal.
pub fn delete_pending_removal(conn: &Connection, digest: &Digest) -> Result<()> {
    conn.prepare_cached("DELETE FROM pending_removals WHERE digest = ?1")?
        .execute([digest])?;
    Ok(())
}

/// Give snapshot `digest` the name `name`; false when no row has that digest.
pub fn set_name(conn: &Connection, digest: &Digest, name: &str) -> Result<bool> {
    let n = conn
        .prepare_cached("UPDATE snapshots SET name = ?2 WHERE digest = ?1")?
        .execute(rusqlite::params![digest, name])?;
    Ok(n == 1)
}

/// Record, in the transaction that renames its row, that snapshot
/// `digest`'s directory still has to move from `old` to `new`.
pub fn insert_pending_rename(
    conn: &Connection,
    digest: &Digest,
    old: &str,
    new: &str,
    now: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO pending_renames (digest, old_name, new_name, started_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(rusqlite::params![digest, old, new, now])?;
    Ok(())
}

/// Renames whose directory move has not been confirmed, oldest first:
/// `(digest, old name, new name)`.
pub fn pending_renames(conn: &Connection) -> Result<Vec<(Digest, String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT digest, old_name, new_name FROM pending_renames ORDER BY started_at, digest",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forget a finished rename.
pub fn delete_pending_rename(conn: &Connection, digest: &Digest) -> Result<()> {
    conn.prepare_cached("DELETE FROM pending_renames WHERE digest = ?1")?
        .execute([digest])?;
    Ok(())
}

/// The snapshots naming `digest` as parent, `(digest, name)` by name.
pub fn children(conn: &Connection, digest: &Digest) -> Result<Vec<(Digest, String)>> {
    let mut stmt =
        conn.prepare_cached("SELECT digest, name FROM snapshots WHERE parent = ?1 ORDER BY name")?;
    let rows = stmt.query_map([digest], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn row(n: u8, name: &str, parent: Option<Digest>) -> SnapshotRow {
        SnapshotRow::fixture(d(n), name, parent, d(200), 1 << 20)
    }

    /// base ← mid ← top, base ← side, and `orphan` whose parent (9) is absent.
    fn tree() -> Db {
        let mut db = Db::open_in_memory().unwrap();
        let tx = db.write().unwrap();
        for r in [
            row(1, "base", None),
            row(2, "mid", Some(d(1))),
            row(3, "top", Some(d(2))),
            row(4, "side", Some(d(1))),
            row(5, "orphan", Some(d(9))),
        ] {
            insert_snapshot(&tx, &r, &[]).unwrap();
        }
        tx.commit().unwrap();
        db
    }

    fn names(rows: &[LineageRow]) -> Vec<(Option<&str>, u64)> {
        rows.iter().map(|r| (r.name.as_deref(), r.depth)).collect()
    }

    #[test]
    fn ancestors_run_root_to_head_with_depth_from_the_head() {
        let db = tree();
        let chain = ancestors(db.conn(), &d(3)).unwrap();
        assert_eq!(
            names(&chain),
            [(Some("base"), 2), (Some("mid"), 1), (Some("top"), 0)]
        );
        assert_eq!(chain[1].parent, Some(d(1)));
    }

    #[test]
    fn an_absent_ancestor_is_the_first_row_without_a_name() {
        let db = tree();
        let chain = ancestors(db.conn(), &d(5)).unwrap();
        assert_eq!(names(&chain), [(None, 1), (Some("orphan"), 0)]);
        assert_eq!(chain[0].digest, d(9));
    }

    #[test]
    fn descendants_are_breadth_first_and_by_name_within_a_depth() {
        let db = tree();
        let subtree = descendants(db.conn(), &d(1)).unwrap();
        assert_eq!(
            names(&subtree),
            [
                (Some("base"), 0),
                (Some("mid"), 1),
                (Some("side"), 1),
                (Some("top"), 2)
            ]
        );
        assert_eq!(subtree[3].parent, Some(d(2)));
    }

    #[test]
    fn an_unknown_digest_has_no_lineage() {
        let db = tree();
        assert!(ancestors(db.conn(), &d(7)).unwrap().is_empty());
        assert!(descendants(db.conn(), &d(7)).unwrap().is_empty());
    }
}
