//! `/mcp`: the Model Context Protocol over Streamable HTTP (the official Rust SDK, `rmcp`),
//! mounted in the API's own hyper server. Every registered workflow is a tool (its id the
//! name, see [`tool_name`]; its input JSON Schema the `inputSchema`), beside the gateway's
//! own `list_workflows`, `get_job`, `list_jobs`, `cancel_job` and `get_output`.
//!
//! The router authenticates, rate-limits and checks the `Host` of `/mcp` like every other
//! route; [`serve`] then reads the body under the same cap and hands the request to rmcp
//! with a [`Call`] in its extensions: who is calling and the caps a call counts against.
//! rmcp hands the request's parts to the tool calls, which find the [`Call`] there. The
//! job tools answer what the REST routes answer, through the same handlers (a user sees
//! only its own jobs; an admin lists all).
//!
//! Running a workflow tool submits a job (owned by the caller, with an idempotency key
//! derived from the tool and its canonical arguments, so a retried call does not run twice;
//! a call repeated after its job failed or was canceled runs anew)
//! and waits for it (`MCP_WAIT_SECONDS`) like `POST /jobs?wait=` (holding a slot of
//! `MAX_SYNC_WAITS` and of the job cap), sending MCP progress notifications while it runs. The result holds the
//! outputs (images that fit `MCP_INLINE_IMAGE_BYTES` inline as image content, the rest as
//! resource links) and the job as structured content; a job still running at the wait's
//! end is returned with its id for `get_job`. A refusal is a tool error whose text starts
//! with the gateway's error code and whose structured content is the REST error body.
//!
//! A `subscriptions/listen` stream (protocol 2026-07-28) holds a slot of
//! `MAX_EVENT_STREAMS` and gets `notifications/tools/list_changed` after every change of
//! the workflows.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use rmcp::ErrorData as McpError;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, Resource, ServerCapabilities, ServerConfig, SubscriptionFilter,
    Tool,
};
use rmcp::service::{RequestContext, RoleServer, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::limits::{Client, Held, JobCap};
use super::reply::Resp;
use super::routes::{Ctx, Params};
use crate::auth::Principal;
use crate::domain::{Job, JobState, OutputRef};
use crate::error::{Error, ErrorCode, Result};
use crate::service::{Gateway, IdempotencyKey, SubmitRequest, Submitted};
use crate::wire::job::{JobView, OutputView};
use crate::wire::system::ErrorResponse;

/// How often a running job's progress is looked at for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The gateway's own tools.
const LIST_WORKFLOWS: &str = "list_workflows";
const GET_JOB: &str = "get_job";
const LIST_JOBS: &str = "list_jobs";
const CANCEL_JOB: &str = "cancel_job";
const GET_OUTPUT: &str = "get_output";
const OWN_TOOLS: [&str; 5] = [LIST_WORKFLOWS, GET_JOB, LIST_JOBS, CANCEL_JOB, GET_OUTPUT];
/// The longest tool name every MCP client takes (`^[A-Za-z0-9_-]{1,64}$`).
const TOOL_NAME_MAX: usize = 64;
/// Jobs `list_jobs` returns by default and at most (a page of `GET /jobs`).
const LIST_JOBS_DEFAULT: u64 = 20;
const LIST_JOBS_MAX: u64 = 100;
/// A call repeated after its job failed runs anew, at most this many times in a row (the
/// next repeat hands the last failure back).
const RETRIES_AFTER_FAILURE_MAX: usize = 8;
/// The JSON-RPC method of a change subscription.
const LISTEN: &str = "subscriptions/listen";

/// The MCP service of the API.
pub struct Mcp {
    service: StreamableHttpService<Tools, LocalSessionManager>,
}

impl std::fmt::Debug for Mcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Mcp")
    }
}

