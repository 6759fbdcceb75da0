//! The `pending_removals` journal: a snapshot directory `rm` has deleted
//! the rows of but not yet moved out of `snapshots/`.

use crate::db::{self, Db};
use crate::model::digest::Digest;
use crate::model::error::{IoContext, Result};
use crate::store::files::remove_dir_if_exists;
use crate::store::layout::{Layout, SnapshotName};

/// Finish every removal a crashed `rm` left recorded. The caller holds the
/// registry lock.
pub fn finish_removals(layout: &Layout, db: &Db) -> Result<()> {
    for (digest, name) in db::snapshots::pending_removals(db.conn())? {
        match name.parse::<SnapshotName>() {
            Ok(name) => drop(finish_removal(layout, db, &digest, &name)?),
            // Not a name rm could have written; nothing on disk to move.
            Err(_) => db::snapshots::delete_pending_removal(db.conn(), &digest)?,
        }
    }
    Ok(())
}

/// Move the removed snapshot's directory out of `snapshots/` (freeing its
/// name at once), delete it, drop its row from microsandbox's
/// `snapshot_index` in a shared home, then drop the record. A directory
/// that a snapshot row names again is not the removed one and stays.
/// Returns a hint when microsandbox's index could not be updated.
pub fn finish_removal(
    layout: &Layout,
    db: &Db,
    digest: &Digest,
    name: &SnapshotName,
) -> Result<Option<String>> {
    let conn = db.conn();
    let dir = layout.snapshot(name);
    let doomed = layout.staging().join(format!("rm-{}", digest.hex()));
    let reused = db::snapshots::snapshot_by_name(conn, name.as_str())?.is_some();
    if !reused && dir.symlink_metadata().is_ok() {
        remove_dir_if_exists(&doomed)?;
        std::fs::rename(&dir, &doomed).at("rename", &dir)?;
        crate::process::failpoint::hit(crate::process::failpoint::RM_RENAMED)?;
    }
    remove_dir_if_exists(&doomed)?;
    let hint = crate::store::shared_home::forget_snapshot(layout, digest);
    db::snapshots::delete_pending_removal(conn, digest)?;
    Ok(hint)
}
