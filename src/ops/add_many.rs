//! `add` of several snapshot directories in one command: their order comes
//! from the manifests' parent digests (they may be given in any order), every
//! file is hashed into staging on as many threads as allowed, largest first
//! (as `verify --content` does), and the whole set is installed all or
//! nothing in one journaled promotion, as an import is. Memory does not grow
//! with the data: files and chunk lists go to a spill database as each file
//! is staged, manifests stay on disk until their rows are written.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Serialize;

use crate::db::staging::StagingIndex;
use crate::db::{self, ImportFileRow, SnapshotFileRow};
use crate::journal::Lease;
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::manifest::{ImagePin, Integrity, Upper};
use crate::ops::add::{AddOptions, copy_until, read_manifest, source_files, under_root};
use crate::ops::install::install_checked;
use crate::ops::registry::Registry;
use crate::ops::repair::Repaired;
use crate::ops::sign::{Arriving, admit};
use crate::process::progress::Progress;
use crate::process::{failpoint, interrupt};
use crate::store::files::Piece;
use crate::store::layout::SnapshotName;
use crate::store::pipeline;
use crate::store::stage::{StagedBytes, StagingFile, check_integrity};
use crate::store::staged::{StagedManifest, StagedSet, StagedSnapshot};

/// The most directories one `add` takes: each costs well under 1 KiB
/// until install, so this keeps an add of any size under 64 MiB.
pub const MAX_DIRS: usize = 10_000;

/// Journal rows written per transaction while files are staged.
const JOURNAL_BATCH: usize = 512;

/// What `add` of several directories did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddManyReport {
    /// Each snapshot given, parents first.
    pub snapshots: Vec<AddedSnapshot>,
    /// Cache files newly installed.
    pub cache_files_installed: usize,
    /// Cache files already present with the same content.
    pub cache_files_skipped: usize,
    /// In a shared home whose snapshots this changed: how to refresh
    /// microsandbox's view (`msb snapshot reindex`); null otherwise.
    pub microsandbox_hint: Option<String>,
    /// Damaged copies this add replaced, moved to `quarantine/`.
    pub repaired: Vec<Repaired>,
}

/// One snapshot of a multi-directory `add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddedSnapshot {
    /// The directory it was given as.
    pub dir: String,
    /// Its digest.
    pub digest: Digest,
    /// Its name in the registry.
    pub name: String,
    /// True when it was already present (nothing changed for it).
    pub already_present: bool,
    /// Files of the snapshot.
    pub files: usize,
    /// Logical bytes of its files.
    pub bytes: u64,
}

/// A directory to add, as its manifest describes it.
struct Planned {
    dir: PathBuf,
    digest: Digest,
    parent: Option<Digest>,
    name: SnapshotName,
    upper: Upper,
    image: ImagePin,
}

/// A file to hash into staging.
struct Job {
    snapshot: usize,
    name: String,
    src: PathBuf,
    len: u64,
    target: PathBuf,
    integrity: Option<Integrity>,
}

impl Job {
    /// Its integrity hash runs on a thread of its own.
    fn offloaded(&self) -> bool {
        self.integrity.is_some() && pipeline::offloads(self.len)
    }
}

/// Threads staging `jobs`: as many as may hash at once, or up to the
/// large files in flight when their hashes run on threads of their own
/// (those take turns on the hash slots).
fn workers_for(jobs: &[Job]) -> usize {
    let large = jobs.iter().filter(|j| j.offloaded()).count();
    pipeline::files_at_once()
        .max(large.min(pipeline::large_files_at_once()))
        .min(jobs.len())
        .max(1)
}

/// Copy `job`'s file into staging, hashed on the way and checked against
/// its integrity; hashed inline, it waits for a hash slot first. Ends
/// early once `stop` is set.
fn stage_one(job: &Job, stop: &AtomicBool, progress: &dyn Progress) -> Result<StagedBytes> {
    let stopped = || Error::conflict("add", "stopped: another file failed");
    let go_on = || -> Result<()> {
        if stop.load(Ordering::Relaxed) {
            Err(stopped())
        } else {
            Ok(())
        }
    };
    let copy = || -> Result<StagedBytes> {
        let staged = copy_until(
            &job.src,
            job.len,
            &job.target,
            job.integrity.as_ref(),
            true,
            progress,
            &go_on,
        )?;
        if let Some(integrity) = &job.integrity {
            check_integrity(&job.src.display().to_string(), integrity, staged.integrity)?;
        }
        Ok(staged)
    };
    if job.offloaded() {
        return copy();
    }
    match pipeline::hash_inline(&|| stop.load(Ordering::Relaxed), copy) {
        Some(staged) => staged,
        None => {
            crate::process::interrupt::check()?;
            Err(stopped())
        }
    }
}

