//! `add`: take an existing snapshot directory (and optionally its image's
//! artifacts from a microsandbox cache) into the registry, through the same
//! lease, staging, verification and journaled promotion as an import.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::db::{self, ImportFileRow, SnapshotFileRow};
use crate::journal::Lease;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::{CacheFile, ImageMetadata, MAX_METADATA_BYTES};
use crate::model::manifest::{
    ImagePin, MAX_MANIFEST_BYTES, Manifest, ParsedManifest, Upper, is_normal_file_name,
};
use crate::ops::install::install_checked;
use crate::ops::registry::Registry;
use crate::ops::sign::{Arriving, TrustOptions, admit, read_signature_files};
use crate::process::progress::Progress;
use crate::store::files::{read_limited, read_logical};
use crate::store::layout::SnapshotName;
use crate::store::stage::{StagingFile, check_integrity};
use crate::store::staged::{StagedCacheFile, StagedManifest, StagedSet, StagedSnapshot};

/// Options of `add`.
#[derive(Debug, Clone, Default)]
pub struct AddOptions {
    /// Name to install under; default: the directory's own name.
    pub name: Option<String>,
    /// A microsandbox cache directory to take the pinned image's artifacts from.
    pub cache_dir: Option<PathBuf>,
    /// Armored signatures of the snapshot to record with it.
    pub signatures: Vec<PathBuf>,
    /// Which signatures the snapshot must carry.
    pub trust: TrustOptions,
    /// Re-hash the snapshot's copy here, when present, before calling it
    /// intact (see [`crate::ops::repair`]).
    pub repair: bool,
    /// With several directories: accept a snapshot whose parent is neither
    /// among them nor in the registry (it lands shallow, as one directory does).
    pub allow_shallow: bool,
}

/// What `add` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddReport {
    /// The snapshot's digest.
    pub digest: Digest,
    /// Its name in the registry.
    pub name: String,
    /// True when the snapshot was already present (nothing changed).
    pub already_present: bool,
    /// Files of the snapshot.
    pub files: usize,
    /// Logical bytes of the snapshot's files.
    pub bytes: u64,
    /// Cache files newly installed.
    pub cache_files_installed: usize,
    /// Cache files already present with the same content.
    pub cache_files_skipped: usize,
    /// In a shared home whose snapshots this changed: how to refresh
    /// microsandbox's view (`msb snapshot reindex`); null otherwise.
    pub microsandbox_hint: Option<String>,
    /// A damaged copy this add replaced, moved to `quarantine/`.
    pub repaired: Vec<crate::ops::repair::Repaired>,
}

/// Read and validate `<dir>/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<ParsedManifest> {
    let path = dir.join("manifest.json");
    let bytes = match read_limited(&path, MAX_MANIFEST_BYTES) {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound {
                what: "manifest",
                reference: path.display().to_string(),
            });
        }
        other => other?,
    };
    let bytes = bytes.ok_or_else(|| Error::Manifest {
        path: path.display().to_string(),
        source: crate::model::manifest::ManifestError::TooLarge(MAX_MANIFEST_BYTES + 1),
    })?;
    Manifest::parse(&bytes).map_err(|source| Error::Manifest {
        path: path.display().to_string(),
        source,
    })
}

/// Read and check an image metadata file (size limit, self-digests).
pub fn read_metadata(path: &Path) -> Result<ImageMetadata> {
    let bytes = read_limited(path, MAX_METADATA_BYTES)?.ok_or_else(|| {
        Error::integrity(path.display().to_string(), "metadata is larger than 16 MiB")
    })?;
    ImageMetadata::parse(&bytes).map_err(|source| Error::Metadata {
        path: path.display().to_string(),
        source,
    })
}

