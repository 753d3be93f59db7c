//! Jobs: the record, its event log, and the queue, running, listing and owner indexes
//! kept in step.

use std::collections::HashSet;
use std::ops::Bound;

use redb::{Database, ReadTransaction, ReadableTable};
use uuid::Uuid;

use super::StoreError;
use super::blobs::{self, Payload, RefPlan};
use super::cache::{self, Claim, ClaimPlan, Fill};
use super::codec;
use super::outbox::{self, NewDeliveries};
use super::tables::{
    JOB_EVENTS, JOBS, JOBS_BY_CREATED, JOBS_BY_OWNER, QUEUE, RUNNING, SCHEMA_VERSION, WriteTables, meta_key,
    state_count_key,
};
use super::writer::{self, WriteOp};
use crate::domain::{Job, JobEvent, JobEventKind, JobId, JobState, QueueKey, now_ms, owner};

/// `Store::insert_job`.
pub(crate) struct InsertJob {
    pub job: Job,
    /// Blobs of the job's inputs (stored unless already there).
    pub blobs: Vec<Payload>,
    pub events: Vec<JobEventKind>,
    /// An idempotency key to claim with the insert.
    pub claim: Option<Claim>,
}

/// `Store::update_job` and `Store::complete_job`.
pub(crate) struct UpdateJob {
    pub job: Job,
    pub blobs: Vec<Payload>,
    pub events: Vec<JobEventKind>,
}

/// `Store::append_events`.
pub(crate) struct AppendEvents {
    pub id: JobId,
    pub events: Vec<JobEventKind>,
}

/// A checked job write: everything encoded, nothing written yet.
pub(crate) struct JobPlan {
    job: Job,
    record: Vec<u8>,
    /// The record being replaced (None on insert).
    old: Option<Job>,
    /// The new value of the sequence counter (insert only).
    seq: Option<u64>,
    refs: RefPlan,
    events: Vec<(u64, Vec<u8>)>,
    /// Webhook deliveries the change makes due.
    deliveries: NewDeliveries,
    /// The cache entry it fills.
    fill: Option<Fill>,
    /// The idempotency key it claims (insert only).
    claim: Option<ClaimPlan>,
}

impl WriteOp for InsertJob {
    type Out = Job;
    type Plan = JobPlan;

    fn check(&self, t: &WriteTables<'_>) -> Result<JobPlan, StoreError> {
        let mut job = self.job.clone();
        if t.jobs.r()?.get(job.id.as_u128())?.is_some() {
            return Err(StoreError::JobExists(job.id));
        }
        let seq = t
            .meta_get(meta_key::JOB_SEQ)?
            .checked_add(1)
            .ok_or_else(|| StoreError::Invalid("job sequence exhausted".to_string()))?;
        job.queue_key.seq = seq;
        check_job(&job)?;
        let claim = match &self.claim {
            Some(c) if c.record.job_id != job.id => {
                return Err(StoreError::Invalid(format!(
                    "idempotency claim for job {} with job {}",
                    c.record.job_id, job.id
                )));
            }
            Some(c) => Some(cache::plan_claim(t, c)?),
            None => None,
        };
        let mut plan = plan_change(t, None, job, &self.blobs, &self.events)?;
        (plan.seq, plan.claim) = (Some(seq), claim);
        Ok(plan)
    }

    fn write(&self, plan: JobPlan, t: &mut WriteTables<'_>) -> Result<Job, StoreError> {
        if let Some(seq) = plan.seq {
            t.meta.w()?.insert(meta_key::JOB_SEQ, seq)?;
        }
        let created = (plan.job.created_ms, plan.job.id.as_u128());
        if t.by_created.w()?.insert(created, ())?.is_some() {
            return Err(corrupt("jobs_by_created", plan.job.id, "new job already listed"));
        }
        if let Some(owner) = &plan.job.owner
            && t.by_owner.w()?.insert((owner.as_str(), created.0, created.1), ())?.is_some()
        {
            return Err(corrupt("jobs_by_owner", plan.job.id, "new job already listed"));
        }
        write_job(t, &plan)?;
        Ok(plan.job)
    }

    fn payload_bytes(&self) -> usize {
        self.blobs.iter().map(Payload::len).sum()
    }
}

