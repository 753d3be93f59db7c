//! Which backend runs the next job: a pure function of the backends' states, so the rule
//! is tested without IO.
//!
//! Among the backends that may take work (healthy, not draining, in flight below their
//! own limit), prefer one that ran the job's workflow within [`AFFINITY_MS`] (its models
//! are likely still loaded), then the least loaded by `in_flight / max`, then the first in
//! `COMFYUI_URL` order.

use std::cmp::Ordering;

/// How long after a run a backend counts as having the workflow's models loaded, in ms.
pub const AFFINITY_MS: u64 = 10 * 60 * 1000;

/// One backend as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Healthy and not draining.
    pub open: bool,
    /// Prompts in flight.
    pub in_flight: u32,
    /// Its concurrency limit (at least 1).
    pub max: u32,
    /// When it last took a job of the workflow being routed (ms since the epoch).
    pub last_ran_ms: Option<u64>,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.open && self.in_flight < self.max
    }

    fn warm(&self, now_ms: u64) -> bool {
        self.last_ran_ms.is_some_and(|t| now_ms.saturating_sub(t) <= AFFINITY_MS)
    }
}

/// `a.in_flight / a.max` against `b`'s, without floating point.
fn load_cmp(a: &Candidate, b: &Candidate) -> Ordering {
    (u64::from(a.in_flight) * u64::from(b.max)).cmp(&(u64::from(b.in_flight) * u64::from(a.max)))
}

/// The index of the backend to run the next job on, or None when none may take it.
pub fn pick(candidates: &[Candidate], now_ms: u64) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.has_room())
        // `min_by` keeps the first of equals: COMFYUI_URL order breaks ties.
        .min_by(|(_, a), (_, b)| b.warm(now_ms).cmp(&a.warm(now_ms)).then_with(|| load_cmp(a, b)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(in_flight: u32, max: u32, last_ran_ms: Option<u64>) -> Candidate {
        Candidate { open: true, in_flight, max, last_ran_ms }
    }

    const NOW: u64 = 100 * AFFINITY_MS;

    #[test]
    fn nothing_open_or_with_room_takes_nothing() {
        assert_eq!(pick(&[], NOW), None);
        let closed = Candidate { open: false, ..c(0, 4, Some(NOW)) };
        assert_eq!(pick(&[closed, c(2, 2, None)], NOW), None);
        assert_eq!(pick(&[closed, c(2, 2, None), c(0, 1, None)], NOW), Some(2));
    }

    #[test]
    fn least_loaded_by_ratio_then_first() {
        assert_eq!(pick(&[c(1, 2, None), c(1, 4, None)], NOW), Some(1), "1/4 is less than 1/2");
        assert_eq!(pick(&[c(2, 4, None), c(1, 2, None)], NOW), Some(0), "equal ratios: the first");
        assert_eq!(pick(&[c(0, 1, None), c(0, 8, None)], NOW), Some(0));
        assert_eq!(pick(&[c(3, 4, None), c(1, 1, None), c(2, 4, None)], NOW), Some(2));
    }

    #[test]
    fn a_warm_backend_with_room_wins_over_a_less_loaded_cold_one() {
        let warm = c(3, 4, Some(NOW - 1_000));
        assert_eq!(pick(&[c(0, 4, None), warm], NOW), Some(1));
        // Full, or draining/down: the cold one takes it.
        assert_eq!(pick(&[c(0, 4, None), c(4, 4, Some(NOW))], NOW), Some(0));
        assert_eq!(pick(&[c(0, 4, None), Candidate { open: false, ..warm }], NOW), Some(0));
        // Affinity expires.
        let stale = c(1, 4, Some(NOW - AFFINITY_MS - 1));
        assert_eq!(pick(&[c(0, 4, None), stale], NOW), Some(0));
        assert_eq!(pick(&[c(0, 4, None), c(1, 4, Some(NOW - AFFINITY_MS))], NOW), Some(1), "the bound is inclusive");
        // Two warm ones: the less loaded.
        assert_eq!(pick(&[c(2, 4, Some(NOW)), c(1, 4, Some(NOW - 5)), c(0, 4, None)], NOW), Some(1));
        // A clock that went backwards counts as recent, not as a panic.
        assert_eq!(pick(&[c(0, 4, None), c(1, 4, Some(NOW + 5))], NOW), Some(1));
    }
}
