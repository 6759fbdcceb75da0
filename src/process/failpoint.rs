//! Crash injection for tests: `MSB_FAILPOINT=<name>[@<n>]:<action>` makes
//! the `n`-th arrival (default the first) at the named step abort the
//! process (`abort`), fail with an error (`error`), pause (`pause`,
//! sleeping until killed) so tests can kill -9 at that exact instant, or
//! stop (`stop`, SIGSTOP) so tests can act and then resume it with SIGCONT.
//! Unset, every failpoint is a no-op.
//!
//! [`ALL`] names every failpoint; the crash tests walk each one and fail
//! when a name is missing from their walk or is never reached.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::error::{Error, Result};

/// The environment variable naming the failpoint to trigger.
pub const ENV: &str = "MSB_FAILPOINT";

/// Every failpoint, in the order an operation reaches them.
pub const ALL: &[&str] = &[
    LEASE_ACQUIRED,
    IMPORT_MEMBER_STAGED,
    IMPORT_STREAMED,
    IMPORT_RECORDED,
    IMPORT_VERIFIED,
    ADD_STAGED,
    PROMOTE_JOURNALED,
    PROMOTE_RENAME,
    PROMOTE_RENAMED,
    PROMOTE_BEFORE_COMMIT,
    PROMOTE_COMMITTED,
    ADD_INSTALLED,
    LEASE_STAGING_REMOVED,
    RECOVER_UNDONE,
    EXPORT_PLANNED,
    EXPORT_BEFORE_RENAME,
    GC_PLANNED,
    GC_ROWS_DELETED,
    GC_FILE_REMOVED,
    RM_BEFORE_COMMIT,
    RM_COMMITTED,
    RM_RENAMED,
    REINDEX_BEFORE_COMMIT,
    REINDEX_REBUILT,
    RENAME_BEFORE_COMMIT,
    RENAME_COMMITTED,
    RENAME_MOVED,
];

/// The failpoints of push and pull, walked by the tests against a real
/// registry (`tests/it/oci.rs`) rather than the local crash walk.
pub const REMOTE: &[&str] = &[
    PUSH_BLOB_STORED,
    PUSH_MANIFEST_STORED,
    PULL_CHUNK_WRITTEN,
    PULL_ASSEMBLED,
];

/// push: after each blob is stored in the registry (before it is recorded).
pub const PUSH_BLOB_STORED: &str = "push.blob-stored";
/// push: after each snapshot's manifest is stored under its `sha256-<hex>`
/// tag (parents first), before the user's tag.
pub const PUSH_MANIFEST_STORED: &str = "push.manifest-stored";
/// pull: after each chunk is written into its staged file.
pub const PULL_CHUNK_WRITTEN: &str = "pull.chunk-written";
/// pull: every file assembled, before verification and install.
pub const PULL_ASSEMBLED: &str = "pull.assembled";

