//! The names an import gives its snapshots: `--name` for the head, else the
//! name the archive carried (a pax `comment` record on the manifest member,
//! see [`super::entry::NAME_COMMENT`]) when it is a valid chosen name that
//! is free here, else the archive prefix. A carried name that cannot be used
//! is not an error: the snapshot lands under its prefix and the import says
//! why in a [`NameFallback`].

use std::collections::HashSet;

use serde::Serialize;

use super::streamed::StreamedSnapshot;
use crate::db;
use crate::model::digest::Digest;
use crate::model::error::Result;
use crate::store::layout::SnapshotName;

/// Longest part of a refused carried name repeated in a message.
const SHOWN_NAME_CHARS: usize = 64;

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

/// Names for `snapshots` (in archive order) and the carried names not used.
/// `present` tells which snapshots the registry already holds: they keep
/// the name they have, so their carried names are not looked at.
pub fn decide(
    conn: &rusqlite::Connection,
    snapshots: &[StreamedSnapshot],
    head: usize,
    head_name: Option<&SnapshotName>,
    present: impl Fn(&Digest) -> Result<bool>,
) -> Result<(Vec<SnapshotName>, Vec<NameFallback>)> {
    let mut names = Vec::with_capacity(snapshots.len());
    let mut fallbacks = Vec::new();
    let mut used: HashSet<String> = HashSet::new();
    for (i, s) in snapshots.iter().enumerate() {
        let prefix: SnapshotName = s.prefix.parse()?;
        let digest = s.parsed.digest;
        let name = match (head_name, i == head, &s.carried_name) {
            (Some(n), true, _) => n.clone(),
            (_, _, Some(carried)) if !present(&digest)? => {
                match refusal(conn, &digest, carried, &used)? {
                    Ok(name) => name,
                    Err(reason) => {
                        fallbacks.push(NameFallback {
                            digest,
                            carried: shown(carried),
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
        names.push(name);
    }
    Ok((names, fallbacks))
}

/// The carried name as a usable name, or why it is not one.
fn refusal(
    conn: &rusqlite::Connection,
    digest: &Digest,
    carried: &[u8],
    used: &HashSet<String>,
) -> Result<std::result::Result<SnapshotName, String>> {
    let Ok(text) = std::str::from_utf8(carried) else {
        return Ok(Err("it is not UTF-8".into()));
    };
    let name = match SnapshotName::chosen_for(text, digest) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e.to_string())),
    };
    if used.contains(name.as_str()) {
        return Ok(Err("another snapshot in the archive takes it".into()));
    }
    if let Some(other) = db::snapshots::snapshot_by_name(conn, name.as_str())?
        && other.digest != *digest
    {
        return Ok(Err(format!("it is taken by snapshot {}", other.digest)));
    }
    // A directory of that name without a row is not looked at: it may be a
    // dead promotion's, which this import's promotion rolls back first;
    // real debris stops the promotion with a pointer to `gc`, as it does
    // for a prefix name.
    Ok(Ok(name))
}

fn shown(carried: &[u8]) -> String {
    String::from_utf8_lossy(carried)
        .chars()
        .take(SHOWN_NAME_CHARS)
        .collect()
}
