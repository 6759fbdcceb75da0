//! Queries about images, their layers, and the files under `cache/`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::image::{CacheFile, ImageMetadata, LayerInfo};

/// An image whose metadata is in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRow {
    /// Image manifest digest.
    pub manifest_digest: Digest,
    /// Normalized reference, when known.
    pub reference: Option<String>,
    /// Config digest.
    pub config_digest: Digest,
    /// `manifests/<hex>.json`.
    pub metadata_file: String,
}

/// A file under `cache/` as the index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheFileRow {
    /// `<kind>/<file>`.
    pub path: String,
    /// Apparent size.
    pub size: u64,
    /// msb-extents-sha256-v1 content digest.
    pub digest: Digest,
}

fn map_cache_file(r: &Row<'_>) -> rusqlite::Result<CacheFileRow> {
    Ok(CacheFileRow {
        path: r.get(0)?,
        size: r.get::<_, u64>(1)?,
        digest: r.get(2)?,
    })
}

/// Record an image, its metadata file and its layers (inside the caller's
/// transaction); an image already recorded is left as it is.
pub fn insert_image(
    conn: &Connection,
    meta: &ImageMetadata,
    metadata_file: &CacheFile,
    reference: Option<&str>,
) -> Result<bool> {
    let metadata_file = metadata_file.rel_path();
    let inserted =
        conn.prepare_cached(
            "INSERT OR IGNORE INTO images (manifest_digest, ref, config_digest, metadata_file)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            meta.manifest_digest,
            reference.map(crate::model::image::normalize_ref),
            meta.config_digest,
            metadata_file
        ])? > 0;
    if inserted {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO image_layers (image, position, diff_id, blob_digest, media_type, size_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for (i, l) in meta.layers.iter().enumerate() {
            stmt.execute(params![
                meta.manifest_digest,
                i as i64,
                l.diff_id,
                l.digest,
                l.media_type,
                l.size_bytes as i64
            ])?;
        }
    }
    Ok(inserted)
}

/// The image pinned at `digest`, if its metadata is in the cache.
pub fn image_by_digest(conn: &Connection, digest: &Digest) -> Result<Option<ImageRow>> {
    Ok(conn
        .prepare_cached(
            "SELECT manifest_digest, ref, config_digest, metadata_file FROM images WHERE manifest_digest = ?1",
        )?
        .query_row([digest], |r| {
            Ok(ImageRow {
                manifest_digest: r.get(0)?,
                reference: r.get(1)?,
                config_digest: r.get(2)?,
                metadata_file: r.get(3)?,
            })
        })
        .optional()?)
}

/// The layers of an image, bottom to top.
pub fn image_layers(conn: &Connection, image: &Digest) -> Result<Vec<LayerInfo>> {
    let mut stmt = conn.prepare_cached(
        "SELECT blob_digest, media_type, size_bytes, diff_id FROM image_layers
         WHERE image = ?1 ORDER BY position",
    )?;
    let rows = stmt.query_map([image], |r| {
        Ok(LayerInfo {
            digest: r.get(0)?,
            media_type: r.get(1)?,
            size_bytes: r.get::<_, u64>(2)?,
            diff_id: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every cache file an image needs (metadata, fsmeta, vmdk, layers) with its
/// row when the file is recorded, in archive order.
pub fn image_cache_files(
    conn: &Connection,
    image: &ImageRow,
) -> Result<Vec<(CacheFile, Option<CacheFileRow>)>> {
    let meta_file = CacheFile::parse_rel(&image.metadata_file).ok_or_else(|| {
        Error::integrity(
            format!("images row {}", image.manifest_digest),
            format!(
                "metadata_file {:?} is not a cache file name; the index is damaged: run `msb-registry reindex`",
                image.metadata_file
            ),
        )
    })?;
    let mut files = vec![meta_file];
    let layers = image_layers(conn, &image.manifest_digest)?;
    let artifacts = ImageMetadata::artifact_names(image.manifest_digest, &layers);
    files.extend(artifacts);
    files
        .into_iter()
        .map(|f| Ok((f, cache_file(conn, &f)?)))
        .collect()
}

/// The row of one cache file.
pub fn cache_file(conn: &Connection, file: &CacheFile) -> Result<Option<CacheFileRow>> {
    Ok(conn
        .prepare_cached("SELECT path, size, digest FROM cache_files WHERE path = ?1")?
        .query_row([file.rel_path()], map_cache_file)
        .optional()?)
}

/// Record a cache file (inside the caller's transaction).
pub fn insert_cache_file(
    conn: &Connection,
    file: &CacheFile,
    size: u64,
    digest: &Digest,
    added_at: i64,
) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO cache_files (path, kind, key, size, digest, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        file.rel_path(),
        file.kind.as_str(),
        file.key,
        size as i64,
        digest,
        added_at
    ])?;
    Ok(())
}

/// Every cache file row.
pub fn all_cache_files(conn: &Connection) -> Result<Vec<CacheFileRow>> {
    let mut stmt =
        conn.prepare_cached("SELECT path, size, digest FROM cache_files ORDER BY path")?;
    let rows = stmt.query_map([], map_cache_file)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forget a cache file's row.
pub fn delete_cache_file(conn: &Connection, file: &CacheFile) -> Result<()> {
    delete_cache_path(conn, &file.rel_path())
}

/// Forget the cache row at `path` (`<kind>/<file>`), valid name or not.
pub fn delete_cache_path(conn: &Connection, path: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM cache_files WHERE path = ?1")?
        .execute([path])?;
    Ok(())
}
