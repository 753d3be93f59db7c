//! The scheduler: the gateway's own priority queue, dispatch to backends within their
//! concurrency limits, and recovery of every job after a restart.
//!
//! In memory it holds only ids and counters; redb holds the truth, and [`Scheduler::start`]
//! rebuilds everything from it: queued jobs go back into the queue in their durable order,
//! running jobs get a runner that first reconciles with the backend (see [`runner`]).
//!
//! One dispatch loop pops the best queued job whenever a healthy backend has room and
//! spawns its runner; handlers only commit and notify, except that a new job finding the
//! queue empty and a backend free is committed already dispatched and its runner spawned
//! at once ([`Scheduler::submit`]). Every task of the gateway is spawned through the
//! scheduler's [`Tasks`] (a task tracker and a cancellation token; see [`tasks`]), which
//! the API server and the webhook worker share.

pub mod backends;
pub mod feed;
pub mod prune;
pub mod routing;
pub mod runner;
pub mod state;
pub mod tasks;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use tasks::Tasks;

use crate::comfy::client::ComfyClient;
use crate::comfy::ws::WsHub;
use crate::config::{BackendConfig, Config};
use crate::domain::{Job, JobError, JobId, JobState, QueueKey, now_ms};
use crate::error::{Error, ErrorCode, Result};
use crate::metrics::Metrics;
use crate::store::Store;

/// Live progress of a running job: the whole job and the node running (memory only; the
/// event log gets it every `PROGRESS_LOG_INTERVAL`, milestones at once).
pub type Progress = crate::comfy::progress::Snapshot;

/// A backend as the scheduler sees it.
#[derive(Debug)]
pub struct Backend {
    /// Its stable id (`COMFYUI_URL` option `id`): what jobs record as their backend.
    pub id: String,
    /// Its base URL without credentials.
    pub url: String,
    /// Prompts in flight at most.
    pub concurrency_max: u32,
    /// HTTP client.
    pub client: ComfyClient,
    /// WebSocket event routing.
    pub hub: Arc<WsHub>,
    healthy: AtomicBool,
    /// Drained by an operator: no new dispatch (running jobs finish).
    draining: AtomicBool,
    /// Held by the health task while it clears stray prompts and marks the backend
    /// healthy, and by a runner while it decides to move a job off it and commits that:
    /// so a move is either seen by the clearing (and its prompt removed) or not made.
    pub(crate) rejoin: tokio::sync::Mutex<()>,
    /// Wakes the backend's health task to re-probe now.
    recheck: Notify,
    info: Mutex<BackendInfo>,
}

/// The last [`Recent::CAPACITY`] durations of something, in ms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recent {
    ms: VecDeque<u64>,
}

impl Recent {
    /// Durations kept.
    pub const CAPACITY: usize = 32;

    /// Add one, dropping the oldest beyond the capacity.
    pub fn push(&mut self, ms: u64) {
        if self.ms.len() == Self::CAPACITY {
            self.ms.pop_front();
        }
        self.ms.push_back(ms);
    }

    /// The median (the lower one of an even count); None when empty.
    pub fn p50(&self) -> Option<u64> {
        let mut sorted: Vec<u64> = self.ms.iter().copied().collect();
        sorted.sort_unstable();
        sorted.get(sorted.len().saturating_sub(1) / 2).copied()
    }
}

/// What is known about a backend, for `/health` and `/backends`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendInfo {
    /// ComfyUI version from `/system_stats`.
    pub comfyui_version: Option<String>,
    /// The last connection problem.
    pub last_error: Option<String>,
    /// Since when it has been unreachable (a failed probe or connection), while it is.
    pub unreachable_since: Option<std::time::Instant>,
    /// Round trips of the last successful probes (`/system_stats`).
    pub probe_ms: Recent,
    /// Run times (`POST /prompt` to outputs stored) of the last jobs that succeeded here.
    pub run_ms: Recent,
    /// When an operator drained it (ms since the epoch), while drained.
    pub drained_since_ms: Option<u64>,
}

/// A backend's state for status reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStatus {
    /// Stable id.
    pub id: String,
    /// Base URL without credentials.
    pub url: String,
    /// Answered its last probe.
    pub reachable: bool,
    /// Drained by an operator.
    pub draining: bool,
    /// Prompts in flight.
    pub in_flight: u32,
    /// Its concurrency limit.
    pub concurrency_max: u32,
    /// Version, last error, latencies.
    pub info: BackendInfo,
    /// Workflows it took recently, most recent first.
    pub recent_workflows: Vec<String>,
}

impl Backend {
    fn new(config: &BackendConfig, http: reqwest::Client, call_timeout: std::time::Duration) -> Backend {
        Backend {
            id: config.id.clone(),
            url: config.public_url(),
            concurrency_max: config.concurrency_max,
            client: ComfyClient::new(&config.url, http).with_call_timeout(call_timeout),
            hub: WsHub::new(),
            healthy: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            rejoin: tokio::sync::Mutex::new(()),
            recheck: Notify::new(),
            info: Mutex::new(BackendInfo::default()),
        }
    }

