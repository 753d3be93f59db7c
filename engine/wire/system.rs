//! Everything else the API answers: the error envelope, health and probes, backends,
//! capabilities, workflows, the audit log.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::Time;
use crate::domain::{AuditAction, AuditEntry, Role, WorkflowRecord, hash_hex};
use crate::error::{Error, ErrorCode, Result};
use crate::scheduler::BackendStatus;
use crate::workflows::import::Proposal;

/// A stable error code (`VALIDATION_ERROR`, `JOB_NOT_FOUND`, ...): the README's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub ErrorCode);

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Code, D::Error> {
        let text = Cow::<str>::deserialize(d)?;
        ErrorCode::ALL
            .iter()
            .find(|c| c.as_str() == text)
            .map(|c| Code(*c))
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {text:?}")))
    }
}

impl JsonSchema for Code {
    fn schema_name() -> Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        json_schema!({
            "type": "string",
            "enum": codes,
            "description": "A stable error code; the README's table says what each means",
        })
    }
}

/// An error: what every non-2xx JSON answer holds under `error`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// The stable error code.
    pub code: Code,
    /// What went wrong, for people.
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// More about it: for `VALIDATION_ERROR` a list of `{path, message}` (a JSON pointer in
    /// the body, or a query parameter's name), else an object (e.g. `retryAfterSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Value")]
    pub details: Option<Value>,
    /// How many more problems there were than the 50 `details` list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "usize")]
    #[schemars(range(min = 1))]
    pub details_omitted: Option<usize>,
}

/// Every error answer: `{error, correlationId}` (not named `Error`: openapi-python-client
/// names both the model's instance and its `error` member `error`, which mypy refuses).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
    /// The request's `X-Correlation-Id`, also in the gateway's log.
    pub correlation_id: String,
}

impl ErrorResponse {
    /// The envelope of `err`, answered to request `correlation_id`.
    pub fn new(err: &Error, correlation_id: &str) -> ErrorResponse {
        ErrorResponse {
            error: ErrorBody {
                code: Code(err.code),
                message: err.message.clone(),
                retryable: err.code.retryable(),
                details: err.details.clone(),
                details_omitted: (err.details_omitted > 0).then_some(err.details_omitted),
            },
            correlation_id: correlation_id.to_string(),
        }
    }
}

/// `up`: the process answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Up {
    /// The process answers.
    Up,
}

/// A backend's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    /// Answered its last probe and takes jobs.
    Healthy,
    /// Did not answer its last probe.
    Down,
    /// Drained by an operator: takes no new jobs.
    Draining,
}

impl From<&BackendStatus> for BackendState {
    fn from(b: &BackendStatus) -> BackendState {
        match (b.draining, b.reachable) {
            (true, _) => BackendState::Draining,
            (false, true) => BackendState::Healthy,
            (false, false) => BackendState::Down,
        }
    }
}

/// A backend in the details of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthBackend {
    /// Its id.
    pub id: String,
    /// Its base URL, without credentials.
    pub url: String,
    /// Its state.
    pub state: BackendState,
    /// Answered its last probe.
    pub reachable: bool,
    /// Prompts in flight.
    pub in_flight: u32,
    /// ComfyUI's version, from its `/system_stats`.
    pub comfyui_version: Option<String>,
    /// Its last error.
    pub last_error: Option<String>,
}

impl HealthBackend {
    /// The health view of `b`.
    pub fn new(b: &BackendStatus) -> HealthBackend {
        HealthBackend {
            id: b.id.clone(),
            url: b.url.clone(),
            state: b.into(),
            reachable: b.reachable,
            in_flight: b.in_flight,
            comfyui_version: b.info.comfyui_version.clone(),
            last_error: b.info.last_error.clone(),
        }
    }
}

/// The backends in the details of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthComfyui {
    /// At least one backend answered its last probe.
    pub reachable: bool,
    /// The first backend's URL.
    pub url: Option<String>,
    /// Every backend.
    pub backends: Vec<HealthBackend>,
}

