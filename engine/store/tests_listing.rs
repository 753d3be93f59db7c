//! The owner index and `list_jobs_page` (bounded listings), and the schema-1 migration of
//! owner ids.

use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use uuid::Uuid;

use super::cache::Claim;
use super::tables::{IDEMPOTENCY, IDEMPOTENCY_BY_EXPIRY, JOBS, JOBS_BY_OWNER, META};
use super::{JobPage, JobQuery, Store, StoreError, codec};
use crate::domain::{IdempotencyRecord, Job, JobState, now_ms};

const KEY: &str = "key:0123456789abcdef";
const BOB: &str = "jwt:bob";

fn open_temp() -> (tempfile::TempDir, Store, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.redb");
    let store = Store::open(&path).unwrap();
    (dir, store, path)
}

fn job(owner: Option<&str>, created_ms: u64, workflow: &str) -> Job {
    let mut j = Job::new_queued(Uuid::new_v4(), (workflow, 1), "{}".into(), "{}".into(), 0, 0, created_ms);
    j.owner = owner.map(str::to_string);
    j
}

fn query(owner: Option<&str>) -> JobQuery<'_> {
    JobQuery {
        owner,
        statuses: None,
        workflow_id: None,
        after_ms: None,
        before: None,
        limit: usize::MAX,
        scan_max: usize::MAX,
        bytes_max: usize::MAX,
    }
}

/// Every page of `q` from its start, following `resume` (or the last job) as the cursor.
fn all_pages(store: &Store, q: &JobQuery<'_>) -> (Vec<Job>, usize) {
    let (mut out, mut pages) = (Vec::new(), 0);
    let mut q = q.clone();
    loop {
        let JobPage { jobs, resume } = store.list_jobs_page(&q).unwrap();
        pages += 1;
        assert!(jobs.len() <= q.limit, "a page holds at most limit jobs");
        let next = if jobs.len() == q.limit { jobs.last().map(|j| (j.created_ms, j.id)) } else { resume };
        out.extend(jobs);
        match next {
            Some(position) => q.before = Some(position),
            None => return (out, pages),
        }
        assert!(pages < 1000, "paging does not end");
    }
}

fn newest_first(mut jobs: Vec<Job>) -> Vec<Job> {
    jobs.sort_by_key(|j| std::cmp::Reverse((j.created_ms, j.id)));
    jobs
}

