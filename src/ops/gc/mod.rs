//! `gc`: reclaim what nothing live uses, as a pure plan (`plan.rs`) and
//! then its application to the disk and the index (`sweep.rs`).
//!
//! [`survey`] reads the index (set-based queries in one read transaction),
//! lists `cache/`, `snapshots/` and `staging/` once, and finds which imports
//! are live. [`plan`] is a pure function of those inputs and `now`; `--dry-run`
//! prints it, [`apply`] deletes exactly what it names. The whole run holds the
//! registry lock, so no promotion or `rm` interleaves with it.
//!
//! Live: every image a snapshot pins (its metadata, fsmeta, vmdk and every
//! layer it lists; a shared layer lives while any pinning image does), and
//! every path leased by a live import (its journal's staged and final paths,
//! its staging directory and lock). Imports left in `promoting` are never
//! touched here: the next open rolls them back.
//!
//! In a microsandbox home (DESIGN §9) microsandbox's index adds roots: the
//! images its refs and sandboxes name and the layers its manifests link
//! stay; when `db/msb.db` cannot say, no cache artifact (and no snapshot
//! debris) goes. Everywhere, names that are not ours (`foreign`) are never
//! planned, and a cache artifact whose `.lock` is held stays: the plan is
//! made again with those held at planning time, and apply takes each lock
//! before unlinking.
//!
//! What gc will not delete (`manifests.rs`): a directory under
//! `snapshots/` goes only when it is provably not a snapshot (no
//! `manifest.json`, or one that is not JSON at all). One holding a valid
//! manifest but no row is *unindexed* (a lost or damaged index looks exactly
//! like that), one holding JSON gc cannot validate may be a newer
//! microsandbox's, and one whose manifest is not the snapshot its row records
//! (matched by digest, not by name) is a mismatch: all are kept whole and
//! reported, and every image their manifests pin keeps its files. Debris
//! changed less than the grace period ago (default an hour, like git's
//! `gc.pruneExpire`) is kept too: something may still be writing it. Every
//! keep carries a reason `gc --dry-run` prints.
//!
//! Order: rows are deleted and committed first, files after, so a crash at
//! any instant leaves a live artifact or debris the next gc removes, never a
//! row without its file.

mod manifests;
mod plan;
mod sweep;

pub use manifests::in_the_way;
pub use plan::{
    DEFAULT_GRACE_SECS, DiskEntry, Doomed, GcOptions, GcPlan, GcReport, IN_USE_REASON, IndexView,
    JOURNAL_RETENTION_SECS, Kept, KeptReason, KindTotal, Listing, ManifestState, Removal,
    RemovalKind, UNKNOWN_REASON, plan,
};
pub use sweep::{Survey, apply, list_disk, survey};
