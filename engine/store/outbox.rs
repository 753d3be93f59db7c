//! The webhook outbox: deliveries are created in the transaction that commits the job
//! change they report (see `jobs`), so a crash between finishing a job and calling its
//! webhook loses nothing; each attempt is recorded, with its job-log entry, in one commit.
//!
//! A stored delivery keeps its job snapshot as a `jobs`-format record (versioned with
//! `codec::JOBS_VERSION`), so the snapshot upgrades exactly like the job table does.

use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::StoreError;
use super::codec;
use super::jobs;
use super::tables::{DELIVERIES, DELIVERIES_BY_JOB, DELIVERIES_DUE, DISABLED_ENDPOINTS, WriteTables, meta_key};
use super::writer::WriteOp;
use crate::domain::{Attempt, AttemptNext, Delivery, DeliveryState, Job, JobEventKind, JobId, WebhookEvent, now_ms};

/// A delivery as stored: the domain record with its job snapshot as a versioned job record.
#[derive(Serialize, Deserialize)]
struct DeliveryRecord {
    id: String,
    job_id: JobId,
    event: WebhookEvent,
    url: String,
    created_ms: u64,
    state: DeliveryState,
    n_attempts: u32,
    next_attempt_ms: u64,
    last_attempt_ms: Option<u64>,
    last_status: Option<u16>,
    last_error: Option<String>,
    /// `codec::encode_at(JOBS_VERSION, ..)` of the snapshot.
    job: Vec<u8>,
}

/// Encode a delivery as its `deliveries` record.
pub(super) fn encode(d: &Delivery) -> Result<Vec<u8>, StoreError> {
    let rec = DeliveryRecord {
        id: d.id.clone(),
        job_id: d.job_id,
        event: d.event.clone(),
        url: d.url.clone(),
        created_ms: d.created_ms,
        state: d.state,
        n_attempts: d.n_attempts,
        next_attempt_ms: d.next_attempt_ms,
        last_attempt_ms: d.last_attempt_ms,
        last_status: d.last_status,
        last_error: d.last_error.clone(),
        job: codec::encode_at(codec::JOBS_VERSION, "deliveries", &d.seq, &d.job)?,
    };
    codec::encode("deliveries", &d.seq, &rec)
}

/// Decode the `deliveries` record under `seq`, its job snapshot upgraded to the latest version.
pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<Delivery, StoreError> {
    let rec: DeliveryRecord = codec::decode("deliveries", &seq, bytes)?;
    let job: Job = super::jobs::decode_job("deliveries", &seq, &rec.job)?;
    if job.id != rec.job_id {
        return Err(corrupt(seq, format!("snapshot of job {} in a delivery for job {}", job.id, rec.job_id)));
    }
    Ok(Delivery {
        seq,
        id: rec.id,
        job_id: rec.job_id,
        event: rec.event,
        url: rec.url,
        job,
        created_ms: rec.created_ms,
        state: rec.state,
        n_attempts: rec.n_attempts,
        next_attempt_ms: rec.next_attempt_ms,
        last_attempt_ms: rec.last_attempt_ms,
        last_status: rec.last_status,
        last_error: rec.last_error,
    })
}

fn corrupt(seq: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table: "deliveries", key: seq.to_string(), reason: reason.into() }
}

/// Read one delivery.
pub(crate) fn load(table: &impl ReadableTable<u64, &'static [u8]>, seq: u64) -> Result<Option<Delivery>, StoreError> {
    match table.get(seq)? {
        Some(g) => Ok(Some(decode(seq, g.value())?)),
        None => Ok(None),
    }
}

/// New deliveries, checked and encoded, waiting to be written with their job change.
#[derive(Default)]
pub(crate) struct NewDeliveries {
    items: Vec<(Delivery, Vec<u8>)>,
}

