//! The names an import gives its snapshots: `--name` for the head, else the
//! name the archive carried (a pax `comment` record on the manifest member,
//! see [`super::entry::NAME_COMMENT`]) when it is a valid chosen name that
//! is free here, else the archive prefix. A carried name that cannot be used
//! is not an error: the snapshot lands under its prefix and the import says
//! why in a [`NameFallback`]. The same holds, at install, for a carried
//! name that a directory without a row holds and the install never moves
//! ([`Named::fallback`]).

use std::collections::HashSet;

use serde::Serialize;

use super::streamed::CarriedName;
use crate::db;
use crate::model::digest::Digest;
use crate::model::error::Result;
use crate::store::layout::SnapshotName;

/// Longest part of a refused carried name repeated in a message.
const SHOWN_NAME_CHARS: usize = 64;

/// Longest carried name looked at: longer is no valid name (names are at
/// most 128 bytes), and its text is not repeated whole in the reason.
const MAX_NAME_BYTES: usize = 128;

/// A carried name the import did not use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NameFallback {
    /// The snapshot.
    pub digest: Digest,
    /// The name the archive carried (lossy UTF-8, cut to 64 characters).
    pub carried: String,
    /// The name it landed under.
    pub name: String,
    /// Why the carried name was not used.
    pub reason: String,
}

/// The name a snapshot is to be installed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The name.
    pub name: SnapshotName,
    /// For a carried name, the archive prefix: the install takes it instead
    /// when a directory without a row that it never moves holds `name`.
    pub fallback: Option<SnapshotName>,
}

/// Names for `snapshots` (each a digest and the name it carried, parents
/// first: an archive's, or a registry's title annotation) and the carried
/// names not used. `present` tells which snapshots the registry already
/// holds: they keep the name they have, so their carried names are not
/// looked at.
pub fn decide(
    conn: &rusqlite::Connection,
    snapshots: &[(Digest, Option<&CarriedName>)],
    head: usize,
    head_name: Option<&SnapshotName>,
    present: impl Fn(&Digest) -> Result<bool>,
) -> Result<(Vec<Named>, Vec<NameFallback>)> {
    let mut names = Vec::with_capacity(snapshots.len());
    let mut fallbacks = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    for (i, &(digest, carried)) in snapshots.iter().enumerate() {
        let prefix: SnapshotName = digest.archive_prefix().parse()?;
        let mut fallback = None;
        let name = match (head_name, i == head, carried) {
            (Some(n), true, _) => n.clone(),
            (_, _, Some(carried)) if !present(&digest)? => {
                let refused = match carried {
                    CarriedName::Valid(name) => {
                        taken(conn, &digest, name, &used)?.map(|reason| (name.to_string(), reason))
                    }
                    CarriedName::Refused { shown, reason } => Some((shown.clone(), reason.clone())),
                };
                match (carried, refused) {
                    (CarriedName::Valid(name), None) => {
                        fallback = Some(prefix);
                        name.clone()
                    }
                    (_, refused) => {
                        let (carried, reason) = refused.unwrap_or_default();
                        fallbacks.push(NameFallback {
                            digest,
                            carried,
                            name: prefix.to_string(),
                            reason,
                        });
                        prefix
                    }
                }
            }
            _ => prefix,
        };
        used.insert(name.to_string());
        names.push(Named { name, fallback });
    }
    Ok((names, fallbacks))
}

/// A carried name as it arrives: a valid chosen name, or what to show of
/// it and why it is not one. Held for every snapshot until the import
/// ends, so what it keeps is bounded whatever the archive carried.
pub fn judge(carried: &[u8]) -> CarriedName {
    let refused = |reason: String| CarriedName::Refused {
        shown: shown(carried),
        reason,
    };
    if carried.len() > MAX_NAME_BYTES {
        return refused(format!(
            "invalid snapshot name of {} bytes: use 1-{MAX_NAME_BYTES} of A-Z a-z 0-9 . _ - starting with a letter or digit",
            carried.len()
        ));
    }
    let Ok(text) = std::str::from_utf8(carried) else {
        return refused("it is not UTF-8".into());
    };
    match SnapshotName::chosen(text) {
        Ok(name) => CarriedName::Valid(name),
        Err(e) => refused(e.to_string()),
    }
}

/// Why a valid carried name cannot be used here, if it cannot.
fn taken(
    conn: &rusqlite::Connection,
    digest: &Digest,
    name: &SnapshotName,
    used: &HashSet<String>,
) -> Result<Option<String>> {
    if let Err(e) = name.impersonation(digest) {
        return Ok(Some(e.to_string()));
    }
    if used.contains(name.as_str()) {
        return Ok(Some("another snapshot in the archive takes it".into()));
    }
    if let Some(other) = db::snapshots::snapshot_by_name(conn, name.as_str())?
        && other.digest != *digest
    {
        return Ok(Some(format!("it is taken by snapshot {}", other.digest)));
    }
    // A directory of that name without a row is not looked at: it may be a
    // dead promotion's, which this import's promotion rolls back first;
    // a damaged one is repaired by the install (moved to quarantine/), an
    // intact snapshot makes the install take the fallback.
    Ok(None)
}

fn shown(carried: &[u8]) -> String {
    String::from_utf8_lossy(&carried[..carried.len().min(4 * SHOWN_NAME_CHARS)])
        .chars()
        .take(SHOWN_NAME_CHARS)
        .collect()
}
