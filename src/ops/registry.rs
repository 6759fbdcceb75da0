//! The registry handle: a root directory, its index, and the reference
//! resolution every command shares.

use std::path::{Path, PathBuf};

use crate::db::ImportState;
use crate::db::schema::Schema;
use crate::db::{self, Db, SnapshotRow};
use crate::journal::{self, Lease, RegistryLock, lock::lock_exclusive};
use crate::model::digest::{Digest, is_lower_hex};
use crate::model::error::{Error, IoContext, Result};
use crate::store::layout::{Layout, SnapshotName};

/// The shortest digest prefix accepted as a reference.
pub const MIN_PREFIX: usize = 8;

/// An open registry.
pub struct Registry {
    layout: Layout,
    db: Db,
    /// The registry lock, held from open to install by a rebuilding reindex.
    held: Option<RegistryLock>,
}

/// How [`Registry::open_for_reindex`] found the index.
#[derive(Debug, Default)]
pub struct Rebuild {
    /// Where what was left of a missing, empty or damaged index was moved.
    pub moved_aside: Option<PathBuf>,
    /// The new index being built, when the old one was not usable.
    building: Option<PathBuf>,
}

impl Registry {
    /// End a staged operation (`what`: "add", "import") on `lease` with its
    /// `result`: an interrupt says which staging it removed, the journal
    /// records done or failed, and the operation's own error wins over the
    /// journal's.
    pub(crate) fn end_lease<T>(
        &mut self,
        lease: Lease,
        what: &str,
        mut result: Result<T>,
    ) -> Result<T> {
        if let Err(Error::Interrupted { cleaned, .. }) = &mut result {
            let staging = lease.staging();
            *cleaned = format!(
                "removed this {what}'s staging {} ({} bytes on disk); the registry is unchanged",
                staging
                    .strip_prefix(self.layout().root())
                    .unwrap_or(staging)
                    .display(),
                crate::store::files::tree_allocated_bytes(staging)
            );
        }
        let (state, message) = match &result {
            Ok(_) => (ImportState::Done, None),
            Err(e) => (ImportState::Failed, Some(e.with_causes())),
        };
        let finished = lease.finish(self.db_mut(), state, message.as_deref());
        let report = result?;
        finished?;
        Ok(report)
    }

