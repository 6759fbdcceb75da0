//! `gc`: reclaim what nothing live uses, as a plan and then its application.
//!
//! [`survey`] reads the index (set-based queries in one read transaction),
//! lists `cache/`, `snapshots/` and `staging/` once, and finds which imports
//! are live. [`plan`] is a pure function of those inputs and `now`; `--dry-run`
//! prints it, [`apply`] deletes exactly what it names. The whole run holds the
//! registry lock, so no promotion or `rm` interleaves with it.
//!
//! Live: every image a snapshot pins (its metadata, fsmeta, vmdk and every
//! layer it lists; a shared layer lives while any pinning image does), and
//! every path leased by a live import (its journal's staged and final paths,
//! its staging directory and lock). Imports left in `promoting` are never
//! touched here: the next open rolls them back.
//!
//! What gc will not delete: a directory under `snapshots/` that holds a
//! valid manifest but has no row is *unindexed*, not debris (a lost or
//! damaged index looks exactly like that); it is kept and reported, for
//! `reindex` to index or the operator to remove. Debris changed less than
//! the grace period ago (default an hour, like git's `gc.pruneExpire`) is
//! kept too: something may still be writing it.
//!
//! Order: rows are deleted and committed first, files after, so a crash at
//! any instant leaves a live artifact or debris the next gc removes, never a
//! row without its file.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::db::gc::{CacheEntry, ImageLayers, ImportEntry};
use crate::db::{self, ImportState, now_unix};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::files::{changed_at, read_limited};
use crate::image::{CacheFile, CacheKind};
use crate::layout::Layout;
use crate::lease::{claim_dead, is_live, remove_dir_if_exists};
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::progress::Progress;
use crate::registry::{Registry, RegistryLock};

/// Debris changed less than this many seconds ago is left for a later gc.
pub const DEFAULT_GRACE_SECS: u64 = 3600;

/// Finished journal rows are kept this long (seconds) for `sql` queries.
pub const JOURNAL_RETENTION_SECS: i64 = 7 * 24 * 3600;

/// What a removed item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalKind {
    /// An image's row (its files are counted under their own kinds).
    Image,
    /// An image's metadata document.
    Metadata,
    /// A layer EROFS.
    Layer,
    /// An fsmeta EROFS.
    Fsmeta,
    /// A VMDK descriptor.
    Vmdk,
    /// A file or directory under `cache/` or `snapshots/` without a row.
    Debris,
    /// A dead import's staging directory or lock file.
    Staging,
    /// An import journal row (dead, or finished more than 7 days ago).
    Journal,
}

impl RemovalKind {
    /// The name used in reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            RemovalKind::Image => "image",
            RemovalKind::Metadata => "metadata",
            RemovalKind::Layer => "layer",
            RemovalKind::Fsmeta => "fsmeta",
            RemovalKind::Vmdk => "vmdk",
            RemovalKind::Debris => "debris",
            RemovalKind::Staging => "staging",
            RemovalKind::Journal => "journal",
        }
    }

    /// The kind of a cache file's removal.
    pub fn of_cache(kind: CacheKind) -> Self {
        match kind {
            CacheKind::Manifests => RemovalKind::Metadata,
            CacheKind::Layers => RemovalKind::Layer,
            CacheKind::Fsmeta => RemovalKind::Fsmeta,
            CacheKind::Vmdk => RemovalKind::Vmdk,
        }
    }

    /// Whether removing it frees a file or directory (rather than only a row).
    pub fn is_file(&self) -> bool {
        !matches!(self, RemovalKind::Image | RemovalKind::Journal)
    }
}

/// One item a gc removes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Removal {
    /// What it is.
    pub kind: RemovalKind,
    /// Path relative to the root; an image's manifest digest; an import's id.
    pub path: String,
    /// Apparent bytes freed (0 for rows and for files already gone).
    pub bytes: u64,
}

