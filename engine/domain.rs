//! The gateway's own vocabulary: jobs, their states and events, outputs, workflows.
//!
//! These are domain types, not wire types: the API layer maps them to its JSON, the
//! store encodes them with postcard, and the ComfyUI client never sees them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorCode;

/// A job id: a UUID, also sent to ComfyUI as the `prompt_id`.
pub type JobId = Uuid;

/// A BLAKE3 content hash.
pub type Hash = [u8; 32];

/// Lower-case hex of a hash, as used in URLs and ETags.
pub fn hash_hex(hash: &Hash) -> String {
    blake3::Hash::from_bytes(*hash).to_hex().to_string()
}

/// The links an answer carries to the gateway's own resources (a job's `pollUrl`, an
/// output's `url`), each made from its path in this one place, so API answers and webhook
/// bodies agree: absolute under the public URL, or (API answers without `PUBLIC_URL`)
/// the bare path, relative to wherever the client reached the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The public base URL without trailing slash; None: links are paths.
    base: Option<String>,
}

impl Links {
    /// Links that are paths (`/jobs/{id}`).
    pub fn relative() -> Links {
        Links { base: None }
    }

    /// Links absolute under `base` (`https://gw.example.com/base` + `/jobs/{id}`).
    pub fn under(base: &str) -> Links {
        Links { base: Some(base.trim_end_matches('/').to_string()) }
    }

    /// The link of `path` (which starts with `/`).
    pub fn to(&self, path: &str) -> String {
        debug_assert!(path.starts_with('/'), "{path}");
        match &self.base {
            Some(base) => format!("{base}{path}"),
            None => path.to_string(),
        }
    }

    /// `GET /jobs/{id}`: the job.
    pub fn job(&self, id: JobId) -> String {
        self.to(&format!("/jobs/{id}"))
    }

    /// `GET /outputs/{id}/{name}`: one output's bytes.
    pub fn output(&self, id: JobId, name: &str) -> String {
        self.to(&format!("/outputs/{id}/{name}"))
    }
}

/// Where a job is in its life. `Succeeded`, `Failed` and `Canceled` are terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Durably accepted, waiting in the gateway's queue.
    Queued,
    /// Handed to a backend (the dispatch record is committed before the POST /prompt).
    Running,
    /// Finished with its outputs stored.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Canceled by a client or by an interrupt on the backend.
    Canceled,
}

impl JobState {
    /// The lower-case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "canceled" => JobState::Canceled,
            _ => return None,
        })
    }

    /// Whether no further transition can happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled)
    }
}

/// The durable position of a queued job: lower sorts first.
///
/// `rank_ms` is the arrival time shifted by the priority (`created_ms - priority *
/// aging_ms`), so a higher priority runs first, FIFO holds within a priority, and a low
/// priority job that has waited `aging_ms` per level overtakes newer urgent work: no
/// starvation, and no periodic re-sorting. `seq` breaks ties in arrival order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueueKey {
    /// Arrival time in ms minus the priority's head start.
    pub rank_ms: i64,
    /// Monotonic arrival sequence, unique per job.
    pub seq: u64,
}

/// Why a job failed (or was canceled), as stored and reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    /// The stable code.
    pub code: ErrorCode,
    /// A human message.
    pub message: String,
    /// Structured details as compact JSON (e.g. ComfyUI's node errors).
    pub details_json: Option<String>,
}

/// One stored output file of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputRef {
    /// File name, unique within the job (used in `/outputs/:job/:file`).
    pub name: String,
    /// The ComfyUI node that produced it.
    pub node_id: String,
    /// MIME type, e.g. `image/png`.
    pub media_type: String,
    /// Size in bytes (uncompressed).
    pub size_bytes: u64,
    /// BLAKE3 of the bytes: the blob key and the ETag.
    pub hash: Hash,
}

/// One image input of a job, stored as a blob and uploaded to the backend before the prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputRef {
    /// The input's name (a top-level schema property with `"format": "image"`).
    pub name: String,
    /// The file name uploaded under [`input_subfolder`] (`<name>.<ext>`).
    pub file_name: String,
    /// MIME type, from the magic bytes.
    pub media_type: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of the bytes: the blob key.
    pub hash: Hash,
}