/// The store in the details of `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HealthStore {
    /// No storage failure since the start.
    pub ok: bool,
}

/// `GET /health`. Without valid credentials when authentication is on: only `ok`, `status`
/// and `ready`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// At least one backend is reachable and the store works.
    pub ok: bool,
    /// `up`.
    pub status: Up,
    /// The same as `ok`.
    pub ready: bool,
    /// The gateway's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub version: Option<String>,
    /// Seconds since the server started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub uptime: Option<u64>,
    /// Jobs waiting in the gateway's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "u64")]
    pub queue_depth: Option<u64>,
    /// The backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "HealthComfyui")]
    pub comfyui: Option<HealthComfyui>,
    /// The store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "HealthStore")]
    pub store: Option<HealthStore>,
}

impl Health {
    /// The public answer: up, and ready or not.
    pub fn public(ok: bool) -> Health {
        Health {
            ok,
            status: Up::Up,
            ready: ok,
            version: None,
            uptime: None,
            queue_depth: None,
            comfyui: None,
            store: None,
        }
    }
}

/// `GET /models`: the model files a backend offers, by kind.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelList {
    /// The backend asked (the first healthy one).
    pub backend: String,
    /// File names by kind: `checkpoints`, `loras`, `controlnets`, `vaes`, `upscale_models`,
    /// `diffusion_models`, `text_encoders` (empty when the backend has none, or lacks the loader).
    pub models: std::collections::BTreeMap<String, Vec<String>>,
}

/// `GET /livez`: the process answers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Livez {
    /// `up`.
    pub status: Up,
    /// The gateway's version.
    pub version: String,
    /// The id of the database this gateway holds (random, chosen when the database was
    /// created).
    #[schemars(regex(pattern = r"^[0-9a-f]{16}$"))]
    pub database: String,
    /// Seconds since the server started.
    pub uptime: u64,
}

/// Whether the gateway is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// Every check passed.
    Ready,
    /// A check failed: see `checks`.
    NotReady,
}

/// The store's check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreCheck {
    /// It works.
    Ok,
    /// It failed (a storage error; the cause is in the log).
    Failed,
}

/// The backends' check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendsCheck {
    /// At least one backend answered its last probe.
    Ok,
    /// None did.
    Unreachable,
}

/// What `GET /readyz` checked.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReadyChecks {
    /// The store.
    pub store: StoreCheck,
    /// The backends.
    pub backends: BackendsCheck,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Readyz {
    /// Ready or not.
    pub status: Readiness,
    /// Which check failed (never a URL, a version or an error text).
    pub checks: ReadyChecks,
}

/// Median latencies of a backend.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Latencies {
    /// Of the last 32 job runs (`POST /prompt` to outputs stored), ms.
    pub run: Option<u64>,
    /// Of the last 32 health probes, ms.
    pub probe: Option<u64>,
}

/// A backend (`GET /backends`, drain and resume).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// Its id (`COMFYUI_URL`'s `id=` or `b0`, `b1`, ...).
    #[schemars(regex(pattern = r"^[a-z0-9_-]{1,32}$"))]
    pub id: String,
    /// Its base URL, without credentials.
    pub url: String,
    /// Its state.
    pub state: BackendState,
    /// Answered its last probe.
    pub reachable: bool,
    /// Drained by an operator.
    pub draining: bool,
    /// When the drain began (kept across restarts).
    pub drained_at: Option<Time>,
    /// Prompts in flight.
    pub in_flight: u32,
    /// Its concurrency limit.
    #[schemars(range(min = 1))]
    pub max_concurrency: u32,
    /// Median latencies.
    pub latency_ms: Latencies,
    /// Its last error.
    pub last_error: Option<String>,
    /// ComfyUI's version.
    pub comfyui_version: Option<String>,
    /// Workflows it took recently, most recent first.
    pub recent_workflows: Vec<String>,
}

