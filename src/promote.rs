//! Journaled promotion (DESIGN §5): the only way files enter `snapshots/`
//! and `cache/`. Under the registry lock, the renames are committed to the
//! journal with state `promoting`, performed, then the rows are committed
//! with state `done` in one transaction that re-runs the compatibility
//! check. A crash in between is undone by [`recover`] on the next open, so
//! the index never names a half-promoted snapshot and no promoted file is
//! left without a row.

use rusqlite::Connection;

pub use crate::db::imports::Move;

use crate::db::{self, ImportState, now_unix};
use crate::error::{Error, IoContext, Result};
use crate::failpoint;
use crate::files::{fsync_dir, sync_filesystem};
use crate::lease::{Lease, dead_imports, remove_dir_if_exists};
use crate::registry::{Registry, RegistryLock};

/// Install `moves` and commit the rows `insert` writes, all or nothing.
///
/// `check` runs inside both write transactions and must fail when the index
/// no longer allows the import (same name with other content, …); `insert`
/// runs inside the final one. The caller holds the registry lock (taken
/// before it planned the moves) and a live lease.
pub fn promote(
    registry: &mut Registry,
    lock: &RegistryLock,
    lease: &Lease,
    moves: &[Move],
    check: impl Fn(&Connection) -> Result<()>,
    insert: impl FnOnce(&Connection) -> Result<()>,
) -> Result<()> {
    let layout = registry.layout().clone();
    recover_locked(registry, lock)?;
    // Staged files are written without fsync; one syncfs makes them all
    // durable before the journal names them.
    sync_filesystem(layout.root())?;
    {
        let tx = registry.db_mut().write()?;
        check(&tx)?;
        for m in moves {
            if layout.resolve(&m.target).symlink_metadata().is_ok() {
                return Err(Error::conflict(
                    m.target.clone(),
                    "a file the index does not know is in the way; run `msb-registry gc` to clear debris",
                ));
            }
        }
        db::imports::insert_moves(&tx, lease.id(), moves)?;
        db::imports::set_import_state(&tx, lease.id(), ImportState::Promoting, None, None)?;
        tx.commit()?;
    }
    failpoint::hit(failpoint::PROMOTE_JOURNALED)?;
    let result = rename_all(registry, moves).and_then(|()| {
        failpoint::hit(failpoint::PROMOTE_RENAMED)?;
        let tx = registry.db_mut().write()?;
        check(&tx)?;
        insert(&tx)?;
        db::imports::set_import_state(&tx, lease.id(), ImportState::Done, Some(now_unix()), None)?;
        failpoint::hit(failpoint::PROMOTE_BEFORE_COMMIT)?;
        tx.commit()?;
        Ok(())
    });
    if let Err(e) = result {
        undo(registry, moves)?;
        return Err(e);
    }
    failpoint::hit(failpoint::PROMOTE_COMMITTED)?;
    Ok(())
}

fn rename_all(registry: &Registry, moves: &[Move]) -> Result<()> {
    let layout = registry.layout();
    let mut dirs = Vec::new();
    for m in moves {
        let from = layout.resolve(&m.staged);
        let to = layout.resolve(&m.target);
        std::fs::rename(&from, &to).at("rename", &from)?;
        failpoint::hit(failpoint::PROMOTE_RENAME)?;
        if let Some(parent) = to.parent()
            && !dirs.contains(&parent.to_path_buf())
        {
            dirs.push(parent.to_path_buf());
        }
    }
    for d in dirs {
        fsync_dir(&d)?;
    }
    Ok(())
}

/// Put back, in reverse, every move whose target exists and whose staged
/// path does not: exactly the renames this promotion made.
fn undo(registry: &Registry, moves: &[Move]) -> Result<()> {
    let layout = registry.layout();
    for m in moves.iter().rev() {
        let staged = layout.resolve(&m.staged);
        let target = layout.resolve(&m.target);
        if target.symlink_metadata().is_ok() && staged.symlink_metadata().is_err() {
            std::fs::rename(&target, &staged).at("rename back", &target)?;
        }
    }
    Ok(())
}

/// Roll back every promotion whose process died mid-way, and mark it failed;
/// finish every `rm` that died before moving its directory away. Runs on
/// every open; costs two indexed queries when nothing is pending.
pub fn recover(registry: &mut Registry) -> Result<()> {
    let pending = dead_imports(registry, &[ImportState::Promoting])?;
    let removals = db::snapshots::pending_removals(registry.db().conn())?;
    if pending.is_empty() && removals.is_empty() {
        return Ok(());
    }
    let lock = registry.lock()?;
    recover_locked(registry, &lock)
}

/// [`recover`] under the registry lock the caller holds. A promotion also
/// runs it first: an importer that opened the registry before another died
/// mid-promotion would otherwise find that one's renamed files in its way.
fn recover_locked(registry: &mut Registry, _lock: &RegistryLock) -> Result<()> {
    crate::remove::finish_removals(registry)?;
    for import in dead_imports(registry, &[ImportState::Promoting])? {
        let moves = db::imports::import_moves(registry.db().conn(), &import.id)?;
        undo(registry, &moves)?;
        failpoint::hit(failpoint::RECOVER_UNDONE)?;
        let tx = registry.db_mut().write()?;
        db::imports::set_import_state(
            &tx,
            &import.id,
            ImportState::Failed,
            Some(now_unix()),
            Some("interrupted during promotion; rolled back"),
        )?;
        tx.commit()?;
        remove_dir_if_exists(&registry.layout().import_staging(&import.id))?;
        let lock = registry.layout().import_lock(&import.id);
        if lock.exists() {
            std::fs::remove_file(&lock).at("remove", &lock)?;
        }
    }
    Ok(())
}
