//! The writer thread: group commit.
//!
//! Write calls enqueue a `Pending` operation on a bounded channel. The writer takes one,
//! drains whatever else is waiting (up to a batch cap), applies them all in one write
//! transaction, commits it with `Durability::Immediate`, and only then answers each
//! caller. One fsync thus covers every write that arrived while the previous one ran.
//!
//! Each operation is split in two: `check` sees the tables read-only (the type forbids
//! writes) and may reject the operation, which then simply drops out of the batch;
//! `write` applies the checked plan. A failure inside `write` may leave a partial write
//! in the shared transaction, so the whole transaction is aborted and the batch replayed
//! without that operation. A commit failure fails every operation of the batch.
//!
//! A write transaction that fails to begin or to commit is a storage failure: redb
//! latches the I/O error (every later transaction of this `Database` fails with
//! `PreviousIo`, even if the disk recovered) and the failed commit may or may not be
//! durable. The writer records the failure once and from then answers every write with
//! `StoreError::Failed` without touching redb; a restart reopens the file, where redb's
//! recovery decides the commit and the scheduler rebuilds its state from what is there.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{Notify, mpsc, oneshot};

use super::StoreError;
use super::tables::{SCHEMA_VERSION, WriteTables, meta_key};

/// At most this many operations share one transaction.
const BATCH_OPS_MAX: usize = 1024;
/// Stop draining into a batch once its blob payloads reach this many bytes.
const BATCH_PAYLOAD_BYTES_MAX: usize = 64 * 1024 * 1024;

/// One kind of write.
pub(crate) trait WriteOp: Send + 'static {
    /// What the caller gets back after the commit.
    type Out: Send + 'static;
    /// What `check` hands to `write`.
    type Plan;
    /// Validate against the current state (including earlier writes of the same batch)
    /// and compute everything that can fail without writing. An error rejects the op.
    fn check(&self, t: &WriteTables<'_>) -> Result<Self::Plan, StoreError>;
    /// Apply the plan. An error here poisons the transaction (see the module docs).
    fn write(&self, plan: Self::Plan, t: &mut WriteTables<'_>) -> Result<Self::Out, StoreError>;
    /// Bytes of payload this op carries (for batch sizing).
    fn payload_bytes(&self) -> usize {
        0
    }
}

/// What happened when an op was applied to the batch transaction.
pub(crate) enum Applied {
    /// Written; answer after the commit.
    Written,
    /// Rejected by `check`: nothing written, answer with this error.
    Rejected(StoreError),
    /// Failed in `write`: the transaction holds a partial write.
    Poisoned(StoreError),
}

/// A type-erased op waiting for its commit, with the caller's answer channel.
pub(crate) trait Pending: Send {
    /// Apply to the batch transaction, keeping the output until the answer.
    fn apply(&mut self, t: &mut WriteTables<'_>) -> Applied;
    /// Payload bytes (for batch sizing).
    fn payload_bytes(&self) -> usize;
    /// Answer the caller: the output of the last successful `apply`, or `error`.
    fn answer(self: Box<Self>, error: Option<StoreError>);
}

struct PendingOp<O: WriteOp> {
    op: O,
    out: Option<O::Out>,
    reply: oneshot::Sender<Result<O::Out, StoreError>>,
}

impl<O: WriteOp> Pending for PendingOp<O> {
    fn apply(&mut self, t: &mut WriteTables<'_>) -> Applied {
        self.out = None;
        let plan = match self.op.check(t) {
            Ok(plan) => plan,
            Err(e) => return Applied::Rejected(e),
        };
        match self.op.write(plan, t) {
            Ok(out) => {
                self.out = Some(out);
                Applied::Written
            }
            Err(e) => Applied::Poisoned(e),
        }
    }

    fn payload_bytes(&self) -> usize {
        self.op.payload_bytes()
    }

    fn answer(self: Box<Self>, error: Option<StoreError>) {
        let result = match (error, self.out) {
            (Some(e), _) => Err(e),
            (None, Some(out)) => Ok(out),
            // Only answered without error after `apply` returned `Written`.
            (None, None) => Err(StoreError::Closed),
        };
        // The caller may have gone away (its future dropped); the write stands.
        let _ = self.reply.send(result);
    }
}

/// Wrap an op and its answer channel for the writer.
pub(crate) fn pending<O: WriteOp>(op: O, reply: oneshot::Sender<Result<O::Out, StoreError>>) -> Box<dyn Pending> {
    Box::new(PendingOp { op, out: None, reply })
}

/// A message to the writer.
pub(crate) enum Msg {
    /// A write to batch.
    Write(Box<dyn Pending>),
    /// Stop accepting writes, finish the queued ones, then acknowledge.
    Close(oneshot::Sender<()>),
    /// Measure the bytes of the pages redb has allocated (see `space`), after the batch.
    Measure(oneshot::Sender<Result<u64, StoreError>>),
}

/// Create every table, check (or set) the schema version and set the database id if it has
/// none, in one durable commit; the database id.
pub(crate) fn init_schema(db: &Database) -> Result<u64, StoreError> {
    let txn = begin(db)?;
    let (migrate, database_id) = {
        let mut t = WriteTables::open(&txn);
        t.create_all()?;
        let migrate = match t.meta_get_opt(meta_key::SCHEMA_VERSION)? {
            None => {
                t.meta.w()?.insert(meta_key::SCHEMA_VERSION, SCHEMA_VERSION)?;
                false
            }
            Some(SCHEMA_VERSION) => false,
            // Schema 1 lacks the owner index: built before the writer starts.
            Some(1) => true,
            Some(found) => {
                return Err(StoreError::Schema { found, expected: SCHEMA_VERSION });
            }
        };
        super::usage::build_if_missing(&mut t)?;
        let database_id = match t.meta_get_opt(meta_key::DATABASE_ID)? {
            Some(id) => id,
            None => {
                // 64 random bits, never 0: which gateway holds which database (`/livez`).
                let id = rand::random::<u64>().max(1);
                t.meta.w()?.insert(meta_key::DATABASE_ID, id)?;
                id
            }
        };
        (migrate, database_id)
    };
    txn.commit()?;
    if migrate {
        super::jobs::migrate_owners(db)?;
    }
    Ok(database_id)
}

pub(crate) fn begin(db: &Database) -> Result<WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    Ok(txn)
}

/// Who the writer wakes after a commit.
#[derive(Clone, Copy)]
pub(crate) struct Wake<'a> {
    /// The webhook worker, after a commit that made a delivery pending.
    pub outbox: &'a Notify,
    /// The object reaper, after a commit that recorded an object to delete.
    pub deletes: &'a Notify,
    /// The free-space readings, refreshed after commits (`Space::refresh_after_commit`).
    pub space: Option<&'a super::space::Space>,
}

