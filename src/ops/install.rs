//! Installing a verified, staged set of snapshots and cache files: the
//! compatibility check against the index, then journaled promotion and the
//! row inserts. `add` and `import` both end here.

use rusqlite::Connection;
use serde::Serialize;

use crate::archive::entry::MANIFEST_FILE;
use crate::archive::names::NameFallback;
use crate::db::{self, SnapshotFileRow, SnapshotRow, now_unix};
use crate::journal::Lease;
use crate::journal::promote::{Move, promote};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::model::image::CacheFile;
use crate::model::manifest::{MAX_MANIFEST_BYTES, Manifest, ParsedManifest};
use crate::ops::registry::Registry;
use crate::ops::repair::{self, Condition, Repaired};
use crate::store::files::read_limited;
use crate::store::layout::{Layout, SnapshotName};
use crate::store::staged::{StagedManifest, StagedSet};

/// What an install did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstallOutcome {
    /// Snapshots newly installed.
    pub imported: Vec<Digest>,
    /// Snapshots already present (by digest), left as they were.
    pub skipped: Vec<Digest>,
    /// Cache files newly installed.
    pub cache_files_installed: usize,
    /// Cache files already present with the same content.
    pub cache_files_skipped: usize,
    /// Damaged directories replaced by the good copy brought.
    pub repaired: Vec<Repaired>,
    /// Carried names held by a directory without a row that is kept: those
    /// snapshots took their fallback name.
    pub name_fallbacks: Vec<NameFallback>,
}

#[derive(Debug, PartialEq, Eq)]
struct Plan {
    new_snapshots: Vec<usize>,
    new_cache_files: Vec<usize>,
}

fn plan(conn: &Connection, set: &StagedSet) -> Result<Plan> {
    let mut plan = Plan {
        new_snapshots: Vec::new(),
        new_cache_files: Vec::new(),
    };
    let mut named: std::collections::HashMap<&SnapshotName, usize> =
        std::collections::HashMap::new();
    for (i, s) in set.snapshots.iter().enumerate() {
        if let Some(present) = db::snapshots::snapshot_by_digest(conn, &s.manifest.digest())? {
            let (files, _) = set.files_of(i)?;
            same_files(conn, &present.name, &s.manifest.digest(), &files)?;
            continue;
        }
        if let Some(other) = db::snapshots::snapshot_by_name(conn, s.name.as_str())? {
            return Err(Error::conflict(
                format!("snapshot name {}", s.name),
                format!(
                    "already names {}, not {}",
                    other.digest,
                    s.manifest.digest()
                ),
            ));
        }
        if let Some(&j) = named.get(&s.name) {
            return Err(Error::conflict(
                format!("snapshot name {}", s.name),
                format!(
                    "would name both {} and {}; choose another --name",
                    set.snapshots[j].manifest.digest(),
                    s.manifest.digest()
                ),
            ));
        }
        s.name.impersonation(&s.manifest.digest())?;
        named.insert(&s.name, i);
        plan.new_snapshots.push(i);
    }
    for (i, c) in set.cache_files.iter().enumerate() {
        match db::images::cache_file(conn, &c.file)? {
            Some(row) if row.digest == c.digest && row.size == c.size => {}
            Some(row) => {
                return Err(Error::conflict(
                    format!("cache/{}", c.file.rel_path()),
                    format!(
                        "installed file has digest {} ({} bytes); incoming has {} ({} bytes)",
                        row.digest, row.size, c.digest, c.size
                    ),
                ));
            }
            None => plan.new_cache_files.push(i),
        }
    }
    Ok(plan)
}

