//! Retention: deleting old finished jobs (record, listing entries, events, deliveries and
//! blob references), expired cache entries and expired idempotency keys, a bounded batch
//! per commit so the writer (and so every submit) never waits long behind it.

use redb::ReadableTable;

use super::StoreError;
use super::blobs::{self, RefPlan};
use super::cache;
use super::jobs::load_job;
use super::outbox;
use super::tables::{WriteTables, state_count_key};
use super::writer::WriteOp;
use crate::domain::{CacheEntry, Hash, Job};

/// What one prune commit removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Finished jobs deleted.
    pub jobs: usize,
    /// Cache entries deleted.
    pub cache_entries: usize,
    /// Idempotency records deleted.
    pub idempotency_keys: usize,
}

impl Pruned {
    /// Whether a batch was full in any category (more may be waiting).
    pub fn is_full(&self, limit: usize) -> bool {
        self.jobs >= limit || self.cache_entries >= limit || self.idempotency_keys >= limit
    }
}

/// `Store::prune`.
pub(crate) struct Prune {
    pub finished_before_ms: u64,
    pub cache_before_ms: u64,
    pub now_ms: u64,
    pub limit: usize,
}

/// How many listing entries one prune may look at per job it may delete (old jobs that
/// are still queued or running are skipped, not deleted).
const SCAN_PER_JOB: usize = 8;

pub(crate) struct PrunePlan {
    jobs: Vec<Job>,
    entries: Vec<(Hash, CacheEntry)>,
    refs: RefPlan,
}

impl WriteOp for Prune {
    type Out = Pruned;
    type Plan = PrunePlan;

    fn check(&self, t: &WriteTables<'_>) -> Result<PrunePlan, StoreError> {
        let mut jobs = Vec::new();
        // A job finished before the cutoff was created before it too.
        let range = t.by_created.r()?.range((0, 0)..(self.finished_before_ms, 0))?;
        for entry in range.take(self.limit.saturating_mul(SCAN_PER_JOB)) {
            if jobs.len() >= self.limit {
                break;
            }
            let (_, key) = entry?.0.value();
            let Some(job) = load_job(t.jobs.r()?, key)? else {
                return Err(StoreError::Corrupt {
                    table: "jobs_by_created",
                    key: uuid::Uuid::from_u128(key).to_string(),
                    reason: "names a missing job".into(),
                });
            };
            let old_enough = job.finished_ms.is_some_and(|f| f < self.finished_before_ms);
            if job.state.is_terminal() && old_enough && !outbox::job_has_pending(t, job.id)? {
                jobs.push(job);
            }
        }
        let entries = cache::expired(t, self.cache_before_ms, self.limit)?;
        let mut dropped: Vec<_> = jobs.iter().flat_map(blobs::job_refs).collect();
        dropped.extend(entries.iter().flat_map(|(_, e)| cache::entry_refs(e)));
        if jobs.is_empty() && entries.is_empty() && !cache::claims_expired(t, self.now_ms)? {
            // Nothing due: rejected, so the pruner's tick costs no commit and no fsync.
            return Err(StoreError::Unchanged);
        }
        let refs = blobs::check_refs(t, &dropped, &[], &[])?;
        Ok(PrunePlan { jobs, entries, refs })
    }

    fn write(&self, plan: PrunePlan, t: &mut WriteTables<'_>) -> Result<Pruned, StoreError> {
        for job in &plan.jobs {
            let key = job.id.as_u128();
            t.by_created.w()?.remove((job.created_ms, key))?;
            if let Some(owner) = &job.owner {
                t.by_owner.w()?.remove((owner.as_str(), job.created_ms, key))?;
            }
            t.jobs.w()?.remove(key)?;
            t.events.w()?.retain_in((key, 0)..=(key, u64::MAX), |_, _| false)?;
            t.meta_add(state_count_key(job.state), -1)?;
            super::usage::charge_change(t, Some(job), None)?;
            outbox::remove_job(t, job.id)?;
        }
        for (key, entry) in &plan.entries {
            cache::remove_entry(t, key, entry)?;
        }
        blobs::apply_refs(t, &plan.refs)?;
        let idempotency_keys = cache::prune_claims(t, self.now_ms, self.limit)?;
        Ok(Pruned { jobs: plan.jobs.len(), cache_entries: plan.entries.len(), idempotency_keys })
    }
}
