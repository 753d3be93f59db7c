//! The content-addressed blob store: BLAKE3 of the bytes as key, bytes split into
//! `CHUNK_BYTES` chunks (no multi-MB redb values), zstd only for media types that
//! compress and only when it pays, and reference counts so identical outputs of different
//! jobs are stored once.
//!
//! With object storage (`STORAGE_PROVIDER=s3`) a blob's row is *remote*: its bytes are the
//! object `<prefix>blobs/<hash>` of the bucket, uploaded before the commit that creates the
//! row, and it has no chunks. The commit that drops a remote blob's last reference records
//! it in `blob_deletes` (the reaper deletes the object after it); the commit that creates
//! a row removes the hash from `blob_deletes` (the upload it follows made the object again).

use std::collections::BTreeMap;
use std::io::Read;

use bytes::Bytes;
use redb::{ReadTransaction, ReadableTable};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::codec;
use super::tables::{BLOB_CHUNKS, BLOB_DELETES, BLOBS, WriteTables, meta_key};
use crate::domain::{Hash, Job, hash_hex, now_ms};

/// Stored bytes per chunk.
pub(crate) const CHUNK_BYTES: usize = 256 * 1024;
/// zstd level: fast, most of the gain on text-like data.
const ZSTD_LEVEL: i32 = 3;

/// A blob to store with a job's completion.
#[derive(Clone, Debug)]
pub struct NewBlob {
    /// BLAKE3 of `bytes` (verified before anything is written).
    pub hash: Hash,
    /// MIME type; decides whether zstd is tried.
    pub media_type: String,
    /// The content.
    pub bytes: Bytes,
}

/// What the store knows about one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobMeta {
    /// Uncompressed size.
    pub size_bytes: u64,
    /// MIME type given by the first job that stored it.
    pub media_type: String,
    /// Whether it is stored zstd-compressed.
    pub compressed: bool,
    /// How many chunks hold it.
    pub n_chunks: u32,
    /// How many job outputs name it.
    pub n_refs: u64,
    /// Size as stored (after compression, if any).
    pub stored_bytes: u64,
    /// Whether the bytes are an object of the bucket (no chunks in redb).
    pub remote: bool,
}

/// The `blobs` table record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct BlobRecord {
    size_bytes: u64,
    stored_bytes: u64,
    media_type: String,
    compressed: bool,
    n_chunks: u32,
    n_refs: u64,
    /// The bytes are an object of the bucket (format v2; v1 records are local).
    remote: bool,
}

impl From<BlobRecord> for BlobMeta {
    fn from(r: BlobRecord) -> Self {
        BlobMeta {
            size_bytes: r.size_bytes,
            media_type: r.media_type,
            compressed: r.compressed,
            n_chunks: r.n_chunks,
            n_refs: r.n_refs,
            stored_bytes: r.stored_bytes,
            remote: r.remote,
        }
    }
}

/// A blob verified and encoded for storage, ready to be chunked.
#[derive(Clone, Debug)]
pub(crate) struct PreparedBlob {
    hash: Hash,
    media_type: String,
    size_bytes: u64,
    compressed: bool,
    /// What the chunks hold: the zstd frame or the raw bytes (empty when remote).
    stored: Bytes,
    /// The bytes are an object of the bucket, already uploaded.
    remote: bool,
}

/// A blob handed to the writer: prepared off-thread, or left raw because it was already
/// stored when the caller looked (prepared in the writer only if it vanished since).
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    /// Hash verified, compression decided.
    Prepared(PreparedBlob),
    /// As the caller gave it.
    Unprepared(NewBlob),
}

impl Payload {
    fn hash(&self) -> &Hash {
        match self {
            Payload::Prepared(p) => &p.hash,
            Payload::Unprepared(b) => &b.hash,
        }
    }

    /// Payload size, for batch sizing.
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Prepared(p) => p.stored.len(),
            Payload::Unprepared(b) => b.bytes.len(),
        }
    }
}

