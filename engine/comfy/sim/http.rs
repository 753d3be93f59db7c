//! The HTTP side: one route table (every route also under `/api`), aiohttp's status codes
//! and bodies for the odd cases (404/405/413/500/403), and the handlers of
//! `/prompt`, `/queue`, `/history`, `/interrupt`, `/free`, `/view`, `/upload/*`, the
//! read-only info routes and the simulator's own `/sim/*` control routes. HTTP faults
//! (`/sim/faults`) that a complete body cannot express (an answer that never comes, a body
//! shorter than its `Content-Length`) are marked on the response ([`Wire`]) and carried
//! out by [`handle`].

use super::defs::DEFS;
use super::files;
use super::image;
use super::ojson::{OJson, VALIDATION_KEY_ORDER, py_json, py_str, reorder};
use super::state::{QueueItem, Shared};
use super::validate::{self, Outcome};
use super::ws;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_DISPOSITION, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type Resp = Response<Full<Bytes>>;

const JSON_TYPE: &str = "application/json; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";
const SERVER_ERROR_TEXT: &str = "500 Internal Server Error\n\nServer got itself in trouble";

fn resp(status: StatusCode, content_type: Option<&'static str>, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn json_resp(status: StatusCode, body: String) -> Resp {
    resp(status, Some(JSON_TYPE), body)
}

fn ok_json(v: &Value) -> Resp {
    json_resp(StatusCode::OK, py_json(v))
}

fn empty(status: StatusCode) -> Resp {
    resp(status, None, Bytes::new())
}

fn server_error() -> Resp {
    resp(StatusCode::INTERNAL_SERVER_ERROR, Some(TEXT_TYPE), SERVER_ERROR_TEXT)
}

fn method_not_allowed() -> Resp {
    resp(StatusCode::METHOD_NOT_ALLOWED, Some(TEXT_TYPE), "405: Method Not Allowed")
}

fn not_found_static() -> Resp {
    resp(StatusCode::NOT_FOUND, Some("application/octet-stream"), Bytes::new())
}

/// How long an HTTP hang fault holds its answer (in practice: until the client gives up).
const HTTP_HANG: Duration = Duration::from_secs(3600);

/// A fault carried out on the wire, marked on a response by the handler that armed it.
#[derive(Clone, Debug)]
enum Wire {
    /// Hold the answer for [`HTTP_HANG`] (or until shutdown).
    Hang,
    /// Declare these bytes' full length, send the first half, then drop the connection.
    Truncate(Bytes),
}

/// The body of every answer: complete, or cut short by the `viewTruncated` fault.
pub enum SimBody {
    /// The whole body.
    Full(Full<Bytes>),
    /// Half of a body whose full length was declared; then, once that has gone out, an
    /// error, which makes hyper close the connection.
    Truncated(Option<Bytes>, Pin<Box<tokio::time::Sleep>>),
}

impl hyper::body::Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            SimBody::Full(full) => Pin::new(full).poll_frame(cx).map_err(|never| match never {}),
            SimBody::Truncated(half, flushed) => match half.take() {
                Some(bytes) => Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes)))),
                None => flushed
                    .as_mut()
                    .poll(cx)
                    .map(|()| Some(Err(std::io::Error::other("sim fault viewTruncated: connection closed mid-body")))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(full) => full.is_end_stream(),
            SimBody::Truncated(..) => false,
        }
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self {
            SimBody::Full(full) => full.size_hint(),
            SimBody::Truncated(..) => hyper::body::SizeHint::default(),
        }
    }
}

/// Entry point of every request: route it, then carry out a wire fault the handler marked.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<SimBody>, Infallible> {
    let Ok(mut r) = route(shared.clone(), req).await;
    match r.extensions_mut().remove::<Wire>() {
        None => Ok(r.map(SimBody::Full)),
        Some(Wire::Hang) => {
            tokio::select! {
                _ = tokio::time::sleep(HTTP_HANG) => {}
                _ = shared.shutdown.cancelled() => {}
            }
            Ok(r.map(SimBody::Full))
        }
        Some(Wire::Truncate(bytes)) => {
            let (mut parts, _) = r.into_parts();
            parts.headers.insert(hyper::header::CONTENT_LENGTH, HeaderValue::from(bytes.len() as u64));
            let half = bytes.slice(..bytes.len() / 2);
            let flushed = Box::pin(tokio::time::sleep(Duration::from_millis(50)));
            Ok(Response::from_parts(parts, SimBody::Truncated(Some(half), flushed)))
        }
    }
}

/// Consume one count of the HTTP fault `pick` selects: whether this request gets it.
fn fault(shared: &Shared, pick: impl FnOnce(&mut super::state::Faults) -> &mut u32) -> bool {
    super::state::Faults::take(pick(&mut shared.lock().faults))
}

fn with_wire(mut r: Resp, wire: Wire) -> Resp {
    r.extensions_mut().insert(wire);
    r
}

