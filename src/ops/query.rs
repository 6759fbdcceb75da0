//! Read commands answered from the index alone: `list`, `show`, `lineage`
//! and user SQL on a read-only connection.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::db::{self, LineageRow, SnapshotFileRow, SnapshotRow};
use crate::model::digest::Digest;
use crate::model::error::{Error, Result};
use crate::ops::registry::Registry;

/// One row of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ListEntry {
    /// Identity.
    pub digest: Digest,
    /// Name.
    pub name: String,
    /// Parent digest.
    pub parent: Option<Digest>,
    /// Image reference.
    pub image_ref: String,
    /// Pinned image manifest digest.
    pub image_manifest_digest: Digest,
    /// Apparent size of the upper.
    pub size_bytes: u64,
    /// Bytes the snapshot's files take on disk (a sparse upper's data only).
    pub allocated_bytes: u64,
    /// RFC 3339.
    pub created_at: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The parent is named but absent from the registry.
    pub shallow: bool,
    /// Who signed it (`sign`, or signatures an import or pull brought).
    pub signers: Vec<Signer>,
}

/// One signature of a snapshot, as `list` and `show` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Signer {
    /// The signer's principal, when `sign --principal` named it or a trust
    /// file matched it; null otherwise.
    pub principal: Option<String>,
    /// `SHA256:<base64>` of the signing key.
    pub fingerprint: String,
    /// Unix seconds when the signature entered this registry.
    pub created: i64,
}

impl From<db::signatures::SignatureRow> for Signer {
    fn from(r: db::signatures::SignatureRow) -> Self {
        Signer {
            principal: r.principal,
            fingerprint: r.fingerprint,
            created: r.created,
        }
    }
}

/// What `show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// The snapshot row.
    #[serde(flatten)]
    pub snapshot: SnapshotRow,
    /// The parent is named but absent.
    pub shallow: bool,
    /// Snapshots naming this one as parent.
    pub children: u64,
    /// Bytes the snapshot's files take on disk (a sparse upper's data only).
    pub allocated_bytes: u64,
    /// Its files.
    pub files: Vec<SnapshotFileRow>,
    /// Whether the pinned image's metadata is in the cache.
    pub image_cached: bool,
    /// Whether the root is a microsandbox home (`db/msb.db` or `sandboxes/`).
    pub shared_home: bool,
    /// Who signed it.
    pub signers: Vec<Signer>,
}

