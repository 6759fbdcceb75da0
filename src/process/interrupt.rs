//! SIGINT and SIGTERM during `import`, `export`, `push` and `pull`: the binary turns them
//! into a flag ([`install`]); the long loops poll it ([`check`], [`wait`])
//! and fail with [`Error::Interrupted`], so the ordinary failure path
//! removes what the process created (an import's staging, an export's
//! partial file) before the process exits 128 + the signal number. The
//! library leaves signal dispositions alone unless the caller installs.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::model::error::{Error, Result};

/// The first signal received since [`install`], 0 for none.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// How often [`wait`] looks at the flag.
const POLL: Duration = Duration::from_millis(50);

extern "C" fn record(signal: libc::c_int) {
    // Storing to an atomic is async-signal-safe.
    let _ = SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// Catch SIGINT and SIGTERM for the rest of the process: each only sets
/// the flag. A second signal once one is pending ends the process at once
/// with the default action, for a person who does not want to wait.
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `record` only stores to an atomic; the struct is zeroed
        // then filled as sigaction(2) documents; SA_RESETHAND restores the
        // default action after the first delivery.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = record as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal received, if any.
pub fn pending() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Fail with [`Error::Interrupted`] once a signal was received.
pub fn check() -> Result<()> {
    match pending() {
        None => Ok(()),
        Some(signal) => Err(Error::Interrupted {
            signal,
            cleaned: String::new(),
        }),
    }
}

/// Resolve with [`Error::Interrupted`] once a signal is received: raced
/// against work that may block on a silent pipe.
pub async fn wait() -> Error {
    loop {
        if let Err(e) = check() {
            return e;
        }
        tokio::time::sleep(POLL).await;
    }
}
