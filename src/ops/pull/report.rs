//! What a pull is asked to do and what it reports.

use serde::Serialize;

use crate::model::digest::Digest;
use crate::remote::ClientOptions;

/// The most snapshots one pull walks up a chain.
pub const MAX_CHAIN: usize = 100_000;

/// How to pull.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// The name for the head snapshot (default: the name it was pushed under).
    pub name: Option<String>,
    /// Blob transfers in flight (0: the default).
    pub jobs: usize,
    /// The largest file a chunk map may describe (default 1 TiB).
    pub max_file_bytes: Option<u64>,
    /// Re-hash the copies here of the chain's snapshots, not only check
    /// their manifests and sizes, before calling them present.
    pub repair: bool,
    /// How to reach the registry.
    pub client: ClientOptions,
    /// Which signatures the pulled snapshots must carry.
    pub trust: crate::ops::sign::TrustOptions,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    /// The head snapshot's digest.
    pub head: Digest,
    /// Its name in this registry.
    pub name: String,
    /// Digest of its OCI manifest.
    pub manifest_digest: Digest,
    /// Snapshots newly installed, parents first.
    pub imported: Vec<Digest>,
    /// Snapshots that were already here.
    pub skipped: Vec<Digest>,
    /// What crossed the wire and what did not.
    #[serde(flatten)]
    pub transfer: Transfer,
    /// Image cache files installed.
    pub image_files_installed: usize,
    /// Names the repository carried (titles) that were not used (taken
    /// here, or not valid names): those snapshots landed under their
    /// digest prefix.
    pub name_fallbacks: Vec<crate::archive::names::NameFallback>,
    /// Damaged directories the pull replaced, each moved to `quarantine/`.
    pub repaired: Vec<crate::ops::repair::Repaired>,
    /// Set when the root is a microsandbox home whose index should learn of the new snapshots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub microsandbox_hint: Option<String>,
}

/// The chunks and bytes a pull moved.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Transfer {
    /// Chunks downloaded.
    pub chunks_downloaded: u64,
    /// Bytes received (pack ranges, chunk maps, configs, image files).
    pub bytes_downloaded: u64,
    /// Chunks copied from snapshots already in this registry (or pulled earlier in this chain).
    pub chunks_local: u64,
    /// Their bytes.
    pub bytes_local: u64,
    /// Chunks an interrupted earlier pull had already written.
    pub chunks_resumed: u64,
}