/// A snapshot already present is identified by its manifest alone, which
/// may record no integrity: its incoming files must be the stored ones, file
/// for file, or the first copy to arrive would win unchecked.
fn same_files(
    conn: &Connection,
    name: &str,
    digest: &Digest,
    incoming: &[SnapshotFileRow],
) -> Result<()> {
    let stored = db::snapshots::snapshot_files(conn, digest)?;
    let subject = |path: &str| format!("snapshots/{name}/{path}");
    for f in incoming {
        match stored.iter().find(|s| s.path == f.path) {
            Some(s) if s.digest == f.digest && s.size == f.size => {}
            Some(s) => {
                return Err(Error::conflict(
                    subject(&f.path),
                    format!(
                        "snapshot {digest} is already present with this file at digest {} ({} bytes); incoming has {} ({} bytes)",
                        s.digest, s.size, f.digest, f.size
                    ),
                ));
            }
            None => {
                return Err(Error::conflict(
                    subject(&f.path),
                    format!("snapshot {digest} is already present without this file"),
                ));
            }
        }
    }
    if let Some(s) = stored
        .iter()
        .find(|s| !incoming.iter().any(|f| f.path == s.path))
    {
        return Err(Error::conflict(
            subject(&s.path),
            format!(
                "snapshot {digest} is already present with this file; the incoming copy lacks it"
            ),
        ));
    }
    Ok(())
}

/// Check `set` against the index and install what is new, all or nothing;
/// a damaged copy found in the way is repaired (see [`repair`]). With
/// `deep`, a snapshot already present is re-hashed (`--repair`) rather
/// than only checked by size and manifest. The staged directories' paths
/// of new snapshots are moved out of `set` into the journal's moves, not
/// copied: an import may hold a hundred thousand.
pub fn install_checked(
    registry: &mut Registry,
    lease: &Lease,
    set: &mut StagedSet,
    deep: bool,
) -> Result<InstallOutcome> {
    let lock = registry.lock()?;
    {
        let (layout, db) = registry.parts();
        // A dead promotion's directories are its own, not damage to repair.
        crate::journal::recovery::recover_locked(layout, db, &lock)?;
    }
    // One read transaction: every query sees the same index, and the
    // thousands of them do not each take the WAL's read lock.
    let planned = {
        let read = registry.db().read()?;
        plan(&read, set)?
    };
    let now = now_unix();
    let (repairs, name_fallbacks) = plan_repairs(registry, set, &planned, deep, now)?;
    let mut moves = moves(registry.layout(), set, &planned);
    let set = &*set;
    moves.splice(0..0, repairs.iter().filter_map(|r| r.quarantine.clone()));
    moves.extend(repairs.iter().filter_map(|r| r.reinstall.clone()));
    let restored = restore_cache_files(registry.layout(), set, &planned);
    let restored_count = restored.len();
    moves.extend(restored);
    if repairs.iter().any(|r| r.quarantine.is_some()) {
        let dir = registry.layout().quarantine();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
    }
    let (layout, db) = registry.parts();
    // The index as the last check found it: between the journal's commit
    // and the rows' this connection changes no snapshot or cache row, so an
    // unchanged data version means the plan still holds.
    let checked_at = std::cell::Cell::new(None);
    promote(
        layout,
        db,
        &lock,
        lease,
        &moves,
        |conn| {
            let version = db::data_version(conn)?;
            if checked_at.get() == Some(version) {
                return Ok(());
            }
            if plan(conn, set)? != planned {
                return Err(Error::conflict(
                    "registry",
                    "changed while the import was being checked; retry",
                ));
            }
            checked_at.set(Some(version));
            Ok(())
        },
        |conn| insert_rows(conn, layout, set, &planned, now),
    )?;
    let reinstalled: Vec<Digest> = repairs
        .iter()
        .filter(|r| r.reinstall.is_some())
        .map(|r| r.repaired.digest)
        .collect();
    Ok(InstallOutcome {
        imported: planned
            .new_snapshots
            .iter()
            .map(|&i| set.snapshots[i].manifest.digest())
            .collect(),
        skipped: set
            .snapshots
            .iter()
            .enumerate()
            // In ascending order, as `plan` pushed them.
            .filter(|(i, _)| planned.new_snapshots.binary_search(i).is_err())
            .map(|(_, s)| s.manifest.digest())
            .filter(|d| !reinstalled.contains(d))
            .collect(),
        cache_files_installed: planned.new_cache_files.len() + restored_count,
        cache_files_skipped: set.cache_files.len() - planned.new_cache_files.len() - restored_count,
        repaired: repairs.into_iter().map(|r| r.repaired).collect(),
        name_fallbacks,
    })
}

