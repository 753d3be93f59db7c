//! One job's life on its backend, as a small loop over phases:
//!
//! ```text
//! dispatch ─▶ Submit ─▶ Wait ─▶ Collect ─▶ (succeeded | failed | canceled)
//!               │  ▲      │        ▲
//!   refused ◀───┘  │      ▼        │
//!   (requeue)      └─ Reconcile ───┘   recover() starts here
//! ```
//!
//! Exactly-once: the dispatch record (backend, prompt_id = job id, attempt) is committed
//! before `POST /prompt`. Whenever the runner cannot be sure what the backend did (a
//! restart of the gateway, a dropped WebSocket, an ambiguous HTTP failure) it reconciles:
//! `/queue` first, then `/history/{id}` (in that order, since ComfyUI moves a prompt from
//! the queue to the history atomically): still there → wait for it; finished → collect;
//! unknown twice → ComfyUI lost it, so submit again with the same prompt_id, counted as
//! an attempt, up to `MAX_ATTEMPTS`. "Unknown" is only ever concluded from answers the
//! client understood (`protocol` parses `/queue` and `/history/{id}` strictly): a failed
//! call or an answer of another shape is not a look at all; the job waits and looks again,
//! bounded by its time limit, and such a failure neither counts toward the two unknowns
//! nor resets them.
//!
//! Dead backends: with more than one backend configured, a runner reconciling with a
//! backend that has been unreachable for `BACKEND_DEAD_AFTER_MS` gives the job up there
//! and moves it back to the queue (`Event::Move`, counted as an attempt, bounded by
//! `MAX_ATTEMPTS`), so another backend runs it. Should the box come back still holding the
//! prompt, its health task removes it before dispatching there again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::{self, Event};
use super::{Backend, Progress, Shared};
use crate::backoff::Backoff;
use crate::comfy::client::ComfyError;
use crate::comfy::progress::Tracker;
use crate::comfy::protocol::{self, HistoryEntry, Outcome, OutputFile};
use crate::comfy::ws::{Signal, Subscription};
use crate::domain::{
    Job, JobError, JobEventKind, JobId, JobState, OutputRef, QueueKey, WebhookEvents, input_subfolder, now_ms,
};
use crate::error::ErrorCode;
use crate::store::NewBlob;

/// Poll interval for a job whose events arrive over the WebSocket (a safety net only).
const POLL_WITH_WS: Duration = Duration::from_secs(5);
/// Delay before the second look at a prompt the backend did not know.
const RECONCILE_GRACE: Duration = Duration::from_millis(300);
/// Pauses between attempts to reach a down backend while reconciling.
const RECONCILE_BACKOFF: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_secs(2));
/// Longest wait at dispatch for the backend's WebSocket to come up.
const WS_WAIT_AT_DISPATCH: Duration = Duration::from_secs(1);
/// Minimum time between two preview images kept (and sent on event streams).
const PREVIEW_EVERY: Duration = Duration::from_millis(500);

/// Minimum time between two progress entries in the durable event log.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_millis(500);
/// Tries of one input upload or output download that fails transiently (a broken or
/// cut-short transfer, a 5xx, bytes that are not the file).
const TRANSFER_TRIES: u32 = 3;
/// Pauses after failed tries of a transfer: 100 ms, 200 ms.
const TRANSFER_BACKOFF: Backoff = Backoff::doubling(Duration::from_millis(100), Duration::from_millis(200));
/// Tries of a success commit whose outputs the object storage refuses (S3 down), and the
/// pauses between them (1, 2, 4, 8 s): about 15 s in all, then the job fails
/// `STORAGE_UNAVAILABLE` (its outputs were never stored, so nothing is lost or dangling).
const OBJECT_TRIES: u32 = 5;
const OBJECT_BACKOFF: Backoff = Backoff::doubling(Duration::from_secs(1), Duration::from_secs(8));
/// Pause before reading a history that listed no output again.
const HISTORY_REREAD_DELAY: Duration = Duration::from_millis(100);

enum Phase {
    Submit,
    Wait,
    Reconcile,
    Fetch,
    Collect(HistoryEntry),
}

/// Why the input images could not be uploaded.
enum UploadError {
    /// ComfyUI's answer (or no answer).
    Comfy(ComfyError),
    /// The stored image could not be read.
    Store(String),
    /// The object storage holding the image failed (S3 down).
    Objects(String),
}

/// Why an output could not be downloaded.
enum DownloadError {
    /// The connection was refused: the backend is down; reconcile.
    Down,
    /// Given up: the job fails with this code and message.
    Failed(ErrorCode, String),
}

enum Exit {
    /// The job reached a terminal state (or was left for recovery after a store error).
    Finished,
    /// Put the job back in the queue.
    Requeue(QueueKey),
    /// The gateway is stopping; the job stays `running` for the next start.
    Shutdown,
}

