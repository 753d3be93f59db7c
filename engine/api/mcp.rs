//! `/mcp`: the Model Context Protocol over Streamable HTTP (the official Rust SDK, `rmcp`),
//! mounted in the API's own hyper server. Every registered workflow is a tool (its id the
//! name, its input JSON Schema the `inputSchema`), beside `get_job`.
//!
//! The router authenticates, rate-limits and checks the `Host` of `/mcp` like every other
//! route; [`serve`] then reads the body under the same cap and hands the request to rmcp
//! with a [`Call`] in its extensions: who is calling and the caps a call counts against.
//! rmcp hands the request's parts to the tool calls, which find the [`Call`] there.
//!
//! Running a workflow tool submits a job (owned by the caller, with an idempotency key
//! derived from the tool and its canonical arguments, so a retried call does not run twice;
//! a call repeated after its job failed or was canceled runs anew)
//! and waits for it like `POST /jobs?wait=` (holding a slot of `MAX_SYNC_WAITS` and of the
//! job cap), sending MCP progress notifications while it runs. The result holds the
//! outputs (images that fit inline as image content, the rest as resource links) and the
//! job as structured content; a job still running at the wait's end is returned with its
//! id for `get_job`. A refusal is a tool error whose text starts with the gateway's error
//! code and whose structured content is the REST error body.

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
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject, ListToolsResult,
    PaginatedRequestParams, ProgressNotificationParam, Resource, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use super::limits::{Client, Held, JobCap};
use super::reply::Resp;
use super::routes::{Ctx, Params};
use crate::auth::Principal;
use crate::domain::{Job, JobState};
use crate::error::{Error, ErrorCode, Result};
use crate::service::{Gateway, IdempotencyKey, SubmitRequest, Submitted};
use crate::wire::job::JobView;
use crate::wire::system::ErrorResponse;

/// Outputs up to this size (and images only) come back inline as image content.
const INLINE_IMAGE_BYTES_MAX: u64 = 1024 * 1024;
/// How often a running job's progress is looked at for a progress notification.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// The tool that reads a job.
const GET_JOB: &str = "get_job";
/// A call repeated after its job failed runs anew, at most this many times in a row (the
/// next repeat hands the last failure back).
const RETRIES_AFTER_FAILURE_MAX: usize = 8;

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
    /// The service; `stop` ends its sessions.
    pub fn new(stop: &tokio_util::sync::CancellationToken) -> Mcp {
        // `Host` and `Origin` are checked by the router's guard, as for every route.
        // No sessions: rmcp keeps a session (one per legacy `initialize`) until it idles out,
        // with no cap on how many; served statelessly, a request holds nothing after its
        // answer, and every revision's clients still work (tests/it/mcp.rs).
        let mut config = StreamableHttpServerConfig::default().disable_allowed_hosts().with_legacy_session_mode(false);
        config.cancellation_token = stop.child_token();
        Mcp { service: StreamableHttpService::new(|| Ok(Tools), Arc::new(LocalSessionManager::default()), config) }
    }
}

/// What a tool call needs from the request that carried it.
#[derive(Clone)]
struct Call {
    gateway: Gateway,
    caller: Option<Principal>,
    /// The per-client caps' key.
    client_key: String,
    sync_waits: Arc<Held<String>>,
    jobs: Option<Arc<JobCap>>,
    /// `scheme://host` of the request, for absolute links when `PUBLIC_URL` is not set.
    origin: String,
}

