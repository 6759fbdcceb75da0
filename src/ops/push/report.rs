//! What a push is asked to do and what it reports, and the counts it keeps
//! on the way.

use serde::Serialize;

use crate::model::digest::Digest;
use crate::remote::ClientOptions;

/// zstd level of chunk frames: the level `tar | zstd` uses by default.
pub const CHUNK_ZSTD_LEVEL: i32 = 3;
/// Blob transfers in flight by default.
pub const DEFAULT_JOBS: usize = 8;

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Push the ancestors too (each one the repository lacks).
    pub with_parents: bool,
    /// Push the pinned image's cache artifacts too.
    pub with_image: bool,
    /// Blob transfers in flight (0: the default).
    pub jobs: usize,
    /// How to reach the registry.
    pub client: ClientOptions,
}

/// One snapshot a push stored.
#[derive(Debug, Clone, Serialize)]
pub struct PushedSnapshot {
    /// The snapshot digest (= the config blob's digest).
    pub digest: Digest,
    /// Its local name.
    pub name: String,
    /// Digest of its OCI manifest.
    pub manifest_digest: Digest,
    /// The tags set on it.
    pub tags: Vec<String>,
    /// Signatures stored with it (tag `sha256-<hex>.sig`), set after its tags.
    pub signatures: usize,
}

/// The image cache artifacts a push stored.
#[derive(Debug, Clone, Serialize)]
pub struct PushedImage {
    /// Digest of the image-cache manifest.
    pub manifest_digest: Digest,
    /// Its tag.
    pub tag: String,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// `host/repository`.
    pub repository: String,
    /// The tag set on the head snapshot.
    pub tag: String,
    /// Every snapshot pushed, parents first.
    pub snapshots: Vec<PushedSnapshot>,
    /// Blobs uploaded.
    pub blobs_uploaded: u64,
    /// Bytes of blob bodies uploaded.
    pub bytes_uploaded: u64,
    /// Blobs the repository already held (recorded, or found by HEAD).
    pub blobs_present: u64,
    /// Bytes of those blobs.
    pub bytes_present: u64,
    /// Blobs mounted from another repository of the same registry.
    pub blobs_mounted: u64,
    /// Chunks sent in new packs.
    pub chunks_uploaded: u64,
    /// Chunks the repository already held (recorded, or learnt from the parent's chunk map there).
    pub chunks_present: u64,
    /// Bytes of data in those chunks: what the push did not send.
    pub bytes_not_sent: u64,
    /// The image cache artifacts, with `--with-image`.
    pub image: Option<PushedImage>,
    /// Things the user should know (a parent the repository lacks).
    pub warnings: Vec<String>,
    /// Whether what the repository holds was recorded in the index (not
    /// on a read-only root: the next push asks the registry again).
    pub holdings_recorded: bool,
}

/// The chunks of a pack, at most: 4 MiB of data at the 128 KiB chunk
/// size. Small enough to hold `--jobs` of them in memory, large enough
/// that a registry's per-blob cost does not dominate.
pub const PACK_CHUNKS: usize = 32;

/// What storing one blob came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Present,
    Uploaded,
    Mounted,
}

/// Blobs and chunks a push stored, found or mounted so far.
#[derive(Default)]
pub struct Counts {
    pub uploaded: u64,
    pub bytes_uploaded: u64,
    pub present: u64,
    pub bytes_present: u64,
    pub mounted: u64,
    pub chunks_uploaded: u64,
    pub chunks_present: u64,
    pub bytes_not_sent: u64,
}

impl Counts {
    /// Add these counts to `total`.
    pub fn add_to(self, total: &mut Counts) {
        total.uploaded += self.uploaded;
        total.bytes_uploaded += self.bytes_uploaded;
        total.present += self.present;
        total.bytes_present += self.bytes_present;
        total.mounted += self.mounted;
        total.chunks_uploaded += self.chunks_uploaded;
        total.chunks_present += self.chunks_present;
        total.bytes_not_sent += self.bytes_not_sent;
    }

    /// Count one blob stored as `stored`.
    pub fn add(&mut self, stored: &Stored, size: u64) {
        match stored {
            Stored::Present => {
                self.present += 1;
                self.bytes_present += size;
            }
            Stored::Uploaded => {
                self.uploaded += 1;
                self.bytes_uploaded += size;
            }
            Stored::Mounted => self.mounted += 1,
        }
    }
}
