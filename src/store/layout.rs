//! The one owner of the registry's on-disk layout (DESIGN §3): every path
//! under a root is built here, from validated names only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::model::digest::Digest;
use crate::model::error::Error;
use crate::model::image::{CacheFile, CacheKind};

/// File name of the index database.
pub const DB_FILE: &str = "registry.db";

/// The paths of one registry root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of `root` (nothing is created).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// Resolve the root from `--root`, `MSB_REGISTRY_ROOT`, or the XDG data dir.
    pub fn default_root() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(dir).join("msb-registry"));
        }
        let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
        Some(PathBuf::from(home).join(".local/share/msb-registry"))
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `registry.db`.
    pub fn db(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }

    /// `registry.db.rebuild`: where `reindex` builds a new index before
    /// renaming it over a missing or damaged one.
    pub fn db_rebuild(&self) -> PathBuf {
        self.root.join(format!("{DB_FILE}.rebuild"))
    }

    /// `registry.db.corrupt-<unix seconds>`: where `reindex` moves what is
    /// left of an unusable index.
    pub fn db_aside(&self, unix_seconds: i64) -> PathBuf {
        self.root.join(format!("{DB_FILE}.corrupt-{unix_seconds}"))
    }

    /// An SQLite database file and its `-wal` and `-shm` companions.
    pub fn with_companions(db: &Path) -> [PathBuf; 3] {
        let with = |suffix: &str| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            PathBuf::from(name)
        };
        [with("-wal"), with("-shm"), db.to_path_buf()]
    }

    /// `registry.db-wal`, the index's write-ahead log.
    pub fn db_wal(&self) -> PathBuf {
        self.root.join(format!("{DB_FILE}-wal"))
    }

    /// The first entry of the root that is neither part of a registry nor
    /// of a microsandbox home (which a registry may share): a directory
    /// holding one is somebody else's, and is never turned into a registry.
    pub fn foreign_entry(&self) -> Option<String> {
        if self.is_shared_home() {
            return None;
        }
        let ours = |name: &str| {
            matches!(
                name,
                "registry.db"
                    | "registry.lock"
                    | "snapshots"
                    | "cache"
                    | "staging"
                    | "trust"
                    | "quarantine"
            ) || name.starts_with("registry.db-")
                || name.starts_with("registry.db.")
        };
        std::fs::read_dir(&self.root)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !ours(name))
            .min()
    }

    /// The first of `snapshots/` and `cache/<kind>/` (relative to the
    /// root) that holds any entry: where a lost index would show.
    pub fn artifact_dir(&self) -> Option<String> {
        let has_entries =
            |dir: &Path| std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if has_entries(&self.snapshots()) {
            return Some("snapshots/".into());
        }
        CacheKind::ALL
            .iter()
            .find(|k| has_entries(&self.cache_kind(**k)))
            .map(|k| format!("cache/{}/", k.as_str()))
    }

    /// Refuse (exit 2) an output path that resolves inside the root: an
    /// archive written there could replace a snapshot's file or the index.
    /// Symlinks are followed, so a link into the root is refused too.
    pub fn refuse_output_inside(&self, output: &Path) -> Result<(), Error> {
        let Ok(root) = self.root.canonicalize() else {
            return Ok(());
        };
        let resolved = match output.canonicalize() {
            Ok(p) => p,
            Err(_) => {
                let parent = match output.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => Path::new("."),
                };
                match (parent.canonicalize(), output.file_name()) {
                    (Ok(dir), Some(name)) => dir.join(name),
                    _ => return Ok(()),
                }
            }
        };
        if resolved.starts_with(&root) {
            return Err(Error::Usage(format!(
                "output {} is inside the registry root {}; write it outside the root",
                output.display(),
                root.display()
            )));
        }
        Ok(())
    }

    /// `registry.lock`: held exclusively by promotions, `rm` and gc's sweep,
    /// so a compatibility check stays true until its rows commit.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("registry.lock")
    }

    /// `snapshots/`.
    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `snapshots/<name>/`.
    pub fn snapshot(&self, name: &SnapshotName) -> PathBuf {
        self.snapshots().join(name.as_str())
    }

    /// `snapshots/<name>/<file>`; `file` is a path relative to the snapshot directory.
    pub fn snapshot_file(&self, name: &SnapshotName, file: &str) -> PathBuf {
        self.snapshot(name).join(file)
    }

    /// `cache/`.
    pub fn cache(&self) -> PathBuf {
        self.root.join("cache")
    }

    /// `cache/<kind>/`.
    pub fn cache_kind(&self, kind: CacheKind) -> PathBuf {
        self.cache().join(kind.as_str())
    }

    /// `cache/<kind>/<file>`.
    pub fn cache_file(&self, file: &CacheFile) -> PathBuf {
        self.cache_kind(file.kind).join(file.file_name())
    }

    /// `trust/`: the registry's default signing policy.
    pub fn trust(&self) -> PathBuf {
        self.root.join("trust")
    }

    /// `trust/allowed_signers`: the trust file every write checks when
    /// [`Layout::require_signed`] exists, in OpenSSH's allowed_signers format.
    pub fn allowed_signers(&self) -> PathBuf {
        self.trust().join("allowed_signers")
    }

    /// `trust/require-signed`: when this file exists, every import, add and
    /// pull must bring snapshots signed by a key `trust/allowed_signers` allows.
    pub fn require_signed(&self) -> PathBuf {
        self.trust().join("require-signed")
    }

    /// `staging/`.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// `quarantine/`: damaged snapshot directories a repair moved aside
    /// (never a snapshot; removed by `quarantine rm`, or by gc after the
    /// grace period).
    pub fn quarantine(&self) -> PathBuf {
        self.root.join("quarantine")
    }

    /// `quarantine/<name>-<unix seconds>[.<n>]`, relative to the root: where
    /// a repair moves the damaged directory of snapshot `name`; `n` (from 2)
    /// keeps two repairs within one second apart.
    pub fn quarantine_entry(name: &SnapshotName, unix_seconds: i64, n: u32) -> String {
        match n {
            0 | 1 => format!("quarantine/{name}-{unix_seconds}"),
            n => format!("quarantine/{name}-{unix_seconds}.{n}"),
        }
    }

    /// `staging/<id>/`, an import's private work area.
    pub fn import_staging(&self, id: &str) -> PathBuf {
        self.staging().join(id)
    }

    /// `staging/<id>/spill.sqlite`: an import's spill database
    /// ([`crate::db::staging`]).
    pub fn import_spill(&self, id: &str) -> PathBuf {
        self.import_staging(id).join("spill.sqlite")
    }

    /// `staging/<id>/snapshots/<dir>/`: a snapshot directory staged by an
    /// import; `dir` is a validated archive prefix (`sha256-<16 hex>`).
    pub fn staged_snapshot(&self, id: &str, dir: &str) -> PathBuf {
        self.staged_snapshots(id).join(dir)
    }

    /// `staging/<id>/snapshots/`: where an import stages snapshot directories.
    pub fn staged_snapshots(&self, id: &str) -> PathBuf {
        self.import_staging(id).join("snapshots")
    }

    /// `staging/<id>/cache/<kind>/<file>`: a cache file staged by an import.
    pub fn staged_cache_file(&self, id: &str, file: &CacheFile) -> PathBuf {
        self.import_staging(id)
            .join("cache")
            .join(file.kind.as_str())
            .join(file.file_name())
    }

    /// `staging/<id>.lock`, held (flock) by the importing process while it lives.
    pub fn import_lock(&self, id: &str) -> PathBuf {
        self.staging().join(format!("{id}.lock"))
    }

    /// Map a path relative to the root (as stored in the journal) to a full path.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// `db/msb.db`: microsandbox's own index, present when the root is a
    /// microsandbox home (DESIGN §9). Read only, but for the `snapshot_index`
    /// row of a snapshot `rm` or `rename` changes.
    pub fn msb_db(&self) -> PathBuf {
        self.root.join("db").join("msb.db")
    }

    /// `sandboxes/`: microsandbox's sandboxes, present in a microsandbox home.
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// Whether this root is shared with microsandbox: it holds `db/msb.db`
    /// or `sandboxes/`.
    pub fn is_shared_home(&self) -> bool {
        self.msb_db().symlink_metadata().is_ok() || self.sandboxes().symlink_metadata().is_ok()
    }

    /// `<path>.lock`: the lock file microsandbox holds (flock) while it
    /// materializes or removes the artifact at `path`.
    pub fn artifact_lock(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_os_string();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Every directory a working registry needs.
    pub fn dirs(&self) -> Vec<PathBuf> {
        let mut dirs = vec![self.root.clone(), self.snapshots(), self.staging()];
        dirs.push(self.cache());
        dirs.extend(CacheKind::ALL.iter().map(|k| self.cache_kind(*k)));
        dirs
    }
}