/// The subfolder of ComfyUI's `input/` a job's images are uploaded to.
pub fn input_subfolder(id: JobId) -> String {
    format!("gw/{id}")
}

/// A job, as durably recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job id (also ComfyUI's prompt_id).
    pub id: JobId,
    /// The workflow it renders.
    pub workflow_id: String,
    /// The workflow version it was rendered from.
    pub workflow_version: u32,
    /// The validated inputs, defaults applied, as compact JSON.
    pub inputs_json: String,
    /// The rendered ComfyUI API-format prompt, as compact JSON.
    pub prompt_json: String,
    /// Priority level (higher runs first); `high` = 1, `normal` = 0, `low` = -1.
    pub priority: i32,
    /// Queue position while queued.
    pub queue_key: QueueKey,
    /// Current state.
    pub state: JobState,
    /// How many times the prompt was handed to a backend.
    pub n_attempts: u32,
    /// The backend id it was (last) dispatched to.
    pub backend: Option<String>,
    /// The WebSocket client id the prompt was submitted under.
    pub client_id: Option<String>,
    /// Why it failed or was canceled.
    pub error: Option<JobError>,
    /// Stored outputs (after success).
    pub outputs: Vec<OutputRef>,
    /// The seed used, when the workflow has one (drawn at random if omitted).
    pub seed: Option<i64>,
    /// Client metadata, as compact JSON.
    pub metadata_json: Option<String>,
    /// Where to POST on completion (webhooks).
    pub callback_url: Option<String>,
    /// Whether the result came from the cache.
    pub cached: bool,
    /// Acceptance time, ms since the Unix epoch.
    pub created_ms: u64,
    /// First dispatch time.
    pub started_ms: Option<u64>,
    /// Terminal time.
    pub finished_ms: Option<u64>,
    /// Last change.
    pub updated_ms: u64,
    /// Image inputs, stored as blobs referenced by this job. (Format version 2: a
    /// version-1 record is this record without it and `owner`, see `store::codec`.)
    pub inputs: Vec<InputRef>,
    /// Who submitted it: an [`owner`] id (`key:<16 hex>` or `jwt:<sub>`); None in open
    /// mode. (Format version 3: a version-2 record reads as `None`; up to format version
    /// 5 a JWT's raw `sub`, mapped by [`owner::from_legacy`] when read.)
    pub owner: Option<String>,
    /// The webhook events asked for beyond the terminal ones, a [`WebhookEvents`] bit set
    /// (format version 4: older records read as 0, terminal events only).
    pub webhook_events: u8,
    /// The result-cache key, when the job may fill the cache on success (format version 5:
    /// older records read as `None`, not cacheable).
    pub cache_key: Option<Hash>,
}

impl Job {
    /// A new job in the queue: no attempts, outputs, error or timestamps beyond creation.
    /// The store assigns `queue_key.seq` on insert.
    pub fn new_queued(
        id: JobId,
        workflow: (&str, u32),
        inputs_json: String,
        prompt_json: String,
        priority: i32,
        rank_ms: i64,
        created_ms: u64,
    ) -> Job {
        Job {
            id,
            workflow_id: workflow.0.to_string(),
            workflow_version: workflow.1,
            inputs_json,
            prompt_json,
            priority,
            queue_key: QueueKey { rank_ms, seq: 0 },
            state: JobState::Queued,
            n_attempts: 0,
            backend: None,
            client_id: None,
            error: None,
            outputs: Vec::new(),
            seed: None,
            metadata_json: None,
            callback_url: None,
            cached: false,
            created_ms,
            started_ms: None,
            finished_ms: None,
            updated_ms: created_ms,
            inputs: Vec::new(),
            owner: None,
            webhook_events: 0,
            cache_key: None,
        }
    }
}

/// One entry of a job's append-only event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: JobEventKind,
}