impl WriteOp for UpdateJob {
    type Out = ();
    type Plan = JobPlan;

    fn check(&self, t: &WriteTables<'_>) -> Result<JobPlan, StoreError> {
        let job = self.job.clone();
        let old = load_job(t.jobs.r()?, job.id.as_u128())?.ok_or(StoreError::JobNotFound(job.id))?;
        if job.created_ms != old.created_ms {
            return Err(StoreError::Invalid(format!(
                "job {}: created_ms {} differs from the stored {}",
                job.id, job.created_ms, old.created_ms
            )));
        }
        if job.owner != old.owner {
            return Err(StoreError::Invalid(format!("job {}: the owner of a job never changes", job.id)));
        }
        if job.queue_key.seq != old.queue_key.seq {
            return Err(StoreError::Invalid(format!(
                "job {}: queue_key.seq {} differs from the assigned {}",
                job.id, job.queue_key.seq, old.queue_key.seq
            )));
        }
        check_job(&job)?;
        plan_change(t, Some(old), job, &self.blobs, &self.events)
    }

    fn write(&self, plan: JobPlan, t: &mut WriteTables<'_>) -> Result<(), StoreError> {
        write_job(t, &plan)
    }

    fn payload_bytes(&self) -> usize {
        self.blobs.iter().map(Payload::len).sum()
    }
}

impl WriteOp for AppendEvents {
    type Out = ();
    type Plan = (Vec<(u64, Vec<u8>)>, NewDeliveries);

    fn check(&self, t: &WriteTables<'_>) -> Result<Self::Plan, StoreError> {
        let job = load_job(t.jobs.r()?, self.id.as_u128())?.ok_or(StoreError::JobNotFound(self.id))?;
        Ok((encode_events(t, self.id, &self.events)?, outbox::plan(t, &job, &self.events)?))
    }

    fn write(&self, (events, deliveries): Self::Plan, t: &mut WriteTables<'_>) -> Result<(), StoreError> {
        append(t, self.id, events)?;
        outbox::write_new(t, &deliveries)
    }
}

/// Plan writing `job` over `old` (None: an insert): blob references of the job and of the
/// cache entry it fills, the record, its events and the webhook deliveries they make due.
fn plan_change(
    t: &WriteTables<'_>,
    old: Option<Job>,
    job: Job,
    blobs: &[Payload],
    events: &[JobEventKind],
) -> Result<JobPlan, StoreError> {
    let fill = cache::plan_fill(t, old.as_ref(), &job)?;
    let (mut old_refs, mut new_refs) = (old.as_ref().map(blobs::job_refs).unwrap_or_default(), blobs::job_refs(&job));
    if let Some(fill) = &fill {
        let (dropped, added) = fill.refs();
        old_refs.extend(dropped);
        new_refs.extend(added);
    }
    let refs = blobs::check_refs(t, &old_refs, &new_refs, blobs)?;
    let record = codec::encode_at(codec::JOBS_VERSION, "jobs", &job.id, &job)?;
    let events_out = encode_events(t, job.id, events)?;
    let deliveries = outbox::plan(t, &job, events)?;
    Ok(JobPlan { job, record, old, seq: None, refs, events: events_out, deliveries, fill, claim: None })
}

/// Store-level invariants of a record about to be written.
fn check_job(job: &Job) -> Result<(), StoreError> {
    if job.id.is_nil() {
        return Err(StoreError::Invalid("job id is nil".to_string()));
    }
    let mut names = HashSet::with_capacity(job.outputs.len());
    for output in &job.outputs {
        if !names.insert(output.name.as_str()) {
            return Err(StoreError::Invalid(format!("job {}: output name {:?} appears twice", job.id, output.name)));
        }
    }
    let mut input_names = HashSet::with_capacity(job.inputs.len());
    for input in &job.inputs {
        if !input_names.insert(input.name.as_str()) {
            return Err(StoreError::Invalid(format!("job {}: input name {:?} appears twice", job.id, input.name)));
        }
    }
    Ok(())
}