/// Why an entry named `name` is never ours whatever directory it is in, if
/// it is not: a lock file, a file being written, or a work directory.
pub fn not_ours(name: &str) -> Option<&'static str> {
    if name.ends_with(".lock") {
        Some("a lock file")
    } else if name.ends_with(".part") {
        Some("a partial file being written")
    } else if name.ends_with(".work") {
        Some("a work directory")
    } else {
        None
    }
}

/// A snapshot's name: its directory under `snapshots/`.
///
/// 1–128 characters of `A-Z a-z 0-9 . _ -`, starting with a letter or digit,
/// so a name is always one safe path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct SnapshotName(String);

impl SnapshotName {
    /// A name a person chose for a snapshot (`add`, `import --name`,
    /// `rename`): a valid name that is not 8 or more hex digits, which would
    /// shadow the digest prefix it spells in every reference.
    ///
    /// Nor a name the foreign-name grammar hides ([`not_ours`]: `.lock`,
    /// `.part`, `.work`): gc, verify and reindex would never see it.
    pub fn chosen(s: &str) -> Result<Self, Error> {
        let name: SnapshotName = s.parse()?;
        if s.len() >= 8 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Usage(format!(
                "invalid snapshot name {s:?}: 8 or more hex digits read as a digest prefix; add a letter outside a-f or a separator"
            )));
        }
        if let Some(what) = not_ours(s) {
            return Err(Error::Usage(format!(
                "invalid snapshot name {s:?}: it ends like {what}, which msb-registry and microsandbox never treat as a snapshot"
            )));
        }
        Ok(name)
    }

    /// [`SnapshotName::chosen`] for the snapshot `digest`: and not a name
    /// `sha256-<hex>` unless the hex starts that snapshot's own digest
    /// (another snapshot's digest-prefix name would impersonate it).
    pub fn chosen_for(s: &str, digest: &Digest) -> Result<Self, Error> {
        let name = Self::chosen(s)?;
        name.impersonation(digest)?;
        Ok(name)
    }

    /// `Err` when this name spells a digest prefix (`sha256-<hex>`) that is
    /// not `digest`'s own.
    pub fn impersonation(&self, digest: &Digest) -> Result<(), Error> {
        match self.0.strip_prefix("sha256-") {
            Some(hex)
                if !hex.is_empty()
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    && !digest.hex().starts_with(hex) =>
            {
                Err(Error::Usage(format!(
                    "invalid snapshot name {:?}: it spells the digest-prefix name of another snapshot than {digest}",
                    self.0
                )))
            }
            _ => Ok(()),
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SnapshotName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let ok = (1..=128).contains(&s.len())
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(SnapshotName(s.to_string()))
        } else {
            Err(Error::Usage(format!(
                "invalid snapshot name {s:?}: use 1-128 of A-Z a-z 0-9 . _ - starting with a letter or digit"
            )))
        }
    }
}

