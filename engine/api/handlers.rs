//! Handlers: read the request (bounded body, JSON with field-precise errors), call the
//! service, shape the answer. No business logic lives here.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::download;
use super::limits::Client;
use super::reply::{self, Resp};
use super::routes::{Ctx, Params};
use tokio::sync::broadcast;

use crate::auth::Principal;
use crate::canonical;
use crate::config::MemoryLimits;
use crate::domain::{Job, JobId, JobState, Role};
use crate::error::{Error, ErrorCode, Result};
use crate::service::{
    Actor, Gateway, IdempotencyKey, PluginChange, PluginSource, PluginSpec, SubmitRequest, Submitted,
    WorkflowDefinition,
};
use crate::store::JobQuery;
use crate::wire::job::{
    DeliveryView, JobAccepted, JobDeliveries, JobEventView, JobLog, JobOutputs, JobStatus, JobView, JobsCanceled,
    OutputView,
};
use crate::wire::system::{
    AuditEntryView, AuditPage, Backend, BackendList, BackendsCheck, Capabilities, Health, HealthBackend, HealthComfyui,
    HealthStore, Livez, ModelList, Readiness, ReadyChecks, Readyz, StoreCheck, Up, WorkflowDetails,
    WorkflowImportRegistered, WorkflowImported, WorkflowList, WorkflowSummary,
};
use crate::wire::{self, Link, request, request::PluginComponent};

/// How long a slow body has before its average rate is checked (`BODY_MIN_BYTES_PER_S`).
pub const BODY_RATE_GRACE: Duration = Duration::from_secs(5);

/// How often a body that sends nothing is checked against its deadline and rate.
const BODY_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Read the whole body, at most `MAX_BODY_BYTES`, within `BODY_READ_TIMEOUT_MS` and (after
/// [`BODY_RATE_GRACE`]) at `BODY_MIN_BYTES_PER_S` on average; a stalled or slow body is
/// `408 REQUEST_TIMEOUT` (and `routes::handle` closes the connection).
pub(super) async fn read_body(ctx: &Ctx, req: Request<Incoming>) -> Result<Bytes> {
    let max = ctx.gateway.config.body_bytes_max;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large(max));
    }
    let limits = &ctx.gateway.config.api_limits;
    let started = tokio::time::Instant::now();
    let deadline = started + limits.body_read_timeout;
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    loop {
        let wake = deadline.min(tokio::time::Instant::now() + BODY_CHECK_INTERVAL);
        // `frame()` is cancel-safe: a timeout loses no data.
        match tokio::time::timeout_at(wake, body.frame()).await {
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return Err(too_large(max));
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(Some(Err(e))) => return Err(Error::validation("/", format!("could not read the request body: {e}"))),
            Err(_) => {}
        }
        let elapsed = started.elapsed();
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {} ms", limits.body_read_timeout.as_millis()),
            ));
        }
        if super::limits::body_too_slow(buf.len() as u64, elapsed, limits.body_min_bytes_per_s, BODY_RATE_GRACE) {
            return Err(Error::new(
                ErrorCode::RequestTimeout,
                format!(
                    "the request body arrives slower than {} bytes/s ({} bytes in {} ms)",
                    limits.body_min_bytes_per_s,
                    buf.len(),
                    elapsed.as_millis()
                ),
            ));
        }
    }
}

fn too_large(max: usize) -> Error {
    Error::new(ErrorCode::PayloadTooLarge, format!("the request body is larger than {max} bytes"))
}

/// Parse a JSON object body, naming the position of a syntax error.
async fn read_object(ctx: &Ctx, req: Request<Incoming>) -> Result<Map<String, Value>> {
    off_workers(ctx, read_body(ctx, req).await?, |body| parse_object(&body)).await
}

/// Bodies up to this size are parsed on the async worker that read them; larger ones on
/// the bulk pool, so a few large bodies cannot hold every worker (and every other
/// client) for the time their parse takes.
const PARSE_INLINE_BYTES_MAX: usize = 64 * 1024;

/// `work(body)`, on the bulk pool ([`super::bulk`]: its own threads, below the API's
/// priority) when the body is larger than [`PARSE_INLINE_BYTES_MAX`]; what `work`
/// refuses is also dropped there.
async fn off_workers<T: Send + 'static>(
    ctx: &Ctx,
    body: Bytes,
    work: impl FnOnce(Bytes) -> Result<T> + Send + 'static,
) -> Result<T> {
    if body.len() <= PARSE_INLINE_BYTES_MAX {
        return work(body);
    }
    ctx.bulk.run(move || work(body)).await?
}

/// The caps on what a job body may make the gateway hold, checked before anything else
/// looks at its fields: `MAX_INPUT_KEYS` on the members of `inputs` and `params` (at every
/// depth), `MAX_METADATA_BYTES` on `metadata`. Both checks stop at their limit, so a body
/// of a million keys is refused in the time it takes to count to the limit.
///
/// # Errors
/// `VALIDATION_ERROR` naming `/inputs` or `/metadata`.
pub fn check_job_caps(body: &Map<String, Value>, memory: &MemoryLimits) -> Result<()> {
    let inputs = ["inputs", "params"].into_iter().filter_map(|k| body.get(k));
    if crate::workflows::schema::members_up_to(inputs, memory.input_keys_max) > memory.input_keys_max {
        return Err(too_many_input_keys(memory.input_keys_max));
    }
    if let Some(metadata) = body.get("metadata")
        && reply::json_len_within(metadata, memory.metadata_bytes_max).is_none()
    {
        return Err(metadata_too_large(memory.metadata_bytes_max));
    }
    Ok(())
}

fn too_many_input_keys(max: usize) -> Error {
    Error::validation(
        "/inputs",
        format!("has more than {max} keys with params and nested objects counted (the gateway's MAX_INPUT_KEYS)"),
    )
}

fn metadata_too_large(max: usize) -> Error {
    Error::validation("/metadata", format!("is larger than {max} bytes of JSON (the gateway's MAX_METADATA_BYTES)"))
}

/// Object members found by a scan of a job body's bytes, without parsing it.
#[derive(Debug, Default, PartialEq, Eq)]
struct MemberScan {
    /// Members inside the top-level `inputs` and `params` values, at every depth.
    inputs: usize,
    /// Members inside the top-level `metadata` value, at every depth.
    metadata: usize,
}

/// Count the members (a `:` outside strings is one) within the top-level `inputs`,
/// `params` and `metadata` of a JSON body. Keys are compared as written, so an escaped
/// name escapes this scan, not [`check_job_caps`] after the parse: the scan only lets a
/// body of a million keys be refused before a million map entries are built.
fn scan_members(body: &[u8]) -> MemberScan {
    #[derive(Clone, Copy, PartialEq)]
    enum Field {
        Inputs,
        Metadata,
        Other,
    }
    let mut scan = MemberScan::default();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut string_start, mut last_key, mut field) = (0usize, (0usize, 0usize), Field::Other);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    if depth == 1 {
                        last_key = (string_start, i);
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 1 => {
                field = match &body[last_key.0..last_key.1] {
                    b"inputs" | b"params" => Field::Inputs,
                    b"metadata" => Field::Metadata,
                    _ => Field::Other,
                };
            }
            b':' => match field {
                Field::Inputs => scan.inputs += 1,
                Field::Metadata => scan.metadata += 1,
                Field::Other => {}
            },
            _ => {}
        }
    }
    scan
}