/// Whether zstd is worth trying for this media type: text-like and uncompressed formats,
/// never already-compressed media (png, jpeg, webp, gif, mp4, webm, mp3, ogg, flac, ...).
pub(crate) fn compressible(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/javascript"
                | "application/octet-stream"
                | "image/bmp"
                | "image/x-ms-bmp"
                | "image/tiff"
                | "image/x-portable-pixmap"
                | "image/x-portable-anymap"
                | "audio/wav"
                | "audio/wave"
                | "audio/x-wav"
                | "model/obj"
        )
}

/// Verify the hash and decide compression (kept only if it saves at least 1/32).
pub(crate) fn prepare(blob: NewBlob) -> Result<PreparedBlob, StoreError> {
    let actual = blake3::hash(&blob.bytes);
    if actual.as_bytes() != &blob.hash {
        return Err(StoreError::Invalid(format!("blob {}: bytes hash to {}", hash_hex(&blob.hash), actual.to_hex())));
    }
    let size = blob.bytes.len();
    let n_chunks = size.div_ceil(CHUNK_BYTES);
    if u32::try_from(n_chunks).is_err() {
        return Err(StoreError::Invalid(format!("blob {} is too large", hash_hex(&blob.hash))));
    }
    let mut prepared = PreparedBlob {
        hash: blob.hash,
        media_type: blob.media_type,
        size_bytes: size as u64,
        compressed: false,
        stored: blob.bytes,
        remote: false,
    };
    if size > 0 && compressible(&prepared.media_type) {
        // A compression failure just means storing the raw bytes.
        if let Ok(z) = zstd::bulk::compress(&prepared.stored, ZSTD_LEVEL)
            && z.len() <= size - size / 32
        {
            prepared.compressed = true;
            prepared.stored = Bytes::from(z);
        }
    }
    Ok(prepared)
}

/// Verify a blob's hash (before its upload); `Invalid` if the bytes do not match.
pub(crate) fn verify_hash(blob: &NewBlob) -> Result<(), StoreError> {
    let actual = blake3::hash(&blob.bytes);
    if actual.as_bytes() != &blob.hash {
        return Err(StoreError::Invalid(format!("blob {}: bytes hash to {}", hash_hex(&blob.hash), actual.to_hex())));
    }
    Ok(())
}

/// A blob whose bytes were uploaded to the bucket (hash verified before the upload).
pub(crate) fn remote(blob: &NewBlob) -> PreparedBlob {
    PreparedBlob {
        hash: blob.hash,
        media_type: blob.media_type.clone(),
        size_bytes: blob.bytes.len() as u64,
        compressed: false,
        stored: Bytes::new(),
        remote: true,
    }
}

/// A checked change of blob references.
#[derive(Debug, Default)]
pub(crate) struct RefPlan {
    changes: Vec<RefChange>,
}

#[derive(Debug)]
enum RefChange {
    /// Add `n` references; `new` is the blob to write when it is not stored yet.
    Add { hash: Hash, n: u64, new: Option<PreparedBlob> },
    /// Drop `n` references (deleting the blob at zero).
    Remove { hash: Hash, n: u64 },
}

/// One reference of a job to a blob: an output or an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BlobUse {
    /// The output or input name (for errors).
    pub name: String,
    /// The blob.
    pub hash: Hash,
    /// The size the job records for it.
    pub size_bytes: u64,
}

/// Every blob reference a job holds: one per output and one per image input.
pub(crate) fn job_refs(job: &Job) -> Vec<BlobUse> {
    let outputs = job.outputs.iter().map(|o| BlobUse { name: o.name.clone(), hash: o.hash, size_bytes: o.size_bytes });
    let inputs = job.inputs.iter().map(|i| BlobUse { name: i.name.clone(), hash: i.hash, size_bytes: i.size_bytes });
    outputs.chain(inputs).collect()
}

