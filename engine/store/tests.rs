//! Store tests against real redb files in temp dirs.

use std::collections::HashSet;
use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableTable};
use uuid::Uuid;

use super::tables::{BLOB_CHUNKS, JOBS, QUEUE, WORKFLOWS};
use super::{NewBlob, Store, StoreError};
use crate::domain::{
    AuditAction, AuditEntry, Hash, Job, JobError, JobEventKind, JobState, OutputRef, QueueKey, Role, WorkflowRecord,
};
use crate::error::ErrorCode;

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("sub/dir/gateway.redb")).unwrap();
    (dir, store)
}

fn db_path(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("sub/dir/gateway.redb")
}

fn job(rank_ms: i64) -> Job {
    let inputs = "{\"seed\":42}".to_string();
    Job { seed: Some(42), ..Job::new_queued(Uuid::new_v4(), ("wf", 1), inputs, "{\"1\":{}}".into(), 0, rank_ms, 1_000) }
}

fn bytes_of(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut out);
    out
}

fn blob(media_type: &str, bytes: Vec<u8>) -> NewBlob {
    NewBlob { hash: *blake3::hash(&bytes).as_bytes(), media_type: media_type.to_string(), bytes: Bytes::from(bytes) }
}

pub(super) fn output(name: &str, b: &NewBlob) -> OutputRef {
    OutputRef {
        name: name.to_string(),
        node_id: "9".to_string(),
        media_type: b.media_type.clone(),
        size_bytes: b.bytes.len() as u64,
        hash: b.hash,
    }
}

fn workflow(id: &str, name: &str) -> WorkflowRecord {
    WorkflowRecord {
        id: id.to_string(),
        version: 0,
        name: name.to_string(),
        description: "d".to_string(),
        template_json: "{\"1\":{\"class_type\":\"EmptyImage\"}}".to_string(),
        schema_json: Some("{}".to_string()),
        defaults_json: None,
        created_ms: 5,
        keep_previews: true,
        plugin: None,
    }
}

fn counts(store: &Store) -> Vec<u64> {
    store.stats().unwrap().n_jobs_by_state.iter().map(|(_, n)| *n).collect()
}

/// Write raw bytes into a table, bypassing the store (the store must be dropped).
fn raw_put_job(path: &Path, key: u128, value: &[u8]) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(JOBS).unwrap().insert(key, value).unwrap();
    txn.commit().unwrap();
}

#[tokio::test]
async fn job_round_trip_every_field_and_event_kind() {
    let (_dir, store) = open_temp();
    let b = blob("image/png", bytes_of("png", 1000));
    let mut j = job(10);
    j.priority = -1;
    j.n_attempts = 2;
    j.backend = Some("b0".to_string());
    j.client_id = Some("c".to_string());
    j.metadata_json = Some("{\"k\":1}".to_string());
    j.callback_url = Some("https://example.com/hook".to_string());
    j.started_ms = Some(2_000);
    j.owner = Some("key:0123456789abcdef".to_string());
    let events = vec![
        JobEventKind::Queued,
        JobEventKind::Dispatched { backend: "b0".to_string(), attempt: 1 },
        JobEventKind::Requeued { reason: "backend down".to_string() },
        JobEventKind::Progress { node: "3".to_string(), value: 2.5, max: 10.0 },
        JobEventKind::Reattached { found: "running".to_string() },
        JobEventKind::Succeeded { n_outputs: 1 },
        JobEventKind::Failed { code: ErrorCode::ComfyuiOom, message: "oom".to_string() },
        JobEventKind::Canceled { reason: "client".to_string() },
    ];
    let stored = store.insert_job(j.clone(), events.clone()).await.unwrap();
    assert_eq!(stored.queue_key, QueueKey { rank_ms: 10, seq: 1 });
    assert_eq!(store.get_job(j.id).unwrap(), Some(stored.clone()));

    let mut done = stored.clone();
    done.state = JobState::Failed;
    done.error = Some(JobError {
        code: ErrorCode::ComfyuiNodeError,
        message: "bad node".to_string(),
        details_json: Some("[1]".to_string()),
    });
    done.outputs = vec![output("a.png", &b)];
    done.finished_ms = Some(3_000);
    done.cached = true;
    store.complete_job(done.clone(), vec![b.clone()], vec![]).await.unwrap();
    assert_eq!(store.get_job(j.id).unwrap(), Some(done));

    let logged = store.job_events(j.id, None, 100).unwrap();
    assert_eq!(logged.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), (1..=8).collect::<Vec<_>>());
    assert_eq!(logged.into_iter().map(|(_, e)| e.kind).collect::<Vec<_>>(), events);
    assert_eq!(store.get_job(Uuid::new_v4()).unwrap(), None);
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn audit_appends_in_order_pages_newest_first_and_survives_reopen() {
    let (dir, store) = open_temp();
    assert!(store.audit(None, 10).unwrap().is_empty());
    let entry = |i: u64, action| AuditEntry {
        at_ms: 1_000 + i,
        actor: i.is_multiple_of(2).then(|| format!("key:{i:016x}")),
        role: i.is_multiple_of(2).then_some(Role::Admin),
        action,
        target: format!("wf{i}"),
        correlation_id: format!("corr-{i:04}"),
    };
    let actions = [AuditAction::WorkflowCreate, AuditAction::WorkflowUpdate, AuditAction::WorkflowDelete];
    for i in 0..5u64 {
        let seq = store.append_audit(entry(i, actions[i as usize % 3])).await.unwrap();
        assert_eq!(seq, i + 1);
    }
    let first = store.audit(None, 2).unwrap();
    assert_eq!(first.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![5, 4]);
    assert_eq!(first[0].1, entry(4, actions[1]));
    let rest = store.audit(Some(4), 10).unwrap();
    assert_eq!(rest.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![3, 2, 1]);
    assert_eq!(rest[2].1, entry(0, actions[0]));
    assert!(store.audit(Some(1), 10).unwrap().is_empty());
    store.close().await;
    drop(store);
    let store = Store::open(&db_path(&dir)).unwrap();
    assert_eq!(store.append_audit(entry(5, AuditAction::JobCancel)).await.unwrap(), 6);
    assert_eq!(store.audit(None, 1).unwrap()[0].1.action, AuditAction::JobCancel);
}