/// Parse a job's JSON body and check [`check_job_caps`] (off the async workers when large).
/// A body whose members alone break a cap is refused before it is parsed: a metadata
/// member is at least 4 bytes of compact JSON (`"":0`), an object 2 more.
async fn parse_job_object(ctx: &Ctx, body: Bytes) -> Result<Map<String, Value>> {
    let memory = ctx.gateway.config.memory;
    off_workers(ctx, body, move |body| {
        let scan = scan_members(&body);
        if scan.inputs > memory.input_keys_max {
            return Err(too_many_input_keys(memory.input_keys_max));
        }
        if scan.metadata.saturating_mul(4).saturating_add(2) > memory.metadata_bytes_max {
            return Err(metadata_too_large(memory.metadata_bytes_max));
        }
        let object = parse_object(&body)?;
        check_job_caps(&object, &memory)?;
        Ok(object)
    })
    .await
}

/// Nesting depth of a JSON body at most (arrays and objects).
pub const JSON_DEPTH_MAX: usize = 64;

/// The deepest nesting of arrays and objects in `body` (strings skipped); a cheap scan
/// before parsing, so deep bodies are refused with a clear message and no recursion.
fn json_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Parse a JSON object body, naming the position of a syntax error (the fuzz target
/// `job_request` runs it on arbitrary bytes).
///
/// # Errors
/// `VALIDATION_ERROR`: empty, nested deeper than [`JSON_DEPTH_MAX`], malformed, or not an
/// object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>> {
    if body.is_empty() {
        return Err(Error::validation("/", "the request body is empty; a JSON object is expected"));
    }
    if json_depth(body) > JSON_DEPTH_MAX {
        return Err(Error::validation("/", format!("JSON nested deeper than {JSON_DEPTH_MAX} levels")));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::validation("/", "the request body must be a JSON object")),
        Err(e) => {
            Err(Error::validation("/", format!("malformed JSON at line {} column {}: {e}", e.line(), e.column())))
        }
    }
}

fn parse_job_id(raw: &str) -> Result<JobId> {
    uuid::Uuid::parse_str(raw).map_err(|_| Error::new(ErrorCode::JobNotFound, format!("no job with id {raw:?}")))
}

/// Whether `caller` may see `job`: everyone in open mode, admins always, users only
/// their own jobs.
pub(super) fn may_see(caller: Option<&Principal>, job: &Job) -> bool {
    match caller {
        None | Some(Principal { role: Role::Admin, .. }) => true,
        Some(Principal { owner, role: Role::User }) => job.owner.as_deref() == Some(owner.as_str()),
    }
}

/// The job `{id}` names, if the caller may see it; another owner's job is the same
/// `404 JOB_NOT_FOUND` as a job that does not exist, so ids cannot be probed.
pub(super) fn visible_job(gateway: &Gateway, p: &Params) -> Result<Job> {
    let id = parse_job_id(&p.id)?;
    let job = gateway.job(id)?;
    if may_see(p.caller.as_ref(), &job) {
        Ok(job)
    } else {
        Err(Error::new(ErrorCode::JobNotFound, format!("no job with id {id}")))
    }
}

/// The caller of a request, as the audit log records it.
fn actor(p: &Params) -> Actor {
    Actor { principal: p.caller.clone(), correlation_id: p.correlation_id.clone() }
}

/// `GET /health`: 200 when at least one backend is reachable and the store works, else 503;
/// with `details` (open mode, or valid credentials) the backends, version and queue too.
pub async fn health(ctx: &Ctx, details: bool) -> Result<Resp> {
    let backends = ctx.gateway.backends();
    let reachable = backends.iter().any(|b| b.reachable);
    // A store that failed (a storage I/O error) refuses every call until a restart.
    // Only up or down: the cause is in the log (this route is public).
    let store_ok = ctx.gateway.store_ok();
    let ok = reachable && store_ok;
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let public = Health::public(ok);
    if !details {
        // The public answer (credentials configured, none valid given): up and ready or
        // not; backend URLs, versions and error texts are for authenticated callers.
        return Ok(reply::json(status, &public));
    }
    let body = Health {
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        uptime: Some(ctx.started.elapsed().as_secs()),
        queue_depth: Some(ctx.gateway.queue_depth() as u64),
        comfyui: Some(HealthComfyui {
            reachable,
            url: backends.first().map(|b| b.url.clone()),
            backends: backends.iter().map(HealthBackend::new).collect(),
        }),
        store: Some(HealthStore { ok: store_ok }),
        ..public
    };
    Ok(reply::json(status, &body))
}

/// `GET /livez` (public): the process is up and answers. 200 always, whatever the
/// backends and the store (a store failure stops the process, see `cli::serve`), so a
/// liveness probe never restarts a gateway because ComfyUI is down. `database` is the id
/// of the database it holds (the CLI checks it before acting through this gateway).
pub fn livez(ctx: &Ctx) -> Result<Resp> {
    let body = Livez {
        status: Up::Up,
        version: env!("CARGO_PKG_VERSION").to_string(),
        database: ctx.gateway.database_id(),
        uptime: ctx.started.elapsed().as_secs(),
    };
    Ok(reply::json(StatusCode::OK, &body))
}

/// `GET /readyz` (public): 200 when the store works and at least one backend is reachable,
/// else 503; `checks` says which check failed, never a URL, a version or an error text
/// (those are in `/health`'s details and the log).
pub fn readyz(ctx: &Ctx) -> Result<Resp> {
    let store_ok = ctx.gateway.store_ok();
    let backends_ok = ctx.gateway.backends().iter().any(|b| b.reachable);
    let ready = store_ok && backends_ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = Readyz {
        status: if ready { Readiness::Ready } else { Readiness::NotReady },
        checks: ReadyChecks {
            store: if store_ok { StoreCheck::Ok } else { StoreCheck::Failed },
            backends: if backends_ok { BackendsCheck::Ok } else { BackendsCheck::Unreachable },
        },
    };
    Ok(reply::json(status, &body))
}

/// `GET /backends`: every configured backend's state, in `COMFYUI_URL` order.
pub fn backends(ctx: &Ctx) -> Result<Resp> {
    let backends = ctx.gateway.backends().iter().map(Backend::new).collect();
    Ok(reply::json(StatusCode::OK, &BackendList { backends }))
}