impl Registry {
    /// Register the snapshot directory `dir`.
    pub fn add(
        &mut self,
        dir: &Path,
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddReport> {
        let parsed = read_manifest(dir)?;
        let name = match &opts.name {
            Some(n) => SnapshotName::chosen_for(n, &parsed.digest)?,
            None => SnapshotName::chosen_for(
                dir.canonicalize()
                    .at("resolve", dir)?
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default(),
                &parsed.digest,
            )?,
        };
        self.clear_dead_staging()?;
        let (layout, db) = self.parts();
        let mut lease = Lease::acquire(layout, db, &dir.display().to_string())?;
        let result = self.add_leased(&mut lease, dir, name, parsed, opts, progress);
        self.end_lease(lease, "add", result)
    }

    fn add_leased(
        &mut self,
        lease: &mut Lease,
        dir: &Path,
        name: SnapshotName,
        parsed: ParsedManifest,
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddReport> {
        let trusts = self.trust_policy(&opts.trust)?;
        let signatures = read_signature_files(&opts.signatures)?;
        let arriving = Arriving {
            digest: parsed.digest,
            parent: parsed.manifest.parent,
            signatures: &signatures,
        };
        let signatures = admit(self.db().conn(), &trusts, &[arriving])?;
        db::imports::insert_pin(
            self.db().conn(),
            lease.id(),
            &parsed.manifest.image.manifest_digest,
        )?;
        let sources = source_files(dir, &parsed.manifest.upper)?;
        progress.start("add", Some(sources.iter().map(|s| s.len).sum()));
        let mut journal = Vec::new();
        let snapshot =
            self.stage_snapshot(lease, &sources, &parsed, &name, progress, &mut journal)?;
        let mut set = StagedSet {
            signatures,
            ..StagedSet::default()
        };
        if let Some(cache_dir) = &opts.cache_dir {
            self.stage_cache(lease, cache_dir, &parsed, progress, &mut journal, &mut set)?;
        }
        progress.finish();
        {
            let tx = self.db_mut().write()?;
            db::imports::insert_import_files(&tx, lease.id(), &journal)?;
            tx.commit()?;
        }
        crate::process::failpoint::hit(crate::process::failpoint::ADD_STAGED)?;
        crate::process::interrupt::check()?;
        let bytes = snapshot.files.iter().map(|f| f.size).sum();
        let file_count = snapshot.files.len();
        set.snapshots.push(snapshot);
        let outcome = install_checked(self, lease, &mut set, opts.repair)?;
        crate::process::failpoint::hit(crate::process::failpoint::ADD_INSTALLED)?;
        let row = db::snapshots::snapshot_by_digest(self.db().conn(), &parsed.digest)?.ok_or_else(
            || crate::model::error::Error::NotFound {
                what: "snapshot",
                reference: format!(
                    "{} ({}): removed by another command right after it was added",
                    name, parsed.digest
                ),
            },
        )?;
        Ok(AddReport {
            microsandbox_hint: if outcome.imported.is_empty() {
                None
            } else {
                crate::store::shared_home::reindex_hint(self.layout())
            },
            digest: parsed.digest,
            name: row.name,
            already_present: outcome.imported.is_empty() && outcome.repaired.is_empty(),
            files: file_count,
            bytes,
            cache_files_installed: outcome.cache_files_installed,
            cache_files_skipped: outcome.cache_files_skipped,
            repaired: outcome.repaired,
        })
    }

    /// Copy the snapshot's files into the lease's staging directory, hashing
    /// and cutting chunks on the way (the manifest as its canonical bytes),
    /// and journal each; returns the staged snapshot.
    fn stage_snapshot(
        &self,
        lease: &Lease,
        sources: &[SourceFile],
        parsed: &ParsedManifest,
        name: &SnapshotName,
        progress: &dyn Progress,
        journal: &mut Vec<ImportFileRow>,
    ) -> Result<StagedSnapshot> {
        let root = self.layout().root();
        let staged_dir = lease.staging().join("snapshot");
        std::fs::create_dir(&staged_dir).at("create directory", &staged_dir)?;
        let upper = &parsed.manifest.upper;
        let mut files = Vec::new();
        let mut chunks = Vec::new();
        for SourceFile {
            name: file_name,
            path,
            len,
        } in sources
        {
            let integrity = if *file_name == upper.file {
                upper.integrity.as_ref()
            } else {
                None
            };
            let target = staged_dir.join(file_name);
            let mut staged = if file_name == "manifest.json" {
                // The canonical bytes, whatever spacing the source used: the
                // stored manifest always hashes to the snapshot digest.
                let canonical = parsed.manifest.canonical_bytes();
                let mut out = StagingFile::create(&target, canonical.len() as u64, None)?.chunked();
                out.piece(crate::store::files::Piece::Data(&canonical))?;
                out.finish()?
            } else {
                copy_into(path, *len, &target, integrity, true, progress)?
            };
            if let Some(integrity) = integrity {
                check_integrity(&path.display().to_string(), integrity, staged.integrity)?;
            }
            journal.push(ImportFileRow {
                member: path.display().to_string(),
                staged_path: under_root(root, &target),
                final_path: under_root(root, &self.layout().snapshot_file(name, file_name)),
                kind: "snapshot".into(),
                size: staged.size,
                digest: staged.digest,
                promote: true,
            });
            files.push(SnapshotFileRow {
                path: file_name.clone(),
                size: staged.size,
                digest: staged.digest,
            });
            if let Some(list) = staged.chunks.take() {
                chunks.push((file_name.clone(), list));
            }
        }
        Ok(StagedSnapshot {
            manifest: StagedManifest::Held(Box::new(parsed.clone())),
            name: name.clone(),
            fallback: None,
            staged_dir: under_root(root, &staged_dir),
            files,
            chunks,
        })
    }

    /// Stage the pinned image's artifacts from `cache_dir` into the lease's
    /// staging directory, journal each, and add them to `set`.
    pub(crate) fn stage_cache(
        &self,
        lease: &Lease,
        cache_dir: &Path,
        parsed: &ParsedManifest,
        progress: &dyn Progress,
        journal: &mut Vec<ImportFileRow>,
        set: &mut StagedSet,
    ) -> Result<()> {
        let pin = &parsed.manifest.image;
        self.stage_cache_in(lease, "cache", cache_dir, pin, progress, journal, set)
    }

    /// [`Registry::stage_cache`] into the staging subdirectory `subdir`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn stage_cache_in(
        &self,
        lease: &Lease,
        subdir: &str,
        cache_dir: &Path,
        pin: &ImagePin,
        progress: &dyn Progress,
        journal: &mut Vec<ImportFileRow>,
        set: &mut StagedSet,
    ) -> Result<()> {
        let root = self.layout().root();
        let staged_cache = lease.staging().join(subdir);
        std::fs::create_dir(&staged_cache).at("create directory", &staged_cache)?;
        let (meta, cache_files) = stage_image(cache_dir, pin, &staged_cache, progress)?;
        for (file, path, bytes) in cache_files {
            journal.push(ImportFileRow {
                member: cache_dir.join(file.rel_path()).display().to_string(),
                staged_path: under_root(root, &path),
                final_path: under_root(root, &self.layout().cache_file(&file)),
                kind: file.kind.as_str().into(),
                size: bytes.size,
                digest: bytes.digest,
                promote: true,
            });
            set.cache_files.push(StagedCacheFile {
                file,
                staged: under_root(root, &path),
                size: bytes.size,
                digest: bytes.digest,
            });
        }
        set.images.push((meta, pin.reference.clone()));
        Ok(())
    }
}

/// `path` relative to the registry root (staging is under the root).
pub(crate) fn under_root(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .expect("staging is under the root")
        .to_string_lossy()
        .into_owned()
}

/// A regular file of a snapshot directory to add.
pub(crate) struct SourceFile {
    /// Its name in the directory.
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// Its apparent size.
    pub len: u64,
}

/// The files of the snapshot directory `dir`, sorted by name: regular files
/// only, the upper among them with the size its manifest records.
pub(crate) fn source_files(dir: &Path, upper: &Upper) -> Result<Vec<SourceFile>> {
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).at("read directory", dir)? {
        let entry = entry.at("read directory", dir)?;
        let path = entry.path();
        let meta = entry.path().symlink_metadata().at("stat", &path)?;
        let file_name = entry.file_name().into_string().map_err(|_| {
            Error::unsupported(path.display().to_string(), "file name is not UTF-8")
        })?;
        if !meta.is_file() || !is_normal_file_name(&file_name) {
            return Err(Error::unsupported(
                path.display().to_string(),
                "a snapshot directory may hold only regular files",
            ));
        }
        sources.push(SourceFile {
            name: file_name,
            path,
            len: meta.len(),
        });
    }
    sources.sort_by(|a, b| a.name.cmp(&b.name));
    let upper_source = sources
        .iter()
        .find(|s| s.name == upper.file)
        .ok_or_else(|| Error::NotFound {
            what: "upper file",
            reference: dir.join(&upper.file).display().to_string(),
        })?;
    if upper_source.len != upper.size_bytes {
        return Err(Error::integrity(
            upper_source.path.display().to_string(),
            format!(
                "size is {} bytes, manifest records {}",
                upper_source.len, upper.size_bytes
            ),
        ));
    }
    Ok(sources)
}