impl Mcp {
    /// The service; its event streams send a keep-alive comment every `keep_alive`.
    pub fn new(keep_alive: Duration) -> Mcp {
        // `Host` and `Origin` are checked by the router's guard, as for every route.
        // No sessions: rmcp keeps a session (one per legacy `initialize`) until it idles out,
        // with no cap on how many; served statelessly, a request holds nothing after its
        // answer, and every revision's clients still work (tests/it/mcp.rs).
        // The server's stop is not rmcp's token: cancelled with it, rmcp would drop the
        // answers of requests still open. The tools watch the stop themselves ([`Call`])
        // and answer: a waiting call with its job as it stands, a subscription with its
        // final result.
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .with_legacy_session_mode(false)
            .with_sse_keep_alive(Some(keep_alive));
        Mcp { service: StreamableHttpService::new(|| Ok(Tools), Arc::new(LocalSessionManager::default()), config) }
    }
}

/// What a tool call needs from the request that carried it.
#[derive(Clone)]
struct Call {
    gateway: Gateway,
    caller: Option<Principal>,
    /// The request's correlation id (for the audit log of `cancel_job`).
    correlation_id: String,
    /// The per-client caps' key.
    client_key: String,
    sync_waits: Arc<Held<String>>,
    jobs: Option<Arc<JobCap>>,
    /// `scheme://host` of the request, for absolute links when `PUBLIC_URL` is not set.
    origin: String,
    /// For a `subscriptions/listen` request: the workflows' changes, subscribed before
    /// the request reached rmcp (so no change falls between its acknowledgment and the
    /// first wait).
    changes: Option<tokio::sync::watch::Receiver<u64>>,
    /// Cancelled when the server stops.
    stop: CancellationToken,
}

/// The member of a JSON-RPC message [`serve`] looks at.
#[derive(Deserialize)]
struct Method<'a> {
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
}

/// `POST`, `GET` and `DELETE /mcp`: the body read under `MAX_BODY_BYTES`, then rmcp. A
/// `subscriptions/listen` request holds a slot of the event-stream caps while its answer
/// streams.
pub async fn serve(ctx: &Ctx, p: &Params, client: &Client, req: Request<Incoming>) -> Result<Resp> {
    let (mut parts, body) = req.into_parts();
    let mut probe = Request::new(body);
    *probe.headers_mut() = parts.headers.clone();
    let bytes = super::handlers::read_body(ctx, probe).await?;
    let listen = serde_json::from_slice::<Method>(&bytes).ok().and_then(|m| m.method).is_some_and(|m| m == LISTEN);
    let hold = if listen { Some(ctx.limits.event_streams.hold(&client.key)?) } else { None };
    let host = parts.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    parts.extensions.insert(Call {
        gateway: ctx.gateway.clone(),
        caller: p.caller.clone(),
        correlation_id: p.correlation_id.clone(),
        client_key: client.key.clone(),
        sync_waits: ctx.limits.sync_waits.clone(),
        jobs: ctx.limits.jobs.clone(),
        origin: format!("http://{host}"),
        changes: listen.then(|| ctx.gateway.workflows_changed()),
        stop: ctx.stop.clone(),
    });
    let resp = ctx.mcp.service.handle(Request::from_parts(parts, Full::new(bytes))).await;
    let status = resp.status();
    let json_rpc =
        resp.headers().get(http::header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !json_rpc {
        // rmcp's plain-text refusals are answered as every error of the API is; a JSON-RPC
        // error body is what MCP clients read, and stays.
        let text = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        let message = String::from_utf8_lossy(&text[..text.len().min(ERROR_TEXT_MAX)]).trim().to_string();
        let code = match status {
            http::StatusCode::NOT_FOUND => ErrorCode::NotFound,
            http::StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
            s if s.is_server_error() => ErrorCode::Internal,
            _ => ErrorCode::ValidationError,
        };
        let message = if code == ErrorCode::Internal {
            tracing::warn!(status = status.as_u16(), error = %message, "the MCP service failed");
            "the MCP service failed (details in the gateway log)".to_string()
        } else if message.is_empty() {
            format!("MCP refused the request ({status})")
        } else {
            message
        };
        return Err(Error::new(code, message));
    }
    // The stream's slot is given back when its body is dropped (answered or abandoned).
    Ok(resp.map(|b| {
        b.map_frame(move |frame| {
            let _slot = &hold;
            frame
        })
        .boxed_unsync()
    }))
}

/// The most of an rmcp refusal's text that goes into the error message.
const ERROR_TEXT_MAX: usize = 512;

/// The tool name of workflow `id`: the id itself when every MCP client takes it as a name
/// (1 to 64 of `A-Z a-z 0-9 _ -`) and it is not one of the gateway's own tools; otherwise
/// `wf_`, the id's allowed characters (up to 40), `_` and 8 hex digits of the id's BLAKE3.
pub fn tool_name(id: &str) -> Cow<'_, str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !id.is_empty() && id.len() <= TOOL_NAME_MAX && id.chars().all(allowed) && !OWN_TOOLS.contains(&id) {
        return Cow::Borrowed(id);
    }
    let kept: String = id.chars().filter(|c| allowed(*c)).take(40).collect();
    let hash = blake3::hash(id.as_bytes()).to_hex();
    Cow::Owned(format!("wf_{kept}_{}", &hash[..8]))
}

