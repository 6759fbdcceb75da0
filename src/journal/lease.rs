//! Leases of in-flight imports (DESIGN §5). An import is live exactly while
//! its process holds an exclusive flock on `staging/<id>.lock`; its journal
//! row is committed before the first staged byte, so gc and recovery can
//! tell a live import's files from a dead one's debris.

use std::fs::{File, TryLockError};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::db::{self, Db, ImportState, now_unix};
use crate::model::error::{Error, IoContext, Result};
use crate::store::files::{open_lock, remove_dir_if_exists};
use crate::store::layout::Layout;

/// A live import's lease: its id, its held lock and its staging directory.
pub struct Lease {
    id: String,
    staging: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Lease {
    /// Take a new lease: lock file first (so nothing ever sees the row or
    /// the staging directory without a held lock), then the staging
    /// directory, then the committed journal row.
    pub fn acquire(layout: &Layout, db: &mut Db, source: &str) -> Result<Lease> {
        Lease::acquire_pinned(layout, db, source, &[])
    }

    /// [`Lease::acquire`], pinning `images` for the import in the same
    /// commit as its row (one sync of the index instead of one each).
    pub fn acquire_pinned(
        layout: &Layout,
        db: &mut Db,
        source: &str,
        images: &[crate::model::digest::Digest],
    ) -> Result<Lease> {
        let (id, lock, lock_path) = loop {
            let id = random_id()?;
            let lock_path = layout.import_lock(&id);
            let lock = File::options()
                .create_new(true)
                .write(true)
                .open(&lock_path)
                .at("create", &lock_path)?;
            lock.lock().at("lock", &lock_path)?;
            // A gc that saw the file before we locked it may have unlinked it.
            let still_ours = std::fs::metadata(&lock_path)
                .map(|m| m.ino() == lock.metadata().map(|l| l.ino()).unwrap_or(0))
                .unwrap_or(false);
            if still_ours {
                break (id, lock, lock_path);
            }
        };
        let staging = layout.import_staging(&id);
        let journaled = std::fs::create_dir(&staging)
            .at("create directory", &staging)
            .and_then(|()| {
                let tx = db.write()?;
                db::imports::create_import(&tx, &id, source, now_unix())?;
                for image in images {
                    db::imports::insert_pin(&tx, &id, image)?;
                }
                Ok(tx.commit()?)
            });
        if let Err(e) = journaled {
            // No row names this id: take back what was made, so a refused
            // write (read-only index, full disk) leaves nothing behind.
            let _ = remove_dir_if_exists(&staging);
            let _ = std::fs::remove_file(&lock_path);
            return Err(e);
        }
        crate::process::failpoint::hit(crate::process::failpoint::LEASE_ACQUIRED)?;
        Ok(Lease {
            id,
            staging,
            lock_path,
            _lock: lock,
        })
    }

    /// Take over the lease of import `id` whose process died (its lock is
    /// free): its staging and journal row are kept, so a rerun of a pull
    /// resumes from what the dead one downloaded. `None` when it is live,
    /// or gc cleared it first.
    pub fn adopt(layout: &Layout, db: &Db, id: &str) -> Result<Option<Lease>> {
        let lock_path = layout.import_lock(id);
        let Some(lock) = open_lock(&lock_path, false)? else {
            return Ok(None);
        };
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", lock_path, e)),
        }
        // Under the lock nothing else clears it; check that nothing did before.
        let same_file = std::fs::metadata(&lock_path)
            .map(|m| m.ino() == lock.metadata().map(|l| l.ino()).unwrap_or(0))
            .unwrap_or(false);
        let staging = layout.import_staging(id);
        let still_staging = db::imports::imports_in_states(db.conn(), &[ImportState::Staging])?
            .iter()
            .any(|r| r.id == id);
        if !same_file || !staging.is_dir() || !still_staging {
            return Ok(None);
        }
        Ok(Some(Lease {
            id: id.to_string(),
            staging,
            lock_path,
            _lock: lock,
        }))
    }