/// The deliveries that appending `events` to `job` (as it is after them) makes due, with
/// sequence numbers continuing `meta["delivery_seq"]`.
pub(crate) fn plan(t: &WriteTables<'_>, job: &Job, events: &[JobEventKind]) -> Result<NewDeliveries, StoreError> {
    let due = WebhookEvent::due(job, events);
    let Some(url) = job.callback_url.as_ref().filter(|_| !due.is_empty()) else {
        return Ok(NewDeliveries::default());
    };
    let now = now_ms();
    let first = t.meta_get(meta_key::DELIVERY_SEQ)? + 1;
    let mut items = Vec::with_capacity(due.len());
    for (seq, event) in (first..).zip(due) {
        let d = Delivery {
            seq,
            id: format!("msg_{}", Uuid::new_v4().simple()),
            job_id: job.id,
            event,
            url: url.clone(),
            job: job.clone(),
            created_ms: now,
            state: DeliveryState::Pending,
            n_attempts: 0,
            next_attempt_ms: now,
            last_attempt_ms: None,
            last_status: None,
            last_error: None,
        };
        let bytes = encode(&d)?;
        items.push((d, bytes));
    }
    Ok(NewDeliveries { items })
}

/// Write planned deliveries: records, indexes, counters.
pub(crate) fn write_new(t: &mut WriteTables<'_>, new: &NewDeliveries) -> Result<(), StoreError> {
    let Some((last, _)) = new.items.last() else { return Ok(()) };
    t.meta.w()?.insert(meta_key::DELIVERY_SEQ, last.seq)?;
    for (d, bytes) in &new.items {
        if t.deliveries.w()?.insert(d.seq, bytes.as_slice())?.is_some() {
            return Err(corrupt(d.seq, "delivery sequence number reused"));
        }
        t.deliveries_due.w()?.insert((d.next_attempt_ms, d.seq), ())?;
        t.deliveries_by_job.w()?.insert((d.job_id.as_u128(), d.seq), ())?;
    }
    t.meta_add(meta_key::DELIVERIES_PENDING, new.items.len() as i64)?;
    t.outbox_changed = true;
    Ok(())
}

/// Replace a stored delivery, keeping the due index and the pending count in step.
fn rewrite(t: &mut WriteTables<'_>, old: &Delivery, new: &Delivery, bytes: &[u8]) -> Result<(), StoreError> {
    if old.state == DeliveryState::Pending && t.deliveries_due.w()?.remove((old.next_attempt_ms, old.seq))?.is_none() {
        return Err(corrupt(old.seq, "pending delivery missing from the due index"));
    }
    if new.state == DeliveryState::Pending {
        t.deliveries_due.w()?.insert((new.next_attempt_ms, new.seq), ())?;
    }
    let delta = i64::from(new.state == DeliveryState::Pending) - i64::from(old.state == DeliveryState::Pending);
    if delta != 0 {
        t.meta_add(meta_key::DELIVERIES_PENDING, delta)?;
    }
    t.deliveries.w()?.insert(new.seq, bytes)?;
    Ok(())
}

/// Remove every delivery of a job (retention), returning how many were pending.
pub(crate) fn remove_job(t: &mut WriteTables<'_>, job: JobId) -> Result<(), StoreError> {
    let key = job.as_u128();
    let mut seqs = Vec::new();
    for entry in t.deliveries_by_job.r()?.range((key, 0)..=(key, u64::MAX))? {
        seqs.push(entry?.0.value().1);
    }
    for seq in seqs {
        let d = load(t.deliveries.r()?, seq)?.ok_or_else(|| corrupt(seq, "indexed for its job but missing"))?;
        if d.state == DeliveryState::Pending {
            t.deliveries_due.w()?.remove((d.next_attempt_ms, seq))?;
            t.meta_add(meta_key::DELIVERIES_PENDING, -1)?;
        }
        t.deliveries.w()?.remove(seq)?;
        t.deliveries_by_job.w()?.remove((key, seq))?;
    }
    Ok(())
}

