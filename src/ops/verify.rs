//! `verify`: check the index against the disk. Every snapshot directory and
//! file, every cache file and every cached image's expected artifacts must be
//! present with their recorded sizes; with `content`, every file is re-hashed
//! (streaming, holes not read) against its recorded digest, each upper
//! against its manifest's integrity and each manifest against its snapshot
//! digest. Files without rows are reported as debris and unfinished imports
//! as such: gc's business, not corruption.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use rusqlite::Connection;
use serde::Serialize;

use crate::db::gc::{CacheEntry, ImageLayers};
use crate::db::{self, ImportState, SnapshotFileRow, SnapshotRow};
use crate::model::chunk::{CHUNK_SIZE, ChunkList};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::image::{CacheFile, CacheKind};
use crate::model::manifest::{Integrity, MAX_MANIFEST_BYTES, Manifest};
use crate::ops::gc::{Kept, KeptReason, RemovalKind, plan, survey};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::store::files::read_limited;
use crate::store::layout::SnapshotName;
use crate::store::pipeline;
use crate::store::shared_home::{self, HomeReport};
use crate::store::stage::{digest_file, digest_file_chunked};

/// What is wrong with one file or artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A recorded file or directory is absent.
    Missing,
    /// A recorded file is a directory, symlink or special file.
    NotAFile,
    /// A recorded file has another size.
    Size,
    /// A file's content does not hash to its recorded digest.
    Digest,
    /// An upper does not match its manifest's integrity.
    Integrity,
    /// A manifest that does not parse or does not hash to its snapshot digest.
    Manifest,
    /// An artifact an image or snapshot needs has no row.
    MissingRow,
    /// A file that could not be read.
    Unreadable,
    /// A snapshot directory holding a valid manifest that the index lacks.
    Unindexed,
    /// A row whose recorded values cannot be what the registry wrote.
    BadRow,
    /// A snapshot file's chunk list is absent or does not match its content.
    Chunks,
}

impl ProblemKind {
    /// The name used in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProblemKind::Missing => "missing",
            ProblemKind::NotAFile => "not-a-file",
            ProblemKind::Size => "size",
            ProblemKind::Digest => "digest",
            ProblemKind::Integrity => "integrity",
            ProblemKind::Manifest => "manifest",
            ProblemKind::MissingRow => "missing-row",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::Unindexed => "unindexed",
            ProblemKind::BadRow => "bad-row",
            ProblemKind::Chunks => "chunks",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What is wrong.
    pub kind: ProblemKind,
    /// Path relative to the root.
    pub path: String,
    /// The digest concerned: the recorded content digest, or the snapshot
    /// or image the artifact belongs to.
    pub digest: Option<Digest>,
    /// Expected and found.
    pub detail: String,
}

/// An import that has not finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnfinishedImport {
    /// Its id.
    pub id: String,
    /// `staging` or `promoting`.
    pub state: ImportState,
    /// Whether its process still holds the lock.
    pub live: bool,
}

/// What verify found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// True when there is no problem.
    pub ok: bool,
    /// Every problem, by path.
    pub problems: Vec<Problem>,
    /// Files checked.
    pub checked_files: u64,
    /// Their recorded bytes.
    pub checked_bytes: u64,
    /// Whether content was re-hashed.
    pub content: bool,
    /// Files and directories on disk without rows (gc removes them).
    pub debris: Vec<String>,
    /// Imports not finished (dead ones are cleaned by gc or the next open).
    pub unfinished_imports: Vec<UnfinishedImport>,
    /// Damaged copies a repair moved aside: not snapshots, not problems.
    pub quarantined: Vec<crate::store::quarantine::QuarantineEntry>,
    /// What the root shares with microsandbox (whose work files, locks and
    /// in-use artifacts are never debris).
    pub microsandbox: HomeReport,
}

/// One file to check.
struct Check {
    rel: String,
    path: PathBuf,
    size: u64,
    digest: Digest,
    integrity: Option<Integrity>,
    manifest_of: Option<Digest>,
    /// The snapshot whose chunk list of this file is checked too.
    chunks_of: Option<Digest>,
    file: String,
}