/// `POST /backends/{id}/drain` and `/resume` (admin): no new jobs go to a drained backend,
/// its running jobs finish; the drain is durable and audit-logged.
pub async fn set_draining(ctx: &Ctx, p: &Params, draining: bool) -> Result<Resp> {
    let status = ctx.gateway.set_draining(&p.id, draining, &actor(p)).await?;
    Ok(reply::json(StatusCode::OK, &Backend::new(&status)))
}

/// `GET /capabilities`.
pub fn capabilities(ctx: &Ctx) -> Result<Resp> {
    let workflows: Vec<String> = ctx.gateway.workflows()?.into_iter().map(|w| w.id).collect();
    let c = &ctx.gateway.config;
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    let body = Capabilities {
        workflows,
        max_size: c.image_size_max,
        max_batch: c.batch_size_max,
        formats: names(&["png", "jpeg", "webp", "gif", "mp4", "webm", "wav", "mp3", "flac", "txt", "json"]),
        storage_provider: c.storage.name().to_string(),
        max_body_bytes: c.body_bytes_max,
        priorities: names(&["high", "normal", "low"]),
        plugins: crate::plugins::AVAILABLE,
    };
    Ok(reply::json(StatusCode::OK, &body))
}

/// `GET /openapi.json`, with every registered workflow's input schema.
pub fn openapi(ctx: &Ctx) -> Result<Resp> {
    let mut workflows = Vec::new();
    for w in ctx.gateway.workflows()? {
        let (_, schema) = ctx.gateway.workflow(&w.id)?;
        workflows.push((w.id, schema));
    }
    // `servers`: PUBLIC_URL when set. Else `/`, which OpenAPI resolves against where the
    // document was fetched: right behind any proxy, where an absolute URL built from the
    // request's Host would guess the scheme and could name an internal host; generators
    // (openapi-python-client, openapi-typescript) take the base URL from their user anyway.
    let config = &ctx.gateway.config;
    let server_url = if config.public_url_set { config.public_url.as_str() } else { "/" };
    Ok(reply::json(StatusCode::OK, &super::openapi::document(&workflows, server_url)))
}

/// `GET /models`: the first healthy backend's model files by kind ([`Gateway::models`]).
pub async fn models(ctx: &Ctx) -> Result<Resp> {
    let m = ctx.gateway.models().await?;
    let models = m.lists.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    Ok(reply::json(StatusCode::OK, &ModelList { backend: m.backend, models }))
}

/// `GET /workflows`.
pub fn list_workflows(gateway: &Gateway) -> Result<Resp> {
    let workflows = gateway.workflows()?.iter().map(WorkflowSummary::new).collect();
    Ok(reply::json(StatusCode::OK, &WorkflowList { workflows }))
}

/// `GET /workflows/{id}`.
pub fn get_workflow(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let (w, schema) = ctx.gateway.workflow(&p.id)?;
    Ok(reply::json(StatusCode::OK, &WorkflowDetails::new(&w, schema)?))
}

/// A workflow definition as the service takes it: the body's fields, the id from the body
/// (`POST`) or the path (`PUT`).
fn workflow_definition(id: String, body: request::WorkflowUpdate) -> Result<WorkflowDefinition> {
    let plugin = match body.plugin {
        None => PluginChange::Keep,
        Some(None) => PluginChange::Remove,
        Some(Some(plugin)) => PluginChange::Set(PluginSpec {
            source: match plugin.component()? {
                PluginComponent::Wasm(bytes) => PluginSource::Wasm(bytes),
                PluginComponent::Stored(hash) => PluginSource::Stored(hash),
            },
            config: plugin.config(),
            keep_originals: plugin.keep_originals,
        }),
    };
    Ok(WorkflowDefinition {
        id,
        name: body.name,
        description: body.description,
        template: Value::Object(body.workflow),
        input_schema: body.input_schema.map(Value::Object),
        defaults: body.defaults,
        keep_previews: body.keep_previews,
        plugin,
    })
}

/// `POST /workflows?strict=`: 201 with the new workflow (and warnings: [`put_workflow`]).
pub async fn create_workflow(ctx: &Ctx, p: &Params, req: Request<Incoming>) -> Result<Resp> {
    let strict = parse_strict(p)?;
    let body = Value::Object(read_object(ctx, req).await?);
    let (id, body) = wire::parse::<request::WorkflowDefinition>(&body)?.split();
    let def = workflow_definition(id, body)?;
    Ok(reply::json(StatusCode::CREATED, &put_workflow(ctx, p, def, false, strict).await?))
}

/// `?strict=true|false` (default false).
fn parse_strict(p: &Params) -> Result<bool> {
    match p.query("strict") {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Error::validation("strict", "must be true or false")),
    }
}

/// Register a workflow or, with `replace`, a new version (audited): its details, with
/// warnings for the node classes the healthy backends lack ([`Gateway::check_classes`]).
/// With `strict`, a class no healthy backend knows is refused (`VALIDATION_ERROR` naming
/// each node) and nothing is registered.
async fn put_workflow(
    ctx: &Ctx,
    p: &Params,
    def: WorkflowDefinition,
    replace: bool,
    strict: bool,
) -> Result<WorkflowDetails> {
    // A definition that does not compile is refused before any backend is asked.
    ctx.gateway.check_definition(&def)?;
    let check = ctx.gateway.check_classes(&def.template).await;
    if strict && let Some(refusal) = check.refusal() {
        return Err(refusal);
    }
    let (rec, schema) = ctx.gateway.put_workflow(def, replace, &actor(p)).await?;
    let mut details = WorkflowDetails::new(&rec, schema)?;
    details.warnings = check.warnings;
    Ok(details)
}

/// `POST /workflows/import?strict=`: a template and input schema proposed for a workflow
/// exported from ComfyUI (API format) or saved by its editor (UI format, converted), typed
/// from the first healthy backend's `/object_info`. The body is
/// `{workflow, id?, name?, description?, register?}`, or the export itself. 200 with
/// `{proposal, inputs, warnings}`; with `register: true`, 201 with the registered workflow
/// (as `POST /workflows` answers) plus `inputs` and `warnings`.
pub async fn import_workflow(ctx: &Ctx, p: &Params, req: Request<Incoming>) -> Result<Resp> {
    let strict = parse_strict(p)?;
    let body = read_object(ctx, req).await?;
    // A body without a `workflow` member is the export itself, with the default options.
    let (options, at) = if body.contains_key("workflow") {
        (wire::parse::<request::WorkflowImport>(&Value::Object(body))?, "/workflow")
    } else {
        let export = Value::Object(body);
        (request::WorkflowImport { workflow: export, id: None, name: None, description: None, register: false }, "")
    };
    let imported =
        ctx.gateway.import_workflow(&options.workflow, at, options.id, options.name, options.description).await?;
    let answer = WorkflowImported::new(&imported.id, &imported.name, &imported.description, &imported.proposal);
    if options.register {
        let workflow = put_workflow(ctx, p, imported.definition(), false, strict).await?;
        let registered = WorkflowImportRegistered { workflow, inputs: answer.inputs, warnings: answer.warnings };
        return Ok(reply::json(StatusCode::CREATED, &registered));
    }
    Ok(reply::json(StatusCode::OK, &answer))
}