#[tokio::test]
async fn backend_drains_keep_their_first_time_and_survive_reopen() {
    let (dir, store) = open_temp();
    assert!(store.drained_backends().unwrap().is_empty());
    store.set_backend_drain("gpu2", Some(20)).await.unwrap();
    store.set_backend_drain("gpu1", Some(10)).await.unwrap();
    store.set_backend_drain("gpu1", Some(30)).await.unwrap();
    store.set_backend_drain("gpu3", None).await.unwrap(); // resuming a running backend changes nothing
    assert_eq!(store.drained_backends().unwrap(), vec![("gpu1".to_string(), 10), ("gpu2".to_string(), 20)]);
    assert!(matches!(store.set_backend_drain("", Some(1)).await, Err(StoreError::Invalid(_))));
    store.close().await;
    drop(store);
    let store = Store::open(&db_path(&dir)).unwrap();
    store.set_backend_drain("gpu2", None).await.unwrap();
    assert_eq!(store.drained_backends().unwrap(), vec![("gpu1".to_string(), 10)]);
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn queue_orders_by_rank_then_seq_and_follows_state() {
    let (_dir, store) = open_temp();
    let a = store.insert_job(job(100), vec![JobEventKind::Queued]).await.unwrap();
    let b = store.insert_job(job(50), vec![]).await.unwrap();
    let c = store.insert_job(job(100), vec![]).await.unwrap();
    let d = store.insert_job(job(-20), vec![]).await.unwrap();
    let order: Vec<_> = store.queued_jobs().unwrap().iter().map(|j| j.id).collect();
    assert_eq!(order, vec![d.id, b.id, a.id, c.id]);
    // Recovery's heads: the same jobs in the same order, with what the memory queue needs.
    let heads = store.queued_heads().unwrap();
    let from_jobs: Vec<_> = store
        .queued_jobs()
        .unwrap()
        .into_iter()
        .map(|j| crate::store::QueuedHead {
            id: j.id,
            workflow_id: j.workflow_id,
            priority: j.priority,
            queue_key: j.queue_key,
        })
        .collect();
    assert_eq!(heads, from_jobs);
    let ids: Vec<_> = store.queued_ids().unwrap().into_iter().map(|(_, id)| id).collect();
    assert_eq!(ids, order);
    assert_eq!(counts(&store), vec![4, 0, 0, 0, 0]);

    // Dispatch b: leaves the queue, enters the running index.
    let mut b_run = b.clone();
    b_run.state = JobState::Running;
    b_run.n_attempts = 1;
    store.update_job(b_run.clone(), vec![JobEventKind::Dispatched { backend: "x".into(), attempt: 1 }]).await.unwrap();
    assert_eq!(store.queued_jobs().unwrap().iter().map(|j| j.id).collect::<Vec<_>>(), vec![d.id, a.id, c.id]);
    assert_eq!(store.running_jobs().unwrap(), vec![b_run.clone()]);
    assert_eq!(counts(&store), vec![3, 1, 0, 0, 0]);
    // The job cap's start-up read: queued in dispatch order, then running, from the heads.
    let owners: Vec<_> = store.unfinished_owners().unwrap().into_iter().map(|(id, o)| (id, o.is_none())).collect();
    assert_eq!(owners, vec![(d.id, true), (a.id, true), (c.id, true), (b.id, true)]);

    // Requeue b behind everything: the new key replaces the old.
    let mut b_back = b_run.clone();
    b_back.state = JobState::Queued;
    b_back.queue_key.rank_ms = 1_000;
    store.update_job(b_back.clone(), vec![JobEventKind::Requeued { reason: "lost".into() }]).await.unwrap();
    assert_eq!(store.running_jobs().unwrap(), vec![]);
    let keys: Vec<_> = store.queued_ids().unwrap();
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[3], (QueueKey { rank_ms: 1_000, seq: b.queue_key.seq }, b.id));

    // Re-rank a queued job in place (e.g. priority change).
    let mut a2 = a.clone();
    a2.queue_key.rank_ms = -100;
    store.update_job(a2.clone(), vec![]).await.unwrap();
    assert_eq!(store.queued_jobs().unwrap()[0], a2);

    // Terminal states leave both indexes.
    for (j, state) in [(a2, JobState::Canceled), (b_back, JobState::Succeeded), (c.clone(), JobState::Failed)] {
        let mut j = j;
        j.state = state;
        store.update_job(j, vec![]).await.unwrap();
    }
    assert_eq!(store.queued_jobs().unwrap(), vec![d.clone()]);
    assert_eq!(counts(&store), vec![1, 0, 1, 1, 1]);

    // Seqs are store-assigned and distinct; a changed seq is refused.
    let seqs: HashSet<_> = [&a, &b, &c, &d].iter().map(|j| j.queue_key.seq).collect();
    assert_eq!(seqs.len(), 4);
    let mut bad = d.clone();
    bad.queue_key.seq += 100;
    assert!(matches!(store.update_job(bad, vec![]).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.get_job(d.id).unwrap(), Some(d));
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn missing_or_duplicate_jobs_write_nothing() {
    let (_dir, store) = open_temp();
    let a = store.insert_job(job(1), vec![JobEventKind::Queued]).await.unwrap();
    let ghost = job(2);
    match store.update_job(ghost.clone(), vec![JobEventKind::Queued]).await {
        Err(StoreError::JobNotFound(id)) => assert_eq!(id, ghost.id),
        other => panic!("expected JobNotFound, got {other:?}"),
    }
    assert!(matches!(store.append_events(ghost.id, vec![JobEventKind::Queued]).await, Err(StoreError::JobNotFound(_))));
    assert!(matches!(store.insert_job(a.clone(), vec![]).await, Err(StoreError::JobExists(_))));
    assert_eq!(store.get_job(ghost.id).unwrap(), None);
    assert_eq!(store.job_events(ghost.id, None, 10).unwrap(), vec![]);
    assert_eq!(store.job_events(a.id, None, 10).unwrap().len(), 1);
    assert_eq!(counts(&store), vec![1, 0, 0, 0, 0]);
    assert_eq!(store.queued_jobs().unwrap(), vec![a]);
}

#[tokio::test]
async fn events_append_and_page_per_job() {
    let (_dir, store) = open_temp();
    let a = store.insert_job(job(1), vec![JobEventKind::Queued]).await.unwrap();
    let b = store.insert_job(job(2), vec![JobEventKind::Queued]).await.unwrap();
    for i in 0..10 {
        let p = JobEventKind::Progress { node: "1".into(), value: f64::from(i), max: 10.0 };
        store.append_events(a.id, vec![p]).await.unwrap();
    }
    store.append_events(b.id, vec![JobEventKind::Canceled { reason: "x".into() }]).await.unwrap();
    let all = store.job_events(a.id, None, usize::MAX).unwrap();
    assert_eq!(all.len(), 11);
    assert_eq!(all[0].1.kind, JobEventKind::Queued);
    let page = store.job_events(a.id, Some(3), 4).unwrap();
    assert_eq!(page.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
    assert_eq!(page[0].1.kind, JobEventKind::Progress { node: "1".into(), value: 2.0, max: 10.0 });
    assert_eq!(store.job_events(a.id, Some(11), 10).unwrap(), vec![]);
    assert_eq!(store.job_events(a.id, Some(u64::MAX), 10).unwrap(), vec![]);
    assert_eq!(store.job_events(a.id, None, 0).unwrap(), vec![]);
    let b_events = store.job_events(b.id, None, 10).unwrap();
    assert_eq!(b_events.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2]);
    // The record is untouched by appends.
    assert_eq!(store.get_job(a.id).unwrap(), Some(a));
}

#[tokio::test]
async fn workflow_versions_and_delete() {
    let (_dir, store) = open_temp();
    let v1 = store.put_workflow(workflow("txt2img", "one")).await.unwrap();
    assert_eq!(v1.version, 1);
    let v2 = store.put_workflow(workflow("txt2img", "two")).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(store.get_workflow("txt2img").unwrap(), Some(v2.clone()));
    assert_eq!(store.get_workflow_version("txt2img", 1).unwrap(), Some(v1.clone()));
    assert_eq!(store.get_workflow_version("txt2img", 3).unwrap(), None);

    assert!(store.put_workflow_if_absent(workflow("bundled", "b")).await.unwrap());
    assert!(!store.put_workflow_if_absent(workflow("bundled", "b2")).await.unwrap());
    let listed: Vec<_> = store.list_workflows().unwrap().into_iter().map(|w| (w.id, w.version)).collect();
    assert_eq!(listed, vec![("bundled".to_string(), 1), ("txt2img".to_string(), 2)]);

    assert!(store.delete_workflow("txt2img").await.unwrap());
    assert!(!store.delete_workflow("txt2img").await.unwrap());
    assert!(!store.delete_workflow("never").await.unwrap());
    assert_eq!(store.get_workflow("txt2img").unwrap(), None);
    assert_eq!(store.get_workflow_version("txt2img", 2).unwrap(), Some(v2));
    assert_eq!(store.list_workflows().unwrap().len(), 1);
    // A deleted id is not "absent": bundled workflows do not come back.
    assert!(!store.put_workflow_if_absent(workflow("txt2img", "again")).await.unwrap());
    // An explicit put continues the numbering.
    let v3 = store.put_workflow(workflow("txt2img", "three")).await.unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(store.get_workflow("txt2img").unwrap(), Some(v3));
    assert!(matches!(store.put_workflow(workflow("", "x")).await, Err(StoreError::Invalid(_))));
}

#[tokio::test]
async fn blobs_dedupe_and_count_references() {
    let (_dir, store) = open_temp();
    let shared = blob("image/png", bytes_of("shared", 5_000));
    let own = blob("image/png", bytes_of("own", 7_000));
    let a = store.insert_job(job(1), vec![]).await.unwrap();
    let b = store.insert_job(job(2), vec![]).await.unwrap();

    let mut a_done = a.clone();
    a_done.state = JobState::Succeeded;
    a_done.outputs = vec![output("0.png", &shared), output("1.png", &own)];
    store.complete_job(a_done.clone(), vec![shared.clone(), own.clone()], vec![]).await.unwrap();

    let mut b_done = b.clone();
    b_done.state = JobState::Succeeded;
    b_done.outputs = vec![output("0.png", &shared)];
    store.complete_job(b_done.clone(), vec![shared.clone()], vec![]).await.unwrap();

    let meta = store.blob_meta(&shared.hash).unwrap().unwrap();
    assert_eq!((meta.n_refs, meta.size_bytes, meta.n_chunks), (2, 5_000, 1));
    assert_eq!(store.blob_meta(&own.hash).unwrap().unwrap().n_refs, 1);
    let stats = store.stats().unwrap();
    assert_eq!((stats.n_blobs, stats.blob_bytes), (2, 12_000));
    assert_eq!(store.read_blob(&shared.hash).unwrap().as_deref(), Some(&shared.bytes[..]));

    // Completing again with the same outputs adds nothing.
    store.complete_job(b_done.clone(), vec![shared.clone()], vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&shared.hash).unwrap().unwrap().n_refs, 2);

    // A job that names a stored blob need not resend it.
    let c = store.insert_job(job(3), vec![]).await.unwrap();
    let mut c_done = c.clone();
    c_done.state = JobState::Succeeded;
    c_done.outputs = vec![output("x.png", &own)];
    store.update_job(c_done, vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&own.hash).unwrap().unwrap().n_refs, 2);

    // Dropping outputs drops references; the last one deletes the blob.
    let mut a_none = a_done.clone();
    a_none.outputs.clear();
    store.update_job(a_none, vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&shared.hash).unwrap().unwrap().n_refs, 1);
    let mut b_none = b_done.clone();
    b_none.outputs.clear();
    store.update_job(b_none, vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&shared.hash).unwrap(), None);
    assert_eq!(store.read_blob(&shared.hash).unwrap(), None);
    let stats = store.stats().unwrap();
    assert_eq!((stats.n_blobs, stats.blob_bytes), (1, 7_000));
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn input_blobs_are_stored_with_the_job_and_referenced_by_it() {
    let (_dir, store) = open_temp();
    let img = blob("image/png", bytes_of("input", 3000));
    let input = |name: &str| crate::domain::InputRef {
        name: name.to_string(),
        file_name: format!("{name}.png"),
        media_type: "image/png".to_string(),
        size_bytes: 3000,
        hash: img.hash,
    };
    // Not provided and not stored: refused, nothing written.
    let mut a = job(1);
    a.inputs = vec![input("image")];
    assert!(matches!(store.insert_job(a.clone(), vec![]).await, Err(StoreError::Invalid(_))));
    assert_eq!(store.get_job(a.id).unwrap(), None);
    // Stored in the job's own commit; a second job with the same image shares the blob.
    let a = store.insert_job_with_blobs(a, vec![img.clone()], vec![]).await.unwrap();
    let mut b = job(2);
    b.inputs = vec![input("image"), input("mask")];
    let b = store.insert_job_with_blobs(b, vec![img.clone()], vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&img.hash).unwrap().unwrap().n_refs, 3);
    assert_eq!(store.read_blob(&img.hash).unwrap().unwrap(), img.bytes.to_vec());
    // An output of the same bytes counts too; updates keep input references as they are.
    let mut done = a.clone();
    done.state = JobState::Succeeded;
    done.outputs = vec![output("same.png", &img)];
    store.complete_job(done.clone(), vec![], vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&img.hash).unwrap().unwrap().n_refs, 4);
    assert_eq!(store.get_job(a.id).unwrap().unwrap().inputs, a.inputs);
    let mut dropped = b.clone();
    dropped.inputs.clear();
    store.update_job(dropped, vec![]).await.unwrap();
    assert_eq!(store.blob_meta(&img.hash).unwrap().unwrap().n_refs, 2);
    // Two inputs of one job with the same name are refused.
    let mut c = job(3);
    c.inputs = vec![input("image"), input("image")];
    assert!(matches!(store.insert_job(c, vec![]).await, Err(StoreError::Invalid(_))));
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn bad_blobs_are_refused_before_writing() {
    let (_dir, store) = open_temp();
    let a = store.insert_job(job(1), vec![]).await.unwrap();
    let good = blob("image/png", bytes_of("g", 100));

    // Wrong hash for the bytes.
    let mut forged = good.clone();
    forged.hash = [7; 32];
    let mut done = a.clone();
    done.state = JobState::Succeeded;
    done.outputs = vec![output("0.png", &forged)];
    assert!(matches!(store.complete_job(done.clone(), vec![forged], vec![]).await, Err(StoreError::Invalid(_))));

    // Output naming a blob nobody provided.
    assert!(matches!(store.update_job(done.clone(), vec![]).await, Err(StoreError::Invalid(_))));

    // Output size disagreeing with the blob.
    let mut wrong_size = done.clone();
    wrong_size.outputs = vec![output("0.png", &good)];
    wrong_size.outputs[0].size_bytes = 99;
    assert!(matches!(store.complete_job(wrong_size, vec![good.clone()], vec![]).await, Err(StoreError::Invalid(_))));

    // Duplicate output names.
    let mut dup = done.clone();
    dup.outputs = vec![output("0.png", &good), output("0.png", &good)];
    assert!(matches!(store.complete_job(dup, vec![good.clone()], vec![]).await, Err(StoreError::Invalid(_))));

    assert_eq!(store.get_job(a.id).unwrap(), Some(a));
    assert_eq!(store.blob_meta(&good.hash).unwrap(), None);
    assert_eq!(store.stats().unwrap().n_blobs, 0);
}