/// Encode events with their per-job sequence numbers, continuing the log.
pub(crate) fn encode_events(
    t: &WriteTables<'_>,
    id: JobId,
    events: &[JobEventKind],
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let key = id.as_u128();
    let last = match t.events.r()?.range((key, 0)..=(key, u64::MAX))?.next_back() {
        Some(entry) => entry?.0.value().1,
        None => 0,
    };
    let at_ms = now_ms();
    let mut out = Vec::with_capacity(events.len());
    for (seq, kind) in (last + 1..).zip(events) {
        let event = JobEvent { at_ms, kind: kind.clone() };
        out.push((seq, codec::encode("job_events", &EventKey(id, seq), &event)?));
    }
    Ok(out)
}

pub(crate) fn append(t: &mut WriteTables<'_>, id: JobId, events: Vec<(u64, Vec<u8>)>) -> Result<(), StoreError> {
    let key = id.as_u128();
    for (seq, bytes) in events {
        if t.events.w()?.insert((key, seq), bytes.as_slice())?.is_some() {
            return Err(corrupt("job_events", EventKey(id, seq), "event sequence number reused"));
        }
    }
    Ok(())
}

/// Write a checked job: record, indexes, per-state counts, blob references, events.
fn write_job(t: &mut WriteTables<'_>, plan: &JobPlan) -> Result<(), StoreError> {
    let job = &plan.job;
    if let Some(old) = &plan.old {
        index_remove(t, old)?;
        t.meta_add(state_count_key(old.state), -1)?;
    }
    index_add(t, job)?;
    t.meta_add(state_count_key(job.state), 1)?;
    blobs::apply_refs(t, &plan.refs)?;
    super::usage::charge_change(t, plan.old.as_ref(), Some(job))?;
    t.jobs.w()?.insert(job.id.as_u128(), plan.record.as_slice())?;
    append(t, job.id, plan.events.clone())?;
    outbox::write_new(t, &plan.deliveries)?;
    if let Some(fill) = &plan.fill {
        cache::write_fill(t, fill)?;
    }
    if let Some(claim) = &plan.claim {
        cache::write_claim(t, claim)?;
    }
    Ok(())
}

fn queue_tuple(key: QueueKey) -> (i64, u64) {
    (key.rank_ms, key.seq)
}

/// Remove the index entries the stored record `old` implies; they must be there.
fn index_remove(t: &mut WriteTables<'_>, old: &Job) -> Result<(), StoreError> {
    let id = old.id.as_u128();
    match old.state {
        JobState::Queued => {
            let found = t.queue.w()?.remove(queue_tuple(old.queue_key))?.map(|g| g.value());
            if found != Some(id) {
                return Err(corrupt(
                    "queue",
                    QueueKeyDisplay(old.queue_key),
                    format!("expected job {}, found {:?}", old.id, found.map(Uuid::from_u128)),
                ));
            }
        }
        JobState::Running => {
            if t.running.w()?.remove(id)?.is_none() {
                return Err(corrupt("running", old.id, "running job missing from the index"));
            }
        }
        JobState::Succeeded | JobState::Failed | JobState::Canceled => {}
    }
    Ok(())
}

/// Add the index entries `job` implies; the slots must be free.
fn index_add(t: &mut WriteTables<'_>, job: &Job) -> Result<(), StoreError> {
    let id = job.id.as_u128();
    match job.state {
        JobState::Queued => {
            if let Some(prev) = t.queue.w()?.insert(queue_tuple(job.queue_key), id)?.map(|g| g.value()) {
                return Err(corrupt(
                    "queue",
                    QueueKeyDisplay(job.queue_key),
                    format!("slot already held by job {}", Uuid::from_u128(prev)),
                ));
            }
        }
        JobState::Running => {
            if t.running.w()?.insert(id, ())?.is_some() {
                return Err(corrupt("running", job.id, "job already in the running index"));
            }
        }
        JobState::Succeeded | JobState::Failed | JobState::Canceled => {}
    }
    Ok(())
}

/// Read and decode a job; the record must name the id it is stored under.
pub(crate) fn load_job(jobs: &impl ReadableTable<u128, &'static [u8]>, key: u128) -> Result<Option<Job>, StoreError> {
    let id = Uuid::from_u128(key);
    let Some(guard) = jobs.get(key)? else {
        return Ok(None);
    };
    let job = decode_job("jobs", &id, guard.value())?;
    if job.id != id {
        return Err(corrupt("jobs", id, format!("record is for job {}", job.id)));
    }
    Ok(Some(job))
}