/// `PUT /workflows/{id}?strict=`: a new version (and warnings: [`put_workflow`]).
pub async fn update_workflow(ctx: &Ctx, p: &Params, req: Request<Incoming>) -> Result<Resp> {
    let strict = parse_strict(p)?;
    let body = wire::parse::<request::WorkflowUpdate>(&Value::Object(read_object(ctx, req).await?))?;
    if body.id.as_ref().is_some_and(|id| *id != p.id) {
        return Err(Error::validation("/id", format!("does not match the path ({:?})", p.id)));
    }
    let def = workflow_definition(p.id.clone(), body)?;
    Ok(reply::json(StatusCode::OK, &put_workflow(ctx, p, def, true, strict).await?))
}

/// `DELETE /workflows/{id}`: 204.
pub async fn delete_workflow(ctx: &Ctx, p: &Params) -> Result<Resp> {
    ctx.gateway.delete_workflow(&p.id, &actor(p)).await?;
    Ok(reply::empty(StatusCode::NO_CONTENT))
}

/// Longest idempotency key accepted, in bytes.
const IDEMPOTENCY_KEY_MAX: usize = 255;

/// The `Idempotency-Key` header, else `metadata.requestId`: 1 to 255 printable ASCII characters.
fn idempotency_key(req_key: Option<&HeaderValue>, metadata: Option<&request::Object>) -> Result<Option<String>> {
    let (key, at) = match (req_key, metadata.and_then(|m| m.get("requestId"))) {
        (Some(h), _) => (h.to_str().map(str::to_string).ok(), "Idempotency-Key"),
        (None, Some(Value::String(s))) => (Some(s.clone()), "/metadata/requestId"),
        (None, Some(_)) => (None, "/metadata/requestId"),
        (None, None) => return Ok(None),
    };
    match key {
        Some(k) if !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_MAX && k.bytes().all(|b| (0x20..0x7f).contains(&b)) => {
            Ok(Some(k))
        }
        _ => Err(Error::validation(at, format!("must be 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters"))),
    }
}

/// A parsed job request: the JSON object and, for `multipart/form-data`, the file parts.
async fn read_job_request(ctx: &Ctx, req: Request<Incoming>) -> Result<(Map<String, Value>, Vec<(String, Bytes)>)> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("multipart/form-data") {
        let body = read_body(ctx, req).await?;
        return Ok((parse_job_object(ctx, body).await?, Vec::new()));
    }
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| Error::validation("/", format!("bad multipart content type: {e}")))?;
    let body = read_body(ctx, req).await?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(body) });
    let mut multipart = multer::Multipart::new(stream, boundary);
    let bad = |e: multer::Error| Error::validation("/", format!("malformed multipart body: {e}"));
    let (mut json, mut files) = (None, Vec::new());
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field.bytes().await.map_err(bad)?;
        match name.as_str() {
            "request" | "json" => {
                if json.is_some() {
                    return Err(Error::validation("/", "more than one \"request\" part"));
                }
                json = Some(parse_job_object(ctx, bytes).await?);
            }
            "" => return Err(Error::validation("/", "a multipart part has no name")),
            _ => {
                let input = name.strip_prefix("inputs.").unwrap_or(&name).to_string();
                if files.iter().any(|(n, _)| *n == input) {
                    return Err(Error::validation(&format!("/inputs/{input}"), "is given in two parts"));
                }
                files.push((input, bytes));
            }
        }
    }
    let json = json.ok_or_else(|| {
        Error::validation("/", "a multipart job needs a part named \"request\" holding the JSON body")
    })?;
    Ok((json, files))
}

/// `?wait=SECONDS` of a synchronous submit: `0 < SECONDS ≤ sync_wait_max_s`.
fn parse_wait(ctx: &Ctx, p: &Params) -> Result<Option<Duration>> {
    let Some(raw) = p.query("wait") else { return Ok(None) };
    let max = ctx.gateway.config.sync_wait_max_s;
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= max as f64 => Ok(Some(Duration::from_secs_f64(s))),
        _ => Err(Error::validation("wait", format!("must be a number of seconds greater than 0 and at most {max}"))),
    }
}

/// The fields of a `POST /jobs` body, each checked: what [`create_job`] hands to the
/// service (the callback URL's destination is checked afterwards, by the webhook policy).
#[derive(Debug)]
pub struct JobFields {
    /// `workflowId`.
    pub workflow_id: String,
    /// `inputs`, with `params` merged in (`inputs` win).
    pub inputs: Map<String, Value>,
    /// `priority` as a level.
    pub priority: i32,
    /// `metadata`.
    pub metadata: Option<Value>,
    /// `callbackUrl`: an absolute http(s) URL.
    pub callback_url: Option<String>,
    /// `cache` (default true).
    pub cache: bool,
    /// `callbackEvents` as a [`WebhookEvents`] bit set.
    pub webhook_events: u8,
    /// The `Idempotency-Key` header or `metadata.requestId`, with the request's fingerprint.
    pub idempotency: Option<IdempotencyKey>,
}

/// Check the fields of a parsed `POST /jobs` body (no IO; the fuzz target `job_request`
/// runs it on arbitrary bodies).
///
/// # Errors
/// `VALIDATION_ERROR` naming the first field that is wrong.
pub fn job_fields(
    body: Map<String, Value>,
    header_key: Option<&HeaderValue>,
    files: &[(String, Bytes)],
) -> Result<JobFields> {
    let body = Value::Object(body);
    let request = wire::parse::<request::JobRequest>(&body)?;
    let idempotency = idempotency_key(header_key, request.metadata.as_ref())?
        .map(|key| IdempotencyKey { fingerprint: canonical::request_fingerprint(&body, files), key });
    if let Some(url) = &request.callback_url {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(Error::validation("/callbackUrl", "must be an absolute http(s) URL")),
        }
    }
    let webhook_events = request.webhook_events()?;
    let priority = request.priority_level()?;
    let request::JobRequest { workflow_id, mut inputs, params, callback_url, cache, metadata, .. } = request;
    // `params` are accepted as extra inputs (seed's compatibility); `inputs` win.
    for (k, v) in params {
        inputs.entry(k).or_insert(v);
    }
    Ok(JobFields {
        workflow_id,
        inputs,
        priority,
        metadata: metadata.map(Value::Object),
        callback_url,
        cache,
        webhook_events,
        idempotency,
    })
}