    /// Open the registry at `root`, creating it when absent, and repair any
    /// promotion a crashed process left half done.
    ///
    /// Refuses (exit 5) when the index is missing or empty while
    /// `snapshots/` or `cache/` hold artifacts: that is a lost index, and
    /// only `reindex` ([`Registry::open_for_reindex`]) may start a new one.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let layout = Layout::new(root);
        check_root_is_directory(&layout)?;
        check_index_is_file(&layout)?;
        check_index_present(&layout)?;
        check_not_foreign(&layout)?;
        probe_index(&layout, false)?;
        Self::open_writable(layout)
    }

    fn open_writable(layout: Layout) -> Result<Self> {
        for dir in layout.dirs() {
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        }
        let mut db = {
            let _first_open = lock_exclusive(&layout)?;
            Db::open(&layout.db())?
        };
        journal::recover(&layout, &mut db)?;
        Ok(Registry {
            layout,
            db,
            held: None,
        })
    }

    /// Open the registry at `root` for a command that reads snapshots and
    /// writes nothing but a cache (push's record of what a remote
    /// repository holds): as [`Registry::open`] where the root can be
    /// written, else (read-only or full storage, no permission) as
    /// [`Registry::open_read`], and the cache is kept in memory only.
    pub fn open_caching(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        match Self::open(root.clone()) {
            Err(e) if e.is_storage() || e.is_permission_denied() => Self::open_read(root),
            other => other,
        }
    }

    /// Open an existing registry for reading only: nothing is created, no
    /// lock is taken (WAL gives every read transaction a consistent
    /// snapshot while writers work), and a read-only root works. A root
    /// without an index is exit 3, or exit 5 when artifacts show the index
    /// was lost. An index whose schema is behind is brought up to date
    /// through a writable open first, or, where it cannot be written
    /// (read-only or full storage), read through a migrated private copy.
    pub fn open_read(root: impl Into<PathBuf>) -> Result<Self> {
        let layout = Layout::new(root);
        check_root_is_directory(&layout)?;
        check_index_is_file(&layout)?;
        check_index_present(&layout)?;
        if !layout.db().is_file() {
            return Err(Error::NoRegistry {
                root: layout.root().to_path_buf(),
            });
        }
        let (db, schema) = Db::open_read(&layout.db())?;
        if !matches!(schema, Schema::Behind | Schema::New) {
            return Ok(Registry {
                layout,
                db,
                held: None,
            });
        }
        drop(db);
        match Self::open_writable(layout.clone()) {
            Err(e) if e.is_storage() || e.is_permission_denied() => Ok(Registry {
                db: Db::open_migrated_copy(&layout.db())?,
                layout,
                held: None,
            }),
            other => other,
        }
    }

    /// Open for `reindex`. A healthy index is opened as usual. Otherwise
    /// (missing, empty or damaged) whatever is left of it is moved aside,
    /// never deleted, to `registry.db.corrupt-<unix seconds>`, and a new
    /// index is built in `registry.db.rebuild`, which
    /// [`Registry::install_rebuilt`] renames into place once it holds every
    /// row: a reindex killed half way leaves the index lost (exit 5), never
    /// an empty one that reads as an empty registry.
    ///
    /// With `rebuild`, the index is rebuilt even when SQLite finds it
    /// sound: for one holding rows the registry cannot decode.
    pub fn open_for_reindex(root: impl Into<PathBuf>, rebuild: bool) -> Result<(Self, Rebuild)> {
        let layout = Layout::new(root);
        check_root_is_directory(&layout)?;
        check_index_is_file(&layout)?;
        check_not_foreign(&layout)?;
        probe_index(&layout, true)?;
        for dir in layout.dirs() {
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        }
        let lock = lock_exclusive(&layout)?;
        let healthy = !rebuild && index_state(&layout).is_none() && !Db::is_damaged(&layout.db())?;
        if healthy {
            drop(lock);
            return Ok((Self::open_writable(layout)?, Rebuild::default()));
        }
        let leftovers = [layout.db(), layout.db_wal()];
        let moved_aside = if leftovers.iter().any(|p| p.symlink_metadata().is_ok()) {
            Some(move_aside(&layout)?)
        } else {
            None
        };
        let building = layout.db_rebuild();
        for stale in Layout::with_companions(&building) {
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", stale, e));
                }
                _ => {}
            }
        }
        let db = Db::open(&building)?;
        Ok((
            Registry {
                layout,
                db,
                held: Some(lock),
            },
            Rebuild {
                moved_aside,
                building: Some(building),
            },
        ))
    }

    /// Put an index [`Registry::open_for_reindex`] built aside in place.
    /// The registry lock taken by that open is held until the rename is
    /// done: no other reindex can replace or remove the rebuild meanwhile.
    pub fn install_rebuilt(mut self, rebuild: Rebuild) -> Result<()> {
        let Some(building) = rebuild.building else {
            return Ok(());
        };
        crate::process::failpoint::hit(crate::process::failpoint::REINDEX_REBUILT)?;
        let layout = self.layout.clone();
        let _lock = match self.held.take() {
            Some(lock) => lock,
            None => lock_exclusive(&layout)?,
        };
        drop(self);
        std::fs::rename(&building, layout.db()).at("rename", &building)?;
        crate::store::files::fsync_dir(layout.root())
    }

    /// The directory holding snapshot `name`'s files now: its own, or, while
    /// a crashed `rename` to `name` is not rolled forward yet (the next
    /// writer does that), the old one. Readers read through this, so they
    /// see the renamed snapshot whole without waiting for a writer.
    pub fn snapshot_dir(&self, name: &SnapshotName) -> SnapshotName {
        if self.layout.snapshot(name).symlink_metadata().is_ok() {
            return name.clone();
        }
        let pending = db::snapshots::pending_renames(self.db.conn()).unwrap_or_default();
        pending
            .into_iter()
            .filter(|(_, _, new)| new == name.as_str())
            .find_map(|(_, old, _)| old.parse::<SnapshotName>().ok())
            .filter(|old| self.layout.snapshot(old).is_dir())
            .unwrap_or_else(|| name.clone())
    }

    /// The paths of this registry.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The index.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The index, for write transactions.
    pub fn db_mut(&mut self) -> &mut Db {
        &mut self.db
    }

    /// The paths and the index together, for the journal layer.
    pub(crate) fn parts(&mut self) -> (&Layout, &mut Db) {
        (&self.layout, &mut self.db)
    }

    /// Take the exclusive registry lock, waiting for the current holder
    /// (saying so on stderr after a second, giving up after
    /// [`journal::lock::lock_timeout`]).
    pub fn lock(&self) -> Result<RegistryLock> {
        match &self.held {
            Some(outer) => Ok(RegistryLock::within(outer)),
            None => lock_exclusive(&self.layout),
        }
    }

    /// Clear what `add`s and imports that died while staging left (their
    /// staging directory and lock; their journal row is marked failed):
    /// every writer but gc (which reports what it clears) does this first.
    pub fn clear_dead_staging(&mut self) -> Result<usize> {
        let (layout, db) = self.parts();
        journal::lease::clear_dead_staging(layout, db)
    }

    /// Find a snapshot by name, full digest, or unique hex prefix of at least
    /// eight digits (with or without `sha256:`).
    pub fn resolve(&self, reference: &str) -> Result<SnapshotRow> {
        let conn = self.db.conn();
        let not_found = || Error::NotFound {
            what: "snapshot",
            reference: reference.to_string(),
        };
        if let Ok(digest) = reference.parse::<Digest>() {
            return db::snapshots::snapshot_by_digest(conn, &digest)?.ok_or_else(not_found);
        }
        if let Some(row) = db::snapshots::snapshot_by_name(conn, reference)? {
            return Ok(row);
        }
        let hex_prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !hex_prefix.bytes().all(is_lower_hex) {
            return Err(not_found());
        }
        if hex_prefix.len() < MIN_PREFIX {
            return Err(Error::NotFound {
                what: "snapshot",
                reference: format!(
                    "{reference} (no snapshot has that name, and a digest prefix needs at least {MIN_PREFIX} hex digits)"
                ),
            });
        }
        let matches = db::snapshots::digests_with_prefix(conn, hex_prefix, 11)?;
        match matches.as_slice() {
            [] => Err(not_found()),
            [one] => db::snapshots::snapshot_by_digest(conn, one)?.ok_or_else(not_found),
            many => Err(Error::Ambiguous {
                reference: reference.to_string(),
                candidates: many
                    .iter()
                    .map(|d| {
                        let name = db::snapshots::snapshot_by_digest(conn, d)?.map(|r| r.name);
                        Ok(format!("{} ({d})", name.unwrap_or_default()))
                    })
                    .collect::<Result<_>>()?,
            }),
        }
    }
}

