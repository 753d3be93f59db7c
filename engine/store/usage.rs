//! Storage used per owner: the bytes of inputs and outputs its jobs keep, for
//! `STORAGE_QUOTA_BYTES_PER_OWNER`.
//!
//! Blobs are content-addressed and shared, and a shared blob is charged in full to every
//! job naming it (an output twice in one job, twice): what an owner is charged depends
//! only on its own jobs, never on what others stored, and does not change when another
//! owner's job that shared a blob goes. Cache entries are charged to nobody; the job that
//! a cache hit created is charged for its outputs like any other.
//!
//! `owner_usage` (owner id, `""` for jobs without one -> bytes) and `meta["usage.bytes"]`
//! (their sum) change in the transaction that inserts, updates or prunes the job
//! ([`charge_change`]); an owner at 0 has no entry, so the table's length is the number of
//! owners with stored bytes. A database written before the table existed gets it built
//! from the jobs once, when it is opened ([`build_if_missing`]).

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::blobs;
use super::tables::{JOBS, OWNER_USAGE, WriteTables, meta_key};
use crate::domain::Job;

/// The owner key of a job (`""`: no owner, open mode).
pub(crate) fn owner_key(job: &Job) -> &str {
    job.owner.as_deref().unwrap_or("")
}

/// The bytes a job is charged: every output and input it names, in full.
pub(crate) fn job_bytes(job: &Job) -> u64 {
    blobs::job_refs(job).iter().fold(0u64, |sum, r| sum.saturating_add(r.size_bytes))
}

/// Add `delta` bytes to `owner` (dropping its entry at 0) and to the total.
fn charge(t: &mut WriteTables<'_>, owner: &str, delta: i64) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let old = t.owner_usage.r()?.get(owner)?.map(|v| v.value()).unwrap_or(0);
    let new = old.checked_add_signed(delta).ok_or_else(|| StoreError::Corrupt {
        table: "owner_usage",
        key: owner.to_string(),
        reason: format!("usage {old} cannot change by {delta}"),
    })?;
    if new == 0 {
        t.owner_usage.w()?.remove(owner)?;
    } else {
        t.owner_usage.w()?.insert(owner, new)?;
    }
    t.meta_add(meta_key::USAGE_BYTES, delta)?;
    Ok(())
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Move the charge of a job from its stored record `old` (None: new) to `new` (None:
/// deleted).
pub(crate) fn charge_change(t: &mut WriteTables<'_>, old: Option<&Job>, new: Option<&Job>) -> Result<(), StoreError> {
    match (old, new) {
        (Some(o), Some(n)) if owner_key(o) == owner_key(n) => {
            charge(t, owner_key(n), signed(job_bytes(n)) - signed(job_bytes(o)))
        }
        (old, new) => {
            if let Some(o) = old {
                charge(t, owner_key(o), -signed(job_bytes(o)))?;
            }
            if let Some(n) = new {
                charge(t, owner_key(n), signed(job_bytes(n)))?;
            }
            Ok(())
        }
    }
}

/// Build `owner_usage` from the jobs if this database has never had it (the marker
/// `meta["usage.built"]`); a no-op afterwards. Runs in the transaction of the schema check.
pub(crate) fn build_if_missing(t: &mut WriteTables<'_>) -> Result<(), StoreError> {
    if t.meta_get_opt(meta_key::USAGE_BUILT)?.is_some() {
        return Ok(());
    }
    let mut jobs = Vec::new();
    for entry in t.jobs.r()?.range::<u128>(..)? {
        let (k, v) = entry?;
        let id = uuid::Uuid::from_u128(k.value());
        let job: Job = super::jobs::decode_job("jobs", &id, v.value())?;
        jobs.push((owner_key(&job).to_string(), job_bytes(&job)));
    }
    if !jobs.is_empty() {
        tracing::info!(n_jobs = jobs.len(), "counting the storage each owner uses (once, for this database)");
    }
    for (owner, bytes) in jobs {
        charge(t, &owner, signed(bytes))?;
    }
    t.meta.w()?.insert(meta_key::USAGE_BUILT, 1)?;
    Ok(())
}

/// The bytes `owner` is charged (`""`: jobs without an owner).
pub(crate) fn of_owner(txn: &ReadTransaction, owner: &str) -> Result<u64, StoreError> {
    Ok(txn.open_table(OWNER_USAGE)?.get(owner)?.map(|v| v.value()).unwrap_or(0))
}

/// Check `owner_usage` and its total against the jobs (for `integrity`).
pub(crate) fn verify(txn: &ReadTransaction) -> Result<(), StoreError> {
    use std::collections::BTreeMap;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for entry in txn.open_table(JOBS)?.range::<u128>(..)? {
        let (k, v) = entry?;
        let id = uuid::Uuid::from_u128(k.value());
        let job: Job = super::jobs::decode_job("jobs", &id, v.value())?;
        let bytes = job_bytes(&job);
        if bytes > 0 {
            *expected.entry(owner_key(&job).to_string()).or_default() += bytes;
        }
    }
    let mut recorded: BTreeMap<String, u64> = BTreeMap::new();
    for entry in txn.open_table(OWNER_USAGE)?.range::<&str>(..)? {
        let (k, v) = entry?;
        recorded.insert(k.value().to_string(), v.value());
    }
    let corrupt = |key: String, reason: String| StoreError::Corrupt { table: "owner_usage", key, reason };
    for (owner, bytes) in &expected {
        let found = recorded.get(owner).copied().unwrap_or(0);
        if found != *bytes {
            return Err(corrupt(owner.clone(), format!("says {found} bytes, the jobs hold {bytes}")));
        }
    }
    if let Some((owner, bytes)) = recorded.iter().find(|(o, _)| !expected.contains_key(*o)) {
        return Err(corrupt(owner.clone(), format!("says {bytes} bytes for an owner without stored bytes")));
    }
    let total: u64 = expected.values().sum();
    let meta = txn.open_table(super::tables::META)?;
    let said = meta.get(meta_key::USAGE_BYTES)?.map(|v| v.value()).unwrap_or(0);
    if said != total {
        return Err(StoreError::Corrupt {
            table: "meta",
            key: meta_key::USAGE_BYTES.to_string(),
            reason: format!("says {said}, the jobs hold {total}"),
        });
    }
    Ok(())
}
