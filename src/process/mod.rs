//! What the whole process shares, beside the data model at the bottom:
//! progress events, the interrupt flag set by SIGINT/SIGTERM, the
//! failpoints the crash tests arm, how many threads hashing may use and the
//! slots that hold them to it, and a timeline for finding where an operation waits.

pub(crate) mod budget;
#[doc(hidden)]
pub mod failpoint;
pub(crate) mod interrupt;
pub(crate) mod progress;
pub mod slots;
pub mod threads;
pub mod timeline;