/// The workflow whose tool is `name`.
fn workflow_of_tool(gateway: &Gateway, name: &str) -> Result<String> {
    if tool_name(name) == name {
        match gateway.workflow(name) {
            Ok((w, _)) => return Ok(w.id),
            Err(e) if e.code != ErrorCode::WorkflowNotFound => return Err(e),
            Err(_) => {}
        }
    }
    gateway.workflows()?.into_iter().map(|w| w.id).find(|id| tool_name(id) == name).ok_or_else(|| {
        Error::new(
            ErrorCode::WorkflowNotFound,
            format!("no tool named {name:?} (list_workflows names every workflow's)"),
        )
    })
}

/// The tools; stateless (every call finds its [`Call`] in the request).
#[derive(Clone)]
struct Tools;

fn call_of(cx: &RequestContext<RoleServer>) -> std::result::Result<Call, McpError> {
    cx.extensions
        .get::<http::request::Parts>()
        .and_then(|p| p.extensions.get::<Call>())
        .cloned()
        .ok_or_else(|| McpError::internal_error("the request carries no caller", None))
}

/// An input schema: an object of `properties`, `required` ones, nothing else.
fn object_schema(properties: Value, required: &[&str]) -> Arc<JsonObject> {
    let schema = json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    });
    match schema {
        Value::Object(m) => Arc::new(m),
        _ => unreachable!("an object literal"),
    }
}