#[tokio::test]
async fn large_blob_is_chunked_and_media_type_decides_compression() {
    let (_dir, store) = open_temp();
    let big = blob("image/png", bytes_of("big", 3 * 1024 * 1024));
    let text = blob("text/plain; charset=utf-8", "all work and no play ".repeat(50_000).into_bytes());
    let json_random = blob("application/octet-stream", bytes_of("rnd", 10_000));
    let png_repetitive = blob("image/png", vec![0u8; 100_000]);
    let svg = blob("image/svg+xml", "<svg><rect/></svg>".repeat(1000).into_bytes());
    let all = [big.clone(), text.clone(), json_random.clone(), png_repetitive.clone(), svg.clone()];

    let j = store.insert_job(job(1), vec![]).await.unwrap();
    let mut done = j.clone();
    done.state = JobState::Succeeded;
    done.outputs = all.iter().enumerate().map(|(i, b)| output(&format!("{i}"), b)).collect();
    store.complete_job(done, all.to_vec(), vec![JobEventKind::Succeeded { n_outputs: 5 }]).await.unwrap();

    let m = store.blob_meta(&big.hash).unwrap().unwrap();
    assert_eq!((m.n_chunks, m.compressed, m.size_bytes, m.stored_bytes), (12, false, 3 << 20, 3 << 20));
    let m = store.blob_meta(&text.hash).unwrap().unwrap();
    assert!(m.compressed);
    assert!(m.stored_bytes < m.size_bytes / 10, "{m:?}");
    assert_eq!(m.n_chunks, m.stored_bytes.div_ceil(256 * 1024) as u32);
    assert!(store.blob_meta(&svg.hash).unwrap().unwrap().compressed);
    // Compressible type, incompressible bytes: kept raw.
    assert!(!store.blob_meta(&json_random.hash).unwrap().unwrap().compressed);
    // Never for already-compressed media types, even if it would shrink.
    assert!(!store.blob_meta(&png_repetitive.hash).unwrap().unwrap().compressed);

    for b in &all {
        assert_eq!(store.read_blob(&b.hash).unwrap().as_deref(), Some(&b.bytes[..]));
    }
    let stats = store.stats().unwrap();
    assert_eq!(stats.n_blobs, 5);
    assert_eq!(stats.blob_bytes, all.iter().map(|b| b.bytes.len() as u64).sum::<u64>());
    assert!(stats.blob_stored_bytes < stats.blob_bytes);
    store.verify_integrity().unwrap();
}

