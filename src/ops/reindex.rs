//! `reindex`: rebuild the index from the artifacts on disk, after the
//! database was lost or to adopt a microsandbox home.
//!
//! Only complete artifacts are adopted: names that are not ours (lock files,
//! `.part` files, `.work` directories) are passed over, and a cache file
//! whose `.lock` another process holds is skipped with a reason, its row
//! (if any) left as it was.

use std::collections::HashSet;
use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use crate::db::{self, SnapshotFileRow, SnapshotRow, now_unix};
use crate::model::chunk::{CHUNK_SIZE, ChunkList};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::{CacheFile, CacheKind, ImageMetadata};
use crate::model::manifest::is_normal_file_name;
use crate::ops::add::{read_manifest, read_metadata};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::store::foreign::{self, HELD_REASON};
use crate::store::layout::{Layout, SnapshotName};
use crate::store::stage::{check_integrity, digest_file, digest_file_chunked};

/// Something reindex left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The path under the root.
    pub path: String,
    /// Why it was not adopted.
    pub reason: String,
}

/// What `reindex` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReindexReport {
    /// Snapshots given rows.
    pub adopted_snapshots: Vec<Digest>,
    /// Cache files given rows.
    pub adopted_cache_files: Vec<String>,
    /// Images whose metadata was recorded.
    pub adopted_images: Vec<Digest>,
    /// Rows dropped because their files are gone.
    pub dropped: Vec<String>,
    /// Snapshots already indexed whose chunk lists were computed now (they
    /// entered the registry before the chunk index existed).
    pub chunk_lists_backfilled: Vec<Digest>,
    /// What was left alone.
    pub skipped: Vec<Skipped>,
}

impl Registry {
    /// Rebuild rows from `snapshots/*/` and `cache/**`.
    pub fn reindex(&mut self, progress: &dyn Progress) -> Result<ReindexReport> {
        let _lock = self.lock()?;
        let mut report = ReindexReport::default();
        progress.start("reindex", None);
        let now = now_unix();
        let layout = self.layout().clone();
        let snapshots = scan_snapshots(&layout, now, progress, &mut report)?;
        let cache = scan_cache(&layout, progress, &mut report)?;

        let tx = self.db_mut().write()?;
        for found in &snapshots {
            record_snapshot(&tx, found, &snapshots, &mut report)?;
        }
        drop_missing_snapshots(&tx, &snapshots, &mut report)?;
        record_cache_files(&tx, &cache, now, &mut report)?;
        drop_stale_images(&tx, &cache.rows, &mut report)?;
        record_images(&tx, &cache.images, &snapshots, &mut report)?;
        crate::process::failpoint::hit(crate::process::failpoint::REINDEX_BEFORE_COMMIT)?;
        tx.commit()?;
        progress.finish();
        Ok(report)
    }
}

/// A snapshot directory on disk, hashed: its row, its files' rows and their
/// chunk lists.
struct FoundSnapshot {
    row: SnapshotRow,
    files: Vec<SnapshotFileRow>,
    chunks: Vec<(String, ChunkList)>,
}

/// The cache files on disk, hashed, with the image metadata among them and
/// the files another process holds (their rows are left alone).
#[derive(Default)]
struct CacheScan {
    rows: Vec<(CacheFile, u64, Digest)>,
    images: Vec<(ImageMetadata, CacheFile)>,
    held: HashSet<String>,
}

/// Hash every snapshot directory that is ours and complete; the rest goes
/// into `report.skipped` with its reason.
fn scan_snapshots(
    layout: &Layout,
    now: i64,
    progress: &dyn Progress,
    report: &mut ReindexReport,
) -> Result<Vec<FoundSnapshot>> {
    let mut found = Vec::new();
    for (dir_name, dir) in sorted_entries(&layout.snapshots())? {
        if foreign::not_ours(&dir_name).is_some() {
            continue;
        }
        let skip = |reason: String| Skipped {
            path: format!("snapshots/{dir_name}"),
            reason,
        };
        if !dir.is_dir() {
            report.skipped.push(skip("not a directory".into()));
            continue;
        }
        let name: SnapshotName = match dir_name.parse() {
            Ok(n) => n,
            Err(e) => {
                report.skipped.push(skip(e.to_string()));
                continue;
            }
        };
        match adopt_snapshot(&dir, progress) {
            Ok((parsed, files, extras, chunks)) => {
                report
                    .skipped
                    .extend(extras.into_iter().map(|extra| {
                        Skipped {
                            path: format!("snapshots/{dir_name}/{extra}"),
                            reason:
                                "not a regular file; left alone, the snapshot is indexed without it"
                                    .into(),
                        }
                    }));
                found.push(FoundSnapshot {
                    row: SnapshotRow::from_manifest(&parsed, name.as_str(), now),
                    files,
                    chunks,
                })
            }
            Err(e) => report.skipped.push(skip(e.with_causes())),
        }
    }
    Ok(found)
}