async fn route(shared: Arc<Shared>, mut req: Request<Incoming>) -> Result<Resp, Infallible> {
    let raw_path = req.uri().path().to_string();
    let query: HashMap<String, String> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();

    if !raw_path.starts_with("/sim/") {
        let latency_ms = shared.lock().faults.latency_ms;
        if latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(latency_ms)).await;
        }
    }
    if origin_forbidden(&req) {
        return Ok(empty(StatusCode::FORBIDDEN));
    }
    if req.method() == Method::OPTIONS {
        return Ok(empty(StatusCode::OK));
    }
    let path = match raw_path.strip_prefix("/api") {
        Some(rest) if rest.starts_with('/') => {
            if rest.starts_with("/internal") {
                return Ok(not_found_static());
            }
            rest.to_string()
        }
        _ => raw_path.clone(),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();

    if method == Method::GET && segments == ["ws"] {
        return Ok(ws::upgrade(shared.clone(), &mut req, query.get("clientId").cloned()));
    }

    // Every request body is subject to the upload limit.
    let limit = shared.config.max_upload_bytes();
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large =
        || resp(StatusCode::PAYLOAD_TOO_LARGE, Some(TEXT_TYPE), format!("Maximum request body size {limit} exceeded."));
    if declared.is_some_and(|n| n > limit) {
        return Ok(too_large());
    }
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = match read_body(req.into_body(), limit).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => return Ok(too_large()),
        Err(BodyError::Io) => return Ok(empty(StatusCode::BAD_REQUEST)),
    };

    let r = match (&method, segments.as_slice()) {
        (&Method::GET, ["prompt"]) => {
            ok_json(&json!({"exec_info": {"queue_remaining": shared.lock().queue_remaining()}}))
        }
        (&Method::POST, ["prompt"]) => {
            if fault(&shared, |f| &mut f.prompt_error) {
                server_error()
            } else {
                let r = post_prompt(&shared, &body);
                if r.status() == StatusCode::OK && fault(&shared, |f| &mut f.prompt_hang) {
                    with_wire(r, Wire::Hang)
                } else {
                    r
                }
            }
        }
        (&Method::GET, ["queue"]) => {
            let garbage = {
                let f = &mut shared.lock().faults;
                let left = f.queue_garbage;
                super::state::Faults::take(&mut f.queue_garbage).then_some(left)
            };
            match garbage {
                Some(left) => queue_garbage(&shared, left),
                None => get_queue(&shared),
            }
        }
        (&Method::POST, ["queue"]) => post_queue(&shared, &body),
        (&Method::GET, ["history"]) => get_history(&shared, &query),
        (&Method::GET, ["history", id]) => {
            let garbage = {
                let f = &mut shared.lock().faults;
                let left = f.history_garbage;
                super::state::Faults::take(&mut f.history_garbage).then_some(left)
            };
            if let Some(left) = garbage {
                history_garbage(&percent_decode(id), left)
            } else if fault(&shared, |f| &mut f.history_error) {
                server_error()
            } else if fault(&shared, |f| &mut f.history_hang) {
                with_wire(get_history_item(&shared, &percent_decode(id)), Wire::Hang)
            } else {
                get_history_item(&shared, &percent_decode(id))
            }
        }
        (&Method::POST, ["history"]) => post_history(&shared, &body),
        (&Method::POST, ["interrupt"]) => post_interrupt(&shared, &body),
        (&Method::POST, ["free"]) => post_free(&shared, &body),
        (&Method::GET | &Method::HEAD, ["view"]) => view(&shared, &query),
        (&Method::POST, ["upload", "image"]) => {
            if fault(&shared, |f| &mut f.upload_error) {
                server_error()
            } else {
                let r = upload(&shared, &content_type, &body, false);
                if r.status() == StatusCode::OK && fault(&shared, |f| &mut f.upload_hang) {
                    with_wire(r, Wire::Hang)
                } else {
                    r
                }
            }
        }
        (&Method::POST, ["upload", "mask"]) => upload(&shared, &content_type, &body, true),
        (&Method::GET, ["system_stats"]) => {
            json_resp(StatusCode::OK, py_json(&reorder(&system_stats(&shared), SYSTEM_STATS_KEY_ORDER)))
        }
        (&Method::GET, ["features"]) => {
            json_resp(StatusCode::OK, format!("{{\"supports_preview_metadata\": true, \"max_upload_size\": {limit}}}"))
        }
        (&Method::GET, ["object_info"]) => {
            shared.object_info_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            object_info(&shared, None)
        }
        (&Method::GET, ["sim", "requests"]) => {
            ok_json(&json!({"objectInfo": shared.object_info_reads.load(std::sync::atomic::Ordering::Relaxed)}))
        }
        (&Method::GET, ["object_info", class]) => object_info(&shared, Some(class)),
        (&Method::GET, ["embeddings"]) => ok_json(&json!([])),
        (&Method::GET, ["extensions"]) => ok_json(&json!([])),
        (&Method::GET, ["models"]) => ok_json(&json!(MODEL_FOLDERS)),
        (&Method::GET, ["models", folder]) => match models_in(folder) {
            Some(list) => ok_json(&json!(list)),
            None => empty(StatusCode::NOT_FOUND),
        },
        (&Method::GET, ["internal", "files", kind]) => internal_files(&shared, kind),
        (&Method::GET, ["sim", "executions"]) => sim_executions(&shared),
        (&Method::POST, ["sim", "reset"]) => {
            let mut inner = shared.lock();
            inner.executions.clear();
            inner.execution_index.clear();
            inner.queue_depth_max = inner.queue_remaining();
            empty(StatusCode::OK)
        }
        (&Method::GET, ["sim", "faults"]) => ok_json(&json!(shared.lock().faults)),
        (&Method::POST, ["sim", "faults"]) => post_faults(&shared, &body),
        _ => {
            let known = matches!(
                segments.as_slice(),
                ["prompt"]
                    | ["queue"]
                    | ["history"]
                    | ["history", _]
                    | ["interrupt"]
                    | ["free"]
                    | ["view"]
                    | ["upload", "image"]
                    | ["upload", "mask"]
                    | ["system_stats"]
                    | ["features"]
                    | ["object_info"]
                    | ["object_info", _]
                    | ["embeddings"]
                    | ["models"]
                    | ["models", _]
                    | ["ws"]
                    | ["internal", "files", _]
                    | ["sim", _]
            );
            if !known && (method == Method::GET || method == Method::HEAD) {
                not_found_static()
            } else {
                method_not_allowed()
            }
        }
    };
    Ok(r)
}