/// What the index says, as gc needs it.
#[derive(Debug, Clone, Default)]
pub struct IndexView {
    /// Images no snapshot pins.
    pub unpinned_images: Vec<ImageLayers>,
    /// Cache rows no pinned image reaches.
    pub unreachable: Vec<CacheEntry>,
    /// Every recorded `<kind>/<file>` under `cache/`.
    pub cache_paths: HashSet<String>,
    /// Every snapshot name with its recorded file names.
    pub snapshots: HashMap<String, HashSet<String>>,
    /// Every import journal row.
    pub imports: Vec<ImportEntry>,
    /// Root-relative paths leased by each unfinished import.
    pub leases: BTreeMap<String, Vec<String>>,
    /// Names of snapshot directories an unfinished `rm` is removing.
    pub removing: HashSet<String>,
    /// `<kind>/<file>` of every artifact a pinned image names: without a
    /// row such a file is unindexed (a damaged index), not debris.
    pub pinned_files: HashSet<String>,
}

/// One entry found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// Its file name.
    pub name: String,
    /// Whether it is a directory.
    pub dir: bool,
    /// Apparent bytes (a directory: everything under it).
    pub bytes: u64,
    /// When it (a directory: anything in it) last changed, Unix seconds
    /// ([`crate::files::changed_at`]); 0 for entries the index records.
    pub changed: i64,
}

/// One listing of `cache/<kind>/`, `snapshots/` (two levels) and `staging/`.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Entries of each `cache/<kind>/`.
    pub cache: Vec<(CacheKind, DiskEntry)>,
    /// Entries of `snapshots/`, each directory with its own entries.
    pub snapshots: Vec<(DiskEntry, Vec<DiskEntry>)>,
    /// Entries of `staging/`.
    pub staging: Vec<DiskEntry>,
    /// Directories of `snapshots/` without a row that hold a valid
    /// manifest, with the digest it hashes to.
    pub manifests: BTreeMap<String, Digest>,
    /// Images those manifests pin: kept with their files, as if pinned.
    pub unindexed_pins: HashSet<Digest>,
}

/// A file or directory a plan deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doomed {
    /// Path relative to the root.
    pub path: String,
    /// Whether it is a directory tree.
    pub dir: bool,
    /// For staging entries: the import whose lock must be claimed first.
    pub import: Option<String>,
    /// Apparent bytes.
    pub bytes: u64,
}

/// Exactly what a gc run deletes.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Every removal, sorted by kind and path: the report.
    pub removals: Vec<Removal>,
    /// Cache rows to delete (`<kind>/<file>`).
    pub cache_rows: Vec<String>,
    /// Image rows to delete.
    pub image_rows: Vec<Digest>,
    /// Import journal rows to delete.
    pub import_rows: Vec<String>,
    /// Files and directories to delete after the rows are committed.
    pub files: Vec<Doomed>,
    /// What looks unreferenced but is kept, and why.
    pub kept: Vec<Kept>,
}

/// Why gc keeps something that has no row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptReason {
    /// A snapshot directory holding a valid manifest the index lacks.
    Unindexed,
    /// Debris changed within the grace period.
    Young,
}

/// Something gc left in place although no row names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Kept {
    /// Why.
    pub reason: KeptReason,
    /// Path relative to the root.
    pub path: String,
    /// For an unindexed snapshot: the digest its manifest hashes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

/// Count and bytes of one kind of removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KindTotal {
    /// The kind.
    pub kind: RemovalKind,
    /// How many.
    pub count: usize,
    /// Apparent bytes.
    pub bytes: u64,
}

/// What gc removed (or, with `--dry-run`, would remove).
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    /// True when nothing was deleted.
    pub dry_run: bool,
    /// Every removed item.
    pub removed: Vec<Removal>,
    /// Files and directories removed.
    pub files: usize,
    /// Apparent bytes freed.
    pub bytes: u64,
    /// Counts and bytes per kind.
    pub totals: Vec<KindTotal>,
    /// What was left in place although no row names it.
    pub kept: Vec<Kept>,
}

impl GcReport {
    fn new(dry_run: bool, removed: Vec<Removal>, kept: Vec<Kept>) -> Self {
        let mut totals: BTreeMap<RemovalKind, KindTotal> = BTreeMap::new();
        for r in &removed {
            let t = totals.entry(r.kind).or_insert(KindTotal {
                kind: r.kind,
                count: 0,
                bytes: 0,
            });
            t.count += 1;
            t.bytes += r.bytes;
        }
        GcReport {
            dry_run,
            files: removed.iter().filter(|r| r.kind.is_file()).count(),
            bytes: removed.iter().map(|r| r.bytes).sum(),
            removed,
            totals: totals.into_values().collect(),
            kept,
        }
    }
}

