//! The registry handle: a root directory, its index, and the reference
//! resolution every command shares.

use std::path::PathBuf;

use crate::db::{self, Db, SnapshotRow};
use crate::digest::{Digest, is_lower_hex};
use crate::error::{Error, IoContext, Result};
use crate::journal::{self, RegistryLock, lock::lock_exclusive};
use crate::layout::Layout;

/// The shortest digest prefix accepted as a reference.
pub const MIN_PREFIX: usize = 8;

/// An open registry.
pub struct Registry {
    layout: Layout,
    db: Db,
}

impl Registry {
    /// Open the registry at `root`, creating it when absent, and repair any
    /// promotion a crashed process left half done.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let layout = Layout::new(root);
        for dir in layout.dirs() {
            std::fs::create_dir_all(&dir).at("create directory", &dir)?;
        }
        let mut db = {
            let _first_open = lock_exclusive(&layout)?;
            Db::open(&layout.db())?
        };
        journal::recover(&layout, &mut db)?;
        Ok(Registry { layout, db })
    }

    /// The paths of this registry.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The index.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The index, for write transactions.
    pub fn db_mut(&mut self) -> &mut Db {
        &mut self.db
    }

    /// The paths and the index together, for the journal layer.
    pub(crate) fn parts(&mut self) -> (&Layout, &mut Db) {
        (&self.layout, &mut self.db)
    }

    /// Take the exclusive registry lock, waiting for the current holder.
    pub fn lock(&self) -> Result<RegistryLock> {
        lock_exclusive(&self.layout)
    }

    /// Find a snapshot by name, full digest, or unique hex prefix of at least
    /// eight digits (with or without `sha256:`).
    pub fn resolve(&self, reference: &str) -> Result<SnapshotRow> {
        let conn = self.db.conn();
        let not_found = || Error::NotFound {
            what: "snapshot",
            reference: reference.to_string(),
        };
        if let Ok(digest) = reference.parse::<Digest>() {
            return db::snapshots::snapshot_by_digest(conn, &digest)?.ok_or_else(not_found);
        }
        if let Some(row) = db::snapshots::snapshot_by_name(conn, reference)? {
            return Ok(row);
        }
        let hex_prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if !hex_prefix.bytes().all(is_lower_hex) {
            return Err(not_found());
        }
        if hex_prefix.len() < MIN_PREFIX {
            return Err(Error::NotFound {
                what: "snapshot",
                reference: format!(
                    "{reference} (no snapshot has that name, and a digest prefix needs at least {MIN_PREFIX} hex digits)"
                ),
            });
        }
        let matches = db::snapshots::digests_with_prefix(conn, hex_prefix, 11)?;
        match matches.as_slice() {
            [] => Err(not_found()),
            [one] => db::snapshots::snapshot_by_digest(conn, one)?.ok_or_else(not_found),
            many => Err(Error::Ambiguous {
                reference: reference.to_string(),
                candidates: many
                    .iter()
                    .map(|d| {
                        let name = db::snapshots::snapshot_by_digest(conn, d)?.map(|r| r.name);
                        Ok(format!("{} ({d})", name.unwrap_or_default()))
                    })
                    .collect::<Result<_>>()?,
            }),
        }
    }
}
