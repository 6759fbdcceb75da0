//! The half of `gc` that touches the registry: [`survey`] reads the index
//! and lists the disk, [`apply`] deletes what the plan names.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use super::manifests;
use super::plan::{
    DiskEntry, Doomed, GcOptions, GcPlan, GcReport, IndexView, Kept, KeptReason, Listing,
    image_files, import_id_of, lease_pinned_images, plan,
};
use crate::db::{self, ImportState, now_unix};
use crate::journal::RegistryLock;
use crate::journal::lease::{claim_dead, is_live};
use crate::model::digest::Digest;
use crate::model::error::{Error, IoContext, Result};
use crate::model::image::{CacheFile, CacheKind};
use crate::ops::registry::Registry;
use crate::process::progress::Progress;
use crate::store::files::{
    allocated_bytes, changed_at, remove_dir_if_exists, tree_allocated_bytes,
};
use crate::store::foreign::{self, ArtifactLock};
use crate::store::layout::Layout;
use crate::store::shared_home::{self, HomeReport, MicrosandboxRoots};

/// Everything [`plan`] needs, read from the index and the disk.
#[derive(Debug, Clone)]
pub struct Survey {
    /// The index.
    pub index: IndexView,
    /// The disk.
    pub listing: Listing,
    /// Ids of imports whose lock is held.
    pub live: HashSet<String>,
    /// What the root shares with microsandbox.
    pub home: HomeReport,
}

impl Registry {
    /// Reclaim unreferenced cache artifacts, debris and dead imports; with
    /// `opts.dry_run`, report the plan and delete nothing.
    ///
    /// In a shared home the plan keeps what microsandbox uses and every
    /// artifact whose `.lock` is held; debris changed within `opts.grace`
    /// seconds and unindexed snapshot directories are kept everywhere.
    pub fn gc(&mut self, opts: &GcOptions, progress: &dyn Progress) -> Result<GcReport> {
        let lock = self.lock()?;
        let mut survey = survey(self)?;
        if opts.ignore_unreadable_msb_db && survey.index.microsandbox == MicrosandboxRoots::Unknown
        {
            survey.index.microsandbox = MicrosandboxRoots::None;
            survey.home.overridden = true;
        }
        let now = now_unix();
        let mut plan = plan(
            &survey.index,
            &survey.listing,
            &survey.live,
            now,
            opts.grace,
        );
        let held = held_locks(self.layout(), &plan)?;
        if !held.is_empty() {
            survey.listing.held = held;
            plan = super::plan(
                &survey.index,
                &survey.listing,
                &survey.live,
                now,
                opts.grace,
            );
        }
        let home = survey.home.shared.then_some(survey.home);
        let allocated = allocated_of(self.layout(), &plan);
        if opts.dry_run {
            let mut report = GcReport::new(true, plan.removals);
            report.allocated_bytes = allocated.values().sum();
            report.kept = plan.kept;
            report.microsandbox = home;
            return Ok(report);
        }
        crate::process::failpoint::hit(crate::process::failpoint::GC_PLANNED)?;
        let spared = apply(self, &lock, &plan, progress)?;
        let mut kept = plan.kept;
        kept.extend(
            spared
                .iter()
                .filter(|p| p.starts_with("cache/"))
                .map(|p| Kept::new(KeptReason::LockHeld, p.clone())),
        );
        kept.sort();
        let removed = plan
            .removals
            .into_iter()
            .filter(|r| !spared.contains(&r.path))
            .collect();
        let mut report = GcReport::new(false, removed);
        report.allocated_bytes = allocated
            .iter()
            .filter(|(path, _)| !spared.contains(*path))
            .map(|(_, bytes)| bytes)
            .sum();
        report.kept = kept;
        report.microsandbox = home;
        Ok(report)
    }
}

/// Bytes each file or directory the plan deletes occupies on disk.
fn allocated_of(layout: &Layout, plan: &GcPlan) -> BTreeMap<String, u64> {
    plan.files
        .iter()
        .map(|d| {
            let path = layout.resolve(&d.path);
            let bytes = if d.dir {
                tree_allocated_bytes(&path)
            } else {
                std::fs::symlink_metadata(&path).map_or(0, |m| allocated_bytes(&m))
            };
            (d.path.clone(), bytes)
        })
        .collect()
}

/// The cache files `plan` deletes whose `.lock` another process holds.
fn held_locks(layout: &Layout, plan: &GcPlan) -> Result<HashSet<String>> {
    let mut held = HashSet::new();
    for f in plan.files.iter().filter(|f| f.path.starts_with("cache/")) {
        if foreign::lock_held(&layout.resolve(&f.path))? {
            held.insert(f.path.clone());
        }
    }
    Ok(held)
}

