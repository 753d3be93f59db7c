//! The result cache and idempotency keys.
//!
//! A cache entry is written in the transaction that makes a cacheable job `Succeeded`
//! (see `jobs`), and its outputs hold their own blob references, so an entry outlives the
//! job that filled it and a blob lives while any job or entry names it. An idempotency key
//! is claimed in the transaction that inserts the job it created, so two concurrent
//! submits with one key cannot both insert.

use redb::{ReadTransaction, ReadableTable};

use super::StoreError;
use super::blobs::BlobUse;
use super::codec;
use super::tables::{CACHE, CACHE_BY_TIME, IDEMPOTENCY, WriteTables, meta_key};
use crate::domain::{CacheEntry, Hash, IdempotencyRecord, Job, JobState, hash_hex, now_ms};

fn load_entry(
    table: &impl ReadableTable<[u8; 32], &'static [u8]>,
    key: &Hash,
) -> Result<Option<CacheEntry>, StoreError> {
    match table.get(key)? {
        Some(g) => Ok(Some(codec::decode("cache", &hash_hex(key), g.value())?)),
        None => Ok(None),
    }
}

/// The blob references of a cache entry's outputs.
pub(crate) fn entry_refs(entry: &CacheEntry) -> Vec<BlobUse> {
    entry.outputs.iter().map(|o| BlobUse { name: o.name.clone(), hash: o.hash, size_bytes: o.size_bytes }).collect()
}

/// A cache write planned with a job change: the entry it replaces (if any) and the new one.
pub(crate) struct Fill {
    key: Hash,
    old: Option<CacheEntry>,
    new: CacheEntry,
    bytes: Vec<u8>,
}

impl Fill {
    /// Blob references dropped and added.
    pub(crate) fn refs(&self) -> (Vec<BlobUse>, Vec<BlobUse>) {
        (self.old.as_ref().map(entry_refs).unwrap_or_default(), entry_refs(&self.new))
    }
}

/// The cache entry `job` fills if this change makes it succeed: a job with a cache key,
/// not itself a cache hit, entering `Succeeded`. An existing entry under the key is replaced.
pub(crate) fn plan_fill(t: &WriteTables<'_>, old: Option<&Job>, job: &Job) -> Result<Option<Fill>, StoreError> {
    let entering = job.state == JobState::Succeeded && old.is_none_or(|o| o.state != JobState::Succeeded);
    let Some(key) = job.cache_key.filter(|_| entering && !job.cached) else {
        return Ok(None);
    };
    let new = CacheEntry { job_id: job.id, outputs: job.outputs.clone(), created_ms: now_ms() };
    let bytes = codec::encode("cache", &hash_hex(&key), &new)?;
    Ok(Some(Fill { key, old: load_entry(t.cache.r()?, &key)?, new, bytes }))
}

/// Write a planned fill (blob references are applied by the caller).
pub(crate) fn write_fill(t: &mut WriteTables<'_>, fill: &Fill) -> Result<(), StoreError> {
    match &fill.old {
        Some(old) => {
            t.cache_by_time.w()?.remove((old.created_ms, fill.key))?;
        }
        None => {
            t.meta_add(meta_key::CACHE_ENTRIES, 1)?;
        }
    }
    t.cache.w()?.insert(fill.key, fill.bytes.as_slice())?;
    t.cache_by_time.w()?.insert((fill.new.created_ms, fill.key), ())?;
    Ok(())
}

/// Remove a cache entry (blob references are released by the caller).
pub(crate) fn remove_entry(t: &mut WriteTables<'_>, key: &Hash, entry: &CacheEntry) -> Result<(), StoreError> {
    t.cache.w()?.remove(key)?;
    t.cache_by_time.w()?.remove((entry.created_ms, *key))?;
    t.meta_add(meta_key::CACHE_ENTRIES, -1)?;
    Ok(())
}

/// Entries created before `cutoff`, oldest first, up to `limit`.
pub(crate) fn expired(t: &WriteTables<'_>, cutoff: u64, limit: usize) -> Result<Vec<(Hash, CacheEntry)>, StoreError> {
    let mut out = Vec::new();
    for entry in t.cache_by_time.r()?.range((0, [0; 32])..(cutoff, [0; 32]))?.take(limit) {
        let (created_ms, key) = entry?.0.value();
        let e = load_entry(t.cache.r()?, &key)?.ok_or_else(|| corrupt_entry(&key, "indexed but missing"))?;
        if e.created_ms != created_ms {
            return Err(corrupt_entry(&key, format!("indexed at {created_ms}, created at {}", e.created_ms)));
        }
        out.push((key, e));
    }
    Ok(out)
}

