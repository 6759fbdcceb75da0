//! What is not ours in a root, by name, and microsandbox's artifact locks.
//!
//! A root may be a microsandbox home (DESIGN §9) where microsandbox writes
//! into the same `cache/` and `snapshots/`: lock files it holds with flock,
//! `.part` files and `.work/` directories of artifacts it is writing,
//! `cache/tmp/`. None of that is ours: gc never removes it, verify never
//! calls it debris, reindex never adopts it. The same rules hold in every
//! root, shared or not, so a registry cannot learn to delete them.

use std::fs::{File, TryLockError};
use std::path::Path;

use crate::model::error::{Error, Result};
use crate::model::image::{CacheFile, CacheKind};
use crate::model::manifest::is_normal_file_name;
use crate::store::files::open_lock;
pub use crate::store::layout::not_ours;
use crate::store::layout::{Layout, SnapshotName};

/// Whether an entry of `cache/<kind>/` is ours to judge: a name of the
/// artifact grammar (DESIGN §1).
pub fn is_cache_artifact_name(kind: CacheKind, name: &str) -> bool {
    not_ours(name).is_none() && CacheFile::parse(kind, name).is_some()
}

/// Whether an entry of `snapshots/` is ours to judge: a snapshot name.
pub fn is_snapshot_dir_name(name: &str) -> bool {
    not_ours(name).is_none() && name.parse::<SnapshotName>().is_ok()
}

/// Whether an entry inside a snapshot directory is ours to judge.
pub fn is_snapshot_file_name(name: &str) -> bool {
    not_ours(name).is_none() && is_normal_file_name(name)
}

/// An artifact's `.lock`, taken (exclusive flock) so microsandbox cannot
/// materialize or use the artifact while we remove it. Released on drop;
/// the lock file itself is never deleted: another process may hold it next.
pub struct ArtifactLock {
    _file: Option<File>,
}

impl ArtifactLock {
    /// Take the lock of the artifact at `path` without waiting. `None` when
    /// another process holds it. An artifact without a lock file has nobody
    /// materializing it: the guard then holds nothing (the lock file is not
    /// created, so nothing of microsandbox's namespace is written). A
    /// `.lock` that is not a regular file (a FIFO, a symbolic link) is
    /// opened without blocking and counts as held: the artifact is kept.
    pub fn try_take(path: &Path) -> Result<Option<ArtifactLock>> {
        let lock = Layout::artifact_lock(path);
        let file = match open_lock(&lock, false) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(Some(ArtifactLock { _file: None })),
            Err(Error::Integrity { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match file.try_lock() {
            Ok(()) => Ok(Some(ArtifactLock { _file: Some(file) })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(Error::io("lock", lock, e)),
        }
    }
}

/// Whether another process holds the lock of the artifact at `path`.
pub fn lock_held(path: &Path) -> Result<bool> {
    Ok(ArtifactLock::try_take(path)?.is_none())
}

/// Why a held lock keeps an artifact, for reports.
pub const HELD_REASON: &str = "its .lock is held (microsandbox is materializing or using it)";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::digest::Digest;

    #[test]
    fn microsandbox_work_files_are_not_ours() {
        let layer = CacheFile {
            kind: CacheKind::Layers,
            key: Digest::of(b"l"),
        }
        .file_name();
        assert!(is_cache_artifact_name(CacheKind::Layers, &layer));
        for name in [
            format!("{layer}.lock"),
            format!("{layer}.part"),
            format!("{layer}.work"),
            "stray.tmp".to_string(),
            "sha256_zz.erofs".to_string(),
        ] {
            assert!(!is_cache_artifact_name(CacheKind::Layers, &name), "{name}");
        }
        assert!(!is_cache_artifact_name(
            CacheKind::Manifests,
            &format!("{}.json.part", Digest::of(b"r").hex())
        ));
        assert!(is_snapshot_dir_name("py-app"));
        for name in ["py-app.lock", "x.part", ".hidden", "w.work"] {
            assert!(!is_snapshot_dir_name(name), "{name}");
        }
        assert!(is_snapshot_file_name("extra"));
        assert!(!is_snapshot_file_name("upper.ext4.part"));
    }

    #[test]
    fn a_held_lock_is_seen_and_a_free_one_taken() {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join("sha256_ab.erofs");
        std::fs::write(&artifact, b"x").unwrap();
        assert!(!lock_held(&artifact).unwrap(), "no lock file: free");
        assert!(
            !Layout::artifact_lock(&artifact).exists(),
            "probing creates no lock file"
        );
        let holder = File::create(Layout::artifact_lock(&artifact)).unwrap();
        holder.lock().unwrap();
        assert!(lock_held(&artifact).unwrap());
        holder.unlock().unwrap();
        let guard = ArtifactLock::try_take(&artifact).unwrap().unwrap();
        let other = File::open(Layout::artifact_lock(&artifact)).unwrap();
        assert!(matches!(other.try_lock(), Err(TryLockError::WouldBlock)));
        drop(guard);
        other.try_lock().unwrap();
    }
}