/// Everything [`plan`] needs, read from the index and the disk.
#[derive(Debug, Clone)]
pub struct Survey {
    /// The index.
    pub index: IndexView,
    /// The disk.
    pub listing: Listing,
    /// Ids of imports whose lock is held.
    pub live: HashSet<String>,
}

impl Registry {
    /// Reclaim unreferenced cache artifacts, debris changed more than
    /// `grace` seconds ago and dead imports; with `dry_run`, report the
    /// plan and delete nothing.
    pub fn gc(&mut self, dry_run: bool, grace: u64, progress: &dyn Progress) -> Result<GcReport> {
        let lock = self.lock()?;
        let survey = survey(self)?;
        let plan = plan(
            &survey.index,
            &survey.listing,
            &survey.live,
            now_unix(),
            grace,
        );
        if dry_run {
            return Ok(GcReport::new(true, plan.removals, plan.kept));
        }
        crate::failpoint::hit(crate::failpoint::GC_PLANNED)?;
        let spared = apply(self, &lock, &plan, progress)?;
        let removed = plan
            .removals
            .into_iter()
            .filter(|r| !spared.contains(&r.path))
            .collect();
        Ok(GcReport::new(false, removed, plan.kept))
    }
}

/// Read the index (one read transaction, a fixed number of queries), list
/// the disk, and find the live imports. The caller holds the registry lock.
pub fn survey(registry: &Registry) -> Result<Survey> {
    let index = {
        let tx = registry.db().read()?;
        let live_metadata: Vec<String> = db::gc::pinned_image_refs(&tx)?
            .iter()
            .map(|r| CacheFile::metadata_for_ref(r).rel_path())
            .collect();
        let unpinned_images = db::gc::unpinned_images(&tx)?;
        let unpinned: HashSet<Digest> = unpinned_images.iter().map(|i| i.manifest_digest).collect();
        let pinned_files = db::gc::images_with_layers(&tx)?
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
                .map(|(_, name)| name)
                .collect(),
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
    })
}

/// Add to each unfinished import's lease the files of every image its
/// snapshots pin that no snapshot in the index pins yet: the import will
/// pin it when it lands, so it is in use already.
fn lease_pinned_images(
    leases: &mut BTreeMap<String, Vec<String>>,
    unpinned: &[ImageLayers],
    pins: Vec<(String, Digest)>,
) {
    let by_digest: HashMap<Digest, &ImageLayers> =
        unpinned.iter().map(|i| (i.manifest_digest, i)).collect();
    for (import, digest) in pins {
        if let Some(image) = by_digest.get(&digest) {
            let paths = image_files(image).into_iter().map(|f| format!("cache/{f}"));
            leases.entry(import).or_default().extend(paths);
        }
    }
}

/// The import a `staging/` entry belongs to: `<id>` or `<id>.lock`.
fn import_id_of(name: &str) -> &str {
    name.strip_suffix(".lock").unwrap_or(name)
}

