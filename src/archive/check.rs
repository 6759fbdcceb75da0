//! Verification of a staged archive, before anything is installed: parent
//! order and the head, each upper against its manifest (presence, size,
//! integrity from the streaming hash), image metadata (self-digests, what
//! the snapshots pin), the exact set of cache files, EROFS alignment.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use super::names::Named;
use super::streamed::{Streamed, StreamedSnapshot};
use crate::db::staging::StagingIndex;
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::image::{CacheFile, CacheKind, EROFS_ALIGN, ImageMetadata, MAX_METADATA_BYTES};
use crate::model::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::store::files::read_limited;
use crate::store::layout::Layout;
use crate::store::staged::{StagedCacheFile, StagedManifest, StagedSet, StagedSnapshot};

use super::entry::MANIFEST_FILE;

/// A staged archive that passed every check, ready for the install.
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
        .map(|(i, s)| (s.digest, i))
        .collect();
    for (i, s) in snapshots.iter().enumerate() {
        if let Some(parent) = s.parent
            && position.get(&parent).is_some_and(|&j| j > i)
        {
            return Err(Error::rejected(
                format!("{}/{MANIFEST_FILE}", s.prefix()),
                format!("its parent {parent} comes later in the archive; parents must come first"),
            ));
        }
    }
    let parents: HashSet<Digest> = snapshots.iter().filter_map(|s| s.parent).collect();
    Ok((0..snapshots.len())
        .rev()
        .find(|&i| !parents.contains(&snapshots[i].digest))
        .expect("with parents first, the last snapshot is no other's parent"))
}

/// Every parent a snapshot of the archive names is in the archive or in
/// the registry; otherwise the archive's base is missing (exit 3).
pub fn base_present(conn: &rusqlite::Connection, snapshots: &[StreamedSnapshot]) -> Result<()> {
    let inside: HashSet<Digest> = snapshots.iter().map(|s| s.digest).collect();
    for s in snapshots {
        if let Some(parent) = s.parent
            && !inside.contains(&parent)
            && crate::db::snapshots::snapshot_by_digest(conn, &parent)?.is_none()
        {
            return Err(Error::NotFound {
                what: "base",
                reference: format!(
                    "{parent}, the parent of {} (archive directory {}): the archive is not self-contained; import its base first, or pass --allow-shallow to import it shallow",
                    s.digest,
                    s.prefix()
                ),
            });
        }
    }
    Ok(())
}

/// Verify the staged archive and turn it into the set to install, each
/// snapshot under its name in `names`.
pub fn verify(
    layout: &Layout,
    streamed: Streamed,
    names: Vec<Named>,
    spill: Rc<StagingIndex>,
) -> Result<CheckedSet> {
    let images = check_cache(&streamed)?;
    let rel = |p: &Path| -> String {
        p.strip_prefix(layout.root())
            .expect("staging is under the root")
            .to_string_lossy()
            .into_owned()
    };
    let mut snapshots: Vec<StagedSnapshot> = streamed
        .snapshots
        .into_iter()
        .zip(names)
        .map(|(s, named)| StagedSnapshot {
            manifest: StagedManifest::OnDisk(s.digest),
            name: named.name,
            fallback: named.fallback,
            staged_dir: rel(&s.dir(&streamed.staged)),
            files: Vec::new(),
            chunks: Vec::new(),
        })
        .collect();
    // Collected in place, they keep the larger buffer of the streamed records.
    snapshots.shrink_to_fit();
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
            spill: Some(spill),
        },
    })
}

/// Every snapshot's upper is present: its size and integrity were checked
/// against the manifest as it was staged.
pub fn uppers_present(snapshots: &[StreamedSnapshot]) -> Result<()> {
    match snapshots.iter().find(|s| !s.upper_staged) {
        Some(s) => Err(Error::integrity(
            format!("{}/{}", s.prefix(), s.upper.file),
            "the upper file named by the manifest is missing from the archive",
        )),
        None => Ok(()),
    }
}

/// Check image metadata and the cache file set; returns each image with
/// the reference of a snapshot that pins it.
pub fn check_cache(streamed: &Streamed) -> Result<Vec<(ImageMetadata, String)>> {
    // A snapshot pinning each (metadata file, image), and the first pin
    // through each metadata file.
    let mut pins: HashMap<(CacheFile, Digest), usize> = HashMap::new();
    let mut first: HashMap<CacheFile, (Digest, usize)> = HashMap::new();
    for (i, s) in streamed.snapshots.iter().enumerate() {
        let image = streamed.images[s.image as usize];
        pins.entry(image).or_insert(i);
        first.entry(image.0).or_insert((image.1, i));
    }
    let reference = |i: usize| image_reference(&streamed.snapshots[i].dir(&streamed.staged));
    let mut expected = BTreeSet::new();
    let mut images = Vec::new();
    for (file, staged) in streamed
        .cache
        .iter()
        .filter(|(f, _)| f.kind == CacheKind::Manifests)
    {
        let member = &staged.member;
        let Some(&(pin, user)) = first.get(file) else {
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
        let Some(&user) = pins.get(&(*file, meta.manifest_digest)) else {
            return Err(Error::integrity(
                member,
                format!(
                    "metadata describes image {}, but the snapshot using {} pins {pin}",
                    meta.manifest_digest,
                    reference(user)?
                ),
            ));
        };
        expected.insert(*file);
        expected.extend(meta.artifact_files());
        images.push((meta, reference(user)?));
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

/// The image reference of a staged snapshot, read back from its staged
/// manifest (held in memory only while the archive streamed).
fn image_reference(dir: &Path) -> Result<String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = read_limited(&path, MAX_MANIFEST_BYTES)?
        .ok_or_else(|| Error::integrity(path.display().to_string(), "staged manifest grew"))?;
    let parsed = Manifest::parse(&bytes).map_err(|source| Error::Manifest {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parsed.manifest.image.reference)
}
