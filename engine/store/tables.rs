//! Every redb table of the gateway, in one place, and the set of them a write batch opens.
//!
//! Layout (all record values are `codec`-encoded: a format-version byte, then postcard):
//! - `meta`: `&str -> u64`: the schema version, the job sequence counter, per-state job
//!   counts and blob totals, all updated in the transaction that changes what they count.
//! - `jobs`: job id (`Uuid::as_u128`) -> `Job`.
//! - `job_events`: `(job id, seq)` -> `JobEvent`; seq starts at 1 per job, append-only.
//! - `queue`: `(rank_ms, seq)` -> job id; holds exactly the `Queued` jobs, in dispatch order.
//! - `running`: job id -> `()`; holds exactly the `Running` jobs.
//! - `jobs_by_created`: `(created_ms, job id)` -> `()`; every job, for listing newest first.
//! - `jobs_by_owner`: `(owner, created_ms, job id)` -> `()`; every job with an owner (none
//!   in open mode), for a user's listing newest first (schema 2; built at open from `jobs`
//!   for a schema-1 file, see `jobs::migrate`).
//! - `workflows`: id -> the current `WorkflowRecord` (absent once deleted).
//! - `workflow_versions`: `(id, version)` -> every `WorkflowRecord` ever stored, kept forever.
//! - `blobs`: BLAKE3 hash -> `BlobRecord` (size, media type, compression, chunk count, refs).
//! - `blob_chunks`: `(hash, index)` -> at most `CHUNK_BYTES` of the stored (maybe zstd) bytes
//!   (none for a blob whose bytes are an object of the S3 bucket: `BlobRecord::remote`).
//! - `blob_deletes`: hash -> when its last reference went (ms): remote blobs whose object
//!   is to be deleted by the reaper; never the hash of a row of `blobs`.
//! - `audit`: seq (from `meta["audit_seq"]`, from 1) -> `AuditEntry`; append-only.
//! - `deliveries`: seq (from `meta["delivery_seq"]`, from 1) -> `Delivery` (the webhook outbox).
//! - `deliveries_due`: `(next_attempt_ms, seq)` -> `()`; holds exactly the `Pending` deliveries.
//! - `deliveries_by_job`: `(job id, seq)` -> `()`; every delivery, by job.
//! - `disabled_endpoints`: callback URL -> when a 410 disabled it.
//! - `cache`: result-cache key -> `CacheEntry` (its outputs hold blob references).
//! - `cache_by_time`: `(created_ms, key)` -> `()`; every cache entry, oldest first (pruning).
//! - `idempotency`: `"<owner>\n<key>"` -> `IdempotencyRecord`.
//! - `plugins`: BLAKE3 of a plugin component -> its wasm bytes (kept forever).
//! - `plugin_artifacts`: `(plugin hash, engine compatibility hash)` -> precompiled bytes.
//! - `idempotency_by_expiry`: `(expires_ms, "<owner>\n<key>")` -> `()`; every record (pruning).
//! - `backend_drains`: backend id -> when it was drained (ms); holds exactly the drained backends.
//! - `owner_usage`: owner id (`""`: none) -> bytes of inputs and outputs its jobs hold
//!   (see `usage`); no entry at 0.

use redb::{Table, TableDefinition, WriteTransaction};

use super::StoreError;

/// Counters and the schema version.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Job records by id.
pub(crate) const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
/// Per-job append-only event log.
pub(crate) const JOB_EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("job_events");
/// The queue index: `(rank_ms, seq)` of every queued job.
pub(crate) const QUEUE: TableDefinition<(i64, u64), u128> = TableDefinition::new("queue");
/// The running index.
pub(crate) const RUNNING: TableDefinition<u128, ()> = TableDefinition::new("running");
/// Every job by acceptance time (for listing; `created_ms` never changes).
pub(crate) const JOBS_BY_CREATED: TableDefinition<(u64, u128), ()> = TableDefinition::new("jobs_by_created");
/// Every job with an owner, by owner and acceptance time (a user's listing).
pub(crate) const JOBS_BY_OWNER: TableDefinition<(&str, u64, u128), ()> = TableDefinition::new("jobs_by_owner");
/// Current workflow versions by id.
pub(crate) const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
/// Every workflow version ever stored.
pub(crate) const WORKFLOW_VERSIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("workflow_versions");
/// Blob metadata by content hash.
pub(crate) const BLOBS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("blobs");
/// Blob contents, chunked.
pub(crate) const BLOB_CHUNKS: TableDefinition<([u8; 32], u32), &[u8]> = TableDefinition::new("blob_chunks");
/// Remote blobs whose object waits for deletion, with the time their row went.
pub(crate) const BLOB_DELETES: TableDefinition<[u8; 32], u64> = TableDefinition::new("blob_deletes");