/// Decide what goes. Pure: the same inputs give the same plan.
pub fn plan(
    index: &IndexView,
    listing: &Listing,
    live: &HashSet<String>,
    now: i64,
    grace: u64,
) -> GcPlan {
    let young_since = now.saturating_sub(i64::try_from(grace).unwrap_or(i64::MAX));
    let protected: HashSet<&str> = index
        .imports
        .iter()
        .filter(|i| i.state == ImportState::Promoting)
        .map(|i| i.id.as_str())
        .chain(live.iter().map(|s| s.as_str()))
        .collect();
    let leased: BTreeSet<&str> = index
        .leases
        .iter()
        .filter(|(id, _)| protected.contains(id.as_str()))
        .flat_map(|(_, paths)| paths.iter().map(|p| p.as_str()))
        .collect();
    let is_leased = |path: &str| {
        if leased.is_empty() {
            return false;
        }
        let under = format!("{path}/");
        leased.contains(path)
            || leased
                .range(under.as_str()..)
                .next()
                .is_some_and(|p| p.starts_with(&under))
    };
    let cache_rel = |f: &str| format!("cache/{f}");

    let mut plan = GcPlan::default();
    let on_disk: HashSet<(CacheKind, &str)> = listing
        .cache
        .iter()
        .map(|(kind, e)| (*kind, e.name.as_str()))
        .collect();

    let mut kept: HashSet<String> = HashSet::new();
    for image in &index.unpinned_images {
        let files = image_files(image);
        if files.iter().any(|f| is_leased(&cache_rel(f)))
            || listing.unindexed_pins.contains(&image.manifest_digest)
        {
            kept.extend(files);
        } else {
            plan.image_rows.push(image.manifest_digest);
            plan.removals.push(Removal {
                kind: RemovalKind::Image,
                path: image.manifest_digest.to_string(),
                bytes: 0,
            });
        }
    }

    for row in &index.unreachable {
        let Some(file) = CacheFile::parse_rel(&row.path) else {
            continue;
        };
        let path = cache_rel(&row.path);
        if kept.contains(&row.path) || is_leased(&path) {
            continue;
        }
        plan.cache_rows.push(row.path.clone());
        let present = row
            .path
            .split_once('/')
            .is_some_and(|(_, name)| on_disk.contains(&(file.kind, name)));
        let bytes = if present { row.size } else { 0 };
        if present {
            plan.files.push(Doomed {
                path: path.clone(),
                dir: false,
                import: None,
                bytes,
            });
        }
        plan.removals.push(Removal {
            kind: RemovalKind::of_cache(file.kind),
            path,
            bytes,
        });
    }

    let debris = |path: String, e: &DiskEntry, plan: &mut GcPlan| {
        if is_leased(&path) {
            return;
        }
        if e.changed > young_since {
            plan.kept.push(Kept {
                reason: KeptReason::Young,
                path,
                digest: None,
            });
            return;
        }
        plan.files.push(Doomed {
            path: path.clone(),
            dir: e.dir,
            import: None,
            bytes: e.bytes,
        });
        plan.removals.push(Removal {
            kind: RemovalKind::Debris,
            path,
            bytes: e.bytes,
        });
    };
    let mut rel = String::new();
    for (kind, e) in &listing.cache {
        rel.clear();
        rel.push_str(kind.as_str());
        rel.push('/');
        rel.push_str(&e.name);
        if !e.dir && !index.cache_paths.contains(&rel) && index.pinned_files.contains(&rel) {
            plan.kept.push(Kept {
                reason: KeptReason::Unindexed,
                path: cache_rel(&rel),
                digest: None,
            });
        } else if e.dir || !index.cache_paths.contains(&rel) {
            debris(cache_rel(&rel), e, &mut plan);
        }
    }
    for (top, children) in &listing.snapshots {
        let path = format!("snapshots/{}", top.name);
        match index.snapshots.get(&top.name) {
            None => match listing.manifests.get(&top.name) {
                Some(digest) if !index.removing.contains(&top.name) && !is_leased(&path) => {
                    plan.kept.push(Kept {
                        reason: KeptReason::Unindexed,
                        path,
                        digest: Some(*digest),
                    });
                }
                _ => debris(path, top, &mut plan),
            },
            Some(files) if top.dir => {
                for c in children {
                    if c.dir || !files.contains(&c.name) {
                        debris(format!("{path}/{}", c.name), c, &mut plan);
                    }
                }
            }
            Some(_) => {}
        }
    }

    for e in &listing.staging {
        let id = import_id_of(&e.name);
        if protected.contains(id) {
            continue;
        }
        let path = format!("staging/{}", e.name);
        plan.files.push(Doomed {
            path: path.clone(),
            dir: e.dir,
            import: Some(id.to_string()),
            bytes: e.bytes,
        });
        plan.removals.push(Removal {
            kind: RemovalKind::Staging,
            path,
            bytes: e.bytes,
        });
    }

    for import in &index.imports {
        let expired = import
            .finished_at
            .is_some_and(|t| t <= now - JOURNAL_RETENTION_SECS);
        let goes = match import.state {
            ImportState::Staging => !live.contains(&import.id),
            ImportState::Promoting => false,
            ImportState::Done | ImportState::Failed => expired,
        };
        if goes {
            plan.import_rows.push(import.id.clone());
            plan.removals.push(Removal {
                kind: RemovalKind::Journal,
                path: import.id.clone(),
                bytes: 0,
            });
        }
    }

    plan.removals.sort();
    plan.kept.sort();
    plan.cache_rows.sort();
    plan.image_rows.sort();
    plan.import_rows.sort();
    plan.files.sort_by(|a, b| a.path.cmp(&b.path));
    plan
}

