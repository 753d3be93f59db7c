//! Online, consistent backups: every table of one read snapshot copied into a new database
//! file, verified with the integrity check of `comfyui-gateway check`, renamed into place.
//!
//! redb has no backup facility of its own, and a byte copy of a file the writer keeps
//! changing is not consistent, so the copy goes table by table from one `ReadTransaction`:
//! redb's readers never hold its writer (MVCC), so jobs keep being committed meanwhile.
//! The new file is written in batches of at most `BATCH_BYTES` per write transaction, so
//! its transactions stay bounded in memory; it is built under `<dest>.creating` and renamed
//! only once it passed the check, so `dest` is either absent or a complete, checked copy.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, Value};

use super::tables::*;
use super::{StoreError, StoreStats, integrity};

/// At most this many bytes (keys + values) go into one write transaction of the copy.
const BATCH_BYTES: usize = 32 << 20;

/// What a backup wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The copy.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Tables copied.
    pub n_tables: usize,
    /// Entries copied, over every table.
    pub n_entries: u64,
    /// The copy's counts (equal to the snapshot's: checked).
    pub stats: StoreStats,
    /// How long the copy and its check took.
    pub duration: Duration,
}

/// Why the destination cannot take a backup: its file system has less free space than the
/// database's size plus the space to keep free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoSpace {
    /// Free bytes of the destination's file system.
    pub free_bytes: u64,
    /// What the backup needs there: the database's size plus the space kept free.
    pub needed_bytes: u64,
}

/// A table's copy function.
type Copier = fn(&ReadTransaction, &Database, &mut Counts) -> Result<(), StoreError>;