    /// Whether the backend answered its last probe.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Whether an operator drained it.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether a job's recorded backend names this one: its id, or its URL (the records
    /// of versions that stored the URL).
    pub fn answers_to(&self, recorded: &str) -> bool {
        recorded == self.id || recorded == self.client.base_url()
    }

    /// How long it has been unreachable (None while it is not known to be).
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.lock_info().unreachable_since.map(|t| t.elapsed())
    }

    /// A request could not connect: stop dispatching here and re-probe.
    pub fn mark_down(&self, reason: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(backend = %self.id, reason, "backend marked down");
        }
        {
            let mut info = self.lock_info();
            info.last_error = Some(reason.to_string());
            info.unreachable_since.get_or_insert_with(std::time::Instant::now);
        }
        self.recheck.notify_one();
    }

    /// A job that ran here succeeded after `run`.
    pub(crate) fn record_run(&self, run: Duration) {
        self.lock_info().run_ms.push(run.as_millis() as u64);
    }

    fn lock_info(&self) -> std::sync::MutexGuard<'_, BackendInfo> {
        self.info.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
struct RunningJob {
    backend: usize,
    /// Its priority, to count it in the right level if it goes back to the queue.
    priority: i32,
    /// Its workflow, for routing if it goes back to the queue.
    workflow: String,
    cancel: CancellationToken,
    progress: Option<Progress>,
    /// The latest preview image (`LIVE_PREVIEWS`), memory only.
    preview: Option<Preview>,
    /// In output-process: its backend slot is given back, it counts in `processing`.
    processing: bool,
}

/// A running job's latest preview image.
#[derive(Debug, Clone)]
pub struct Preview {
    /// 1 for the job's first preview, one more for each later one.
    pub seq: u64,
    /// `image/jpeg` or `image/png`.
    pub media_type: &'static str,
    /// The encoded image (at most `comfy::protocol::PREVIEW_BYTES_MAX`).
    pub image: bytes::Bytes,
}

/// A job in the memory queue.
#[derive(Debug, Clone)]
struct Queued {
    id: JobId,
    priority: i32,
    /// For routing (workflow affinity).
    workflow: String,
}

/// Workflows remembered per backend for routing and `/backends`.
const RECENT_WORKFLOWS_MAX: usize = 8;

/// The priority labels of [`Scheduler::queue_depth_by_priority`], by [`priority_class`].
pub const PRIORITY_LABELS: [&str; 4] = ["high", "normal", "low", "other"];

/// Index into [`PRIORITY_LABELS`]: the named levels, or `other` for any other integer.
pub fn priority_class(priority: i32) -> usize {
    match priority {
        1 => 0,
        0 => 1,
        -1 => 2,
        _ => 3,
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// Queued jobs in dispatch order.
    queue: BTreeMap<QueueKey, Queued>,
    /// `queue.len()` split by [`priority_class`]; changed only by `enqueue`/`dequeue`.
    n_queued_by_class: [u64; 4],
    /// Prompts in flight per backend (same index as `Shared::backends`).
    in_flight: Vec<u32>,
    /// Jobs per backend whose outputs are downloaded and in their plugin's output-process
    /// (no longer a prompt on the backend). No dispatch to a backend whose prompts and
    /// post-processing jobs together reach twice its limit, so downloaded outputs waiting
    /// for a plugin stay bounded.
    processing: Vec<u32>,
    /// Per backend: the workflows it took last and when (ms), most recent first, at most
    /// `RECENT_WORKFLOWS_MAX`.
    recent: Vec<Vec<(String, u64)>>,
    running: HashMap<JobId, RunningJob>,
}

impl Inner {
    fn enqueue(&mut self, key: QueueKey, id: JobId, priority: i32, workflow: &str) {
        if self.queue.insert(key, Queued { id, priority, workflow: workflow.to_string() }).is_none() {
            self.n_queued_by_class[priority_class(priority)] += 1;
        }
    }

    /// The memory queue of recovered queued jobs.
    fn rebuild_queue(&mut self, queued: &[crate::store::QueuedHead]) {
        for job in queued {
            self.enqueue(job.queue_key, job.id, job.priority, &job.workflow_id);
        }
    }

    /// Backend `b` took a job of `workflow` at `now_ms`.
    fn note_workflow(&mut self, b: usize, workflow: &str, now_ms: u64) {
        let recent = &mut self.recent[b];
        recent.retain(|(w, _)| w != workflow);
        recent.insert(0, (workflow.to_string(), now_ms));
        recent.truncate(RECENT_WORKFLOWS_MAX);
    }

    /// Job `id` takes a slot of backend `b` at `now_ms`: counted in flight, noted for
    /// affinity, and running there under `cancel`.
    fn occupy(&mut self, b: usize, id: JobId, priority: i32, workflow: String, cancel: CancellationToken, now_ms: u64) {
        self.in_flight[b] += 1;
        self.note_workflow(b, &workflow, now_ms);
        let run =
            RunningJob { backend: b, priority, workflow, cancel, progress: None, preview: None, processing: false };
        self.running.insert(id, run);
    }

    /// The job the dispatch loop takes next (when a backend has room).
    fn best(&self) -> Option<(QueueKey, JobId)> {
        self.queue.first_key_value().map(|(&key, q)| (key, q.id))
    }

    fn dequeue(&mut self, key: &QueueKey) -> Option<JobId> {
        let q = self.queue.remove(key)?;
        let n = &mut self.n_queued_by_class[priority_class(q.priority)];
        assert!(*n > 0, "queue counts match the queue");
        *n -= 1;
        Some(q.id)
    }
}

/// What the scheduler rebuilds at start: the store's queued jobs in dispatch order and its
/// running jobs by id.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) queued: Vec<crate::store::QueuedHead>,
    pub(crate) running: Vec<Job>,
}