/// Decode a job record (or a job snapshot of `table`) of any format version: fields
/// appended since its version read as zero values, and an owner written before owner ids
/// were namespaced (up to version 5: a JWT's raw `sub`) is mapped to its owner id.
pub(crate) fn decode_job(table: &'static str, key: &dyn std::fmt::Display, bytes: &[u8]) -> Result<Job, StoreError> {
    let mut job: Job = codec::decode_upgraded_to(codec::JOBS_VERSION, codec::JOBS_FIELDS_VERSION, table, key, bytes)?;
    if bytes.first().is_some_and(|&v| v < codec::JOBS_OWNER_NAMESPACED) {
        job.owner = job.owner.as_deref().map(owner::from_legacy);
    }
    Ok(job)
}

/// The queue index in dispatch order.
pub(crate) fn queued_ids(txn: &ReadTransaction) -> Result<Vec<(QueueKey, JobId)>, StoreError> {
    let queue = txn.open_table(QUEUE)?;
    let mut out = Vec::new();
    for entry in queue.range::<(i64, u64)>(..)? {
        let (k, v) = entry?;
        let (rank_ms, seq) = k.value();
        out.push((QueueKey { rank_ms, seq }, Uuid::from_u128(v.value())));
    }
    Ok(out)
}

/// What the scheduler's memory queue needs of a queued job (see [`queued_heads`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedHead {
    /// The job.
    pub id: JobId,
    /// Its workflow (for routing affinity).
    pub workflow_id: String,
    /// Its priority (for the queue depth by priority).
    pub priority: i32,
    /// Its place in the queue.
    pub queue_key: QueueKey,
}

/// The leading fields of a job record, in `Job`'s field order, borrowed from the record:
/// everything up to `state` (the prompt and inputs are skipped over, not copied).
#[derive(serde::Deserialize)]
struct JobPrefix<'a> {
    id: JobId,
    workflow_id: &'a str,
    _workflow_version: u32,
    _inputs_json: &'a str,
    _prompt_json: &'a str,
    priority: i32,
    queue_key: QueueKey,
    state: JobState,
}

/// The queued jobs in dispatch order, each checked against its index entry, decoding only
/// the head of each record: recovery of a queue of 100,000 jobs neither decodes nor holds
/// their prompts.
pub(crate) fn queued_heads(txn: &ReadTransaction) -> Result<Vec<QueuedHead>, StoreError> {
    let jobs = txn.open_table(JOBS)?;
    let mut out = Vec::new();
    for (key, id) in queued_ids(txn)? {
        let guard = jobs
            .get(id.as_u128())?
            .ok_or_else(|| corrupt("queue", QueueKeyDisplay(key), format!("names missing job {id}")))?;
        let (head, state) = head_of(guard.value(), &id)?;
        if head.id != id {
            return Err(corrupt("jobs", id, format!("record is for job {}", head.id)));
        }
        check_queued(key, id, state, head.queue_key)?;
        out.push(head);
    }
    Ok(out)
}

/// A record listed in the queue at `key` must be a queued job at `key`.
fn check_queued(key: QueueKey, id: JobId, state: JobState, at: QueueKey) -> Result<(), StoreError> {
    if state == JobState::Queued && at == key {
        return Ok(());
    }
    let reason =
        format!("in the queue at {} but record is {} at {}", QueueKeyDisplay(key), state.as_str(), QueueKeyDisplay(at));
    Err(corrupt("jobs", id, reason))
}

/// The head of the job record `bytes` (stored under `key`; any format version), and the
/// job's state.
pub(crate) fn head_of(bytes: &[u8], key: &dyn std::fmt::Display) -> Result<(QueuedHead, JobState), StoreError> {
    let p: JobPrefix<'_> = codec::decode_prefix(codec::JOBS_VERSION, "jobs", key, bytes)?;
    let head =
        QueuedHead { id: p.id, workflow_id: p.workflow_id.to_string(), priority: p.priority, queue_key: p.queue_key };
    Ok((head, p.state))
}