fn corrupt_entry(key: &Hash, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table: "cache", key: hash_hex(key), reason: reason.into() }
}

/// A cache entry, if stored (expiry is the caller's business).
pub(crate) fn get(txn: &ReadTransaction, key: &Hash) -> Result<Option<CacheEntry>, StoreError> {
    load_entry(&txn.open_table(CACHE)?, key)
}

/// Every cache entry (integrity scan).
pub(crate) fn all(txn: &ReadTransaction) -> Result<Vec<(Hash, CacheEntry)>, StoreError> {
    let table = txn.open_table(CACHE)?;
    let index = txn.open_table(CACHE_BY_TIME)?;
    let mut out = Vec::new();
    for entry in table.range::<[u8; 32]>(..)? {
        let (k, v) = entry?;
        let key = k.value();
        let e: CacheEntry = codec::decode("cache", &hash_hex(&key), v.value())?;
        if index.get((e.created_ms, key))?.is_none() {
            return Err(corrupt_entry(&key, "missing from cache_by_time"));
        }
        out.push((key, e));
    }
    use redb::ReadableTableMetadata;
    if index.len()? != out.len() as u64 {
        return Err(corrupt_entry(&[0; 32], "cache_by_time has entries for missing records"));
    }
    Ok(out)
}

// ---- idempotency

fn load_claim(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    match table.get(key)? {
        Some(g) => Ok(Some(codec::decode("idempotency", &key, g.value())?)),
        None => Ok(None),
    }
}

/// An idempotency key to claim with a job insert.
#[derive(Debug, Clone)]
pub struct Claim {
    /// `"<owner>\n<key>"`.
    pub key: String,
    /// What to record.
    pub record: IdempotencyRecord,
}

/// A checked claim: the expired record it replaces, if any.
pub(crate) struct ClaimPlan {
    claim: Claim,
    bytes: Vec<u8>,
    replaced: Option<IdempotencyRecord>,
}

/// Check a claim: `IdempotencyTaken` if the key holds a live record (unexpired, its job
/// still stored).
pub(crate) fn plan_claim(t: &WriteTables<'_>, claim: &Claim) -> Result<ClaimPlan, StoreError> {
    let replaced = load_claim(t.idempotency.r()?, &claim.key)?;
    if let Some(rec) = &replaced
        && rec.expires_ms > now_ms()
        && t.jobs.r()?.get(rec.job_id.as_u128())?.is_some()
    {
        return Err(StoreError::IdempotencyTaken(Box::new(rec.clone())));
    }
    let bytes = codec::encode("idempotency", &claim.key, &claim.record)?;
    Ok(ClaimPlan { claim: claim.clone(), bytes, replaced })
}

/// Write a checked claim.
pub(crate) fn write_claim(t: &mut WriteTables<'_>, plan: &ClaimPlan) -> Result<(), StoreError> {
    let key = plan.claim.key.as_str();
    if let Some(old) = &plan.replaced {
        t.idempotency_by_expiry.w()?.remove((old.expires_ms, key))?;
    }
    t.idempotency.w()?.insert(key, plan.bytes.as_slice())?;
    t.idempotency_by_expiry.w()?.insert((plan.claim.record.expires_ms, key), ())?;
    Ok(())
}

/// The record under a scoped key, if any (expiry is the caller's business).
pub(crate) fn get_claim(txn: &ReadTransaction, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
    load_claim(&txn.open_table(IDEMPOTENCY)?, key)
}

/// Remove up to `limit` records that expired before `now`; how many.
/// Whether any idempotency claim expired before `now`.
pub(crate) fn claims_expired(t: &WriteTables<'_>, now: u64) -> Result<bool, StoreError> {
    Ok(t.idempotency_by_expiry.r()?.range((0, "")..(now, ""))?.next().is_some())
}

pub(crate) fn prune_claims(t: &mut WriteTables<'_>, now: u64, limit: usize) -> Result<usize, StoreError> {
    let mut keys = Vec::new();
    for entry in t.idempotency_by_expiry.r()?.range((0, "")..(now, ""))?.take(limit) {
        let guard = entry?.0;
        let (expires_ms, key) = guard.value();
        keys.push((expires_ms, key.to_string()));
    }
    for (expires_ms, key) in &keys {
        t.idempotency_by_expiry.w()?.remove((*expires_ms, key.as_str()))?;
        t.idempotency.w()?.remove(key.as_str())?;
    }
    Ok(keys.len())
}
