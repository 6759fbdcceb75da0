//! The deadline model of push and pull (README "Push and pull"): an
//! optional overall `--timeout` for the command's network work, and per
//! attempt a sliding window — every attempt must move at least
//! `--min-rate` × `--stall-timeout` bytes in any `--stall-timeout` seconds
//! (waiting for an answer moves none), so a registry that goes silent or
//! drips bytes costs one window per attempt, never more.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The limits a person sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole command's network work, when bounded.
    pub timeout: Option<Duration>,
    /// The window over which an attempt's progress is judged.
    pub stall: Duration,
    /// Bytes per second an attempt must average over every window.
    pub min_rate: u64,
}

/// Default `--stall-timeout`, in seconds.
pub const DEFAULT_STALL_SECS: u64 = 30;
/// Default `--min-rate`, in bytes per second.
pub const DEFAULT_MIN_RATE: u64 = 1024;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: None,
            stall: Duration::from_secs(DEFAULT_STALL_SECS),
            min_rate: DEFAULT_MIN_RATE,
        }
    }
}

/// Why an attempt was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The overall `--timeout` ran out.
    Timeout(Duration),
    /// Too few bytes moved in the last window (`bytes` of them).
    Slow {
        /// Bytes moved in the window.
        bytes: u64,
        /// The window.
        window: Duration,
        /// The rate asked for.
        min_rate: u64,
    },
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Cut::Timeout(t) => write!(f, "the --timeout of {} s ran out", t.as_secs_f64()),
            Cut::Slow {
                bytes: 0, window, ..
            } => write!(
                f,
                "no answer and no data for {} s (--stall-timeout)",
                window.as_secs_f64()
            ),
            Cut::Slow {
                bytes,
                window,
                min_rate,
            } => write!(
                f,
                "only {bytes} bytes in {} s, slower than --min-rate {min_rate} bytes/s",
                window.as_secs_f64()
            ),
        }
    }
}

/// The bytes one attempt has moved (sent or received), shared with the
/// body streams that count them.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<AtomicU64>);

impl Activity {
    /// `n` more bytes moved.
    pub fn moved(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The limits, with the command's overall deadline fixed when it starts.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    limits: Limits,
    until: Option<Instant>,
}

impl Deadline {
    /// The deadline of a command starting now.
    pub fn start(limits: Limits) -> Deadline {
        Deadline {
            limits,
            until: limits.timeout.map(|t| Instant::now() + t),
        }
    }

    /// Why no new attempt or wait of `wait` may start, if one may not.
    pub fn refuses(&self, wait: Duration) -> Option<Cut> {
        let until = self.until?;
        (Instant::now() + wait >= until)
            .then(|| Cut::Timeout(self.limits.timeout.unwrap_or_default()))
    }

    /// Run one attempt, `attempt`, cutting it when the deadline passes or
    /// its `activity` falls below the minimum rate over a window.
    pub async fn guard<T>(
        &self,
        activity: &Activity,
        attempt: impl Future<Output = T>,
    ) -> Result<T, Cut> {
        tokio::select! {
            biased;
            out = attempt => Ok(out),
            cut = self.watch(activity) => Err(cut),
        }
    }

    /// Wakes every tenth of a window (at most every second) and samples
    /// the bytes moved; ends with the reason to cut.
    async fn watch(&self, activity: &Activity) -> Cut {
        let window = self.limits.stall;
        let tick = (window / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let need = (self.limits.min_rate as f64 * window.as_secs_f64()).ceil() as u64;
        let start = Instant::now();
        let mut samples = VecDeque::from([(start, 0u64)]);
        loop {
            let next = Instant::now() + tick;
            match self.until {
                Some(until) if until <= next => {
                    tokio::time::sleep_until(until).await;
                    return Cut::Timeout(self.limits.timeout.unwrap_or_default());
                }
                _ => tokio::time::sleep_until(next).await,
            }
            let now = Instant::now();
            let bytes = activity.bytes();
            samples.push_back((now, bytes));
            // The newest sample at least a window old is the baseline.
            while samples.len() > 1 && now.duration_since(samples[1].0) >= window {
                samples.pop_front();
            }
            let (then, before) = samples[0];
            if now.duration_since(then) >= window && bytes - before < need.max(1) {
                return Cut::Slow {
                    bytes: bytes - before,
                    window,
                    min_rate: self.limits.min_rate,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time at a small scale: a window of 200 ms.
    fn limits(min_rate: u64, timeout_ms: Option<u64>) -> Deadline {
        Deadline::start(Limits {
            timeout: timeout_ms.map(Duration::from_millis),
            stall: Duration::from_millis(200),
            min_rate,
        })
    }

    #[tokio::test]
    async fn silence_for_a_window_is_cut() {
        let a = Activity::default();
        let cut = limits(1024, None)
            .guard(&a, std::future::pending::<()>())
            .await;
        assert!(matches!(cut, Err(Cut::Slow { bytes: 0, .. })), "{cut:?}");
    }

    #[tokio::test]
    async fn a_drip_is_cut_and_a_steady_flow_is_not() {
        let d = limits(10_000, None);
        // A byte every 50 ms: never silent, far below 2,000 bytes a window.
        let a = Activity::default();
        let drip = async {
            loop {
                a.moved(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let cut = d.guard(&a, drip).await;
        assert!(
            matches!(cut, Err(Cut::Slow { bytes: 1..=9, .. })),
            "{cut:?}"
        );
        // 16 KiB every 20 ms for two seconds: far above it, finishes.
        let b = Activity::default();
        let flow = async {
            for _ in 0..100 {
                b.moved(16 << 10);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        assert_eq!(d.guard(&b, flow).await, Ok(()));
    }

    #[tokio::test]
    async fn the_overall_timeout_cuts_even_a_fast_transfer() {
        let d = limits(1, Some(500));
        let a = Activity::default();
        let flow = async {
            loop {
                a.moved(1 << 20);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let cut = d.guard(&a, flow).await;
        assert_eq!(cut, Err(Cut::Timeout(Duration::from_millis(500))));
        assert!(d.refuses(Duration::ZERO).is_some());
        assert_eq!(limits(1, None).refuses(Duration::from_secs(1 << 30)), None);
    }
}
