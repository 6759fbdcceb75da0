//! Installing a verified, staged set of snapshots and cache files: the
//! compatibility check against the index, then journaled promotion and the
//! row inserts. `add` and `import` both end here.

use rusqlite::Connection;
use serde::Serialize;

use crate::chunk::ChunkList;
use crate::db::{self, SnapshotFileRow, SnapshotRow, now_unix};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{CacheFile, ImageMetadata};
use crate::layout::SnapshotName;
use crate::lease::Lease;
use crate::manifest::ParsedManifest;
use crate::promote::{Move, promote};
use crate::registry::Registry;

/// A verified snapshot directory in staging.
#[derive(Debug, Clone)]
pub struct StagedSnapshot {
    /// Its manifest and digest.
    pub parsed: ParsedManifest,
    /// The name it is installed under.
    pub name: SnapshotName,
    /// The staged directory, relative to the root.
    pub staged_dir: String,
    /// Its files (relative to the directory), hashed while staged.
    pub files: Vec<SnapshotFileRow>,
    /// The chunk list of each file, by file name, cut in the same pass.
    pub chunks: Vec<(String, ChunkList)>,
}

/// A verified cache file in staging.
#[derive(Debug, Clone)]
pub struct StagedCacheFile {
    /// Its kind and name.
    pub file: CacheFile,
    /// The staged file, relative to the root.
    pub staged: String,
    /// Apparent size.
    pub size: u64,
    /// msb-extents-sha256-v1 digest.
    pub digest: Digest,
}

/// Everything one add or import installs.
#[derive(Debug, Clone, Default)]
pub struct StagedSet {
    /// Snapshots, parents before children.
    pub snapshots: Vec<StagedSnapshot>,
    /// Cache files.
    pub cache_files: Vec<StagedCacheFile>,
    /// Image metadata documents being installed, with the reference they were found under.
    pub images: Vec<(ImageMetadata, String)>,
}

/// What an install did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallOutcome {
    /// Snapshots newly installed.
    pub imported: Vec<Digest>,
    /// Snapshots already present (by digest), left as they were.
    pub skipped: Vec<Digest>,
    /// Cache files newly installed.
    pub cache_files_installed: usize,
    /// Cache files already present with the same content.
    pub cache_files_skipped: usize,
}

#[derive(Debug, PartialEq, Eq)]
struct Plan {
    new_snapshots: Vec<usize>,
    new_cache_files: Vec<usize>,
}

fn plan(conn: &Connection, set: &StagedSet) -> Result<Plan> {
    let mut plan = Plan {
        new_snapshots: Vec::new(),
        new_cache_files: Vec::new(),
    };
    for (i, s) in set.snapshots.iter().enumerate() {
        if db::snapshots::snapshot_by_digest(conn, &s.parsed.digest)?.is_some() {
            continue;
        }
        if let Some(other) = db::snapshots::snapshot_by_name(conn, s.name.as_str())? {
            return Err(Error::conflict(
                format!("snapshot name {}", s.name),
                format!("already names {}, not {}", other.digest, s.parsed.digest),
            ));
        }
        plan.new_snapshots.push(i);
    }
    for (i, c) in set.cache_files.iter().enumerate() {
        match db::images::cache_file(conn, &c.file)? {
            Some(row) if row.digest == c.digest && row.size == c.size => {}
            Some(row) => {
                return Err(Error::conflict(
                    format!("cache/{}", c.file.rel_path()),
                    format!(
                        "installed file has digest {} ({} bytes); incoming has {} ({} bytes)",
                        row.digest, row.size, c.digest, c.size
                    ),
                ));
            }
            None => plan.new_cache_files.push(i),
        }
    }
    Ok(plan)
}

/// Check `set` against the index and install what is new, all or nothing.
pub fn install(registry: &mut Registry, lease: &Lease, set: &StagedSet) -> Result<InstallOutcome> {
    let lock = registry.lock()?;
    let planned = plan(registry.db().conn(), set)?;
    let layout = registry.layout().clone();
    let rel = |p: std::path::PathBuf| -> String {
        p.strip_prefix(layout.root())
            .expect("layout paths are under the root")
            .to_string_lossy()
            .into_owned()
    };
    let mut moves = Vec::new();
    for &i in &planned.new_snapshots {
        let s = &set.snapshots[i];
        moves.push(Move {
            staged: s.staged_dir.clone(),
            target: rel(layout.snapshot(&s.name)),
        });
    }
    for &i in &planned.new_cache_files {
        let c = &set.cache_files[i];
        moves.push(Move {
            staged: c.staged.clone(),
            target: rel(layout.cache_file(&c.file)),
        });
    }
    let now = now_unix();
    promote(
        registry,
        &lock,
        lease,
        &moves,
        |conn| {
            if plan(conn, set)? != planned {
                return Err(Error::conflict(
                    "registry",
                    "changed while the import was being checked; retry",
                ));
            }
            Ok(())
        },
        |conn| {
            for &i in &planned.new_snapshots {
                let s = &set.snapshots[i];
                let row = SnapshotRow::from_manifest(&s.parsed, s.name.as_str(), now);
                db::snapshots::insert_snapshot(conn, &row, &s.files)?;
                for (path, list) in &s.chunks {
                    db::chunks::insert_chunk_list(conn, &row.digest, path, list)?;
                }
            }
            for &i in &planned.new_cache_files {
                let c = &set.cache_files[i];
                db::images::insert_cache_file(conn, &c.file, c.size, &c.digest, now)?;
            }
            for (meta, reference) in &set.images {
                db::images::insert_image(
                    conn,
                    meta,
                    &CacheFile::metadata_for_ref(reference),
                    Some(reference),
                )?;
            }
            Ok(())
        },
    )?;
    Ok(InstallOutcome {
        imported: planned
            .new_snapshots
            .iter()
            .map(|&i| set.snapshots[i].parsed.digest)
            .collect(),
        skipped: set
            .snapshots
            .iter()
            .enumerate()
            .filter(|(i, _)| !planned.new_snapshots.contains(i))
            .map(|(_, s)| s.parsed.digest)
            .collect(),
        cache_files_installed: planned.new_cache_files.len(),
        cache_files_skipped: set.cache_files.len() - planned.new_cache_files.len(),
    })
}