/// The gateway's own tools.
fn own_tools() -> Vec<Tool> {
    let job_id = json!({"type": "string", "description": "A job's id (what a workflow tool returned)."});
    vec![
        Tool::new(
            LIST_WORKFLOWS,
            "List the workflows: id, name, description, version and the tool that runs each.",
            object_schema(json!({}), &[]),
        ),
        Tool::new(
            GET_JOB,
            "Read a job: its status, progress and outputs (images inline when small).",
            object_schema(json!({"jobId": job_id}), &["jobId"]),
        ),
        Tool::new(
            LIST_JOBS,
            "List jobs, newest first (a user's own; an admin's all), optionally by status or workflow. \
             Pass the answer's nextCursor as cursor for the next page.",
            object_schema(
                json!({
                    "status": {
                        "type": "array",
                        "items": {"enum": ["queued", "running", "succeeded", "failed", "canceled"]},
                        "description": "Only jobs in one of these states.",
                    },
                    "workflowId": {"type": "string", "description": "Only jobs of this workflow."},
                    "limit": {"type": "integer", "minimum": 1, "maximum": LIST_JOBS_MAX, "default": LIST_JOBS_DEFAULT},
                    "cursor": {"type": "string", "description": "The nextCursor of the previous page."},
                }),
                &[],
            ),
        ),
        Tool::new(CANCEL_JOB, "Cancel a queued or running job.", object_schema(json!({"jobId": job_id}), &["jobId"])),
        Tool::new(
            GET_OUTPUT,
            "A finished job's outputs (or the one named): images inline when small, links to download.",
            object_schema(
                json!({"jobId": job_id, "name": {"type": "string", "description": "One output's file name."}}),
                &["jobId"],
            ),
        ),
    ]
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_tool_list_changed().build())
            .with_server_info(Implementation::new("comfyui-gateway", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each workflow tool runs a ComfyUI workflow and returns its outputs; a job that is still \
                 running when the call returns can be read with get_job.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        cx: RequestContext<RoleServer>,
    ) -> std::result::Result<ListToolsResult, McpError> {
        let call = call_of(&cx)?;
        let mut tools = own_tools();
        let workflows = call.gateway.workflows().map_err(|e| McpError::internal_error(e.message, None))?;
        for w in workflows {
            let Ok((_, schema)) = call.gateway.workflow(&w.id) else { continue };
            let schema: JsonObject = match schema {
                Value::Object(m) => m,
                _ => continue,
            };
            let description =
                if w.description.is_empty() { w.name.clone() } else { format!("{}: {}", w.name, w.description) };
            tools.push(Tool::new(tool_name(&w.id).into_owned(), description, Arc::new(schema)));
        }
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> std::result::Result<CallToolResponse, McpError> {
        let call = call_of(&cx)?;
        let args = request.arguments.clone().unwrap_or_default();
        let result = match request.name.as_ref() {
            LIST_WORKFLOWS => list_workflows(&call, args).await,
            GET_JOB => get_job(&call, args).await,
            LIST_JOBS => list_jobs(&call, args).await,
            CANCEL_JOB => cancel_job(&call, args).await,
            GET_OUTPUT => get_output(&call, args).await,
            tool => match workflow_of_tool(&call.gateway, tool) {
                Ok(workflow) => run_workflow(&call, &workflow, args, &cx).await,
                // An unknown tool is a protocol error (MCP's "Unknown tool"), not a result.
                Err(e) if e.code == ErrorCode::WorkflowNotFound => {
                    return Err(McpError::invalid_params(
                        format!("Unknown tool: {}", e.message),
                        serde_json::to_value(ErrorResponse::new(&e, "")).ok(),
                    ));
                }
                Err(e) => Err(e),
            },
        };
        Ok(result.unwrap_or_else(|e| tool_error(&e)).into())
    }

    fn accepted_subscription_filter(&self, _requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        Some(SubscriptionFilter::builder().tools_list_changed().build())
    }

    /// A `subscriptions/listen` stream: `notifications/tools/list_changed` after every
    /// change of the workflows, until the client closes it or the server stops.
    async fn listen(&self, subscription: SubscriptionContext) -> std::result::Result<(), McpError> {
        let call = call_of(subscription.request_context())?;
        let Some(mut changes) = call.changes else {
            return Err(McpError::internal_error("the subscription carries no change feed", None));
        };
        loop {
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() || subscription.sink().notify_tool_list_changed().await.is_err() {
                        return Ok(());
                    }
                }
                _ = subscription.cancelled() => return Ok(()),
                _ = call.stop.cancelled() => return Ok(()),
            }
        }
    }
}

/// A refusal as a tool error: `CODE: message`, the REST error body as structured content.
fn tool_error(e: &Error) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(format!("{}: {}", e.code.as_str(), e.message))]);
    result.structured_content = serde_json::to_value(ErrorResponse::new(e, "")).ok();
    result
}

