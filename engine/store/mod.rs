//! The durable store: the only module that imports redb.
//!
//! Jobs, their append-only event logs, the queue and running indexes, workflows with
//! every version, an append-only audit log, and a content-addressed, chunked, reference-counted blob store (see
//! `tables` for the layout, `codec` for the record format).
//!
//! Writes go through one writer thread that drains a bounded channel and commits whole
//! batches in one `Durability::Immediate` transaction (group commit); every write call
//! resolves only after the commit that holds it returned. Reads are plain synchronous
//! snapshot reads on the caller's thread. A write transaction that fails to begin or
//! commit stops the store until a restart (`StoreError::Failed`; see `writer`).
//!
//! Invariants (checked when written and when read back):
//! - a job is in `queue` iff its state is `Queued` (under its `queue_key`), and in
//!   `running` iff its state is `Running`;
//! - every job has one `jobs_by_created` entry at its (immutable) `created_ms`, and every
//!   job with an owner one `jobs_by_owner` entry at `(owner, created_ms)` (the owner of a
//!   job never changes);
//! - `queue_key.seq` is assigned by the store, unique, and never changes;
//! - `meta` per-state counts equal the number of jobs in each state;
//! - a blob's `n_refs` is the number of `OutputRef`s and `InputRef`s of all jobs naming
//!   it; a blob whose last reference goes away is deleted with its chunks;
//! - an owner's `owner_usage` is the sum of the sizes of every input and output its jobs
//!   name (see `usage`), and `meta["usage.bytes"]` their total;
//! - with object storage (`Store::open_with`), a new blob's object is uploaded before the
//!   commit that creates its row, under the hash's lock (see `storage`), and a remote
//!   blob's row is never in `blob_deletes` (the reaper's to-do list).

mod audit;
mod backends;
mod backup;
mod blobs;
mod cache;
mod codec;
#[doc(hidden)]
pub mod fuzzing;
mod integrity;
mod jobs;
mod outbox;
mod plugins;
mod prune;
mod space;
mod tables;
mod usage;
mod workflows;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod tests_faults;
#[cfg(test)]
mod tests_listing;
#[cfg(test)]
mod tests_objects;
#[cfg(test)]
mod tests_outbox;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use redb::{Database, ReadTransaction, ReadableDatabase};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::domain::{
    Attempt, AuditEntry, CacheEntry, Delivery, Hash, IdempotencyRecord, Job, JobEvent, JobEventKind, JobId, JobState,
    WorkflowRecord,
};

pub use backup::{Backup, NoSpace};
pub use blobs::{BlobMeta, NewBlob};
pub use cache::Claim;
pub use jobs::{JobPage, JobQuery, QueuedHead};
pub use prune::Pruned;
pub use space::DiskSpace;

use writer::{Msg, WriteOp};