/// Read what [`Scheduler::start`] recovers from the store (the queue index and the
/// running index, each job checked against its index).
pub(crate) fn recover(store: &Store) -> std::result::Result<Recovered, crate::store::StoreError> {
    // Heads only (checked against the index by the store): the prompts stay on disk.
    let queued = store.queued_heads()?;
    let running = store.running_jobs()?;
    // The store checks this on every write; a file that breaks it is refused, not trusted.
    let misfiled = |table: &'static str, job: &Job| crate::store::StoreError::Corrupt {
        table,
        key: job.id.to_string(),
        reason: format!("indexes a job that is {}", job.state.as_str()),
    };
    if let Some(job) = running.iter().find(|j| j.state != JobState::Running) {
        return Err(misfiled("running", job));
    }
    Ok(Recovered { queued, running })
}

/// State shared by the dispatch loop, the backend tasks and the runners.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) config: Arc<Config>,
    pub(crate) metrics: Metrics,
    pub(crate) backends: Vec<Arc<Backend>>,
    inner: Mutex<Inner>,
    wake: Notify,
    pub(crate) tasks: Tasks,
    /// `tasks`' token: cancelled at shutdown.
    pub(crate) shutdown: CancellationToken,
    /// "Job X has new events" after every commit that appends to a job's log.
    pub(crate) feed: feed::Feed,
    /// The plugin host (output-process hooks).
    pub(crate) plugins: crate::plugins::Host,
    /// The pruner's doorbell (a submit short of disk space rings it).
    pub(crate) pruner: prune::Pruner,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The backend a job of `workflow` should go to now ([`routing::pick`]).
    fn pick_backend(&self, inner: &Inner, workflow: &str, now: u64) -> Option<usize> {
        let candidates: Vec<routing::Candidate> = self
            .backends
            .iter()
            .enumerate()
            .map(|(b, backend)| routing::Candidate {
                open: backend.is_healthy()
                    && !backend.is_draining()
                    // Prompts stay within the limit (`in_flight` below); jobs post-processing
                    // may take as many again, no more.
                    && inner.in_flight[b] + inner.processing[b] < 2 * backend.concurrency_max,
                in_flight: inner.in_flight[b],
                max: backend.concurrency_max,
                last_ran_ms: inner.recent[b].iter().find(|(w, _)| *w == workflow).map(|(_, t)| *t),
            })
            .collect();
        routing::pick(&candidates, now)
    }

    /// Pop the best queued job if a backend may take it ([`routing::pick`]); reserve that
    /// backend's room.
    fn take_next(&self) -> Option<(QueueKey, JobId, usize)> {
        let mut inner = self.lock();
        let (key, id) = inner.best()?;
        let Queued { priority, workflow, .. } = inner.queue[&key].clone();
        let now = now_ms();
        let backend = self.pick_backend(&inner, &workflow, now)?;
        inner.dequeue(&key);
        inner.occupy(backend, id, priority, workflow, self.shutdown.child_token(), now);
        Some((key, id, backend))
    }

    /// For a new job: when nothing waits in the queue and a backend has room and a live
    /// WebSocket, reserve that room for it and return the backend with the socket's client
    /// id, so that the job is dispatched in its insert commit.
    fn reserve_new(&self, id: JobId, priority: i32, workflow: &str) -> Option<(usize, String)> {
        let mut inner = self.lock();
        if !inner.queue.is_empty() {
            return None;
        }
        let now = now_ms();
        let backend = self.pick_backend(&inner, workflow, now)?;
        let client_id = self.backends[backend].hub.client_id()?;
        inner.occupy(backend, id, priority, workflow.to_string(), self.shutdown.child_token(), now);
        Some((backend, client_id))
    }

    /// Reserve a backend slot for a job recovered as running.
    fn adopt_running(&self, job: &Job, backend: usize) {
        let mut inner = self.lock();
        inner.in_flight[backend] += 1;
        inner.note_workflow(backend, &job.workflow_id, now_ms());
        let workflow = job.workflow_id.clone();
        let run = RunningJob {
            backend,
            priority: job.priority,
            workflow,
            cancel: self.shutdown.child_token(),
            progress: None,
            preview: None,
            processing: false,
        };
        inner.running.insert(job.id, run);
    }

    /// The runner of `id` is done with its backend slot; `requeue` puts the job back.
    pub(crate) fn release(&self, id: JobId, requeue: Option<QueueKey>) {
        let mut inner = self.lock();
        let run = inner.running.remove(&id);
        if let Some(run) = &run {
            let count = if run.processing { &mut inner.processing } else { &mut inner.in_flight };
            count[run.backend] = count[run.backend].saturating_sub(1);
        }
        if let Some(key) = requeue {
            // Every released job was taken or adopted, so its priority is known.
            let (priority, workflow) = run.map_or((0, String::new()), |r| (r.priority, r.workflow));
            inner.enqueue(key, id, priority, &workflow);
        }
        drop(inner);
        self.wake.notify_one();
    }

    /// The runner of `id` downloaded its outputs and runs its plugin's output-process: its
    /// backend's prompt slot goes to the next queued job while the hook runs. The job stays
    /// `running` (in the store and here) until [`Shared::release`].
    pub(crate) fn post_processing(&self, id: JobId) {
        let mut inner = self.lock();
        let Some(run) = inner.running.get_mut(&id) else { return };
        if run.processing {
            return;
        }
        run.processing = true;
        let b = run.backend;
        inner.in_flight[b] = inner.in_flight[b].saturating_sub(1);
        inner.processing[b] += 1;
        drop(inner);
        self.wake.notify_one();
    }

    pub(crate) fn set_progress(&self, id: JobId, progress: Progress) {
        if let Some(run) = self.lock().running.get_mut(&id) {
            run.progress = Some(progress);
        }
    }

    /// Keep `image` as the running job's latest preview (replacing the one before).
    pub(crate) fn set_preview(&self, id: JobId, media_type: &'static str, image: bytes::Bytes) {
        if let Some(run) = self.lock().running.get_mut(&id) {
            let seq = run.preview.as_ref().map_or(1, |p| p.seq + 1);
            run.preview = Some(Preview { seq, media_type, image });
        }
    }

    pub(crate) fn cancel_token(&self, id: JobId) -> Option<CancellationToken> {
        self.lock().running.get(&id).map(|r| r.cancel.clone())
    }

    pub(crate) fn wake_dispatcher(&self) {
        self.wake.notify_one();
    }

    /// Count a committed transition `before` → `after` in the metrics.
    pub(crate) fn observe(&self, before: &Job, after: &Job) {
        observe_transition(&self.metrics, before, after);
    }
}

