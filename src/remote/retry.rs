//! The one retry policy of push and pull (README "Push and pull"): which
//! failures are worth another attempt, how long to wait before it, and
//! when to stop. The client applies it to every request; what an attempt
//! resumes from (a range read continues from the byte reached, an upload
//! starts its blob again) is the client's business.

use std::hash::BuildHasher;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::model::error::Error;

/// HTTP statuses that say "not now" rather than "no": 408, 425, 429,
/// 500, 502, 503, 504.
pub fn is_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429 | 500 | 502 | 503 | 504)
}

/// How often and how patiently to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The wait before the first retry; each later one doubles it.
    pub first_delay: Duration,
    /// The longest backoff between two attempts.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; a registry asking for more is
    /// not retried.
    pub max_retry_after: Duration,
}

/// Default attempts after the first.
pub const DEFAULT_RETRIES: u32 = 4;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: DEFAULT_RETRIES,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first): the
    /// doubling backoff, capped, with its upper half left to `jitter`
    /// (0.0..1.0) so that parallel transfers do not retry in step; at
    /// least what the registry's `Retry-After` asked for.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let backoff = doubled.min(self.max_delay);
        let jittered = backoff.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        retry_after.map_or(jittered, |asked| asked.max(jittered))
    }
}

/// What went wrong in one attempt, and whether another may go better.
#[derive(Debug)]
pub enum Fail {
    /// Transient: a busy, restarting or flaky registry or network.
    Again {
        /// What happened, for the notice and the final error.
        error: Error,
        /// What the registry's `Retry-After` asked for, if it said.
        retry_after: Option<Duration>,
    },
    /// Final: retrying cannot change the answer.
    Stop(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Stop(e)
    }
}

impl Fail {
    /// A transient failure without a `Retry-After`.
    pub fn again(error: Error) -> Fail {
        Fail::Again {
            error,
            retry_after: None,
        }
    }
}

/// A `Retry-After` header: delay-seconds or an HTTP-date (RFC 9110).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = http_date(value)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the epoch of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// A number in 0.0..1.0 that differs from call to call and process to
/// process (std's randomly keyed hasher; good enough to spread retries).
pub fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let h = std::collections::hash_map::RandomState::new().hash_one(n);
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_its_upper_half() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None, 1.0), Duration::from_millis(500));
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(250));
        assert_eq!(p.delay(3, None, 1.0), Duration::from_secs(2));
        assert_eq!(p.delay(9, None, 1.0), Duration::from_secs(8));
        assert_eq!(p.delay(40, None, 0.0), Duration::from_secs(4));
        // Retry-After is a floor, not a replacement for the backoff.
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3)), 0.5),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(4, Some(Duration::ZERO), 1.0),
            Duration::from_secs(4)
        );
        let j: Vec<f64> = (0..64).map(|_| jitter()).collect();
        assert!(j.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(j.windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn transient_statuses_are_the_listed_ones() {
        let transient: Vec<u16> = (100..600)
            .filter(|&s| is_transient(StatusCode::from_u16(s).unwrap()))
            .collect();
        assert_eq!(transient, [408, 425, 429, 500, 502, 503, 504]);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date("Sun, 06 Nov 1994 08:49:37 CET"), None);
    }
}