enum BodyError {
    TooLarge,
    Io,
}

async fn read_body(mut body: Incoming, limit: u64) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Io)?;
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// aiohttp's origin-only middleware (when `--enable-cors-header` is not given).
fn origin_forbidden(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let (Some(host), Some(origin)) = (
        h.get(hyper::header::HOST).and_then(|v| v.to_str().ok()),
        h.get(hyper::header::ORIGIN).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    let origin_netloc = origin
        .split_once("://")
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("")
        .to_ascii_lowercase();
    let (host_name, host_port) = split_host_port(&host);
    let (origin_name, origin_port) = split_host_port(&origin_netloc);
    let loopback = matches!(host_name.as_str(), "localhost" | "::1") || host_name.starts_with("127.");
    let host_cmp = if origin_port.is_none() { host_name.clone() } else { host.clone() };
    let origin_cmp = if host_port.is_none() { origin_name } else { origin_netloc.clone() };
    loopback && !host_cmp.is_empty() && !origin_cmp.is_empty() && host_cmp != origin_cmp
}

fn split_host_port(netloc: &str) -> (String, Option<String>) {
    if let Some(rest) = netloc.strip_prefix('[') {
        let (name, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').map(str::to_string);
        return (name.to_string(), port);
    }
    match netloc.rsplit_once(':') {
        Some((name, port)) => (name.to_string(), Some(port.to_string())),
        None => (netloc.to_string(), None),
    }
}

fn parse_json(body: &[u8]) -> Option<OJson> {
    serde_json::from_slice(body).ok()
}

/// Python `float(x)` for `number`.
fn py_float(v: &OJson) -> Option<f64> {
    match v {
        OJson::Num(n) => n.as_f64(),
        OJson::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        OJson::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

fn post_prompt(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let Some(json) = parse_json(body) else {
        return server_error();
    };
    let fields = match &json {
        OJson::Obj(_) => json.clone(),
        OJson::Arr(_) => OJson::Obj(Vec::new()),
        _ => return server_error(),
    };
    let number = match fields.get("number") {
        Some(n) => match py_float(n).and_then(serde_json::Number::from_f64) {
            Some(f) => OJson::Num(f),
            None => return server_error(),
        },
        None => {
            let mut inner = shared.lock();
            let mut n = inner.number;
            if fields.get("front").is_some_and(OJson::truthy) {
                n = -n;
            }
            inner.number += 1;
            OJson::Num(n.into())
        }
    };
    let Some(prompt) = fields.get("prompt") else {
        let error = json!({"type": "no_prompt", "message": "No prompt provided", "details": "No prompt provided", "extra_info": {}});
        return json_resp(
            StatusCode::BAD_REQUEST,
            py_json(&reorder(&json!({"error": error, "node_errors": {}}), VALIDATION_KEY_ORDER)),
        );
    };
    let mut prompt = prompt.clone();
    let Some(nodes) = prompt.as_obj() else {
        return server_error();
    };
    if nodes.iter().any(|(_, n)| matches!(n, OJson::Null | OJson::Bool(_) | OJson::Num(_))) {
        return server_error();
    }
    let prompt_id = match fields.get("prompt_id") {
        Some(v) => py_str(v),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let partial: Option<Vec<String>> = match fields.get("partial_execution_targets") {
        Some(OJson::Arr(a)) => Some(a.iter().map(py_str).collect()),
        _ => None,
    };
    match validate::validate_prompt(&mut prompt, partial.as_deref(), &shared.dirs) {
        Outcome::Invalid { error, node_errors } => json_resp(
            StatusCode::BAD_REQUEST,
            py_json(&reorder(&json!({"error": error, "node_errors": node_errors}), VALIDATION_KEY_ORDER)),
        ),
        Outcome::Valid { outputs, node_errors } => {
            let mut extra_data = fields.get("extra_data").cloned().unwrap_or(OJson::Obj(Vec::new()));
            if let Some(c) = fields.get("client_id") {
                if !matches!(extra_data, OJson::Obj(_)) {
                    return server_error();
                }
                extra_data.set("client_id", c.clone());
            }
            let item = QueueItem { number: number.clone(), prompt_id: prompt_id.clone(), prompt, extra_data, outputs };
            {
                let mut inner = shared.lock();
                inner.note_submitted(&prompt_id);
                inner.push(item);
            }
            shared.work.notify_one();
            json_resp(
                StatusCode::OK,
                format!(
                    "{{\"prompt_id\": {}, \"number\": {}, \"node_errors\": {}}}",
                    py_json(&prompt_id),
                    number.to_json(),
                    py_json(&reorder(&node_errors, VALIDATION_KEY_ORDER))
                ),
            )
        }
    }
}

fn get_queue(shared: &Arc<Shared>) -> Resp {
    let inner = shared.lock();
    let running: Vec<OJson> = inner.running.iter().map(|i| i.to_tuple(&i.extra_data)).collect();
    let pending: Vec<OJson> = inner.pending.iter().map(|i| i.to_tuple(&i.extra_data)).collect();
    json_resp(
        StatusCode::OK,
        format!(
            "{{\"queue_running\": {}, \"queue_pending\": {}}}",
            OJson::Arr(running).to_json(),
            OJson::Arr(pending).to_json()
        ),
    )
}

/// What faults `queueGarbage` and `historyGarbage` send first: a proxy's error page, as 200.
fn html_error_page() -> Resp {
    resp(StatusCode::OK, Some("text/html; charset=utf-8"), GARBAGE_BODY)
}

/// Fault `queueGarbage`: a 200 answer that is not a queue, the kind picked by the count
/// left (`left`, before this request), so N requests see the kinds in turn.
fn queue_garbage(shared: &Arc<Shared>, left: u32) -> Resp {
    match left % 4 {
        0 => html_error_page(),
        1 => json_resp(StatusCode::OK, r#"{"error": "upstream connect error", "status": 502}"#.to_string()),
        2 => json_resp(StatusCode::OK, r#"{"queue_running": null, "queue_pending": []}"#.to_string()),
        _ => {
            // A real pending list, but no `queue_running` (a newer format, say).
            let inner = shared.lock();
            let pending: Vec<OJson> = inner.pending.iter().map(|i| i.to_tuple(&i.extra_data)).collect();
            json_resp(StatusCode::OK, format!("{{\"queue_pending\": {}}}", OJson::Arr(pending).to_json()))
        }
    }
}

/// Fault `historyGarbage`: a 200 answer that is not a history body, the kind picked by the
/// count left (`left`, before this request).
fn history_garbage(id: &str, left: u32) -> Resp {
    match left % 4 {
        0 => html_error_page(),
        1 => json_resp(StatusCode::OK, r#"{"error": "upstream connect error", "status": 502}"#.to_string()),
        2 => json_resp(StatusCode::OK, "[]".to_string()),
        _ => json_resp(StatusCode::OK, history_object(&[&(id.to_string(), "\"pending\"".to_string())])),
    }
}

fn post_queue(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let Some(json) = parse_json(body) else {
        return server_error();
    };
    let mut inner = shared.lock();
    if json.get("clear").is_some_and(OJson::truthy) {
        inner.pending.clear();
        inner.broadcast_status();
    }
    if let Some(OJson::Arr(ids)) = json.get("delete") {
        for id in ids {
            let id = py_str(id);
            // delete_queue_item: first match only, then heapify.
            if let Some(pos) = inner.pending.iter().position(|i| i.prompt_id == id) {
                if inner.pending.len() == 1 {
                    inner.pending.clear();
                } else {
                    inner.pending.remove(pos);
                    super::heap::heapify(&mut inner.pending, QueueItem::less);
                }
                inner.broadcast_status();
            }
        }
    }
    empty(StatusCode::OK)
}

fn history_object(entries: &[&(String, String)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&py_json(k));
        s.push_str(": ");
        s.push_str(v);
    }
    s.push('}');
    s
}

fn get_history(shared: &Arc<Shared>, query: &HashMap<String, String>) -> Resp {
    let parse = |k: &str| -> Result<Option<i64>, ()> {
        match query.get(k) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| ()),
        }
    };
    let (Ok(max_items), Ok(offset)) = (parse("max_items"), parse("offset")) else {
        return server_error();
    };
    let inner = shared.lock();
    let len = inner.history.len() as i64;
    let mut offset = offset.unwrap_or(-1);
    if offset < 0
        && let Some(m) = max_items
    {
        offset = len - m;
    }
    let mut out = Vec::new();
    for (i, entry) in inner.history.iter().enumerate() {
        if i as i64 >= offset {
            out.push(entry);
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    json_resp(StatusCode::OK, history_object(&out))
}

fn get_history_item(shared: &Arc<Shared>, id: &str) -> Resp {
    let mut inner = shared.lock();
    let found: Vec<(String, String)> = inner.history.iter().filter(|(k, _)| k == id).cloned().collect();
    // Fault historyNoOutputs: the entry as if no node had reported a UI output.
    let found = if !found.is_empty() && super::state::Faults::take(&mut inner.faults.history_no_outputs) {
        found.into_iter().map(|(k, v)| (k, without_outputs(&v))).collect()
    } else {
        found
    };
    // Faults historyNoStatus and historyOddStatus: an entry the gateway must not understand.
    let found = if !found.is_empty() && super::state::Faults::take(&mut inner.faults.history_no_status) {
        found
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    edit_entry(&v, |e| {
                        e.remove("status");
                    }),
                )
            })
            .collect()
    } else if !found.is_empty() && super::state::Faults::take(&mut inner.faults.history_odd_status) {
        let running = |e: &mut OJson| {
            if let Some(status) = e.get_mut("status") {
                status.set("status_str", OJson::Str("running".into()));
            }
        };
        found.into_iter().map(|(k, v)| (k, edit_entry(&v, running))).collect()
    } else {
        found
    };
    json_resp(StatusCode::OK, history_object(&found.iter().collect::<Vec<_>>()))
}

/// A history entry changed by `edit` (key order kept).
fn edit_entry(entry: &str, edit: impl FnOnce(&mut OJson)) -> String {
    match serde_json::from_str::<OJson>(entry) {
        Ok(mut e) => {
            edit(&mut e);
            e.to_json()
        }
        Err(_) => entry.to_string(),
    }
}

/// A history entry with empty `outputs` and `meta` (key order kept).
fn without_outputs(entry: &str) -> String {
    match serde_json::from_str::<OJson>(entry) {
        Ok(mut e) => {
            e.set("outputs", OJson::Obj(Vec::new()));
            e.set("meta", OJson::Obj(Vec::new()));
            e.to_json()
        }
        Err(_) => entry.to_string(),
    }
}

fn post_history(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let Some(json) = parse_json(body) else {
        return server_error();
    };
    let mut inner = shared.lock();
    if json.get("clear").is_some_and(OJson::truthy) {
        inner.history.clear();
    }
    if let Some(OJson::Arr(ids)) = json.get("delete") {
        for id in ids {
            let id = py_str(id);
            inner.history.retain(|(k, _)| *k != id);
        }
    }
    empty(StatusCode::OK)
}

fn post_interrupt(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let json = parse_json(body).unwrap_or(OJson::Obj(Vec::new()));
    match json.get("prompt_id").filter(|p| p.truthy()) {
        Some(pid) => {
            let pid = py_str(pid);
            let running = shared.lock().running.as_ref().is_some_and(|r| r.prompt_id == pid);
            if running {
                shared.interrupt();
            }
        }
        None => shared.interrupt(),
    }
    empty(StatusCode::OK)
}

fn post_free(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let Some(json) = parse_json(body) else {
        return server_error();
    };
    if json.get("free_memory").is_some_and(OJson::truthy) {
        shared.lock().free_memory_pending = true;
    }
    empty(StatusCode::OK)
}

fn view(shared: &Arc<Shared>, query: &HashMap<String, String>) -> Resp {
    let Some(filename) = query.get("filename") else {
        return empty(StatusCode::NOT_FOUND);
    };
    let (filename, annotated) = files::split_annotation(filename);
    if filename.is_empty() {
        return empty(StatusCode::BAD_REQUEST);
    }
    if filename.starts_with('/') || filename.contains("..") {
        return empty(StatusCode::BAD_REQUEST);
    }
    let kind =
        annotated.map(str::to_string).unwrap_or_else(|| query.get("type").cloned().unwrap_or_else(|| "output".into()));
    let Some(base) = shared.dirs.by_type(&kind) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let mut dir = base.clone();
    if let Some(sub) = query.get("subfolder") {
        let full = base.join(sub);
        if !files::is_inside(base, &full) {
            return empty(StatusCode::FORBIDDEN);
        }
        dir = files::normalize(&full);
    }
    let name = Path::new(&filename).file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let file = dir.join(&name);
    if !file.is_file() {
        return empty(StatusCode::NOT_FOUND);
    }
    let Ok(bytes) = std::fs::read(&file) else {
        return empty(StatusCode::NOT_FOUND);
    };
    let channel = query.get("channel").map(String::as_str).unwrap_or("rgba");
    let (body, content_type) = match channel {
        "rgb" | "a" if name.to_ascii_lowercase().ends_with(".png") => match image::decode_png(&bytes) {
            Some(d) => {
                let encoded = if channel == "rgb" {
                    image::encode_png(d.width, d.height, &d.rgb, &[], false)
                } else {
                    let alpha = d.alpha.unwrap_or_else(|| vec![255; (d.width * d.height) as usize]);
                    image::encode_alpha_png(d.width, d.height, &alpha)
                };
                match encoded {
                    Ok(b) => (b, "image/png"),
                    Err(_) => return server_error(),
                }
            }
            None => (bytes, files::content_type(&name)),
        },
        // `preview=webp|jpeg` would re-encode; the simulator returns the file unchanged.
        _ => (bytes, files::content_type(&name)),
    };
    // Faults: an error, no answer, a body that is not the file, or a body cut short.
    let (error, hang, garbage, truncated) = {
        let f = &mut shared.lock().faults;
        let error = super::state::Faults::take(&mut f.view_error);
        let hang = !error && super::state::Faults::take(&mut f.view_hang);
        let garbage = !error && !hang && super::state::Faults::take(&mut f.view_garbage);
        (error, hang, garbage, !error && !hang && !garbage && super::state::Faults::take(&mut f.view_truncated))
    };
    if error {
        return server_error();
    }
    let body = if garbage { GARBAGE_BODY.as_bytes().to_vec() } else { body };
    let (body, wire) = if truncated { (Vec::new(), Some(Wire::Truncate(Bytes::from(body)))) } else { (body, None) };
    let mut r = resp(StatusCode::OK, Some(content_type), body);
    if let Ok(v) = HeaderValue::from_str(&format!("filename=\"{name}\"")) {
        r.headers_mut().insert(CONTENT_DISPOSITION, v);
    }
    match wire {
        Some(w) => with_wire(r, w),
        None if hang => with_wire(r, Wire::Hang),
        None => r,
    }
}

/// What fault `viewGarbage` sends instead of the file: a proxy's error page.
const GARBAGE_BODY: &str = "<html><head><title>502 Bad Gateway</title></head>\n\
                            <body><h1>502 Bad Gateway</h1></body></html>\n";

/// One multipart part.
struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

fn parse_multipart(content_type: &str, body: &[u8]) -> Option<Vec<Part>> {
    let boundary = content_type.split(';').map(str::trim).find_map(|p| p.strip_prefix("boundary="))?.trim_matches('"');
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut parts = Vec::new();
    let mut pos = find(body, delim, 0)? + delim.len();
    loop {
        if body.get(pos..pos + 2) == Some(b"--") {
            break;
        }
        // skip CRLF after the delimiter
        if body.get(pos..pos + 2) == Some(b"\r\n") {
            pos += 2;
        }
        let header_end = find(body, b"\r\n\r\n", pos)?;
        let headers = String::from_utf8_lossy(&body[pos..header_end]).into_owned();
        let data_start = header_end + 4;
        let mut next_delim = Vec::with_capacity(delim.len() + 2);
        next_delim.extend_from_slice(b"\r\n");
        next_delim.extend_from_slice(delim);
        let data_end = find(body, &next_delim, data_start)?;
        let mut name = String::new();
        let mut filename = None;
        for line in headers.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with("content-disposition:") {
                for param in line.split(';').skip(1) {
                    let param = param.trim();
                    if let Some(v) = param.strip_prefix("name=") {
                        name = v.trim_matches('"').to_string();
                    } else if let Some(v) = param.strip_prefix("filename=") {
                        filename = Some(v.trim_matches('"').to_string());
                    }
                }
            }
        }
        parts.push(Part { name, filename, data: body[data_start..data_end].to_vec() });
        pos = data_end + next_delim.len();
    }
    Some(parts)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..].windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

fn upload(shared: &Arc<Shared>, content_type: &str, body: &[u8], mask: bool) -> Resp {
    let parts = if content_type.to_ascii_lowercase().starts_with("multipart/") {
        match parse_multipart(content_type, body) {
            Some(p) => p,
            None => return empty(StatusCode::BAD_REQUEST),
        }
    } else {
        form_urlencoded::parse(body)
            .map(|(k, v)| Part { name: k.into_owned(), filename: None, data: v.into_owned().into_bytes() })
            .collect()
    };
    let field = |n: &str| {
        parts
            .iter()
            .find(|p| p.name == n && p.filename.is_none())
            .map(|p| String::from_utf8_lossy(&p.data).into_owned())
    };
    let kind = field("type").unwrap_or_else(|| "input".into());
    let Some(base) = shared.dirs.by_type(&kind).cloned() else {
        // ComfyUI: UnboundLocalError in get_dir_by_type.
        return server_error();
    };
    let Some(image) = parts.iter().find(|p| p.name == "image") else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let Some(filename) = image.filename.clone() else {
        return server_error();
    };
    if filename.is_empty() {
        return empty(StatusCode::BAD_REQUEST);
    }
    let subfolder = field("subfolder").unwrap_or_default();
    let folder = files::normalize(&base.join(files::normalize(Path::new(&subfolder))));
    let mut path = files::normalize(&folder.join(&filename));
    if !files::is_inside(&base, &path) || !files::is_inside(&base, &folder) {
        return empty(StatusCode::BAD_REQUEST);
    }
    if std::fs::create_dir_all(&folder).is_err() {
        return server_error();
    }
    let mut data = image.data.clone();
    if mask {
        match apply_mask(shared, field("original_ref").as_deref(), &data) {
            Some(d) => data = d,
            None => return server_error(),
        }
    }
    let overwrite = matches!(field("overwrite").as_deref(), Some("true" | "1"));
    let mut name = filename.clone();
    let mut duplicate = false;
    if !overwrite {
        let (stem, ext) = match filename.rfind('.') {
            Some(i) if i > 0 => (&filename[..i], &filename[i..]),
            _ => (filename.as_str(), ""),
        };
        let mut i = 1;
        while path.exists() {
            if std::fs::read(&path).is_ok_and(|existing| existing == data) {
                duplicate = true;
                break;
            }
            name = format!("{stem} ({i}){ext}");
            path = folder.join(&name);
            i += 1;
        }
    }
    if !duplicate {
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if std::fs::write(&path, &data).is_err() {
            return server_error();
        }
    }
    json_resp(
        StatusCode::OK,
        format!(
            "{{\"name\": {}, \"subfolder\": {}, \"type\": {}}}",
            py_json(&name),
            py_json(&subfolder),
            py_json(&kind)
        ),
    )
}

/// `/upload/mask`: the uploaded image's alpha applied to the referenced original.
fn apply_mask(shared: &Arc<Shared>, original_ref: Option<&str>, mask_png: &[u8]) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Ref {
        filename: String,
        #[serde(default)]
        subfolder: String,
        #[serde(rename = "type", default)]
        kind: Option<String>,
    }
    let r: Ref = serde_json::from_str(original_ref?).ok()?;
    let base = shared.dirs.by_type(r.kind.as_deref().unwrap_or("input"))?;
    let path = base.join(&r.subfolder).join(&r.filename);
    if !files::is_inside(base, &path) {
        return None;
    }
    let original = image::decode_png(&std::fs::read(path).ok()?)?;
    let mask = image::decode_png(mask_png)?;
    let n = (original.width * original.height) as usize;
    let alpha: Vec<u8> = match mask.alpha {
        Some(a) if mask.width == original.width && mask.height == original.height => a,
        _ => vec![255; n],
    };
    image::encode_rgba_png(original.width, original.height, &original.rgb, &alpha).ok()
}

fn system_stats(shared: &Arc<Shared>) -> Value {
    let ram_total: u64 = 25_276_514_304;
    json!({
        "system": {
            "os": "posix",
            "ram_total": ram_total,
            "ram_free": 23_600_656_384u64,
            "comfyui_version": "0.3.64",
            "required_frontend_version": "1.27.10",
            "installed_templates_version": "0.1.95",
            "required_templates_version": "0.1.95",
            "python_version": "3.11.7 (main, May  9 2026, 07:35:25) [GCC 12.2.0]",
            "pytorch_version": "2.15.0+cu132",
            "embedded_python": false,
            "argv": ["main.py", "--cpu", "--listen", shared.config.host, "--port", shared.config.port.to_string()],
        },
        "devices": [{
            "name": "cpu", "type": "cpu", "index": null,
            "vram_total": ram_total, "vram_free": 23_600_656_384u64,
            "torch_vram_total": ram_total, "torch_vram_free": 23_600_656_384u64,
        }],
    })
}

/// Key order of `/system_stats`.
const SYSTEM_STATS_KEY_ORDER: &[&str] = &[
    "system",
    "devices",
    "os",
    "ram_total",
    "ram_free",
    "comfyui_version",
    "required_frontend_version",
    "installed_templates_version",
    "required_templates_version",
    "python_version",
    "pytorch_version",
    "embedded_python",
    "argv",
    "name",
    "type",
    "index",
    "vram_total",
    "vram_free",
    "torch_vram_total",
    "torch_vram_free",
];

/// `GET /models` folder names.
const MODEL_FOLDERS: [&str; 20] = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
];

fn models_in(folder: &str) -> Option<Vec<String>> {
    if !MODEL_FOLDERS.contains(&folder) {
        return None;
    }
    let combo = |class: &str, input: &str| -> Vec<String> {
        super::defs::class(class)
            .and_then(|d| d.input(input))
            .and_then(|i| i.combo_options())
            .map(|o| o.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    };
    Some(match folder {
        "checkpoints" => combo("CheckpointLoaderSimple", "ckpt_name"),
        "loras" => combo("LoraLoader", "lora_name"),
        "vae" => combo("VAELoader", "vae_name").into_iter().filter(|n| n != "pixel_space").collect(),
        "upscale_models" => combo("UpscaleModelLoader", "model_name"),
        "controlnet" => combo("ControlNetLoader", "control_net_name"),
        "diffusion_models" => combo("UNETLoader", "unet_name"),
        "text_encoders" => combo("CLIPLoader", "clip_name"),
        _ => Vec::new(),
    })
}

/// Top-level image files of `input/`, sorted (LoadImage's combo).
fn input_images(shared: &Shared) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&shared.dirs.input)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    [".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"].iter().any(|e| l.ends_with(e))
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn object_info(shared: &Arc<Shared>, class: Option<&str>) -> Resp {
    let patch = |name: &str, info: &Value| -> Value {
        let mut info = info.clone();
        if name == "LoadImage" || name == "LoadImageMask" {
            let list = json!(input_images(shared));
            if let Some(spec) = info.pointer_mut("/input/required/image").and_then(Value::as_array_mut)
                && let Some(first) = spec.get_mut(0)
            {
                *first = list;
            }
        }
        info
    };
    match class {
        Some(c) => match DEFS.raw.get(c) {
            Some(info) => ok_json(&json!({ c: patch(c, info) })),
            None => ok_json(&json!({})),
        },
        None => {
            let mut all = serde_json::Map::new();
            for (k, v) in &DEFS.raw {
                all.insert(k.clone(), patch(k, v));
            }
            ok_json(&Value::Object(all))
        }
    }
}

/// `GET /internal/files/{type}`: visible file names, newest first (no `/api` alias).
fn internal_files(shared: &Arc<Shared>, kind: &str) -> Resp {
    let Some(dir) = shared.dirs.by_type(kind) else {
        return json_resp(StatusCode::BAD_REQUEST, py_json(&json!({"error": "Invalid directory type"})));
    };
    let mut entries: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let mtime = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
                    (mtime, name)
                })
                .filter(|(_, n)| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    entries.sort_by_key(|e| std::cmp::Reverse(e.0));
    let names: Vec<String> = entries.into_iter().map(|(_, n)| n).collect();
    json_resp(StatusCode::OK, py_json(&names))
}