    /// Let the lease go without ending it: its staging and journal row
    /// stay for a later [`Lease::adopt`] (or gc, after its grace period).
    pub fn release(self) {}

    /// The import id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `staging/<id>/`.
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    /// End the lease: delete the staging directory, record the final
    /// state, delete the lock file, then let the lock go.
    ///
    /// Staging goes first so that a failed import leaves nothing behind
    /// even when the index cannot be written (a full disk frees its space
    /// this way before the journal write needs some).
    pub fn finish(self, db: &mut Db, state: ImportState, error: Option<&str>) -> Result<()> {
        remove_dir_if_exists(&self.staging)?;
        crate::process::failpoint::hit(crate::process::failpoint::LEASE_STAGING_REMOVED)?;
        {
            let tx = db.write()?;
            db::imports::set_import_state(&tx, &self.id, state, Some(now_unix()), error)?;
            tx.commit()?;
        }
        std::fs::remove_file(&self.lock_path).at("remove", &self.lock_path)?;
        Ok(())
    }
}

/// Whether the import `id` is live (its lock is held by some process).
pub fn is_live(layout: &Layout, id: &str) -> Result<bool> {
    let path = layout.import_lock(id);
    let Some(file) = open_lock(&path, false)? else {
        return Ok(false);
    };
    match file.try_lock() {
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
    }
}

/// A dead import's lock, held while its staging entries are deleted.
///
/// A new importer that created a lock file just before gc listed it blocks
/// on the lock until this guard drops, then finds its file unlinked and
/// takes another id (see [`Lease::acquire`]).
pub struct DeadLease {
    _lock: Option<File>,
}

/// Claim import `id` for cleanup when it is dead: take its lock without
/// waiting and keep it until the guard drops. `None` when it is live.
pub fn claim_dead(layout: &Layout, id: &str) -> Result<Option<DeadLease>> {
    let path = layout.import_lock(id);
    let Some(file) = open_lock(&path, false)? else {
        return Ok(Some(DeadLease { _lock: None }));
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(None),
        Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
    }
    let locked = file.metadata().at("stat", &path)?.ino();
    match std::fs::metadata(&path) {
        Ok(m) if m.ino() != locked => Ok(None),
        _ => Ok(Some(DeadLease { _lock: Some(file) })),
    }
}

/// Clear what imports that died while staging left (their lock is not
/// held, so no process is writing there): each one's staging directory and
/// lock file go, and its journal row is marked failed. Imports that died
/// while promoting are left to recovery. Returns how many were cleared.
pub fn clear_dead_staging(layout: &Layout, db: &mut Db) -> Result<usize> {
    let mut cleared = 0;
    for row in dead_imports(layout, db, &[ImportState::Staging])? {
        // A pull's partial download waits for its rerun; gc decides its end.
        if row.source.starts_with(db::gc::PULL_SOURCE_PREFIX) {
            continue;
        }
        let Some(_claim) = claim_dead(layout, &row.id)? else {
            continue;
        };
        remove_dir_if_exists(&layout.import_staging(&row.id))?;
        {
            let tx = db.write()?;
            db::imports::set_import_state(
                &tx,
                &row.id,
                ImportState::Failed,
                Some(now_unix()),
                Some("its process died while staging; a later import cleared its staging"),
            )?;
            tx.commit()?;
        }
        let lock = layout.import_lock(&row.id);
        match std::fs::remove_file(&lock) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("remove", lock, e));
            }
            _ => {}
        }
        cleared += 1;
    }
    Ok(cleared)
}

/// 128 random bits as hex, from the kernel.
fn random_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .at("read", "/dev/urandom")?;
    Ok(hex::encode(bytes))
}

/// Imports in `state` whose process is gone.
pub fn dead_imports(
    layout: &Layout,
    db: &Db,
    states: &[ImportState],
) -> Result<Vec<db::ImportRow>> {
    let mut dead = Vec::new();
    for row in db::imports::imports_in_states(db.conn(), states)? {
        if !is_live(layout, &row.id)? {
            dead.push(row);
        }
    }
    Ok(dead)
}