/// Count a committed transition in `metrics`: attempts, the first dispatch's wait, and a
/// terminal state with its run time.
fn observe_transition(metrics: &Metrics, before: &Job, after: &Job) {
    let ms = |from: u64, to: u64| Duration::from_millis(to.saturating_sub(from));
    if after.n_attempts > before.n_attempts {
        metrics.job_attempt(before.state == JobState::Running);
    }
    if before.started_ms.is_none()
        && let Some(started) = after.started_ms
    {
        metrics.job_started(&after.workflow_id, ms(after.created_ms, started));
    }
    if after.state.is_terminal() && !before.state.is_terminal() {
        let run = after.started_ms.zip(after.finished_ms).map(|(s, f)| ms(s, f));
        metrics.job_finished(&after.workflow_id, after.state, run);
    }
}

/// Live information about one job that only the scheduler knows.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveStatus {
    /// 0-based position in the gateway's queue, while queued.
    pub queue_position: Option<usize>,
    /// Progress, while running.
    pub progress: Option<Progress>,
}

/// Handle to the running scheduler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Rebuild state from the store, then start backend tasks, recovery runners and the
    /// dispatch loop.
    pub async fn start(
        store: Store,
        config: Arc<Config>,
        metrics: Metrics,
        plugins: crate::plugins::Host,
    ) -> Result<Scheduler> {
        let http = ComfyClient::http_pool(config.comfyui_http_timeout).map_err(|e| {
            Error::new(ErrorCode::Internal, format!("cannot build the HTTP client of the backends: {e}"))
        })?;
        let backends: Vec<Arc<Backend>> = config
            .backends
            .iter()
            .map(|b| Arc::new(Backend::new(b, http.clone(), config.comfyui_http_timeout)))
            .collect();
        // A maintenance drain outlives restarts; drains of backends no longer configured
        // stay recorded (harmless) until resumed.
        for (id, since_ms) in store.drained_backends()? {
            if let Some(b) = backends.iter().find(|b| b.id == id) {
                b.draining.store(true, Ordering::Release);
                b.lock_info().drained_since_ms = Some(since_ms);
                tracing::info!(backend = %id, "backend stays drained");
            }
        }
        let n_backends = backends.len();
        let tasks = Tasks::new();
        let shared = Arc::new(Shared {
            store: store.clone(),
            inner: Mutex::new(Inner {
                in_flight: vec![0; n_backends],
                processing: vec![0; n_backends],
                recent: vec![Vec::new(); n_backends],
                ..Inner::default()
            }),
            backends,
            config,
            metrics,
            wake: Notify::new(),
            shutdown: tasks.token().clone(),
            tasks,
            feed: feed::Feed::default(),
            plugins,
            pruner: prune::Pruner::default(),
        });
        // Seed the run durations from recent history (bounded: the newest jobs only).
        let mut recent = store.list_jobs(None, feed::DURATIONS_SEED_JOBS, |_| true)?;
        recent.reverse();
        for job in &recent {
            shared.feed.record(job);
        }

        let Recovered { queued, running } = recover(&store)?;
        tracing::info!(queued = queued.len(), running = running.len(), "recovering from the store");
        shared.lock().rebuild_queue(&queued);
        for job in running {
            let backend = job.backend.as_deref().and_then(|b| shared.backends.iter().position(|x| x.answers_to(b)));
            match backend {
                Some(b) => {
                    shared.adopt_running(&job, b);
                    let span = tracing::info_span!("job", job = %job.id);
                    shared.tasks.spawn(runner::recover(shared.clone(), b, job).instrument(span));
                }
                None => {
                    // Its backend was removed from COMFYUI_URL: run it elsewhere, as a move
                    // off a dead backend (an attempt, since it may have run there).
                    let was = job.backend.clone().unwrap_or_default();
                    let event = if job.n_attempts >= shared.config.attempts_max {
                        let error = JobError {
                            code: ErrorCode::ComfyuiUnreachable,
                            message: format!(
                                "the job ran on backend {was:?}, which is no longer configured, and has used its {} attempts",
                                shared.config.attempts_max
                            ),
                            details_json: None,
                        };
                        state::Event::Fail { error }
                    } else {
                        state::Event::Move { reason: format!("backend {was:?} is no longer configured") }
                    };
                    let (next, log) = state::apply(&job, event, now_ms()).map_err(Error::internal)?;
                    store.update_job(next.clone(), log).await?;
                    shared.observe(&job, &next);
                    shared.feed.committed(&next);
                    if next.state == JobState::Queued {
                        tracing::info!(job = %next.id, backend = %was, "job of a backend no longer configured requeued");
                        shared.lock().enqueue(next.queue_key, next.id, next.priority, &next.workflow_id);
                    }
                }
            }
        }
        for b in 0..shared.backends.len() {
            shared.tasks.spawn(backends::health_loop(shared.clone(), b));
        }
        shared.tasks.spawn(dispatch_loop(shared.clone()));
        shared.tasks.spawn(prune::run(shared.clone()));
        if let Some(objects) = shared.store.objects() {
            let reaper = crate::storage::reaper::run(shared.store.clone(), objects.clone(), shared.shutdown.clone());
            shared.tasks.spawn(reaper);
        }
        Ok(Scheduler { shared })
    }

    /// Durably accept a new `Queued` job (`rank_ms` set by [`queue_rank`]) with the blobs of
    /// its image inputs in the same commit, and claiming `claim` (an idempotency key) in it
    /// too: it joins the queue, or with `cached` (the outputs of a result-cache entry) it
    /// takes [`state::Event::CacheHit`] in that commit and is only recorded.
    /// Returns the job as stored, after the commit; the store's error as is (e.g.
    /// `IdempotencyTaken`, or `Invalid` when a cached output's blob is gone).
    pub async fn submit(
        &self,
        job: Job,
        cached: Option<Vec<crate::domain::OutputRef>>,
        blobs: Vec<crate::store::NewBlob>,
        claim: Option<crate::store::Claim>,
    ) -> Result<Job, crate::store::StoreError> {
        // The commit and what must follow it (the memory queue, or the runner) run in a task
        // of their own: a request dropped half-way (its client went away) cannot leave a
        // committed job that the scheduler does not know about until the next start.
        let task = submit_task(self.shared.clone(), job, cached, blobs, claim).instrument(tracing::Span::current());
        match self.shared.tasks.spawn(task).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(crate::store::StoreError::Closed),
        }
    }

    /// Cancel a job: a queued one at once, a running one by interrupting it on its backend.
    /// Returns the job after the change (a running job is canceled by its runner shortly after).
    pub async fn cancel(&self, id: JobId) -> Result<Job> {
        let job = self.shared.store.get_job(id)?.ok_or_else(|| Error::new(ErrorCode::JobNotFound, "no such job"))?;
        match job.state {
            JobState::Queued => {
                let removed = self.shared.lock().dequeue(&job.queue_key).is_some();
                if !removed {
                    // Dispatched meanwhile: cancel it as a running job.
                    return self.cancel_running(id).await;
                }
                let (next, log) =
                    state::apply(&job, state::Event::Cancel { reason: "canceled by request".into() }, now_ms())
                        .map_err(|e| Error::new(ErrorCode::Conflict, e.to_string()))?;
                self.shared.store.update_job(next.clone(), log).await?;
                self.shared.observe(&job, &next);
                self.shared.feed.committed(&next);
                Ok(next)
            }
            JobState::Running => self.cancel_running(id).await,
            state => Err(Error::new(ErrorCode::Conflict, format!("the job is already {}", state.as_str()))),
        }
    }

    async fn cancel_running(&self, id: JobId) -> Result<Job> {
        if let Some(token) = self.shared.cancel_token(id) {
            token.cancel();
        }
        // Give the runner a moment to interrupt and record it.
        for _ in 0..100 {
            let job =
                self.shared.store.get_job(id)?.ok_or_else(|| Error::new(ErrorCode::JobNotFound, "no such job"))?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.shared.store.get_job(id)?.ok_or_else(|| Error::new(ErrorCode::JobNotFound, "no such job"))
    }

    /// Queue position or progress of a job.
    pub fn live_status(&self, id: JobId, queue_key: QueueKey) -> LiveStatus {
        let inner = self.shared.lock();
        let queue_position = inner.queue.contains_key(&queue_key).then(|| inner.queue.range(..queue_key).count());
        let progress = inner.running.get(&id).and_then(|r| r.progress.clone());
        LiveStatus { queue_position, progress }
    }

    /// The running job's latest preview image, if any (`LIVE_PREVIEWS`).
    pub fn preview(&self, id: JobId) -> Option<Preview> {
        self.shared.lock().running.get(&id).and_then(|r| r.preview.clone())
    }

    /// A receiver of "job X has new events" notifications, published after each commit
    /// that appended to a job's durable log. Subscribe before reading the log.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.shared.feed.subscribe()
    }

    /// Estimated seconds until `job` finishes (None when terminal or when its workflow
    /// has no succeeded run yet), from the median of its workflow's recent run times.
    pub fn eta_seconds(&self, job: &Job, live: &LiveStatus) -> Option<f64> {
        let p50_ms = self.shared.feed.median_run_ms(&job.workflow_id)?;
        let (slots, busy) = {
            let inner = self.shared.lock();
            let backends = &self.shared.backends;
            let open: Vec<usize> =
                (0..backends.len()).filter(|&b| backends[b].is_healthy() && !backends[b].is_draining()).collect();
            let slots = open.iter().map(|&b| backends[b].concurrency_max as usize).sum::<usize>().max(1);
            let busy = open.iter().all(|&b| inner.in_flight[b] >= backends[b].concurrency_max);
            (slots, busy)
        };
        let ms = feed::eta_ms(job, live.queue_position, slots, busy, p50_ms, now_ms())?;
        Some(ms as f64 / 1000.0)
    }

    /// Jobs waiting in the gateway's queue.
    pub fn queue_depth(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// Jobs waiting in the gateway's queue by priority level, labeled as in
    /// [`PRIORITY_LABELS`] (O(1)).
    pub fn queue_depth_by_priority(&self) -> [(&'static str, u64); 4] {
        let counts = self.shared.lock().n_queued_by_class;
        std::array::from_fn(|i| (PRIORITY_LABELS[i], counts[i]))
    }

    /// The backend to ask about node definitions (`/object_info`): the first healthy one in
    /// `COMFYUI_URL` order, else the first (its health probe may not have answered yet).
    /// Its id and client.
    pub fn catalog_backend(&self) -> (String, ComfyClient) {
        let backends = &self.shared.backends;
        let backend = backends.iter().find(|b| b.is_healthy()).or_else(|| backends.first());
        // `Config` refuses an empty `COMFYUI_URL`, so there is always a first backend.
        let backend = backend.expect("at least one backend is configured");
        (backend.id.clone(), backend.client.clone())
    }

    /// The healthy backends, in `COMFYUI_URL` order: their ids and clients.
    pub fn healthy_backends(&self) -> Vec<(String, ComfyClient)> {
        self.shared.backends.iter().filter(|b| b.is_healthy()).map(|b| (b.id.clone(), b.client.clone())).collect()
    }

    /// Every backend's state, in `COMFYUI_URL` order.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let inner = self.shared.lock();
        self.shared.backends.iter().enumerate().map(|(i, b)| status_of(b, &inner, i)).collect()
    }

    /// Drain backend `id` (no new dispatch; running jobs finish) or resume it. Recorded in
    /// the store first, so the drain outlives a restart. `BACKEND_NOT_FOUND` for an id
    /// that is not configured.
    pub async fn set_draining(&self, id: &str, draining: bool) -> Result<BackendStatus> {
        let shared = &self.shared;
        let Some(i) = shared.backends.iter().position(|b| b.id == id) else {
            return Err(Error::new(ErrorCode::BackendNotFound, format!("no backend with id {id:?}")));
        };
        let now = now_ms();
        shared.store.set_backend_drain(id, draining.then_some(now)).await?;
        let backend = &shared.backends[i];
        {
            // As in the store: a second drain keeps the first one's time.
            let mut info = backend.lock_info();
            info.drained_since_ms = if draining { Some(info.drained_since_ms.unwrap_or(now)) } else { None };
        }
        if backend.draining.swap(draining, Ordering::AcqRel) != draining {
            tracing::info!(backend = %id, draining, "backend drain changed");
        }
        shared.wake.notify_one();
        let inner = shared.lock();
        Ok(status_of(backend, &inner, i))
    }

    /// Stop every task (running jobs stay `running` in the store and are reconciled at the
    /// next start) and wait for them.
    pub async fn shutdown(&self) {
        self.shared.tasks.shutdown().await;
    }

    /// The owner of the gateway's tasks: the API server and the webhook worker spawn
    /// through handles on it ([`Tasks::child`]), and [`Scheduler::shutdown`] waits for
    /// them too.
    pub fn tasks(&self) -> &Tasks {
        &self.shared.tasks
    }
}