/// The writer loop; returns when the channel is closed and drained.
pub(crate) fn run(
    db: &Database,
    mut rx: mpsc::Receiver<Msg>,
    commits: &AtomicU64,
    wake: Wake<'_>,
    failure: &OnceLock<String>,
) {
    let mut closers = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut measures = Vec::new();
        let mut batch = Vec::new();
        let mut payload_bytes = 0;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Write(p) => {
                    payload_bytes += p.payload_bytes();
                    batch.push(p);
                }
                Msg::Close(ack) => {
                    // Later sends fail with `Closed`; what is already queued still drains.
                    rx.close();
                    closers.push(ack);
                }
                Msg::Measure(reply) => measures.push(reply),
            }
            if batch.len() < BATCH_OPS_MAX && payload_bytes < BATCH_PAYLOAD_BYTES_MAX {
                next = rx.try_recv().ok();
            }
        }
        if let Some(reason) = failure.get() {
            for p in batch {
                p.answer(Some(StoreError::Failed(reason.clone())));
            }
        } else if !batch.is_empty() {
            commit_batch(db, batch, commits, wake, failure);
        }
        if !measures.is_empty() {
            // One measurement answers every request that arrived with this batch.
            let result = measure(db, failure);
            if let Some(space) = wake.space {
                space.refresh();
            }
            for reply in measures {
                let _ = reply.send(result.as_ref().copied().map_err(StoreError::for_waiter));
            }
        }
    }
    for ack in closers {
        let _ = ack.send(());
    }
}

/// Apply and commit one batch, answering every op in it.
fn commit_batch(
    db: &Database,
    mut batch: Vec<Box<dyn Pending>>,
    commits: &AtomicU64,
    wake: Wake<'_>,
    failure: &OnceLock<String>,
) {
    while !batch.is_empty() {
        let txn = match begin(db) {
            Ok(txn) => txn,
            Err(e) => {
                fail_store(failure, &e);
                return fail_all(batch, &e);
            }
        };
        let mut rejected: Vec<Option<StoreError>> = Vec::with_capacity(batch.len());
        let mut poisoned = None;
        let (outbox_changed, deletes_changed);
        {
            let mut t = WriteTables::open(&txn);
            for (i, p) in batch.iter_mut().enumerate() {
                match p.apply(&mut t) {
                    Applied::Written => rejected.push(None),
                    Applied::Rejected(e) => rejected.push(Some(e)),
                    Applied::Poisoned(e) => {
                        poisoned = Some((i, e));
                        break;
                    }
                }
            }
            outbox_changed = t.outbox_changed;
            deletes_changed = t.deletes_changed;
        }
        if let Some((i, e)) = poisoned {
            tracing::error!(error = %e, "store write failed; replaying its batch without it");
            if let Err(abort) = txn.abort() {
                tracing::error!(error = %abort, "store abort failed");
            }
            batch.remove(i).answer(Some(e));
            continue;
        }
        if rejected.iter().all(Option::is_some) {
            // Nothing was written (`check` cannot write): no commit, no fsync.
            if let Err(abort) = txn.abort() {
                tracing::error!(error = %abort, "store abort failed");
            }
            for (p, error) in batch.into_iter().zip(rejected) {
                p.answer(error);
            }
            return;
        }
        let committed = if crate::failpoints::fault_point(crate::failpoints::STORE_COMMIT_FAILS) {
            if let Err(abort) = txn.abort() {
                tracing::error!(error = %abort, "store abort failed");
            }
            Err(redb::CommitError::Storage(redb::StorageError::Io(std::io::Error::other(
                "injected disk error (failpoint store-commit-fails)",
            ))))
        } else {
            txn.commit()
        };
        match committed {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
                if let Some(space) = wake.space {
                    space.refresh_after_commit(batch.iter().map(|p| p.payload_bytes()).sum());
                }
                if outbox_changed {
                    wake.outbox.notify_one();
                }
                if deletes_changed {
                    wake.deletes.notify_one();
                }
                for (p, error) in batch.into_iter().zip(rejected) {
                    p.answer(error);
                }
            }
            Err(e) => {
                let e = StoreError::from(e);
                tracing::error!(error = %e, "store commit failed");
                fail_store(failure, &e);
                for (p, error) in batch.into_iter().zip(rejected) {
                    p.answer(Some(error.unwrap_or_else(|| e.for_waiter())));
                }
            }
        }
        return;
    }
}