struct Run {
    shared: Arc<Shared>,
    backend: Arc<Backend>,
    job: Job,
    sub: Subscription,
    cancel: CancellationToken,
    deadline: Instant,
    next_poll: Instant,
    /// When progress was last logged (the run's start before that).
    last_progress_log: Instant,
    /// A progress entry being written in the background; awaited before the next
    /// commit so the job's log stays in order.
    progress_write: Option<tokio::task::JoinHandle<()>>,
    /// The job's progress, made from its prompt on the first event ([`Run::tracker`]).
    tracker: Option<Tracker>,
    /// The last quarter of the job's progress reached (`Milestone` events mark new ones).
    quarter: u8,
    /// When a preview image was last kept.
    last_preview: Option<Instant>,
    /// A milestone not yet written (a write was in flight); written with the next one.
    pending_milestone: Option<JobEventKind>,
    /// The history was read once more after it listed no output.
    history_reread: bool,
    /// The last failure that sent the job to reconciliation (named if the job fails).
    last_failure: Option<String>,
    /// When this runner's `POST /prompt` was accepted (for the backend's run times).
    submitted: Option<Instant>,
}

/// The quarter (0 to 4) of a percent.
fn quarter(percent: f64) -> u8 {
    if percent.is_finite() { (percent / 25.0).floor().clamp(0.0, 4.0) as u8 } else { 0 }
}

/// Start a freshly dispatched job: commit the dispatch record, then submit.
pub(crate) async fn dispatch(shared: Arc<Shared>, b: usize, queue_key: QueueKey, id: JobId) {
    let backend = shared.backends[b].clone();
    let job = match shared.store.get_job(id) {
        Ok(Some(job)) if job.state == JobState::Queued => job,
        Ok(_) => return shared.release(id, None), // canceled or gone meanwhile
        Err(e) => {
            tracing::error!(job = %id, error = %e, "cannot read a job to dispatch; it stays queued");
            // Pause so a failing store does not turn the dispatch loop into a spin.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return shared.release(id, Some(queue_key));
        }
    };
    debug_assert_eq!(job.queue_key, queue_key, "memory queue and store agree on the key");
    let cancel = shared.cancel_token(id).unwrap_or_else(|| shared.shutdown.child_token());
    let sub = backend.hub.subscribe(&id.to_string());
    // Submitted under the live socket's clientId, the job gets live events; without one
    // (socket down) it is followed by polling.
    let client_id = backend
        .hub
        .wait_client_id(WS_WAIT_AT_DISPATCH)
        .await
        .unwrap_or_else(|| format!("gw-{}", uuid::Uuid::new_v4().simple()));
    let mut run = Run::new(shared.clone(), backend.clone(), job, sub, cancel);
    let event = if run.cancel.is_cancelled() && !shared.shutdown.is_cancelled() {
        Event::Cancel { reason: "canceled by request".into() }
    } else {
        Event::Dispatch { backend: backend.id.clone(), client_id }
    };
    let canceled = matches!(event, Event::Cancel { .. });
    if !run.commit(event).await {
        // Not recorded: the job is still queued in the store; keep it queued in memory.
        return shared.release(id, Some(queue_key));
    }
    if canceled {
        return shared.release(id, None);
    }
    run.drive(Phase::Submit).await;
}

/// Run a job whose dispatch record was committed with its insert
/// ([`super::Scheduler::submit`] found a backend free): submit it now.
pub(crate) async fn start(shared: Arc<Shared>, b: usize, job: Job) {
    let backend = shared.backends[b].clone();
    let sub = backend.hub.subscribe(&job.id.to_string());
    let cancel = shared.cancel_token(job.id).unwrap_or_else(|| shared.shutdown.child_token());
    Run::new(shared, backend, job, sub, cancel).drive(Phase::Submit).await;
}

/// Resume a job found `running` in the store at start-up: reconcile first.
pub(crate) async fn recover(shared: Arc<Shared>, b: usize, job: Job) {
    let backend = shared.backends[b].clone();
    let id = job.id;
    let sub = backend.hub.subscribe(&id.to_string());
    let cancel = shared.cancel_token(id).unwrap_or_else(|| shared.shutdown.child_token());
    Run::new(shared, backend, job, sub, cancel).drive(Phase::Reconcile).await;
}

impl Run {
    fn new(shared: Arc<Shared>, backend: Arc<Backend>, job: Job, sub: Subscription, cancel: CancellationToken) -> Run {
        let deadline = Instant::now() + Duration::from_millis(shared.config.comfyui_timeout_ms);
        Run {
            shared,
            backend,
            job,
            sub,
            cancel,
            deadline,
            next_poll: Instant::now(),
            // The first progress entry is logged `PROGRESS_LOG_INTERVAL` after the run
            // began: a job that ends sooner logs none (one commit less per short job).
            last_progress_log: Instant::now(),
            progress_write: None,
            tracker: None,
            quarter: 0,
            last_preview: None,
            pending_milestone: None,
            history_reread: false,
            last_failure: None,
            submitted: None,
        }
    }

    fn id(&self) -> JobId {
        self.job.id
    }

    fn restart_deadline(&mut self) {
        self.deadline = Instant::now() + Duration::from_millis(self.shared.config.comfyui_timeout_ms);
    }

    /// Whether events of this prompt reach us over the live WebSocket.
    fn ws_mode(&self) -> bool {
        let live = self.backend.hub.client_id();
        live.is_some() && live == self.job.client_id
    }

