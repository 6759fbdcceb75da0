//! `rm`: remove a snapshot's directory and rows together.

use serde::Serialize;

use crate::db;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::journal::removal::finish_removal;
use crate::layout::SnapshotName;
use crate::registry::Registry;

/// What `rm` did.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    /// The removed snapshot.
    pub digest: Digest,
    /// Its name.
    pub name: String,
    /// Children left shallow by `--force`.
    pub orphaned_children: u64,
    /// In a shared home whose snapshots this changed: how to refresh
    /// microsandbox's view (`msb snapshot reindex`); null otherwise.
    pub microsandbox_hint: Option<String>,
}

impl Registry {
    /// Remove a snapshot; refuses when it has children unless `force`.
    ///
    /// The rows go first, in a committed transaction that also records the
    /// directory still to move (`pending_removals`); then the directory is
    /// renamed out of `snapshots/` and deleted, and the record dropped. A
    /// crash in between never leaves a row without its files, and the next
    /// command that opens the registry finishes the move ([`crate::journal::recover`]),
    /// so the name is free again at once.
    pub fn remove(&mut self, reference: &str, force: bool) -> Result<RemoveReport> {
        let _lock = self.lock()?;
        let row = self.resolve(reference)?;
        let children = db::snapshots::children_count(self.db().conn(), &row.digest)?;
        if children > 0 && !force {
            return Err(Error::HasChildren {
                name: row.name,
                digest: row.digest,
                children,
            });
        }
        let name: SnapshotName = row.name.parse()?;
        {
            let tx = self.db_mut().write()?;
            db::snapshots::delete_snapshot(&tx, &row.digest)?;
            db::snapshots::insert_pending_removal(&tx, &row.digest, &row.name, db::now_unix())?;
            crate::failpoint::hit(crate::failpoint::RM_BEFORE_COMMIT)?;
            tx.commit()?;
        }
        crate::failpoint::hit(crate::failpoint::RM_COMMITTED)?;
        let (layout, db) = self.parts();
        finish_removal(layout, db, &row.digest, &name)?;
        Ok(RemoveReport {
            digest: row.digest,
            name: row.name,
            orphaned_children: children,
            microsandbox_hint: crate::shared_home::reindex_hint(self.layout()),
        })
    }
}
