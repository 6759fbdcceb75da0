//! The exclusive registry lock: an flock on `registry.lock` that every
//! writer (promotion, recovery, gc, rm, reindex) holds while it changes
//! files and rows together.

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::db;
use crate::model::error::{Error, Result};
use crate::store::files::open_lock;
use crate::store::layout::Layout;

/// The exclusive registry lock; released on drop. A lock [`RegistryLock::within`]
/// another holds nothing itself: the outer one is held for longer.
pub struct RegistryLock(#[allow(dead_code)] Option<File>);

impl RegistryLock {
    /// A lock for a step of an operation that holds the registry lock
    /// already (a rebuilding `reindex`): flock is per open file, so taking
    /// it again would wait for ourselves.
    pub fn within(_outer: &RegistryLock) -> RegistryLock {
        RegistryLock(None)
    }
}

/// How long a command waits for the registry lock: `MSB_REGISTRY_LOCK_TIMEOUT`
/// seconds, default ten minutes.
pub fn lock_timeout() -> Duration {
    db::wait_limit().unwrap_or(Duration::from_secs(600))
}

/// After this long waiting for a lock, say so on stderr.
const LOCK_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Take the exclusive registry lock of `layout`, waiting for the current holder
/// (saying so on stderr after a second, giving up after [`lock_timeout`]).
pub fn lock_exclusive(layout: &Layout) -> Result<RegistryLock> {
    let path = layout.lock_file();
    let file = open_lock(&path, true)?
        .ok_or_else(|| Error::io("open", &path, std::io::ErrorKind::NotFound.into()))?;
    wait_for_lock(&file, &path)?;
    Ok(RegistryLock(Some(file)))
}

/// Take `file`'s exclusive flock, polling: a notice on stderr after a
/// second, [`Error::LockTimeout`] after [`lock_timeout`].
fn wait_for_lock(file: &File, path: &Path) -> Result<()> {
    let start = Instant::now();
    let timeout = lock_timeout();
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", path, e)),
            Err(TryLockError::WouldBlock) => {}
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(Error::LockTimeout {
                path: path.to_path_buf(),
                waited_secs: waited.as_secs(),
            });
        }
        if !told && waited >= LOCK_NOTICE_AFTER {
            eprintln!(
                "waiting for {}: another msb-registry command (gc, rm, import, add or reindex) holds it; giving up after {} s",
                path.display(),
                timeout.as_secs()
            );
            told = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
