//! microsandbox's own index, `db/msb.db` in a shared home (DESIGN §9):
//! which cached images and layers microsandbox uses, read without ever
//! writing or blocking microsandbox. The one write: after our `rm` or
//! `rename` of a snapshot, its `snapshot_index` row (by digest) is deleted
//! or moved, as microsandbox's own `store::remove_snapshot` does, since
//! microsandbox's reindex never drops a row ([`forget_snapshot`],
//! [`move_snapshot`]). Nothing else in msb.db is ever written.
//!
//! msb.db is in WAL mode and microsandbox may be writing it while we read.
//! - While microsandbox has it open (a `-wal` file exists) the connection is
//!   opened read-only (`SQLITE_OPEN_READONLY`, `query_only`, no checkpoint
//!   on close): it reads the committed state, the `-wal` included, through
//!   SQLite's own reader protocol, so a writer holding a write transaction
//!   neither blocks it nor is blocked by it, and it never checkpoints (so
//!   never writes the main file) nor deletes the `-wal`.
//! - When no `-wal` exists (nobody has it open), a WAL reader would create
//!   the `-wal` and `-shm` side files. Instead the main file is read as
//!   immutable (no locks, no side files) and the read is kept only if no
//!   `-wal` appeared and the file did not change meanwhile; else it is
//!   redone the first way.
//! - A `-wal` without a `-shm` is what a microsandbox that died leaves (a
//!   live connection keeps a `-shm`); reading it in place would create the
//!   `-shm`, so msb.db and its `-wal` are copied to a private temporary
//!   directory and read there.

use std::path::Path;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

/// How long a read waits on a lock before msb.db counts as unreadable
/// (only a recovery or an exclusive-mode writer holds readers that long).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables and columns read, as created by microsandbox's migration
/// `m20260410_000001_erofs_image_schema` (unchanged up to
/// `m20260606_000001_named_volume_kinds`).
pub const REQUIRED: &[(&str, &[&str])] = &[
    ("manifest", &["id", "digest"]),
    ("image_ref", &["reference", "manifest_id"]),
    ("layer", &["id", "diff_id"]),
    ("manifest_layer", &["manifest_id", "layer_id"]),
    ("sandbox_rootfs", &["manifest_id"]),
];

/// What microsandbox uses, as its index says. Values are as stored
/// (digests `sha256:<hex>`, references as pulled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MicrosandboxUse {
    /// Digests of the image manifests named by `image_ref` or `sandbox_rootfs`.
    pub manifests: Vec<String>,
    /// Every pulled reference (`image_ref.reference`).
    pub references: Vec<String>,
    /// The `diff_id` of every layer some `manifest_layer` row links.
    pub layers: Vec<String>,
}

/// Why msb.db cannot say what microsandbox uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// It could not be opened or read.
    Unreadable(String),
    /// It lacks a table or column gc relies on.
    UnknownSchema(String),
}

/// Read what microsandbox uses from the msb.db at `path`, in one read
/// transaction, creating and writing nothing beside it when nobody has it open.
pub fn read_use(path: &Path) -> Result<MicrosandboxUse, Unusable> {
    quiet_read(path, read_from)
}

/// Run `read` on msb.db the way the module doc says: immutable when nobody
/// has it open, through SQLite's reader protocol otherwise.
fn quiet_read<T>(
    path: &Path,
    read: impl Fn(&Connection) -> Result<T, Unusable>,
) -> Result<T, Unusable> {
    let wal = side_file(path, "-wal");
    if wal.symlink_metadata().is_err()
        && let Some(before) = stamp(path)
    {
        let quiet = open_immutable(path)
            .map_err(|e| Unusable::Unreadable(e.to_string()))
            .and_then(|conn| read(&conn));
        if wal.symlink_metadata().is_err() && stamp(path) == Some(before) {
            return quiet;
        }
    }
    if side_file(path, "-shm").symlink_metadata().is_err() {
        // A -wal without a -shm: the microsandbox that wrote it died, and
        // SQLite would create the -shm beside it to read the -wal.
        return read_private_copy(path, read);
    }
    let conn = open_read_only(path).map_err(|e| Unusable::Unreadable(e.to_string()))?;
    read(&conn)
}

