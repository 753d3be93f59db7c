//! Model-based test of the job lifecycle (proptest): random operations run against the
//! real store, the real state machine (`state::apply`, moves off dead backends included),
//! the scheduler's memory queue and its recovery reads (`recover`), and against a plain
//! reference model; after every operation they must agree.
//!
//! The store lives either in a real redb file in a temp dir (`Crash` drops it without
//! closing, like a killed process whose writes the OS kept) or on the in-memory fault
//! backend (`Crash` freezes durability first, so the reopened image is exactly what had
//! been synced). `Restart` closes cleanly and reopens. Cases are few and the seed fixed,
//! so the run is quick and the same in CI; no regression file is written (a failure
//! prints the minimal case, which belongs in a regression test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use uuid::Uuid;

use super::state::{Event, apply};
use super::{Inner, queue_rank, recover};
use crate::domain::{Hash, Job, JobError, JobEventKind, JobId, JobState, OutputRef};
use crate::error::ErrorCode;
use crate::store::tests_faults::{FaultBackend, Mode, SharedDisk, disk, freeze};
use crate::store::{NewBlob, Store, StoreError};

/// Larger than any gap between creation times here, so priority always comes first.
const AGING_MS: u64 = 3_600_000;

#[derive(Clone, Debug)]
enum Op {
    Submit {
        priority: i32,
    },
    /// Dispatch the job the dispatch loop would take.
    Dispatch,
    /// A progress event on the `n`-th running job.
    Progress(usize),
    /// Make the `n`-th job succeed with these outputs (of the blob pool).
    Complete {
        n: usize,
        outputs: Vec<usize>,
    },
    Fail(usize),
    Cancel(usize),
    /// Move the `n`-th running job off its (dead) backend, back to the queue.
    Move(usize),
    /// A new job answered from the result cache with the outputs of the `n`-th job, when
    /// that one succeeded with outputs (`Event::CacheHit` in the insert commit, as
    /// `Scheduler::submit` does; the blobs are shared).
    CacheHit(usize),
    /// Update a job that was never inserted.
    Ghost,
    Crash,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (-1i32..=1).prop_map(|priority| Op::Submit { priority }),
        3 => Just(Op::Dispatch),
        1 => any::<usize>().prop_map(Op::Progress),
        2 => (any::<usize>(), proptest::collection::vec(0..POOL, 0..3)).prop_map(|(n, outputs)| Op::Complete { n, outputs }),
        1 => any::<usize>().prop_map(Op::Fail),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Move),
        1 => any::<usize>().prop_map(Op::CacheHit),
        1 => Just(Op::Ghost),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
    ]
}

const POOL: usize = 3;

/// The `i`-th job the model submits: born queued, created at `1_000 + i` ms.
fn new_job(i: usize, priority: i32) -> Job {
    let created_ms = 1_000 + i as u64;
    Job::new_queued(
        Uuid::from_u128(i as u128 + 1),
        ("wf", 1),
        "{}".into(),
        "{\"1\":{}}".into(),
        priority,
        queue_rank(created_ms, priority, AGING_MS),
        created_ms,
    )
}

fn pool(i: usize) -> NewBlob {
    let bytes = format!("output {i} ").repeat(100 * (i + 1)).into_bytes();
    NewBlob { hash: *blake3::hash(&bytes).as_bytes(), media_type: "image/png".into(), bytes: Bytes::from(bytes) }
}

fn output_ref(slot: usize, b: &NewBlob) -> OutputRef {
    OutputRef {
        name: format!("{slot}.png"),
        node_id: "9".into(),
        media_type: b.media_type.clone(),
        size_bytes: b.bytes.len() as u64,
        hash: b.hash,
    }
}

/// The reference model of one job.
#[derive(Clone, Debug)]
struct ModelJob {
    priority: i32,
    state: JobState,
    n_attempts: u32,
    outputs: Vec<OutputRef>,
    n_events: usize,
}

