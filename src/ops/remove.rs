//! `rm`: remove a snapshot's directory and rows together.

use std::collections::HashSet;

use serde::Serialize;

use crate::db;
use crate::journal::removal::finish_removal;
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;
use crate::store::layout::SnapshotName;

/// How many children a refused `rm` names.
const SHOWN_CHILDREN: usize = 5;

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
    /// See [`Registry::remove_all`].
    pub fn remove(&mut self, reference: &str, force: bool) -> Result<RemoveReport> {
        let mut reports = self.remove_all(&[reference.to_string()], force)?;
        Ok(reports.remove(0))
    }

    /// Remove several snapshots, all or nothing as far as checks go: every
    /// reference is resolved and every snapshot checked for children (other
    /// than ones removed with it) before the first is removed, so a bad
    /// reference or a refused snapshot removes none. A reference given twice
    /// counts once.
    ///
    /// Each snapshot's rows go first, in a committed transaction that also
    /// records the directory still to move (`pending_removals`); then the
    /// directory is renamed out of `snapshots/` and deleted, and the record
    /// dropped. A crash in between never leaves a row without its files, and
    /// the next command that opens the registry finishes the move
    /// ([`crate::journal::recover`]), so the name is free again at once.
    pub fn remove_all(&mut self, references: &[String], force: bool) -> Result<Vec<RemoveReport>> {
        let _lock = self.lock()?;
        self.clear_dead_staging()?;
        let mut rows = Vec::new();
        for reference in references {
            let row = self.resolve(reference)?;
            if !rows
                .iter()
                .any(|r: &crate::db::SnapshotRow| r.digest == row.digest)
            {
                rows.push(row);
            }
        }
        let doomed: HashSet<Digest> = rows.iter().map(|r| r.digest).collect();
        let mut orphans = Vec::new();
        for row in &rows {
            let conn = self.db().conn();
            let children = db::snapshots::children(conn, &row.digest)?;
            let staying: Vec<&(Digest, String)> = children
                .iter()
                .filter(|(d, _)| !doomed.contains(d))
                .collect();
            if !staying.is_empty() && !force {
                return Err(Error::HasChildren {
                    name: row.name.clone(),
                    digest: row.digest,
                    children: staying.len() as u64,
                    named: staying
                        .iter()
                        .take(SHOWN_CHILDREN)
                        .map(|(_, n)| n.clone())
                        .collect(),
                });
            }
            orphans.push(staying.len() as u64);
        }
        let mut reports = Vec::new();
        for (row, orphaned_children) in rows.into_iter().zip(orphans) {
            let name: SnapshotName = row.name.parse()?;
            {
                let tx = self.db_mut().write()?;
                db::snapshots::delete_snapshot(&tx, &row.digest)?;
                db::snapshots::insert_pending_removal(&tx, &row.digest, &row.name, db::now_unix())?;
                crate::process::failpoint::hit(crate::process::failpoint::RM_BEFORE_COMMIT)?;
                tx.commit()?;
            }
            crate::process::failpoint::hit(crate::process::failpoint::RM_COMMITTED)?;
            let (layout, db) = self.parts();
            let microsandbox_hint = finish_removal(layout, db, &row.digest, &name)?;
            reports.push(RemoveReport {
                digest: row.digest,
                name: row.name,
                orphaned_children,
                microsandbox_hint,
            });
        }
        Ok(reports)
    }
}
