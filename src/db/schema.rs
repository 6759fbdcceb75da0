//! The index's schema history (`refinery_schema_history`), checked before
//! anything reads or migrates the index: damage to it is corruption (exit
//! 5, repaired by `reindex`), an index a newer msb-registry wrote says so,
//! and a database that is not an msb-registry index is never touched.

use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::Connection;
use rusqlite::types::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::model::error::{Error, Result};

/// The history table refinery keeps.
const HISTORY: &str = "refinery_schema_history";

/// A migration this binary embeds: version, name, checksum.
pub type Known = (i64, String, u64);

/// How the index's schema stands against this binary's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// No table at all: a new index, to be created.
    New,
    /// Every migration applied is ours, some are not applied yet.
    Behind,
    /// Exactly our migrations.
    Current,
    /// Migrations beyond ours: a newer msb-registry wrote it.
    Newer {
        /// The highest schema version applied.
        version: i64,
    },
}

/// Inspect the schema of the index `conn` has open (at `path`, for messages).
pub fn inspect(conn: &Connection, path: &Path, known: &[Known]) -> Result<Schema> {
    let tables = table_names(conn)?;
    let has_history = tables.iter().any(|t| t == HISTORY);
    let has_ours = tables.iter().any(|t| t == "snapshots");
    if tables
        .iter()
        .all(|t| t == HISTORY || t.starts_with("sqlite_"))
        && !has_ours
    {
        let empty = !has_history || history(conn, path)?.is_empty();
        if empty {
            return Ok(Schema::New);
        }
    }
    let rows = if has_history {
        history(conn, path)?
    } else {
        BTreeMap::new()
    };
    let first_is_ours = rows
        .get(&1)
        .is_some_and(|(name, _, _)| Some(name) == known.first().map(|k| &k.1));
    if !has_ours && !first_is_ours {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        return Err(Error::ForeignIndex {
            db: path.to_path_buf(),
            detail: format!(
                "it holds {} and no msb-registry schema history",
                shown.join(", ")
            ),
        });
    }
    check_rows(&rows, path, known)
}

/// Compare the history rows with the migrations this binary embeds.
fn check_rows(
    rows: &BTreeMap<i64, (String, String, String)>,
    path: &Path,
    known: &[Known],
) -> Result<Schema> {
    let damaged = |detail: String| Error::IndexHistory {
        db: path.to_path_buf(),
        detail,
    };
    let Some(&top) = rows.keys().next_back() else {
        return Err(damaged(format!("{HISTORY} is missing or empty")));
    };
    for (version, (name, applied_on, checksum)) in rows {
        if OffsetDateTime::parse(applied_on, &Rfc3339).is_err() {
            return Err(damaged(format!(
                "{HISTORY} V{version} has applied_on {applied_on:?}, not an RFC 3339 time"
            )));
        }
        let Ok(sum) = checksum.parse::<u64>() else {
            return Err(damaged(format!(
                "{HISTORY} V{version} has checksum {checksum:?}, not a number"
            )));
        };
        match known.iter().find(|k| k.0 == *version) {
            Some((_, k_name, k_sum)) if k_name != name || *k_sum != sum => {
                return Err(damaged(format!(
                    "{HISTORY} V{version} records {name} with checksum {sum}, not the migration {k_name} this msb-registry applied"
                )));
            }
            None if *version < 1 => {
                return Err(damaged(format!("{HISTORY} has version {version}")));
            }
            _ => {}
        }
    }
    let latest = known.iter().map(|k| k.0).max().unwrap_or(0);
    if let Some(gap) = (1..=top.min(latest)).find(|v| !rows.contains_key(v)) {
        return Err(damaged(format!(
            "{HISTORY} lacks V{gap} though V{top} is applied"
        )));
    }
    Ok(match top.cmp(&latest) {
        std::cmp::Ordering::Less => Schema::Behind,
        std::cmp::Ordering::Equal => Schema::Current,
        std::cmp::Ordering::Greater => Schema::Newer { version: top },
    })
}

/// Every table's name, in `sqlite_master` order.
fn table_names(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table'")?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(names)
}

/// The history rows by version: name, applied_on and checksum as text
/// (any other type is damage).
fn history(conn: &Connection, path: &Path) -> Result<BTreeMap<i64, (String, String, String)>> {
    // max() reads the history's primary-key index, the scan its table:
    // both must be sound and agree.
    let top: Value = conn.query_row(&format!("SELECT max(version) FROM {HISTORY}"), [], |r| {
        r.get(0)
    })?;
    let mut stmt = conn.prepare(&format!(
        "SELECT version, name, applied_on, checksum FROM {HISTORY}"
    ))?;
    let rows: Vec<[Value; 4]> = stmt
        .query_map([], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?]))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = BTreeMap::new();
    for row in rows {
        let text = |v: &Value| match v {
            Value::Text(s) => Some(s.clone()),
            _ => None,
        };
        let parsed = match (&row[0], text(&row[1]), text(&row[2]), text(&row[3])) {
            (Value::Integer(v), Some(n), Some(a), Some(c)) => Some((*v, (n, a, c))),
            _ => None,
        };
        let Some((version, fields)) = parsed else {
            return Err(Error::IndexHistory {
                db: path.to_path_buf(),
                detail: format!(
                    "{HISTORY} holds a row of the wrong types ({})",
                    row.iter()
                        .map(|v| format!("{:?}", v.data_type()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        if out.insert(version, fields).is_some() {
            return Err(Error::IndexHistory {
                db: path.to_path_buf(),
                detail: format!("{HISTORY} records V{version} twice"),
            });
        }
    }
    let scanned = out.keys().next_back().map(|&v| Value::Integer(v));
    if scanned.unwrap_or(Value::Null) != top {
        return Err(Error::IndexHistory {
            db: path.to_path_buf(),
            detail: format!("{HISTORY} and its index disagree on the latest version"),
        });
    }
    Ok(out)
}