/// Read a copy of msb.db and its `-wal` made in a private temporary
/// directory: every committed row, and nothing created beside msb.db.
fn read_private_copy<T>(
    path: &Path,
    read: impl Fn(&Connection) -> Result<T, Unusable>,
) -> Result<T, Unusable> {
    let copy = super::private_copy::PrivateCopy::of(path)
        .map_err(|e| Unusable::Unreadable(format!("copy {}: {e}", path.display())))?;
    let conn = open_read_only(copy.path()).map_err(|e| Unusable::Unreadable(e.to_string()))?;
    read(&conn)
}

/// `<path><suffix>`: SQLite's `-wal` and `-shm` files.
fn side_file(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    name.into()
}

/// What changes whenever the file is written or replaced.
fn stamp(path: &Path) -> Option<(u64, u64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// Open msb.db as immutable: no locks, no side files. Only sound while
/// nobody writes it, which [`read_use`] checks around the read.
fn open_immutable(path: &Path) -> rusqlite::Result<Connection> {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.pragma_update(None, "query_only", true)?;
    Ok(conn)
}

fn read_from(conn: &Connection) -> Result<MicrosandboxUse, Unusable> {
    let unreadable = |e: rusqlite::Error| Unusable::Unreadable(e.to_string());
    conn.execute_batch("BEGIN").map_err(unreadable)?;
    check_schema(conn)?;
    let strings = |sql: &str| -> Result<Vec<String>, Unusable> {
        let mut stmt = conn.prepare(sql).map_err(unreadable)?;
        let rows = stmt.query_map([], |r| r.get(0)).map_err(unreadable)?;
        rows.collect::<rusqlite::Result<_>>().map_err(unreadable)
    };
    let found = MicrosandboxUse {
        manifests: strings(
            "SELECT digest FROM manifest
             WHERE id IN (SELECT manifest_id FROM image_ref)
                OR id IN (SELECT manifest_id FROM sandbox_rootfs WHERE manifest_id IS NOT NULL)
             ORDER BY digest",
        )?,
        references: strings("SELECT reference FROM image_ref ORDER BY reference")?,
        layers: strings(
            "SELECT DISTINCT l.diff_id FROM layer l
             JOIN manifest_layer ml ON ml.layer_id = l.id ORDER BY l.diff_id",
        )?,
    };
    conn.execute_batch("COMMIT").map_err(unreadable)?;
    Ok(found)
}

/// Open msb.db so that nothing we do can change it.
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    Ok(conn)
}

/// The columns of `snapshot_index` our `rm` and `rename` touch.
const SNAPSHOT_INDEX: &[&str] = &[
    "digest",
    "name",
    "parent_digest",
    "artifact_path",
    "child_count",
];

/// Delete the `snapshot_index` row of the snapshot `digest` (`sha256:<hex>`)
/// and recompute its parent's `child_count`, in one write transaction.
/// Returns whether a row was deleted; msb.db is opened for writing only
/// when it holds such a row. `Err` says why it could not be done.
pub fn forget_snapshot(path: &Path, digest: &str) -> Result<bool, String> {
    if !has_snapshot_row(path, digest)? {
        return Ok(false);
    }
    write_index(path, |conn| {
        let parent: Option<String> = conn.query_row(
            "SELECT parent_digest FROM snapshot_index WHERE digest = ?1",
            [digest],
            |r| r.get(0),
        )?;
        let n = conn.execute("DELETE FROM snapshot_index WHERE digest = ?1", [digest])?;
        if let Some(parent) = parent {
            conn.execute(
                "UPDATE snapshot_index SET child_count =
                   (SELECT count(*) FROM snapshot_index c WHERE c.parent_digest = ?1)
                 WHERE digest = ?1",
                [&parent],
            )?;
        }
        Ok(n > 0)
    })
}

/// Point the `snapshot_index` row of `digest` at its new directory: its
/// `artifact_path` when it is `old_dir` (the path microsandbox recorded
/// for our old directory) becomes `new_dir`, its `name` when it is
/// `old_name` becomes `new_name`. Returns whether a row changed.
pub fn move_snapshot(
    path: &Path,
    digest: &str,
    (old_name, new_name): (&str, &str),
    (old_dir, new_dir): (&str, &str),
) -> Result<bool, String> {
    if !has_snapshot_row(path, digest)? {
        return Ok(false);
    }
    write_index(path, |conn| {
        let paths = conn.execute(
            "UPDATE snapshot_index SET artifact_path = ?2 WHERE digest = ?1 AND artifact_path = ?3",
            [digest, new_dir, old_dir],
        )?;
        let names = conn.execute(
            "UPDATE snapshot_index SET name = ?2 WHERE digest = ?1 AND name = ?3",
            [digest, new_name, old_name],
        )?;
        Ok(paths + names > 0)
    })
}