/// A job record's fields up to `owner`, in `Job`'s field order, borrowed from the record:
/// the prompt, inputs and metadata are skipped over, not copied; an unfinished job's error
/// and outputs are empty.
#[derive(serde::Deserialize)]
struct OwnerPrefix<'a> {
    id: JobId,
    _workflow_id: &'a str,
    _workflow_version: u32,
    _inputs_json: &'a str,
    _prompt_json: &'a str,
    _priority: i32,
    queue_key: QueueKey,
    state: JobState,
    _n_attempts: u32,
    #[serde(borrow)]
    _backend: Option<&'a str>,
    #[serde(borrow)]
    _client_id: Option<&'a str>,
    _error: Option<crate::domain::JobError>,
    _outputs: Vec<crate::domain::OutputRef>,
    _seed: Option<i64>,
    #[serde(borrow)]
    _metadata_json: Option<&'a str>,
    #[serde(borrow)]
    _callback_url: Option<&'a str>,
    _cached: bool,
    _created_ms: u64,
    _started_ms: Option<u64>,
    _finished_ms: Option<u64>,
    _updated_ms: u64,
    _inputs: Vec<crate::domain::InputRef>,
    #[serde(borrow)]
    owner: Option<&'a str>,
}

/// The first `jobs` format version with an `owner` field (module doc of `codec`).
const JOBS_OWNER_VERSION: u8 = 3;

/// A record's id, queue key, state and owner (mapped as [`decode_job`] maps it), read from
/// its head: a record older than owners has none.
fn owner_of(
    bytes: &[u8],
    key: &dyn std::fmt::Display,
) -> Result<(JobId, QueueKey, JobState, Option<String>), StoreError> {
    let version = bytes.first().copied().unwrap_or_default();
    if version < JOBS_OWNER_VERSION {
        let p: JobPrefix<'_> = codec::decode_prefix(codec::JOBS_VERSION, "jobs", key, bytes)?;
        return Ok((p.id, p.queue_key, p.state, None));
    }
    let p: OwnerPrefix<'_> = codec::decode_prefix(codec::JOBS_VERSION, "jobs", key, bytes)?;
    let owner = match version < codec::JOBS_OWNER_NAMESPACED {
        true => p.owner.map(owner::from_legacy),
        false => p.owner.map(str::to_string),
    };
    Ok((p.id, p.queue_key, p.state, owner))
}

/// The unfinished jobs (queued, then running) with their owners, each checked against its
/// index entry, decoding only the records' heads up to the owner (see [`OwnerPrefix`]).
pub(crate) fn unfinished_owners(txn: &ReadTransaction) -> Result<Vec<(JobId, Option<String>)>, StoreError> {
    let jobs = txn.open_table(JOBS)?;
    let mut out = Vec::new();
    for (key, id) in queued_ids(txn)? {
        let guard = jobs
            .get(id.as_u128())?
            .ok_or_else(|| corrupt("queue", QueueKeyDisplay(key), format!("names missing job {id}")))?;
        let (found, at, state, owner) = owner_of(guard.value(), &id)?;
        if found != id {
            return Err(corrupt("jobs", id, format!("record is for job {found}")));
        }
        check_queued(key, id, state, at)?;
        out.push((id, owner));
    }
    let running = txn.open_table(RUNNING)?;
    for entry in running.range::<u128>(..)? {
        let key = entry?.0.value();
        let id = Uuid::from_u128(key);
        let guard = jobs.get(key)?.ok_or_else(|| corrupt("running", id, "names a missing job"))?;
        let (found, _, state, owner) = owner_of(guard.value(), &id)?;
        if found != id {
            return Err(corrupt("jobs", id, format!("record is for job {found}")));
        }
        if state != JobState::Running {
            return Err(corrupt("jobs", id, format!("in the running index but record is {}", state.as_str())));
        }
        out.push((id, owner));
    }
    Ok(out)
}

/// Queued jobs in dispatch order, each checked against its index entry.
pub(crate) fn queued_jobs(txn: &ReadTransaction) -> Result<Vec<Job>, StoreError> {
    let jobs = txn.open_table(JOBS)?;
    let mut out = Vec::new();
    for (key, id) in queued_ids(txn)? {
        let job = load_job(&jobs, id.as_u128())?
            .ok_or_else(|| corrupt("queue", QueueKeyDisplay(key), format!("names missing job {id}")))?;
        check_queued(key, id, job.state, job.queue_key)?;
        out.push(job);
    }
    Ok(out)
}