/// `POST /jobs`: 202 `{jobId, status, pollUrl}` after the durable commit. The body is JSON,
/// or `multipart/form-data` with the JSON in a part named `request` (or `json`) and image
/// inputs as file parts named after the input (or `inputs.<name>`). With
/// `?wait=SECONDS`: 200 with the finished job if it ends within that time, else the 202.
/// With `?include=base64`, a 200 (the finished job: under `?wait=`, or from the result
/// cache) inlines small outputs as `GET /jobs/{id}?include=base64` does; a 202 has none.
///
/// A client at its `MAX_JOBS_PER_CLIENT` of queued + running jobs gets 429, and so does a
/// `?wait=` submit beyond `MAX_SYNC_WAITS_PER_CLIENT` or `MAX_SYNC_WAITS`. The inlining
/// happens while the wait is still held (so it counts against those caps), within the
/// inline limits (`download::INLINE_BYTES_MAX` each, `INLINE_TOTAL_BYTES_MAX` in all).
pub async fn create_job(ctx: &Ctx, p: &Params, client: &Client, req: Request<Incoming>) -> Result<Resp> {
    let wait = parse_wait(ctx, p)?;
    let inline = parse_include(p)?;
    // A waiting submit holds its connection: capped per client key and in total.
    let _waiting = match wait {
        Some(_) => Some(ctx.limits.sync_waits.hold(&client.key)?),
        None => None,
    };
    let slot = match &ctx.limits.jobs {
        Some(cap) => Some(cap.reserve(&client.key, |id| {
            // A job that cannot be read is not counted (it does not hold the client back).
            ctx.gateway.job(id).map_or(true, |j| j.state.is_terminal())
        })?),
        None => None,
    };
    let header_key = req.headers().get("idempotency-key").cloned();
    let (body, files) = read_job_request(ctx, req).await?;
    let fields = job_fields(body, header_key.as_ref(), &files)?;
    if let Some(url) = &fields.callback_url {
        crate::webhooks::check_callback_url(url, &ctx.gateway.config.webhooks).await?;
    }
    // Subscribed before the commit, so the job's terminal notification cannot be missed.
    let mut rx = wait.map(|_| ctx.gateway.subscribe());
    let submitted = ctx
        .gateway
        .submit(SubmitRequest {
            workflow_id: fields.workflow_id,
            inputs: Value::Object(fields.inputs),
            priority: fields.priority,
            metadata: fields.metadata,
            callback_url: fields.callback_url,
            files,
            owner: p.caller.as_ref().map(|c| c.owner.clone()),
            cache: fields.cache,
            webhook_events: fields.webhook_events,
            idempotency: fields.idempotency,
        })
        .await?;
    crate::failpoints::crash_point(crate::failpoints::AFTER_SUBMIT_COMMIT);
    let job = submitted.job();
    if let Some(slot) = slot {
        slot.commit(job.id);
    }
    let (replayed, first_status) = match &submitted {
        Submitted::Queued(_) => (false, StatusCode::ACCEPTED),
        Submitted::Cached(_) => (false, StatusCode::OK),
        Submitted::Replayed { status, .. } => (true, StatusCode::from_u16(*status).unwrap_or(StatusCode::ACCEPTED)),
    };
    let links = ctx.gateway.config.links();
    let waited;
    let finished = if first_status == StatusCode::OK || job.state.is_terminal() && wait.is_some() {
        Some(job)
    } else if let (Some(wait), Some(rx)) = (wait, rx.as_mut())
        && let Some(done) = wait_terminal(ctx, job.id, rx, wait).await?
    {
        waited = done;
        Some(&waited)
    } else {
        None
    };
    let mut resp = if let Some(done) = finished {
        let mut body = JobView::new(done, None, &links);
        if inline {
            download::inline_outputs(&ctx.gateway, done, &mut body).await?;
        }
        reply::json(StatusCode::OK, &body)
    } else {
        let poll_url = links.job(job.id);
        let accepted = JobAccepted { job_id: job.id, status: job.state.into(), poll_url: Link(poll_url.clone()) };
        let mut resp = reply::json(StatusCode::ACCEPTED, &accepted);
        if let Ok(v) = HeaderValue::from_str(&poll_url) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        resp
    };
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// `?include=`: `base64` (inline small outputs) or absent; anything else is a 400.
fn parse_include(p: &Params) -> Result<bool> {
    match p.query("include") {
        None => Ok(false),
        Some("base64") => Ok(true),
        Some(_) => Err(Error::validation("include", "the only value is base64")),
    }
}

/// The job once it is terminal, woken by the scheduler's notifications (no polling);
/// None if it is still running after `wait`.
async fn wait_terminal(
    ctx: &Ctx,
    id: JobId,
    rx: &mut broadcast::Receiver<JobId>,
    wait: Duration,
) -> Result<Option<Job>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut check = true;
    loop {
        if check {
            let job = ctx.gateway.job(id)?;
            if job.state.is_terminal() {
                return Ok(Some(job));
            }
        }
        check = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Ok(None),
            Ok(Ok(notified)) => notified == id,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => true,
            Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(None),
        };
    }
}

/// `GET /jobs/{id}`: the job with its queue position, progress and `etaSeconds`
/// (`?include=base64` inlines small outputs).
pub async fn get_job(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let job = visible_job(&ctx.gateway, p)?;
    let live = ctx.gateway.live_status(job.id, job.queue_key);
    let mut body = JobView::new(&job, Some(&live), &ctx.gateway.config.links());
    body.eta_seconds = Some(ctx.gateway.eta_seconds(&job, &live));
    if parse_include(p)? {
        download::inline_outputs(&ctx.gateway, &job, &mut body).await?;
    }
    Ok(reply::json(StatusCode::OK, &body))
}

/// Default and largest page size of the listings (`GET /jobs`, `GET /audit`).
const PAGE_LIMIT_DEFAULT: usize = 50;
const PAGE_LIMIT_MAX: usize = 500;

/// A listing's position: what its opaque `cursor` parameter encodes (the last entry listed,
/// or examined), so pages neither repeat nor skip entries added meanwhile.
trait Cursor: Sized {
    /// The listing, for the error of a cursor it did not return.
    const LISTING: &'static str;
    /// The `cursor` parameter (and `nextCursor`) of this position.
    fn encode(&self) -> String;
    /// The position a `cursor` parameter names, if it is one.
    fn decode(raw: &str) -> Option<Self>;
}

/// `GET /jobs`: hex of the last listed job's `(created_ms, id)`.
impl Cursor for (u64, JobId) {
    const LISTING: &'static str = "GET /jobs";

    fn encode(&self) -> String {
        format!("{:016x}{}", self.0, self.1.simple())
    }

    fn decode(raw: &str) -> Option<Self> {
        if raw.len() != 48 || !raw.is_ascii() {
            return None;
        }
        let created_ms = u64::from_str_radix(&raw[..16], 16).ok()?;
        let id = uuid::Uuid::try_parse(&raw[16..]).ok()?;
        Some((created_ms, id))
    }
}

/// `GET /audit`: the sequence number of the last entry listed.
impl Cursor for u64 {
    const LISTING: &'static str = "GET /audit";

    fn encode(&self) -> String {
        self.to_string()
    }

