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
    /// Who submitted it: an API key's owner id or a JWT's `sub`; None in open mode.
    /// Last field (format version 3: a version-2 record reads as `None`).
    pub owner: Option<String>,
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
    /// (Last field: records before it was added decode with `false`, see store::codec.)
    pub keep_previews: bool,
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
}

impl AuditAction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::WorkflowCreate => "workflow.create",
            AuditAction::WorkflowUpdate => "workflow.update",
            AuditAction::WorkflowDelete => "workflow.delete",
            AuditAction::JobCancel => "job.cancel",
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
    /// What it was done to: a workflow id or a job id.
    pub target: String,
    /// The request's correlation id.
    pub correlation_id: String,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