#[derive(Default)]
struct Model {
    /// In submission order.
    jobs: BTreeMap<usize, (JobId, ModelJob)>,
}

impl Model {
    /// Queued jobs in the order they must be dispatched: priority first, FIFO within one.
    fn queue(&self) -> Vec<JobId> {
        let mut q: Vec<(i32, usize, JobId)> = self
            .jobs
            .iter()
            .filter(|(_, (_, j))| j.state == JobState::Queued)
            .map(|(&i, (id, j))| (-j.priority, i, *id))
            .collect();
        q.sort();
        q.into_iter().map(|(_, _, id)| id).collect()
    }

    fn running(&self) -> BTreeSet<JobId> {
        self.jobs.values().filter(|(_, j)| j.state == JobState::Running).map(|(id, _)| *id).collect()
    }

    fn nth(&self, n: usize) -> Option<(JobId, &ModelJob)> {
        if self.jobs.is_empty() {
            return None;
        }
        self.jobs.values().nth(n % self.jobs.len()).map(|(id, j)| (*id, j))
    }

    fn get_mut(&mut self, id: JobId) -> &mut ModelJob {
        &mut self.jobs.values_mut().find(|(i, _)| *i == id).expect("a modeled job").1
    }
}

/// Where the store under test lives.
enum Backing {
    File(tempfile::TempDir),
    Memory(SharedDisk),
}

impl Backing {
    fn path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("gateway.redb")
    }

    fn open(&self) -> Store {
        match self {
            Backing::File(dir) => Store::open(&Backing::path(dir)).unwrap(),
            Backing::Memory(d) => Store::open_backend(FaultBackend::new(d.clone(), None, Mode::Freeze)).unwrap(),
        }
    }
}

/// The gateway side: the store and the scheduler's memory queue.
struct Real {
    backing: Backing,
    /// `None` only while restarting.
    store: Option<Store>,
    queue: Inner,
}

impl Real {
    /// Rebuild the memory queue as `Scheduler::start` does.
    fn recover(&mut self) {
        let recovered = recover(self.store()).unwrap();
        self.queue = Inner::default();
        self.queue.rebuild_queue(&recovered.queued);
    }

    async fn crash(&mut self) {
        let image = match &self.backing {
            Backing::File(_) => None,
            Backing::Memory(d) => {
                freeze(d);
                Some(d.clone())
            }
        };
        // No close. On a file, redb's drop still runs (a killed process is the integration
        // tests' job); on the fault backend nothing after the freeze is durable anyway.
        drop(self.store.take());
        if let Some(d) = image {
            let durable = d.lock().unwrap().durable.clone();
            self.backing = Backing::Memory(disk(durable));
        }
        self.store = Some(self.backing.open());
        self.recover();
    }

