//! The pure half of `gc`: what the index and a disk listing say may go.
//! [`plan`] is a function of its inputs and `now`, unit-tested below with
//! tiny builders; nothing here reads the disk or the database.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::db::ImportState;
use crate::db::gc::{CacheEntry, ImageLayers, ImportEntry};
use crate::model::digest::Digest;
use crate::model::image::{CacheFile, CacheKind};
use crate::store::foreign::{self, HELD_REASON};
use crate::store::quarantine::QuarantineEntry;
use crate::store::shared_home::{HomeReport, MicrosandboxRoots};

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
    /// A damaged copy a repair moved to `quarantine/`, older than the grace period.
    Quarantine,
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
            RemovalKind::Quarantine => "quarantine",
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
    /// The cache artifacts microsandbox uses, in a shared home.
    pub microsandbox: MicrosandboxRoots,
    /// Names of snapshot directories an unfinished `rm` is removing, with
    /// the digest of the snapshot it removes.
    pub removing: HashMap<String, Digest>,
    /// The digest of the snapshot each indexed name holds.
    pub digests: HashMap<String, Digest>,
    /// The layer `diff_id`s of every image the index records.
    pub known_layers: HashMap<Digest, Vec<Digest>>,
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
    /// ([`crate::store::files::changed_at`]); 0 for entries the index records.
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
    /// Root-relative paths of artifacts whose `.lock` another process holds.
    pub held: HashSet<String>,
    /// What the `manifest.json` of each directory of `snapshots/` is.
    pub manifests: BTreeMap<String, ManifestState>,
    /// Images pinned by manifests on disk that are not their directory's
    /// row (unindexed or mismatched snapshots): kept with their files.
    pub unindexed_pins: HashSet<Digest>,
    /// `<kind>/<file>` of every cache artifact those images name.
    pub unindexed_files: HashSet<String>,
    /// Set when one of those images' layers cannot be listed (its metadata
    /// is absent or unreadable and the index does not know it): every
    /// layer without a row is kept. The text says which snapshot and why.
    pub unknown_pins: Option<String>,
    /// Entries of `quarantine/`.
    pub quarantine: Vec<QuarantineEntry>,
}

/// What a snapshot directory's `manifest.json` is, as gc judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestState {
    /// A valid manifest hashing to this digest.
    Valid(Digest),
    /// No regular file `manifest.json`: not a snapshot.
    Absent,
    /// A file that is not JSON at all: not a snapshot.
    NotJson,
    /// JSON that is not a manifest msb-registry can validate (an unknown
    /// integrity algorithm, a newer schema, …): maybe a snapshot, so kept.
    Unvalidated(String),
}

impl ManifestState {
    /// Whether the directory is provably not a snapshot.
    pub fn not_a_snapshot(&self) -> bool {
        matches!(self, ManifestState::Absent | ManifestState::NotJson)
    }
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
    /// Cache artifacts that would go but are kept for microsandbox.
    pub kept: Vec<Kept>,
}

/// Why gc keeps something that looks unreferenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeptReason {
    /// A snapshot directory holding a valid manifest the index lacks, or a
    /// file a pinned image names without a row: a damaged index, not debris.
    Unindexed,
    /// Debris changed within the grace period: something may still write it.
    Young,
    /// microsandbox's index (`db/msb.db`) names it.
    InUse,
    /// microsandbox's use of the cache cannot be known (`db/msb.db` unusable).
    UnknownUse,
    /// Its `.lock` is held: microsandbox is materializing or using it.
    LockHeld,
    /// A snapshot directory whose `manifest.json` is JSON msb-registry
    /// cannot validate: maybe a snapshot, never debris.
    Unvalidated,
    /// An indexed name whose directory holds another snapshot, or a
    /// manifest that is absent or cannot be validated: nothing in it goes.
    Mismatch,
    /// An image (or its file) pinned by a snapshot the index lacks.
    PinnedUnindexed,
    /// A layer file without a row while an unindexed snapshot pins an
    /// image whose layers cannot be listed.
    UnknownPins,
    /// A damaged copy a repair moved to `quarantine/` within the grace period.
    Quarantined,
}