/// Read the index (one read transaction, a fixed number of queries), list
/// the disk, and find the live imports. The caller holds the registry lock.
pub fn survey(registry: &Registry) -> Result<Survey> {
    let (microsandbox, home) = shared_home::roots(registry.layout(), false);
    let index = {
        let tx = registry.db().read()?;
        let live_metadata: Vec<String> = db::gc::pinned_image_refs(&tx)?
            .iter()
            .map(|r| CacheFile::metadata_for_ref(r).rel_path())
            .collect();
        let unpinned_images = db::gc::unpinned_images(&tx)?;
        let unpinned: HashSet<Digest> = unpinned_images.iter().map(|i| i.manifest_digest).collect();
        let images = db::gc::images_with_layers(&tx)?;
        let known_layers = images
            .iter()
            .map(|i| (i.manifest_digest, i.layers.clone()))
            .collect();
        let pinned_files = images
            .iter()
            .filter(|i| !unpinned.contains(&i.manifest_digest))
            .flat_map(image_files)
            .collect();
        let mut leases = db::gc::unfinished_import_paths(&tx)?;
        lease_pinned_images(
            &mut leases,
            &unpinned_images,
            db::gc::unfinished_import_pins(&tx)?,
        );
        IndexView {
            unreachable: db::gc::unreachable_cache_files(&tx, &live_metadata)?,
            unpinned_images,
            cache_paths: db::gc::cache_paths(&tx)?.into_iter().collect(),
            snapshots: db::gc::snapshot_file_names(&tx)?
                .into_iter()
                .map(|(name, files)| (name, files.into_iter().collect()))
                .collect(),
            imports: db::gc::import_entries(&tx)?,
            leases,
            pinned_files,
            removing: db::snapshots::pending_removals(&tx)?
                .into_iter()
                .map(|(digest, name)| (name, digest))
                .collect(),
            digests: db::gc::snapshot_digests(&tx)?,
            known_layers,
            microsandbox,
        }
    };
    let listing = list_disk(registry.layout(), &index)?;
    let mut candidates: BTreeSet<&str> = index
        .imports
        .iter()
        .filter(|i| matches!(i.state, ImportState::Staging | ImportState::Promoting))
        .map(|i| i.id.as_str())
        .collect();
    candidates.extend(listing.staging.iter().map(|e| import_id_of(&e.name)));
    let mut live = HashSet::new();
    for id in candidates {
        if is_live(registry.layout(), id)? {
            live.insert(id.to_string());
        }
    }
    Ok(Survey {
        index,
        listing,
        live,
        home,
    })
}

/// Delete what `plan` names: the rows in one committed transaction, then the
/// files. Staging entries go only while their import's lock is claimed; an
/// import found live by then is spared. A cache file goes only while its
/// `.lock` is taken; one held by then is spared (its row is gone: a later
/// gc removes it as debris once the lock is free). Returns the paths spared.
///
/// On a full file system, where the index cannot take even the deletion
/// (its WAL cannot grow), [`make_room`] deletes files one at a time until
/// the row transaction fits, those without rows first; the rest go after
/// the rows as usual.
pub fn apply(
    registry: &mut Registry,
    _lock: &RegistryLock,
    plan: &GcPlan,
    progress: &dyn Progress,
) -> Result<HashSet<String>> {
    progress.start("gc", Some(plan.files.iter().map(|f| f.bytes).sum()));
    let mut removed: HashSet<&str> = HashSet::new();
    let mut spared = HashSet::new();
    match delete_rows(registry, plan) {
        Ok(()) => {}
        Err(e) if e.is_storage() && !plan.files.is_empty() => {
            make_room(registry, plan, &mut removed, &mut spared, progress)?;
        }
        Err(e) => return Err(e),
    }
    crate::process::failpoint::hit(crate::process::failpoint::GC_ROWS_DELETED)?;
    let layout = registry.layout();
    let mut staging: BTreeMap<&str, Vec<&Doomed>> = BTreeMap::new();
    for doomed in &plan.files {
        if removed.contains(doomed.path.as_str()) || spared.contains(&doomed.path) {
            continue;
        }
        match &doomed.import {
            Some(id) => staging.entry(id.as_str()).or_default().push(doomed),
            None => {
                if remove_one(layout, doomed, &mut spared)? {
                    progress.advance(doomed.bytes);
                }
            }
        }
    }
    for (id, entries) in staging {
        let Some(_claim) = claim_dead(layout, id)? else {
            spared.extend(entries.iter().map(|d| d.path.clone()));
            continue;
        };
        let (locks, others): (Vec<&Doomed>, Vec<&Doomed>) = entries
            .into_iter()
            .partition(|d| !d.dir && d.path.ends_with(".lock"));
        for doomed in others.into_iter().chain(locks) {
            remove(&layout.resolve(&doomed.path), doomed.dir)?;
            crate::process::failpoint::hit(crate::process::failpoint::GC_FILE_REMOVED)?;
            progress.advance(doomed.bytes);
        }
    }
    progress.finish();
    Ok(spared)
}