#[test]
fn compressible_media_types() {
    use super::blobs::compressible;
    for t in [
        "text/plain",
        "TEXT/HTML; charset=utf-8",
        "application/json",
        "image/svg+xml",
        "image/bmp",
        "image/tiff",
        "audio/wav",
        "application/ld+json",
    ] {
        assert!(compressible(t), "{t}");
    }
    for t in [
        "image/png",
        "image/jpeg",
        "image/webp",
        "image/gif",
        "video/mp4",
        "video/webm",
        "audio/mpeg",
        "audio/ogg",
        "audio/flac",
        "",
    ] {
        assert!(!compressible(t), "{t}");
    }
}

#[tokio::test]
async fn corrupt_records_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let b = blob("text/plain", "hello hello hello ".repeat(100).into_bytes());
    let (a, hash) = {
        let store = Store::open(&path).unwrap();
        let a = store.insert_job(job(1), vec![]).await.unwrap();
        let mut done = a.clone();
        done.state = JobState::Succeeded;
        done.outputs = vec![output("t.txt", &b)];
        store.complete_job(done, vec![b.clone()], vec![]).await.unwrap();
        store.put_workflow(workflow("wf", "w")).await.unwrap();
        (a, b.hash)
    };

    // Garbage in place of a job record, and a record under the wrong key.
    let garbage_id = Uuid::new_v4();
    raw_put_job(&path, garbage_id.as_u128(), &[1, 0xff, 0xff, 0xff]);
    let misplaced = Uuid::new_v4();
    let mut record = vec![5u8]; // the job record format version
    record.extend(postcard::to_allocvec(&a).unwrap());
    raw_put_job(&path, misplaced.as_u128(), &record);
    // A version-1 record (before `inputs`, `owner`, `webhook_events` and `cache_key`, the
    // last fields: an empty list, `None` and 0 are one 0 byte each) and a version-2 record
    // (before `owner`).
    let mut old_format = a.clone();
    old_format.id = Uuid::new_v4();
    let mut v1 = vec![1u8];
    v1.extend(postcard::to_allocvec(&old_format).unwrap());
    assert_eq!(v1.split_off(v1.len() - 4), vec![0, 0, 0, 0]);
    raw_put_job(&path, old_format.id.as_u128(), &v1);
    let mut v2_format = a.clone();
    v2_format.id = Uuid::new_v4();
    let mut v2 = vec![2u8];
    v2.extend(postcard::to_allocvec(&v2_format).unwrap());
    assert_eq!(v2.split_off(v2.len() - 3), vec![0, 0, 0]);
    raw_put_job(&path, v2_format.id.as_u128(), &v2);
    raw_put_job(&path, Uuid::new_v4().as_u128(), &[]);
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(WORKFLOWS).unwrap().insert("wf", &[9u8, 0][..]).unwrap();
        // Flip the content of the blob's only chunk.
        let mut chunks = txn.open_table(BLOB_CHUNKS).unwrap();
        let mut chunk = chunks.get((hash, 0)).unwrap().unwrap().value().to_vec();
        let last = chunk.len() - 1;
        chunk[last] ^= 0xff;
        chunks.insert((hash, 0), chunk.as_slice()).unwrap();
        drop(chunks);
        txn.commit().unwrap();
    }

    let store = Store::open(&path).unwrap();
    assert_eq!(store.get_job(old_format.id).unwrap(), Some(old_format), "a version-1 job record reads");
    assert_eq!(store.get_job(v2_format.id).unwrap(), Some(v2_format), "a version-2 job record reads");
    match store.get_job(garbage_id) {
        Err(StoreError::Corrupt { table: "jobs", key, .. }) => assert_eq!(key, garbage_id.to_string()),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.get_job(misplaced) {
        Err(StoreError::Corrupt { table: "jobs", key, reason }) => {
            assert_eq!(key, misplaced.to_string());
            assert!(reason.contains(&a.id.to_string()), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    match store.get_workflow("wf") {
        Err(StoreError::Corrupt { table: "workflows", key, reason }) => {
            assert_eq!(key, "wf");
            assert!(reason.contains("format version 9"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(store.list_workflows(), Err(StoreError::Corrupt { .. })));
    match store.read_blob(&hash) {
        Err(StoreError::Corrupt { table: "blobs", key, .. }) => assert_eq!(key, crate::domain::hash_hex(&hash)),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Metadata is intact; the job is still readable; writes to it still work.
    assert_eq!(store.blob_meta(&hash).unwrap().unwrap().n_refs, 1);
    assert!(store.get_job(a.id).unwrap().is_some());
    assert!(matches!(store.update_job(job(0), vec![]).await, Err(StoreError::JobNotFound(_))));
    // Updating the garbage job fails cleanly with the key.
    let mut g = job(0);
    g.id = garbage_id;
    assert!(matches!(store.update_job(g, vec![]).await, Err(StoreError::Corrupt { table: "jobs", .. })));
}

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let b = blob("application/json", "{\"x\":1}".repeat(1000).into_bytes());
    let (queued, done, wf) = {
        let store = Store::open(&path).unwrap();
        let queued = store.insert_job(job(5), vec![JobEventKind::Queued]).await.unwrap();
        let mut done = store.insert_job(job(6), vec![JobEventKind::Queued]).await.unwrap();
        done.state = JobState::Succeeded;
        done.outputs = vec![output("o.json", &b)];
        store
            .complete_job(done.clone(), vec![b.clone()], vec![JobEventKind::Succeeded { n_outputs: 1 }])
            .await
            .unwrap();
        let wf = store.put_workflow(workflow("wf", "w")).await.unwrap();
        (queued, done, wf)
        // dropped here without close()
    };
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get_job(queued.id).unwrap(), Some(queued.clone()));
    assert_eq!(store.get_job(done.id).unwrap(), Some(done.clone()));
    assert_eq!(store.queued_jobs().unwrap(), vec![queued]);
    assert_eq!(store.job_events(done.id, None, 10).unwrap().len(), 2);
    assert_eq!(store.get_workflow("wf").unwrap(), Some(wf));
    assert_eq!(store.read_blob(&b.hash).unwrap().as_deref(), Some(&b.bytes[..]));
    assert_eq!(counts(&store), vec![1, 0, 1, 0, 0]);
    // The sequence counter is persistent.
    let next = store.insert_job(job(7), vec![]).await.unwrap();
    assert_eq!(next.queue_key.seq, 3);
    store.close().await;
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.stats().unwrap().n_jobs_by_state[0], (JobState::Queued, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits() {
    let (_dir, store) = open_temp();
    let base = store.commits();
    let n = 2_000;
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.insert_job(job(i % 7), vec![JobEventKind::Queued]).await }));
    }
    // Interleave ops that must be rejected without hurting their batch-mates.
    let mut bad = Vec::new();
    for _ in 0..50 {
        let store = store.clone();
        bad.push(tokio::spawn(async move { store.update_job(job(0), vec![]).await }));
    }
    let mut ids = HashSet::new();
    let mut seqs = HashSet::new();
    for t in tasks {
        let j = t.await.unwrap().unwrap();
        ids.insert(j.id);
        seqs.insert(j.queue_key.seq);
    }
    for t in bad {
        assert!(matches!(t.await.unwrap(), Err(StoreError::JobNotFound(_))));
    }
    assert_eq!((ids.len(), seqs.len()), (n as usize, n as usize));
    let queued = store.queued_jobs().unwrap();
    assert_eq!(queued.len(), n as usize);
    assert!(queued.windows(2).all(|w| w[0].queue_key < w[1].queue_key));
    assert!(queued.iter().all(|j| ids.contains(&j.id)));
    assert_eq!(counts(&store)[0], n as u64);
    let commits = store.commits() - base;
    assert!(commits < n as u64 / 4, "{commits} commits for {n} inserts");
}

#[tokio::test]
async fn close_drains_then_refuses_writes() {
    let (_dir, store) = open_temp();
    let pending: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_job(job(i), vec![]).await })
        })
        .collect();
    tokio::task::yield_now().await;
    store.close().await;
    store.close().await;
    let mut ok = 0;
    for p in pending {
        match p.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::Closed) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(store.queued_jobs().unwrap().len(), ok);
    assert!(matches!(store.insert_job(job(1), vec![]).await, Err(StoreError::Closed)));
    assert!(matches!(store.put_workflow(workflow("w", "w")).await, Err(StoreError::Closed)));
}