impl Backend {
    /// The view of `b`.
    pub fn new(b: &BackendStatus) -> Backend {
        Backend {
            id: b.id.clone(),
            url: b.url.clone(),
            state: b.into(),
            reachable: b.reachable,
            draining: b.draining,
            drained_at: b.info.drained_since_ms.map(Time),
            in_flight: b.in_flight,
            max_concurrency: b.concurrency_max,
            latency_ms: Latencies { run: b.info.run_ms.p50(), probe: b.info.probe_ms.p50() },
            last_error: b.info.last_error.clone(),
            comfyui_version: b.info.comfyui_version.clone(),
            recent_workflows: b.recent_workflows.clone(),
        }
    }
}

/// `GET /backends`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BackendList {
    /// Every configured backend, in `COMFYUI_URL` order.
    pub backends: Vec<Backend>,
}

/// `GET /capabilities`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The registered workflows' ids.
    pub workflows: Vec<String>,
    /// Largest width or height an input may ask for (`MAX_IMAGE_SIZE`).
    pub max_size: u32,
    /// Largest batch size (`MAX_BATCH_SIZE`).
    pub max_batch: u32,
    /// Output formats the gateway recognizes.
    pub formats: Vec<String>,
    /// Where output bytes are kept: `redb` or `s3`.
    pub storage_provider: String,
    /// Largest request body (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Priority names.
    pub priorities: Vec<String>,
    /// Whether this build runs WebAssembly plugins (cargo feature `wasm-plugins`); without
    /// them a workflow with a plugin is refused with PLUGIN_FAILED.
    pub plugins: bool,
}

/// A registered workflow in a listing.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSummary {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its version (1, then one more per update).
    #[schemars(range(min = 1))]
    pub version: u32,
    /// When this version was registered.
    pub updated_at: Time,
}

impl WorkflowSummary {
    /// The summary of `w`.
    pub fn new(w: &WorkflowRecord) -> WorkflowSummary {
        WorkflowSummary {
            id: w.id.clone(),
            name: w.name.clone(),
            description: w.description.clone(),
            version: w.version,
            updated_at: Time(w.created_ms),
        }
    }
}

/// `GET /workflows`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowList {
    /// The registered workflows.
    pub workflows: Vec<WorkflowSummary>,
}

/// A workflow's plugin.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowPlugin {
    /// The component's BLAKE3, 64 hex digits (`{"hash": ...}` reuses it).
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub hash: String,
    /// What the plugin's `host.config()` returns.
    pub config: Value,
    /// Keep the outputs beside what output-process returns.
    pub keep_originals: bool,
}

/// A registered workflow with its template, input schema and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDetails {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its version (1, then one more per update).
    #[schemars(range(min = 1))]
    pub version: u32,
    /// When this version was registered.
    pub updated_at: Time,
    /// JSON Schema 2020-12 of its inputs (the one given, or the one derived from the
    /// template's placeholders).
    pub input_schema: Map<String, Value>,
    /// The ComfyUI API-format template with `{{token}}` placeholders.
    pub workflow: Map<String, Value>,
    /// Input defaults.
    pub defaults: Map<String, Value>,
    /// Keep PreviewImage (temp) outputs as job outputs.
    pub keep_previews: bool,
    /// Its plugin, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "WorkflowPlugin")]
    pub plugin: Option<WorkflowPlugin>,
    /// In the answer to a registration or an update: what a reviewer should look at, such as
    /// node classes the healthy backends do not know (with `?strict=true` a class no
    /// healthy backend knows is refused instead).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl WorkflowDetails {
    /// The details of `w` with its input schema; a stored text that is not a JSON object is
    /// a damaged record (an internal error, logged), never shown as `null`.
    ///
    /// # Errors
    /// `INTERNAL` for a damaged record.
    pub fn new(w: &WorkflowRecord, schema: Value) -> Result<WorkflowDetails> {
        let stored = |path: &str, text: &str| {
            crate::workflows::decode_stored(path, text)
                .map_err(|e| Error::internal(format!("stored workflow {} v{} is damaged: {e}", w.id, w.version)))
        };
        let object = |path: &str, v: Value| match v {
            Value::Object(m) => Ok(m),
            _ => Err(Error::internal(format!("stored workflow {} v{}: {path} is not an object", w.id, w.version))),
        };
        let summary = WorkflowSummary::new(w);
        Ok(WorkflowDetails {
            id: summary.id,
            name: summary.name,
            description: summary.description,
            version: summary.version,
            updated_at: summary.updated_at,
            input_schema: object("/inputSchema", schema)?,
            workflow: object("/workflow", stored("/workflow", &w.template_json)?)?,
            defaults: match w.defaults_json.as_deref() {
                Some(d) => object("/defaults", stored("/defaults", d)?)?,
                None => Map::new(),
            },
            keep_previews: w.keep_previews,
            plugin: match &w.plugin {
                Some(p) => Some(WorkflowPlugin {
                    hash: hash_hex(&p.hash),
                    config: stored("/plugin/config", &p.config_json)?,
                    keep_originals: p.keep_originals,
                }),
                None => None,
            },
            warnings: Vec::new(),
        })
    }
}