/// Running jobs by id, each checked against its index entry.
pub(crate) fn running_jobs(txn: &ReadTransaction) -> Result<Vec<Job>, StoreError> {
    let jobs = txn.open_table(JOBS)?;
    let running = txn.open_table(RUNNING)?;
    let mut out = Vec::new();
    for entry in running.range::<u128>(..)? {
        let key = entry?.0.value();
        let id = Uuid::from_u128(key);
        let job = load_job(&jobs, key)?.ok_or_else(|| corrupt("running", id, "names a missing job"))?;
        if job.state != JobState::Running {
            return Err(corrupt("jobs", id, format!("in the running index but record is {}", job.state.as_str())));
        }
        out.push(job);
    }
    Ok(out)
}

/// Jobs newest first (by `created_ms`, then id), strictly after `cursor`, that `keep`
/// accepts, up to `limit`.
pub(crate) fn list_jobs(
    txn: &ReadTransaction,
    cursor: Option<(u64, JobId)>,
    limit: usize,
    keep: &dyn Fn(&Job) -> bool,
) -> Result<Vec<Job>, StoreError> {
    let jobs = txn.open_table(JOBS)?;
    let index = txn.open_table(JOBS_BY_CREATED)?;
    let range = match cursor {
        Some((created_ms, id)) => index.range(..(created_ms, id.as_u128()))?,
        None => index.range::<(u64, u128)>(..)?,
    };
    let mut out = Vec::new();
    for entry in range.rev() {
        if out.len() >= limit {
            break;
        }
        let (created_ms, key) = entry?.0.value();
        let id = Uuid::from_u128(key);
        let job = load_job(&jobs, key)?.ok_or_else(|| corrupt("jobs_by_created", id, "names a missing job"))?;
        if job.created_ms != created_ms {
            return Err(corrupt("jobs", id, format!("listed at {created_ms}, created at {}", job.created_ms)));
        }
        if keep(&job) {
            out.push(job);
        }
    }
    Ok(out)
}

/// What a listing asks of the store (`GET /jobs`): newest first, inside index bounds.
#[derive(Debug, Clone)]
pub struct JobQuery<'a> {
    /// Only this owner's jobs, walked in `jobs_by_owner`; None: every job (`jobs_by_created`).
    pub owner: Option<&'a str>,
    /// Only jobs in one of these states.
    pub statuses: Option<&'a [JobState]>,
    /// Only jobs of this workflow.
    pub workflow_id: Option<&'a str>,
    /// Only jobs created strictly after this time (ms): the low bound of the index range.
    pub after_ms: Option<u64>,
    /// Only jobs strictly before this `(created_ms, id)` position (the last job of the
    /// previous page, or `(before_ms, nil)`): the high bound of the index range.
    pub before: Option<(u64, JobId)>,
    /// Matching jobs wanted at most.
    pub limit: usize,
    /// Index entries examined at most (filters that match little cost this, not O(jobs)).
    pub scan_max: usize,
    /// Bytes of matching records gathered at most (at least one record is returned).
    pub bytes_max: usize,
}

/// A page of jobs (see [`JobQuery`]).
#[derive(Debug, Default)]
pub struct JobPage {
    /// The matching jobs, newest first.
    pub jobs: Vec<Job>,
    /// Set when the page stopped before `limit` matches for `scan_max` or `bytes_max`: the
    /// position of the last entry it covered, to continue strictly after (older than).
    pub resume: Option<(u64, JobId)>,
}

/// The leading fields of a job record the listing filters on (see [`JobPrefix`]).
#[derive(serde::Deserialize)]
struct ListHead<'a> {
    id: JobId,
    workflow_id: &'a str,
    _workflow_version: u32,
    _inputs_json: &'a str,
    _prompt_json: &'a str,
    _priority: i32,
    _queue_key: QueueKey,
    state: JobState,
}

/// Walks an index newest first, gathering the jobs that match (see [`list_page`]).
struct PageScan<'q> {
    query: &'q JobQuery<'q>,
    index: &'static str,
    page: JobPage,
    examined: usize,
    bytes: usize,
}

