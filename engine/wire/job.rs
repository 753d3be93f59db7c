//! Jobs as the API and webhooks show them: the job, its outputs, its event log, its
//! webhook deliveries.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::system::Code;
use super::{Link, Time};
use crate::domain::{
    Delivery, DeliveryState, Job, JobEvent, JobEventKind, JobState, Links, OutputRef, WebhookEvent, hash_hex,
};
use crate::scheduler::LiveStatus;

/// Where a job is in its life: `queued` -> `running` -> `succeeded` | `failed` | `canceled`
/// (a running job may go back to `queued` when its backend is lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "JobStatus")]
pub enum JobStatus {
    /// Durably accepted, waiting in the gateway's queue.
    Queued,
    /// Handed to a backend.
    Running,
    /// Finished; its outputs are stored.
    Succeeded,
    /// Failed; `error` says why.
    Failed,
    /// Canceled by a client or an operator.
    Canceled,
}

impl From<JobState> for JobStatus {
    fn from(s: JobState) -> JobStatus {
        match s {
            JobState::Queued => JobStatus::Queued,
            JobState::Running => JobStatus::Running,
            JobState::Succeeded => JobStatus::Succeeded,
            JobState::Failed => JobStatus::Failed,
            JobState::Canceled => JobStatus::Canceled,
        }
    }
}

/// A `POST /jobs` accepted durably (202): poll `pollUrl` or follow `/jobs/{jobId}/events`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "JobAccepted")]
pub struct JobAccepted {
    /// The job id (a UUID; also ComfyUI's prompt id).
    pub job_id: Uuid,
    /// `queued` (or what a replayed request's job is now).
    pub status: JobStatus,
    /// The job's URL: absolute under `PUBLIC_URL` when the gateway has one set (the URL of
    /// `servers`), else a path from the gateway's root.
    pub poll_url: Link,
}

/// One output file of a job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Output")]
pub struct OutputView {
    /// File name, unique within the job (`GET /outputs/{jobId}/{name}`).
    pub name: String,
    /// The ComfyUI node that produced it.
    pub node_id: String,
    /// Media type, from the file's magic bytes (`image/png`, `video/mp4`, ...).
    pub media_type: String,
    /// Size in bytes.
    #[schemars(range(min = 0))]
    pub size: u64,
    /// BLAKE3 of the bytes, 64 hex digits.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub hash: String,
    /// Where to download it: absolute under `PUBLIC_URL` when the gateway has one set (the
    /// URL of `servers`), else a path from the gateway's root.
    pub url: Link,
    /// With `?include=base64`: whether `base64` holds the bytes (false when the output is
    /// over the inline limits; download it from `url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub inlined: Option<bool>,
    /// With `?include=base64`: the bytes, base64, when `inlined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub base64: Option<String>,
}

impl OutputView {
    /// The view of `o`, an output of `job`, its `url` made by `links`.
    pub fn new(job: &Job, o: &OutputRef, links: &Links) -> OutputView {
        OutputView {
            name: o.name.clone(),
            node_id: o.node_id.clone(),
            media_type: o.media_type.clone(),
            size: o.size_bytes,
            hash: hash_hex(&o.hash),
            url: Link(links.output(job.id, &o.name)),
            inlined: None,
            base64: None,
        }
    }
}

/// An output's bytes inline (`GET /outputs/{jobId}/{file}?format=base64`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputBase64 {
    /// File name.
    pub name: String,
    /// Media type.
    pub media_type: String,
    /// Size in bytes (decoded).
    pub size: u64,
    /// BLAKE3 of the bytes, 64 hex digits.
    pub hash: String,
    /// Always `base64`.
    pub encoding: Base64Encoding,
    /// The bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// The only encoding of inline bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Base64Encoding {
    /// Standard base64.
    Base64,
}

/// Why a job failed or was canceled.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobError {
    /// The stable error code.
    pub code: Code,
    /// What happened, for people.
    pub message: String,
    /// Whether submitting the same job again may succeed.
    pub retryable: bool,
    /// More about it (e.g. ComfyUI's node errors), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Value")]
    pub details: Option<Value>,
}