/// A node input the import recognized and replaced by a token.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportedInput {
    /// The proposed input (template token).
    pub name: String,
    /// The node id.
    pub node: String,
    /// The node's `class_type`.
    pub class_type: String,
    /// The node input replaced by the token.
    pub input: String,
    /// The JSON Schema type proposed (`integer`, `number`, `string`, `boolean`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The exported value.
    pub value: Value,
}

/// The workflow an import proposes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportProposal {
    /// The proposed id.
    pub id: String,
    /// The proposed name.
    pub name: String,
    /// The proposed description.
    pub description: String,
    /// The export with the recognized values replaced by `{{name}}` tokens.
    pub template: Map<String, Value>,
    /// JSON Schema 2020-12 of the proposed inputs.
    pub input_schema: Map<String, Value>,
}

/// `POST /workflows/import` (200): the proposal, what was recognized, what to check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowImported {
    /// The proposed workflow (`POST /workflows` takes it as `workflow` + `inputSchema`).
    pub proposal: ImportProposal,
    /// What was recognized.
    pub inputs: Vec<ImportedInput>,
    /// Unknown node classes, values the backend does not offer, defaults left out.
    pub warnings: Vec<String>,
}

impl WorkflowImported {
    /// The answer of an import: `p` proposed under `id`, `name` and `description`.
    pub fn new(id: &str, name: &str, description: &str, p: &Proposal) -> WorkflowImported {
        let object = |v: &Value| v.as_object().cloned().unwrap_or_default();
        WorkflowImported {
            proposal: ImportProposal {
                id: id.to_string(),
                name: name.to_string(),
                description: description.to_string(),
                template: object(&p.template),
                input_schema: object(&p.input_schema),
            },
            inputs: p
                .inputs
                .iter()
                .map(|i| ImportedInput {
                    name: i.name.clone(),
                    node: i.node.clone(),
                    class_type: i.class_type.clone(),
                    input: i.input.clone(),
                    kind: i.kind.clone(),
                    value: i.value.clone(),
                })
                .collect(),
            warnings: p.warnings.clone(),
        }
    }
}

/// `POST /workflows/import` with `register: true` (201): the workflow as `POST /workflows`
/// answers, plus what was recognized and what to check.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowImportRegistered {
    /// The registered workflow.
    #[serde(flatten)]
    pub workflow: WorkflowDetails,
    /// What was recognized.
    pub inputs: Vec<ImportedInput>,
    /// Unknown node classes, values the backend does not offer, defaults left out.
    pub warnings: Vec<String>,
}

/// A role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// Everything.
    Admin,
    /// Its own jobs.
    User,
}

impl From<Role> for RoleName {
    fn from(r: Role) -> RoleName {
        match r {
            Role::Admin => RoleName::Admin,
            Role::User => RoleName::User,
        }
    }
}

