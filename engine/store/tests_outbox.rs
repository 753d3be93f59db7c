//! Store tests of the webhook outbox, the result cache, idempotency claims and retention,
//! against real redb files in temp dirs.

use bytes::Bytes;
use uuid::Uuid;

use super::{Claim, NewBlob, Pruned, Store, StoreError};
use crate::domain::{
    Attempt, AttemptNext, DeliveryState, IdempotencyRecord, Job, JobEventKind, JobState, OutputRef, WebhookEvent,
    WebhookEvents, now_ms,
};

fn open_temp() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("gateway.redb")).unwrap();
    (dir, store)
}

fn queued(callback: Option<&str>) -> Job {
    let mut j = Job::new_queued(Uuid::new_v4(), ("wf", 1), "{}".into(), "{\"1\":{}}".into(), 0, 1, 1_000);
    j.callback_url = callback.map(str::to_string);
    j
}

fn blob(seed: &str) -> NewBlob {
    let bytes = format!("png bytes of {seed}").into_bytes();
    NewBlob { hash: *blake3::hash(&bytes).as_bytes(), media_type: "image/png".into(), bytes: Bytes::from(bytes) }
}

fn output(b: &NewBlob) -> OutputRef {
    OutputRef {
        name: "out.png".into(),
        node_id: "9".into(),
        media_type: b.media_type.clone(),
        size_bytes: b.bytes.len() as u64,
        hash: b.hash,
    }
}

/// Run `job` (already inserted) to `Succeeded` with `outputs`, storing `blobs`.
async fn succeed(store: &Store, job: &Job, outputs: Vec<OutputRef>, blobs: Vec<NewBlob>) -> Job {
    let running = Job { state: JobState::Running, started_ms: Some(2_000), n_attempts: 1, ..job.clone() };
    store
        .update_job(running.clone(), vec![JobEventKind::Dispatched { backend: "b".into(), attempt: 1 }])
        .await
        .unwrap();
    let done = Job { state: JobState::Succeeded, outputs, finished_ms: Some(3_000), ..running };
    store.complete_job(done.clone(), blobs, vec![JobEventKind::Succeeded { n_outputs: 1 }]).await.unwrap();
    done
}

fn refs(store: &Store, b: &NewBlob) -> Option<u64> {
    store.blob_meta(&b.hash).unwrap().map(|m| m.n_refs)
}