/// Plan the reference changes from `old` to `new` references. Every blob gaining references
/// must be stored already or be among `provided`; sizes must match the references.
pub(crate) fn check_refs(
    t: &WriteTables<'_>,
    old: &[BlobUse],
    new: &[BlobUse],
    provided: &[Payload],
) -> Result<RefPlan, StoreError> {
    let mut deltas: BTreeMap<Hash, i64> = BTreeMap::new();
    for o in old {
        *deltas.entry(o.hash).or_default() -= 1;
    }
    for o in new {
        *deltas.entry(o.hash).or_default() += 1;
    }
    let mut plan = RefPlan::default();
    for (hash, delta) in deltas {
        let n = delta.unsigned_abs();
        let existing = load_record(t.blobs.r()?, &hash)?;
        if delta > 0 {
            let (size, new_blob) = match existing {
                Some(rec) => (rec.size_bytes, None),
                None => {
                    let payload = provided.iter().find(|p| p.hash() == &hash).ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "an output or input names blob {} which is neither stored nor provided",
                            hash_hex(&hash)
                        ))
                    })?;
                    let prepared = match payload {
                        Payload::Prepared(p) => p.clone(),
                        Payload::Unprepared(b) => prepare(b.clone())?,
                    };
                    (prepared.size_bytes, Some(prepared))
                }
            };
            if let Some(o) = new.iter().find(|o| o.hash == hash && o.size_bytes != size) {
                return Err(StoreError::Invalid(format!(
                    "{:?}: size_bytes {} but blob {} has {size}",
                    o.name,
                    o.size_bytes,
                    hash_hex(&hash)
                )));
            }
            plan.changes.push(RefChange::Add { hash, n, new: new_blob });
        } else if delta < 0 {
            match existing {
                Some(rec) if rec.n_refs >= n => plan.changes.push(RefChange::Remove { hash, n }),
                Some(rec) => {
                    return Err(corrupt(&hash, format!("{} refs, but {n} are being dropped", rec.n_refs)));
                }
                None => return Err(corrupt(&hash, "referenced by a job but not stored")),
            }
        }
    }
    Ok(plan)
}

