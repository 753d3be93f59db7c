//! The application service: the gateway's operations (submit a job, register a
//! workflow, read jobs and outputs) in domain terms, shared by the API and the CLI.
//! It owns the store, the scheduler and the cache of compiled workflows; it knows
//! nothing of HTTP.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::auth::Principal;
use crate::canonical;
use crate::comfy::protocol::ObjectInfo;
use crate::config::Config;
use crate::domain::PluginRef;
use crate::domain::{
    AuditAction, AuditEntry, Delivery, Hash, IdempotencyRecord, InputRef, Job, JobEvent, JobId, QueueKey, Role,
    WorkflowRecord, input_subfolder, now_ms,
};
use crate::error::{Error, ErrorCode, Result};
use crate::inputs::{self, Source};
use crate::metrics::{BackendLevel, Metrics, Snapshot, StoreLevel};
use crate::plugins::{CallContext, Hook};
use crate::scheduler::{BackendStatus, LiveStatus, Scheduler, queue_rank};
use crate::store::{Claim, JobPage, JobQuery, NewBlob, Store, StoreError};
use crate::workflows::{self, CompiledWorkflow, FieldError, Limits, WorkflowError};

/// A request to run a workflow.
#[derive(Debug, Clone)]
pub struct SubmitRequest {
    /// Which workflow.
    pub workflow_id: String,
    /// Its inputs (a JSON object).
    pub inputs: Value,
    /// Priority level: higher runs first.
    pub priority: i32,
    /// Client metadata.
    pub metadata: Option<Value>,
    /// Completion callback URL.
    pub callback_url: Option<String>,
    /// Image inputs given as files (multipart parts): input name and bytes.
    pub files: Vec<(String, Bytes)>,
    /// The submitter's owner id (None in open mode).
    pub owner: Option<String>,
    /// Whether the result cache may answer (and be filled by) this request.
    pub cache: bool,
    /// Webhook events asked for beyond the terminal ones ([`crate::domain::WebhookEvents`]).
    pub webhook_events: u8,
    /// The idempotency key and the request's fingerprint.
    pub idempotency: Option<IdempotencyKey>,
}

/// An `Idempotency-Key` (or `metadata.requestId`) with the fingerprint of its request.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// The key as given.
    pub key: String,
    /// [`crate::canonical::request_fingerprint`] of the request.
    pub fingerprint: [u8; 32],
}

/// What a submit did.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// A new job, queued.
    Queued(Job),
    /// A new job, born succeeded from the result cache.
    Cached(Job),
    /// The idempotency key was used before with the same request: that job, and the HTTP
    /// status the first answer had.
    Replayed {
        /// The job the first request created (as it is now).
        job: Job,
        /// 202 or 200.
        status: u16,
    },
}

impl Submitted {
    /// The job, whichever way.
    pub fn job(&self) -> &Job {
        match self {
            Submitted::Queued(job) | Submitted::Cached(job) | Submitted::Replayed { job, .. } => job,
        }
    }
}

/// A workflow definition to register or update.
#[derive(Debug, Clone)]
pub struct WorkflowDefinition {
    /// Id.
    pub id: String,
    /// Display name (defaults to the id).
    pub name: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// API-format template.
    pub template: Value,
    /// Input JSON Schema.
    pub input_schema: Option<Value>,
    /// Default inputs.
    pub defaults: Option<Map<String, Value>>,
    /// Keep PreviewImage (temp) outputs.
    pub keep_previews: bool,
    /// What to do with the workflow's plugin.
    pub plugin: PluginChange,
}

/// A workflow definition's plugin field.
#[derive(Debug, Clone)]
pub enum PluginChange {
    /// Keep the current version's plugin (none for a new workflow).
    Keep,
    /// No plugin.
    Remove,
    /// This plugin.
    Set(PluginSpec),
}

/// A plugin and its configuration.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The component.
    pub source: PluginSource,
    /// Its configuration (`host.config()`).
    pub config: Value,
    /// Keep the original outputs beside the processed ones.
    pub keep_originals: bool,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone)]
pub enum PluginSource {
    /// Uploaded bytes.
    Wasm(Vec<u8>),
    /// A component already stored (by BLAKE3 hash).
    Stored(Hash),
}

/// A workflow proposed from a ComfyUI export ([`Gateway::import_workflow`]).
#[derive(Debug, Clone)]
pub struct Imported {
    /// The id proposed (given, else [`IMPORT_ID_DEFAULT`]).
    pub id: String,
    /// The name (given, else the id).
    pub name: String,
    /// The description (given, else empty).
    pub description: String,
    /// Template, input schema, what was found, warnings.
    pub proposal: workflows::import::Proposal,
}

impl Imported {
    /// The definition that registers the proposal as it is.
    pub fn definition(&self) -> WorkflowDefinition {
        WorkflowDefinition {
            id: self.id.clone(),
            name: Some(self.name.clone()),
            description: Some(self.description.clone()),
            template: self.proposal.template.clone(),
            input_schema: Some(self.proposal.input_schema.clone()),
            defaults: None,
            keep_previews: false,
            plugin: PluginChange::Keep,
        }
    }
}

/// The id of an imported workflow when none is given.
pub const IMPORT_ID_DEFAULT: &str = "imported";

/// Highest and lowest priority level accepted (the API's `priority` shares it).
pub use crate::domain::PRIORITY_MAX;

/// `Retry-After` of `STORAGE_FULL`: about when retention may have freed space.
const STORAGE_FULL_RETRY_AFTER_S: u64 = 30;

/// `Retry-After` of a backup refused because another one is running.
const BACKUP_BUSY_RETRY_AFTER_S: u64 = 10;

/// A backup taken by [`Gateway::backup`]: the copy, open and already unlinked (its bytes go
/// with the last handle), what was written, its SHA-256, and the backup slot, held until
/// this is dropped (so one backup at a time counts its download too).
#[derive(Debug)]
pub struct BackupCopy {
    /// The copy, positioned at its start.
    pub file: std::fs::File,
    /// What was copied.
    pub report: crate::store::Backup,
    /// SHA-256 of the file, lower-case hex.
    pub sha256_hex: String,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

/// SHA-256 of what `file` holds from where it is to its end, lower-case hex.
pub fn sha256_hex(file: &mut impl std::io::Read) -> std::io::Result<String> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}
/// `Retry-After` of `QUOTA_EXCEEDED`: the owner's jobs age out slowly; try again later.
const QUOTA_RETRY_AFTER_S: u64 = 60;

/// Who does an audited change: what its audit-log entry records.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The caller (None in open mode).
    pub principal: Option<Principal>,
    /// The request's correlation id.
    pub correlation_id: String,
}

impl Actor {
    /// The owner id the command line's changes are recorded under (not an API owner id:
    /// those are `key:...` or `jwt:...`).
    pub const CLI_OWNER: &'static str = "cli";

    /// The command line, run by the gateway's operator: an admin named [`Actor::CLI_OWNER`],
    /// with a fresh correlation id.
    pub fn cli() -> Actor {
        Actor {
            principal: Some(Principal { owner: Actor::CLI_OWNER.to_string(), role: Role::Admin }),
            correlation_id: uuid::Uuid::now_v7().simple().to_string(),
        }
    }
}

/// Record a done action in the durable audit log.
async fn append_audit(store: &Store, actor: &Actor, action: AuditAction, target: String) -> Result<()> {
    let entry = AuditEntry {
        at_ms: now_ms(),
        actor: actor.principal.as_ref().map(|c| c.owner.clone()),
        role: actor.principal.as_ref().map(|c| c.role),
        action,
        target,
        correlation_id: actor.correlation_id.clone(),
    };
    store.append_audit(entry).await?;
    Ok(())
}