/// The audit log by sequence number.
pub(crate) const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The webhook outbox by sequence number.
pub(crate) const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Pending deliveries by due time.
pub(crate) const DELIVERIES_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("deliveries_due");
/// Deliveries by job.
pub(crate) const DELIVERIES_BY_JOB: TableDefinition<(u128, u64), ()> = TableDefinition::new("deliveries_by_job");
/// Callback URLs disabled by a 410, with the time.
pub(crate) const DISABLED_ENDPOINTS: TableDefinition<&str, u64> = TableDefinition::new("disabled_endpoints");
/// Result-cache entries by key.
pub(crate) const CACHE: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("cache");
/// Result-cache entries by creation time.
pub(crate) const CACHE_BY_TIME: TableDefinition<(u64, [u8; 32]), ()> = TableDefinition::new("cache_by_time");
/// Idempotency records by scoped key.
pub(crate) const IDEMPOTENCY: TableDefinition<&str, &[u8]> = TableDefinition::new("idempotency");
/// Idempotency records by expiry time.
pub(crate) const IDEMPOTENCY_BY_EXPIRY: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("idempotency_by_expiry");

/// Plugin components by hash.
pub(crate) const PLUGINS: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("plugins");
/// Precompiled plugin artifacts by (plugin hash, engine compatibility hash).
pub(crate) const PLUGIN_ARTIFACTS: TableDefinition<([u8; 32], [u8; 32]), &[u8]> =
    TableDefinition::new("plugin_artifacts");

/// Drained backends by id, with the time of the drain (survives restarts).
pub(crate) const BACKEND_DRAINS: TableDefinition<&str, u64> = TableDefinition::new("backend_drains");

/// Bytes of inputs and outputs per owner (`usage`).
pub(crate) const OWNER_USAGE: TableDefinition<&str, u64> = TableDefinition::new("owner_usage");

/// The schema this code reads and writes; stored under `meta["schema_version"]`.
/// Schema 2 added `jobs_by_owner` and namespaced owner ids (`domain::owner`) in the
/// scoped keys of `idempotency`; a schema-1 file is migrated at open (`jobs::migrate`).
pub(crate) const SCHEMA_VERSION: u64 = 2;

/// `meta` keys.
pub(crate) mod meta_key {
    /// The schema version.
    pub const SCHEMA_VERSION: &str = "schema_version";
    /// The last assigned `QueueKey::seq` (0: none yet).
    pub const JOB_SEQ: &str = "job_seq";
    /// Number of distinct blobs.
    pub const BLOBS_COUNT: &str = "blobs.count";
    /// Sum of the uncompressed sizes of distinct blobs.
    pub const BLOBS_BYTES: &str = "blobs.bytes";
    /// Sum of the stored (maybe compressed) sizes of distinct blobs.
    pub const BLOBS_STORED_BYTES: &str = "blobs.stored_bytes";
    /// The last assigned audit sequence number (0: none yet).
    pub const AUDIT_SEQ: &str = "audit_seq";
    /// The last assigned delivery sequence number (0: none yet).
    pub const DELIVERY_SEQ: &str = "delivery_seq";
    /// Number of pending deliveries.
    pub const DELIVERIES_PENDING: &str = "deliveries.pending";
    /// Number of result-cache entries.
    pub const CACHE_ENTRIES: &str = "cache.entries";
    /// Sum of `owner_usage`.
    pub const USAGE_BYTES: &str = "usage.bytes";
    /// Set once `owner_usage` was built for this database (see `usage::build_if_missing`).
    pub const USAGE_BUILT: &str = "usage.built";
    /// This database's random id (never 0), set when it is created or, for an older file,
    /// at its first open; never changed (see `Store::database_id`).
    pub const DATABASE_ID: &str = "database_id";
}

/// The `meta` key counting the jobs in `state`.
pub(crate) fn state_count_key(state: crate::domain::JobState) -> &'static str {
    use crate::domain::JobState;
    match state {
        JobState::Queued => "jobs.queued",
        JobState::Running => "jobs.running",
        JobState::Succeeded => "jobs.succeeded",
        JobState::Failed => "jobs.failed",
        JobState::Canceled => "jobs.canceled",
    }
}