#[tokio::test]
async fn the_owner_index_lists_an_owners_jobs_within_bounds_and_pages_by_scan_and_bytes() {
    let (_dir, store, _) = open_temp();
    let owners = [Some(KEY), Some(BOB), None, Some(BOB), Some("jwt:key:0123456789abcdef")];
    let mut made = Vec::new();
    for i in 0..40u64 {
        let workflow = if i % 3 == 0 { "x" } else { "y" };
        let mut j =
            store.insert_job(job(owners[i as usize % owners.len()], 100 + i / 3, workflow), vec![]).await.unwrap();
        if i % 4 == 0 {
            (j.state, j.finished_ms) = (JobState::Failed, Some(200));
            store.update_job(j.clone(), vec![]).await.unwrap();
        }
        made.push(j);
    }
    let made = newest_first(made);
    let of = |owner: &str| made.iter().filter(|j| j.owner.as_deref() == Some(owner)).cloned().collect::<Vec<_>>();

    // Everyone's jobs through the creation index, an owner's through its own range.
    assert_eq!(store.list_jobs_page(&query(None)).unwrap().jobs, made);
    for owner in [KEY, BOB, "jwt:key:0123456789abcdef"] {
        assert_eq!(store.list_jobs_page(&query(Some(owner))).unwrap().jobs, of(owner), "{owner}");
    }
    assert!(store.list_jobs_page(&query(Some("jwt:nobody"))).unwrap().jobs.is_empty());
    // A prefix of an owner id is another owner.
    assert!(store.list_jobs_page(&query(Some("jwt:bo"))).unwrap().jobs.is_empty());

    // Time bounds are index bounds; filters apply inside them.
    let q = JobQuery {
        after_ms: Some(103),
        before: Some((110, Uuid::nil())),
        statuses: Some(&[JobState::Queued]),
        workflow_id: Some("y"),
        ..query(Some(BOB))
    };
    let want: Vec<Job> = of(BOB)
        .into_iter()
        .filter(|j| j.created_ms > 103 && j.created_ms < 110 && j.state == JobState::Queued && j.workflow_id == "y")
        .collect();
    assert!(!want.is_empty());
    assert_eq!(store.list_jobs_page(&q).unwrap().jobs, want);
    let empty = JobQuery { after_ms: Some(110), before: Some((105, Uuid::nil())), ..query(None) };
    assert!(store.list_jobs_page(&empty).unwrap().jobs.is_empty());
    assert!(store.list_jobs_page(&JobQuery { after_ms: Some(u64::MAX), ..query(None) }).unwrap().jobs.is_empty());

    // Pages of 3, pages cut by the scan cap (a filter matching little: short or empty pages
    // with a position to go on from), pages cut by bytes: each the whole list once, in order.
    let failed = made.iter().filter(|j| j.state == JobState::Failed).cloned().collect::<Vec<_>>();
    let (pages3, n3) = all_pages(&store, &JobQuery { limit: 3, ..query(None) });
    assert_eq!((pages3, n3), (made.clone(), made.len().div_ceil(3) + usize::from(made.len().is_multiple_of(3))));
    let scan = JobQuery { statuses: Some(&[JobState::Failed]), limit: 4, scan_max: 5, ..query(None) };
    let first = store.list_jobs_page(&scan).unwrap();
    assert!(first.jobs.len() < 4 && first.resume.is_some(), "5 entries examined: {first:?}");
    let (scanned, pages) = all_pages(&store, &scan);
    assert_eq!(scanned, failed);
    assert!(pages >= made.len() / 5, "{pages} pages for {} entries at 5 per page", made.len());
    let one = store.list_jobs_page(&JobQuery { bytes_max: 1, ..query(Some(BOB)) }).unwrap();
    assert_eq!(one.jobs.len(), 1, "one record always fits");
    assert_eq!(one.resume, Some((one.jobs[0].created_ms, one.jobs[0].id)));
    assert_eq!(all_pages(&store, &JobQuery { bytes_max: 1, ..query(Some(BOB)) }), (of(BOB), of(BOB).len()));

    // The owner of a job never changes; pruning removes its index entry.
    let mut moved = of(BOB)[0].clone();
    moved.owner = Some(KEY.to_string());
    assert!(matches!(store.update_job(moved, vec![]).await, Err(StoreError::Invalid(_))));
    store.verify_integrity().unwrap();
    let pruned = store.prune(u64::MAX, 0, now_ms(), 100).await.unwrap();
    assert_eq!(pruned.jobs, failed.len());
    let left = |owner: &'static str| {
        made.iter().filter(move |j| j.owner.as_deref() == Some(owner) && j.state != JobState::Failed)
    };
    assert_eq!(store.list_jobs_page(&query(Some(BOB))).unwrap().jobs, left(BOB).cloned().collect::<Vec<_>>());
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn integrity_finds_a_missing_or_stray_owner_entry() {
    let (_dir, store, path) = open_temp();
    let j = store.insert_job(job(Some(BOB), 5, "x"), vec![]).await.unwrap();
    store.verify_integrity().unwrap();
    store.close().await;
    drop(store);
    let edit = |f: &dyn Fn(&mut OwnerIndex<'_>)| {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        f(&mut txn.open_table(JOBS_BY_OWNER).unwrap());
        txn.commit().unwrap();
    };
    edit(&|t| {
        t.remove((BOB, 5, j.id.as_u128())).unwrap();
    });
    let err = Store::open(&path).unwrap().verify_integrity().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { table: "jobs_by_owner", .. }), "{err:?}");
    edit(&|t| {
        t.insert((BOB, 5, j.id.as_u128()), ()).unwrap();
        t.insert((KEY, 5, j.id.as_u128()), ()).unwrap();
    });
    let store = Store::open(&path).unwrap();
    let err = store.verify_integrity().unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { table: "jobs_by_owner", .. }), "{err:?}");
    // A listing that meets the stray entry says so instead of showing another's job.
    let err = store.list_jobs_page(&query(Some(KEY))).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { table: "jobs", .. }), "{err:?}");
}