/// The gateway's operations. The store and the scheduler are its own: the API and the CLI
/// go through these operations (so every change is audited the same way).
#[derive(Debug, Clone)]
pub struct Gateway {
    /// The durable store.
    store: Store,
    /// The scheduler.
    scheduler: Scheduler,
    /// The configuration.
    pub config: Arc<Config>,
    /// Registered workflows.
    registry: Registry,
    /// The metrics registry (shared with the scheduler).
    pub metrics: Metrics,
    /// The WebAssembly plugin host (shared with the scheduler).
    pub plugins: crate::plugins::Host,
    /// The webhook delivery task.
    pub webhooks: crate::webhooks::Webhooks,
    /// One online backup at a time, in total ([`Gateway::backup`]).
    backup_slot: Arc<tokio::sync::Semaphore>,
    /// Bumped after every change of the workflows ([`Gateway::workflows_changed`]).
    workflows_version: Arc<tokio::sync::watch::Sender<u64>>,
    /// Each backend's node definitions as last read ([`Gateway::definitions`]).
    definitions: Arc<Mutex<HashMap<String, Definitions>>>,
}

/// One backend's node definitions as last read, and when; one read at a time.
type Definitions = Arc<tokio::sync::Mutex<Option<(std::time::Instant, Arc<ObjectInfo>)>>>;

/// The model files a backend offers, by kind (`checkpoints`, `loras`, ...).
#[derive(Debug, Clone)]
pub struct ModelLists {
    /// The backend asked.
    pub backend: String,
    /// Its files by kind.
    pub lists: BTreeMap<&'static str, Vec<String>>,
}

/// How long [`Gateway::definitions`] answers from the definitions it read last.
pub const DEFINITIONS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// `<database>.gateway.json`: written by a running gateway next to the database it holds
/// (atomically, once it listens; removed at a clean shutdown), so that a CLI command that
/// finds the database locked knows where to ask and which database to expect. A file left
/// by a crash is harmless: the CLI checks the gateway at `url` reports `database`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnerFile {
    /// The gateway's base URL, reachable from this machine.
    pub url: String,
    /// The id of the database ([`Store::database_id`]), as `/livez` reports it.
    pub database: String,
}

impl OwnerFile {
    /// The owner file for a gateway listening on `addr` (an unspecified address is reached
    /// on loopback).
    pub fn new(addr: std::net::SocketAddr, database: String) -> OwnerFile {
        let mut addr = addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        OwnerFile { url: format!("http://{addr}"), database }
    }

    /// Where the owner file of the database at `database` is.
    pub fn path(database: &std::path::Path) -> std::path::PathBuf {
        let mut path = database.as_os_str().to_owned();
        path.push(".gateway.json");
        std::path::PathBuf::from(path)
    }

    /// Write it next to `database`, through a temporary file renamed into place.
    pub fn write(&self, database: &std::path::Path) -> std::io::Result<()> {
        let path = OwnerFile::path(database);
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let text = serde_json::to_string(self).map_err(std::io::Error::other)? + "\n";
        std::fs::write(&partial, text)?;
        std::fs::rename(&partial, &path)
    }

    /// The owner file next to `database`: `Ok(None)` when there is none.
    pub fn read(database: &std::path::Path) -> std::io::Result<Option<OwnerFile>> {
        match std::fs::read_to_string(OwnerFile::path(database)) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// How long a backend has to answer `/object_info` for [`Gateway::check_classes`].
pub const CLASS_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`Gateway::check_classes`] found.
#[derive(Debug, Default)]
pub struct ClassCheck {
    /// What to tell the caller.
    pub warnings: Vec<String>,
    /// The classes no healthy backend knows, with the nodes of each.
    pub unknown: Vec<(Vec<String>, String)>,
}

impl ClassCheck {
    /// The refusal of a strict registration: `VALIDATION_ERROR` naming every node whose
    /// class no healthy backend knows; None when there is none.
    pub fn refusal(&self) -> Option<Error> {
        let (ids, class) = self.unknown.first()?;
        let details = self.unknown.iter().flat_map(|(ids, class)| {
            ids.iter().map(move |id| {
                serde_json::json!({
                    "path": format!("/workflow/{id}/class_type"),
                    "message": format!("no healthy backend knows the node class {class}"),
                })
            })
        });
        let message = format!("node {} ({class}): no healthy backend knows this class (strict=true)", ids.join(", "));
        Some(Error::new(ErrorCode::ValidationError, message).with_details(Value::Array(details.collect())))
    }
}

/// Registered workflows: the store's records plus a cache of compiled ones.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Store,
    plugins: crate::plugins::Host,
    compiled: Arc<Mutex<HashMap<(String, u32), CompiledWorkflow>>>,
}

impl Gateway {
    /// Open the store, register bundled workflows if asked, start the scheduler.
    pub async fn start(config: Arc<Config>) -> Result<Gateway> {
        let objects = open_objects(&config.storage).await?;
        let store = Store::open_with(&config.database_path, objects).map_err(|e| {
            Error::new(ErrorCode::Internal, format!("cannot open {}: {e}", config.database_path.display()))
        })?;
        if config.bundled_workflows {
            register_bundled(&store).await?;
        }
        let metrics = Metrics::new();
        for w in store.list_workflows()? {
            metrics.workflow_known(&w.id);
        }
        let plugins = crate::plugins::Host::new(config.plugin_limits.clone())?;
        let scheduler = Scheduler::start(store.clone(), config.clone(), metrics.clone(), plugins.clone()).await?;
        let webhooks = crate::webhooks::Webhooks::new(scheduler.tasks().child());
        let gateway = Gateway {
            registry: Registry::new(store.clone(), plugins.clone()),
            plugins,
            store,
            scheduler,
            config,
            metrics,
            webhooks: webhooks.clone(),
            backup_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            workflows_version: Arc::new(tokio::sync::watch::Sender::new(0)),
            definitions: Arc::default(),
        };
        webhooks.start(gateway.clone());
        Ok(gateway)
    }

