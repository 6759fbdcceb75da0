//! Journaled promotion (DESIGN §5): the only way files enter `snapshots/`
//! and `cache/`. Under the registry lock, the renames are committed to the
//! journal with state `promoting`, performed, then the rows are committed
//! with state `done` in one transaction that re-runs the compatibility
//! check. A crash in between is undone by [`super::recover`] on the next open, so
//! the index never names a half-promoted snapshot and no promoted file is
//! left without a row.

use rusqlite::Connection;

pub use crate::db::imports::Move;

use super::lease::Lease;
use super::lock::RegistryLock;
use super::moves::{rename_all, undo};
use super::recovery::recover_locked;
use crate::db::{self, Db, ImportState, now_unix};
use crate::model::error::{Error, Result};
use crate::process::failpoint;
use crate::store::files::sync_filesystem;
use crate::store::layout::Layout;

/// Install `moves` and commit the rows `insert` writes, all or nothing.
///
/// `check` runs inside both write transactions and must fail when the index
/// no longer allows the import (same name with other content, …); `insert`
/// runs inside the final one. The caller holds the registry lock (taken
/// before it planned the moves) and a live lease.
pub fn promote(
    layout: &Layout,
    db: &mut Db,
    lock: &RegistryLock,
    lease: &Lease,
    moves: &[Move],
    check: impl Fn(&Connection) -> Result<()>,
    insert: impl FnOnce(&Connection) -> Result<()>,
) -> Result<()> {
    recover_locked(layout, db, lock)?;
    // Staged files are written without fsync; one syncfs makes them all
    // durable before the journal names them.
    sync_filesystem(layout.root())?;
    {
        let tx = db.write()?;
        check(&tx)?;
        for (i, m) in moves.iter().enumerate() {
            // A repair's first move takes the damaged directory out of the way.
            let vacated = moves[..i].iter().any(|earlier| earlier.staged == m.target);
            if !vacated && layout.resolve(&m.target).symlink_metadata().is_ok() {
                let detail = if m.target.starts_with("cache/") {
                    "a cache file the index does not know is in the way (microsandbox may have written it since the last reindex): `msb-registry reindex` indexes it; then retry"
                } else {
                    "a file or directory the index does not know appeared in the way while the install was checked: `msb-registry verify` says what it is; retry"
                };
                return Err(Error::conflict(m.target.clone(), detail));
            }
        }
        db::imports::insert_moves(&tx, lease.id(), moves)?;
        db::imports::set_import_state(&tx, lease.id(), ImportState::Promoting, None, None)?;
        tx.commit()?;
    }
    failpoint::hit(failpoint::PROMOTE_JOURNALED)?;
    let result = rename_all(layout, moves).and_then(|()| {
        failpoint::hit(failpoint::PROMOTE_RENAMED)?;
        let tx = db.write()?;
        check(&tx)?;
        insert(&tx)?;
        db::imports::set_import_state(&tx, lease.id(), ImportState::Done, Some(now_unix()), None)?;
        failpoint::hit(failpoint::PROMOTE_BEFORE_COMMIT)?;
        tx.commit()?;
        Ok(())
    });
    if let Err(e) = result {
        undo(layout, moves)?;
        return Err(e);
    }
    failpoint::hit(failpoint::PROMOTE_COMMITTED)?;
    Ok(())
}