/// The owner index, opened for writing.
type OwnerIndex<'txn> = redb::Table<'txn, (&'static str, u64, u128), ()>;

fn claim(key: &str, job: &Job) -> Claim {
    let record = IdempotencyRecord {
        body_hash: [1; 32],
        job_id: job.id,
        status: 202,
        created_ms: 1,
        expires_ms: now_ms() + 60_000,
    };
    Claim { key: key.to_string(), record }
}

/// A schema-1 file: jobs of JWT owners hold the raw `sub` in format-5 records, the owner
/// index does not exist, idempotency keys are scoped by the raw `sub`. Opening it builds
/// the index (in batches: more jobs than `MIGRATE_BATCH` under test) and renames the keys;
/// the jobs read with their namespaced owners.
#[tokio::test]
async fn a_schema_1_file_gets_its_owner_index_and_namespaced_owners_at_open() {
    let (_dir, store, path) = open_temp();
    let mut made = Vec::new();
    for i in 0..23u64 {
        let owner = [Some(BOB), Some(KEY), None][i as usize % 3];
        made.push(store.insert_job(job(owner, 50 + i, "x"), vec![]).await.unwrap());
    }
    let (bob_job, key_job) = (made[0].clone(), made[1].clone());
    let extra = job(Some(BOB), 99, "x");
    let extra = store.insert_job_claiming(extra.clone(), vec![], vec![], Some(claim("bob\nk1", &extra))).await.unwrap();
    let keyed = job(Some(KEY), 98, "x");
    let key2 = format!("{KEY}\nk2");
    let keyed = store.insert_job_claiming(keyed.clone(), vec![], vec![], Some(claim(&key2, &keyed))).await.unwrap();
    made.extend([extra.clone(), keyed.clone()]);
    store.close().await;
    drop(store);
    {
        // Back to schema 1: raw subjects in v5 records, no owner index.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut jobs = txn.open_table(JOBS).unwrap();
            for j in &made {
                let mut old = j.clone();
                if old.owner.as_deref() == Some(BOB) {
                    old.owner = Some("bob".to_string());
                }
                let record = codec::encode_at(5, "jobs", &j.id, &old).unwrap();
                jobs.insert(j.id.as_u128(), record.as_slice()).unwrap();
            }
        }
        txn.delete_table(JOBS_BY_OWNER).unwrap();
        txn.open_table(META).unwrap().insert("schema_version", 1).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    store.verify_integrity().unwrap();
    assert_eq!(store.get_job(bob_job.id).unwrap().unwrap().owner.as_deref(), Some(BOB));
    assert_eq!(store.get_job(key_job.id).unwrap().unwrap().owner.as_deref(), Some(KEY));
    assert_eq!(store.unfinished_owners().unwrap(), unfinished_by_full_reads(&store), "v5 heads");
    let of = |owner: &str| newest_first(made.iter().filter(|j| j.owner.as_deref() == Some(owner)).cloned().collect());
    assert_eq!(store.list_jobs_page(&query(Some(BOB))).unwrap().jobs, of(BOB));
    assert_eq!(store.list_jobs_page(&query(Some(KEY))).unwrap().jobs, of(KEY));
    assert_eq!(store.idempotency_record("bob\nk1").unwrap(), None);
    assert_eq!(store.idempotency_record("jwt:bob\nk1").unwrap().map(|r| r.job_id), Some(extra.id));
    assert_eq!(store.idempotency_record(&format!("{KEY}\nk2")).unwrap().map(|r| r.job_id), Some(keyed.id));
    {
        let txn = store.inner.db.begin_read().unwrap();
        let by_expiry = txn.open_table(IDEMPOTENCY_BY_EXPIRY).unwrap();
        let keys: Vec<String> =
            by_expiry.range::<(u64, &str)>(..).unwrap().map(|e| e.unwrap().0.value().1.to_string()).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"jwt:bob\nk1".to_string()), "{keys:?}");
        assert_eq!(txn.open_table(IDEMPOTENCY).unwrap().len().unwrap(), 2);
        assert_eq!(txn.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value(), 2);
    }
    // A legacy record is rewritten at the current version by its next update.
    let mut running = store.get_job(bob_job.id).unwrap().unwrap();
    running.state = JobState::Running;
    store.update_job(running, vec![]).await.unwrap();
    assert_eq!(store.get_job(bob_job.id).unwrap().unwrap().owner.as_deref(), Some(BOB));
    let unfinished = store.unfinished_owners().unwrap();
    assert_eq!(unfinished, unfinished_by_full_reads(&store), "v5 and v6 heads, queued and running");
    assert_eq!(unfinished.last(), Some(&(bob_job.id, Some(BOB.to_string()))), "running jobs come last");
    store.verify_integrity().unwrap();
    // Opening again changes nothing.
    store.close().await;
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list_jobs_page(&query(Some(BOB))).unwrap().jobs.len(), of(BOB).len());
    store.verify_integrity().unwrap();
}