/// Lease of an add or import: lock held, staging directory and journal row committed.
pub const LEASE_ACQUIRED: &str = "lease.acquired";
/// import: after each archive member is staged (fsynced), before the next is read.
pub const IMPORT_MEMBER_STAGED: &str = "import.member-staged";
/// import: the whole archive is staged, nothing recorded yet.
pub const IMPORT_STREAMED: &str = "import.streamed";
/// import: every staged file is recorded in the journal.
pub const IMPORT_RECORDED: &str = "import.recorded";
/// import: manifests, digests, integrity and the cache file set verified.
pub const IMPORT_VERIFIED: &str = "import.verified";
/// add: the directory (and cache) is copied into staging and recorded.
pub const ADD_STAGED: &str = "add.staged";
/// Promotion: the renames are committed with state `promoting`.
pub const PROMOTE_JOURNALED: &str = "promote.journaled";
/// Promotion: after each rename into snapshots/ or cache/.
pub const PROMOTE_RENAME: &str = "promote.rename";
/// Promotion: every rename done and its directory fsynced.
pub const PROMOTE_RENAMED: &str = "promote.renamed";
/// Promotion: rows written, transaction not yet committed.
pub const PROMOTE_BEFORE_COMMIT: &str = "promote.before-commit";
/// Promotion: rows and state `done` committed.
pub const PROMOTE_COMMITTED: &str = "promote.committed";
/// add: installed and the registry lock let go, the row not yet read back.
pub const ADD_INSTALLED: &str = "add.installed";
/// End of a lease: the staging directory is gone, the final state not yet recorded.
pub const LEASE_STAGING_REMOVED: &str = "lease.staging-removed";
/// Recovery: a dead promotion's renames are undone, its state not yet `failed`.
pub const RECOVER_UNDONE: &str = "recover.undone";
/// export: the plan is made from the index, no planned file opened yet.
pub const EXPORT_PLANNED: &str = "export.planned";
/// export: the archive is complete and fsynced, not yet renamed over the target.
pub const EXPORT_BEFORE_RENAME: &str = "export.before-rename";
/// gc: the plan is made, nothing deleted.
pub const GC_PLANNED: &str = "gc.planned";
/// gc: the rows are deleted and committed, no file deleted yet.
pub const GC_ROWS_DELETED: &str = "gc.rows-deleted";
/// gc: after each file or directory deleted.
pub const GC_FILE_REMOVED: &str = "gc.file-removed";
/// rm: the rows are deleted, the transaction not yet committed.
pub const RM_BEFORE_COMMIT: &str = "rm.before-commit";
/// rm: the rows are committed, the directory still in snapshots/.
pub const RM_COMMITTED: &str = "rm.committed";
/// rm: the directory is moved into staging, not yet deleted.
pub const RM_RENAMED: &str = "rm.renamed";
/// rename: the row has its new name, the transaction not yet committed.
pub const RENAME_BEFORE_COMMIT: &str = "rename.before-commit";
/// rename: the new name is committed, the directory not yet moved.
pub const RENAME_COMMITTED: &str = "rename.committed";
/// rename: the directory is moved, the journal record not yet dropped.
pub const RENAME_MOVED: &str = "rename.moved";

/// reindex: every row written, the transaction not yet committed.
pub const REINDEX_BEFORE_COMMIT: &str = "reindex.before-commit";
/// reindex of a lost index: the new index is complete, not yet renamed into place.
pub const REINDEX_REBUILT: &str = "reindex.rebuilt";

struct Config {
    name: String,
    nth: u64,
    action: String,
}

fn configured() -> Option<&'static Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let v = std::env::var(ENV).ok()?;
            let (point, action) = v.split_once(':').unwrap_or((v.as_str(), "abort"));
            let (name, nth) = match point.split_once('@') {
                Some((name, n)) => (name, n.parse().ok()?),
                None => (point, 1),
            };
            Some(Config {
                name: name.to_string(),
                nth,
                action: action.to_string(),
            })
        })
        .as_ref()
}

/// Trigger the failpoint `name` if it is the configured one and this is
/// the configured arrival.
pub fn hit(name: &str) -> Result<()> {
    static ARRIVALS: AtomicU64 = AtomicU64::new(0);
    debug_assert!(
        ALL.contains(&name) || REMOTE.contains(&name),
        "failpoint {name} is not listed in ALL or REMOTE"
    );
    let Some(config) = configured() else {
        return Ok(());
    };
    if config.name != name || ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1 != config.nth {
        return Ok(());
    }
    match config.action.as_str() {
        "pause" => {
            eprintln!("failpoint {name}: paused (pid {})", std::process::id());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        "stop" => {
            eprintln!("failpoint {name}: stopped (pid {})", std::process::id());
            // SAFETY: raise has no memory effects; the test resumes us with SIGCONT.
            unsafe {
                libc::raise(libc::SIGSTOP);
            }
            // A signal sent while we were stopped is delivered on SIGCONT
            // to any thread of the process, maybe not this one: give its
            // handler time to run before this thread looks at the flag.
            std::thread::sleep(std::time::Duration::from_millis(100));
            Ok(())
        }
        "error" => Err(Error::Failpoint(name.to_string())),
        _ => std::process::abort(),
    }
}