    async fn drive(mut self, mut phase: Phase) {
        let exit = loop {
            let step = match phase {
                Phase::Submit => self.submit().await,
                Phase::Wait => self.wait().await,
                Phase::Reconcile => self.reconcile().await,
                Phase::Fetch => self.fetch().await,
                Phase::Collect(entry) => self.collect(entry).await,
            };
            match step {
                Ok(next) => phase = next,
                Err(exit) => break exit,
            }
        };
        let id = self.id();
        match exit {
            Exit::Finished | Exit::Shutdown => self.shared.release(id, None),
            Exit::Requeue(key) => self.shared.release(id, Some(key)),
        }
    }

    /// Apply an event and commit it; false (logged) if the store refused.
    async fn commit(&mut self, event: Event) -> bool {
        self.commit_with(event, Vec::new()).await
    }

    async fn commit_with(&mut self, event: Event, blobs: Vec<NewBlob>) -> bool {
        self.try_commit_with(event, blobs).await.is_ok()
    }

    /// `commit_with`, with the store's error (None: the transition was refused).
    async fn try_commit_with(
        &mut self,
        event: Event,
        blobs: Vec<NewBlob>,
    ) -> Result<(), Option<crate::store::StoreError>> {
        if let Some(write) = self.progress_write.take() {
            let _ = write.await;
        }
        if let Some(milestone) = self.pending_milestone.take() {
            match self.shared.store.append_events(self.id(), vec![milestone]).await {
                Ok(()) => self.shared.feed.publish(self.id()),
                Err(e) => tracing::warn!(job = %self.id(), error = %e, "cannot log a progress milestone"),
            }
        }
        let (next, log) = match state::apply(&self.job, event, now_ms()) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(job = %self.id(), error = %e, "refused transition");
                return Err(None);
            }
        };
        let result = if blobs.is_empty() && next.state != JobState::Succeeded {
            self.shared.store.update_job(next.clone(), log).await
        } else {
            self.shared.store.complete_job(next.clone(), blobs, log).await
        };
        match result {
            Ok(()) => {
                tracing::info!(job = %next.id, state = next.state.as_str(), attempt = next.n_attempts, "job state");
                self.shared.observe(&self.job, &next);
                self.shared.feed.committed(&next);
                self.job = next;
                Ok(())
            }
            Err(e @ crate::store::StoreError::Objects(_)) => {
                tracing::warn!(job = %self.id(), error = %e, "the object storage refused the job's blobs; nothing was committed");
                Err(Some(e))
            }
            Err(e) => {
                tracing::error!(job = %self.id(), error = %e, "cannot record a job transition; it will be reconciled at the next start");
                Err(Some(e))
            }
        }
    }

    async fn finish(&mut self, event: Event) -> Result<Phase, Exit> {
        self.commit(event).await;
        Err(Exit::Finished)
    }

    async fn fail(
        &mut self,
        code: ErrorCode,
        message: String,
        details: Option<serde_json::Value>,
    ) -> Result<Phase, Exit> {
        let mut details_json = details.map(|d| d.to_string());
        let mut message = message;
        // Privacy mode: error texts are stored, so the job's input texts come out of them.
        if let Some(sealer) = &self.shared.config.sealer {
            let secrets =
                sealer.open(&self.job.inputs_json).map(|i| crate::privacy::input_texts(&i)).unwrap_or_default();
            message = crate::privacy::redact(&message, &secrets);
            details_json = details_json.map(|d| crate::privacy::redact(&d, &secrets));
        }
        self.finish(Event::Fail { error: JobError { code, message, details_json } }).await
    }

    /// Upload the job's input images (every time: the backend may have restarted since), then
    /// `POST /prompt`. A failed upload means the prompt was certainly not sent.
    async fn submit(&mut self) -> Result<Phase, Exit> {
        // Privacy mode: the stored prompt is sealed; it is opened only to be sent.
        let prompt = match &self.shared.config.sealer {
            Some(sealer) => match sealer.open(&self.job.prompt_json) {
                Ok(p) => p.into_owned(),
                Err(e) => {
                    let message = format!("the job's sealed prompt cannot be opened: {e}");
                    return self.fail(ErrorCode::Internal, message, None).await;
                }
            },
            None => self.job.prompt_json.clone(),
        };
        let id = self.id().to_string();
        let client_id = self.job.client_id.clone().unwrap_or_default();
        let uploaded = tokio::select! {
            r = self.upload_inputs() => r,
            _ = self.shared.shutdown.cancelled() => return Err(Exit::Shutdown),
        };
        match uploaded {
            Ok(()) => {}
            Err(UploadError::Comfy(ComfyError::Connect(reason))) => {
                return self.requeue_unreachable(reason).await;
            }
            // The prompt was not sent, so no attempt is counted; failing here (rather than
            // requeueing) bounds a backend that keeps failing uploads.
            Err(UploadError::Comfy(e)) if e.is_transient() => {
                let message = format!("ComfyUI failed to take an input image {TRANSFER_TRIES} times: {e}");
                return self.fail(ErrorCode::ComfyuiUnreachable, message, None).await;
            }
            Err(UploadError::Comfy(other)) => {
                let message = format!("ComfyUI did not accept an input image: {other}");
                return self.fail(ErrorCode::ComfyuiNodeError, message, None).await;
            }
            Err(UploadError::Store(message)) => {
                tracing::error!(job = %id, error = %message, "cannot read an input image");
                return self.fail(ErrorCode::Internal, "an input image could not be read".to_string(), None).await;
            }
            Err(UploadError::Objects(message)) => {
                tracing::warn!(job = %id, error = %message, "cannot read an input image from the object storage");
                let message = "an input image could not be read: the blob storage is unavailable".to_string();
                return self.fail(ErrorCode::StorageUnavailable, message, None).await;
            }
        }
        let result = tokio::select! {
            r = self.backend.client.submit(&prompt, &id, &client_id) => r,
            _ = self.shared.shutdown.cancelled() => return Err(Exit::Shutdown),
        };
        match result {
            Ok(()) => {
                crate::failpoints::crash_point(crate::failpoints::AFTER_PROMPT);
                self.submitted = Some(Instant::now());
                self.restart_deadline();
                self.next_poll = Instant::now() + self.poll_interval();
                Ok(Phase::Wait)
            }
            Err(ComfyError::Rejected { message, details }) => {
                self.fail(ErrorCode::ComfyuiNodeError, format!("ComfyUI rejected the prompt: {message}"), Some(details))
                    .await
            }
            Err(ComfyError::Connect(reason)) => self.requeue_unreachable(reason).await,
            Err(other) => {
                tracing::warn!(job = %id, error = %other, "submit outcome unknown; reconciling");
                self.last_failure = Some(format!("POST /prompt: {other}"));
                Ok(Phase::Reconcile)
            }
        }
    }

    /// The prompt certainly did not reach the backend: back to the queue without counting
    /// an attempt.
    async fn requeue_unreachable(&mut self, reason: String) -> Result<Phase, Exit> {
        self.backend.mark_down(&reason);
        let key = self.job.queue_key;
        if self.commit(Event::Requeue { reason: format!("backend unreachable: {reason}") }).await {
            Err(Exit::Requeue(key))
        } else {
            Err(Exit::Finished)
        }
    }

    /// `POST /upload/image` of every input image, from the blob store, under the job's
    /// subfolder with the name the prompt was rendered with; an upload that fails
    /// transiently is tried again (`overwrite=true` makes that harmless).
    async fn upload_inputs(&self) -> Result<(), UploadError> {
        let subfolder = input_subfolder(self.job.id);
        for input in &self.job.inputs {
            // From redb or the bucket (with object storage; a bucket that fails is tried
            // like a success commit: `OBJECT_TRIES` times, backing off).
            let mut reads = 0;
            let bytes = loop {
                reads += 1;
                match self.shared.store.blob_bytes(&input.hash).await {
                    Ok(Some(bytes)) => break bytes,
                    Ok(None) => return Err(UploadError::Store(format!("input {:?}: blob missing", input.name))),
                    Err(e @ crate::store::StoreError::Objects(_)) if reads < OBJECT_TRIES => {
                        tracing::warn!(job = %self.id(), input = %input.name, error = %e, "cannot read an input image from the object storage; trying again");
                        tokio::time::sleep(OBJECT_BACKOFF.delay(reads)).await;
                    }
                    Err(e @ crate::store::StoreError::Objects(_)) => {
                        return Err(UploadError::Objects(format!("input {:?}: {e}", input.name)));
                    }
                    Err(e) => return Err(UploadError::Store(format!("input {:?}: {e}", input.name))),
                }
            };
            let mut tries = 0;
            loop {
                tries += 1;
                let upload =
                    self.backend.client.upload_image(&subfolder, &input.file_name, &input.media_type, bytes.clone());
                match upload.await {
                    Ok(()) => break,
                    Err(e) if e.is_transient() && tries < TRANSFER_TRIES => {
                        tracing::warn!(job = %self.id(), input = %input.name, error = %e, "input upload failed; trying again");
                        tokio::time::sleep(TRANSFER_BACKOFF.delay(tries)).await;
                    }
                    Err(e) => return Err(UploadError::Comfy(e)),
                }
            }
        }
        Ok(())
    }

    /// `GET /view` of one output, checked against its file name
    /// ([`protocol::output_defect`]); a transient failure or a defective body is tried again,
    /// up to `TRANSFER_TRIES` times.
    async fn download(&self, file: &OutputFile) -> Result<bytes::Bytes, DownloadError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let (code, failure) = match self.backend.client.view(file).await {
                Ok(bytes) => match protocol::output_defect(&file.filename, &bytes) {
                    None => return Ok(bytes),
                    Some(defect) => (ErrorCode::ComfyuiNodeError, format!("output {} {defect}", file.filename)),
                },
                Err(ComfyError::Connect(_)) => return Err(DownloadError::Down),
                Err(e) if e.is_transient() => {
                    (ErrorCode::ComfyuiUnreachable, format!("output {} could not be downloaded: {e}", file.filename))
                }
                Err(e) => {
                    let message = format!("output {} could not be downloaded: {e}", file.filename);
                    return Err(DownloadError::Failed(ErrorCode::ComfyuiNodeError, message));
                }
            };
            if tries >= TRANSFER_TRIES {
                return Err(DownloadError::Failed(code, format!("{failure} ({tries} tries)")));
            }
            tracing::warn!(job = %self.id(), error = %failure, "output download failed; trying again");
            tokio::time::sleep(TRANSFER_BACKOFF.delay(tries)).await;
        }
    }

    fn poll_interval(&self) -> Duration {
        if self.ws_mode() { POLL_WITH_WS } else { Duration::from_millis(self.shared.config.poll_interval_ms) }
    }

    async fn wait(&mut self) -> Result<Phase, Exit> {
        tokio::select! {
            signal = self.sub.rx.recv() => match signal {
                Some(Signal::Started) => {
                    self.restart_deadline();
                    Ok(Phase::Wait)
                }
                Some(Signal::NodeStarted { node }) => {
                    self.tracker().started(&node);
                    self.progress();
                    Ok(Phase::Wait)
                }
                Some(Signal::Progress { node, value, max }) => {
                    self.tracker().step(node.as_deref(), value, max);
                    self.progress();
                    Ok(Phase::Wait)
                }
                Some(Signal::Cached { nodes }) => {
                    self.tracker().cached(&nodes);
                    self.progress();
                    Ok(Phase::Wait)
                }
                Some(Signal::Preview { media_type, image }) => {
                    self.preview(media_type, image);
                    Ok(Phase::Wait)
                }
                Some(Signal::Done) => Ok(Phase::Fetch),
                Some(Signal::Disconnected) | None => Ok(Phase::Reconcile),
            },
            _ = tokio::time::sleep_until(self.next_poll) => {
                self.next_poll = Instant::now() + self.poll_interval();
                let id = self.id().to_string();
                if self.ws_mode() {
                    return match self.backend.client.history(&id).await {
                        Ok(Some(entry)) => Ok(Phase::Collect(entry)),
                        Ok(None) => Ok(Phase::Wait),
                        Err(e) if e.is_unreachable() => Ok(Phase::Reconcile),
                        Err(e) => {
                            tracing::warn!(job = %id, error = %e, "history poll failed");
                            Ok(Phase::Wait)
                        }
                    };
                }
                // Without events a prompt can also vanish silently (backend restarted).
                match self.look(&id).await {
                    Ok(Seen::Queued) => Ok(Phase::Wait),
                    Ok(Seen::Finished(entry)) => Ok(Phase::Collect(entry)),
                    Ok(Seen::Unknown) | Err(_) => Ok(Phase::Reconcile),
                }
            },
            _ = tokio::time::sleep_until(self.deadline) => self.time_out().await,
            _ = self.cancel.cancelled() => self.canceled().await,
        }
    }

    /// Keep a preview image (`LIVE_PREVIEWS`) at most every [`PREVIEW_EVERY`], and wake the
    /// job's event streams, which send it as a `preview` event.
    fn preview(&mut self, media_type: &'static str, image: bytes::Bytes) {
        if !self.shared.config.live_previews || self.last_preview.is_some_and(|t| t.elapsed() < PREVIEW_EVERY) {
            return;
        }
        self.last_preview = Some(Instant::now());
        self.shared.set_preview(self.id(), media_type, image);
        self.shared.feed.publish(self.id());
    }

    /// The job's progress tracker, made from its prompt the first time (a job re-attached
    /// after a restart never passed through `submit`); an unreadable prompt tracks nothing.
    fn tracker(&mut self) -> &mut Tracker {
        let job = &self.job;
        let sealer = self.shared.config.sealer.as_ref();
        self.tracker.get_or_insert_with(|| {
            let text = match sealer {
                Some(sealer) => sealer.open(&job.prompt_json).map(|p| p.into_owned()).unwrap_or_default(),
                None => job.prompt_json.clone(),
            };
            Tracker::new(&serde_json::from_str(&text).unwrap_or_default())
        })
    }

    /// Record the job's progress ([`Run::tracker`]): live at once, and in the durable log
    /// at most every `PROGRESS_LOG_INTERVAL` (the first one that long after the run began,
    /// so a job that ends sooner costs no progress commit), written in the background
    /// (progress is never acknowledged to anyone, so it does not wait for its fsync). For a
    /// job that asked for `job.progress` webhooks, the job reaching a new quarter of its
    /// progress (25/50/75/100 %) is logged as a `Milestone` at once; one that cannot be
    /// written yet goes with the next write or the next commit.
    fn progress(&mut self) {
        let now: Progress = self.tracker().snapshot();
        self.shared.set_progress(self.id(), now.clone());
        let node = now.node.clone().unwrap_or_default();
        let q = quarter(now.percent);
        // Milestones exist for `job.progress` webhooks; each is one more commit, so only
        // jobs that asked for them get them.
        let wanted = self.job.callback_url.is_some() && self.job.webhook_events & WebhookEvents::PROGRESS != 0;
        if q > self.quarter {
            self.quarter = q;
            if wanted {
                self.pending_milestone = Some(JobEventKind::Milestone { node: node.clone(), percent: q * 25 });
            }
        }
        let due = self.last_progress_log.elapsed() >= PROGRESS_LOG_INTERVAL;
        let idle = self.progress_write.as_ref().is_none_or(|w| w.is_finished());
        if (due || self.pending_milestone.is_some()) && idle {
            self.last_progress_log = Instant::now();
            let class = now.class.unwrap_or_default();
            let entry = JobEventKind::Advanced { percent: now.percent, node, class, value: now.value, max: now.max };
            let mut events = vec![entry];
            events.extend(self.pending_milestone.take());
            let (shared, id) = (self.shared.clone(), self.id());
            // Tracked: the scheduler's shutdown waits for the write.
            self.progress_write = Some(self.shared.tasks.spawn(async move {
                match shared.store.append_events(id, events).await {
                    Ok(()) => shared.feed.publish(id),
                    Err(e) => tracing::warn!(job = %id, error = %e, "cannot log progress"),
                }
            }));
        }
    }

    async fn time_out(&mut self) -> Result<Phase, Exit> {
        let _ = self.backend.client.cancel(&self.id().to_string()).await;
        let limit = self.shared.config.comfyui_timeout_ms;
        self.fail(
            ErrorCode::ComfyuiTimeout,
            format!("execution took longer than COMFYUI_TIMEOUT_MS ({limit} ms); the prompt was interrupted"),
            None,
        )
        .await
    }

    async fn canceled(&mut self) -> Result<Phase, Exit> {
        if self.shared.shutdown.is_cancelled() {
            return Err(Exit::Shutdown);
        }
        if let Err(e) = self.backend.client.cancel(&self.id().to_string()).await {
            tracing::warn!(job = %self.id(), error = %e, "cannot interrupt a canceled job on its backend");
        }
        self.finish(Event::Cancel { reason: "canceled by request".into() }).await
    }

    /// Read the history after the WebSocket said the prompt finished.
    async fn fetch(&mut self) -> Result<Phase, Exit> {
        let id = self.id().to_string();
        for _ in 0..10 {
            match self.backend.client.history(&id).await {
                Ok(Some(entry)) => return Ok(Phase::Collect(entry)),
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => return Ok(Phase::Reconcile),
            }
        }
        Ok(Phase::Wait)
    }

    /// Find out what the backend knows of this prompt.
    async fn reconcile(&mut self) -> Result<Phase, Exit> {
        let id = self.id().to_string();
        // Looks that failed (each followed by a pause of `RECONCILE_BACKOFF`).
        let mut failures = 0u32;
        // Answers that said "unknown" (understood ones only: a failed look is not counted).
        let mut unknown_seen = 0u32;
        loop {
            let seen = match self.look(&id).await {
                Ok(seen) => seen,
                Err(failure) => {
                    let reason = failure.to_string();
                    if self.backend_is_dead() {
                        // Decided and committed under `rejoin`, so the backend cannot come
                        // back in between without its clearing seeing the move.
                        let backend = self.backend.clone();
                        let _rejoin = backend.rejoin.lock().await;
                        if self.backend_is_dead() {
                            return self.move_away(reason).await;
                        }
                    }
                    if Instant::now() >= self.deadline {
                        let message = if matches!(failure, ComfyError::Protocol(_)) {
                            format!(
                                "the backend's answers were not understood for longer than the job's time limit \
                                 (the prompt was not submitted again): {reason}"
                            )
                        } else {
                            format!("backend unreachable for longer than the job's time limit: {reason}")
                        };
                        return self.fail(ErrorCode::ComfyuiUnreachable, message, None).await;
                    }
                    if matches!(failure, ComfyError::Protocol(_)) {
                        tracing::warn!(job = %id, error = %reason, "answer not understood while reconciling; looking again");
                    }
                    failures = failures.saturating_add(1);
                    tokio::select! {
                        _ = tokio::time::sleep(RECONCILE_BACKOFF.delay(failures)) => {}
                        _ = self.cancel.cancelled() => return self.canceled().await,
                    }
                    continue;
                }
            };
            match seen {
                Seen::Queued => {
                    self.shared.metrics.reconciled("reattached");
                    self.commit(Event::Reattach { found: "in the backend's queue".into() }).await;
                    self.next_poll = Instant::now() + self.poll_interval();
                    return Ok(Phase::Wait);
                }
                Seen::Finished(entry) => {
                    self.shared.metrics.reconciled("collected");
                    return Ok(Phase::Collect(entry));
                }
                Seen::Unknown if unknown_seen == 0 => {
                    // A POST still in flight when we looked could land now: look once more.
                    unknown_seen += 1;
                    tokio::time::sleep(RECONCILE_GRACE).await;
                }
                Seen::Unknown => {
                    self.shared.metrics.reconciled("resubmitted");
                    return self.resubmit().await;
                }
            }
        }
    }

    /// The dead-backend rule: another backend is configured, and this one is down (not
    /// healthy) and has been unreachable for `BACKEND_DEAD_AFTER_MS`.
    fn backend_is_dead(&self) -> bool {
        let dead_after = Duration::from_millis(self.shared.config.backend_dead_after_ms);
        self.shared.backends.len() > 1
            && !self.backend.is_healthy()
            && self.backend.unreachable_for().is_some_and(|d| d >= dead_after)
    }

    /// Give the job up on its dead backend: back to the queue for another one, counted as
    /// an attempt (it may have run there); past `MAX_ATTEMPTS` it fails instead.
    async fn move_away(&mut self, last_failure: String) -> Result<Phase, Exit> {
        let (max, dead_after) = (self.shared.config.attempts_max, self.shared.config.backend_dead_after_ms);
        let backend = self.backend.id.clone();
        if self.job.n_attempts >= max {
            let message = format!(
                "backend {backend} unreachable for longer than BACKEND_DEAD_AFTER_MS ({dead_after} ms) and the job \
                 has used its {max} attempts; last failure: {last_failure}"
            );
            return self.fail(ErrorCode::ComfyuiUnreachable, message, None).await;
        }
        tracing::warn!(job = %self.id(), backend = %backend, "backend dead; moving the job to another backend");
        let key = self.job.queue_key;
        let reason = format!(
            "backend {backend} unreachable for longer than BACKEND_DEAD_AFTER_MS ({dead_after} ms); moved to another \
             backend (last failure: {last_failure})"
        );
        if self.commit(Event::Move { reason }).await { Err(Exit::Requeue(key)) } else { Err(Exit::Finished) }
    }

    /// One look at the backend: `/queue`, then `/history/{id}`. `Unknown` only when both
    /// were understood and neither lists the prompt; a history entry is taken even when the
    /// queue's answer was not understood (a finished prompt is finished), but "unknown" is
    /// then not concluded: the queue's failure is returned instead.
    async fn look(&self, id: &str) -> Result<Seen, ComfyError> {
        let client = &self.backend.client;
        let queue_failure = match client.queue().await {
            Ok(queue) if queue.contains(id) => return Ok(Seen::Queued),
            Ok(_) => None,
            Err(e) if e.is_unreachable() => {
                // `/queue` is cheap: no connection or no answer in time means the backend
                // is unreachable (e.g. partitioned while its WebSocket still looks open),
                // so its health task re-probes and the dead-backend clock starts.
                self.backend.mark_down(&format!("GET /queue: {e}"));
                return Err(e);
            }
            Err(e) => Some(e),
        };
        match (client.history(id).await?, queue_failure) {
            (Some(entry), _) => Ok(Seen::Finished(entry)),
            (None, None) => Ok(Seen::Unknown),
            (None, Some(queue_failure)) => Err(queue_failure),
        }
    }

    async fn resubmit(&mut self) -> Result<Phase, Exit> {
        let max = self.shared.config.attempts_max;
        if self.job.n_attempts >= max {
            let mut message = format!("the backend lost the job {max} times (restarts or outages); giving up");
            if let Some(failure) = &self.last_failure {
                message.push_str(&format!("; last failure: {failure}"));
            }
            return self.fail(ErrorCode::ComfyuiUnreachable, message, None).await;
        }
        let client_id = self.backend.hub.client_id().unwrap_or_else(|| format!("gw-{}", uuid::Uuid::new_v4().simple()));
        let reason = "the backend no longer knows the prompt (restarted?)".to_string();
        if !self.commit(Event::Resubmit { client_id, reason }).await {
            return Err(Exit::Finished);
        }
        // Events that were queued for the old submission are stale now.
        while self.sub.rx.try_recv().is_ok() {}
        Ok(Phase::Submit)
    }

    async fn collect(&mut self, entry: HistoryEntry) -> Result<Phase, Exit> {
        match entry.outcome {
            Outcome::Success => self.store_outputs(entry.files).await,
            Outcome::Error(e) => self.fail(e.code(), e.summary(), Some(e.details())).await,
            Outcome::Interrupted => self.finish(Event::Cancel { reason: "interrupted on ComfyUI".into() }).await,
        }
    }

    async fn store_outputs(&mut self, files: Vec<OutputFile>) -> Result<Phase, Exit> {
        // Saved outputs always; PreviewImage (temp) files only when the workflow asks.
        let workflow = match self.shared.store.get_workflow_version(&self.job.workflow_id, self.job.workflow_version) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::error!(job = %self.id(), error = %e, "cannot read the job's workflow; previews are dropped");
                None
            }
        };
        let keep_previews = workflow.as_ref().is_some_and(|w| w.keep_previews);
        let wanted: Vec<OutputFile> =
            files.into_iter().filter(|f| f.is_saved() || (keep_previews && f.is_preview())).collect();
        if wanted.is_empty() {
            // One more look first: cheap, and an incomplete answer does not cost the job.
            if !self.history_reread {
                self.history_reread = true;
                tokio::time::sleep(HISTORY_REREAD_DELAY).await;
                return Ok(Phase::Fetch);
            }
            let message = "ComfyUI reported success but listed no saved output files \
                           (PreviewImage results are kept only with keepPreviews)"
                .to_string();
            return self.fail(ErrorCode::ComfyuiNodeError, message, None).await;
        }
        let mut files = Vec::with_capacity(wanted.len());
        for file in wanted {
            let bytes = tokio::select! {
                r = self.download(&file) => r,
                _ = self.shared.shutdown.cancelled() => return Err(Exit::Shutdown),
            };
            let bytes = match bytes {
                Ok(b) => b,
                Err(DownloadError::Down) => return Ok(Phase::Reconcile),
                Err(DownloadError::Failed(code, message)) => return self.fail(code, message, None).await,
            };
            // Privacy mode: ComfyUI writes the prompt into PNG text chunks; they are dropped.
            let stripped = self.shared.config.sealer.as_ref().and_then(|_| crate::privacy::strip_png_text(&bytes));
            let bytes = stripped.map_or(bytes, bytes::Bytes::from);
            let media_type = protocol::media_type_of(&file.filename).to_string();
            files.push((file, media_type, bytes));
        }
        // output-process: each file through the workflow's plugin, before anything is stored;
        // its result is committed with the success, so a recovered job never runs it twice.
        if let Some(p) = workflow.as_ref().and_then(|w| w.plugin.clone()) {
            files = match self.process_outputs(&p, files).await {
                Ok(files) => files,
                Err(e) => return self.fail(e.code, e.message, e.details).await,
            };
        }
        let mut outputs = Vec::with_capacity(files.len());
        let mut blobs: Vec<NewBlob> = Vec::with_capacity(files.len());
        for (file, media_type, bytes) in files {
            let hash = *blake3::hash(&bytes).as_bytes();
            let name = unique_name(&outputs, &file);
            outputs.push(OutputRef {
                name,
                node_id: file.node_id.clone(),
                media_type: media_type.clone(),
                size_bytes: bytes.len() as u64,
                hash,
            });
            if !blobs.iter().any(|b| b.hash == hash) {
                blobs.push(NewBlob { hash, media_type, bytes });
            }
        }
        crate::failpoints::crash_point(crate::failpoints::BEFORE_SUCCESS_COMMIT);
        // With object storage the blobs are uploaded before the commit; a bucket that is
        // down is waited for a little, in place, then the job fails without outputs.
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.try_commit_with(Event::Succeed { outputs: outputs.clone() }, blobs.clone()).await;
            match result {
                Err(Some(crate::store::StoreError::Objects(_))) if tries < OBJECT_TRIES => {
                    tokio::select! {
                        _ = tokio::time::sleep(OBJECT_BACKOFF.delay(tries)) => {}
                        _ = self.shared.shutdown.cancelled() => return Err(Exit::Shutdown),
                    }
                }
                Err(Some(crate::store::StoreError::Objects(e))) => {
                    let message = format!("the outputs could not be stored {OBJECT_TRIES} times: {e}");
                    return self.fail(ErrorCode::StorageUnavailable, message, None).await;
                }
                Ok(()) => {
                    if let Some(submitted) = self.submitted {
                        self.backend.record_run(submitted.elapsed());
                    }
                    return Err(Exit::Finished);
                }
                Err(_) => return Err(Exit::Finished),
            }
        }
    }

    /// Run the plugin's `output-process` hook (if it has one) over every file: the files to
    /// store (the originals too, first, when the workflow keeps them).
    async fn process_outputs(
        &self,
        p: &crate::domain::PluginRef,
        files: Vec<(OutputFile, String, bytes::Bytes)>,
    ) -> Result<Vec<(OutputFile, String, bytes::Bytes)>, crate::error::Error> {
        use crate::plugins::{CallContext, Hook, Media};
        let host = &self.shared.plugins;
        let plugin = host.load(&self.shared.store, &p.hash).await.map_err(|f| f.to_error(Hook::OutputProcess))?;
        if !plugin.hooks.contains(&Hook::OutputProcess) {
            return Ok(files);
        }
        // The prompt is done and its outputs are here: the backend's slot goes to the next
        // queued job while the hook runs (the job stays `running` until its success commit,
        // so a restart before it reconciles, downloads and runs the hook again).
        self.shared.post_processing(self.id());
        let ctx = CallContext {
            job_id: self.id().to_string(),
            workflow: (self.job.workflow_id.clone(), self.job.workflow_version),
            owner: self.job.owner.clone(),
            config: p.config_json.clone(),
        };
        let mut out = Vec::with_capacity(files.len());
        for (file, media_type, bytes) in files {
            if p.keep_originals {
                out.push((file.clone(), media_type.clone(), bytes.clone()));
            }
            let item = Media { name: file.filename.clone(), media_type, data: bytes.to_vec() };
            let (result, report) = host.output_process(&plugin, &ctx, item).await;
            for l in &report.logs {
                tracing::info!(job = %self.id(), hook = "output-process", level = l.level, "plugin: {}", l.message);
            }
            for m in result.map_err(|f| f.to_error(Hook::OutputProcess))? {
                let named = OutputFile { filename: m.name, ..file.clone() };
                out.push((named, m.media_type, bytes::Bytes::from(m.data)));
            }
        }
        Ok(out)
    }
}

enum Seen {
    Queued,
    Finished(HistoryEntry),
    Unknown,
}

/// A URL-safe file name for an output, unique within the job.
fn unique_name(taken: &[OutputRef], file: &OutputFile) -> String {
    let clean: String = file
        .filename
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect();
    let clean = if clean.is_empty() || clean.starts_with('.') { format!("output{clean}") } else { clean };
    if !taken.iter().any(|o| o.name == clean) {
        return clean;
    }
    (2..).map(|n| format!("{n}_{clean}")).find(|c| !taken.iter().any(|o| &o.name == c)).unwrap_or(clean)
}