/// Whether msb.db has a `snapshot_index` with the columns we touch and a
/// row for `digest` (read the way gc reads it: nothing written).
fn has_snapshot_row(path: &Path, digest: &str) -> Result<bool, String> {
    if path.symlink_metadata().is_err() {
        return Ok(false);
    }
    let found = quiet_read(path, |conn| {
        let unreadable = |e: rusqlite::Error| Unusable::Unreadable(e.to_string());
        let columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('snapshot_index')")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(unreadable)?;
        if columns.is_empty() {
            return Ok(false);
        }
        if let Some(missing) = SNAPSHOT_INDEX
            .iter()
            .find(|c| !columns.iter().any(|f| f == *c))
        {
            return Err(Unusable::UnknownSchema(format!(
                "its snapshot_index has no column {missing}"
            )));
        }
        conn.query_row(
            "SELECT count(*) FROM snapshot_index WHERE digest = ?1",
            [digest],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .map_err(unreadable)
    });
    found.map_err(|e| match e {
        Unusable::Unreadable(why) | Unusable::UnknownSchema(why) => why,
    })
}

/// Run `edit` in one `BEGIN IMMEDIATE` transaction on msb.db, waiting for
/// microsandbox's writers as long as a read does; the file is never created.
fn write_index(
    path: &Path,
    edit: impl FnOnce(&Connection) -> rusqlite::Result<bool>,
) -> Result<bool, String> {
    let run = || -> rusqlite::Result<bool> {
        let mut conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let changed = edit(&tx)?;
        tx.commit()?;
        Ok(changed)
    };
    run().map_err(|e| e.to_string())
}

/// Every table and column of [`REQUIRED`] exists.
fn check_schema(conn: &Connection) -> Result<(), Unusable> {
    let mut stmt = conn
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .map_err(|e| Unusable::Unreadable(e.to_string()))?;
    for (table, columns) in REQUIRED {
        let found: Vec<String> = stmt
            .query_map([table], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| Unusable::Unreadable(e.to_string()))?;
        if found.is_empty() {
            return Err(Unusable::UnknownSchema(format!("it has no table {table}")));
        }
        if let Some(missing) = columns.iter().find(|c| !found.iter().any(|f| f == *c)) {
            return Err(Unusable::UnknownSchema(format!(
                "its table {table} has no column {missing}"
            )));
        }
    }
    Ok(())
}

/// The tables of [`REQUIRED`] as microsandbox's migration creates them
/// (the columns gc reads and the ones around them), for tests and demos
/// that build a home.
pub const SCHEMA_FOR_TESTS: &str = r#"
CREATE TABLE "sandbox" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "name" text NOT NULL UNIQUE,
  "config" text NOT NULL, "status" text NOT NULL, "created_at" text, "updated_at" text);
CREATE TABLE "manifest" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "digest" text NOT NULL UNIQUE,
  "media_type" text, "config_digest" text, "architecture" text, "os" text, "variant" text,
  "layer_count" integer, "total_size_bytes" bigint, "created_at" text);
CREATE TABLE "image_ref" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "reference" text NOT NULL UNIQUE,
  "manifest_id" integer NOT NULL, "created_at" text, "updated_at" text,
  FOREIGN KEY ("manifest_id") REFERENCES "manifest" ("id") ON DELETE CASCADE);
CREATE TABLE "layer" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "diff_id" text NOT NULL UNIQUE,
  "blob_digest" text NOT NULL, "media_type" text, "compressed_size_bytes" bigint,
  "erofs_size_bytes" bigint, "created_at" text, "last_used_at" text);
CREATE TABLE "manifest_layer" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
  "manifest_id" integer NOT NULL, "layer_id" integer NOT NULL, "position" integer NOT NULL,
  FOREIGN KEY ("manifest_id") REFERENCES "manifest" ("id") ON DELETE CASCADE,
  FOREIGN KEY ("layer_id") REFERENCES "layer" ("id") ON DELETE RESTRICT);