/// A root with no index before a writing command opens it: when the
/// command fails, [`FreshRoot::undo`] takes back the empty registry it
/// created, so a typo'd `--root` given to a failing `rm`, `rename` or
/// `import` leaves no registry behind.
pub struct FreshRoot {
    layout: Layout,
    /// The directories (the root included) that did not exist, parents first.
    missing: Vec<PathBuf>,
}

impl FreshRoot {
    /// Note what is missing at `root`; `None` when it already has an index.
    pub fn note(root: &Path) -> Option<FreshRoot> {
        let layout = Layout::new(root);
        if layout.db().symlink_metadata().is_ok() {
            return None;
        }
        let missing = layout
            .dirs()
            .into_iter()
            .filter(|d| d.symlink_metadata().is_err())
            .collect();
        Some(FreshRoot { layout, missing })
    }

    /// After the command failed: when every directory it created is still
    /// empty (nothing was installed or staged) and the index names no
    /// snapshot (a failed command leaves none, so one there is another
    /// writer's), remove the index, its side files and the lock it made,
    /// then those directories. Anything else found there is kept, and so is
    /// everything when it is not empty.
    pub fn undo(self) {
        let Ok(Some(lock)) = crate::store::files::open_lock(&self.layout.lock_file(), false) else {
            return;
        };
        if lock.try_lock().is_err() {
            return;
        }
        let holds_only_created = |d: &Path| {
            std::fs::read_dir(d).is_ok_and(|entries| {
                entries
                    .into_iter()
                    .all(|e| e.is_ok_and(|e| self.missing.contains(&e.path())))
            })
        };
        let root = self.layout.root();
        if !self
            .missing
            .iter()
            .filter(|d| d.as_path() != root)
            .all(|d| holds_only_created(d))
            || crate::db::names_any_snapshot(&self.layout.db())
        {
            return;
        }
        for file in Layout::with_companions(&self.layout.db()) {
            let _ = std::fs::remove_file(file);
        }
        let _ = std::fs::remove_file(self.layout.lock_file());
        for dir in self.missing.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// A directory with no index that holds things of its own (neither a
/// registry's nor a microsandbox home's) is not adopted silently: exit 2.
fn check_not_foreign(layout: &Layout) -> Result<()> {
    if index_state(layout) != Some("missing") || layout.artifact_dir().is_some() {
        return Ok(());
    }
    match layout.foreign_entry() {
        Some(entry) => Err(Error::Usage(format!(
            "{} is not a registry and holds {entry:?}: a registry is created only in a new or \
             empty directory (or a microsandbox home); choose another --root",
            layout.root().display()
        ))),
        None => Ok(()),
    }
}

/// A missing or empty index next to artifacts is a lost index.
fn check_index_present(layout: &Layout) -> Result<()> {
    let Some(state) = index_state(layout) else {
        return Ok(());
    };
    match layout.artifact_dir() {
        Some(artifacts) => Err(Error::IndexLost {
            db: layout.db(),
            state,
            artifacts,
        }),
        None => Ok(()),
    }
}

/// `Some("missing")` or `Some("empty")` when there is no index to open.
fn index_state(layout: &Layout) -> Option<&'static str> {
    match std::fs::metadata(layout.db()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing"),
        Ok(m) if m.len() == 0 && !non_empty_file(&layout.db_wal()) => Some("empty"),
        _ => None,
    }
}

fn non_empty_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

/// Rename `registry.db` (and its `-wal` and `-shm`) to
/// `registry.db.corrupt-<unix seconds>[...]`; returns the new path.
fn move_aside(layout: &Layout) -> Result<PathBuf> {
    let aside = layout.db_aside(db::now_unix());
    let moves = Layout::with_companions(&layout.db())
        .into_iter()
        .zip(Layout::with_companions(&aside));
    for (from, to) in moves {
        match std::fs::rename(&from, &to) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("move aside", from, e));
            }
            _ => {}
        }
    }
    crate::store::files::fsync_dir(layout.root())?;
    Ok(aside)
}