/// Progress of a running job: the whole job, and the node running now.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProgress {
    /// The whole job in percent, rounded to a tenth: the share of the prompt's nodes done,
    /// each weighing its steps when known (cached nodes left out). It never goes back
    /// while the job runs on one backend.
    #[schemars(range(min = 0, max = 100))]
    pub percent: f64,
    /// The node executing (its id in the prompt), when known.
    pub node: Option<String>,
    /// Its class (`KSampler`, ...), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_class: Option<String>,
    /// Steps done within the node.
    pub value: f64,
    /// Steps of the node (0 until the node reports steps).
    pub max: f64,
    /// `value / max` in percent (0 until the node reports steps).
    #[schemars(range(min = 0, max = 100))]
    pub node_percent: f64,
}

/// `value / max` in percent, within 0..=100 and rounded to a tenth (0 when `max` is not
/// positive).
fn percent(value: f64, max: f64) -> f64 {
    if max > 0.0 { ((value / max * 100.0).clamp(0.0, 100.0) * 10.0).round() / 10.0 } else { 0.0 }
}

/// A job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Job")]
pub struct JobView {
    /// The job id (a UUID; also ComfyUI's prompt id).
    pub job_id: Uuid,
    /// The workflow it runs.
    pub workflow_id: String,
    /// The workflow's version it was rendered from.
    #[schemars(range(min = 1))]
    pub workflow_version: u32,
    /// Where it is in its life.
    pub status: JobStatus,
    /// Priority level (higher runs first): `high` is 1, `normal` 0, `low` -1.
    pub priority: i32,
    /// How many times its prompt was handed to a backend.
    pub attempts: u32,
    /// The id of the backend it runs or last ran on (old records hold its URL).
    pub backend: Option<String>,
    /// Whether its outputs came from the result cache.
    pub cached: bool,
    /// Its validated inputs, defaults applied (left out under `PRIVACY_MODE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Map<String, Value>")]
    pub inputs: Option<Map<String, Value>>,
    /// The seed used, when the workflow has one (drawn at random if not given).
    pub seed: Option<i64>,
    /// Its outputs, once it succeeded.
    pub outputs: Vec<OutputView>,
    /// When it was accepted.
    pub created_at: Time,
    /// When it was first dispatched.
    pub started_at: Option<Time>,
    /// When it ended.
    pub finished_at: Option<Time>,
    /// Its last change.
    pub updated_at: Time,
    /// The job's URL: absolute under `PUBLIC_URL` when the gateway has one set (the URL of
    /// `servers`), else a path from the gateway's root.
    pub poll_url: Link,
    /// The client's metadata, as given (left out under `PRIVACY_MODE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Map<String, Value>")]
    pub metadata: Option<Map<String, Value>>,
    /// Where its webhooks go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub callback_url: Option<String>,
    /// Why it failed or was canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "JobError")]
    pub error: Option<JobError>,
    /// 0-based position in the gateway's queue, while queued (`GET /jobs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub queue_position: Option<u64>,
    /// Progress of the node running now (`GET /jobs/{id}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "JobProgress")]
    pub progress: Option<JobProgress>,
    /// Estimated seconds until it ends, from recent run times (`GET /jobs/{id}`; null when
    /// there is nothing to go by).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<f64>")]
    #[schemars(range(min = 0))]
    pub eta_seconds: Option<Option<f64>>,
}

