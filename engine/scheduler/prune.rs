//! The background pruner (retention): every `PRUNE_INTERVAL_MS` it deletes finished jobs
//! older than `JOB_RETENTION_SECONDS` (with their events, deliveries and outputs' blob
//! references), cache entries older than `CACHE_TTL_SECONDS` and expired idempotency keys,
//! in bounded batches of one commit each, yielding between them so submits and the
//! scheduler's own writes interleave instead of waiting behind one large transaction.

use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::domain::now_ms;
use crate::store::Pruned;

/// Most records of each kind deleted per commit.
pub const PRUNE_BATCH: usize = 256;

/// Pause between two full batches.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

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

/// The pruner task: prune at start, then every interval, until shutdown.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        prune_once(&shared).await;
        tokio::select! {
            _ = tokio::time::sleep(shared.config.retention.prune_interval) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}
