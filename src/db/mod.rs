//! The index database: opening with the house pragmas, the embedded
//! migrations, and (in the child modules) every SQL statement the registry runs.

pub mod chunks;
pub mod gc;
pub mod images;
pub mod imports;
pub mod microsandbox;
pub mod remote;
pub mod signatures;
pub mod snapshots;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::model::error::{Error, Result};

pub use images::{CacheFileRow, ImageRow};
pub use imports::{ImportFileRow, ImportRow, ImportState};
pub use snapshots::{LineageRow, SnapshotFileRow, SnapshotRow};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How long a writer waits for another writer's transaction before giving
/// up, unless `MSB_REGISTRY_LOCK_TIMEOUT` says otherwise.
const BUSY_TIMEOUT: Duration = Duration::from_secs(60);

/// `MSB_REGISTRY_LOCK_TIMEOUT` (seconds), when set: how long any wait for
/// another msb-registry command lasts before this one gives up.
pub fn wait_limit() -> Option<Duration> {
    static LIMIT: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var("MSB_REGISTRY_LOCK_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
    })
}

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
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(migration_error)?;
        Ok(Db { conn })
    }

    /// Open an existing index read-only: read commands and user queries.
    /// Nothing is created; on a root the process cannot write, where
    /// SQLite cannot make the WAL index, it reads the file as it stands
    /// (no writer can be at work there).
    pub fn open_read(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)?;
        configure(&conn)?;
        conn.pragma_update(None, "query_only", true)?;
        match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        }) {
            Ok(_) => Ok(Db { conn }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly
                ) =>
            {
                drop(conn);
                let uri = format!("file:{}?immutable=1", uri_path(path));
                let conn = Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)?;
                configure(&conn)?;
                conn.pragma_update(None, "query_only", true)?;
                Ok(Db { conn })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether migrations this binary embeds are not yet applied.
    pub fn needs_migration(&self) -> Result<bool> {
        let latest = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| m.version())
            .max()
            .unwrap_or(0);
        let applied: Option<i64> = match self.conn.query_row(
            "SELECT max(version) FROM refinery_schema_history",
            [],
            |r| r.get(0),
        ) {
            Ok(v) => v,
            Err(rusqlite::Error::SqliteFailure(_, Some(msg))) if msg.contains("no such table") => {
                None
            }
            Err(e) => return Err(e.into()),
        };
        Ok(applied.unwrap_or(0) < i64::from(latest))
    }

    /// Whether the index file at `path` is damaged: not a database, or
    /// failing SQLite's quick check.
    pub fn is_damaged(path: &Path) -> Result<bool> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        configure(&conn)?;
        match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
            Ok(verdict) => Ok(verdict != "ok"),
            Err(e) if crate::model::error::is_corrupt(&e) => Ok(true),
            Err(e) => Err(e.into()),
        }
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

    /// Commit without waiting for the disk (`synchronous = NORMAL`; WAL
    /// keeps the index consistent through any crash, a power loss may drop
    /// the last commits). For commands whose writes are only a cache of
    /// what a remote holds: `push`.
    pub fn relax_durability(&self) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// Start a write transaction that takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so check-then-insert sequences cannot interleave.
    pub fn write(&mut self) -> Result<Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }
}

/// A migration that failed because the index is corrupt is reported as
/// corruption (exit 5, with the reindex hint), not as a migration bug.
fn migration_error(e: refinery::Error) -> Error {
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        if let Some(db) = cause.downcast_ref::<rusqlite::Error>()
            && crate::model::error::is_corrupt(db)
        {
            return Error::Db(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(db.to_string()),
            ));
        }
        source = cause.source();
    }
    Error::Migration(e)
}

/// `path` as a URI path: `%`, `?` and `#` escaped.
fn uri_path(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3f"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    out
}

/// How often a connection waiting for another writer retries.
const BUSY_POLL: Duration = Duration::from_millis(50);

/// Wait for another writer's transaction, saying so on stderr after a
/// second, and give up (SQLITE_BUSY, exit 4) after [`BUSY_TIMEOUT`].
fn wait_for_writer(attempts: i32) -> bool {
    let limit = wait_limit().unwrap_or(BUSY_TIMEOUT);
    let waited = BUSY_POLL * attempts.max(0) as u32;
    if waited >= limit {
        return false;
    }
    if attempts == (Duration::from_secs(1).as_millis() / BUSY_POLL.as_millis()) as i32 {
        eprintln!(
            "waiting for another msb-registry command to finish writing the index; giving up after {} s",
            limit.as_secs()
        );
    }
    std::thread::sleep(BUSY_POLL);
    true
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_handler(Some(wait_for_writer))?;
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
        let db = Db::open_read(&path).unwrap();
        assert!(db.conn().execute("DELETE FROM snapshots", []).is_err());
    }
}
