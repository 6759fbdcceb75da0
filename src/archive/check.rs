//! Verification of a staged archive, before anything is installed: parent
//! order and the head, each upper against its manifest (presence, size,
//! integrity from the streaming hash), image metadata (self-digests, what
//! the snapshots pin), the exact set of cache files, EROFS alignment.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;

use super::streamed::{Streamed, StreamedSnapshot};
use crate::db::SnapshotFileRow;
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::image::{CacheFile, CacheKind, EROFS_ALIGN, ImageMetadata, MAX_METADATA_BYTES};
use crate::store::files::read_limited;
use crate::store::layout::{Layout, SnapshotName};
use crate::store::stage::check_integrity;
use crate::store::staged::{StagedCacheFile, StagedSet, StagedSnapshot};

use super::entry::MANIFEST_FILE;

/// A staged archive that passed every check, ready for [`crate::ops::install::install`].
#[derive(Debug)]
pub struct CheckedSet {
    /// What to install.
    pub set: StagedSet,
}

/// Check that parents come before children and pick the head: the last
/// snapshot that is not the parent of another one in the archive.
pub fn head(snapshots: &[StreamedSnapshot]) -> Result<usize> {
    if snapshots.is_empty() {
        return Err(Error::rejected_archive(
            "no snapshot manifest found; an archive holds at least one sha256-<16 hex digits>/manifest.json",
        ));
    }
    let position: HashMap<Digest, usize> = snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| (s.parsed.digest, i))
        .collect();
    for (i, s) in snapshots.iter().enumerate() {
        if let Some(parent) = s.parsed.manifest.parent
            && position.get(&parent).is_some_and(|&j| j > i)
        {
            return Err(Error::rejected(
                format!("{}/{MANIFEST_FILE}", s.prefix),
                format!("its parent {parent} comes later in the archive; parents must come first"),
            ));
        }
    }
    let parents: HashSet<Digest> = snapshots
        .iter()
        .filter_map(|s| s.parsed.manifest.parent)
        .collect();
    Ok((0..snapshots.len())
        .rev()
        .find(|&i| !parents.contains(&snapshots[i].parsed.digest))
        .expect("with parents first, the last snapshot is no other's parent"))
}

/// Every parent a snapshot of the archive names is in the archive or in
/// the registry; otherwise the archive's base is missing (exit 3).
pub fn base_present(conn: &rusqlite::Connection, snapshots: &[StreamedSnapshot]) -> Result<()> {
    let inside: HashSet<Digest> = snapshots.iter().map(|s| s.parsed.digest).collect();
    for s in snapshots {
        if let Some(parent) = s.parsed.manifest.parent
            && !inside.contains(&parent)
            && crate::db::snapshots::snapshot_by_digest(conn, &parent)?.is_none()
        {
            return Err(Error::NotFound {
                what: "base",
                reference: format!(
                    "{parent}, the parent of {} (archive directory {}): the archive is not self-contained; import its base first, or pass --allow-shallow to import it shallow",
                    s.parsed.digest, s.prefix
                ),
            });
        }
    }
    Ok(())
}

/// Verify the staged archive and turn it into the set to install, each
/// snapshot under its name in `names`.
pub fn verify(layout: &Layout, streamed: &Streamed, names: &[SnapshotName]) -> Result<CheckedSet> {
    for s in &streamed.snapshots {
        check_upper(s)?;
    }
    let images = check_cache(streamed)?;
    let rel = |p: &Path| -> String {
        p.strip_prefix(layout.root())
            .expect("staging is under the root")
            .to_string_lossy()
            .into_owned()
    };
    let snapshots = streamed
        .snapshots
        .iter()
        .zip(names)
        .map(|(s, name)| StagedSnapshot {
            parsed: s.parsed.clone(),
            name: name.clone(),
            staged_dir: rel(&s.dir),
            files: s
                .files
                .iter()
                .map(|(file, m)| SnapshotFileRow {
                    path: file.clone(),
                    size: m.bytes.size,
                    digest: m.bytes.digest,
                })
                .collect(),
            chunks: s
                .files
                .iter()
                .filter_map(|(file, m)| Some((file.clone(), m.bytes.chunks.clone()?)))
                .collect(),
        })
        .collect();
    let cache_files = streamed
        .cache
        .iter()
        .map(|(file, m)| StagedCacheFile {
            file: *file,
            staged: rel(&m.path),
            size: m.bytes.size,
            digest: m.bytes.digest,
        })
        .collect();
    Ok(CheckedSet {
        set: StagedSet {
            snapshots,
            cache_files,
            images,
            signatures: Vec::new(),
        },
    })
}

