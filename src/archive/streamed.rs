//! What an archive held once it is staged: each member's staged path and
//! the size and digests found while writing it, grouped by snapshot.
//! Produced by `ops::import`, verified by [`super::check`].
//!
//! Kept small per snapshot, since an archive may hold tens of thousands:
//! the manifest itself stays in its staged `manifest.json` (up to 1 MiB
//! each) and only the facts the checks need are held here; a carried name
//! is judged as it arrives and held only when it is a valid name.

use std::path::{Path, PathBuf};

use crate::model::digest::Digest;
use crate::model::image::CacheFile;
use crate::model::manifest::{Integrity, ParsedManifest};
use crate::store::layout::SnapshotName;
use crate::store::stage::StagedBytes;
use crate::trust::sshsig::Signature;

/// One archive member written into staging.
#[derive(Debug)]
pub struct StagedMember {
    /// Canonical member path.
    pub member: String,
    /// Where it is staged.
    pub path: PathBuf,
    /// Size and digests found while it was written.
    pub bytes: StagedBytes,
}

/// The name an archive carried for a snapshot, judged on arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarriedName {
    /// A valid chosen name; whether it is free is decided later.
    Valid(SnapshotName),
    /// Not a usable name: what to show of it (cut to 64 characters) and why.
    Refused {
        /// The carried bytes as lossy UTF-8, cut.
        shown: String,
        /// Why it is not a name.
        reason: String,
    },
}

/// What a snapshot's manifest says about its upper, in fewer bytes than
/// [`crate::model::manifest::Upper`].
#[derive(Debug)]
pub struct UpperFacts {
    /// File name inside the snapshot directory.
    pub file: Box<str>,
    /// Apparent (logical) size in bytes.
    pub size_bytes: u64,
    /// Recorded checksum, if any.
    pub integrity: Option<Box<Integrity>>,
}

/// A snapshot directory as it came out of the archive.
#[derive(Debug)]
pub struct StreamedSnapshot {
    /// The snapshot digest.
    pub digest: Digest,
    /// The parent its manifest names.
    pub parent: Option<Digest>,
    /// Its image: the position in [`Streamed::images`] of the metadata file
    /// its image reference maps to and the image manifest digest it pins.
    pub image: u32,
    /// The upper its manifest describes.
    pub upper: UpperFacts,
    /// Whether its upper was staged (and checked against the manifest's
    /// size and integrity as it was); its files, each staged as
    /// `dir/<name>` from member `<prefix>/<name>`, are in the import's spill
    /// database under its position in the archive.
    pub upper_staged: bool,
    /// The name the archive carried for it (boxed: most carry none).
    pub carried_name: Option<Box<CarriedName>>,
    /// Its signatures (member, parsed), each from a distinct key; checked
    /// over the digest before anything is installed.
    pub signatures: Vec<(String, Signature)>,
}

impl StreamedSnapshot {
    /// The facts of `parsed` a staged snapshot keeps.
    pub fn new(parsed: &ParsedManifest, image: u32, carried_name: Option<CarriedName>) -> Self {
        let m = &parsed.manifest;
        StreamedSnapshot {
            digest: parsed.digest,
            parent: m.parent,
            image,
            upper: UpperFacts {
                file: m.upper.file.as_str().into(),
                size_bytes: m.upper.size_bytes,
                integrity: m.upper.integrity.clone().map(Box::new),
            },
            upper_staged: false,
            carried_name: carried_name.map(Box::new),
            signatures: Vec::new(),
        }
    }

    /// Its staged directory, under the import's `staged` snapshots directory.
    pub fn dir(&self, staged: &Path) -> PathBuf {
        staged.join(self.prefix())
    }

    /// `sha256-<16 hex>`, its directory in the archive.
    pub fn prefix(&self) -> String {
        self.digest.archive_prefix()
    }

    /// The archive member of its file `name`.
    pub fn member(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix())
    }
}

/// Everything an archive held, staged.
#[derive(Debug, Default)]
pub struct Streamed {
    /// The directory the snapshot directories are staged in.
    pub staged: PathBuf,
    /// Snapshots in the order of their manifests.
    pub snapshots: Vec<StreamedSnapshot>,
    /// The distinct images the snapshots use (metadata file, image
    /// manifest digest), in order of first use: most archives have one.
    pub images: Vec<(CacheFile, Digest)>,
    /// Cache files in archive order.
    pub cache: Vec<(CacheFile, StagedMember)>,
}