/// `<kind>/<file>` of every cache file an image owns: metadata, fsmeta, vmdk, layers.
fn image_files(image: &ImageLayers) -> Vec<String> {
    let mut files = vec![image.metadata_file.clone()];
    for kind in [CacheKind::Fsmeta, CacheKind::Vmdk] {
        files.push(
            CacheFile {
                kind,
                key: image.manifest_digest,
            }
            .rel_path(),
        );
    }
    files.extend(image.layers.iter().map(|d| {
        CacheFile {
            kind: CacheKind::Layers,
            key: *d,
        }
        .rel_path()
    }));
    files
}

/// Delete what `plan` names: the rows in one committed transaction, then the
/// files. Staging entries go only while their import's lock is claimed; an
/// import found live by then is spared. Returns the paths spared.
pub fn apply(
    registry: &mut Registry,
    _lock: &RegistryLock,
    plan: &GcPlan,
    progress: &dyn Progress,
) -> Result<HashSet<String>> {
    {
        let tx = registry.db_mut().write()?;
        db::gc::delete_rows(&tx, &plan.cache_rows, &plan.image_rows, &plan.import_rows)?;
        tx.commit()?;
    }
    crate::failpoint::hit(crate::failpoint::GC_ROWS_DELETED)?;
    let layout = registry.layout();
    progress.start("gc", Some(plan.files.iter().map(|f| f.bytes).sum()));
    let mut staging: BTreeMap<&str, Vec<&Doomed>> = BTreeMap::new();
    for doomed in &plan.files {
        match &doomed.import {
            Some(id) => staging.entry(id.as_str()).or_default().push(doomed),
            None => {
                remove(&layout.resolve(&doomed.path), doomed.dir)?;
                crate::failpoint::hit(crate::failpoint::GC_FILE_REMOVED)?;
                progress.advance(doomed.bytes);
            }
        }
    }
    let mut spared = HashSet::new();
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
            crate::failpoint::hit(crate::failpoint::GC_FILE_REMOVED)?;
            progress.advance(doomed.bytes);
        }
    }
    progress.finish();
    Ok(spared)
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
/// their sizes); everything else is, directories recursively. Entries that
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
                    index.cache_paths.contains(&rel)
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
    let mut manifests = BTreeMap::new();
    let mut unindexed_pins = HashSet::new();
    for (top, _) in &snapshots {
        if top.dir
            && !index.snapshots.contains_key(&top.name)
            && let Some((digest, image)) = valid_manifest(&layout.snapshots().join(&top.name))
        {
            manifests.insert(top.name.clone(), digest);
            unindexed_pins.insert(image);
        }
    }
    Ok(Listing {
        cache: cache?,
        snapshots,
        staging: entries(&layout.staging(), |_| false, now)?
            .into_iter()
            .map(|(e, _)| e)
            .collect(),
        manifests,
        unindexed_pins,
    })
}

/// The digest of `dir/manifest.json` and the image it pins, when it is a
/// regular file holding a valid manifest.
fn valid_manifest(dir: &Path) -> Option<(Digest, Digest)> {
    let path = dir.join("manifest.json");
    if !path.symlink_metadata().ok()?.is_file() {
        return None;
    }
    let bytes = read_limited(&path, MAX_MANIFEST_BYTES).ok()??;
    Manifest::parse(&bytes)
        .ok()
        .map(|m| (m.digest, m.manifest.image.manifest_digest))
}