#[tokio::test]
async fn index_corruption_poisons_only_its_own_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let victim = {
        let store = Store::open(&path).unwrap();
        store.insert_job(job(1), vec![]).await.unwrap()
    };
    {
        // Remove the queue entry behind the store's back.
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(QUEUE).unwrap().remove((1i64, victim.queue_key.seq)).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert!(matches!(store.queued_jobs(), Ok(v) if v.is_empty()));
    match store.verify_integrity() {
        Err(StoreError::Corrupt { table: "queue", .. }) => {}
        other => panic!("expected Corrupt queue, got {other:?}"),
    }
    let mut running = victim.clone();
    running.state = JobState::Running;
    let others: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_job(job(10 + i), vec![JobEventKind::Queued]).await })
        })
        .collect();
    let result = store.update_job(running, vec![JobEventKind::Queued]).await;
    match result {
        Err(StoreError::Corrupt { table: "queue", .. }) => {}
        other => panic!("expected Corrupt queue, got {other:?}"),
    }
    for o in others {
        o.await.unwrap().unwrap();
    }
    // Nothing of the poisoned write is visible; the rest committed.
    assert_eq!(store.get_job(victim.id).unwrap(), Some(victim.clone()));
    assert_eq!(store.job_events(victim.id, None, 10).unwrap(), vec![]);
    assert_eq!(store.running_jobs().unwrap(), vec![]);
    assert_eq!(store.queued_jobs().unwrap().len(), 20);
}