    fn decode(raw: &str) -> Option<Self> {
        raw.parse::<u64>().ok().filter(|n| *n > 0)
    }
}

/// The owner whose jobs a caller lists or cancels: a user its own, an admin (and open mode)
/// everybody's (None).
fn owner_scope(p: &Params) -> Option<&str> {
    match &p.caller {
        Some(Principal { owner, role: Role::User }) => Some(owner.as_str()),
        None | Some(Principal { role: Role::Admin, .. }) => None,
    }
}

/// A listing's query parameters must be `known` ones.
fn known_params(p: &Params, known: &[&str]) -> Result<()> {
    match p.query.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(Error::validation(k, format!("unknown parameter; expected one of {}", known.join(", ")))),
        None => Ok(()),
    }
}

/// The page a listing request asks for: `limit` is 1 to [`PAGE_LIMIT_MAX`]
/// ([`PAGE_LIMIT_DEFAULT`] when absent), `cursor` a position the listing returned. The same
/// bounds and errors for every listing.
struct Page<C> {
    limit: usize,
    cursor: Option<C>,
}

impl<C: Cursor> Page<C> {
    fn parse(p: &Params) -> Result<Page<C>> {
        let limit = match p.query("limit") {
            None => PAGE_LIMIT_DEFAULT,
            Some(raw) => {
                raw.parse::<usize>().ok().filter(|n| (1..=PAGE_LIMIT_MAX).contains(n)).ok_or_else(|| {
                    Error::validation("limit", format!("must be an integer from 1 to {PAGE_LIMIT_MAX}"))
                })?
            }
        };
        let cursor =
            match p.query("cursor") {
                None => None,
                Some(raw) => Some(C::decode(raw).ok_or_else(|| {
                    Error::validation("cursor", format!("is not a cursor returned by {}", C::LISTING))
                })?),
            };
        Ok(Page { limit, cursor })
    }

    /// How many entries to read: one more than the page, to know whether more follow.
    fn read_max(&self) -> usize {
        self.limit + 1
    }

    /// `entries` (read up to [`Page::read_max`]) cut to the page; the position of its last
    /// entry when more followed, where the next page starts.
    fn cut<T>(&self, entries: &mut Vec<T>, position: impl Fn(&T) -> C) -> Option<C> {
        if entries.len() <= self.limit {
            return None;
        }
        entries.truncate(self.limit);
        entries.last().map(position)
    }
}

/// A time bound of `GET /jobs`: RFC 3339 or milliseconds since the Unix epoch.
fn parse_time(p: &Params, name: &str) -> Result<Option<u64>> {
    let Some(raw) = p.query(name) else { return Ok(None) };
    raw.parse::<u64>()
        .ok()
        .or_else(|| crate::wire::parse_rfc3339(raw))
        .map(Some)
        .ok_or_else(|| Error::validation(name, "must be an RFC 3339 date-time or milliseconds since the Unix epoch"))
}

/// Index entries one `GET /jobs` page examines at most: a filter that matches little
/// returns a short page (maybe empty) with a `nextCursor` instead of walking every job.
const LIST_SCAN_MAX: usize = 5_000;

/// `GET /jobs?status=&workflowId=&after=&before=&limit=&cursor=`: newest first,
/// `{jobs, nextCursor}`. The cursor is the position of the last job listed (or examined),
/// so pages neither repeat nor skip jobs when new ones arrive meanwhile (they sort before
/// it). A user's listing walks its own jobs only (the owner index); `after`, `before` and
/// the cursor bound the index range. A page also stops at [`LIST_SCAN_MAX`] entries
/// examined and at `MAX_RESPONSE_BYTES` of JSON, with a `nextCursor` to continue, so a
/// page may hold fewer than `limit` jobs while more follow.
pub fn list_jobs(gateway: &Gateway, p: &Params) -> Result<Resp> {
    known_params(p, &["status", "workflowId", "after", "before", "limit", "cursor"])?;
    let statuses = match p.query("status") {
        None => None,
        Some(raw) => {
            Some(raw.split(',').map(|s| JobState::parse(s.trim())).collect::<Option<Vec<_>>>().ok_or_else(|| {
                Error::validation(
                    "status",
                    "must be queued, running, succeeded, failed or canceled (comma-separated for several)",
                )
            })?)
        }
    };
    let workflow_id = p.query("workflowId").map(str::to_string);
    let (after, before) = (parse_time(p, "after")?, parse_time(p, "before")?);
    let page_asked = Page::<(u64, JobId)>::parse(p)?;
    let mut cursor = page_asked.cursor;
    // `before` is exclusive: start the scan there when it is nearer than the cursor.
    if let Some(b) = before
        && cursor.is_none_or(|(ms, _)| b <= ms)
    {
        cursor = Some((b, uuid::Uuid::nil()));
    }
    // A user sees only its own jobs: its range of the owner index, not a filter.
    let owner = owner_scope(p);
    let bytes_max = gateway.config.memory.response_bytes_max;
    let query = JobQuery {
        owner,
        statuses: statuses.as_deref(),
        workflow_id: workflow_id.as_deref(),
        after_ms: after,
        before: cursor,
        limit: page_asked.read_max(),
        scan_max: LIST_SCAN_MAX,
        bytes_max,
    };
    let page = gateway.jobs_page(&query)?;
    let mut jobs = page.jobs;
    let mut next = page_asked.cut(&mut jobs, |j| (j.created_ms, j.id)).or(page.resume);
    // The JSON is built job by job and stops past the byte budget (one job always fits).
    let links = gateway.config.links();
    let mut body = b"{\"jobs\":[".to_vec();
    let mut listed: Option<(u64, JobId)> = None;
    for j in jobs {
        let position = (j.created_ms, j.id);
        let item = serde_json::to_vec(&JobView::new(&gateway.reveal(j)?, None, &links))
            .map_err(|e| Error::internal(format!("encoding a job: {e}")))?;
        if let Some(last) = listed
            && body.len() + item.len() > bytes_max
        {
            next = Some(last);
            break;
        }
        if listed.is_some() {
            body.push(b',');
        }
        body.extend_from_slice(&item);
        listed = Some(position);
    }
    // The rest of a `JobList`: `],"nextCursor":...}`.
    let next_cursor = serde_json::to_string(&next.map(|c| c.encode())).map_err(Error::internal)?;
    body.extend_from_slice(format!("],\"nextCursor\":{next_cursor}}}").as_bytes());
    Ok(reply::bytes(StatusCode::OK, "application/json", body.into()))
}

/// Most log entries returned by `GET /jobs/{id}/logs`.
const LOG_ENTRIES_MAX: usize = 10_000;