/// A stored JSON text as an object; a damaged one (never written by the gateway) is empty.
fn object(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

impl JobView {
    /// The view of `job`, with live queue position and progress when known; its `pollUrl`
    /// and output `url`s made by `links`.
    pub fn new(job: &Job, live: Option<&LiveStatus>, links: &Links) -> JobView {
        JobView {
            job_id: job.id,
            workflow_id: job.workflow_id.clone(),
            workflow_version: job.workflow_version,
            status: job.state.into(),
            priority: job.priority,
            attempts: job.n_attempts,
            backend: job.backend.clone(),
            cached: job.cached,
            inputs: Some(object(&job.inputs_json)),
            seed: job.seed,
            outputs: job.outputs.iter().map(|o| OutputView::new(job, o, links)).collect(),
            created_at: Time(job.created_ms),
            started_at: job.started_ms.map(Time),
            finished_at: job.finished_ms.map(Time),
            updated_at: Time(job.updated_ms),
            poll_url: Link(links.job(job.id)),
            metadata: job.metadata_json.as_deref().map(object),
            callback_url: job.callback_url.clone(),
            error: job.error.as_ref().map(|e| JobError {
                code: Code(e.code),
                message: e.message.clone(),
                retryable: e.code.retryable(),
                details: e.details_json.as_deref().map(|d| serde_json::from_str(d).unwrap_or(Value::Null)),
            }),
            queue_position: live.and_then(|l| l.queue_position).map(|p| p as u64),
            progress: live.and_then(|l| l.progress.as_ref()).map(|p| JobProgress {
                percent: p.percent,
                node: p.node.clone(),
                node_class: p.class.clone(),
                value: p.value,
                max: p.max,
                node_percent: percent(p.value, p.max),
            }),
            eta_seconds: None,
        }
    }
}

/// A `preview` event of `GET /jobs/{id}/events` (`LIVE_PREVIEWS`): the running job's latest
/// preview image from ComfyUI, live only (not in the job's log).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviewEvent {
    /// 1 for the job's first preview, one more for each later one.
    pub seq: u64,
    /// `image/jpeg` or `image/png`.
    pub media_type: String,
    /// The image as a `data:` URL.
    pub data_url: String,
}

impl PreviewEvent {
    /// The event of preview `seq`.
    pub fn new(seq: u64, media_type: &str, image: &[u8]) -> PreviewEvent {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(image);
        PreviewEvent { seq, media_type: media_type.to_string(), data_url: format!("data:{media_type};base64,{data}") }
    }
}

/// The answer to `POST /jobs/cancel`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobsCanceled {
    /// The jobs this call canceled, newest first.
    pub canceled: Vec<Uuid>,
    /// More jobs match: call again to cancel them.
    pub more: bool,
}

/// A page of `GET /jobs`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobList {
    /// The jobs of this page.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

/// What happened to a job, one entry of its log (`type` says which).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EventKind {
    /// Durably accepted.
    #[serde(rename_all = "camelCase")]
    Queued {
        /// `queued`.
        status: JobStatus,
    },
    /// Its prompt was handed to a backend.
    #[serde(rename_all = "camelCase")]
    Dispatched {
        /// `running`.
        status: JobStatus,
        /// The backend's id.
        backend: String,
        /// Attempt number (1-based).
        attempt: u32,
    },
    /// Put back in the queue (its backend was lost).
    #[serde(rename_all = "camelCase")]
    Requeued {
        /// `queued`.
        status: JobStatus,
        /// Why.
        reason: String,
    },
    /// The job's progress, and the node running.
    #[serde(rename_all = "camelCase")]
    Progress {
        /// Node id.
        node: String,
        /// Its class, when known (absent in entries logged before job-level progress).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_class: Option<String>,
        /// Steps done within the node.
        value: f64,
        /// Steps of the node.
        max: f64,
        /// The whole job in percent, rounded to a tenth (in entries logged before
        /// job-level progress, those without `nodePercent`: the node's).
        percent: f64,
        /// `value / max` in percent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node_percent: Option<f64>,
    },
    /// After a restart, found again on its backend (or not).
    #[serde(rename_all = "camelCase")]
    Reattached {
        /// `running`.
        status: JobStatus,
        /// What was found.
        found: String,
    },
    /// Ended well.
    #[serde(rename_all = "camelCase")]
    Succeeded {
        /// `succeeded`.
        status: JobStatus,
        /// How many outputs it has.
        outputs: u32,
    },
    /// Ended in failure.
    #[serde(rename_all = "camelCase")]
    Failed {
        /// `failed`.
        status: JobStatus,
        /// The stable error code.
        code: Code,
        /// What happened.
        message: String,
    },
    /// Canceled.
    #[serde(rename_all = "camelCase")]
    Canceled {
        /// `canceled`.
        status: JobStatus,
        /// Why.
        reason: String,
    },
    /// The job's progress crossed a quarter (the `job.progress` webhooks).
    #[serde(rename_all = "camelCase")]
    Milestone {
        /// The node running then.
        node: String,
        /// 25, 50, 75 or 100.
        percent: u8,
    },
    /// One webhook delivery attempt.
    #[serde(rename_all = "camelCase")]
    Webhook {
        /// The delivery's `webhook-id`.
        webhook_id: String,
        /// Its event type, e.g. `job.succeeded`.
        event: String,
        /// Attempt number (1-based).
        attempt: u32,
        /// The receiver's HTTP status, if it answered.
        http_status: Option<u16>,
        /// What went wrong, if anything.
        error: Option<String>,
        /// `delivered`, `retrying`, `failed` (attempts exhausted) or `disabled` (HTTP 410).
        outcome: String,
        /// When the next attempt is due, while retrying.
        next_attempt_at: Option<Time>,
    },
}