/// Copy `src` into staging, sparsely, hashing (and with `chunked` cutting) on the way.
fn copy_into(
    src: &Path,
    len: u64,
    target: &Path,
    integrity: Option<&crate::model::manifest::Integrity>,
    chunked: bool,
    progress: &dyn Progress,
) -> Result<crate::store::stage::StagedBytes> {
    copy_until(src, len, target, integrity, chunked, progress, &|| Ok(()))
}

/// [`copy_into`], calling `go_on` before each piece: its error ends the copy.
pub(crate) fn copy_until(
    src: &Path,
    len: u64,
    target: &Path,
    integrity: Option<&crate::model::manifest::Integrity>,
    chunked: bool,
    progress: &dyn Progress,
    go_on: &dyn Fn() -> Result<()>,
) -> Result<crate::store::stage::StagedBytes> {
    let file = crate::store::files::open_regular(src)?;
    let mut out = StagingFile::create(target, len, integrity)?;
    if chunked {
        out = out.chunked();
    }
    read_logical(&file, len, src, |piece| {
        crate::process::interrupt::check()?;
        go_on()?;
        progress.advance(match piece {
            crate::store::files::Piece::Data(d) => d.len() as u64,
            crate::store::files::Piece::Zeros(n) => n,
        });
        out.piece(piece)
    })?;
    out.finish()
}