impl Registry {
    /// Check the whole registry, or with `reference` one snapshot and its
    /// pinned image's artifacts. Takes no lock: the index is read in one
    /// read transaction, and a snapshot removed meanwhile shows as missing
    /// only if its row is still there when the disk is checked.
    pub fn verify(
        &self,
        reference: Option<&str>,
        content: bool,
        progress: &dyn Progress,
    ) -> Result<VerifyReport> {
        let mut problems = Vec::new();
        let mut checks = Vec::new();
        let tx = self.db().read()?;
        let snapshots = self.indexed_snapshots(&tx, reference, &mut checks, &mut problems)?;
        let (images, cache) = indexed_cache(&tx, reference.is_some(), &snapshots)?;
        drop(tx);
        problems.extend(image_problems(&images, &cache));
        self.cache_checks(&cache, &mut checks, &mut problems);
        let (checked_files, checked_bytes) =
            self.run_checks(checks, content, progress, &mut problems)?;
        let (debris, unfinished_imports, home) = if reference.is_none() {
            self.survey_disk(&mut problems)?
        } else {
            let (_, home) = shared_home::roots(self.layout(), false);
            (Vec::new(), Vec::new(), home)
        };

        problems.sort_by(|a, b| (&a.path, a.kind).cmp(&(&b.path, b.kind)));
        let quarantined = match reference {
            None => crate::store::quarantine::list(self.layout(), db::now_unix())?,
            Some(_) => Vec::new(),
        };
        Ok(VerifyReport {
            quarantined,
            ok: problems.is_empty(),
            problems,
            checked_files,
            checked_bytes,
            content,
            debris,
            unfinished_imports,
            microsandbox: home,
        })
    }

    /// The snapshots to check (`reference` alone, or all), with a check
    /// for each of their files.
    fn indexed_snapshots(
        &self,
        conn: &Connection,
        reference: Option<&str>,
        checks: &mut Vec<Check>,
        problems: &mut Vec<Problem>,
    ) -> Result<Vec<SnapshotRow>> {
        let (snapshots, mut files) = match reference {
            Some(r) => {
                let row = self.resolve(r)?;
                let files = db::snapshots::snapshot_files(conn, &row.digest)?;
                let by_digest = HashMap::from([(row.digest, files)]);
                (vec![row], by_digest)
            }
            None => {
                let mut by_digest: HashMap<Digest, Vec<SnapshotFileRow>> = HashMap::new();
                for (digest, f) in db::gc::all_snapshot_files(conn)? {
                    by_digest.entry(digest).or_default().push(f);
                }
                (db::snapshots::all_snapshots(conn)?, by_digest)
            }
        };
        for s in &snapshots {
            self.snapshot_checks(
                s,
                files.remove(&s.digest).unwrap_or_default(),
                checks,
                problems,
            );
        }
        Ok(snapshots)
    }

    /// A check for each recorded cache file; a row whose path is not a
    /// cache file name is a problem instead.
    fn cache_checks(
        &self,
        cache: &[CacheEntry],
        checks: &mut Vec<Check>,
        problems: &mut Vec<Problem>,
    ) {
        for c in cache {
            let Some(file) = CacheFile::parse_rel(&c.path) else {
                problems.push(Problem {
                    kind: ProblemKind::BadRow,
                    path: format!("cache_files/{}", c.path),
                    digest: Some(c.digest),
                    detail: format!(
                        "path {:?} is not a cache file name; run `msb-registry reindex`",
                        c.path
                    ),
                });
                continue;
            };
            checks.push(Check {
                rel: format!("cache/{}", c.path),
                path: self.layout().cache_file(&file),
                size: c.size,
                digest: c.digest,
                integrity: None,
                manifest_of: None,
                chunks_of: None,
                file: String::new(),
            });
        }
    }

    /// Stat every check, and with `content` re-hash those that stat clean;
    /// the number of files and their recorded bytes.
    fn run_checks(
        &self,
        checks: Vec<Check>,
        content: bool,
        progress: &dyn Progress,
        problems: &mut Vec<Problem>,
    ) -> Result<(u64, u64)> {
        let mut checked_files = 0;
        let mut checked_bytes = 0;
        let mut to_hash = Vec::new();
        for check in checks {
            checked_files += 1;
            checked_bytes = check.size.saturating_add(checked_bytes);
            if let Some(problem) = stat_problem(&check) {
                problems.push(problem);
            } else if content {
                to_hash.push(check);
            }
        }
        progress.start("verify", Some(to_hash.iter().map(|c| c.size).sum()));
        problems.extend(self.hash_all(&to_hash, progress)?);
        progress.finish();
        Ok((checked_files, checked_bytes))
    }