/// On a full file system: free space one file at a time, retrying the row
/// transaction after each, until it commits. Files no row names go first
/// (debris, quarantine entries), so their deletion leaves nothing stale;
/// only when they free too little does a cache file go before its row. A
/// crash then leaves rows of unreferenced cache files whose files are gone:
/// `verify` reports each (missing), the next gc deletes the rows, and an
/// install that brings such a file puts it back under its row. Staging
/// entries wait for the rows. Fails with the storage error when every file
/// has gone and the rows still do not fit.
fn make_room<'p>(
    registry: &mut Registry,
    plan: &'p GcPlan,
    removed: &mut HashSet<&'p str>,
    spared: &mut HashSet<String>,
    progress: &dyn Progress,
) -> Result<()> {
    let recorded: HashSet<String> = plan
        .cache_rows
        .iter()
        .map(|r| format!("cache/{r}"))
        .collect();
    let (rowless, rowed): (Vec<&Doomed>, Vec<&Doomed>) = plan
        .files
        .iter()
        .filter(|d| d.import.is_none())
        .partition(|d| !recorded.contains(&d.path));
    let mut last = None;
    for doomed in rowless.into_iter().chain(rowed) {
        if !remove_one(registry.layout(), doomed, spared)? {
            continue;
        }
        removed.insert(doomed.path.as_str());
        progress.advance(doomed.bytes);
        match delete_rows(registry, plan) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_storage() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    match last {
        Some(e) => Err(e),
        None => delete_rows(registry, plan),
    }
}

/// Remove one file or directory the plan names that is not a staging
/// entry: a cache file only while its `.lock` is taken (else it is added
/// to `spared` and false returned).
fn remove_one(layout: &Layout, doomed: &Doomed, spared: &mut HashSet<String>) -> Result<bool> {
    let path = layout.resolve(&doomed.path);
    let _artifact = if doomed.path.starts_with("cache/") {
        let Some(lock) = ArtifactLock::try_take(&path)? else {
            spared.insert(doomed.path.clone());
            return Ok(false);
        };
        Some(lock)
    } else {
        None
    };
    remove(&path, doomed.dir)?;
    crate::process::failpoint::hit(crate::process::failpoint::GC_FILE_REMOVED)?;
    Ok(true)
}

/// Delete the rows `plan` names, in one committed transaction.
fn delete_rows(registry: &mut Registry, plan: &GcPlan) -> Result<()> {
    let tx = registry.db_mut().write()?;
    db::gc::delete_rows(&tx, &plan.cache_rows, &plan.image_rows, &plan.import_rows)?;
    Ok(tx.commit()?)
}

fn remove(path: &Path, dir: bool) -> Result<()> {
    if dir {
        return remove_dir_if_exists(path);
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path, e)),
        _ => Ok(()),
    }
}

/// List `cache/<kind>/`, `snapshots/` (and each directory in it) and
/// `staging/`. Entries the index records are not measured (their rows hold
/// their sizes), nor are names that are not ours (see `foreign`: plan
/// leaves them alone); everything else is, directories recursively. Entries that
/// vanish while being listed, and names that are not UTF-8, are left out.
/// `cache/` and `snapshots/` are listed in parallel.
pub fn list_disk(layout: &Layout, index: &IndexView) -> Result<Listing> {
    let now = now_unix();
    let (cache, snapshots) = std::thread::scope(|scope| {
        let cache = scope.spawn(|| -> Result<Vec<(CacheKind, DiskEntry)>> {
            let mut out = Vec::new();
            let mut rel = String::new();
            for kind in CacheKind::ALL {
                let recorded = |name: &str| {
                    rel.clear();
                    rel.push_str(kind.as_str());
                    rel.push('/');
                    rel.push_str(name);
                    index.cache_paths.contains(&rel) || !foreign::is_cache_artifact_name(kind, name)
                };
                out.extend(
                    entries(&layout.cache_kind(kind), recorded, now)?
                        .into_iter()
                        .map(|(e, _)| (kind, e)),
                );
            }
            Ok(out)
        });
        let snapshots = list_snapshots(layout, index, now);
        let cache = cache.join().unwrap_or_else(|_| {
            Err(Error::io(
                "list",
                layout.cache(),
                std::io::Error::other("listing thread panicked"),
            ))
        });
        (cache, snapshots)
    });
    let snapshots = snapshots?;
    let judged = manifests::judge_all(
        layout,
        snapshots
            .iter()
            .filter(|(top, _)| top.dir)
            .map(|(top, _)| top.name.as_str()),
        &index.digests,
    );
    let (unindexed_files, unknown_layers) =
        manifests::pinned_files(layout, &judged.pins, &index.known_layers);
    Ok(Listing {
        cache: cache?,
        snapshots,
        staging: entries(&layout.staging(), |_| false, now)?
            .into_iter()
            .map(|(e, _)| e)
            .collect(),
        held: HashSet::new(),
        manifests: judged.manifests,
        unindexed_pins: judged.pins.iter().map(|p| p.digest).collect(),
        unindexed_files,
        unknown_pins: judged.unknown.or(unknown_layers),
        quarantine: crate::store::quarantine::list(layout, now)?,
    })
}

