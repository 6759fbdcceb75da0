//! The set-based queries behind gc and verify: what snapshots pin, which
//! cache rows nothing live reaches, what the import journal leases, and the
//! bulk row deletions of a gc sweep. Each is one statement, whatever the
//! number of artifacts.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{Connection, params};

use crate::db::{ImportState, SnapshotFileRow};
use crate::model::digest::Digest;
use crate::model::error::Result;

/// An image with its metadata file and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayers {
    /// Its manifest digest.
    pub manifest_digest: Digest,
    /// `manifests/<hex>.json` under `cache/`.
    pub metadata_file: String,
    /// The `diff_id` of each of its layers.
    pub layers: Vec<Digest>,
}

/// A cache row, as gc and verify need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// `<kind>/<file>` under `cache/`.
    pub path: String,
    /// Recorded apparent size.
    pub size: u64,
    /// Recorded msb-extents-sha256-v1 digest.
    pub digest: Digest,
}

/// An import journal row, as gc needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportEntry {
    /// The import id.
    pub id: String,
    /// Its state.
    pub state: ImportState,
    /// Unix seconds when it finished, if it did.
    pub finished_at: Option<i64>,
    /// Whether it is a pull, whose staging a rerun resumes from.
    pub resumable: bool,
}

/// How the journal row of a pull's lease names its source: `pull ` and
/// the remote reference.
pub const PULL_SOURCE_PREFIX: &str = "pull ";

/// The distinct image references snapshots were recorded with.
pub fn pinned_image_refs(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT image_ref FROM snapshots")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every image no snapshot pins, with its layers.
pub fn unpinned_images(conn: &Connection) -> Result<Vec<ImageLayers>> {
    images_where(
        conn,
        "WHERE i.manifest_digest NOT IN (SELECT image_manifest_digest FROM snapshots)",
    )
}

/// Every image with its metadata file and layers.
pub fn images_with_layers(conn: &Connection) -> Result<Vec<ImageLayers>> {
    images_where(conn, "")
}

fn images_where(conn: &Connection, filter: &str) -> Result<Vec<ImageLayers>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT i.manifest_digest, i.metadata_file, l.diff_id
         FROM images i LEFT JOIN image_layers l ON l.image = i.manifest_digest
         {filter}
         ORDER BY i.manifest_digest, l.position"
    ))?;
    let mut out: Vec<ImageLayers> = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let digest: Digest = r.get(0)?;
        let layer: Option<Digest> = r.get(2)?;
        if out.last().map(|i| i.manifest_digest) != Some(digest) {
            out.push(ImageLayers {
                manifest_digest: digest,
                metadata_file: r.get(1)?,
                layers: Vec::new(),
            });
        }
        if let Some(layer) = layer {
            out.last_mut().expect("pushed above").layers.push(layer);
        }
    }
    Ok(out)
}

/// Cache rows no pinned image reaches: layers no pinned image lists, fsmeta
/// and vmdk not keyed by a pinned manifest digest, and metadata files that
/// are neither a pinned image's recorded metadata nor in `live_metadata`
/// (the metadata paths of the references snapshots pin, which SQL cannot
/// hash).
pub fn unreachable_cache_files(
    conn: &Connection,
    live_metadata: &[String],
) -> Result<Vec<CacheEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT path, size, digest FROM cache_files
         WHERE kind = 'layers' AND key NOT IN (
           SELECT diff_id FROM image_layers
           WHERE image IN (SELECT image_manifest_digest FROM snapshots))
         UNION ALL
         SELECT path, size, digest FROM cache_files
         WHERE kind IN ('fsmeta', 'vmdk')
           AND key NOT IN (SELECT image_manifest_digest FROM snapshots)
         UNION ALL
         SELECT path, size, digest FROM cache_files
         WHERE kind = 'manifests'
           AND path NOT IN (SELECT value FROM json_each(?1))
           AND path NOT IN (
             SELECT metadata_file FROM images
             WHERE manifest_digest IN (SELECT image_manifest_digest FROM snapshots))
         ORDER BY path",
    )?;
    let live = serde_json::to_string(live_metadata).expect("paths serialize");
    let rows = stmt.query_map([live], map_cache_entry)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn map_cache_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<CacheEntry> {
    Ok(CacheEntry {
        path: r.get(0)?,
        size: r.get::<_, u64>(1)?,
        digest: r.get(2)?,
    })
}