    /// The content problems of `checks`, in their order, largest first so
    /// the longest hash starts at once: as many files at once as threads
    /// allowed ([`pipeline::files_at_once`]), or up to
    /// [`pipeline::large_files_at_once`] while integrity hashes of large
    /// files run on threads of their own; every hash holds a hash slot, so
    /// no more than the threads allowed hash at once.
    fn hash_all(&self, checks: &[Check], progress: &dyn Progress) -> Result<Vec<Problem>> {
        let recorded = |check: &Check| -> Result<Option<Option<ChunkList>>> {
            match check.chunks_of {
                Some(snapshot) => Ok(Some(db::chunks::chunk_list(
                    self.db().conn(),
                    &snapshot,
                    &check.file,
                )?)),
                None => Ok(None),
            }
        };
        let offloaded = |c: &Check| c.integrity.is_some() && pipeline::offloads(c.size);
        let large = checks.iter().filter(|c| offloaded(c)).count();
        let workers = pipeline::files_at_once()
            .max(large.min(pipeline::large_files_at_once()))
            .min(checks.len());
        if workers <= 1 {
            let mut problems = Vec::new();
            for check in checks {
                problems.extend(content_problems(check, recorded(check)?, progress));
            }
            return Ok(problems);
        }
        let mut order: Vec<usize> = (0..checks.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(checks[i].size));
        let mut found: Vec<Vec<Problem>> = vec![Vec::new(); checks.len()];
        let (work_tx, work_rx) = std::sync::mpsc::sync_channel(workers);
        let work_rx = std::sync::Mutex::new(work_rx);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| -> Result<()> {
            for _ in 0..workers {
                let done_tx = done_tx.clone();
                let work_rx = &work_rx;
                scope.spawn(move || {
                    loop {
                        let next = work_rx.lock().map(|rx| rx.recv());
                        let Ok(Ok((i, recorded))) = next else { return };
                        let check: &Check = &checks[i];
                        let problems = if offloaded(check) {
                            content_problems(check, recorded, progress)
                        } else {
                            let hash = || content_problems(check, recorded, progress);
                            match pipeline::hash_inline(&|| false, hash) {
                                Some(p) => p,
                                // Interrupted: the caller's check reports it.
                                None => return,
                            }
                        };
                        let _ = done_tx.send((i, problems));
                    }
                });
            }
            drop(done_tx);
            // The index is read here, on this thread: its connection stays here.
            let sent = order.iter().try_for_each(|&i| -> Result<()> {
                let r = recorded(&checks[i])?;
                let _ = work_tx.send((i, r));
                Ok(())
            });
            drop(work_tx);
            for (i, p) in done_rx {
                found[i] = p;
            }
            sent
        })?;
        // A worker interrupted while waiting for a slot left its files out.
        crate::process::interrupt::check()?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Survey the whole disk as gc does: unindexed snapshot directories are
    /// problems; returns the debris, the unfinished imports and what the
    /// root shares with microsandbox.
    fn survey_disk(
        &self,
        problems: &mut Vec<Problem>,
    ) -> Result<(Vec<String>, Vec<UnfinishedImport>, HomeReport)> {
        let survey = survey(self)?;
        let planned = plan(
            &survey.index,
            &survey.listing,
            &survey.live,
            db::now_unix(),
            0,
        );
        // An unindexed cache file is already a missing-row problem.
        for k in planned.kept.iter() {
            match k.reason {
                KeptReason::Unindexed if k.path.starts_with("snapshots/") => {
                    problems.extend(self.unindexed_problem(k)?)
                }
                KeptReason::Unvalidated => problems.push(kept_problem(k)),
                // The snapshot's own checks name what differs, when they can.
                KeptReason::Mismatch => {
                    let inside = format!("{}/", k.path);
                    if !problems.iter().any(|p| p.path.starts_with(&inside)) {
                        problems.push(kept_problem(k));
                    }
                }
                _ => {}
            }
        }
        let debris = planned
            .removals
            .into_iter()
            .filter(|r| matches!(r.kind, RemovalKind::Debris | RemovalKind::Staging))
            .map(|r| r.path)
            .collect();
        let unfinished = survey
            .index
            .imports
            .iter()
            .filter(|i| matches!(i.state, ImportState::Staging | ImportState::Promoting))
            .map(|i| UnfinishedImport {
                id: i.id.clone(),
                state: i.state,
                live: survey.live.contains(&i.id),
            })
            .collect();
        Ok((debris, unfinished, survey.home))
    }