impl PageScan<'_> {
    /// Look at the entry `(created_ms, key)`; false once the page is complete.
    fn step(
        &mut self,
        jobs: &impl ReadableTable<u128, &'static [u8]>,
        created_ms: u64,
        key: u128,
    ) -> Result<bool, StoreError> {
        let q = self.query;
        let id = Uuid::from_u128(key);
        self.examined += 1;
        let guard = jobs.get(key)?.ok_or_else(|| corrupt(self.index, id, "names a missing job"))?;
        let bytes = guard.value();
        let head: ListHead<'_> = codec::decode_prefix(codec::JOBS_VERSION, "jobs", &id, bytes)?;
        if head.id != id {
            return Err(corrupt("jobs", id, format!("record is for job {}", head.id)));
        }
        let wanted =
            q.statuses.is_none_or(|s| s.contains(&head.state)) && q.workflow_id.is_none_or(|w| w == head.workflow_id);
        if wanted {
            if let Some(last) = self.page.jobs.last()
                && self.bytes.saturating_add(bytes.len()) > q.bytes_max
            {
                self.page.resume = Some((last.created_ms, last.id));
                return Ok(false);
            }
            let job = decode_job("jobs", &id, bytes)?;
            if job.created_ms != created_ms {
                return Err(corrupt("jobs", id, format!("listed at {created_ms}, created at {}", job.created_ms)));
            }
            if q.owner.is_some() && job.owner.as_deref() != q.owner {
                return Err(corrupt("jobs", id, format!("listed for owner {:?}, owned by {:?}", q.owner, job.owner)));
            }
            self.bytes = self.bytes.saturating_add(bytes.len());
            self.page.jobs.push(job);
            if self.page.jobs.len() >= q.limit {
                return Ok(false);
            }
        }
        if self.examined >= q.scan_max {
            self.page.resume = Some((created_ms, id));
            return Ok(false);
        }
        Ok(true)
    }
}

/// A page of jobs newest first: a range of `jobs_by_owner` (with `owner`) or of
/// `jobs_by_created` between `after_ms` and `before`, examining at most `scan_max` entries
/// and decoding in full only the records that match (the others only up to their state).
/// O(`scan_max`) whatever the size of the store.
pub(crate) fn list_page(txn: &ReadTransaction, q: &JobQuery<'_>) -> Result<JobPage, StoreError> {
    let jobs = txn.open_table(JOBS)?;
    let Some(low_ms) = q.after_ms.map_or(Some(0), |a| a.checked_add(1)) else {
        return Ok(JobPage::default());
    };
    let high = q.before.map(|(ms, id)| (ms, id.as_u128()));
    if q.limit == 0 || q.scan_max == 0 || high.is_some_and(|h| h <= (low_ms, 0)) {
        return Ok(JobPage::default());
    }
    let index = if q.owner.is_some() { "jobs_by_owner" } else { "jobs_by_created" };
    let mut scan = PageScan { query: q, index, page: JobPage::default(), examined: 0, bytes: 0 };
    match q.owner {
        Some(owner) => {
            let table = txn.open_table(JOBS_BY_OWNER)?;
            let high = match high {
                Some((ms, key)) => Bound::Excluded((owner, ms, key)),
                None => Bound::Included((owner, u64::MAX, u128::MAX)),
            };
            for entry in table.range((Bound::Included((owner, low_ms, 0u128)), high))?.rev() {
                let (_, created_ms, key) = entry?.0.value();
                if !scan.step(&jobs, created_ms, key)? {
                    break;
                }
            }
        }
        None => {
            let table = txn.open_table(JOBS_BY_CREATED)?;
            let high = match high {
                Some(h) => Bound::Excluded(h),
                None => Bound::Included((u64::MAX, u128::MAX)),
            };
            for entry in table.range((Bound::Included((low_ms, 0u128)), high))?.rev() {
                let (created_ms, key) = entry?.0.value();
                if !scan.step(&jobs, created_ms, key)? {
                    break;
                }
            }
        }
    }
    Ok(scan.page)
}

