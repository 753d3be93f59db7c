//! Handlers: read the request (bounded body, JSON with field-precise errors), call the
//! service, shape the answer. No business logic lives here.

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::download;
use super::reply::{self, Resp};
use super::routes::{Ctx, Params};
use crate::domain::{JobId, WorkflowRecord};
use crate::error::{Error, ErrorCode, Result};
use crate::service::{SubmitRequest, WorkflowDefinition};

/// Read the whole body, at most `MAX_BODY_BYTES`.
async fn read_body(ctx: &Ctx, req: Request<Incoming>) -> Result<Bytes> {
    let max = ctx.gateway.config.body_bytes_max;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large(max));
    }
    match Limited::new(req.into_body(), max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large(max)),
        Err(e) => Err(Error::validation("/", format!("could not read the request body: {e}"))),
    }
}

fn too_large(max: usize) -> Error {
    Error::new(ErrorCode::PayloadTooLarge, format!("the request body is larger than {max} bytes"))
}

/// Parse a JSON object body, naming the position of a syntax error.
async fn read_object(ctx: &Ctx, req: Request<Incoming>) -> Result<Map<String, Value>> {
    parse_object(&read_body(ctx, req).await?)
}

/// Parse a JSON object, naming the position of a syntax error.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>> {
    if body.is_empty() {
        return Err(Error::validation("/", "the request body is empty; a JSON object is expected"));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::validation("/", "the request body must be a JSON object")),
        Err(e) => {
            Err(Error::validation("/", format!("malformed JSON at line {} column {}: {e}", e.line(), e.column())))
        }
    }
}

fn reject_unknown(body: &Map<String, Value>, known: &[&str]) -> Result<()> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => {
            Err(Error::validation(&format!("/{k}"), format!("unknown field; expected one of {}", known.join(", "))))
        }
        None => Ok(()),
    }
}

fn opt_string(body: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::validation(&format!("/{key}"), "must be a string")),
    }
}

fn req_string(body: &Map<String, Value>, key: &str) -> Result<String> {
    opt_string(body, key)?.ok_or_else(|| Error::validation(&format!("/{key}"), "is required"))
}

fn opt_object(body: &Map<String, Value>, key: &str) -> Result<Option<Map<String, Value>>> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m.clone())),
        Some(_) => Err(Error::validation(&format!("/{key}"), "must be a JSON object")),
    }
}

fn parse_job_id(raw: &str) -> Result<JobId> {
    uuid::Uuid::parse_str(raw).map_err(|_| Error::new(ErrorCode::JobNotFound, format!("no job with id {raw:?}")))
}

/// `high`, `normal`, `low`, or an integer level.
fn parse_priority(v: Option<&Value>) -> Result<i32> {
    let bad = || Error::validation("/priority", "must be \"high\", \"normal\", \"low\" or an integer from -100 to 100");
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => match s.as_str() {
            "high" => Ok(1),
            "normal" => Ok(0),
            "low" => Ok(-1),
            _ => Err(bad()),
        },
        Some(Value::Number(n)) => {
            n.as_i64().and_then(|n| i32::try_from(n).ok()).filter(|n| n.abs() <= 100).ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

/// `GET /health`: 200 when at least one backend is reachable, else 503.
pub async fn health(ctx: &Ctx) -> Result<Resp> {
    let backends = ctx.gateway.scheduler.backends();
    let reachable = backends.iter().any(|b| b.reachable);
    let list: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({
                "url": b.url,
                "reachable": b.reachable,
                "inFlight": b.in_flight,
                "comfyuiVersion": b.info.comfyui_version,
                "lastError": b.info.last_error,
            })
        })
        .collect();
    let body = json!({
        "ok": reachable,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": ctx.started.elapsed().as_secs(),
        "queueDepth": ctx.gateway.scheduler.queue_depth(),
        "comfyui": {
            "reachable": reachable,
            "url": backends.first().map(|b| b.url.clone()),
            "backends": list,
        },
    });
    let status = if reachable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(reply::json(status, &body))
}

/// `GET /capabilities`.
pub fn capabilities(ctx: &Ctx) -> Result<Resp> {
    let workflows: Vec<String> = ctx.gateway.registry.workflows()?.into_iter().map(|w| w.id).collect();
    let c = &ctx.gateway.config;
    Ok(reply::json(
        StatusCode::OK,
        &json!({
            "workflows": workflows,
            "maxSize": c.image_size_max,
            "maxBatch": c.batch_size_max,
            "formats": ["png", "jpeg", "webp", "gif", "mp4", "webm", "wav", "mp3", "flac", "txt", "json"],
            "storageProvider": "local",
            "maxBodyBytes": c.body_bytes_max,
            "priorities": ["high", "normal", "low"],
        }),
    ))
}

