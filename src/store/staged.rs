//! What one `add` or `import` installs: verified snapshot directories and
//! cache files in staging, with the rows to write for them. Built by `add`
//! and by the archive check, consumed by `install`.

use crate::db::SnapshotFileRow;
use crate::db::signatures::SignatureRow;
use crate::model::chunk::ChunkList;
use crate::model::digest::Digest;
use crate::model::image::{CacheFile, ImageMetadata};
use crate::model::manifest::ParsedManifest;
use crate::store::layout::SnapshotName;

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
    /// Signatures recorded with the snapshots (new ones or ones already here),
    /// in the same transaction as their rows.
    pub signatures: Vec<SignatureRow>,
}