/// A tool's arguments as `T`: unknown members and wrong types are validation errors.
fn arguments<T: DeserializeOwned>(args: JsonObject) -> Result<T> {
    serde_json::from_value(Value::Object(args)).map_err(|e| Error::validation("/arguments", e.to_string()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct JobArguments {
    job_id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct OutputArguments {
    job_id: String,
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListJobsArguments {
    status: Option<Vec<String>>,
    workflow_id: Option<String>,
    limit: Option<u64>,
    cursor: Option<String>,
}

/// The REST handlers' parameters for a call: its caller, and a job id or query.
fn params(call: &Call, id: String, query: Vec<(String, String)>) -> Params {
    Params { caller: call.caller.clone(), correlation_id: call.correlation_id.clone(), id, file: String::new(), query }
}

/// A REST handler's JSON answer as a tool result: the JSON as text and as structured content.
async fn json_result(resp: Resp) -> Result<CallToolResult> {
    let bytes = resp.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("a handler's JSON: {e}")))?;
    Ok(structured(value))
}

fn structured(value: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(value.to_string())]);
    result.structured_content = Some(value);
    result
}

/// `list_workflows`: `GET /workflows`, each with the name of its tool.
async fn list_workflows(call: &Call, args: JsonObject) -> Result<CallToolResult> {
    let NoArguments {} = arguments(args)?;
    let mut result = json_result(super::handlers::list_workflows(&call.gateway)?).await?;
    if let Some(Value::Array(workflows)) = result.structured_content.as_mut().and_then(|v| v.get_mut("workflows")) {
        for w in workflows.iter_mut() {
            let tool = w.get("id").and_then(Value::as_str).map(|id| tool_name(id).into_owned());
            if let (Some(tool), Value::Object(m)) = (tool, w) {
                m.insert("tool".to_string(), Value::String(tool));
            }
        }
    }
    Ok(match result.structured_content {
        Some(value) => structured(value),
        None => result,
    })
}

/// `get_job`: the caller's own job (any job for an admin, and in open mode).
async fn get_job(call: &Call, args: JsonObject) -> Result<CallToolResult> {
    let JobArguments { job_id } = arguments(args)?;
    let job = super::handlers::visible_job(&call.gateway, &params(call, job_id, Vec::new()))?;
    result_of(call, &job).await
}

/// `list_jobs`: `GET /jobs` (a user's own jobs, an admin's all).
async fn list_jobs(call: &Call, args: JsonObject) -> Result<CallToolResult> {
    let ListJobsArguments { status, workflow_id, limit, cursor } = arguments(args)?;
    let limit = limit.unwrap_or(LIST_JOBS_DEFAULT);
    if !(1..=LIST_JOBS_MAX).contains(&limit) {
        return Err(Error::validation("/limit", format!("must be from 1 to {LIST_JOBS_MAX}")));
    }
    let mut query = vec![("limit".to_string(), limit.to_string())];
    if let Some(status) = status {
        query.push(("status".to_string(), status.join(",")));
    }
    query.extend(workflow_id.map(|w| ("workflowId".to_string(), w)));
    query.extend(cursor.map(|c| ("cursor".to_string(), c)));
    json_result(super::handlers::list_jobs(&call.gateway, &params(call, String::new(), query))?).await
}

/// `cancel_job`: `POST /jobs/{id}/cancel` (audited).
async fn cancel_job(call: &Call, args: JsonObject) -> Result<CallToolResult> {
    let JobArguments { job_id } = arguments(args)?;
    json_result(super::handlers::cancel_job(&call.gateway, &params(call, job_id, Vec::new())).await?).await
}

/// `get_output`: a job's outputs, or the one named, as content (inline images, links) with
/// their `GET /outputs/{id}` entries as structured content.
async fn get_output(call: &Call, args: JsonObject) -> Result<CallToolResult> {
    let OutputArguments { job_id, name } = arguments(args)?;
    let job = super::handlers::visible_job(&call.gateway, &params(call, job_id, Vec::new()))?;
    let outputs: Vec<&OutputRef> = match &name {
        None => job.outputs.iter().collect(),
        Some(n) => vec![
            job.outputs
                .iter()
                .find(|o| &o.name == n)
                .ok_or_else(|| Error::new(ErrorCode::NotFound, format!("job {} has no output named {n:?}", job.id)))?,
        ],
    };
    let mut content = vec![ContentBlock::text(if outputs.is_empty() {
        format!("Job {} has no outputs (yet).", job.id)
    } else {
        format!("{} output(s) of job {}.", outputs.len(), job.id)
    })];
    content.extend(output_blocks(call, &job, &outputs).await?);
    let links = call.gateway.config.links();
    let entries: Vec<OutputView> = outputs.iter().map(|o| OutputView::new(&job, o, &links)).collect();
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(json!({"jobId": job.id, "outputs": entries}));
    Ok(result)
}

/// A workflow tool: submit, wait, report progress, return the outputs.
async fn run_workflow(
    call: &Call,
    workflow: &str,
    args: JsonObject,
    cx: &RequestContext<RoleServer>,
) -> Result<CallToolResult> {
    let _waiting = call.sync_waits.hold(&call.client_key)?;
    let slot = match &call.jobs {
        Some(cap) => {
            Some(cap.reserve(&call.client_key, |id| call.gateway.job(id).map_or(true, |j| j.state.is_terminal()))?)
        }
        None => None,
    };
    let body = json!({"workflowId": workflow, "inputs": Value::Object(args.clone())});
    let fingerprint = crate::canonical::request_fingerprint(&body, &[]);
    let base: String =
        std::iter::once("mcp-".to_string()).chain(fingerprint[..16].iter().map(|b| format!("{b:02x}"))).collect();
    let mut rx = call.gateway.subscribe();
    let mut key = base.clone();
    let mut hops = 0;
    let job = loop {
        let submitted = call
            .gateway
            .submit(SubmitRequest {
                workflow_id: workflow.to_string(),
                inputs: Value::Object(args.clone()),
                priority: 0,
                metadata: None,
                callback_url: None,
                files: Vec::new(),
                owner: call.caller.as_ref().map(|c| c.owner.clone()),
                cache: true,
                webhook_events: 0,
                idempotency: Some(IdempotencyKey { key: key.clone(), fingerprint }),
            })
            .await?;
        let job = submitted.job().clone();
        let failed = matches!(job.state, JobState::Failed | JobState::Canceled);
        if !(matches!(submitted, Submitted::Replayed { .. }) && failed) || hops == RETRIES_AFTER_FAILURE_MAX {
            break job;
        }
        // The same call after its job failed or was canceled runs anew (a replay would hand
        // the failure back until the key expires); that run's key names the failed job, so
        // a retry of it is a replay again.
        key = format!("{base}-{}", job.id);
        hops += 1;
    };
    if let Some(slot) = slot {
        slot.commit(job.id);
    }
    let wait = Duration::from_secs(call.gateway.config.mcp_wait_seconds);
    let deadline = tokio::time::Instant::now() + wait;
    let token = cx.meta.get_progress_token();
    // MCP wants every notification's progress above the last: the job's percent is, except
    // when a job moved to another backend starts again; those readings wait to pass it.
    let mut sent = 0.0;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    let mut closed = false;
    let job = loop {
        let current = call.gateway.job(job.id)?;
        if current.state.is_terminal() {
            break current;
        }
        if let Some(token) = &token {
            let live = call.gateway.live_status(current.id, current.queue_key);
            if let Some(p) = live.progress
                && p.percent > sent
            {
                sent = p.percent;
                let node = match (&p.node, &p.class) {
                    (Some(node), Some(class)) => format!("node {node} ({class})"),
                    (Some(node), None) => format!("node {node}"),
                    _ => "running".to_string(),
                };
                let message = if p.max > 0.0 { format!("{node}: step {} of {}", p.value, p.max) } else { node };
                let note =
                    ProgressNotificationParam::new(token.clone(), p.percent).with_total(100.0).with_message(message);
                let _ = cx.peer.notify_progress(note).await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break current,
            // A closed channel (the scheduler stopping) is waited out by the tick instead of
            // being polled in a loop.
            r = rx.recv(), if !closed => closed = matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)),
            _ = tick.tick() => {}
            _ = cx.ct.cancelled() => break current,
            _ = call.stop.cancelled() => break current,
        }
    };
    result_of(call, &job).await
}

