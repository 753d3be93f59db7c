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

use std::cell::OnceCell;

use redb::{Key, Table, TableDefinition, Value, WriteTransaction};

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

/// One table of a write transaction, opened on first use: a batch opens only the tables
/// its operations touch (each opened table is looked up in redb's table tree when opened
/// and again at the commit).
pub(crate) struct Lazy<'txn, K: Key + 'static, V: Value + 'static> {
    txn: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'txn, K, V>>,
}

impl<'txn, K: Key + 'static, V: Value + 'static> Lazy<'txn, K, V> {
    fn new(txn: &'txn WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        Lazy { txn, def, table: OnceCell::new() }
    }

    /// The table, to read (opened, and created if needed, on first use).
    pub fn r(&self) -> Result<&Table<'txn, K, V>, StoreError> {
        if let Some(table) = self.table.get() {
            return Ok(table);
        }
        let opened = self.txn.open_table(self.def)?;
        Ok(self.table.get_or_init(|| opened))
    }

    /// The table, to write (opened, and created if needed, on first use).
    pub fn w(&mut self) -> Result<&mut Table<'txn, K, V>, StoreError> {
        self.r()?;
        self.table.get_mut().ok_or(StoreError::Closed)
    }
}

/// The tables of one write transaction, each opened when an operation of the batch first
/// uses it, and shared by the batch's operations.
pub(crate) struct WriteTables<'txn> {
    pub meta: Lazy<'txn, &'static str, u64>,
    pub jobs: Lazy<'txn, u128, &'static [u8]>,
    pub events: Lazy<'txn, (u128, u64), &'static [u8]>,
    pub queue: Lazy<'txn, (i64, u64), u128>,
    pub running: Lazy<'txn, u128, ()>,
    pub by_created: Lazy<'txn, (u64, u128), ()>,
    pub by_owner: Lazy<'txn, (&'static str, u64, u128), ()>,
    pub workflows: Lazy<'txn, &'static str, &'static [u8]>,
    pub workflow_versions: Lazy<'txn, (&'static str, u32), &'static [u8]>,
    pub blobs: Lazy<'txn, [u8; 32], &'static [u8]>,
    pub blob_chunks: Lazy<'txn, ([u8; 32], u32), &'static [u8]>,
    pub blob_deletes: Lazy<'txn, [u8; 32], u64>,
    pub audit: Lazy<'txn, u64, &'static [u8]>,
    pub deliveries: Lazy<'txn, u64, &'static [u8]>,
    pub deliveries_due: Lazy<'txn, (u64, u64), ()>,
    pub deliveries_by_job: Lazy<'txn, (u128, u64), ()>,
    pub disabled_endpoints: Lazy<'txn, &'static str, u64>,
    pub cache: Lazy<'txn, [u8; 32], &'static [u8]>,
    pub cache_by_time: Lazy<'txn, (u64, [u8; 32]), ()>,
    pub idempotency: Lazy<'txn, &'static str, &'static [u8]>,
    pub idempotency_by_expiry: Lazy<'txn, (u64, &'static str), ()>,
    pub plugins: Lazy<'txn, [u8; 32], &'static [u8]>,
    pub plugin_artifacts: Lazy<'txn, ([u8; 32], [u8; 32]), &'static [u8]>,
    pub backend_drains: Lazy<'txn, &'static str, u64>,
    pub owner_usage: Lazy<'txn, &'static str, u64>,
    /// Set by a write that made a delivery pending: the writer wakes the webhook worker
    /// after the commit.
    pub outbox_changed: bool,
    /// Set by a write that recorded an object to delete: the writer wakes the reaper
    /// after the commit.
    pub deletes_changed: bool,
}

impl<'txn> WriteTables<'txn> {
    /// The tables of `txn`, none opened yet.
    pub fn open(txn: &'txn WriteTransaction) -> Self {
        WriteTables {
            meta: Lazy::new(txn, META),
            jobs: Lazy::new(txn, JOBS),
            events: Lazy::new(txn, JOB_EVENTS),
            queue: Lazy::new(txn, QUEUE),
            running: Lazy::new(txn, RUNNING),
            by_created: Lazy::new(txn, JOBS_BY_CREATED),
            by_owner: Lazy::new(txn, JOBS_BY_OWNER),
            workflows: Lazy::new(txn, WORKFLOWS),
            workflow_versions: Lazy::new(txn, WORKFLOW_VERSIONS),
            blobs: Lazy::new(txn, BLOBS),
            blob_chunks: Lazy::new(txn, BLOB_CHUNKS),
            blob_deletes: Lazy::new(txn, BLOB_DELETES),
            audit: Lazy::new(txn, AUDIT),
            deliveries: Lazy::new(txn, DELIVERIES),
            deliveries_due: Lazy::new(txn, DELIVERIES_DUE),
            deliveries_by_job: Lazy::new(txn, DELIVERIES_BY_JOB),
            disabled_endpoints: Lazy::new(txn, DISABLED_ENDPOINTS),
            cache: Lazy::new(txn, CACHE),
            cache_by_time: Lazy::new(txn, CACHE_BY_TIME),
            idempotency: Lazy::new(txn, IDEMPOTENCY),
            idempotency_by_expiry: Lazy::new(txn, IDEMPOTENCY_BY_EXPIRY),
            plugins: Lazy::new(txn, PLUGINS),
            plugin_artifacts: Lazy::new(txn, PLUGIN_ARTIFACTS),
            backend_drains: Lazy::new(txn, BACKEND_DRAINS),
            owner_usage: Lazy::new(txn, OWNER_USAGE),
            outbox_changed: false,
            deletes_changed: false,
        }
    }

    /// Open (creating if needed) every table: done once when the database is opened, so
    /// that readers find every table.
    pub fn create_all(&self) -> Result<(), StoreError> {
        self.meta.r()?;
        self.jobs.r()?;
        self.events.r()?;
        self.queue.r()?;
        self.running.r()?;
        self.by_created.r()?;
        self.by_owner.r()?;
        self.workflows.r()?;
        self.workflow_versions.r()?;
        self.blobs.r()?;
        self.blob_chunks.r()?;
        self.blob_deletes.r()?;
        self.audit.r()?;
        self.deliveries.r()?;
        self.deliveries_due.r()?;
        self.deliveries_by_job.r()?;
        self.disabled_endpoints.r()?;
        self.cache.r()?;
        self.cache_by_time.r()?;
        self.idempotency.r()?;
        self.idempotency_by_expiry.r()?;
        self.plugins.r()?;
        self.plugin_artifacts.r()?;
        self.backend_drains.r()?;
        self.owner_usage.r()?;
        Ok(())
    }

    /// Read a `meta` entry.
    pub fn meta_get_opt(&self, key: &'static str) -> Result<Option<u64>, StoreError> {
        use redb::ReadableTable;
        Ok(self.meta.r()?.get(key)?.map(|v| v.value()))
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
        self.meta.w()?.insert(key, new)?;
        Ok(new)
    }
}
