//! What one `add` or `import` installs: verified snapshot directories and
//! cache files in staging, with the rows to write for them. Built by `add`
//! and by the archive check, consumed by `install`.

use std::borrow::Cow;
use std::rc::Rc;

use crate::db::SnapshotFileRow;
use crate::db::signatures::SignatureRow;
use crate::db::staging::StagingIndex;
use crate::model::chunk::ChunkList;
use crate::model::digest::Digest;
use crate::model::error::Result;
use crate::model::image::{CacheFile, ImageMetadata};
use crate::model::manifest::ParsedManifest;
use crate::store::layout::SnapshotName;

/// The manifest of a staged snapshot: held (`add`, `pull`: a few
/// snapshots), or left in the staged `manifest.json` and read back when its
/// row is written (`import`: any number of manifests of up to 1 MiB, so
/// memory does not grow with them).
#[derive(Debug, Clone)]
pub enum StagedManifest {
    /// Parsed and held.
    Held(Box<ParsedManifest>),
    /// In the snapshot directory, as its canonical bytes hashing to this digest.
    OnDisk(Digest),
}

impl StagedManifest {
    /// The snapshot digest.
    pub fn digest(&self) -> Digest {
        match self {
            StagedManifest::Held(p) => p.digest,
            StagedManifest::OnDisk(d) => *d,
        }
    }
}

/// A verified snapshot directory in staging.
#[derive(Debug, Clone)]
pub struct StagedSnapshot {
    /// Its manifest and digest.
    pub manifest: StagedManifest,
    /// The name it is installed under.
    pub name: SnapshotName,
    /// The name to take instead when a directory without a row that the
    /// install never moves (an intact snapshot the index lost) holds
    /// `name`: an archive's prefix for the name it carried. `None` for a
    /// name someone chose, which such a directory refuses.
    pub fallback: Option<SnapshotName>,
    /// The staged directory, relative to the root.
    pub staged_dir: String,
    /// Its files (relative to the directory), hashed while staged; empty
    /// when the set's spill database holds them ([`StagedSet::files_of`]).
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
    /// Where an import left the files and chunk lists of its snapshots
    /// (keyed by their position in `snapshots`), read back one snapshot at
    /// a time; `None` when each snapshot holds its own.
    pub spill: Option<Rc<StagingIndex>>,
}

/// The files of one staged snapshot and their chunk lists.
pub type StagedFiles<'a> = (Cow<'a, [SnapshotFileRow]>, Cow<'a, [(String, ChunkList)]>);

impl StagedSet {
    /// The files of snapshot `i` and their chunk lists, from the spill
    /// database when the set has one.
    pub fn files_of(&self, i: usize) -> Result<StagedFiles<'_>> {
        let s = &self.snapshots[i];
        match &self.spill {
            Some(spill) => {
                let index = u32::try_from(i).expect("an archive's snapshots are counted in u32");
                let (files, chunks) = spill.files(index)?;
                Ok((Cow::Owned(files), Cow::Owned(chunks)))
            }
            None => Ok((Cow::Borrowed(&s.files), Cow::Borrowed(&s.chunks))),
        }
    }
}