/// All tables, opened once per write transaction and shared by the batch's operations.
pub(crate) struct WriteTables<'txn> {
    pub meta: Table<'txn, &'static str, u64>,
    pub jobs: Table<'txn, u128, &'static [u8]>,
    pub events: Table<'txn, (u128, u64), &'static [u8]>,
    pub queue: Table<'txn, (i64, u64), u128>,
    pub running: Table<'txn, u128, ()>,
    pub by_created: Table<'txn, (u64, u128), ()>,
    pub by_owner: Table<'txn, (&'static str, u64, u128), ()>,
    pub workflows: Table<'txn, &'static str, &'static [u8]>,
    pub workflow_versions: Table<'txn, (&'static str, u32), &'static [u8]>,
    pub blobs: Table<'txn, [u8; 32], &'static [u8]>,
    pub blob_chunks: Table<'txn, ([u8; 32], u32), &'static [u8]>,
    pub blob_deletes: Table<'txn, [u8; 32], u64>,
    pub audit: Table<'txn, u64, &'static [u8]>,
    pub deliveries: Table<'txn, u64, &'static [u8]>,
    pub deliveries_due: Table<'txn, (u64, u64), ()>,
    pub deliveries_by_job: Table<'txn, (u128, u64), ()>,
    pub disabled_endpoints: Table<'txn, &'static str, u64>,
    pub cache: Table<'txn, [u8; 32], &'static [u8]>,
    pub cache_by_time: Table<'txn, (u64, [u8; 32]), ()>,
    pub idempotency: Table<'txn, &'static str, &'static [u8]>,
    pub idempotency_by_expiry: Table<'txn, (u64, &'static str), ()>,
    pub plugins: Table<'txn, [u8; 32], &'static [u8]>,
    pub plugin_artifacts: Table<'txn, ([u8; 32], [u8; 32]), &'static [u8]>,
    pub backend_drains: Table<'txn, &'static str, u64>,
    pub owner_usage: Table<'txn, &'static str, u64>,
    /// Set by a write that made a delivery pending: the writer wakes the webhook worker
    /// after the commit.
    pub outbox_changed: bool,
    /// Set by a write that recorded an object to delete: the writer wakes the reaper
    /// after the commit.
    pub deletes_changed: bool,
}

impl<'txn> WriteTables<'txn> {
    /// Open (creating if needed) every table in `txn`.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(WriteTables {
            meta: txn.open_table(META)?,
            jobs: txn.open_table(JOBS)?,
            events: txn.open_table(JOB_EVENTS)?,
            queue: txn.open_table(QUEUE)?,
            running: txn.open_table(RUNNING)?,
            by_created: txn.open_table(JOBS_BY_CREATED)?,
            by_owner: txn.open_table(JOBS_BY_OWNER)?,
            workflows: txn.open_table(WORKFLOWS)?,
            workflow_versions: txn.open_table(WORKFLOW_VERSIONS)?,
            blobs: txn.open_table(BLOBS)?,
            blob_chunks: txn.open_table(BLOB_CHUNKS)?,
            blob_deletes: txn.open_table(BLOB_DELETES)?,
            audit: txn.open_table(AUDIT)?,
            deliveries: txn.open_table(DELIVERIES)?,
            deliveries_due: txn.open_table(DELIVERIES_DUE)?,
            deliveries_by_job: txn.open_table(DELIVERIES_BY_JOB)?,
            disabled_endpoints: txn.open_table(DISABLED_ENDPOINTS)?,
            cache: txn.open_table(CACHE)?,
            cache_by_time: txn.open_table(CACHE_BY_TIME)?,
            idempotency: txn.open_table(IDEMPOTENCY)?,
            idempotency_by_expiry: txn.open_table(IDEMPOTENCY_BY_EXPIRY)?,
            plugins: txn.open_table(PLUGINS)?,
            plugin_artifacts: txn.open_table(PLUGIN_ARTIFACTS)?,
            backend_drains: txn.open_table(BACKEND_DRAINS)?,
            owner_usage: txn.open_table(OWNER_USAGE)?,
            outbox_changed: false,
            deletes_changed: false,
        })
    }

    /// Read a `meta` entry.
    pub fn meta_get_opt(&self, key: &'static str) -> Result<Option<u64>, StoreError> {
        use redb::ReadableTable;
        Ok(self.meta.get(key)?.map(|v| v.value()))
    }

    /// Read a `meta` counter (0 when absent).
    pub fn meta_get(&self, key: &'static str) -> Result<u64, StoreError> {
        Ok(self.meta_get_opt(key)?.unwrap_or(0))
    }

    /// Add `delta` to a `meta` counter; going below zero means the counts are corrupt.
    pub fn meta_add(&mut self, key: &'static str, delta: i64) -> Result<u64, StoreError> {
        let old = self.meta_get(key)?;
        let new = old.checked_add_signed(delta).ok_or_else(|| StoreError::Corrupt {
            table: "meta",
            key: key.to_string(),
            reason: format!("counter {old} cannot change by {delta}"),
        })?;
        self.meta.insert(key, new)?;
        Ok(new)
    }
}