/// `POST`, `GET` and `DELETE /mcp`: the body read under `MAX_BODY_BYTES`, then rmcp.
pub async fn serve(ctx: &Ctx, p: &Params, client: &Client, req: Request<Incoming>) -> Result<Resp> {
    let (mut parts, body) = req.into_parts();
    let mut probe = Request::new(body);
    *probe.headers_mut() = parts.headers.clone();
    let bytes = super::handlers::read_body(ctx, probe).await?;
    let host = parts.headers.get(http::header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    parts.extensions.insert(Call {
        gateway: ctx.gateway.clone(),
        caller: p.caller.clone(),
        client_key: client.key.clone(),
        sync_waits: ctx.limits.sync_waits.clone(),
        jobs: ctx.limits.jobs.clone(),
        origin: format!("http://{host}"),
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
    Ok(resp.map(|b| b.boxed_unsync()))
}

/// The most of an rmcp refusal's text that goes into the error message.
const ERROR_TEXT_MAX: usize = 512;

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

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_instructions(
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
        let mut tools = Vec::new();
        let workflows = call.gateway.workflows().map_err(|e| McpError::internal_error(e.message, None))?;
        for w in workflows {
            let Ok((_, schema)) = call.gateway.workflow(&w.id) else { continue };
            let schema: JsonObject = match schema {
                Value::Object(m) => m,
                _ => continue,
            };
            let description =
                if w.description.is_empty() { w.name.clone() } else { format!("{}: {}", w.name, w.description) };
            tools.push(Tool::new(w.id, description, Arc::new(schema)));
        }
        let job_schema = json!({
            "type": "object",
            "properties": {"jobId": {"type": "string", "description": "The id a workflow tool returned."}},
            "required": ["jobId"],
            "additionalProperties": false,
        });
        let Value::Object(job_schema) = job_schema else { unreachable!("an object literal") };
        tools.push(Tool::new(GET_JOB, "Read a job: its status, progress and outputs.", Arc::new(job_schema)));
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
            GET_JOB => get_job(&call, &args).await,
            workflow => run_workflow(&call, workflow, args, &cx).await,
        };
        Ok(result.unwrap_or_else(|e| tool_error(&e)).into())
    }
}

/// A refusal as a tool error: `CODE: message`, the REST error body as structured content.
fn tool_error(e: &Error) -> CallToolResult {
    let mut result = CallToolResult::error(vec![ContentBlock::text(format!("{}: {}", e.code.as_str(), e.message))]);
    result.structured_content = serde_json::to_value(ErrorResponse::new(e, "")).ok();
    result
}

/// The `get_job` tool: the caller's own job (any job for an admin, and in open mode).
async fn get_job(call: &Call, args: &JsonObject) -> Result<CallToolResult> {
    let raw = args.get("jobId").and_then(Value::as_str).ok_or_else(|| Error::validation("/jobId", "is required"))?;
    let id: crate::domain::JobId = raw.parse().map_err(|_| Error::validation("/jobId", "must be a job id (a UUID)"))?;
    let job = call.gateway.job(id)?;
    if !super::handlers::may_see(call.caller.as_ref(), &job) {
        return Err(Error::new(ErrorCode::JobNotFound, format!("no job with id {id}")));
    }
    result_of(call, &job).await
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
    let wait = Duration::from_secs(call.gateway.config.sync_wait_max_s);
    let deadline = tokio::time::Instant::now() + wait;
    let token = cx.meta.get_progress_token();
    let mut last_sent = None;
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
                && p.max > 0.0
                && last_sent != Some((p.node.clone(), p.value))
            {
                last_sent = Some((p.node.clone(), p.value));
                let message = p.node.as_deref().map(|n| format!("node {n}"));
                let mut note = ProgressNotificationParam::new(token.clone(), p.value).with_total(p.max);
                if let Some(m) = message {
                    note = note.with_message(m);
                }
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
            "Job {} is {status}; call {GET_JOB} with jobId \"{}\" to read it later.",
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
    for (output, entry) in job.outputs.iter().zip(&view.outputs) {
        let url = absolute(&call.origin, &entry.url.0);
        if output.media_type.starts_with("image/") && output.size_bytes <= INLINE_IMAGE_BYTES_MAX {
            let bytes: Bytes = super::download::read(&call.gateway, output).await?;
            content.push(ContentBlock::image(
                base64::engine::general_purpose::STANDARD.encode(&bytes),
                &output.media_type,
            ));
        }
        let mut resource = Resource::new(url, output.name.clone());
        resource.mime_type = Some(output.media_type.clone());
        resource.size = Some(output.size_bytes);
        content.push(ContentBlock::resource_link(resource));
    }
    let mut result = CallToolResult::success(content);
    result.structured_content = serde_json::to_value(&view).ok();
    Ok(result)
}

/// `link` made absolute against the request's origin when `PUBLIC_URL` did not already.
fn absolute(origin: &str, link: &str) -> String {
    if link.starts_with("http://") || link.starts_with("https://") {
        link.to_string()
    } else {
        format!("{origin}{link}")
    }
}