/// One entry of a job's event log.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "JobEvent")]
pub struct JobEventView {
    /// Its position in the log (from 1): pass as `after` to read what follows.
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// When it happened.
    pub at: Time,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

impl JobEventView {
    /// The view of log entry `seq`.
    pub fn new(seq: u64, event: &JobEvent) -> JobEventView {
        let kind = match &event.kind {
            JobEventKind::Queued => EventKind::Queued { status: JobStatus::Queued },
            JobEventKind::Dispatched { backend, attempt } => {
                EventKind::Dispatched { status: JobStatus::Running, backend: backend.clone(), attempt: *attempt }
            }
            JobEventKind::Requeued { reason } => {
                EventKind::Requeued { status: JobStatus::Queued, reason: reason.clone() }
            }
            JobEventKind::Progress { node, value, max } => EventKind::Progress {
                node: node.clone(),
                node_class: None,
                value: *value,
                max: *max,
                percent: percent(*value, *max),
                node_percent: None,
            },
            JobEventKind::Advanced { percent: job, node, class, value, max } => EventKind::Progress {
                node: node.clone(),
                node_class: Some(class.clone()).filter(|c| !c.is_empty()),
                value: *value,
                max: *max,
                percent: *job,
                node_percent: Some(percent(*value, *max)),
            },
            JobEventKind::Reattached { found } => {
                EventKind::Reattached { status: JobStatus::Running, found: found.clone() }
            }
            JobEventKind::Succeeded { n_outputs } => {
                EventKind::Succeeded { status: JobStatus::Succeeded, outputs: *n_outputs }
            }
            JobEventKind::Failed { code, message } => {
                EventKind::Failed { status: JobStatus::Failed, code: Code(*code), message: message.clone() }
            }
            JobEventKind::Canceled { reason } => {
                EventKind::Canceled { status: JobStatus::Canceled, reason: reason.clone() }
            }
            JobEventKind::Milestone { node, percent } => EventKind::Milestone { node: node.clone(), percent: *percent },
            JobEventKind::Webhook { delivery, event, attempt, status, error, outcome, next_attempt_ms } => {
                EventKind::Webhook {
                    webhook_id: delivery.clone(),
                    event: event.clone(),
                    attempt: *attempt,
                    http_status: *status,
                    error: error.clone(),
                    outcome: outcome.clone(),
                    next_attempt_at: next_attempt_ms.map(Time),
                }
            }
        };
        JobEventView { seq, at: Time(event.at_ms), kind }
    }
}

/// The last event of a job's stream (`GET /jobs/{id}/events`): its terminal log entry,
/// with the job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobEnded {
    /// The log entry's position.
    pub seq: u64,
    /// When it ended.
    pub at: Time,
    /// `succeeded`, `failed` or `canceled`.
    #[serde(rename = "type")]
    pub kind: JobStatus,
    /// The job as `GET /jobs/{id}` shows it.
    pub job: JobView,
}

/// `GET /jobs/{id}/logs`: the job's event log from `after`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobLog {
    /// The job.
    pub job_id: Uuid,
    /// Its status now.
    pub status: JobStatus,
    /// When the log was cut short (`MAX_RESPONSE_BYTES`, or 10,000 entries): the last `seq`
    /// listed, to pass as `after` for the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub next_after: Option<u64>,
    /// The entries, oldest first.
    // JSON values of `JobEventView`s: under privacy mode the redacted JSON is what is sent.
    #[schemars(with = "Vec<JobEventView>")]
    pub events: Vec<Value>,
}

/// A webhook's event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WebhookEventType {
    /// The job was handed to a backend for the first time (asked with `callbackEvents`).
    #[serde(rename = "job.started")]
    Started,
    /// A progress milestone (asked with `callbackEvents`).
    #[serde(rename = "job.progress")]
    Progress,
    /// The job succeeded (always sent).
    #[serde(rename = "job.succeeded")]
    Succeeded,
    /// The job failed (always sent).
    #[serde(rename = "job.failed")]
    Failed,
    /// The job was canceled (always sent).
    #[serde(rename = "job.canceled")]
    Canceled,
}