/// Refuse what makes no sense for several directories at once.
fn refuse_options(count: usize, opts: &AddOptions) -> Result<()> {
    if count > MAX_DIRS {
        return Err(Error::Usage(format!(
            "add takes at most {MAX_DIRS} directories at once; {count} were given"
        )));
    }
    if opts.name.is_some() {
        return Err(Error::Usage(
            "add --name takes one directory: several would all take that name".into(),
        ));
    }
    if !opts.signatures.is_empty() {
        return Err(Error::Usage(
            "add --signature takes one directory: a signature is of one snapshot; add it alone, or sign after adding (msb-registry sign)".into(),
        ));
    }
    Ok(())
}

impl Registry {
    /// Register the snapshot directories `dirs` (at least two), all or nothing.
    pub fn add_many(
        &mut self,
        dirs: &[PathBuf],
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddManyReport> {
        refuse_options(dirs.len(), opts)?;
        let planned = self.plan_dirs(dirs, opts.allow_shallow)?;
        self.clear_dead_staging()?;
        let label = format!("{} and {} more", dirs[0].display(), dirs.len() - 1);
        let (layout, db) = self.parts();
        let lease = Lease::acquire(layout, db, &label)?;
        let result = self.add_many_leased(&lease, &planned, opts, progress);
        self.end_lease(lease, "add", result)
    }

    /// Read every manifest, order the snapshots parents first and check
    /// what can be checked before anything is hashed.
    fn plan_dirs(&self, dirs: &[PathBuf], allow_shallow: bool) -> Result<Vec<Planned>> {
        let mut planned: Vec<Planned> = Vec::with_capacity(dirs.len());
        let mut by_digest: HashMap<Digest, usize> = HashMap::with_capacity(dirs.len());
        for dir in dirs {
            let parsed = read_manifest(dir)?;
            let resolved = dir.canonicalize().at("resolve", dir)?;
            let base = resolved
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let name = SnapshotName::chosen_for(base, &parsed.digest)?;
            if let Some(&j) = by_digest.get(&parsed.digest) {
                return Err(Error::Usage(format!(
                    "{} and {} hold the same snapshot {}; give it once",
                    planned[j].dir.display(),
                    dir.display(),
                    parsed.digest
                )));
            }
            by_digest.insert(parsed.digest, planned.len());
            let manifest = parsed.manifest;
            planned.push(Planned {
                dir: dir.clone(),
                digest: parsed.digest,
                parent: manifest.parent,
                name,
                upper: manifest.upper,
                image: manifest.image,
            });
        }
        let order = parents_first(&planned, &by_digest)?;
        let mut slots: Vec<Option<Planned>> = planned.into_iter().map(Some).collect();
        let planned: Vec<Planned> = order
            .into_iter()
            .map(|i| slots[i].take().expect("each index once"))
            .collect();
        self.check_planned(&planned, allow_shallow)?;
        Ok(planned)
    }

    /// Each parent among the directories or in the registry (unless
    /// `allow_shallow`), and each new snapshot's name free, naming the
    /// directory at fault. Install checks the names again under its lock.
    fn check_planned(&self, planned: &[Planned], allow_shallow: bool) -> Result<()> {
        let conn = self.db().conn();
        let inside: HashSet<Digest> = planned.iter().map(|p| p.digest).collect();
        let mut named: HashMap<&str, &Path> = HashMap::new();
        for p in planned {
            if let Some(parent) = p.parent
                && !allow_shallow
                && !inside.contains(&parent)
                && db::snapshots::snapshot_by_digest(conn, &parent)?.is_none()
            {
                return Err(Error::NotFound {
                    what: "parent",
                    reference: format!(
                        "{parent}, the parent of {} ({}): neither among the directories given nor in the registry; add its directory too, or pass --allow-shallow",
                        p.digest,
                        p.dir.display()
                    ),
                });
            }
            if db::snapshots::snapshot_by_digest(conn, &p.digest)?.is_some() {
                continue;
            }
            if let Some(other) = named.insert(p.name.as_str(), &p.dir) {
                return Err(Error::conflict(
                    format!("snapshot name {}", p.name),
                    format!(
                        "both {} and {} would take it; add one of them alone with --name",
                        other.display(),
                        p.dir.display()
                    ),
                ));
            }
            if let Some(row) = db::snapshots::snapshot_by_name(conn, p.name.as_str())? {
                return Err(Error::conflict(
                    format!("snapshot name {}", p.name),
                    format!(
                        "already names {}, not {} ({}); add that directory alone with --name",
                        row.digest,
                        p.digest,
                        p.dir.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    fn add_many_leased(
        &mut self,
        lease: &Lease,
        planned: &[Planned],
        opts: &AddOptions,
        progress: &dyn Progress,
    ) -> Result<AddManyReport> {
        let signatures = self.admit_and_pin(lease, planned, opts)?;
        let layout = self.layout().clone();
        let spill = StagingIndex::create(&layout.import_spill(lease.id()))?;
        let mut journal = Journal::default();
        let mut set = StagedSet {
            signatures,
            ..StagedSet::default()
        };
        let mut totals: Vec<(usize, u64)> = vec![(0, 0); planned.len()];
        let mut jobs = Vec::new();
        for (i, p) in planned.iter().enumerate() {
            let dir =
                layout.staged_snapshot(lease.id(), &format!("sha256-{}", &p.digest.hex()[..16]));
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
            for source in source_files(&p.dir, &p.upper)? {
                let target = dir.join(&source.name);
                if source.name == "manifest.json" {
                    let staged = stage_manifest(p, &target)?;
                    self.staged(
                        &spill,
                        &mut journal,
                        lease,
                        p,
                        i,
                        &source.path,
                        &target,
                        "manifest.json",
                        staged,
                        &mut totals,
                    )?;
                    continue;
                }
                let integrity = if source.name == p.upper.file {
                    p.upper.integrity.clone()
                } else {
                    None
                };
                jobs.push(Job {
                    snapshot: i,
                    name: source.name,
                    src: source.path,
                    len: source.len,
                    target,
                    integrity,
                });
            }
            set.snapshots.push(StagedSnapshot {
                manifest: StagedManifest::OnDisk(p.digest),
                name: p.name.clone(),
                fallback: None,
                staged_dir: under_root(layout.root(), &dir),
                files: Vec::new(),
                chunks: Vec::new(),
            });
        }
        progress.start("add", Some(jobs.iter().map(|j| j.len).sum()));
        self.stage_files(
            &jobs,
            &spill,
            &mut journal,
            lease,
            planned,
            &mut totals,
            progress,
        )?;
        drop(jobs);
        if let Some(cache_dir) = &opts.cache_dir {
            self.stage_caches(lease, cache_dir, planned, progress, &mut journal, &mut set)?;
        }
        progress.finish();
        journal.flush(self, lease)?;
        set.spill = Some(Rc::new(spill));
        failpoint::hit(failpoint::ADD_STAGED)?;
        interrupt::check()?;
        let outcome = install_checked(self, lease, &mut set, opts.repair)?;
        failpoint::hit(failpoint::ADD_INSTALLED)?;
        self.added_report(planned, totals, outcome)
    }

    /// The trust policy's verdict on the snapshots (none carries a
    /// signature here: a policy may still refuse them), and the images they
    /// pin held for the lease so gc leaves them be meanwhile.
    fn admit_and_pin(
        &mut self,
        lease: &Lease,
        planned: &[Planned],
        opts: &AddOptions,
    ) -> Result<Vec<crate::db::signatures::SignatureRow>> {
        let trusts = self.trust_policy(&opts.trust)?;
        let arriving: Vec<Arriving> = planned
            .iter()
            .map(|p| Arriving {
                digest: p.digest,
                parent: p.parent,
                signatures: &[],
            })
            .collect();
        let signatures = admit(self.db().conn(), &trusts, &arriving)?;
        let pins: HashSet<Digest> = planned.iter().map(|p| p.image.manifest_digest).collect();
        for pin in &pins {
            db::imports::insert_pin(self.db().conn(), lease.id(), pin)?;
        }
        Ok(signatures)
    }

    /// What the add did, snapshot by snapshot, as the index now has it.
    fn added_report(
        &self,
        planned: &[Planned],
        totals: Vec<(usize, u64)>,
        outcome: crate::ops::install::InstallOutcome,
    ) -> Result<AddManyReport> {
        let imported: HashSet<Digest> = outcome.imported.iter().copied().collect();
        let mut snapshots = Vec::with_capacity(planned.len());
        for (p, (files, bytes)) in planned.iter().zip(totals) {
            let row = db::snapshots::snapshot_by_digest(self.db().conn(), &p.digest)?.ok_or_else(
                || Error::NotFound {
                    what: "snapshot",
                    reference: format!(
                        "{} ({}): removed by another command right after it was added",
                        p.name, p.digest
                    ),
                },
            )?;
            snapshots.push(AddedSnapshot {
                dir: p.dir.display().to_string(),
                digest: p.digest,
                name: row.name,
                already_present: !imported.contains(&p.digest)
                    && !outcome.repaired.iter().any(|r| r.digest == p.digest),
                files,
                bytes,
            });
        }
        Ok(AddManyReport {
            microsandbox_hint: if outcome.imported.is_empty() {
                None
            } else {
                crate::store::shared_home::reindex_hint(self.layout())
            },
            snapshots,
            cache_files_installed: outcome.cache_files_installed,
            cache_files_skipped: outcome.cache_files_skipped,
            repaired: outcome.repaired,
        })
    }

    /// Record a staged file: its row and chunk list in the spill, its
    /// journal row, its count in `totals`.
    #[allow(clippy::too_many_arguments)]
    fn staged(
        &mut self,
        spill: &StagingIndex,
        journal: &mut Journal,
        lease: &Lease,
        p: &Planned,
        snapshot: usize,
        src: &Path,
        target: &Path,
        name: &str,
        staged: StagedBytes,
        totals: &mut [(usize, u64)],
    ) -> Result<()> {
        let index = u32::try_from(snapshot).expect("at most MAX_DIRS snapshots");
        let row = SnapshotFileRow {
            path: name.to_string(),
            size: staged.size,
            digest: staged.digest,
        };
        spill.insert_file(index, &row, staged.chunks.as_ref())?;
        totals[snapshot].0 += 1;
        totals[snapshot].1 += staged.size;
        let root = self.layout().root();
        let file = ImportFileRow {
            member: src.display().to_string(),
            staged_path: under_root(root, target),
            final_path: under_root(root, &self.layout().snapshot_file(&p.name, name)),
            kind: "snapshot".into(),
            size: staged.size,
            digest: staged.digest,
            promote: true,
        };
        journal.push(self, lease, file)
    }

    /// Hash every job into staging, largest first, on up to
    /// [`pipeline::files_at_once`] threads, or up to
    /// [`pipeline::large_files_at_once`] while large files' integrity
    /// hashes run on threads of their own (every hash holds a hash slot);
    /// the first failure stops the rest and is the error. Results are recorded here, on this thread, which
    /// holds the index and the spill.
    #[allow(clippy::too_many_arguments)]
    fn stage_files(
        &mut self,
        jobs: &[Job],
        spill: &StagingIndex,
        journal: &mut Journal,
        lease: &Lease,
        planned: &[Planned],
        totals: &mut [(usize, u64)],
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].len));
        let workers = workers_for(jobs);
        let stop = AtomicBool::new(false);
        let next = AtomicUsize::new(0);
        let run = |job: &Job| stage_one(job, &stop, progress);
        let mut failed: Option<Error> = None;
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel(workers);
            for _ in 0..workers {
                let done_tx = done_tx.clone();
                let (order, next, stop, run) = (&order, &next, &stop, &run);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return;
                        };
                        if done_tx.send((i, run(&jobs[i]))).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(done_tx);
            for (i, result) in done_rx {
                if failed.is_some() {
                    continue;
                }
                let job = &jobs[i];
                let recorded = result.and_then(|staged| {
                    let p = &planned[job.snapshot];
                    self.staged(
                        spill,
                        journal,
                        lease,
                        p,
                        job.snapshot,
                        &job.src,
                        &job.target,
                        &job.name,
                        staged,
                        totals,
                    )
                });
                if let Err(e) = recorded {
                    failed = Some(e);
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stage the artifacts of each image the snapshots pin, once each; a
    /// cache file two images share is staged and installed once.
    fn stage_caches(
        &self,
        lease: &Lease,
        cache_dir: &Path,
        planned: &[Planned],
        progress: &dyn Progress,
        journal: &mut Journal,
        set: &mut StagedSet,
    ) -> Result<()> {
        let mut seen: HashSet<(&str, Digest)> = HashSet::new();
        for p in planned {
            if !seen.insert((p.image.reference.as_str(), p.image.manifest_digest)) {
                continue;
            }
            let mut part = StagedSet::default();
            let mut rows = Vec::new();
            let subdir = format!("cache-{}", seen.len());
            self.stage_cache_in(
                lease, &subdir, cache_dir, &p.image, progress, &mut rows, &mut part,
            )?;
            for (file, row) in part.cache_files.into_iter().zip(rows) {
                match set.cache_files.iter().find(|c| c.file == file.file) {
                    Some(c) if c.digest == file.digest && c.size == file.size => {}
                    Some(_) => {
                        return Err(Error::conflict(
                            format!("{}/{}", cache_dir.display(), file.file.rel_path()),
                            "the images the directories pin hold different copies of it",
                        ));
                    }
                    None => {
                        journal.rows.push(row);
                        set.cache_files.push(file);
                    }
                }
            }
            set.images.extend(part.images);
        }
        Ok(())
    }
}

/// The order to install `planned` in: by depth in the parent links among
/// them (a parent not given counts as none), then as given.
fn parents_first(planned: &[Planned], by_digest: &HashMap<Digest, usize>) -> Result<Vec<usize>> {
    let n = planned.len();
    let mut depth: Vec<Option<usize>> = vec![None; n];
    for start in 0..n {
        let mut path = Vec::new();
        let mut at = Some(start);
        let mut above = 0;
        while let Some(i) = at {
            if let Some(d) = depth[i] {
                above = d + 1;
                break;
            }
            if path.len() > n {
                return Err(Error::integrity(
                    planned[start]
                        .dir
                        .join("manifest.json")
                        .display()
                        .to_string(),
                    "the parent digests of the directories given loop back on themselves",
                ));
            }
            path.push(i);
            at = planned[i].parent.and_then(|d| by_digest.get(&d).copied());
        }
        for (k, &i) in path.iter().rev().enumerate() {
            depth[i] = Some(above + k);
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (depth[i], i));
    Ok(order)
}

/// Stage `p`'s manifest as its canonical bytes, read again: it must still
/// be the manifest the order was planned from.
fn stage_manifest(p: &Planned, target: &Path) -> Result<StagedBytes> {
    let parsed = read_manifest(&p.dir)?;
    if parsed.digest != p.digest {
        return Err(Error::integrity(
            p.dir.join("manifest.json").display().to_string(),
            "changed while being added",
        ));
    }
    let canonical = parsed.manifest.canonical_bytes();
    let mut out = StagingFile::create(target, canonical.len() as u64, None)?.chunked();
    out.piece(Piece::Data(&canonical))?;
    out.finish()
}

/// Journal rows of the staged files, written in batches so that neither
/// memory nor the index's write lock grows with the number of directories.
#[derive(Default)]
struct Journal {
    rows: Vec<ImportFileRow>,
}

impl Journal {
    fn push(&mut self, registry: &mut Registry, lease: &Lease, row: ImportFileRow) -> Result<()> {
        self.rows.push(row);
        if self.rows.len() >= JOURNAL_BATCH {
            self.flush(registry, lease)?;
        }
        Ok(())
    }

    fn flush(&mut self, registry: &mut Registry, lease: &Lease) -> Result<()> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let tx = registry.db_mut().write()?;
        db::imports::insert_import_files(&tx, lease.id(), &self.rows)?;
        tx.commit()?;
        self.rows.clear();
        Ok(())
    }
}