/// A job as a tool result: its outputs (inline images, links for the rest) and the job's
/// JSON as structured content; an unfinished job says how to read it later.
async fn result_of(call: &Call, job: &Job) -> Result<CallToolResult> {
    let links = call.gateway.config.links();
    let view = JobView::new(job, None, &links);
    let mut content = Vec::new();
    let status =
        serde_json::to_value(view.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    if !job.state.is_terminal() {
        content.push(ContentBlock::text(format!(
            "Job {} is {status}; call {GET_JOB} with jobId \"{}\" to read it later (or make the same call \
             again: it is the same job, waited for anew).",
            job.id, job.id
        )));
    } else if let Some(err) = &job.error {
        let failed = Error::new(err.code, err.message.clone());
        let mut result = tool_error(&failed);
        result.structured_content = serde_json::to_value(&view).ok();
        return Ok(result);
    } else {
        content.push(ContentBlock::text(format!("Job {} {status} with {} output(s).", job.id, job.outputs.len())));
    }
    content.extend(output_blocks(call, job, &job.outputs.iter().collect::<Vec<_>>()).await?);
    let mut result = CallToolResult::success(content);
    result.structured_content = serde_json::to_value(&view).ok();
    Ok(result)
}

/// `outputs` of `job` as content: each a resource link (absolute URL), images also inline
/// when they fit `MCP_INLINE_IMAGE_BYTES` and, all together, `MAX_RESPONSE_BYTES`.
async fn output_blocks(call: &Call, job: &Job, outputs: &[&OutputRef]) -> Result<Vec<ContentBlock>> {
    let config = &call.gateway.config;
    let links = config.links();
    let mut budget = config.memory.response_bytes_max as u64;
    let mut content = Vec::new();
    for output in outputs {
        let entry = OutputView::new(job, output, &links);
        let encoded = output.size_bytes.div_ceil(3) * 4;
        if output.media_type.starts_with("image/")
            && output.size_bytes <= config.mcp_inline_image_bytes
            && encoded <= budget
        {
            budget -= encoded;
            let bytes: Bytes = super::download::read(&call.gateway, output).await?;
            content.push(ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(&bytes),
                &output.media_type,
            ));
        }
        let mut resource = Resource::new(absolute(&call.origin, &entry.url.0), output.name.clone());
        resource.mime_type = Some(output.media_type.clone());
        resource.size = Some(output.size_bytes);
        content.push(ContentBlock::resource_link(resource));
    }
    Ok(content)
}