    /// The problem of a snapshot directory gc keeps because it has no row:
    /// a copy of an indexed snapshot, or one `reindex` would adopt.
    /// None for the directory of a crashed `rename` not rolled forward yet:
    /// it is the snapshot's only copy, which readers read through.
    fn unindexed_problem(&self, kept: &Kept) -> Result<Option<Problem>> {
        let renaming = db::snapshots::pending_renames(self.db().conn())?
            .into_iter()
            .any(|(d, old, _)| Some(d) == kept.digest && kept.path == format!("snapshots/{old}"));
        if renaming {
            return Ok(None);
        }
        let indexed = match &kept.digest {
            Some(d) => db::snapshots::snapshot_by_digest(self.db().conn(), d)?,
            None => None,
        };
        let detail = match indexed {
            Some(row) => format!(
                "a copy of snapshot {}, which the index holds under that name; gc keeps it: remove the copy yourself",
                row.name
            ),
            None => "holds a valid manifest but the index has no row; run `msb-registry reindex` to index it (gc keeps it); if reindex leaves it unindexed it is damaged: import, add or pull a good copy of that snapshot under this name, which moves it to quarantine/".into(),
        };
        Ok(Some(Problem {
            kind: ProblemKind::Unindexed,
            path: kept.path.clone(),
            digest: kept.digest,
            detail,
        }))
    }

    fn snapshot_checks(
        &self,
        s: &SnapshotRow,
        files: Vec<SnapshotFileRow>,
        checks: &mut Vec<Check>,
        problems: &mut Vec<Problem>,
    ) {
        let rel_dir = format!("snapshots/{}", s.name);
        let problem = |kind, path: String, detail: String| Problem {
            kind,
            path,
            digest: Some(s.digest),
            detail,
        };
        let name: SnapshotName = match s.name.parse() {
            Ok(n) => n,
            Err(e) => {
                problems.push(problem(ProblemKind::Missing, rel_dir, e.to_string()));
                return;
            }
        };
        let name = self.snapshot_dir(&name);
        let dir = self.layout().snapshot(&name);
        if !dir.is_dir() {
            problems.push(problem(
                ProblemKind::Missing,
                rel_dir,
                format!("directory of snapshot {} is missing", s.digest),
            ));
            return;
        }
        for required in ["manifest.json", s.upper_file.as_str()] {
            if !files.iter().any(|f| f.path == required) {
                problems.push(problem(
                    ProblemKind::MissingRow,
                    format!("{rel_dir}/{required}"),
                    format!("snapshot {} has no row for it", s.digest),
                ));
            }
        }
        for f in files {
            let is_upper = f.path == s.upper_file;
            if is_upper && f.size != s.size_bytes {
                problems.push(problem(
                    ProblemKind::Size,
                    format!("{rel_dir}/{}", f.path),
                    format!(
                        "file row records {} bytes, manifest records {}",
                        f.size, s.size_bytes
                    ),
                ));
            }
            let integrity = match (&s.integrity_algorithm, &s.integrity_digest, is_upper) {
                (Some(a), Some(d), true) => Some(Integrity {
                    algorithm: a.clone(),
                    digest: d.clone(),
                }),
                _ => None,
            };
            checks.push(Check {
                rel: format!("{rel_dir}/{}", f.path),
                path: self.layout().snapshot_file(&name, &f.path),
                size: f.size,
                digest: f.digest,
                integrity,
                manifest_of: (f.path == "manifest.json").then_some(s.digest),
                chunks_of: Some(s.digest),
                file: f.path.clone(),
            });
        }
    }
}