/// Cache files staged from a directory: name, staged path, size and digests.
type StagedCache = Vec<(CacheFile, PathBuf, crate::store::stage::StagedBytes)>;

/// Stage the pinned image's metadata and artifacts from a microsandbox cache directory.
fn stage_image(
    cache_dir: &Path,
    pin: &ImagePin,
    staged_cache: &Path,
    progress: &dyn Progress,
) -> Result<(ImageMetadata, StagedCache)> {
    let meta_file = CacheFile::metadata_for_ref(&pin.reference);
    let meta_path = cache_dir.join(meta_file.rel_path());
    if !meta_path.exists() {
        return Err(Error::NotFound {
            what: "image metadata",
            reference: meta_path.display().to_string(),
        });
    }
    let meta = read_metadata(&meta_path)?;
    if meta.manifest_digest != pin.manifest_digest {
        return Err(Error::integrity(
            meta_path.display().to_string(),
            format!(
                "metadata describes image {}, but the snapshot pins {}",
                meta.manifest_digest, pin.manifest_digest
            ),
        ));
    }
    let mut out = Vec::new();
    for file in std::iter::once(meta_file).chain(meta.artifact_files()) {
        let src = cache_dir.join(file.rel_path());
        let m = src.symlink_metadata().map_err(|_| Error::NotFound {
            what: "cache file",
            reference: src.display().to_string(),
        })?;
        if !m.is_file() {
            return Err(Error::unsupported(
                src.display().to_string(),
                "not a regular file",
            ));
        }
        if let Some(problem) = file.size_problem(m.len()) {
            return Err(Error::integrity(src.display().to_string(), problem));
        }
        let kind_dir = staged_cache.join(file.kind.as_str());
        std::fs::create_dir_all(&kind_dir).at("create directory", &kind_dir)?;
        let target = kind_dir.join(file.file_name());
        let staged = copy_into(&src, m.len(), &target, None, false, progress)?;
        out.push((file, target, staged));
    }
    Ok((meta, out))
}
