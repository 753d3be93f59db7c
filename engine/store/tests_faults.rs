//! Storage faults: a redb backend that fails or freezes at its k-th mutating operation,
//! swept over every k of each core transaction sequence the gateway performs.
//!
//! [`FaultBackend`] counts every `write`, `sync_data` and `set_len`; at the k-th it either
//! returns an I/O error (a dead disk that fails everything afterwards, or a transient
//! error after which the disk works again) or freezes durability (from that op on nothing
//! more becomes durable while the process goes on; in the torn variant everything written
//! so far lands but only the first half of the k-th write; in the reordered variant every
//! other write since the last sync lands). The durable image is what a crash leaves; the
//! live image is what the process itself wrote.
//!
//! For each sequence a counting run without faults records K (its number of ops) and the
//! observable state after each step; then for every k in 1..=K and every mode: no call
//! panics or hangs, after an error every later call fails cleanly (`StoreError::Failed`),
//! and reopening the durable image (and for the error modes the live image) gives a
//! store that passes `verify_integrity`, holds exactly the state after the last
//! acknowledged step or after the one in flight (never a mix), and takes new writes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::tests::output;
use super::{Claim, NewBlob, Store, StoreError, StoreStats};
use crate::domain::{
    Attempt, AttemptNext, DeliveryState, Hash, IdempotencyRecord, Job, JobError, JobEventKind, JobId, JobState,
    OutputRef, QueueKey, WebhookEvent, WebhookEvents, WorkflowRecord,
};
use crate::error::ErrorCode;
use crate::scheduler::state::{Event, apply};

/// What happens at the k-th mutating operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// An I/O error, and every later operation (reads too) fails: a dead disk.
    Dead,
    /// An I/O error for that one operation only; later ones succeed.
    Transient,
    /// Nothing becomes durable from this op on; the process does not notice.
    Freeze,
    /// Like `Freeze`, but everything written before lands, and half of the k-th write.
    Torn,
    /// Like `Freeze`, but of the writes since the last sync (the k-th included) every
    /// other one lands: the disk reordered them and lost the rest.
    Reorder,
}

impl Mode {
    pub(crate) const ALL: [Mode; 5] = [Mode::Dead, Mode::Transient, Mode::Freeze, Mode::Torn, Mode::Reorder];

    fn is_error(self) -> bool {
        matches!(self, Mode::Dead | Mode::Transient)
    }
}

/// The simulated disk: the bytes the process sees and the bytes a crash would leave.
#[derive(Debug, Default)]
pub(crate) struct Disk {
    pub(crate) live: Vec<u8>,
    pub(crate) durable: Vec<u8>,
    /// Mutating operations so far (`write`, `sync_data`, `set_len`), failed ones included.
    pub(crate) ops: u64,
    frozen: bool,
    dead: bool,
    /// Writes since the last sync (for `Reorder`).
    unsynced: Vec<(u64, Vec<u8>)>,
}

/// A handle on a [`Disk`] shared by the test and its backend.
pub(crate) type SharedDisk = Arc<Mutex<Disk>>;

/// From now on nothing more becomes durable (a crash is coming).
pub(crate) fn freeze(disk: &SharedDisk) {
    disk.lock().unwrap_or_else(|e| e.into_inner()).frozen = true;
}

/// A disk holding `image` (durable and live).
pub(crate) fn disk(image: Vec<u8>) -> SharedDisk {
    Arc::new(Mutex::new(Disk { live: image.clone(), durable: image, ..Disk::default() }))
}

/// A redb backend on a [`Disk`] that faults at its `fault_at`-th mutating op (1-based).
#[derive(Debug)]
pub(crate) struct FaultBackend {
    disk: SharedDisk,
    fault_at: Option<u64>,
    mode: Mode,
}