/// Hash every cache file that is ours, named as the layout names it, and
/// not held by another process.
fn scan_cache(
    layout: &Layout,
    progress: &dyn Progress,
    report: &mut ReindexReport,
) -> Result<CacheScan> {
    let mut scan = CacheScan::default();
    for kind in CacheKind::ALL {
        for (file_name, path) in sorted_entries(&layout.cache_kind(kind))? {
            if foreign::not_ours(&file_name).is_some() {
                continue;
            }
            let rel = format!("cache/{kind}/{file_name}");
            let Some(file) = CacheFile::parse(kind, &file_name) else {
                report.skipped.push(Skipped {
                    path: rel,
                    reason: "not a cache file name".into(),
                });
                continue;
            };
            if foreign::lock_held(&path)? {
                scan.held.insert(file.rel_path());
                report.skipped.push(Skipped {
                    path: rel,
                    reason: HELD_REASON.into(),
                });
                continue;
            }
            match adopt_cache_file(&path, &file, progress) {
                Ok((size, digest, meta)) => {
                    if let Some(meta) = meta {
                        scan.images.push(meta);
                    }
                    scan.rows.push((file, size, digest));
                }
                Err(e) => report.skipped.push(Skipped {
                    path: rel,
                    reason: e.with_causes(),
                }),
            }
        }
    }
    Ok(scan)
}

/// Give one snapshot found on disk its row: kept when the recorded one
/// matches, repaired when it was damaged, moved when its directory was
/// renamed, skipped when it duplicates another directory.
fn record_snapshot(
    conn: &Connection,
    found: &FoundSnapshot,
    all: &[FoundSnapshot],
    report: &mut ReindexReport,
) -> Result<()> {
    let FoundSnapshot { row, files, chunks } = found;
    if let Some(existing) = db::snapshots::snapshot_by_digest(conn, &row.digest)? {
        if existing.name == row.name {
            return record_indexed_snapshot(conn, found, existing, report);
        }
        let still_there = all
            .iter()
            .any(|f| f.row.name == existing.name && f.row.digest == row.digest);
        if still_there {
            report.skipped.push(Skipped {
                path: format!("snapshots/{}", row.name),
                reason: format!("duplicate of {} ({})", existing.name, row.digest),
            });
            return Ok(());
        }
        // Its directory was renamed: the row follows it.
        db::snapshots::delete_snapshot(conn, &existing.digest)?;
        report.dropped.push(format!(
            "snapshot {} ({}): its directory is now snapshots/{}",
            existing.name, existing.digest, row.name
        ));
    }
    if let Some(other) = db::snapshots::snapshot_by_name(conn, &row.name)? {
        db::snapshots::delete_snapshot(conn, &other.digest)?;
        report.dropped.push(format!(
            "snapshot {} ({}): directory now holds {}",
            other.name, other.digest, row.digest
        ));
    }
    db::chunks::insert_snapshot_with_chunks(conn, row, files, chunks)?;
    report.adopted_snapshots.push(row.digest);
    Ok(())
}

/// A snapshot whose row already names its directory: an intact row keeps
/// its `added_at` and gains any missing chunk lists; a damaged one (a
/// parent, label or image changed by hand) is rewritten from the manifest
/// on disk, which is the truth.
fn record_indexed_snapshot(
    conn: &Connection,
    found: &FoundSnapshot,
    existing: SnapshotRow,
    report: &mut ReindexReport,
) -> Result<()> {
    let FoundSnapshot { row, files, chunks } = found;
    let recorded = SnapshotRow {
        added_at: existing.added_at,
        ..row.clone()
    };
    if existing == recorded && db::snapshots::snapshot_files(conn, &row.digest)? == *files {
        if backfill_chunk_lists(conn, &row.digest, files, chunks)? {
            report.chunk_lists_backfilled.push(row.digest);
        }
        return Ok(());
    }
    db::snapshots::delete_snapshot(conn, &existing.digest)?;
    db::chunks::insert_snapshot_with_chunks(conn, &recorded, files, chunks)?;
    report.adopted_snapshots.push(row.digest);
    Ok(())
}