/// The cached images and cache rows to check: all of them, or with
/// `one_snapshot` only those of the images `snapshots` pin.
fn indexed_cache(
    conn: &Connection,
    one_snapshot: bool,
    snapshots: &[SnapshotRow],
) -> Result<(Vec<ImageLayers>, Vec<CacheEntry>)> {
    let mut images = db::gc::images_with_layers(conn)?;
    let mut cache = db::gc::cache_entries(conn)?;
    if one_snapshot {
        let pinned: HashSet<Digest> = snapshots.iter().map(|s| s.image_manifest_digest).collect();
        images.retain(|i| pinned.contains(&i.manifest_digest));
        let wanted: HashSet<String> = images
            .iter()
            .flat_map(image_files)
            .map(|f| f.rel_path())
            .collect();
        cache.retain(|c| wanted.contains(&c.path));
    }
    Ok((images, cache))
}

/// Image rows whose metadata file is not a cache file name, and files an
/// image needs that have no cache row.
/// The problem of a snapshot directory gc keeps whole because its manifest
/// cannot be validated or is not the snapshot its row records.
fn kept_problem(kept: &Kept) -> Problem {
    let why = kept.why.as_deref().unwrap_or("");
    let detail = match kept.reason {
        KeptReason::Unvalidated => format!(
            "its manifest.json cannot be validated ({why}); gc keeps it: it may be a snapshot a newer microsandbox wrote"
        ),
        _ => format!("{why}; gc deletes nothing in it"),
    };
    Problem {
        kind: ProblemKind::Manifest,
        path: kept.path.clone(),
        digest: kept.digest,
        detail,
    }
}

fn image_problems(images: &[ImageLayers], cache: &[CacheEntry]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let recorded: HashSet<&str> = cache.iter().map(|c| c.path.as_str()).collect();
    for image in images {
        if CacheFile::parse_rel(&image.metadata_file).is_none() {
            problems.push(Problem {
                kind: ProblemKind::BadRow,
                path: format!("images/{}", image.manifest_digest),
                digest: Some(image.manifest_digest),
                detail: format!(
                    "metadata_file {:?} is not a cache file name; run `msb-registry reindex`",
                    image.metadata_file
                ),
            });
        }
        for f in image_files(image) {
            let rel = f.rel_path();
            if !recorded.contains(rel.as_str()) {
                problems.push(Problem {
                    kind: ProblemKind::MissingRow,
                    path: format!("cache/{rel}"),
                    digest: Some(image.manifest_digest),
                    detail: format!("image {} needs it but it has no row", image.manifest_digest),
                });
            }
        }
    }
    problems
}

/// Every cache file an image needs: metadata, fsmeta, vmdk, layers.
fn image_files(image: &ImageLayers) -> Vec<CacheFile> {
    let mut files: Vec<CacheFile> = CacheFile::parse_rel(&image.metadata_file)
        .into_iter()
        .collect();
    files.extend([CacheKind::Fsmeta, CacheKind::Vmdk].map(|kind| CacheFile {
        kind,
        key: image.manifest_digest,
    }));
    for d in &image.layers {
        let f = CacheFile {
            kind: CacheKind::Layers,
            key: *d,
        };
        if !files.contains(&f) {
            files.push(f);
        }
    }
    files
}

fn stat_problem(check: &Check) -> Option<Problem> {
    let problem = |kind, detail: String| {
        Some(Problem {
            kind,
            path: check.rel.clone(),
            digest: Some(check.digest),
            detail,
        })
    };
    match check.path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => problem(
            ProblemKind::Missing,
            format!("expected a file of {} bytes, found nothing", check.size),
        ),
        Err(e) => problem(ProblemKind::Unreadable, format!("stat: {e}")),
        Ok(m) if !m.is_file() => problem(
            ProblemKind::NotAFile,
            "expected a regular file, found another kind of entry".into(),
        ),
        Ok(m) if m.len() != check.size => problem(
            ProblemKind::Size,
            format!("expected {} bytes, found {}", check.size, m.len()),
        ),
        Ok(_) => None,
    }
}