/// Each table with the copy function of its key and value types: the one list the copy
/// and the completeness check read (a table missing here fails every backup, see `copy_all`).
fn table_copiers() -> [(&'static str, Copier); 25] {
    macro_rules! c {
        ($t:ident) => {
            ($t.name(), |src: &ReadTransaction, dst: &Database, n: &mut Counts| copy_table(src, dst, $t, n))
        };
    }
    [
        c!(META),
        c!(JOBS),
        c!(JOB_EVENTS),
        c!(QUEUE),
        c!(RUNNING),
        c!(JOBS_BY_CREATED),
        c!(JOBS_BY_OWNER),
        c!(WORKFLOWS),
        c!(WORKFLOW_VERSIONS),
        c!(BLOBS),
        c!(BLOB_CHUNKS),
        c!(BLOB_DELETES),
        c!(AUDIT),
        c!(DELIVERIES),
        c!(DELIVERIES_DUE),
        c!(DELIVERIES_BY_JOB),
        c!(DISABLED_ENDPOINTS),
        c!(CACHE),
        c!(CACHE_BY_TIME),
        c!(IDEMPOTENCY),
        c!(IDEMPOTENCY_BY_EXPIRY),
        c!(PLUGINS),
        c!(PLUGIN_ARTIFACTS),
        c!(BACKEND_DRAINS),
        c!(OWNER_USAGE),
    ]
}

/// The copy's running state.
#[derive(Debug)]
struct Counts {
    /// Entries copied so far.
    n_entries: u64,
    /// Bytes per write transaction of the copy (`BATCH_BYTES`; smaller in tests).
    batch_bytes: usize,
}

/// Copy one table of `src` into `dst`, at most `BATCH_BYTES` per write transaction; the
/// source iterator lives across the destination's commits (it reads the one snapshot).
fn copy_table<K: Key + 'static, V: Value + 'static>(
    src: &ReadTransaction,
    dst: &Database,
    def: TableDefinition<K, V>,
    counts: &mut Counts,
) -> Result<(), StoreError> {
    let table = src.open_table(def)?;
    let mut rows = table.iter()?;
    loop {
        let txn = dst.begin_write()?;
        let mut more = false;
        {
            let mut out = txn.open_table(def)?;
            let mut batch_bytes = 0usize;
            for row in rows.by_ref() {
                let (k, v) = row?;
                let (k, v) = (k.value(), v.value());
                batch_bytes += K::as_bytes(&k).as_ref().len() + V::as_bytes(&v).as_ref().len();
                out.insert(k, v)?;
                counts.n_entries += 1;
                if batch_bytes >= counts.batch_bytes {
                    more = true;
                    break;
                }
            }
        }
        txn.commit()?;
        if !more {
            return Ok(());
        }
    }
}

/// The free bytes of the file system holding `dir`, for an unprivileged writer.
fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The directory of `path` ("." for a bare name).
fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Whether the file system of `dest` can take a copy of a database of `db_bytes` and still
/// keep `keep_free_bytes` free.
pub(crate) fn room_for(dest: &Path, db_bytes: u64, keep_free_bytes: u64) -> Result<Result<(), NoSpace>, StoreError> {
    let free = free_bytes(dir_of(dest))?;
    let needed = db_bytes.saturating_add(keep_free_bytes);
    Ok(if free < needed { Err(NoSpace { free_bytes: free, needed_bytes: needed }) } else { Ok(()) })
}

/// Write every table of the snapshot `src` to a new database at `dest` (replaced if it
/// exists), check it, and return what was written. Blocking: O(size of the database).
pub(crate) fn copy_all(src: &ReadTransaction, snapshot: &StoreStats, dest: &Path) -> Result<Backup, StoreError> {
    copy_batched(src, snapshot, dest, BATCH_BYTES)
}

/// [`copy_all`] with `batch_bytes` per write transaction of the copy.
fn copy_batched(
    src: &ReadTransaction,
    snapshot: &StoreStats,
    dest: &Path,
    batch_bytes: usize,
) -> Result<Backup, StoreError> {
    let started = Instant::now();
    let copiers = table_copiers();
    // Every table of the file is one this build copies: a table added to `tables` but not
    // here would otherwise be lost from every backup without a word.
    for table in src.list_tables()? {
        if !copiers.iter().any(|(name, _)| *name == table.name()) {
            return Err(StoreError::Invalid(format!("table {:?} is not in the backup's list", table.name())));
        }
    }
    let mut counts = Counts { n_entries: 0, batch_bytes };
    let tmp = {
        let (tmp, dst) = super::create_creating(dest, "a backup left half-written")?;
        for (_, copy) in &copiers {
            copy(src, &dst, &mut counts)?;
        }
        tmp
    };
    // The same check as `comfyui-gateway check`, on the copy as written.
    let verified = verify_file(&tmp).and_then(|stats| {
        if &stats != snapshot {
            return Err(StoreError::Corrupt {
                table: "meta",
                key: "*".to_string(),
                reason: format!("the copy counts {stats:?}, the snapshot {snapshot:?}"),
            });
        }
        Ok(stats)
    });
    let stats = match verified {
        Ok(stats) => stats,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dest)?;
    std::fs::File::open(dir_of(dest))?.sync_all()?;
    let size_bytes = std::fs::metadata(dest)?.len();
    Ok(Backup {
        path: dest.to_path_buf(),
        size_bytes,
        n_tables: copiers.len(),
        n_entries: counts.n_entries,
        stats,
        duration: started.elapsed(),
    })
}

/// Open the database file at `path` read-only (nothing is written to it, not even a
/// schema or a recovery), run the integrity check of `comfyui-gateway check` on it, and
/// return its counts.
pub(crate) fn verify_file(path: &Path) -> Result<StoreStats, StoreError> {
    let db = redb::ReadOnlyDatabase::open(path)?;
    let txn = db.begin_read()?;
    integrity::verify(&txn)?;
    super::stats_in(&txn)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::{Job, JobEventKind};
    use crate::store::Store;

    fn job(i: u64) -> Job {
        let inputs = format!("{{\"seed\":{i},\"pad\":\"{}\"}}", "x".repeat(300));
        Job::new_queued(Uuid::now_v7(), ("wf", 1), inputs, "{\"1\":{}}".into(), 0, i as i64, 1_000)
    }

    /// Many small write transactions (a 4 KiB batch) still make one consistent copy of the
    /// snapshot: every job, the same counts, the integrity check passes; nothing is left
    /// under `.creating`; the source keeps taking writes while a snapshot is held.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_is_a_checked_copy_of_one_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        let mut ids = Vec::new();
        for i in 0..200 {
            ids.push(store.insert_job(job(i), vec![JobEventKind::Queued]).await.unwrap().id);
        }
        let src = store.read_txn().unwrap();
        let snapshot = crate::store::stats_in(&src).unwrap();
        // Written after the snapshot: not in the copy, and not held up by it.
        let later = store.insert_job(job(1_000), vec![JobEventKind::Queued]).await.unwrap().id;
        let dest = dir.path().join("copy.redb");
        let backup = copy_batched(&src, &snapshot, &dest, 4 << 10).unwrap();
        assert_eq!(backup.stats, snapshot);
        assert_eq!(backup.n_tables, 25);
        assert!(backup.n_entries >= 200 * 4, "{backup:?}");
        assert_eq!(backup.size_bytes, std::fs::metadata(&dest).unwrap().len());
        assert!(!dir.path().join("copy.redb.creating").exists());
        assert_eq!(verify_file(&dest).unwrap(), snapshot);
        let copy = Store::open(&dest).unwrap();
        for id in &ids {
            assert!(copy.get_job(*id).unwrap().is_some(), "{id}");
        }
        assert!(copy.get_job(later).unwrap().is_none());
        // Through the public operation: the whole current state, replacing `dest`.
        drop(copy);
        let backup = store.backup(&dest, 0).unwrap();
        assert_eq!(backup.stats, store.stats().unwrap());
        assert_eq!(Store::verify_file(&dest).unwrap().n_jobs_by_state[0].1, 201);
    }

    /// A table the backup does not list fails the backup (and leaves nothing), instead
    /// of being left out of the copy without a word.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_table_the_backup_does_not_know_fails_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        {
            let txn = store.inner.db.begin_write().unwrap();
            txn.open_table(TableDefinition::<u64, u64>::new("stranger")).unwrap().insert(1, 2).unwrap();
            txn.commit().unwrap();
        }
        let dest = dir.path().join("copy.redb");
        assert!(matches!(store.backup(&dest, 0), Err(StoreError::Invalid(m)) if m.contains("stranger")));
        assert!(!dest.exists() && !dir.path().join("copy.redb.creating").exists());
    }

    /// Without room for the database's size plus what must stay free: `NoSpace`, nothing
    /// written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backup_without_room_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("g.redb")).unwrap();
        let dest = dir.path().join("copy.redb");
        let e = store.backup(&dest, u64::MAX / 2).unwrap_err();
        assert!(matches!(e, StoreError::NoSpace(n) if n.needed_bytes > n.free_bytes), "{e}");
        assert!(!dest.exists() && !dir.path().join("copy.redb.creating").exists());
    }
}