impl KeptReason {
    /// What the reason means, for people.
    pub fn describe(&self) -> &'static str {
        match self {
            KeptReason::Unindexed => "no row, but it is not debris (run `msb-registry reindex`)",
            KeptReason::Young => "changed within the grace period (--grace)",
            KeptReason::InUse => IN_USE_REASON,
            KeptReason::UnknownUse => UNKNOWN_REASON,
            KeptReason::LockHeld => HELD_REASON,
            KeptReason::Unvalidated => {
                "its manifest.json is JSON this msb-registry cannot validate: maybe a snapshot, never debris (`msb-registry verify` says why)"
            }
            KeptReason::Mismatch => {
                "the index records another snapshot under this name: nothing in it is deleted (`msb-registry verify` says what differs)"
            }
            KeptReason::PinnedUnindexed => {
                "an unindexed snapshot pins it (run `msb-registry reindex`)"
            }
            KeptReason::UnknownPins => {
                "an unindexed snapshot pins an image whose layers cannot be listed (run `msb-registry reindex`)"
            }
            KeptReason::Quarantined => {
                "a damaged copy a repair moved aside, quarantined within the grace period (--grace); `msb-registry quarantine rm` removes it now"
            }
        }
    }
}

/// Something gc left in place although it looks unreferenced.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Kept {
    /// Path relative to the root (an image: its manifest digest).
    pub path: String,
    /// Why.
    pub reason: KeptReason,
    /// The reason in words.
    pub detail: &'static str,
    /// For an unindexed snapshot: the digest its manifest hashes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Specifics, when there are any (why a manifest cannot be validated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Kept {
    /// `path` kept for `reason`.
    pub fn new(reason: KeptReason, path: String) -> Self {
        Kept {
            reason,
            path,
            detail: reason.describe(),
            digest: None,
            why: None,
        }
    }

    /// The same, with specifics.
    pub fn because(reason: KeptReason, path: String, why: String) -> Self {
        Kept {
            why: Some(why),
            ..Kept::new(reason, path)
        }
    }
}

/// Why gc keeps what microsandbox's index names.
pub const IN_USE_REASON: &str = "microsandbox uses it (db/msb.db)";

/// Why gc keeps every cache artifact when microsandbox's use is unknown.
pub const UNKNOWN_REASON: &str = "microsandbox's use of the cache is unknown";

/// Debris changed less than this many seconds ago is left for a later gc.
pub const DEFAULT_GRACE_SECS: u64 = 3600;

/// How to run gc.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Report the plan and delete nothing.
    pub dry_run: bool,
    /// In a shared home whose `db/msb.db` cannot be read: sweep the cache
    /// as if microsandbox used nothing. Dangerous.
    pub ignore_unreadable_msb_db: bool,
    /// Debris changed less than this many seconds ago stays.
    pub grace: u64,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            dry_run: false,
            ignore_unreadable_msb_db: false,
            grace: DEFAULT_GRACE_SECS,
        }
    }
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
    /// Bytes freed on disk (allocated blocks): what a sparse file really costs.
    pub allocated_bytes: u64,
    /// Counts and bytes per kind.
    pub totals: Vec<KindTotal>,
    /// Cache artifacts kept for microsandbox, each with its reason.
    pub kept: Vec<Kept>,
    /// What the root shares with microsandbox.
    pub microsandbox: Option<HomeReport>,
}

impl GcReport {
    pub(super) fn new(dry_run: bool, removed: Vec<Removal>) -> Self {
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
            allocated_bytes: 0,
            removed,
            totals: totals.into_values().collect(),
            kept: Vec::new(),
            microsandbox: None,
        }
    }
}