impl fmt::Display for SnapshotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_names_never_read_as_digest_prefixes() {
        for ok in [
            "1234567",
            "deadbeef-1",
            "cafe.babe",
            "sha256-0123456789abcdef",
            "g0123456789",
        ] {
            SnapshotName::chosen(ok).unwrap();
        }
        for bad in ["deadbeef", "0123456789", "DEADBEEF00", &"a".repeat(64)] {
            let e = SnapshotName::chosen(bad).unwrap_err();
            assert!(e.to_string().contains("8 or more hex digits"), "{bad}: {e}");
        }
        // Names already in a registry still parse, whatever made them.
        "deadbeef".parse::<SnapshotName>().unwrap();
    }

    #[test]
    fn chosen_names_are_neither_hidden_nor_another_snapshots_prefix() {
        let d = Digest::of(b"x");
        for bad in ["a.lock", "a.part", "a.work"] {
            assert!(SnapshotName::chosen(bad).is_err(), "{bad}");
        }
        let own = format!("sha256-{}", &d.hex()[..16]);
        SnapshotName::chosen_for(&own, &d).unwrap();
        SnapshotName::chosen_for("sha256-x", &d).unwrap();
        let other = format!("sha256-{}", &Digest::of(b"y").hex()[..16]);
        assert!(SnapshotName::chosen_for(&other, &d).is_err());
    }

    #[test]
    fn names_are_single_safe_components() {
        for ok in ["py-app", "a", "sha256-0123456789abcdef", "v1.2_x"] {
            ok.parse::<SnapshotName>().unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "-x",
            "a b",
            "é",
            &"x".repeat(129),
        ] {
            assert!(bad.parse::<SnapshotName>().is_err(), "{bad:?}");
        }
    }
}