/// How many pending writes may wait for the writer before callers wait to enqueue.
const WRITE_QUEUE_MAX: usize = 4096;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database file (redb's file lock: `DatabaseAlreadyOpen`,
    /// `LockProtocolMismatch`); the text is redb's.
    #[error("redb: {0}")]
    Locked(String),
    /// redb found the file damaged (`Corrupted`); the text is redb's.
    #[error("redb: {0}")]
    Damaged(String),
    /// The file is in an older redb format that must be upgraded first (`UpgradeRequired`).
    #[error("redb: {0}")]
    Upgrade(String),
    /// The database file's I/O failed (redb's `Io`, `Backend`, `Unsupported`, or `PreviousIo`:
    /// an earlier I/O error redb latched); the text is redb's.
    #[error("redb: {0}")]
    FileIo(String),
    /// Any other redb failure (a transaction or table misuse, a value too large, a closed
    /// database, a poisoned lock): a bug, not an operating condition; the text is redb's.
    #[error("redb: {0}")]
    Other(String),
    /// A filesystem operation around the database failed.
    #[error("store i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record or index entry is unreadable or contradicts another.
    #[error("corrupt record in {table}[{key}]: {reason}")]
    Corrupt {
        /// The table it was read from.
        table: &'static str,
        /// The key, printed.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database was written by a newer (or unknown) schema.
    #[error("unsupported store schema version {found} (this build reads {expected})")]
    Schema {
        /// What the file says.
        found: u64,
        /// What this build understands.
        expected: u64,
    },
    /// The store was closed (or its writer stopped); nothing was written.
    #[error("store is closed")]
    Closed,
    /// `update_job`/`complete_job`/`append_events` named a job that does not exist.
    #[error("job {0} not found")]
    JobNotFound(JobId),
    /// `insert_job` named a job id that already exists.
    #[error("job {0} already exists")]
    JobExists(JobId),
    /// The caller handed in a record that breaks a store invariant; nothing was written.
    #[error("invalid write: {0}")]
    Invalid(String),
    /// `insert_job_claiming` named an idempotency key that holds a live record.
    #[error("idempotency key already used for job {}", .0.job_id)]
    IdempotencyTaken(Box<crate::domain::IdempotencyRecord>),
    /// The object storage (S3 bucket) failed: an upload before a commit, or a read of a
    /// remote blob. Nothing was committed.
    #[error("{0}")]
    Objects(#[from] crate::storage::StorageError),
    /// A write transaction failed to begin or commit (a storage I/O error): redb refuses
    /// every later transaction of this process, and the outcome of the failed commit is
    /// unknown, so the store stops (every call fails at once) until a restart recovers it.
    #[error("store failed (restart the gateway to recover): {0}")]
    Failed(String),
    /// A backup's destination has less free space than the database's size plus the
    /// space to keep free (`Store::backup`); nothing was written.
    #[error("not enough space for a backup: {} bytes free, {} needed", .0.free_bytes, .0.needed_bytes)]
    NoSpace(NoSpace),
    /// The operation found nothing to write (a prune with nothing due): no commit, no
    /// fsync; never returned by a public method.
    #[error("nothing to write")]
    Unchanged,
}

impl From<redb::Error> for StoreError {
    /// The one place redb's kinds become ours: callers match on these variants, never on
    /// the text.
    fn from(e: redb::Error) -> Self {
        let text = e.to_string();
        match e {
            redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => StoreError::Locked(text),
            redb::Error::Corrupted(_) => StoreError::Damaged(text),
            redb::Error::UpgradeRequired(_) => StoreError::Upgrade(text),
            redb::Error::Io(_) | redb::Error::Backend(_) | redb::Error::Unsupported | redb::Error::PreviousIo => {
                StoreError::FileIo(text)
            }
            _ => StoreError::Other(text),
        }
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl StoreError {
    /// The same failure for another waiter of a failed batch (each gets its own error):
    /// redb's kinds and `Failed` are kept; the other variants, which a batch failure never
    /// is, keep their text under `Other`.
    pub(crate) fn for_waiter(&self) -> StoreError {
        match self {
            StoreError::Locked(m) => StoreError::Locked(m.clone()),
            StoreError::Damaged(m) => StoreError::Damaged(m.clone()),
            StoreError::Upgrade(m) => StoreError::Upgrade(m.clone()),
            StoreError::FileIo(m) => StoreError::FileIo(m.clone()),
            StoreError::Failed(m) => StoreError::Failed(m.clone()),
            StoreError::Closed => StoreError::Closed,
            e => StoreError::Other(e.to_string()),
        }
    }
}

impl From<StoreError> for crate::error::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Objects(e) => {
                tracing::error!(error = %e, "object storage failed");
                crate::error::Error::new(
                    crate::error::ErrorCode::StorageUnavailable,
                    "the blob storage is unavailable; try again later",
                )
            }
            e => crate::error::Error::internal(e),
        }
    }
}

/// An empty database at `<path>.creating` (what `left` describes, a leftover there, is
/// replaced), for a caller that fills it and renames it to `path`. Mode 0600 from the
/// first byte: a database holds every job's inputs and outputs. redb initialises an empty
/// file it is given.
fn create_creating(path: &Path, left: &str) -> Result<(std::path::PathBuf, Database), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".creating");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => tracing::warn!(path = %tmp.display(), "removed {left}"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    drop(options.open(&tmp)?);
    let db = Database::create(&tmp)?;
    Ok((tmp, db))
}

/// Create a database file at `path` (which does not exist) with every table: built under
/// `<path>.creating` (a leftover of a crash is replaced), then renamed into place. redb
/// writes its magic number last, and refuses a non-empty file without one for good; built
/// in place, a crash during creation could leave exactly such a file at `path`.
fn create_new(path: &Path) -> Result<(), StoreError> {
    let (tmp, db) = create_creating(path, "a database left half-created by a crash")?;
    writer::init_schema(&db)?;
    drop(db);
    std::fs::rename(&tmp, path)?;
    // The rename is durable once the directory is (where a directory can be synced).
    #[cfg(unix)]
    {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Counts for `/capabilities` and metrics; O(1) to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// How many jobs are in each state, in `JobState` declaration order.
    pub n_jobs_by_state: [(JobState, u64); 5],
    /// Distinct blobs stored.
    pub n_blobs: u64,
    /// Sum of their uncompressed sizes.
    pub blob_bytes: u64,
    /// Sum of their stored (after zstd, where used) sizes.
    pub blob_stored_bytes: u64,
    /// Result-cache entries.
    pub n_cache_entries: u64,
    /// Webhook deliveries waiting for an attempt.
    pub n_deliveries_pending: u64,
    /// Objects of remote blobs waiting for deletion (`blob_deletes`).
    pub n_object_deletes_pending: u64,
    /// Bytes of inputs and outputs charged to owners, summed (see `Store::owner_usage`).
    pub usage_bytes: u64,
    /// Owners charged any bytes.
    pub n_owners_with_usage: u64,
}

/// A cheap, cloneable handle on the store (an `Arc` inside).
///
/// Dropping the last handle closes the write channel and joins the writer, which first
/// commits what is queued: it may block for one batch commit.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    /// `None` only while dropping, so the writer sees the channel close.
    tx: Option<mpsc::Sender<Msg>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    commits: Arc<AtomicU64>,
    /// Notified after each commit that made a webhook delivery pending.
    outbox: Arc<Notify>,
    /// Set once by the writer when a write transaction failed (see `StoreError::Failed`).
    failure: Arc<OnceLock<String>>,
    /// Notified after each commit that recorded an object to delete.
    deletes: Arc<Notify>,
    /// The bucket holding new blobs' bytes (None: they go into redb).
    objects: Option<crate::storage::Objects>,
    /// Free space of the database's file system (None: a custom backend, in tests).
    space: Option<Arc<space::Space>>,
    /// `meta["database_id"]`, read once at open (it never changes).
    database_id: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain what is queued and exit; joining it
        // releases its handle on the database before the file lock goes with `db`.
        drop(self.tx.take());
        let handle = self.writer.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("commits", &self.commits()).finish_non_exhaustive()
    }
}