/// Before a writer creates anything: an existing index that is not ours
/// is refused, one a newer msb-registry migrated is not written, and
/// (unless `damage_ok`, for reindex) a damaged schema history is corruption.
fn probe_index(layout: &Layout, damage_ok: bool) -> Result<()> {
    if index_state(layout).is_some() {
        return Ok(());
    }
    match Db::open_read(&layout.db()) {
        Ok((db, Schema::Newer { version })) => Err(db.too_new(&layout.db(), version)),
        Ok(_) => Ok(()),
        Err(e @ Error::ForeignIndex { .. }) => Err(e),
        Err(e @ Error::IndexHistory { .. }) if !damage_ok => Err(e),
        // Other damage is for the writable open to report, or reindex to repair.
        Err(_) => Ok(()),
    }
}

/// An index that exists must be a regular file (a symbolic link to one
/// is followed): a directory or a FIFO there is damage nothing moves aside
/// by itself, and a FIFO would make SQLite wait forever.
fn check_index_is_file(layout: &Layout) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::metadata(layout.db()) else {
        return Ok(());
    };
    let kind = meta.file_type();
    let kind = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "a device"
    };
    Err(Error::IndexNotFile {
        db: layout.db(),
        kind,
    })
}

/// A root that exists must be a directory (a missing one is created by the
/// commands that write): a file there is a usage error, said plainly.
fn check_root_is_directory(layout: &Layout) -> Result<()> {
    match std::fs::metadata(layout.root()) {
        Ok(m) if !m.is_dir() => Err(Error::Usage(format!(
            "registry root {} is not a directory; the root must be a directory (a missing one is created)",
            layout.root().display()
        ))),
        _ => Ok(()),
    }
}