    async fn restart(&mut self) {
        let store = self.store.take().expect("open");
        store.close().await;
        drop(store);
        if let Backing::Memory(d) = &self.backing {
            let live = d.lock().unwrap().live.clone();
            self.backing = Backing::Memory(disk(live));
        }
        self.store = Some(self.backing.open());
        self.recover();
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    /// Apply `event` to the stored job and commit it as the runner does; `Err` if the
    /// state machine refuses it.
    async fn transition(&self, id: JobId, event: Event, blobs: Vec<NewBlob>) -> Result<(), String> {
        let job = self.store().get_job(id).unwrap().expect("modeled jobs are stored");
        let (next, log) = apply(&job, event, 5_000).map_err(|e| e.to_string())?;
        let result = if blobs.is_empty() && next.state != JobState::Succeeded {
            self.store().update_job(next, log).await
        } else {
            self.store().complete_job(next, blobs, log).await
        };
        result.unwrap();
        Ok(())
    }
}

async fn run(file: bool, ops: Vec<Op>) {
    let backing = if file { Backing::File(tempfile::tempdir().unwrap()) } else { Backing::Memory(disk(Vec::new())) };
    let store = backing.open();
    let mut real = Real { backing, store: Some(store), queue: Inner::default() };
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        let ctx = format!("step {step}: {op:?}");
        match op {
            Op::Submit { priority } => {
                let i = model.jobs.len();
                let job = new_job(i, priority);
                let id = job.id;
                let stored = real.store().insert_job(job, vec![JobEventKind::Queued]).await.unwrap();
                real.queue.enqueue(stored.queue_key, stored.id, stored.priority, &stored.workflow_id);
                let m = ModelJob { priority, state: JobState::Queued, n_attempts: 0, outputs: vec![], n_events: 1 };
                model.jobs.insert(i, (id, m));
            }
            Op::Dispatch => {
                let expected = model.queue().first().copied();
                let picked = real.queue.best();
                assert_eq!(picked.map(|(_, id)| id), expected, "{ctx}: the dispatch loop's pick");
                if let Some((key, id)) = picked {
                    real.queue.dequeue(&key);
                    let dispatch = Event::Dispatch { backend: "http://b1".into(), client_id: "c".into() };
                    real.transition(id, dispatch, vec![]).await.unwrap();
                    let m = model.get_mut(id);
                    m.state = JobState::Running;
                    m.n_attempts += 1;
                    m.n_events += 1;
                }
            }
            Op::Progress(n) => {
                let running: Vec<JobId> = model.running().into_iter().collect();
                if !running.is_empty() {
                    let id = running[n % running.len()];
                    let p = JobEventKind::Progress { node: "3".into(), value: 1.0, max: 2.0 };
                    real.store().append_events(id, vec![p]).await.unwrap();
                    model.get_mut(id).n_events += 1;
                }
            }
            Op::Complete { n, outputs } => {
                let Some((id, m)) = model.nth(n) else { continue };
                let valid = m.state == JobState::Running;
                let blobs: Vec<NewBlob> = outputs.iter().map(|&i| pool(i)).collect();
                let refs: Vec<OutputRef> = blobs.iter().enumerate().map(|(slot, b)| output_ref(slot, b)).collect();
                let result = real.transition(id, Event::Succeed { outputs: refs.clone() }, blobs).await;
                assert_eq!(result.is_ok(), valid, "{ctx}: {result:?}");
                if valid {
                    let m = model.get_mut(id);
                    m.state = JobState::Succeeded;
                    m.outputs = refs;
                    m.n_events += 1;
                }
            }
            Op::Fail(n) | Op::Cancel(n) => {
                let Some((id, m)) = model.nth(n) else { continue };
                let (valid, state) = (!m.state.is_terminal(), m.state);
                let (event, to) = match op {
                    Op::Fail(_) => {
                        let error = JobError { code: ErrorCode::ComfyuiOom, message: "oom".into(), details_json: None };
                        (Event::Fail { error }, JobState::Failed)
                    }
                    _ => (Event::Cancel { reason: "canceled by request".into() }, JobState::Canceled),
                };
                if state == JobState::Queued {
                    // Out of the memory queue first, as `Scheduler::cancel` does.
                    let key = real.store().get_job(id).unwrap().unwrap().queue_key;
                    assert_eq!(real.queue.dequeue(&key), Some(id), "{ctx}");
                }
                let result = real.transition(id, event, vec![]).await;
                assert_eq!(result.is_ok(), valid, "{ctx}: {result:?}");
                if valid {
                    let m = model.get_mut(id);
                    m.state = to;
                    m.n_events += 1;
                }
            }
            Op::Move(n) => {
                let running: Vec<JobId> = model.running().into_iter().collect();
                if !running.is_empty() {
                    let id = running[n % running.len()];
                    real.transition(id, Event::Move { reason: "backend dead".into() }, vec![]).await.unwrap();
                    // Back into the memory queue under its unchanged key, as `release` does.
                    let job = real.store().get_job(id).unwrap().unwrap();
                    assert_eq!(job.backend, None, "{ctx}");
                    real.queue.enqueue(job.queue_key, id, job.priority, &job.workflow_id);
                    let m = model.get_mut(id);
                    m.state = JobState::Queued;
                    m.n_events += 1;
                }
            }
            Op::CacheHit(n) => {
                let Some((_, m)) = model.nth(n) else { continue };
                if m.state != JobState::Succeeded || m.outputs.is_empty() {
                    continue;
                }
                let outputs = m.outputs.clone();
                let i = model.jobs.len();
                let job = new_job(i, 0);
                let (id, created_ms) = (job.id, job.created_ms);
                let (done, log) = apply(&job, Event::CacheHit { outputs: outputs.clone() }, created_ms).unwrap();
                let events = [vec![JobEventKind::Queued], log].concat();
                let stored = real.store().insert_job_claiming(done, vec![], events, None).await.unwrap();
                assert_eq!((stored.state, stored.cached), (JobState::Succeeded, true), "{ctx}");
                let m = ModelJob { priority: 0, state: JobState::Succeeded, n_attempts: 0, outputs, n_events: 2 };
                model.jobs.insert(i, (id, m));
            }
            Op::Ghost => {
                let ghost = Job::new_queued(Uuid::from_u128(u128::MAX), ("wf", 1), "{}".into(), "{}".into(), 0, 0, 1);
                let result = real.store().update_job(ghost, vec![]).await;
                assert!(matches!(result, Err(StoreError::JobNotFound(_))), "{ctx}: {result:?}");
            }
            Op::Crash => real.crash().await,
            Op::Restart => real.restart().await,
        }
        check(&real, &model, &ctx);
    }
    real.store().close().await;
}

