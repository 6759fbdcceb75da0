//! Crash recovery: the one place that reads every journal a killed process
//! may have left (DESIGN §5) and finishes or undoes its work. Promotions
//! whose process died are rolled back; removals `rm` recorded are finished.
//! Dead imports that never reached promotion hold nothing outside
//! `staging/`, which gc sweeps.

use super::lease::dead_imports;
use super::lock::{RegistryLock, lock_exclusive};
use super::moves::undo;
use super::removal::finish_removals;
use super::renaming::finish_renames;
use crate::db::{self, Db, ImportState, now_unix};
use crate::model::error::{IoContext, Result};
use crate::process::failpoint;
use crate::store::files::remove_dir_if_exists;
use crate::store::layout::Layout;

/// Roll back every promotion whose process died mid-way, and mark it failed;
/// finish every `rm` or `rename` that died before moving its directory. Runs
/// on every open; costs three indexed queries when nothing is pending.
pub fn recover(layout: &Layout, db: &mut Db) -> Result<()> {
    let pending = dead_imports(layout, db, &[ImportState::Promoting])?;
    let removals = db::snapshots::pending_removals(db.conn())?;
    let renames = db::snapshots::pending_renames(db.conn())?;
    if pending.is_empty() && removals.is_empty() && renames.is_empty() {
        return Ok(());
    }
    let lock = lock_exclusive(layout)?;
    recover_locked(layout, db, &lock)
}

/// [`recover`] under the registry lock the caller holds. A promotion also
/// runs it first: an importer that opened the registry before another died
/// mid-promotion would otherwise find that one's renamed files in its way.
pub fn recover_locked(layout: &Layout, db: &mut Db, _lock: &RegistryLock) -> Result<()> {
    finish_removals(layout, db)?;
    finish_renames(layout, db)?;
    for import in dead_imports(layout, db, &[ImportState::Promoting])? {
        let moves = db::imports::import_moves(db.conn(), &import.id)?;
        undo(layout, &moves)?;
        failpoint::hit(failpoint::RECOVER_UNDONE)?;
        let tx = db.write()?;
        db::imports::set_import_state(
            &tx,
            &import.id,
            ImportState::Failed,
            Some(now_unix()),
            Some("interrupted during promotion; rolled back"),
        )?;
        tx.commit()?;
        remove_dir_if_exists(&layout.import_staging(&import.id))?;
        let lock = layout.import_lock(&import.id);
        if lock.exists() {
            std::fs::remove_file(&lock).at("remove", &lock)?;
        }
    }
    Ok(())
}