/// Add to each unfinished import's lease the files of every image its
/// snapshots pin that no snapshot in the index pins yet: the import will
/// pin it when it lands, so it is in use already.
pub(super) fn lease_pinned_images(
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
pub(super) fn import_id_of(name: &str) -> &str {
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
    let leased = Leased(
        index
            .leases
            .iter()
            .filter(|(id, _)| protected.contains(id.as_str()))
            .flat_map(|(_, paths)| paths.iter().map(|p| p.as_str()))
            .collect(),
    );

    let mut plan = GcPlan::default();
    let kept = plan_images(index, listing, &leased, &mut plan);
    plan_cache_rows(index, listing, &leased, &kept, &mut plan);
    plan_debris(index, listing, &leased, young_since, &mut plan);
    let resuming = plan_staging(index, listing, &protected, young_since, &mut plan);
    plan_quarantine(listing, young_since, &mut plan);
    plan_journal(index, live, &resuming, now, &mut plan);

    plan.removals.sort();
    plan.kept.sort();
    plan.cache_rows.sort();
    plan.image_rows.sort();
    plan.import_rows.sort();
    plan.files.sort_by(|a, b| a.path.cmp(&b.path));
    plan
}

/// Quarantine entries go once quarantined longer than the grace period;
/// younger ones are kept, and said so.
fn plan_quarantine(listing: &Listing, young_since: i64, plan: &mut GcPlan) {
    for q in &listing.quarantine {
        if q.quarantined_at > young_since {
            let since = format!("quarantined at {} (Unix seconds)", q.quarantined_at);
            plan.kept.push(Kept::because(
                KeptReason::Quarantined,
                q.path.clone(),
                since,
            ));
            continue;
        }
        plan.files.push(Doomed {
            path: q.path.clone(),
            dir: q.dir,
            import: None,
            bytes: q.allocated_bytes,
        });
        plan.removals.push(Removal {
            kind: RemovalKind::Quarantine,
            path: q.path.clone(),
            bytes: q.allocated_bytes,
        });
    }
}

/// Paths leased by protected imports (live, or promoting).
struct Leased<'a>(BTreeSet<&'a str>);

impl Leased<'_> {
    /// Whether `path` is leased, or lies under a leased directory.
    fn covers(&self, path: &str) -> bool {
        let leased = &self.0;
        if leased.is_empty() {
            return false;
        }
        let under = format!("{path}/");
        leased.contains(path)
            || leased
                .range(under.as_str()..)
                .next()
                .is_some_and(|p| p.starts_with(&under))
    }
}

fn cache_rel(f: &str) -> String {
    format!("cache/{f}")
}

/// Why microsandbox keeps the cache artifact `<kind>/<file>`, if it does.
fn microsandbox_keeps(roots: &MicrosandboxRoots, rel: &str) -> Option<KeptReason> {
    match roots {
        MicrosandboxRoots::None => None,
        MicrosandboxRoots::InUse(paths) => paths.contains(rel).then_some(KeptReason::InUse),
        MicrosandboxRoots::Unknown => Some(KeptReason::UnknownUse),
    }
}