/// Whether a job has a delivery still pending.
pub(crate) fn job_has_pending(t: &WriteTables<'_>, job: JobId) -> Result<bool, StoreError> {
    let key = job.as_u128();
    for entry in t.deliveries_by_job.r()?.range((key, 0)..=(key, u64::MAX))? {
        let seq = entry?.0.value().1;
        if load(t.deliveries.r()?, seq)?.is_some_and(|d| d.state == DeliveryState::Pending) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `Store::record_attempt`.
pub(crate) struct RecordAttempt {
    pub seq: u64,
    pub attempt: Attempt,
}

/// A checked attempt: the delivery before and after, encoded, and the job-log entry.
pub(crate) struct AttemptPlan {
    old: Delivery,
    new: Delivery,
    bytes: Vec<u8>,
    events: Vec<(u64, Vec<u8>)>,
}

impl WriteOp for RecordAttempt {
    type Out = Delivery;
    type Plan = AttemptPlan;

    fn check(&self, t: &WriteTables<'_>) -> Result<AttemptPlan, StoreError> {
        let old = load(t.deliveries.r()?, self.seq)?
            .ok_or_else(|| StoreError::Invalid(format!("no delivery with seq {}", self.seq)))?;
        if old.state != DeliveryState::Pending {
            return Err(StoreError::Invalid(format!("delivery {} is {}, not pending", old.id, old.state.as_str())));
        }
        let a = &self.attempt;
        let (state, next_attempt_ms, outcome) = match a.next {
            AttemptNext::Delivered => (DeliveryState::Delivered, old.next_attempt_ms, "delivered"),
            AttemptNext::RetryAt(at) => (DeliveryState::Pending, at, "retrying"),
            AttemptNext::GiveUp => (DeliveryState::Failed, old.next_attempt_ms, "failed"),
            AttemptNext::Disable => (DeliveryState::Disabled, old.next_attempt_ms, "disabled"),
        };
        let new = Delivery {
            state,
            next_attempt_ms,
            n_attempts: old.n_attempts + 1,
            last_attempt_ms: Some(a.at_ms),
            last_status: a.status,
            last_error: a.error.clone(),
            ..old.clone()
        };
        let bytes = encode(&new)?;
        let event = JobEventKind::Webhook {
            delivery: new.id.clone(),
            event: new.event.type_name().to_string(),
            attempt: new.n_attempts,
            status: a.status,
            error: a.error.clone(),
            outcome: outcome.to_string(),
            next_attempt_ms: (state == DeliveryState::Pending).then_some(next_attempt_ms),
        };
        let events = if t.jobs.r()?.get(new.job_id.as_u128())?.is_some() {
            jobs::encode_events(t, new.job_id, &[event])?
        } else {
            Vec::new()
        };
        Ok(AttemptPlan { old, new, bytes, events })
    }

    fn write(&self, plan: AttemptPlan, t: &mut WriteTables<'_>) -> Result<Delivery, StoreError> {
        rewrite(t, &plan.old, &plan.new, &plan.bytes)?;
        if plan.new.state == DeliveryState::Disabled {
            let at = plan.new.last_attempt_ms.unwrap_or_else(now_ms);
            t.disabled_endpoints.w()?.insert(plan.new.url.as_str(), at)?;
        }
        jobs::append(t, plan.new.job_id, plan.events)?;
        Ok(plan.new)
    }
}

/// `Store::redeliver`.
pub(crate) struct Redeliver {
    pub job: JobId,
    pub now_ms: u64,
}

impl WriteOp for Redeliver {
    type Out = Vec<Delivery>;
    type Plan = Vec<(Delivery, Delivery, Vec<u8>)>;

    fn check(&self, t: &WriteTables<'_>) -> Result<Self::Plan, StoreError> {
        let key = self.job.as_u128();
        let mut plan = Vec::new();
        for entry in t.deliveries_by_job.r()?.range((key, 0)..=(key, u64::MAX))? {
            let seq = entry?.0.value().1;
            let old = load(t.deliveries.r()?, seq)?.ok_or_else(|| corrupt(seq, "indexed for its job but missing"))?;
            let new = Delivery { state: DeliveryState::Pending, next_attempt_ms: self.now_ms, ..old.clone() };
            let bytes = encode(&new)?;
            plan.push((old, new, bytes));
        }
        Ok(plan)
    }

    fn write(&self, plan: Self::Plan, t: &mut WriteTables<'_>) -> Result<Vec<Delivery>, StoreError> {
        let mut out = Vec::with_capacity(plan.len());
        for (old, new, bytes) in plan {
            rewrite(t, &old, &new, &bytes)?;
            t.disabled_endpoints.w()?.remove(new.url.as_str())?;
            t.outbox_changed = true;
            out.push(new);
        }
        Ok(out)
    }
}

/// Pending deliveries due at `now`, earliest first: up to `load_max` of them, among the
/// first `scan_max` entries of the due index, loading none whose seq `skip` names (the
/// index is read without decoding a record, so skipping is cheap).
pub(crate) fn due(
    txn: &ReadTransaction,
    now: u64,
    scan_max: usize,
    load_max: usize,
    mut skip: impl FnMut(u64) -> bool,
) -> Result<Vec<Delivery>, StoreError> {
    let index = txn.open_table(DELIVERIES_DUE)?;
    let table = txn.open_table(DELIVERIES)?;
    let mut out = Vec::new();
    for entry in index.range((0, 0)..=(now, u64::MAX))?.take(scan_max) {
        if out.len() >= load_max {
            break;
        }
        let (due_ms, seq) = entry?.0.value();
        if skip(seq) {
            continue;
        }
        let d = load(&table, seq)?.ok_or_else(|| corrupt(seq, "in the due index but missing"))?;
        if d.state != DeliveryState::Pending || d.next_attempt_ms != due_ms {
            return Err(corrupt(seq, format!("due at {due_ms} but {} at {}", d.state.as_str(), d.next_attempt_ms)));
        }
        out.push(d);
    }
    Ok(out)
}

/// The earliest due time of a pending delivery.
pub(crate) fn next_due(txn: &ReadTransaction) -> Result<Option<u64>, StoreError> {
    let index = txn.open_table(DELIVERIES_DUE)?;
    Ok(index.first()?.map(|(k, _)| k.value().0))
}

/// Every delivery of a job, oldest first.
pub(crate) fn of_job(txn: &ReadTransaction, job: JobId) -> Result<Vec<Delivery>, StoreError> {
    let index = txn.open_table(DELIVERIES_BY_JOB)?;
    let table = txn.open_table(DELIVERIES)?;
    let key = job.as_u128();
    let mut out = Vec::new();
    for entry in index.range((key, 0)..=(key, u64::MAX))? {
        let seq = entry?.0.value().1;
        out.push(load(&table, seq)?.ok_or_else(|| corrupt(seq, "indexed for its job but missing"))?);
    }
    Ok(out)
}

/// When `url` was disabled by a 410, if it is.
pub(crate) fn disabled_since(txn: &ReadTransaction, url: &str) -> Result<Option<u64>, StoreError> {
    let table = txn.open_table(DISABLED_ENDPOINTS)?;
    Ok(table.get(url)?.map(|g| g.value()))
}

/// Check the outbox against itself and the jobs (integrity scan).
pub(crate) fn verify(txn: &ReadTransaction) -> Result<(), StoreError> {
    let table = txn.open_table(DELIVERIES)?;
    let due = txn.open_table(DELIVERIES_DUE)?;
    let by_job = txn.open_table(DELIVERIES_BY_JOB)?;
    let jobs_table = txn.open_table(super::tables::JOBS)?;
    let meta = txn.open_table(super::tables::META)?;
    let meta_get = |key: &str| -> Result<u64, StoreError> { Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0)) };
    let seq_max = meta_get(meta_key::DELIVERY_SEQ)?;
    let (mut n, mut n_pending) = (0u64, 0u64);
    for entry in table.range::<u64>(..)? {
        let (k, v) = entry?;
        let seq = k.value();
        let d = decode(seq, v.value())?;
        if seq == 0 || seq > seq_max {
            return Err(corrupt(seq, format!("seq beyond the counter {seq_max}")));
        }
        if by_job.get((d.job_id.as_u128(), seq))?.is_none() {
            return Err(corrupt(seq, "missing from deliveries_by_job"));
        }
        if jobs_table.get(d.job_id.as_u128())?.is_none() {
            return Err(corrupt(seq, format!("for job {}, which does not exist", d.job_id)));
        }
        let in_due = due.get((d.next_attempt_ms, seq))?.is_some();
        if in_due != (d.state == DeliveryState::Pending) {
            return Err(corrupt(seq, format!("{} but in the due index: {in_due}", d.state.as_str())));
        }
        n += 1;
        n_pending += u64::from(d.state == DeliveryState::Pending);
    }
    use redb::ReadableTableMetadata;
    if by_job.len()? != n || due.len()? != n_pending {
        return Err(corrupt(0, "index sizes differ from the deliveries"));
    }
    let recorded = meta_get(meta_key::DELIVERIES_PENDING)?;
    if recorded != n_pending {
        return Err(StoreError::Corrupt {
            table: "meta",
            key: meta_key::DELIVERIES_PENDING.to_string(),
            reason: format!("says {recorded}, {n_pending} pending"),
        });
    }
    Ok(())
}
