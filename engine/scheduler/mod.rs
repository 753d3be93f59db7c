//! The scheduler: the gateway's own priority queue, dispatch to backends within their
//! concurrency limits, and recovery of every job after a restart.
//!
//! In memory it holds only ids and counters; redb holds the truth, and [`Scheduler::start`]
//! rebuilds everything from it: queued jobs go back into the queue in their durable order,
//! running jobs get a runner that first reconciles with the backend (see [`runner`]).
//!
//! One dispatch loop pops the best queued job whenever a healthy backend has room and
//! spawns its runner; handlers only commit and notify. Every task is spawned through one
//! [`TaskTracker`] and stops on one [`CancellationToken`].

pub mod backends;
pub mod feed;
pub mod prune;
pub mod runner;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::comfy::client::ComfyClient;
use crate::comfy::ws::WsHub;
use crate::config::Config;
use crate::domain::{Job, JobError, JobId, JobState, QueueKey, now_ms};
use crate::error::{Error, ErrorCode, Result};
use crate::metrics::Metrics;
use crate::store::Store;

/// Live progress of a running job (memory only; milestones go to the event log).
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The node executing.
    pub node: Option<String>,
    /// Progress value within the node.
    pub value: f64,
    /// Maximum value within the node.
    pub max: f64,
}

/// A backend as the scheduler sees it.
#[derive(Debug)]
pub struct Backend {
    /// Its id: the base URL.
    pub id: String,
    /// HTTP client.
    pub client: ComfyClient,
    /// WebSocket event routing.
    pub hub: Arc<WsHub>,
    healthy: AtomicBool,
    /// Wakes the backend's health task to re-probe now.
    recheck: Notify,
    info: Mutex<BackendInfo>,
}

/// What is known about a backend, for `/health`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BackendInfo {
    /// ComfyUI version from `/system_stats`.
    pub comfyui_version: Option<String>,
    /// The last connection problem.
    pub last_error: Option<String>,
}

/// A backend's state for status reports.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStatus {
    /// Base URL.
    pub url: String,
    /// Answered its last probe.
    pub reachable: bool,
    /// Prompts in flight.
    pub in_flight: u32,
    /// Version and last error.
    pub info: BackendInfo,
}

impl Backend {
    fn new(url: &str, http: reqwest::Client, call_timeout: std::time::Duration) -> Backend {
        Backend {
            id: url.to_string(),
            client: ComfyClient::new(url, http).with_call_timeout(call_timeout),
            hub: WsHub::new(),
            healthy: AtomicBool::new(false),
            recheck: Notify::new(),
            info: Mutex::new(BackendInfo::default()),
        }
    }

    /// Whether the backend answered its last probe.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// A request could not connect: stop dispatching here and re-probe.
    pub fn mark_down(&self, reason: &str) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(backend = %self.id, reason, "backend marked down");
        }
        self.lock_info().last_error = Some(reason.to_string());
        self.recheck.notify_one();
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
    cancel: CancellationToken,
    progress: Option<Progress>,
}

/// A job in the memory queue.
#[derive(Debug, Clone, Copy)]
struct Queued {
    id: JobId,
    priority: i32,
}

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
    running: HashMap<JobId, RunningJob>,
}

impl Inner {
    fn enqueue(&mut self, key: QueueKey, id: JobId, priority: i32) {
        if self.queue.insert(key, Queued { id, priority }).is_none() {
            self.n_queued_by_class[priority_class(priority)] += 1;
        }
    }

    /// The memory queue of recovered queued jobs.
    fn rebuild_queue(&mut self, queued: &[Job]) {
        for job in queued {
            self.enqueue(job.queue_key, job.id, job.priority);
        }
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
    pub(crate) queued: Vec<Job>,
    pub(crate) running: Vec<Job>,
}

/// Read what [`Scheduler::start`] recovers from the store (the queue index and the
/// running index, each job checked against its index).
pub(crate) fn recover(store: &Store) -> std::result::Result<Recovered, crate::store::StoreError> {
    let queued = store.queued_jobs()?;
    let running = store.running_jobs()?;
    // The store checks this on every write; a file that breaks it is refused, not trusted.
    let misfiled = |table: &'static str, job: &Job| crate::store::StoreError::Corrupt {
        table,
        key: job.id.to_string(),
        reason: format!("indexes a job that is {}", job.state.as_str()),
    };
    if let Some(job) = queued.iter().find(|j| j.state != JobState::Queued) {
        return Err(misfiled("queue", job));
    }
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
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// "Job X has new events" after every commit that appends to a job's log.
    pub(crate) feed: feed::Feed,
    /// The plugin host (output-process hooks).
    pub(crate) plugins: crate::plugins::Host,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pop the best queued job if a healthy backend has room; reserve that room.
    fn take_next(&self) -> Option<(QueueKey, JobId, usize)> {
        let mut inner = self.lock();
        let (key, id) = inner.best()?;
        let priority = inner.queue[&key].priority;
        let limit = self.config.backend_concurrency_max;
        let backend = (0..self.backends.len())
            .filter(|&b| self.backends[b].is_healthy() && inner.in_flight[b] < limit)
            .min_by_key(|&b| inner.in_flight[b])?;
        inner.dequeue(&key);
        inner.in_flight[backend] += 1;
        let run = RunningJob { backend, priority, cancel: self.shutdown.child_token(), progress: None };
        inner.running.insert(id, run);
        Some((key, id, backend))
    }