impl From<&WebhookEvent> for WebhookEventType {
    fn from(e: &WebhookEvent) -> WebhookEventType {
        match e {
            WebhookEvent::Started => WebhookEventType::Started,
            WebhookEvent::Progress { .. } => WebhookEventType::Progress,
            WebhookEvent::Succeeded => WebhookEventType::Succeeded,
            WebhookEvent::Failed => WebhookEventType::Failed,
            WebhookEvent::Canceled => WebhookEventType::Canceled,
        }
    }
}

/// Where a webhook delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Its attempts ran out.
    Failed,
    /// The receiver answered 410 Gone: its endpoint gets no more deliveries.
    Disabled,
}

impl From<DeliveryState> for DeliveryStatus {
    fn from(s: DeliveryState) -> DeliveryStatus {
        match s {
            DeliveryState::Pending => DeliveryStatus::Pending,
            DeliveryState::Delivered => DeliveryStatus::Delivered,
            DeliveryState::Failed => DeliveryStatus::Failed,
            DeliveryState::Disabled => DeliveryStatus::Disabled,
        }
    }
}

/// One webhook delivery of a job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "WebhookDelivery")]
pub struct DeliveryView {
    /// The `webhook-id` header, the same on every attempt.
    pub id: String,
    /// The event it carries.
    pub event: WebhookEventType,
    /// The receiver.
    pub url: String,
    /// Where it is.
    pub state: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the event happened.
    pub created_at: Time,
    /// When it was last tried.
    pub last_attempt_at: Option<Time>,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<Time>,
}

impl DeliveryView {
    /// The view of `d`.
    pub fn new(d: &Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id.clone(),
            event: (&d.event).into(),
            url: d.url.clone(),
            state: d.state.into(),
            attempts: d.n_attempts,
            created_at: Time(d.created_ms),
            last_attempt_at: d.last_attempt_ms.map(Time),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(Time(d.next_attempt_ms)),
        }
    }
}

/// A job's webhook deliveries, oldest first (`GET /jobs/{id}/webhooks`, and the redelivery).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDeliveries {
    /// The job.
    pub job_id: Uuid,
    /// Its deliveries.
    pub deliveries: Vec<DeliveryView>,
    /// Some deliveries (the newest) did not fit in `MAX_RESPONSE_BYTES`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// `GET /outputs/{jobId}`: a job's outputs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobOutputs {
    /// The job.
    pub job_id: Uuid,
    /// Its status.
    pub status: JobStatus,
    /// Its outputs (empty until it succeeded).
    pub outputs: Vec<OutputView>,
}

/// The progress a `job.progress` webhook reports.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookProgress {
    /// Node id.
    pub node: String,
    /// 25, 50, 75 or 100.
    pub percent: u8,
}

/// The job a webhook carries: as `GET /jobs/{id}` shows it, plus the milestone of a
/// `job.progress` event.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookJob {
    /// The job.
    #[serde(flatten)]
    pub job: JobView,
    /// The milestone reached (`job.progress` only).
    #[serde(rename = "progress", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "WebhookProgress")]
    pub milestone: Option<WebhookProgress>,
}

/// The body of every webhook (Standard Webhooks: `{type, timestamp, data}`), signed in the
/// `webhook-signature` header.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload {
    /// The event.
    #[serde(rename = "type")]
    pub kind: WebhookEventType,
    /// When the event happened (not when it was sent).
    pub timestamp: Time,
    /// The job (with sealed fields opened), its links absolute.
    pub data: WebhookJob,
}

impl WebhookPayload {
    /// The payload of `delivery` about `job`, its links made by `links`.
    pub fn new(delivery: &Delivery, job: &Job, links: &Links) -> WebhookPayload {
        let milestone = match &delivery.event {
            WebhookEvent::Progress { node, percent } => Some(WebhookProgress { node: node.clone(), percent: *percent }),
            _ => None,
        };
        WebhookPayload {
            kind: (&delivery.event).into(),
            timestamp: Time(delivery.created_ms),
            data: WebhookJob { job: JobView::new(job, None, links), milestone },
        }
    }
}