/// What happened to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum JobEventKind {
    /// Accepted into the queue.
    Queued,
    /// Dispatch record committed: about to POST to this backend.
    Dispatched {
        /// Backend id.
        backend: String,
        /// Attempt number (1-based).
        attempt: u32,
    },
    /// Put back into the queue without counting an attempt (the backend never got it).
    Requeued {
        /// Why.
        reason: String,
    },
    /// ComfyUI reported progress.
    Progress {
        /// Node id.
        node: String,
        /// Current value.
        value: f64,
        /// Maximum value.
        max: f64,
    },
    /// Recovery found the job on its backend and re-attached to it.
    Reattached {
        /// What was found ("queued", "running", "finished").
        found: String,
    },
    /// The job finished with outputs.
    Succeeded {
        /// How many outputs were stored.
        n_outputs: u32,
    },
    /// The job failed.
    Failed {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// The job was canceled.
    Canceled {
        /// Why.
        reason: String,
    },
    /// The job's progress crossed a quarter (25, 50, 75, 100 %; a node's, before job-level
    /// progress): a `job.progress` webhook for jobs that asked for it.
    Milestone {
        /// The node running then.
        node: String,
        /// 25, 50, 75 or 100.
        percent: u8,
    },
    /// One webhook delivery attempt and what follows from it.
    Webhook {
        /// The delivery's `webhook-id`.
        delivery: String,
        /// Its event type, e.g. `job.succeeded`.
        event: String,
        /// Attempt number (1-based).
        attempt: u32,
        /// The receiver's HTTP status, if it answered.
        status: Option<u16>,
        /// What went wrong, if anything.
        error: Option<String>,
        /// `delivered`, `retrying`, `failed` (attempts exhausted) or `disabled` (HTTP 410).
        outcome: String,
        /// When the next attempt is due (while retrying), ms since the Unix epoch.
        next_attempt_ms: Option<u64>,
    },
    /// The job's progress as a whole (logged instead of `Progress` by newer versions;
    /// declared last: variants are stored by position).
    Advanced {
        /// The whole job, 0 to 100.
        percent: f64,
        /// The node running.
        node: String,
        /// Its class.
        class: String,
        /// Steps done within the node.
        value: f64,
        /// Steps of the node (0: not reported).
        max: f64,
    },
}

/// Highest priority level a job may have; the lowest is its negation.
pub const PRIORITY_MAX: i32 = 100;

/// Webhook event kinds a job may ask for beyond the terminal ones (`callbackEvents`).
pub struct WebhookEvents;

impl WebhookEvents {
    /// `job.started`: the first dispatch to a backend.
    pub const STARTED: u8 = 1;
    /// `job.progress`: progress milestones.
    pub const PROGRESS: u8 = 2;
}

/// What a webhook delivery reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WebhookEvent {
    /// The job was handed to a backend for the first time.
    Started,
    /// A progress milestone.
    Progress {
        /// Node id.
        node: String,
        /// 25, 50, 75 or 100.
        percent: u8,
    },
    /// The job succeeded.
    Succeeded,
    /// The job failed.
    Failed,
    /// The job was canceled.
    Canceled,
}

impl WebhookEvent {
    /// The Standard Webhooks event type.
    pub fn type_name(&self) -> &'static str {
        match self {
            WebhookEvent::Started => "job.started",
            WebhookEvent::Progress { .. } => "job.progress",
            WebhookEvent::Succeeded => "job.succeeded",
            WebhookEvent::Failed => "job.failed",
            WebhookEvent::Canceled => "job.canceled",
        }
    }

    /// The deliveries due when `events` are appended to the log of `job` (as it is after
    /// them): terminal events always, `job.started` and `job.progress` when asked for.
    /// None without a `callback_url`.
    pub fn due(job: &Job, events: &[JobEventKind]) -> Vec<WebhookEvent> {
        if job.callback_url.is_none() {
            return Vec::new();
        }
        let asked = |bit: u8| job.webhook_events & bit != 0;
        events
            .iter()
            .filter_map(|e| match e {
                JobEventKind::Dispatched { attempt: 1, .. } if asked(WebhookEvents::STARTED) => {
                    Some(WebhookEvent::Started)
                }
                JobEventKind::Milestone { node, percent } if asked(WebhookEvents::PROGRESS) => {
                    Some(WebhookEvent::Progress { node: node.clone(), percent: *percent })
                }
                JobEventKind::Succeeded { .. } => Some(WebhookEvent::Succeeded),
                JobEventKind::Failed { .. } => Some(WebhookEvent::Failed),
                JobEventKind::Canceled { .. } => Some(WebhookEvent::Canceled),
                _ => None,
            })
            .collect()
    }
}

