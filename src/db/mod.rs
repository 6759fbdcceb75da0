//! The index database: opening with the house pragmas, the embedded
//! migrations, and (in the child modules) every SQL statement the registry runs.

pub mod chunks;
pub mod gc;
pub mod images;
pub mod imports;
pub mod microsandbox;
pub mod private_copy;
pub mod remote;
pub mod schema;
pub mod signatures;
pub mod snapshots;
pub mod staging;

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::model::error::{Error, Result};
use private_copy::PrivateCopy;
use schema::Schema;

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
/// another msb-registry command lasts before this one gives up. A value
/// that is not a whole number of seconds is refused by [`check_wait_limit`]
/// before any command runs.
pub fn wait_limit() -> Option<Duration> {
    parse_wait_limit().ok().flatten()
}

/// Refuse (exit 2) a `MSB_REGISTRY_LOCK_TIMEOUT` that is not a whole
/// number of seconds (`2s`, `abc`, `-1`).
pub fn check_wait_limit() -> Result<()> {
    parse_wait_limit().map(drop)
}

fn parse_wait_limit() -> Result<Option<Duration>> {
    let Some(value) = std::env::var_os("MSB_REGISTRY_LOCK_TIMEOUT") else {
        return Ok(None);
    };
    let text = value.to_string_lossy();
    match text.parse::<u64>() {
        Ok(secs) if text.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(Duration::from_secs(secs))),
        _ => Err(Error::Usage(format!(
            "MSB_REGISTRY_LOCK_TIMEOUT={:?}: expected a whole number of seconds, such as 600",
            crate::model::text::escape(&text)
        ))),
    }
}

/// A connection to the index.
pub struct Db {
    conn: Connection,
    /// The private copy the connection reads, when the index could not be
    /// read in place (dropped after the connection).
    _copy: Option<PrivateCopy>,
}

impl Db {
    /// Open (creating if needed) the index at `path` and bring its schema up to date.
    ///
    /// The schema history is checked first: a damaged one is corruption, a
    /// database that is not an msb-registry index is refused untouched, and
    /// one a newer msb-registry migrated is not written.
    /// The caller serialises first opens of a new registry (see `Registry::open`).
    pub fn open(path: &Path) -> Result<Self> {
        match Self::open_with(path, false) {
            Err(Error::Db(e)) if is_shm_storage(&e) => Self::open_with(path, true),
            other => other,
        }
    }

    /// [`Db::open`]; with `exclusive`, in exclusive locking mode, where
    /// SQLite keeps the WAL index in memory instead of a `-shm` file: for a
    /// full file system, where the `-shm` cannot be made or grown, so a
    /// writer (gc) can still open the index to free space. Readers then
    /// see the lock and read through a private copy or wait.
    fn open_with(path: &Path, exclusive: bool) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        if exclusive {
            conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        }
        if let Schema::Newer { version } = schema::inspect(&conn, path, &known())? {
            return Err(too_new(&conn, path, version, "write to it"));
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        embedded::migrations::runner()
            .run(&mut conn)
            .map_err(migration_error)?;
        let recorded: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if recorded < version_code() {
            conn.pragma_update(None, "user_version", version_code())?;
        }
        Ok(Db { conn, _copy: None })
    }

    /// Open an existing index read-only: read commands and user queries.
    /// Nothing is created beside it. Where SQLite cannot read it in place
    /// (a read-only or full file system, where the `-shm` cannot be made
    /// or grown) and no process has it open, it is read as immutable, or,
    /// when its `-wal` holds commits, through a private copy (see
    /// [`private_copy`]). Returns how its schema stands.
    pub fn open_read(path: &Path) -> Result<(Self, Schema)> {
        let in_place = open_read_only(path).and_then(|conn| {
            let schema = schema::inspect(&conn, path, &known())?;
            Ok((conn, schema))
        });
        match in_place {
            Ok((conn, schema)) => Ok((Db { conn, _copy: None }, schema)),
            Err(Error::Db(e)) if cannot_read_in_place(&e) && no_connection_soon(path) => {
                Self::open_aside(path)
            }
            Err(e) => Err(e),
        }
    }

    /// Read the index at `path` without SQLite's shared memory: as
    /// immutable when it has no `-wal`, else through a private copy of it
    /// and its `-wal`. Only sound while no process has it open.
    fn open_aside(path: &Path) -> Result<(Self, Schema)> {
        let (conn, copy) = if private_copy::has_wal(path) {
            let copy = PrivateCopy::of(path).map_err(|e| Error::io("copy", path, e))?;
            (open_read_only(copy.path())?, Some(copy))
        } else {
            let uri = format!("file:{}?immutable=1", uri_path(path));
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI;
            let conn = Connection::open_with_flags(uri, flags)?;
            configure(&conn)?;
            conn.pragma_update(None, "query_only", true)?;
            (conn, None)
        };
        let schema = schema::inspect(&conn, path, &known())?;
        Ok((Db { conn, _copy: copy }, schema))
    }

    /// Read an index whose schema is behind without writing it: a private
    /// copy (with its `-wal`) is migrated and read instead, for readers on
    /// storage where the index cannot be migrated in place.
    pub fn open_migrated_copy(path: &Path) -> Result<Self> {
        let copy = PrivateCopy::of(path).map_err(|e| Error::io("copy", path, e))?;
        let mut db = Db::open(copy.path())?;
        db.conn.pragma_update(None, "query_only", true)?;
        db._copy = Some(copy);
        Ok(db)
    }

    /// The refusal to write an index of schema `version`, newer than this
    /// binary's, naming the msb-registry that migrated it when recorded.
    pub fn too_new(&self, path: &Path, version: i64) -> Error {
        too_new(&self.conn, path, version, "write to it")
    }