/// Decode `%XX` escapes of a path segment (aiohttp's `match_info` is decoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sim_executions(shared: &Arc<Shared>) -> Resp {
    let inner = shared.lock();
    ok_json(&json!({"executions": inner.executions, "maxQueueDepth": inner.queue_depth_max}))
}

/// Body of `POST /sim/faults` (every field optional; absent = unchanged).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultsPatch {
    latency_ms: Option<u64>,
    oom: Option<u32>,
    node_error: Option<u32>,
    hang: Option<u32>,
    drop_ws: Option<bool>,
    #[serde(default, with = "double_option")]
    drop_ws_after_ms: Option<Option<u64>>,
    crash: Option<bool>,
    crash_on_next_execution: Option<bool>,
    prompt_error: Option<u32>,
    prompt_hang: Option<u32>,
    upload_error: Option<u32>,
    upload_hang: Option<u32>,
    history_error: Option<u32>,
    history_hang: Option<u32>,
    history_no_outputs: Option<u32>,
    view_error: Option<u32>,
    view_hang: Option<u32>,
    view_garbage: Option<u32>,
    view_truncated: Option<u32>,
    queue_garbage: Option<u32>,
    history_garbage: Option<u32>,
    history_no_status: Option<u32>,
    history_odd_status: Option<u32>,
    reset: Option<bool>,
}