impl FaultBackend {
    pub(crate) fn new(disk: SharedDisk, fault_at: Option<u64>, mode: Mode) -> FaultBackend {
        FaultBackend { disk, fault_at, mode }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn io_error() -> std::io::Error {
    std::io::Error::other("injected storage fault")
}

/// A mutating operation, for [`FaultBackend::mutate`].
enum Op<'a> {
    Write(u64, &'a [u8]),
    SetLen(u64),
    Sync,
}

fn write_into(image: &mut [u8], offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
    let offset = usize::try_from(offset).map_err(|_| io_error())?;
    let end = offset.checked_add(data.len()).ok_or_else(io_error)?;
    let dst = image.get_mut(offset..end).ok_or_else(|| std::io::Error::other("write out of range"))?;
    dst.copy_from_slice(data);
    Ok(())
}

impl FaultBackend {
    fn mutate(&self, op: Op<'_>) -> Result<(), std::io::Error> {
        let mut disk = self.lock();
        if disk.dead {
            return Err(io_error());
        }
        disk.ops += 1;
        if Some(disk.ops) == self.fault_at {
            match self.mode {
                Mode::Dead => {
                    disk.dead = true;
                    return Err(io_error());
                }
                Mode::Transient => return Err(io_error()),
                Mode::Freeze => disk.frozen = true,
                Mode::Reorder => {
                    disk.frozen = true;
                    if let Op::Write(offset, data) = op {
                        disk.unsynced.push((offset, data.to_vec()));
                    }
                    let Disk { live, durable, unsynced, .. } = &mut *disk;
                    durable.resize(live.len().max(durable.len()), 0);
                    for (offset, data) in unsynced.iter().step_by(2) {
                        write_into(durable, *offset, data)?;
                    }
                }
                Mode::Torn => {
                    disk.frozen = true;
                    // Everything written so far reached the platter, the k-th write only in part.
                    disk.durable = disk.live.clone();
                    if let Op::Write(offset, data) = op {
                        write_into(&mut disk.durable, offset, &data[..data.len() / 2])?;
                    }
                }
            }
        }
        match op {
            Op::Write(offset, data) => {
                if !disk.frozen {
                    disk.unsynced.push((offset, data.to_vec()));
                }
                write_into(&mut disk.live, offset, data)
            }
            Op::SetLen(len) => {
                let len = usize::try_from(len).map_err(|_| io_error())?;
                disk.live.resize(len, 0);
                Ok(())
            }
            Op::Sync => {
                if !disk.frozen {
                    disk.durable = disk.live.clone();
                    disk.unsynced.clear();
                }
                Ok(())
            }
        }
    }
}

impl redb::StorageBackend for FaultBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        let disk = self.lock();
        if disk.dead {
            return Err(io_error());
        }
        Ok(disk.live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let disk = self.lock();
        if disk.dead {
            return Err(io_error());
        }
        let offset = usize::try_from(offset).map_err(|_| io_error())?;
        let src =
            disk.live.get(offset..offset + out.len()).ok_or_else(|| std::io::Error::other("read out of range"))?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.mutate(Op::SetLen(len))
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.mutate(Op::Sync)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.mutate(Op::Write(offset, data))
    }
}

// ---- the sequences

type StepFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;
/// One store call (with the reads the gateway does right before it), by name.
type Step = (&'static str, fn(Store) -> StepFuture);

/// A core transaction sequence: `setup` builds the starting image without faults, the
/// sweep runs over `Store::open` + `core`.
struct Script {
    name: &'static str,
    setup: Vec<Step>,
    core: Vec<Step>,
    /// Blobs, cache keys and idempotency keys the snapshot looks at (jobs are all listed).
    blobs: Vec<Hash>,
    cache_keys: Vec<Hash>,
    claims: Vec<&'static str>,
}

const JA: u128 = 0xA;
const JB: u128 = 0xB;
const JC: u128 = 0xC;
const CACHE_KEY: Hash = [7; 32];
const CLAIM: &str = "owner\nkey-1";

fn id(n: u128) -> JobId {
    Uuid::from_u128(n)
}

fn new_blob(seed: &str, len: usize) -> NewBlob {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new().update(seed.as_bytes()).finalize_xof().fill(&mut bytes);
    NewBlob { hash: *blake3::hash(&bytes).as_bytes(), media_type: "image/png".into(), bytes: Bytes::from(bytes) }
}

fn blob_input() -> NewBlob {
    new_blob("input", 3_000)
}

fn blob_out1() -> NewBlob {
    new_blob("out1", 9_000)
}

fn blob_out2() -> NewBlob {
    new_blob("out2", 500)
}

/// A queued job as the service builds it: fixed id and times, so runs are comparable.
fn new_job(n: u128, priority: i32, created_ms: u64) -> Job {
    let rank = crate::scheduler::queue_rank(created_ms, priority, 60_000);
    let mut j =
        Job::new_queued(id(n), ("wf", 1), "{\"seed\":1}".into(), "{\"1\":{}}".into(), priority, rank, created_ms);
    j.seed = Some(1);
    j
}

fn with_callback(mut j: Job, events: u8) -> Job {
    j.callback_url = Some("https://hooks.example/h".into());
    j.webhook_events = events;
    j
}

fn workflow(id: &str) -> WorkflowRecord {
    WorkflowRecord {
        id: id.into(),
        version: 0,
        name: id.into(),
        description: String::new(),
        template_json: "{\"1\":{\"class_type\":\"EmptyImage\"}}".into(),
        schema_json: None,
        defaults_json: None,
        created_ms: 5,
        keep_previews: false,
        plugin: None,
    }
}

/// Submit as the service does: the job, its input blobs and the idempotency claim in one commit.
async fn submit_with_input(s: &Store, j: Job, claim: Option<&str>) -> Result<(), StoreError> {
    let input = blob_input();
    let mut j = j;
    j.inputs = vec![crate::domain::InputRef {
        name: "image".into(),
        file_name: "image.png".into(),
        media_type: input.media_type.clone(),
        size_bytes: input.bytes.len() as u64,
        hash: input.hash,
    }];
    let claim = claim.map(|key| Claim {
        key: key.into(),
        record: IdempotencyRecord {
            body_hash: [1; 32],
            job_id: j.id,
            status: 202,
            created_ms: j.created_ms,
            // Live at submit (checked against the wall clock); the prune script expires it.
            expires_ms: 32_503_680_000_000,
        },
    });
    s.insert_job_claiming(j, vec![input], vec![JobEventKind::Queued], claim).await.map(drop)
}

/// Apply `event` to the stored job through the real state machine and commit it as the
/// runner does (`complete_job` when it succeeds or carries blobs).
async fn transition(s: &Store, n: u128, event: Event, at_ms: u64, blobs: Vec<NewBlob>) -> Result<(), StoreError> {
    let job = s.get_job(id(n))?.ok_or(StoreError::JobNotFound(id(n)))?;
    let (next, log) = apply(&job, event, at_ms).expect("the script only makes valid transitions");
    if blobs.is_empty() && next.state != JobState::Succeeded {
        s.update_job(next, log).await
    } else {
        s.complete_job(next, blobs, log).await
    }
}

/// Dispatch the job the scheduler would pick: the first of the queue index.
async fn dispatch_best(s: &Store, at_ms: u64) -> Result<(), StoreError> {
    let (_, best) = *s.queued_ids()?.first().expect("the script dispatches only with a queue");
    let dispatch = Event::Dispatch { backend: "http://b1".into(), client_id: format!("c{at_ms}") };
    transition(s, best.as_u128(), dispatch, at_ms, vec![]).await
}

async fn succeed(s: &Store, n: u128, blobs: Vec<NewBlob>, at_ms: u64) -> Result<(), StoreError> {
    let outputs = blobs.iter().enumerate().map(|(i, b)| output(&format!("{i}.png"), b)).collect();
    transition(s, n, Event::Succeed { outputs }, at_ms, blobs).await
}

fn fail_event() -> Event {
    Event::Fail { error: JobError { code: ErrorCode::ComfyuiOom, message: "oom".into(), details_json: None } }
}

fn cancel_event() -> Event {
    Event::Cancel { reason: "canceled by request".into() }
}

async fn first_delivery_seq(s: &Store, n: u128) -> Result<u64, StoreError> {
    Ok(s.job_deliveries(id(n))?.first().expect("the script made a delivery").seq)
}

async fn attempt(s: &Store, n: u128, at_ms: u64, status: u16, next: AttemptNext) -> Result<(), StoreError> {
    let seq = first_delivery_seq(s, n).await?;
    s.record_attempt(seq, Attempt { at_ms, status: Some(status), error: None, next }).await.map(drop)
}

macro_rules! step {
    ($name:literal, |$s:ident| $body:expr) => {
        ($name, |$s: Store| -> StepFuture { Box::pin(async move { $body }) })
    };
}

fn scripts() -> Vec<Script> {
    let all_blobs = vec![blob_input().hash, blob_out1().hash, blob_out2().hash];
    vec![
        Script {
            name: "submit",
            setup: vec![step!("workflow", |s| s.put_workflow(workflow("wf")).await.map(drop))],
            core: vec![
                step!("submit with input, claim, callback", |s| {
                    submit_with_input(&s, with_callback(new_job(JA, 0, 1_000), WebhookEvents::STARTED), Some(CLAIM))
                        .await
                }),
                step!("submit high", |s| s
                    .insert_job(new_job(JB, 1, 1_001), vec![JobEventKind::Queued])
                    .await
                    .map(drop)),
                step!("submit with a taken claim", |s| {
                    match submit_with_input(&s, new_job(JC, 0, 1_002), Some(CLAIM)).await {
                        Err(StoreError::IdempotencyTaken(_)) => Ok(()),
                        Ok(()) => panic!("the claim was taken"),
                        Err(e) => Err(e),
                    }
                }),
            ],
            blobs: all_blobs.clone(),
            cache_keys: vec![],
            claims: vec![CLAIM],
        },
        Script {
            name: "dispatch",
            setup: vec![
                step!("submit a", |s| submit_with_input(
                    &s,
                    with_callback(new_job(JA, 0, 1_000), WebhookEvents::STARTED),
                    None
                )
                .await),
                step!("submit b", |s| s.insert_job(new_job(JB, 1, 1_001), vec![JobEventKind::Queued]).await.map(drop)),
            ],
            core: vec![
                step!("dispatch best", |s| dispatch_best(&s, 2_000).await),
                step!("dispatch next", |s| dispatch_best(&s, 2_001).await),
                step!("requeue (refused)", |s| transition(
                    &s,
                    JB,
                    Event::Requeue { reason: "refused".into() },
                    2_002,
                    vec![]
                )
                .await),
                step!("resubmit (lost)", |s| {
                    let e = Event::Resubmit { client_id: "c2".into(), reason: "lost".into() };
                    transition(&s, JA, e, 2_003, vec![]).await
                }),
            ],
            blobs: all_blobs.clone(),
            cache_keys: vec![],
            claims: vec![],
        },
        Script {
            name: "progress",
            setup: vec![
                step!("submit", |s| {
                    let j = with_callback(new_job(JA, 0, 1_000), WebhookEvents::STARTED | WebhookEvents::PROGRESS);
                    s.insert_job(j, vec![JobEventKind::Queued]).await.map(drop)
                }),
                step!("dispatch", |s| dispatch_best(&s, 2_000).await),
            ],
            core: vec![
                step!("progress", |s| s
                    .append_events(id(JA), vec![JobEventKind::Progress { node: "3".into(), value: 1.0, max: 4.0 }])
                    .await),
                step!("milestone 25", |s| s
                    .append_events(id(JA), vec![JobEventKind::Milestone { node: "3".into(), percent: 25 }])
                    .await),
                step!("milestone 50", |s| s
                    .append_events(id(JA), vec![JobEventKind::Milestone { node: "3".into(), percent: 50 }])
                    .await),
            ],
            blobs: vec![],
            cache_keys: vec![],
            claims: vec![],
        },
        Script {
            name: "complete",
            setup: vec![
                step!("submit a", |s| {
                    let mut j = with_callback(new_job(JA, 0, 1_000), 0);
                    j.cache_key = Some(CACHE_KEY);
                    submit_with_input(&s, j, None).await
                }),
                step!("submit b", |s| s.insert_job(new_job(JB, 0, 1_001), vec![JobEventKind::Queued]).await.map(drop)),
                step!("dispatch a", |s| dispatch_best(&s, 2_000).await),
                step!("dispatch b", |s| dispatch_best(&s, 2_001).await),
            ],
            core: vec![
                step!("complete a with outputs, fill the cache", |s| succeed(
                    &s,
                    JA,
                    vec![blob_out1(), blob_out2()],
                    3_000
                )
                .await),
                step!("complete b with a shared output", |s| succeed(&s, JB, vec![blob_out1()], 3_001).await),
            ],
            blobs: all_blobs.clone(),
            cache_keys: vec![CACHE_KEY],
            claims: vec![],
        },
        Script {
            name: "fail",
            setup: vec![
                step!("submit a", |s| submit_with_input(&s, with_callback(new_job(JA, 1, 1_000), 0), None).await),
                step!("submit b", |s| s
                    .insert_job(with_callback(new_job(JB, 0, 1_001), 0), vec![JobEventKind::Queued])
                    .await
                    .map(drop)),
                step!("dispatch a", |s| dispatch_best(&s, 2_000).await),
            ],
            core: vec![
                step!("fail running", |s| transition(&s, JA, fail_event(), 3_000, vec![]).await),
                step!("fail queued", |s| transition(&s, JB, fail_event(), 3_001, vec![]).await),
            ],
            blobs: all_blobs.clone(),
            cache_keys: vec![],
            claims: vec![],
        },
        Script {
            name: "cancel",
            setup: vec![
                step!("submit a", |s| submit_with_input(&s, with_callback(new_job(JA, 1, 1_000), 0), None).await),
                step!("submit b", |s| s.insert_job(new_job(JB, 0, 1_001), vec![JobEventKind::Queued]).await.map(drop)),
                step!("dispatch a", |s| dispatch_best(&s, 2_000).await),
            ],
            core: vec![
                step!("cancel queued", |s| transition(&s, JB, cancel_event(), 3_000, vec![]).await),
                step!("cancel running", |s| transition(&s, JA, cancel_event(), 3_001, vec![]).await),
            ],
            blobs: all_blobs.clone(),
            cache_keys: vec![],
            claims: vec![],
        },
        Script {
            name: "webhook attempts",
            setup: vec![
                step!("submit", |s| s
                    .insert_job(with_callback(new_job(JA, 0, 1_000), 0), vec![JobEventKind::Queued])
                    .await
                    .map(drop)),
                step!("dispatch", |s| dispatch_best(&s, 2_000).await),
                step!("succeed", |s| succeed(&s, JA, vec![blob_out2()], 3_000).await),
            ],
            core: vec![
                step!("attempt: 503, retry", |s| attempt(&s, JA, 4_000, 503, AttemptNext::RetryAt(5_000)).await),
                step!("attempt: 410, disable", |s| attempt(&s, JA, 5_000, 410, AttemptNext::Disable).await),
                step!("redeliver", |s| s.redeliver(id(JA), 6_000).await.map(drop)),
                step!("attempt: 204, delivered", |s| attempt(&s, JA, 6_001, 204, AttemptNext::Delivered).await),
            ],
            blobs: all_blobs.clone(),
            cache_keys: vec![],
            claims: vec![],
        },
        Script {
            name: "prune",
            setup: vec![
                step!("submit a", |s| {
                    let mut j = new_job(JA, 0, 1_000);
                    j.cache_key = Some(CACHE_KEY);
                    submit_with_input(&s, j, Some(CLAIM)).await
                }),
                step!("submit b", |s| s.insert_job(new_job(JB, 0, 1_001), vec![JobEventKind::Queued]).await.map(drop)),
                step!("submit c", |s| s.insert_job(new_job(JC, 0, 1_002), vec![JobEventKind::Queued]).await.map(drop)),
                step!("dispatch a", |s| dispatch_best(&s, 2_000).await),
                step!("succeed a", |s| succeed(&s, JA, vec![blob_out1()], 3_000).await),
                step!("fail b", |s| transition(&s, JB, fail_event(), 3_001, vec![]).await),
            ],
            core: vec![
                step!("prune one job, expired cache and claims", |s| s
                    .prune(10_000, u64::MAX, u64::MAX, 1)
                    .await
                    .map(drop)),
                step!("prune the rest", |s| s.prune(10_000, u64::MAX, u64::MAX, 10).await.map(drop)),
            ],
            blobs: all_blobs,
            cache_keys: vec![CACHE_KEY],
            claims: vec![CLAIM],
        },
    ]
}

// ---- observing a store

/// A delivery without its random id and wall-clock times: seq, event, state, attempts,
/// last status, job snapshot.
type DeliverySnap = (u64, WebhookEvent, DeliveryState, u32, Option<u16>, Job);

/// Everything a sequence can change, without wall-clock times and random ids.
#[derive(Debug, PartialEq)]
struct Snap {
    jobs: Vec<Job>,
    events: Vec<Vec<(u64, JobEventKind)>>,
    queue: Vec<(QueueKey, JobId)>,
    running: Vec<JobId>,
    deliveries: Vec<Vec<DeliverySnap>>,
    cache: Vec<Option<(JobId, Vec<OutputRef>)>>,
    claims: Vec<Option<JobId>>,
    blobs: Vec<Option<(u64, u64, Vec<u8>)>>,
    stats: StoreStats,
    workflows: Vec<(String, u32)>,
}

fn snapshot(s: &Store, script: &Script) -> Result<Snap, StoreError> {
    let jobs = s.list_jobs(None, usize::MAX, |_| true)?;
    let mut events = Vec::new();
    let mut deliveries = Vec::new();
    for j in &jobs {
        events.push(s.job_events(j.id, None, usize::MAX)?.into_iter().map(|(seq, e)| (seq, e.kind)).collect());
        deliveries.push(
            s.job_deliveries(j.id)?
                .into_iter()
                .map(|d| (d.seq, d.event, d.state, d.n_attempts, d.last_status, d.job))
                .collect(),
        );
    }
    let mut blobs = Vec::new();
    for h in &script.blobs {
        blobs.push(match s.blob_meta(h)? {
            Some(m) => Some((m.n_refs, m.size_bytes, s.read_blob(h)?.expect("a blob with metadata has bytes"))),
            None => None,
        });
    }
    let mut cache = Vec::new();
    for k in &script.cache_keys {
        cache.push(s.cache_entry(k)?.map(|e| (e.job_id, e.outputs)));
    }
    let mut claims = Vec::new();
    for k in &script.claims {
        claims.push(s.idempotency_record(k)?.map(|r| r.job_id));
    }
    Ok(Snap {
        queue: s.queued_ids()?,
        running: s.running_jobs()?.into_iter().map(|j| j.id).collect(),
        workflows: s.list_workflows()?.into_iter().map(|w| (w.id, w.version)).collect(),
        stats: s.stats()?,
        jobs,
        events,
        deliveries,
        cache,
        claims,
        blobs,
    })
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

async fn run_step(step: &Step, s: &Store, ctx: &str) -> Result<(), StoreError> {
    match tokio::time::timeout(CALL_TIMEOUT, (step.1)(s.clone())).await {
        Ok(r) => r,
        Err(_) => panic!("{ctx}: step {:?} hung", step.0),
    }
}

/// Run the setup without faults: the image the sweep starts from.
async fn setup_image(script: &Script) -> Vec<u8> {
    let d = disk(Vec::new());
    let store = Store::open_backend(FaultBackend::new(d.clone(), None, Mode::Dead)).unwrap();
    for step in &script.setup {
        run_step(step, &store, script.name)
            .await
            .unwrap_or_else(|e| panic!("{}: setup {:?}: {e}", script.name, step.0));
    }
    store.close().await;
    drop(store);
    d.lock().unwrap().live.clone()
}

/// The counting run: K, the state after each step (index 0: before the first), and the
/// op count after opening and after each step.
async fn counting_run(script: &Script, image: &[u8]) -> (u64, Vec<Snap>, Vec<u64>) {
    let d = disk(image.to_vec());
    let store = Store::open_backend(FaultBackend::new(d.clone(), None, Mode::Dead)).unwrap();
    let mut snaps = vec![snapshot(&store, script).unwrap()];
    let mut bounds = vec![d.lock().unwrap().ops];
    for step in &script.core {
        run_step(step, &store, script.name).await.unwrap_or_else(|e| panic!("{}: {:?}: {e}", script.name, step.0));
        snaps.push(snapshot(&store, script).unwrap());
        bounds.push(d.lock().unwrap().ops);
    }
    drop(store);
    let ops = d.lock().unwrap().ops;
    (ops, snaps, bounds)
}

/// Reopen an image: consistent, holding the state after step `acked` or `acked + 1`,
/// and writable.
async fn check_image(image: Vec<u8>, script: &Script, snaps: &[Snap], acked: usize, ctx: &str) {
    let d = disk(image);
    let store = Store::open_backend(FaultBackend::new(d, None, Mode::Dead))
        .unwrap_or_else(|e| panic!("{ctx}: the image does not reopen: {e}"));
    store.verify_integrity().unwrap_or_else(|e| panic!("{ctx}: integrity: {e}"));
    let got = snapshot(&store, script).unwrap_or_else(|e| panic!("{ctx}: reading: {e}"));
    if snaps.get(acked + 1) != Some(&got) {
        assert_eq!(got, snaps[acked], "{ctx}: not the state after step {acked} (acknowledged) nor after the next");
    }
    let probe = tokio::time::timeout(CALL_TIMEOUT, store.put_workflow(workflow("probe"))).await;
    probe.unwrap_or_else(|_| panic!("{ctx}: hung")).unwrap_or_else(|e| panic!("{ctx}: not writable: {e}"));
    store.verify_integrity().unwrap_or_else(|e| panic!("{ctx}: integrity after a write: {e}"));
}

/// One faulty run: the sequence with a fault at op `k`, then the checks on its images.
async fn faulty_run(script: &Script, image: &[u8], snaps: &[Snap], k: u64, mode: Mode) {
    let ctx = format!("{} k={k} {mode:?}", script.name);
    let d = disk(image.to_vec());
    // The last step acknowledged before the fault (0: none; opening the store changes nothing).
    let mut acked = 0;
    match Store::open_backend(FaultBackend::new(d.clone(), Some(k), mode)) {
        Err(e) => assert!(mode.is_error(), "{ctx}: open failed without an error: {e}"),
        Ok(store) => {
            let mut failed = false;
            for (i, step) in script.core.iter().enumerate() {
                let result = run_step(step, &store, &ctx).await;
                let ops_at_return = d.lock().unwrap().ops;
                match result {
                    Ok(()) => {
                        assert!(!failed, "{ctx}: {:?} succeeded after a storage failure", step.0);
                        if mode.is_error() || ops_at_return < k {
                            acked = i + 1;
                        }
                    }
                    Err(e) => {
                        assert!(mode.is_error(), "{ctx}: {:?} failed without an error: {e}", step.0);
                        assert!(
                            matches!(e, StoreError::FileIo(_) | StoreError::Failed(_)),
                            "{ctx}: {:?}: unexpected {e}",
                            step.0
                        );
                        failed = true;
                    }
                }
            }
            if failed {
                // Fail-stop: reported, and every later call fails at once, cleanly.
                assert!(store.failure().is_some(), "{ctx}: a failed store reports no failure");
                let again = tokio::time::timeout(CALL_TIMEOUT, store.put_workflow(workflow("after"))).await;
                assert!(matches!(again, Ok(Err(StoreError::Failed(_)))), "{ctx}: a write after the failure: {again:?}");
                assert!(matches!(store.get_job(id(JA)), Err(StoreError::Failed(_))), "{ctx}: a read after the failure");
                assert!(matches!(store.verify_integrity(), Err(StoreError::Failed(_))));
            } else {
                assert_eq!(store.failure(), None, "{ctx}");
            }
            drop(store);
        }
    }
    let (durable, live) = {
        let disk = d.lock().unwrap();
        (disk.durable.clone(), disk.live.clone())
    };
    check_image(durable, script, snaps, acked, &format!("{ctx} durable image")).await;
    if mode.is_error() {
        check_image(live, script, snaps, acked, &format!("{ctx} live image")).await;
    }
}

/// Sweep every k of a sequence in every mode; the number of points swept.
async fn sweep(name: &str) -> usize {
    let script = scripts().into_iter().find(|s| s.name == name).unwrap();
    let image = setup_image(&script).await;
    let (n_ops, snaps, bounds) = counting_run(&script, &image).await;
    assert!(n_ops > 0);
    let mut points = 0;
    for mode in Mode::ALL {
        for k in 1..=n_ops {
            faulty_run(&script, &image, &snaps, k, mode).await;
            points += 1;
        }
    }
    eprintln!(
        "storage faults: {name}: K = {n_ops} ops ({} opening, steps end at {:?}) x {} modes",
        bounds[0],
        &bounds[1..],
        Mode::ALL.len()
    );
    points
}

#[tokio::test]
async fn faults_submit() {
    sweep("submit").await;
}

#[tokio::test]
async fn faults_dispatch() {
    sweep("dispatch").await;
}

#[tokio::test]
async fn faults_progress() {
    sweep("progress").await;
}

#[tokio::test]
async fn faults_complete() {
    sweep("complete").await;
}

#[tokio::test]
async fn faults_fail() {
    sweep("fail").await;
}

#[tokio::test]
async fn faults_cancel() {
    sweep("cancel").await;
}

#[tokio::test]
async fn faults_webhook_attempts() {
    sweep("webhook attempts").await;
}

#[tokio::test]
async fn faults_prune() {
    sweep("prune").await;
}

/// Concurrent submits (group commit), completions with a large blob and workflow
/// versions, with a fault at every op in turn, in every mode: whatever was acknowledged
/// (before the freeze) is there after the restart, exactly as acknowledged, and the store
/// is consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_fault_at_any_op_under_concurrency() {
    let payload = {
        let bytes = "output ".repeat(40_000).into_bytes();
        NewBlob { hash: *blake3::hash(&bytes).as_bytes(), media_type: "text/plain".into(), bytes: Bytes::from(bytes) }
    };
    let job = |rank_ms: i64| {
        let mut j = Job::new_queued(Uuid::new_v4(), ("wf", 1), "{}".into(), "{\"1\":{}}".into(), 0, rank_ms, 1_000);
        j.seed = Some(42);
        j
    };
    // Whether a call that returned Ok with the disk at `ops` ops was acknowledged before
    // the fault (observed after the call returned, so `ops` only overestimates).
    let acked_at = |mode: Mode, k: Option<u64>, ops: u64| mode.is_error() || k.is_none_or(|k| ops < k);
    // Waves of 4 concurrent inserts, a completion and a workflow version; what was
    // acknowledged. None if the store did not open (nothing was acknowledged).
    #[allow(clippy::type_complexity)]
    let run = |d: SharedDisk, k: Option<u64>, mode: Mode| {
        let payload = payload.clone();
        async move {
            let ops = || d.lock().unwrap().ops;
            let mut acked: Vec<Job> = Vec::new();
            let mut acked_wf = None;
            // A completion not acknowledged: the job may be stored either way.
            let mut in_flight: Option<Job> = None;
            let store = Store::open_backend(FaultBackend::new(d.clone(), k, mode)).ok()?;
            'waves: for wave in 0..8 {
                let tasks: Vec<_> = (0..4)
                    .map(|i| {
                        let s = store.clone();
                        let j = job(wave * 10 + i);
                        let d = d.clone();
                        tokio::spawn(async move {
                            let r = s.insert_job(j, vec![JobEventKind::Queued]).await;
                            (r, d.lock().unwrap().ops)
                        })
                    })
                    .collect();
                for t in tasks {
                    match t.await.unwrap() {
                        (Ok(j), at) if acked_at(mode, k, at) => acked.push(j),
                        (Ok(_) | Err(StoreError::FileIo(_) | StoreError::Failed(_)), _) => {}
                        (Err(e), _) => panic!("unexpected {e}"),
                    }
                }
                if let Some(first) = acked.first().cloned().filter(|j| j.state == JobState::Queued) {
                    let mut done = first;
                    done.state = JobState::Succeeded;
                    done.outputs = vec![output("o.txt", &payload)];
                    match store.complete_job(done.clone(), vec![payload.clone()], vec![]).await {
                        Ok(()) if acked_at(mode, k, ops()) => acked[0] = done,
                        Ok(()) => in_flight = Some(done),
                        Err(StoreError::FileIo(_) | StoreError::Failed(_)) => {
                            // Its commit failed: durable or not, never half.
                            in_flight = Some(done);
                            break 'waves;
                        }
                        Err(e) => panic!("unexpected {e}"),
                    }
                }
                match store.put_workflow(workflow("w")).await {
                    Ok(rec) if acked_at(mode, k, ops()) => acked_wf = Some(rec),
                    Ok(_) => {}
                    Err(StoreError::FileIo(_) | StoreError::Failed(_)) => break 'waves,
                    Err(e) => panic!("unexpected {e}"),
                }
            }
            drop(store);
            Some((acked, acked_wf, in_flight))
        }
    };
    let counting = disk(Vec::new());
    run(counting.clone(), None, Mode::Dead).await;
    let n_ops = counting.lock().unwrap().ops;
    let creating_ops = ops_creating_a_database();
    let mut faults_seen = 0;
    for mode in Mode::ALL {
        for k in 1..=n_ops {
            let d = disk(Vec::new());
            // Died while creating the database: redb may have synced a zero-filled file it
            // does not recognize (only the very first open of a new file; see the notes).
            let Some((acked, acked_wf, in_flight)) = run(d.clone(), Some(k), mode).await else { continue };
            let (durable, live) = {
                let disk = d.lock().unwrap();
                (disk.durable.clone(), disk.live.clone())
            };
            let images = if mode.is_error() { vec![durable, live] } else { vec![durable] };
            for image in images {
                let store = match Store::open_backend(FaultBackend::new(disk(image), None, Mode::Dead)) {
                    Ok(store) => store,
                    // Cut off while creating the database, before any acknowledgement: on a
                    // file, `Store::open` builds it under a temporary name (see
                    // `a_crash_while_creating_the_database_leaves_no_unopenable_file`).
                    Err(_) if k <= creating_ops && acked.is_empty() && acked_wf.is_none() => continue,
                    Err(e) => panic!("k={k} {mode:?}: reopen: {e}"),
                };
                for j in &acked {
                    let got = store.get_job(j.id).unwrap();
                    if got.is_some() && got == in_flight {
                        continue;
                    }
                    assert_eq!(got.as_ref(), Some(j), "k={k} {mode:?}");
                }
                if let Some(rec) = &acked_wf {
                    assert!(store.get_workflow_version("w", rec.version).unwrap().is_some(), "k={k} {mode:?}");
                }
                // A completion that is stored brought its blob along.
                let completed = acked
                    .iter()
                    .chain(&in_flight)
                    .filter(|j| !j.outputs.is_empty())
                    .any(|j| store.get_job(j.id).unwrap().as_ref() == Some(j));
                if completed {
                    let bytes = store.read_blob(&payload.hash).unwrap();
                    assert!(bytes.as_deref() == Some(&payload.bytes[..]), "k={k} {mode:?}: the output blob");
                }
                store.verify_integrity().unwrap_or_else(|e| panic!("k={k} {mode:?}: {e}"));
            }
            if acked.len() < 32 {
                faults_seen += 1;
            }
        }
    }
    assert!(faults_seen > 5, "{faults_seen}");
    eprintln!("storage faults: concurrent waves: K = {n_ops} ops x {} modes", Mode::ALL.len());
}

/// Regression (found by the sweep): redb latches an I/O error, so every later
/// transaction of the `Database` fails with `PreviousIo` even once the disk works again.
/// The store used to go on answering each write with that redb error, forever, while the
/// gateway looked healthy. Now the first failed transaction stops the store: `failure()`
/// says why (`/health` turns 503), every call fails at once with `Failed`, and a restart
/// recovers everything that was acknowledged.
#[tokio::test]
async fn a_transient_io_error_stops_the_store_and_a_restart_recovers() {
    let queued = |n| new_job(n, 0, 1_000 + n as u64);
    // Count the ops of open + one insert, to fault at the next one.
    let counting = disk(Vec::new());
    let store = Store::open_backend(FaultBackend::new(counting.clone(), None, Mode::Transient)).unwrap();
    store.insert_job(queued(JA), vec![JobEventKind::Queued]).await.unwrap();
    let n_ops = counting.lock().unwrap().ops;
    drop(store);

    let d = disk(Vec::new());
    let store = Store::open_backend(FaultBackend::new(d.clone(), Some(n_ops + 1), Mode::Transient)).unwrap();
    let a = store.insert_job(queued(JA), vec![JobEventKind::Queued]).await.unwrap();
    assert_eq!(store.failure(), None);
    let failed = store.insert_job(queued(JB), vec![JobEventKind::Queued]).await;
    assert!(matches!(failed, Err(StoreError::FileIo(_))), "{failed:?}");
    assert!(store.failure().is_some_and(|f| f.contains("I/O")), "{:?}", store.failure());
    // The disk works again, but the store stays stopped, and says so at once.
    let ops_before = d.lock().unwrap().ops;
    assert!(matches!(store.insert_job(queued(JC), vec![]).await, Err(StoreError::Failed(_))));
    assert!(matches!(store.append_events(a.id, vec![]).await, Err(StoreError::Failed(_))));
    assert!(matches!(store.get_job(a.id), Err(StoreError::Failed(_))));
    assert!(matches!(store.queued_ids(), Err(StoreError::Failed(_))));
    assert_eq!(d.lock().unwrap().ops, ops_before, "a stopped store does not touch the disk");
    store.close().await;
    drop(store);

    // Restart on the file as the process left it.
    let live = d.lock().unwrap().live.clone();
    let store = Store::open_backend(FaultBackend::new(disk(live), None, Mode::Transient)).unwrap();
    assert_eq!(store.failure(), None);
    assert_eq!(store.get_job(a.id).unwrap(), Some(a));
    assert_eq!(store.get_job(id(JC)).unwrap(), None);
    store.verify_integrity().unwrap();
    store.insert_job(queued(JC), vec![JobEventKind::Queued]).await.unwrap();
    store.verify_integrity().unwrap();
}

/// The ops of creating a new database (with the store's tables).
fn ops_creating_a_database() -> u64 {
    let d = disk(Vec::new());
    let store = Store::open_backend(FaultBackend::new(d.clone(), None, Mode::Dead)).unwrap();
    let ops = d.lock().unwrap().ops;
    drop(store);
    ops
}

/// Regression (found by the sweep): redb writes a new database's magic number last and
/// refuses a non-empty file without it, for good; a crash while `Store::open` created the
/// file in place could leave exactly that, and the gateway would never start again. Now a
/// new database is built under `<path>.creating` and renamed into place: a leftover is
/// replaced, and a file at the database path that is not a database is still refused.
#[tokio::test]
async fn a_crash_while_creating_the_database_leaves_no_unopenable_file() {
    let creating_ops = ops_creating_a_database();
    let mut refused = Vec::new();
    for k in 1..=creating_ops {
        let d = disk(Vec::new());
        drop(Store::open_backend(FaultBackend::new(d.clone(), Some(k), Mode::Freeze)).unwrap());
        let durable = d.lock().unwrap().durable.clone();
        if Store::open_backend(FaultBackend::new(disk(durable.clone()), None, Mode::Dead)).is_err() {
            refused.push(durable);
        }
    }
    assert!(!refused.is_empty(), "redb now reopens every image of an interrupted creation");
    for image in refused {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.redb");
        let leftover = dir.path().join("gateway.redb.creating");
        std::fs::write(&leftover, &image).unwrap();
        let store = Store::open(&path).unwrap();
        assert!(!leftover.exists());
        store.insert_job(new_job(JA, 0, 1_000), vec![JobEventKind::Queued]).await.unwrap();
        store.verify_integrity().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"not a database").unwrap();
    assert!(Store::open(&other).is_err());
    assert_eq!(std::fs::read(&other).unwrap(), b"not a database");
}
