//! `rename`: give a snapshot a new name, its row and directory together.

use serde::Serialize;

use crate::db;
use crate::journal::renaming::finish_rename;
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;
use crate::store::layout::SnapshotName;

/// What `rename` did.
#[derive(Debug, Clone, Serialize)]
pub struct RenameReport {
    /// The renamed snapshot.
    pub digest: Digest,
    /// Its name before.
    pub old_name: String,
    /// Its name now.
    pub name: String,
    /// In a shared home whose snapshots this changed: how to refresh
    /// microsandbox's view (`msb snapshot reindex`); null otherwise.
    pub microsandbox_hint: Option<String>,
}

impl Registry {
    /// Rename a snapshot; a name another snapshot holds (or a directory
    /// without a row) is a conflict. Renaming to its own name is a no-op.
    ///
    /// The row takes the new name in a committed transaction that also
    /// records the directory move still to do (`pending_renames`); then the
    /// directory moves and the record is dropped. A crash in between is
    /// rolled forward by the next command that opens the registry
    /// ([`crate::journal::recover`]).
    pub fn rename(&mut self, reference: &str, new_name: &str) -> Result<RenameReport> {
        let new = SnapshotName::chosen(new_name)?;
        let _lock = self.lock()?;
        self.clear_dead_staging()?;
        let row = self.resolve(reference)?;
        new.impersonation(&row.digest)?;
        let report = |name: String| RenameReport {
            digest: row.digest,
            old_name: row.name.clone(),
            name,
            microsandbox_hint: None,
        };
        if row.name == new.as_str() {
            return Ok(report(row.name.clone()));
        }
        if let Some(other) = db::snapshots::snapshot_by_name(self.db().conn(), new.as_str())? {
            return Err(Error::Conflict {
                subject: new.to_string(),
                detail: format!("the name is taken by snapshot {}", other.digest),
            });
        }
        let target = self.layout().snapshot(&new);
        if target.symlink_metadata().is_ok() {
            return Err(Error::Conflict {
                subject: new.to_string(),
                detail: crate::ops::gc::in_the_way(&target),
            });
        }
        let old: SnapshotName = row.name.parse()?;
        {
            let tx = self.db_mut().write()?;
            db::snapshots::set_name(&tx, &row.digest, new.as_str())?;
            db::snapshots::insert_pending_rename(
                &tx,
                &row.digest,
                old.as_str(),
                new.as_str(),
                db::now_unix(),
            )?;
            crate::process::failpoint::hit(crate::process::failpoint::RENAME_BEFORE_COMMIT)?;
            tx.commit()?;
        }
        crate::process::failpoint::hit(crate::process::failpoint::RENAME_COMMITTED)?;
        let (layout, db) = self.parts();
        let microsandbox_hint = finish_rename(layout, db, &row.digest, &old, &new)?;
        Ok(RenameReport {
            microsandbox_hint,
            ..report(new.to_string())
        })
    }
}
