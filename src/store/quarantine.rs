//! `quarantine/`: damaged snapshot directories a repair moved aside
//! ([`Layout::quarantine_entry`]). Nothing in it is a snapshot: reindex,
//! gc's snapshot rules and every reader ignore it; `verify` lists it, and
//! an entry goes only by `msb-registry quarantine rm` or by gc once it is
//! older than the grace period.

use std::path::PathBuf;

use serde::Serialize;

use super::files::{changed_at, tree_allocated_bytes};
use super::layout::Layout;
use crate::model::error::{Error, IoContext, Result};

/// One entry of `quarantine/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantineEntry {
    /// Relative to the root: `quarantine/<entry>`.
    pub path: String,
    /// The snapshot name it was quarantined from, when its entry name says.
    pub name: Option<String>,
    /// When it was quarantined (Unix seconds): from its entry name, else
    /// its modification time.
    pub quarantined_at: i64,
    /// Bytes it occupies on disk.
    pub allocated_bytes: u64,
    /// Whether it is a directory (a repair may have moved a stray file aside).
    pub dir: bool,
}

/// The snapshot name and time a quarantine entry name `<name>-<secs>[.<n>]` holds.
pub fn parse_entry_name(entry: &str) -> Option<(&str, i64)> {
    let (name, tail) = entry.rsplit_once('-')?;
    let secs = match tail.split_once('.') {
        Some((secs, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => secs,
        Some(_) => return None,
        None => tail,
    };
    if name.is_empty() || secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((name, secs.parse().ok()?))
}

/// Every entry of `quarantine/`, by path; none when it does not exist.
/// Names a repair never writes and the foreign-name grammar hides (lock
/// files, `.part` files, `.work` directories) or that are not UTF-8 are
/// left out: never listed, so never removed.
pub fn list(layout: &Layout, now: i64) -> Result<Vec<QuarantineEntry>> {
    let dir = layout.quarantine();
    let read = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", &dir, e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.at("read directory", &dir)?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        if super::layout::not_ours(&file_name).is_some() {
            continue;
        }
        let meta = match entry.path().symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("stat", entry.path(), e)),
        };
        let parsed = parse_entry_name(&file_name);
        out.push(QuarantineEntry {
            path: format!("quarantine/{file_name}"),
            name: parsed.map(|(n, _)| n.to_string()),
            quarantined_at: parsed
                .map(|(_, secs)| secs.min(now))
                .unwrap_or_else(|| changed_at(&meta, now)),
            dir: meta.is_dir(),
            allocated_bytes: if meta.is_dir() {
                tree_allocated_bytes(&entry.path())
            } else {
                crate::store::files::allocated_bytes(&meta)
            },
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The full path of quarantine entry `entry` (`<entry>` or
/// `quarantine/<entry>`): one plain path component inside `quarantine/`.
pub fn entry_path(layout: &Layout, entry: &str) -> Result<PathBuf> {
    let bare = entry.strip_prefix("quarantine/").unwrap_or(entry);
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.is_empty() || bare == "." || bare == ".." || bare.contains('/') || bare.contains('\0') {
        return Err(Error::Usage(format!(
            "invalid quarantine entry {entry:?}: name one entry that `msb-registry quarantine list` shows"
        )));
    }
    Ok(layout.quarantine().join(bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_give_the_name_and_the_time() {
        assert_eq!(
            parse_entry_name("web-1700000000"),
            Some(("web", 1700000000))
        );
        assert_eq!(
            parse_entry_name("web-1700000000.2"),
            Some(("web", 1700000000))
        );
        assert_eq!(parse_entry_name("a-b-17"), Some(("a-b", 17)));
        assert_eq!(parse_entry_name("web"), None);
        assert_eq!(parse_entry_name("web-17.x"), None);
        assert_eq!(parse_entry_name("-17"), None);
    }

    #[test]
    fn an_entry_is_one_component_inside_the_quarantine() {
        let layout = Layout::new("/r");
        assert_eq!(
            entry_path(&layout, "quarantine/web-1").unwrap(),
            PathBuf::from("/r/quarantine/web-1")
        );
        for bad in ["..", "a/b", "", "quarantine/../x"] {
            assert!(entry_path(&layout, bad).is_err(), "{bad}");
        }
    }
}
