//! Queries about snapshot signatures (`signatures`, migration V7).

use rusqlite::{Connection, Row, params};
use serde::Serialize;

use crate::model::digest::Digest;
use crate::model::error::Result;

/// A signature as the index records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureRow {
    /// The signed snapshot.
    pub snapshot: Digest,
    /// `SHA256:<base64>` of the signing key.
    pub fingerprint: String,
    /// Who signed, as claimed at `sign` or matched by a trust file.
    pub principal: Option<String>,
    /// The SSHSIG namespace.
    pub namespace: String,
    /// The armored SSHSIG.
    pub signature: String,
    /// Unix seconds when it entered this registry.
    pub created: i64,
}

const COLUMNS: &str = "snapshot, fingerprint, principal, namespace, signature, created";

fn map_signature(r: &Row<'_>) -> rusqlite::Result<SignatureRow> {
    Ok(SignatureRow {
        snapshot: r.get(0)?,
        fingerprint: r.get(1)?,
        principal: r.get(2)?,
        namespace: r.get(3)?,
        signature: r.get(4)?,
        created: r.get(5)?,
    })
}

/// Record a signature; a second one by the same key over the same snapshot
/// is kept as it was. Returns whether a row was added.
pub fn insert_signature(conn: &Connection, row: &SignatureRow) -> Result<bool> {
    let added = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO signatures ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
        ))?
        .execute(params![
            row.snapshot,
            row.fingerprint,
            row.principal,
            row.namespace,
            row.signature,
            row.created
        ])?;
    Ok(added == 1)
}

/// The signatures of one snapshot, by fingerprint.
pub fn signatures_of(conn: &Connection, snapshot: &Digest) -> Result<Vec<SignatureRow>> {
    if !has_table(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM signatures WHERE snapshot = ?1 ORDER BY fingerprint"
    ))?;
    let rows = stmt.query_map([snapshot], map_signature)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every signature in the index, by snapshot then fingerprint.
pub fn all_signatures(conn: &Connection) -> Result<Vec<SignatureRow>> {
    if !has_table(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM signatures ORDER BY snapshot, fingerprint"
    ))?;
    let rows = stmt.query_map([], map_signature)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether the index has the table: an index of an older schema on a
/// read-only root is read as it stands, without signatures (none can be
/// there).
fn has_table(conn: &Connection) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'signatures'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    #[test]
    fn a_signature_goes_with_its_snapshot() {
        let db = Db::open_in_memory().unwrap();
        let conn = db.conn();
        let d = Digest::of(b"s");
        conn.execute(
            "INSERT INTO snapshots (digest, name, image_ref, image_manifest_digest, format, fstype, \
             upper_file, size_bytes, created_at, added_at) VALUES (?1, 'a', 'i', ?1, 'raw', 'ext4', \
             'upper.ext4', 0, 't', 0)",
            [&d],
        )
        .unwrap();
        let row = SignatureRow {
            snapshot: d,
            fingerprint: "SHA256:x".into(),
            principal: Some("alice".into()),
            namespace: "msb-registry-snapshot".into(),
            signature: "sig".into(),
            created: 1,
        };
        assert!(insert_signature(conn, &row).unwrap());
        assert!(!insert_signature(conn, &row).unwrap());
        assert_eq!(signatures_of(conn, &d).unwrap(), vec![row.clone()]);
        let orphan = SignatureRow {
            snapshot: Digest::of(b"none"),
            ..row
        };
        assert!(insert_signature(conn, &orphan).is_err());
        conn.execute("DELETE FROM snapshots", []).unwrap();
        assert!(all_signatures(conn).unwrap().is_empty());
    }
}
