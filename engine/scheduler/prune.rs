//! The background pruner (retention): every `PRUNE_INTERVAL_MS` it deletes finished jobs
//! older than `JOB_RETENTION_SECONDS` (with their events, deliveries and outputs' blob
//! references), cache entries older than `CACHE_TTL_SECONDS` and expired idempotency keys,
//! in bounded batches of one commit each, yielding between them so submits and the
//! scheduler's own writes interleave instead of waiting behind one large transaction.
//!
//! It also watches the database's disk (`DISK_FREE_MIN_BYTES`): every second it reads the
//! free space again, and when it is below twice the watermark ("low") it prunes at once
//! instead of at the next interval (at most every [`LOW_PASS_EVERY`]) and then measures
//! what redb freed inside its file. A submit that finds the space below the watermark
//! asks for such a pass and waits for it ([`Scheduler::disk_check`]) before it is refused:
//! retention goes first, refusals only after.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::{Scheduler, Shared};
use crate::domain::now_ms;
use crate::store::{DiskSpace, Pruned};

/// Most records of each kind deleted per commit.
pub const PRUNE_BATCH: usize = 256;

/// Pause between two full batches.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// How often the free space is read again between passes.
const SPACE_TICK: Duration = Duration::from_secs(1);

/// While space is low, a pass at most this often on its own (a submit refused for space
/// asks for one sooner, see [`Scheduler::disk_check`]).
const LOW_PASS_EVERY: Duration = Duration::from_secs(5);

/// A submit below the watermark waits at most this long for the pass it asked for.
const PASS_WAIT_MAX: Duration = Duration::from_secs(3);

/// A pass that ended this recently counts as "retention already ran" for a submit.
const PASS_FRESH: Duration = Duration::from_secs(1);

/// While space is low and nothing was pruned, redb's free pages are measured again at
/// most this often (a measurement walks every page of the database and holds the writer,
/// so refused submits must not be able to make it run every second).
const MEASURE_EVERY: Duration = Duration::from_secs(30);

/// The pruner's doorbell and its pass counter, shared with submits.
#[derive(Debug)]
pub(crate) struct Pruner {
    /// Rung by a submit that found the space below the watermark.
    wake: Notify,
    /// Incremented after every pass (prune, and measurement when low).
    passes: watch::Sender<u64>,
    /// When the last pass ended.
    last_pass: Mutex<Option<Instant>>,
    /// When redb's free pages were last measured.
    last_measure: Mutex<Option<Instant>>,
}

impl Default for Pruner {
    fn default() -> Self {
        Pruner {
            wake: Notify::new(),
            passes: watch::Sender::new(0),
            last_pass: Mutex::new(None),
            last_measure: Mutex::new(None),
        }
    }
}

/// Whether a pass should measure redb's free pages: space is low, and the pass freed
/// something or the last measurement is old (or there was none).
pub(crate) fn measure_due(low: bool, pruned: bool, last_measure: Option<Duration>) -> bool {
    low && (pruned || last_measure.is_none_or(|ago| ago >= MEASURE_EVERY))
}

/// Whether `space` is below `free_min_bytes` (the watermark; 0: never).
pub(crate) fn below(space: Option<DiskSpace>, free_min_bytes: u64) -> bool {
    free_min_bytes > 0 && space.is_some_and(|s| s.free_bytes() < free_min_bytes)
}

/// Whether `space` is low: below twice the watermark, where retention starts early.
pub(crate) fn low(space: Option<DiskSpace>, free_min_bytes: u64) -> bool {
    below(space, free_min_bytes.saturating_mul(2))
}

/// Prune now, batch after batch, until nothing old is left (or shutdown). What was deleted.
pub(crate) async fn prune_once(shared: &Shared) -> Pruned {
    let retention = &shared.config.retention;
    let mut total = Pruned::default();
    loop {
        let now = now_ms();
        let before = |d: Duration| now.saturating_sub(d.as_millis() as u64);
        let jobs_before = retention.jobs.map_or(0, before);
        let result = shared.store.prune(jobs_before, before(retention.cache_ttl), now, PRUNE_BATCH).await;
        let p = match result {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "pruning failed; retrying at the next interval");
                return total;
            }
        };
        shared.metrics.pruned(p);
        total.jobs += p.jobs;
        total.cache_entries += p.cache_entries;
        total.idempotency_keys += p.idempotency_keys;
        if !p.is_full(PRUNE_BATCH) || shared.shutdown.is_cancelled() {
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    if total != Pruned::default() {
        tracing::info!(
            jobs = total.jobs,
            cache_entries = total.cache_entries,
            idempotency_keys = total.idempotency_keys,
            "pruned expired records"
        );
    }
    total
}