fn list_snapshots(
    layout: &Layout,
    index: &IndexView,
    now: i64,
) -> Result<Vec<(DiskEntry, Vec<DiskEntry>)>> {
    let mut out = Vec::new();
    for (top, path) in entries(
        &layout.snapshots(),
        |name| index.snapshots.contains_key(name),
        now,
    )? {
        let children = match index.snapshots.get(&top.name) {
            Some(files) if top.dir => entries(&path, |name| files.contains(name), now)?
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

    fn d(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn layer(n: u8) -> String {
        CacheFile {
            kind: CacheKind::Layers,
            key: d(n),
        }
        .rel_path()
    }

    fn file(name: &str, bytes: u64) -> DiskEntry {
        DiskEntry {
            name: name.into(),
            dir: false,
            bytes,
            changed: 0,
        }
    }

    fn dir(name: &str, bytes: u64) -> DiskEntry {
        DiskEntry {
            name: name.into(),
            dir: true,
            bytes,
            changed: 0,
        }
    }

    fn entry(path: &str, size: u64) -> CacheEntry {
        CacheEntry {
            path: path.into(),
            size,
            digest: d(0),
        }
    }

    /// An index and listing holding the given cache rows (all present on disk).
    fn with_cache(rows: &[&str]) -> (IndexView, Listing) {
        let mut index = IndexView::default();
        let mut listing = Listing::default();
        for (i, r) in rows.iter().enumerate() {
            index.cache_paths.insert(r.to_string());
            let f = CacheFile::parse_rel(r).unwrap();
            listing
                .cache
                .push((f.kind, file(&f.file_name(), 4096 * (i as u64 + 1))));
        }
        (index, listing)
    }

    fn kinds(plan: &GcPlan) -> Vec<(RemovalKind, &str)> {
        plan.removals
            .iter()
            .map(|r| (r.kind, r.path.as_str()))
            .collect()
    }

    #[test]
    fn images_pinned_by_unfinished_imports_join_their_leases() {
        let image = ImageLayers {
            manifest_digest: d(10),
            metadata_file: "manifests/aa.json".into(),
            layers: vec![d(1), d(2)],
        };
        let mut leases = BTreeMap::new();
        leases.insert("i".to_string(), vec!["staging/i/x".to_string()]);
        lease_pinned_images(
            &mut leases,
            std::slice::from_ref(&image),
            vec![("i".into(), d(10)), ("j".into(), d(11))],
        );
        let mut expected = vec!["staging/i/x".to_string()];
        expected.extend(
            image_files(&image)
                .into_iter()
                .map(|f| format!("cache/{f}")),
        );
        assert_eq!(leases["i"], expected);
        assert!(expected.contains(&format!("cache/{}", layer(2))));
        // An image pinned by a snapshot already is not in `unpinned`: no lease needed.
        assert!(!leases.contains_key("j"));
    }

    #[test]
    fn nothing_to_do_on_a_clean_registry() {
        let (mut index, mut listing) = with_cache(&[&layer(1)]);
        index
            .snapshots
            .insert("a".into(), ["manifest.json".to_string()].into());
        listing
            .snapshots
            .push((dir("a", 10), vec![file("manifest.json", 10)]));
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(plan.removals.is_empty(), "{:?}", plan.removals);
        assert!(plan.files.is_empty());
    }

    #[test]
    fn unpinned_image_goes_with_its_unreachable_files() {
        let meta = format!("manifests/{}.json", d(9).hex());
        let (mut index, listing) = with_cache(&[&layer(1), &layer(2), &meta]);
        index.unpinned_images.push(ImageLayers {
            manifest_digest: d(5),
            metadata_file: meta.clone(),
            layers: vec![d(1), d(2)],
        });
        // layer 2 is shared with a pinned image, so SQL does not call it unreachable
        index.unreachable = vec![entry(&layer(1), 4096), entry(&meta, 12288)];
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        let layer1 = format!("cache/{}", layer(1));
        let meta_path = format!("cache/{meta}");
        let d5 = d(5).to_string();
        assert_eq!(
            kinds(&plan),
            vec![
                (RemovalKind::Image, d5.as_str()),
                (RemovalKind::Metadata, meta_path.as_str()),
                (RemovalKind::Layer, layer1.as_str()),
            ]
        );
        assert_eq!(plan.image_rows, vec![d(5)]);
        assert_eq!(plan.cache_rows.len(), 2);
        assert_eq!(plan.files.len(), 2);
        assert_eq!(
            plan.removals.iter().map(|r| r.bytes).sum::<u64>(),
            4096 + 12288
        );
    }

    #[test]
    fn a_row_whose_file_is_gone_loses_only_its_row() {
        let (mut index, listing) = with_cache(&[]);
        index.cache_paths.insert(layer(3));
        index.unreachable = vec![entry(&layer(3), 4096)];
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(plan.cache_rows, vec![layer(3)]);
        assert!(plan.files.is_empty());
        assert_eq!(plan.removals[0].bytes, 0);
    }

    #[test]
    fn files_without_rows_are_debris() {
        let (mut index, mut listing) = with_cache(&[&layer(1)]);
        listing.cache.push((CacheKind::Layers, file("stray", 7)));
        listing.cache.push((CacheKind::Vmdk, dir("oops", 3)));
        index
            .snapshots
            .insert("a".into(), ["manifest.json".to_string()].into());
        listing.snapshots.push((
            dir("a", 15),
            vec![file("manifest.json", 10), file("extra", 5)],
        ));
        listing.snapshots.push((dir("ghost", 100), vec![]));
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(
            kinds(&plan),
            vec![
                (RemovalKind::Debris, "cache/layers/stray"),
                (RemovalKind::Debris, "cache/vmdk/oops"),
                (RemovalKind::Debris, "snapshots/a/extra"),
                (RemovalKind::Debris, "snapshots/ghost"),
            ]
        );
        assert!(plan.cache_rows.is_empty());
        assert!(
            plan.files
                .iter()
                .any(|f| f.path == "snapshots/ghost" && f.dir)
        );
    }

    #[test]
    fn live_imports_keep_their_staging_and_leased_paths() {
        let (mut index, mut listing) = with_cache(&[&layer(1)]);
        index.unreachable = vec![entry(&layer(1), 4096)];
        index.imports = vec![
            ImportEntry {
                id: "live".into(),
                state: ImportState::Staging,
                finished_at: None,
            },
            ImportEntry {
                id: "dead".into(),
                state: ImportState::Staging,
                finished_at: None,
            },
        ];
        index.leases.insert(
            "live".into(),
            vec![
                "staging/live/x".into(),
                format!("cache/{}", layer(1)),
                "snapshots/new/upper.ext4".into(),
            ],
        );
        index
            .leases
            .insert("dead".into(), vec!["snapshots/old/upper.ext4".into()]);
        listing.snapshots.push((dir("new", 1), vec![]));
        listing.snapshots.push((dir("old", 1), vec![]));
        listing.staging = vec![
            dir("live", 1),
            file("live.lock", 0),
            dir("dead", 2),
            file("dead.lock", 0),
            dir("rm-abc", 3),
        ];
        let live: HashSet<String> = ["live".to_string()].into();
        let plan = plan(&index, &listing, &live, 0, 0);
        assert_eq!(
            kinds(&plan),
            vec![
                (RemovalKind::Debris, "snapshots/old"),
                (RemovalKind::Staging, "staging/dead"),
                (RemovalKind::Staging, "staging/dead.lock"),
                (RemovalKind::Staging, "staging/rm-abc"),
                (RemovalKind::Journal, "dead"),
            ]
        );
        let claimed: Vec<_> = plan.files.iter().filter_map(|f| f.import.clone()).collect();
        assert_eq!(claimed, ["dead", "dead", "rm-abc"]);
    }

    #[test]
    fn an_unpinned_image_an_import_is_installing_stays_whole() {
        let meta = format!("manifests/{}.json", d(9).hex());
        let (mut index, listing) = with_cache(&[&layer(1), &meta]);
        index.unpinned_images.push(ImageLayers {
            manifest_digest: d(5),
            metadata_file: meta.clone(),
            layers: vec![d(1)],
        });
        index.unreachable = vec![entry(&layer(1), 4096), entry(&meta, 1)];
        index.imports = vec![ImportEntry {
            id: "i".into(),
            state: ImportState::Staging,
            finished_at: None,
        }];
        index
            .leases
            .insert("i".into(), vec![format!("cache/{meta}")]);
        let live: HashSet<String> = ["i".to_string()].into();
        assert!(plan(&index, &listing, &live, 0, 0).removals.is_empty());
        let dead = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(dead.image_rows, vec![d(5)]);
        assert_eq!(dead.cache_rows.len(), 2);
    }

    #[test]
    fn promoting_imports_are_left_to_recovery() {
        let (mut index, mut listing) = with_cache(&[]);
        index.imports = vec![ImportEntry {
            id: "p".into(),
            state: ImportState::Promoting,
            finished_at: None,
        }];
        index
            .leases
            .insert("p".into(), vec!["snapshots/half/upper.ext4".into()]);
        listing.snapshots.push((dir("half", 1), vec![]));
        listing.staging = vec![dir("p", 1), file("p.lock", 0)];
        assert!(
            plan(&index, &listing, &HashSet::new(), 0, 0)
                .removals
                .is_empty()
        );
    }

    #[test]
    fn finished_journal_rows_expire_after_seven_days() {
        let (mut index, listing) = with_cache(&[]);
        let now = 100 * 24 * 3600;
        for (id, state, age) in [
            ("old-done", ImportState::Done, 8),
            ("old-failed", ImportState::Failed, 7),
            ("recent", ImportState::Done, 6),
        ] {
            index.imports.push(ImportEntry {
                id: id.into(),
                state,
                finished_at: Some(now - age * 24 * 3600),
            });
        }
        let plan = plan(&index, &listing, &HashSet::new(), now, 0);
        assert_eq!(plan.import_rows, ["old-done", "old-failed"]);
        assert!(plan.files.is_empty());
    }

    #[test]
    fn a_snapshot_directory_with_a_valid_manifest_is_unindexed_not_debris() {
        let (mut index, mut listing) = with_cache(&[]);
        listing.snapshots.push((dir("lost", 10), vec![]));
        listing.snapshots.push((dir("removing", 10), vec![]));
        listing.snapshots.push((dir("junk", 10), vec![]));
        for name in ["lost", "removing"] {
            listing.manifests.insert(name.into(), d(1));
        }
        index.removing.insert("removing".into());
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(
            plan.kept,
            [Kept {
                reason: KeptReason::Unindexed,
                path: "snapshots/lost".into(),
                digest: Some(d(1)),
            }]
        );
        assert_eq!(
            kinds(&plan),
            [
                (RemovalKind::Debris, "snapshots/junk"),
                (RemovalKind::Debris, "snapshots/removing"),
            ]
        );
    }

    #[test]
    fn young_debris_is_kept_until_the_grace_period_ends() {
        let (index, mut listing) = with_cache(&[]);
        let now = 10_000;
        for (name, changed) in [("old", now - 3600), ("young", now - 3599)] {
            let mut e = file(name, 1);
            e.changed = changed;
            listing.cache.push((CacheKind::Layers, e));
        }
        let plan = plan(&index, &listing, &HashSet::new(), now, 3600);
        assert_eq!(kinds(&plan), [(RemovalKind::Debris, "cache/layers/old")]);
        assert_eq!(plan.kept[0].path, "cache/layers/young");
        assert_eq!(plan.kept[0].reason, KeptReason::Young);
    }

    #[test]
    fn a_damaged_index_costs_no_pinned_image_its_files() {
        let meta = format!("manifests/{}.json", d(9).hex());
        let (mut index, mut listing) = with_cache(&[&meta]);
        // fsmeta of a pinned image whose row was lost.
        let fsmeta = CacheFile {
            kind: CacheKind::Fsmeta,
            key: d(5),
        };
        listing
            .cache
            .push((CacheKind::Fsmeta, file(&fsmeta.file_name(), 8)));
        index.pinned_files.insert(fsmeta.rel_path());
        // An image only an unindexed snapshot pins.
        index.unpinned_images.push(ImageLayers {
            manifest_digest: d(6),
            metadata_file: meta.clone(),
            layers: vec![],
        });
        index.unreachable = vec![entry(&meta, 1)];
        listing.unindexed_pins.insert(d(6));
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(plan.removals.is_empty(), "{:?}", plan.removals);
        assert_eq!(plan.kept.len(), 1);
        assert_eq!(plan.kept[0].reason, KeptReason::Unindexed);
    }

    #[test]
    fn plans_are_deterministic() {
        let (mut index, mut listing) = with_cache(&[&layer(1), &layer(2)]);
        index.unreachable = vec![entry(&layer(2), 1), entry(&layer(1), 1)];
        listing.cache.reverse();
        listing.staging = vec![dir("b", 1), dir("a", 1)];
        let a = plan(&index, &listing, &HashSet::new(), 0, 0);
        listing.staging.reverse();
        index.unreachable.reverse();
        let b = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(a.removals, b.removals);
        assert_eq!(a.files, b.files);
    }
}