/// The store, the memory queue and the recovery reads agree with the model.
fn check(real: &Real, model: &Model, ctx: &str) {
    let store = real.store();
    let mut refs: BTreeMap<Hash, u64> = BTreeMap::new();
    for (id, m) in model.jobs.values() {
        let job = store.get_job(*id).unwrap().unwrap_or_else(|| panic!("{ctx}: job {id} lost"));
        assert_eq!((job.state, job.n_attempts, &job.outputs), (m.state, m.n_attempts, &m.outputs), "{ctx}: job {id}");
        assert_eq!(store.job_events(*id, None, usize::MAX).unwrap().len(), m.n_events, "{ctx}: events of {id}");
        for o in &m.outputs {
            *refs.entry(o.hash).or_default() += 1;
        }
    }
    assert_eq!(store.list_jobs(None, usize::MAX, |_| true).unwrap().len(), model.jobs.len(), "{ctx}: extra jobs");
    let queue = model.queue();
    let memory: Vec<JobId> = real.queue.queue.values().map(|q| q.id).collect();
    assert_eq!(memory, queue, "{ctx}: the memory queue");
    let recovered = recover(store).unwrap();
    assert_eq!(recovered.queued.iter().map(|j| j.id).collect::<Vec<_>>(), queue, "{ctx}: the recovered queue");
    let running: BTreeSet<JobId> = recovered.running.iter().map(|j| j.id).collect();
    assert_eq!(running, model.running(), "{ctx}: the recovered running set");
    for i in 0..POOL {
        let b = pool(i);
        let n_refs = store.blob_meta(&b.hash).unwrap().map(|m| m.n_refs);
        assert_eq!(n_refs, refs.get(&b.hash).copied(), "{ctx}: references of blob {i}");
    }
    store.verify_integrity().unwrap_or_else(|e| panic!("{ctx}: {e}"));
}

fn config() -> Config {
    Config {
        cases: 24,
        rng_seed: RngSeed::Fixed(0x6a6f_625f_6c69_6665),
        // No proptest-regressions dir in the tree: a failure prints its minimal case.
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn job_lifecycle_matches_the_model(file in any::<bool>(), ops in proptest::collection::vec(op(), 1..48)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(file, ops));
    }
}