/// Records read per transaction when migrating a schema-1 file (a few under test, so
/// the tests cross batch boundaries).
const MIGRATE_BATCH: usize = if cfg!(test) { 7 } else { 2_000 };

/// Bring a schema-1 file to [`SCHEMA_VERSION`] 2, before the writer starts: build
/// `jobs_by_owner` from `jobs` in transactions of [`MIGRATE_BATCH`] records (memory
/// bounded by a batch; rerun from the start after a crash, the inserts are idempotent),
/// then, in one transaction with the new schema version, rename the idempotency keys of
/// JWT owners to their namespaced owner id (`"<sub>\n<key>"` -> `"jwt:<sub>\n<key>"`;
/// few: records live only for their TTL).
pub(crate) fn migrate_owners(db: &Database) -> Result<(), StoreError> {
    let mut after: Option<u128> = None;
    loop {
        let txn = writer::begin(db)?;
        let done = {
            let mut t = WriteTables::open(&txn);
            let mut batch = Vec::with_capacity(MIGRATE_BATCH);
            let low = after.map_or(Bound::Unbounded, Bound::Excluded);
            for entry in t.jobs.r()?.range::<u128>((low, Bound::Unbounded))?.take(MIGRATE_BATCH) {
                let (k, v) = entry?;
                let key = k.value();
                let job = decode_job("jobs", &Uuid::from_u128(key), v.value())?;
                batch.push((key, job.created_ms, job.owner));
            }
            for (key, created_ms, owner) in &batch {
                if let Some(owner) = owner {
                    t.by_owner.w()?.insert((owner.as_str(), *created_ms, *key), ())?;
                }
            }
            after = batch.last().map(|b| b.0);
            batch.len() < MIGRATE_BATCH
        };
        txn.commit()?;
        if done {
            break;
        }
    }
    let txn = writer::begin(db)?;
    {
        let mut t = WriteTables::open(&txn);
        let mut renames = Vec::new();
        for entry in t.idempotency_by_expiry.r()?.range::<(u64, &str)>(..)? {
            let (k, _) = entry?;
            let (expires_ms, scoped) = k.value();
            if let Some((who, key)) = scoped.split_once('\n')
                && !who.is_empty()
                && !owner::is_key(who)
            {
                renames.push((expires_ms, scoped.to_string(), format!("{}\n{key}", owner::jwt(who))));
            }
        }
        for (expires_ms, old, new) in &renames {
            t.idempotency_by_expiry.w()?.remove((*expires_ms, old.as_str()))?;
            t.idempotency_by_expiry.w()?.insert((*expires_ms, new.as_str()), ())?;
            let record = t.idempotency.w()?.remove(old.as_str())?.map(|g| g.value().to_vec());
            let record = record.ok_or_else(|| corrupt("idempotency_by_expiry", old, "names a missing record"))?;
            t.idempotency.w()?.insert(new.as_str(), record.as_slice())?;
        }
        t.meta.w()?.insert(meta_key::SCHEMA_VERSION, SCHEMA_VERSION)?;
    }
    txn.commit()?;
    Ok(())
}

/// A page of a job's event log.
pub(crate) fn job_events(
    txn: &ReadTransaction,
    id: JobId,
    after_seq: Option<u64>,
    limit: usize,
) -> Result<Vec<(u64, JobEvent)>, StoreError> {
    let Some(first) = after_seq.unwrap_or(0).checked_add(1) else {
        return Ok(Vec::new());
    };
    let key = id.as_u128();
    let events = txn.open_table(JOB_EVENTS)?;
    let mut out = Vec::new();
    for entry in events.range((key, first)..=(key, u64::MAX))?.take(limit) {
        let (k, v) = entry?;
        let seq = k.value().1;
        out.push((seq, codec::decode("job_events", &EventKey(id, seq), v.value())?));
    }
    Ok(out)
}

fn corrupt(table: &'static str, key: impl std::fmt::Display, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table, key: key.to_string(), reason: reason.into() }
}

/// Prints an event key as `job-id/seq`.
struct EventKey(JobId, u64);

impl std::fmt::Display for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

/// Prints a queue key as `rank_ms/seq`.
struct QueueKeyDisplay(QueueKey);

impl std::fmt::Display for QueueKeyDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0.rank_ms, self.0.seq)
    }
}