/// `recorded` is `Some` for a snapshot file: its chunk list in the index, if any.
fn content_problems(
    check: &Check,
    recorded: Option<Option<ChunkList>>,
    progress: &dyn Progress,
) -> Vec<Problem> {
    let problem = |kind, digest, detail: String| Problem {
        kind,
        path: check.rel.clone(),
        digest,
        detail,
    };
    let mut problems = Vec::new();
    let expected_integrity = match check.integrity.as_ref().map(|i| i.expected()) {
        Some(Err(e)) => {
            problems.push(problem(ProblemKind::Integrity, None, e.to_string()));
            None
        }
        Some(Ok((algorithm, digest))) => Some((algorithm.to_string(), digest)),
        None => None,
    };
    let chunk_size = recorded
        .as_ref()
        .map(|r| r.as_ref().map_or(CHUNK_SIZE, |l| l.chunk_size));
    let hashed = hash_file(check, expected_integrity.is_some(), chunk_size, progress);
    let (digest, integrity, chunks) = match hashed {
        Ok(found) => found,
        Err(e) => {
            problems.push(problem(
                ProblemKind::Unreadable,
                Some(check.digest),
                error_line(&e),
            ));
            return problems;
        }
    };
    if digest != check.digest {
        problems.push(problem(
            ProblemKind::Digest,
            Some(check.digest),
            format!("content hashes to {digest}, index records {}", check.digest),
        ));
    }
    if let (Some((algorithm, expected)), Some(found)) = (expected_integrity, integrity)
        && found != expected
    {
        problems.push(problem(
            ProblemKind::Integrity,
            Some(expected),
            format!("{algorithm} integrity is {found}, manifest records {expected}"),
        ));
    }
    if let Some(snapshot) = check.manifest_of
        && let Some(detail) = manifest_problem(check, snapshot)
    {
        problems.push(problem(ProblemKind::Manifest, Some(snapshot), detail));
    }
    // A file whose content changed is reported as such; its chunk list is
    // checked when the content is the recorded one, to catch a wrong index.
    if let (Some(recorded), Some(found), true) = (recorded, chunks, digest == check.digest)
        && let Some(detail) = chunks_problem(recorded.as_ref(), &found)
    {
        problems.push(problem(ProblemKind::Chunks, check.chunks_of, detail));
    }
    problems
}

/// How a recorded chunk list differs from the one the content gives (cut
/// at the recorded list's size).
fn chunks_problem(recorded: Option<&ChunkList>, found: &ChunkList) -> Option<String> {
    let Some(recorded) = recorded else {
        return Some(
            "no chunk list (recorded before the chunk index); `reindex` computes it".into(),
        );
    };
    let differs = recorded
        .chunks
        .iter()
        .zip(&found.chunks)
        .find(|(r, f)| r != f)
        .map(|(r, f)| r.offset.min(f.offset));
    match differs {
        Some(offset) => Some(format!(
            "chunk list differs from the content from offset {offset}"
        )),
        None if recorded.chunks.len() != found.chunks.len() => Some(format!(
            "index lists {} data chunks, content has {}",
            recorded.chunks.len(),
            found.chunks.len()
        )),
        None => None,
    }
}

fn hash_file(
    check: &Check,
    with_integrity: bool,
    chunk_size: Option<u64>,
    progress: &dyn Progress,
) -> Result<(Digest, Option<Digest>, Option<ChunkList>)> {
    let file = crate::store::files::open_regular(&check.path)?;
    let integrity = check.integrity.as_ref().filter(|_| with_integrity);
    if let Some(size) = chunk_size {
        let (d, i, c) =
            digest_file_chunked(&file, check.size, &check.path, integrity, size, progress)?;
        return Ok((d, i, Some(c)));
    }
    let (d, i) = digest_file(&file, check.size, &check.path, integrity, progress)?;
    Ok((d, i, None))
}

fn manifest_problem(check: &Check, snapshot: Digest) -> Option<String> {
    let bytes = match read_limited(&check.path, MAX_MANIFEST_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => return Some("manifest is larger than 1 MiB".into()),
        Err(e) => return Some(error_line(&e)),
    };
    match Manifest::parse(&bytes) {
        Ok(parsed) if parsed.digest == snapshot => None,
        Ok(parsed) => Some(format!(
            "manifest hashes to {}, but the index records it as {snapshot}",
            parsed.digest
        )),
        Err(e) => Some(e.to_string()),
    }
}

fn error_line(e: &Error) -> String {
    let mut line = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