/// The bytes of the pages redb has allocated. An empty durable commit first releases the
/// pages that earlier commits freed (redb frees them at the next commit), so a prune shows.
/// O(pages of the database): only asked for while space is low (`Store::measure_space`).
fn measure(db: &Database, failure: &OnceLock<String>) -> Result<u64, StoreError> {
    if let Some(reason) = failure.get() {
        return Err(StoreError::Failed(reason.clone()));
    }
    let release = begin(db).and_then(|txn| Ok(txn.commit()?));
    if let Err(e) = release {
        // A commit that fails is a storage failure like any other (see the module docs).
        fail_store(failure, &e);
        return Err(e);
    }
    let txn = match begin(db) {
        Ok(txn) => txn,
        Err(e) => {
            fail_store(failure, &e);
            return Err(e);
        }
    };
    let stats = txn.stats()?;
    let allocated = stats.allocated_pages().saturating_mul(stats.page_size() as u64);
    if let Err(e) = txn.abort() {
        tracing::error!(error = %e, "store abort failed");
    }
    Ok(allocated)
}

/// Record the first storage failure (see the module docs).
fn fail_store(failure: &OnceLock<String>, e: &StoreError) {
    if failure.set(e.to_string()).is_ok() {
        tracing::error!(error = %e, "store failed: every write and read fails until a restart");
    }
}

fn fail_all(batch: Vec<Box<dyn Pending>>, e: &StoreError) {
    tracing::error!(error = %e, "store transaction failed");
    for p in batch {
        p.answer(Some(e.for_waiter()));
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;

    use super::*;
    use crate::store::tables::META;

    /// Sets a meta key; `fail` makes it fail after writing, `reject` before.
    struct Put {
        key: &'static str,
        fail: bool,
        reject: bool,
    }

    impl WriteOp for Put {
        type Out = u64;
        type Plan = ();

        fn check(&self, _t: &WriteTables<'_>) -> Result<(), StoreError> {
            if self.reject {
                return Err(StoreError::Invalid(self.key.to_string()));
            }
            Ok(())
        }

        fn write(&self, (): (), t: &mut WriteTables<'_>) -> Result<u64, StoreError> {
            let n = t.meta_add(self.key, 1)?;
            if self.fail {
                return Err(StoreError::Corrupt { table: "meta", key: self.key.to_string(), reason: "test".into() });
            }
            Ok(n)
        }
    }

    #[test]
    fn a_failed_write_is_replayed_out_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("w.redb")).unwrap();
        init_schema(&db).unwrap();
        let commits = AtomicU64::new(0);
        let spec = [("a", false, false), ("poison", true, false), ("b", false, true), ("c", false, false)];
        let mut batch = Vec::new();
        let mut replies = Vec::new();
        for (key, fail, reject) in spec {
            let (tx, rx) = oneshot::channel();
            batch.push(pending(Put { key, fail, reject }, tx));
            replies.push(rx);
        }
        let (outbox, deletes) = (Notify::new(), Notify::new());
        let wake = Wake { outbox: &outbox, deletes: &deletes, space: None };
        commit_batch(&db, batch, &commits, wake, &OnceLock::new());
        let results: Vec<_> = replies.into_iter().map(|mut rx| rx.try_recv().unwrap()).collect();
        assert!(matches!(results[0], Ok(1)));
        assert!(matches!(results[1], Err(StoreError::Corrupt { .. })));
        assert!(matches!(results[2], Err(StoreError::Invalid(_))));
        assert!(matches!(results[3], Ok(1)));
        // One commit for the survivors; nothing of the poisoned write.
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        let txn = db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        let get = |k: &str| meta.get(k).unwrap().map(|v| v.value());
        assert_eq!((get("a"), get("poison"), get("b"), get("c")), (Some(1), None, None, Some(1)));
    }
}
