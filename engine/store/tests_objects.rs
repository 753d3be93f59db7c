//! Remote blobs (object storage): the rows, the pending-deletion entries and their
//! cancellation, driven through the writer as the uploader would after its PUT (the PUT
//! itself is tested against a real S3 server in `tests/it/s3.rs`).

use bytes::Bytes;
use uuid::Uuid;

use super::blobs::{self, Payload};
use super::{NewBlob, Store, jobs};
use crate::domain::{Job, JobState, OutputRef};

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gateway.redb")).unwrap();
    (dir, store)
}

fn blob(seed: &str) -> NewBlob {
    let bytes = seed.repeat(1000).into_bytes();
    NewBlob { hash: *blake3::hash(&bytes).as_bytes(), media_type: "image/png".into(), bytes: Bytes::from(bytes) }
}

fn output(name: &str, b: &NewBlob) -> OutputRef {
    OutputRef {
        name: name.into(),
        node_id: "9".into(),
        media_type: b.media_type.clone(),
        size_bytes: b.bytes.len() as u64,
        hash: b.hash,
    }
}

/// Complete `job` with `outputs`, the blobs given as already uploaded (remote rows).
async fn complete_remote(store: &Store, mut job: Job, outputs: &[(&str, &NewBlob)]) -> Job {
    job.state = JobState::Succeeded;
    job.outputs = outputs.iter().map(|(n, b)| output(n, b)).collect();
    let payloads = outputs.iter().map(|(_, b)| Payload::Prepared(blobs::remote(b))).collect();
    store.submit(jobs::UpdateJob { job: job.clone(), blobs: payloads, events: vec![] }).await.unwrap();
    job
}

async fn new_job(store: &Store) -> Job {
    let job = Job::new_queued(Uuid::new_v4(), ("wf", 1), "{}".into(), "{}".into(), 0, 0, 1_000);
    store.insert_job(job, vec![]).await.unwrap()
}

fn pending(store: &Store) -> Vec<[u8; 32]> {
    store.pending_deletes(100).unwrap().into_iter().map(|(h, _)| h).collect()
}

#[tokio::test]
async fn remote_rows_have_no_chunks_and_are_counted_like_local_ones() {
    let (_dir, store) = open_temp();
    let b = blob("a");
    let job = new_job(&store).await;
    complete_remote(&store, job, &[("0.png", &b), ("1.png", &b)]).await;
    let meta = store.blob_meta(&b.hash).unwrap().unwrap();
    assert!(meta.remote);
    assert_eq!((meta.n_refs, meta.n_chunks, meta.size_bytes, meta.stored_bytes), (2, 0, 1000, 1000));
    let stats = store.stats().unwrap();
    assert_eq!((stats.n_blobs, stats.blob_bytes), (1, 1000));
    // Not readable from redb; no bucket configured here, so `blob_bytes` says so.
    assert!(store.read_blob(&b.hash).is_err());
    assert!(matches!(store.blob_bytes(&b.hash).await, Err(super::StoreError::Objects(_))));
    assert!(pending(&store).is_empty());
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn the_last_reference_records_the_object_for_deletion_and_a_new_row_cancels_it() {
    let (_dir, store) = open_temp();
    let (shared, own) = (blob("s"), blob("o"));
    let a = complete_remote(&store, new_job(&store).await, &[("0.png", &shared), ("1.png", &own)]).await;
    let b = complete_remote(&store, new_job(&store).await, &[("0.png", &shared)]).await;

    // Dropping one of two references records nothing.
    let mut b_none = b.clone();
    b_none.outputs.clear();
    store.update_job(b_none, vec![]).await.unwrap();
    assert!(pending(&store).is_empty());
    assert!(!store.delete_due(&shared.hash).unwrap());

    // The last reference goes: row gone, deletion pending, in the same commit.
    let mut a_none = a.clone();
    a_none.outputs.clear();
    let commits = store.commits();
    store.update_job(a_none, vec![]).await.unwrap();
    assert_eq!(store.commits(), commits + 1);
    assert_eq!(store.blob_meta(&shared.hash).unwrap(), None);
    let mut due = pending(&store);
    due.sort();
    let mut expected = vec![shared.hash, own.hash];
    expected.sort();
    assert_eq!(due, expected);
    assert!(store.delete_due(&shared.hash).unwrap());
    store.verify_integrity().unwrap();

    // The same content comes back (uploaded again) before the reaper ran: the commit that
    // re-creates the row cancels the deletion.
    complete_remote(&store, new_job(&store).await, &[("0.png", &shared)]).await;
    assert_eq!(pending(&store), vec![own.hash]);
    assert!(!store.delete_due(&shared.hash).unwrap());
    store.verify_integrity().unwrap();

    // The reaper's commit after its DELETE; finishing twice (or nothing) commits nothing.
    store.finish_delete(own.hash).await.unwrap();
    assert!(pending(&store).is_empty());
    let commits = store.commits();
    store.finish_delete(own.hash).await.unwrap();
    store.finish_delete(shared.hash).await.unwrap();
    assert_eq!(store.commits(), commits);
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn pruning_the_last_job_records_its_remote_blobs() {
    let (_dir, store) = open_temp();
    let b = blob("p");
    let mut job = complete_remote(&store, new_job(&store).await, &[("0.png", &b)]).await;
    job.finished_ms = Some(10);
    store.update_job(job, vec![]).await.unwrap();
    let pruned = store.prune(u64::MAX, 0, 0, 16).await.unwrap();
    assert_eq!(pruned.jobs, 1);
    assert_eq!(pending(&store), vec![b.hash]);
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn local_rows_record_no_deletion_and_old_records_read_as_local() {
    let (_dir, store) = open_temp();
    let b = blob("l");
    let mut job = new_job(&store).await;
    job.state = JobState::Succeeded;
    job.outputs = vec![output("0.png", &b)];
    store.complete_job(job.clone(), vec![b.clone()], vec![]).await.unwrap();
    assert!(!store.blob_meta(&b.hash).unwrap().unwrap().remote);
    job.outputs.clear();
    store.update_job(job, vec![]).await.unwrap();
    assert!(pending(&store).is_empty());
    // A v1 record (before `remote`) decodes as a local blob.
    let v1 = super::codec::encode("blobs", &"k", &(10u64, 10u64, "image/png", false, 1u32, 1u64)).unwrap();
    let rec = blobs::decode_record(&[0; 32], &v1).unwrap();
    assert!(!super::BlobMeta::from(rec).remote);
}