    /// Stop the webhook task and the scheduler, wait for every task of the gateway
    /// (`Scheduler::tasks`), and close the store; removes the [`OwnerFile`] first.
    pub async fn shutdown(&self) {
        // Still holding the database: no other gateway can have written it.
        let owner = OwnerFile::path(&self.config.database_path);
        if let Err(e) = std::fs::remove_file(&owner)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %owner.display(), error = %e, "cannot remove the owner file");
        }
        self.webhooks.stop();
        self.scheduler.shutdown().await;
        self.store.close().await;
    }

    /// The id of the database this gateway holds ([`Store::database_id`]).
    pub fn database_id(&self) -> String {
        self.store.database_id()
    }

    /// Say, next to the database, that this gateway holds it and answers at `addr` (the
    /// [`OwnerFile`]), once it listens. A failure is logged: the CLI then refuses to guess.
    pub fn announce(&self, addr: std::net::SocketAddr) {
        let owner = OwnerFile::new(addr, self.database_id());
        if let Err(e) = owner.write(&self.config.database_path) {
            tracing::warn!(error = %e, "cannot write the owner file; the CLI cannot reach this gateway in its place");
        }
    }

    /// Why the store refuses every write since a storage failure (fail-stop), if it does.
    pub fn store_failure(&self) -> Option<String> {
        self.store.failure()
    }

    /// Whether the store works: no storage failure, and its counters (O(1)) can be read,
    /// which also catches a disk that fails reads before any write.
    pub fn store_ok(&self) -> bool {
        self.store.failure().is_none() && self.store.stats().is_ok()
    }

    /// The webhook worker's handle on the store's outbox (the worker is part of the service:
    /// [`Gateway::start`] starts it).
    pub(crate) fn outbox(&self) -> &Store {
        &self.store
    }

    /// Every unfinished job (queued, then running) with its owner, read from the records'
    /// heads: what the per-client job cap counts at start.
    pub fn unfinished_owners(&self) -> Result<Vec<(JobId, Option<String>)>> {
        Ok(self.store.unfinished_owners()?)
    }

    /// Every workflow.
    pub fn workflows(&self) -> Result<Vec<WorkflowRecord>> {
        self.registry.workflows()
    }

    /// A workflow with its effective input schema.
    pub fn workflow(&self, id: &str) -> Result<(WorkflowRecord, Value)> {
        self.registry.workflow(id)
    }

    /// Register a new workflow (error if the id exists) or, with `replace`, a new version
    /// ([`Registry::put_workflow`], audited), refused while the disk is low
    /// ([`Gateway::disk_check`]). The workflow with its effective input schema.
    pub async fn put_workflow(
        &self,
        def: WorkflowDefinition,
        replace: bool,
        actor: &Actor,
    ) -> Result<(WorkflowRecord, Value)> {
        self.disk_check().await?;
        let rec = self.registry.put_workflow(def, replace, actor).await?;
        self.metrics.workflow_known(&rec.id);
        self.workflows_version.send_modify(|v| *v += 1);
        self.registry.workflow(&rec.id)
    }

    /// Whether `def` compiles (template, schema, defaults), as registering it checks first.
    pub fn check_definition(&self, def: &WorkflowDefinition) -> Result<()> {
        CompiledWorkflow::compile(&def.template, def.input_schema.as_ref(), def.defaults.as_ref())
            .map(|_| ())
            .map_err(|e| workflow_error("", e))
    }

    /// Remove a workflow (audited).
    pub async fn delete_workflow(&self, id: &str, actor: &Actor) -> Result<()> {
        self.registry.delete_workflow(id, actor).await?;
        self.workflows_version.send_modify(|v| *v += 1);
        Ok(())
    }

    /// A receiver that sees every registration, new version or removal of a workflow made
    /// through this gateway after the call (MCP's `notifications/tools/list_changed`).
    pub fn workflows_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.workflows_version.subscribe()
    }

    /// Every backend's state, in `COMFYUI_URL` order.
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.scheduler.backends()
    }

    /// Jobs waiting in the gateway's queue.
    pub fn queue_depth(&self) -> usize {
        self.scheduler.queue_depth()
    }

    /// Drain backend `id` or resume it ([`Scheduler::set_draining`]), audited.
    pub async fn set_draining(&self, id: &str, draining: bool, actor: &Actor) -> Result<BackendStatus> {
        let status = self.scheduler.set_draining(id, draining).await?;
        let action = if draining { AuditAction::BackendDrain } else { AuditAction::BackendResume };
        append_audit(&self.store, actor, action, status.id.clone()).await?;
        Ok(status)
    }

    /// A receiver of "job X has new events" notifications ([`Scheduler::subscribe`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<JobId> {
        self.scheduler.subscribe()
    }

    /// A running job's latest preview image (`LIVE_PREVIEWS`).
    pub fn preview(&self, id: JobId) -> Option<crate::scheduler::Preview> {
        self.scheduler.preview(id)
    }

    /// Queue position or progress of a job.
    pub fn live_status(&self, id: JobId, queue_key: QueueKey) -> LiveStatus {
        self.scheduler.live_status(id, queue_key)
    }

    /// Estimated seconds until `job` finishes ([`Scheduler::eta_seconds`]).
    pub fn eta_seconds(&self, job: &Job, live: &LiveStatus) -> Option<f64> {
        self.scheduler.eta_seconds(job, live)
    }

    /// Cancel a job ([`Scheduler::cancel`]), audited: the job after the change, revealed.
    pub async fn cancel(&self, id: JobId, actor: &Actor) -> Result<Job> {
        let job = self.reveal(self.scheduler.cancel(id).await?)?;
        append_audit(&self.store, actor, AuditAction::JobCancel, id.to_string()).await?;
        Ok(job)
    }

    /// A page of jobs ([`Store::list_jobs_page`]); their sealed fields are not opened.
    pub fn jobs_page(&self, query: &JobQuery<'_>) -> Result<JobPage> {
        Ok(self.store.list_jobs_page(query)?)
    }

    /// Up to `limit` log entries of a job with seq > `after_seq` (all when None), oldest first.
    pub fn job_events(&self, id: JobId, after_seq: Option<u64>, limit: usize) -> Result<Vec<(u64, JobEvent)>> {
        Ok(self.store.job_events(id, after_seq, limit)?)
    }

    /// A job's webhook deliveries, oldest first.
    pub fn job_deliveries(&self, id: JobId) -> Result<Vec<Delivery>> {
        Ok(self.store.job_deliveries(id)?)
    }

    /// Every webhook delivery of a job due again now (same ids), their endpoints enabled
    /// again, audited; `CONFLICT` if the job has none.
    pub async fn redeliver(&self, id: JobId, actor: &Actor) -> Result<Vec<Delivery>> {
        if self.store.job_deliveries(id)?.is_empty() {
            return Err(Error::new(ErrorCode::Conflict, format!("job {id} has no webhook deliveries")));
        }
        let deliveries = self.store.redeliver(id, now_ms()).await?;
        self.webhooks.wake();
        append_audit(&self.store, actor, AuditAction::WebhookRedeliver, id.to_string()).await?;
        Ok(deliveries)
    }

    /// Up to `limit` audit-log entries newest first, with seq < `before` (all when None).
    pub fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<(u64, AuditEntry)>> {
        Ok(self.store.audit(before, limit)?)
    }

    /// The owner of the gateway's tasks (the scheduler's): the API server spawns through a
    /// handle on it.
    pub fn tasks(&self) -> &crate::scheduler::Tasks {
        self.scheduler.tasks()
    }

    fn limits(&self) -> Limits {
        Limits { image_size_max: self.config.image_size_max, batch_size_max: self.config.batch_size_max }
    }

    /// Validate, render and durably queue a job, or answer it from the result cache, or
    /// replay the job an idempotency key already created. Returns after the commit.
    pub async fn submit(&self, req: SubmitRequest) -> Result<Submitted> {
        if !(-PRIORITY_MAX..=PRIORITY_MAX).contains(&req.priority) {
            return Err(Error::validation("/priority", format!("must be between -{PRIORITY_MAX} and {PRIORITY_MAX}")));
        }
        let claim_key = req.idempotency.as_ref().map(|k| idempotency_scope(req.owner.as_deref(), &k.key));
        if let (Some(key), Some(idem)) = (&claim_key, &req.idempotency)
            && let Some(rec) = self.store.idempotency_record(key)?
            && rec.expires_ms > now_ms()
            && let Some(replayed) = self.replay(&rec, idem)?
        {
            return Ok(replayed);
        }
        self.storage_check(req.owner.as_deref()).await?;
        let rec = self.store.get_workflow(&req.workflow_id)?.ok_or_else(|| {
            Error::new(ErrorCode::WorkflowNotFound, format!("no workflow with id {:?}", req.workflow_id))
        })?;
        let compiled = self.registry.compiled(&rec)?;
        // Time-ordered (UUIDv7, 74 random bits): new jobs land at the end of the store's
        // id-keyed tables instead of dirtying a random page of each on every insert.
        let id = uuid::Uuid::now_v7();
        let mut given = req.inputs;
        let (input_refs, blobs) = self.load_images(id, compiled.image_inputs(), &mut given, req.files).await?;
        let plugin = match &rec.plugin {
            Some(p) => Some((self.registry.plugin(p).await?, p)),
            None => None,
        };
        let call = |p: &PluginRef| CallContext {
            job_id: id.to_string(),
            workflow: (rec.id.clone(), rec.version),
            owner: req.owner.clone(),
            config: p.config_json.clone(),
        };
        // input-transform: on the client's inputs (images already replaced by their file
        // names), before the schema's check and the cache key.
        if let Some((plugin, p)) = &plugin
            && plugin.hooks.contains(&Hook::InputTransform)
        {
            let (result, report) = self.plugins.input_transform(plugin, &call(p), &given).await;
            log_plugin(Hook::InputTransform, &report.logs);
            given = result.map_err(|f| f.to_error(Hook::InputTransform))?;
        }
        // MAX_INPUT_KEYS before the schema's validator, whatever produced the inputs (the API
        // checked the client's already; a plugin's transform may have added to them).
        let keys_max = self.config.memory.input_keys_max;
        if workflows::schema::members_up_to([&given], keys_max) > keys_max {
            return Err(Error::validation(
                "/inputs",
                format!("has more than {keys_max} keys with nested objects counted (the gateway's MAX_INPUT_KEYS)"),
            ));
        }
        let mut prepared =
            compiled.prepare(&given, &self.limits(), &mut rand::rng()).map_err(|e| workflow_error("/inputs", e))?;
        // template-render: replaces the built-in renderer's prompt.
        if let Some((plugin, p)) = &plugin
            && plugin.hooks.contains(&Hook::TemplateRender)
        {
            let template = workflows::decode_stored("/workflow", &rec.template_json)
                .map_err(|e| Error::internal(format!("stored workflow {} v{} is damaged: {e}", rec.id, rec.version)))?;
            let inputs = Value::Object(prepared.inputs.clone());
            let (result, report) = self.plugins.template_render(plugin, &call(p), &template, &inputs).await;
            log_plugin(Hook::TemplateRender, &report.logs);
            prepared.prompt = result.map_err(|f| f.to_error(Hook::TemplateRender))?;
        }
        let created_ms = now_ms();
        // A drawn (random) seed makes the result unrepeatable: neither served from nor
        // stored in the cache. In privacy mode results are not shared between owners.
        let cache = &self.config.retention;
        // The prompt is serialized once, canonically: what is sent to ComfyUI and what the
        // cache key hashes.
        let prompt_json = canonical::to_string(&prepared.prompt);
        let cache_key = (cache.cache_enabled && req.cache && prepared.seed.is_none()).then(|| {
            let scope = if self.config.sealer.is_some() { req.owner.as_deref().unwrap_or("") } else { "" };
            canonical::cache_key((&rec.id, rec.version), &prompt_json, &input_subfolder(id), &input_refs, scope)
        });
        let seed = prepared.seed.or_else(|| prepared.inputs.get("seed").and_then(Value::as_i64));
        let rank_ms = queue_rank(created_ms, req.priority, self.config.queue_aging_ms);
        let inputs_json = Value::Object(prepared.inputs).to_string();
        let job = Job {
            seed,
            metadata_json: req.metadata.map(|m| m.to_string()),
            callback_url: req.callback_url,
            inputs: input_refs,
            owner: req.owner,
            webhook_events: req.webhook_events,
            cache_key,
            ..Job::new_queued(id, (&rec.id, rec.version), inputs_json, prompt_json, req.priority, rank_ms, created_ms)
        };
        // Privacy mode: what could hold prompt text is sealed before it is written.
        let job = match &self.config.sealer {
            Some(sealer) => Job {
                inputs_json: sealer.seal(&job.inputs_json),
                prompt_json: sealer.seal(&job.prompt_json),
                metadata_json: job.metadata_json.as_deref().map(|m| sealer.seal(m)),
                ..job
            },
            None => job,
        };
        let claim = |status: u16| {
            let (key, idem) = claim_key.clone().zip(req.idempotency.as_ref())?;
            let expires_ms = created_ms.saturating_add(self.config.retention.idempotency_ttl.as_millis() as u64);
            let record = IdempotencyRecord { body_hash: idem.fingerprint, job_id: id, status, created_ms, expires_ms };
            Some(Claim { key, record })
        };
        if let Some(key) = cache_key {
            let hit = self.store.cache_entry(&key)?.filter(|e| {
                e.created_ms.saturating_add(cache.cache_ttl.as_millis() as u64) > created_ms && !e.outputs.is_empty()
            });
            self.metrics.cache_lookup(hit.is_some());
            if let Some(entry) = hit {
                match self.scheduler.submit(job.clone(), Some(entry.outputs), blobs.clone(), claim(200)).await {
                    Ok(job) => return Ok(Submitted::Cached(job)),
                    // The entry expired and its blobs went meanwhile: run the job instead.
                    Err(StoreError::Invalid(e)) => tracing::info!(error = %e, "cache entry gone; running the job"),
                    Err(e) => return self.claim_failed(e, req.idempotency.as_ref()),
                }
            }
        }
        match self.scheduler.submit(job, None, blobs, claim(202)).await {
            Ok(job) => Ok(Submitted::Queued(job)),
            Err(e) => self.claim_failed(e, req.idempotency.as_ref()),
        }
    }

    /// The answer to a request whose idempotency key holds `rec`: the replay if the
    /// request is the same, `IDEMPOTENCY_CONFLICT` if not, None if the job is gone.
    fn replay(&self, rec: &IdempotencyRecord, idem: &IdempotencyKey) -> Result<Option<Submitted>> {
        if rec.body_hash != idem.fingerprint {
            return Err(Error::new(
                ErrorCode::IdempotencyConflict,
                format!("Idempotency-Key {:?} was used with a different request (job {})", idem.key, rec.job_id),
            )
            .with_details(serde_json::json!({ "jobId": rec.job_id })));
        }
        let Some(job) = self.store.get_job(rec.job_id)? else { return Ok(None) };
        Ok(Some(Submitted::Replayed { job: self.reveal(job)?, status: rec.status }))
    }

    /// A submit's insert failed: a concurrent request with the same key won the claim
    /// (answer like a replay) or the store failed.
    fn claim_failed(&self, e: StoreError, idem: Option<&IdempotencyKey>) -> Result<Submitted> {
        match (e, idem) {
            (StoreError::IdempotencyTaken(rec), Some(idem)) => self.replay(&rec, idem)?.ok_or_else(|| {
                Error::new(ErrorCode::Conflict, "the job of this idempotency key was just removed; try again")
            }),
            (e, _) => Err(e.into()),
        }
    }

    /// Resolve each image input given (a string in `inputs`, or a file part) to checked image
    /// bytes, and replace its value by the name of the file it will be uploaded as
    /// (`gw/<job id>/<name>.<ext>`, known now so the prompt can be rendered before the upload).
    async fn load_images(
        &self,
        id: JobId,
        names: &[String],
        inputs: &mut Value,
        mut files: Vec<(String, Bytes)>,
    ) -> Result<(Vec<InputRef>, Vec<NewBlob>)> {
        if let Some((name, _)) = files.iter().find(|(name, _)| !names.contains(name)) {
            return Err(Error::validation(
                &format!("/inputs/{name}"),
                "a file part was given, but this is not an image input of this workflow",
            ));
        }
        let Value::Object(map) = inputs else {
            return Ok((Vec::new(), Vec::new())); // `prepare` reports it
        };
        let (mut refs, mut blobs) = (Vec::new(), Vec::new());
        for name in names {
            let at = format!("/inputs/{}", workflows::template::escape_pointer(name));
            let file = files.iter().position(|(n, _)| n == name).map(|i| files.swap_remove(i).1);
            let source = match (file, map.get(name)) {
                (Some(_), Some(_)) => {
                    return Err(Error::validation(&at, "is given both as a file part and in the JSON inputs"));
                }
                (Some(bytes), None) => Source::Bytes(bytes),
                (None, Some(Value::String(text))) => Source::Text(text.clone()),
                // Absent (a default may apply) or not a string (the schema reports it).
                (None, _) => continue,
            };
            let image = inputs::load(source, &self.config.input_fetch)
                .await
                .map_err(|message| Error::validation(&at, message))?;
            let file_name = inputs::file_name(name, image.ext);
            map.insert(name.clone(), Value::String(format!("{}/{file_name}", input_subfolder(id))));
            let hash = *blake3::hash(&image.bytes).as_bytes();
            refs.push(InputRef {
                name: name.clone(),
                file_name,
                media_type: image.media_type.to_string(),
                size_bytes: image.bytes.len() as u64,
                hash,
            });
            blobs.push(NewBlob { hash, media_type: image.media_type.to_string(), bytes: image.bytes });
        }
        Ok((refs, blobs))
    }

    /// Whether a new job of `owner` may be stored: `507 STORAGE_FULL` as in
    /// [`Gateway::disk_check`], `507 QUOTA_EXCEEDED` when the owner keeps
    /// `STORAGE_QUOTA_BYTES_PER_OWNER` bytes or more. Both carry `retryAfterSeconds`.
    /// A bound checked at submit: the outputs of the owner's unfinished jobs (at most
    /// `MAX_JOBS_PER_CLIENT` of them) may still take it past the quota.
    async fn storage_check(&self, owner: Option<&str>) -> Result<()> {
        self.disk_check().await?;
        if let Some(quota) = self.config.disk.quota_bytes_per_owner {
            let used = self.store.owner_usage(owner)?;
            if used >= quota {
                self.metrics.storage_refused("quota");
                return Err(Error::new(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "your jobs keep {used} bytes of inputs and outputs, the quota is {quota}; new jobs are refused until some of yours are pruned"
                    ),
                )
                .with_details(json!({
                    "usedBytes": used,
                    "quotaBytes": quota,
                    "retryAfterSeconds": QUOTA_RETRY_AFTER_S,
                })));
            }
        }
        Ok(())
    }

    /// `507 STORAGE_FULL` (with `retryAfterSeconds`) when the database's disk stays below
    /// `DISK_FREE_MIN_BYTES` after retention ran first ([`Scheduler::disk_check`]): for
    /// every request that stores something new (jobs, workflows, plugins); reads, cancels
    /// and running jobs are not checked.
    pub async fn disk_check(&self) -> Result<()> {
        if let Err(space) = self.scheduler.disk_check().await {
            self.metrics.storage_refused("disk_full");
            tracing::warn!(
                free_bytes = space.free_bytes(),
                free_min_bytes = self.config.disk.free_min_bytes,
                "a write refused: the database's disk is low"
            );
            return Err(Error::new(
                ErrorCode::StorageFull,
                format!(
                    "the gateway's storage is full ({} bytes free, {} kept free); new jobs are refused until retention frees space",
                    space.free_bytes(),
                    self.config.disk.free_min_bytes
                ),
            )
            .with_details(json!({ "retryAfterSeconds": STORAGE_FULL_RETRY_AFTER_S })));
        }
        Ok(())
    }

    /// An online, consistent backup of the database ([`Store::backup`]) while the gateway
    /// keeps serving: written on a blocking thread next to the database
    /// (`<DATABASE_URL>.backup`, replaced by each backup), checked, then opened and unlinked,
    /// so nothing stays on disk once the returned copy is dropped. One at a time in total:
    /// `409 CONFLICT` with `retryAfterSeconds` while another runs (its download included);
    /// `507 STORAGE_FULL` when the database's file system has less free space than the
    /// database's size plus `DISK_FREE_MIN_BYTES`. A copy made is audited
    /// ([`AuditAction::DatabaseBackup`], the copy's SHA-256 as target) before it is
    /// returned (so the copy itself does not hold its entry).
    pub async fn backup(&self, actor: &Actor) -> Result<BackupCopy> {
        let slot = self.backup_slot.clone().try_acquire_owned().map_err(|_| {
            Error::new(ErrorCode::Conflict, "a backup is already running; one runs at a time")
                .with_details(json!({ "retryAfterSeconds": BACKUP_BUSY_RETRY_AFTER_S }))
        })?;
        let store = self.store.clone();
        let mut dest = self.config.database_path.as_os_str().to_owned();
        dest.push(".backup");
        let dest = std::path::PathBuf::from(dest);
        let keep_free_bytes = self.config.disk.free_min_bytes;
        // The slot moves into the blocking work: a request dropped half-way does not free
        // it while the copy still runs.
        let copied = tokio::task::spawn_blocking(move || -> Result<BackupCopy, StoreError> {
            let report = store.backup(&dest, keep_free_bytes)?;
            let mut file = std::fs::File::open(&dest)?;
            std::fs::remove_file(&dest)?;
            let sha256_hex = sha256_hex(&mut file)?;
            std::io::Seek::rewind(&mut file)?;
            Ok(BackupCopy { file, report, sha256_hex, _slot: slot })
        })
        .await
        .map_err(Error::internal)?;
        match copied {
            Ok(copy) => {
                tracing::info!(
                    size_bytes = copy.report.size_bytes,
                    n_entries = copy.report.n_entries,
                    duration_ms = copy.report.duration.as_secs_f64() * 1000.0,
                    "backup written"
                );
                append_audit(&self.store, actor, AuditAction::DatabaseBackup, copy.sha256_hex.clone()).await?;
                Ok(copy)
            }
            Err(StoreError::NoSpace(no)) => Err(Error::new(
                ErrorCode::StorageFull,
                format!(
                    "not enough space for a backup: {} bytes free, the database's size plus DISK_FREE_MIN_BYTES is {}",
                    no.free_bytes, no.needed_bytes
                ),
            )
            .with_details(json!({ "retryAfterSeconds": STORAGE_FULL_RETRY_AFTER_S }))),
            Err(e) => Err(e.into()),
        }
    }

    /// The metrics in Prometheus text format, levels read now (store counts are O(1)).
    pub fn metrics_text(&self) -> Result<String> {
        let stats = self.store.stats()?;
        let snapshot = Snapshot {
            jobs_by_state: stats.n_jobs_by_state.to_vec(),
            queue_by_priority: self.scheduler.queue_depth_by_priority().to_vec(),
            backends: self
                .scheduler
                .backends()
                .into_iter()
                .map(|b| BackendLevel { id: b.id, up: b.reachable, in_flight: b.in_flight, draining: b.draining })
                .collect(),
            store: StoreLevel {
                blobs: stats.n_blobs,
                blob_bytes: stats.blob_bytes,
                cache_entries: stats.n_cache_entries,
                deliveries_pending: stats.n_deliveries_pending,
                object_deletes_pending: stats.n_object_deletes_pending,
                disk_free_bytes: self.store.disk_space()?.map(|s| s.free_bytes()),
                usage_bytes: stats.usage_bytes,
                owners_with_usage: stats.n_owners_with_usage,
            },
            plugin_loads: self.plugins.load_counts(),
        };
        Ok(self.metrics.render(&snapshot))
    }

    /// The node definitions of the backend [`Scheduler::catalog_backend`] picks, fetched
    /// now (not cached: imports are rare, and installing a model changes them).
    /// `COMFYUI_UNREACHABLE` when it cannot be read.
    pub async fn object_info(&self) -> Result<ObjectInfo> {
        let (id, client) = self.scheduler.catalog_backend();
        client.object_info().await.map_err(|e| {
            // The cause may name the URL (and its credentials): logged, not answered.
            tracing::warn!(backend = %id, error = %e, "cannot read /object_info");
            let why = if e.is_unreachable() { "is unreachable" } else { "did not answer /object_info properly" };
            Error::new(
                ErrorCode::ComfyuiUnreachable,
                format!("cannot read the node definitions: ComfyUI backend {id} {why}; try again when it is up"),
            )
        })
    }

    /// The node classes of `template` the healthy backends do not know (each healthy
    /// backend's `/object_info`, read at most every [`DEFINITIONS_TTL`] and within
    /// [`CLASS_CHECK_TIMEOUT`]: [`Gateway::definitions`]): warnings
    /// naming each class, node and the backends without it, and the classes no healthy
    /// backend knows (a job of it cannot run anywhere). A backend that does not answer, or
    /// no healthy backend at all, is a warning too: nothing was checked against it.
    pub async fn check_classes(&self, template: &Value) -> ClassCheck {
        let nodes = crate::comfy::graph::nodes(template);
        let mut check = ClassCheck::default();
        let backends = self.scheduler.healthy_backends();
        if backends.is_empty() {
            check.warnings.push("no backend is healthy: the node classes were not checked".into());
            return check;
        }
        let reads = backends.iter().map(|(id, client)| async move { (id.clone(), self.definitions(id, client).await) });
        let answers = futures_util::future::join_all(reads).await;
        let mut lacking: BTreeMap<&str, (Vec<&str>, Vec<String>)> = BTreeMap::new();
        let mut answered = 0;
        for (id, info) in &answers {
            let Some(info) = info else {
                check
                    .warnings
                    .push(format!("backend {id} did not answer /object_info: the node classes were not checked on it"));
                continue;
            };
            answered += 1;
            for node in nodes.values().filter(|n| !info.contains_key(n.class)) {
                let entry = lacking.entry(node.class).or_default();
                if !entry.0.contains(&node.id) {
                    entry.0.push(node.id);
                }
                if !entry.1.contains(id) {
                    entry.1.push(id.clone());
                }
            }
        }
        for (class, (ids, without)) in lacking {
            let everywhere = without.len() == answered;
            check.warnings.push(format!(
                "node {} ({class}): {}; jobs fail where it is missing (a custom node not installed?)",
                ids.join(", "),
                if everywhere {
                    "no healthy backend knows this class".to_string()
                } else {
                    format!("backend {} lacks this class", without.join(", "))
                }
            ));
            if everywhere {
                check.unknown.push((ids.iter().map(|i| i.to_string()).collect(), class.to_string()));
            }
        }
        check
    }

    /// Backend `id`'s node definitions for the class checks and the model lists: read at
    /// most once per [`DEFINITIONS_TTL`] and one read at a time, so no run of registrations
    /// or number of `GET /models` callers makes the backend build them more often; None
    /// when it did not answer within [`CLASS_CHECK_TIMEOUT`]. (An import reads them fresh:
    /// [`Gateway::object_info`].)
    async fn definitions(&self, id: &str, client: &crate::comfy::client::ComfyClient) -> Option<Arc<ObjectInfo>> {
        let slot =
            self.definitions.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_string()).or_default().clone();
        let mut last = slot.lock().await;
        if let Some((at, info)) = last.as_ref()
            && at.elapsed() < DEFINITIONS_TTL
        {
            return Some(info.clone());
        }
        let info = Arc::new(tokio::time::timeout(CLASS_CHECK_TIMEOUT, client.object_info()).await.ok()?.ok()?);
        *last = Some((std::time::Instant::now(), info.clone()));
        Some(info)
    }

    /// The model files the first healthy backend offers, by kind, from its node definitions
    /// ([`Gateway::definitions`]). `COMFYUI_UNREACHABLE` when they cannot be read.
    pub async fn models(&self) -> Result<ModelLists> {
        let (backend, client) = self.scheduler.catalog_backend();
        let info = self.definitions(&backend, &client).await.ok_or_else(|| {
            Error::new(
                ErrorCode::ComfyuiUnreachable,
                format!("cannot read the node definitions: ComfyUI backend {backend} did not answer; try again"),
            )
        })?;
        Ok(ModelLists { lists: crate::comfy::graph::model_lists(&info), backend })
    }

    /// Propose a workflow (template + input schema) for a ComfyUI API-format export, typed
    /// from the backend's node definitions. `at` is where the export is in the request
    /// (`/workflow`, or `` for a whole body), for error paths.
    pub async fn import_workflow(
        &self,
        workflow: &Value,
        at: &str,
        id: Option<String>,
        name: Option<String>,
        description: Option<String>,
    ) -> Result<Imported> {
        // The request is checked before the backend is asked: a bad one is a 400 even
        // while the backend is down.
        check_import(workflow, at, id.as_deref())?;
        let classes = self.object_info().await?;
        propose_import(workflow, at, &classes, id, name, description)
    }

    /// A job by id.
    pub fn job(&self, id: JobId) -> Result<Job> {
        let job = self
            .store
            .get_job(id)?
            .ok_or_else(|| Error::new(ErrorCode::JobNotFound, format!("no job with id {id}")))?;
        self.reveal(job)
    }

    /// A stored job with its sealed fields (privacy mode) opened, for answers to clients.
    pub fn reveal(&self, job: Job) -> Result<Job> {
        let Some(sealer) = &self.config.sealer else { return Ok(job) };
        let open = |s: &str| sealer.open(s).map(|c| c.into_owned()).map_err(Error::internal);
        Ok(Job {
            inputs_json: open(&job.inputs_json)?,
            prompt_json: open(&job.prompt_json)?,
            metadata_json: job.metadata_json.as_deref().map(open).transpose()?,
            ..job
        })
    }

    /// A stored blob's bytes (verified against its hash), from redb or the bucket.
    pub async fn blob(&self, hash: &Hash) -> Result<Bytes> {
        self.store
            .blob_bytes(hash)
            .await?
            .ok_or_else(|| Error::internal(format!("blob {} is referenced but missing", crate::domain::hash_hex(hash))))
    }

    /// Where a stored blob's bytes are: `None` for redb (read with [`Gateway::blob`]), or
    /// the bucket holding them.
    pub fn blob_objects(&self, hash: &Hash) -> Result<Option<&crate::storage::Objects>> {
        let meta = self.store.blob_meta(hash)?.ok_or_else(|| {
            Error::internal(format!("blob {} is referenced but missing", crate::domain::hash_hex(hash)))
        })?;
        if !meta.remote {
            return Ok(None);
        }
        match self.store.objects() {
            Some(objects) => Ok(Some(objects)),
            None => Err(crate::store::StoreError::Objects(crate::storage::StorageError::Failed(format!(
                "blob {} is in object storage, but STORAGE_PROVIDER is not s3",
                crate::domain::hash_hex(hash)
            )))
            .into()),
        }
    }
}