fn status_of(b: &Backend, inner: &Inner, i: usize) -> BackendStatus {
    BackendStatus {
        id: b.id.clone(),
        url: b.url.clone(),
        reachable: b.is_healthy(),
        draining: b.is_draining(),
        in_flight: inner.in_flight[i],
        concurrency_max: b.concurrency_max,
        info: b.lock_info().clone(),
        recent_workflows: inner.recent[i].iter().map(|(w, _)| w.clone()).collect(),
    }
}

/// [`Scheduler::submit`]: commit the new job, then queue it or start its runner.
async fn submit_task(
    shared: Arc<Shared>,
    job: Job,
    cached: Option<Vec<crate::domain::OutputRef>>,
    blobs: Vec<crate::store::NewBlob>,
    claim: Option<crate::store::Claim>,
) -> Result<Job, crate::store::StoreError> {
    use crate::domain::JobEventKind;
    assert_eq!(job.state, JobState::Queued, "a new job is queued");
    let mut events = vec![JobEventKind::Queued];
    // A cache hit: succeeded at its creation time, in the insert commit.
    let job = match cached {
        Some(outputs) => {
            let Ok((done, log)) = state::apply(&job, state::Event::CacheHit { outputs }, job.created_ms) else {
                unreachable!("a new job can always be answered from the cache")
            };
            events.extend(log);
            done
        }
        None => job,
    };
    // Nothing waiting and a backend free: the dispatch record goes into the insert
    // commit (one fsync less before the prompt is sent).
    let direct = match job.state {
        JobState::Queued => shared.reserve_new(job.id, job.priority, &job.workflow_id),
        _ => None,
    };
    if let Some((b, client_id)) = direct {
        let event = state::Event::Dispatch { backend: shared.backends[b].id.clone(), client_id };
        let Ok((running, log)) = state::apply(&job, event, now_ms()) else {
            unreachable!("a queued job can always be dispatched")
        };
        events.extend(log);
        let stored = match shared.store.insert_job_claiming(running, blobs, events, claim).await {
            Ok(stored) => stored,
            Err(e) => {
                shared.release(job.id, None);
                return Err(e);
            }
        };
        // Inside the request's span: this line joins the correlation id to the job id.
        let (workflow, priority) = (&stored.workflow_id, stored.priority);
        tracing::info!(job = %stored.id, workflow = %workflow, priority, dispatched = true, "job queued");
        shared.observe(&job, &stored);
        shared.feed.publish(stored.id);
        let span = tracing::info_span!("job", job = %stored.id);
        shared.tasks.spawn(runner::start(shared.clone(), b, stored.clone()).instrument(span));
        return Ok(stored);
    }
    let job = shared.store.insert_job_claiming(job, blobs, events, claim).await?;
    if job.state == JobState::Queued {
        shared.lock().enqueue(job.queue_key, job.id, job.priority, &job.workflow_id);
        // Inside the request's span: this line joins the correlation id to the job id.
        tracing::info!(job = %job.id, workflow = %job.workflow_id, priority = job.priority, "job queued");
        shared.wake.notify_one();
    } else {
        tracing::info!(job = %job.id, workflow = %job.workflow_id, "job answered from the result cache");
        shared.metrics.job_finished(&job.workflow_id, job.state, None);
    }
    shared.feed.publish(job.id);
    Ok(job)
}

