//! What the `manifest.json` of each directory under `snapshots/` is, and
//! which cache artifacts the snapshots the index does not hold pin.
//!
//! gc deletes a snapshot directory only when it is provably not a
//! snapshot: no regular file `manifest.json`, or one that is not JSON at
//! all. JSON it cannot validate (a newer schema, an integrity algorithm it
//! does not know, a label with a tab) may be microsandbox's, so it is kept;
//! whatever image such a manifest (or a valid one without its row) names
//! is kept with all its files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::plan::ManifestState;
use crate::model::digest::Digest;
use crate::model::image::{CacheFile, CacheKind, ImageMetadata, MAX_METADATA_BYTES};
use crate::model::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::store::files::read_limited;
use crate::store::layout::Layout;

/// The image a manifest on disk pins: its reference and manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `image.ref`.
    pub reference: String,
    /// `image.manifest_digest`.
    pub digest: Digest,
}

/// Judge `dir/manifest.json`; with it, the image it pins when that can be
/// read (from a valid manifest, or loosely from JSON that is not one).
/// `Err` holds why a manifest that may be a snapshot's pins no readable image.
pub fn judge(dir: &Path) -> (ManifestState, Result<Option<Pin>, String>) {
    let path = dir.join("manifest.json");
    match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return (ManifestState::Absent, Ok(None));
        }
        Ok(m) if !m.is_file() && !m.is_symlink() => return (ManifestState::Absent, Ok(None)),
        Ok(m) if m.is_symlink() => {
            let why = "manifest.json is a symlink".to_string();
            return (ManifestState::Unvalidated(why.clone()), Err(why));
        }
        _ => {}
    }
    let bytes = match read_limited(&path, MAX_MANIFEST_BYTES) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            let why = format!("manifest.json is larger than {MAX_MANIFEST_BYTES} bytes");
            return (ManifestState::Unvalidated(why.clone()), Err(why));
        }
        Err(e) => {
            let why = format!("manifest.json cannot be read: {e}");
            return (ManifestState::Unvalidated(why.clone()), Err(why));
        }
    };
    match Manifest::parse(&bytes) {
        Ok(parsed) => {
            let pin = Pin {
                reference: parsed.manifest.image.reference,
                digest: parsed.manifest.image.manifest_digest,
            };
            (ManifestState::Valid(parsed.digest), Ok(Some(pin)))
        }
        Err(e) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(_) => (ManifestState::NotJson, Ok(None)),
            Ok(value) => (
                ManifestState::Unvalidated(crate::model::text::escape(&e.to_string()).into()),
                loose_pin(&value),
            ),
        },
    }
}

/// What a directory under `snapshots/` without a row is, and the command
/// that clears it, for the conflict a `rename` (or an import's rename of
/// its head) reports when that directory is in the way of a name. A damaged
/// one is repaired by bringing a good copy under that name (`import`, `add`
/// or `pull`), which moves it to `quarantine/`.
pub fn in_the_way(dir: &Path) -> String {
    match judge(dir).0 {
        ManifestState::Valid(d) => format!(
            "snapshots/ holds snapshot {d} under that name without a row: `msb-registry reindex` indexes it (then `msb-registry rm` removes it); if reindex leaves it without a row it is damaged: import, add or pull a good copy of it under that name, which moves the damaged one to quarantine/"
        ),
        ManifestState::Unvalidated(why) => format!(
            "snapshots/ holds a directory of that name whose manifest.json cannot be validated ({why}); gc never deletes it: move it away yourself"
        ),
        ManifestState::Absent | ManifestState::NotJson => "snapshots/ holds a directory of that name that is not a snapshot (debris), or a snapshot whose manifest is lost: import, add or pull a good copy of that snapshot under that name, which moves the directory to quarantine/ (gc would delete it after the grace period)".to_string(),
    }
}

/// `image.ref` and `image.manifest_digest` of JSON that is not a valid manifest.
fn loose_pin(value: &serde_json::Value) -> Result<Option<Pin>, String> {
    let image = &value["image"];
    let reference = image["ref"].as_str();
    let digest = image["manifest_digest"]
        .as_str()
        .and_then(|d| d.parse::<Digest>().ok());
    match (reference, digest) {
        (Some(reference), Some(digest)) => Ok(Some(Pin {
            reference: reference.to_string(),
            digest,
        })),
        _ => Err("its manifest.json names no image gc can read".to_string()),
    }
}

/// The directories of `snapshots/` (`names`), judged; with the images those
/// not matching their row (`recorded`: name → digest) pin, and why some pin
/// cannot be read, if one cannot.
pub struct Judged {
    /// Each directory's manifest.
    pub manifests: BTreeMap<String, ManifestState>,
    /// Images pinned by manifests that are not their directory's row.
    pub pins: Vec<Pin>,
    /// Why one of those manifests pins no readable image.
    pub unknown: Option<String>,
}

/// Judge every directory in `names` under `layout.snapshots()`.
pub fn judge_all<'a>(
    layout: &Layout,
    names: impl Iterator<Item = &'a str>,
    recorded: &HashMap<String, Digest>,
) -> Judged {
    let mut judged = Judged {
        manifests: BTreeMap::new(),
        pins: Vec::new(),
        unknown: None,
    };
    for name in names {
        let (state, pin) = judge(&layout.snapshots().join(name));
        let matches =
            matches!((&state, recorded.get(name)), (ManifestState::Valid(d), Some(r)) if d == r);
        if !matches && !state.not_a_snapshot() {
            match pin {
                Ok(pin) => judged.pins.extend(pin),
                Err(why) => {
                    judged
                        .unknown
                        .get_or_insert(format!("snapshots/{name}: {why}"));
                }
            }
        }
        judged.manifests.insert(name.to_string(), state);
    }
    judged
}

/// `<kind>/<file>` of every cache artifact `pins` name: each image's
/// metadata, fsmeta, vmdk and layers. Layers come from the metadata file
/// on disk, else from the index (`known`: image digest → layer diff_ids);
/// `Err` says which image's layers neither can list.
pub fn pinned_files(
    layout: &Layout,
    pins: &[Pin],
    known: &HashMap<Digest, Vec<Digest>>,
) -> (HashSet<String>, Option<String>) {
    let mut files = HashSet::new();
    let mut unknown = None;
    for pin in pins {
        let metadata = CacheFile::metadata_for_ref(&pin.reference);
        files.insert(metadata.rel_path());
        let layers = read_limited(&layout.cache_file(&metadata), MAX_METADATA_BYTES)
            .ok()
            .flatten()
            .and_then(|bytes| ImageMetadata::parse(&bytes).ok())
            .filter(|m| m.manifest_digest == pin.digest)
            .map(|m| m.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>())
            .or_else(|| known.get(&pin.digest).cloned());
        if layers.is_none() {
            unknown.get_or_insert(format!(
                "the layers of image {} ({}) are unknown: its metadata is absent or unreadable",
                pin.digest, pin.reference
            ));
        }
        let artifacts = ImageMetadata::artifact_names(pin.digest, &[]);
        files.extend(artifacts.iter().map(CacheFile::rel_path));
        for key in layers.unwrap_or_default() {
            let kind = CacheKind::Layers;
            files.insert(CacheFile { kind, key }.rel_path());
        }
    }
    (files, unknown)
}