    /// Whether the index file at `path` is damaged: not a database, or
    /// failing SQLite's quick check.
    /// A damaged schema history counts; a database that is not an
    /// msb-registry index is refused ([`Error::ForeignIndex`]).
    pub fn is_damaged(path: &Path) -> Result<bool> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        configure(&conn)?;
        match conn.query_row("PRAGMA quick_check", [], |r| r.get::<_, String>(0)) {
            Ok(verdict) if verdict != "ok" => return Ok(true),
            Ok(_) => {}
            Err(e) if crate::model::error::is_corrupt(&e) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        match schema::inspect(&conn, path, &known()) {
            Ok(_) => Ok(false),
            Err(Error::IndexHistory { .. }) => Ok(true),
            Err(Error::Db(e)) if crate::model::error::is_corrupt(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// An in-memory index with the full schema, for unit tests and benchmarks.
    pub fn open_in_memory() -> Result<Self> {
        let mut conn = Connection::open_in_memory()?;
        configure(&conn)?;
        embedded::migrations::runner().run(&mut conn)?;
        Ok(Db { conn, _copy: None })
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

    /// Commit waiting for the disk again (`synchronous = FULL`, as opened),
    /// after [`Db::relax_durability`] for writes that are only a cache.
    pub fn restore_durability(&self) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(())
    }

    /// This connection's page cache, in `PRAGMA cache_size` terms
    /// (negative: KiB), to put back after [`Db::set_cache_kib`].
    pub fn cache_size(&self) -> Result<i64> {
        Ok(self.conn.query_row("PRAGMA cache_size", [], |r| r.get(0))?)
    }

    /// Set this connection's page cache to `kib` KiB, or back to what
    /// [`Db::cache_size`] returned. For one command's long transactions
    /// only: the default 2 MiB cache spills an import's tens of thousands
    /// of rows into the WAL page by page and rewrites those pages there,
    /// while a larger cache on every connection made gc on a full disk fail
    /// (tests/it/diskfull.rs). Lowering it frees the pages above the new size.
    pub fn set_cache_size(&self, cache_size: i64) -> Result<()> {
        self.conn.pragma_update(None, "cache_size", cache_size)?;
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

/// The migrations this binary embeds.
fn known() -> Vec<schema::Known> {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| (i64::from(m.version()), m.name().to_string(), m.checksum()))
        .collect()
}

/// This binary's version as a number for `PRAGMA user_version`
/// (major, minor and patch, three decimal digits each), which records the
/// newest msb-registry that opened the index for writing.
fn version_code() -> i64 {
    let part = |s: &str| s.parse::<i64>().unwrap_or(0).min(999);
    let mut parts = env!("CARGO_PKG_VERSION").split(['.', '-']);
    let mut code = 0;
    for _ in 0..3 {
        code = code * 1000 + parts.next().map(part).unwrap_or(0);
    }
    code
}

fn too_new(conn: &Connection, path: &Path, version: i64, what: &'static str) -> Error {
    let writer = conn
        .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .ok()
        .filter(|&v| v > 0)
        .map(|v| {
            format!(
                "msb-registry {}.{}.{}",
                v / 1_000_000,
                v / 1000 % 1000,
                v % 1000
            )
        });
    Error::IndexTooNew {
        db: path.to_path_buf(),
        version,
        known: known().iter().map(|k| k.0).max().unwrap_or(0),
        writer,
        what,
    }
}

/// Whether the index at `path` names any snapshot, read without writing.
/// An index that is absent names none; one that cannot be read counts as
/// naming some: a caller deciding whether the index may go keeps it.
pub fn names_any_snapshot(path: &Path) -> bool {
    if path
        .symlink_metadata()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    {
        return false;
    }
    let Ok(conn) = open_read_only(path) else {
        return true;
    };
    conn.query_row("SELECT EXISTS (SELECT 1 FROM snapshots)", [], |r| {
        r.get::<_, bool>(0)
    })
    .unwrap_or(true)
}

/// A read-only connection to `path`, refusing writes.
fn open_read_only(path: &Path) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    configure(&conn)?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

/// An error making, growing or mapping the `-shm` file: on a writable
/// file system, only a full one causes it.
pub fn is_shm_storage(e: &rusqlite::Error) -> bool {
    use rusqlite::ffi::{SQLITE_IOERR_SHMMAP, SQLITE_IOERR_SHMOPEN, SQLITE_IOERR_SHMSIZE};
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.extended_code, SQLITE_IOERR_SHMMAP | SQLITE_IOERR_SHMOPEN | SQLITE_IOERR_SHMSIZE))
}

/// Errors of a read-only open that mean SQLite could not make or map the
/// `-shm` beside the index: a read-only or full file system.
fn cannot_read_in_place(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::{CannotOpen, DiskFull, ReadOnly, SystemIoFailure};
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, CannotOpen | ReadOnly | DiskFull | SystemIoFailure))
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

/// Wait (as for another writer, up to the same limit) until no process
/// has the index at `path` open; `false` when one still has.
fn no_connection_soon(path: &Path) -> bool {
    let mut attempts = 0;
    while private_copy::connection_live(path) {
        if !wait_for_writer(attempts) {
            return false;
        }
        attempts += 1;
    }
    true
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

/// `PRAGMA data_version`: it differs between two reads on one connection
/// exactly when another connection committed in between, so a check made
/// in one transaction still holds in a later one while it is unchanged.
pub fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
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
        let (db, _) = Db::open_read(&path).unwrap();
        assert!(db.conn().execute("DELETE FROM snapshots", []).is_err());
    }
}