/// The bucket of `STORAGE_PROVIDER=s3`, checked reachable (one request); None for `local`.
async fn open_objects(provider: &crate::storage::Provider) -> Result<Option<crate::storage::Objects>> {
    let crate::storage::Provider::S3(settings) = provider else { return Ok(None) };
    let at = settings.endpoint.as_deref().unwrap_or("AWS");
    let objects = crate::storage::Objects::new(settings).map_err(|e| {
        Error::new(ErrorCode::Internal, format!("S3_ENDPOINT: bucket {:?} at {at}: {e}", settings.bucket))
    })?;
    objects.check_reachable().await.map_err(|e| {
        Error::new(
            ErrorCode::StorageUnavailable,
            format!("S3_ENDPOINT/S3_BUCKET: bucket {:?} at {at} is not reachable: {e}", settings.bucket),
        )
    })?;
    tracing::info!(bucket = %settings.bucket, endpoint = at, prefix = %settings.prefix, "blob bytes go to the S3 bucket");
    Ok(Some(objects))
}

impl Registry {
    /// A registry over `store`, loading plugins with `plugins`.
    pub fn new(store: Store, plugins: crate::plugins::Host) -> Registry {
        Registry { store, plugins, compiled: Arc::default() }
    }

    /// A workflow's plugin, ready to call (compiled or loaded precompiled at first use).
    pub async fn plugin(&self, p: &PluginRef) -> Result<crate::plugins::Plugin> {
        self.plugins.load(&self.store, &p.hash).await.map_err(|f| {
            // A build without the runtime refuses the job (422), it is not a fault.
            f.unavailable_error().unwrap_or_else(|| {
                Error::internal(format!(
                    "stored plugin {} cannot be loaded: {}",
                    crate::domain::hash_hex(&p.hash),
                    f.message
                ))
            })
        })
    }