fn list_snapshots(
    layout: &Layout,
    index: &IndexView,
    now: i64,
) -> Result<Vec<(DiskEntry, Vec<DiskEntry>)>> {
    let mut out = Vec::new();
    for (top, path) in entries(
        &layout.snapshots(),
        |name| index.snapshots.contains_key(name) || !foreign::is_snapshot_dir_name(name),
        now,
    )? {
        let children = match index.snapshots.get(&top.name) {
            Some(files) if top.dir => entries(
                &path,
                |name| files.contains(name) || !foreign::is_snapshot_file_name(name),
                now,
            )?
            .into_iter()
            .map(|(e, _)| e)
            .collect(),
            _ => Vec::new(),
        };
        out.push((top, children));
    }
    Ok(out)
}

/// The entries of `dir`, by name; those `recorded` says the index knows are
/// not measured.
fn entries(
    dir: &Path,
    mut recorded: impl FnMut(&str) -> bool,
    now: i64,
) -> Result<Vec<(DiskEntry, std::path::PathBuf)>> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.at("read directory", dir)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", path, e)),
        };
        let dir = file_type.is_dir();
        let (bytes, changed) = if recorded(&name) {
            (0, 0)
        } else {
            match stat(&path)? {
                None => continue,
                Some(m) if dir => {
                    let (bytes, changed) = tree_bytes(&path, now)?;
                    (bytes, changed.max(changed_at(&m, now)))
                }
                Some(m) => (m.len(), changed_at(&m, now)),
            }
        };
        out.push((
            DiskEntry {
                name,
                dir,
                bytes,
                changed,
            },
            path,
        ));
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

fn stat(path: &Path) -> Result<Option<std::fs::Metadata>> {
    match path.symlink_metadata() {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Apparent bytes under `dir`, and when anything in it last changed.
fn tree_bytes(dir: &Path, now: i64) -> Result<(u64, i64)> {
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    let mut total = 0;
    let mut newest = 0;
    for entry in read {
        let path = entry.at("read directory", dir)?.path();
        match stat(&path)? {
            Some(m) if m.is_dir() => {
                let (bytes, changed) = tree_bytes(&path, now)?;
                total += bytes;
                newest = newest.max(changed).max(changed_at(&m, now));
            }
            Some(m) => {
                total += m.len();
                newest = newest.max(changed_at(&m, now));
            }
            None => {}
        }
    }
    Ok((total, newest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::image::CacheFile;

    fn layer(n: u8) -> String {
        CacheFile {
            kind: CacheKind::Layers,
            key: crate::model::digest::Digest::of(&[n]),
        }
        .rel_path()
    }

    #[test]
    fn apply_spares_an_artifact_whose_lock_is_taken_after_planning() {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Registry::open(dir.path()).unwrap();
        let path = format!("cache/{}", layer(1));
        let file = registry.layout().resolve(&path);
        std::fs::write(&file, vec![1u8; 4096]).unwrap();
        let lock_path = Layout::artifact_lock(&file);
        let holder = std::fs::File::create(&lock_path).unwrap();
        holder.lock().unwrap();
        let plan = GcPlan {
            files: vec![Doomed {
                path: path.clone(),
                dir: false,
                import: None,
                bytes: 4096,
            }],
            ..GcPlan::default()
        };
        let lock = registry.lock().unwrap();
        let spared = apply(
            &mut registry,
            &lock,
            &plan,
            &crate::process::progress::NoProgress,
        )
        .unwrap();
        assert_eq!(spared, [path.clone()].into());
        assert!(file.exists());
        holder.unlock().unwrap();
        let spared = apply(
            &mut registry,
            &lock,
            &plan,
            &crate::process::progress::NoProgress,
        )
        .unwrap();
        assert!(spared.is_empty());
        assert!(!file.exists());
        assert!(lock_path.exists(), "a lock file is never deleted");
    }
}
