//! A root shared with microsandbox (DESIGN §9): whether it is one, which
//! cache artifacts microsandbox's index says it uses, and the hint that
//! keeps microsandbox's view of `snapshots/` in step after we change it.

use std::collections::HashSet;

use serde::Serialize;

use crate::db::microsandbox::{self, Unusable};
use crate::model::digest::Digest;
use crate::model::image::{CacheFile, CacheKind};
use crate::model::text::{escape, has_terminal_control};
use crate::store::layout::{Layout, SnapshotName};

/// The hint printed after `import` or `add` add to `snapshots/` of a shared home.
pub const REINDEX_HINT: &str = "this root is a microsandbox home: run `msb snapshot reindex` to refresh microsandbox's view of its snapshots (msb-registry writes db/msb.db only to drop or move the snapshot_index row of a snapshot it removes or renames)";

/// The hint when `layout` is a shared home.
pub fn reindex_hint(layout: &Layout) -> Option<String> {
    layout.is_shared_home().then(|| REINDEX_HINT.to_string())
}

/// After our `rm` of snapshot `digest`: drop its row from msb.db's
/// `snapshot_index`, as microsandbox's own remove does, so microsandbox no
/// longer lists it. Returns a hint when that could not be done.
pub fn forget_snapshot(layout: &Layout, digest: &Digest) -> Option<String> {
    if !layout.is_shared_home() {
        return None;
    }
    microsandbox::forget_snapshot(&layout.msb_db(), &digest.to_string())
        .err()
        .map(|why| {
            format!(
                "db/msb.db could not be updated ({why}): microsandbox may still list snapshot {digest}; run `msb snapshot rm {digest}` once it can be"
            )
        })
}

/// After our `rename` of snapshot `digest` from `old` to `new`: point its
/// msb.db `snapshot_index` row at the new directory and name. Returns a
/// hint when that could not be done.
pub fn move_snapshot(
    layout: &Layout,
    digest: &Digest,
    old: &SnapshotName,
    new: &SnapshotName,
) -> Option<String> {
    if !layout.is_shared_home() {
        return None;
    }
    let mut dirs = vec![(layout.snapshot(old), layout.snapshot(new))];
    if let Ok(real) = layout.snapshots().canonicalize() {
        dirs.insert(0, (real.join(old.as_str()), real.join(new.as_str())));
    }
    for (from, to) in &dirs {
        let moved = microsandbox::move_snapshot(
            &layout.msb_db(),
            &digest.to_string(),
            (old.as_str(), new.as_str()),
            (&from.to_string_lossy(), &to.to_string_lossy()),
        );
        match moved {
            Ok(true) => return None,
            Ok(false) => {}
            Err(why) => {
                return Some(format!(
                    "db/msb.db could not be updated ({why}): run `msb snapshot reindex` to give microsandbox the new path"
                ));
            }
        }
    }
    None
}

/// The state of `db/msb.db`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MsbDbState {
    /// No `db/msb.db`.
    Absent,
    /// Read: gc keeps what it names.
    Readable,
    /// Present but could not be opened or read.
    Unreadable,
    /// Readable, but without the tables and columns gc relies on.
    UnknownSchema,
}

/// What a root shares with microsandbox, for reports.
#[derive(Debug, Clone, Serialize)]
pub struct HomeReport {
    /// The root holds `db/msb.db` or `sandboxes/`.
    pub shared: bool,
    /// The state of `db/msb.db`.
    pub msb_db: MsbDbState,
    /// Why microsandbox's use is unknown, when it is (shared and not readable).
    pub detail: Option<String>,
    /// Cache artifacts microsandbox's index names (present or not).
    pub in_use: usize,
    /// gc swept the cache although microsandbox's use is unknown (the
    /// override flag).
    pub overridden: bool,
}

/// Which cache artifacts microsandbox uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MicrosandboxRoots {
    /// Not a shared home: microsandbox uses nothing here.
    #[default]
    None,
    /// `<kind>/<file>` under `cache/` of every artifact microsandbox uses.
    InUse(HashSet<String>),
    /// Shared, but its use cannot be known: every cache artifact is kept.
    Unknown,
}

/// Read microsandbox's roots of the home at `layout`. With `overridden`,
/// an unknown use counts as none.
pub fn roots(layout: &Layout, overridden: bool) -> (MicrosandboxRoots, HomeReport) {
    let mut report = HomeReport {
        shared: layout.is_shared_home(),
        msb_db: MsbDbState::Absent,
        detail: None,
        in_use: 0,
        overridden: false,
    };
    if !report.shared {
        return (MicrosandboxRoots::None, report);
    }
    let path = layout.msb_db();
    let unknown = if path.symlink_metadata().is_err() {
        "sandboxes/ is present but db/msb.db is not: which images the sandboxes use is unknown"
            .to_string()
    } else {
        match microsandbox::read_use(&path).map(|found| in_use_paths(&found)) {
            Ok(Ok(paths)) => {
                report.msb_db = MsbDbState::Readable;
                report.in_use = paths.len();
                return (MicrosandboxRoots::InUse(paths), report);
            }
            Ok(Err(value)) => {
                report.msb_db = MsbDbState::UnknownSchema;
                format!("db/msb.db holds a value msb-registry cannot interpret ({value})")
            }
            Err(Unusable::Unreadable(why)) => {
                report.msb_db = MsbDbState::Unreadable;
                format!("db/msb.db cannot be read ({why})")
            }
            Err(Unusable::UnknownSchema(why)) => {
                report.msb_db = MsbDbState::UnknownSchema;
                format!("db/msb.db is not a schema msb-registry knows ({why})")
            }
        }
    };
    report.detail = Some(unknown);
    if overridden {
        report.overridden = true;
        (MicrosandboxRoots::None, report)
    } else {
        (MicrosandboxRoots::Unknown, report)
    }
}

/// The cache paths of what microsandbox uses: each used manifest's fsmeta
/// and vmdk, each pulled reference's metadata, each linked layer. A value
/// that is not what microsandbox writes (a digest not `sha256:<64 lowercase
/// hex>`, an empty or control-character reference) is `Err`, described: gc
/// cannot say what it names, so it must keep everything.
fn in_use_paths(found: &microsandbox::MicrosandboxUse) -> Result<HashSet<String>, String> {
    let keyed = |kind: CacheKind, digest: &str| {
        digest
            .parse::<Digest>()
            .map(|key| CacheFile { kind, key }.rel_path())
            .map_err(|_| format!("digest {}", escape(digest)))
    };
    let mut paths = HashSet::new();
    for m in &found.manifests {
        paths.insert(keyed(CacheKind::Fsmeta, m)?);
        paths.insert(keyed(CacheKind::Vmdk, m)?);
    }
    for l in &found.layers {
        paths.insert(keyed(CacheKind::Layers, l)?);
    }
    for r in &found.references {
        if r.is_empty() || has_terminal_control(r) || r.chars().any(char::is_whitespace) {
            return Err(format!("image reference {:?}", escape(r)));
        }
        paths.insert(CacheFile::metadata_for_ref(r).rel_path());
    }
    Ok(paths)
}