/// Where a webhook delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Waiting for its next attempt (in the due index).
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Every attempt of the schedule failed.
    Failed,
    /// The receiver answered 410 Gone: its endpoint is disabled until a redelivery.
    Disabled,
}

impl DeliveryState {
    /// The lower-case wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Disabled => "disabled",
        }
    }
}

/// One webhook message of one job, in the durable outbox. Created in the transaction that
/// commits the job change it reports; its `id` (`webhook-id`) never changes across retries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The outbox key, assigned by the store.
    pub seq: u64,
    /// The `webhook-id` (`msg_` + 32 hex digits).
    pub id: String,
    /// The job it reports on.
    pub job_id: JobId,
    /// What it reports.
    pub event: WebhookEvent,
    /// Where it goes.
    pub url: String,
    /// The job as it was right after the event (sealed fields stay sealed).
    pub job: Job,
    /// When the event happened, ms since the Unix epoch.
    pub created_ms: u64,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub n_attempts: u32,
    /// When the next attempt is due (meaningful while `Pending`).
    pub next_attempt_ms: u64,
    /// The last attempt's time, HTTP status and error.
    pub last_attempt_ms: Option<u64>,
    /// The last HTTP status received.
    pub last_status: Option<u16>,
    /// The last error.
    pub last_error: Option<String>,
}

/// The result of one delivery attempt, as recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Attempt {
    /// When it was made.
    pub at_ms: u64,
    /// The HTTP status, if the receiver answered.
    pub status: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// What happens next.
    pub next: AttemptNext,
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptNext {
    /// 2xx: done.
    Delivered,
    /// Try again at this time (ms since the Unix epoch).
    RetryAt(u64),
    /// The schedule is exhausted: give up.
    GiveUp,
    /// 410 Gone (or the endpoint is already disabled): give up and disable the endpoint.
    Disable,
}

/// A cached result: the outputs of a succeeded job, shared by later identical requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The job that produced the outputs.
    pub job_id: JobId,
    /// The outputs (their blobs hold one reference per entry output).
    pub outputs: Vec<OutputRef>,
    /// When it was stored; it expires `CACHE_TTL_SECONDS` later.
    pub created_ms: u64,
}

/// A claimed idempotency key: the request it was first used with and the job it created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    /// SHA-256 of the canonical request body.
    pub body_hash: [u8; 32],
    /// The job the first request created.
    pub job_id: JobId,
    /// The HTTP status of the first answer (202, or 200 for a cache hit).
    pub status: u16,
    /// When it was claimed.
    pub created_ms: u64,
    /// When it stops counting, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// A registered workflow (one version of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    /// Id, as used in `workflowId`.
    pub id: String,
    /// Version, starting at 1, incremented on every update.
    pub version: u32,
    /// Display name.
    pub name: String,
    /// Description.
    pub description: String,
    /// The API-format template, as compact JSON.
    pub template_json: String,
    /// The input JSON Schema, as compact JSON (None: derived from the template).
    pub schema_json: Option<String>,
    /// Default inputs, as compact JSON object.
    pub defaults_json: Option<String>,
    /// Creation time of this version.
    pub created_ms: u64,
    /// Keep PreviewImage (temp) outputs as job outputs; otherwise only saved outputs are.
    /// (Format version 2: records before it decode with `false`, see store::codec.)
    pub keep_previews: bool,
    /// The workflow's plugin, if it has one (format version 3: older records read `None`).
    pub plugin: Option<PluginRef>,
}

/// A workflow's WebAssembly plugin: the stored component and its configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PluginRef {
    /// BLAKE3 of the component's bytes (its key in the store).
    pub hash: Hash,
    /// The plugin's configuration, as compact JSON (`host.config()`).
    pub config_json: String,
    /// Keep the original output files beside those `output-process` returns.
    pub keep_originals: bool,
}

