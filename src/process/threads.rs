//! How many threads hashing may use: the cores this process may run on
//! (`available_parallelism`, which honours CPU affinity and cgroup quotas),
//! or the limit the caller set (`--threads`, `MSB_REGISTRY_THREADS`).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The limit set by [`set_limit`], 0 for none.
static LIMIT: AtomicUsize = AtomicUsize::new(0);

/// Use at most `n` threads (at least 1) for the rest of the process.
pub fn set_limit(n: usize) {
    LIMIT.store(n.max(1), Ordering::Relaxed);
}

/// Threads to use: the limit when one was set, else the available cores.
pub fn available() -> usize {
    match LIMIT.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}