/// The upper is present, has the manifest's size, and matches its recorded integrity.
pub fn check_upper(s: &StreamedSnapshot) -> Result<()> {
    let upper = &s.parsed.manifest.upper;
    let member = format!("{}/{}", s.prefix, upper.file);
    let Some(staged) = s.file(&upper.file) else {
        return Err(Error::integrity(
            member,
            "the upper file named by the manifest is missing from the archive",
        ));
    };
    if staged.bytes.size != upper.size_bytes {
        return Err(Error::integrity(
            member,
            format!(
                "size is {} bytes, manifest records {}",
                staged.bytes.size, upper.size_bytes
            ),
        ));
    }
    if let Some(integrity) = &upper.integrity {
        check_integrity(&member, integrity, staged.bytes.integrity)?;
    }
    Ok(())
}

/// Check image metadata and the cache file set; returns each image with
/// the reference of a snapshot that pins it.
pub fn check_cache(streamed: &Streamed) -> Result<Vec<(ImageMetadata, String)>> {
    let mut pins: HashMap<CacheFile, Vec<(&str, Digest)>> = HashMap::new();
    for s in &streamed.snapshots {
        let image = &s.parsed.manifest.image;
        pins.entry(CacheFile::metadata_for_ref(&image.reference))
            .or_default()
            .push((image.reference.as_str(), image.manifest_digest));
    }
    let mut expected = BTreeSet::new();
    let mut images = Vec::new();
    for (file, staged) in streamed
        .cache
        .iter()
        .filter(|(f, _)| f.kind == CacheKind::Manifests)
    {
        let member = &staged.member;
        let Some(users) = pins.get(file) else {
            return Err(Error::integrity(
                member,
                "image metadata for a reference no snapshot in the archive uses",
            ));
        };
        let bytes = read_limited(&staged.path, MAX_METADATA_BYTES)?.ok_or_else(|| {
            Error::rejected(member, "image metadata is larger than the 16 MiB limit")
        })?;
        let meta = ImageMetadata::parse(&bytes).map_err(|source| Error::Metadata {
            path: member.to_string(),
            source,
        })?;
        let Some((reference, _)) = users.iter().find(|(_, pin)| *pin == meta.manifest_digest)
        else {
            let (reference, pin) = users[0];
            return Err(Error::integrity(
                member,
                format!(
                    "metadata describes image {}, but the snapshot using {reference} pins {pin}",
                    meta.manifest_digest
                ),
            ));
        };
        expected.insert(*file);
        expected.extend(meta.artifact_files());
        images.push((meta, reference.to_string()));
    }
    let mut present = BTreeSet::new();
    for (file, staged) in &streamed.cache {
        if !expected.contains(file) {
            return Err(Error::integrity(
                &staged.member,
                "cache file not needed by any image metadata in the archive",
            ));
        }
        let size = staged.bytes.size;
        if file.kind.is_erofs() && (size == 0 || size % EROFS_ALIGN != 0) {
            return Err(Error::integrity(
                &staged.member,
                format!("EROFS image of {size} bytes is not a non-empty multiple of 4096"),
            ));
        }
        present.insert(*file);
    }
    if let Some(missing) = expected.difference(&present).next() {
        return Err(Error::integrity(
            format!("cache/{}", missing.rel_path()),
            "missing from the archive, but its image metadata needs it",
        ));
    }
    Ok(images)
}