    /// The plugin a definition asks for, installed (compiled, type-checked, stored).
    async fn plugin_ref(&self, change: PluginChange, current: Option<&WorkflowRecord>) -> Result<Option<PluginRef>> {
        let spec = match change {
            PluginChange::Keep => return Ok(current.and_then(|c| c.plugin.clone())),
            PluginChange::Remove => return Ok(None),
            PluginChange::Set(spec) => spec,
        };
        let refused = |f: crate::plugins::Failure| {
            f.unavailable_error().unwrap_or_else(|| Error::validation("/plugin", f.message))
        };
        let plugin = match spec.source {
            PluginSource::Wasm(wasm) => self.plugins.install(&self.store, wasm).await.map_err(refused)?,
            PluginSource::Stored(hash) => self.plugins.load(&self.store, &hash).await.map_err(refused)?,
        };
        if !spec.config.is_object() {
            return Err(Error::validation("/plugin/config", "must be a JSON object"));
        }
        Ok(Some(PluginRef {
            hash: plugin.hash,
            config_json: spec.config.to_string(),
            keep_originals: spec.keep_originals,
        }))
    }

    /// The compiled form of a stored workflow version (cached).
    pub fn compiled(&self, rec: &WorkflowRecord) -> Result<CompiledWorkflow> {
        let key = (rec.id.clone(), rec.version);
        if let Some(c) = self.compiled.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(c.clone());
        }
        let compiled = compile_record(rec).map_err(|e| {
            Error::internal(format!("stored workflow {} v{} no longer compiles: {e:?}", rec.id, rec.version))
        })?;
        self.compiled.lock().unwrap_or_else(|p| p.into_inner()).insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Register a new workflow (error if the id exists) or, with `replace`, a new version,
    /// and record it in the audit log (`workflow.create` / `workflow.update`) by `actor`:
    /// the one registration path of the API and the CLI.
    pub async fn put_workflow(&self, def: WorkflowDefinition, replace: bool, actor: &Actor) -> Result<WorkflowRecord> {
        validate_workflow_id(&def.id)?;
        let current = self.store.get_workflow(&def.id)?;
        let exists = current.is_some();
        if exists && !replace {
            return Err(Error::new(ErrorCode::Conflict, format!("workflow {:?} exists; use PUT to update it", def.id)));
        }
        if !exists && replace {
            return Err(Error::new(ErrorCode::WorkflowNotFound, format!("no workflow with id {:?}", def.id)));
        }
        CompiledWorkflow::compile(&def.template, def.input_schema.as_ref(), def.defaults.as_ref())
            .map_err(|e| workflow_error("", e))?;
        let rec = WorkflowRecord {
            name: def.name.unwrap_or_else(|| def.id.clone()),
            id: def.id,
            version: 0,
            description: def.description.unwrap_or_default(),
            template_json: def.template.to_string(),
            schema_json: def.input_schema.map(|s| s.to_string()),
            defaults_json: def.defaults.map(|d| Value::Object(d).to_string()),
            created_ms: now_ms(),
            keep_previews: def.keep_previews,
            plugin: self.plugin_ref(def.plugin, current.as_ref()).await?,
        };
        let rec = self.store.put_workflow(rec).await?;
        let action = if replace { AuditAction::WorkflowUpdate } else { AuditAction::WorkflowCreate };
        append_audit(&self.store, actor, action, rec.id.clone()).await?;
        Ok(rec)
    }