/// The moves that put back cache files whose rows the index holds (with
/// this content) but whose files are gone: a gc on a full disk frees space
/// by deleting a file before its row, and a crash in between leaves such a
/// row; its next gc deletes it, and until then an install that brings the
/// file restores it rather than trusting the row.
fn restore_cache_files(layout: &Layout, set: &StagedSet, planned: &Plan) -> Vec<Move> {
    let new: std::collections::HashSet<usize> = planned.new_cache_files.iter().copied().collect();
    set.cache_files
        .iter()
        .enumerate()
        .filter(|(i, _)| !new.contains(i))
        .filter(|(_, c)| {
            layout.resolve(&c.staged).is_file()
                && matches!(
                    layout.cache_file(&c.file).symlink_metadata(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound
                )
        })
        .map(|(_, c)| Move {
            staged: c.staged.clone(),
            target: format!("cache/{}", c.file.rel_path()),
        })
        .collect()
}

/// One repair an install makes: the damaged directory's move into
/// `quarantine/` (journaled first, so undone last) and, for a snapshot the
/// index holds, the good copy's move into its place.
struct RepairPlan {
    quarantine: Option<Move>,
    reinstall: Option<Move>,
    repaired: Repaired,
}

/// The repairs `set` makes: every snapshot present by digest whose
/// directory is damaged, and every new one whose name a damaged directory
/// without a row holds. A new snapshot whose name a kept directory without
/// a row holds takes its fallback name when it has one (said in the
/// returned fallbacks); a name held by anything else is refused here with
/// what it holds and what to do.
fn plan_repairs(
    registry: &Registry,
    set: &mut StagedSet,
    planned: &Plan,
    deep: bool,
    now: i64,
) -> Result<(Vec<RepairPlan>, Vec<NameFallback>)> {
    let layout = registry.layout();
    let conn = registry.db().conn();
    let mut repairs: Vec<RepairPlan> = Vec::new();
    let mut fallbacks: Vec<NameFallback> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    let new: std::collections::HashSet<usize> = planned.new_snapshots.iter().copied().collect();
    for (i, s) in set.snapshots.iter_mut().enumerate() {
        let digest = s.manifest.digest();
        let (name, condition, present) = if new.contains(&i) {
            let mut condition = repair::examine_unindexed(&layout.snapshot(&s.name))?;
            if let Condition::Kept(detail) = &condition
                && let Some(fallback) = s.fallback.take()
            {
                fallbacks.push(NameFallback {
                    digest,
                    carried: s.name.to_string(),
                    name: fallback.to_string(),
                    reason: detail.clone(),
                });
                s.name = fallback;
                condition = repair::examine_unindexed(&layout.snapshot(&s.name))?;
            }
            (s.name.clone(), condition, false)
        } else {
            let Some(row) = db::snapshots::snapshot_by_digest(conn, &digest)? else {
                continue;
            };
            let Ok(name) = row.name.parse::<SnapshotName>() else {
                continue;
            };
            let files = db::snapshots::snapshot_files(conn, &digest)?;
            (
                name,
                repair::examine_indexed(layout, &row, &files, deep)?,
                true,
            )
        };
        let why = match condition {
            Condition::Intact => continue,
            // A present snapshot whose directory holds something else is
            // reported by verify; the install leaves it, as before.
            Condition::Kept(_) if present => continue,
            Condition::Kept(detail) => {
                return Err(Error::conflict(format!("snapshots/{name}"), detail));
            }
            Condition::Damaged(why) => why,
        };
        let dir = format!("snapshots/{name}");
        let quarantine = layout.resolve(&dir).symlink_metadata().is_ok().then(|| {
            let target = repair::quarantine_target(layout, &name, now, &taken);
            taken.push(target.clone());
            Move {
                staged: dir.clone(),
                target,
            }
        });
        repairs.push(RepairPlan {
            repaired: Repaired {
                digest,
                name: name.to_string(),
                quarantined: quarantine.as_ref().map(|m| m.target.clone()),
                why,
            },
            quarantine,
            reinstall: present.then(|| Move {
                staged: s.staged_dir.clone(),
                target: dir,
            }),
        });
    }
    Ok((repairs, fallbacks))
}

/// The moves from staging to their places under the root of what `planned`
/// installs, both relative to the root.
fn moves(layout: &Layout, set: &mut StagedSet, planned: &Plan) -> Vec<Move> {
    let rel = |p: std::path::PathBuf| -> String {
        p.strip_prefix(layout.root())
            .expect("layout paths are under the root")
            .to_string_lossy()
            .into_owned()
    };
    let mut moves = Vec::with_capacity(planned.new_snapshots.len() + planned.new_cache_files.len());
    for &i in &planned.new_snapshots {
        let s = &mut set.snapshots[i];
        moves.push(Move {
            staged: std::mem::take(&mut s.staged_dir),
            target: rel(layout.snapshot(&s.name)),
        });
    }
    for &i in &planned.new_cache_files {
        let c = &set.cache_files[i];
        moves.push(Move {
            staged: c.staged.clone(),
            target: rel(layout.cache_file(&c.file)),
        });
    }
    moves
}

/// The rows of what `planned` installs, inserted in the promotion's
/// transaction.
fn insert_rows(
    conn: &Connection,
    layout: &Layout,
    set: &StagedSet,
    planned: &Plan,
    now: i64,
) -> Result<()> {
    for &i in &planned.new_snapshots {
        let s = &set.snapshots[i];
        let parsed = match &s.manifest {
            StagedManifest::Held(parsed) => (**parsed).clone(),
            StagedManifest::OnDisk(digest) => installed_manifest(layout, &s.name, digest)?,
        };
        let row = SnapshotRow::from_manifest(&parsed, s.name.as_str(), now);
        let (files, chunks) = set.files_of(i)?;
        db::chunks::insert_snapshot_with_chunks(conn, &row, &files, &chunks)?;
    }
    for &i in &planned.new_cache_files {
        let c = &set.cache_files[i];
        db::images::insert_cache_file(conn, &c.file, c.size, &c.digest, now)?;
    }
    for s in &set.signatures {
        db::signatures::insert_signature(conn, s)?;
    }
    for (meta, reference) in &set.images {
        db::images::insert_image(
            conn,
            meta,
            &CacheFile::metadata_for_ref(reference),
            Some(reference),
        )?;
    }
    Ok(())
}

/// The manifest of a snapshot just renamed into place, read back (one at a
/// time, so an import's memory does not hold every manifest); it must still
/// hash to the digest it was verified under.
fn installed_manifest(
    layout: &Layout,
    name: &SnapshotName,
    digest: &Digest,
) -> Result<ParsedManifest> {
    let path = layout.snapshot_file(name, MANIFEST_FILE);
    let subject = || path.display().to_string();
    let bytes = read_limited(&path, MAX_MANIFEST_BYTES)?
        .ok_or_else(|| Error::integrity(subject(), "manifest changed after it was verified"))?;
    let parsed = Manifest::parse(&bytes).map_err(|source| Error::Manifest {
        path: subject(),
        source,
    })?;
    if parsed.digest != *digest {
        return Err(Error::integrity(
            subject(),
            "manifest changed after it was verified",
        ));
    }
    Ok(parsed)
}