/// `link` made absolute against the request's origin when `PUBLIC_URL` did not already.
fn absolute(origin: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        link.to_string()
    } else {
        format!("{origin}{link}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workflow_id_is_its_tool_name_when_clients_take_it() {
        assert_eq!(tool_name("icon_512"), "icon_512");
        assert_eq!(tool_name("Upscale-2x"), "Upscale-2x");
        let long = "a".repeat(TOOL_NAME_MAX);
        assert_eq!(tool_name(&long), long.as_str());
    }

    #[test]
    fn other_workflow_ids_get_a_distinct_valid_name() {
        let names: Vec<String> =
            ["get_job", "list_workflows", "sdxl/portrait v2", "sdxl portrait v2", "é", &"b".repeat(65)]
                .iter()
                .map(|id| tool_name(id).into_owned())
                .collect();
        for name in &names {
            assert!(name.starts_with("wf_"), "{name}");
            assert!(name.len() <= TOOL_NAME_MAX, "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'), "{name}");
            assert!(!OWN_TOOLS.contains(&name.as_str()));
            // A derived name is stable and maps back to itself.
            assert_eq!(tool_name(name), name.as_str());
        }
        assert_eq!(names[0], tool_name("get_job"));
        let unique: std::collections::HashSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        assert!(names[2].starts_with("wf_sdxlportraitv2_"), "{}", names[2]);
    }

    #[test]
    fn the_own_tools_schemas_accept_what_their_arguments_take() {
        for tool in own_tools() {
            let properties =
                tool.input_schema.get("properties").and_then(Value::as_object).cloned().unwrap_or_default();
            let sample: JsonObject = properties
                .iter()
                .map(|(k, v)| {
                    let value = match v.get("type").and_then(Value::as_str) {
                        Some("integer") => json!(5),
                        Some("array") => json!(["queued"]),
                        _ => json!("x"),
                    };
                    (k.clone(), value)
                })
                .collect();
            let parsed = match tool.name.as_ref() {
                LIST_WORKFLOWS => arguments::<NoArguments>(sample).map(|_| ()),
                GET_JOB | CANCEL_JOB => arguments::<JobArguments>(sample).map(|_| ()),
                GET_OUTPUT => arguments::<OutputArguments>(sample).map(|_| ()),
                LIST_JOBS => arguments::<ListJobsArguments>(sample).map(|_| ()),
                other => panic!("a tool without arguments: {other}"),
            };
            assert!(parsed.is_ok(), "{}: {:?}", tool.name, parsed.err().map(|e| e.message));
            let mut extra = JsonObject::new();
            extra.insert("jobId".into(), json!("x"));
            extra.insert("unknownMember".into(), json!(1));
            assert!(arguments::<JobArguments>(extra).is_err());
        }
    }
}
