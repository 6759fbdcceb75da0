//! A timeline for finding where an operation waits: with `MSB_REGISTRY_TIMELINE`
//! set in the environment, each [`mark`] writes one line to stderr with the
//! milliseconds since the first mark and the thread it ran on. Unset (the
//! normal case), a mark costs one load of a cached flag.

use std::sync::OnceLock;
use std::time::Instant;

/// When the first mark was made, if the timeline is on.
fn start() -> Option<Instant> {
    static START: OnceLock<Option<Instant>> = OnceLock::new();
    *START.get_or_init(|| std::env::var_os("MSB_REGISTRY_TIMELINE").map(|_| Instant::now()))
}

/// Record that `what` happened now (a diagnostic line on stderr when
/// `MSB_REGISTRY_TIMELINE` is set; nothing otherwise).
pub fn mark(what: &str) {
    if let Some(t0) = start() {
        let thread = std::thread::current();
        eprintln!(
            "timeline {:8.1} ms [{}] {what}",
            t0.elapsed().as_secs_f64() * 1000.0,
            thread.name().unwrap_or("?")
        );
    }
}