/// The durable queue rank of a job created at `created_ms` with `priority`.
pub fn queue_rank(created_ms: u64, priority: i32, aging_ms: u64) -> i64 {
    (created_ms as i64).saturating_sub((priority as i64).saturating_mul(aging_ms as i64))
}

async fn dispatch_loop(shared: Arc<Shared>) {
    loop {
        while let Some((key, id, backend)) = shared.take_next() {
            // Every log line of the job's runner (and of the clients it calls) names the job.
            let span = tracing::info_span!("job", job = %id);
            shared.tasks.spawn(runner::dispatch(shared.clone(), backend, key, id).instrument(span));
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = shared.shutdown.cancelled() => return,
            // Backends coming back wake us too; this is only a safety net.
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests_lifecycle;

#[cfg(test)]
mod tests {
    use super::{Inner, PRIORITY_LABELS, priority_class, queue_rank};
    use crate::domain::QueueKey;

    #[test]
    fn queue_counts_by_priority_follow_enqueue_and_dequeue() {
        assert_eq!(
            [1, 0, -1, 5, -100].map(|p| PRIORITY_LABELS[priority_class(p)]),
            ["high", "normal", "low", "other", "other"]
        );
        let mut inner = Inner::default();
        let key = |seq| QueueKey { rank_ms: 0, seq };
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        inner.enqueue(key(1), a, 1, "w");
        inner.enqueue(key(1), a, 1, "w"); // the same job again is not counted twice
        inner.enqueue(key(2), b, 42, "w");
        assert_eq!(inner.n_queued_by_class, [1, 0, 0, 1]);
        assert_eq!(inner.dequeue(&key(1)), Some(a));
        assert_eq!(inner.dequeue(&key(1)), None);
        assert_eq!(inner.n_queued_by_class, [0, 0, 0, 1]);
        assert_eq!(inner.n_queued_by_class.iter().sum::<u64>(), inner.queue.len() as u64);
    }

    #[test]
    fn recent_keeps_the_last_durations_and_their_median() {
        let mut r = super::Recent::default();
        assert_eq!(r.p50(), None);
        for ms in [30, 10, 20] {
            r.push(ms);
        }
        assert_eq!(r.p50(), Some(20));
        r.push(40);
        assert_eq!(r.p50(), Some(20), "the lower median of an even count");
        for _ in 0..super::Recent::CAPACITY {
            r.push(7);
        }
        assert_eq!(r.p50(), Some(7), "older durations fall out");
    }

    #[test]
    fn a_backend_answers_to_its_id_and_to_its_url_in_old_records() {
        let config = crate::config::BackendConfig {
            id: "gpu1".into(),
            url: "http://u:p@10.0.0.5:8188".into(),
            concurrency_max: 2,
        };
        let b = super::Backend::new(&config, reqwest::Client::new(), std::time::Duration::from_secs(1));
        assert_eq!((b.url.as_str(), b.concurrency_max), ("http://10.0.0.5:8188", 2), "no credentials shown");
        assert!(b.answers_to("gpu1") && b.answers_to("http://u:p@10.0.0.5:8188"));
        assert!(!b.answers_to("gpu2") && !b.answers_to("http://10.0.0.6:8188"));
    }

    #[test]
    fn priority_then_fifo_then_aging() {
        let aging = 60_000;
        let high_late = queue_rank(10_000, 1, aging);
        let normal_early = queue_rank(1_000, 0, aging);
        assert!(high_late < normal_early, "high priority runs first");
        assert!(queue_rank(1_000, 0, aging) < queue_rank(2_000, 0, aging), "FIFO within a priority");
        let low_old = queue_rank(0, -1, aging);
        let high_new = queue_rank(2 * aging + 1, 1, aging);
        assert!(low_old < high_new, "a low job that waited two aging periods overtakes new high work");
    }

    /// A request's future dropped after its first poll (the client went away while the
    /// commit was under way): the job still joins the memory queue. Before the commit and
    /// its bookkeeping ran in a task of their own, it stayed queued in the store only,
    /// undispatched until the next start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submit_whose_caller_goes_away_still_queues_the_job() {
        use std::future::Future as _;
        let dir = tempfile::tempdir().unwrap();
        // No backend listens: the job stays queued.
        let gw = crate::service::test_gateway(dir.path(), &[]).await;
        let req = crate::service::SubmitRequest {
            workflow_id: "icon_512".into(),
            inputs: serde_json::json!({"prompt": "gone", "seed": 1}),
            priority: 0,
            metadata: None,
            callback_url: None,
            files: Vec::new(),
            owner: None,
            cache: false,
            webhook_events: 0,
            idempotency: None,
        };
        let mut submit = Box::pin(gw.submit(req));
        // One poll: the commit is under way (the writer thread answers later), then the
        // request goes away.
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(submit.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the submit finished within one poll");
        drop(submit);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while gw.queue_depth() == 0 {
            assert!(std::time::Instant::now() < deadline, "the committed job never joined the memory queue");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let stored = gw.unfinished_owners().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(gw.job(stored[0].0).unwrap().state, crate::domain::JobState::Queued);
        assert_eq!(gw.queue_depth(), 1);
        gw.shutdown().await;
    }
}