/// Drop the rows of snapshots whose directories are gone.
fn drop_missing_snapshots(
    conn: &Connection,
    found: &[FoundSnapshot],
    report: &mut ReindexReport,
) -> Result<()> {
    for row in db::snapshots::all_snapshots(conn)? {
        if !found.iter().any(|f| f.row.digest == row.digest) {
            db::snapshots::delete_snapshot(conn, &row.digest)?;
            report
                .dropped
                .push(format!("snapshot {} ({})", row.name, row.digest));
        }
    }
    Ok(())
}

/// Give each cache file on disk a row that matches it, and drop the rows of
/// files that are gone (held files keep theirs).
fn record_cache_files(
    conn: &Connection,
    cache: &CacheScan,
    now: i64,
    report: &mut ReindexReport,
) -> Result<()> {
    for (file, size, digest) in &cache.rows {
        match db::images::cache_file(conn, file)? {
            Some(row) if row.digest == *digest && row.size == *size => {}
            Some(_) => {
                db::images::delete_cache_file(conn, file)?;
                db::images::insert_cache_file(conn, file, *size, digest, now)?;
                report.adopted_cache_files.push(file.rel_path());
            }
            None => {
                db::images::insert_cache_file(conn, file, *size, digest, now)?;
                report.adopted_cache_files.push(file.rel_path());
            }
        }
    }
    for row in db::images::all_cache_files(conn)? {
        if !cache.held.contains(&row.path)
            && !cache.rows.iter().any(|(f, ..)| f.rel_path() == row.path)
        {
            db::images::delete_cache_path(conn, &row.path)?;
            report.dropped.push(format!("cache/{}", row.path));
        }
    }
    Ok(())
}

/// Drop the images whose metadata file is gone.
fn drop_stale_images(
    conn: &Connection,
    cache_rows: &[(CacheFile, u64, Digest)],
    report: &mut ReindexReport,
) -> Result<()> {
    let on_disk: Vec<String> = cache_rows.iter().map(|(f, ..)| f.rel_path()).collect();
    let stale_images: Vec<Digest> = db::gc::images_with_layers(conn)?
        .into_iter()
        .filter(|i| {
            CacheFile::parse_rel(&i.metadata_file).is_none() || !on_disk.contains(&i.metadata_file)
        })
        .map(|i| i.manifest_digest)
        .collect();
    db::gc::delete_rows(conn, &[], &stale_images, &[])?;
    report
        .dropped
        .extend(stale_images.iter().map(|d| format!("image {d}")));
    Ok(())
}