/// `GET /jobs/{id}/logs?after=SEQ`: the job's event log, `{jobId, events: [{seq, at,
/// type, ...}]}`, from the entry after `SEQ`. At most [`LOG_ENTRIES_MAX`] entries and
/// `MAX_RESPONSE_BYTES` of them: a log cut short says `nextAfter` (the last seq listed),
/// to be passed as `after` for the rest. Log entries hold no inputs; under
/// `PRIVACY_MODE` any input text that a backend's message might echo is redacted as well.
pub fn job_logs(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let after = match p.query("after") {
        None => None,
        Some(raw) => Some(
            raw.parse::<u64>()
                .map_err(|_| Error::validation("after", "must be the seq of a log entry (an integer)"))?,
        ),
    };
    let job = visible_job(&ctx.gateway, p)?;
    let events = ctx.gateway.job_events(job.id, after, LOG_ENTRIES_MAX)?;
    let full = events.len() == LOG_ENTRIES_MAX;
    let texts = if ctx.gateway.config.privacy_mode { Some(reply::private_texts(&job)) } else { None };
    // Each entry as JSON, redacted under privacy mode, then capped by its size as sent.
    let entries = events.iter().map(|(seq, e)| {
        let entry = JobEventView::new(*seq, e);
        match &texts {
            Some(texts) => reply::redacted(&entry, texts),
            None => crate::wire::to_value(&entry),
        }
    });
    let (events, cut) = reply::capped_list(entries, ctx.gateway.config.memory.response_bytes_max);
    let next_after = if cut || full { events.last().and_then(|e| e["seq"].as_u64()) } else { None };
    Ok(reply::json(StatusCode::OK, &JobLog { job_id: job.id, status: job.state.into(), next_after, events }))
}

/// `POST /jobs/{id}/cancel` (recorded in the audit log).
pub async fn cancel_job(gateway: &Gateway, p: &Params) -> Result<Resp> {
    let id = visible_job(gateway, p)?.id;
    let job = gateway.cancel(id, &actor(p)).await?;
    Ok(reply::json(StatusCode::OK, &JobView::new(&job, None, &gateway.config.links())))
}

/// Most jobs one `POST /jobs/cancel` cancels, and by default.
const CANCEL_MAX: u32 = 1000;
const CANCEL_DEFAULT: u32 = 100;
/// Cancels in flight at once within one `POST /jobs/cancel` (they share commits).
const CANCEL_CONCURRENCY: usize = 32;

