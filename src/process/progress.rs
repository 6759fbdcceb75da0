//! Progress as an event stream: long operations report phases and bytes
//! through [`Progress`]; only the CLI turns the events into bars.

/// Receives progress events from a long operation.
pub trait Progress: Send + Sync {
    /// A new phase begins, with its total in bytes when known.
    fn start(&self, phase: &str, total: Option<u64>);
    /// `bytes` more of the current phase are done.
    fn advance(&self, bytes: u64);
    /// The current phase is over.
    fn finish(&self);
}

/// Discards every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: Option<u64>) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}