/// One pass: prune, then, when space is low, measure what redb can reuse; count the pass.
async fn pass(shared: &Shared) {
    let pruned = prune_once(shared).await != Pruned::default();
    let free_min = shared.config.disk.free_min_bytes;
    shared.store.refresh_space();
    let is_low = low(shared.store.disk_space().ok().flatten(), free_min);
    let last_measure = shared.pruner.last_measure.lock().unwrap_or_else(|p| p.into_inner()).map(|t| t.elapsed());
    if measure_due(is_low, pruned, last_measure) {
        *shared.pruner.last_measure.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        match shared.store.measure_space().await {
            Ok(Some(space)) => tracing::info!(
                fs_free_bytes = space.fs_free_bytes,
                db_reusable_bytes = space.db_reusable_bytes,
                free_min_bytes = free_min,
                "the database's disk is low"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot measure the database's free pages"),
        }
    }
    *shared.pruner.last_pass.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    shared.pruner.passes.send_modify(|n| *n += 1);
}

/// The pruner task: a pass at start, then every interval, early when the disk is low or a
/// submit asks, until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    let free_min = shared.config.disk.free_min_bytes;
    loop {
        pass(&shared).await;
        let next = tokio::time::Instant::now() + shared.config.retention.prune_interval;
        let low_since = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                _ = shared.pruner.wake.notified() => break,
                _ = tokio::time::sleep(SPACE_TICK) => {
                    shared.store.refresh_space();
                    let is_low = low(shared.store.disk_space().ok().flatten(), free_min);
                    if is_low && low_since.elapsed() >= LOW_PASS_EVERY {
                        break;
                    }
                }
                _ = shared.shutdown.cancelled() => return,
            }
        }
    }
}

impl Scheduler {
    /// Whether a new job may be stored as far as the disk goes: `Ok` above
    /// `DISK_FREE_MIN_BYTES`; below it, retention runs first (a pass is asked for and
    /// waited for, unless one just ended), and only if space is still below is the answer
    /// `Err` with the readings.
    pub async fn disk_check(&self) -> Result<(), DiskSpace> {
        let shared = &self.shared;
        let free_min = shared.config.disk.free_min_bytes;
        let space = shared.store.disk_space().ok().flatten();
        if !below(space, free_min) {
            return Ok(());
        }
        let fresh =
            shared.pruner.last_pass.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|t| t.elapsed() < PASS_FRESH);
        if !fresh {
            let mut passes = shared.pruner.passes.subscribe();
            let seen = *passes.borrow_and_update();
            shared.pruner.wake.notify_one();
            let _ = tokio::time::timeout(PASS_WAIT_MAX, passes.wait_for(|n| *n > seen)).await;
        }
        match shared.store.disk_space().ok().flatten() {
            Some(space) if below(Some(space), free_min) => Err(space),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_and_low_compare_with_the_watermark_and_twice_it() {
        let s = |fs, db| Some(DiskSpace { fs_free_bytes: fs, db_reusable_bytes: db });
        assert!(!below(s(10, 0), 10) && below(s(9, 0), 10));
        assert!(!below(s(5, 5), 10), "space redb can reuse counts");
        assert!(!below(s(0, 0), 0), "0 turns the check off");
        assert!(!below(None, 10), "no file, no check");
        assert!(low(s(19, 0), 10) && !low(s(20, 0), 10));
        assert!(!low(s(0, 0), 0));
    }

    #[test]
    fn redb_is_measured_when_low_after_a_prune_or_when_the_last_reading_is_old() {
        let s = Duration::from_secs;
        assert!(!measure_due(false, true, None), "not while space is plentiful");
        assert!(measure_due(true, false, None), "never measured");
        assert!(measure_due(true, true, Some(s(1))), "a prune freed pages");
        assert!(!measure_due(true, false, Some(s(1))), "nothing changed since a recent reading");
        assert!(measure_due(true, false, Some(MEASURE_EVERY)));
    }
}