/// One row of `lineage`.
#[derive(Debug, Clone, Serialize)]
pub struct LineageEntry {
    /// Digest.
    pub digest: Digest,
    /// Name; `None` when absent from the registry.
    pub name: Option<String>,
    /// Distance from the snapshot asked about.
    pub depth: u64,
    /// Parent digest (in descendant trees).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Digest>,
    /// True for an ancestor absent from the registry (it ends the chain).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

impl From<LineageRow> for LineageEntry {
    fn from(r: LineageRow) -> Self {
        LineageEntry {
            missing: r.name.is_none(),
            digest: r.digest,
            name: r.name,
            depth: r.depth,
            parent: r.parent,
        }
    }
}

/// Where the rows of a user query go, one at a time as SQLite produces
/// them, so a query of any length runs in constant memory. A write error
/// (a closed pipe) stops the query.
pub trait SqlSink {
    /// The column names, once, before the first row.
    fn columns(&mut self, columns: &[String]) -> std::io::Result<()>;
    /// One row, values in column order.
    fn row(&mut self, values: Vec<serde_json::Value>) -> std::io::Result<()>;
    /// After the last row.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// The result of a user query collected whole: column names and rows of
/// JSON values (for library callers that want every row).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SqlResult {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, values in column order.
    pub rows: Vec<Vec<serde_json::Value>>,
}

impl SqlSink for SqlResult {
    fn columns(&mut self, columns: &[String]) -> std::io::Result<()> {
        self.columns = columns.to_vec();
        Ok(())
    }
    fn row(&mut self, values: Vec<serde_json::Value>) -> std::io::Result<()> {
        self.rows.push(values);
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Registry {
    /// Every snapshot, newest first by the instant `created_at` names
    /// (times that do not parse last).
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        let conn = self.db().conn();
        let rows = db::snapshots::all_snapshots(conn)?;
        let present: std::collections::HashSet<Digest> = rows.iter().map(|r| r.digest).collect();
        let mut signers: std::collections::HashMap<Digest, Vec<Signer>> = Default::default();
        for s in db::signatures::all_signatures(conn)? {
            signers.entry(s.snapshot).or_default().push(s.into());
        }
        let mut rows: Vec<(Option<i128>, SnapshotRow)> = rows
            .into_iter()
            .map(|r| (crate::model::manifest::unix_nanos(&r.created_at), r))
            .collect();
        rows.sort_by(|(ta, a), (tb, b)| tb.cmp(ta).then_with(|| a.digest.cmp(&b.digest)));
        Ok(rows
            .into_iter()
            .map(|(_, r)| r)
            .map(|r| ListEntry {
                allocated_bytes: self.allocated(&r.name),
                shallow: r.parent.is_some_and(|p| !present.contains(&p)),
                signers: signers.remove(&r.digest).unwrap_or_default(),
                digest: r.digest,
                name: r.name,
                parent: r.parent,
                image_ref: r.image_ref,
                image_manifest_digest: r.image_manifest_digest,
                size_bytes: r.size_bytes,
                created_at: r.created_at,
                labels: r.labels,
            })
            .collect())
    }

    /// Bytes allocated on disk under `snapshots/<name>/`; 0 for a name
    /// that is not a valid directory name.
    fn allocated(&self, name: &str) -> u64 {
        name.parse::<crate::store::layout::SnapshotName>()
            .map_or(0, |n| {
                crate::store::files::tree_allocated_bytes(
                    &self.layout().snapshot(&self.snapshot_dir(&n)),
                )
            })
    }

    /// One snapshot in full.
    pub fn show(&self, reference: &str) -> Result<ShowReport> {
        let snapshot = self.resolve(reference)?;
        let conn = self.db().conn();
        let shallow = match &snapshot.parent {
            Some(p) => db::snapshots::snapshot_by_digest(conn, p)?.is_none(),
            None => false,
        };
        Ok(ShowReport {
            allocated_bytes: self.allocated(&snapshot.name),
            shallow,
            children: db::snapshots::children_count(conn, &snapshot.digest)?,
            files: db::snapshots::snapshot_files(conn, &snapshot.digest)?,
            image_cached: db::images::image_by_digest(conn, &snapshot.image_manifest_digest)?
                .is_some(),
            shared_home: self.layout().is_shared_home(),
            signers: db::signatures::signatures_of(conn, &snapshot.digest)?
                .into_iter()
                .map(Signer::from)
                .collect(),
            snapshot,
        })
    }

    /// Ancestors root to head, or with `descendants` the subtree below.
    pub fn lineage(&self, reference: &str, descendants: bool) -> Result<Vec<LineageEntry>> {
        let head = self.resolve(reference)?;
        let conn = self.db().conn();
        let rows = if descendants {
            db::snapshots::descendants(conn, &head.digest)?
        } else {
            db::snapshots::ancestors(conn, &head.digest)?
        };
        Ok(rows.into_iter().map(LineageEntry::from).collect())
    }
}

/// Run a read-only statement on the index of the registry at `root`,
/// handing each row to `sink` as it comes. The outer error is the query's;
/// the inner one is the sink's write error, which ends the query early.
pub fn sql(root: &Path, query: &str, sink: &mut dyn SqlSink) -> Result<std::io::Result<()>> {
    if first_keyword(query).is_none() {
        return Err(Error::Usage(
            "sql: the query is empty; give one statement, e.g. sql 'SELECT name FROM snapshots'"
                .into(),
        ));
    }
    let registry = Registry::open_read(root)?;
    let conn = registry.db().conn();
    let mut stmt = conn.prepare(query).map_err(invalid_query)?;
    if !stmt.readonly() {
        return Err(Error::ReadOnlySql(query.to_string()));
    }
    if let Some(k) = first_keyword(query).filter(|k| matches!(k.as_str(), "ATTACH" | "DETACH")) {
        return Err(Error::Usage(format!(
            "sql: {k} is not allowed; queries read this registry's index only"
        )));
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let n = columns.len();
    if let Err(e) = sink.columns(&columns) {
        return Ok(Err(e));
    }
    let mut cursor = stmt.query([]).map_err(failed_query)?;
    while let Some(row) = cursor.next().map_err(failed_query)? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Null => serde_json::Value::Null,
                rusqlite::types::ValueRef::Integer(v) => v.into(),
                rusqlite::types::ValueRef::Real(v) => v.into(),
                rusqlite::types::ValueRef::Text(t) => {
                    String::from_utf8_lossy(t).into_owned().into()
                }
                rusqlite::types::ValueRef::Blob(b) => hex::encode(b).into(),
            });
        }
        if let Err(e) = sink.row(values) {
            return Ok(Err(e));
        }
    }
    Ok(sink.finish())
}

/// The statement's first keyword, upper-cased, past whitespace and
/// comments; `None` when the text holds no statement at all.
fn first_keyword(query: &str) -> Option<String> {
    let mut rest = query;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix("--") {
            rest = r.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(r) = rest.strip_prefix("/*") {
            rest = r.split_once("*/").map_or("", |(_, after)| after);
        } else {
            break;
        }
    }
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    match (
        word.is_empty(),
        rest.trim_start_matches(';').trim().is_empty(),
    ) {
        (_, true) => None,
        _ => Some(word.to_ascii_uppercase()),
    }
}

/// A statement that failed while running because of what it asked for
/// (SQLite's generic error, a refused function such as `load_extension`)
/// is a usage error; a damaged or unreadable index is not.
fn failed_query(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg)
            if matches!(
                f.code,
                rusqlite::ErrorCode::Unknown | rusqlite::ErrorCode::AuthorizationForStatementDenied
            ) && !crate::model::error::is_corrupt(&e) =>
        {
            let msg = msg.clone().unwrap_or_else(|| f.to_string());
            let hint = if msg.contains("not authorized") {
                " (loading extensions is not allowed)"
            } else {
                ""
            };
            Error::Usage(format!("sql: the query was refused: {msg}{hint}"))
        }
        _ => Error::Db(e),
    }
}

/// A statement SQLite would not prepare is the user's to fix (exit 2), said
/// in SQLite's own words without the wrapper's noise.
fn invalid_query(e: rusqlite::Error) -> Error {
    if crate::model::error::is_corrupt(&e) {
        return Error::Db(e);
    }
    let why = match &e {
        rusqlite::Error::SqlInputError { msg, offset, .. } => format!("{msg} (at offset {offset})"),
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        rusqlite::Error::MultipleStatement => "give one statement, not several".to_string(),
        other => other.to_string(),
    };
    Error::Usage(format!("sql: invalid query: {why}"))
}