/// redb's own page cache (its default is 1 GiB, which a large queue read at recovery
/// would fill); the kernel's page cache keeps the rest of the file warm.
const CACHE_BYTES: usize = 48 << 20;

impl Store {
    /// Open or create the database file (creating parent dirs), create all tables, start
    /// the writer. A new file is created crash-safely (see `create_new`).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, None)
    }

    /// [`Store::open`], keeping the bytes of new blobs in `objects` (an S3 bucket) when
    /// given: each is uploaded before the commit that references it.
    pub fn open_with(path: &Path, objects: Option<crate::storage::Objects>) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        if !path.try_exists()? {
            create_new(path)?;
        }
        let space = Arc::new(space::Space::new(path));
        Store::start(redb::Builder::new().set_cache_size(CACHE_BYTES).create(path)?, objects, Some(space))
    }

    /// Open a store on a custom redb backend (tests: fault injection).
    #[cfg(test)]
    pub(crate) fn open_backend(backend: impl redb::StorageBackend) -> Result<Store, StoreError> {
        Store::start(redb::Builder::new().create_with_backend(backend)?, None, None)
    }

    fn start(
        db: Database,
        objects: Option<crate::storage::Objects>,
        space: Option<Arc<space::Space>>,
    ) -> Result<Store, StoreError> {
        let db = Arc::new(db);
        let database_id = writer::init_schema(&db)?;
        let commits = Arc::new(AtomicU64::new(0));
        let outbox = Arc::new(Notify::new());
        let failure = Arc::new(OnceLock::new());
        let deletes = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(WRITE_QUEUE_MAX);
        let handle = {
            let db = db.clone();
            let commits = commits.clone();
            let outbox = outbox.clone();
            let failure = failure.clone();
            let deletes = deletes.clone();
            let space = space.clone();
            std::thread::Builder::new().name("store-writer".to_string()).spawn(move || {
                let wake = writer::Wake { outbox: &outbox, deletes: &deletes, space: space.as_deref() };
                writer::run(&db, rx, &commits, wake, &failure)
            })?
        };
        let writer = Mutex::new(Some(handle));
        let inner = Inner { db, tx: Some(tx), writer, commits, outbox, failure, deletes, objects, space, database_id };
        Ok(Store { inner: Arc::new(inner) })
    }

    /// Stop the writer after draining pending writes (idempotent). Writes after this fail
    /// with `Closed`; reads keep working. Dropping every handle also stops the writer.
    pub async fn close(&self) {
        if let Some(tx) = &self.inner.tx {
            let (ack_tx, ack_rx) = oneshot::channel();
            if tx.send(Msg::Close(ack_tx)).await.is_ok() {
                let _ = ack_rx.await;
            }
        }
        let handle = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            // The writer exits right after acknowledging; join off the async threads anyway.
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let _ = rt.spawn_blocking(move || handle.join()).await;
                }
                Err(_) => {
                    let _ = handle.join();
                }
            }
        }
    }

    /// Wait until a commit makes a webhook delivery pending (a new delivery or a
    /// redelivery); a commit before the call counts once (`Notify` keeps one permit).
    pub async fn outbox_changed(&self) {
        self.inner.outbox.notified().await;
    }

    /// Wait until a commit records an object to delete (a permit is kept, like
    /// [`Store::outbox_changed`]).
    pub async fn deletes_changed(&self) {
        self.inner.deletes.notified().await;
    }

    /// The bucket holding blob bytes, with object storage.
    pub fn objects(&self) -> Option<&crate::storage::Objects> {
        self.inner.objects.as_ref()
    }

    /// This database's id: 16 lowercase hex digits of a random number chosen when the file
    /// was created (or first opened by a version that had none); a copy of the file keeps
    /// it. `/livez` reports it, so the CLI can tell which running gateway holds a database.
    pub fn database_id(&self) -> String {
        format!("{:016x}", self.inner.database_id)
    }

    /// How many write transactions the writer has committed since `open` (group commit
    /// makes this much smaller than the number of write calls under load).
    pub fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::Relaxed)
    }

    /// Why the store stopped, once a write transaction failed (`StoreError::Failed`);
    /// `None` while it works. The gateway reports it as unhealthy.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.get().cloned()
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match self.inner.failure.get() {
            Some(reason) => Err(StoreError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    /// A snapshot read transaction; `Failed` at once after a storage failure.
    fn read_txn(&self) -> Result<ReadTransaction, StoreError> {
        self.check_failed()?;
        Ok(self.inner.db.begin_read()?)
    }

    async fn submit<O: WriteOp>(&self, op: O) -> Result<O::Out, StoreError> {
        self.check_failed()?;
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.send(Msg::Write(writer::pending(op, reply_tx))).await.map_err(|_| StoreError::Closed)?;
        reply_rx.await.map_err(|_| StoreError::Closed)?
    }

    // ---- writes: each resolves only after its transaction committed (Durability::Immediate).

    /// Insert a new job: assigns `job.queue_key.seq` from a persisted monotonic counter
    /// (the caller fills `rank_ms`), writes the record, the queue index entry if Queued, the
    /// running index entry if Running, the listing entry, and appends `events`. Returns the job as stored.
    /// `JobExists` if the id is taken. A job may be inserted with outputs (a cache hit)
    /// only if their blobs are already stored.
    pub async fn insert_job(&self, job: Job, events: Vec<JobEventKind>) -> Result<Job, StoreError> {
        self.insert_job_with_blobs(job, Vec::new(), events).await
    }

    /// [`Store::insert_job`], storing in the same transaction the blobs of the job's image
    /// inputs (`job.inputs`; deduplicated by hash, each gaining one reference per input that
    /// names it). Each new blob's hash is verified against its bytes (`Invalid` if not).
    pub async fn insert_job_with_blobs(
        &self,
        job: Job,
        blobs: Vec<NewBlob>,
        events: Vec<JobEventKind>,
    ) -> Result<Job, StoreError> {
        let wanted = blobs::job_refs(&job);
        // Held until the commit returned: see `storage` (uploads against deletions).
        let (blobs, _held) = self.prepare_blobs(blobs, &wanted).await?;
        self.submit(jobs::InsertJob { job, blobs, events, claim: None }).await
    }

    /// [`Store::insert_job_with_blobs`], claiming an idempotency key in the same
    /// transaction: `IdempotencyTaken` (nothing written) if the key holds a record that has
    /// not expired and whose job is still stored; an expired or orphaned record is replaced.
    pub async fn insert_job_claiming(
        &self,
        job: Job,
        blobs: Vec<NewBlob>,
        events: Vec<JobEventKind>,
        claim: Option<Claim>,
    ) -> Result<Job, StoreError> {
        let wanted = blobs::job_refs(&job);
        let (blobs, _held) = self.prepare_blobs(blobs, &wanted).await?;
        self.submit(jobs::InsertJob { job, blobs, events, claim }).await
    }

    /// Replace a job record and append events, keeping the indexes consistent: in the
    /// queue index iff `state == Queued` (keyed by its `queue_key`; the old key is removed
    /// if it changed), in the running index iff `state == Running`. `JobNotFound` (nothing
    /// written) if the job does not exist; `Invalid` if `queue_key.seq` differs from the
    /// stored one (the store assigns it), `created_ms` changed, or outputs name blobs that
    /// are not stored.
    /// Blob references follow `job.outputs` (see `complete_job`).
    pub async fn update_job(&self, job: Job, events: Vec<JobEventKind>) -> Result<(), StoreError> {
        self.complete_job(job, Vec::new(), events).await
    }

    /// Like `update_job`, and in the same transaction store `blobs` (dedupe by hash: an
    /// existing blob is not rewritten; a blob no output names is not stored) and add one
    /// reference per `job.outputs` entry to each referenced blob. References are the
    /// difference between the old and new `outputs`, so repeating a completion does not
    /// count twice. Each new blob's hash is verified against its bytes (`Invalid` if not).
    pub async fn complete_job(
        &self,
        job: Job,
        blobs: Vec<NewBlob>,
        events: Vec<JobEventKind>,
    ) -> Result<(), StoreError> {
        let wanted = blobs::job_refs(&job);
        let (blobs, _held) = self.prepare_blobs(blobs, &wanted).await?;
        self.submit(jobs::UpdateJob { job, blobs, events }).await
    }

    /// Append events only (e.g. progress) without touching the record.
    pub async fn append_events(&self, id: JobId, events: Vec<JobEventKind>) -> Result<(), StoreError> {
        self.submit(jobs::AppendEvents { id, events }).await
    }

    /// Store a new version of a workflow: `version` = previous + 1 (or 1; versions of a
    /// deleted workflow count too, so a number is never reused); keeps every version.
    /// Returns the record as stored.
    pub async fn put_workflow(&self, rec: WorkflowRecord) -> Result<WorkflowRecord, StoreError> {
        self.submit(workflows::PutWorkflow { rec }).await
    }

    /// Register only if no workflow with that id ever existed (for bundled workflows on
    /// first start: one the user deleted stays deleted). Whether it was stored.
    pub async fn put_workflow_if_absent(&self, rec: WorkflowRecord) -> Result<bool, StoreError> {
        self.submit(workflows::PutWorkflowIfAbsent { rec }).await
    }

    /// Remove a workflow (its versions stay readable by version for jobs that used them).
    /// false if absent.
    pub async fn delete_workflow(&self, id: &str) -> Result<bool, StoreError> {
        self.submit(workflows::DeleteWorkflow { id: id.to_string() }).await
    }

    /// Record one attempt of a pending webhook delivery in one commit: the delivery's state,
    /// attempts, next due time and last result; its due index; a `Webhook` entry in the
    /// job's log; and with [`AttemptNext::Disable`] the endpoint (its URL) as disabled.
    /// `Invalid` if the delivery is unknown or not pending. Returns it as updated.
    ///
    /// [`AttemptNext::Disable`]: crate::domain::AttemptNext::Disable
    pub async fn record_attempt(&self, seq: u64, attempt: Attempt) -> Result<Delivery, StoreError> {
        self.submit(outbox::RecordAttempt { seq, attempt }).await
    }

    /// Put every delivery of a job back to pending, due at `now_ms` (same `webhook-id`,
    /// attempts kept), and re-enable their endpoints. Returns them.
    pub async fn redeliver(&self, job: JobId, now_ms: u64) -> Result<Vec<Delivery>, StoreError> {
        self.submit(outbox::Redeliver { job, now_ms }).await
    }

    /// Delete up to `limit` terminal jobs that finished before `finished_before_ms` (with
    /// their events, deliveries and blob references; a job with a pending delivery waits),
    /// up to `limit` cache entries created before `cache_before_ms`, and up to `limit`
    /// idempotency records expired at `now_ms`. One commit; a blob whose last reference
    /// goes is deleted with it.
    pub async fn prune(
        &self,
        finished_before_ms: u64,
        cache_before_ms: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Pruned, StoreError> {
        match self.submit(prune::Prune { finished_before_ms, cache_before_ms, now_ms, limit }).await {
            Err(StoreError::Unchanged) => Ok(Pruned::default()),
            other => other,
        }
    }

    /// Store a plugin component (if new; `Invalid` if `wasm` does not hash to `hash`) and
    /// its precompiled artifact for the engine compatibility hash `compat`. An empty `wasm`
    /// stores only the artifact of an already stored component.
    pub async fn put_plugin(
        &self,
        hash: Hash,
        wasm: Vec<u8>,
        compat: Hash,
        precompiled: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.submit(plugins::PutPlugin { hash, wasm, compat, precompiled }).await
    }

    /// A plugin component's bytes.
    pub fn plugin_wasm(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read_txn()?;
        plugins::wasm(&txn, hash)
    }

    /// A plugin's precompiled artifact for an engine compatibility hash.
    pub fn plugin_artifact(&self, hash: &Hash, compat: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read_txn()?;
        plugins::artifact(&txn, hash, compat)
    }

    /// Record that backend `id` is drained since `since_ms` (None: resumed). A drain that
    /// is already recorded keeps its time.
    pub async fn set_backend_drain(&self, id: &str, since_ms: Option<u64>) -> Result<(), StoreError> {
        self.submit(backends::SetDrain { id: id.to_string(), since_ms }).await
    }

    /// The drained backends (id, since ms), by id.
    pub fn drained_backends(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let txn = self.read_txn()?;
        backends::drained(&txn)
    }

    /// Append an entry to the audit log; its sequence number (from 1, increasing).
    pub async fn append_audit(&self, entry: AuditEntry) -> Result<u64, StoreError> {
        self.submit(audit::AppendAudit { entry }).await
    }

    /// Verify hashes and compress new blobs off the writer thread (and off the async
    /// workers when a runtime is there); blobs already stored are passed through as-is.
    /// With object storage, upload them instead (see [`Store::upload_blobs`]); the locks
    /// returned must be held until the commit that references them returned.
    async fn prepare_blobs(
        &self,
        blobs: Vec<NewBlob>,
        wanted: &[blobs::BlobUse],
    ) -> Result<(Vec<blobs::Payload>, Option<crate::storage::Held>), StoreError> {
        if blobs.is_empty() {
            return Ok((Vec::new(), None));
        }
        if let Some(objects) = &self.inner.objects {
            let (payloads, held) = self.upload_blobs(objects, blobs, wanted).await?;
            return Ok((payloads, Some(held)));
        }
        Ok((self.prepare_local(blobs).await?, None))
    }

    /// Lock the stripes of the blobs a job names, then PUT each whose row is absent (or
    /// local): the object exists before any commit can name it, and no reaper can delete
    /// it until the locks go. Blobs no output or input names are left out (never stored).
    async fn upload_blobs(
        &self,
        objects: &crate::storage::Objects,
        blobs: Vec<NewBlob>,
        wanted: &[blobs::BlobUse],
    ) -> Result<(Vec<blobs::Payload>, crate::storage::Held), StoreError> {
        let mut todo: Vec<NewBlob> = Vec::with_capacity(blobs.len());
        for blob in blobs {
            if wanted.iter().any(|w| w.hash == blob.hash) && !todo.iter().any(|b| b.hash == blob.hash) {
                todo.push(blob);
            }
        }
        let held = objects.locks().lock(todo.iter().map(|b| b.hash)).await;
        let mut out = Vec::with_capacity(todo.len());
        for blob in todo {
            let stored_remote = self.blob_meta(&blob.hash)?.is_some_and(|m| m.remote);
            if !stored_remote {
                let check = blob.clone();
                tokio::task::spawn_blocking(move || blobs::verify_hash(&check))
                    .await
                    .map_err(|e| StoreError::Invalid(format!("blob check failed: {e}")))??;
                objects.put(&blob.hash, blob.bytes.clone()).await?;
                crate::failpoints::crash_point(crate::failpoints::OBJECT_UPLOADED);
            }
            out.push(blobs::Payload::Prepared(blobs::remote(&blob)));
        }
        Ok((out, held))
    }

    async fn prepare_local(&self, blobs: Vec<NewBlob>) -> Result<Vec<blobs::Payload>, StoreError> {
        let store = self.clone();
        let work = move || -> Result<Vec<blobs::Payload>, StoreError> {
            let txn = store.read_txn()?;
            let table = txn.open_table(tables::BLOBS)?;
            let mut out = Vec::with_capacity(blobs.len());
            for blob in blobs {
                if table.get(&blob.hash)?.is_some() {
                    out.push(blobs::Payload::Unprepared(blob));
                } else {
                    out.push(blobs::Payload::Prepared(blobs::prepare(blob)?));
                }
            }
            Ok(out)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt
                .spawn_blocking(work)
                .await
                .map_err(|e| StoreError::Invalid(format!("blob preparation failed: {e}")))?,
            Err(_) => work(),
        }
    }

    // ---- reads: snapshot reads, callable from any thread, short.

    /// The job, if it exists.
    pub fn get_job(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        let txn = self.read_txn()?;
        jobs::load_job(&txn.open_table(tables::JOBS)?, id.as_u128())
    }

    /// Every queued job, in `QueueKey` order (the dispatch order).
    pub fn queued_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let txn = self.read_txn()?;
        jobs::queued_jobs(&txn)
    }

    /// The queued jobs in dispatch order, only what the memory queue needs of each (the
    /// records' heads; see `jobs::queued_heads`).
    pub fn queued_heads(&self) -> Result<Vec<QueuedHead>, StoreError> {
        let txn = self.read_txn()?;
        jobs::queued_heads(&txn)
    }

    /// Every unfinished job (queued, then running) with its owner, read from the records'
    /// heads (see `jobs::unfinished_owners`): what the per-client job cap counts at start.
    pub fn unfinished_owners(&self) -> Result<Vec<(JobId, Option<String>)>, StoreError> {
        let txn = self.read_txn()?;
        jobs::unfinished_owners(&txn)
    }

    /// Just the queue index: `(queue key, job id)` in dispatch order, without the records.
    pub fn queued_ids(&self) -> Result<Vec<(crate::domain::QueueKey, JobId)>, StoreError> {
        let txn = self.read_txn()?;
        jobs::queued_ids(&txn)
    }

    /// A page of all jobs, newest first (by `created_ms`, then id): those `keep` accepts,
    /// up to `limit`, strictly after `cursor` (the `(created_ms, id)` of the last job of
    /// the previous page). A filter that matches little scans far: O(jobs scanned).
    pub fn list_jobs(
        &self,
        cursor: Option<(u64, JobId)>,
        limit: usize,
        keep: impl Fn(&Job) -> bool,
    ) -> Result<Vec<Job>, StoreError> {
        let txn = self.read_txn()?;
        jobs::list_jobs(&txn, cursor, limit, &keep)
    }

    /// A page of jobs for `GET /jobs` (see [`JobQuery`]): newest first, walking the owner
    /// index for `owner` and the creation index otherwise, between the time bounds, at
    /// most `scan_max` entries and `bytes_max` bytes of records: O(`scan_max`), not O(jobs).
    pub fn list_jobs_page(&self, query: &JobQuery<'_>) -> Result<JobPage, StoreError> {
        let txn = self.read_txn()?;
        jobs::list_page(&txn, query)
    }

    /// Every running job, by id.
    pub fn running_jobs(&self) -> Result<Vec<Job>, StoreError> {
        let txn = self.read_txn()?;
        jobs::running_jobs(&txn)
    }

    /// Up to `limit` events of a job with seq > `after_seq` (all when None), oldest first.
    /// Seq starts at 1 per job.
    pub fn job_events(
        &self,
        id: JobId,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, JobEvent)>, StoreError> {
        let txn = self.read_txn()?;
        jobs::job_events(&txn, id, after_seq, limit)
    }

    /// The current version of a workflow, unless deleted.
    pub fn get_workflow(&self, id: &str) -> Result<Option<WorkflowRecord>, StoreError> {
        let txn = self.read_txn()?;
        workflows::get(&txn, id)
    }

    /// One version of a workflow, even if the workflow was deleted since.
    pub fn get_workflow_version(&self, id: &str, version: u32) -> Result<Option<WorkflowRecord>, StoreError> {
        let txn = self.read_txn()?;
        workflows::get_version(&txn, id, version)
    }

    /// The current versions of all workflows, by id.
    pub fn list_workflows(&self) -> Result<Vec<WorkflowRecord>, StoreError> {
        let txn = self.read_txn()?;
        workflows::list(&txn)
    }

    /// A page of the audit log, newest first: up to `limit` entries with a sequence number
    /// below `before` (the last one of the previous page), with their sequence numbers.
    pub fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<(u64, AuditEntry)>, StoreError> {
        let txn = self.read_txn()?;
        audit::page(&txn, before, limit)
    }

    /// Pending webhook deliveries due at `now_ms`, earliest first, up to `limit`.
    pub fn due_deliveries(&self, now_ms: u64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let txn = self.read_txn()?;
        outbox::due(&txn, now_ms, limit, limit, |_| false)
    }

    /// Pending webhook deliveries due at `now_ms`, earliest first: up to `load_max`, among
    /// the first `scan_max` due ones, skipping (without reading them) those whose seq
    /// `skip` names. The worker skips deliveries in flight or waiting for a busy destination.
    pub fn due_deliveries_skipping(
        &self,
        now_ms: u64,
        scan_max: usize,
        load_max: usize,
        skip: impl FnMut(u64) -> bool,
    ) -> Result<Vec<Delivery>, StoreError> {
        let txn = self.read_txn()?;
        outbox::due(&txn, now_ms, scan_max, load_max, skip)
    }

    /// When the earliest pending delivery is due.
    pub fn next_delivery_due_ms(&self) -> Result<Option<u64>, StoreError> {
        let txn = self.read_txn()?;
        outbox::next_due(&txn)
    }

    /// Every delivery of a job, oldest first.
    pub fn job_deliveries(&self, job: JobId) -> Result<Vec<Delivery>, StoreError> {
        let txn = self.read_txn()?;
        outbox::of_job(&txn, job)
    }

    /// When the endpoint (exact callback URL) was disabled by a 410, if it is.
    pub fn endpoint_disabled_ms(&self, url: &str) -> Result<Option<u64>, StoreError> {
        let txn = self.read_txn()?;
        outbox::disabled_since(&txn, url)
    }

    /// The result-cache entry under `key`, if stored (expired or not).
    pub fn cache_entry(&self, key: &Hash) -> Result<Option<CacheEntry>, StoreError> {
        let txn = self.read_txn()?;
        cache::get(&txn, key)
    }

    /// The idempotency record under a scoped key (`"<owner>\n<key>"`), expired or not.
    pub fn idempotency_record(&self, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let txn = self.read_txn()?;
        cache::get_claim(&txn, key)
    }

    /// A blob's metadata, if stored.
    pub fn blob_meta(&self, hash: &Hash) -> Result<Option<BlobMeta>, StoreError> {
        let txn = self.read_txn()?;
        blobs::meta(&txn, hash)
    }

    /// A blob's bytes, decompressed and verified against the hash (`Corrupt` if not).
    /// `Invalid` for a remote blob (see [`Store::blob_bytes`]).
    pub fn read_blob(&self, hash: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read_txn()?;
        blobs::read(&txn, hash)
    }

    /// A blob's bytes wherever they are (redb chunks or the bucket), verified against the
    /// hash. `Objects` if the bucket fails; also when the blob is remote and this store was
    /// opened without the bucket.
    pub async fn blob_bytes(&self, hash: &Hash) -> Result<Option<bytes::Bytes>, StoreError> {
        let Some(meta) = self.blob_meta(hash)? else { return Ok(None) };
        if !meta.remote {
            return Ok(self.read_blob(hash)?.map(bytes::Bytes::from));
        }
        let objects = self.inner.objects.as_ref().ok_or_else(|| {
            crate::storage::StorageError::Failed(format!(
                "blob {} is in object storage, but STORAGE_PROVIDER is not s3",
                crate::domain::hash_hex(hash)
            ))
        })?;
        Ok(Some(objects.get(hash).await?))
    }

    /// Every blob whose bytes are in the bucket (for `check`; O(blobs)).
    pub fn remote_blobs(&self) -> Result<Vec<Hash>, StoreError> {
        let txn = self.read_txn()?;
        blobs::remote_hashes(&txn)
    }

    /// Up to `limit` remote blobs whose object waits for deletion (hash, when the row went).
    pub fn pending_deletes(&self, limit: usize) -> Result<Vec<(Hash, u64)>, StoreError> {
        let txn = self.read_txn()?;
        blobs::pending_deletes(&txn, limit)
    }

    /// Whether the object of `hash` may be deleted now (its deletion is pending: no row).
    /// Meaningful only under the hash's lock (see `storage`).
    pub fn delete_due(&self, hash: &Hash) -> Result<bool, StoreError> {
        let txn = self.read_txn()?;
        blobs::delete_due(&txn, hash)
    }

    /// Clear the pending deletion of `hash` after its object was deleted (a no-op, without
    /// a commit, if nothing is pending).
    pub async fn finish_delete(&self, hash: Hash) -> Result<(), StoreError> {
        match self.submit(blobs::FinishDelete { hash }).await {
            Err(StoreError::Unchanged) | Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The space new writes can use on the database's file system, from cached readings
    /// (refreshed after commits, see `space::Space::refresh_after_commit`, by
    /// [`Store::refresh_space`] and [`Store::measure_space`]): O(1). None for a store without a file (tests).
    pub fn disk_space(&self) -> Result<Option<DiskSpace>, StoreError> {
        let Some(space) = &self.inner.space else { return Ok(None) };
        // The stored blob bytes only matter against a measurement (the common case has
        // none: space was never low), and reading them takes a read transaction.
        let blob_bytes = if space.measured_once() { self.blob_stored_bytes()? } else { 0 };
        Ok(Some(space.get(blob_bytes)))
    }

    /// Read the file system's free space again (two system calls).
    pub fn refresh_space(&self) {
        if let Some(space) = &self.inner.space {
            space.refresh();
        }
    }

    /// Measure how much of the database file redb freed and can reuse (see `space`): the
    /// writer releases the pages earlier commits freed (an empty commit) and counts the
    /// allocated ones, a walk over every page of the database that holds the writer, so
    /// call it only while space is low. Returns the new readings.
    pub async fn measure_space(&self) -> Result<Option<DiskSpace>, StoreError> {
        let Some(space) = &self.inner.space else { return Ok(None) };
        self.check_failed()?;
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        let blob_bytes = self.blob_stored_bytes()?;
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.send(Msg::Measure(reply_tx)).await.map_err(|_| StoreError::Closed)?;
        let allocated = reply_rx.await.map_err(|_| StoreError::Closed)??;
        space.measured(allocated, blob_bytes);
        Ok(Some(space.get(self.blob_stored_bytes()?)))
    }

    fn blob_stored_bytes(&self) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        let meta = txn.open_table(tables::META)?;
        Ok(meta.get(tables::meta_key::BLOBS_STORED_BYTES)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The bytes of inputs and outputs the jobs of `owner` hold (None: jobs without an
    /// owner), each blob charged in full to every job naming it (see `usage`). O(1).
    pub fn owner_usage(&self, owner: Option<&str>) -> Result<u64, StoreError> {
        let txn = self.read_txn()?;
        usage::of_owner(&txn, owner.unwrap_or(""))
    }

    /// Scan everything and check every cross-table invariant (indexes against states,
    /// counters against counts, blob references against outputs, chunks against records).
    /// O(size of the database): for tests, `init` and operators, not for request paths.
    pub fn verify_integrity(&self) -> Result<(), StoreError> {
        let txn = self.read_txn()?;
        integrity::verify(&txn)
    }

    /// Job counts per state and blob totals, from counters kept in `meta`.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let txn = self.read_txn()?;
        stats_in(&txn)
    }

    /// Write a consistent copy of the committed state to `dest` while the store keeps
    /// working: every table of one read snapshot (the writer is never held), built under
    /// `<dest>.creating`, checked with [`Store::verify_integrity`]'s check and its counts
    /// against the snapshot's, then renamed into place (an existing `dest` is replaced).
    /// `NoSpace` (nothing written) when `dest`'s file system has less free space than the
    /// database file's size plus `keep_free_bytes`. Blocking, O(size of the database): run
    /// it on a blocking thread.
    pub fn backup(&self, dest: &Path, keep_free_bytes: u64) -> Result<Backup, StoreError> {
        let txn = self.read_txn()?;
        if let Some(space) = &self.inner.space {
            let db_bytes = std::fs::metadata(space.file())?.len();
            if let Err(no) = backup::room_for(dest, db_bytes, keep_free_bytes)? {
                return Err(StoreError::NoSpace(no));
            }
        }
        let snapshot = stats_in(&txn)?;
        backup::copy_all(&txn, &snapshot, dest)
    }

    /// Check a backup (or any database file no process holds) without writing to it:
    /// opened read-only, every invariant of [`Store::verify_integrity`] checked; its counts.
    pub fn verify_file(path: &Path) -> Result<StoreStats, StoreError> {
        backup::verify_file(path)
    }
}

/// The counters of [`Store::stats`] as `txn` sees them.
fn stats_in(txn: &ReadTransaction) -> Result<StoreStats, StoreError> {
    let meta = txn.open_table(tables::META)?;
    let get = |key: &str| -> Result<u64, StoreError> { Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0)) };
    let states = [JobState::Queued, JobState::Running, JobState::Succeeded, JobState::Failed, JobState::Canceled];
    let mut n_jobs_by_state = states.map(|s| (s, 0));
    for entry in n_jobs_by_state.iter_mut() {
        entry.1 = get(tables::state_count_key(entry.0))?;
    }
    Ok(StoreStats {
        n_jobs_by_state,
        n_blobs: get(tables::meta_key::BLOBS_COUNT)?,
        blob_bytes: get(tables::meta_key::BLOBS_BYTES)?,
        blob_stored_bytes: get(tables::meta_key::BLOBS_STORED_BYTES)?,
        n_cache_entries: get(tables::meta_key::CACHE_ENTRIES)?,
        n_deliveries_pending: get(tables::meta_key::DELIVERIES_PENDING)?,
        n_object_deletes_pending: {
            use redb::ReadableTableMetadata;
            txn.open_table(tables::BLOB_DELETES)?.len()?
        },
        usage_bytes: get(tables::meta_key::USAGE_BYTES)?,
        n_owners_with_usage: {
            use redb::ReadableTableMetadata;
            txn.open_table(tables::OWNER_USAGE)?.len()?
        },
    })
}