    /// Reserve a backend slot for a job recovered as running.
    fn adopt_running(&self, id: JobId, priority: i32, backend: usize) {
        let mut inner = self.lock();
        inner.in_flight[backend] += 1;
        let run = RunningJob { backend, priority, cancel: self.shutdown.child_token(), progress: None };
        inner.running.insert(id, run);
    }

    /// The runner of `id` is done with its backend slot; `requeue` puts the job back.
    pub(crate) fn release(&self, id: JobId, requeue: Option<QueueKey>) {
        let mut inner = self.lock();
        let run = inner.running.remove(&id);
        if let Some(run) = &run {
            inner.in_flight[run.backend] = inner.in_flight[run.backend].saturating_sub(1);
        }
        if let Some(key) = requeue {
            // Every released job was taken or adopted, so its priority is known.
            inner.enqueue(key, id, run.map_or(0, |r| r.priority));
        }
        drop(inner);
        self.wake.notify_one();
    }

    pub(crate) fn set_progress(&self, id: JobId, progress: Progress) {
        if let Some(run) = self.lock().running.get_mut(&id) {
            run.progress = Some(progress);
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
        let http = ComfyClient::http_pool(config.comfyui_http_timeout);
        let backends: Vec<Arc<Backend>> = config
            .backend_urls
            .iter()
            .map(|url| Arc::new(Backend::new(url, http.clone(), config.comfyui_http_timeout)))
            .collect();
        let shared = Arc::new(Shared {
            store: store.clone(),
            inner: Mutex::new(Inner { in_flight: vec![0; backends.len()], ..Inner::default() }),
            backends,
            config,
            metrics,
            wake: Notify::new(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            feed: feed::Feed::default(),
            plugins,
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
            let backend = job.backend.as_deref().and_then(|b| shared.backends.iter().position(|x| x.id == b));
            match backend {
                Some(b) => {
                    shared.adopt_running(job.id, job.priority, b);
                    let span = tracing::info_span!("job", job = %job.id);
                    shared.tasks.spawn(runner::recover(shared.clone(), b, job).instrument(span));
                }
                None => {
                    let error = JobError {
                        code: ErrorCode::ComfyuiUnreachable,
                        message: format!(
                            "the job ran on backend {:?}, which is no longer configured; it cannot be reconciled",
                            job.backend
                        ),
                        details_json: None,
                    };
                    let (next, log) =
                        state::apply(&job, state::Event::Fail { error }, now_ms()).map_err(Error::internal)?;
                    store.update_job(next.clone(), log).await?;
                    shared.observe(&job, &next);
                    shared.feed.committed(&next);
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

    /// Durably accept a new job with the blobs of its image inputs in the same commit, and
    /// claiming `claim` (an idempotency key) in it too: a `Queued` job (`rank_ms` set by
    /// [`queue_rank`]) joins the queue; a job born terminal (a cache hit) is only recorded.
    /// Returns the job as stored, after the commit; the store's error as is (e.g.
    /// `IdempotencyTaken`).
    pub async fn submit(
        &self,
        job: Job,
        blobs: Vec<crate::store::NewBlob>,
        claim: Option<crate::store::Claim>,
    ) -> Result<Job, crate::store::StoreError> {
        use crate::domain::JobEventKind;
        let events = match job.state {
            JobState::Queued => vec![JobEventKind::Queued],
            JobState::Succeeded => {
                vec![JobEventKind::Queued, JobEventKind::Succeeded { n_outputs: job.outputs.len() as u32 }]
            }
            state => panic!("a new job is queued or a cache hit, not {}", state.as_str()),
        };
        let job = self.shared.store.insert_job_claiming(job, blobs, events, claim).await?;
        if job.state == JobState::Queued {
            self.shared.lock().enqueue(job.queue_key, job.id, job.priority);
            // Inside the request's span: this line joins the correlation id to the job id.
            tracing::info!(job = %job.id, workflow = %job.workflow_id, priority = job.priority, "job queued");
            self.shared.wake.notify_one();
        } else {
            tracing::info!(job = %job.id, workflow = %job.workflow_id, "job answered from the result cache");
            self.shared.metrics.job_finished(&job.workflow_id, job.state, None);
        }
        self.shared.feed.publish(job.id);
        Ok(job)
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
            let limit = self.shared.config.backend_concurrency_max as usize;
            let healthy: Vec<usize> =
                (0..self.shared.backends.len()).filter(|&b| self.shared.backends[b].is_healthy()).collect();
            let slots = healthy.len().max(1) * limit;
            let busy = healthy.iter().all(|&b| inner.in_flight[b] as usize >= limit);
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

    /// Every backend's state.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let inner = self.shared.lock();
        self.shared
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendStatus {
                url: b.id.clone(),
                reachable: b.is_healthy(),
                in_flight: inner.in_flight[i],
                info: b.lock_info().clone(),
            })
            .collect()
    }

    /// Stop every task (running jobs stay `running` in the store and are reconciled at the
    /// next start) and wait for them.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
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
        inner.enqueue(key(1), a, 1);
        inner.enqueue(key(1), a, 1); // the same job again is not counted twice
        inner.enqueue(key(2), b, 42);
        assert_eq!(inner.n_queued_by_class, [1, 0, 0, 1]);
        assert_eq!(inner.dequeue(&key(1)), Some(a));
        assert_eq!(inner.dequeue(&key(1)), None);
        assert_eq!(inner.n_queued_by_class, [0, 0, 0, 1]);
        assert_eq!(inner.n_queued_by_class.iter().sum::<u64>(), inner.queue.len() as u64);
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
}