#[tokio::test]
async fn a_terminal_state_commits_its_delivery_and_attempts_are_logged() {
    let (_dir, store) = open_temp();
    let silent = store.insert_job(queued(None), vec![JobEventKind::Queued]).await.unwrap();
    succeed(&store, &silent, vec![], vec![]).await;
    assert!(store.job_deliveries(silent.id).unwrap().is_empty(), "no callback, no delivery");

    let job = store.insert_job(queued(Some("https://hooks.example/a")), vec![JobEventKind::Queued]).await.unwrap();
    let before = now_ms();
    let done = succeed(&store, &job, vec![], vec![]).await;
    let deliveries = store.job_deliveries(job.id).unwrap();
    assert_eq!(deliveries.len(), 1, "terminal only: no job.started without asking");
    let d = &deliveries[0];
    assert_eq!((d.event.clone(), d.state, d.n_attempts), (WebhookEvent::Succeeded, DeliveryState::Pending, 0));
    assert_eq!(d.job, done, "the snapshot is the job as committed");
    assert!(d.id.starts_with("msg_") && d.id.len() == 36, "{}", d.id);
    assert!(d.next_attempt_ms >= before);
    assert_eq!(store.due_deliveries(now_ms(), 10).unwrap(), deliveries);
    assert_eq!(store.next_delivery_due_ms().unwrap(), Some(d.next_attempt_ms));
    store.verify_integrity().unwrap();

    // A failed attempt: pending again at the retry time, logged on the job.
    let retry_at = now_ms() + 60_000;
    let a1 = Attempt { at_ms: now_ms(), status: Some(503), error: None, next: AttemptNext::RetryAt(retry_at) };
    let after = store.record_attempt(d.seq, a1).await.unwrap();
    assert_eq!((after.state, after.n_attempts, after.next_attempt_ms), (DeliveryState::Pending, 1, retry_at));
    assert_eq!(after.id, d.id, "the webhook-id never changes");
    assert!(store.due_deliveries(now_ms(), 10).unwrap().is_empty(), "not due before the retry time");
    assert_eq!(store.due_deliveries(retry_at, 10).unwrap().len(), 1);
    let delivered = Attempt { at_ms: now_ms(), status: Some(204), error: None, next: AttemptNext::Delivered };
    let after = store.record_attempt(d.seq, delivered.clone()).await.unwrap();
    assert_eq!((after.state, after.n_attempts, after.last_status), (DeliveryState::Delivered, 2, Some(204)));
    assert_eq!(store.next_delivery_due_ms().unwrap(), None);
    assert!(matches!(store.record_attempt(d.seq, delivered).await, Err(StoreError::Invalid(_))), "not pending");
    let log: Vec<_> = store.job_events(job.id, None, 100).unwrap().into_iter().map(|(_, e)| e.kind).collect();
    let webhook_log: Vec<_> = log
        .iter()
        .filter_map(|k| match k {
            JobEventKind::Webhook { attempt, status, outcome, next_attempt_ms, .. } => {
                Some((*attempt, *status, outcome.as_str(), *next_attempt_ms))
            }
            _ => None,
        })
        .collect();
    assert_eq!(webhook_log, vec![(1, Some(503), "retrying", Some(retry_at)), (2, Some(204), "delivered", None)]);
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn started_and_progress_only_when_asked_and_410_disables_until_redelivery() {
    let (_dir, store) = open_temp();
    let url = "https://hooks.example/b";
    let mut j = queued(Some(url));
    j.webhook_events = WebhookEvents::STARTED | WebhookEvents::PROGRESS;
    let job = store.insert_job(j, vec![JobEventKind::Queued]).await.unwrap();
    let running = Job { state: JobState::Running, n_attempts: 1, ..job.clone() };
    store
        .update_job(running.clone(), vec![JobEventKind::Dispatched { backend: "b".into(), attempt: 1 }])
        .await
        .unwrap();
    store.append_events(job.id, vec![JobEventKind::Progress { node: "3".into(), value: 1.0, max: 4.0 }]).await.unwrap();
    store.append_events(job.id, vec![JobEventKind::Milestone { node: "3".into(), percent: 25 }]).await.unwrap();
    // A resubmission (attempt 2) is not a new start.
    let again = Job { n_attempts: 2, ..running.clone() };
    store.update_job(again.clone(), vec![JobEventKind::Dispatched { backend: "b".into(), attempt: 2 }]).await.unwrap();
    let events: Vec<_> = store.job_deliveries(job.id).unwrap().into_iter().map(|d| d.event).collect();
    assert_eq!(events, vec![WebhookEvent::Started, WebhookEvent::Progress { node: "3".into(), percent: 25 }]);

    let first = &store.job_deliveries(job.id).unwrap()[0];
    let gone = Attempt { at_ms: 77, status: Some(410), error: None, next: AttemptNext::Disable };
    assert_eq!(store.record_attempt(first.seq, gone).await.unwrap().state, DeliveryState::Disabled);
    assert_eq!(store.endpoint_disabled_ms(url).unwrap(), Some(77));
    assert_eq!(store.endpoint_disabled_ms("https://hooks.example/other").unwrap(), None);
    store.verify_integrity().unwrap();

    let now = now_ms();
    let redelivered = store.redeliver(job.id, now).await.unwrap();
    assert_eq!(redelivered.len(), 2);
    assert!(redelivered.iter().all(|d| d.state == DeliveryState::Pending && d.next_attempt_ms == now));
    assert_eq!(redelivered[0].id, first.id);
    assert_eq!(redelivered[0].n_attempts, 1, "attempts are kept");
    assert_eq!(store.endpoint_disabled_ms(url).unwrap(), None, "a redelivery re-enables the endpoint");
    assert_eq!(store.due_deliveries(now, 10).unwrap().len(), 2);
    // The worker skips what is in flight or waits for a busy destination, unread.
    let (a, b) = (redelivered[0].seq, redelivered[1].seq);
    let mut asked = Vec::new();
    let rest = store
        .due_deliveries_skipping(now, 10, 10, |seq| {
            asked.push(seq);
            seq == a
        })
        .unwrap();
    assert_eq!((asked, rest.iter().map(|d| d.seq).collect::<Vec<_>>()), (vec![a, b], vec![b]));
    assert_eq!(store.due_deliveries_skipping(now, 10, 1, |_| false).unwrap().len(), 1, "load_max");
    assert_eq!(store.due_deliveries_skipping(now, 1, 10, |_| false).unwrap().len(), 1, "scan_max");
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn cache_entries_share_blobs_and_outlive_their_job_until_pruned() {
    let (_dir, store) = open_temp();
    let b = blob("cat");
    let key = [7u8; 32];
    let source = store.insert_job(Job { cache_key: Some(key), ..queued(None) }, vec![]).await.unwrap();
    assert_eq!(store.cache_entry(&key).unwrap(), None);
    succeed(&store, &source, vec![output(&b)], vec![b.clone()]).await;
    let entry = store.cache_entry(&key).unwrap().expect("filled on success");
    assert_eq!((entry.job_id, entry.outputs.clone()), (source.id, vec![output(&b)]));
    assert_eq!(refs(&store, &b), Some(2), "the job and the entry");

    // A hit is a job born succeeded, sharing the blob; it does not refill the entry.
    let now = now_ms();
    let hit = Job {
        state: JobState::Succeeded,
        cached: true,
        cache_key: Some(key),
        outputs: entry.outputs.clone(),
        started_ms: Some(now),
        finished_ms: Some(now),
        ..queued(None)
    };
    store.insert_job(hit.clone(), vec![JobEventKind::Succeeded { n_outputs: 1 }]).await.unwrap();
    assert_eq!(refs(&store, &b), Some(3));
    assert_eq!(store.cache_entry(&key).unwrap(), Some(entry.clone()));
    assert_eq!(store.stats().unwrap().n_blobs, 1, "one copy of the bytes");
    store.verify_integrity().unwrap();

    // Retention removes the jobs; the entry keeps the blob until it expires too.
    let pruned = store.prune(u64::MAX, 0, now_ms(), 100).await.unwrap();
    assert_eq!(pruned, Pruned { jobs: 2, cache_entries: 0, idempotency_keys: 0 });
    assert_eq!((store.get_job(source.id).unwrap(), store.get_job(hit.id).unwrap()), (None, None));
    assert!(store.job_events(source.id, None, 10).unwrap().is_empty(), "events go with the job");
    assert_eq!(refs(&store, &b), Some(1));
    assert_eq!(store.read_blob(&b.hash).unwrap().as_deref(), Some(&b.bytes[..]));
    store.verify_integrity().unwrap();
    // Nothing due: no commit (the pruner's idle ticks cost no fsync).
    let commits = store.commits();
    assert_eq!(store.prune(u64::MAX, 0, now_ms(), 100).await.unwrap(), Pruned::default());
    assert_eq!(store.commits(), commits, "an empty prune commits nothing");
    let pruned = store.prune(0, u64::MAX, now_ms(), 100).await.unwrap();
    assert_eq!(pruned.cache_entries, 1);
    assert_eq!(store.cache_entry(&key).unwrap(), None);
    assert_eq!(refs(&store, &b), None, "the last reference gone, the blob is collected");
    assert_eq!(store.stats().unwrap().n_blobs, 0);
    store.verify_integrity().unwrap();
}

#[tokio::test]
async fn retention_skips_unfinished_and_undelivered_jobs() {
    let (_dir, store) = open_temp();
    let waiting = store.insert_job(queued(None), vec![JobEventKind::Queued]).await.unwrap();
    let undelivered = store.insert_job(queued(Some("https://hooks.example/c")), vec![]).await.unwrap();
    succeed(&store, &undelivered, vec![], vec![]).await;
    let pruned = store.prune(u64::MAX, 0, now_ms(), 100).await.unwrap();
    assert_eq!(pruned.jobs, 0, "a queued job and a job with a pending webhook stay");
    assert!(store.get_job(waiting.id).unwrap().is_some());
    let d = &store.job_deliveries(undelivered.id).unwrap()[0];
    let ok = Attempt { at_ms: now_ms(), status: Some(200), error: None, next: AttemptNext::Delivered };
    store.record_attempt(d.seq, ok).await.unwrap();
    // The cutoff is exclusive: a job that finished at 3000 stays with a cutoff of 3000.
    assert_eq!(store.prune(3_000, 0, now_ms(), 100).await.unwrap().jobs, 0);
    assert_eq!(store.prune(3_001, 0, now_ms(), 100).await.unwrap().jobs, 1);
    assert!(store.job_deliveries(undelivered.id).unwrap().is_empty(), "deliveries go with the job");
    assert_eq!(store.stats().unwrap().n_jobs_by_state.iter().map(|(_, n)| n).sum::<u64>(), 1);
    store.verify_integrity().unwrap();

    // Batches are bounded.
    for _ in 0..5 {
        let j = store.insert_job(queued(None), vec![]).await.unwrap();
        succeed(&store, &j, vec![], vec![]).await;
    }
    let first = store.prune(u64::MAX, 0, now_ms(), 2).await.unwrap();
    assert!(first.is_full(2) && first.jobs == 2);
    assert_eq!(store.prune(u64::MAX, 0, now_ms(), 10).await.unwrap().jobs, 3);
    store.verify_integrity().unwrap();
}

fn claim(owner: &str, key: &str, job: &Job, expires_ms: u64) -> Claim {
    Claim {
        key: format!("{owner}\n{key}"),
        record: IdempotencyRecord { body_hash: [1; 32], job_id: job.id, status: 202, created_ms: now_ms(), expires_ms },
    }
}

#[tokio::test]
async fn an_idempotency_key_is_claimed_once_until_it_expires() {
    let (_dir, store) = open_temp();
    let later = now_ms() + 60_000;
    let a = queued(None);
    store.insert_job_claiming(a.clone(), vec![], vec![], Some(claim("o", "k", &a, later))).await.unwrap();
    let b = queued(None);
    match store.insert_job_claiming(b.clone(), vec![], vec![], Some(claim("o", "k", &b, later))).await {
        Err(StoreError::IdempotencyTaken(rec)) => assert_eq!(rec.job_id, a.id),
        other => panic!("expected IdempotencyTaken, got {other:?}"),
    }
    assert_eq!(store.get_job(b.id).unwrap(), None, "nothing written");
    // Another owner's key of the same name is another key.
    store.insert_job_claiming(b.clone(), vec![], vec![], Some(claim("p", "k", &b, later))).await.unwrap();
    assert_eq!(store.idempotency_record("o\nk").unwrap().unwrap().job_id, a.id);

    // Concurrent claims of one key: exactly one insert wins.
    let racers: Vec<Job> = (0..8).map(|_| queued(None)).collect();
    let results = futures_util::future::join_all(
        racers.iter().map(|j| store.insert_job_claiming(j.clone(), vec![], vec![], Some(claim("o", "race", j, later)))),
    )
    .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(StoreError::IdempotencyTaken(_)))));

    // An expired record is replaced, and pruned once expired.
    let c = queued(None);
    store.insert_job_claiming(c.clone(), vec![], vec![], Some(claim("o", "old", &c, 5))).await.unwrap();
    let d = queued(None);
    store.insert_job_claiming(d.clone(), vec![], vec![], Some(claim("o", "old", &d, 6))).await.unwrap();
    assert_eq!(store.idempotency_record("o\nold").unwrap().unwrap().job_id, d.id);
    store.verify_integrity().unwrap();
    let pruned = store.prune(0, 0, now_ms(), 100).await.unwrap();
    assert_eq!(pruned.idempotency_keys, 1);
    assert_eq!(store.idempotency_record("o\nold").unwrap(), None);
    assert!(store.idempotency_record("o\nk").unwrap().is_some(), "unexpired records stay");
}

/// On a paused clock: "no wake-up within `quiet`" takes no real time (the clock jumps when
/// every task waits), and a wake-up that came is already there (`Notify` keeps a permit).
#[tokio::test(start_paused = true)]
async fn only_commits_that_make_a_delivery_pending_wake_the_outbox() {
    let (_dir, store) = open_temp();
    let quiet = tokio::time::Duration::from_millis(50);
    let silent = store.insert_job(queued(None), vec![JobEventKind::Queued]).await.unwrap();
    succeed(&store, &silent, vec![], vec![]).await;
    assert!(tokio::time::timeout(quiet, store.outbox_changed()).await.is_err(), "no webhook, no wake-up");
    let job = store.insert_job(queued(Some("https://hooks.example/w")), vec![]).await.unwrap();
    assert!(tokio::time::timeout(quiet, store.outbox_changed()).await.is_err(), "queued: nothing due yet");
    succeed(&store, &job, vec![], vec![]).await;
    tokio::time::timeout(quiet, store.outbox_changed()).await.expect("the terminal commit wakes the worker");
    store.redeliver(job.id, now_ms()).await.unwrap();
    tokio::time::timeout(quiet, store.outbox_changed()).await.expect("a redelivery wakes it");
}
