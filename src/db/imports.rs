//! The import journal: one row per import (its lease), and the files it staged.

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use crate::model::digest::Digest;
use crate::model::error::Result;

/// Where an import is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportState {
    /// Streaming into `staging/<id>/`; nothing installed yet.
    Staging,
    /// Verified and checked; renames into place under way.
    Promoting,
    /// Finished; rows committed.
    Done,
    /// Refused or rolled back; nothing of it is installed.
    Failed,
}

impl ImportState {
    /// The value stored in `imports.state`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ImportState::Staging => "staging",
            ImportState::Promoting => "promoting",
            ImportState::Done => "done",
            ImportState::Failed => "failed",
        }
    }

    /// The state stored as `s`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Staging, Self::Promoting, Self::Done, Self::Failed]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One import's journal row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportRow {
    /// Random identifier; names `staging/<id>/` and its lock.
    pub id: String,
    /// Current state.
    pub state: ImportState,
    /// Archive path or `-`.
    pub source: String,
    /// Process that ran it.
    pub pid: i64,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, once done or failed.
    pub finished_at: Option<i64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One staged file of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportFileRow {
    /// Archive member path.
    pub member: String,
    /// Relative to the root: `staging/<id>/…`.
    pub staged_path: String,
    /// Relative to the root: `snapshots/…` or `cache/…`.
    pub final_path: String,
    /// `snapshot` or a cache kind.
    pub kind: String,
    /// Apparent size.
    pub size: u64,
    /// msb-extents-sha256-v1 content digest.
    pub digest: Digest,
    /// False when the final file already exists with the same content.
    pub promote: bool,
}

fn map_import(r: &Row<'_>) -> rusqlite::Result<ImportRow> {
    let state: String = r.get(1)?;
    Ok(ImportRow {
        id: r.get(0)?,
        state: ImportState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown import state {state:?}").into(),
            )
        })?,
        source: r.get(2)?,
        pid: r.get(3)?,
        started_at: r.get(4)?,
        finished_at: r.get(5)?,
        error: r.get(6)?,
    })
}

/// Create the journal row of a new import (its lease).
pub fn create_import(conn: &Connection, id: &str, source: &str, started_at: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO imports (id, state, source, pid, started_at) VALUES (?1, 'staging', ?2, ?3, ?4)",
    )?
    .execute(params![id, source, std::process::id() as i64, started_at])?;
    Ok(())
}

/// Move an import to `state`, recording when it ended and why it failed.
pub fn set_import_state(
    conn: &Connection,
    id: &str,
    state: ImportState,
    finished_at: Option<i64>,
    error: Option<&str>,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE imports SET state = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
    )?
    .execute(params![id, state.as_str(), finished_at, error])?;
    Ok(())
}

/// Record staged files (inside the caller's transaction).
pub fn insert_import_files(conn: &Connection, id: &str, files: &[ImportFileRow]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO import_files (import, member, staged_path, final_path, kind, size, digest, promote)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for f in files {
        stmt.execute(params![
            id,
            f.member,
            f.staged_path,
            f.final_path,
            f.kind,
            f.size as i64,
            f.digest,
            f.promote
        ])?;
    }
    Ok(())
}

/// Forget the staged files recorded for import `id` (a resumed pull
/// records them again).
pub fn delete_import_files(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM import_files WHERE import = ?1")?
        .execute(params![id])?;
    Ok(())
}

/// Record that import `id` will pin `image` (its own autocommitted
/// transaction, so gc sees it while the import is still streaming).
pub fn insert_pin(conn: &Connection, id: &str, image: &Digest) -> Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO import_pins (import, image) VALUES (?1, ?2)")?
        .execute(params![id, image])?;
    Ok(())
}

/// The files an import staged, in member order.
pub fn import_files(conn: &Connection, id: &str) -> Result<Vec<ImportFileRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT member, staged_path, final_path, kind, size, digest, promote
         FROM import_files WHERE import = ?1 ORDER BY member",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(ImportFileRow {
            member: r.get(0)?,
            staged_path: r.get(1)?,
            final_path: r.get(2)?,
            kind: r.get(3)?,
            size: r.get::<_, u64>(4)?,
            digest: r.get(5)?,
            promote: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every import in one of `states`.
pub fn imports_in_states(conn: &Connection, states: &[ImportState]) -> Result<Vec<ImportRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, state, source, pid, started_at, finished_at, error FROM imports
         WHERE state IN (SELECT value FROM json_each(?1)) ORDER BY started_at, id",
    )?;
    let states = serde_json::to_string(&states.iter().map(|s| s.as_str()).collect::<Vec<_>>())
        .expect("states serialize");
    let rows = stmt.query_map([states], map_import)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Forget an import and its staged-file rows.
pub fn delete_import(conn: &Connection, id: &str) -> Result<()> {
    conn.prepare_cached("DELETE FROM imports WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// One rename of a promotion, paths relative to the registry root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Where the file or directory is staged.
    pub staged: String,
    /// Where it is installed.
    pub target: String,
}

/// Journal the renames of a promotion (inside the caller's transaction).
pub fn insert_moves(conn: &Connection, id: &str, moves: &[Move]) -> Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO import_moves (import, seq, staged_path, final_path) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (seq, m) in moves.iter().enumerate() {
        stmt.execute(params![id, seq as i64, m.staged, m.target])?;
    }
    Ok(())
}

/// The journaled renames of an import, in the order they are made.
pub fn import_moves(conn: &Connection, id: &str) -> Result<Vec<Move>> {
    let mut stmt = conn.prepare_cached(
        "SELECT staged_path, final_path FROM import_moves WHERE import = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok(Move {
            staged: r.get(0)?,
            target: r.get(1)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
