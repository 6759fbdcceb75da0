//! What an archive held once it is staged: each member's staged path and
//! the size and digests found while writing it, grouped by snapshot.
//! Produced by [`super::import`], verified by [`super::check`].

use std::path::PathBuf;

use crate::model::image::CacheFile;
use crate::model::manifest::ParsedManifest;
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

/// A snapshot directory as it came out of the archive.
#[derive(Debug)]
pub struct StreamedSnapshot {
    /// `sha256-<16 hex>`.
    pub prefix: String,
    /// The parsed manifest.
    pub parsed: ParsedManifest,
    /// The staged directory.
    pub dir: PathBuf,
    /// Its files by name, in archive order (the manifest first).
    pub files: Vec<(String, StagedMember)>,
    /// The name the archive carried for it, unchecked.
    pub carried_name: Option<Vec<u8>>,
    /// Its signatures (member, parsed), each from a distinct key; checked
    /// over the digest before anything is installed.
    pub signatures: Vec<(String, Signature)>,
}

impl StreamedSnapshot {
    /// The staged file named `name`.
    pub fn file(&self, name: &str) -> Option<&StagedMember> {
        self.files.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }
}

/// Everything an archive held, staged.
#[derive(Debug, Default)]
pub struct Streamed {
    /// Snapshots in the order of their manifests.
    pub snapshots: Vec<StreamedSnapshot>,
    /// Cache files in archive order.
    pub cache: Vec<(CacheFile, StagedMember)>,
}
