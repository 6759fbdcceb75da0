//! The `pending_renames` journal: a snapshot whose row `rename` has given
//! a new name but whose directory has not yet moved to it.

use crate::db::{self, Db};
use crate::model::digest::Digest;
use crate::model::error::{IoContext, Result};
use crate::store::layout::{Layout, SnapshotName};

/// Finish every rename a crashed `rename` left recorded. The caller holds
/// the registry lock.
pub fn finish_renames(layout: &Layout, db: &Db) -> Result<()> {
    for (digest, old, new) in db::snapshots::pending_renames(db.conn())? {
        match (old.parse::<SnapshotName>(), new.parse::<SnapshotName>()) {
            (Ok(old), Ok(new)) => drop(finish_rename(layout, db, &digest, &old, &new)?),
            // Not names rename could have written; nothing on disk to move.
            _ => db::snapshots::delete_pending_rename(db.conn(), &digest)?,
        }
    }
    Ok(())
}

/// Move the directory from `old` to `new` unless that already happened,
/// point microsandbox's `snapshot_index` row at it in a shared home, then
/// drop the record. The row already carries `new`, so the move only ever
/// goes forward; a directory at `new` is never replaced. Returns a hint
/// when microsandbox's index could not be updated.
pub fn finish_rename(
    layout: &Layout,
    db: &Db,
    digest: &Digest,
    old: &SnapshotName,
    new: &SnapshotName,
) -> Result<Option<String>> {
    let from = layout.snapshot(old);
    let to = layout.snapshot(new);
    if to.symlink_metadata().is_err() && from.symlink_metadata().is_ok() {
        std::fs::rename(&from, &to).at("rename", &from)?;
        crate::store::files::fsync_dir(&layout.snapshots())?;
        crate::process::failpoint::hit(crate::process::failpoint::RENAME_MOVED)?;
    }
    let hint = crate::store::shared_home::move_snapshot(layout, digest, old, new);
    db::snapshots::delete_pending_rename(db.conn(), digest)?;
    Ok(hint)
}