/// `GET /openapi.json`, with every registered workflow's input schema.
pub fn openapi(ctx: &Ctx) -> Result<Resp> {
    let mut workflows = Vec::new();
    for w in ctx.gateway.registry.workflows()? {
        let (_, schema) = ctx.gateway.registry.workflow(&w.id)?;
        workflows.push((w.id, schema));
    }
    Ok(reply::json(StatusCode::OK, &super::openapi::document(&workflows)))
}

fn workflow_summary(w: &WorkflowRecord) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "description": w.description,
        "version": w.version,
        "updatedAt": reply::rfc3339(w.created_ms),
    })
}

/// `GET /workflows`.
pub fn list_workflows(ctx: &Ctx) -> Result<Resp> {
    let list: Vec<Value> = ctx.gateway.registry.workflows()?.iter().map(workflow_summary).collect();
    Ok(reply::json(StatusCode::OK, &json!({ "workflows": list })))
}

fn workflow_details(w: &WorkflowRecord, schema: Value) -> Value {
    let mut v = workflow_summary(w);
    v["inputSchema"] = schema;
    v["workflow"] = serde_json::from_str(&w.template_json).unwrap_or(Value::Null);
    v["defaults"] = w.defaults_json.as_deref().and_then(|d| serde_json::from_str(d).ok()).unwrap_or(json!({}));
    v
}

/// `GET /workflows/{id}`.
pub fn get_workflow(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let (w, schema) = ctx.gateway.registry.workflow(&p.id)?;
    Ok(reply::json(StatusCode::OK, &workflow_details(&w, schema)))
}

const WORKFLOW_FIELDS: &[&str] = &["id", "name", "description", "workflow", "inputSchema", "defaults", "plugin"];

fn workflow_definition(body: &Map<String, Value>, id: String) -> Result<WorkflowDefinition> {
    reject_unknown(body, WORKFLOW_FIELDS)?;
    if body.get("plugin").is_some_and(|p| !p.is_null()) {
        return Err(Error::validation("/plugin", "plugins are not supported by this version yet"));
    }
    let template = match body.get("workflow") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(Error::validation("/workflow", "must be an API-format workflow (a JSON object of nodes)"));
        }
        None => return Err(Error::validation("/workflow", "is required")),
    };
    let input_schema = match body.get("inputSchema") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(Error::validation("/inputSchema", "must be a JSON Schema object")),
    };
    Ok(WorkflowDefinition {
        id,
        name: opt_string(body, "name")?,
        description: opt_string(body, "description")?,
        template,
        input_schema,
        defaults: opt_object(body, "defaults")?,
    })
}