mod double_option {
    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
        Ok(Some(Option::<u64>::deserialize(d)?))
    }
}

fn post_faults(shared: &Arc<Shared>, body: &[u8]) -> Resp {
    let patch: FaultsPatch = if body.iter().all(u8::is_ascii_whitespace) {
        FaultsPatch::default()
    } else {
        match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => {
                return json_resp(
                    StatusCode::BAD_REQUEST,
                    py_json(&json!({"error": format!("invalid faults body: {e}")})),
                );
            }
        }
    };
    let mut inner = shared.lock();
    if patch.reset == Some(true) {
        inner.faults = Default::default();
    }
    let f = &mut inner.faults;
    if let Some(v) = patch.latency_ms {
        f.latency_ms = v;
    }
    if let Some(v) = patch.oom {
        f.oom = v;
    }
    if let Some(v) = patch.node_error {
        f.node_error = v;
    }
    if let Some(v) = patch.hang {
        f.hang = v;
    }
    if let Some(v) = patch.drop_ws_after_ms {
        f.drop_ws_after_ms = v;
    }
    if let Some(v) = patch.crash_on_next_execution {
        f.crash_on_next_execution = v;
    }
    for (field, value) in [
        (&mut f.prompt_error, patch.prompt_error),
        (&mut f.prompt_hang, patch.prompt_hang),
        (&mut f.upload_error, patch.upload_error),
        (&mut f.upload_hang, patch.upload_hang),
        (&mut f.history_error, patch.history_error),
        (&mut f.history_hang, patch.history_hang),
        (&mut f.history_no_outputs, patch.history_no_outputs),
        (&mut f.view_error, patch.view_error),
        (&mut f.view_hang, patch.view_hang),
        (&mut f.view_garbage, patch.view_garbage),
        (&mut f.view_truncated, patch.view_truncated),
        (&mut f.queue_garbage, patch.queue_garbage),
        (&mut f.history_garbage, patch.history_garbage),
        (&mut f.history_no_status, patch.history_no_status),
        (&mut f.history_odd_status, patch.history_odd_status),
    ] {
        if let Some(v) = value {
            *field = v;
        }
    }
    let current = json!(inner.faults);
    if patch.drop_ws == Some(true) {
        inner.drop_all_websockets();
    }
    drop(inner);
    if patch.crash == Some(true) {
        tracing::warn!("sim: fault crash: exiting with code 137");
        // Let the response go out first; no cleanup, like a SIGKILL.
        tokio::spawn(async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            std::process::exit(137);
        });
    }
    ok_json(&current)
}