    /// Remove a workflow, recorded in the audit log (`workflow.delete`) by `actor`.
    pub async fn delete_workflow(&self, id: &str, actor: &Actor) -> Result<()> {
        if !self.store.delete_workflow(id).await? {
            return Err(Error::new(ErrorCode::WorkflowNotFound, format!("no workflow with id {id:?}")));
        }
        append_audit(&self.store, actor, AuditAction::WorkflowDelete, id.to_string()).await
    }

    /// A workflow with its effective input schema.
    pub fn workflow(&self, id: &str) -> Result<(WorkflowRecord, Value)> {
        let rec = self
            .store
            .get_workflow(id)?
            .ok_or_else(|| Error::new(ErrorCode::WorkflowNotFound, format!("no workflow with id {id:?}")))?;
        let schema = self.compiled(&rec)?.input_schema().clone();
        Ok((rec, schema))
    }

    /// Every workflow.
    pub fn workflows(&self) -> Result<Vec<WorkflowRecord>> {
        Ok(self.store.list_workflows()?)
    }
}

/// Check an import request: the id (if given) and the API format of the export, which is at
/// `at` in the request (`/workflow`, or `` for a whole body or file).
pub fn check_import(workflow: &Value, at: &str, id: Option<&str>) -> Result<()> {
    validate_workflow_id(id.unwrap_or(IMPORT_ID_DEFAULT))?;
    if workflow.as_object().is_some_and(crate::comfy::graph::is_ui_format) {
        // A saved (UI-format) workflow: converted with the node definitions, then checked
        // ([`propose_import`]).
        return Ok(());
    }
    workflows::import::check_api_format(workflow, at).map_err(|e| workflow_error("", WorkflowError::Definition(e)))
}