/// `POST /workflows`: 201 with the new workflow.
pub async fn create_workflow(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp> {
    let body = read_object(ctx, req).await?;
    let id = req_string(&body, "id")?;
    let def = workflow_definition(&body, id)?;
    let rec = ctx.gateway.registry.put_workflow(def, false).await?;
    let (rec, schema) = ctx.gateway.registry.workflow(&rec.id)?;
    Ok(reply::json(StatusCode::CREATED, &workflow_details(&rec, schema)))
}

/// `PUT /workflows/{id}`: a new version.
pub async fn update_workflow(ctx: &Ctx, p: &Params, req: Request<Incoming>) -> Result<Resp> {
    let body = read_object(ctx, req).await?;
    if let Some(id) = opt_string(&body, "id")?
        && id != p.id
    {
        return Err(Error::validation("/id", format!("does not match the path ({:?})", p.id)));
    }
    let def = workflow_definition(&body, p.id.clone())?;
    ctx.gateway.registry.put_workflow(def, true).await?;
    let (rec, schema) = ctx.gateway.registry.workflow(&p.id)?;
    Ok(reply::json(StatusCode::OK, &workflow_details(&rec, schema)))
}

/// `DELETE /workflows/{id}`: 204.
pub async fn delete_workflow(ctx: &Ctx, p: &Params) -> Result<Resp> {
    ctx.gateway.registry.delete_workflow(&p.id).await?;
    Ok(reply::empty(StatusCode::NO_CONTENT))
}

const JOB_FIELDS: &[&str] = &["workflowId", "inputs", "params", "priority", "callbackUrl", "metadata"];

/// A parsed job request: the JSON object and, for `multipart/form-data`, the file parts.
async fn read_job_request(ctx: &Ctx, req: Request<Incoming>) -> Result<(Map<String, Value>, Vec<(String, Bytes)>)> {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.trim_start().to_ascii_lowercase().starts_with("multipart/form-data") {
        return Ok((read_object(ctx, req).await?, Vec::new()));
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
                json = Some(parse_object(&bytes)?);
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

/// `POST /jobs`: 202 `{jobId, status, pollUrl}` after the durable commit. The body is JSON,
/// or `multipart/form-data` with the JSON in a part named `request` (or `json`) and image
/// inputs as file parts named after the input (or `inputs.<name>`).
pub async fn create_job(ctx: &Ctx, req: Request<Incoming>) -> Result<Resp> {
    let (body, files) = read_job_request(ctx, req).await?;
    reject_unknown(&body, JOB_FIELDS)?;
    let workflow_id = req_string(&body, "workflowId")?;
    let mut inputs = opt_object(&body, "inputs")?.unwrap_or_default();
    // `params` are accepted as extra inputs (seed's compatibility); `inputs` win.
    for (k, v) in opt_object(&body, "params")?.unwrap_or_default() {
        inputs.entry(k).or_insert(v);
    }
    let callback_url = opt_string(&body, "callbackUrl")?;
    if let Some(url) = &callback_url {
        match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => return Err(Error::validation("/callbackUrl", "must be an absolute http(s) URL")),
        }
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => Some(m.clone()),
        Some(_) => return Err(Error::validation("/metadata", "must be a JSON object")),
    };
    let job = ctx
        .gateway
        .submit(SubmitRequest {
            workflow_id,
            inputs: Value::Object(inputs),
            priority: parse_priority(body.get("priority"))?,
            metadata,
            callback_url,
            files,
        })
        .await?;
    let poll_url = format!("/jobs/{}", job.id);
    let mut resp = reply::json(
        StatusCode::ACCEPTED,
        &json!({ "jobId": job.id, "status": job.state.as_str(), "pollUrl": poll_url }),
    );
    if let Ok(v) = HeaderValue::from_str(&poll_url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /jobs/{id}` (`?include=base64` inlines small outputs).
pub fn get_job(ctx: &Ctx, p: &Params, req: &Request<Incoming>) -> Result<Resp> {
    let job = ctx.gateway.job(parse_job_id(&p.id)?)?;
    let live = ctx.gateway.scheduler.live_status(job.id, job.queue_key);
    let mut v = reply::job_json(&job, Some(&live));
    for (k, val) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match (k.as_ref(), val.as_ref()) {
            ("include", "base64") => download::inline_outputs(&ctx.gateway, &job, &mut v)?,
            ("include", _) => return Err(Error::validation("/include", "the only value is base64")),
            _ => {}
        }
    }
    Ok(reply::json(StatusCode::OK, &v))
}

/// `POST /jobs/{id}/cancel`.
pub async fn cancel_job(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let job = ctx.gateway.scheduler.cancel(parse_job_id(&p.id)?).await?;
    Ok(reply::json(StatusCode::OK, &reply::job_json(&job, None)))
}

/// `GET /outputs/{id}`.
pub fn list_outputs(ctx: &Ctx, p: &Params) -> Result<Resp> {
    let job = ctx.gateway.job(parse_job_id(&p.id)?)?;
    let outputs: Vec<Value> = job.outputs.iter().map(|o| reply::output_json(&job, o)).collect();
    Ok(reply::json(StatusCode::OK, &json!({ "jobId": job.id, "status": job.state.as_str(), "outputs": outputs })))
}

/// `GET|HEAD /outputs/{id}/{file}`: see [`download`].
pub fn get_output(ctx: &Ctx, p: &Params, req: &Request<Incoming>) -> Result<Resp> {
    let job = ctx.gateway.job(parse_job_id(&p.id)?)?;
    let query = req.uri().query().unwrap_or("");
    download::output_file(&ctx.gateway, &job, &p.file, req.headers(), query, req.method() == http::Method::HEAD)
}

/// `GET /metrics`: Prometheus text format 0.0.4.
pub fn metrics(ctx: &Ctx) -> Result<Resp> {
    let text = ctx.gateway.metrics_text()?;
    Ok(reply::bytes(StatusCode::OK, crate::metrics::CONTENT_TYPE, Bytes::from(text)))
}