/// Unpinned images go with their rows, unless a live import leases one of
/// their files; returns the cache files of the images kept.
fn plan_images(
    index: &IndexView,
    listing: &Listing,
    leased: &Leased,
    plan: &mut GcPlan,
) -> HashSet<String> {
    let mut kept: HashSet<String> = HashSet::new();
    for image in &index.unpinned_images {
        let files = image_files(image);
        let ms = files[..3]
            .iter()
            .find_map(|f| microsandbox_keeps(&index.microsandbox, f));
        let held_file = files.iter().find(|f| listing.held.contains(&cache_rel(f)));
        if files.iter().any(|f| leased.covers(&cache_rel(f))) {
            kept.extend(files);
        } else if listing.unindexed_pins.contains(&image.manifest_digest) {
            plan.kept.push(Kept::new(
                KeptReason::PinnedUnindexed,
                image.manifest_digest.to_string(),
            ));
            kept.extend(files);
        } else if let Some(reason) = ms.or(held_file.map(|_| KeptReason::LockHeld)) {
            plan.kept
                .push(Kept::new(reason, image.manifest_digest.to_string()));
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
    kept
}

/// Cache rows nothing reaches go, with their files when present.
fn plan_cache_rows(
    index: &IndexView,
    listing: &Listing,
    leased: &Leased,
    kept: &HashSet<String>,
    plan: &mut GcPlan,
) {
    let on_disk: HashSet<(CacheKind, &str)> = listing
        .cache
        .iter()
        .map(|(kind, e)| (*kind, e.name.as_str()))
        .collect();
    for row in &index.unreachable {
        let Some(file) = CacheFile::parse_rel(&row.path) else {
            continue;
        };
        let path = cache_rel(&row.path);
        if kept.contains(&row.path) || leased.covers(&path) {
            continue;
        }
        if listing.unindexed_files.contains(&row.path) {
            plan.kept.push(Kept::new(KeptReason::PinnedUnindexed, path));
            continue;
        }
        let held = listing.held.contains(&path).then_some(KeptReason::LockHeld);
        if let Some(reason) = microsandbox_keeps(&index.microsandbox, &row.path).or(held) {
            plan.kept.push(Kept::new(reason, path));
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
}

/// Files and directories under `cache/` and `snapshots/` without rows.
fn plan_debris(
    index: &IndexView,
    listing: &Listing,
    leased: &Leased,
    young_since: i64,
    plan: &mut GcPlan,
) {
    let rule = Debris {
        listing,
        leased,
        young_since,
    };
    plan_cache_debris(index, listing, &rule, plan);
    if index.microsandbox != MicrosandboxRoots::Unknown {
        plan_snapshot_debris(index, listing, &rule, plan);
    }
}

/// What decides whether an entry without a row goes: not while an import
/// holds it, its lock is held, or it is young.
struct Debris<'a> {
    listing: &'a Listing,
    leased: &'a Leased<'a>,
    young_since: i64,
}

impl Debris<'_> {
    /// Remove `path` (entry `e`) as debris, or keep it with the reason.
    fn take(&self, path: String, e: &DiskEntry, plan: &mut GcPlan) {
        if self.leased.covers(&path) {
            return;
        }
        if self.listing.held.contains(&path) {
            plan.kept.push(Kept::new(KeptReason::LockHeld, path));
            return;
        }
        if e.changed > self.young_since {
            plan.kept.push(Kept::new(KeptReason::Young, path));
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
    }
}

/// Cache artifacts without rows: kept when an image pins them (a missing
/// row, not debris) or microsandbox may use them, removed otherwise.
fn plan_cache_debris(index: &IndexView, listing: &Listing, rule: &Debris, plan: &mut GcPlan) {
    let mut rel = String::new();
    for (kind, e) in &listing.cache {
        if !foreign::is_cache_artifact_name(*kind, &e.name) {
            continue;
        }
        rel.clear();
        rel.push_str(kind.as_str());
        rel.push('/');
        rel.push_str(&e.name);
        let unrecorded = !e.dir && !index.cache_paths.contains(&rel);
        if unrecorded && index.pinned_files.contains(&rel) {
            plan.kept
                .push(Kept::new(KeptReason::Unindexed, cache_rel(&rel)));
        } else if unrecorded && listing.unindexed_files.contains(&rel) {
            plan.kept
                .push(Kept::new(KeptReason::PinnedUnindexed, cache_rel(&rel)));
        } else if let (true, CacheKind::Layers, Some(why)) =
            (unrecorded, kind, &listing.unknown_pins)
        {
            plan.kept.push(Kept::because(
                KeptReason::UnknownPins,
                cache_rel(&rel),
                why.clone(),
            ));
        } else if e.dir || !index.cache_paths.contains(&rel) {
            if let Some(reason) = microsandbox_keeps(&index.microsandbox, &rel) {
                plan.kept.push(Kept::new(reason, cache_rel(&rel)));
                continue;
            }
            rule.take(cache_rel(&rel), e, plan);
        }
    }
}

/// Snapshot directories, matched to rows by the digest of their manifest:
/// one without a row goes only when it is provably not a snapshot (or an
/// unfinished `rm` of that very snapshot); files without rows go only from
/// a directory holding exactly the snapshot its row records.
fn plan_snapshot_debris(index: &IndexView, listing: &Listing, rule: &Debris, plan: &mut GcPlan) {
    for (top, children) in &listing.snapshots {
        if !foreign::is_snapshot_dir_name(&top.name) {
            continue;
        }
        let path = format!("snapshots/{}", top.name);
        if rule.leased.covers(&path) {
            continue;
        }
        let state = listing.manifests.get(&top.name);
        match index.digests.get(&top.name) {
            None if !top.dir => rule.take(path, top, plan),
            None => plan_unindexed_dir(index, &top.name, state, path, top, rule, plan),
            Some(recorded) if top.dir => {
                if let Some(kept) = mismatch(state, *recorded, path.clone()) {
                    plan.kept.push(kept);
                    continue;
                }
                let files = index.snapshots.get(&top.name);
                for c in children {
                    if !foreign::is_snapshot_file_name(&c.name) {
                        continue;
                    }
                    if c.dir || !files.is_some_and(|f| f.contains(&c.name)) {
                        rule.take(format!("{path}/{}", c.name), c, plan);
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// A directory without a row: debris when provably not a snapshot, or
/// when an unfinished `rm` removes the snapshot it holds; kept otherwise.
fn plan_unindexed_dir(
    index: &IndexView,
    name: &str,
    state: Option<&ManifestState>,
    path: String,
    top: &DiskEntry,
    rule: &Debris,
    plan: &mut GcPlan,
) {
    let removing = index.removing.get(name);
    match state {
        Some(ManifestState::Valid(d)) if removing != Some(d) => plan.kept.push(Kept {
            digest: Some(*d),
            ..Kept::new(KeptReason::Unindexed, path)
        }),
        Some(ManifestState::Unvalidated(why)) => {
            plan.kept
                .push(Kept::because(KeptReason::Unvalidated, path, why.clone()))
        }
        _ => rule.take(path, top, plan),
    }
}

/// Why an indexed directory is kept whole, if its manifest is not the
/// snapshot its row records.
fn mismatch(state: Option<&ManifestState>, recorded: Digest, path: String) -> Option<Kept> {
    let why = match state {
        Some(ManifestState::Valid(d)) if *d == recorded => return None,
        Some(ManifestState::Valid(d)) => {
            let kept = Kept::because(
                KeptReason::Mismatch,
                path,
                format!("its manifest.json is snapshot {d}, the index records {recorded}"),
            );
            return Some(Kept {
                digest: Some(*d),
                ..kept
            });
        }
        Some(ManifestState::Unvalidated(why)) => {
            format!("its manifest.json cannot be validated: {why}")
        }
        Some(ManifestState::NotJson) => "its manifest.json is not JSON".to_string(),
        Some(ManifestState::Absent) | None => "it has no manifest.json".to_string(),
    };
    Some(Kept::because(KeptReason::Mismatch, path, why))
}

/// Staging entries of imports that are neither live nor promoting.
/// Dead imports' staging goes, but for an interrupted pull's changed
/// within the grace period: a rerun of the pull resumes from it. Returns
/// the ids of those pulls, whose journal rows stay with them.
fn plan_staging<'a>(
    index: &'a IndexView,
    listing: &Listing,
    protected: &HashSet<&str>,
    young_since: i64,
    plan: &mut GcPlan,
) -> HashSet<&'a str> {
    let pulls: HashMap<&str, &ImportEntry> = index
        .imports
        .iter()
        .filter(|i| i.resumable && i.state == ImportState::Staging)
        .map(|i| (i.id.as_str(), i))
        .collect();
    let young_pulls: HashSet<&str> = listing
        .staging
        .iter()
        .filter(|e| e.dir && e.changed > young_since)
        .filter_map(|e| pulls.get(import_id_of(&e.name)).map(|i| i.id.as_str()))
        .collect();
    for e in &listing.staging {
        let id = import_id_of(&e.name);
        if protected.contains(id) {
            continue;
        }
        if young_pulls.contains(id) {
            if e.dir {
                plan.kept
                    .push(Kept::new(KeptReason::Young, format!("staging/{}", e.name)));
            }
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
    young_pulls
}

/// Journal rows of dead imports, and of finished ones past retention.
fn plan_journal(
    index: &IndexView,
    live: &HashSet<String>,
    resuming: &HashSet<&str>,
    now: i64,
    plan: &mut GcPlan,
) {
    for import in &index.imports {
        if resuming.contains(import.id.as_str()) {
            continue;
        }
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
}

/// `<kind>/<file>` of every cache file an image owns: metadata, fsmeta,
/// vmdk (those three first, the image's own), then layers.
pub(super) fn image_files(image: &ImageLayers) -> Vec<String> {
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

    /// Record snapshot `name` (digest `d(100)`, one file `manifest.json`)
    /// whose directory holds exactly that snapshot.
    fn indexed(index: &mut IndexView, listing: &mut Listing, name: &str) {
        index
            .snapshots
            .insert(name.into(), ["manifest.json".to_string()].into());
        index.digests.insert(name.into(), d(100));
        listing
            .manifests
            .insert(name.into(), ManifestState::Valid(d(100)));
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
        indexed(&mut index, &mut listing, "a");
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
        let stray = layer(2);
        let stray_name = stray.split_once('/').unwrap().1;
        listing.cache.push((CacheKind::Layers, file(stray_name, 7)));
        let vmdk_dir = CacheFile {
            kind: CacheKind::Vmdk,
            key: d(3),
        }
        .file_name();
        listing.cache.push((CacheKind::Vmdk, dir(&vmdk_dir, 3)));
        indexed(&mut index, &mut listing, "a");
        listing.snapshots.push((
            dir("a", 15),
            vec![file("manifest.json", 10), file("extra", 5)],
        ));
        listing.snapshots.push((dir("ghost", 100), vec![]));
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        let stray_path = format!("cache/{stray}");
        let vmdk_path = format!("cache/vmdk/{vmdk_dir}");
        assert_eq!(
            kinds(&plan),
            vec![
                (RemovalKind::Debris, stray_path.as_str()),
                (RemovalKind::Debris, vmdk_path.as_str()),
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
    fn names_that_are_not_ours_are_never_planned() {
        let (mut index, mut listing) = with_cache(&[&layer(1)]);
        let name = layer(1).split_once('/').unwrap().1.to_string();
        let meta = format!("{}.json", d(8).hex());
        for (kind, e) in [
            (CacheKind::Layers, file(&format!("{name}.lock"), 0)),
            (CacheKind::Layers, dir(&format!("{name}.work"), 9)),
            (CacheKind::Layers, file("stray.tmp", 1)),
            (CacheKind::Manifests, file(&format!("{meta}.part"), 5)),
            (CacheKind::Vmdk, dir("oops", 3)),
        ] {
            listing.cache.push((kind, e));
        }
        indexed(&mut index, &mut listing, "a");
        listing.snapshots.push((
            dir("a", 15),
            vec![file("manifest.json", 10), file("upper.ext4.part", 5)],
        ));
        listing.snapshots.push((file("a.lock", 0), vec![]));
        listing.snapshots.push((dir(".tmp-x", 4), vec![]));
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(plan.removals.is_empty(), "{:?}", plan.removals);
        assert!(plan.files.is_empty());
    }

    fn microsandbox_home() -> (IndexView, Listing, ImageLayers, String) {
        let meta = format!("manifests/{}.json", d(9).hex());
        let fsmeta = CacheFile {
            kind: CacheKind::Fsmeta,
            key: d(5),
        }
        .rel_path();
        let (mut index, listing) = with_cache(&[&layer(1), &layer(2), &meta, &fsmeta]);
        let image = ImageLayers {
            manifest_digest: d(5),
            metadata_file: meta.clone(),
            layers: vec![d(1), d(2)],
        };
        index.unpinned_images.push(image.clone());
        index.unreachable = vec![
            entry(&layer(1), 4096),
            entry(&layer(2), 4096),
            entry(&meta, 1),
            entry(&fsmeta, 8192),
        ];
        (index, listing, image, fsmeta)
    }

    #[test]
    fn what_microsandbox_uses_stays() {
        let (mut index, mut listing, image, fsmeta) = microsandbox_home();
        // A sandbox runs on the image: it stays whole.
        index.microsandbox = MicrosandboxRoots::InUse([fsmeta.clone()].into());
        let kept = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(kept.removals.is_empty(), "{:?}", kept.removals);
        assert_eq!(
            kept.kept,
            [Kept::new(
                KeptReason::InUse,
                image.manifest_digest.to_string()
            )]
        );
        // Only a layer is linked by one of microsandbox's manifests: the
        // image goes, that layer stays, and so does a file of its without a row.
        let unrecorded = layer(3);
        listing.cache.push((
            CacheKind::Layers,
            file(unrecorded.split_once('/').unwrap().1, 4096),
        ));
        index.microsandbox = MicrosandboxRoots::InUse([layer(2), unrecorded.clone()].into());
        let p = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(p.image_rows, [d(5)]);
        assert!(!p.cache_rows.contains(&layer(2)));
        assert_eq!(p.cache_rows.len(), 3);
        let kept: Vec<&str> = p.kept.iter().map(|k| k.path.as_str()).collect();
        let mut expected = [format!("cache/{}", layer(2)), format!("cache/{unrecorded}")];
        expected.sort();
        assert_eq!(kept, expected);
    }

    #[test]
    fn an_interrupted_pull_waits_for_its_rerun_until_the_grace_period_ends() {
        let (mut index, mut listing) = with_cache(&[]);
        let now = 10_000;
        for (id, changed) in [
            ("pull-young", now - 10),
            ("pull-old", now - 7200),
            ("imp", now - 10),
        ] {
            let mut d = dir(id, 2);
            d.changed = changed;
            listing.staging.push(d);
            listing.staging.push(file(&format!("{id}.lock"), 0));
            index.imports.push(ImportEntry {
                id: id.into(),
                state: ImportState::Staging,
                finished_at: None,
                resumable: id.starts_with("pull"),
            });
        }
        let p = plan(&index, &listing, &HashSet::new(), now, 3600);
        assert_eq!(
            kinds(&p),
            vec![
                (RemovalKind::Staging, "staging/imp"),
                (RemovalKind::Staging, "staging/imp.lock"),
                (RemovalKind::Staging, "staging/pull-old"),
                (RemovalKind::Staging, "staging/pull-old.lock"),
                (RemovalKind::Journal, "imp"),
                (RemovalKind::Journal, "pull-old"),
            ]
        );
        assert_eq!(p.kept.len(), 1);
        assert_eq!(p.kept[0].path, "staging/pull-young");
        assert_eq!(p.kept[0].reason, KeptReason::Young);
    }

    #[test]
    fn unknown_microsandbox_use_keeps_every_cache_artifact_and_snapshot() {
        let (mut index, mut listing, image, _) = microsandbox_home();
        listing
            .cache
            .push((CacheKind::Layers, file(&layer(7)[7..], 4096)));
        listing.snapshots.push((dir("ghost", 100), vec![]));
        listing.staging = vec![dir("dead", 2)];
        index.imports = vec![ImportEntry {
            id: "dead".into(),
            state: ImportState::Staging,
            finished_at: None,
            resumable: false,
        }];
        index.microsandbox = MicrosandboxRoots::Unknown;
        let p = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert_eq!(
            kinds(&p),
            vec![
                (RemovalKind::Staging, "staging/dead"),
                (RemovalKind::Journal, "dead")
            ]
        );
        assert!(p.cache_rows.is_empty() && p.image_rows.is_empty());
        let kept: Vec<&str> = p.kept.iter().map(|k| k.path.as_str()).collect();
        let layer7 = format!("cache/{}", layer(7));
        let d5 = image.manifest_digest.to_string();
        assert_eq!(kept, [layer7.as_str(), d5.as_str()]);
        assert!(p.kept.iter().all(|k| k.reason == KeptReason::UnknownUse));
    }

    #[test]
    fn a_held_lock_keeps_its_artifact() {
        let (mut index, mut listing, image, _) = microsandbox_home();
        listing.held.insert(format!("cache/{}", layer(2)));
        let p = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(p.removals.is_empty(), "{:?}", p.removals);
        assert_eq!(p.kept[0].path, image.manifest_digest.to_string());
        assert_eq!(p.kept[0].reason, KeptReason::LockHeld);
        // Debris whose lock is held stays too.
        index.unpinned_images.clear();
        index.unreachable.clear();
        let unrecorded = layer(4);
        listing
            .cache
            .push((CacheKind::Layers, file(&unrecorded[7..], 4096)));
        listing.held = [format!("cache/{unrecorded}")].into();
        let p = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(p.removals.is_empty(), "{:?}", p.removals);
        assert_eq!(p.kept.len(), 1);
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
                resumable: false,
            },
            ImportEntry {
                id: "dead".into(),
                state: ImportState::Staging,
                finished_at: None,
                resumable: false,
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
            resumable: false,
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
            resumable: false,
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
                resumable: false,
            });
        }
        let plan = plan(&index, &listing, &HashSet::new(), now, 0);
        assert_eq!(plan.import_rows, ["old-done", "old-failed"]);
        assert!(plan.files.is_empty());
    }

    #[test]
    fn a_snapshot_directory_is_debris_only_when_provably_not_a_snapshot() {
        let (mut index, mut listing) = with_cache(&[]);
        let states = [
            ("lost", ManifestState::Valid(d(1))),
            ("removing", ManifestState::Valid(d(1))),
            ("replaced", ManifestState::Valid(d(2))),
            ("newer", ManifestState::Unvalidated("unknown field".into())),
            ("junk", ManifestState::NotJson),
            ("empty", ManifestState::Absent),
        ];
        for (name, state) in states {
            listing.snapshots.push((dir(name, 10), vec![]));
            listing.manifests.insert(name.into(), state);
        }
        // An unfinished rm removes d(1) from `removing` but d(3) from `replaced`.
        index.removing.insert("removing".into(), d(1));
        index.removing.insert("replaced".into(), d(3));
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        let kept: Vec<(&str, KeptReason)> = plan
            .kept
            .iter()
            .map(|k| (k.path.as_str(), k.reason))
            .collect();
        assert_eq!(
            kept,
            [
                ("snapshots/lost", KeptReason::Unindexed),
                ("snapshots/newer", KeptReason::Unvalidated),
                ("snapshots/replaced", KeptReason::Unindexed),
            ]
        );
        assert_eq!(plan.kept[1].why.as_deref(), Some("unknown field"));
        assert_eq!(
            kinds(&plan),
            [
                (RemovalKind::Debris, "snapshots/empty"),
                (RemovalKind::Debris, "snapshots/junk"),
                (RemovalKind::Debris, "snapshots/removing"),
            ]
        );
    }

    #[test]
    fn an_indexed_name_holding_another_snapshot_loses_nothing() {
        let (mut index, mut listing) = with_cache(&[]);
        for (name, state) in [
            ("other", ManifestState::Valid(d(2))),
            ("newer", ManifestState::Unvalidated("x".into())),
            ("gone", ManifestState::Absent),
        ] {
            indexed(&mut index, &mut listing, name);
            listing.manifests.insert(name.into(), state);
            listing.snapshots.push((
                dir(name, 15),
                vec![file("manifest.json", 10), file("upper.qcow2", 5)],
            ));
        }
        let plan = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(plan.removals.is_empty(), "{:?}", plan.removals);
        assert!(plan.kept.iter().all(|k| k.reason == KeptReason::Mismatch));
        assert_eq!(plan.kept.len(), 3);
        assert_eq!(plan.kept[2].digest, Some(d(2)));
    }

    #[test]
    fn young_debris_is_kept_until_the_grace_period_ends() {
        let (index, mut listing) = with_cache(&[]);
        let now = 10_000;
        let (old, young) = (layer(1), layer(2));
        for (rel, changed) in [(&old, now - 3600), (&young, now - 3599)] {
            let mut e = file(rel.split_once('/').unwrap().1, 1);
            e.changed = changed;
            listing.cache.push((CacheKind::Layers, e));
        }
        let plan = plan(&index, &listing, &HashSet::new(), now, 3600);
        let old_path = format!("cache/{old}");
        assert_eq!(kinds(&plan), [(RemovalKind::Debris, old_path.as_str())]);
        assert_eq!(plan.kept[0].path, format!("cache/{young}"));
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
        let reasons: Vec<KeptReason> = plan.kept.iter().map(|k| k.reason).collect();
        assert_eq!(
            reasons,
            [KeptReason::Unindexed, KeptReason::PinnedUnindexed],
            "{:?}",
            plan.kept
        );
    }

    #[test]
    fn files_an_unindexed_snapshot_pins_stay_without_rows() {
        let (index, mut listing) = with_cache(&[]);
        let (pinned, stray) = (layer(1), layer(2));
        for rel in [&pinned, &stray] {
            listing.cache.push((
                CacheKind::Layers,
                file(rel.split_once('/').unwrap().1, 4096),
            ));
        }
        listing.unindexed_files.insert(pinned.clone());
        let p = plan(&index, &listing, &HashSet::new(), 0, 0);
        let stray_path = format!("cache/{stray}");
        assert_eq!(kinds(&p), [(RemovalKind::Debris, stray_path.as_str())]);
        assert_eq!(p.kept[0].reason, KeptReason::PinnedUnindexed);
        // When some pinned image's layers cannot be listed, no layer goes.
        listing.unknown_pins = Some("snapshots/x: metadata absent".into());
        let p = plan(&index, &listing, &HashSet::new(), 0, 0);
        assert!(p.removals.is_empty(), "{:?}", p.removals);
        assert_eq!(p.kept[1].reason, KeptReason::UnknownPins);
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