#[tokio::test]
async fn schema_version_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(Store::open(&path).unwrap());
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(super::tables::META).unwrap().insert("schema_version", 99).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(Store::open(&path), Err(StoreError::Schema { found: 99, expected: 2 })));
}

#[test]
fn reads_work_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&db_path(&dir)).unwrap();
    assert_eq!(store.queued_jobs().unwrap(), vec![]);
    assert_eq!(store.list_workflows().unwrap(), vec![]);
    assert_eq!(counts(&store), vec![0; 5]);
    let _: Hash = [0; 32];
    assert_eq!(store.blob_meta(&[0; 32]).unwrap(), None);
}

/// Random operations against the real store and a plain in-memory model, with a reopen
/// now and then; after every step the store must agree with the model and pass
/// `verify_integrity`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_based_random_operations() {
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use std::collections::{BTreeMap, HashMap};

    let pool: Vec<NewBlob> = (0..6)
        .map(|i| {
            let media = ["image/png", "text/plain", "application/json"][i % 3];
            let len = [10, 300_000, 5_000, 0, 70_000, 600][i];
            let mut bytes = bytes_of(&format!("pool{i}"), len);
            if media != "image/png" {
                bytes.iter_mut().for_each(|b| *b %= 4);
            }
            blob(media, bytes)
        })
        .collect();

    for seed in 0..3u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = db_path(&dir);
        let mut store = Store::open(&path).unwrap();
        let mut jobs: BTreeMap<Uuid, Job> = BTreeMap::new();
        let mut n_events: HashMap<Uuid, usize> = HashMap::new();
        let mut wf_current: BTreeMap<String, u32> = BTreeMap::new();
        let mut wf_last: HashMap<String, u32> = HashMap::new();

        for _step in 0..150 {
            let ids: Vec<Uuid> = jobs.keys().copied().collect();
            match rng.random_range(0..10) {
                0 | 1 => {
                    // A burst of concurrent inserts.
                    let n = rng.random_range(1..8);
                    let mut tasks = Vec::new();
                    for _ in 0..n {
                        let mut j = job(rng.random_range(-5..20));
                        j.created_ms = rng.random_range(0..30);
                        j.owner = [None, Some("key:0123456789abcdef"), Some("jwt:ann")][rng.random_range(0..3)]
                            .map(str::to_string);
                        if rng.random_bool(0.2) {
                            j.state = JobState::Running;
                        }
                        let s = store.clone();
                        tasks.push(tokio::spawn(async move { s.insert_job(j, vec![JobEventKind::Queued]).await }));
                    }
                    for t in tasks {
                        let j = t.await.unwrap().unwrap();
                        n_events.insert(j.id, 1);
                        jobs.insert(j.id, j);
                    }
                }
                2..=5 if !ids.is_empty() => {
                    let id = ids[rng.random_range(0..ids.len())];
                    let mut j = jobs[&id].clone();
                    j.state = [
                        JobState::Queued,
                        JobState::Running,
                        JobState::Succeeded,
                        JobState::Failed,
                        JobState::Canceled,
                    ][rng.random_range(0..5)];
                    j.queue_key.rank_ms = rng.random_range(-5..20);
                    j.n_attempts += 1;
                    let mut provided = Vec::new();
                    if rng.random_bool(0.5) {
                        j.outputs = (0..rng.random_range(0..4))
                            .map(|k| {
                                let b = &pool[rng.random_range(0..pool.len())];
                                if rng.random_bool(0.7) {
                                    provided.push(b.clone());
                                }
                                output(&format!("{k}.out"), b)
                            })
                            .collect();
                    }
                    let events = vec![JobEventKind::Requeued { reason: "model".into() }; rng.random_range(0..3)];
                    let n_new = events.len();
                    let result = store.complete_job(j.clone(), provided, events).await;
                    let all_available = j
                        .outputs
                        .iter()
                        .all(|o| jobs.values().any(|other| other.outputs.iter().any(|p| p.hash == o.hash)));
                    match result {
                        Ok(()) => {
                            *n_events.entry(id).or_default() += n_new;
                            jobs.insert(id, j);
                        }
                        // Only allowed when an output names a blob neither stored nor sent.
                        Err(StoreError::Invalid(_)) => assert!(!all_available),
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                6 if !ids.is_empty() => {
                    let id = ids[rng.random_range(0..ids.len())];
                    let p = JobEventKind::Progress { node: "1".into(), value: 1.0, max: 2.0 };
                    store.append_events(id, vec![p.clone(), p]).await.unwrap();
                    *n_events.entry(id).or_default() += 2;
                }
                7 => {
                    let id = ["a", "b", "c"][rng.random_range(0..3)].to_string();
                    if rng.random_bool(0.6) {
                        let rec = store.put_workflow(workflow(&id, "m")).await.unwrap();
                        let last = wf_last.entry(id.clone()).or_default();
                        *last += 1;
                        assert_eq!(rec.version, *last);
                        wf_current.insert(id, rec.version);
                    } else {
                        let existed = store.delete_workflow(&id).await.unwrap();
                        assert_eq!(existed, wf_current.remove(&id).is_some());
                    }
                }
                8 => {
                    // Restart: drop without close, reopen.
                    drop(store);
                    store = Store::open(&path).unwrap();
                }
                _ => {
                    assert!(matches!(store.update_job(job(0), vec![]).await, Err(StoreError::JobNotFound(_))));
                }
            }

            // The store agrees with the model.
            for (id, j) in &jobs {
                assert_eq!(store.get_job(*id).unwrap().as_ref(), Some(j));
                assert_eq!(store.job_events(*id, None, usize::MAX).unwrap().len(), n_events[id]);
            }
            let mut queued: Vec<&Job> = jobs.values().filter(|j| j.state == JobState::Queued).collect();
            queued.sort_by_key(|j| j.queue_key);
            let got: Vec<Job> = store.queued_jobs().unwrap();
            assert_eq!(got.iter().collect::<Vec<_>>(), queued);
            let running: Vec<&Job> = jobs.values().filter(|j| j.state == JobState::Running).collect();
            assert_eq!(store.running_jobs().unwrap().iter().collect::<Vec<_>>(), running);
            let mut refs: HashMap<Hash, u64> = HashMap::new();
            for o in jobs.values().flat_map(|j| &j.outputs) {
                *refs.entry(o.hash).or_default() += 1;
            }
            for b in &pool {
                let meta = store.blob_meta(&b.hash).unwrap();
                assert_eq!(meta.map(|m| m.n_refs), refs.get(&b.hash).copied());
            }
            let listed: Vec<_> = store.list_workflows().unwrap().into_iter().map(|w| (w.id, w.version)).collect();
            assert_eq!(listed, wf_current.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>());
            let mut all: Vec<&Job> = jobs.values().collect();
            all.sort_by_key(|j| std::cmp::Reverse((j.created_ms, j.id)));
            assert_eq!(store.list_jobs(None, usize::MAX, |_| true).unwrap().iter().collect::<Vec<_>>(), all);
            store.verify_integrity().unwrap();
        }
        for b in &pool {
            if store.blob_meta(&b.hash).unwrap().is_some() {
                assert_eq!(store.read_blob(&b.hash).unwrap().as_deref(), Some(&b.bytes[..]));
            }
        }
    }
}