/// What `Store::unfinished_owners` reads from the records' heads, read from whole records.
fn unfinished_by_full_reads(store: &Store) -> Vec<(crate::domain::JobId, Option<String>)> {
    let queued = store.queued_jobs().unwrap().into_iter();
    queued.chain(store.running_jobs().unwrap()).map(|j| (j.id, j.owner)).collect()
}

#[test]
fn legacy_owners_map_into_their_namespace() {
    use crate::domain::owner;
    assert_eq!(owner::from_legacy("bob"), "jwt:bob");
    assert_eq!(owner::from_legacy(KEY), KEY);
    assert_eq!(owner::from_legacy("key:0123456789ABCDEF"), "jwt:key:0123456789ABCDEF");
    assert_eq!(owner::from_legacy("key:0123"), "jwt:key:0123");
    assert_eq!(owner::from_legacy("jwt:x"), "jwt:jwt:x", "a legacy sub is a sub, whatever its shape");
}

/// A database written before this release: schema 1, format-5 job records whose JWT
/// owners are raw subjects, and neither `owner_usage` nor its markers. Opening it counts
/// each owner's storage from the records read as every other read reads them (namespaced
/// owners; a v5 record is not a v4 record short of a field), so the open, the integrity
/// check and the next update of a legacy job all work.
#[tokio::test]
async fn a_pre_usage_schema_1_file_counts_usage_under_namespaced_owners() {
    use super::NewBlob;
    let (_dir, store, path) = open_temp();
    let bytes = vec![7u8; 2_000];
    let img = NewBlob {
        hash: *blake3::hash(&bytes).as_bytes(),
        media_type: "image/png".to_string(),
        bytes: bytes::Bytes::from(bytes),
    };
    let mut bob_job = job(Some(BOB), 10, "x");
    bob_job.inputs = vec![crate::domain::InputRef {
        name: "image".to_string(),
        file_name: "image.png".to_string(),
        media_type: "image/png".to_string(),
        size_bytes: 2_000,
        hash: img.hash,
    }];
    let bob_job = store.insert_job_with_blobs(bob_job, vec![img], vec![]).await.unwrap();
    store.close().await;
    drop(store);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut old = bob_job.clone();
            old.owner = Some("bob".to_string());
            let record = codec::encode_at(5, "jobs", &old.id, &old).unwrap();
            txn.open_table(JOBS).unwrap().insert(old.id.as_u128(), record.as_slice()).unwrap();
        }
        txn.delete_table(JOBS_BY_OWNER).unwrap();
        txn.delete_table(super::tables::OWNER_USAGE).unwrap();
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("schema_version", 1).unwrap();
        meta.remove(super::tables::meta_key::USAGE_BUILT).unwrap();
        meta.remove(super::tables::meta_key::USAGE_BYTES).unwrap();
        drop(meta);
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.owner_usage(Some(BOB)).unwrap(), 2_000);
    assert_eq!(store.owner_usage(Some("bob")).unwrap(), 0);
    store.verify_integrity().unwrap();
    // The legacy job's next update moves its charge within its (namespaced) owner.
    let mut running = store.get_job(bob_job.id).unwrap().unwrap();
    running.state = JobState::Running;
    store.update_job(running, vec![]).await.unwrap();
    assert_eq!(store.owner_usage(Some(BOB)).unwrap(), 2_000);
    store.verify_integrity().unwrap();
}