/// The path of every cache row.
pub fn cache_paths(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT path FROM cache_files")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every cache row with its size and digest, by path.
pub fn cache_entries(conn: &Connection) -> Result<Vec<CacheEntry>> {
    let mut stmt =
        conn.prepare_cached("SELECT path, size, digest FROM cache_files ORDER BY path")?;
    let rows = stmt.query_map([], map_cache_entry)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every snapshot name with the paths of its files.
pub fn snapshot_file_names(conn: &Connection) -> Result<HashMap<String, Vec<String>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.name, f.path FROM snapshots s
         LEFT JOIN snapshot_files f ON f.snapshot = s.digest",
    )?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let files = out.entry(r.get(0)?).or_default();
        if let Some(path) = r.get::<_, Option<String>>(1)? {
            files.push(path);
        }
    }
    Ok(out)
}

/// The digest of the snapshot each name holds.
pub fn snapshot_digests(conn: &Connection) -> Result<HashMap<String, Digest>> {
    let mut stmt = conn.prepare_cached("SELECT name, digest FROM snapshots")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every import journal row.
pub fn import_entries(conn: &Connection) -> Result<Vec<ImportEntry>> {
    let mut stmt =
        conn.prepare_cached("SELECT id, state, finished_at, source FROM imports ORDER BY id")?;
    let mut out = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let state: String = r.get(1)?;
        let state = ImportState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown import state {state:?}").into(),
            )
        })?;
        out.push(ImportEntry {
            id: r.get(0)?,
            state,
            finished_at: r.get(2)?,
            resumable: r.get::<_, String>(3)?.starts_with(PULL_SOURCE_PREFIX),
        });
    }
    Ok(out)
}

/// The root-relative paths (staged and final) named by the journal of every
/// unfinished import, by import id: the files its lease covers.
pub fn unfinished_import_paths(conn: &Connection) -> Result<BTreeMap<String, Vec<String>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT f.import, f.staged_path, f.final_path FROM import_files f
         JOIN imports i ON i.id = f.import WHERE i.state IN ('staging', 'promoting')
         UNION ALL
         SELECT m.import, m.staged_path, m.final_path FROM import_moves m
         JOIN imports i ON i.id = m.import WHERE i.state IN ('staging', 'promoting')",
    )?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let paths = out.entry(r.get(0)?).or_default();
        paths.push(r.get(1)?);
        paths.push(r.get(2)?);
    }
    Ok(out)
}

/// The images each unfinished import's snapshots pin, as `(import, image)`.
pub fn unfinished_import_pins(conn: &Connection) -> Result<Vec<(String, Digest)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.import, p.image FROM import_pins p
         JOIN imports i ON i.id = p.import WHERE i.state IN ('staging', 'promoting')
         ORDER BY p.import, p.image",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Delete, inside the caller's transaction, the cache rows at `paths`, the
/// images (and, by cascade, their layer rows) at `images`, and the import
/// journal rows (with their files and moves) at `imports`.
pub fn delete_rows(
    conn: &Connection,
    paths: &[String],
    images: &[Digest],
    imports: &[String],
) -> Result<()> {
    let json = |v: &[String]| serde_json::to_string(v).expect("strings serialize");
    let images: Vec<String> = images.iter().map(|d| d.to_string()).collect();
    conn.prepare_cached("DELETE FROM cache_files WHERE path IN (SELECT value FROM json_each(?1))")?
        .execute(params![json(paths)])?;
    conn.prepare_cached(
        "DELETE FROM images WHERE manifest_digest IN (SELECT value FROM json_each(?1))",
    )?
    .execute(params![json(&images)])?;
    conn.prepare_cached("DELETE FROM imports WHERE id IN (SELECT value FROM json_each(?1))")?
        .execute(params![json(imports)])?;
    Ok(())
}

/// Every snapshot file, with the digest of its snapshot, in one pass.
pub fn all_snapshot_files(conn: &Connection) -> Result<Vec<(Digest, SnapshotFileRow)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT snapshot, path, size, digest FROM snapshot_files ORDER BY snapshot, path",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            SnapshotFileRow {
                path: r.get(1)?,
                size: r.get::<_, u64>(2)?,
                digest: r.get(3)?,
            },
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
