//! A full scan that checks every cross-table invariant of the store (for tests, the
//! `init`/recovery path and operators): indexes against job states, counters against
//! counts, blob references against job outputs, inputs and cache entries, chunks against
//! blob records, the webhook outbox against its indexes and jobs.

use std::collections::{HashMap, HashSet};

use redb::{ReadTransaction, ReadableTableMetadata};
use uuid::Uuid;

use super::blobs;
use super::codec;
use super::tables::{
    BLOB_CHUNKS, BLOB_DELETES, BLOBS, JOB_EVENTS, JOBS, JOBS_BY_CREATED, JOBS_BY_OWNER, META, WORKFLOW_VERSIONS,
    meta_key, state_count_key,
};
use super::{StoreError, workflows};
use crate::domain::{Hash, Job, JobEvent, JobState, hash_hex};

fn corrupt(table: &'static str, key: impl std::fmt::Display, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table, key: key.to_string(), reason: reason.into() }
}

/// Check everything; the first violation found is returned as `Corrupt`.
pub(crate) fn verify(txn: &ReadTransaction) -> Result<(), StoreError> {
    let meta = txn.open_table(META)?;
    let meta_get =
        |key: &'static str| -> Result<u64, StoreError> { Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0)) };

    // Jobs: decode each, count states, gather references and sequence numbers.
    let jobs = txn.open_table(JOBS)?;
    let mut n_by_state: HashMap<JobState, u64> = HashMap::new();
    let mut refs: HashMap<Hash, u64> = HashMap::new();
    let mut seqs = HashSet::new();
    let seq_max = meta_get(meta_key::JOB_SEQ)?;
    let mut n_queued = 0u64;
    let mut n_running = 0u64;
    // Owner index: every owned job listed under its owner and creation time, and nothing
    // else (the count matches).
    let by_owner = txn.open_table(JOBS_BY_OWNER)?;
    let mut n_owned = 0u64;
    for entry in jobs.range::<u128>(..)? {
        let (k, v) = entry?;
        let id = Uuid::from_u128(k.value());
        let job: Job = super::jobs::decode_job("jobs", &id, v.value())?;
        if job.id != id {
            return Err(corrupt("jobs", id, format!("record is for job {}", job.id)));
        }
        if let Some(owner) = &job.owner {
            n_owned += 1;
            if by_owner.get((owner.as_str(), job.created_ms, k.value()))?.is_none() {
                return Err(corrupt("jobs_by_owner", id, format!("job of {owner:?} not listed for it")));
            }
        }
        if job.queue_key.seq == 0 || job.queue_key.seq > seq_max || !seqs.insert(job.queue_key.seq) {
            return Err(corrupt("jobs", id, format!("bad or reused seq {}", job.queue_key.seq)));
        }
        *n_by_state.entry(job.state).or_default() += 1;
        for r in blobs::job_refs(&job) {
            *refs.entry(r.hash).or_default() += 1;
        }
        match job.state {
            JobState::Queued => n_queued += 1,
            JobState::Running => n_running += 1,
            JobState::Succeeded | JobState::Failed | JobState::Canceled => {}
        }
    }
    let n_by_owner = by_owner.len()?;
    if n_by_owner != n_owned {
        return Err(corrupt("jobs_by_owner", "*", format!("{n_by_owner} entries for {n_owned} owned jobs")));
    }
    // Cache entries hold references of their own.
    let entries = super::cache::all(txn)?;
    for (_, entry) in &entries {
        for r in super::cache::entry_refs(entry) {
            *refs.entry(r.hash).or_default() += 1;
        }
    }
    let recorded = meta_get(meta_key::CACHE_ENTRIES)?;
    if recorded != entries.len() as u64 {
        return Err(corrupt("meta", meta_key::CACHE_ENTRIES, format!("says {recorded}, {} entries", entries.len())));
    }
    super::outbox::verify(txn)?;
    super::usage::verify(txn)?;
    for state in [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Canceled] {
        let counted = n_by_state.get(&state).copied().unwrap_or(0);
        let recorded = meta_get(state_count_key(state))?;
        if counted != recorded {
            return Err(corrupt("meta", state_count_key(state), format!("says {recorded}, {counted} jobs")));
        }
    }

    // Indexes: every entry names a job in that state (checked by the readers), and their
    // sizes equal the state counts, so membership is exact both ways.
    let n_queue = super::jobs::queued_jobs(txn)?.len() as u64;
    if n_queue != n_queued {
        return Err(corrupt("queue", "*", format!("{n_queue} entries for {n_queued} queued jobs")));
    }
    let n_run = super::jobs::running_jobs(txn)?.len() as u64;
    if n_run != n_running {
        return Err(corrupt("running", "*", format!("{n_run} entries for {n_running} running jobs")));
    }

    // Listing index: one entry per job, at its creation time.
    let by_created = txn.open_table(JOBS_BY_CREATED)?;
    let n_listed = by_created.len()?;
    let n_jobs = jobs.len()?;
    if n_listed != n_jobs {
        return Err(corrupt("jobs_by_created", "*", format!("{n_listed} entries for {n_jobs} jobs")));
    }
    let listed = super::jobs::list_jobs(txn, None, usize::MAX, &|_| true)?;
    if listed.len() as u64 != n_jobs {
        return Err(corrupt("jobs_by_created", "*", "entries do not cover every job"));
    }

    // Events: every entry decodes and belongs to an existing job.
    let events = txn.open_table(JOB_EVENTS)?;
    for entry in events.range::<(u128, u64)>(..)? {
        let (k, v) = entry?;
        let (job, seq) = k.value();
        let key = format!("{}/{seq}", Uuid::from_u128(job));
        let _: JobEvent = codec::decode("job_events", &key, v.value())?;
        if seq == 0 || jobs.get(job)?.is_none() {
            return Err(corrupt("job_events", key, "seq 0 or no such job"));
        }
    }

    // Blobs: references equal outputs, chunks are all there, totals match.
    let blob_table = txn.open_table(BLOBS)?;
    let chunks = txn.open_table(BLOB_CHUNKS)?;
    let (mut n_blobs, mut bytes, mut stored, mut n_chunks_total) = (0u64, 0u64, 0u64, 0u64);
    for entry in blob_table.range::<[u8; 32]>(..)? {
        let hash = entry?.0.value();
        let Some(meta) = blobs::meta(txn, &hash)? else {
            return Err(corrupt("blobs", hash_hex(&hash), "vanished during the scan"));
        };
        let expected = refs.remove(&hash).unwrap_or(0);
        if meta.n_refs != expected || meta.n_refs == 0 {
            return Err(corrupt(
                "blobs",
                hash_hex(&hash),
                format!("{} refs, outputs, inputs and cache entries name it {expected} times", meta.n_refs),
            ));
        }
        for i in 0..meta.n_chunks {
            if chunks.get((hash, i))?.is_none() {
                return Err(corrupt("blob_chunks", format!("{}/{i}", hash_hex(&hash)), "missing chunk"));
            }
        }
        n_blobs += 1;
        bytes += meta.size_bytes;
        stored += meta.stored_bytes;
        n_chunks_total += u64::from(meta.n_chunks);
    }
    if let Some(hash) = refs.keys().next() {
        return Err(corrupt("blobs", hash_hex(hash), "named by an output or input but not stored"));
    }
    // Objects waiting for deletion: none is the hash of a stored blob (the commit that
    // re-creates a row clears its entry).
    let deletes = txn.open_table(BLOB_DELETES)?;
    for entry in deletes.range::<[u8; 32]>(..)? {
        let hash = entry?.0.value();
        if blob_table.get(hash)?.is_some() {
            return Err(corrupt("blob_deletes", hash_hex(&hash), "pending deletion of a stored blob"));
        }
    }
    let n_chunk_entries = chunks.len()?;
    if n_chunk_entries != n_chunks_total {
        return Err(corrupt("blob_chunks", "*", format!("{n_chunk_entries} chunks, records name {n_chunks_total}")));
    }
    for (key, actual) in
        [(meta_key::BLOBS_COUNT, n_blobs), (meta_key::BLOBS_BYTES, bytes), (meta_key::BLOBS_STORED_BYTES, stored)]
    {
        let recorded = meta_get(key)?;
        if recorded != actual {
            return Err(corrupt("meta", key, format!("says {recorded}, actual {actual}")));
        }
    }

    // Workflows: every current version is also in the version table.
    let current = workflows::list(txn)?;
    let versions = txn.open_table(WORKFLOW_VERSIONS)?;
    for rec in current {
        if versions.get((rec.id.as_str(), rec.version))?.is_none() {
            return Err(corrupt("workflow_versions", format!("{}@{}", rec.id, rec.version), "current version missing"));
        }
    }
    let plugins = txn.open_table(super::tables::PLUGINS)?;
    for entry in versions.range::<(&str, u32)>(..)? {
        let (key, _) = entry?;
        let (id, version) = key.value();
        let rec = workflows::get_version(txn, id, version)?
            .ok_or_else(|| corrupt("workflow_versions", format!("{id}@{version}"), "vanished during the scan"))?;
        if let Some(p) = &rec.plugin
            && plugins.get(p.hash)?.is_none()
        {
            return Err(corrupt(
                "plugins",
                hash_hex(&p.hash),
                format!("named by workflow {id}@{version} but not stored"),
            ));
        }
    }
    Ok(())
}