/// Propose a workflow for an export from the backend's node definitions
/// ([`workflows::import::propose`]); `id` defaults to [`IMPORT_ID_DEFAULT`], `name` to the id.
pub fn propose_import(
    workflow: &Value,
    at: &str,
    classes: &ObjectInfo,
    id: Option<String>,
    name: Option<String>,
    description: Option<String>,
) -> Result<Imported> {
    check_import(workflow, at, id.as_deref())?;
    // A saved (UI-format) workflow is converted to the API format first, as ComfyUI's editor
    // does on Queue; what cannot be converted is an error naming the node.
    let mut warnings = Vec::new();
    let converted = match workflow.as_object().is_some_and(crate::comfy::graph::is_ui_format) {
        false => None,
        true => {
            let c = crate::comfy::ui::to_api(workflow, classes).map_err(|errors| {
                let errors = errors
                    .iter()
                    .map(|e| {
                        let path = format!("{at}{}", e.pointer);
                        FieldError::new(if path.is_empty() { "/".into() } else { path }, e.to_string())
                    })
                    .collect();
                workflow_error("", WorkflowError::Definition(errors))
            })?;
            warnings = c.warnings;
            workflows::import::check_api_format(&c.prompt, at)
                .map_err(|e| workflow_error("", WorkflowError::Definition(e)))?;
            Some(c.prompt)
        }
    };
    let workflow = converted.as_ref().unwrap_or(workflow);
    let id = id.unwrap_or_else(|| IMPORT_ID_DEFAULT.to_string());
    let name = name.unwrap_or_else(|| id.clone());
    let description = description.unwrap_or_default();
    let mut proposal = workflows::import::propose(workflow, at, classes, &name, &description)
        .map_err(|errors| workflow_error("", WorkflowError::Definition(errors)))?;
    warnings.append(&mut proposal.warnings);
    proposal.warnings = warnings;
    Ok(Imported { id, name, description, proposal })
}