/// What an audited change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AuditActionName {
    /// A workflow was registered.
    #[serde(rename = "workflow.create")]
    WorkflowCreate,
    /// A workflow got a new version.
    #[serde(rename = "workflow.update")]
    WorkflowUpdate,
    /// A workflow was deleted.
    #[serde(rename = "workflow.delete")]
    WorkflowDelete,
    /// A job was canceled.
    #[serde(rename = "job.cancel")]
    JobCancel,
    /// A job's webhooks were sent again.
    #[serde(rename = "job.webhook.redeliver")]
    WebhookRedeliver,
    /// A backend was drained.
    #[serde(rename = "backend.drain")]
    BackendDrain,
    /// A backend was resumed.
    #[serde(rename = "backend.resume")]
    BackendResume,
    /// A backup of the database was made.
    #[serde(rename = "database.backup")]
    DatabaseBackup,
}

impl From<AuditAction> for AuditActionName {
    fn from(a: AuditAction) -> AuditActionName {
        match a {
            AuditAction::WorkflowCreate => AuditActionName::WorkflowCreate,
            AuditAction::WorkflowUpdate => AuditActionName::WorkflowUpdate,
            AuditAction::WorkflowDelete => AuditActionName::WorkflowDelete,
            AuditAction::JobCancel => AuditActionName::JobCancel,
            AuditAction::WebhookRedeliver => AuditActionName::WebhookRedeliver,
            AuditAction::BackendDrain => AuditActionName::BackendDrain,
            AuditAction::BackendResume => AuditActionName::BackendResume,
            AuditAction::DatabaseBackup => AuditActionName::DatabaseBackup,
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "AuditEntry")]
pub struct AuditEntryView {
    /// Its position (from 1).
    #[schemars(range(min = 1))]
    pub seq: u64,
    /// When.
    pub at: Time,
    /// Owner id (`cli` for a workflow registered with the command line on the database);
    /// null for an API call in open mode.
    pub actor: Option<String>,
    /// The actor's role; null in open mode.
    pub role: Option<RoleName>,
    /// What was done.
    pub action: AuditActionName,
    /// To what: a workflow id, a job id, a backend id, a backup's SHA-256.
    pub target: String,
    /// The request's `X-Correlation-Id`.
    pub correlation_id: String,
}

impl AuditEntryView {
    /// The view of entry `seq`.
    pub fn new(seq: u64, e: &AuditEntry) -> AuditEntryView {
        AuditEntryView {
            seq,
            at: Time(e.at_ms),
            actor: e.actor.clone(),
            role: e.role.map(RoleName::from),
            action: e.action.into(),
            target: e.target.clone(),
            correlation_id: e.correlation_id.clone(),
        }
    }
}

/// A page of `GET /audit`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    /// The entries.
    pub entries: Vec<AuditEntryView>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_damaged_stored_workflow_is_an_error_never_null() {
        let record = |template: &str, defaults: Option<&str>| WorkflowRecord {
            id: "w".into(),
            version: 2,
            name: "W".into(),
            description: String::new(),
            template_json: template.into(),
            schema_json: None,
            defaults_json: defaults.map(Into::into),
            created_ms: 0,
            keep_previews: false,
            plugin: None,
        };
        let shown = WorkflowDetails::new(&record(r#"{"1": {}}"#, Some(r#"{"a": 1}"#)), json!({})).unwrap();
        let shown = super::super::to_value(&shown);
        assert_eq!((&shown["workflow"], &shown["defaults"]), (&json!({"1": {}}), &json!({"a": 1})));
        for (template, defaults) in [("{\"1\": ", None), ("{}", Some("{oops")), ("[1]", None)] {
            let err = WorkflowDetails::new(&record(template, defaults), json!({})).unwrap_err();
            assert_eq!(err.code, ErrorCode::Internal, "{template} / {defaults:?}");
        }
    }
}