CREATE UNIQUE INDEX "idx_manifest_layers_manifest_position" ON "manifest_layer" ("manifest_id", "position");
CREATE TABLE "sandbox_rootfs" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT,
  "sandbox_id" integer NOT NULL UNIQUE, "manifest_id" integer, "mode" text NOT NULL,
  "upper_fstype" text, "created_at" text,
  FOREIGN KEY ("sandbox_id") REFERENCES "sandbox" ("id") ON DELETE CASCADE,
  FOREIGN KEY ("manifest_id") REFERENCES "manifest" ("id") ON DELETE RESTRICT);
CREATE TABLE "snapshot_index" ("digest" text NOT NULL PRIMARY KEY, "name" text, "parent_digest" text,
  "image_ref" text, "image_manifest_digest" text, "format" text NOT NULL, "fstype" text NOT NULL,
  "artifact_path" text NOT NULL, "size_bytes" bigint, "created_at" text NOT NULL,
  "indexed_at" text NOT NULL, "child_count" integer NOT NULL DEFAULT 0);
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::TransactionBehavior;

    fn home_db(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("msb.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(SCHEMA_FOR_TESTS).unwrap();
        conn.execute_batch(
            "INSERT INTO manifest (id, digest) VALUES (1, 'sha256:aa'), (2, 'sha256:bb'), (3, 'sha256:cc');
             INSERT INTO image_ref (reference, manifest_id) VALUES ('docker.io/library/python:3.12', 1);
             INSERT INTO sandbox (id, name, config, status) VALUES (1, 'web', '{}', 'running');
             INSERT INTO sandbox_rootfs (sandbox_id, manifest_id, mode) VALUES (1, 2, 'oci');
             INSERT INTO layer (id, diff_id, blob_digest) VALUES (1, 'sha256:11', 'sha256:b1'), (2, 'sha256:22', 'sha256:b2');
             INSERT INTO manifest_layer (manifest_id, layer_id, position) VALUES (3, 2, 0);",
        )
        .unwrap();
        path
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn reads_images_named_by_refs_and_sandboxes_and_linked_layers() {
        let dir = tempfile::tempdir().unwrap();
        let path = home_db(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        let found = read_use(&path).unwrap();
        assert_eq!(names(dir.path()), ["msb.db"], "no side file created");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(found.manifests, ["sha256:aa", "sha256:bb"]);
        assert_eq!(found.references, ["docker.io/library/python:3.12"]);
        assert_eq!(found.layers, ["sha256:22"]);
    }

    #[test]
    fn a_writer_holding_a_write_transaction_neither_blocks_nor_is_blocked() {
        let dir = tempfile::tempdir().unwrap();
        let path = home_db(dir.path());
        let mut writer = Connection::open(&path).unwrap();
        writer.busy_timeout(Duration::ZERO).unwrap();
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "INSERT INTO image_ref (reference, manifest_id) VALUES ('alpine:3', 3)",
            [],
        )
        .unwrap();
        // The reader sees the committed state while the write is open ...
        let reader = open_read_only(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let refs: i64 = reader
            .query_row("SELECT count(*) FROM image_ref", [], |r| r.get(0))
            .unwrap();
        assert_eq!(refs, 1);
        // ... and the writer commits (with no busy wait) while the read is open.
        tx.commit().unwrap();
        reader.execute_batch("COMMIT").unwrap();
        assert!(
            read_use(&path)
                .unwrap()
                .references
                .contains(&"alpine:3".into())
        );
        assert!(reader.execute("DELETE FROM image_ref", []).is_err());
    }

    #[test]
    fn garbage_and_other_schemas_are_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        assert!(matches!(read_use(&garbage), Err(Unusable::Unreadable(_))));
        assert!(matches!(
            read_use(&dir.path().join("absent.db")),
            Err(Unusable::Unreadable(_))
        ));
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch(
                "CREATE TABLE manifest (id integer, digest text);
                 CREATE TABLE image_ref (reference text, manifest_id integer);
                 CREATE TABLE layer (id integer, diff_id text);
                 CREATE TABLE manifest_layer (manifest_id integer, layer integer);
                 CREATE TABLE sandbox_rootfs (manifest_id integer);",
            )
            .unwrap();
        assert_eq!(
            read_use(&other),
            Err(Unusable::UnknownSchema(
                "its table manifest_layer has no column layer_id".into()
            ))
        );
    }
}