/// Record each image whose metadata file is on disk, rewriting a damaged
/// image row from its metadata file, which is the truth.
fn record_images(
    conn: &Connection,
    images: &[(ImageMetadata, CacheFile)],
    snapshots: &[FoundSnapshot],
    report: &mut ReindexReport,
) -> Result<()> {
    for (meta, file) in images {
        if let Some(row) = db::images::image_by_digest(conn, &meta.manifest_digest)?
            && (row.config_digest != meta.config_digest
                || row.metadata_file != file.rel_path()
                || db::images::image_layers(conn, &meta.manifest_digest)? != meta.layers)
        {
            db::gc::delete_rows(conn, &[], &[meta.manifest_digest], &[])?;
        }
        let reference = snapshots
            .iter()
            .map(|f| &f.row.image_ref)
            .find(|r| CacheFile::metadata_for_ref(r) == *file)
            .map(|r| r.as_str());
        if db::images::insert_image(conn, meta, file, reference)? {
            report.adopted_images.push(meta.manifest_digest);
        }
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    for entry in entries {
        let entry = entry.at("read directory", dir)?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Record the chunk lists of an indexed snapshot's files that have none yet,
/// when the files hashed now are the ones its rows record; whether it did.
fn backfill_chunk_lists(
    conn: &Connection,
    snapshot: &Digest,
    files: &[SnapshotFileRow],
    chunks: &[(String, ChunkList)],
) -> Result<bool> {
    let recorded = db::snapshots::snapshot_files(conn, snapshot)?;
    let mut any = false;
    for (path, list) in chunks {
        let same = recorded.iter().any(|r| {
            r.path == *path
                && files
                    .iter()
                    .any(|f| f.path == *path && f.digest == r.digest)
        });
        if same && db::chunks::chunk_list(conn, snapshot, path)?.is_none() {
            db::chunks::insert_chunk_list(conn, snapshot, path, list)?;
            any = true;
        }
    }
    Ok(any)
}

/// Hash a file's extents digest (and an integrity digest) in one pass.
fn hash_file(
    path: &Path,
    integrity: Option<&crate::model::manifest::Integrity>,
    progress: &dyn Progress,
) -> Result<(u64, Digest, Option<Digest>)> {
    let file = crate::store::files::open_regular(path)?;
    let len = file.metadata().at("stat", path)?.len();
    let (extents, integrity) = digest_file(&file, len, path, integrity, progress)?;
    Ok((len, extents, integrity))
}

/// A snapshot directory's manifest, its files' rows, the names of extra
/// entries that are not regular files (left out, not fatal: a stray
/// directory or link must not cost an intact snapshot its row), and the
/// chunk lists of its files, hashed from the directory in one pass.
type AdoptedSnapshot = (
    crate::model::manifest::ParsedManifest,
    Vec<SnapshotFileRow>,
    Vec<String>,
    Vec<(String, ChunkList)>,
);

fn adopt_snapshot(dir: &Path, progress: &dyn Progress) -> Result<AdoptedSnapshot> {
    let parsed = read_manifest(dir)?;
    let upper = &parsed.manifest.upper;
    let mut files = Vec::new();
    let mut extras = Vec::new();
    let mut chunks = Vec::new();
    let mut saw_upper = false;
    for (file_name, path) in sorted_entries(dir)? {
        let meta = path.symlink_metadata().at("stat", &path)?;
        if !meta.is_file() || !is_normal_file_name(&file_name) {
            if file_name == "manifest.json" || file_name == upper.file {
                return Err(Error::unsupported(file_name, "not a regular file"));
            }
            extras.push(file_name);
            continue;
        }
        let is_upper = file_name == upper.file;
        let integrity = if is_upper {
            upper.integrity.as_ref()
        } else {
            None
        };
        let file = crate::store::files::open_regular(&path)?;
        let size = file.metadata().at("stat", &path)?.len();
        let (digest, found, list) =
            digest_file_chunked(&file, size, &path, integrity, CHUNK_SIZE, progress)?;
        chunks.push((file_name.clone(), list));
        if is_upper {
            saw_upper = true;
            if size != upper.size_bytes {
                return Err(Error::integrity(
                    file_name,
                    format!(
                        "size is {size} bytes, manifest records {}",
                        upper.size_bytes
                    ),
                ));
            }
            if let Some(i) = integrity {
                check_integrity(&file_name, i, found)?;
            }
        }
        files.push(SnapshotFileRow {
            path: file_name,
            size,
            digest,
        });
    }
    if !saw_upper {
        return Err(Error::NotFound {
            what: "upper file",
            reference: upper.file.clone(),
        });
    }
    Ok((parsed, files, extras, chunks))
}

/// Size, digest, and for a metadata file the parsed document and its name.
type AdoptedCacheFile = (u64, Digest, Option<(ImageMetadata, CacheFile)>);

fn adopt_cache_file(
    path: &Path,
    file: &CacheFile,
    progress: &dyn Progress,
) -> Result<AdoptedCacheFile> {
    let meta = path.symlink_metadata().at("stat", path)?;
    if !meta.is_file() {
        return Err(Error::unsupported(
            path.display().to_string(),
            "not a regular file",
        ));
    }
    if let Some(problem) = file.size_problem(meta.len()) {
        return Err(Error::integrity(path.display().to_string(), problem));
    }
    let image = if file.kind == CacheKind::Manifests {
        Some((read_metadata(path)?, *file))
    } else {
        None
    };
    let (size, digest, _) = hash_file(path, None, progress)?;
    Ok((size, digest, image))
}