/// Compile a stored workflow record.
pub fn compile_record(rec: &WorkflowRecord) -> Result<CompiledWorkflow, WorkflowError> {
    let template = workflows::decode_stored("/workflow", &rec.template_json)?;
    let schema = rec.schema_json.as_deref().map(|s| workflows::decode_stored("/inputSchema", s)).transpose()?;
    let defaults = match rec.defaults_json.as_deref().map(|s| workflows::decode_stored("/defaults", s)).transpose()? {
        None => None,
        Some(Value::Object(defaults)) => Some(defaults),
        Some(_) => {
            let error = FieldError::new("/defaults", "the stored record is not a JSON object");
            return Err(WorkflowError::Definition(vec![error]));
        }
    };
    CompiledWorkflow::compile(&template, schema.as_ref(), defaults.as_ref())
}

/// Register each bundled workflow whose id was never registered.
pub async fn register_bundled(store: &Store) -> Result<()> {
    for b in workflows::bundled::all() {
        let rec = b.record(now_ms());
        if store.put_workflow_if_absent(rec).await? {
            tracing::info!(workflow = b.id, "registered bundled workflow");
        }
    }
    Ok(())
}

/// Write a plugin call's log lines to the gateway's log (under the request's span).
fn log_plugin(hook: Hook, logs: &[crate::plugins::LogLine]) {
    for l in logs {
        tracing::info!(hook = hook.as_str(), level = l.level, "plugin: {}", l.message);
    }
}

/// The stored key of an idempotency key: scoped by its owner ("" in open mode), so two
/// owners never share one.
fn idempotency_scope(owner: Option<&str>, key: &str) -> String {
    format!("{}\n{key}", owner.unwrap_or(""))
}

fn validate_workflow_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(Error::validation("/id", "must be 1-128 characters of A-Z a-z 0-9 _ - ."));
    }
    // Dot segments: browsers, curl and proxies resolve `/workflows/..` away, so such a
    // workflow could never be read, changed or deleted.
    if matches!(id, "." | "..") {
        return Err(Error::validation("/id", "must not be \".\" or \"..\" (URL dot segments)"));
    }
    Ok(())
}

/// Map a workflow error to `VALIDATION_ERROR`, prefixing field paths with `prefix`.
fn workflow_error(prefix: &str, e: WorkflowError) -> Error {
    let (what, fields): (&str, Vec<FieldError>) = match e {
        WorkflowError::Invalid(f) => ("invalid inputs", f),
        WorkflowError::Definition(f) => ("invalid workflow definition", f),
    };
    let detail = |f: &FieldError| {
        let path = match (prefix, f.path.as_str()) {
            ("", p) => p.to_string(),
            (prefix, "" | "/") => prefix.to_string(),
            (prefix, p) => format!("{prefix}{p}"),
        };
        serde_json::json!({ "path": path, "message": f.message })
    };
    let first = fields.first().map(detail).map_or_else(String::new, |d| {
        format!("{}: {}", d["path"].as_str().unwrap_or(""), d["message"].as_str().unwrap_or(""))
    });
    let more = match fields.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    // At most `DETAILS_MAX` details are built; the rest are counted (`detailsOmitted`).
    Error::new(ErrorCode::ValidationError, format!("{what}: {first}{more}"))
        .with_details_capped(fields.iter().map(detail))
}

/// A gateway for unit tests: its database in `dir`, a backend nothing listens on (port 9,
/// discard), and `flags` on top.
#[cfg(test)]
pub(crate) async fn test_gateway(dir: &std::path::Path, flags: &[&str]) -> Gateway {
    let db = dir.join("g.redb");
    let mut all = vec!["--database-url", db.to_str().unwrap(), "--comfyui-url", "http://127.0.0.1:9"];
    all.extend_from_slice(flags);
    let config = Arc::new(crate::config::from_flags(&all).unwrap());
    Gateway::start(config).await.unwrap()
}

#[cfg(test)]
mod tests {
    use super::OwnerFile;

    /// A gateway listening on every address is reached on loopback; the file reads back as
    /// written, and a missing one is `None`.
    #[test]
    fn owner_files_name_a_reachable_address_and_read_back() {
        let v4 = OwnerFile::new("0.0.0.0:3000".parse().unwrap(), "00000000000000aa".into());
        assert_eq!(v4.url, "http://127.0.0.1:3000");
        assert_eq!(OwnerFile::new("[::]:3000".parse().unwrap(), String::new()).url, "http://[::1]:3000");
        assert_eq!(OwnerFile::new("10.0.0.6:8080".parse().unwrap(), String::new()).url, "http://10.0.0.6:8080");
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("gateway.redb");
        assert_eq!(OwnerFile::read(&db).unwrap(), None);
        v4.write(&db).unwrap();
        assert_eq!(OwnerFile::path(&db), dir.path().join("gateway.redb.gateway.json"));
        assert_eq!(OwnerFile::read(&db).unwrap(), Some(v4));
        std::fs::write(OwnerFile::path(&db), "not json").unwrap();
        assert!(OwnerFile::read(&db).is_err(), "a damaged file is an error, not a gateway");
    }
}

#[cfg(test)]
mod backup_tests {
    use crate::error::ErrorCode;

    /// One backup at a time in total, its download included: while a copy is held, a
    /// second is `CONFLICT` with `retryAfterSeconds`; once dropped, the next one runs.
    /// The copy is unlinked (nothing stays beside the database) and passes the check.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_backup_at_a_time_and_nothing_left_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let gateway = super::test_gateway(dir.path(), &["--disk-free-min-bytes", "0"]).await;
        let mut first = gateway.backup(&super::Actor::cli()).await.unwrap();
        let first_sha = first.sha256_hex.clone();
        let busy = gateway.backup(&super::Actor::cli()).await.unwrap_err();
        assert_eq!(busy.code, ErrorCode::Conflict);
        assert!(busy.details.as_ref().is_some_and(|d| d["retryAfterSeconds"].as_u64().is_some()));
        assert!(!dir.path().join("g.redb.backup").exists(), "unlinked once opened");
        let copy = dir.path().join("copy.redb");
        std::io::copy(&mut first.file, &mut std::fs::File::create(&copy).unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), first.report.size_bytes);
        assert_eq!(super::sha256_hex(&mut std::fs::File::open(&copy).unwrap()).unwrap(), first.sha256_hex);
        let stats = crate::store::Store::verify_file(&copy).unwrap();
        assert_eq!(stats, first.report.stats);
        drop(first);
        let second = gateway.backup(&super::Actor::cli()).await.unwrap();
        assert!(second.report.n_entries > 0);
        drop(second);
        let audit = gateway.audit(None, 10).unwrap();
        let backups: Vec<_> =
            audit.iter().filter(|(_, e)| e.action == crate::domain::AuditAction::DatabaseBackup).collect();
        assert_eq!(backups.len(), 2, "each copy made is audited, the refused one is not");
        assert_eq!(backups[1].1.target, first_sha, "oldest last: the first copy's SHA-256");
        gateway.shutdown().await;
    }
}
