//! The index database: opening with the house pragmas, the embedded
//! migrations, and (in the child modules) every SQL statement the registry runs.

pub mod chunks;
pub mod gc;
pub mod images;
pub mod imports;
pub mod snapshots;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::error::{Error, Result};

pub use images::{CacheFileRow, ImageRow};
pub use imports::{ImportFileRow, ImportRow, ImportState};
pub use snapshots::{LineageRow, SnapshotFileRow, SnapshotRow};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How long a writer waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to the index.
pub struct Db {
    conn: Connection,
}

impl Db {
    /// Open (creating if needed) the index at `path` and bring its schema up to date.
    ///
    /// The caller serialises first opens of a new registry (see `Registry::open`).
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        embedded::migrations::runner().run(&mut conn)?;
        Ok(Db { conn })
    }

    /// Open an existing index read-only, for user queries.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotFound {
                what: "registry database",
                reference: path.display().to_string(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        configure(&conn)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(Db { conn })
    }

    /// An in-memory index with the full schema, for unit tests and benchmarks.
    pub fn open_in_memory() -> Result<Self> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        embedded::migrations::runner().run(&mut conn)?;
        Ok(Db { conn })
    }

    /// The raw connection, for read queries in this module's children.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Start a read transaction: every query in it sees the same state of the index.
    pub fn read(&self) -> Result<Transaction<'_>> {
        Ok(self.conn.unchecked_transaction()?)
    }

    /// Start a write transaction that takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so check-then-insert sequences cannot interleave.
    pub fn write(&mut self) -> Result<Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_applies_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Db::open(&path).unwrap();
        let db = Db::open(&path).unwrap();
        let mode: String = db
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = db
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn read_only_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        Db::open(&path).unwrap();
        let db = Db::open_read_only(&path).unwrap();
        assert!(db.conn().execute("DELETE FROM snapshots", []).is_err());
    }
}