/// `POST /jobs/cancel`: cancel the queued and running jobs that match the filters (a
/// user's own, an admin's anyone's), newest first, at most `limit` (each audited as
/// `job.cancel`); `{canceled, more}`. A job that ends meanwhile is skipped.
pub async fn cancel_jobs(ctx: &Ctx, p: &Params, req: Request<Incoming>) -> Result<Resp> {
    let body = wire::parse::<request::JobCancelFilter>(&Value::Object(read_object(ctx, req).await?))?;
    let limit = body.limit.unwrap_or(CANCEL_DEFAULT);
    if !(1..=CANCEL_MAX).contains(&limit) {
        return Err(Error::validation("/limit", format!("must be from 1 to {CANCEL_MAX}")));
    }
    let mut states = Vec::new();
    for (i, status) in
        body.status.unwrap_or_else(|| vec![JobStatus::Queued, JobStatus::Running]).into_iter().enumerate()
    {
        states.push(match status {
            JobStatus::Queued => JobState::Queued,
            JobStatus::Running => JobState::Running,
            _ => {
                return Err(Error::validation(&format!("/status/{i}"), "only queued and running jobs can be canceled"));
            }
        });
    }
    let owner = owner_scope(p);
    let query = JobQuery {
        owner,
        statuses: Some(&states),
        workflow_id: body.workflow_id.as_deref(),
        after_ms: body.after.map(|t| t.0),
        before: body.before.map(|t| (t.0, uuid::Uuid::nil())),
        limit: limit as usize + 1,
        scan_max: LIST_SCAN_MAX,
        bytes_max: usize::MAX,
    };
    let page = ctx.gateway.jobs_page(&query)?;
    let more = page.jobs.len() > limit as usize || page.resume.is_some();
    let ids: Vec<JobId> = page.jobs.iter().take(limit as usize).map(|j| j.id).collect();
    let actor = actor(p);
    let mut canceled = Vec::new();
    for chunk in ids.chunks(CANCEL_CONCURRENCY) {
        let results = futures_util::future::join_all(chunk.iter().map(|id| ctx.gateway.cancel(*id, &actor))).await;
        for (id, result) in chunk.iter().zip(results) {
            match result {
                Ok(_) => canceled.push(*id),
                // Ended (or gone) meanwhile: nothing to cancel.
                Err(e) if matches!(e.code, ErrorCode::Conflict | ErrorCode::JobNotFound) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(reply::json(StatusCode::OK, &JobsCanceled { canceled, more }))
}

/// `GET /jobs/{id}/webhooks`: the job's webhook deliveries, oldest first.
pub fn job_webhooks(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let job = visible_job(&ctx.gateway, p)?;
    let deliveries = ctx.gateway.job_deliveries(job.id)?;
    // The oldest are listed; the rest did not fit in MAX_RESPONSE_BYTES.
    let (deliveries, truncated) =
        reply::capped_list(deliveries.iter().map(DeliveryView::new), ctx.gateway.config.memory.response_bytes_max);
    Ok(reply::json(StatusCode::OK, &JobDeliveries { job_id: job.id, deliveries, truncated }))
}

/// `POST /jobs/{id}/webhook/redeliver`: every delivery of the job due again now (same
/// `webhook-id`s), their endpoints enabled again; 409 if the job has none.
pub async fn redeliver_webhooks(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let job = visible_job(&ctx.gateway, p)?;
    let deliveries = ctx.gateway.redeliver(job.id, &actor(p)).await?.iter().map(DeliveryView::new).collect();
    Ok(reply::json(StatusCode::ACCEPTED, &JobDeliveries { job_id: job.id, deliveries, truncated: false }))
}

/// `GET /outputs/{id}`.
pub fn list_outputs(gateway: &Gateway, p: &Params) -> Result<Resp> {
    let job = visible_job(gateway, p)?;
    let links = gateway.config.links();
    let outputs = job.outputs.iter().map(|o| OutputView::new(&job, o, &links)).collect();
    Ok(reply::json(StatusCode::OK, &JobOutputs { job_id: job.id, status: job.state.into(), outputs }))
}

/// `GET|HEAD /outputs/{id}/{file}`: see [`download`].
pub async fn get_output(ctx: &Ctx, p: &Params, req: &Request<Incoming>) -> Result<Resp> {
    let job = visible_job(&ctx.gateway, p)?;
    let query = req.uri().query().unwrap_or("");
    download::output_file(&ctx.gateway, &job, &p.file, req.headers(), query, req.method() == http::Method::HEAD).await
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub fn metrics(ctx: &Ctx) -> Result<Resp> {
    let (m, l) = (&ctx.gateway.metrics, &ctx.limits);
    m.http_open("connections", l.connections.count(&()).1);
    m.http_open("event_streams", l.event_streams.count(&String::new()).1);
    m.http_open("sync_waits", l.sync_waits.count(&String::new()).1);
    let text = ctx.gateway.metrics_text()?;
    Ok(reply::bytes(StatusCode::OK, crate::metrics::CONTENT_TYPE, Bytes::from(text)))
}

/// `GET /audit?limit=&cursor=` (admins): the audit log newest first, `{entries,
/// nextCursor}`; the cursor is the sequence number of the last entry listed.
pub fn audit(ctx: &Ctx, p: &Params) -> Result<Resp> {
    known_params(p, &["limit", "cursor"])?;
    let page = Page::<u64>::parse(p)?;
    let mut entries = ctx.gateway.audit(page.cursor, page.read_max())?;
    let mut next_cursor = page.cut(&mut entries, |(seq, _)| *seq).map(|c| c.encode());
    let items = entries.iter().map(|(seq, e)| AuditEntryView::new(*seq, e));
    // A page is also cut at MAX_RESPONSE_BYTES; the cursor then continues after it.
    let (entries, cut) = reply::capped_list(items, ctx.gateway.config.memory.response_bytes_max);
    if cut {
        next_cursor = entries.last().map(|e| e.seq.encode());
    }
    Ok(reply::json(StatusCode::OK, &AuditPage { entries, next_cursor }))
}

/// Bytes read from a backup's file per chunk of its download.
const BACKUP_CHUNK_BYTES: usize = 256 << 10;

/// `POST /admin/backup` (admin): an online, consistent copy of the database
/// ([`Gateway::backup`](crate::service::Gateway::backup)), streamed as
/// `application/octet-stream` with its length, SHA-256 (`X-Backup-Sha256`) and entry count.
/// The file is read on blocking threads, one chunk at a time, and the backup slot is held
/// until the body is done or dropped.
pub async fn backup(ctx: &Ctx, p: &Params) -> Result<Resp> {
    use futures_util::StreamExt as _;
    use hyper::body::Frame;
    let copy = ctx.gateway.backup(&actor(p)).await?;
    let (size, sha, n_entries) = (copy.report.size_bytes, copy.sha256_hex.clone(), copy.report.n_entries);
    let chunks = futures_util::stream::unfold(Some(copy), |state| async move {
        let mut copy = state?;
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; BACKUP_CHUNK_BYTES];
            let n = std::io::Read::read(&mut copy.file, &mut buf);
            (
                copy,
                n.map(|n| {
                    buf.truncate(n);
                    buf
                }),
            )
        })
        .await;
        match read {
            Ok((copy, Ok(buf))) if !buf.is_empty() => Some((Bytes::from(buf), Some(copy))),
            Ok((_, Ok(_))) => None,
            Ok((_, Err(e))) => {
                // Content-Length tells the client the download was cut.
                tracing::error!(error = %e, "reading a backup failed; cutting its download short");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a backup failed; cutting its download short");
                None
            }
        }
    })
    .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)));
    let mut resp = http::Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync());
    let name = format!(
        "attachment; filename=\"gateway-{}.redb\"",
        crate::wire::rfc3339(crate::domain::now_ms()).replace(':', "")
    );
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    headers.insert("x-backup-sha256", HeaderValue::from_str(&sha).map_err(Error::internal)?);
    headers.insert("x-backup-entries", HeaderValue::from(n_entries));
    if let Ok(v) = HeaderValue::from_str(&name) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_scan_counts_inside_inputs_params_and_metadata_only() {
        let body = br#"{"workflowId": "a:b", "inputs": {"x": 1, "y": {"z": "q:{}"}, "w": [{"v": 2}]},
            "metadata": {"m": {"n": 1}}, "params": {"p": 1}, "other": {"o": 1, "o2": 2}}"#;
        assert_eq!(scan_members(body), MemberScan { inputs: 6, metadata: 2 });
        let escaped = br#"{"inputs": {"a\"b": 1, "c\\": {"d": 2}}, "x": "\\"}"#;
        assert_eq!(scan_members(escaped), MemberScan { inputs: 3, metadata: 0 });
        assert_eq!(scan_members(b"not json: at all"), MemberScan::default());
    }

    #[test]
    fn job_caps_refuse_wide_inputs_and_large_metadata() {
        let memory = MemoryLimits { input_keys_max: 4, metadata_bytes_max: 20, ..MemoryLimits::default() };
        let ok = parse_object(br#"{"inputs": {"a": 1, "b": {"c": 2}}, "params": {"d": 1}, "metadata": {"k": "v"}}"#);
        assert!(check_job_caps(&ok.unwrap(), &memory).is_ok());
        let wide = parse_object(br#"{"inputs": {"a": 1, "b": {"c": 2}}, "params": {"d": 1, "e": 2}}"#).unwrap();
        let e = check_job_caps(&wide, &memory).unwrap_err();
        assert_eq!(e.details.unwrap()[0]["path"], "/inputs");
        let big = parse_object(br#"{"metadata": {"k": "0123456789abcdef"}}"#).unwrap();
        let e = check_job_caps(&big, &memory).unwrap_err();
        assert_eq!(e.details.unwrap()[0]["path"], "/metadata");
    }

    #[test]
    fn cursors_round_trip_and_pages_are_cut_with_the_next_position() {
        let job = (0x1234_u64, uuid::Uuid::from_u128(7));
        let raw = job.encode();
        assert_eq!(raw.len(), 48);
        assert_eq!(<(u64, JobId)>::decode(&raw), Some(job));
        for bad in ["", "zz", &raw[1..], &format!("{}x", &raw[..47])] {
            assert_eq!(<(u64, JobId)>::decode(bad), None, "{bad:?}");
        }
        assert_eq!(u64::decode(&42u64.encode()), Some(42));
        assert_eq!((u64::decode("0"), u64::decode("-1"), u64::decode("a")), (None, None, None));
        let page = Page::<u64> { limit: 2, cursor: None };
        assert_eq!(page.read_max(), 3);
        let mut entries = vec![9u64, 8, 7];
        assert_eq!(page.cut(&mut entries, |e| *e), Some(8));
        assert_eq!(entries, [9, 8]);
        let mut short = vec![9u64];
        assert_eq!(page.cut(&mut short, |e| *e), None);
        assert_eq!(short, [9]);
    }

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth(br#"{"a": 1}"#), 1);
        assert_eq!(json_depth(br#"{"a": [[{"b": []}]]}"#), 5);
        assert_eq!(json_depth(br#"{"a": "[[[{{{\"]]]"}"#), 1);
        let deep = format!("{}{}", "[".repeat(JSON_DEPTH_MAX + 1), "]".repeat(JSON_DEPTH_MAX + 1));
        assert!(parse_object(format!("{{\"a\": {deep}}}").as_bytes()).is_err());
        let ok = format!("{}{}", "[".repeat(JSON_DEPTH_MAX - 1), "]".repeat(JSON_DEPTH_MAX - 1));
        assert!(parse_object(format!("{{\"a\": {ok}}}").as_bytes()).is_ok());
    }
}