/// Owner ids: who a job belongs to, namespaced by where the identity comes from, so no
/// identity of one source can equal one of another.
///
/// - an API key: `key:` + 16 lowercase hex digits (of the key's SHA-256);
/// - a JWT: `jwt:` + its `sub`. The issuer is not part of the id: the gateway trusts one
///   token source (one `JWT_SECRET` or `JWT_PUBLIC_KEY`, optionally pinned by
///   `JWT_ISSUER`), so its subjects are one namespace; putting the issuer in would change
///   every owner the day an operator sets `JWT_ISSUER`, orphaning their jobs.
///
/// Job records of format version 5 and older (and schema-1 idempotency keys) hold a raw
/// JWT `sub`: [`owner::from_legacy`] maps them.
pub mod owner {
    /// The prefix of an API key's owner id.
    pub const KEY_PREFIX: &str = "key:";
    /// The prefix of a JWT subject's owner id.
    pub const JWT_PREFIX: &str = "jwt:";

    /// The owner id of a JWT subject.
    pub fn jwt(sub: &str) -> String {
        format!("{JWT_PREFIX}{sub}")
    }

    /// Whether `id` is exactly an API key's owner id (`key:` + 16 lowercase hex digits).
    pub fn is_key(id: &str) -> bool {
        id.strip_prefix(KEY_PREFIX)
            .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    }

    /// The owner id of an owner written before owner ids were namespaced: an API key's
    /// id stays; anything else was a JWT's raw `sub` and gains `jwt:`. (A legacy JWT
    /// whose `sub` was shaped exactly like a key's id cannot be told from one: it stays a
    /// key's id, which is what it could already read before.)
    pub fn from_legacy(id: &str) -> String {
        if is_key(id) { id.to_string() } else { jwt(id) }
    }
}

/// What an authenticated caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Everything, including workflow changes, every job and the audit log.
    Admin,
    /// Submit jobs, and read, follow, download and cancel its own jobs; read workflows.
    User,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    /// Parse the wire name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// An action recorded in the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditAction {
    /// `POST /workflows`.
    WorkflowCreate,
    /// `PUT /workflows/:id`.
    WorkflowUpdate,
    /// `DELETE /workflows/:id`.
    WorkflowDelete,
    /// `POST /jobs/:id/cancel`.
    JobCancel,
    /// `POST /jobs/:id/webhook/redeliver` (actions are stored by position: new ones go last).
    WebhookRedeliver,
    /// `POST /backends/:id/drain`.
    BackendDrain,
    /// `POST /backends/:id/resume`.
    BackendResume,
    /// `POST /admin/backup` (and `comfyui-gateway backup` through a running gateway); the
    /// target is the copy's SHA-256.
    DatabaseBackup,
}

impl AuditAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::WorkflowCreate => "workflow.create",
            AuditAction::WorkflowUpdate => "workflow.update",
            AuditAction::WorkflowDelete => "workflow.delete",
            AuditAction::JobCancel => "job.cancel",
            AuditAction::WebhookRedeliver => "job.webhook.redeliver",
            AuditAction::BackendDrain => "backend.drain",
            AuditAction::BackendResume => "backend.resume",
            AuditAction::DatabaseBackup => "database.backup",
        }
    }
}

/// One entry of the durable audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The actor's owner id; None in open mode (no credentials configured).
    pub actor: Option<String>,
    /// The actor's role; None in open mode.
    pub role: Option<Role>,
    /// What was done.
    pub action: AuditAction,
    /// What it was done to: a workflow id, a job id or a backend id.
    pub target: String,
    /// The request's correlation id.
    pub correlation_id: String,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Links;

    #[test]
    fn links_are_paths_or_absolute_under_the_base_with_its_path() {
        let id = uuid::Uuid::nil();
        assert_eq!(Links::relative().job(id), format!("/jobs/{id}"));
        assert_eq!(Links::relative().output(id, "a.png"), format!("/outputs/{id}/a.png"));
        // A trailing slash or none, the same links; a base path is kept.
        for base in ["https://gw.example.com/base", "https://gw.example.com/base/"] {
            let links = Links::under(base);
            assert_eq!(links.job(id), format!("https://gw.example.com/base/jobs/{id}"));
            assert_eq!(links.output(id, "a.png"), format!("https://gw.example.com/base/outputs/{id}/a.png"));
        }
        assert_eq!(Links::under("http://h:1").to("/jobs"), "http://h:1/jobs");
    }
}
