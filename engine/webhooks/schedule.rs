//! When a failed delivery is tried again: `WEBHOOK_RETRY_SCHEDULE` (the waits after each
//! failed attempt, Svix's by default: the first attempt at once, then 5 s, 5 min, 30 min,
//! 2 h, 5 h, 10 h, 10 h), each wait jittered by ±10 %, and a receiver's `Retry-After`
//! honoured as a lower bound (capped at a day). Pure: the caller passes the time and the
//! jitter factor.

use std::time::Duration;

use crate::domain::AttemptNext;

/// The default `WEBHOOK_RETRY_SCHEDULE`.
pub const DEFAULT_SCHEDULE: &str = "5s,5m,30m,2h,5h,10h,10h";

/// Longest `Retry-After` honoured.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Jitter: each wait is multiplied by a factor drawn from this range.
pub const JITTER: std::ops::RangeInclusive<f64> = 0.9..=1.1;

/// Most retries a schedule may list.
pub const RETRIES_MAX: usize = 100;

/// The waits before each retry: `waits[i]` follows the failure of attempt `i + 1`; after
/// attempt `waits.len() + 1` fails, the delivery is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    waits: Vec<Duration>,
}

/// How an attempt ended, as far as the schedule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Delivered,
    /// 410 Gone.
    Gone,
    /// Anything else; `retry_after` is the receiver's `Retry-After`, if any.
    Failed {
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

impl Schedule {
    /// Parse a comma-separated list of durations with a unit each (`ms`, `s`, `m`, `h`),
    /// e.g. `5s,5m,30m`. An empty list means no retry.
    ///
    /// # Errors
    /// An entry without a number and unit, a zero wait, a wait over a day, too many entries.
    pub fn parse(list: &str) -> Result<Schedule, String> {
        let mut waits = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let digits = entry.bytes().take_while(u8::is_ascii_digit).count();
            let (number, unit) = entry.split_at(digits);
            let n: u64 = number.parse().map_err(|_| format!("{entry:?} does not start with a number"))?;
            let ms_per = match unit.trim() {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                other => return Err(format!("{entry:?}: unit {other:?} is not ms, s, m or h")),
            };
            let ms = n.checked_mul(ms_per).filter(|ms| (1..=86_400_000).contains(ms));
            let ms = ms.ok_or_else(|| format!("{entry:?} must be between 1 ms and 24 h"))?;
            waits.push(Duration::from_millis(ms));
        }
        if waits.len() > RETRIES_MAX {
            return Err(format!("lists {} retries, more than {RETRIES_MAX}", waits.len()));
        }
        Ok(Schedule { waits })
    }

    /// The waits, in order.
    pub fn waits(&self) -> &[Duration] {
        &self.waits
    }

    /// What follows attempt number `attempt` (1-based) made at `now_ms` that ended with
    /// `outcome`; `jitter` is a factor from [`JITTER`].
    pub fn next(&self, attempt: u32, outcome: Outcome, now_ms: u64, jitter: f64) -> AttemptNext {
        debug_assert!(attempt >= 1 && JITTER.contains(&jitter));
        let retry_after = match outcome {
            Outcome::Delivered => return AttemptNext::Delivered,
            Outcome::Gone => return AttemptNext::Disable,
            Outcome::Failed { retry_after } => retry_after,
        };
        let Some(wait) = self.waits.get(attempt as usize - 1) else { return AttemptNext::GiveUp };
        let jittered = crate::backoff::jittered(*wait, jitter);
        let wait = retry_after.map_or(jittered, |r| jittered.max(r.min(RETRY_AFTER_MAX)));
        AttemptNext::RetryAt(now_ms.saturating_add(wait.as_millis() as u64))
    }
}

impl Default for Schedule {
    fn default() -> Schedule {
        Schedule::parse(DEFAULT_SCHEDULE).expect("the default schedule parses")
    }
}

/// The wait a `Retry-After` value asks for (RFC 9110 §10.2.3: delay seconds or an
/// HTTP-date, in any of the three formats of §5.6.7), relative to `now_ms`; None if
/// malformed. A date in the past asks for no wait.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Longer than u64 seconds is "very long": capped by the caller anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    Some(Duration::from_millis(u64::try_from(at_ms).ok()?.saturating_sub(now_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        let s = Schedule::parse("300ms, 5s,5m ,2h").unwrap();
        let ms: Vec<u128> = s.waits().iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [300, 5_000, 300_000, 7_200_000]);
        assert_eq!(Schedule::default().waits().len(), 7);
        assert_eq!(Schedule::default().waits()[6], Duration::from_secs(36_000));
        assert!(Schedule::parse("").unwrap().waits().is_empty());
        for bad in ["5", "s", "5d", "0s", "25h", "-5s", "5 seconds", "99999999999999999999h"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn next_follows_the_schedule_then_gives_up() {
        let s = Schedule::parse("1s,10s").unwrap();
        let failed = Outcome::Failed { retry_after: None };
        assert_eq!(s.next(1, failed, 1000, 1.0), AttemptNext::RetryAt(2000));
        assert_eq!(s.next(2, failed, 1000, 1.0), AttemptNext::RetryAt(11_000));
        assert_eq!(s.next(3, failed, 1000, 1.0), AttemptNext::GiveUp);
        assert_eq!(s.next(1, failed, 0, 0.9), AttemptNext::RetryAt(900));
        assert_eq!(s.next(1, failed, 0, 1.1), AttemptNext::RetryAt(1100));
        assert_eq!(s.next(3, Outcome::Delivered, 0, 1.0), AttemptNext::Delivered);
        assert_eq!(s.next(1, Outcome::Gone, 0, 1.0), AttemptNext::Disable);
    }

    #[test]
    fn retry_after_is_a_capped_lower_bound() {
        let s = Schedule::parse("1s,1s").unwrap();
        let after = |secs| Outcome::Failed { retry_after: Some(Duration::from_secs(secs)) };
        assert_eq!(s.next(1, after(30), 0, 1.0), AttemptNext::RetryAt(30_000));
        assert_eq!(s.next(1, after(0), 0, 1.0), AttemptNext::RetryAt(1000), "shorter than the schedule: ignored");
        assert_eq!(s.next(1, after(10 * 86_400), 0, 1.0), AttemptNext::RetryAt(86_400_000));
        assert_eq!(s.next(2, after(30), 0, 1.0), AttemptNext::RetryAt(30_000));
        assert_eq!(s.next(3, after(30), 0, 1.0), AttemptNext::GiveUp, "no retry beyond the schedule");
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = 784_111_777_000; // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now), Some(Duration::ZERO));
        // The obsolete formats a recipient must accept (RFC 9110 §5.6.7).
        assert_eq!(parse_retry_after("Sunday, 06-Nov-94 08:51:37 GMT", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun Nov  6 08:51:37 1994", now), Some(Duration::from_secs(120)));
        // A leap day; a wrong weekday, a day that does not exist and dates before 1970 are malformed.
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", 1_709_164_700_000),
            Some(Duration::from_secs(100))
        );
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Thu, 29 Feb 2023 00:00:00 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Sun, 06 Nov 1994 08:49:37 UTC",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }
}
