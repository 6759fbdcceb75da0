//! `rm`: remove a snapshot's directory and rows together.

use serde::Serialize;

use crate::db;
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::layout::SnapshotName;
use crate::lease::remove_dir_if_exists;
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
}

impl Registry {
    /// Remove a snapshot; refuses when it has children unless `force`.
    ///
    /// The row goes first (in a committed transaction), then the directory:
    /// a crash in between leaves debris for gc, never a row without files.
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
        let dir = self.layout().snapshot(&name);
        // After the commit the directory is renamed out of snapshots/ at once
        // (freeing the name), then deleted at leisure.
        let doomed = self
            .layout()
            .staging()
            .join(format!("rm-{}", row.digest.hex()));
        remove_dir_if_exists(&doomed)?;
        {
            let tx = self.db_mut().write()?;
            db::snapshots::delete_snapshot(&tx, &row.digest)?;
            crate::failpoint::hit(crate::failpoint::RM_BEFORE_COMMIT)?;
            tx.commit()?;
        }
        crate::failpoint::hit(crate::failpoint::RM_COMMITTED)?;
        if dir.exists() {
            std::fs::rename(&dir, &doomed).at("rename", &dir)?;
            crate::failpoint::hit(crate::failpoint::RM_RENAMED)?;
            remove_dir_if_exists(&doomed)?;
        }
        Ok(RemoveReport {
            digest: row.digest,
            name: row.name,
            orphaned_children: children,
        })
    }
}