/// Apply a checked reference plan, writing new blobs and deleting unreferenced ones.
pub(crate) fn apply_refs(t: &mut WriteTables<'_>, plan: &RefPlan) -> Result<(), StoreError> {
    for change in &plan.changes {
        match change {
            RefChange::Add { hash, n, new: Some(p) } => {
                // Another op of this batch may have stored it since the check.
                if let Some(mut rec) = load_record(t.blobs.r()?, hash)? {
                    rec.n_refs = add_refs(hash, rec.n_refs, *n)?;
                    put_record(t, hash, &rec)?;
                    continue;
                }
                let mut n_chunks = 0u32;
                for (i, chunk) in (0u32..).zip(p.stored.chunks(CHUNK_BYTES)) {
                    t.blob_chunks.w()?.insert((*hash, i), chunk)?;
                    n_chunks = i + 1;
                }
                let rec = BlobRecord {
                    size_bytes: p.size_bytes,
                    stored_bytes: if p.remote { p.size_bytes } else { p.stored.len() as u64 },
                    media_type: p.media_type.clone(),
                    compressed: p.compressed,
                    n_chunks,
                    n_refs: *n,
                    remote: p.remote,
                };
                // The row is back: an object deletion still pending for this hash is void
                // (this commit's upload, under the hash's lock, made the object again).
                t.blob_deletes.w()?.remove(hash)?;
                put_record(t, hash, &rec)?;
                t.meta_add(meta_key::BLOBS_COUNT, 1)?;
                t.meta_add(meta_key::BLOBS_BYTES, signed(rec.size_bytes))?;
                t.meta_add(meta_key::BLOBS_STORED_BYTES, signed(rec.stored_bytes))?;
            }
            RefChange::Add { hash, n, new: None } => {
                let mut rec = load_record(t.blobs.r()?, hash)?
                    .ok_or_else(|| corrupt(hash, "vanished between check and write"))?;
                rec.n_refs = add_refs(hash, rec.n_refs, *n)?;
                put_record(t, hash, &rec)?;
            }
            RefChange::Remove { hash, n } => {
                let mut rec = load_record(t.blobs.r()?, hash)?
                    .ok_or_else(|| corrupt(hash, "vanished between check and write"))?;
                rec.n_refs = rec
                    .n_refs
                    .checked_sub(*n)
                    .ok_or_else(|| corrupt(hash, format!("{} refs, {n} dropped", rec.n_refs)))?;
                if rec.n_refs > 0 {
                    put_record(t, hash, &rec)?;
                    continue;
                }
                for i in 0..rec.n_chunks {
                    t.blob_chunks.w()?.remove((*hash, i))?;
                }
                t.blobs.w()?.remove(hash)?;
                if rec.remote {
                    // Deleted by the reaper once this commit returned (never before).
                    t.blob_deletes.w()?.insert(hash, now_ms())?;
                    t.deletes_changed = true;
                }
                t.meta_add(meta_key::BLOBS_COUNT, -1)?;
                t.meta_add(meta_key::BLOBS_BYTES, -signed(rec.size_bytes))?;
                t.meta_add(meta_key::BLOBS_STORED_BYTES, -signed(rec.stored_bytes))?;
            }
        }
    }
    Ok(())
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn add_refs(hash: &Hash, refs: u64, n: u64) -> Result<u64, StoreError> {
    refs.checked_add(n).ok_or_else(|| corrupt(hash, "reference count overflow"))
}

fn put_record(t: &mut WriteTables<'_>, hash: &Hash, rec: &BlobRecord) -> Result<(), StoreError> {
    assert!(!rec.remote || rec.n_chunks == 0, "a remote blob has no chunks");
    let bytes = codec::encode_at(codec::BLOBS_VERSION, "blobs", &hash_hex(hash), rec)?;
    t.blobs.w()?.insert(hash, bytes.as_slice())?;
    Ok(())
}

fn load_record(
    blobs: &impl ReadableTable<[u8; 32], &'static [u8]>,
    hash: &Hash,
) -> Result<Option<BlobRecord>, StoreError> {
    let Some(guard) = blobs.get(hash)? else {
        return Ok(None);
    };
    decode_record(hash, guard.value()).map(Some)
}

/// Decode a `blobs` record and check its chunk count against its size.
pub(super) fn decode_record(hash: &Hash, bytes: &[u8]) -> Result<BlobRecord, StoreError> {
    let rec: BlobRecord = codec::decode_upgraded(codec::BLOBS_VERSION, "blobs", &hash_hex(hash), bytes)?;
    let n_chunks_expected = if rec.remote { 0 } else { rec.stored_bytes.div_ceil(CHUNK_BYTES as u64) };
    if u64::from(rec.n_chunks) != n_chunks_expected {
        return Err(corrupt(hash, format!("{} chunks for {} stored bytes", rec.n_chunks, rec.stored_bytes)));
    }
    Ok(rec)
}

/// A blob's metadata.
pub(crate) fn meta(txn: &ReadTransaction, hash: &Hash) -> Result<Option<BlobMeta>, StoreError> {
    let blobs = txn.open_table(BLOBS)?;
    Ok(load_record(&blobs, hash)?.map(BlobMeta::from))
}

/// A blob's bytes, reassembled, decompressed and verified against its hash.
pub(crate) fn read(txn: &ReadTransaction, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
    let blobs = txn.open_table(BLOBS)?;
    let Some(rec) = load_record(&blobs, hash)? else {
        return Ok(None);
    };
    if rec.remote {
        return Err(StoreError::Invalid(format!("blob {} is stored in the bucket, not in redb", hash_hex(hash))));
    }
    let chunks = txn.open_table(BLOB_CHUNKS)?;
    // Sizes come from disk: reserve only what `load_record` checked against the chunk
    // count, and never more than a bounded amount up front.
    let reserve = usize::try_from(rec.stored_bytes).unwrap_or(0).min(64 * 1024 * 1024);
    let mut stored = Vec::with_capacity(reserve);
    for i in 0..rec.n_chunks {
        let chunk = chunks.get((*hash, i))?.ok_or_else(|| StoreError::Corrupt {
            table: "blob_chunks",
            key: format!("{}/{i}", hash_hex(hash)),
            reason: "missing chunk".to_string(),
        })?;
        stored.extend_from_slice(chunk.value());
    }
    if stored.len() as u64 != rec.stored_bytes {
        return Err(corrupt(hash, format!("chunks hold {} bytes, record says {}", stored.len(), rec.stored_bytes)));
    }
    let bytes = if rec.compressed {
        let mut out = Vec::with_capacity(usize::try_from(rec.size_bytes).unwrap_or(0).min(64 * 1024 * 1024));
        let decoder =
            zstd::stream::read::Decoder::new(stored.as_slice()).map_err(|e| corrupt(hash, format!("zstd: {e}")))?;
        decoder
            .take(rec.size_bytes.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| corrupt(hash, format!("zstd: {e}")))?;
        out
    } else {
        stored
    };
    if bytes.len() as u64 != rec.size_bytes {
        return Err(corrupt(hash, format!("content is {} bytes, record says {}", bytes.len(), rec.size_bytes)));
    }
    if blake3::hash(&bytes).as_bytes() != hash {
        return Err(corrupt(hash, "content does not match its hash"));
    }
    Ok(Some(bytes))
}

/// The hashes of every remote blob.
pub(crate) fn remote_hashes(txn: &ReadTransaction) -> Result<Vec<Hash>, StoreError> {
    let table = txn.open_table(BLOBS)?;
    let mut out = Vec::new();
    for entry in table.range::<[u8; 32]>(..)? {
        let (k, v) = entry?;
        let hash = k.value();
        if decode_record(&hash, v.value())?.remote {
            out.push(hash);
        }
    }
    Ok(out)
}

/// Up to `limit` hashes whose object waits for deletion, with when their row went.
pub(crate) fn pending_deletes(txn: &ReadTransaction, limit: usize) -> Result<Vec<(Hash, u64)>, StoreError> {
    let table = txn.open_table(BLOB_DELETES)?;
    let mut out = Vec::new();
    for entry in table.range::<[u8; 32]>(..)?.take(limit) {
        let (k, v) = entry?;
        out.push((k.value(), v.value()));
    }
    Ok(out)
}

/// Whether the object of `hash` may be deleted now: its deletion is pending and no row
/// names the hash.
pub(crate) fn delete_due(txn: &ReadTransaction, hash: &Hash) -> Result<bool, StoreError> {
    let pending = txn.open_table(BLOB_DELETES)?.get(hash)?.is_some();
    let row = txn.open_table(BLOBS)?.get(hash)?.is_some();
    if pending && row {
        return Err(corrupt(hash, "both stored and waiting for deletion"));
    }
    Ok(pending)
}

/// Clear the pending deletion of an object the reaper deleted.
pub(crate) struct FinishDelete {
    pub hash: Hash,
}

impl super::writer::WriteOp for FinishDelete {
    type Out = ();
    type Plan = ();

    fn check(&self, t: &WriteTables<'_>) -> Result<(), StoreError> {
        if t.blob_deletes.r()?.get(&self.hash)?.is_none() {
            return Err(StoreError::Unchanged);
        }
        Ok(())
    }

    fn write(&self, (): (), t: &mut WriteTables<'_>) -> Result<(), StoreError> {
        t.blob_deletes.w()?.remove(&self.hash)?;
        Ok(())
    }
}

fn corrupt(hash: &Hash, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt { table: "blobs", key: hash_hex(hash), reason: reason.into() }
}