#[tokio::test]
async fn list_jobs_pages_newest_first_with_a_filter() {
    let (_dir, store) = open_temp();
    let mut made = Vec::new();
    for i in 0..10u64 {
        let mut j = job(0);
        j.created_ms = 100 + i / 2; // pairs share a timestamp: the id breaks the tie
        j.workflow_id = if i % 3 == 0 { "x" } else { "y" }.to_string();
        made.push(store.insert_job(j, vec![]).await.unwrap());
    }
    made.sort_by_key(|j| std::cmp::Reverse((j.created_ms, j.id)));
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_jobs(cursor, 3, |_| true).unwrap();
        let Some(last) = page.last() else { break };
        cursor = Some((last.created_ms, last.id));
        pages.extend(page);
    }
    assert_eq!(pages, made);
    let xs = store.list_jobs(None, 10, |j| j.workflow_id == "x").unwrap();
    assert_eq!(xs, made.iter().filter(|j| j.workflow_id == "x").cloned().collect::<Vec<_>>());
    assert_eq!(store.list_jobs(None, 0, |_| true).unwrap(), vec![]);

    // created_ms is immutable (it keys the listing).
    let mut moved = made[0].clone();
    moved.created_ms += 1;
    assert!(matches!(store.update_job(moved, vec![]).await, Err(StoreError::Invalid(_))));
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn owner_usage_follows_inserts_outputs_and_prunes_charging_shared_blobs_to_every_job() {
    let (_dir, store) = open_temp();
    let img = blob("image/png", bytes_of("usage-input", 3_000));
    let shared = blob("image/png", bytes_of("usage-shared", 5_000));
    let own = blob("image/png", bytes_of("usage-own", 7_000));
    let input = crate::domain::InputRef {
        name: "image".to_string(),
        file_name: "image.png".to_string(),
        media_type: "image/png".to_string(),
        size_bytes: 3_000,
        hash: img.hash,
    };
    let owned =
        |rank, owner: Option<&str>| Job { owner: owner.map(str::to_string), inputs: vec![input.clone()], ..job(rank) };
    let usage = |owner: Option<&str>| store.owner_usage(owner).unwrap();
    // Inputs are charged at insert; the blob both jobs share, to each of them in full.
    let a = store.insert_job_with_blobs(owned(1, Some("alice")), vec![img.clone()], vec![]).await.unwrap();
    let b = store.insert_job_with_blobs(owned(2, Some("bob")), vec![img.clone()], vec![]).await.unwrap();
    let c = store.insert_job_with_blobs(owned(3, None), vec![img.clone()], vec![]).await.unwrap();
    assert_eq!((usage(Some("alice")), usage(Some("bob")), usage(None)), (3_000, 3_000, 3_000));
    assert_eq!(usage(Some("nobody")), 0);
    // Outputs at success (one of them shared with bob's), once however often completed.
    let mut a_done = a.clone();
    a_done.state = JobState::Succeeded;
    a_done.finished_ms = Some(10);
    a_done.outputs = vec![output("0.png", &shared), output("1.png", &own)];
    store.complete_job(a_done.clone(), vec![shared.clone(), own.clone()], vec![]).await.unwrap();
    store.complete_job(a_done.clone(), vec![], vec![]).await.unwrap();
    let mut b_done = b.clone();
    b_done.state = JobState::Succeeded;
    b_done.finished_ms = Some(10);
    b_done.outputs = vec![output("0.png", &shared)];
    store.complete_job(b_done, vec![], vec![]).await.unwrap();
    assert_eq!((usage(Some("alice")), usage(Some("bob"))), (15_000, 8_000));
    let stats = store.stats().unwrap();
    assert_eq!((stats.usage_bytes, stats.n_owners_with_usage), (26_000, 3));
    store.verify_integrity().unwrap();
    // Pruning takes a job's charge with it (c is still queued: kept).
    let pruned = store.prune(u64::MAX, 0, 0, 16).await.unwrap();
    assert_eq!(pruned.jobs, 2);
    assert_eq!((usage(Some("alice")), usage(Some("bob")), usage(None)), (0, 0, 3_000));
    let stats = store.stats().unwrap();
    assert_eq!((stats.usage_bytes, stats.n_owners_with_usage), (3_000, 1));
    store.verify_integrity().unwrap();
    assert!(store.get_job(c.id).unwrap().is_some());
}

