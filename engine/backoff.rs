//! Retry pauses: the one formula of every retry loop of the gateway (the scheduler's
//! reconcile, transfer and object-storage loops, the backend probe; the webhook schedule's
//! jitter). Pure: the caller counts its failures, sleeps, and draws any randomness.

use std::time::Duration;

/// Exponential backoff: the pause after failure `n` (1-based) is `base · factorⁿ⁻¹`, at
/// most `max`. `factor` 1 is a constant pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause after the first failure.
    pub base: Duration,
    /// Growth per further failure.
    pub factor: u32,
    /// The longest pause.
    pub max: Duration,
}

impl Backoff {
    /// `base` doubling per failure, at most `max`.
    pub const fn doubling(base: Duration, max: Duration) -> Backoff {
        Backoff { base, factor: 2, max }
    }

    /// The pause after failure number `n` (1-based; 0 is taken as 1).
    pub fn delay(&self, n: u32) -> Duration {
        let mut pause = self.base;
        for _ in 1..n {
            if pause >= self.max {
                break;
            }
            pause = pause.saturating_mul(self.factor);
        }
        pause.min(self.max)
    }

    /// The pauses after failures 1, 2, 3, ... (endless: the caller bounds the tries).
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        (1..=u32::MAX).map(move |n| self.delay(n))
    }
}

/// `pause` multiplied by a jitter `factor` the caller drew (e.g. from 0.9..=1.1 for ±10 %).
pub fn jittered(pause: Duration, factor: f64) -> Duration {
    Duration::from_secs_f64(pause.as_secs_f64() * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_base_up_to_max() {
        let b = Backoff::doubling(ms(100), ms(2000));
        let pauses: Vec<u128> = b.delays().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.delay(0), ms(100), "0 is the first failure");
        assert_eq!(b.delay(u32::MAX), ms(2000), "no overflow, however many failures");
    }

    #[test]
    fn other_factors_and_a_max_below_base() {
        let constant = Backoff { base: ms(50), factor: 1, max: Duration::MAX };
        assert!(constant.delays().take(5).all(|d| d == ms(50)));
        let triple = Backoff { base: ms(10), factor: 3, max: ms(100) };
        assert_eq!(
            [triple.delay(1), triple.delay(2), triple.delay(3), triple.delay(4)],
            [ms(10), ms(30), ms(90), ms(100)]
        );
        assert_eq!(Backoff::doubling(ms(500), ms(100)).delay(1), ms(100), "max wins");
        let huge = Backoff::doubling(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        assert_eq!(huge.delay(3), Duration::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn jitter_scales() {
        assert_eq!(jittered(Duration::from_secs(10), 0.9), Duration::from_secs(9));
        assert_eq!(jittered(Duration::from_secs(10), 1.1), Duration::from_secs(11));
        assert_eq!(jittered(ms(1000), 1.0), ms(1000));
    }
}