#[tokio::test]
async fn owner_usage_is_built_once_for_an_older_database_and_checked_by_integrity() {
    let (dir, store) = open_temp();
    let img = blob("image/png", bytes_of("built-input", 2_000));
    let mut a = Job { owner: Some("alice".to_string()), ..job(1) };
    a.inputs = vec![crate::domain::InputRef {
        name: "image".to_string(),
        file_name: "image.png".to_string(),
        media_type: "image/png".to_string(),
        size_bytes: 2_000,
        hash: img.hash,
    }];
    store.insert_job_with_blobs(a, vec![img], vec![]).await.unwrap();
    store.close().await;
    drop(store);
    // As a database written before the table: no table, no marker, no total.
    {
        let db = Database::create(db_path(&dir)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(super::tables::OWNER_USAGE).unwrap();
        let mut meta = txn.open_table(super::tables::META).unwrap();
        meta.remove(super::tables::meta_key::USAGE_BUILT).unwrap();
        meta.remove(super::tables::meta_key::USAGE_BYTES).unwrap();
        drop(meta);
        txn.commit().unwrap();
    }
    let store = Store::open(&db_path(&dir)).unwrap();
    assert_eq!(store.owner_usage(Some("alice")).unwrap(), 2_000);
    store.verify_integrity().unwrap();
    store.close().await;
    drop(store);
    // A figure that disagrees with the jobs is found.
    {
        let db = Database::create(db_path(&dir)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(super::tables::OWNER_USAGE).unwrap().insert("alice", 1).unwrap();
        txn.commit().unwrap();
    }
    let store = Store::open(&db_path(&dir)).unwrap();
    let err = store.verify_integrity().unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { table: "owner_usage", .. }), "{err}");
}

#[tokio::test]
async fn measured_space_counts_the_pages_a_prune_freed() {
    let (_dir, store) = open_temp();
    let before = store.disk_space().unwrap().expect("a file store reads its disk");
    assert!(before.fs_free_bytes > 0);
    assert_eq!(before.db_reusable_bytes, 0, "not measured yet");
    let big = blob("application/x-test", bytes_of("space", 2 << 20));
    let a = store.insert_job(job(1), vec![]).await.unwrap();
    let mut done = a.clone();
    done.state = JobState::Succeeded;
    done.finished_ms = Some(1);
    done.outputs = vec![output("big.bin", &big)];
    store.complete_job(done, vec![big], vec![]).await.unwrap();
    let full = store.measure_space().await.unwrap().unwrap();
    assert_eq!(store.prune(u64::MAX, 0, 0, 16).await.unwrap().jobs, 1);
    let freed = store.measure_space().await.unwrap().unwrap();
    // The 2 MiB of chunks are free pages of the file now, reusable without growing it.
    assert!(
        freed.db_reusable_bytes >= full.db_reusable_bytes + (1 << 20),
        "before the prune {full:?}, after {freed:?}"
    );
    store.verify_integrity().unwrap();
}

#[cfg(unix)]
#[test]
fn a_new_database_file_is_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let (dir, store) = open_temp();
    drop(store);
    let path = db_path(&dir);
    // Whatever the umask: only the owner may read the jobs' inputs and outputs.
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let mut creating = path.as_os_str().to_owned();
    creating.push(".creating");
    assert!(!Path::new(&creating).exists(), "the half-created file was renamed into place");
}

/// redb's failures keep their kind (what callers such as the CLI decide on), whatever
/// redb's text says; a batch's waiters each get the same kind.
#[test]
fn redb_failures_keep_their_kind() {
    let (dir, store) = open_temp();
    match Store::open(&db_path(&dir)) {
        Err(StoreError::Locked(_)) => {}
        other => panic!("a second open of a held database: {other:?}"),
    }
    drop(store);
    assert!(Store::open(&db_path(&dir)).is_ok(), "free again once the first store is gone");
    let kind = |e: &StoreError| match e {
        StoreError::Locked(_) => "locked",
        StoreError::Damaged(_) => "damaged",
        StoreError::Upgrade(_) => "upgrade",
        StoreError::FileIo(_) => "file i/o",
        StoreError::Other(_) => "other",
        _ => "not redb's",
    };
    let io = || std::io::Error::other("a lock, a block, a clock");
    let cases: [(StoreError, &str); 7] = [
        (redb::DatabaseError::DatabaseAlreadyOpen.into(), "locked"),
        (redb::Error::Corrupted("a lock went missing".into()).into(), "damaged"),
        (redb::DatabaseError::UpgradeRequired(2).into(), "upgrade"),
        (redb::StorageError::Io(io()).into(), "file i/o"),
        (redb::CommitError::Storage(redb::StorageError::PreviousIo).into(), "file i/o"),
        (redb::TransactionError::Storage(redb::StorageError::Io(io())).into(), "file i/o"),
        (redb::TableError::TableDoesNotExist("deadlock".into()).into(), "other"),
    ];
    for (e, expected) in cases {
        assert_eq!(kind(&e), expected, "{e:?}");
        assert_eq!(kind(&e.for_waiter()), expected, "{e:?}");
        assert!(e.to_string().starts_with("redb: "), "{e}");
    }
}

/// Each database has its own id, kept across opens; an older file without one gets one at
/// its next open, kept from then on.
#[tokio::test]
async fn database_ids_are_random_and_kept() {
    let (dir, store) = open_temp();
    let (_other_dir, other) = open_temp();
    let id = store.database_id();
    assert_eq!(id.len(), 16, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
    assert_ne!(id, other.database_id(), "two databases, two ids");
    store.close().await;
    drop(store);
    let store = Store::open(&db_path(&dir)).unwrap();
    assert_eq!(store.database_id(), id, "kept across opens");
    store.close().await;
    drop(store);
    // As a database written before ids: none in `meta`.
    {
        let db = Database::create(db_path(&dir)).unwrap();
        let txn = db.begin_write().unwrap();
        let mut meta = txn.open_table(super::tables::META).unwrap();
        assert!(meta.remove(super::tables::meta_key::DATABASE_ID).unwrap().is_some());
        drop(meta);
        txn.commit().unwrap();
    }
    let store = Store::open(&db_path(&dir)).unwrap();
    let new_id = store.database_id();
    assert_ne!(new_id, id, "a fresh id for a file that had none");
    store.close().await;
    drop(store);
    assert_eq!(Store::open(&db_path(&dir)).unwrap().database_id(), new_id, "and it is kept");
}
